import Logging
import Synchronization

/// Where a host's requests to shut down go (a control client's `shutdown`, a truncated region):
/// to the handler its owner set (``HostService`` sets one), or, without one, to the log. The one
/// home of ``Host/requestShutdown()`` and ``PrivateHost/requestShutdown()``.
final class ShutdownRequests: Sendable {
    private let handler = Mutex<(@Sendable () -> Void)?>(nil)
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    /// Sets the handler (replacing any).
    func onRequest(_ handler: @escaping @Sendable () -> Void) {
        self.handler.withLock { $0 = handler }
    }

    /// Runs the handler, or logs that there is none.
    func request() {
        if let handler = handler.withLock({ $0 }) {
            logger.info("shutdown requested")
            handler()
        } else {
            logger.warning("shutdown requested, but this host has no shutdown handler (see onShutdownRequest)")
        }
    }
}
