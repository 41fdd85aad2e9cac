import CShm
@testable import DXCore
import DXTestSupport
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Async handlers (`Host.start(asyncHandler:)`): every test holds its handlers at a ``Gate`` and
/// looks while they are provably still running, so nothing here depends on timing.
@Suite(.serialized, .timeLimit(.minutes(5))) struct AsyncHandlerTests {
    /// What a handler saw, in order.
    final class Seen: Sendable {
        private let requests = Mutex<[[UInt8]]>([])
        func add(_ request: [UInt8]) { requests.withLock { $0.append(request) } }
        var all: [[UInt8]] { requests.withLock { $0 } }
    }

    /// A guest call on its own thread; `result` is nil until it returns.
    final class PendingCall: @unchecked Sendable {
        private let outcome = Mutex<Result<[UInt8], CallError>?>(nil)
        private var thread: DXCore.Thread?

        init(region: Region, lane index: Int, request: [UInt8], strategy: WaitStrategy = .lowCPU) throws {
            thread = try DXCore.Thread { [self] in
                var lane = try! region.claimLane(strategy: strategy, startingAt: index)
                lane.callTimeoutNanoseconds = 60_000_000_000
                let result = lane.call(request)
                self.outcome.withLock { $0 = result }
            }
        }

        var result: Result<[UInt8], CallError>? { outcome.withLock { $0 } }
        func join() { thread?.join(); thread = nil }
    }

    /// The raw words of lane `index` of `name`'s region (a guest's view, or a vandal's).
    struct RawLane {
        let base: UnsafeMutableRawPointer
        init(_ regionBase: UnsafeMutableRawPointer, index: Int, capacity: Int) {
            base = regionBase + Layout.headerSize + index * Layout.laneStride(slotCapacity: capacity)
        }
        var requestSeq: UInt64 { CShm_load_acquire_u64(base + Layout.Lane.requestSeq) }
        var responseSeq: UInt64 { CShm_load_acquire_u64(base + Layout.Lane.responseSeq) }
        var status: UInt32 { CShm_load_relaxed_u32(base + Layout.Lane.status) }
        func payload(_ count: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: base + Layout.Lane.payload, count: count)) }
        func writePayload(_ bytes: [UInt8]) {
            bytes.withUnsafeBytes { (base + Layout.Lane.payload).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
        /// Publishes a request as a guest does (length, then the sequence, seq-cst), and rings
        /// worker 0's doorbell.
        func publish(seq: UInt64, _ bytes: [UInt8], regionBase: UnsafeMutableRawPointer) {
            writePayload(bytes)
            CShm_store_relaxed_u32(base + Layout.Lane.requestLength, UInt32(bytes.count))
            CShm_store_seqcst_u64(base + Layout.Lane.requestSeq, seq)
            let doorbell = regionBase + Layout.Header.doorbells
            _ = Parker(flag: doorbell + Layout.Header.doorbellSleeping, word: doorbell + Layout.Header.doorbellWord).unpark()
        }
    }

    static func answer(_ request: [UInt8]) -> [UInt8] { Array("answer:".utf8) + request }

    @Test func manyCallsThroughTasksAreEachAnsweredRight() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 8, slotCapacity: 64, workerCount: 1))
        try host.start(asyncHandler: DelayedEchoHandler(delayNanoseconds: 0))
        defer { host.stop() }
        let region = try Region.attach(name: name)
        let wrong = Atomic<Int>(0)
        let threads = try (0..<8).map { index in
            try DXCore.Thread {
                var lane = try! region.claimLane(strategy: .auto, startingAt: index)
                for call in 0..<150 {
                    let request = (0..<(call % 60)).map { UInt8(truncatingIfNeeded: $0 &+ index &* 31 &+ call) }
                    if (try? lane.call(request).get()) != request { wrong.add(1, ordering: .relaxed) }
                }
            }
        }
        for thread in threads { thread.join() }
        #expect(wrong.load(ordering: .relaxed) == 0)
        let workers = host.snapshot().workers
        #expect(workers.reduce(0) { $0 + $1.asyncStarted } == 1200)
        #expect(workers.reduce(0) { $0 + $1.asyncFinished } == 1200)
        #expect(workers.reduce(0) { $0 + $1.asyncDropped } == 0)
    }

    /// One lane's handler is held at a gate; the other lanes' calls complete meanwhile, on the
    /// same serving worker.
    @Test func aSlowHandlerDoesNotStallTheOtherLanes() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 4, slotCapacity: 64, workerCount: 1))
        let gate = Gate()
        try host.start(asyncHandler: AsyncClosureHandler { request, _ in
            if request.first == UInt8(ascii: "S") { try await gate.wait() }
            return Self.answer(request)
        })
        defer { host.stop() }
        defer { gate.open() }
        let region = try Region.attach(name: name)
        let slow = try PendingCall(region: region, lane: 0, request: Array("Slow".utf8))
        #expect(waitUntil(seconds: 10) { gate.arrived == 1 }, "the slow handler never started")
        let fastCalls = Atomic<Int>(0)
        let others = try (1..<4).map { index in
            try DXCore.Thread {
                var lane = try! region.claimLane(strategy: .auto, startingAt: index)
                for call in 0..<200 {
                    let request = Array("fast \(index) \(call)".utf8)
                    if (try? lane.call(request).get()) == Self.answer(request) { fastCalls.add(1, ordering: .relaxed) }
                }
            }
        }
        for thread in others { thread.join() }
        #expect(fastCalls.load(ordering: .relaxed) == 600)
        #expect(slow.result == nil, "the slow call returned while its handler was held")
        gate.open()
        slow.join()
        #expect(try slow.result?.get() == Self.answer(Array("Slow".utf8)))
    }

    /// The guest rewrites its payload while the handler runs: the handler keeps the bytes it was
    /// given, and the answer is made of them.
    @Test func theHandlerSeesACopyOfTheRequest() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 64))
        let gate = Gate()
        let seen = Seen()
        let afterGate = Seen()
        try host.start(asyncHandler: AsyncClosureHandler { request, _ in
            seen.add(request)
            try await gate.wait()
            afterGate.add(request)
            return Self.answer(request)
        })
        defer { host.stop() }
        defer { gate.open() }
        let region = try Region.attach(name: name)
        let original = Array("the original request".utf8)
        let call = try PendingCall(region: region, lane: 0, request: original)
        #expect(waitUntil(seconds: 10) { gate.arrived == 1 })
        try withRawRegion(name) { base, _, _ in
            RawLane(base, index: 0, capacity: 64).writePayload(Array("VANDALISED BYTES!!!!".utf8))
        }
        gate.open()
        call.join()
        #expect(seen.all == [original])
        #expect(afterGate.all == [original])
        #expect(try call.result?.get() == Self.answer(original))
    }

    /// A guest publishes its next sequence number while its request is in flight, and later
    /// garbage: the old answer is never published, the new request is answered as any other, the
    /// garbage gets a bad-sequence status, and the lane and the host go on.
    @Test func aGuestThatPublishesAgainInFlightGetsNoStaleAnswer() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 64))
        let first = Gate(), third = Gate()
        let seen = Seen()
        try host.start(asyncHandler: AsyncClosureHandler { request, _ in
            seen.add(request)
            if request == Array("A".utf8) { try await first.wait() }
            if request == Array("C".utf8) { try await third.wait() }
            return Self.answer(request)
        })
        defer { host.stop() }
        defer { first.open(); third.open() }
        try withRawRegion(name) { base, _, _ in
            let lane = RawLane(base, index: 0, capacity: 64)
            lane.publish(seq: 1, Array("A".utf8), regionBase: base)
            #expect(waitUntil(seconds: 10) { first.arrived == 1 })
            // Seq + 1 while 1 is in flight: not taken until 1's task is back.
            lane.publish(seq: 2, Array("B".utf8), regionBase: base)
            first.open()
            #expect(waitUntil(seconds: 10) { lane.responseSeq == 2 }, "request 2 was never answered")
            #expect(lane.status == ResponseStatus.ok.rawValue)
            #expect(lane.payload(8) == Self.answer(Array("B".utf8)))
            #expect(seen.all == [Array("A".utf8), Array("B".utf8)])
            // Garbage while 3 is in flight: 3's answer is dropped, the garbage is refused.
            lane.publish(seq: 3, Array("C".utf8), regionBase: base)
            #expect(waitUntil(seconds: 10) { third.arrived == 1 })
            lane.publish(seq: 0xDEAD_BEEF, Array("D".utf8), regionBase: base)
            third.open()
            #expect(waitUntil(seconds: 10) { lane.responseSeq == 0xDEAD_BEEF }, "the garbage sequence was never answered")
            #expect(lane.status == ResponseStatus.badSequence.rawValue)
        }
        let workers = host.snapshot().workers
        #expect(workers[0].asyncStarted == 3)
        #expect(waitUntil(seconds: 10) { host.snapshot().workers[0].asyncDropped == 2 })
        // The lane's sequences agree again: a guest claims it and calls.
        var lane = try Region.attach(name: name).claimLane()
        #expect(try lane.call(Array("E".utf8)).get() == Self.answer(Array("E".utf8)))
    }

    @Test func errorsAndOversizeAnswersBecomeHandlerFailed() throws {
        let name = uniqueName()
        struct Refused: Error {}
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 16))
        try host.start(asyncHandler: AsyncClosureHandler { request, _ in
            await Task.yield()
            if request == [1] { throw Refused() }
            if request == [2] { return [UInt8](repeating: 7, count: 17) }
            return request
        })
        defer { host.stop() }
        var lane = try Region.attach(name: name).claimLane()
        #expect(throws: CallError.rejected(.handlerFailed)) { try lane.call([1]).get() }
        #expect(throws: CallError.rejected(.handlerFailed)) { try lane.call([2]).get() }
        #expect(try lane.call([3, 4]).get() == [3, 4])
        // Bad lengths are still answered at once, by the worker, without a task.
        let before = host.snapshot().workers[0].asyncStarted
        try withRawRegion(name) { base, _, _ in
            let raw = RawLane(base, index: 0, capacity: 16)
            let next = raw.responseSeq + 1
            CShm_store_relaxed_u32(raw.base + Layout.Lane.requestLength, 4096)
            CShm_store_seqcst_u64(raw.base + Layout.Lane.requestSeq, next)
            let doorbell = base + Layout.Header.doorbells
            _ = Parker(flag: doorbell + Layout.Header.doorbellSleeping, word: doorbell + Layout.Header.doorbellWord).unpark()
            #expect(waitUntil(seconds: 10) { raw.responseSeq == next })
            #expect(raw.status == ResponseStatus.badLength.rawValue)
        }
        #expect(host.snapshot().workers[0].asyncStarted == before)
    }

    /// At most the limit of handlers run at once; requests beyond it wait in their lanes while the
    /// worker sleeps (it does not spin), and all are answered once the handlers return.
    @Test func theTaskLimitHolds() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 8, slotCapacity: 64, workerCount: 1))
        let gate = Gate()
        let running = Atomic<Int>(0), most = Atomic<Int>(0)
        try host.start(asyncHandler: AsyncClosureHandler { request, _ in
            let now = running.add(1, ordering: .sequentiallyConsistent).newValue
            most.max(now, ordering: .sequentiallyConsistent)
            defer { running.subtract(1, ordering: .sequentiallyConsistent) }
            try await gate.wait()
            return Self.answer(request)
        }, maxTasksInFlight: 3)
        defer { host.stop() }
        defer { gate.open() }
        let region = try Region.attach(name: name)
        let calls = try (0..<8).map { try PendingCall(region: region, lane: $0, request: Array("call \($0)".utf8)) }
        // Every request is published, three are in handlers.
        let allPublished = try withRawRegion(name) { base, _, _ in
            waitUntil(seconds: 10) { (0..<8).allSatisfy { RawLane(base, index: $0, capacity: 64).requestSeq == 1 } }
        }
        #expect(allPublished)
        #expect(waitUntil(seconds: 10) { gate.arrived == 3 })
        // The worker goes to sleep with five requests waiting: the limit costs no CPU.
        let sleeps = host.snapshot().workers[0].sleeps
        #expect(waitUntil(seconds: 10) { host.snapshot().workers[0].sleeps > sleeps + 1 }, "the worker did not sleep at its limit")
        #expect(gate.arrived == 3)
        gate.open()
        for (index, call) in calls.enumerated() {
            call.join()
            #expect(try call.result?.get() == Self.answer(Array("call \(index)".utf8)))
        }
        #expect(most.load(ordering: .sequentiallyConsistent) == 3)
        #expect(host.snapshot().workers[0].asyncStarted == 8)
    }

    @Test func taskSharesSplitTheLimitAmongWorkers() {
        #expect(Host.taskShares(limit: 8, workers: 1) == [8])
        #expect(Host.taskShares(limit: 8, workers: 3) == [3, 3, 2])
        #expect(Host.taskShares(limit: 1, workers: 2) == [1, 1])
    }

    /// Stopping the host with handlers in flight cancels them, and their guests get an answer
    /// (cancelled) or learn of the shutdown.
    @Test func stopCancelsTasksInFlight() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64, workerCount: 1))
        let gate = Gate()
        let cancelled = Atomic<Int>(0)
        try host.start(asyncHandler: AsyncClosureHandler { request, _ in
            do { try await gate.wait() } catch {
                cancelled.add(1, ordering: .sequentiallyConsistent)
                throw error
            }
            return request
        })
        defer { gate.open() }
        let region = try Region.attach(name: name)
        let calls = try (0..<2).map { try PendingCall(region: region, lane: $0, request: [UInt8($0)]) }
        #expect(waitUntil(seconds: 10) { gate.arrived == 2 })
        host.stop()
        #expect(cancelled.load(ordering: .sequentiallyConsistent) == 2)
        for call in calls {
            call.join()
            switch call.result {
            case .failure(.rejected(.cancelled))?, .failure(.shutdown)?: break
            case let other: Issue.record("a call in flight at stop ended with \(String(describing: other))")
            }
        }
        #expect(host.snapshot().workers[0].asyncFinished == 2)
    }

    /// A handler that ignores its cancellation: stop answers its guest itself after the grace
    /// period, and the task that returns afterwards (the host gone) publishes nothing and crashes
    /// nothing: the region it wakes stays mapped until it is done.
    @Test func stopAbandonsAHandlerThatIgnoresCancellation() throws {
        let name = uniqueName()
        let gate = Gate(honoursCancellation: false)
        let returned = Atomic<Bool>(false)
        var host: Host? = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 64))
        try host!.start(asyncHandler: AsyncClosureHandler { request, _ in
            try await gate.wait()
            defer { returned.store(true, ordering: .sequentiallyConsistent) }
            return request
        })
        defer { gate.open() }
        let region = try Region.attach(name: name)
        let call = try PendingCall(region: region, lane: 0, request: [42])
        #expect(waitUntil(seconds: 10) { gate.arrived == 1 })
        host!.stop()
        call.join()
        switch call.result {
        case .failure(.rejected(.cancelled))?, .failure(.shutdown)?: break
        case let other: Issue.record("the abandoned call ended with \(String(describing: other))")
        }
        #expect(host!.snapshot().workers[0].asyncDropped == 1)
        #expect(!regionExists(name))
        weak let mapping = host!.region
        host = nil
        #expect(mapping != nil, "the region went while a task that may wake its worker still ran")
        gate.open()
        #expect(waitUntil(seconds: 10) { returned.load(ordering: .sequentiallyConsistent) })
        // The task posted the stopped worker's doorbell on its way out, then let go of the mapping.
        #expect(waitUntil(seconds: 10) { mapping == nil }, "the task never let go of the region")
    }
}
