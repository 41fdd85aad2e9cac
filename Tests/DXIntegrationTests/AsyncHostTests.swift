import CShm
import DXCore
import DXTestSupport
import Foundation
import Synchronization
import Testing

/// Async handlers with real guest processes: guests that die with a call in flight, and
/// `dx-host --handler delay`.
@Suite(.serialized, .timeLimit(.minutes(5))) struct AsyncHostTests {
    /// Maps `name`'s region as a guest (or a vandal) would, for a look at lane 0's words.
    struct RawLaneZero {
        let base: UnsafeMutableRawPointer
        let size: Int

        init(_ name: String, capacity: Int) throws {
            let descriptor = open("/dev/shm/dx.\(name)", O_RDWR)
            guard descriptor >= 0 else { throw SystemError("open", errno: errno) }
            defer { close(descriptor) }
            size = Layout.regionSize(laneCount: 1, slotCapacity: capacity, rawCount: 0)
            guard let mapped = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0), mapped != MAP_FAILED else {
                throw SystemError("mmap", errno: errno)
            }
            base = mapped
        }

        func unmap() { munmap(base, size) }
        private var lane: UnsafeMutableRawPointer { base + Layout.headerSize }
        var requestSeq: UInt64 {
            get { CShm_load_acquire_u64(lane + Layout.Lane.requestSeq) }
            nonmutating set { CShm_store_seqcst_u64(lane + Layout.Lane.requestSeq, newValue) }
        }
        var responseSeq: UInt64 { CShm_load_acquire_u64(lane + Layout.Lane.responseSeq) }
        var status: UInt32 { CShm_load_relaxed_u32(lane + Layout.Lane.status) }
        func payload(_ count: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: lane + Layout.Lane.payload, count: count)) }
    }

    /// The requests a handler saw, in order.
    final class Seen: Sendable {
        private let requests = Mutex<[String]>([])
        func add(_ request: String) { requests.withLock { $0.append(request) } }
        var all: [String] { requests.withLock { $0 } }
    }

    /// A handler that holds requests starting with "OLD" at `gate`, and answers "answer:" + the request.
    static func gatedHost(_ name: String, gate: Gate, seen: Seen) throws -> DXCore.Host {
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 64))
        try host.start(asyncHandler: AsyncClosureHandler { request, _ in
            seen.add(String(decoding: request, as: UTF8.self))
            if request.starts(with: Array("OLD".utf8)) { try await gate.wait() }
            return Array("answer:".utf8) + request
        })
        return host
    }

    /// Kills a `dx-guest call` whose request is in flight and waits until the host has taken its
    /// lane back.
    static func killGuestInFlight(_ name: String, host: DXCore.Host, gate: Gate) throws {
        let guest = try Background(Binaries.guest, ["call", "--name", name, "OLD"])
        #expect(waitUntil(seconds: 20) { gate.arrived == 1 }, "the guest's request never reached the handler")
        kill(guest.process.processIdentifier, SIGKILL)
        guest.process.waitUntilExit()
        #expect(waitUntil(seconds: 10) { host.laneState(0) == "free" }, "the dead guest's lane was not reclaimed")
    }

    /// The key case: a guest dies with its call in flight, its lane is reclaimed, and a new owner's
    /// first request has the dead call's sequence number. When the old handler returns, its answer
    /// must not reach the new owner.
    @Test func aDeadGuestsAnswerNeverReachesTheNextOwner() throws {
        let name = uniqueName()
        let gate = Gate()
        let seen = Seen()
        let host = try Self.gatedHost(name, gate: gate, seen: seen)
        defer { host.stop() }
        defer { gate.open() }
        try Self.killGuestInFlight(name, host: host, gate: gate)
        let raw = try RawLaneZero(name, capacity: 64)
        defer { raw.unmap() }
        #expect(raw.requestSeq == 1 && raw.responseSeq == 0)
        // A new owner that starts at the response sequence + 1, so its first request is number 1
        // again: put the request sequence back, which lets the claim take the lane.
        raw.requestSeq = 0
        let region = try Region.attach(name: name)
        let first = Mutex<Result<[UInt8], CallError>?>(nil)
        let caller = try DXCore.Thread {
            var lane = try! region.claimLane(strategy: .lowCPU)
            let result = lane.call(Array("NEW".utf8))
            first.withLock { $0 = result }
        }
        #expect(waitUntil(seconds: 10) { raw.requestSeq == 1 }, "the new owner never published")
        gate.open()
        caller.join()
        let result = first.withLock { $0 }
        #expect(result == .failure(.rejected(.cancelled)), "the new owner's first call got \(String(describing: result))")
        #expect(raw.responseSeq == 1 && raw.status == ResponseStatus.cancelled.rawValue)
        #expect(raw.payload(3) == Array("NEW".utf8), "the old answer was written into the new owner's lane")
        // The lane goes on: the next call on it is taken and answered.
        var lane = try region.claimLane(strategy: .lowCPU)
        #expect(try lane.call(Array("NEXT".utf8)).get() == Array("answer:NEXT".utf8))
        #expect(seen.all == ["OLD", "NEXT"])
        #expect(host.snapshot().workers[0].asyncDropped == 1)
    }

    /// A guest dies with its call in flight and nobody takes its lane meanwhile: the answer is
    /// dropped, and the lane is left with agreeing sequences, so the next guest can claim it.
    @Test func aDeadGuestsLaneIsClaimableAgainAfterItsTaskReturns() throws {
        let name = uniqueName()
        let gate = Gate()
        let seen = Seen()
        let host = try Self.gatedHost(name, gate: gate, seen: seen)
        defer { host.stop() }
        defer { gate.open() }
        try Self.killGuestInFlight(name, host: host, gate: gate)
        let region = try Region.attach(name: name)
        // Until the task returns the lane's sequences differ, and a claim passes it by.
        #expect(throws: LaneClaimError.noFreeLane(laneCount: 1)) { _ = try region.claimLane() }
        gate.open()
        let raw = try RawLaneZero(name, capacity: 64)
        defer { raw.unmap() }
        #expect(waitUntil(seconds: 10) { raw.responseSeq == 1 })
        #expect(raw.status == ResponseStatus.cancelled.rawValue)
        var lane = try region.claimLane()
        #expect(try lane.call(Array("next".utf8)).get() == Array("answer:next".utf8))
    }

    /// `dx-host --handler delay`: every response checked by the bench, and the counters.
    @Test func delayHandlerServesABenchWithEveryResponseChecked() throws {
        let host = try RunningHost(arguments: ["--lanes", "8", "--handler", "delay", "--delay-us", "200"])
        let bench = try run(Binaries.guest, ["bench", "--name", host.name, "--threads", "8", "--calls", "200", "--json"], timeout: 120)
        #expect(bench.status == 0, "\(bench.stderr)")
        let stats = try run(Binaries.host, ["ctl", "stats", "--name", host.name, "--json"])
        #expect(stats.status == 0, "\(stats.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(stats.stdout.utf8)) as? [String: Any]
        let workers = object?["workers"] as? [[String: Any]] ?? []
        let started = workers.reduce(0) { $0 + ($1["async_started"] as? Int ?? 0) }
        #expect(started >= 1600)
        #expect(try host.stop() == 0)
    }

    /// SIGTERM with calls in flight (10 s handlers): the host cancels them, its guests fail at once
    /// with a status or "shut down", and the host exits cleanly.
    @Test func aStoppingHostCancelsItsTasksAndAnswersTheirGuests() throws {
        let host = try RunningHost(arguments: ["--lanes", "2", "--handler", "delay", "--delay-us", "10000000"], readyByCall: false)
        let guests = try (0..<2).map { _ in try Background(Binaries.guest, ["call", "--name", host.name, "waiting"]) }
        #expect(waitUntil(seconds: 20) {
            (try? run(Binaries.host, ["ctl", "stats", "--name", host.name, "--json"]))
                .flatMap { try? JSONSerialization.jsonObject(with: Data($0.stdout.utf8)) as? [String: Any] }
                .map { (($0["workers"] as? [[String: Any]]) ?? []).reduce(0) { $0 + ($1["async_started"] as? Int ?? 0) } >= 2 } ?? false
        }, "the guests' calls never reached the handler")
        #expect(try host.stop() == 0)
        for guest in guests {
            #expect(guest.wait(timeout: 10) != nil, "a guest hung after the host stopped")
            #expect(guest.process.terminationStatus != 0)
            #expect(guest.errors.contains("cancelled") || guest.errors.contains("shutting down"), "\(guest.errors)")
        }
    }

    @Test func delayOptionsAreValidated() throws {
        for arguments in [["--delay-us", "5"], ["--handler", "delay", "--private"], ["--handler", "delay", "--delay-lanes", "9"],
                          ["--handler", "delay", "--max-tasks", "0"], ["--handler", "delay", "--delay-us", "10000001"]] {
            let outcome = try run(Binaries.host, ["--name", uniqueName()] + arguments, timeout: 20)
            #expect(outcome.status != 0, "dx-host \(arguments.joined(separator: " ")) was accepted")
            #expect(outcome.stderr.contains("--"), "\(outcome.stderr)")
        }
    }
}
