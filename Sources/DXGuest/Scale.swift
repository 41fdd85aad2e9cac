import ArgumentParser
import CShm
import DXCommandLine
import DXCore
import Foundation
import Histogram

/// `dx-guest scale`: many guest processes against one host at once.
struct Scale: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run many guest processes against one host at once: rate, fairness, latency, attach time, host cost.",
        discussion: """
            Starts --guests processes (this program's scale-guest), each with its own connection and, \
            against a private host, its own region, and --threads threads of checked 64-byte echo calls. \
            They attach, wait until all are ready, run together for --duration, and report. A run of one \
            guest with one thread comes first, in the same invocation, for the ratio. --idle connects the \
            guests and measures the host's CPU while they sit. --kill also kills one extra guest with \
            SIGKILL and measures how long the host takes to free its region.
            """)

    @OptionGroup var target: RegionNameOption
    @OptionGroup var owner: HostOwnerOptions

    @Option(help: "Guest processes (1...1024).")
    var guests: Int = 8

    @Option(help: "Threads per guest process, each on its own lane (1...64).")
    var threads: Int = 1

    @Option(help: "Seconds the guests run (or sit, with --idle).")
    var duration: Double = 3

    @Option(help: "Request size in bytes (the host echoes it back).")
    var payload: Int = 64

    @Flag(help: "Connect the guests and let them sit: measures the host's CPU with idle guests.")
    var idle = false

    @Flag(help: "Also kill one extra guest with SIGKILL and measure how long until the host frees its region.")
    var kill = false

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func validate() throws {
        guard (1...1024).contains(guests) else { throw ValidationError("--guests must be 1...1024") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be 1...64") }
        guard duration > 0, duration <= 3600 else { throw ValidationError("--duration must be in (0, 3600] seconds") }
        guard (1...Layout.maxSlotCapacity).contains(payload) else { throw ValidationError("--payload is out of range") }
    }

    func run() throws {
        let socket = owner.control ?? ControlPath.socket(for: target.name)
        func hostStats() -> StatsReply? {
            guard var client = try? ControlClient(path: socket, hostUID: owner.hostUID, timeoutNanoseconds: 2_000_000_000),
                  let line = try? client.request(#"{"v":1,"cmd":"stats"}"#) else { return nil }
            return try? JSONDecoder().decode(StatsReply.self, from: Data(line.utf8))
        }

        // One guest, one thread: the same run's reference rate (not for --idle).
        var singleThreads: Int?
        var singleRate = 0.0
        if !idle {
            let single = try ScaleGroup(count: 1, arguments: guestArguments(threads: 1, idle: false))
            singleThreads = hostStats()?.process.threads
            singleRate = try single.run().first.map { $0.opsPerSecond } ?? 0
        }

        // Then all of them.
        let group = try ScaleGroup(count: guests, arguments: guestArguments(threads: threads, idle: idle))
        // The host's CPU counts from when every guest is connected and told to go, until the end.
        var before: StatsReply?, during: StatsReply?
        var t0: UInt64 = 0
        let reports = try group.run(midway: {
            before = hostStats()
            t0 = CShm_monotonic_ns()
            during = hostStats()
        })
        let elapsed = Double(CShm_monotonic_ns() - t0) / 1e9
        let after = hostStats()

        var killFreeMilliseconds: Double?
        if kill { killFreeMilliseconds = try measureKill(hostStats: hostStats) }

        var latency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000_000,
                                        numberOfSignificantValueDigits: .two)
        for report in reports {
            for pair in report.latency where pair.count == 2 {
                _ = latency.record(min(pair[0], 600_000_000_000), count: pair[1])
            }
        }
        let guestOps = reports.map { $0.ops.reduce(0, +) }
        let laneOps = reports.flatMap(\.ops)
        let attach = reports.map(\.attachNanoseconds).sorted()
        let coldAttach = reports.map(\.coldAttachNanoseconds).sorted()
        func quantile(_ values: [UInt64], _ q: Double) -> UInt64 {
            values.isEmpty ? 0 : values[min(values.count - 1, Int((Double(values.count - 1) * q).rounded(.up)))]
        }
        let hostCPU: Double? = {
            guard let before, let after, elapsed > 0 else { return nil }
            return (after.process.cpu_s - before.process.cpu_s) / elapsed * 100
        }()
        let totalOps = reports.reduce(0.0) { $0 + $1.opsPerSecond }
        let result = ScaleResult(
            guests: guests, threads: threads, idle: idle, ops_per_sec: totalOps, single_ops_per_sec: singleRate,
            ratio: singleRate > 0 ? totalOps / singleRate : 0,
            guest_min_ops: guestOps.min() ?? 0, guest_max_ops: guestOps.max() ?? 0,
            lane_min_ops: laneOps.min() ?? 0, lane_max_ops: laneOps.max() ?? 0,
            p50_ns: idle ? 0 : latency.valueAtPercentile(50), p999_ns: idle ? 0 : latency.valueAtPercentile(99.9),
            max_ns: idle ? 0 : latency.max,
            attach_p50_ns: quantile(attach, 0.5), attach_p99_ns: quantile(attach, 0.99),
            attach_cold_p50_ns: quantile(coldAttach, 0.5), attach_cold_p99_ns: quantile(coldAttach, 0.99),
            host_threads: during?.process.threads ?? -1, host_threads_single: singleThreads ?? -1,
            host_rss_kb: during?.process.rss_kb ?? -1, host_cpu_percent: hostCPU ?? -1,
            host_guests: during?.guests?.count ?? -1,
            errors: reports.reduce(0) { $0 + $1.errors } + UInt64(reports.filter { $0.failure != nil }.count),
            kill_free_ms: killFreeMilliseconds,
            failures: Array(Set(reports.compactMap(\.failure))).sorted())
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(result), as: UTF8.self))
        } else {
            print(result.table)
        }
        if !result.failures.isEmpty || result.errors > 0 {
            throw CommandFailure("\(result.errors) errors; \(result.failures.joined(separator: "; "))", exit: .failure)
        }
    }

    private func guestArguments(threads: Int, idle: Bool) -> [String] {
        var arguments = ["scale-guest", "--name", target.name, "--threads", String(threads), "--duration", String(duration),
                         "--payload", String(payload), "--call-timeout", String(owner.callTimeout)]
        if idle { arguments.append("--idle") }
        if let control = owner.control { arguments += ["--control", control] }
        if let uid = owner.hostUID { arguments += ["--host-uid", String(uid)] }
        return arguments
    }

    /// Starts one more guest, kills it with SIGKILL once connected, and times how long the host
    /// takes to drop it from its guests (its region freed).
    private func measureKill(hostStats: () -> StatsReply?) throws -> Double? {
        let victim = try ScaleGroup(count: 1, arguments: guestArguments(threads: 1, idle: true))
        try victim.waitReady()
        guard let connected = hostStats()?.guests?.count else { return nil }
        // CLOCK_MONOTONIC is the machine's: the host's own time of the free, minus the kill's.
        let start = CShm_monotonic_ns()
        victim.killAll()
        while CShm_monotonic_ns() - start < 5_000_000_000 {
            if let stats = hostStats(), let now = stats.guests?.count, now < connected,
               let freed = stats.last_freed_monotonic_ns, freed >= start {
                return Double(freed - start) / 1e6
            }
        }
        return nil
    }
}

