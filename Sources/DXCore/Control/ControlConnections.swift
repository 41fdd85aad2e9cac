#if canImport(Glibc)
import Glibc
#endif
import CShm

/// One control client: what it sent that is not a whole line yet, and what it still has to read.
final class ControlConnection {
    let fd: Int32
    let slot: Int
    let generation: UInt32
    var input: [UInt8] = []
    var output: [UInt8] = []
    /// Bytes of `output` already sent.
    var sent = 0
    /// Close once the output is sent (after an error that ends the connection).
    var closeAfterOutput = false
    /// The peer is gone or misbehaved: close as soon as nothing is in flight.
    var dead = false
    var watchInterval: UInt64 = 0
    var nextWatch: UInt64 = 0
    /// When the client last sent a request line (CLOCK_MONOTONIC ns), for the idle timeout.
    var lastRequest = CShm_monotonic_ns()
    /// When the client last read some of its output (or had none waiting), for the stall timeout.
    var lastDrained = CShm_monotonic_ns()
    /// What the kernel held for the client, unread, at the last tick.
    var lastUnread = 0
    // io_uring only: the buffers the kernel reads into and sends from, and what is in flight.
    var receiveBuffer: UnsafeMutableRawBufferPointer?
    var sendBuffer: UnsafeMutableRawBufferPointer?
    var receiving = false
    var sending = false
    /// Another user a private host allows: it may ask for a region, nothing else.
    var restricted = false
    /// The peer's pid and uid (`SO_PEERCRED`, at connect).
    var peerPID: Int32 = 0
    var peerUID: uid_t = 0
    /// The private region this connection holds: freed when the connection closes.
    var guestID: Int?
    /// Whether a tick has looked at what the client left unread.
    var checkedOnce = false

    init(fd: Int32, slot: Int, generation: UInt32) {
        self.fd = fd
        self.slot = slot
        self.generation = generation
    }

    var pendingOutput: Int { output.count - sent }

    deinit {
        receiveBuffer?.deallocate()
        sendBuffer?.deallocate()
    }
}

/// The connection table and the protocol logic both event loops share: accepting (with the
/// peer-uid check and the connection cap), assembling lines, answering them, streaming `watch`,
/// and dropping clients that do not keep up.
final class ControlConnections: @unchecked Sendable {  // handed to the control thread, used only there
    /// Control clients at once (a private host's guests come on top, up to its guest limit).
    static let maxConnections = 64
    /// Connections of one other user (allowed to ask a private host for regions) that have not
    /// asked yet; each is closed after its first line, or after ``handshakeTimeoutNanoseconds``.
    static let maxHandshakesPerUser = 8
    static let handshakeTimeoutNanoseconds: UInt64 = 5_000_000_000
    /// A client that lets more than this much output pile up in the host (pipelined requests or a
    /// `watch` it never reads, on top of what the kernel buffers) is closed and counted. One reply
    /// may exceed it (a `lanes` reply of a large host); the next request is not answered then.
    static let maxPendingOutput = 256 * 1024
    /// A client that sends no request for this long, and is not watching, is closed and counted;
    /// so is any client (watching or not) that has read none of its output for this long.
    let idleTimeoutNanoseconds: UInt64

    let service: ControlService
    private(set) var connections: [ControlConnection?]
    private var generations: [UInt32]
    /// Connections that hold no region: limited to ``maxConnections``.
    private var clients: Int { connections.reduce(0) { $0 + ($1 != nil && $1?.guestID == nil ? 1 : 0) } }
    /// Set when a client asked for shutdown; the loop tells the host once the reply is out.
    var shutdownRequested = false
    /// Counted for the log and tests.
    private(set) var refusedConnections = 0
    private(set) var droppedConnections = 0

    init(service: ControlService, idleTimeoutNanoseconds: UInt64) {
        self.service = service
        self.idleTimeoutNanoseconds = idleTimeoutNanoseconds
        let capacity = ControlConnections.maxConnections + (service.target.privateHost?.limits.maxGuests ?? 0)
        connections = Array(repeating: nil, count: capacity)
        generations = Array(repeating: 0, count: capacity)
    }

    var live: [ControlConnection] { connections.compactMap { $0 } }

    func connection(slot: Int, generation: UInt32) -> ControlConnection? {
        guard slot >= 0, slot < connections.count, let connection = connections[slot],
              connection.generation == generation else { return nil }
        return connection
    }

