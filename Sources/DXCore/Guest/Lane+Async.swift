import CShm

/// Async calls: `try await lane.call(...)` from a task.
///
/// The same exchange as the blocking call, with a wait of its own for a Swift-concurrency thread
/// (``SpinPolicy/cooperative``): it spins a µs-scale budget with the CPU-relax hint, never
/// `sched_yield`s, never touches the thread's CPU affinity (``TurnPolicy/avoidWorkerCPU`` is for
/// dedicated threads), and then suspends: the lane's futex word goes to the process's one waker
/// thread (`FutexWaiter`, an io_uring of futex waits), which resumes the task when the host posts
/// it. Waits for a turn and for a private region's grant suspend the same way. No pool thread is
/// held while the host is slow.
///
/// Cancellation: a cancelled task's call throws `CancellationError`, from a wait for a turn or a
/// grant (nothing published yet) or from the wait for the response. In the last case the host
/// still answers the request, in place, so the lane remembers it: the lane's next call (async or
/// not) first waits for that answer and drops it, bounded by the cancelled call's timeout, and
/// only then writes its request. A late answer is never delivered to the next call: each call
/// waits for its own sequence number.
extension Lane {
    /// Makes one round trip in place, suspending rather than blocking while the host is slow.
    ///
    /// `request` writes the request into the lane's buffer and returns its length; `response`
    /// reads the response from it (see ``call(request:response:)``). Throws a ``CallError``, or
    /// `CancellationError` when the task is cancelled while the call waits.
    ///
    /// ```swift
    /// var lane = try region.claimLane()
    /// let text = try await lane.call(
    ///     request: { buffer in buffer.copyBytes(from: "hello".utf8); return 5 },
    ///     response: { buffer in String(decoding: buffer, as: UTF8.self) })
    /// ```
    public mutating func call<Response>(
        isolation: isolated (any Actor)? = #isolation,
        request: (UnsafeMutableRawBufferPointer) -> Int,
        response: (UnsafeRawBufferPointer) -> Response
    ) async throws -> Response {
        // Every wait is a call of its own, made only when needed: a call answered within the spin
        // costs no async frame beyond this one.
        if failure != nil || abandoned != 0 { try await settleSuspending(isolation: isolation) }
        let payload = view.payload
        let length = request(UnsafeMutableRawBufferPointer(start: payload, count: capacity))
        guard length >= 0, length <= capacity else { throw CallError.payloadTooLarge(length: length, capacity: capacity) }
        var waitStart: UInt64 = 0
        if strategy.turnPolicy.turnCalls != 0 {
            if callsUntilTurnCheck == 0 {
                if !keepTurn() { try await acquireTurnSuspending(isolation: isolation, waitStart: &waitStart) }
            } else {
                callsUntilTurnCheck &-= 1
            }
        }
        if grants, !grant.isGranted { try await waitForGrantSuspending(isolation: isolation, waitStart: &waitStart) }
        let seq = sequence &+ 1
        sequence = seq
        view.setRequestLength(length)
        // Publishes the request and orders it before the doorbell's flag load (the parker handshake).
        view.publishRequest(seq)
        if doorbell.parker.unpark(), counting { view.bump(.doorbells) }
        if counting { view.bump(.calls) }
        // Acquire: makes the response length, status and payload visible.
        if view.responseSeq == seq {
            if counting { view.bump(.spinWins) }
        } else {
            try await awaitResponseSuspending(isolation: isolation, seq, waitStart: waitStart)
        }
        let responseLength = try checkResponse().get()
        return response(UnsafeRawBufferPointer(start: payload, count: responseLength))
    }

    /// Sends `request` and returns the response as a new array (allocates: a convenience).
    public mutating func call(isolation: isolated (any Actor)? = #isolation, _ request: [UInt8]) async throws -> [UInt8] {
        guard request.count <= capacity else { throw CallError.payloadTooLarge(length: request.count, capacity: capacity) }
        return try await call(
            request: { buffer in
                buffer.copyBytes(from: request)
                return request.count
            },
            response: { Array($0) })
    }

    /// ``settle()`` for async calls: the lane's failure, or the cancelled call's answer to wait for.
    mutating func settleSuspending(isolation: isolated (any Actor)?) async throws {
        if let failure { throw failure }
        do {
            // A cancellation here leaves the request abandoned, for the next call to drain.
            try await waitForResponseSuspending(isolation: isolation, abandoned, waitStart: abandonedWaitStart)
        } catch let error as CallError {
            abandoned = 0
            failure = error
            throw error
        }
        abandoned = 0
    }

