import CShm
import Synchronization

/// What became of an async handler's task.
enum TaskOutcome: Sendable {
    /// The handler returned these bytes.
    case answer([UInt8])
    /// The handler threw.
    case failed
    /// The handler was cancelled (the host is stopping).
    case cancelled
}

/// Where an async handler's tasks leave their outcomes for the worker that started them: a queue
/// under a mutex, a count of what it holds, and the worker's doorbell.
///
/// - Important: A task never reads or writes a lane: the worker publishes every answer (one writer
///   of each lane's response). The only region memory a task touches is the worker's doorbell, to
///   wake it, and the mailbox holds the ``Region`` for that, so the mapping outlives every task,
///   even one that ignores its cancellation and returns after the host stopped.
final class CompletionMailbox: Sendable {
    /// One task's outcome: the request `seq` taken from lane `slot` of the worker's share.
    struct Completion: Sendable {
        let slot: Int
        let seq: UInt64
        let outcome: TaskOutcome
    }

    private let queue = Mutex<[Completion]>([])
    /// How many completions `queue` holds.
    private let count = Atomic<Int>(0)
    private let region: Region
    private let worker: Int

    init(region: Region, worker: Int) {
        self.region = region
        self.worker = worker
    }

    /// From a task: leaves its outcome and wakes the worker if it sleeps.
    func deliver(_ completion: Completion) {
        queue.withLock { queue in
            queue.append(completion)
            // Seq-cst, and before the doorbell flag's seq-cst load in unpark: pairs with the
            // worker's seq-cst flag store and re-check (`hasCompletionsSeqCst`), the parker
            // handshake: either the worker's re-check sees this count or unpark sees its flag.
            count.add(1, ordering: .sequentiallyConsistent)
        }
        _ = region.doorbell(worker).parker.unpark()
    }

    /// Relaxed: the worker's poll, a hint (the completions themselves are read under the mutex;
    /// a zero read too early is seen in the next round, or by the re-check before a sleep).
    var mayHaveCompletions: Bool { count.load(ordering: .relaxed) != 0 }

    /// Seq-cst: the worker's re-check after announcing its sleep (see ``deliver(_:)``).
    var hasCompletionsSeqCst: Bool { count.load(ordering: .sequentiallyConsistent) != 0 }

    /// From the worker: swaps every completion left so far into `buffer` (which must be empty).
    func take(into buffer: inout [Completion]) {
        queue.withLock { queue in
            swap(&queue, &buffer)
            count.store(0, ordering: .sequentiallyConsistent)
        }
    }
}

/// The requests of one worker's lanes that are in the hands of async handler tasks: the one home
/// of in-flight requests. At most one per lane (a lane in flight is not polled until its task
/// came back), and at most `limit` in all.
///
/// Each request is taken from its lane by ``ServedLanes/take(slot:seq:counting:)`` (a copy, with
/// the owner word it came with) and its outcome published by
/// ``ServedLanes/publish(slot:seq:owner:outcome:counting:)``, which checks that the lane still
/// holds it. Only the worker's thread uses this table; the tasks reach it through its
/// ``CompletionMailbox``.
final class InFlightRequests {
    private struct Record {
        let seq: UInt64
        let owner: UInt64
        let task: Task<Void, Never>
    }

    /// How long a stopping worker waits for its cancelled tasks before it answers them itself.
    static var stopGraceNanoseconds: UInt64 { 1_000_000_000 }

    /// The most tasks this worker has at once.
    let limit: Int
    let mailbox: CompletionMailbox
    private var records: [Record?]
    /// Whether each lane has a request in flight (the poll's check, apart from the records).
    private var busy: [Bool]
    /// Requests in flight.
    private(set) var count = 0
    /// The worker's counters (host memory).
    private let counters: UnsafeMutableRawPointer
    /// The completions being published (kept to reuse its storage).
    private var returned: [CompletionMailbox.Completion] = []

    init(lanes: Int, limit: Int, mailbox: CompletionMailbox, counters: UnsafeMutableRawPointer) {
        precondition(limit >= 1)
        self.limit = limit
        self.mailbox = mailbox
        self.counters = counters
        records = Array(repeating: nil, count: lanes)
        busy = Array(repeating: false, count: lanes)
    }

