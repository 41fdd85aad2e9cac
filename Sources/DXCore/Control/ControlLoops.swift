#if canImport(Glibc)
import Glibc
#endif
import CShm

/// Moves bytes between the control sockets and ``ControlConnections``. One thread, no thread per
/// connection; every wait is bounded (`tickNanoseconds`) so the loop re-checks its stop flag.
protocol ControlLoop: AnyObject, Sendable {
    func run(listener: Int32, connections: ControlConnections, stop: StopFlag, onShutdown: () -> Void)
}

let controlTickNanoseconds: UInt64 = 50_000_000

/// Runs the shared end-of-iteration work; returns true when the loop should end.
private func endOfIteration(_ connections: ControlConnections, stop: StopFlag, shutdownSince: inout UInt64?,
                            onShutdown: () -> Void) -> Bool {
    let now = CShm_monotonic_ns()
    connections.tick(now: now)
    if connections.shutdownRequested {
        // Let the reply go out (bounded: 1 s), then tell the host.
        if shutdownSince == nil { shutdownSince = now }
        if connections.outputDrained || now &- shutdownSince! > 1_000_000_000 {
            connections.shutdownRequested = false
            onShutdown()
        }
    }
    return stop.isSet
}

// MARK: - io_uring

/// The io_uring event loop (liburing through CShm): a multishot accept, one receive and at most one
/// send in flight per connection, and bounded waits.
final class UringControlLoop: ControlLoop, @unchecked Sendable {
    private let ring: OpaquePointer
    static let bufferSize = 16 * 1024

    private enum Tag: UInt64 { case accept = 1, receive = 2, send = 3 }

    /// Creates the ring, or throws the errno that says io_uring is unavailable.
    init() throws(SystemError) {
        var ring: OpaquePointer?
        let rc = CShm_ring_create(256, &ring)
        guard rc == 0, let ring else { throw SystemError("io_uring_queue_init", errno: rc) }
        self.ring = ring
    }

    deinit {
        CShm_ring_destroy(ring)
    }

    private static func userData(_ tag: Tag, _ connection: ControlConnection? = nil) -> UInt64 {
        guard let connection else { return tag.rawValue }
        return tag.rawValue | UInt64(connection.slot) << 8 | UInt64(connection.generation) << 32
    }

    func run(listener: Int32, connections: ControlConnections, stop: StopFlag, onShutdown: () -> Void) {
        var multishot = true
        _ = CShm_ring_accept(ring, listener, Self.userData(.accept), multishot)
        var shutdownSince: UInt64?
        // After an accept that failed for want of descriptors (EMFILE, ENFILE), the next one waits a
        // tick: the pending client would fail again at once, for as long as the host is full.
        var acceptAgainAt: UInt64?
        while true {
            if let at = acceptAgainAt, CShm_monotonic_ns() >= at {
                acceptAgainAt = nil
                _ = CShm_ring_accept(ring, listener, Self.userData(.accept), multishot)
            }
            for connection in connections.live where !connection.dead {
                if !connection.receiving && !connection.closeAfterOutput {
                    let buffer = connection.receiveBuffer ?? .allocate(byteCount: Self.bufferSize, alignment: 16)
                    connection.receiveBuffer = buffer
                    if CShm_ring_recv(ring, connection.fd, buffer.baseAddress, buffer.count, Self.userData(.receive, connection)) == 0 {
                        connection.receiving = true
                    }
                }
                if !connection.sending && connection.pendingOutput > 0 {
                    let buffer = connection.sendBuffer ?? .allocate(byteCount: Self.bufferSize, alignment: 16)
                    connection.sendBuffer = buffer
                    let count = min(buffer.count, connection.pendingOutput)
                    connection.output.withUnsafeBytes { bytes in
                        buffer.baseAddress!.copyMemory(from: bytes.baseAddress! + connection.sent, byteCount: count)
                    }
                    if CShm_ring_send(ring, connection.fd, buffer.baseAddress, count, Self.userData(.send, connection)) == 0 {
                        connection.sending = true
                    }
                }
            }
            _ = CShm_ring_submit_and_wait(ring, controlTickNanoseconds)
            var data: UInt64 = 0, result: Int32 = 0, flags: UInt32 = 0
            while CShm_ring_next(ring, &data, &result, &flags) {
                let tag = Tag(rawValue: data & 0xFF)
                let connection = connections.connection(slot: Int((data >> 8) & 0xFF_FFFF), generation: UInt32(data >> 32))
                switch tag {
                case .accept?:
                    if result >= 0 {
                        connections.accept(result)
                    } else if result == -EINVAL && multishot {
                        multishot = false  // an older kernel: accept one at a time
                    }
                    if result == -EMFILE || result == -ENFILE || result == -ENOBUFS || result == -ENOMEM {
                        if !CShm_ring_more(flags) { acceptAgainAt = CShm_monotonic_ns() &+ controlTickNanoseconds }
                    } else if !CShm_ring_more(flags) {
                        _ = CShm_ring_accept(ring, listener, Self.userData(.accept), multishot)
                    }
                case .receive?:
                    guard let connection else { continue }
                    connection.receiving = false
                    if result > 0, let buffer = connection.receiveBuffer {
                        connections.received(connection, UnsafeRawBufferPointer(rebasing: buffer[0..<Int(result)]))
                    } else {
                        connection.dead = true  // 0: the peer closed; < 0: an error
                    }
                case .send?:
                    guard let connection else { continue }
                    connection.sending = false
                    if result > 0 { connections.didSend(connection, Int(result)) } else { connection.dead = true }
                case nil:
                    continue
                }
            }
            for connection in connections.live where connections.finished(connection) {
                if connection.receiving || connection.sending {
                    // Wake the operations still in flight; the connection closes when they complete.
                    shutdown(connection.fd, Int32(SHUT_RDWR))
                    connection.dead = true
                } else {
                    connections.remove(connection)
                }
            }
            if endOfIteration(connections, stop: stop, shutdownSince: &shutdownSince, onShutdown: onShutdown) { break }
        }
        connections.removeAll()
    }
}

