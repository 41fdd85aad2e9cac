import CShm
import DXCore
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Guest threads that share a worker take turns (see Lane+Turns.swift).
@Suite(.serialized, .timeLimit(.minutes(2))) struct TurnTests {
    static let turns = WaitStrategy(spinPolicy: SpinPolicy(spinMin: 100, spinMax: 5000, spinStart: 2000, yieldEvery: 128),
                                    turnPolicy: TurnPolicy(turnCalls: 1024, turnQuantumNanoseconds: 200_000))

    func turnstileWords(_ name: String) throws -> (next: UInt64, serving: UInt64) {
        try withRawRegion(name) { base, _, _ in
            (CShm_load_acquire_u64(base + Layout.Header.turnstiles + Layout.Header.turnNext),
             CShm_load_acquire_u64(base + Layout.Header.turnstiles + Layout.Header.turnServing))
        }
    }

    @Test func manyThreadsTakingTurnsAllFinish() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 8, slotCapacity: 64, workerCount: 1))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let region = try Region.attach(name: name)
        let completed = Atomic<Int>(0)
        let threads = try (0..<8).map { index in
            try DXCore.Thread {
                var lane = try! region.claimLane(strategy: TurnTests.turns, startingAt: index)
                for call in 0..<20_000 {
                    let value = UInt64(index << 32 | call)
                    let echoed = withUnsafeBytes(of: value) { request in
                        try? lane.call(request: { $0.copyMemory(from: request); return 8 },
                                       response: { $0.load(as: UInt64.self) }).get()
                    }
                    if echoed == value { completed.add(1, ordering: .relaxed) }
                }
            }
        }
        for thread in threads { thread.join() }
        #expect(completed.load(ordering: .relaxed) == 8 * 20_000)
        // Every ticket handed out was served and passed on: the queue is empty.
        let words = try turnstileWords(name)
        #expect(words.next == words.serving)
        #expect(words.next > 8)  // the threads really did queue and pass turns
    }

    @Test func droppingALanePassesItsTurn() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let region = try Region.attach(name: name)
        var lane = try region.claimLane(strategy: TurnTests.turns)
        #expect(try lane.call([1]).get() == [1])
        #expect(try turnstileWords(name) == (next: 1, serving: 0))  // ticket 0 holds the turn
        _ = consume lane
        #expect(try turnstileWords(name) == (next: 1, serving: 1))
    }

    /// A guest process killed while holding the turn, with more of its threads queued behind it:
    /// their tickets are never served by anyone, and the live waiter must get past all of them.
    @Test func deadTicketsAreSkipped() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        try withRawRegion(name) { base, _, _ in
            let turnstile = base + Layout.Header.turnstiles
            CShm_store_relaxed_u64(turnstile + Layout.Header.turnNext, 3)      // tickets 0, 1, 2: the dead
            CShm_store_relaxed_u64(turnstile + Layout.Header.turnServing, 0)   // 0 "holds" the turn
            CShm_store_relaxed_u64(turnstile + Layout.Header.turnLease, 1)     // long ago
        }
        var lane = try Region.attach(name: name).claimLane(strategy: TurnTests.turns)
        #expect(try lane.call([7]).get() == [7])
        #expect(try turnstileWords(name) == (next: 4, serving: 3))
    }

    func setTurnstile(_ name: String, next: UInt64? = nil, serving: UInt64? = nil, lease: UInt64? = nil) throws {
        try withRawRegion(name) { base, _, _ in
            let turnstile = base + Layout.Header.turnstiles
            if let next { CShm_store_seqcst_u64(turnstile + Layout.Header.turnNext, next) }
            if let serving { CShm_store_seqcst_u64(turnstile + Layout.Header.turnServing, serving) }
            if let lease { CShm_store_seqcst_u64(turnstile + Layout.Header.turnLease, lease) }
        }
    }

    /// The quantum depends on the waiters: a holder with 2 waiters keeps a 1 s quantum; once 99
    /// wait, its quantum is 1 s · 4 / 99 ≈ 40 ms, and it passes at its next check (its lease is
    /// already older). The waiters here are tickets nobody holds, so after passing, the holder's
    /// next call waits behind them and fails at its call timeout, with nothing published.
    @Test func aHolderPassesSoonerWhenManyWait() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let policy = TurnPolicy(turnCalls: 1 << 30, turnQuantumNanoseconds: 1_000_000_000)
        // Spins and never sleeps for a response: a call that sleeps passes its turn to the
        // (fake) waiters first, which is not what this test is about.
        let strategy = WaitStrategy(spinPolicy: WaitStrategy.spin.spinPolicy, turnPolicy: policy)
        var lane = try Region.attach(name: name).claimLane(strategy: strategy)
        lane.callTimeoutNanoseconds = 30_000_000
        #expect(try lane.call([1]).get() == [1])  // ticket 0 holds the turn
        try setTurnstile(name, next: 3)            // tickets 1 and 2 wait
        let holdUntil = CShm_monotonic_ns() + 50_000_000
        while CShm_monotonic_ns() < holdUntil { #expect(try lane.call([2]).get() == [2]) }
        #expect(try turnstileWords(name) == (next: 3, serving: 0))  // 2 waiters: the whole quantum
        #expect(lane.turnPasses == 0)

        try setTurnstile(name, next: 100)          // 99 wait
        let start = CShm_monotonic_ns()
        var outcome: Result<[UInt8], CallError> = .success([])
        while CShm_monotonic_ns() < start + 3_000_000_000 {
            outcome = lane.call([3])
            if case .failure = outcome { break }
        }
        let elapsed = CShm_monotonic_ns() - start
        #expect(outcome == .failure(.timedOut))
        #expect(lane.turnPasses == 1 && lane.turnWaits == 1)
        #expect(try turnstileWords(name) == (next: 101, serving: 1))
        // A constant quantum would hold until the lease is 1 s old; the rule passes at once.
        #expect(elapsed < 500_000_000, "passed after \(elapsed / 1_000_000) ms")
    }

    /// The stale period shrinks with the queue: 200 dead tickets at a 10 ms quantum drain in about
    /// 0.6 s (the sum of 2 · quantum(w) + 1 ms for w = 200...1), not 200 × 21 ms = 4.2 s.
    @Test func aLongQueueOfDeadTicketsDrainsFaster() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        try setTurnstile(name, next: 200, serving: 0, lease: 1)
        let policy = TurnPolicy(turnCalls: 1024, turnQuantumNanoseconds: 10_000_000)
        let strategy = WaitStrategy(spinPolicy: TurnTests.turns.spinPolicy, turnPolicy: policy)
        var lane = try Region.attach(name: name).claimLane(strategy: strategy)
        let expected = (UInt64(1)...200).reduce(0) { $0 + policy.staleLeaseNanoseconds(waiters: $1) }
        #expect(expected < 700_000_000)
        let start = CShm_monotonic_ns()
        #expect(try lane.call([7]).get() == [7])
        let elapsed = CShm_monotonic_ns() - start
        #expect(try turnstileWords(name) == (next: 201, serving: 200))
        #expect(elapsed >= expected - 50_000_000, "drained in \(elapsed / 1_000_000) ms")
        #expect(elapsed < 3_000_000_000, "drained in \(elapsed / 1_000_000) ms")
    }

    @Test func anIdleHolderLosesItsTurnToAWaiter() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let region = try Region.attach(name: name)
        var idle = try region.claimLane(strategy: TurnTests.turns, startingAt: 0)
        #expect(try idle.call([1]).get() == [1])  // takes the turn, then stops calling
        let answered = Atomic<Bool>(false)
        let waiter = try DXCore.Thread {
            var lane = try! region.claimLane(strategy: TurnTests.turns, startingAt: 1)
            answered.store((try? lane.call([2]).get()) == [2], ordering: .relaxed)
        }
        waiter.join()  // returns once the waiter took the stale turn
        let waiterWasAnswered = answered.load(ordering: .relaxed)
        #expect(waiterWasAnswered)
        // The idle holder notices on its next turn check and queues again; its calls still work.
        for _ in 0..<200 { #expect(try idle.call([3]).get() == [3]) }
    }

    /// `auto`'s placement: a turn holder moves off the CPU its worker published for the turn, and
    /// gets its own affinity back when the lane is released. The real worker publishes its own CPU
    /// too and may overwrite the hint this test writes, so the test reads which CPU the narrowed
    /// mask leaves out instead of assuming it is the one it wrote.
    @Test(.enabled(if: CPUAffinity.allowedCPUs > 1)) func turnHolderKeepsOffTheWorkerCPU() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let region = try Region.attach(name: name)
        let allowed = CShm_available_cpus()
        // 1024 is glibc's CPU_SETSIZE, the most CPUs an affinity mask of cpu_set_t holds.
        let before = (0..<Int32(1024)).filter { CShm_cpu_allowed($0) }
        var narrowed: Int32 = -1
        try withRawRegion(name) { base, _, _ in
            let workerCPU = base + Layout.Header.doorbells + Layout.Header.doorbellWorkerCPU
            var lane = try region.claimLane(strategy: .auto)
            // Say the worker runs where this thread runs, then make calls past a turn check.
            for _ in 0..<100 where narrowed < 0 {
                CShm_store_relaxed_u32(workerCPU, UInt32(CShm_current_cpu()))
                for _ in 0..<65 { _ = try lane.call([1, 2, 3]).get() }
                if CShm_available_cpus() < allowed { narrowed = CShm_available_cpus() }
            }
            #expect(narrowed == allowed - 1)
            let left = before.filter { !CShm_cpu_allowed($0) }
            #expect(left.count == 1)
            #expect(CShm_cpu_allowed(CShm_current_cpu()))
            #expect(!left.contains(CShm_current_cpu()))
            _ = consume lane
        }
        #expect(CShm_available_cpus() == allowed)
        #expect(before.allSatisfy { CShm_cpu_allowed($0) })
    }
}
