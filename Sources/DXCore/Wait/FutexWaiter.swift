#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import Synchronization

/// The process's one waker for suspended waits: a task that would sleep on a futex word hands the
/// word to this thread and suspends; the thread waits on every such word at once and resumes the
/// task when its word changes, its time is up, or it is cancelled. No Swift-concurrency thread is
/// ever blocked, and there is one thread per process, not one per call.
///
/// It waits through io_uring: one `IORING_OP_FUTEX_WAIT` per word (filled by hand in the shim:
/// liburing 2.3 has no helper), submitted as the word arrives, so the number of words has no
/// limit and the kernel needs no helper thread. Words come in through a mailbox whose own futex
/// word sits in the same ring, behind a ``Parker`` (a sender makes a system call only when the
/// waker sleeps). Where the kernel lacks the futex op (before Linux 6.7) or io_uring is forbidden,
/// it polls the words instead: every 20 µs while they change, backing off to every 1 ms.
///
/// Only the waker thread resumes a continuation, so each is resumed exactly once, whichever of
/// change, time-out and cancellation comes first.
package final class FutexWaiter: @unchecked Sendable {
    /// How a wait ended. `changed` also covers a spurious wake-up: callers re-check their condition.
    package enum Outcome: Sendable { case changed, timedOut, cancelled }

    /// The process's waker (its thread starts at the first wait).
    package static let shared = FutexWaiter(useRing: true)

    /// Whether this waker waits through io_uring when the kernel can (else it polls).
    private let useRing: Bool

    /// One suspended wait. The waker thread owns it once it is in the mailbox.
    private final class Waiter: @unchecked Sendable {
        let id: UInt64
        let word: UnsafeMutablePointer<UInt32>
        let expected: UInt32
        let deadline: UInt64
        /// Set once, before the waiter is posted.
        var continuation: CheckedContinuation<Outcome, Never>?
        /// Set by the task's cancellation handler, which may run at any moment: the waker reads it
        /// when it takes the waiter, and a cancel message that came first finds nothing.
        let cancelled = Atomic<Bool>(false)
        /// Whether a futex wait for it is in the ring.
        var inRing = false

        init(id: UInt64, word: UnsafeMutablePointer<UInt32>, expected: UInt32, deadline: UInt64) {
            self.id = id
            self.word = word
            self.expected = expected
            self.deadline = deadline
        }
    }

    private enum Message {
        case add(Waiter)
        case cancel(UInt64)
    }

    private let mailbox = Mutex<[Message]>([])
    /// Non-zero while the mailbox holds messages (seq-cst: the parker handshake's publication).
    private let mailboxCount = Atomic<Int>(0)
    /// The waker's parker (host memory: the flag and the word).
    private let parkerWords: UnsafeMutablePointer<UInt32>
    private var parker: Parker {
        Parker(flag: UnsafeMutableRawPointer(parkerWords), word: UnsafeMutableRawPointer(parkerWords + 1))
    }
    private let nextID = Atomic<UInt64>(1)
    private let started = Atomic<Bool>(false)
    /// Waits the waker thread has resumed, for tests and the bench (relaxed).
    private let resumedCount = Atomic<UInt64>(0)
    private let waitingCount = Atomic<Int>(0)

    private static var mailboxData: UInt64 { 1 << 63 }
    private static var cancelData: UInt64 { 1 << 62 }

    /// A waker of its own: ``shared`` is the process's; tests make one that polls (`useRing`
    /// false), as a kernel without io_uring futex waits would have it. Its thread runs for the
    /// process's life.
    package init(useRing: Bool) {
        self.useRing = useRing
        parkerWords = .allocate(capacity: 2)
        parkerWords.initialize(repeating: 0, count: 2)
    }

    /// How many waits the waker has ended so far.
    package var resumed: UInt64 { resumedCount.load(ordering: .relaxed) }
    /// How many tasks wait now (posted and not yet resumed).
    package var waiting: Int { waitingCount.load(ordering: .relaxed) }

    /// Suspends until the 32-bit `word` no longer holds `expected` (or someone wakes it), for at
    /// most `timeoutNanoseconds`, or until the task is cancelled. `word` must be a futex word in
    /// shared memory (or any memory, with shared-futex semantics) that stays mapped until this
    /// returns.
    package func wait(isolation: isolated (any Actor)? = #isolation, on word: UnsafeMutablePointer<UInt32>, expected: UInt32, timeoutNanoseconds: UInt64) async -> Outcome {
        startIfNeeded()
        let waiter = Waiter(id: nextID.add(1, ordering: .relaxed).oldValue, word: word, expected: expected,
                            deadline: CShm_monotonic_ns() &+ timeoutNanoseconds)
        return await withTaskCancellationHandler {
            await withCheckedContinuation(isolation: isolation) { (continuation: CheckedContinuation<Outcome, Never>) in
                waiter.continuation = continuation
                waitingCount.add(1, ordering: .relaxed)
                send(.add(waiter))
            }
        } onCancel: {
            waiter.cancelled.store(true, ordering: .sequentiallyConsistent)
            send(.cancel(waiter.id))
        }
    }

    private func send(_ message: Message) {
        mailbox.withLock { messages in
            messages.append(message)
            mailboxCount.store(messages.count, ordering: .sequentiallyConsistent)
        }
        // Seq-cst flag load after the seq-cst count store: the waker's re-check sees the message,
        // or this sees its flag and posts.
        _ = parker.unpark()
    }

    private func startIfNeeded() {
        guard !started.load(ordering: .acquiring) else { return }
        guard started.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        do {
            _ = try Thread(stackSize: 256 * 1024) { [self] in run() }  // runs for the process's life
        } catch {
            // Without a thread nothing could resume a wait: that is a broken process, not an error
            // a caller can handle.
            fatalError("dx: cannot start the futex waker thread: \(error)")
        }
    }

    // MARK: - The waker thread

    private func run() {
        var ring: OpaquePointer?
        if !useRing || CShm_ring_create(256, &ring) != 0 { ring = nil }
        if let candidate = ring, !CShm_ring_has_futex(candidate) {
            CShm_ring_destroy(candidate)
            ring = nil
        }
        var waiters: [UInt64: Waiter] = [:]
        var mailboxArmed = false
        var pollInterval: UInt64 = 20_000
        /// Waits that end in this round (kept to reuse its storage).
        var due: [(Waiter, Outcome)] = []
        while true {
            if mailboxCount.load(ordering: .sequentiallyConsistent) != 0 {
                takeMessages(into: &waiters, ring: ring)
            }
            var changed = false
            if let ring {
                var data: UInt64 = 0, result: Int32 = 0, flags: UInt32 = 0
                while CShm_ring_next(ring, &data, &result, &flags) {
                    if data == Self.mailboxData {
                        mailboxArmed = false
                        continue
                    }
                    if data == Self.cancelData || result == -ECANCELED { continue }
                    guard let waiter = waiters[data] else { continue }
                    waiter.inRing = false
                    // Woken (0) or the word did not hold the value (-EAGAIN): the caller re-checks.
                    // Anything else (a word the kernel cannot wait on) waits out its time, polled.
                    if result == 0 || result == -EAGAIN { finish(waiter, .changed, in: &waiters, ring: nil) }
                }
            }
            // Words the ring does not watch are polled (all of them without a ring).
            let now = CShm_monotonic_ns()
            var nearest = now &+ 1_000_000_000
            var polling = false
            for waiter in waiters.values {
                if !waiter.inRing, CShm_load_acquire_u32(UnsafeMutableRawPointer(waiter.word)) != waiter.expected {
                    due.append((waiter, .changed))
                    changed = true
                } else if waiter.deadline <= now {
                    due.append((waiter, .timedOut))
                } else {
                    nearest = min(nearest, waiter.deadline)
                    polling = polling || !waiter.inRing
                }
            }
            for (waiter, outcome) in due { finish(waiter, outcome, in: &waiters, ring: ring) }
            due.removeAll(keepingCapacity: true)
            if polling {
                pollInterval = changed ? 20_000 : min(pollInterval * 2, 1_000_000)
                nearest = min(nearest, now &+ pollInterval)
            }
            // Sleep until a word changes, a message comes, or the nearest deadline.
            let parker = parker
            parker.arm()
            if mailboxCount.load(ordering: .sequentiallyConsistent) != 0 {
                parker.disarm()
                continue
            }
            let timeout = nearest &- min(nearest, CShm_monotonic_ns())
            if let ring {
                if !mailboxArmed, CShm_ring_futex_wait(ring, parkerWords + 1, 0, true, Self.mailboxData) == 0 {
                    mailboxArmed = true
                }
                _ = CShm_ring_submit_and_wait(ring, max(timeout, 1))
            } else {
                _ = CShm_futex_wait(parkerWords + 1, 0, max(timeout, 1))
            }
            parker.disarm()
        }
    }

    private func takeMessages(into waiters: inout [UInt64: Waiter], ring: OpaquePointer?) {
        let messages = mailbox.withLock { messages in
            defer {
                messages.removeAll(keepingCapacity: true)
                mailboxCount.store(0, ordering: .sequentiallyConsistent)
            }
            return messages
        }
        for message in messages {
            switch message {
            case .add(let waiter):
                if waiter.cancelled.load(ordering: .sequentiallyConsistent) {
                    finish(waiter, .cancelled, in: &waiters, ring: nil)
                    continue
                }
                waiters[waiter.id] = waiter
                if let ring {
                    var queued = CShm_ring_futex_wait(ring, waiter.word, waiter.expected, true, waiter.id)
                    if queued != 0 {
                        _ = CShm_ring_submit(ring)  // the submission queue was full
                        queued = CShm_ring_futex_wait(ring, waiter.word, waiter.expected, true, waiter.id)
                    }
                    waiter.inRing = queued == 0  // else it is polled
                }
            case .cancel(let id):
                if let waiter = waiters[id] { finish(waiter, .cancelled, in: &waiters, ring: ring) }
            }
        }
        if let ring { _ = CShm_ring_submit(ring) }
    }

    /// Resumes a waiter and forgets it; its futex wait in the ring, if any, is cancelled (its
    /// completion, -ECANCELED, is ignored: ids are never reused).
    private func finish(_ waiter: Waiter, _ outcome: Outcome, in waiters: inout [UInt64: Waiter], ring: OpaquePointer?) {
        waiters[waiter.id] = nil
        if waiter.inRing, let ring {
            waiter.inRing = false
            if CShm_ring_cancel(ring, waiter.id, Self.cancelData) != 0 {
                _ = CShm_ring_submit(ring)
                _ = CShm_ring_cancel(ring, waiter.id, Self.cancelData)
            }
            _ = CShm_ring_submit(ring)
        }
        resumedCount.add(1, ordering: .relaxed)
        waitingCount.subtract(1, ordering: .relaxed)
        waiter.continuation?.resume(returning: outcome)
    }
}