// MARK: - poll

/// The fallback when io_uring is unavailable (an old kernel, or seccomp forbids it): `poll` on
/// non-blocking sockets.
final class PollControlLoop: ControlLoop, @unchecked Sendable {
    func run(listener: Int32, connections: ControlConnections, stop: StopFlag, onShutdown: () -> Void) {
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var shutdownSince: UInt64?
        // After an accept that failed for want of descriptors, the listener rests a tick (its
        // POLLIN would stay set and every accept fail again).
        var acceptAgainAt: UInt64 = 0
        while true {
            let live = connections.live.filter { !$0.dead }
            let listening = CShm_monotonic_ns() >= acceptAgainAt
            var descriptors = [pollfd(fd: listener, events: listening ? Int16(POLLIN) : 0, revents: 0)]
            for connection in live {
                var events = connection.closeAfterOutput ? 0 : Int16(POLLIN)
                if connection.pendingOutput > 0 { events |= Int16(POLLOUT) }
                descriptors.append(pollfd(fd: connection.fd, events: events, revents: 0))
            }
            _ = poll(&descriptors, nfds_t(descriptors.count), Int32(controlTickNanoseconds / 1_000_000))
            if descriptors[0].revents & Int16(POLLIN) != 0 {
                while true {
                    let fd = CShm_accept_nonblocking(listener)
                    if fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM {
                        acceptAgainAt = CShm_monotonic_ns() &+ controlTickNanoseconds
                    }
                    if fd < 0 { break }
                    connections.accept(fd)
                }
            }
            for (index, connection) in live.enumerated() {
                let events = descriptors[index + 1].revents
                if events & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    let count = buffer.withUnsafeMutableBytes { recv(connection.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                    if count > 0 {
                        buffer.withUnsafeBytes { connections.received(connection, UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
                    } else if count == 0 || (errno != EAGAIN && errno != EINTR) {
                        connection.dead = true
                    }
                }
                if events & Int16(POLLOUT) != 0, connection.pendingOutput > 0 {
                    let count = connection.output.withUnsafeBytes {
                        send(connection.fd, $0.baseAddress! + connection.sent, connection.pendingOutput,
                             Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                    }
                    if count > 0 { connections.didSend(connection, count) } else if errno != EAGAIN && errno != EINTR {
                        connection.dead = true
                    }
                }
            }
            for connection in connections.live where connections.finished(connection) { connections.remove(connection) }
            if endOfIteration(connections, stop: stop, shutdownSince: &shutdownSince, onShutdown: onShutdown) { break }
        }
        connections.removeAll()
    }
}
