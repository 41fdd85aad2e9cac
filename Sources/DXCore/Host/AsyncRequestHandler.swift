/// Serves one request in a task of its own, for handlers that wait (a disk, a network, another
/// process): the serving worker hands the request over and goes on serving the other lanes, and
/// publishes the answer when the task returns. A slow request stalls only its own lane.
///
/// `request` is a copy, taken once when the worker found the request: the guest may rewrite its
/// lane while the handler runs, and the handler never sees that. The returned bytes are copied
/// into the lane, in the same call's response, only if the lane still holds that call (its owner
/// and its sequence number are the ones the request came with); otherwise they are dropped
/// (see <doc:EmbeddingAHost>).
///
/// - A thrown error answers the guest with ``ResponseStatus/handlerFailed``; so does a response
///   longer than the slot.
/// - When the host stops, every task still running is cancelled; a task that ends by throwing
///   (or returns after it was cancelled with a thrown error) answers ``ResponseStatus/cancelled``.
///   A task that has not finished within a second of the stop is answered
///   ``ResponseStatus/cancelled`` by the host and its eventual answer is dropped.
///
/// `lane` is the index of the lane the request came on (the host's own record, not a word the
/// guest wrote): a handler may keep per-lane state by it, but it says nothing about who the guest is.
///
/// - Important: Handlers run on Swift's concurrency threads, several at once (one per lane at
///   most, and at most the host's task limit): they must be safe to call concurrently, and must
///   suspend rather than block while they wait.
public protocol AsyncRequestHandler: Sendable {
    func handle(request: [UInt8], lane: Int) async throws -> [UInt8]
}

/// An async handler made from a closure, for embedders.
public struct AsyncClosureHandler: AsyncRequestHandler {
    let body: @Sendable ([UInt8], Int) async throws -> [UInt8]

    /// A handler that calls `body(request, lane)` and returns its result.
    public init(_ body: @escaping @Sendable (_ request: [UInt8], _ lane: Int) async throws -> [UInt8]) {
        self.body = body
    }

    /// Serves one request (see ``AsyncRequestHandler``).
    public func handle(request: [UInt8], lane: Int) async throws -> [UInt8] {
        try await body(request, lane)
    }
}

/// Answers every request with itself after an asynchronous sleep (`dx-host --handler delay`):
/// the load that async serving is measured with. Every call suspends at least once, even with
/// no delay (it yields), so each one really goes through a task.
public struct DelayedEchoHandler: AsyncRequestHandler {
    /// How long each request waits before it is answered.
    public let delayNanoseconds: UInt64
    /// The lanes whose requests wait; nil: every lane. Requests on other lanes are answered after a
    /// yield.
    public let lanes: Set<Int>?

    /// A handler that echoes after `delayNanoseconds` (on `lanes` only, if given).
    public init(delayNanoseconds: UInt64, lanes: Set<Int>? = nil) {
        self.delayNanoseconds = delayNanoseconds
        self.lanes = lanes
    }

    /// Serves one request (see ``AsyncRequestHandler``).
    public func handle(request: [UInt8], lane: Int) async throws -> [UInt8] {
        if delayNanoseconds > 0, lanes?.contains(lane) ?? true {
            try await Task.sleep(nanoseconds: delayNanoseconds)
        } else {
            await Task.yield()
        }
        return request
    }
}
