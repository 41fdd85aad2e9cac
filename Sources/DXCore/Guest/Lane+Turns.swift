import CShm

/// Turn-taking between the guest threads that share a serving worker.
///
/// With more guest threads than CPUs, threads that all spin for their responses starve the
/// worker and each other. With turns on (``TurnPolicy/turnCalls``), the guest threads of one
/// worker form a FIFO ticket queue in the worker's turnstile: one holds the turn and makes calls;
/// the others sleep on a futex, so they take no CPU. A holder keeps its turn while nobody waits;
/// when someone does, it passes the turn after `turnCalls` calls or its quantum, whichever comes
/// first, between two calls, never in the middle of an exchange. Counting calls rather than time
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
        callsUntilTurnCheck = Lane.callsBetweenTurnChecks - 1
        if strategy.turnPolicy.avoidWorkerCPU { keepOffWorkerCPU() }
        let now = CShm_monotonic_ns()
        if holdsTurn {
            let policy = strategy.turnPolicy
            callsInTurn &+= Lane.callsBetweenTurnChecks
            let age = now &- leaseStart
            // Within every quantum the rule can give: no need to count the waiters.
            if callsInTurn < policy.turnCalls, age < policy.shortestQuantumNanoseconds, !grants { return nil }
            if turnstile.servingAcquire == turnTicket {
                let next = turnstile.next
                // Nobody waiting counts as 0: the whole quantum.
                let waiters = TurnPolicy.waiters(next: next, serving: turnTicket)
                let quantum = grants ? TurnPolicy.quantum(waiters: waiters, withinGrant: grant.quantum, policy: policy)
                    : policy.quantum(waiters: waiters)
                if callsInTurn < policy.turnCalls, age < quantum { return nil }
                if next == turnTicket &+ 1 {
                    renewLease(now)  // the budget is spent, but nobody waits: keep going
                    return nil
                }
                passTurn(now)
                turnPasses &+= 1
            }
            holdsTurn = false  // passed, or taken by a waiter while we were away
            if avoidingWorkerCPU {
                CShm_restore_affinity()
                avoidingWorkerCPU = false
            }
        }
        if let error = acquireTurn(waitStart: &waitStart) {
            callsUntilTurnCheck = 0  // the next call asks for a turn again
            return error
        }
        return nil
    }

    /// Takes a ticket and waits (sleeping) until it is served, the host goes, or the call timeout
    /// passes (then the ticket is abandoned: waiters skip it like a dead one's).
    mutating func acquireTurn(waitStart: inout UInt64) -> CallError? {
        let policy = strategy.turnPolicy
        let start = CShm_monotonic_ns()
        let deadline = start &+ callTimeoutNanoseconds
        turnTicket = turnstile.takeTicket()
        let ticket = turnTicket
        let word = turnstile.wakeWord(for: ticket)
        var waited = false
        defer {
            if waited {
                turnWaits &+= 1
                if counting { view.bump(.turnWaits) }
            }
        }
        while true {
            // Read the word before re-checking `serving`; the passer changes `serving` before the
            // word, so a pass between the two makes the futex wait return at once.
            let seen = turnstile.seen(word)
            // Served (or a vandalised counter already past us): go.
            let serving = turnstile.serving
            if serving &- ticket < 1 << 62 { break }
            waited = true
            waitStart = start
            // The stale period for the queue as it is now (this waiter included): it sizes the
            // sleep, and the lease is judged by the same period after it.
            let staleAfter = policy.staleLeaseNanoseconds(waiters: TurnPolicy.waiters(next: turnstile.next, serving: serving))
            let beforeWait = CShm_monotonic_ns()
            if beforeWait >= deadline { return .timedOut }
            // In a region whose turns the host grants, waiters check a few times less often than
            // once per grant cycle: hundreds of them waking every stale period would cost more than
            // they wait (each wake-up also preempts whatever runs, the host's worker included).
            // They are woken when their turn comes; the check only skips a dead holder.
            let sleep = grants ? max(staleAfter, min(grant.cycle &* 4, 1_000_000_000)) : staleAfter
            turnstile.sleep(on: word, seen: seen, timeoutNanoseconds: min(sleep, deadline &- beforeWait))
            if turnstile.servingAcquire == ticket { break }
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
            let stale = waitingForGrant ? sleep &+ 1_000_000_000 : sleep
            if ticket &- holder < 1 << 62, now &- turnstile.lease > stale {
                turnstile.lease = now
                if turnstile.moveServing(from: holder) {
                    if holder &+ 1 == ticket { break }
                    turnstile.wake(holder &+ 1)
                }
            }
            switch region.hostProblem() {
            case .shutdown?: return .shutdown
            case .hostGone?: return .hostGone
            case nil: break
            }
        }
        holdsTurn = true
        renewLease(CShm_monotonic_ns())
        return nil
    }

    /// Waits until the region holds its worker's grant (a private host grants its worker to one
    /// region at a time; docs/LAYOUT.md, "Granted turns"): says it wants one (want word, seq-cst),
    /// rings the doorbell so an idle worker wakes, and sleeps on the grant word in bounded steps,
    /// keeping its turn's lease fresh and checking the host's health and the call timeout.
    @usableFromInline @inline(never)
    mutating func waitForGrant(waitStart: inout UInt64) -> CallError? {
        // Whatever ends the wait, the want goes with it: a want left set would keep asking the
        // host for grants nobody uses.
        defer { grant.clearWant() }
        let start = CShm_monotonic_ns()
        if waitStart == 0 { waitStart = start }
        let deadline = waitStart &+ callTimeoutNanoseconds
        turnWaits &+= 1
        if counting { view.bump(.turnWaits) }
        while true {
            // The counter as seen before the want: any grant (or revoke) after this read changes
            // it, and the futex wait below returns at once.
            let seen = grant.value
            if seen & 1 == 1 { break }
            grant.want()
            // Seq-cst flag load after the seq-cst want: the host's re-check before it arms the
            // doorbell sees the want, or this sees the armed flag and posts.
            if doorbell.parker.unpark(), counting { view.bump(.doorbells) }
            let now = CShm_monotonic_ns()
            if now >= deadline { return .timedOut }
            if holdsTurn { renewLease(now) }
            // The host wakes the word when it grants, stops or frees the region: the bounded step
            // only notices a host that died, so it is long (each wake-up preempts whatever runs).
            _ = CShm_futex_wait(grant.word, seen, min(max(strategy.spinPolicy.sleepTimeoutNanoseconds, Lane.grantWaitStep),
                                                      deadline &- now))
            if grant.isGranted { break }
            switch region.hostProblem() {
            case .shutdown?: return .shutdown
            case .hostGone?: return .hostGone
            case nil: break
            }
        }
        // Granted: a held turn starts its share of the grant now.
        if holdsTurn { renewLease(CShm_monotonic_ns()) }
        return nil
    }

    /// Moves this thread off its worker's CPU when it runs there (see ``TurnPolicy/avoidWorkerCPU``).
    mutating func keepOffWorkerCPU() {
        // A hint the worker refreshes; anything outside 0..<1024 is ignored.
        let worker = doorbell.workerCPU
        guard worker < 1024, CShm_current_cpu() == Int32(worker) else { return }
        if CShm_avoid_cpu(Int32(worker)) == 0 { avoidingWorkerCPU = true }
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
        if avoidingWorkerCPU { CShm_restore_affinity() }
    }

    mutating func renewLease(_ now: UInt64) {
        leaseStart = now
        callsInTurn = 0
        turnstile.lease = now
    }
}
