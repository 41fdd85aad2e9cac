import CShm

/// Worker w's doorbell in the header: the parker it sleeps on (guests post it), and the CPU it last
/// ran on (a placement hint).
@usableFromInline
struct DoorbellView {
    @usableFromInline let base: UnsafeMutableRawPointer

    @inlinable init(_ base: UnsafeMutableRawPointer) { self.base = base }

    /// The worker sleeps on it; guests post it after publishing a request.
    @inlinable
    var parker: Parker {
        Parker(flag: base + Layout.Header.doorbellSleeping, word: base + Layout.Header.doorbellWord)
    }

    /// Relaxed: a hint the worker refreshes; a stale or garbage value costs a guest one more check.
    @inlinable
    var workerCPU: UInt32 {
        get { CShm_load_relaxed_u32(base + Layout.Header.doorbellWorkerCPU) }
        nonmutating set { CShm_store_relaxed_u32(base + Layout.Header.doorbellWorkerCPU, newValue) }
    }
}
