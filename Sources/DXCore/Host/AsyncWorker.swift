import CShm

/// A serving thread for an ``AsyncRequestHandler``: it polls its lanes like ``Worker``, but hands
/// each request to a task (``InFlightRequests``) and goes on polling; it publishes each task's
/// outcome when the task comes back, so it stays the only writer of its lanes' responses.
///
/// A lane whose request is in flight is not polled until its task comes back; no more than the
/// worker's share of the host's task limit run at once. While the worker is at its limit it waits
/// for a task to come back (spinning its budget, then sleeping on its doorbell, which every task
/// posts when it is done), so requests that wait for a free task cost no CPU.
///
/// Its own class rather than a mode of ``Worker``: `Worker.run` is compiled once for every
/// synchronous handler (it is not specialised across modules), so a protocol or a branch that
/// chose the async path there would cost the synchronous path a call or a test in every poll.
final class AsyncWorker<Handler: AsyncRequestHandler>: @unchecked Sendable {
    let region: Region
    let index: Int
    let handler: Handler
    /// Where the spin policy comes from; it may change while the worker runs.
    let policies: SpinPolicyCell
    let stop: StopFlag
    /// Whether the worker updates its counters.
    let counting: Bool
    /// This worker's counters (host memory).
    private let counters: UnsafeMutableRawPointer
    /// The lanes this worker serves.
    private let served: ServedLanes
    /// Their requests in the hands of tasks.
    private let inFlight: InFlightRequests

    init(region: Region, index: Int, handler: Handler, maxTasks: Int, policies: SpinPolicyCell, stop: StopFlag,
         counters hostCounters: HostCounters, counting: Bool) {
        self.region = region
        self.index = index
        self.handler = handler
        self.policies = policies
        self.stop = stop
        self.counting = counting
        self.counters = hostCounters.worker(index)
        let indices = Array(stride(from: index, to: region.laneCount, by: region.workerCount))
        served = ServedLanes(region: region, indices: indices, counters: hostCounters)
        inFlight = InFlightRequests(lanes: indices.count, limit: maxTasks,
                                    mailbox: CompletionMailbox(region: region, worker: index), counters: counters)
    }

    /// Serves until the stop flag is set, then settles every request still in flight.
    func run() {
        let doorbell = region.doorbell(index)
        defer { inFlight.settleAtStop(served, doorbell: doorbell, counting: counting) }
        var pace = WorkerPace(policies: policies, doorbell: doorbell, counters: counters, counting: counting)
        // Where the next scan starts: at the task limit, every lane gets its turn at a free task.
        var first = 0
        let count = served.count
        while true {
            var busy = inFlight.publishReturned(served, counting: counting)
            var slot = first
            for _ in 0..<count where !inFlight.isFull {
                if !inFlight.isBusy(slot), let seq = served.pending(slot) {
                    if let taken = served.take(slot: slot, seq: seq, counting: counting) {
                        inFlight.start(slot: slot, seq: seq, owner: taken.owner, request: taken.request,
                                       lane: served.indices[slot], handler: handler, counting: counting)
                    }
                    busy = true
                }
                slot = slot + 1 == count ? 0 : slot + 1
            }
            first = first + 1 == count ? 0 : first + 1
            switch pace.afterRound(worked: busy, stop: stop) {
            case .poll: continue
            case .stop: return
            case .sleep:
                // Parks on the doorbell unless, by the time the sleep is announced, a task came
                // back or a lane the worker may serve now has a request.
                if !pace.sleep(stop: stop, until: { stop.isSet || inFlight.hasWorkSeqCst(served) }) { return }
            }
        }
    }
}
