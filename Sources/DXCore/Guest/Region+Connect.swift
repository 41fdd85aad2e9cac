#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import FoundationEssentials

extension Region {
    /// Attaches to `name` however its host serves it: the named region `/dev/shm/dx.<name>` when
    /// there is one, else a private region of `lanes` lanes from the host's socket
    /// (``connect(name:lanes:controlPath:hostUID:timeoutNanoseconds:)``). What `dx-guest` does.
    public static func open(name: String, lanes: Int, controlPath: String? = nil,
                            hostUID: uid_t? = nil) throws(RegionAttachError) -> Region {
        do {
            return try attach(name: name, hostUID: hostUID)
        } catch .noSuchRegion {
            return try connect(name: name, lanes: lanes, controlPath: controlPath, hostUID: hostUID)
        }
    }

    /// Asks the private host of `name` (`dx-host --private`) for a region of its own with `lanes`
    /// lanes, over the host's socket (`controlPath`, by default ``ControlPath/socket(for:)``).
    ///
    /// The socket's peer must run as `hostUID` (this process's uid unless given; `SO_PEERCRED`),
    /// the descriptor that comes back must be a regular object of that uid, mode without group or
    /// other write, sealed against resizing, and its header must pass every check ``attach(name:hostUID:)``
    /// makes. The connection stays open for the region's life: closing it (or dying) is how the
    /// host learns to free the region, and its end is how this guest learns the host is gone.
    /// The handshake is specified in docs/LAYOUT.md ("Private regions").
    public static func connect(name: String, lanes: Int, controlPath: String? = nil, hostUID: uid_t? = nil,
                               timeoutNanoseconds: UInt64 = 5_000_000_000) throws(RegionAttachError) -> Region {
        guard isValidName(name) else { throw .invalidName(name) }
        let path = controlPath ?? ControlPath.socket(for: name)
        // One deadline for the connect, the request and the reply.
        let deadline = CShm_monotonic_ns() &+ timeoutNanoseconds
        let socket = CShm_unix_connect_within(path, timeoutNanoseconds)
        guard socket >= 0 else {
            switch -socket {
            case ENOENT, ECONNREFUSED: throw .noSuchRegion(name: name)
            case EACCES, EPERM: throw .connection(.permissionDenied(path: path))
            case EAGAIN: throw .connection(.badAnswer("the host did not accept the connection within the timeout"))
            default: throw .connection(.system(SystemError("connect \(path)", errno: -socket)))
            }
        }
        var descriptor: Int32 = -1
        var mapped = false
        do {
            let expected = hostUID ?? getuid()
            let peer = CShm_peer_uid(socket)
            guard peer == Int64(expected) else { throw RegionAttachError.connection(.wrongOwner(path: path, owner: peer, expected: expected)) }
            let request = Array(#"{"v":\#(ControlProtocol.version),"cmd":"region","lanes":\#(lanes)}"#.utf8) + [UInt8(ascii: "\n")]
            let sent = request.withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent == request.count else {
                throw RegionAttachError.connection(.system(SystemError("send \(path)", errno: sent < 0 ? errno : EPIPE)))
            }
            let line = try readReply(socket, name: name, path: path, deadline: deadline, descriptor: &descriptor)
            let reply: PrivateRegionReply
            do { reply = try JSONDecoder().decode(PrivateRegionReply.self, from: Data(line)) } catch {
                throw RegionAttachError.connection(.badAnswer(String(decoding: line.prefix(200), as: UTF8.self)))
            }
            guard reply.ok else { throw RegionAttachError.connection(.refused(reply.error ?? "no reason given")) }
            guard descriptor >= 0 else { throw RegionAttachError.connection(.badAnswer("the region's descriptor did not come")) }
            // Replies are done; the connection only marks the region's life from here on.
            _ = CShm_socket_timeouts(socket, 0)
            let region = try map(name: name, descriptor: descriptor, hostUID: expected, connection: socket)
            // From here the region owns both descriptors.
            mapped = true
            guard reply.lanes == region.laneCount, reply.slot_size == region.slotCapacity,
                  reply.size == Layout.regionSize(laneCount: region.laneCount, slotCapacity: region.slotCapacity,
                                                  rawCount: region.rawCount) else {
                throw RegionAttachError.connection(.badAnswer("the reply's lanes, slot size or size differ from the region's header"))
            }
            return region
        } catch let error as RegionAttachError {
            // Once mapped, the region closes both when it goes (a mismatch above).
            if !mapped {
                if descriptor >= 0 { close(descriptor) }
                close(socket)
            }
            throw error
        } catch {
            if descriptor >= 0 { close(descriptor) }
            close(socket)
            throw .system(SystemError("connect", errno: EPROTO))
        }
    }

    /// Reads the handshake's one reply line, and the descriptor that comes with its bytes.
    private static func readReply(_ socket: Int32, name: String, path: String, deadline: UInt64,
                                  descriptor: inout Int32) throws(RegionAttachError) -> [UInt8] {
        var line: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while line.count < ControlProtocol.maxLineBytes {
            // Each read waits at most what remains of the handshake's deadline.
            let now = CShm_monotonic_ns()
            guard now < deadline else { throw .connection(.badAnswer("no answer within the timeout")) }
            _ = CShm_socket_timeouts(socket, max(deadline &- now, 1_000))
            var passed: Int32 = -1
            let count = chunk.withUnsafeMutableBytes { CShm_recv_with_fd(socket, $0.baseAddress, $0.count, &passed) }
            if passed >= 0 {
                if descriptor < 0 { descriptor = passed } else { close(passed) }
            }
            if count < 0 {
                if -count == EAGAIN { throw .connection(.badAnswer("no answer within the timeout")) }
                throw .connection(.system(SystemError("recvmsg \(path)", errno: Int32(-count))))
            }
            if count == 0 { throw .hostGone(name: name) }
            line += chunk[0..<Int(count)]
            if let newline = line.firstIndex(of: UInt8(ascii: "\n")) { return Array(line[..<newline]) }
        }
        throw .connection(.badAnswer("reply line too long"))
    }
}

/// The private host's reply to a `region` request (docs/LAYOUT.md, "Private regions").
struct PrivateRegionReply: Codable {
    var v: Int
    var ok: Bool
    var cmd: String?
    var error: String?
    /// The host's number for this guest.
    var guest: Int?
    var lanes: Int?
    var slot_size: Int?
    /// The region's size in bytes.
    var size: Int?
}
