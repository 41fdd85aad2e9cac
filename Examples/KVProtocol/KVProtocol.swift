/// The key-value example's wire format, inside a dx lane's buffer. All integers little-endian.
///
/// ```
/// request   0 op u8 (1 GET, 2 PUT, 3 DEL)   1 key length u8 (1...255)   2 value length u32 (PUT; else 0)
///           6 key bytes, then the value bytes
/// response  0 status u8 (0 ok, 1 not found, 2 bad request, 3 full)   1 value length u32
///           5 value bytes (GET)
/// ```
///
/// The host treats every request as hostile: lengths are checked against the buffer, and the
/// bytes are copied once before they are used.
public enum KV {
    public enum Op: UInt8, Sendable { case get = 1, put = 2, del = 3 }

    public enum Status: UInt8, Sendable, Error, CustomStringConvertible {
        case ok = 0, notFound = 1, badRequest = 2, full = 3

        public var description: String {
            switch self {
            case .ok: "ok"
            case .notFound: "not found"
            case .badRequest: "bad request"
            case .full: "the store is full"
            }
        }
    }

    public static let requestHeader = 6
    public static let responseHeader = 5
    public static let maxKey = 255

    /// Writes a request into `buffer` and returns its length, or nil when it does not fit.
    public static func encode(_ op: Op, key: [UInt8], value: [UInt8] = [], into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        let length = requestHeader + key.count + value.count
        guard (1...maxKey).contains(key.count), length <= buffer.count else { return nil }
        buffer[0] = op.rawValue
        buffer[1] = UInt8(key.count)
        buffer.storeBytes(of: UInt32(value.count).littleEndian, toByteOffset: 2, as: UInt32.self)
        buffer.baseAddress!.advanced(by: requestHeader).copyMemory(from: key, byteCount: key.count)
        buffer.baseAddress!.advanced(by: requestHeader + key.count).copyMemory(from: value, byteCount: value.count)
        return length
    }

    /// A decoded request, copied out of the lane.
    public struct Request: Sendable, Equatable {
        public var op: Op
        public var key: [UInt8]
        public var value: [UInt8]
    }

    /// Decodes a request; nil when it is malformed.
    public static func decode(request bytes: UnsafeRawBufferPointer) -> Request? {
        // Copy first: the guest could change the bytes while we read them.
        let copy = [UInt8](bytes)
        guard copy.count >= requestHeader, let op = Op(rawValue: copy[0]) else { return nil }
        let keyLength = Int(copy[1])
        let valueLength = Int(UInt32(copy[2]) | UInt32(copy[3]) << 8 | UInt32(copy[4]) << 16 | UInt32(copy[5]) << 24)
        guard keyLength >= 1, copy.count == requestHeader + keyLength + valueLength else { return nil }
        guard op == .put || valueLength == 0 else { return nil }
        let key = Array(copy[requestHeader..<requestHeader + keyLength])
        return Request(op: op, key: key, value: Array(copy[(requestHeader + keyLength)...]))
    }

    /// Writes a response into `buffer` and returns its length (the value is cut to fit).
    public static func encode(status: Status, value: [UInt8] = [], into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard buffer.count >= responseHeader else { return -1 }
        let count = min(value.count, buffer.count - responseHeader)
        buffer[0] = status.rawValue
        buffer.storeBytes(of: UInt32(count).littleEndian, toByteOffset: 1, as: UInt32.self)
        buffer.baseAddress!.advanced(by: responseHeader).copyMemory(from: value, byteCount: count)
        return responseHeader + count
    }

    /// Decodes a response: the status and the value, or nil when it is malformed.
    public static func decode(response bytes: UnsafeRawBufferPointer) -> (Status, [UInt8])? {
        guard bytes.count >= responseHeader, let status = Status(rawValue: bytes[0]) else { return nil }
        let length = Int(bytes.loadUnaligned(fromByteOffset: 1, as: UInt32.self).littleEndian)
        guard bytes.count == responseHeader + length else { return nil }
        return (status, Array(bytes[responseHeader...]))
    }
}
