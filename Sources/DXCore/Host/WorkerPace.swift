import CShm

/// The pace of a serving thread that polls its lanes (``Worker``, ``AsyncWorker``): after each
/// round of polls it spins (``SpinWait``: relax, a yield now and then) up to the adaptive budget
/// (``AdaptiveSpin``), then sleeps on its doorbell (``Parker``); every 1024 rounds it checks the
/// stop flag, publishes the CPU it runs on and picks up a new spin policy from the control plane.
/// The one home of that loop's bookkeeping; the workers keep only what they poll.
struct WorkerPace {
    /// What the worker does after a round.
    enum Next { case poll, sleep, stop }

    let policies: SpinPolicyCell
    let doorbell: DoorbellView
    /// The worker's counters (host memory).
    let counters: UnsafeMutableRawPointer
    let counting: Bool
    private var version: UInt64
    private(set) var policy: SpinPolicy
    private var spin: AdaptiveSpin
    private var idle: SpinWait
    private var rounds: UInt32 = 0
    private var publishedCPU: Int32 = -1

    init(policies: SpinPolicyCell, doorbell: DoorbellView, counters: UnsafeMutableRawPointer, counting: Bool) {
        self.policies = policies
        self.doorbell = doorbell
        self.counters = counters
        self.counting = counting
        version = policies.version
        policy = policies.load()
        spin = AdaptiveSpin(policy)
        idle = SpinWait(budget: spin.budget, policy: policy)
    }

    /// After a round of polls; `worked` says whether it served (or took) a request.
    @inline(__always)
    mutating func afterRound(worked: Bool, stop: StopFlag) -> Next {
        rounds &+= 1
        if rounds & 0x3FF == 0 {
            if stop.isSet { return .stop }
            publishCPU()
            if policies.version != version {
                // A new policy from the control plane: picked up between two polls.
                version = policies.version
                policy = policies.load()
                spin = AdaptiveSpin(policy)
                idle = SpinWait(budget: spin.budget, policy: policy)
            }
        }
        if worked {
            if idle.spins != 0 {
                spin.spinSucceeded()
                if counting { bump(counters + HostCounters.Worker.spinWins) }
                idle = SpinWait(budget: spin.budget, policy: policy)
            }
            return .poll
        }
        switch idle.step() {
        case .spun:
            return .poll
        case .yielded:
            if counting { bump(counters + HostCounters.Worker.yields) }
            return .poll
        case .exhausted:
            return .sleep
        }
    }

    /// The spin budget is spent: parks on the doorbell for at most the policy's sleep timeout,
    /// unless `ready` (seq-cst loads: the parker handshake's re-check) says there is work by the
    /// time the sleep is announced. Returns false when the worker should stop.
    mutating func sleep(stop: StopFlag, until ready: () -> Bool) -> Bool {
        spin.hadToSleep()
        if counting { bump(counters + HostCounters.Worker.sleeps) }
        defer { publishCPU() }  // a wake-up may have moved us
        let outcome = doorbell.parker.park(timeoutNanoseconds: policy.sleepTimeoutNanoseconds, until: ready)
        if stop.isSet { return false }
        idle = SpinWait(budget: spin.budget, policy: policy)
        // Nobody came for a whole sleep: poll once more and sleep again, without spinning
        // through the budget first (an idle host should cost next to nothing). Otherwise a
        // request is there or about to be: spin again.
        if outcome == .timedOut { idle.spins = spin.budget &- 1 }
        return true
    }

    /// Publishes the CPU this worker runs on when it changed, for guests that keep off it.
    @inline(__always)
    mutating func publishCPU() {
        let cpu = CShm_current_cpu()
        if cpu != publishedCPU {
            publishedCPU = cpu
            // Relaxed: a hint; a stale value costs a guest one more check.
            doorbell.workerCPU = UInt32(bitPattern: cpu)
        }
    }
}
