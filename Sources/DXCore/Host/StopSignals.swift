import Logging
import ServiceLifecycle
import UnixSignals

/// The stop signals of a daemon that runs a ``HostService`` in a `ServiceGroup`, and what a
/// second one does: the first stops the group gracefully, a second ends the process at once.
///
/// ```swift
/// let signals = await StopSignals(logger: logger)   // before anything that must be cleaned up
/// let host = try Host(name: "demo", configuration: configuration)
/// let service = HostService(host: host, handler: EchoHandler())
/// let group = ServiceGroup(configuration: .init(
///     services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
///     gracefulShutdownSignals: StopSignals.all, logger: logger))
/// try await signals.run(group) { service.abandon(); exit(0) }
/// ```
///
/// The group's own `gracefulShutdownSignals` handle the first signal. swift-service-lifecycle
/// 2.13.0 has no "second signal" of its own: `cancellationSignals` must differ from the graceful
/// ones, and a cancelled `HostService` would still join its threads. So this watcher sees every
/// stop signal from the moment it is made: on the first it logs and asks the group to shut down
/// gracefully (for a signal that came before the group was listening; otherwise it is a
/// repeat the group ignores), on the second it runs `onSecondSignal`, which does the quick
/// cleanup (``HostService/abandon()``) and exits.
///
/// - Important: Make it before the host, so that no stop signal finds the process without a
///   handler (on Linux, libdispatch takes the signal once a signal source exists).
public struct StopSignals: Sendable {
    /// SIGTERM, SIGINT and SIGHUP (a closed terminal). SIGPIPE is not one: ignore it.
    public static let all: [UnixSignal] = [.sigterm, .sigint, .sighup]

    private let sequence: UnixSignalsSequence
    private let logger: Logger

    /// Starts watching `signals`.
    public init(_ signals: [UnixSignal] = StopSignals.all, logger: Logger) async {
        sequence = await UnixSignalsSequence(trapping: signals)
        self.logger = logger
    }

    /// Runs `group` until it returns (rethrowing its error), watching for stop signals meanwhile.
    public func run(_ group: ServiceGroup, onSecondSignal: @escaping @Sendable () -> Never) async throws {
        let sequence = sequence, logger = logger
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                var received = 0
                for await signal in sequence {
                    received += 1
                    if received == 1 {
                        logger.info("signal received, stopping", metadata: ["signal": "\(signal)"])
                        await group.triggerGracefulShutdown()
                    } else {
                        logger.warning("second signal: exiting at once", metadata: ["signal": "\(signal)"])
                        onSecondSignal()
                    }
                }
            }
            tasks.addTask { try await group.run() }
            // The group is done when its task is; the watcher only ends by cancellation.
            defer { tasks.cancelAll() }
            try await tasks.next()
        }
    }
}
