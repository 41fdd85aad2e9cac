import CShm

/// A private region's granted turns, in the header (docs/LAYOUT.md, "Granted turns"): the host
/// grants its worker's attention to one region at a time; a guest thread calls only while its
/// region holds the grant, and otherwise sleeps on the grant word after saying it wants one.
/// The grant block is host-written; the want word is the guest's.
@usableFromInline
struct GrantView {
    @usableFromInline let base: UnsafeMutableRawPointer

    @inlinable init(_ base: UnsafeMutableRawPointer) { self.base = base }

    /// The grant futex word: a counter the host advances at every grant and every revoke, odd
    /// while the region holds the grant. A waiter sleeps on the value it saw, so a grant and a
    /// revoke that both happen before it sleeps still wake it (no ABA).
    @inlinable var word: UnsafeMutablePointer<UInt32> {
        (base + Layout.Header.grant).assumingMemoryBound(to: UInt32.self)
    }

    /// Acquire: the grant counter (pairs with the host's release store).
    @inlinable var value: UInt32 { CShm_load_acquire_u32(base + Layout.Header.grant) }

    /// Whether the region holds the grant: the counter is odd.
    @inlinable var isGranted: Bool { value & 1 == 1 }

    /// Host: stores the next counter value (`counter` is the host's own copy: the word is
    /// guest-writable) with release order; a grant also wakes every waiter.
    func set(_ counter: UInt32) {
        CShm_store_release_u32(base + Layout.Header.grant, counter)
        if counter & 1 == 1 { _ = CShm_futex_wake(word, Int32.max) }
    }

    /// Whether the host grants turns in this region (set once, before publishing).
    var grants: Bool {
        get { CShm_load_relaxed_u32(base + Layout.Header.grants) == 1 }
        nonmutating set { CShm_store_relaxed_u32(base + Layout.Header.grants, newValue ? 1 : 0) }
    }

    /// How long a grant lasts while others wait (ns; set once by the host).
    var quantum: UInt64 {
        get { CShm_load_relaxed_u64(base + Layout.Header.grantQuantum) }
        nonmutating set { CShm_store_relaxed_u64(base + Layout.Header.grantQuantum, newValue) }
    }

    /// The host's estimate of a waiting region's wait for its next grant (ns).
    var cycle: UInt64 {
        get { CShm_load_relaxed_u64(base + Layout.Header.grantCycle) }
        nonmutating set { CShm_store_relaxed_u64(base + Layout.Header.grantCycle, newValue) }
    }

    /// The want word (guest-written). Guest: seq-cst store of 1, then ring the doorbell, and a
    /// relaxed clear when its wait ends; host: a relaxed clear when it grants (so only a want
    /// stored after the grant counts), and a seq-cst load in its re-check before it arms the
    /// doorbell or re-queues a region that loses the grant.
    var wants: Bool { CShm_load_seqcst_u32(base + Layout.Header.grantWant) != 0 }
    /// Relaxed: whether a guest thread said it wants the grant (for turn waiters' stale check).
    var wanted: Bool { CShm_load_relaxed_u32(base + Layout.Header.grantWant) != 0 }
    func want() { CShm_store_seqcst_u32(base + Layout.Header.grantWant, 1) }
    func clearWant() { CShm_store_relaxed_u32(base + Layout.Header.grantWant, 0) }
}