    /// Whether the worker may start no more tasks until one comes back.
    var isFull: Bool { count >= limit }

    /// Whether lane `slot` has a request in flight.
    func isBusy(_ slot: Int) -> Bool { busy[slot] }

    /// Hands `request`, taken from lane `slot` (the region's lane `lane`) with sequence `seq` and
    /// owner word `owner`, to a new task running `handler`.
    func start<Handler: AsyncRequestHandler>(slot: Int, seq: UInt64, owner: UInt64, request: [UInt8], lane: Int,
                                             handler: Handler, counting: Bool) {
        let mailbox = mailbox
        let task = Task {
            let outcome: TaskOutcome
            do {
                outcome = .answer(try await handler.handle(request: request, lane: lane))
            } catch is CancellationError {
                outcome = .cancelled
            } catch {
                outcome = Task.isCancelled ? .cancelled : .failed
            }
            mailbox.deliver(.init(slot: slot, seq: seq, outcome: outcome))
        }
        records[slot] = Record(seq: seq, owner: owner, task: task)
        busy[slot] = true
        count += 1
        if counting { bump(counters + HostCounters.Worker.asyncStarted) }
    }

    /// Publishes the outcome of every task that came back; returns whether any did.
    func publishReturned(_ lanes: borrowing ServedLanes, counting: Bool) -> Bool {
        guard mailbox.mayHaveCompletions else { return false }
        mailbox.take(into: &returned)
        for completion in returned {
            // A task answered at stop (below) may still come back: its lane is settled already.
            guard busy[completion.slot], let record = records[completion.slot], record.seq == completion.seq else { continue }
            finish(completion.slot)
            if counting { bump(counters + HostCounters.Worker.asyncFinished) }
            let delivered = lanes.publish(slot: completion.slot, seq: record.seq, owner: record.owner,
                                          outcome: completion.outcome, counting: counting)
            if !delivered, counting { bump(counters + HostCounters.Worker.asyncDropped) }
        }
        let any = !returned.isEmpty
        returned.removeAll(keepingCapacity: true)
        return any
    }

    /// The worker's re-check after announcing its sleep (seq-cst loads): a task came back, or,
    /// while the worker may start tasks, a lane not in flight has a request. A lane in flight is
    /// not looked at, so a guest that publishes again while its request is in flight cannot keep
    /// the worker awake; it is looked at when its task comes back (which wakes the worker).
    func hasWorkSeqCst(_ lanes: borrowing ServedLanes) -> Bool {
        if mailbox.hasCompletionsSeqCst { return true }
        if isFull { return false }
        for slot in 0..<lanes.count where !busy[slot] && lanes.pendingSeqCst(slot) { return true }
        return false
    }

    /// When the worker stops: cancels every task in flight, publishes the outcomes that come back
    /// within ``stopGraceNanoseconds``, and answers what is left ``ResponseStatus/cancelled``
    /// itself (those tasks' outcomes are dropped when they come). After this the worker may go:
    /// nothing of the worker's writes a lane again.
    func settleAtStop(_ lanes: borrowing ServedLanes, doorbell: DoorbellView, counting: Bool) {
        guard count > 0 else { return }
        for case let record? in records { record.task.cancel() }
        let deadline = CShm_monotonic_ns() &+ Self.stopGraceNanoseconds
        while count > 0 {
            _ = publishReturned(lanes, counting: counting)
            let now = CShm_monotonic_ns()
            guard count > 0, now < deadline else { break }
            // In steps: the doorbell's flag is guest-writable, and a guest that clears it makes a
            // task's post go missing (each step then ends by its timeout).
            _ = doorbell.parker.park(timeoutNanoseconds: min(deadline &- now, 10_000_000)) { mailbox.hasCompletionsSeqCst }
        }
        for slot in records.indices {
            guard busy[slot], let record = records[slot] else { continue }
            finish(slot)
            _ = lanes.publish(slot: slot, seq: record.seq, owner: record.owner, outcome: .cancelled, counting: counting)
            if counting { bump(counters + HostCounters.Worker.asyncDropped) }
        }
    }

    private func finish(_ slot: Int) {
        records[slot] = nil
        busy[slot] = false
        count -= 1
    }
}