/// What `dx-guest scale --json` prints: the documented fields.
struct ScaleResult: Codable {
    var guests: Int
    var threads: Int
    var idle: Bool
    var ops_per_sec: Double
    var single_ops_per_sec: Double
    var ratio: Double
    var guest_min_ops: UInt64
    var guest_max_ops: UInt64
    var lane_min_ops: UInt64
    var lane_max_ops: UInt64
    var p50_ns: UInt64
    var p999_ns: UInt64
    var max_ns: UInt64
    /// Attach latency: a process's second attach (what attaching costs) and its first (with the
    /// process's own start-up).
    var attach_p50_ns: UInt64
    var attach_p99_ns: UInt64
    var attach_cold_p50_ns: UInt64
    var attach_cold_p99_ns: UInt64
    var host_threads: Int
    var host_threads_single: Int
    var host_rss_kb: Int64
    var host_cpu_percent: Double
    var host_guests: Int
    var errors: UInt64
    var kill_free_ms: Double?
    var failures: [String]

    var table: String {
        func share(_ a: UInt64, _ b: UInt64) -> String { b > 0 ? format(Double(a) / Double(b), 2) : "-" }
        var rows: [[String]] = [
            ["guests × threads", "\(guests) × \(threads)\(idle ? " (idle)" : "")"],
            ["round trips/s", format(ops_per_sec, 0)],
            ["1 × 1 round trips/s (same run)", format(single_ops_per_sec, 0)],
            ["vs 1 × 1", format(ratio, 2)],
            ["slowest/fastest guest", share(guest_min_ops, guest_max_ops)],
            ["slowest/fastest lane", share(lane_min_ops, lane_max_ops)],
            ["call p50 / p99.9 / max µs", "\(format(Double(p50_ns) / 1000, 2)) / \(format(Double(p999_ns) / 1000, 1)) / \(format(Double(max_ns) / 1000, 1))"],
            ["attach p50 / p99 µs", "\(format(Double(attach_p50_ns) / 1000, 1)) / \(format(Double(attach_p99_ns) / 1000, 1))"],
            ["first attach of a process p50 / p99 µs", "\(format(Double(attach_cold_p50_ns) / 1000, 1)) / \(format(Double(attach_cold_p99_ns) / 1000, 1))"],
            ["host threads (1 guest / all)", "\(host_threads_single) / \(host_threads)"],
            ["host RSS KiB", "\(host_rss_kb)"],
            ["host CPU %", format(host_cpu_percent, 1)],
            ["errors", "\(errors)"],
        ]
        if let kill_free_ms { rows.append(["killed guest freed after ms", format(kill_free_ms, 2)]) }
        return TextTable.render(["", ""], rows)
    }
}

