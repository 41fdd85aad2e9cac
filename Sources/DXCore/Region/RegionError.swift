#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why a host could not create its region.
public enum RegionCreateError: Error, Equatable, Sendable {
    /// The name is empty, too long, or has a character other than letters, digits, `.`, `_`, `-`.
    case invalidName(String)
    /// A size or count is out of range; the text says which.
    case invalidConfiguration(String)
    /// A live host already serves this name (it holds the name's lock). The pid is what that
    /// host wrote into its lock file, or 0 when unknown.
    case alreadyServed(name: String, pid: Int32)
    /// Another user's object holds the region's name; it is never followed or removed.
    case nameTaken(name: String, uid: uid_t)
    /// A system call failed.
    case system(SystemError)
}

/// Why a guest could not attach to a region.
public enum RegionAttachError: Error, Equatable, Sendable {
    /// The name is not a valid region name.
    case invalidName(String)
    /// No region of this name exists: no host serves it.
    case noSuchRegion(name: String)
    /// The region exists but belongs to another user.
    case permissionDenied(name: String)
    /// The region object belongs to `owner`, not to the expected host user: it may be a squatter's.
    case wrongOwner(name: String, owner: uid_t, expected: uid_t)
    /// The region object is writable by group or others, which a dx host never makes.
    case unsafeMode(name: String, mode: mode_t)
    /// The region exists but the host has not published it yet.
    case notReady(name: String)
    /// The region does not start with dx's magic number.
    case notADXRegion(name: String)
    /// The region was written by another layout version.
    case versionMismatch(found: UInt32, expected: UInt32)
    /// A size or count in the header is inconsistent; the text says which.
    case sizeMismatch(String)
    /// The host is shutting down.
    case hostStopping(name: String)
    /// The host that created the region is no longer running.
    case hostGone(name: String)
    /// A private host could not be reached, or it refused the region (the text says why).
    case connection(ControlError)
    /// A system call failed.
    case system(SystemError)
}

extension RegionCreateError: CustomStringConvertible {
    /// A sentence for a person, with what to do about it.
    public var description: String {
        switch self {
        case .invalidName(let name):
            return "invalid region name '\(name)': use 1 to \(Region.maxNameLength) letters, digits, '.', '_' or '-'"
        case .invalidConfiguration(let text):
            return "invalid configuration: \(text)"
        case .alreadyServed(let name, let pid):
            return "a dx host\(pid > 0 ? " (pid \(pid))" : "") already serves '\(name)'; stop it first or choose another --name"
        case .nameTaken(let name, let uid):
            return "the name '\(name)' is taken by uid \(uid) (\(Region.path(for: name)) or its lock \(HostLock.path(for: name))), not by this user; dx will not use or remove it: choose another --name"
        case .system(let error):
            return "\(error)"
        }
    }
}

extension RegionAttachError: CustomStringConvertible {
    /// A sentence for a person, with what to do about it.
    public var description: String {
        switch self {
        case .invalidName(let name):
            return "invalid region name '\(name)': use 1 to \(Region.maxNameLength) letters, digits, '.', '_' or '-'"
        case .noSuchRegion(let name):
            return "no dx host named '\(name)' is running (no region \(Region.path(for: name)))"
        case .permissionDenied(let name):
            return "permission denied for region \(Region.path(for: name)): it belongs to another user"
        case .wrongOwner(let name, let owner, let expected):
            return "region \(Region.path(for: name)) belongs to uid \(owner), not to the host's uid \(expected); refusing it (name the host's user with --host-uid if that is intended)"
        case .unsafeMode(let name, let mode):
            return "region \(Region.path(for: name)) has mode \(String(mode, radix: 8)), writable by other users; refusing it"
        case .notReady(let name):
            return "the dx host '\(name)' is still starting; try again in a moment"
        case .notADXRegion(let name):
            return "\(Region.path(for: name)) is not a dx region (bad magic number)"
        case .versionMismatch(let found, let expected):
            return "region layout version \(found) does not match this guest's version \(expected); use matching dx builds"
        case .sizeMismatch(let text):
            return "corrupt region header: \(text)"
        case .hostStopping(let name):
            return "the dx host '\(name)' is shutting down"
        case .hostGone(let name):
            return "the dx host '\(name)' is no longer running (stale region \(Region.path(for: name)))"
        case .connection(let error):
            return "\(error)"
        case .system(let error):
            return "\(error)"
        }
    }
}
