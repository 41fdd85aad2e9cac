import CShm
#if canImport(Glibc)
import Glibc
#endif

/// A dedicated POSIX thread that runs one closure.
///
/// Serving and spinning happen on dedicated threads, never on Swift-concurrency threads.
/// The corresponding C functions are `pthread_create` and `pthread_join`.
///
/// - Important: Join each thread exactly once.
public struct Thread: Sendable {
    private let handle: UInt64

    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts a thread running `body`.
    public init(stackSize: Int = 512 * 1024, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        var handle: UInt64 = 0
        let rc = CShm_thread_start(&handle, { context in
            let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
            box.body()
            return nil
        }, context, stackSize)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(context).release()
            throw SystemError("pthread_create", errno: rc)
        }
        self.handle = handle
    }

    /// Waits for the thread to finish.
    public func join() {
        _ = CShm_thread_join(handle)
    }
}
