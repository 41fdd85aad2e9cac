import CDXGuest
import CShm
import DXCore
import Testing

/// The C guest library (Sources/CDXGuest, written from docs/LAYOUT.md) against the Swift host, in
/// one process. scripts/test-c-guest runs it from a C program against the dx-host executable too.
@Suite(.serialized, .timeLimit(.minutes(2))) struct CGuestTests {
    @Test func bothLanguagesImplementTheSameLayoutVersion() {
        #expect(DX_LAYOUT_VERSION == Layout.version)
    }

    /// The C `auto` has the Swift one's shape: a budget in time (max = 10 × min, start = 2.5 × min,
    /// up to the 100-spin floor and rounding), turns, and the placement hint on.
    @Test func cAutoIsShapedLikeSwiftAuto() {
        let c = dx_wait_auto()
        let swift = WaitStrategy.auto
        #expect(c.avoid_worker_cpu == 1 && swift.turnPolicy.avoidWorkerCPU == (CPUAffinity.allowedCPUs > 1))
        #expect(c.turn_calls == swift.turnPolicy.turnCalls && c.turn_quantum_ns == swift.turnPolicy.turnQuantumNanoseconds)
        #expect(c.yield_every == swift.spinPolicy.yieldEvery && c.sleep_timeout_ns == swift.spinPolicy.sleepTimeoutNanoseconds)
        #expect(c.spin_max >= 9 * c.spin_min && c.spin_max <= 11 * c.spin_min)
        #expect(c.spin_start > 2 * c.spin_min && c.spin_start < 3 * c.spin_min)
    }

    @Test func cGuestRoundTripsAreChecked() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 4, slotCapacity: 512, handler: .echo))
        defer { host.stop() }
        try host.start(handler: EchoHandler())

        var region: OpaquePointer?
        #expect(dx_attach(name, &region) == DX_OK.rawValue)
        defer { dx_detach(region) }
        #expect(dx_region_capacity(region) == 512)
        #expect(dx_region_lane_count(region) == 4)
        var lane: OpaquePointer?
        #expect(dx_lane_claim(region, nil, &lane) == DX_OK.rawValue)
        defer { dx_lane_release(lane) }

        var request = [UInt8](repeating: 0, count: 513)
        var response = [UInt8](repeating: 0, count: 512)
        for round in 0..<2_000 {
            let length = round % 513
            for index in 0..<length { request[index] = UInt8(truncatingIfNeeded: index &* 7 &+ round) }
            var got = 0
            let rc = dx_call(lane, request, length, &response, response.count, &got)
            #expect(rc == DX_OK.rawValue)
            #expect(got == length && request[..<length] == response[..<length])
        }
        #expect(dx_call(lane, request, 513, &response, response.count, nil) == DX_E_TOO_LARGE.rawValue)
        #expect(host.snapshot().roundTrips == 2_000)
    }

    @Test func aSwiftGuestAndACGuestShareTheRegion() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        defer { host.stop() }
        try host.start(handler: ChecksumHandler())

        var cRegion: OpaquePointer?
        var cLane: OpaquePointer?
        #expect(dx_attach(name, &cRegion) == DX_OK.rawValue)
        defer { dx_detach(cRegion) }
        #expect(dx_lane_claim(cRegion, nil, &cLane) == DX_OK.rawValue)
        let swiftRegion = try Region.attach(name: name)
        var swiftLane = try swiftRegion.claimLane()
        #expect(swiftLane.index == 1)  // the C guest took lane 0
        var third: OpaquePointer?
        #expect(dx_lane_claim(cRegion, nil, &third) == DX_E_NO_LANE.rawValue)

        for round in 0..<1_000 {
            let bytes = (0..<(round % 64)).map { UInt8(truncatingIfNeeded: $0 &+ round) }
            let expected = bytes.withUnsafeBytes { Checksum.fnv1a64($0) }
            var answer: UInt64 = 0
            var got = 0
            #expect(dx_call(cLane, bytes, bytes.count, &answer, 8, &got) == DX_OK.rawValue)
            #expect(got == 8 && UInt64(littleEndian: answer) == expected)
            let swiftAnswer = try swiftLane.call(bytes).get()
            #expect(swiftAnswer.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } == expected.littleEndian)
        }
        dx_lane_release(cLane)
        cLane = nil
        // The C guest released its lane the way the Swift guest does: it can be claimed again.
        let again = try swiftRegion.claimLane()
        #expect(again.index == 0)
    }

    /// Placement in a granted region (docs/LAYOUT.md, "Granted turns"): a thread that holds lanes of
    /// a private host's region keeps off the worker's CPU while it holds them, between calls too,
    /// and gets its own mask back when the last one goes, whatever the order. Swift lanes and C
    /// lanes alike; two lanes on one thread released first-claimed-first once left the thread
    /// narrowed for good (the C lane saved a mask another lane had already narrowed).
    @Test(.enabled(if: CPUAffinity.allowedCPUs > 1)) func grantedLanesKeepTheirThreadOffTheWorkerCPUUntilReleased() throws {
        try withPrivateHost(slotCapacity: 64) { name, _ in try grantedLanesKeepOffTheWorkerCPU(name: name) }
    }

    private func grantedLanesKeepOffTheWorkerCPU(name: String) throws {
        let allowed = CShm_available_cpus()

        // Swift: 65 calls each cross a turn check, by when the worker's CPU is published.
        let region = try Region.open(name: name, lanes: 2)
        var first = try region.claimLane(strategy: .auto)
        var second = try region.claimLane(strategy: .auto)
        for _ in 0..<65 {
            #expect(try first.call([1]).get() == [1])
            #expect(try second.call([2]).get() == [2])
        }
        #expect(CShm_available_cpus() == allowed - 1)
        _ = consume first
        #expect(CShm_available_cpus() == allowed - 1)  // the second lane still keeps it off
        _ = consume second
        #expect(CShm_available_cpus() == allowed)

        // C: the same, released in the order claimed.
        var cRegion: OpaquePointer?
        #expect(dx_connect(name, 2, nil, uid_t.max, &cRegion) == DX_OK.rawValue)
        defer { dx_detach(cRegion) }
        var lanes: [OpaquePointer?] = [nil, nil]
        for index in 0..<2 { #expect(dx_lane_claim(cRegion, nil, &lanes[index]) == DX_OK.rawValue) }
        var response = [UInt8](repeating: 0, count: 64)
        for round in 0..<130 {
            let request: [UInt8] = [UInt8(round & 0xFF)]
            var got = 0
            #expect(dx_call(lanes[round % 2], request, 1, &response, response.count, &got) == DX_OK.rawValue)
            #expect(got == 1 && response[0] == request[0])
        }
        #expect(CShm_available_cpus() == allowed - 1)
        dx_lane_release(lanes[0])
        #expect(CShm_available_cpus() == allowed - 1)
        dx_lane_release(lanes[1])
        #expect(CShm_available_cpus() == allowed)
    }

    /// dx_connect against a private host of this process, at its default socket path: a region of
    /// the lanes asked for, checked echoes on lanes claimed without locks, the host's refusal with
    /// its sentence, and the region freed by the host when dx_detach closes the connection.
    @Test func cGuestConnectsToAPrivateHost() throws {
        try withPrivateHost(slotCapacity: 256) { name, host in try cGuestConnects(name: name, host: host) }
    }

    /// A private echo host of this process (lanes: 4 at most, 2 by default; one pool worker) and its
    /// control socket at the default path, for the duration of `body`.
    private func withPrivateHost(slotCapacity: Int, _ body: (String, PrivateHost) throws -> Void) throws {
        let name = uniqueName()
        let limits = PrivateHostLimits(maxLanes: 4, defaultLanes: 2, slotCapacity: slotCapacity)
        let host = try PrivateHost(name: name, limits: limits, handler: .echo, poolSize: 1)
        try host.start(handler: EchoHandler())
        defer { host.stop() }
        let server = try ControlServer(target: host, path: ControlPath.socket(for: name))
        defer { server.stop() }
        try body(name, host)
    }

    private func cGuestConnects(name: String, host: PrivateHost) throws {

        var region: OpaquePointer?
        #expect(dx_connect(name, 3, nil, uid_t.max, &region) == DX_OK.rawValue)
        #expect(dx_region_lane_count(region) == 3 && dx_region_capacity(region) == 256)
        #expect(host.guests.map(\.lanes) == [3])
        var lanes: [OpaquePointer?] = [nil, nil, nil, nil]
        for index in 0..<3 { #expect(dx_lane_claim(region, nil, &lanes[index]) == DX_OK.rawValue) }
        #expect(dx_lane_claim(region, nil, &lanes[3]) == DX_E_NO_LANE.rawValue)
        var response = [UInt8](repeating: 0, count: 256)
        for round in 0..<300 {
            let request = (0..<(round % 257)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ round) }
            var got = 0
            #expect(dx_call(lanes[round % 3], request, request.count, &response, response.count, &got) == DX_OK.rawValue)
            #expect(got == request.count && response[..<got].elementsEqual(request))
        }
        for index in 0..<3 { dx_lane_release(lanes[index]) }
        dx_detach(region)
        let deadline = ContinuousClock.now + .seconds(5)
        while !host.guests.isEmpty && ContinuousClock.now < deadline { CShm_sleep_ns(1_000_000) }
        #expect(host.guests.isEmpty)  // the connection was the region's life

        var refused: OpaquePointer?
        #expect(dx_connect(name, 5, nil, uid_t.max, &refused) == DX_E_REFUSED.rawValue)
        #expect(refused == nil && !String(cString: dx_last_refusal()).isEmpty)
        #expect(dx_open(name, 0, nil, uid_t.max, &region) == DX_OK.rawValue)
        #expect(dx_region_lane_count(region) == 2)
        dx_detach(region)
    }

    /// The version rule from both languages: a region of another layout version is refused by
    /// each guest with a version-mismatch error naming the version found.
    @Test(arguments: [UInt32(0), 1, 3, 0xFFFF_FFFF])
    func anotherLayoutVersionIsRefusedByBothGuests(version: UInt32) throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration())
        defer { host.stop() }
        try withRawRegion(name) { base, _, _ in CShm_store_relaxed_u32(base + Layout.Header.version, version) }

        #expect(throws: RegionAttachError.versionMismatch(found: version, expected: Layout.version)) {
            try Region.attach(name: name)
        }
        var region: OpaquePointer?
        #expect(dx_attach(name, &region) == DX_E_VERSION.rawValue)
        #expect(region == nil)
        #expect(dx_last_found_version() == version)
    }
}
