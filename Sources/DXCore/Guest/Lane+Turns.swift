import CShm

/// Turn-taking between the guest threads that share a serving worker.
///
/// With more guest threads than CPUs, threads that all spin for their responses starve the
/// worker and each other. With turns on (``TurnPolicy/turnCalls``), the guest threads of one
/// worker form a FIFO ticket queue in the worker's turnstile: one holds the turn and makes calls;
/// the others sleep on a futex, so they take no CPU. A holder keeps its turn while nobody waits;
/// when someone does, it passes the turn after `turnCalls` calls or its quantum, whichever comes
/// first, between two calls. The one pass in the middle of an exchange is a call about to sleep for
/// its response (a slow handler) while someone waits: it passes first, so the worker's other
/// lanes keep moving (``passTurnBeforeSleeping()``). Counting calls rather than time
/// keeps lanes equal in round trips even when the machine's speed drifts. The quantum shrinks as
/// waiters queue up (``TurnPolicy/quantum(waiters:)``, which also states the bound on a round).
/// A holder that stops calling, or died, loses its turn once its lease is stale (twice the
/// quantum plus 1 ms, ``TurnPolicy/staleLeaseNanoseconds(waiters:)``); dead waiters in the queue
/// are skipped the same way, one stale period each.
///
/// Every turn operation happens inside ``Lane/call(request:response:)`` (it is part of the call's
/// latency) and only every 64 calls, or while waiting. A wait for a turn honours the call timeout:
/// a turn that never comes (a holder that renews its lease forever) fails the call with
/// ``CallError/timedOut`` before anything is published, and the lane stays usable. The turnstile
/// is guest-written: a guest that vandalises it can only spoil other guests' fairness and make
/// their calls time out, never touch their data or the host.
extension Lane {
    @usableFromInline
    static let callsBetweenTurnChecks: UInt32 = 64
    /// The longest step of a wait for a private region's grant (a dead host is noticed within it).
    static let grantWaitStep: UInt64 = 500_000_000

    /// Keeps, passes or waits for the turn. Returns why the call cannot go on, or nil; sets
    /// `waitStart` when it had to wait (the call timeout counts from there).
    @usableFromInline
    mutating func takeTurns(waitStart: inout UInt64) -> CallError? {
        if strategy.turnPolicy.avoidWorkerCPU { keepOffWorkerCPU() }
        if keepTurn() { return nil }
        if let error = acquireTurn(waitStart: &waitStart) {
            callsUntilTurnCheck = 0  // the next call asks for a turn again
            return error
        }
        return nil
    }

    /// The turn check every `callsBetweenTurnChecks` calls: keeps the turn while its budget
    /// lasts or nobody waits, else passes it. Returns whether this lane still holds it (if not,
    /// the caller takes a ticket).
    mutating func keepTurn() -> Bool {
        callsUntilTurnCheck = Lane.callsBetweenTurnChecks - 1
        guard holdsTurn else { return false }
        let now = CShm_monotonic_ns()
        let policy = strategy.turnPolicy
        callsInTurn &+= Lane.callsBetweenTurnChecks
        let age = now &- leaseStart
        // Within every quantum the rule can give: no need to count the waiters.
        if callsInTurn < policy.turnCalls, age < policy.shortestQuantumNanoseconds, !grants { return true }
        if turnstile.servingAcquire == turnTicket {
            let next = turnstile.next
            // Nobody waiting counts as 0: the whole quantum.
            let waiters = TurnPolicy.waiters(next: next, serving: turnTicket)
            let quantum = grants ? TurnPolicy.quantum(waiters: waiters, withinGrant: grant.quantum, policy: policy)
                : policy.quantum(waiters: waiters)
            if callsInTurn < policy.turnCalls, age < quantum { return true }
            if next == turnTicket &+ 1 {
                renewLease(now)  // the budget is spent, but nobody waits: keep going
                return true
            }
            passTurn(now)
            turnPasses &+= 1
        }
        dropTurn()  // passed, or taken by a waiter while we were away
        return false
    }

    /// Forgets the turn (after passing it, or losing it) and, in a shared region, undoes
    /// ``keepOffWorkerCPU()``.
    mutating func dropTurn() {
        holdsTurn = false
        if avoidedCPU >= 0, !grants {
            CShm_restore_affinity()
            avoidedCPU = -1
        }
    }

    /// Before a call sleeps for its response (a slow handler, a busy worker): passes the turn
    /// when someone waits for it, so that the worker's other lanes keep moving meanwhile. The
    /// next call takes a ticket again.
    mutating func passTurnBeforeSleeping() {
        guard holdsTurn, turnstile.servingAcquire == turnTicket, turnstile.next != turnTicket &+ 1 else { return }
        passTurn(CShm_monotonic_ns())
        turnPasses &+= 1
        dropTurn()
        callsUntilTurnCheck = 0
    }

