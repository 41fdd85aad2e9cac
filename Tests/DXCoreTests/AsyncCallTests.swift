import CAllocationCounter
import CShm
import DXCore
import Synchronization
import DXTestSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A gate a test's handler blocks on (on the serving worker, which a test may stall): closed until
/// opened; it records the first byte of every request it saw, in order, and answers 0xEE followed
/// by the request. (DXTestSupport's `Gate` is its async counterpart, for async handlers.)
final class HandlerGate: Sendable {
    private let open = Atomic<Bool>(false)
    private let entered = Atomic<Int>(0)
    private let seen = Mutex<[UInt8]>([])

    var handler: ClosureHandler {
        ClosureHandler { [self] request, response in
            seen.withLock { $0.append(request.first ?? 0) }
            entered.add(1, ordering: .sequentiallyConsistent)
            while !open.load(ordering: .acquiring) { usleep(200) }
            // Answers 0xEE and then the request, written in place over it (so a request written
            // into the lane before this answer was taken would be overwritten by it).
            let bytes = Array(request)
            response[0] = 0xEE
            for (offset, byte) in bytes.enumerated() where offset + 1 < response.count { response[offset + 1] = byte }
            return min(bytes.count + 1, response.count)
        }
    }

    func release() { open.store(true, ordering: .releasing) }
    var requestsEntered: Int { entered.load(ordering: .sequentiallyConsistent) }
    var requestsSeen: [UInt8] { seen.withLock { $0 } }
}

/// An in-process host whose handler waits at a closed ``HandlerGate``. Close it with ``close(_:_:)``.
func gatedHost(lanes: Int, _ label: String = #function) throws -> (DXCore.Host, HandlerGate) {
    let host = try DXCore.Host(name: uniqueName(label), configuration: RegionConfiguration(laneCount: lanes, slotCapacity: 64))
    let gate = HandlerGate()
    try host.start(handler: gate.handler)
    return (host, gate)
}

/// Opens the gate (the worker may be waiting at it) and stops the host.
func close(_ host: DXCore.Host, _ gate: HandlerGate) {
    gate.release()
    host.stop()
}

