#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

/// One guest thread's channel to the host: claim it, make calls, and drop it to release it.
///
/// ```swift
/// let region = try Region.attach(name: "demo")
/// var lane = try region.claimLane()
/// let answer = lane.call(
///     request: { buffer in buffer.copyBytes(from: "hello".utf8); return 5 },
///     response: { buffer in String(decoding: buffer, as: UTF8.self) })
/// ```
///
/// - Important: A lane belongs to one thread at a time; it is `~Copyable` and not `Sendable`
///   across threads while in use. Calls allocate nothing, take no lock, and make no system
///   call unless the host worker sleeps (a futex wake) or the response is slow enough that this
///   thread sleeps itself (a bounded futex wait; see `Parker` (Wait/Parker.swift)).
public struct Lane: ~Copyable {
    /// The region this lane belongs to; the lane keeps it mapped.
    public let region: Region
    /// The lane's index in the region.
    public let index: Int
    /// The largest request or response, in bytes.
    public let capacity: Int

    @usableFromInline let view: LaneView
    @usableFromInline let doorbell: DoorbellView
    @usableFromInline let strategy: WaitStrategy
    /// The claim: the owner word and the lock that tells the host this lane's owner lives.
    let claim: OwnerClaim
    @usableFromInline var sequence: UInt64
    @usableFromInline var spin: AdaptiveSpin
    @usableFromInline var failure: CallError?
    /// The request of a call whose task was cancelled while it waited (0: none). The host still
    /// answers it, in place, so the next call waits for that answer (and drops it) before it
    /// writes its own request (see Lane+Async.swift).
    @usableFromInline var abandoned: UInt64 = 0
    /// When the abandoned call began to wait: the drain is bounded by its call timeout.
    @usableFromInline var abandonedWaitStart: UInt64 = 0
    /// The spin budget of async calls (``SpinPolicy/cooperative``), apart from the blocking calls'
    /// one; made at the first async call.
    @usableFromInline var cooperativeSpin: AdaptiveSpin?
    /// The longest a call waits for its response, in nanoseconds.
    public var callTimeoutNanoseconds: UInt64 = 10_000_000_000

    // Turn-taking (see Lane+Turns.swift).
    @usableFromInline let turnstile: TurnstileView
    /// A private region's grant block, and whether its host grants turns (then a call waits for
    /// the region's grant before it publishes; see Lane+Turns.swift).
    @usableFromInline let grant: GrantView
    @usableFromInline let grants: Bool
    @usableFromInline var turnTicket: UInt64 = 0
    @usableFromInline var holdsTurn = false
    @usableFromInline var callsUntilTurnCheck: UInt32 = 0
    @usableFromInline var leaseStart: UInt64 = 0
    @usableFromInline var callsInTurn: UInt32 = 0
    /// The worker CPU this thread keeps off (``keepOffWorkerCPU()``), or -1.
    @usableFromInline var avoidedCPU: Int32 = -1
    /// Times this lane's thread slept waiting for a turn, since the claim (kept in the lane, so it
    /// counts with ``counting`` off too; the shared guest counter is a running total of anyone's).
    public internal(set) var turnWaits: UInt64 = 0
    /// Times this lane's thread passed its turn to a waiter at a turn check, since the claim.
    public internal(set) var turnPasses: UInt64 = 0

    /// Set it before a (blocking) call to have that call's exchange timed: from publishing the request to
    /// seeing the response. The call clears it and leaves the time in ``lastExchangeNanoseconds``.
    public var timeNextExchange = false
    /// The exchange time of the last call made with ``timeNextExchange`` set.
    public var lastExchangeNanoseconds: UInt64 = 0

    /// Whether calls update the lane's guest counters in shared memory (on unless measuring
    /// their cost). The host's control plane reads them.
    public var counting = true

    init(region: Region, index: Int, claim: consuming OwnerClaim, sequence: UInt64, strategy: WaitStrategy) {
        self.region = region
        self.index = index
        self.capacity = region.slotCapacity
        self.view = region.lane(index)
        self.doorbell = region.doorbell(region.worker(forLane: index))
        self.turnstile = region.turnstile(region.worker(forLane: index))
        self.grant = region.grant
        self.grants = region.isPrivate && region.grant.grants
        self.strategy = strategy
        self.claim = claim
        self.sequence = sequence
        self.spin = AdaptiveSpin(strategy.spinPolicy)
    }

    /// Releases the lane: leaves the turn queue; then the claim frees the owner word (pid 0,
    /// generation kept) and drops the owner lock.
    deinit {
        leaveTurns()
    }

    /// The spin budget the next wait starts with.
    public var spinBudget: UInt32 { spin.budget }

    // MARK: - Calls

