import CShm
import CoreMetrics
import Synchronization

/// Feeds a host's counters to swift-metrics: ``HostMetric``'s families, with the dimension
/// `region`, and `lane` or `worker`.
///
/// Nothing on the data path calls it: the workers and guests bump their plain counters as before,
/// and ``collect(_:)`` reads a ``RegionSnapshot`` of them (once a second from the housekeeping
/// thread, and before every control-socket `metrics` reply) and passes the differences since the
/// last collection to swift-metrics. Whatever backend the process bootstrapped receives them; with
/// none, swift-metrics' no-op one does. DXCore never bootstraps one.
///
/// Guest-written values are hostile: each counter's last reading stays in host memory
/// (``CounterFeed``), and what reaches a swift-metrics counter is clamped (``ClampedCounter``), so
/// no value in the region can make swift-metrics or its backend trap.
///
/// A lane's series exist while it is claimed: a new owner word (a claim) creates them from zero,
/// and a free lane or another owner word (a release, a reclaim) destroys them, so the backend holds
/// at most one set per lane, however many guests come and go.
///
/// - Important: Thread-safe: one lock around the collector, taken by the housekeeping and control
///   threads only.
final class HostMetrics: Sendable {
    private let state: Mutex<Collector>

    /// The metrics of `region`'s host, made with `factory` (captured once, so that a task-local
    /// factory bound while the host was created, as tests do, stays in use).
    init(region name: String, laneCount: Int, workerCount: Int, factory: any MetricsFactory) {
        state = Mutex(Collector(region: name, laneCount: laneCount, workerCount: workerCount, factory: factory))
    }

    /// Passes what moved since the last collection to swift-metrics.
    func collect(_ snapshot: RegionSnapshot) {
        state.withLock { $0.collect(snapshot) }
    }

    /// Destroys every series (when the host stops); later collections do nothing.
    func destroy() {
        state.withLock { $0.destroy() }
    }
}

/// The state behind ``HostMetrics``, used under its lock.
private struct Collector {
    /// One lane: the feeds of its ten counters (``HostMetric/lane``) and, while claimed, its series.
    struct LaneState {
        var feeds: [CounterFeed]
        /// The owner word the series belong to; nil while the lane is free.
        var claim: UInt64?
        var series: [ClampedCounter] = []
    }

    let factory: any MetricsFactory
    let region: (String, String)
    let startTime = CShm_monotonic_ns()
    var destroyed = false

    var roundTrips: ClampedCounter, wakesSent: ClampedCounter, hostErrors: ClampedCounter
    var reclaimed: ClampedCounter
    var roundTripsFeed = CounterFeed(.host), wakesSentFeed = CounterFeed(.host), hostErrorsFeed = CounterFeed(.host)
    var reclaimedFeed = CounterFeed(.host)
    let uptime: Gauge, opsPerSecond: Gauge, lanesClaimed: Gauge
    var lanes: [LaneState]
    var workers: [(feeds: [CounterFeed], series: [ClampedCounter])]
    /// Two (time, round trips) samples at least a second apart, for ops/s over a window of one to
    /// two seconds whatever the collection rhythm.
    var rateBase: (time: UInt64, roundTrips: UInt64)
    var previousRateBase: (time: UInt64, roundTrips: UInt64)

    init(region name: String, laneCount: Int, workerCount: Int, factory: any MetricsFactory) {
        self.factory = factory
        region = ("region", name)
        func counter(_ metric: HostMetric, _ extra: [(String, String)] = []) -> ClampedCounter {
            ClampedCounter(label: metric.label, dimensions: [("region", name)] + extra, factory: factory)
        }
        func gauge(_ metric: HostMetric) -> Gauge {
            Gauge(label: metric.label, dimensions: [("region", name)], factory: factory)
        }
        roundTrips = counter(.roundTrips)
        wakesSent = counter(.wakesSent)
        hostErrors = counter(.hostErrors)
        reclaimed = counter(.reclaimedLanes)
        uptime = gauge(.uptime)
        opsPerSecond = gauge(.opsPerSecond)
        lanesClaimed = gauge(.lanesClaimed)
        lanes = (0..<laneCount).map { _ in
            LaneState(feeds: HostMetric.lane.indices.map { CounterFeed($0 < HostMetric.hostLaneCount ? .host : .guest) })
        }
        workers = (0..<workerCount).map { index in
            (feeds: HostMetric.worker.map { _ in CounterFeed(.host) },
             series: HostMetric.worker.map { counter($0, [("worker", "\(index)")]) })
        }
        rateBase = (startTime, 0)
        previousRateBase = (startTime, 0)
    }

