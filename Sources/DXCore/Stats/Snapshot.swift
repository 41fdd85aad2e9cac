import CShm

/// One lane's counters and owner, read from shared memory at one moment.
///
/// Guest-written values (owner, the guest counters) are whatever the guest wrote: shown, never
/// trusted.
public struct LaneSnapshot: Sendable, Equatable {
    /// The index.
    public var index: Int
    /// The owning guest's pid, or 0 when the lane is free.
    public var ownerPID: Int32
    /// Bumped by every claim of the lane.
    public var generation: UInt32
    // Written by the serving worker.
    /// Round trips the worker answered.
    public var roundTrips: UInt64
    /// Sleeping guests the worker woke.
    public var wakesSent: UInt64
    /// Requests answered with an error status.
    public var hostErrors: UInt64
    // Written by the guest.
    /// Calls the guest counted.
    public var calls: UInt64
    /// Waits that ended while spinning.
    public var spinWins: UInt64
    /// `sched_yield` calls while waiting.
    public var yields: UInt64
    /// Waits that ended in a sleep.
    public var sleeps: UInt64
    /// Times the guest woke the worker.
    public var doorbells: UInt64
    /// Calls the guest counted as failed.
    public var guestErrors: UInt64
    /// Times the guest slept waiting for its turn.
    public var turnWaits: UInt64

    /// Responses published while the guest was awake, so no wake-up was needed.
    public var wakesSkipped: UInt64 { roundTrips &- min(wakesSent, roundTrips) }
}

/// One serving worker's counters.
public struct WorkerSnapshot: Sendable, Equatable {
    /// The index.
    public var index: Int
    /// Waits that ended while spinning.
    public var spinWins: UInt64
    /// `sched_yield` calls while waiting.
    public var yields: UInt64
    /// Waits that ended in a sleep.
    public var sleeps: UInt64
    /// Requests handed to async handler tasks (0 with a synchronous handler).
    public var asyncStarted: UInt64 = 0
    /// Async handler tasks whose outcome the worker took back.
    public var asyncFinished: UInt64 = 0
    /// Async handler outcomes that did not reach their request's guest: the lane had moved on (the
    /// guest published again, or died and its lane was reclaimed), or the host stopped first.
    public var asyncDropped: UInt64 = 0
}

/// Every counter of a host at one moment (CLOCK_MONOTONIC `time`).
public struct RegionSnapshot: Sendable {
    /// When the snapshot was taken (CLOCK_MONOTONIC ns).
    public var time: UInt64
    /// Every lane.
    public var lanes: [LaneSnapshot]
    /// Every serving worker.
    public var workers: [WorkerSnapshot]
    /// Lanes the host took back from guests that died.
    public var reclaimedLanes: UInt64

    /// Round trips answered on every lane.
    public var roundTrips: UInt64 { lanes.reduce(0) { $0 &+ $1.roundTrips } }
}

extension HostCounters {
    /// Reads every counter, the host's from host memory and the guests' from the region, with
    /// relaxed loads. It costs the data path nothing: the counters sit on their owners' cache
    /// lines, which this read only shares for a moment.
    func snapshot(of region: Region) -> RegionSnapshot {
        let lanes = (0..<region.laneCount).map { index -> LaneSnapshot in
            let view = region.lane(index)
            let host = lane(index)
            let owner = view.owner.hint
            return LaneSnapshot(
                index: index, ownerPID: Int32(truncatingIfNeeded: owner >> 32),
                generation: UInt32(truncatingIfNeeded: owner),
                roundTrips: read(host + HostCounters.Lane.roundTrips),
                wakesSent: read(host + HostCounters.Lane.wakesSent),
                hostErrors: read(host + HostCounters.Lane.errors),
                calls: view.read(.calls), spinWins: view.read(.spinWins), yields: view.read(.yields),
                sleeps: view.read(.sleeps), doorbells: view.read(.doorbells), guestErrors: view.read(.errors),
                turnWaits: view.read(.turnWaits))
        }
        let workers = (0..<region.workerCount).map { index -> WorkerSnapshot in
            let counters = worker(index)
            return WorkerSnapshot(
                index: index, spinWins: read(counters + HostCounters.Worker.spinWins),
                yields: read(counters + HostCounters.Worker.yields), sleeps: read(counters + HostCounters.Worker.sleeps),
                asyncStarted: read(counters + HostCounters.Worker.asyncStarted),
                asyncFinished: read(counters + HostCounters.Worker.asyncFinished),
                asyncDropped: read(counters + HostCounters.Worker.asyncDropped))
        }
        return RegionSnapshot(time: CShm_monotonic_ns(), lanes: lanes, workers: workers, reclaimedLanes: read(reclaimedLanes))
    }
}
