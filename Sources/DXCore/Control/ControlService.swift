import CShm
import FoundationEssentials

/// What the control plane may see and change of a host.
public protocol ControlTarget: AnyObject, Sendable {
    /// The name the host serves (its region's, or a private host's).
    var name: String { get }
    var hostPID: Int32 { get }
    var shape: HostShape { get }
    var spinPolicy: SpinPolicy { get }
    /// Every counter now. A private host has a row per guest slot where a named host has lanes.
    func snapshot() -> RegionSnapshot
    /// Row `index`'s state for `stats` and `lanes`: "free", "claimed", "owner-gone", or "guest".
    func laneState(_ index: Int) -> String
    /// The private host, when the target is one: its socket hands out regions.
    var privateHost: PrivateHost? { get }
    func setSpinPolicy(_ policy: SpinPolicy) throws(WaitStrategyError)
    /// Passes the counters to swift-metrics now (before a `metrics` reply renders the backend).
    func collectMetrics()
    /// Asks the host to stop, from the control thread; the host stops on its own thread.
    func requestShutdown()
}

extension ControlTarget {
    /// Nothing to collect: a target without swift-metrics series.
    public func collectMetrics() {}
}

/// The control protocol without I/O: turns request lines into reply lines, and keeps the
/// snapshots from which throughput is computed (counter deltas, never the data path).
///
/// - Important: Used by the control thread only.
final class ControlService {
    enum Effect {
        case none
        /// Start streaming watch lines at this interval (nanoseconds).
        case watch(UInt64)
        case shutdown
        /// A private host's guest asks for its region (``ControlConnections`` answers it: the
        /// reply carries a descriptor).
        case region(lanes: Int?)
    }

    let target: any ControlTarget
    /// Renders the process's metrics backend (e.g. swift-prometheus) for `metrics`; nil when the
    /// embedder bootstrapped none that renders text.
    let metricsExposition: (@Sendable () -> String)?
    /// Control connections closed for piling up output or idling (``ControlConnections``).
    var droppedConnections = 0
    private let startTime = CShm_monotonic_ns()
    /// Snapshots taken every `snapshotInterval`, oldest first, covering a little over a second.
    private var history: [RegionSnapshot] = []
    private var lastActivity: [UInt64]
    static let snapshotInterval: UInt64 = 100_000_000
    private let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    init(target: any ControlTarget, metricsExposition: (@Sendable () -> String)? = nil) {
        self.target = target
        self.metricsExposition = metricsExposition
        lastActivity = Array(repeating: 0, count: target.snapshot().lanes.count)
        history = [target.snapshot()]
    }

    /// Takes a snapshot when the last one is older than the snapshot interval.
    func tick(now: UInt64) {
        guard let last = history.last, now &- last.time >= ControlService.snapshotInterval else { return }
        record()
    }

    /// Takes a snapshot and keeps the ones that cover the last second.
    private func record() {
        let last = history[history.count - 1]
        let snapshot = target.snapshot()
        for lane in snapshot.lanes where lane.roundTrips != last.lanes[lane.index].roundTrips {
            lastActivity[lane.index] = snapshot.time
        }
        history.append(snapshot)
        // Keep what covers the last second and a bit.
        while history.count > 2, snapshot.time &- history[1].time >= 1_000_000_000 { history.removeFirst() }
    }

    // MARK: - Requests

