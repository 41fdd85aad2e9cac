import FoundationEssentials

/// The control protocol: one JSON object per line, each with `"v": 1` (see docs/CONTROL.md).
public enum ControlProtocol {
    /// The protocol version every line carries as `"v"`.
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
    var set: SpinPolicyChange?
    /// `region` (private hosts): the lanes the guest asks for; absent for the host's default.
    var lanes: Int?
}

/// On the wire, a spin policy is `{"spin_min": …, "spin_max": …, "spin_start": …, "yield_every": …,
/// "sleep_timeout_ms": …, "relax": …}`: the same names as the Swift properties and the flags, in
/// snake case (the sleep timeout in milliseconds).
extension SpinPolicy: Codable {
    enum CodingKeys: String, CodingKey {
        case spinMin = "spin_min", spinMax = "spin_max", spinStart = "spin_start", yieldEvery = "yield_every"
        case sleepTimeoutMilliseconds = "sleep_timeout_ms", relax
    }

    /// Decodes the wire form (milliseconds for the sleep timeout).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(spinMin: try container.decode(UInt32.self, forKey: .spinMin),
                  spinMax: try container.decode(UInt32.self, forKey: .spinMax),
                  spinStart: try container.decode(UInt32.self, forKey: .spinStart),
                  yieldEvery: try container.decode(UInt32.self, forKey: .yieldEvery),
                  sleepTimeoutNanoseconds: try container.decode(UInt64.self, forKey: .sleepTimeoutMilliseconds) &* 1_000_000,
                  relax: try container.decode(Bool.self, forKey: .relax))
    }

    /// Encodes the wire form.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(spinMin, forKey: .spinMin)
        try container.encode(spinMax, forKey: .spinMax)
        try container.encode(spinStart, forKey: .spinStart)
        try container.encode(yieldEvery, forKey: .yieldEvery)
        try container.encode(sleepTimeoutNanoseconds / 1_000_000, forKey: .sleepTimeoutMilliseconds)
        try container.encode(relax, forKey: .relax)
    }
}

/// A `config` request's changes to the workers' spin policy, as people give them: a preset first
/// (`"wait"`), then any single value on top; every field optional.
public struct SpinPolicyChange: Codable, Sendable, Equatable {
    /// A preset to start from.
    public var preset: String?
    /// A new ``SpinPolicy/spinMin``.
    public var spinMin: UInt32?
    /// A new ``SpinPolicy/spinMax``.
    public var spinMax: UInt32?
    /// A new ``SpinPolicy/spinStart``.
    public var spinStart: UInt32?
    /// A new ``SpinPolicy/yieldEvery``.
    public var yieldEvery: UInt32?
    /// A new sleep timeout, in milliseconds.
    public var sleepTimeoutMilliseconds: UInt64?

    enum CodingKeys: String, CodingKey {
        case preset = "wait", spinMin = "spin_min", spinMax = "spin_max", spinStart = "spin_start"
        case yieldEvery = "yield_every", sleepTimeoutMilliseconds = "sleep_timeout_ms"
    }

    /// Changes; nil leaves a value as it is.
    public init(preset: String? = nil, spinMin: UInt32? = nil, spinMax: UInt32? = nil, spinStart: UInt32? = nil,
                yieldEvery: UInt32? = nil, sleepTimeoutMilliseconds: UInt64? = nil) {
        self.preset = preset
        self.spinMin = spinMin
        self.spinMax = spinMax
        self.spinStart = spinStart
        self.yieldEvery = yieldEvery
        self.sleepTimeoutMilliseconds = sleepTimeoutMilliseconds
    }

    /// Whether it changes anything.
    public var isEmpty: Bool { self == SpinPolicyChange() }

    /// `base` (or the preset's spin policy) with the values changed, validated
    /// (``SpinPolicy/changing(spinMin:spinMax:spinStart:yieldEvery:sleepTimeoutMilliseconds:relax:)``).
    public func applied(to base: SpinPolicy) throws(WaitStrategyError) -> SpinPolicy {
        let start = try preset.map { name throws(WaitStrategyError) in try WaitStrategy.preset(named: name).spinPolicy } ?? base
        return try start.changing(spinMin: spinMin, spinMax: spinMax, spinStart: spinStart, yieldEvery: yieldEvery,
                                  sleepTimeoutMilliseconds: sleepTimeoutMilliseconds)
    }
}

