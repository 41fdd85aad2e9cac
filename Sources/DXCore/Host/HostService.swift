#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Logging
import ServiceLifecycle
import Synchronization

/// A ``Host`` as a swift-service-lifecycle `Service`: `run()` serves, with the control socket if
/// one is configured, until the service group shuts down gracefully (or is cancelled), a control
/// client sends `shutdown`, or the region is truncated under the host; then it stops cleanly.
///
/// ```swift
/// let host = try Host(name: "demo", configuration: RegionConfiguration(laneCount: 8))
/// let service = HostService(host: host, handler: EchoHandler(),
///                           control: .init(path: ControlPath.socket(for: "demo")))
/// let group = ServiceGroup(configuration: .init(
///     services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
///     gracefulShutdownSignals: [.sigterm, .sigint, .sighup], logger: logger))
/// try await group.run()
/// ```
///
/// Stopping is ``Host/stop()``: it publishes `stopping`, joins the serving threads, lets go of the
/// host lock, wakes sleeping guests and removes the region; the control server stops first and
/// removes its socket. A stop the host asks for itself (``Host/requestShutdown()``) ends `run()`,
/// so a group that holds the service with `successTerminationBehavior: .gracefullyShutdownGroup`
/// shuts down the rest of its services too.
///
/// - Important: `run()` never blocks a Swift-concurrency thread: the serving threads are its
///   own, it waits by suspending, and it starts, stops and joins on a dedicated thread. Run it
///   once. ``abandon()`` may be called from any thread, at any time, for a second stop signal.
public final class HostService: Service, CustomStringConvertible, @unchecked Sendable {
    /// Where and how to serve the control socket (see ``ControlServer``).
    public struct ControlSocket: Sendable {
        /// The socket's path (usually ``ControlPath/socket(for:)``).
        public var path: String
        /// The event loop to use.
        public var backend: ControlBackend
        /// Connections idle (and not watching) for this long are closed.
        public var idleTimeoutNanoseconds: UInt64
        /// Renders the process's metrics backend for the `metrics` command (see
        /// <doc:CollectingMetrics>); nil makes `metrics` answer with an error.
        public var metricsExposition: (@Sendable () -> String)?

        /// A control socket at `path`.
        public init(path: String, backend: ControlBackend = .auto, idleTimeoutNanoseconds: UInt64 = 60_000_000_000,
                    metricsExposition: (@Sendable () -> String)? = nil) {
            self.path = path
            self.backend = backend
            self.idleTimeoutNanoseconds = idleTimeoutNanoseconds
            self.metricsExposition = metricsExposition
        }
    }

    /// The named host this service runs (nil when it runs a ``PrivateHost``).
    public let host: Host?
    /// The private host this service runs (nil when it runs a named ``Host``).
    public let privateHost: PrivateHost?
    private let target: any ServedHost
    private let startServing: @Sendable () throws(SystemError) -> Void
    private let controlSocket: ControlSocket?
    private let logger: Logger
    private let stopRequest = StopRequest()
    /// The running control server, also read by ``abandon()`` from another thread.
    private let control = Mutex<ControlServer?>(nil)

    /// A service that serves `host` with `handler` and, if `control` is given, a control socket.
    /// Nothing starts before ``run()``. The service takes over `host`'s
    /// ``Host/onShutdownRequest(_:)``.
    public init<Handler: RequestHandler>(host: Host, handler: Handler, control: ControlSocket? = nil,
                                         logger: Logger = Logger(label: "dx.host")) {
        self.host = host
        self.privateHost = nil
        self.target = host
        self.startServing = { () throws(SystemError) in try host.start(handler: handler) }
        self.controlSocket = control
        self.logger = logger
    }

    /// A service that serves `host` with an async handler (``Host/start(asyncHandler:maxTasksInFlight:)``:
    /// at most `maxTasksInFlight` tasks at once, by default one per lane) and, if `control` is given,
    /// a control socket. Nothing starts before ``run()``. The service takes over `host`'s
    /// ``Host/onShutdownRequest(_:)``.
    public init<Handler: AsyncRequestHandler>(host: Host, asyncHandler: Handler, maxTasksInFlight: Int? = nil,
                                              control: ControlSocket? = nil, logger: Logger = Logger(label: "dx.host")) {
        self.host = host
        self.privateHost = nil
        self.target = host
        self.startServing = { () throws(SystemError) in
            try host.start(asyncHandler: asyncHandler, maxTasksInFlight: maxTasksInFlight)
        }
        self.controlSocket = control
        self.logger = logger
    }

