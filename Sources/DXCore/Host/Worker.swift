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
/// Lane `i` is served by worker `i % workerCount`. The worker keeps its own copy of each lane's
/// last sequence number and never trusts a length or sequence number it has not checked.
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
    /// Bases of the lanes this worker serves.
    private let lanes: UnsafeMutableBufferPointer<LaneView>
    /// The host-memory counters of each of those lanes.
    private let laneCounters: UnsafeMutableBufferPointer<UnsafeMutableRawPointer>
    /// The last sequence number answered on each of those lanes (host-private).
    private let answered: UnsafeMutableBufferPointer<UInt64>

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
        let indices = Array(stride(from: index, to: region.laneCount, by: region.workerCount))
        let served = indices.map { region.lane($0) }
        lanes = .allocate(capacity: served.count)
        _ = lanes.initialize(from: served)
        laneCounters = .allocate(capacity: served.count)
        _ = laneCounters.initialize(from: indices.map { hostCounters.lane($0) })
        answered = .allocate(capacity: served.count)
        for (slot, lane) in served.enumerated() {
            answered[slot] = lane.responseSeq
        }
    }

    deinit {
        lanes.deallocate()
        laneCounters.deallocate()
        answered.deallocate()
    }

    /// Serves until the stop flag is set.
    func run() {
        let doorbell = region.doorbell(index)
        var version = policies.version
        var policy = policies.load()
        var spin = AdaptiveSpin(policy)
        var idle = SpinWait(budget: spin.budget, policy: policy)
        var rounds: UInt32 = 0
        // Focus: while one lane is the only busy one (the usual case with turns), poll it alone
        // and scan every lane only every `Worker.scanEvery` rounds. A scan that finds several busy
        // lanes ends the focus, so concurrently busy lanes are served in turn.
        var focus = -1
        var roundsSinceScan = 0
        var publishedCPU: Int32 = -1
        while true {
            var served = false
            if focus >= 0, roundsSinceScan < Worker.scanEvery {
                roundsSinceScan &+= 1
                let lane = lanes[focus]
                // Acquire: makes length and payload visible.
                let seq = lane.requestSeq
                if seq != answered[focus] {
                    serve(slot: focus, lane: lane, seq: seq)
                    served = true
                }
            } else {
                roundsSinceScan = 0
                var busy = 0
                for slot in 0..<lanes.count {
                    let lane = lanes[slot]
                    let seq = lane.requestSeq  // acquire, as above
                    if seq != answered[slot] {
                        serve(slot: slot, lane: lane, seq: seq)
                        busy &+= 1
                        focus = slot
                    }
                }
                if busy > 1 { focus = -1 }
                served = busy > 0
            }
            rounds &+= 1
            if rounds & 0x3FF == 0 {
                if stop.isSet { return }
                publishCPU(doorbell, &publishedCPU)
                if policies.version != version {
                    // A new policy from the control plane: picked up between two polls.
                    version = policies.version
                    policy = policies.load()
                    spin = AdaptiveSpin(policy)
                    idle = SpinWait(budget: spin.budget, policy: policy)
                }
            }
            if served {
                if idle.spins != 0 {
                    spin.spinSucceeded()
                    if counting { bump(counters + HostCounters.Worker.spinWins) }
                    idle = SpinWait(budget: spin.budget, policy: policy)
                }
                continue
            }
            switch idle.step() {
            case .spun:
                continue
            case .yielded:
                if counting { bump(counters + HostCounters.Worker.yields) }
                continue
            case .exhausted:
                break
            }
            spin.hadToSleep()
            if counting { bump(counters + HostCounters.Worker.sleeps) }
            defer { publishCPU(doorbell, &publishedCPU) }  // a wake-up may have moved us
            let outcome = sleep(doorbell: doorbell, timeout: policy.sleepTimeoutNanoseconds)
            if stop.isSet { return }
            idle = SpinWait(budget: spin.budget, policy: policy)
            // Nobody came for a whole sleep: poll once more and sleep again, without spinning
            // through the budget first (an idle host should cost next to nothing). Otherwise a
            // request is there or about to be: spin again.
            if outcome == .timedOut { idle.spins = spin.budget &- 1 }
        }
    }

    /// Publishes the CPU this worker runs on when it changed, for guests that keep off it.
    @inline(__always)
    private func publishCPU(_ doorbell: DoorbellView, _ published: inout Int32) {
        let cpu = CShm_current_cpu()
        if cpu != published {
            published = cpu
            // Relaxed: a hint; a stale value costs a guest one more check.
            doorbell.workerCPU = UInt32(bitPattern: cpu)
        }
    }

    /// Answers one request. Everything read from the lane is copied once and checked.
    @inline(__always)
    private func serve(slot: Int, lane: LaneView, seq: UInt64) {
        let capacity = region.slotCapacity
        let payload = lane.payload
        var status = ResponseStatus.ok
        var length = 0
        if seq != answered[slot] &+ 1 {
            status = .badSequence
        } else {
            let requestLength = lane.requestLength
            if requestLength > capacity {
                status = .badLength
            } else {
                let written = handler.handle(request: UnsafeRawBufferPointer(start: payload, count: requestLength),
                                             response: UnsafeMutableRawBufferPointer(start: payload, count: capacity))
                if written >= 0, written <= capacity { length = written } else { status = .handlerFailed }
            }
        }
        answered[slot] = seq
        if counting {
            bump(laneCounters[slot] + HostCounters.Lane.roundTrips)
            if status != .ok { bump(laneCounters[slot] + HostCounters.Lane.errors) }
        }
        // Publishes the response and orders it before the guest's sleeping-flag load in unpark
        // (the parker handshake: no lost wake-up).
        lane.publishResponse(seq: seq, length: length, status: status)
        if lane.parker.unpark(), counting {
            bump(laneCounters[slot] + HostCounters.Lane.wakesSent)
        }
    }

    /// Parks on the doorbell (`Parker` (Wait/Parker.swift)) for at most the strategy's sleep timeout, unless a lane
    /// has a request by the time the sleep is announced, or the host stops.
    private func sleep(doorbell: DoorbellView, timeout: UInt64) -> Parker.Outcome {
        doorbell.parker.park(timeoutNanoseconds: timeout) {
            if stop.isSet { return true }
            // Seq-cst: guests store requestSeq seq-cst and then load the flag, so either we see
            // their request here or they see the flag and post.
            for slot in 0..<lanes.count where lanes[slot].requestSeqSeqCst != answered[slot] {
                return true
            }
            return false
        }
    }
}

/// Posts a sleeping guest's futex word, once per sleep: the CAS that clears the flag decides who
/// posts (``Parker/wakeIfSleeping()``).
@discardableResult
func wakeSleepingGuest(lane: LaneView) -> Bool {
    lane.parker.wakeIfSleeping()
}
