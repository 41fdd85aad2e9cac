import Synchronization

/// A gate that async handlers in tests wait at until the test opens it: the handler is then
/// provably still running while the test looks, with no sleep and no timing.
///
/// `wait()` counts its waiters (``arrived``), so a test can wait until a handler is inside. With
/// `honoursCancellation` (the default) a cancelled waiter throws `CancellationError`, as
/// `Task.sleep` does; without it the waiter stays until the gate opens, like a handler that
/// ignores its cancellation.
public final class Gate: Sendable {
    private struct State {
        var open = false
        var waiters: [Int: CheckedContinuation<Void, any Error>] = [:]
        var nextID = 0
    }

    private let state = Mutex(State())
    private let arrivals = Atomic<Int>(0)
    private let honoursCancellation: Bool

    public init(honoursCancellation: Bool = true) {
        self.honoursCancellation = honoursCancellation
    }

    /// How many waits have begun (whether or not they have ended).
    public var arrived: Int { arrivals.load(ordering: .sequentiallyConsistent) }

    /// Suspends until the gate is open (returns at once if it is).
    public func wait() async throws {
        arrivals.add(1, ordering: .sequentiallyConsistent)
        let id = state.withLock { state -> Int in
            state.nextID += 1
            return state.nextID
        }
        let body = {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                // Under the lock, like the cancellation handler's look-up: a cancellation either
                // finds this continuation or is seen here.
                let outcome = self.state.withLock { state -> Result<Bool, CancellationError> in
                    if state.open { return .success(true) }
                    if self.honoursCancellation, Task.isCancelled { return .failure(CancellationError()) }
                    state.waiters[id] = continuation
                    return .success(false)
                }
                switch outcome {
                case .success(true): continuation.resume()
                case .success(false): break
                case .failure(let error): continuation.resume(throwing: error)
                }
            }
        }
        guard honoursCancellation else { return try await body() }
        try await withTaskCancellationHandler(operation: body) {
            let waiter = self.state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Opens the gate: every waiter goes on, and later waits return at once.
    public func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }
}