    /// A service that serves a private host's guests with `handler`. The control socket is where
    /// guests ask for their regions, so a private host needs one.
    public init<Handler: RequestHandler>(privateHost: PrivateHost, handler: Handler, control: ControlSocket,
                                         logger: Logger = Logger(label: "dx.host")) {
        self.host = nil
        self.privateHost = privateHost
        self.target = privateHost
        self.startServing = { () throws(SystemError) in try privateHost.start(handler: handler) }
        self.controlSocket = control
        self.logger = logger
    }

    /// `HostService(<name>)`, as the service group names it in its log.
    public var description: String { "HostService(\(target.name))" }

    /// Serves until a graceful shutdown, a cancellation or the host's own shutdown request; then
    /// stops the control server and the host, and returns. Throws when serving cannot start
    /// (threads, or the control socket: a ``ControlError``), after removing what it had made.
    public func run() async throws {
        target.onShutdownRequest { [stopRequest] in stopRequest.fire() }
        try await onDedicatedThread { [self] () throws(any Error) in
            try startServing()
            guard let controlSocket else { return }
            do {
                let server = try ControlServer(
                    target: target, path: controlSocket.path, backend: controlSocket.backend,
                    idleTimeoutNanoseconds: controlSocket.idleTimeoutNanoseconds,
                    metricsExposition: controlSocket.metricsExposition, logger: logger)
                control.withLock { $0 = server }
            } catch {
                target.stop()
                throw error
            }
        }
        await withTaskCancellationOrGracefulShutdownHandler {
            await stopRequest.wait()
        } onCancelOrGracefulShutdown: { [stopRequest] in
            stopRequest.fire()
        }
        try await onDedicatedThread { [self] () throws(any Error) in
            control.withLock { $0 }?.stop()
            target.stop()
        }
    }

    /// The quick way out, for a second stop signal: ``Host/abandon()`` (publish `stopping`, let
    /// go of the host lock, wake sleeping guests, remove the region and the lock file) and remove
    /// the control socket file, without waiting for any thread. The process should exit next.
    public func abandon() {
        target.abandon()
        control.withLock { $0 }?.abandon()
    }
}

/// What ``HostService`` runs: a named ``Host`` or a ``PrivateHost``.
protocol ServedHost: ControlTarget {
    func onShutdownRequest(_ handler: @escaping @Sendable () -> Void)
    func stop()
    func abandon()
}

extension Host: ServedHost {}
extension PrivateHost: ServedHost {}

/// A one-shot event that one task awaits: fired from any thread (a control thread, the
/// housekeeping thread, a cancellation or graceful-shutdown handler), it resumes the waiter,
/// or lets a later wait return at once.
final class StopRequest: Sendable {
    private enum State {
        case idle
        case waiting(CheckedContinuation<Void, Never>)
        case fired
    }

    private let state = Mutex<State>(.idle)

    /// Fires the event; firing it again does nothing.
    func fire() {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            switch state {
            case .idle:
                state = .fired
                return nil
            case .waiting(let continuation):
                state = .fired
                return continuation
            case .fired:
                return nil
            }
        }
        waiter?.resume()
    }

    /// Suspends until the event fires (returns at once if it has). One waiter at a time.
    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let firedAlready = state.withLock { state in
                switch state {
                case .idle:
                    state = .waiting(continuation)
                    return false
                case .waiting:
                    preconditionFailure("StopRequest has one waiter")
                case .fired:
                    return true
                }
            }
            if firedAlready { continuation.resume() }
        }
    }
}

/// Runs `body` on a dedicated thread and suspends until it returns, so that blocking work (thread
/// joins, socket setup) never holds a Swift-concurrency thread. The join that follows returns
/// at once: the thread has only to exit.
func onDedicatedThread(_ body: @escaping @Sendable () throws(any Error) -> Void) async throws {
    let box = Mutex<Thread?>(nil)
    let result: Result<Void, any Error> = await withCheckedContinuation { continuation in
        do {
            let thread = try Thread(stackSize: 256 * 1024) {
                continuation.resume(returning: Result { () throws(any Error) in try body() })
            }
            box.withLock { $0 = thread }
        } catch {
            continuation.resume(returning: .failure(error))
        }
    }
    box.withLock { $0 }?.join()
    try result.get()
}
