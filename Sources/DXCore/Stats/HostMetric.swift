/// One metric family a ``Host`` reports through swift-metrics: its label (the Prometheus name),
/// whether it is a counter or a gauge, and a sentence that explains it (for a backend's help text).
///
/// Every family carries the dimension `region` (the region name); lane families add `lane`, worker
/// families `worker`. ``all`` lists them; <doc:CollectingMetrics> explains when each is collected.
public struct HostMetric: Sendable, Hashable {
    /// Counter (only grows) or gauge (a value now).
    public enum Kind: String, Sendable, Hashable {
        /// A swift-metrics `Counter`.
        case counter
        /// A swift-metrics `Gauge` (a recorder that keeps the last value).
        case gauge
    }

    /// The swift-metrics label, which is the Prometheus metric name.
    public let label: String
    /// Counter or gauge.
    public let kind: Kind
    /// What it counts, in a sentence.
    public let help: String

    private init(_ label: String, _ kind: Kind, _ help: String) {
        self.label = label
        self.kind = kind
        self.help = help
    }

    // MARK: Host-wide

    /// Seconds since the host was created.
    public static let uptime = HostMetric("dx_uptime_seconds", .gauge, "Seconds since the host started.")
    /// Round trips per second over the last second or two.
    public static let opsPerSecond = HostMetric("dx_ops_per_second", .gauge, "Round trips per second over the last second.")
    /// Lanes whose owner word holds a pid.
    public static let lanesClaimed = HostMetric("dx_lanes_claimed", .gauge, "Lanes whose owner word holds a pid.")
    /// Requests answered, all lanes.
    public static let roundTrips = HostMetric("dx_round_trips_total", .counter, "Requests answered by the host, all lanes.")
    /// Sleeping guests woken, all lanes.
    public static let wakesSent = HostMetric("dx_wakes_sent_total", .counter, "Sleeping guests woken by the host, all lanes.")
    /// Requests answered with an error status, all lanes.
    public static let hostErrors = HostMetric(
        "dx_host_errors_total", .counter, "Requests answered with an error status, all lanes.")
    /// Lanes taken back from guests that died.
    public static let reclaimedLanes = HostMetric(
        "dx_reclaimed_lanes_total", .counter, "Lanes taken back from guests that died.")

    // MARK: Per lane, while it is claimed

    /// Requests answered on the lane.
    public static let laneRoundTrips = HostMetric("dx_lane_round_trips_total", .counter, "Requests answered by the host.")
    /// Sleeping guests woken on the lane.
    public static let laneWakesSent = HostMetric("dx_lane_wakes_sent_total", .counter, "Sleeping guests woken by the host.")
    /// Responses published while the lane's guest was awake.
    public static let laneWakesSkipped = HostMetric(
        "dx_lane_wakes_skipped_total", .counter, "Responses published while the guest was awake.")
    /// Requests on the lane answered with an error status.
    public static let laneHostErrors = HostMetric(
        "dx_lane_host_errors_total", .counter,
        "Requests answered with an error status (bad length, bad sequence, handler).")
    /// Calls the guest counted (guest-reported).
    public static let laneGuestCalls = HostMetric(
        "dx_lane_guest_calls_total", .counter, "Calls the guest made (guest-reported).")
    /// Guest waits that ended while spinning (guest-reported).
    public static let laneGuestSpinWins = HostMetric(
        "dx_lane_guest_spin_wins_total", .counter, "Guest waits that ended while spinning (guest-reported).")
    /// Guest yields while waiting (guest-reported).
    public static let laneGuestYields = HostMetric(
        "dx_lane_guest_yields_total", .counter, "Guest yields while waiting (guest-reported).")
    /// Guest sleeps while waiting (guest-reported).
    public static let laneGuestSleeps = HostMetric(
        "dx_lane_guest_sleeps_total", .counter, "Guest sleeps while waiting (guest-reported).")
    /// Worker wake-ups the guest sent (guest-reported).
    public static let laneGuestDoorbells = HostMetric(
        "dx_lane_guest_doorbells_total", .counter, "Worker wake-ups the guest sent (guest-reported).")
    /// Turns the guest waited for (guest-reported).
    public static let laneGuestTurnWaits = HostMetric(
        "dx_lane_guest_turn_waits_total", .counter, "Turns the guest waited for (guest-reported).")

    // MARK: Per serving worker

    /// Idle waits of the worker that ended while spinning.
    public static let workerSpinWins = HostMetric(
        "dx_worker_spin_wins_total", .counter, "Idle waits of the worker that ended while spinning.")
    /// Worker yields while idle.
    public static let workerYields = HostMetric("dx_worker_yields_total", .counter, "Worker yields while idle.")
    /// Worker sleeps on its doorbell.
    public static let workerSleeps = HostMetric("dx_worker_sleeps_total", .counter, "Worker sleeps on its doorbell.")

    /// The lane families, in the order ``HostMetrics`` reads them: the host's four, then the guest's six.
    static let lane: [HostMetric] = [
        laneRoundTrips, laneWakesSent, laneWakesSkipped, laneHostErrors,
        laneGuestCalls, laneGuestSpinWins, laneGuestYields, laneGuestSleeps, laneGuestDoorbells, laneGuestTurnWaits,
    ]
    /// How many of ``lane`` the host counts (the rest are the guest's).
    static let hostLaneCount = 4
    /// The worker families, in the order ``HostMetrics`` reads them.
    static let worker: [HostMetric] = [workerSpinWins, workerYields, workerSleeps]

    /// Every family a host reports.
    public static let all: [HostMetric] = [uptime, opsPerSecond, lanesClaimed, roundTrips, wakesSent, hostErrors,
                                           reclaimedLanes] + lane + worker
}
