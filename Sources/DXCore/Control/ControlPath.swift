#if canImport(Glibc)
import Glibc
#endif

/// Where the control socket of a region lives.
///
/// `$XDG_RUNTIME_DIR/dx/<name>.sock`, or `/tmp/dx-<uid>/<name>.sock` when `XDG_RUNTIME_DIR` is
/// unset. The directory is created with mode 0700 and must belong to the current user.
public enum ControlPath {
    /// The directory of control sockets: `$XDG_RUNTIME_DIR/dx`, or `/tmp/dx-<uid>`.
    public static func directory() -> String {
        if let runtime = getenv("XDG_RUNTIME_DIR").map({ String(cString: $0) }), !runtime.isEmpty {
            return runtime + "/dx"
        }
        return "/tmp/dx-\(getuid())"
    }

    /// The socket path for a region name.
    public static func socket(for name: String) -> String {
        directory() + "/\(name).sock"
    }

    /// Creates the socket's directory (mode 0700) if needed, and checks that it is a directory
    /// of ours that nobody else can enter.
    static func prepareDirectory(of path: String) throws(ControlError) {
        guard let slash = path.lastIndex(of: "/") else { return }
        let directory = String(path[..<slash])
        if directory.isEmpty { return }
        if mkdir(directory, 0o700) != 0, errno != EEXIST {
            throw .system(SystemError("mkdir \(directory)", errno: errno))
        }
        var info = stat()
        guard lstat(directory, &info) == 0 else { throw .system(SystemError("stat \(directory)", errno: errno)) }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw .unsafeDirectory("\(directory) is not a directory") }
        // A directory we created ourselves is ours; one that exists must be ours and private.
        guard info.st_uid == getuid() else { throw .unsafeDirectory("\(directory) belongs to another user") }
        if info.st_mode & 0o077 != 0 { chmod(directory, 0o700) }
    }
}

/// Why the control socket could not be served or reached.
public enum ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    case unsafeDirectory(String)
    /// Another live host listens on the socket.
    case inUse(String)
    /// No host listens on the socket.
    case noHost(path: String)
    case permissionDenied(path: String)
    /// The host's answer was not a control protocol line.
    case badAnswer(String)
    /// The host answered with an error.
    case refused(String)
    case system(SystemError)

    /// A sentence for a person.
    public var description: String {
        switch self {
        case .unsafeDirectory(let text): return "unsafe control socket directory: \(text)"
        case .inUse(let path): return "another dx host listens on \(path)"
        case .noHost(let path): return "no dx host answers on \(path)"
        case .permissionDenied(let path): return "permission denied for \(path): it belongs to another user"
        case .badAnswer(let text): return "unexpected answer from the host: \(text)"
        case .refused(let text): return "the host refused: \(text)"
        case .system(let error): return "\(error)"
        }
    }
}