    /// Makes one round trip in place.
    ///
    /// `request` gets the lane's whole buffer, writes the request into it and returns its
    /// length. `response` gets the response bytes, in the same buffer, and returns what the
    /// caller wants from them. A length outside `0...capacity` is refused before anything is
    /// published.
    @inlinable
    public mutating func call<Response>(
        request: (UnsafeMutableRawBufferPointer) -> Int,
        response: (UnsafeRawBufferPointer) -> Response
    ) -> Result<Response, CallError> {
        if failure != nil || abandoned != 0, let error = settle() { return .failure(error) }
        let payload = view.payload
        let length = request(UnsafeMutableRawBufferPointer(start: payload, count: capacity))
        switch exchange(length: length) {
        case .success(let responseLength):
            return .success(response(UnsafeRawBufferPointer(start: payload, count: responseLength)))
        case .failure(let error):
            return .failure(error)
        }
    }

    /// Sends `request` and copies the response into `response`. Returns the response length.
    /// A response longer than `response` is cut to fit.
    ///
    /// Package-only: it takes raw buffers as parameters, and the public API keeps raw pointers
    /// inside closures (``call(request:response:)``). dx-guest's bench and soak use it.
    @inlinable
    package mutating func call(_ request: UnsafeRawBufferPointer,
                              into response: UnsafeMutableRawBufferPointer) -> Result<Int, CallError> {
        if failure != nil || abandoned != 0, let error = settle() { return .failure(error) }
        guard request.count <= capacity else {
            return .failure(.payloadTooLarge(length: request.count, capacity: capacity))
        }
        let payload = view.payload
        if let source = request.baseAddress { payload.copyMemory(from: source, byteCount: request.count) }
        switch exchange(length: request.count) {
        case .success(let responseLength):
            let count = min(responseLength, response.count)
            if count > 0 { response.baseAddress!.copyMemory(from: payload, byteCount: count) }
            return .success(count)
        case .failure(let error):
            return .failure(error)
        }
    }

    /// Before a call writes its request: the lane's earlier failure, or the answer to a cancelled
    /// async call still to wait for (it would land on the new request, in place). Returns why the
    /// call cannot go on, or nil.
    @usableFromInline @inline(never)
    mutating func settle() -> CallError? {
        if let failure { return failure }
        let error = awaitResponse(abandoned, waitStart: abandonedWaitStart)
        abandoned = 0
        if let error { failure = error }
        return error
    }

    /// The exchange itself, once the request is in the buffer (and the lane settled): publish it,
    /// wait, and check the response's status and length. Returns the response length.
    @inlinable @inline(__always)
    mutating func exchange(length: Int) -> Result<Int, CallError> {
        guard length >= 0, length <= capacity else {
            return .failure(.payloadTooLarge(length: length, capacity: capacity))
        }
        // When this call began to wait (for a turn), or 0: the call timeout counts from there.
        var waitStart: UInt64 = 0
        if strategy.turnPolicy.turnCalls != 0 {
            if callsUntilTurnCheck == 0 {
                // Nothing is published yet: a turn that never came leaves the lane usable.
                if let error = takeTurns(waitStart: &waitStart) { return .failure(error) }
            } else {
                callsUntilTurnCheck &-= 1
            }
        }
        // A private host serves one region of its worker at a time: wait for this region's turn
        // (nothing is published yet, so a grant that never comes leaves the lane usable).
        if grants, !grant.isGranted, let error = waitForGrant(waitStart: &waitStart) { return .failure(error) }
        let seq = sequence &+ 1
        sequence = seq
        view.setRequestLength(length)
        // Publishes the request and orders it before the doorbell's flag load in unpark (the
        // parker handshake: no lost wake-up).
        view.publishRequest(seq)
        let exchangeStart = timeNextExchange ? CShm_monotonic_ns() : 0
        if doorbell.parker.unpark(), counting { view.bump(.doorbells) }
        if counting { view.bump(.calls) }
        if let error = awaitResponse(seq, waitStart: waitStart) {
            failure = error
            if counting { view.bump(.errors) }
            return .failure(error)
        }
        if timeNextExchange {
            lastExchangeNanoseconds = CShm_monotonic_ns() &- exchangeStart
            timeNextExchange = false
        }
        return checkResponse()
    }

    /// Takes the response whose sequence number was just seen: its length, or why it is no answer.
    @inlinable @inline(__always)
    func checkResponse() -> Result<Int, CallError> {
        // Ordered by the acquire load of the response sequence that ended the wait.
        let status = view.status
        let responseLength = view.responseLength
        guard status == ResponseStatus.ok.rawValue, responseLength <= capacity else {
            if counting { view.bump(.errors) }
            if responseLength > capacity { return .failure(.badResponse) }
            return .failure(ResponseStatus(rawValue: status).map { .rejected($0) } ?? .badResponse)
        }
        return .success(responseLength)
    }

    /// Sends `request` and returns the response as a new array (allocates: a convenience).
    public mutating func call(_ request: [UInt8]) -> Result<[UInt8], CallError> {
        request.withUnsafeBytes { bytes in
            guard bytes.count <= capacity else {
                return .failure(.payloadTooLarge(length: bytes.count, capacity: capacity))
            }
            return call(
                request: { buffer in
                    buffer.copyMemory(from: bytes)
                    return bytes.count
                },
                response: { Array($0) })
        }
    }

