#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import Synchronization

/// One serving thread: it polls its lanes, answers each new request in place, and sleeps on its
/// doorbell when no request came for a while.
///
/// Lane `i` is served by worker `i % workerCount`. Answering is ``ServedLanes``'s: the worker keeps
/// its own copy of each lane's last sequence number and never trusts a length or sequence number
/// it has not checked.
final class Worker<Handler: RequestHandler>: @unchecked Sendable {
    let region: Region
    let index: Int
    let handler: Handler
    /// Where the spin policy comes from; it may change while the worker runs.
    let policies: SpinPolicyCell
    let stop: StopFlag
    /// Whether the worker updates its counters in shared memory (off only to measure their cost).
    let counting: Bool
    /// This worker's counters (host memory).
    private let counters: UnsafeMutableRawPointer
    /// The lanes this worker serves.
    private let served: ServedLanes

    /// With a focus lane, every lane is scanned once per this many polls of the focus lane.
    static var scanEvery: Int { 8 }

    init(region: Region, index: Int, handler: Handler, policies: SpinPolicyCell, stop: StopFlag,
         counters hostCounters: HostCounters, counting: Bool) {
        self.region = region
        self.index = index
        self.handler = handler
        self.policies = policies
        self.stop = stop
        self.counting = counting
        self.counters = hostCounters.worker(index)
        served = ServedLanes(region: region, indices: Array(stride(from: index, to: region.laneCount, by: region.workerCount)),
                             counters: hostCounters)
    }

    /// Serves until the stop flag is set.
    func run() {
        var pace = WorkerPace(policies: policies, doorbell: region.doorbell(index), counters: counters, counting: counting)
        // Focus: while one lane is the only busy one (the usual case with turns), poll it alone
        // and scan every lane only every `Worker.scanEvery` rounds. A scan that finds several busy
        // lanes ends the focus, so concurrently busy lanes are served in turn.
        var focus = -1
        var roundsSinceScan = 0
        while true {
            var served = false
            if focus >= 0, roundsSinceScan < Worker.scanEvery {
                roundsSinceScan &+= 1
                if let seq = self.served.pending(focus) {
                    self.served.serve(slot: focus, seq: seq, handler: handler, counting: counting)
                    served = true
                }
            } else {
                roundsSinceScan = 0
                var busy = 0
                for slot in 0..<self.served.count {
                    if let seq = self.served.pending(slot) {
                        self.served.serve(slot: slot, seq: seq, handler: handler, counting: counting)
                        busy &+= 1
                        focus = slot
                    }
                }
                if busy > 1 { focus = -1 }
                served = busy > 0
            }
            switch pace.afterRound(worked: served, stop: stop) {
            case .poll: continue
            case .stop: return
            case .sleep:
                // Parks on the doorbell unless a lane has a request by the time the sleep is
                // announced, or the host stops.
                if !pace.sleep(stop: stop, until: { stop.isSet || self.served.anyPendingSeqCst() }) { return }
            }
        }
    }
}

/// Posts a sleeping guest's futex word, once per sleep: the CAS that clears the flag decides who
/// posts (``Parker/wakeIfSleeping()``).
@discardableResult
func wakeSleepingGuest(lane: LaneView) -> Bool {
    lane.parker.wakeIfSleeping()
}