    /// Answers one request line. A reply is one line, newline included.
    /// A `restricted` client (another user a private host allows) may only ask for a region.
    func handle(line: ArraySlice<UInt8>, restricted: Bool = false) -> (reply: [UInt8], effect: Effect) {
        let request: ControlRequest
        do {
            request = try JSONDecoder().decode(ControlRequest.self, from: Data(line))
        } catch let error as DecodingError {
            return (errorLine("invalid request: \(Self.describe(error))", cmd: nil), .none)
        } catch {
            return (errorLine("invalid request: \(error)", cmd: nil), .none)
        }
        guard request.v == ControlProtocol.version else {
            return (errorLine("unsupported protocol version \(request.v); this host speaks \(ControlProtocol.version)",
                              cmd: request.cmd), .none)
        }
        if restricted, request.cmd != "region" {
            return (errorLine("permission denied: other users may only ask this host for a region", cmd: request.cmd), .none)
        }
        switch request.cmd {
        case "region": return ([], .region(lanes: request.lanes))
        case "stats": return (encodeLine(stats()), .none)
        case "lanes":
            let rows = laneFields(stats: currentWindow())
            return (encodeLine(LanesReply(lanes: target.privateHost == nil ? rows : rows.filter { $0.state != "free" })), .none)
        case "metrics": return metrics()
        case "config": return config(request.set)
        case "watch":
            let interval = request.interval_ms ?? 1000
            guard (10...60_000).contains(interval) else {
                return (errorLine("interval_ms must be between 10 and 60000", cmd: "watch"), .none)
            }
            return (watchLine(), .watch(UInt64(interval) * 1_000_000))
        case "shutdown":
            return (encodeLine(ShutdownReply()), .shutdown)
        default:
            return (errorLine("unknown command '\(request.cmd)'; known: stats, lanes, config, watch, metrics, shutdown, region",
                              cmd: request.cmd), .none)
        }
    }

    /// The reply that carries a private region's descriptor (docs/LAYOUT.md, "Private regions").
    func regionLine(guest: PrivateGuest, region: Region) -> [UInt8] {
        encodeLine(PrivateRegionReply(v: ControlProtocol.version, ok: true, cmd: "region", error: nil, guest: guest.id,
                                      lanes: region.laneCount, slot_size: region.slotCapacity, size: guest.bytes))
    }

    func errorLine(_ message: String, cmd: String?) -> [UInt8] {
        encodeLine(ErrorReply(cmd: cmd, error: message))
    }

    /// One `watch` line: rates over the last snapshot window.
    func watchLine() -> [UInt8] {
        let window = currentWindow()
        let seconds = window.seconds
        let laneRates = window.now.lanes.filter { $0.ownerPID != 0 || $0.roundTrips != window.then.lanes[$0.index].roundTrips }
            .map { Double($0.roundTrips &- window.then.lanes[$0.index].roundTrips) / seconds }
        // Host-side figures only: guest-reported counters are shown per lane, never summed here.
        let sleeps = window.now.workers.reduce(0) { $0 &+ $1.sleeps } &- window.then.workers.reduce(0) { $0 &+ $1.sleeps }
        let wakes = window.now.lanes.reduce(0) { $0 &+ $1.wakesSent } &- window.then.lanes.reduce(0) { $0 &+ $1.wakesSent }
        return encodeLine(WatchLine(
            uptime_s: uptime(window.now.time),
            ops_per_sec: Double(window.now.roundTrips &- window.then.roundTrips) / seconds,
            lane_min_ops_per_sec: laneRates.min() ?? 0, lane_max_ops_per_sec: laneRates.max() ?? 0,
            sleeps_per_sec: Double(sleeps) / seconds, wakes_per_sec: Double(wakes) / seconds))
    }

    // MARK: - Replies

    private struct Window {
        var then: RegionSnapshot
        var now: RegionSnapshot
        var seconds: Double { max(Double(now.time &- then.time) / 1e9, 1e-3) }
    }

    /// The newest snapshot (taken now) and the oldest one within the last second or so.
    private func currentWindow() -> Window {
        record()
        let now = history[history.count - 1]
        let then = history.count > 1 ? history[0] : now
        return Window(then: then, now: now)
    }

    private func uptime(_ time: UInt64) -> Double { Double(time &- startTime) / 1e9 }

    private func laneFields(stats window: Window) -> [LaneFields] {
        window.now.lanes.map { lane in
            let before = window.then.lanes[lane.index]
            let active = lastActivity[lane.index]
            return LaneFields(
                lane: lane.index, owner_pid: lane.ownerPID,
                state: target.laneState(lane.index),
                round_trips: lane.roundTrips,
                ops_per_sec: Double(lane.roundTrips &- before.roundTrips) / window.seconds,
                last_activity_s: active == 0 ? nil : Double(window.now.time &- active) / 1e9,
                guest_calls: lane.calls, spin_wins: lane.spinWins, yields: lane.yields, sleeps: lane.sleeps,
                doorbells: lane.doorbells, wakes_sent: lane.wakesSent, wakes_skipped: lane.wakesSkipped,
                turn_waits: lane.turnWaits, errors: lane.hostErrors)
        }
    }

