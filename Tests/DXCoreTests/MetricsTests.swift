import CShm
import CoreMetrics
import DXCore
import MetricsTestKit
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The host's swift-metrics series, against a test backend bound while the host is made (nothing
/// is bootstrapped): what they count, that a lane's series go with its claim, and that nothing a
/// guest writes into its counters reaches swift-metrics as a value that traps.
@Suite(.serialized, .timeLimit(.minutes(2))) struct MetricsTests {
    func makeHost(_ name: String, _ metrics: TestMetrics, lanes: Int = 2) throws -> Host {
        let host = try withMetricsFactory(metrics) { () throws(RegionCreateError) in
            try Host(name: name, configuration: RegionConfiguration(laneCount: lanes, slotCapacity: 64, workerCount: 1))
        }
        try host.start(handler: EchoHandler())
        return host
    }

    func total(_ metrics: TestMetrics, _ metric: HostMetric, _ dimensions: [(String, String)]) -> Int64? {
        metrics.counters(label: metric.label, dimensions: dimensions).first?.totalValue
    }

    @Test func countersFollowTheRoundTrips() throws {
        let name = uniqueName()
        let metrics = TestMetrics()
        let host = try makeHost(name, metrics)
        defer { host.stop() }
        var lane = try Region.attach(name: name).claimLane()
        for _ in 0..<25 { _ = try lane.call([1, 2, 3]).get() }
        host.collectMetrics()
        let region = [("region", name)]
        let laneDimensions = [("region", name), ("lane", "\(lane.index)")]
        #expect(total(metrics, .roundTrips, region) == 25)
        #expect(total(metrics, .laneRoundTrips, laneDimensions) == 25)
        #expect(total(metrics, .laneGuestCalls, laneDimensions) == 25)
        #expect(try metrics.expectGauge(HostMetric.lanesClaimed.label, region).lastValue == 1)
        #expect(try metrics.expectGauge(HostMetric.uptime.label, region).lastValue ?? -1 >= 0)
        // Every family the host reports exists in the backend while a lane is claimed.
        for metric in HostMetric.all {
            let exists = metric.kind == .counter ? !metrics.counters(label: metric.label).isEmpty
                : (try? metrics.expectGauge(metric.label, region)) != nil
            #expect(exists, "\(metric.label) is missing")
        }
    }

    /// Many claims and releases: a lane's series exist while it is claimed, go when it is released,
    /// and the backend holds as many series after 200 cycles as after one.
    @Test func laneSeriesAreDestroyedOnRelease() throws {
        let name = uniqueName()
        let metrics = TestMetrics()
        let host = try makeHost(name, metrics)
        defer { host.stop() }
        let region = try Region.attach(name: name)
        var seriesWhileClaimed: Set<Int> = []
        for _ in 0..<200 {
            do {
                var lane = try region.claimLane()
                _ = try lane.call([7]).get()
                host.collectMetrics()
                #expect(metrics.counters(label: HostMetric.laneRoundTrips.label).count == 1)
                seriesWhileClaimed.insert(metrics.counters.count)
            }
            host.collectMetrics()
            #expect(metrics.counters(label: HostMetric.laneRoundTrips.label).isEmpty)
        }
        #expect(seriesWhileClaimed.count == 1, "the number of series grew: \(seriesWhileClaimed.sorted())")
        #expect(total(metrics, .roundTrips, [("region", name)]) == 200)
        host.stop()
        #expect(metrics.counters.isEmpty, "a stopped host left \(metrics.counters.map(\.label))")
    }

    /// `UInt64.max`, values past `Int64.max`, decreases and noise in a claimed lane's guest
    /// counters: every collection succeeds, no counter passes `Int64.max` or goes down, and an
    /// new claim counts from wherever the region's counter stands.
    @Test func hostileGuestCountersAreClamped() throws {
        let name = uniqueName()
        let metrics = TestMetrics()
        let host = try makeHost(name, metrics)
        defer { host.stop() }
        let region = try Region.attach(name: name)
        var lane = try region.claimLane()
        _ = try lane.call([1]).get()
        let counters = Layout.fields(laneCount: 2, workerCount: 1, rawCount: 0, slotCapacity: 64)
            .filter { $0.name == "guest counter" && $0.index == lane.index }
        let calls = [("region", name), ("lane", "\(lane.index)")]
        var random = SystemRandomNumberGenerator()
        let hostile: [UInt64] = [.max, UInt64(Int64.max) + 1, UInt64(Int64.max), 0, .max, 1 << 40, 3, .max - 1]
        var previous: Int64 = 0
        try withRawRegion(name) { base, _, _ in
            for value in hostile + (0..<50).map({ _ in UInt64.random(in: 0...UInt64.max, using: &random) }) {
                for field in counters { CShm_store_relaxed_u64(base + field.offset, value) }
                host.collectMetrics()
                for counter in metrics.counters where counter.label.hasPrefix("dx_lane_guest_") {
                    #expect(counter.totalValue >= 0 && counter.values.allSatisfy { $0 >= 0 })
                }
                let now = try #require(total(metrics, .laneGuestCalls, calls))
                #expect(now >= previous)
                previous = now
            }
            #expect(previous == Int64.max)
        }
        // The host's own counters are untouched by all that.
        #expect(total(metrics, .laneRoundTrips, calls) == 1)
        // A new claim's series start from zero and count from wherever the region's counter is.
        let index = lane.index
        _ = consume lane
        host.collectMetrics()
        var fresh = try region.claimLane(startingAt: index)
        #expect(fresh.index == index)
        for _ in 0..<5 { _ = try fresh.call([2]).get() }
        host.collectMetrics()
        #expect(total(metrics, .laneGuestCalls, calls) == 5)
        #expect(total(metrics, .laneRoundTrips, calls) == 5)
        _ = consume fresh
    }
}
