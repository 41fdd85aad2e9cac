#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A failed system call: the call's name and the `errno` it left.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The C function that failed, for example `"shm_open"`.
    public var call: String
    /// The `errno` value.
    public var errno: Int32

    /// The failure of `call` with `errno`.
    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    /// The call and the system's message for errno.
    public var description: String {
        "\(call): \(String(cString: strerror(errno)))"
    }
}

/// Runs a system call that returns `-1` and sets `errno` on failure, retrying on `EINTR`.
///
/// Every system call that DXCore makes from Swift and that a signal can interrupt (`open`,
/// `ftruncate`, `pread`, `pwrite`, `send`, `recv`; `fstat` and `fchmod` too, for one shape)
/// goes through this helper. Calls made through the C shim follow its rule instead (CShm.h:
/// the shim retries EINTR itself and returns 0/errno or a value/-errno). Not here: `close`
/// (never retried on Linux: the descriptor is gone either way), `mmap`/`munmap` and
/// `mkdir`/`lstat` (not interruptible), the control loop's `poll` and `MSG_DONTWAIT` socket
/// calls (an interrupted tick is just a short one), and the call path, which makes no system
/// calls while the peer is awake.
@discardableResult
func retryingOnInterrupt<T: FixedWidthInteger>(_ name: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SystemError(name, errno: code)
    }
}
