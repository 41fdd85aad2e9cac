/// Serves one request: reads the request bytes and writes the response bytes.
///
/// `request` and `response` are the same lane buffer (direct exchange): the response is
/// written in place over the request. `response.count` is the slot capacity. Return the
/// response length (0...response.count); anything else answers the guest with
/// ``ResponseStatus/handlerFailed``.
///
/// - Important: Handlers run on the serving worker, between a guest's publish and its wake-up.
///   They must not block, and must treat the request as hostile: the guest can change it while
///   the handler reads it.
public protocol RequestHandler: Sendable {
    func handle(request: UnsafeRawBufferPointer, response: UnsafeMutableRawBufferPointer) -> Int
}

/// The handlers `dx-host --handler` offers, as announced in the region header.
public enum HandlerKind: UInt32, Sendable, CaseIterable {
    /// Answers with the request itself.
    case echo = 1
    /// Answers with the 8-byte FNV-1a 64 checksum of the request (little-endian).
    case checksum = 2
    /// An embedder's own handler.
    case custom = 0xFFFF
}

/// Answers every request with itself. In place, that costs nothing.
public struct EchoHandler: RequestHandler {
    /// The handler.
    public init() {}

    /// Serves one request (see ``RequestHandler``).
    @inlinable
    public func handle(request: UnsafeRawBufferPointer, response: UnsafeMutableRawBufferPointer) -> Int {
        if let source = request.baseAddress, let target = response.baseAddress, source != UnsafeRawPointer(target) {
            target.copyMemory(from: source, byteCount: request.count)
        }
        return request.count
    }
}

/// Answers every request with its FNV-1a 64 checksum, 8 bytes little-endian.
public struct ChecksumHandler: RequestHandler {
    /// The handler.
    public init() {}

    /// Serves one request (see ``RequestHandler``).
    @inlinable
    public func handle(request: UnsafeRawBufferPointer, response: UnsafeMutableRawBufferPointer) -> Int {
        guard response.count >= 8 else { return -1 }
        let sum = Checksum.fnv1a64(request)
        response.storeBytes(of: sum.littleEndian, toByteOffset: 0, as: UInt64.self)
        return 8
    }
}

/// A handler made from a closure, for embedders.
public struct ClosureHandler: RequestHandler {
    @usableFromInline let body: @Sendable (UnsafeRawBufferPointer, UnsafeMutableRawBufferPointer) -> Int

    /// A handler that calls `body(request, response)` and returns its result.
    public init(_ body: @escaping @Sendable (UnsafeRawBufferPointer, UnsafeMutableRawBufferPointer) -> Int) {
        self.body = body
    }

    /// Serves one request (see ``RequestHandler``).
    @inlinable
    public func handle(request: UnsafeRawBufferPointer, response: UnsafeMutableRawBufferPointer) -> Int {
        body(request, response)
    }
}

/// The checksum the `checksum` handler computes.
public enum Checksum {
    /// FNV-1a, 64 bits.
    @inlinable
    public static func fnv1a64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return hash
    }
}