/// One guest process's report (`scale-guest`'s last line).
struct ScaleGuestReport: Codable {
    var attachNanoseconds: UInt64 = 0
    var coldAttachNanoseconds: UInt64 = 0
    /// Round trips per lane.
    var ops: [UInt64] = []
    var errors: UInt64 = 0
    var failure: String?
    var durationSeconds: Double = 0
    /// Call latencies: [nanoseconds, count] pairs.
    var latency: [[UInt64]] = []

    var opsPerSecond: Double { durationSeconds > 0 ? Double(ops.reduce(0, +)) / durationSeconds : 0 }
}

/// The guest processes of one scale run, and the line protocol with them: each prints a ready
/// line after attaching, waits for `go` on its standard input, runs (or sits until its input
/// ends), and prints its report.
final class ScaleGroup {
    private var processes: [Process] = []
    private var inputs: [FileHandle] = []
    private var outputs: [LineReader] = []
    private(set) var attach: [UInt64] = []
    private(set) var coldAttach: [UInt64] = []

    init(count: Int, arguments: [String]) throws {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0].contains("/")
            ? CommandLine.arguments[0] : "/proc/self/exe").resolvingSymlinksInPath()
        for _ in 0..<count {
            let process = Process()
            process.executableURL = executable
            process.arguments = arguments
            let input = Pipe(), output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            try process.run()
            processes.append(process)
            inputs.append(input.fileHandleForWriting)
            outputs.append(LineReader(output.fileHandleForReading))
        }
    }

    deinit { killAll() }

    /// Waits until every guest process has started, then has them attach one at a time, and
    /// waits for each one's ready line.
    func waitReady() throws {
        for reader in outputs {
            guard let line = reader.next(), (try? JSONDecoder().decode(ScaleReady.self, from: Data(line.utf8)))?.started == true else {
                throw CommandFailure("a guest process ended before it started", exit: .failure)
            }
        }
        for (reader, input) in zip(outputs, inputs) {
            input.write(Data("attach\n".utf8))
            guard let line = reader.next() else { throw CommandFailure("a guest process ended before it was ready", exit: .failure) }
            let ready = try JSONDecoder().decode(ScaleReady.self, from: Data(line.utf8))
            guard ready.ready else { throw CommandFailure("a guest could not attach: \(ready.error ?? "?")", exit: .noHost) }
            attach.append(ready.attach_ns ?? 0)
            coldAttach.append(ready.attach_cold_ns ?? 0)
        }
    }

    /// Waits until all are ready, starts them together, calls `midway` while they run, and
    /// collects their reports.
    func run(midway: () -> Void = {}) throws -> [ScaleGuestReport] {
        try waitReady()
        // One window for all. "go": every guest starts its threads, claims their lanes, makes their
        // histograms and says it is armed; then every guest gets the same CLOCK_MONOTONIC start and
        // runs for the duration from it, so that no guest runs alone at the start or the end (that
        // would be counted as unfairness), and no guest's preparation falls in another's window.
        for input in inputs { input.write(Data("go\n".utf8)) }
        for (index, reader) in outputs.enumerated() {
            guard let line = reader.next(), (try? JSONDecoder().decode(ScaleReady.self, from: Data(line.utf8)))?.armed == true else {
                throw CommandFailure("guest process \(index) ended before it was armed", exit: .failure)
            }
        }
        let start = CShm_monotonic_ns() + 20_000_000 + UInt64(inputs.count) * 200_000
        for input in inputs { input.write(Data("start \(start)\n".utf8)) }
        midway()
        // Reports only once every guest is done: putting one together (merging histograms, JSON)
        // would take CPU from guests still in their last calls.
        for (index, reader) in outputs.enumerated() {
            guard let line = reader.next(), (try? JSONDecoder().decode(ScaleReady.self, from: Data(line.utf8)))?.finished == true else {
                throw CommandFailure("guest process \(index) ended before it finished", exit: .failure)
            }
        }
        for input in inputs { input.write(Data("report\n".utf8)) }
        for input in inputs { try? input.close() }
        var reports: [ScaleGuestReport] = []
        for (index, reader) in outputs.enumerated() {
            guard let line = reader.next() else { throw CommandFailure("guest process \(index) ended without a report", exit: .failure) }
            var report = try JSONDecoder().decode(ScaleGuestReport.self, from: Data(line.utf8))
            report.attachNanoseconds = attach[index]
            report.coldAttachNanoseconds = coldAttach[index]
            reports.append(report)
        }
        for process in processes { process.waitUntilExit() }
        processes.removeAll()
        return reports
    }

    func killAll() {
        for process in processes where process.isRunning { kill(process.processIdentifier, SIGKILL) }
        for process in processes { process.waitUntilExit() }
        processes.removeAll()
    }
}