    /// Takes a ticket and waits (sleeping) until it is served, the host goes, or the call timeout
    /// passes (then the ticket is abandoned: waiters skip it like a dead one's).
    mutating func acquireTurn(waitStart: inout UInt64) -> CallError? {
        var wait = beginTurnWait()
        defer { endTurnWait(wait) }
        while true {
            switch turnWaitStep(&wait, waitStart: &waitStart) {
            case .done: return nil
            case .failed(let error): return error
            case .sleep(let word, let seen, let timeout): turnstile.sleep(on: word, seen: seen, timeoutNanoseconds: timeout)
            }
        }
    }

    /// Waits until the region holds its worker's grant (a private host grants its worker to one
    /// region at a time; docs/LAYOUT.md, "Granted turns"), sleeping on the grant word in bounded
    /// steps (see ``grantWaitStep(_:waitStart:)``).
    @usableFromInline @inline(never)
    mutating func waitForGrant(waitStart: inout UInt64) -> CallError? {
        // Whatever ends the wait, the want goes with it: a want left set would keep asking the
        // host for grants nobody uses.
        defer { grant.clearWant() }
        var wait = beginGrantWait(waitStart: &waitStart)
        while true {
            switch grantWaitStep(&wait, waitStart: &waitStart) {
            case .done: return nil
            case .failed(let error): return error
            case .sleep(let word, let seen, let timeout): _ = CShm_futex_wait(word, seen, timeout)
            }
        }
    }

    // MARK: - The waits, step by step

    // Each wait is a loop of steps that decide, and sleeps between them. The blocking call
    // (above) sleeps in a futex wait; the suspending one (Lane+Async.swift) hands the same word to
    // the process's `FutexWaiter`. The steps are the one home of what the waits decide.

    /// What a wait does next.
    enum WaitStep {
        /// The wait is over.
        case done
        /// The call cannot go on.
        case failed(CallError)
        /// Sleep while `word` holds `seen`, for at most `timeout` ns; then take the next step.
        case sleep(word: UnsafeMutablePointer<UInt32>, seen: UInt32, timeout: UInt64)
    }

    /// A wait for a turn in progress.
    struct TurnWait {
        let ticket: UInt64
        let word: UnsafeMutablePointer<UInt32>
        let start: UInt64
        let deadline: UInt64
        /// Whether it slept at all (counted as a turn wait), and the sleep before this step (0: none).
        var waited = false
        var slept: UInt64 = 0
    }

    /// Takes a ticket.
    mutating func beginTurnWait() -> TurnWait {
        let start = CShm_monotonic_ns()
        turnTicket = turnstile.takeTicket()
        return TurnWait(ticket: turnTicket, word: turnstile.wakeWord(for: turnTicket), start: start,
                        deadline: start &+ callTimeoutNanoseconds)
    }

    /// Counts a wait that slept.
    mutating func endTurnWait(_ wait: TurnWait) {
        guard wait.waited else { return }
        turnWaits &+= 1
        if counting { view.bump(.turnWaits) }
    }

    /// One step of a wait for a turn: after a sleep, skips a stale holder and checks the host; then
    /// goes when served, or says how long to sleep.
    mutating func turnWaitStep(_ wait: inout TurnWait, waitStart: inout UInt64) -> WaitStep {
        let policy = strategy.turnPolicy
        let ticket = wait.ticket
        if wait.slept != 0 {
            if turnstile.servingAcquire == ticket { return tookTurn() }
            // The holder has neither renewed nor passed its turn for too long (it stopped calling,
            // or died, possibly with dead waiters queued behind it): move the turn on by one
            // ticket. Every waiter may do this, so dead tickets cannot stall the queue; each costs
            // one stale period, because the lease restarts for the ticket served next. The period
            // shrinks as the queue grows, so a long queue of dead tickets drains faster than one
            // constant period each.
            let holder = turnstile.servingAcquire
            let now = CShm_monotonic_ns()
            // A holder that waits for its region's grant (the grant is 0 and someone wants it) is
            // not stale: it renews its lease at least every sleep timeout while it waits, so it is
            // judged with a second more. Without a want, nobody waits for the grant, and a holder
            // that stopped calling is judged as usual (else the region never gets a grant again).
            // In a granted region the lease is judged by the period that sized the sleep.
            let waitingForGrant = grants && !grant.isGranted && grant.wanted
            let stale = waitingForGrant ? wait.slept &+ 1_000_000_000 : wait.slept
            if ticket &- holder < 1 << 62, now &- turnstile.lease > stale {
                turnstile.lease = now
                if turnstile.moveServing(from: holder) {
                    if holder &+ 1 == ticket { return tookTurn() }
                    turnstile.wake(holder &+ 1)
                }
            }
            switch region.hostProblem() {
            case .shutdown?: return .failed(.shutdown)
            case .hostGone?: return .failed(.hostGone)
            case nil: break
            }
        }
        // Read the word before re-checking `serving`; the passer changes `serving` before the
        // word, so a pass between the two makes the futex wait return at once.
        let seen = turnstile.seen(wait.word)
        // Served (or a vandalised counter already past us): go.
        let serving = turnstile.serving
        if serving &- ticket < 1 << 62 { return tookTurn() }
        wait.waited = true
        waitStart = wait.start
        // The stale period for the queue as it is now (this waiter included): it sizes the
        // sleep, and the lease is judged by the same period after it.
        let staleAfter = policy.staleLeaseNanoseconds(waiters: TurnPolicy.waiters(next: turnstile.next, serving: serving))
        let beforeWait = CShm_monotonic_ns()
        if beforeWait >= wait.deadline { return .failed(.timedOut) }
        // In a region whose turns the host grants, waiters check a few times less often than
        // once per grant cycle: hundreds of them waking every stale period would cost more than
        // they wait (each wake-up also preempts whatever runs, the host's worker included).
        // They are woken when their turn comes; the check only skips a dead holder.
        wait.slept = grants ? max(staleAfter, min(grant.cycle &* 4, 1_000_000_000)) : staleAfter
        return .sleep(word: wait.word, seen: seen, timeout: min(wait.slept, wait.deadline &- beforeWait))
    }

