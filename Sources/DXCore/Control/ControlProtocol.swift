import FoundationEssentials

/// The control protocol: one JSON object per line, each with `"v": 1` (see docs/CONTROL.md).
public enum ControlProtocol {
    public static let version = 1
    /// The longest request line the host reads; a longer one gets an error and the connection closes.
    public static let maxLineBytes = 64 * 1024
}

/// A request, as decoded from one line.
struct ControlRequest: Decodable {
    var v: Int
    var cmd: String
    /// `watch`: how often to send a line.
    var interval_ms: Int?
    /// `config`: the changes to make; absent to only read the configuration.
    var set: WaitStrategyChange?
}

/// The wait strategy, as the protocol shows it.
public struct StrategyFields: Codable, Equatable, Sendable {
    public var spin_min: UInt32
    public var spin_max: UInt32
    public var spin_start: UInt32
    public var yield_every: UInt32
    public var sleep_timeout_ms: UInt64
    public var relax: Bool

    public init(_ strategy: WaitStrategy) {
        spin_min = strategy.minSpins
        spin_max = strategy.maxSpins
        spin_start = strategy.startSpins
        yield_every = strategy.yieldEvery
        sleep_timeout_ms = strategy.sleepTimeoutNanoseconds / 1_000_000
        relax = strategy.relax
    }
}

public struct ErrorReply: Codable, Sendable {
    public var v = ControlProtocol.version
    public var ok = false
    public var cmd: String?
    public var error: String
}

public struct LaneFields: Codable, Sendable {
    public var lane: Int
    public var owner_pid: Int32
    public var state: String
    public var round_trips: UInt64
    public var ops_per_sec: Double
    public var last_activity_s: Double?
    public var guest_calls: UInt64
    public var spin_wins: UInt64
    public var yields: UInt64
    public var sleeps: UInt64
    public var doorbells: UInt64
    public var wakes_sent: UInt64
    public var wakes_skipped: UInt64
    public var turn_waits: UInt64
    public var errors: UInt64
}

public struct WorkerFields: Codable, Sendable {
    public var worker: Int
    public var spin_wins: UInt64
    public var yields: UInt64
    public var sleeps: UInt64
}

public struct StatsReply: Codable, Sendable {
    public var v = ControlProtocol.version
    public var ok = true
    public var cmd = "stats"
    public var name: String
    public var host_pid: Int32
    public var uptime_s: Double
    public var round_trips: UInt64
    public var ops_per_sec_last: Double
    public var ops_per_sec_avg: Double
    public var lanes_claimed: Int
    public var sleeps: UInt64
    public var wakes_sent: UInt64
    public var errors: UInt64
    public var reclaimed_lanes: UInt64
    public var wait: StrategyFields
    public var lanes: [LaneFields]
    public var workers: [WorkerFields]
}

public struct LanesReply: Codable, Sendable {
    public var v = ControlProtocol.version
    public var ok = true
    public var cmd = "lanes"
    public var lanes: [LaneFields]
}

public struct ConfigReply: Codable, Sendable {
    public var v = ControlProtocol.version
    public var ok = true
    public var cmd = "config"
    public var changed: Bool
    public var wait: StrategyFields
    public var lanes: Int
    public var slot_size: Int
    public var workers: Int
}

public struct WatchLine: Codable, Sendable {
    public var v = ControlProtocol.version
    public var ok = true
    public var cmd = "watch"
    public var uptime_s: Double
    public var ops_per_sec: Double
    public var lane_min_ops_per_sec: Double
    public var lane_max_ops_per_sec: Double
    public var sleeps_per_sec: Double
    public var wakes_per_sec: Double
}

public struct MetricsReply: Codable, Sendable {
    public var v = ControlProtocol.version
    public var ok = true
    public var cmd = "metrics"
    public var text: String
}

public struct ShutdownReply: Codable, Sendable {
    public var v = ControlProtocol.version
    public var ok = true
    public var cmd = "shutdown"
}

/// A request as a client sends it.
public struct ControlCommand: Encodable, Sendable {
    public var v = ControlProtocol.version
    public var cmd: String
    public var interval_ms: Int?
    public var set: WaitStrategyChange?

    public init(_ cmd: String, intervalMilliseconds: Int? = nil, set: WaitStrategyChange? = nil) {
        self.cmd = cmd
        self.interval_ms = intervalMilliseconds
        self.set = set
    }

    /// The request line, without its newline.
    public var line: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}

extension ControlClient {
    /// Decodes one reply line, turning `"ok": false` into ``ControlError/refused(_:)``.
    public static func decode<Reply: Decodable>(_ line: String, as type: Reply.Type) throws(ControlError) -> Reply {
        let data = Data(line.utf8)
        if let failure = try? JSONDecoder().decode(ErrorReply.self, from: data), !failure.ok {
            throw .refused(failure.error)
        }
        do {
            return try JSONDecoder().decode(Reply.self, from: data)
        } catch {
            throw .badAnswer(String(line.prefix(200)))
        }
    }

    /// Sends a command and decodes its reply.
    public mutating func call<Reply: Decodable>(_ command: ControlCommand, as type: Reply.Type) throws(ControlError) -> Reply {
        try ControlClient.decode(try request(command.line), as: type)
    }
}

