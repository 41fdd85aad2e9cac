#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

/// dx's semaphore: a binary one on a 32-bit futex word, with the sleeping flag that keeps posts
/// off the fast path. Both words live in shared memory; no libc object does.
///
/// The handoff, written once. A sleeper zeroes the word, announces that it sleeps (flag = 1,
/// seq-cst), re-checks its condition (seq-cst), and only then waits on the word with a bounded
/// `FUTEX_WAIT`. A publisher stores what it publishes with seq-cst and then loads the flag
/// (seq-cst); only when the flag is set does it clear it by CAS and post (word = 1, then
/// `FUTEX_WAKE`). Of the two seq-cst store-then-load pairs, at least one sees the other's store,
/// so no wake-up is lost; and the CAS makes exactly one publisher post per sleep.
///
/// - Important: The words are guest-writable. Whatever a peer writes into them costs at most a
///   spurious return (the word is binary: garbage is "posted" once, and zeroed before the next
///   sleep) or one bounded wait: every ``park(timeoutNanoseconds:until:)`` returns within its
///   timeout, whatever the futex call returns.
@usableFromInline
package struct Parker {
    /// The sleeping flag (u32): 1 while the owner sleeps or is about to.
    @usableFromInline let flag: UnsafeMutableRawPointer
    /// The futex word (u32): 0 while nobody posted since the sleeper armed it, 1 after a post.
    @usableFromInline let word: UnsafeMutableRawPointer

    @inlinable
    package init(flag: UnsafeMutableRawPointer, word: UnsafeMutableRawPointer) {
        self.flag = flag
        self.word = word
    }

    /// How a park ended.
    @usableFromInline
    package enum Outcome: Sendable { case ready, posted, timedOut, cancelled }

    /// Sleeper side: arms the word, announces the sleep, re-checks `ready` and sleeps until a post
    /// or `timeoutNanoseconds` (CLOCK_MONOTONIC, re-armed with what remains after a spurious
    /// return). `ready` must load what the publisher stores with seq-cst order.
    @usableFromInline
    package func park(timeoutNanoseconds: UInt64, until ready: () -> Bool) -> Outcome {
        arm()
        defer { disarm() }
        if ready() { return .ready }
        let deadline = CShm_monotonic_ns() &+ timeoutNanoseconds
        var remaining = timeoutNanoseconds
        while true {
            let result = CShm_futex_wait(word.assumingMemoryBound(to: UInt32.self), 0, remaining)
            // Acquire: pairs with the poster's release store of 1.
            if CShm_load_acquire_u32(word) != 0 { return .posted }
            switch result {
            case EAGAIN:
                // The word was not 0 when the kernel looked: a post (or a forged one) happened and
                // was flipped back since. Count it as the post it was, so that a peer toggling the
                // word costs a spurious return each time, never a loop of futex calls.
                return .posted
            case 0, EINTR:
                break  // a wake without a post, or a signal: sleep on
            case ETIMEDOUT:
                return .timedOut
            default:
                // EFAULT or anything else the kernel says about a word we cannot wait on: wait out
                // the time without it, so the caller never spins.
                CShm_sleep_ns(remaining)
                return .timedOut
            }
            let now = CShm_monotonic_ns()
            guard now < deadline else { return .timedOut }
            remaining = deadline &- now
        }
    }

    /// Sleeper side, for a task: the same handshake as ``park(timeoutNanoseconds:until:)``, but the
    /// task suspends while the process's ``FutexWaiter`` waits on the word, so no thread blocks.
    /// Returns `.cancelled` when the task is cancelled meanwhile.
    package func suspend(isolation: isolated (any Actor)? = #isolation, timeoutNanoseconds: UInt64,
                         until ready: () -> Bool) async -> Outcome {
        arm()
        defer { disarm() }
        if ready() { return .ready }
        let outcome = await FutexWaiter.shared.wait(on: word.assumingMemoryBound(to: UInt32.self), expected: 0,
                                                    timeoutNanoseconds: timeoutNanoseconds)
        // Acquire: pairs with the poster's release store of 1.
        if CShm_load_acquire_u32(word) != 0 { return .posted }
        switch outcome {
        case .changed: return .posted  // a forged or flipped-back post: a spurious return, as above
        case .timedOut: return .timedOut
        case .cancelled: return .cancelled
        }
    }

    /// Sleeper side, the first half of a park for sleepers that wait elsewhere (a pool worker waits
    /// on many words through io_uring): zeroes the word and announces the sleep. The caller then
    /// re-checks its condition with seq-cst loads and waits on ``word`` while it holds 0, or
    /// ``disarm()``s.
    @inlinable
    package func arm() {
        // Relaxed: ordered before the publisher can see the flag by the seq-cst store below.
        CShm_store_relaxed_u32(word, 0)
        // Seq-cst: the flag is visible before the caller's re-check loads; pairs with the
        // publisher's seq-cst store of what it publishes, followed by its seq-cst load of this flag.
        CShm_store_seqcst_u32(flag, 1)
    }

    /// Sleeper side: the sleep is over (or was not needed); publishers stop posting.
    @inlinable
    package func disarm() {
        CShm_store_relaxed_u32(flag, 0)
    }

    /// Publisher side, after its seq-cst store: posts when the sleeper announced a sleep. Returns
    /// whether it posted (at most one publisher does per sleep: the one whose CAS clears the flag).
    @inlinable
    package func unpark() -> Bool {
        // Seq-cst: pairs with the sleeper's seq-cst store of the flag (see the type's discussion).
        guard CShm_load_seqcst_u32(flag) != 0 else { return false }
        return wakeIfSleeping()
    }

    /// Clears the flag by CAS and, if that succeeded, posts.
    @usableFromInline
    package func wakeIfSleeping() -> Bool {
        // Acquire-release: one CAS wins per sleep.
        guard CShm_cas_acqrel_u32(flag, 1, 0) else { return false }
        post()
        return true
    }

    /// Posts whatever the flag says: for stopping, where the flag may have been vandalised.
    @usableFromInline
    package func post() {
        // Release: pairs with the sleeper's acquire load of the word.
        CShm_store_release_u32(word, 1)
        // Everyone waiting on the word: its owner, and any wait a process's futex waker could not
        // cancel in time (Wait/FutexWaiter.swift), which must not absorb the owner's wake-up.
        _ = CShm_futex_wake(word.assumingMemoryBound(to: UInt32.self), Int32.max)
    }
}
