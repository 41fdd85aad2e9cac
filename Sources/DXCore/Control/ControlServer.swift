#if canImport(Glibc)
import Glibc
#endif
import CShm
import Logging

/// Which event loop serves the control socket.
public enum ControlBackend: String, Sendable, CaseIterable {
    /// io_uring when the kernel allows it, else poll.
    case auto
    case uring
    case poll
}

/// The host's control socket: a Unix stream socket served by one thread with an io_uring event
/// loop (or poll, when io_uring is unavailable). It reports counters and throughput, changes the
/// wait strategy, and shuts the host down; see docs/CONTROL.md for the protocol.
///
/// - Important: It never touches the data path: everything it reports comes from snapshots of the
///   counters in shared memory.
public final class ControlServer: @unchecked Sendable {
    /// The socket's path.
    public let path: String
    /// The event loop actually in use.
    public let backend: ControlBackend
    private let listener: Int32
    private let loop: any ControlLoop
    private let connections: ControlConnections
    private let stopFlag = StopFlag()
    private var thread: Thread?
    private let logger: Logger
    /// The socket file's device and inode, so that stopping removes only this server's socket.
    private let identity: (dev_t, ino_t)

    /// Binds and listens. A socket file left by a dead host is replaced; a live one is refused, and
    /// so is anything else at `path` (see ``ControlPath``). A client that sends nothing for
    /// `idleTimeoutNanoseconds` (and is not watching) is closed. `metricsExposition` renders the
    /// process's swift-metrics backend for the `metrics` command (dx-host passes swift-prometheus'
    /// registry); without it, `metrics` answers with an error.
    public init(target: any ControlTarget, path: String, backend: ControlBackend = .auto,
                idleTimeoutNanoseconds: UInt64 = 60_000_000_000,
                metricsExposition: (@Sendable () -> String)? = nil,
                logger: Logger = Logger(label: "dx.control")) throws(ControlError) {
        // A private host that lets other users in needs a socket they can connect to; SO_PEERCRED
        // (checked at accept) refuses everyone it does not allow.
        let limits = target.privateHost?.limits
        let openToOthers = limits.map { !$0.allowedUIDs.isEmpty || !$0.allowedGIDs.isEmpty } ?? false
        self.path = path
        self.logger = logger
        if path == ControlPath.socket(for: target.name) { try ControlPath.prepareDirectory(ControlPath.directory()) }
        try ControlPath.prepareSocketPath(path)
        let fd = CShm_unix_listen(path, 128)
        guard fd >= 0 else { throw .system(SystemError("bind \(path)", errno: -fd)) }
        if openToOthers, chmod(path, 0o666) != 0 {
            let code = errno
            close(fd)
            unlink(path)
            throw .system(SystemError("chmod \(path)", errno: code))
        }
        var info = stat()
        lstat(path, &info)
        let identity = (info.st_dev, info.st_ino)
        self.identity = identity
        listener = fd
        switch backend {
        case .poll:
            loop = PollControlLoop()
            self.backend = .poll
        case .uring, .auto:
            do {
                loop = try UringControlLoop()
                self.backend = .uring
            } catch {
                if backend == .uring {
                    close(fd)
                    Self.removeSocketFile(path, identity)
                    throw .system(error)
                }
                logger.warning("io_uring is unavailable (\(error)); serving the control socket with poll")
                loop = PollControlLoop()
                self.backend = .poll
            }
        }
        connections = ControlConnections(service: ControlService(target: target, metricsExposition: metricsExposition),
                                         idleTimeoutNanoseconds: idleTimeoutNanoseconds)
        let targetForShutdown = target
        let connections = connections, loop = loop, stop = stopFlag, listener = listener
        do {
            thread = try Thread(stackSize: 1 << 20) {
                loop.run(listener: listener, connections: connections, stop: stop) {
                    targetForShutdown.requestShutdown()
                }
            }
        } catch {
            close(fd)
            Self.removeSocketFile(path, identity)
            throw .system(error)
        }
        logger.info("control socket", metadata: ["path": "\(path)", "backend": "\(self.backend.rawValue)"])
    }

    /// Stops the loop, closes every connection and removes the socket file. Call it once.
    public func stop() {
        stopFlag.set()
        thread?.join()
        thread = nil
        close(listener)
        Self.removeSocketFile(path, identity)
    }

    /// The quick way out, for a second stop signal: removes the socket file (if it is still this
    /// server's) without waiting for the loop. The process should exit next.
    public func abandon() {
        Self.removeSocketFile(path, identity)
    }

    /// Removes the socket file if it is still the one this server bound.
    private static func removeSocketFile(_ path: String, _ identity: (dev_t, ino_t)) {
        var info = stat()
        if lstat(path, &info) == 0, info.st_dev == identity.0, info.st_ino == identity.1 { unlink(path) }
    }
}

/// A control-socket client: one request, one reply line (or a stream of them for `watch`).
public struct ControlClient: ~Copyable {
    private let fd: Int32
    private var pending: [UInt8] = []
    /// The socket path.
    public let path: String

    /// Connects (bounded: every read and write times out after `timeout`), and checks that the
    /// process serving the socket runs as `hostUID` (this process's own uid unless given):
    /// `SO_PEERCRED`, so a socket another user put in the path is refused before a byte is sent.
    public init(path: String, hostUID: uid_t? = nil, timeoutNanoseconds: UInt64 = 5_000_000_000) throws(ControlError) {
        self.path = path
        let fd = CShm_unix_connect(path)
        guard fd >= 0 else {
            switch -fd {
            case ENOENT, ECONNREFUSED: throw .noHost(path: path)
            case EACCES, EPERM: throw .permissionDenied(path: path)
            default: throw .system(SystemError("connect \(path)", errno: -fd))
            }
        }
        let expected = hostUID ?? getuid()
        let peer = CShm_peer_uid(fd)
        guard peer >= 0 else {
            close(fd)
            throw .system(SystemError("getsockopt SO_PEERCRED", errno: Int32(-peer)))
        }
        guard peer == Int64(expected) else {
            close(fd)
            throw .wrongOwner(path: path, owner: peer, expected: expected)
        }
        _ = CShm_socket_timeouts(fd, timeoutNanoseconds)
        self.fd = fd
    }

    deinit {
        close(fd)
    }

    /// Sends one request line (a newline is added).
    public func send(_ line: String) throws(ControlError) {
        var bytes = Array(line.utf8)
        bytes.append(UInt8(ascii: "\n"))
        var offset = 0
        while offset < bytes.count {
            let count: Int
            do {
                count = try retryingOnInterrupt("send") {
                    bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
                }
            } catch {
                throw .system(error)
            }
            offset += count
        }
    }

    /// Reads the next reply line (without its newline).
    public mutating func readLine() throws(ControlError) -> String {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            if let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeFirst(newline + 1)
                return line
            }
            let count: Int
            do {
                count = try retryingOnInterrupt("recv") { chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) } }
            } catch {
                if error.errno == EAGAIN { throw .badAnswer("no answer within the timeout") }
                throw .system(error)
            }
            if count == 0 { throw .badAnswer("the host closed the connection") }
            pending.append(contentsOf: chunk[0..<count])
        }
    }

    /// One request, one reply line.
    public mutating func request(_ line: String) throws(ControlError) -> String {
        do {
            try send(line)
        } catch {
            // A host that refuses a client says why in one line, then closes: read it if it is there.
            if let reason = try? readLine() { return reason }
            throw error
        }
        return try readLine()
    }
}