    /// The turn is this lane's.
    mutating func tookTurn() -> WaitStep {
        holdsTurn = true
        renewLease(CShm_monotonic_ns())
        return .done
    }

    /// A wait for the region's grant in progress.
    struct GrantWait {
        let deadline: UInt64
        var slept = false
    }

    /// Counts the wait; the call timeout counts from `waitStart` (set here if the call had not
    /// waited yet).
    mutating func beginGrantWait(waitStart: inout UInt64) -> GrantWait {
        if waitStart == 0 { waitStart = CShm_monotonic_ns() }
        turnWaits &+= 1
        if counting { view.bump(.turnWaits) }
        return GrantWait(deadline: waitStart &+ callTimeoutNanoseconds)
    }

    /// One step of a wait for the grant: says it wants one (want word, seq-cst), rings the
    /// doorbell so an idle worker wakes, keeps its turn's lease fresh, and checks the host's
    /// health and the call timeout. The caller clears the want when the wait ends, however.
    mutating func grantWaitStep(_ wait: inout GrantWait, waitStart: inout UInt64) -> WaitStep {
        if wait.slept {
            if grant.isGranted { return granted() }
            switch region.hostProblem() {
            case .shutdown?: return .failed(.shutdown)
            case .hostGone?: return .failed(.hostGone)
            case nil: break
            }
        }
        // The counter as seen before the want: any grant (or revoke) after this read changes
        // it, and the futex wait returns at once.
        let seen = grant.value
        if seen & 1 == 1 { return granted() }
        grant.want()
        // Seq-cst flag load after the seq-cst want: the host's re-check before it arms the
        // doorbell sees the want, or this sees the armed flag and posts.
        if doorbell.parker.unpark(), counting { view.bump(.doorbells) }
        let now = CShm_monotonic_ns()
        if now >= wait.deadline { return .failed(.timedOut) }
        if holdsTurn { renewLease(now) }
        wait.slept = true
        // The host wakes the word when it grants, stops or frees the region: the bounded step
        // only notices a host that died, so it is long (each wake-up preempts whatever runs).
        return .sleep(word: grant.word, seen: seen,
                      timeout: min(max(strategy.spinPolicy.sleepTimeoutNanoseconds, Lane.grantWaitStep), wait.deadline &- now))
    }

    /// Granted: a held turn starts its share of the grant now.
    mutating func granted() -> WaitStep {
        if holdsTurn { renewLease(CShm_monotonic_ns()) }
        return .done
    }

    /// Keeps this thread off its worker's CPU (see ``TurnPolicy/avoidWorkerCPU``).
    ///
    /// In a shared region only the turn holder does, and only when it runs there; it moves back
    /// when it drops the turn. In a region whose turns the host grants (a private host, whose pool
    /// workers serve many guests on few CPUs), the thread keeps off for as long as it holds the
    /// lane, waiting or not: a thread that sleeps with the worker's CPU allowed is woken onto it
    /// and preempts the worker (measured: 93,000 preemptions of the worker in a 64 × 8 run before,
    /// 1,700–2,600 after).
    mutating func keepOffWorkerCPU() {
        // A hint the worker refreshes; anything outside 0..<1024 is ignored.
        let worker = doorbell.workerCPU
        guard worker < 1024, Int32(worker) != avoidedCPU else { return }
        guard grants || CShm_current_cpu() == Int32(worker) else { return }
        if CShm_avoid_cpu(Int32(worker), avoidedCPU >= 0) == 0 { avoidedCPU = Int32(worker) }
    }

    /// Gives the turn to the next ticket and wakes its waiter.
    func passTurn(_ now: UInt64) {
        // The next holder's lease starts now; ordered by the CAS.
        turnstile.lease = now
        if turnstile.moveServing(from: turnTicket) { turnstile.wake(turnTicket &+ 1) }
    }

    /// Leaves the queue for good (the lane is released).
    func leaveTurns() {
        if holdsTurn { passTurn(CShm_monotonic_ns()) }
        if avoidedCPU >= 0 { CShm_restore_affinity() }
    }

    mutating func renewLease(_ now: UInt64) {
        leaseStart = now
        callsInTurn = 0
        turnstile.lease = now
    }
}
