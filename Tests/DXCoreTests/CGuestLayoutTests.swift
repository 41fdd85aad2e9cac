import CDXGuest
import DXCore
import Testing
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The C guest's layout constants (Sources/CDXGuest/include/dxlayout.h) against ``Layout``, field by
/// field: changing an offset, size or limit on one side only fails here, and so does a field that
/// one side has and the other lacks.
extension CGuestTests {
    /// One row per field: the C constant's name and value, the Swift field's name (as Layout.swift
    /// spells it) and value.
    struct Pair: CustomTestStringConvertible, Sendable {
        let c: String
        let cValue: UInt64
        let swift: String
        let swiftValue: UInt64
        init(_ c: String, _ cValue: some BinaryInteger, _ swift: String, _ swiftValue: some BinaryInteger) {
            self.c = c
            self.cValue = UInt64(cValue)
            self.swift = swift
            self.swiftValue = UInt64(swiftValue)
        }
        var testDescription: String { "\(c) = \(cValue), \(swift) = \(swiftValue)" }
    }

    static let pairs: [Pair] = [
        // Layout
        Pair("DX_MAGIC", DX_MAGIC, "Layout.magic", Layout.magic),
        Pair("DX_LAYOUT_VERSION", DX_LAYOUT_VERSION, "Layout.version", Layout.version),
        Pair("DX_BLOCK", DX_BLOCK, "Layout.block", Layout.block),
        Pair("DX_HEADER_SIZE", DX_HEADER_SIZE, "Layout.headerSize", Layout.headerSize),
        Pair("DX_MAX_WORKERS", DX_MAX_WORKERS, "Layout.maxWorkers", Layout.maxWorkers),
        Pair("DX_MAX_LANES", DX_MAX_LANES, "Layout.maxLanes", Layout.maxLanes),
        Pair("DX_MAX_SLOT_CAPACITY", DX_MAX_SLOT_CAPACITY, "Layout.maxSlotCapacity", Layout.maxSlotCapacity),
        Pair("DX_MAX_RAW_CHANNELS", DX_MAX_RAW_CHANNELS, "Layout.maxRawChannels", Layout.maxRawChannels),
        // Layout.Header
        Pair("DX_HEADER_MAGIC", DX_HEADER_MAGIC, "Layout.Header.magic", Layout.Header.magic),
        Pair("DX_HEADER_VERSION", DX_HEADER_VERSION, "Layout.Header.version", Layout.Header.version),
        Pair("DX_HEADER_HEADER_SIZE", DX_HEADER_HEADER_SIZE, "Layout.Header.headerSize", Layout.Header.headerSize),
        Pair("DX_HEADER_LANE_STRIDE", DX_HEADER_LANE_STRIDE, "Layout.Header.laneStride", Layout.Header.laneStride),
        Pair("DX_HEADER_LANE_COUNT", DX_HEADER_LANE_COUNT, "Layout.Header.laneCount", Layout.Header.laneCount),
        Pair("DX_HEADER_SLOT_CAPACITY", DX_HEADER_SLOT_CAPACITY, "Layout.Header.slotCapacity", Layout.Header.slotCapacity),
        Pair("DX_HEADER_WORKER_COUNT", DX_HEADER_WORKER_COUNT, "Layout.Header.workerCount", Layout.Header.workerCount),
        Pair("DX_HEADER_REGION_SIZE", DX_HEADER_REGION_SIZE, "Layout.Header.regionSize", Layout.Header.regionSize),
        Pair("DX_HEADER_HOST_PID", DX_HEADER_HOST_PID, "Layout.Header.hostPID", Layout.Header.hostPID),
        Pair("DX_HEADER_HANDLER", DX_HEADER_HANDLER, "Layout.Header.handler", Layout.Header.handler),
        Pair("DX_HEADER_HOST_START_TIME", DX_HEADER_HOST_START_TIME, "Layout.Header.hostStartTime", Layout.Header.hostStartTime),
        Pair("DX_HEADER_EPOCH", DX_HEADER_EPOCH, "Layout.Header.epoch", Layout.Header.epoch),
        Pair("DX_HEADER_STATE", DX_HEADER_STATE, "Layout.Header.state", Layout.Header.state),
        Pair("DX_HEADER_HEARTBEAT", DX_HEADER_HEARTBEAT, "Layout.Header.heartbeat", Layout.Header.heartbeat),
        Pair("DX_HEADER_LANES_OFFSET", DX_HEADER_LANES_OFFSET, "Layout.Header.lanesOffset", Layout.Header.lanesOffset),
        Pair("DX_HEADER_RAW_OFFSET", DX_HEADER_RAW_OFFSET, "Layout.Header.rawOffset", Layout.Header.rawOffset),
        Pair("DX_HEADER_RAW_COUNT", DX_HEADER_RAW_COUNT, "Layout.Header.rawCount", Layout.Header.rawCount),
        Pair("DX_HEADER_DOORBELLS", DX_HEADER_DOORBELLS, "Layout.Header.doorbells", Layout.Header.doorbells),
        Pair("DX_DOORBELL_SLEEPING", DX_DOORBELL_SLEEPING, "Layout.Header.doorbellSleeping", Layout.Header.doorbellSleeping),
        Pair("DX_DOORBELL_WORD", DX_DOORBELL_WORD, "Layout.Header.doorbellWord", Layout.Header.doorbellWord),
        Pair("DX_DOORBELL_WORKER_CPU", DX_DOORBELL_WORKER_CPU, "Layout.Header.doorbellWorkerCPU", Layout.Header.doorbellWorkerCPU),
        Pair("DX_HEADER_GRANT", DX_HEADER_GRANT, "Layout.Header.grant", Layout.Header.grant),
        Pair("DX_HEADER_GRANTS", DX_HEADER_GRANTS, "Layout.Header.grants", Layout.Header.grants),
        Pair("DX_HEADER_GRANT_QUANTUM", DX_HEADER_GRANT_QUANTUM, "Layout.Header.grantQuantum", Layout.Header.grantQuantum),
        Pair("DX_HEADER_GRANT_CYCLE", DX_HEADER_GRANT_CYCLE, "Layout.Header.grantCycle", Layout.Header.grantCycle),
        Pair("DX_HEADER_GRANT_WANT", DX_HEADER_GRANT_WANT, "Layout.Header.grantWant", Layout.Header.grantWant),
        Pair("DX_HEADER_TURNSTILES", DX_HEADER_TURNSTILES, "Layout.Header.turnstiles", Layout.Header.turnstiles),
        Pair("DX_TURNSTILE_STRIDE", DX_TURNSTILE_STRIDE, "Layout.Header.turnstileStride", Layout.Header.turnstileStride),
        Pair("DX_TURN_NEXT", DX_TURN_NEXT, "Layout.Header.turnNext", Layout.Header.turnNext),
        Pair("DX_TURN_SERVING", DX_TURN_SERVING, "Layout.Header.turnServing", Layout.Header.turnServing),
        Pair("DX_TURN_LEASE", DX_TURN_LEASE, "Layout.Header.turnLease", Layout.Header.turnLease),
        Pair("DX_TURN_WAKE_SLOTS", DX_TURN_WAKE_SLOTS, "Layout.Header.turnWakeSlots", Layout.Header.turnWakeSlots),
        Pair("DX_TURN_WAKE_SLOT_COUNT", DX_TURN_WAKE_SLOT_COUNT, "Layout.Header.turnWakeSlotCount", Layout.Header.turnWakeSlotCount),
        // Layout.Counters
        Pair("DX_COUNTER_CALLS", DX_COUNTER_CALLS, "Layout.Counters.guestCalls", Layout.Counters.guestCalls),
        Pair("DX_COUNTER_SPIN_WINS", DX_COUNTER_SPIN_WINS, "Layout.Counters.guestSpinWins", Layout.Counters.guestSpinWins),
        Pair("DX_COUNTER_YIELDS", DX_COUNTER_YIELDS, "Layout.Counters.guestYields", Layout.Counters.guestYields),
        Pair("DX_COUNTER_SLEEPS", DX_COUNTER_SLEEPS, "Layout.Counters.guestSleeps", Layout.Counters.guestSleeps),
        Pair("DX_COUNTER_DOORBELLS", DX_COUNTER_DOORBELLS, "Layout.Counters.guestDoorbells", Layout.Counters.guestDoorbells),
        Pair("DX_COUNTER_ERRORS", DX_COUNTER_ERRORS, "Layout.Counters.guestErrors", Layout.Counters.guestErrors),
        Pair("DX_COUNTER_TURN_WAITS", DX_COUNTER_TURN_WAITS, "Layout.Counters.guestTurnWaits", Layout.Counters.guestTurnWaits),
        // Layout.Lane
        Pair("DX_LANE_REQUEST_SEQ", DX_LANE_REQUEST_SEQ, "Layout.Lane.requestSeq", Layout.Lane.requestSeq),
        Pair("DX_LANE_REQUEST_LENGTH", DX_LANE_REQUEST_LENGTH, "Layout.Lane.requestLength", Layout.Lane.requestLength),
        Pair("DX_LANE_OWNER", DX_LANE_OWNER, "Layout.Lane.owner", Layout.Lane.owner),
        Pair("DX_LANE_RESPONSE_SEQ", DX_LANE_RESPONSE_SEQ, "Layout.Lane.responseSeq", Layout.Lane.responseSeq),
        Pair("DX_LANE_RESPONSE_LENGTH", DX_LANE_RESPONSE_LENGTH, "Layout.Lane.responseLength", Layout.Lane.responseLength),
        Pair("DX_LANE_STATUS", DX_LANE_STATUS, "Layout.Lane.status", Layout.Lane.status),
        Pair("DX_LANE_GUEST_SLEEPING", DX_LANE_GUEST_SLEEPING, "Layout.Lane.guestSleeping", Layout.Lane.guestSleeping),
        Pair("DX_LANE_GUEST_WORD", DX_LANE_GUEST_WORD, "Layout.Lane.guestWord", Layout.Lane.guestWord),
        Pair("DX_LANE_GUEST_COUNTERS", DX_LANE_GUEST_COUNTERS, "Layout.Lane.guestCounters", Layout.Lane.guestCounters),
        Pair("DX_LANE_PAYLOAD", DX_LANE_PAYLOAD, "Layout.Lane.payload", Layout.Lane.payload),
        // Layout.Raw
        Pair("DX_RAW_PING", DX_RAW_PING, "Layout.Raw.ping", Layout.Raw.ping),
        Pair("DX_RAW_LENGTH", DX_RAW_LENGTH, "Layout.Raw.length", Layout.Raw.length),
        Pair("DX_RAW_OWNER", DX_RAW_OWNER, "Layout.Raw.owner", Layout.Raw.owner),
        Pair("DX_RAW_PONG", DX_RAW_PONG, "Layout.Raw.pong", Layout.Raw.pong),
        Pair("DX_RAW_SERVER_SLEEPING", DX_RAW_SERVER_SLEEPING, "Layout.Raw.serverSleeping", Layout.Raw.serverSleeping),
        Pair("DX_RAW_SERVER_WORD", DX_RAW_SERVER_WORD, "Layout.Raw.serverWord", Layout.Raw.serverWord),
        Pair("DX_RAW_PAYLOAD", DX_RAW_PAYLOAD, "Layout.Raw.payload", Layout.Raw.payload),
        // Layout.Locks
        Pair("DX_LOCK_HOST_START", DX_LOCK_HOST_START, "Layout.Locks.host.start", Layout.Locks.host.start),
        Pair("DX_LOCK_HOST_LENGTH", DX_LOCK_HOST_LENGTH, "Layout.Locks.host.length", Layout.Locks.host.length),
        Pair("DX_LOCK_OWNER_LENGTH", DX_LOCK_OWNER_LENGTH, "Layout.Locks.ownerLength", Layout.Locks.ownerLength),
        // HostState, ResponseStatus
        Pair("DX_STATE_INITIALIZING", DX_STATE_INITIALIZING, "HostState.initializing", HostState.initializing.rawValue),
        Pair("DX_STATE_READY", DX_STATE_READY, "HostState.ready", HostState.ready.rawValue),
        Pair("DX_STATE_STOPPING", DX_STATE_STOPPING, "HostState.stopping", HostState.stopping.rawValue),
        Pair("DX_STATUS_OK", DX_STATUS_OK, "ResponseStatus.ok", ResponseStatus.ok.rawValue),
        Pair("DX_STATUS_BAD_LENGTH", DX_STATUS_BAD_LENGTH, "ResponseStatus.badLength", ResponseStatus.badLength.rawValue),
        Pair("DX_STATUS_BAD_SEQUENCE", DX_STATUS_BAD_SEQUENCE, "ResponseStatus.badSequence", ResponseStatus.badSequence.rawValue),
        Pair("DX_STATUS_HANDLER_FAILED", DX_STATUS_HANDLER_FAILED, "ResponseStatus.handlerFailed", ResponseStatus.handlerFailed.rawValue),
        Pair("DX_STATUS_CANCELLED", DX_STATUS_CANCELLED, "ResponseStatus.cancelled", ResponseStatus.cancelled.rawValue),
    ]

