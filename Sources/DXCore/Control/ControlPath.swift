#if canImport(Glibc)
import Glibc
#endif
import CShm

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

    /// The longest path a Unix socket can bind to (`sizeof(sockaddr_un.sun_path)` − 1).
    public static let maxSocketPathLength = 107

    /// Creates the runtime directory (one level, mode 0700) if it is missing, and checks that it
    /// is a directory (not a symlink) of this user that nobody else can enter. An existing
    /// directory's mode is never changed: a wrong one is refused with a sentence.
    static func prepareDirectory(_ directory: String) throws(ControlError) {
        if mkdir(directory, 0o700) != 0, errno != EEXIST {
            throw .system(SystemError("mkdir \(directory)", errno: errno))
        }
        var info = stat()
        guard lstat(directory, &info) == 0 else { throw .system(SystemError("stat \(directory)", errno: errno)) }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw .unsafeDirectory("\(directory) is not a directory") }
        guard info.st_uid == getuid() else { throw .unsafeDirectory("\(directory) belongs to uid \(info.st_uid), not to this user") }
        guard info.st_mode & 0o077 == 0 else {
            throw .unsafeDirectory("\(directory) has mode \(String(info.st_mode & 0o777, radix: 8)); dx needs 0700 (chmod 700 \(directory))")
        }
    }

    /// Makes `path` ready for a listening socket, touching nothing it cannot prove is its own.
    ///
    /// The parent directory is created (one level, mode 0700) when missing. An existing parent must
    /// be a directory (not a symlink) of this user or of root, and sticky if others may write to
    /// it (like /tmp); its mode is never changed. At `path` itself only a socket of this user that
    /// nobody answers on (a dead host's) is removed; a live one is ``ControlError/inUse(_:)``, and
    /// anything else is refused.
    static func prepareSocketPath(_ path: String) throws(ControlError) {
        guard !path.isEmpty, path.utf8.count <= maxSocketPathLength else {
            throw .unsafePath("\(path): a control socket path has 1 to \(maxSocketPathLength) bytes")
        }
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        if !directory.isEmpty {
            if mkdir(directory, 0o700) != 0, errno != EEXIST {
                throw .system(SystemError("mkdir \(directory)", errno: errno))
            }
            var info = stat()
            guard lstat(directory, &info) == 0 else { throw .system(SystemError("stat \(directory)", errno: errno)) }
            guard info.st_mode & S_IFMT == S_IFDIR else { throw .unsafeDirectory("\(directory) is not a directory") }
            guard info.st_uid == getuid() || info.st_uid == 0 else {
                throw .unsafeDirectory("\(directory) belongs to uid \(info.st_uid); its owner could replace the socket")
            }
            if info.st_mode & 0o022 != 0, info.st_mode & S_ISVTX == 0 {
                throw .unsafeDirectory("\(directory) is writable by others and not sticky; anyone could replace the socket")
            }
        }
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == getuid() else {
            throw .unsafePath("\(path) exists and is not a socket of this user; dx removes only its own stale sockets")
        }
        let probe = CShm_unix_connect(path)
        if probe >= 0 {
            close(probe)
            throw .inUse(path)
        }
        guard -probe == ECONNREFUSED else { throw .system(SystemError("connect \(path)", errno: -probe)) }
        unlink(path)  // a socket of ours that nobody listens on: a dead host's
    }
}

/// Why the control socket could not be served or reached.
public enum ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    case unsafeDirectory(String)
    /// The socket path is too long, or something that is not a stale dx socket of ours is there.
    case unsafePath(String)
    /// Another live host listens on the socket.
    case inUse(String)
    /// No host listens on the socket.
    case noHost(path: String)
    case permissionDenied(path: String)
    /// The socket is served by a process of another user than the expected host's (or, with
    /// `owner` −1, its credentials could not be read).
    case wrongOwner(path: String, owner: Int64, expected: uid_t)
    /// The host's answer was not a control protocol line.
    case badAnswer(String)
    /// The host answered with an error.
    case refused(String)
    case system(SystemError)

    /// A sentence for a person.
    public var description: String {
        switch self {
        case .unsafeDirectory(let text): return "unsafe control socket directory: \(text)"
        case .unsafePath(let text): return "unsafe control socket path: \(text)"
        case .inUse(let path): return "another dx host listens on \(path)"
        case .noHost(let path): return "no dx host answers on \(path)"
        case .permissionDenied(let path): return "permission denied for \(path): it belongs to another user"
        case .wrongOwner(let path, let owner, let expected):
            return "the control socket \(path) is served by uid \(owner), not by the host's uid \(expected); refusing it (name the host's user with --host-uid if that is intended)"
        case .badAnswer(let text): return "unexpected answer from the host: \(text)"
        case .refused(let text): return "the host refused: \(text)"
        case .system(let error): return "\(error)"
        }
    }
}
