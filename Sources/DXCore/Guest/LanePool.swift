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

    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Slot, any Error>
    }

    private struct State {
        var free: [Slot] = []
        /// Waiting tasks, first come first served (`head` is the next; earlier entries are spent).
        var waiters: [Waiter?] = []
        var head = 0
        var nextID: UInt64 = 0

        /// Drops the spent front of the queue once it is half of it.
        mutating func compactIfSpent() {
            if head > 0, head * 2 >= waiters.count {
                waiters.removeFirst(head)
                head = 0
            }
        }
    }

    /// The region the lanes belong to.
    public let region: Region
    private let strategy: WaitStrategy
    private let state = Mutex(State())
    private let lanes = Atomic<Int>(0)

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
        lanes.store(width, ordering: .relaxed)
        state.withLock { $0.free = slots }
    }

    /// The lanes the pool holds now.
    public var width: Int { lanes.load(ordering: .relaxed) }

    /// Tasks waiting for a lane now.
    public var waiting: Int { state.withLock { $0.waiters[$0.head...].reduce(0) { $0 + ($1 == nil ? 0 : 1) } } }

    /// Runs `body` with a lane of the pool, waiting (suspended, first come first served) while
    /// every lane is in use. Throws `CancellationError` if the task is cancelled while it waits,
    /// and ``LaneClaimError/noFreeLane(laneCount:)`` when the pool has lost every lane.
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
        if width == 0 { throw LaneClaimError.noFreeLane(laneCount: region.laneCount) }
        let id = state.withLock { state -> UInt64 in
            state.nextID &+= 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation(isolation: isolation) { (continuation: CheckedContinuation<Slot, any Error>) in
                let slot: Slot? = state.withLock { state in
                    // A lane freed since the first look, or a cancellation that came first.
                    if let slot = state.free.popLast() { return slot }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                if let slot { continuation.resume(returning: slot) }
                if Task.isCancelled { cancelWaiter(id) }
            }
        } onCancel: {
            cancelWaiter(id)
        }
    }

    /// Removes a waiter that is still queued and ends its wait with `CancellationError`.
    private func cancelWaiter(_ id: UInt64) {
        let waiter: Waiter? = state.withLock { state in
            guard let position = state.waiters[state.head...].firstIndex(where: { $0?.id == id }) else { return nil }
            defer { state.waiters[position] = nil }
            return state.waiters[position]
        }
        waiter?.continuation.resume(throwing: CancellationError())
    }

    /// Hands the lane to the first waiter, or back to the free list. A broken lane is replaced.
    private func giveBack(_ slot: Slot) {
        if slot.lane.isBroken {
            if let fresh = try? region.claimLane(strategy: strategy) {
                slot.lane = fresh  // the broken lane is released here
            } else {
                // The slot (and its broken lane, released when the slot goes) leaves the pool.
                lanes.subtract(1, ordering: .relaxed)
                // With no lane left, nobody queued could ever be served.
                if width == 0 { failWaiters() }
                return
            }
        }
        let next: Waiter? = state.withLock { state in
            while state.head < state.waiters.count {
                let waiter = state.waiters[state.head]
                state.head += 1
                if let waiter {
                    state.compactIfSpent()
                    return waiter
                }
            }
            state.compactIfSpent()
            state.free.append(slot)
            return nil
        }
        next?.continuation.resume(returning: slot)
    }

    private func failWaiters() {
        let waiters: [Waiter] = state.withLock { state in
            defer {
                state.waiters.removeAll()
                state.head = 0
            }
            return state.waiters[state.head...].compactMap { $0 }
        }
        for waiter in waiters { waiter.continuation.resume(throwing: LaneClaimError.noFreeLane(laneCount: region.laneCount)) }
    }
}

extension Lane {
    /// Whether a call on this lane failed: it stays failed (``CallError/laneBroken`` semantics);
    /// release it and claim another.
    public var isBroken: Bool { failure != nil }
}
