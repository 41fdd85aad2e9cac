import CShm
import Synchronization

/// A fixed set of lanes that many tasks share: a task borrows a lane for the length of a closure
/// (``withLane(isolation:_:)``), and tasks that find every lane busy wait in FIFO order, each
/// suspended, not blocking a thread. The pool claims its lanes once and never more, so it holds
/// exactly ``width`` lanes of the region however many tasks call.
///
/// ```swift
/// let pool = try LanePool(region: region, width: 8)
/// try await withThrowingTaskGroup(of: Void.self) { group in
///     for key in keys {
///         group.addTask {
///             _ = try await pool.withLane { lane in try await lane.call(Array(key.utf8)) }
///         }
///     }
///     try await group.waitForAll()
/// }
/// ```
///
/// Borrowing and returning a lane take a short lock (the pool's queue), never during a call. A
/// task cancelled while it waits for a lane leaves the queue and throws `CancellationError`. A
/// lane whose call failed (``CallError``; it is broken for good) is given back to the region and a
/// fresh one claimed in its place when the region has one; otherwise the pool shrinks by one.
public final class LanePool: Sendable {
    /// A lane in the pool (a box: a lane is `~Copyable` and is lent by reference).
    final class Slot: @unchecked Sendable {  // used by one task at a time, handed over under the lock
        var lane: Lane
        init(_ lane: consuming Lane) { self.lane = lane }
    }

    private struct State {
        var free: [Slot] = []
        /// Waiting tasks by id, and their order (ids of cancelled ones are skipped, and dropped
        /// once they outnumber the live ones).
        var waiters: [UInt64: CheckedContinuation<Slot, any Error>] = [:]
        var order: [UInt64] = []
        var head = 0
        var nextID: UInt64 = 0

        /// The first waiter still waiting, taken out of the queue.
        mutating func takeFirstWaiter() -> CheckedContinuation<Slot, any Error>? {
            while head < order.count {
                let id = order[head]
                head += 1
                if let continuation = waiters.removeValue(forKey: id) {
                    compact()
                    return continuation
                }
            }
            compact()
            return nil
        }

        /// Drops the spent front of the order, and cancelled ids once they outnumber the waiters.
        mutating func compact() {
            if head > 0, head * 2 >= order.count {
                order.removeFirst(head)
                head = 0
            }
            if order.count - head > 2 * waiters.count + 16 {
                order = order[head...].filter { waiters[$0] != nil }
                head = 0
            }
        }
    }

    /// The region the lanes belong to.
    public let region: Region
    private let strategy: WaitStrategy
    private let state = Mutex(State())
    /// The lanes the pool holds (fixed).
    public let width: Int

    /// Claims `width` lanes of `region` now (all or none). The lanes take no turns by default
    /// (``WaitStrategy/cooperative``).
    public init(region: Region, width: Int, strategy: WaitStrategy = .cooperative) throws(LaneClaimError) {
        precondition(width > 0, "a lane pool needs at least one lane")
        self.region = region
        self.strategy = strategy
        var slots: [Slot] = []
        for index in 0..<width {
            slots.append(Slot(try region.claimLane(strategy: strategy, startingAt: index)))
        }
        self.width = width
        state.withLock { $0.free = slots }
    }

    /// Tasks waiting for a lane now.
    public var waiting: Int { state.withLock { $0.waiters.count } }

    /// Runs `body` with a lane of the pool, waiting (suspended, first come first served) while
    /// every lane is in use. Throws `CancellationError` if the task is cancelled while it waits.
    public func withLane<Result>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (inout Lane) async throws -> Result
    ) async throws -> Result {
        let slot = try await borrow()
        defer { giveBack(slot) }
        return try await body(&slot.lane)
    }

    private func borrow(isolation: isolated (any Actor)? = #isolation) async throws -> Slot {
        if let slot = state.withLock({ $0.free.popLast() }) { return slot }
        let id = state.withLock { state -> UInt64 in
            state.nextID &+= 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation(isolation: isolation) { (continuation: CheckedContinuation<Slot, any Error>) in
                let slot: Slot? = state.withLock { state in
                    // A lane freed since the first look.
                    if let slot = state.free.popLast() { return slot }
                    state.waiters[id] = continuation
                    state.order.append(id)
                    return nil
                }
                if let slot { continuation.resume(returning: slot) }
                // A cancellation that came before the waiter was queued found nothing to cancel.
                if Task.isCancelled { cancelWaiter(id) }
            }
        } onCancel: {
            cancelWaiter(id)
        }
    }

    /// Removes a waiter that is still queued and ends its wait with `CancellationError`.
    private func cancelWaiter(_ id: UInt64) {
        let waiter = state.withLock { state in
            defer { state.compact() }
            return state.waiters.removeValue(forKey: id)
        }
        waiter?.resume(throwing: CancellationError())
    }

    /// Hands the lane to the first waiter, or back to the free list. A lane whose call timed out
    /// is kept: its next call waits for that answer first (``Lane/recoverFromTimeout()``), since
    /// the host may only have been slow. Any other broken lane is replaced by a fresh claim when
    /// the region has a free lane; otherwise it stays, and its calls fail, so the pool never
    /// shrinks.
    private func giveBack(_ slot: Slot) {
        if slot.lane.isBroken, !slot.lane.recoverFromTimeout(), let fresh = try? region.claimLane(strategy: strategy) {
            slot.lane = fresh  // the broken lane is released here
        }
        let next: CheckedContinuation<Slot, any Error>? = state.withLock { state in
            if let waiter = state.takeFirstWaiter() { return waiter }
            state.free.append(slot)
            return nil
        }
        next?.resume(returning: slot)
    }
}

extension Lane {
    /// Whether a call on this lane failed: it stays failed (``CallError/laneBroken`` semantics);
    /// release it and claim another.
    public var isBroken: Bool { failure != nil }

    /// For a lane that a pool keeps: when its failure was a call that timed out waiting for its
    /// response, the host may only have been slow. The lane then forgets the failure and treats
    /// the request as abandoned: its next call waits (up to its timeout, from now) for that answer
    /// and drops it, as after a cancelled call, and fails for good only if the answer never comes.
    /// Returns whether it recovered.
    package mutating func recoverFromTimeout() -> Bool {
        guard failure == .timedOut, abandoned == 0, view.requestSeq == sequence else { return false }
        failure = nil
        abandoned = sequence
        abandonedWaitStart = CShm_monotonic_ns()
        return true
    }
}