    mutating func collect(_ snapshot: RegionSnapshot) {
        guard !destroyed else { return }
        let now = snapshot.time
        let total = snapshot.roundTrips
        uptime.record(Double(now &- startTime) / 1e9)
        if now &- rateBase.time >= 1_000_000_000 {
            previousRateBase = rateBase
            rateBase = (now, total)
        }
        let seconds = max(Double(now &- previousRateBase.time) / 1e9, 1e-3)
        opsPerSecond.record(Double(total &- min(previousRateBase.roundTrips, total)) / seconds)

        roundTrips.add(roundTripsFeed.advance(to: total))
        wakesSent.add(wakesSentFeed.advance(to: snapshot.lanes.reduce(0) { $0 &+ $1.wakesSent }))
        hostErrors.add(hostErrorsFeed.advance(to: snapshot.lanes.reduce(0) { $0 &+ $1.hostErrors }))
        reclaimed.add(reclaimedFeed.advance(to: snapshot.reclaimedLanes))

        var claimed = 0
        for lane in snapshot.lanes where lane.index < lanes.count {
            if lane.ownerPID != 0 { claimed += 1 }
            collect(lane)
        }
        lanesClaimed.record(Int64(claimed))
        for worker in snapshot.workers where worker.index < workers.count {
            for (slot, value) in [worker.spinWins, worker.yields, worker.sleeps].enumerated() {
                workers[worker.index].series[slot].add(workers[worker.index].feeds[slot].advance(to: value))
            }
        }
    }

    /// One lane: its deltas go to the series of the claim they were counted under (the lane's
    /// previous owner's, or a new owner's when the lane was free), and its series follow the owner
    /// word.
    private mutating func collect(_ lane: LaneSnapshot) {
        let values = [lane.roundTrips, lane.wakesSent, lane.wakesSkipped, lane.hostErrors,
                      lane.calls, lane.spinWins, lane.yields, lane.sleeps, lane.doorbells, lane.turnWaits]
        let index = lane.index
        var deltas = [UInt64](repeating: 0, count: values.count)
        for slot in values.indices { deltas[slot] = lanes[index].feeds[slot].advance(to: values[slot]) }
        let claim = lane.ownerPID == 0 ? nil : UInt64(UInt32(bitPattern: lane.ownerPID)) << 32 | UInt64(lane.generation)
        var credited = false
        if !lanes[index].series.isEmpty {
            for slot in deltas.indices { lanes[index].series[slot].add(deltas[slot]) }
            credited = true
        }
        guard claim != lanes[index].claim else { return }
        for series in lanes[index].series { series.destroy() }
        lanes[index].series = []
        lanes[index].claim = claim
        guard claim != nil else { return }
        let dimensions = [region, ("lane", "\(index)")]
        lanes[index].series = HostMetric.lane.map { ClampedCounter(label: $0.label, dimensions: dimensions, factory: factory) }
        if !credited {
            for slot in deltas.indices { lanes[index].series[slot].add(deltas[slot]) }
        }
    }

    mutating func destroy() {
        guard !destroyed else { return }
        destroyed = true
        for counter in [roundTrips, wakesSent, hostErrors, reclaimed] { counter.destroy() }
        for gauge in [uptime, opsPerSecond, lanesClaimed] { gauge.destroy() }
        for lane in lanes { for series in lane.series { series.destroy() } }
        lanes.removeAll()
        for worker in workers { for series in worker.series { series.destroy() } }
        workers.removeAll()
    }
}