struct ScaleReady: Codable {
    var ready: Bool
    /// The process is up and waits to be told to attach.
    var started: Bool? = nil
    /// Its threads hold their lanes and wait for the start time.
    var armed: Bool? = nil
    /// Its threads are done; it waits to be asked for its report.
    var finished: Bool? = nil
    /// The second attach of the process (what attaching costs), and its first (with start-up).
    var attach_ns: UInt64?
    var attach_cold_ns: UInt64? = nil
    var error: String?
}

/// Lines from a pipe.
final class LineReader {
    private let handle: FileHandle
    private var buffer = Data()

    init(_ handle: FileHandle) { self.handle = handle }

    func next() -> String? {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex...newline)
                return line
            }
            let chunk = handle.availableData
            if chunk.isEmpty { return nil }
            buffer.append(chunk)
        }
    }
}

/// `dx-guest scale-guest`: one guest process of `scale` (not for people: its input and output
/// are `scale`'s line protocol).
struct ScaleGuest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale-guest", abstract: "One guest process of dx-guest scale.", shouldDisplay: false)

    @OptionGroup var target: RegionNameOption
    @OptionGroup var owner: HostOwnerOptions
    @Option var threads: Int = 1
    @Option var duration: Double = 3
    @Option var payload: Int = 64
    @Flag var idle = false

    func run() throws {
        let encoder = JSONEncoder()
        func say<T: Encodable>(_ value: T) {
            print(String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self))
        }
        // Attach twice and keep the second region: the first attach of a process also pays its
        // own start-up (the runtime's first JSON decode, the dynamic linker's first calls), the
        // second only what attaching costs. Both are reported.
        // Attach when told (scale asks one guest at a time, so that the latency measured is the
        // attach's, not that of a machine busy starting hundreds of processes).
        say(ScaleReady(ready: false, started: true))
        guard readLine() == "attach" else { return }
        var times: [UInt64] = []
        var region: Region?
        for _ in 0..<2 {
            let start = CShm_monotonic_ns()
            do {
                region = nil
                region = try Region.open(name: target.name, lanes: threads, controlPath: owner.control, hostUID: owner.hostUID)
            } catch {
                say(ScaleReady(ready: false, error: "\(error)"))
                return
            }
            times.append(CShm_monotonic_ns() - start)
        }
        guard let region else { return }
        say(ScaleReady(ready: true, attach_ns: times[1], attach_cold_ns: times[0]))
        guard readLine() == "go" else { return }
        /// Says it is armed and reads the start time.
        func waitForStart() -> UInt64? {
            say(ScaleReady(ready: true, armed: true))
            guard let line = readLine(), line.hasPrefix("start ") else { return nil }
            return UInt64(line.dropFirst("start ".count))
        }
        /// Says it is done and waits to be asked for its report.
        func waitForEnd() {
            say(ScaleReady(ready: true, finished: true))
            _ = readLine()
        }
        if idle {
            _ = waitForStart()
            // Sit, connected, for the duration: the host's cost of idle guests is measured meanwhile.
            CShm_sleep_ns(UInt64(duration * 1e9))
            waitForEnd()
            say(ScaleGuestReport(ops: [], durationSeconds: duration))
            return
        }
        var run = BenchRun(region: region, mode: .dx, threads: threads, payload: payload,
                           durationNanoseconds: UInt64(duration * 1e9), strategy: .auto)
        run.callTimeoutNanoseconds = owner.callTimeoutNanoseconds
        let result = try run.run(waitForStart: waitForStart, waitForEnd: waitForEnd)
        var report = ScaleGuestReport(ops: result.laneOps, errors: result.errors, failure: result.failure,
                                      durationSeconds: result.durationSeconds)
        let clock = BenchClock.shared
        for value in result.histogram?.recordedValues() ?? Histogram<UInt64>().recordedValues() {
            report.latency.append([clock.nanoseconds(value.value), UInt64(value.count)])
        }
        say(report)
    }
}