/// The reply to a request that failed: `"ok": false` and a sentence.
public struct ErrorReply: Codable, Sendable {
    /// The protocol version (``ControlProtocol/version``).
    public var v = ControlProtocol.version
    /// Always false.
    public var ok = false
    /// The command that failed, when the request named one.
    public var cmd: String?
    /// What went wrong, in a sentence.
    public var error: String
}

/// One lane in `stats` and `lanes` replies. Guest-reported values are shown, never trusted.
public struct LaneFields: Codable, Sendable {
    /// The lane's index.
    public var lane: Int
    /// The owning guest's pid; 0 when free.
    public var owner_pid: Int32
    /// `"free"`, `"claimed"`, or `"owner-gone"` (the owner died; the host reclaims it).
    public var state: String
    /// Round trips the host answered (counted in host memory).
    public var round_trips: UInt64
    /// Round trips per second over the last window.
    public var ops_per_sec: Double
    /// Seconds since the lane's last round trip; absent before the first.
    public var last_activity_s: Double?
    /// Calls, as the guest counted them.
    public var guest_calls: UInt64
    /// Waits that ended while spinning.
    public var spin_wins: UInt64
    /// `sched_yield` calls made while waiting.
    public var yields: UInt64
    /// Waits that ended in a sleep.
    public var sleeps: UInt64
    /// Times the guest woke the serving worker (guest-reported).
    public var doorbells: UInt64
    /// Sleeping guests the host woke.
    public var wakes_sent: UInt64
    /// Responses published while the guest was awake, so no wake-up was needed.
    public var wakes_skipped: UInt64
    /// Times the guest slept waiting for its turn (guest-reported).
    public var turn_waits: UInt64
    /// Requests answered with an error status.
    public var errors: UInt64
}

/// One serving worker in a `stats` reply.
public struct WorkerFields: Codable, Sendable {
    /// The worker's index.
    public var worker: Int
    /// Waits that ended while spinning.
    public var spin_wins: UInt64
    /// `sched_yield` calls made while waiting.
    public var yields: UInt64
    /// Waits that ended in a sleep.
    public var sleeps: UInt64
    /// Requests handed to async handler tasks (absent with a synchronous handler).
    public var async_started: UInt64? = nil
    /// Async handler tasks whose outcome the worker took back.
    public var async_finished: UInt64? = nil
    /// Async handler outcomes that did not reach their request's guest (the lane had moved on, or
    /// the host stopped first).
    public var async_dropped: UInt64? = nil
}

/// The reply to `stats`.
public struct StatsReply: Codable, Sendable {
    /// The protocol version (``ControlProtocol/version``).
    public var v = ControlProtocol.version
    /// Always true: failures are ``ErrorReply``s.
    public var ok = true
    /// The command answered.
    public var cmd = "stats"
    /// The region name.
    public var name: String
    /// The host's pid.
    public var host_pid: Int32
    /// Seconds since the host started serving.
    public var uptime_s: Double
    /// Round trips the host answered (counted in host memory).
    public var round_trips: UInt64
    /// Round trips per second over the last second.
    public var ops_per_sec_last: Double
    /// Round trips per second since the start.
    public var ops_per_sec_avg: Double
    /// Lanes with a live owner.
    public var lanes_claimed: Int
    /// Waits that ended in a sleep.
    public var sleeps: UInt64
    /// Sleeping guests the host woke.
    public var wakes_sent: UInt64
    /// Requests answered with an error status.
    public var errors: UInt64
    /// Lanes taken back from guests that died.
    public var reclaimed_lanes: UInt64
    /// Control connections closed because they let too much output pile up, or sat idle.
    public var control_dropped: Int
    /// The serving workers' spin policy.
    public var wait: SpinPolicy
    /// Every lane (a private host: a row per connected guest, summed over its lanes).
    public var lanes: [LaneFields]
    /// Every serving worker.
    public var workers: [WorkerFields]
    /// `"named"` (one region under the host's name) or `"private"` (a region per guest).
    public var mode: String
    /// The host process: every thread (io_uring and runtime threads included), memory, descriptors, CPU.
    public var process: ProcessFields
    /// A private host's connected guests and their regions (absent for a named host).
    public var guests: [GuestFields]?
    /// A private host: regions freed since it started.
    public var regions_freed: UInt64?
    /// A private host: when the last region was freed (CLOCK_MONOTONIC ns, which every process of
    /// the machine shares).
    public var last_freed_monotonic_ns: UInt64?
}