/// Polls (suspending) until `condition` holds or `seconds` pass; returns whether it held.
func eventually(seconds: Double = 20, _ condition: () -> Bool) async -> Bool {
    let deadline = CShm_monotonic_ns() + UInt64(seconds * 1e9)
    while CShm_monotonic_ns() < deadline {
        if condition() { return true }
        try? await Task.sleep(nanoseconds: 1_000_000)
    }
    return condition()
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct AsyncCallTests {
    @Test func asyncCallsAnswerEveryRequestWithItsOwnResponse() async throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 256))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        var lane = try Region.attach(name: name).claimLane()
        for index in 0..<20_000 {
            let value = UInt64(index) &* 0x9E37_79B9_7F4A_7C15
            let echoed = try await lane.call(
                request: { buffer in buffer.storeBytes(of: value, as: UInt64.self); return 8 },
                response: { buffer in buffer.count == 8 ? buffer.loadUnaligned(as: UInt64.self) : 0 })
            #expect(echoed == value)
            if echoed != value { break }
        }
        #expect(try await lane.call([1, 2, 3]) == [1, 2, 3])
        await #expect(throws: CallError.payloadTooLarge(length: 300, capacity: 256)) {
            _ = try await lane.call([UInt8](repeating: 0, count: 300))
        }
        // A refused request publishes nothing: the lane still works.
        #expect(try await lane.call([4]) == [4])
    }

    /// While the host sits on every request, the calls are suspended, not blocking: the
    /// cooperative pool (as wide as the CPUs) still runs other tasks.
    @Test func aSlowHostHoldsNoPoolThread() async throws {
        let width = 8
        let (host, gate) = try gatedHost(lanes: width)
        defer { close(host, gate) }
        let name = host.name
        let pool = try LanePool(region: try Region.attach(name: name), width: width)
        // More calls than CPUs, all waiting on the one worker that is stuck in the first request.
        let calls = Task {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<width {
                    group.addTask {
                        let byte = UInt8(index + 1)
                        return try await pool.withLane { try await $0.call([byte, byte]) } == [0xEE, byte, byte]
                    }
                }
                return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
        }
        #expect(await eventually { gate.requestsEntered == 1 })
        #expect(await eventually { FutexWaiter.shared.waiting >= width - 1 },
                "the waiting calls should be suspended in the waker, not spinning or blocked")
        // Other tasks still run: twice as many as the pool has threads, each on the pool.
        let others = await withTaskGroup(of: Int.self) { group in
            for value in 0..<(2 * CPUAffinity.allowedCPUs) { group.addTask { await Task.yield(); return value } }
            return await group.reduce(0, +)
        }
        #expect(others == (0..<(2 * CPUAffinity.allowedCPUs)).reduce(0, +))
        gate.release()
        #expect(try await calls.value == width)
        #expect(Set(gate.requestsSeen) == Set((1...width).map(UInt8.init)))
    }

    /// A call cancelled while it waits throws CancellationError; the lane's next call waits for the
    /// cancelled request's answer (the host writes it in place) and gets its own answer, never the
    /// late one.
    @Test func aCancelledCallsLateAnswerNeverReachesTheNextCall() async throws {
        let (host, gate) = try gatedHost(lanes: 1)
        defer { close(host, gate) }
        let name = host.name
        let pool = try LanePool(region: try Region.attach(name: name), width: 1)
        let first = Task { try await pool.withLane { try await $0.call([0xAA, 1, 2, 3]) } }
        #expect(await eventually { gate.requestsEntered == 1 })
        first.cancel()
        await #expect(throws: CancellationError.self) { _ = try await first.value }
        // The next call starts while the cancelled request is still being answered.
        let second = Task { try await pool.withLane { try await $0.call([0xBB, 9]) } }
        #expect(await eventually { FutexWaiter.shared.waiting >= 1 }, "the next call should wait for the late answer")
        // The drain matters: without it the second request would be written into the lane before
        // the first answer, which the host writes over it in place.
        gate.release()
        #expect(try await second.value == [0xEE, 0xBB, 9])
        #expect(gate.requestsSeen == [0xAA, 0xBB])
        // The blocking call form drains the same way.
        let third = Task { try await pool.withLane { lane in try lane.call([0xCC]).get() } }
        #expect(try await third.value == [0xEE, 0xCC])
    }

    /// Tasks wait for a lane in FIFO order; one cancelled while it waits leaves the queue.
    @Test func thePoolServesWaitersInOrderAndDropsCancelledOnes() async throws {
        let (host, gate) = try gatedHost(lanes: 4)
        defer { close(host, gate) }
        let name = host.name
        let pool = try LanePool(region: try Region.attach(name: name), width: 1)
        let holder = Task { try await pool.withLane { try await $0.call([1]) } }
        #expect(await eventually { gate.requestsEntered == 1 })
        var waiters: [Task<[UInt8], any Error>] = []
        for byte in UInt8(2)...6 {
            waiters.append(Task { try await pool.withLane { try await $0.call([byte]) } })
            #expect(await eventually { pool.waiting == Int(byte) - 1 })  // queued in this order
        }
        waiters[1].cancel()  // the task with 3
        await #expect(throws: CancellationError.self) { _ = try await waiters[1].value }
        #expect(pool.waiting == 4)
        gate.release()
        #expect(try await holder.value == [0xEE, 1])
        for (offset, task) in waiters.enumerated() where offset != 1 {
            #expect(try await task.value == [0xEE, UInt8(offset + 2)])
        }
        #expect(gate.requestsSeen == [1, 2, 4, 5, 6])
        #expect(pool.width == 1)
    }

    /// A pool whose only lane timed out (a host that was only slow) keeps it: the next borrower's
    /// call waits for the late answer, drops it, and gets its own. The pool never shrinks.
    @Test func aPoolSurvivesACallThatTimedOut() async throws {
        let (host, gate) = try gatedHost(lanes: 1)
        defer { close(host, gate) }
        let name = host.name
        let pool = try LanePool(region: try Region.attach(name: name), width: 1)
        await #expect(throws: CallError.timedOut) {
            try await pool.withLane { lane in
                lane.callTimeoutNanoseconds = 100_000_000
                return try await lane.call([0xAA])
            }
        }
        #expect(pool.width == 1)
        let next = Task { try await pool.withLane { try await $0.call([0xBB]) } }
        #expect(await eventually { FutexWaiter.shared.waiting >= 1 })
        gate.release()
        #expect(try await next.value == [0xEE, 0xBB])
        #expect(gate.requestsSeen == [0xAA, 0xBB])
        #expect(try await pool.withLane { try await $0.call([0xCC]) } == [0xEE, 0xCC])
    }

    /// A suspended call ends by its timeout when the host never answers, and the lane reports it
    /// (broken for good, as a blocking call's would be).
    @Test func aSuspendedCallTimesOut() async throws {
        let (host, gate) = try gatedHost(lanes: 1)
        defer { close(host, gate) }
        let name = host.name
        var lane = try Region.attach(name: name).claimLane()
        lane.callTimeoutNanoseconds = 200_000_000
        await #expect(throws: CallError.timedOut) { _ = try await lane.call([1]) }
        let broken = lane.isBroken
        #expect(broken)
        await #expect(throws: CallError.timedOut) { _ = try await lane.call([2]) }
        #expect(gate.requestsSeen == [1])
    }

    /// A host that goes away (it lets go of its lock and says it stops, without answering) ends a
    /// suspended call with `shutdown`, within a sleep step, not at the call timeout.
    @Test func aSuspendedCallEndsWhenTheHostGoes() async throws {
        let (host, gate) = try gatedHost(lanes: 1)
        defer { close(host, gate) }
        let name = host.name
        let pool = try LanePool(region: try Region.attach(name: name), width: 1)
        let call = Task { try await pool.withLane { lane in
            lane.callTimeoutNanoseconds = 60_000_000_000  // far beyond the test's time limit
            return try await lane.call([1])
        } }
        #expect(await eventually { gate.requestsEntered == 1 && FutexWaiter.shared.waiting >= 1 })
        host.abandon()
        do {
            _ = try await call.value
            Issue.record("the call was answered by a host that had gone")
        } catch let error as CallError {
            #expect(error == .shutdown || error == .hostGone, "\(error)")
        }
    }

    /// 1000 tasks over 8 lanes: every call answered with its own bytes, the pool never claims
    /// more than its 8 lanes (the region has 16), and it ends with all of them free.
    @Test func aThousandTasksShareEightLanes() async throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 16, slotCapacity: 64, workerCount: 2))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let pool = try LanePool(region: try Region.attach(name: name), width: 8)
        let claimedMost = Box(Atomic<Int>(0))
        let answered = try await withThrowingTaskGroup(of: Int.self) { group in
            for task in 0..<1000 {
                group.addTask {
                    var good = 0
                    for call in 0..<20 {
                        let bytes = withUnsafeBytes(of: UInt32(task << 8 | call).littleEndian, Array.init)
                        if try await pool.withLane({ try await $0.call(bytes) }) == bytes { good += 1 }
                    }
                    let claimed = (0..<16).filter { host.laneState($0) != "free" }.count
                    claimedMost.value.max(claimed, ordering: .relaxed)
                    return good
                }
            }
            return try await group.reduce(0, +)
        }
        #expect(answered == 20_000)
        #expect(claimedMost.value.load(ordering: .relaxed) == 8)
        #expect(pool.width == 8)
        #expect(pool.waiting == 0)
    }

    /// Turn waits suspend too: with turns on (`fair`) and one worker, four tasks on four lanes
    /// take turns and every call is answered.
    @Test func turnWaitsSuspend() async throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 4, slotCapacity: 64))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let region = try Region.attach(name: name)
        let results = try await withThrowingTaskGroup(of: (good: Int, waits: UInt64).self) { group in
            for index in 0..<4 {
                group.addTask {
                    var lane = try region.claimLane(strategy: .fair)
                    var good = 0
                    for call in 0..<5_000 {
                        let bytes: [UInt8] = [UInt8(index), UInt8(call & 0xFF)]
                        if try await lane.call(bytes) == bytes { good += 1 }
                    }
                    return (good, lane.turnWaits)
                }
            }
            return try await group.reduce(into: [(good: Int, waits: UInt64)]()) { $0.append($1) }
        }
        #expect(results.map(\.good) == [5_000, 5_000, 5_000, 5_000])
        // With two or more CPUs the tasks run at once, and a task that finds the turn held waits
        // for it (suspended): at least one wait happened.
        if CPUAffinity.allowedCPUs >= 2 { #expect(results.map(\.waits).reduce(0, +) > 0) }
    }

    /// Calls that never suspend allocate nothing (a task's frames come from its own allocator).
    @Test func asyncCallsAllocateNothingOnTheFastPath() async throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 256))
        try host.start(handler: ClosureHandler { request, _ in
            AllocationCounter_countThisThread(1)
            return request.count
        })
        defer { host.stop() }
        var lane = try Region.attach(name: name).claimLane(strategy: .spin)
        func roundTrips(_ count: Int) async throws -> Int {
            var answered = 0
            for index in 0..<count {
                let length = try await lane.call(request: { $0[0] = UInt8(truncatingIfNeeded: index); return 100 },
                                                 response: { $0.count })
                if length == 100 { answered += 1 }
            }
            return answered
        }
        #expect(try await roundTrips(1000) == 1000)
        // Counted only while the task runs on this thread without suspending. A call suspends when
        // the worker is descheduled for longer than the cooperative spin (its suspension allocates:
        // the waker's record); such an attempt says nothing about the fast path, so it is skipped,
        // and at least one of five attempts must have none.
        var clean = 0
        for _ in 0..<5 {
            let resumed = FutexWaiter.shared.resumed
            AllocationCounter_countThisThread(1)
            let before = AllocationCounter_count()
            let answered = try await roundTrips(20_000)
            let after = AllocationCounter_count()
            AllocationCounter_countThisThread(0)
            #expect(answered == 20_000)
            guard FutexWaiter.shared.resumed == resumed else { continue }
            #expect(after - before == 0, "allocations on the async call path: \(after - before)")
            clean += 1
        }
        #expect(clean > 0, "every attempt had a call that suspended")
    }

    /// A guest whose call waits on a slow (async) handler passes its turn before it sleeps, so the
    /// worker's other lanes keep moving: B, queued for the turn, makes all its calls while A's
    /// call is still in the handler. (The quantum is 1 s, so only that pass could let B in soon;
    /// A's pass count says it happened.)
    @Test func aCallWaitingOnASlowHandlerPassesItsTurn() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        let gate = Gate()
        try host.start(asyncHandler: AsyncClosureHandler { request, _ in
            if request.first == 0xA { try await gate.wait() }
            return request
        })
        defer {
            gate.open()
            host.stop()
        }
        let region = try Region.attach(name: name)
        let strategy = WaitStrategy(spinPolicy: SpinPolicy(spinMin: 100, spinMax: 5000, spinStart: 2000, yieldEvery: 128),
                                    turnPolicy: TurnPolicy(turnCalls: 1 << 30, turnQuantumNanoseconds: 1_000_000_000))
        let stage = Atomic<Int>(0)  // 1: A holds the turn; 2: B queued; 3: A's slow call returned
        let bCalls = Atomic<Int>(0)
        let aPasses = Atomic<UInt64>(0)
        let a = try DXCore.Thread {
            guard var lane = try? region.claimLane(strategy: strategy) else { return }
            guard (try? lane.call([0xB]).get()) == [0xB] else { return }  // takes the turn
            stage.store(1, ordering: .sequentiallyConsistent)
            while stage.load(ordering: .sequentiallyConsistent) < 2 { usleep(100) }
            if (try? lane.call([0xA, 1]).get()) == [0xA, 1] { stage.store(3, ordering: .sequentiallyConsistent) }
            aPasses.store(lane.turnPasses, ordering: .sequentiallyConsistent)
        }
        #expect(waitUntil(seconds: 20) { stage.load(ordering: .sequentiallyConsistent) == 1 })
        let b = try DXCore.Thread {
            guard var lane = try? region.claimLane(strategy: strategy) else { return }
            for call in 0..<100 where (try? lane.call([0xB, UInt8(call)]).get()) == [0xB, UInt8(call)] {
                bCalls.add(1, ordering: .sequentiallyConsistent)
            }
        }
        // B has taken its ticket (the turnstile's next counter moved to 2) before A calls.
        #expect(waitUntil(seconds: 20) {
            (try? withRawRegion(name) { base, _, _ in
                CShm_load_seqcst_u64(base + Layout.Header.turnstiles + Layout.Header.turnNext)
            }) == 2
        })
        stage.store(2, ordering: .sequentiallyConsistent)
        #expect(waitUntil(seconds: 20) { bCalls.load(ordering: .sequentiallyConsistent) == 100 })
        #expect(gate.arrived == 1 && stage.load(ordering: .sequentiallyConsistent) == 2,
                "B finished while A's call was still in the handler")
        gate.open()
        a.join()
        b.join()
        #expect(stage.load(ordering: .sequentiallyConsistent) == 3)
        #expect(aPasses.load(ordering: .sequentiallyConsistent) == 1)
    }
}

/// A ~Copyable value (an atomic) that escaping closures can share.
final class Box<Value: ~Copyable & Sendable>: Sendable {
    let value: Value
    init(_ value: consuming Value) { self.value = value }
}