    // MARK: - Waiting

    /// Spins for the response (``SpinWait``) up to the adaptive budget; then sleeps. Returns nil
    /// when the response arrived. The call timeout counts from `waitStart` (when the call began to
    /// wait for its turn), or from the first slow check of a long spin, or from the first sleep:
    /// the fast path reads no clock.
    ///
    /// The first check is inlined into the call; the spin loop is not: its set-up and its frame
    /// are paid only when the response is not there yet, that is while the worker is still at work.
    @inlinable @inline(__always)
    mutating func awaitResponse(_ seq: UInt64, waitStart: UInt64) -> CallError? {
        // Acquire: makes the response length, status and payload visible.
        if view.responseSeq == seq {
            spinWon()
            return nil
        }
        return spinForResponse(seq, waitStart: waitStart)
    }

    /// The wait ended while spinning (or before it began).
    @inlinable @inline(__always)
    mutating func spinWon() {
        spin.spinSucceeded()
        if counting { view.bump(.spinWins) }
    }

    /// The spin loop of ``awaitResponse(_:waitStart:)``, then the sleep.
    @usableFromInline @inline(never)
    mutating func spinForResponse(_ seq: UInt64, waitStart: UInt64) -> CallError? {
        var wait = SpinWait(budget: spin.budget, policy: strategy.spinPolicy)
        var deadline: UInt64 = 0
        while true {
            // Acquire: makes the response length, status and payload visible.
            if view.responseSeq == seq {
                spinWon()
                return nil
            }
            switch wait.step() {
            case .spun: break
            case .yielded: if counting { view.bump(.yields) }
            case .exhausted: return sleepForResponse(seq, waitStart: waitStart)
            }
            if wait.spins & 0xF_FFFF == 0, let problem = longSpinCheck(waitStart: waitStart, deadline: &deadline) {
                return problem
            }
        }
    }

    /// Every 2²⁰ spins of a wait that does not sleep (the `spin` preset): the host's health and the
    /// call timeout.
    @usableFromInline @inline(never)
    func longSpinCheck(waitStart: UInt64, deadline: inout UInt64) -> CallError? {
        if let problem = slowCheck() { return problem }
        let now = CShm_monotonic_ns()
        if deadline == 0 { deadline = (waitStart != 0 ? waitStart : now) &+ callTimeoutNanoseconds }
        return now >= deadline ? .timedOut : nil
    }

    /// Checks the host's health during a very long spin (the `spin` preset never sleeps).
    @usableFromInline
    func slowCheck() -> CallError? {
        switch region.hostProblem() {
        case .shutdown?: return .shutdown
        case .hostGone?: return .hostGone
        case nil: return nil
        }
    }

    /// Parks on the lane's futex word in bounded steps (`Parker` (Wait/Parker.swift)), checking the host's health
    /// and the call timeout between them.
    @usableFromInline
    mutating func sleepForResponse(_ seq: UInt64, waitStart: UInt64) -> CallError? {
        let view = view
        spin.hadToSleep()
        let deadline = beginResponseSleep(waitStart: waitStart)
        while true {
            let now = CShm_monotonic_ns()
            if now >= deadline { return view.responseSeq == seq ? nil : .timedOut }
            // Seq-cst re-check: pairs with the worker's seq-cst store of the response (see Parker).
            let outcome = view.parker.park(timeoutNanoseconds: min(strategy.spinPolicy.sleepTimeoutNanoseconds, deadline &- now)) {
                view.responseSeqSeqCst == seq
            }
            if let end = afterResponseSleep(seq, outcome) { return end.error }
        }
    }

    /// The start of a sleep for a response, blocking or suspending: counts it, passes the turn if
    /// someone waits for it, and returns the call's deadline.
    mutating func beginResponseSleep(waitStart: UInt64) -> UInt64 {
        if counting { view.bump(.sleeps) }
        if holdsTurn { passTurnBeforeSleeping() }
        return (waitStart != 0 ? waitStart : CShm_monotonic_ns()) &+ callTimeoutNanoseconds
    }

    /// How a sleep for a response ended the wait, if it did.
    struct ResponseWaitEnd {
        /// nil: the response is there.
        let error: CallError?
    }

    /// After one park: the response is there, or the host went, or sleep again (nil).
    func afterResponseSleep(_ seq: UInt64, _ outcome: Parker.Outcome) -> ResponseWaitEnd? {
        if outcome == .ready || view.responseSeq == seq { return ResponseWaitEnd(error: nil) }
        if let problem = slowCheck() {
            // The host may still have answered before it went; take it if it is there.
            return ResponseWaitEnd(error: view.responseSeq == seq ? nil : problem)
        }
        return nil
    }
}