/// The host process as the kernel counts it (/proc/self).
public struct ProcessFields: Codable, Sendable {
    /// Every thread of the process.
    public var threads: Int
    /// Resident memory, KiB.
    public var rss_kb: Int64
    /// Open file descriptors.
    public var open_fds: Int
    /// User plus system CPU time since the process started, seconds.
    public var cpu_s: Double
}

/// One guest of a private host in `stats`.
public struct GuestFields: Codable, Sendable {
    /// The host's number for the guest.
    public var guest: Int
    /// The guest's pid and uid (`SO_PEERCRED` at connect).
    public var pid: Int32
    /// The guest's uid (`SO_PEERCRED` at connect).
    public var uid: UInt32
    /// Its region: lanes and bytes.
    public var lanes: Int
    /// Its region's size in bytes.
    public var bytes: Int
    /// The pool worker that serves it.
    public var worker: Int
    /// Round trips answered, and per second over the last window.
    public var round_trips: UInt64
    /// Round trips per second over the last window.
    public var ops_per_sec: Double
}

/// The reply to `lanes`.
public struct LanesReply: Codable, Sendable {
    /// The protocol version (``ControlProtocol/version``).
    public var v = ControlProtocol.version
    /// Always true: failures are ``ErrorReply``s.
    public var ok = true
    /// The command answered.
    public var cmd = "lanes"
    /// Every lane.
    public var lanes: [LaneFields]
}

/// The reply to `config`: the configuration after any change.
public struct ConfigReply: Codable, Sendable {
    /// The protocol version (``ControlProtocol/version``).
    public var v = ControlProtocol.version
    /// Always true: failures are ``ErrorReply``s.
    public var ok = true
    /// The command answered.
    public var cmd = "config"
    /// Whether the request changed the wait strategy.
    public var changed: Bool
    /// The serving workers' spin policy.
    public var wait: SpinPolicy
    /// The region's lane count.
    public var lanes: Int
    /// The largest request or response, in bytes.
    public var slot_size: Int
    /// The number of serving workers.
    public var workers: Int
}

/// One line of a `watch` stream.
public struct WatchLine: Codable, Sendable {
    /// The protocol version (``ControlProtocol/version``).
    public var v = ControlProtocol.version
    /// Always true: failures are ``ErrorReply``s.
    public var ok = true
    /// The command answered.
    public var cmd = "watch"
    /// Seconds since the host started serving.
    public var uptime_s: Double
    /// Round trips per second over the last window.
    public var ops_per_sec: Double
    /// The slowest claimed lane's round trips per second.
    public var lane_min_ops_per_sec: Double
    /// The fastest claimed lane's round trips per second.
    public var lane_max_ops_per_sec: Double
    /// Worker sleeps per second.
    public var sleeps_per_sec: Double
    /// Guest wake-ups sent per second.
    public var wakes_per_sec: Double
}

/// The reply to `metrics`.
public struct MetricsReply: Codable, Sendable {
    /// The protocol version (``ControlProtocol/version``).
    public var v = ControlProtocol.version
    /// Always true: failures are ``ErrorReply``s.
    public var ok = true
    /// The command answered.
    public var cmd = "metrics"
    /// The counters in the Prometheus text format.
    public var text: String
}

/// The reply to `shutdown`, sent before the host stops.
public struct ShutdownReply: Codable, Sendable {
    /// The protocol version (``ControlProtocol/version``).
    public var v = ControlProtocol.version
    /// Always true: failures are ``ErrorReply``s.
    public var ok = true
    /// The command answered.
    public var cmd = "shutdown"
}

/// A request as a client sends it.
public struct ControlCommand: Encodable, Sendable {
    /// The protocol version (``ControlProtocol/version``).
    public var v = ControlProtocol.version
    /// The command: `stats`, `lanes`, `config`, `watch`, `metrics` or `shutdown`.
    public var cmd: String
    /// `watch`: milliseconds between lines.
    public var interval_ms: Int?
    /// `config`: the changes to make; nil only reads the configuration.
    public var set: SpinPolicyChange?

    /// A command named `cmd` (`stats`, `lanes`, `config`, `watch`, `metrics`, `shutdown`).
    public init(_ cmd: String, intervalMilliseconds: Int? = nil, set: SpinPolicyChange? = nil) {
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

