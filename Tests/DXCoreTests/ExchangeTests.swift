import CShm
import DXCore
import DXTestSupport
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized, .timeLimit(.minutes(5))) struct ExchangeTests {
    @Test func echoRoundTripsInPlace() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 128))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        var lane = try Region.attach(name: name).claimLane()
        for size in [0, 1, 64, 127, 128] {
            let request = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ size) }
            #expect(try lane.call(request).get() == request)
        }
        // The closure form writes straight into the lane and reads the answer in place.
        let text = try lane.call(
            request: { buffer in buffer.copyBytes(from: "in place".utf8); return 8 },
            response: { String(decoding: $0, as: UTF8.self) }).get()
        #expect(text == "in place")
    }

    @Test func checksumHandlerAnswersEightBytes() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 64))
        try host.start(handler: ChecksumHandler())
        defer { host.stop() }
        var lane = try Region.attach(name: name).claimLane()
        let request = Array("hello".utf8)
        let response = try lane.call(request).get()
        let expected = request.withUnsafeBytes { Checksum.fnv1a64($0) }
        #expect(response == withUnsafeBytes(of: expected.littleEndian) { Array($0) })
        #expect(expected == 0xA430_D846_80AA_BD0B)  // FNV-1a 64 of "hello"
    }

    @Test func oversizeRequestIsRefusedBeforePublishing() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 16))
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let region = try Region.attach(name: name)
        var lane = try region.claimLane()
        let before = try withRawRegion(name) { base, _, _ in CShm_load_acquire_u64(base + Layout.headerSize) }
        #expect(throws: CallError.payloadTooLarge(length: 17, capacity: 16)) { try lane.call([UInt8](repeating: 1, count: 17)).get() }
        #expect(throws: CallError.payloadTooLarge(length: 99, capacity: 16)) {
            try lane.call(request: { _ in 99 }, response: { _ in () }).get()
        }
        #expect(throws: CallError.payloadTooLarge(length: -1, capacity: 16)) {
            try lane.call(request: { _ in -1 }, response: { _ in () }).get()
        }
        let after = try withRawRegion(name) { base, _, _ in CShm_load_acquire_u64(base + Layout.headerSize) }
        #expect(before == after)  // no request sequence number was published
        #expect(try lane.call([1, 2, 3]).get() == [1, 2, 3])  // and the lane still works
    }

    @Test func handlerErrorsBecomeStatuses() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 32))
        try host.start(handler: ClosureHandler { request, _ in request.count == 1 ? 1_000 : request.count })
        defer { host.stop() }
        var lane = try Region.attach(name: name).claimLane()
        #expect(throws: CallError.rejected(.handlerFailed)) { try lane.call([9]).get() }
        #expect(try lane.call([1, 2]).get() == [1, 2])
    }

    @Test func shutdownWakesASleepingCaller() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 32))
        defer { host.stop() }
        // A handler that never returns until released: the caller must sleep, then see shutdown.
        let release = Atomic<Bool>(false)
        let entered = Atomic<Bool>(false)
        try host.start(handler: ClosureHandler { request, _ in
            entered.store(true, ordering: .relaxed)
            while !release.load(ordering: .relaxed) { usleep(1000) }
            return request.count
        })
        let region = try Region.attach(name: name)
        let outcome = Mutex<Result<[UInt8], CallError>?>(nil)
        let caller = try DXCore.Thread {
            var lane = try! region.claimLane(strategy: .lowCPU)
            let result = lane.call([1])
            outcome.withLock { $0 = result }
        }
        defer { release.store(true, ordering: .relaxed) }  // never leave the worker stuck if an expectation throws
        // The caller is asleep once its lane's sleeping flag is set (the only lane: lane 0).
        let laneBase = Layout.headerSize
        let (asleep, sleeps) = try withRawRegion(name) { base, _, _ in
            (waitUntil(seconds: 5) {
                entered.load(ordering: .relaxed) && CShm_load_acquire_u32(base + laneBase + Layout.Lane.guestSleeping) != 0
            }, CShm_load_relaxed_u64(base + laneBase + Layout.Lane.guestCounters + Layout.Counters.guestSleeps))
        }
        #expect(asleep, "the caller never went to sleep on its lane")
        #expect(sleeps >= 1, "the caller's lane counts no sleep")
        let stopper = try DXCore.Thread { host.stop() }
        // The host is stopping (it then waits for its worker, stuck in the handler, before it wakes guests).
        #expect(waitUntil(seconds: 5) { region.state == .stopping }, "stop() never marked the region stopping")
        let released = CShm_monotonic_ns()
        release.store(true, ordering: .relaxed)
        stopper.join()
        caller.join()
        // A bound on a hang: stop() wakes the caller at once (its own sleeps are 50 ms at most).
        let wokeAfter = Double(CShm_monotonic_ns() - released) / 1e9
        #expect(wokeAfter < 2, "the caller finished \(wokeAfter) s after the handler returned")
        // Either the worker answered before it stopped, or the caller was told of the shutdown.
        let result = outcome.withLock { $0 }
        switch result {
        case .success(let bytes)?: #expect(bytes == [1])
        case .failure(let error)?: #expect(error == .shutdown)
        case nil: Issue.record("the caller did not finish")
        }
        #expect(throws: LaneClaimError.shutdown) { _ = try region.claimLane() }
    }

    /// No lost wake-up: both sides sleep on (almost) every handoff, and every call completes
    /// promptly. A lost wake-up would leave its sleeper asleep for the whole 1 s sleep timeout, so
    /// the slowest call is bounded well below that; the counters show that the sleeps happened.
    @Test func sleepingHandshakeLosesNoWakeUp() throws {
        let name = uniqueName()
        let sleepy = WaitStrategy(spinPolicy: SpinPolicy(spinMin: 1, spinMax: 1, spinStart: 1, yieldEvery: 0,
                                                         sleepTimeoutNanoseconds: 1_000_000_000))
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 16),
                            spinPolicy: sleepy.spinPolicy)
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let region = try Region.attach(name: name)
        let handoffs = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let slowestCall = Atomic<UInt64>(0)
        let perThread = 40_000
        let threads = try (0..<2).map { index in
            try DXCore.Thread {
                var lane = try! region.claimLane(strategy: sleepy, startingAt: index)
                lane.callTimeoutNanoseconds = 5_000_000_000
                var value: UInt64 = 0
                var response = [UInt8](repeating: 0, count: 8)
                var slowest: UInt64 = 0
                defer { slowestCall.max(slowest, ordering: .relaxed) }
                for _ in 0..<perThread {
                    value &+= 1
                    let start = CShm_monotonic_ns()
                    let ok = withUnsafeBytes(of: value) { request in
                        response.withUnsafeMutableBytes { out in
                            (try? lane.call(request, into: out).get()) == 8 && out.load(as: UInt64.self) == value
                        }
                    }
                    slowest = max(slowest, CShm_monotonic_ns() - start)
                    if ok { handoffs.add(1, ordering: .relaxed) } else { failures.add(1, ordering: .relaxed); return }
                }
            }
        }
        for thread in threads { thread.join() }
        let calls = 2 * perThread
        #expect(failures.load(ordering: .relaxed) == 0)
        #expect(handoffs.load(ordering: .relaxed) == calls)
        let slowest = Double(slowestCall.load(ordering: .relaxed)) / 1e9
        #expect(slowest < 0.5, "a call took \(slowest) s: a wake-up was lost and the 1 s sleep timeout ended it")
        // The handshake was exercised: the worker slept waiting for requests and woke guests that
        // slept waiting for responses, on most handoffs.
        let snapshot = host.snapshot()
        let workerSleeps = snapshot.workers.reduce(0) { $0 + $1.sleeps }
        let wakesSent = snapshot.lanes.reduce(0) { $0 + $1.wakesSent }
        let guestSleeps = snapshot.lanes.reduce(0) { $0 + $1.sleeps }
        print("sleeping handshake: \(calls) calls, worker sleeps \(workerSleeps), guest sleeps \(guestSleeps), "
              + "wakes sent \(wakesSent), slowest call \(slowest * 1e6) µs")
        #expect(workerSleeps > 0, "the worker never slept")
        #expect(guestSleeps >= UInt64(calls / 2), "guests slept on only \(guestSleeps) of \(calls) calls")
        #expect(wakesSent >= UInt64(calls / 2), "the worker woke sleeping guests on only \(wakesSent) of \(calls) calls")
    }
}