    @Test(arguments: pairs)
    func cLayoutConstantEqualsSwiftField(_ pair: Pair) {
        #expect(pair.cValue == pair.swiftValue, "\(pair.c) differs from \(pair.swift)")
    }

    /// Every constant of dxlayout.h has a row, and every field of Layout.swift (and every case of
    /// HostState and ResponseStatus) has one: a field added on one side only fails here.
    @Test func everyLayoutFieldHasACConstant() throws {
        let swiftFields = try Self.fieldsOfLayoutSwift()
        let cConstants = try Self.constantsOfDXLayoutH()
        #expect(swiftFields.count > 60 && cConstants.count > 60)  // the parsers found the tables
        let swiftRows = Set(Self.pairs.map(\.swift)), cRows = Set(Self.pairs.map(\.c))
        #expect(swiftRows.count == Self.pairs.count && cRows.count == Self.pairs.count)  // no row twice
        #expect(swiftFields.subtracting(swiftRows).sorted() == [], "fields of Layout.swift without a C constant")
        #expect(swiftRows.subtracting(swiftFields).sorted() == [], "rows naming no field of Layout.swift")
        #expect(cConstants.subtracting(cRows).sorted() == [], "constants of dxlayout.h compared with nothing")
        #expect(cRows.subtracting(cConstants).sorted() == [], "rows naming no constant of dxlayout.h")
    }

