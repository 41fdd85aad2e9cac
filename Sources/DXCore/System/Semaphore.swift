import CShm

/// A non-owning view of a process-shared POSIX semaphore that lives in the region.
///
/// The host initialises it once with `sem_init(sem, 1, 0)` before the region is published.
/// Both sides then post and wait on it through this view.
@usableFromInline
struct Semaphore {
    @usableFromInline let pointer: UnsafeMutablePointer<sem_t>

    @inlinable
    init(_ raw: UnsafeMutableRawPointer) {
        // Unsafe: the layout reserves `Layout.semaphoreSize` bytes, 8-aligned, at `raw`.
        pointer = raw.assumingMemoryBound(to: sem_t.self)
    }

    /// `sem_init` with `pshared` = 1 and a count of zero.
    func initialize() throws(SystemError) {
        let rc = CShm_sem_init_shared(pointer)
        if rc != 0 { throw SystemError("sem_init", errno: rc) }
    }

    /// `sem_post`. Errors (EOVERFLOW after hostile writes) are ignored: a post is only a hint
    /// that makes a sleeper re-check its condition sooner.
    @usableFromInline
    func post() {
        _ = CShm_sem_post(pointer)
    }

    /// `sem_clockwait` on CLOCK_MONOTONIC for at most `timeoutNanoseconds`.
    /// Returns true when the semaphore was taken, false on timeout or error.
    @usableFromInline
    func wait(timeoutNanoseconds: UInt64) -> Bool {
        CShm_sem_wait_ns(pointer, timeoutNanoseconds) == 0
    }

    /// Takes every pending post without blocking (`sem_trywait` until EAGAIN, bounded).
    @usableFromInline
    func drain() {
        var bound = 64
        while bound > 0, CShm_sem_trywait(pointer) == 0 { bound -= 1 }
    }

}