    /// Spins the cooperative budget for the response, then suspends in bounded steps. On
    /// cancellation the request is left to be drained by the next call (see the extension's
    /// discussion).
    mutating func awaitResponseSuspending(isolation: isolated (any Actor)?, _ seq: UInt64, waitStart: UInt64) async throws {
        do {
            try await waitForResponseSuspending(isolation: isolation, seq, waitStart: waitStart)
        } catch let error as CallError {
            failure = error
            if counting { view.bump(.errors) }
            throw error
        }
    }

    /// The wait of ``awaitResponseSuspending(isolation:_:waitStart:)``.
    mutating func waitForResponseSuspending(isolation: isolated (any Actor)?, _ seq: UInt64, waitStart: UInt64) async throws {
        var spin = cooperativeSpin ?? AdaptiveSpin(SpinPolicy.cooperative)
        defer { cooperativeSpin = spin }
        var wait = SpinWait(budget: spin.budget, policy: SpinPolicy.cooperative)
        while wait.step() != .exhausted {
            if view.responseSeq == seq {
                spin.spinSucceeded()
                if counting { view.bump(.spinWins) }
                return
            }
        }
        spin.hadToSleep()
        let view = view
        let deadline = beginResponseSleep(waitStart: waitStart)
        while true {
            let now = CShm_monotonic_ns()
            if now >= deadline {
                if view.responseSeq == seq { return }
                throw CallError.timedOut
            }
            // Seq-cst re-check: pairs with the worker's seq-cst store of the response (see Parker).
            let outcome = await view.parker.suspend(timeoutNanoseconds: min(strategy.spinPolicy.sleepTimeoutNanoseconds, deadline &- now)) {
                view.responseSeqSeqCst == seq
            }
            if outcome == .cancelled, view.responseSeq != seq {
                abandoned = seq
                abandonedWaitStart = deadline &- callTimeoutNanoseconds
                throw CancellationError()
            }
            if let end = afterResponseSleep(seq, outcome) {
                if let error = end.error { throw error }
                return
            }
        }
    }

    /// ``acquireTurn(waitStart:)``, suspending. A cancelled wait abandons its ticket (waiters
    /// skip it like a dead one's).
    mutating func acquireTurnSuspending(isolation: isolated (any Actor)?, waitStart: inout UInt64) async throws {
        do {
            try await waitForTurnSuspending(isolation: isolation, waitStart: &waitStart)
        } catch {
            callsUntilTurnCheck = 0  // the next call asks for a turn again
            throw error
        }
    }

    /// The wait of ``acquireTurnSuspending(isolation:waitStart:)``.
    mutating func waitForTurnSuspending(isolation: isolated (any Actor)?, waitStart: inout UInt64) async throws {
        var wait = beginTurnWait()
        defer { endTurnWait(wait) }
        while true {
            switch turnWaitStep(&wait, waitStart: &waitStart) {
            case .done: return
            case .failed(let error): throw error
            case .sleep(let word, let seen, let timeout):
                if await FutexWaiter.shared.wait(on: word, expected: seen, timeoutNanoseconds: timeout) == .cancelled {
                    // Served just as the task was cancelled: pass the turn on at once, rather than
                    // leave the worker's other lanes waiting for its lease to go stale.
                    if turnstile.servingAcquire == wait.ticket { passTurn(CShm_monotonic_ns()) }
                    throw CancellationError()
                }
            }
        }
    }

    /// ``waitForGrant(waitStart:)``, suspending.
    mutating func waitForGrantSuspending(isolation: isolated (any Actor)?, waitStart: inout UInt64) async throws {
        defer { grant.clearWant() }
        var wait = beginGrantWait(waitStart: &waitStart)
        while true {
            switch grantWaitStep(&wait, waitStart: &waitStart) {
            case .done: return
            case .failed(let error): throw error
            case .sleep(let word, let seen, let timeout):
                if await FutexWaiter.shared.wait(on: word, expected: seen, timeoutNanoseconds: timeout) == .cancelled {
                    throw CancellationError()
                }
            }
        }
    }
}
