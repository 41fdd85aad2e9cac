import ArgumentParser
import DXCommandLine
import DXCore

/// What a dx run is compared with, over a raw channel of the host (`dx-host --raw`).
enum Baseline: String, ExpressibleByArgument, CaseIterable {
    /// The bare exchange, timed per call as dx is.
    case raw
    /// The bare exchange, untimed: the hardware's limit for one lane (dx's store kinds, every
    /// response checked, no library and no per-call clock).
    case floor

    var mode: BenchMode { self == .raw ? .raw : .floor }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure round trips per second, latency and fairness at each thread count.",
        discussion: """
            Each thread claims its own lane and makes round trips with unique, checked payloads. \
            With --baseline floor (or raw), a bare exchange between the same two processes runs \
            before each dx run, and the table shows dx as a ratio of it: floor has no per-call \
            clock, so it is the hardware's limit; raw is timed like dx. Calls are timed with the \
            CPU's counter where it is steady (else clock_gettime); --no-latency times none.
            """)

    /// Thread counts 1, 4 and 8 by default, 3 s each.
    enum Defaults: LoadDefaults {
        static let threads = [1, 4, 8]
        static let threadLists = true
        static let duration = 3.0
        static let longestDuration = 3600.0
        static let durationHelp = "Seconds per run."
    }

    @OptionGroup var load: LoadOptions<Defaults>

    @OptionGroup var owner: HostOwnerOptions

    @Option(help: "Request size in bytes (the host echoes it back).")
    var payload: Int = 64

    @Option(help: "Runs per thread count; dx and raw alternate, and the table shows the median.")
    var `repeat`: Int = 1

    @Option(help: "Also measure a baseline over the host's raw channels (dx-host --raw): floor (the bare exchange, untimed: the hardware's limit) or raw (the same, timed per call).")
    var baseline: Baseline?

    @Flag(name: .customLong("no-latency"), help: "Do not time calls (pure throughput; the latency columns stay empty).")
    var noLatency = false

    @Option(name: .customLong("latency-sample"),
            help: "Time one call in N (a power of two, 1...1024), chosen at random (default 1: every call, so max is the worst call; 16 gives the same percentiles at a sixteenth of the clock's cost, BENCHMARKS.md).")
    var latencySample: UInt32 = 1

    @Flag(name: .customLong("baseline-only"), help: "Measure only the baseline (for sweeps that run dx against another host).")
    var baselineOnly = false

    @Option(help: "Stop each thread after this many calls instead of after --duration.")
    var calls: UInt64?

    @Flag(name: .customLong("vary-payload"), help: "Cycle request sizes from 0 up to --payload (edges and random sizes).")
    var varyPayload = false

    @Option(help: "After the runs, stay idle this many seconds with a lane claimed, then report the CPU both processes used meanwhile and the latency of the first call after.")
    var idle: Double?


    @Flag(name: .customLong("no-counters"), help: "Do not update the lanes' guest counters (to measure what they cost).")
    var noCounters = false

    @Option(help: "Pin benchmark thread t to the t-th CPU of this list (like 0 or 0-1); experiments only.",
            transform: parseCPUList)
    var pin: [Int]?

    @Flag(help: "Print one JSON object per run instead of the table.")
    var json = false

    @OptionGroup var wait: WaitOptions

    /// The host's counters through its control socket, or nil when it has none.
    func hostView() -> StatsReply? {
        guard var client = try? ControlClient(path: owner.control ?? ControlPath.socket(for: load.name), hostUID: owner.hostUID, timeoutNanoseconds: 1_000_000_000)
        else { return nil }
        return try? client.call(ControlCommand("stats"), as: StatsReply.self)
    }

    func validate() throws {
        guard payload >= 0, payload <= Layout.maxSlotCapacity else {
            throw ValidationError("--payload must be between 0 and \(Layout.maxSlotCapacity) bytes")
        }
        guard (1...100).contains(`repeat`) else { throw ValidationError("--repeat must be between 1 and 100") }
        if let calls { guard calls >= 1 else { throw ValidationError("--calls must be at least 1") } }
        if let idle { guard idle > 0, idle <= 3600 else { throw ValidationError("--idle must be in (0, 3600] seconds") } }
        guard (1...1024).contains(latencySample), latencySample & (latencySample - 1) == 0 else {
            throw ValidationError("--latency-sample must be a power of two from 1 to 1024, not \(latencySample)")
        }
        if baselineOnly, baseline == nil { throw ValidationError("--baseline-only needs --baseline floor or raw") }
    }

    func run() throws {
        Interrupt.install()
        let strategy = try wait.strategy
        let region = try attach(name: load.name, owner: owner, lanes: load.threads.max() ?? 1)
        guard payload <= region.slotCapacity else {
            throw CommandFailure("--payload \(payload) is larger than the host's slot size \(region.slotCapacity)",
                                 exit: .usage)
        }
        guard region.handler == .echo || region.handler == .checksum else {
            throw CommandFailure("bench needs a host serving the echo or checksum handler", exit: .usage)
        }
        var results: [BenchResult] = []
        func measure(_ mode: BenchMode, _ count: Int, round: Int) throws -> BenchResult {
            var run = BenchRun(region: region, mode: mode, threads: count, payload: payload,
                               durationNanoseconds: load.durationNanoseconds, strategy: strategy)
            run.callsPerThread = calls
            run.varyPayload = varyPayload
            run.counting = !noCounters
            run.cpus = pin ?? []
            run.timed = !noLatency
            run.sampleEvery = latencySample
            let before = mode == .dx ? hostView() : nil
            var result = try run.run()
            result.round = round
            if let before, let after = hostView(), after.uptime_s > before.uptime_s {
                let seconds = after.uptime_s - before.uptime_s
                result.hostOpsPerSecond = Double(after.round_trips &- before.round_trips) / seconds
                result.hostSleepsPerSecond = Double(after.sleeps &- before.sleeps) / seconds
                result.hostWakesPerSecond = Double(after.wakes_sent &- before.wakes_sent) / seconds
            }
            results.append(result)
            if json { print(result.json) }
            if let failure = result.failure {
                if !json { print(BenchTable.render(results, repeats: `repeat`, baseline: baseline)) }
                throw CommandFailure("\(mode) run with \(count) threads failed: \(failure)", exit: .verificationFailed)
            }
            if Interrupt.requested {
                if !json { print(BenchTable.render(results, repeats: `repeat`, baseline: baseline)) }
                throw CommandFailure("interrupted; the table shows what was measured so far (the last run is partial)",
                                     exit: .interrupted)
            }
            return result
        }
        // The machine drifts (a VM's CPUs move), so each dx run is compared with the raw runs
        // just before it: raw at the same thread count, then raw at one thread, then dx.
        for count in load.threads {
            for _ in 0..<`repeat` {
                var rawSame: BenchResult?, rawOne: BenchResult?
                if let baseline {
                    rawSame = try measure(baseline.mode, count, round: count)
                    rawOne = count == 1 ? rawSame : try measure(baseline.mode, 1, round: count)
                }
                if baselineOnly { continue }
                var dx = try measure(.dx, count, round: count)
                dx.pairedRawSameThreads = rawSame?.opsPerSecond
                dx.pairedRawOneThread = rawOne?.opsPerSecond
                results[results.count - 1] = dx
            }
        }
        if !json {
            print(BenchTable.render(results, repeats: `repeat`, baseline: baseline))
            if !noLatency {
                let clock = BenchClock.shared
                print("latency: 1 call in \(latencySample) timed (chosen at random) with \(clock.name); timing costs ≈ "
                      + "\(format(clock.costNanoseconds, 1)) ns per timed call (two reads and a record), ≈ "
                      + "\(format(clock.costNanoseconds / Double(latencySample), 1)) ns per call on average, included in dx's runs")
            }
        }
        if let idle {
            let report = try IdleCheck(region: region, strategy: strategy, seconds: idle).run()
            print(json ? report.json : report.text)
        }
        let errors = results.reduce(0) { $0 + $1.errors }
        if errors > 0 {
            throw CommandFailure("\(errors) responses did not match their requests", exit: .verificationFailed)
        }
    }
}
