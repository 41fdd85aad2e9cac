#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import Synchronization

/// The lock that makes one host the only one for a name: an exclusive `flock` on
/// `/dev/shm/dx-lock.<name>`, taken before the host touches `shm_open` and held for its whole life.
/// The kernel drops it when the host dies, so a second host neither trusts a pid in the region nor
/// races the first between `shm_open` and its first store. It sits beside the region, in the same
/// mount namespace, whatever the environment says (a lock in `$XDG_RUNTIME_DIR` would let two
/// hosts started from different sessions each hold their own), and its prefix cannot be a region's
/// (`dx.<name>`).
final class HostLock {
    let path: String
    private let descriptor: Int32
    private let identity: (dev_t, ino_t)
    private let released = Atomic<Bool>(false)

    /// Takes the lock for `name`, or throws ``RegionCreateError/alreadyServed(name:pid:)`` while
    /// another host holds it.
    /// Where the lock of `name` lives.
    static func path(for name: String) -> String { "/dev/shm/dx-lock.\(name)" }

    init(name: String) throws(RegionCreateError) {
        let path = HostLock.path(for: name)
        self.path = path
        for _ in 0..<8 {
            let fd: Int32
            do { fd = try retryingOnInterrupt("open \(path)") { open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600) } }
            catch {
                // Another user's file there (the kernel refuses O_CREAT on it in a sticky
                // directory): the name is taken.
                var info = stat()
                if error.errno == EACCES || error.errno == EPERM, lstat(path, &info) == 0, info.st_uid != getuid() {
                    throw .nameTaken(name: name, uid: info.st_uid)
                }
                throw .system(error)
            }
            var info = stat()
            guard (try? retryingOnInterrupt("fstat") { fstat(fd, &info) }) != nil else {
                close(fd)
                throw .system(SystemError("fstat \(path)", errno: errno))
            }
            guard info.st_uid == getuid() else {
                close(fd)
                throw .nameTaken(name: name, uid: info.st_uid)
            }
            // Not a regular file, or one with another name too (a hard link to a region would be
            // truncated below): never ours to use.
            guard info.st_mode & S_IFMT == S_IFREG, info.st_nlink <= 1 else {
                close(fd)
                throw .system(SystemError("\(path) is not a lone regular file", errno: EEXIST))
            }
            let rc = CShm_flock_exclusive(fd)
            if rc == EWOULDBLOCK {
                var text = [UInt8](repeating: 0, count: 16)
                let count = (try? retryingOnInterrupt("pread") { text.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 15, 0) } }) ?? 0
                close(fd)
                let pid = count > 0 ? Int32(String(decoding: text[0..<count], as: UTF8.self)
                    .trimmingPrefix(" ").split(separator: "\n").first ?? "") ?? 0 : 0
                throw .alreadyServed(name: name, pid: pid)
            }
            guard rc == 0 else {
                close(fd)
                throw .system(SystemError("flock \(path)", errno: rc))
            }
            // A host that stopped may have unlinked the file between our open and our lock: then
            // the lock is on an orphan, and the next host would make a new file. Start again.
            var current = stat()
            guard stat(path, &current) == 0, current.st_dev == info.st_dev, current.st_ino == info.st_ino else {
                close(fd)
                continue
            }
            // Informational: who holds it, for the "already served" message.
            let pid = Array("\(getpid())\n".utf8)
            _ = try? retryingOnInterrupt("ftruncate") { ftruncate(fd, 0) }
            _ = try? retryingOnInterrupt("pwrite") { pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
            descriptor = fd
            identity = (info.st_dev, info.st_ino)
            return
        }
        throw .system(SystemError("flock \(path)", errno: EAGAIN))
    }

    /// A host that could not create its region lets go of the name too.
    deinit { release() }

    /// Removes the lock file (while still holding the lock, so no host can be between open and
    /// lock on it) and lets go.
    func release() {
        // Once, whichever thread comes first (a second signal's abandon races the clean stop).
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var current = stat()
        if stat(path, &current) == 0, current.st_dev == identity.0, current.st_ino == identity.1 { unlink(path) }
        close(descriptor)
    }
}
