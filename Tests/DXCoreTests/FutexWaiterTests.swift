import CShm
import DXCore
import Synchronization
import Testing

/// The process's waker for suspended tasks (Wait/FutexWaiter.swift), through io_uring and by
/// polling: every wait ends exactly once, with the right outcome, however changes, time-outs and
/// cancellations race.
@Suite(.serialized, .timeLimit(.minutes(2))) struct FutexWaiterTests {
    static let waiters = [("io_uring", FutexWaiter.shared), ("polling", FutexWaiter(useRing: false))]

    /// Words in memory of their own, as a region's would be.
    final class Words: @unchecked Sendable {
        let base: UnsafeMutablePointer<UInt32>
        let count: Int
        init(_ count: Int) {
            self.count = count
            base = .allocate(capacity: count)
            base.initialize(repeating: 0, count: count)
        }
        deinit { base.deallocate() }
        func post(_ index: Int) {
            CShm_store_release_u32(UnsafeMutableRawPointer(base + index), 1)
            _ = CShm_futex_wake(base + index, Int32.max)
        }
    }

    @Test(arguments: [0, 1]) func aChangedWordEndsItsWaitAndOnlyThatOne(which: Int) async {
        let waiter = Self.waiters[which].1
        let words = Words(2)
        async let first = waiter.wait(on: words.base, expected: 0, timeoutNanoseconds: 20_000_000_000)
        async let second = waiter.wait(on: words.base + 1, expected: 0, timeoutNanoseconds: 300_000_000)
        #expect(await eventually { waiter.waiting >= 2 })
        words.post(0)
        #expect(await first == .changed)
        #expect(await second == .timedOut)  // its word never changed
    }

    @Test(arguments: [0, 1]) func aWordThatAlreadyDiffersReturnsAtOnce(which: Int) async {
        let waiter = Self.waiters[which].1
        let words = Words(1)
        words.base.pointee = 7
        #expect(await waiter.wait(on: words.base, expected: 0, timeoutNanoseconds: 20_000_000_000) == .changed)
    }

    @Test(arguments: [0, 1]) func cancellationEndsAWaitAndOnlyThatOne(which: Int) async {
        let waiter = Self.waiters[which].1
        let words = Words(2)
        let cancelled = Task { await waiter.wait(on: words.base, expected: 0, timeoutNanoseconds: 20_000_000_000) }
        let kept = Task { await waiter.wait(on: words.base + 1, expected: 0, timeoutNanoseconds: 20_000_000_000) }
        #expect(await eventually { waiter.waiting >= 2 })
        cancelled.cancel()
        #expect(await cancelled.value == .cancelled)
        words.post(1)
        #expect(await kept.value == .changed)
        // Cancelled before it began: ends at once.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await waiter.wait(on: words.base, expected: 0, timeoutNanoseconds: 20_000_000_000)
        }
        #expect(await early.value == .cancelled)
    }

    /// 1000 waits at once; each word is posted, or its task cancelled, in a random order while
    /// the waits are still arriving. Every wait ends once, with the outcome its word got (a wait
    /// both posted and cancelled may end either way), and none is left waiting.
    @Test(arguments: [0, 1]) func aThousandRacingWaitsEachEndOnce(which: Int) async {
        let waiter = Self.waiters[which].1
        let count = 1000
        let words = Words(count)
        let before = waiter.resumed
        var generator = SystemRandomNumberGenerator()
        let cancelSet = Set((0..<count).filter { _ in Bool.random(using: &generator) })
        let tasks = (0..<count).map { index in
            Task { await waiter.wait(on: words.base + index, expected: 0, timeoutNanoseconds: 30_000_000_000) }
        }
        for index in (0..<count).shuffled() {
            if cancelSet.contains(index) { tasks[index].cancel() } else { words.post(index) }
            if index % 7 == 0 { await Task.yield() }
        }
        var outcomes: [FutexWaiter.Outcome] = []
        for task in tasks { outcomes.append(await task.value) }
        for index in 0..<count {
            if cancelSet.contains(index) {
                #expect(outcomes[index] == .cancelled || outcomes[index] == .changed)
            } else {
                #expect(outcomes[index] == .changed, "wait \(index): \(outcomes[index])")
            }
        }
        #expect(waiter.resumed - before == UInt64(count))
        #expect(await eventually { waiter.waiting == 0 })
    }
}
