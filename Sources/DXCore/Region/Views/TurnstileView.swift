import CShm

/// Worker w's turnstile in the header: guests of that worker take turns through it (see
/// Guest/Lane+Turns.swift and docs/LAYOUT.md, "Turns"). Everything in it is guest-written, and the
/// host never reads it.
@usableFromInline
struct TurnstileView {
    @usableFromInline let base: UnsafeMutableRawPointer

    @inlinable init(_ base: UnsafeMutableRawPointer) { self.base = base }

    /// Seq-cst: one ticket per caller, in order.
    func takeTicket() -> UInt64 { CShm_fetch_add_seqcst_u64(base + Layout.Header.turnNext, 1) }
    /// Acquire: whether anyone took a ticket after the holder's (pairs with the seq-cst fetch-add).
    var next: UInt64 { CShm_load_acquire_u64(base + Layout.Header.turnNext) }

    /// Seq-cst: read after the wake word (see ``wakeWord(for:)``), so a pass between the two makes
    /// the futex wait return at once.
    var serving: UInt64 { CShm_load_seqcst_u64(base + Layout.Header.turnServing) }
    /// Acquire: the holder's check of its own turn (pairs with the seq-cst CAS that moved it).
    var servingAcquire: UInt64 { CShm_load_acquire_u64(base + Layout.Header.turnServing) }
    /// Seq-cst: moves the turn on by one.
    func moveServing(from ticket: UInt64) -> Bool {
        CShm_cas_seqcst_u64(base + Layout.Header.turnServing, ticket, ticket &+ 1)
    }

    /// Relaxed: when the holder's lease began (CLOCK_MONOTONIC ns); ordered by the CAS on serving.
    var lease: UInt64 {
        get { CShm_load_relaxed_u64(base + Layout.Header.turnLease) }
        nonmutating set { CShm_store_relaxed_u64(base + Layout.Header.turnLease, newValue) }
    }

    /// The futex word the waiter with `ticket` sleeps on.
    func wakeWord(for ticket: UInt64) -> UnsafeMutablePointer<UInt32> {
        let slot = Int(ticket % UInt64(Layout.Header.turnWakeSlotCount))
        return (base + Layout.Header.turnWakeSlots + slot * 4).assumingMemoryBound(to: UInt32.self)
    }

    /// Seq-cst: the waker changes the word before the waiter's re-check of serving can miss it.
    func seen(_ word: UnsafeMutablePointer<UInt32>) -> UInt32 { CShm_load_seqcst_u32(word) }

    /// Sleeps on `word` while it still holds `seen`, for at most `timeoutNanoseconds` (a bounded
    /// shared `FUTEX_WAIT`; any return is fine: the caller re-checks `serving`).
    func sleep(on word: UnsafeMutablePointer<UInt32>, seen: UInt32, timeoutNanoseconds: UInt64) {
        _ = CShm_futex_wait(word, seen, timeoutNanoseconds)
    }

    /// Wakes whoever sleeps on the word of `ticket` (the word changes first, so a waiter about to
    /// sleep on its old value does not).
    func wake(_ ticket: UInt64) {
        let word = wakeWord(for: ticket)
        _ = CShm_fetch_add_seqcst_u32(word, 1)
        _ = CShm_futex_wake(word, Int32.max)
    }
}