    /// Takes a new client, or refuses it (another user, or too many clients) with one error line.
    @discardableResult
    func accept(_ fd: Int32) -> ControlConnection? {
        var pid: Int32 = 0, uid: uid_t = 0, gid: gid_t = 0
        guard CShm_peer_credentials(fd, &pid, &uid, &gid) == 0 else {
            refuse(fd, "cannot read the client's credentials")
            return nil
        }
        let privateHost = service.target.privateHost
        let owner = uid == getuid() || uid == 0
        guard owner || privateHost?.allows(uid: uid, gid: gid) == true else {
            refuse(fd, "permission denied: this host serves uid \(getuid()) only")
            return nil
        }
        // Another user may ask for regions, not hold the socket: a few connections at a time.
        if !owner, live.filter({ $0.restricted && $0.guestID == nil && $0.peerUID == uid }).count
            >= ControlConnections.maxHandshakesPerUser {
            refuse(fd, "too many connections of uid \(uid) waiting to ask for a region; try again later")
            return nil
        }
        guard clients < ControlConnections.maxConnections + (privateHost == nil ? 0 : 1),
              let slot = connections.firstIndex(where: { $0 == nil }) else {
            refuse(fd, "too many control connections (\(ControlConnections.maxConnections)); try again later")
            return nil
        }
        generations[slot] &+= 1
        let connection = ControlConnection(fd: fd, slot: slot, generation: generations[slot])
        connection.restricted = !owner
        connection.peerPID = pid
        connection.peerUID = uid
        connections[slot] = connection
        return connection
    }

    private func refuse(_ fd: Int32, _ message: String) {
        refusedConnections += 1
        let line = service.errorLine(message, cmd: nil)
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        close(fd)
    }