    @Test func cStrideAndRegionSizeFollowLayout() {
        for capacity in [1, 64, 127, 128, 129, 4096, 65_536, Layout.maxSlotCapacity] {
            #expect(dx_lane_stride(UInt64(capacity)) == UInt64(Layout.laneStride(slotCapacity: capacity)))
            for (lanes, raw) in [(1, 0), (8, 2), (Layout.maxLanes, Layout.maxRawChannels)] {
                let swift = Layout.regionSize(laneCount: lanes, slotCapacity: capacity, rawCount: raw)
                #expect(dx_region_size(UInt64(lanes), UInt64(capacity), UInt64(raw)) == UInt64(swift))
            }
        }
    }

    // MARK: - Reading both tables from source

    /// "Layout.Header.magic", "Layout.Locks.host.start", "HostState.ready", ...: every
    /// `public static let` of Layout.swift's enums (a tuple's labels each) and every enum case.
    static func fieldsOfLayoutSwift() throws -> Set<String> {
        var fields = Set<String>()
        var scopes: [(indent: Int, name: String)] = []
        for line in try sourceFile("Sources/DXCore/Region/Layout.swift").split(separator: "\n") {
            let indent = line.prefix { $0 == " " }.count
            let words = line.split(separator: " ")
            if line.dropFirst(indent).hasPrefix("}"), scopes.last?.indent == indent {
                scopes.removeLast()
            } else if words.starts(with: ["public", "enum"]) {
                let name = words[2].prefix { $0.isLetter || $0.isNumber }
                scopes.append((indent, String(name)))
            } else if words.starts(with: ["public", "static", "let"]) || words.first == "case" {
                let name = words[words.first == "case" ? 1 : 3].prefix { $0.isLetter || $0.isNumber }
                let path = (scopes.map(\.name) + [String(name)]).joined(separator: ".")
                let value = line.split(separator: "=", maxSplits: 1).last ?? ""
                if value.contains("(") && value.contains(":") {  // a tuple: one field per label
                    for part in value.split(separator: ",") {
                        let label = part.split(separator: ":")[0].filter { $0.isLetter || $0.isNumber }
                        fields.insert(path + "." + label)
                    }
                } else {
                    fields.insert(path)
                }
            }
        }
        return fields
    }

    /// Every `DX_...` name that dxlayout.h defines (`#define` or enum constant).
    static func constantsOfDXLayoutH() throws -> Set<String> {
        var names = Set<String>()
        for line in try sourceFile("Sources/CDXGuest/include/dxlayout.h").split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "=" || $0 == "," })
            if words.first == "#define", words.count > 2, words[1].hasPrefix("DX_") {
                names.insert(String(words[1]))
            } else if let first = words.first, first.hasPrefix("DX_"), line.contains("=") {
                names.insert(String(first))
            }
        }
        return names
    }

    /// A file of this package, by its path from the package's root (found from this file's path).
    static func sourceFile(_ path: String) throws -> String {
        var root = "\(#filePath)"
        for _ in 0..<3 { root = String(root[..<(root.lastIndex(of: "/") ?? root.startIndex)]) }
        let fullPath = root + "/" + path
        guard let file = fopen(fullPath, "r") else { throw SystemError("fopen \(fullPath)", errno: errno) }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