    private func stats() -> StatsReply {
        let window = currentWindow()
        let uptime = uptime(window.now.time)
        let total = window.now.roundTrips
        let isPrivate = target.privateHost != nil
        let allRows = laneFields(stats: window)
        // A private host's rows are guest slots: only the taken ones are shown.
        let rows = isPrivate ? allRows.filter { $0.state != "free" } : allRows
        // Async counters only from a host that serves with an async handler (a task started).
        let servesAsync = window.now.workers.contains { $0.asyncStarted > 0 }
        return StatsReply(
            name: target.name, host_pid: target.hostPID, uptime_s: uptime, round_trips: total,
            ops_per_sec_last: Double(total &- window.then.roundTrips) / window.seconds,
            ops_per_sec_avg: uptime > 0 ? Double(total) / uptime : 0,
            lanes_claimed: isPrivate ? rows.count : window.now.lanes.filter { $0.ownerPID != 0 }.count,
            sleeps: window.now.workers.reduce(0) { $0 &+ $1.sleeps },
            wakes_sent: window.now.lanes.reduce(0) { $0 &+ $1.wakesSent },
            errors: window.now.lanes.reduce(0) { $0 &+ $1.hostErrors },
            reclaimed_lanes: window.now.reclaimedLanes, control_dropped: droppedConnections,
            wait: target.spinPolicy, lanes: rows,
            workers: window.now.workers.map {
                WorkerFields(worker: $0.index, spin_wins: $0.spinWins, yields: $0.yields, sleeps: $0.sleeps,
                             async_started: servesAsync ? $0.asyncStarted : nil, async_finished: servesAsync ? $0.asyncFinished : nil,
                             async_dropped: servesAsync ? $0.asyncDropped : nil)
            },
            mode: isPrivate ? "private" : "named",
            process: ProcessFields(threads: Int(CShm_self_threads()), rss_kb: CShm_self_rss_kb(),
                                   open_fds: Int(CShm_self_open_fds()), cpu_s: Double(max(CShm_self_cpu_ns(), 0)) / 1e9),
            guests: target.privateHost.map { host in
                host.guests.map { guest in
                    let row = allRows.indices.contains(guest.slot) ? allRows[guest.slot] : nil
                    return GuestFields(guest: guest.id, pid: guest.pid, uid: guest.uid, lanes: guest.lanes, bytes: guest.bytes,
                                       worker: guest.worker, round_trips: row?.round_trips ?? 0, ops_per_sec: row?.ops_per_sec ?? 0)
                }
            },
            regions_freed: target.privateHost?.freedRegions,
            last_freed_monotonic_ns: target.privateHost?.lastFreedNanoseconds)
    }

    private func config(_ change: SpinPolicyChange?) -> ([UInt8], Effect) {
        var changed = false
        if let change {
            do {
                try target.setSpinPolicy(try change.applied(to: target.spinPolicy))
            } catch {
                return (errorLine("invalid configuration, nothing changed: \(error)", cmd: "config"), .none)
            }
            changed = true
        }
        let shape = target.shape
        return (encodeLine(ConfigReply(changed: changed, wait: target.spinPolicy, lanes: shape.lanes,
                                       slot_size: shape.slotCapacity, workers: shape.workers)), .none)
    }

    /// The process's metrics backend, rendered after a fresh collection (see ``HostMetrics``).
    private func metrics() -> ([UInt8], Effect) {
        guard let metricsExposition else {
            return (errorLine("this host renders no metrics: its embedder passes them to its own swift-metrics backend",
                              cmd: "metrics"), .none)
        }
        target.collectMetrics()
        return (encodeLine(MetricsReply(text: metricsExposition())), .none)
    }

    // MARK: - Encoding

    private func encodeLine<Reply: Encodable>(_ reply: Reply) -> [UInt8] {
        var bytes = (try? encoder.encode(reply)).map { [UInt8]($0) } ?? Array(#"{"v":1,"ok":false,"error":"encoding failed"}"#.utf8)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return "wrong type for '\(path)'"
        case .keyNotFound(let key, _):
            return "missing field '\(key.stringValue)'"
        case .dataCorrupted:
            return "not a JSON object"
        @unknown default:
            return "malformed"
        }
    }
}