    /// Bytes arrived: answer every whole line.
    func received(_ connection: ControlConnection, _ bytes: UnsafeRawBufferPointer) {
        guard !connection.closeAfterOutput, !connection.dead else { return }
        connection.input.append(contentsOf: bytes)
        var start = 0
        while let newline = connection.input[start...].firstIndex(of: UInt8(ascii: "\n")) {
            if connection.pendingOutput > ControlConnections.maxPendingOutput { return drop(connection) }
            let line = connection.input[start..<newline]
            start = newline + 1
            if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\t") }) {
                continue  // a blank line is no request: it does not keep the connection alive
            }
            connection.lastRequest = CShm_monotonic_ns()
            guard line.count <= ControlProtocol.maxLineBytes else {
                return tooLong(connection)
            }
            let (reply, effect) = service.handle(line: line, restricted: connection.restricted)
            connection.output.append(contentsOf: reply)
            switch effect {
            case .none: break
            case .region(let lanes):
                if !handOverRegion(connection, lanes: lanes) { return }
                continue
            case .watch(let interval):
                connection.watchInterval = interval
                connection.nextWatch = CShm_monotonic_ns() &+ interval
            case .shutdown:
                shutdownRequested = true
            }
            if connection.restricted {
                // Another user's line that asked for no region (refused): nothing more for it here.
                connection.closeAfterOutput = true
                connection.input.removeAll()
                return
            }
        }
        connection.input.removeFirst(start)
        if connection.input.count > ControlProtocol.maxLineBytes { tooLong(connection) }
    }

    /// Answers a `region` request: a private region for the client, its descriptor sent with the
    /// reply (`SCM_RIGHTS`). The connection then holds the region until it closes. Returns false
    /// when the connection is done (refused: the reply says why, then it closes).
    private func handOverRegion(_ connection: ControlConnection, lanes: Int?) -> Bool {
        func refuse(_ message: String) -> Bool {
            connection.output.append(contentsOf: service.errorLine(message, cmd: "region"))
            connection.closeAfterOutput = true
            connection.input.removeAll()
            return false
        }
        guard let host = service.target.privateHost else {
            return refuse("this host serves the named region \(Region.path(for: service.target.name)); attach to it by name")
        }
        guard connection.guestID == nil else { return refuse("this connection has its region already") }
        guard connection.pendingOutput == 0, !connection.sending else {
            return refuse("ask for a region first, on a connection of its own")
        }
        switch host.openRegion(lanes: lanes, pid: connection.peerPID, uid: connection.peerUID) {
        case .failure(let refusal):
            return refuse(refusal.description)
        case .success(let (guest, region)):
            let reply = service.regionLine(guest: guest, region: region)
            // The output is empty: this is the connection's first reply, sent now with the
            // descriptor on its first byte (the rest, if the kernel took only part, follows).
            let sent = reply.withUnsafeBytes { CShm_send_with_fd(connection.fd, $0.baseAddress, $0.count, region.descriptor) }
            guard sent > 0 else {
                host.closeRegion(id: guest.id)
                connection.dead = true
                return false
            }
            connection.guestID = guest.id
            if Int(sent) < reply.count { connection.output.append(contentsOf: reply[Int(sent)...]) }
            return true
        }
    }

    private func tooLong(_ connection: ControlConnection) {
        connection.output.append(contentsOf: service.errorLine(
            "request line longer than \(ControlProtocol.maxLineBytes) bytes; closing", cmd: nil))
        connection.closeAfterOutput = true
        connection.input.removeAll()
    }

    /// `count` bytes of the connection's output were sent.
    func didSend(_ connection: ControlConnection, _ count: Int) {
        connection.sent += count
        if connection.sent == connection.output.count {
            connection.output.removeAll(keepingCapacity: true)
            connection.sent = 0
        } else if connection.sent > 64 * 1024 {
            connection.output.removeFirst(connection.sent)
            connection.sent = 0
        }
    }

    /// Periodic work: snapshots, due `watch` lines, and dropping clients that do not read or
    /// that idle.
    func tick(now: UInt64) {
        // A private host's snapshots cover every guest: taken only while a control client (not a
        // guest) is connected, so that idle guests cost the host nothing. Rates are then over the
        // time since the last snapshot.
        if service.target.privateHost == nil || clients > 0 { service.tick(now: now) }
        for connection in live where !connection.dead {
            // A guest's connection carries nothing after its reply: once that is read, no need to
            // ask the kernel every tick.
            if connection.guestID != nil, connection.pendingOutput == 0, connection.lastUnread == 0, connection.checkedOnce {
                continue
            }
            connection.checkedOnce = true
            // A client that stopped reading: its replies sit in the kernel's buffer (~200 KB) and
            // then in ours, below the cap. Without this, 64 of them (a `watch` at 60 s fills the
            // kernel's buffer only after a day) would lock everyone out of the control socket.
            let unread = max(Int(CShm_socket_unread(connection.fd)), 0)
            if (connection.pendingOutput == 0 && unread == 0) || unread < connection.lastUnread {
                connection.lastDrained = now
            } else if now &- connection.lastDrained > idleTimeoutNanoseconds {
                drop(connection)
                continue
            }
            connection.lastUnread = unread
            if connection.guestID != nil { continue }  // a guest's connection is its region's life
            if connection.restricted, now &- connection.lastRequest > ControlConnections.handshakeTimeoutNanoseconds {
                drop(connection)  // another user that connected and did not ask for a region
                continue
            }
            if connection.watchInterval == 0 {
                if now &- connection.lastRequest > idleTimeoutNanoseconds, connection.pendingOutput == 0 { drop(connection) }
                continue
            }
            guard now >= connection.nextWatch else { continue }
            connection.output.append(contentsOf: service.watchLine())
            connection.nextWatch = now &+ connection.watchInterval
            if connection.pendingOutput > ControlConnections.maxPendingOutput { drop(connection) }
        }
    }

    /// Closes a client that piles up output or idles, and counts it.
    private func drop(_ connection: ControlConnection) {
        droppedConnections += 1
        service.droppedConnections += 1
        connection.dead = true
        connection.input.removeAll()
    }

    /// Whether the connection can be closed now (the loop also checks that nothing is in flight).
    func finished(_ connection: ControlConnection) -> Bool {
        connection.dead || (connection.closeAfterOutput && connection.pendingOutput == 0)
    }

    func remove(_ connection: ControlConnection) {
        close(connection.fd)
        connections[connection.slot] = nil
        if let id = connection.guestID { service.target.privateHost?.closeRegion(id: id) }
    }

    func removeAll() {
        for connection in live { remove(connection) }
    }

    /// Whether every reply to a shutdown request has been sent.
    var outputDrained: Bool { live.allSatisfy { $0.pendingOutput == 0 || $0.dead } }
}
