import ArgumentParser
import CShm
import DXCommandLine
import DXCore
import Synchronization

/// `dx-guest async`: the async API against the blocking one, and under suspension (issue #15's
/// targets). Every response is checked; a wrong one is an error, and any error fails the command.
struct AsyncBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "async",
        abstract: "Benchmark async calls: against blocking calls, many tasks over a lane pool, or beside a slow lane.",
        discussion: """
        --mode call: one lane, blocking and async calls in alternating runs (64 B echo); the ratio \
        is async / blocking, median of the runs. Any dx-host.
        --mode tasks: --tasks tasks share a LanePool of --lanes lanes for --duration seconds; reports \
        the rate, the pool's width and slowest/fastest task. Against dx-host --handler delay, every \
        call suspends.
        --mode slow-lane: threads on lanes 1..<--lanes call for --duration seconds, alternately with \
        and without a thread making calls on lane 0; reports the others' p99.9 in both phases. \
        Against dx-host --handler delay --delay-lanes 0 --delay-us 10000.
        """)

    enum Mode: String, ExpressibleByArgument, CaseIterable { case call, tasks, slowLane = "slow-lane" }

    @OptionGroup var target: RegionNameOption
    @OptionGroup var owner: HostOwnerOptions
    @Option(help: "call, tasks or slow-lane.") var mode: Mode = .call
    @Option(help: "Seconds per run (call, slow-lane: per phase).") var duration: Double = 1
    @Option(help: "Runs of each kind (call, slow-lane).") var repeats = 5
    @Option(help: "Concurrent tasks (tasks).") var tasks = 1000
    @Option(help: "Lanes: the pool's width (tasks), or lanes used (slow-lane).") var lanes = 8
    @Flag(help: "Print one JSON object.") var json = false
    @Flag(help: "tasks: the pool's lanes take turns (the auto preset) instead of the pool's default (cooperative: no turns).") var turns = false

    var strategy: WaitStrategy { turns ? .auto : .cooperative }

    func validate() throws {
        guard duration > 0, duration <= 600 else { throw ValidationError("--duration must be in (0, 600]") }
        guard (1...1000).contains(repeats) else { throw ValidationError("--repeats must be 1...1000") }
        guard (1...100_000).contains(tasks) else { throw ValidationError("--tasks must be 1...100000") }
        guard (1...1024).contains(lanes) else { throw ValidationError("--lanes must be 1...1024") }
        if mode == .slowLane, lanes < 2 { throw ValidationError("--mode slow-lane needs --lanes 2 or more") }
    }

    func run() throws {
        let region = try attach(name: target.name, owner: owner, lanes: mode == .call ? 1 : lanes)
        let report: String
        switch mode {
        case .call: report = try compareCalls(region)
        case .tasks: report = try runTasks(region)
        case .slowLane: report = try slowLane(region)
        }
        print(report)
    }

    // MARK: call

    func compareCalls(_ region: Region) throws -> String {
        // One lane for both kinds of run, lent to the async runs' task.
        let holder = LaneHolder(lane: try claim(region))
        let nanoseconds = UInt64(duration * 1e9)
        var blocking: [Double] = [], suspending: [Double] = []
        var errors = 0
        for _ in 0..<repeats {
            let sync = Self.blockingRun(&holder.lane, nanoseconds: nanoseconds)
            errors += sync.errors
            blocking.append(sync.rate)
            let async = try waitFor { await Self.asyncRun(holder, nanoseconds: nanoseconds) }
            errors += async.errors
            suspending.append(async.rate)
        }
        let b = median(blocking), a = median(suspending)
        guard errors == 0 else { throw CommandFailure("\(errors) calls failed or were answered wrongly", exit: .callFailed) }
        if json {
            return "{\"mode\":\"call\",\"blocking_ops_per_sec\":\(Int(b)),\"async_ops_per_sec\":\(Int(a)),"
                + "\"ratio\":\(rounded(a / b)),\"runs\":\(repeats),\"errors\":0}"
        }
        return """
        blocking calls  \(millions(b)) M round trips/s (median of \(repeats))
        async calls     \(millions(a)) M round trips/s
        async / blocking \(rounded(a / b))×   (64 B echo, every response checked, 0 errors)
        """
    }

    /// Carries a claimed lane into a task (a lane is `~Copyable`, one user at a time).
    final class LaneHolder: @unchecked Sendable {
        var lane: Lane
        init(lane: consuming Lane) { self.lane = lane }
    }

    func claim(_ region: Region) throws -> Lane {
        do {
            var lane = try region.claimLane(strategy: .auto)
            lane.callTimeoutNanoseconds = owner.callTimeoutNanoseconds
            return lane
        } catch {
            throw CommandFailure("\(error)", exit: .callFailed)
        }
    }

    static func blockingRun(_ lane: inout Lane, nanoseconds: UInt64) -> (rate: Double, errors: Int) {
        var calls: UInt64 = 0, errors = 0
        let start = CShm_monotonic_ns()
        var now = start
        while now &- start < nanoseconds {
            for _ in 0..<256 {
                let value = calls &* 0x9E37_79B9_7F4A_7C15
                let echoed = lane.call(request: { $0.storeBytes(of: value, as: UInt64.self); return 64 },
                                       response: { $0.count == 64 ? $0.loadUnaligned(as: UInt64.self) : ~value })
                if echoed != .success(value) { errors += 1 }
                calls &+= 1
            }
            now = CShm_monotonic_ns()
        }
        return (Double(calls) * 1e9 / Double(now &- start), errors)
    }

    static func asyncRun(_ holder: LaneHolder, nanoseconds: UInt64) async -> (rate: Double, errors: Int) {
        var calls: UInt64 = 0, errors = 0
        let start = CShm_monotonic_ns()
        var now = start
        while now &- start < nanoseconds {
            for _ in 0..<256 {
                let value = calls &* 0x9E37_79B9_7F4A_7C15
                do {
                    let echoed = try await holder.lane.call(
                        request: { $0.storeBytes(of: value, as: UInt64.self); return 64 },
                        response: { $0.count == 64 ? $0.loadUnaligned(as: UInt64.self) : ~value })
                    if echoed != value { errors += 1 }
                } catch {
                    errors += 1
                }
                calls &+= 1
            }
            now = CShm_monotonic_ns()
        }
        return (Double(calls) * 1e9 / Double(now &- start), errors)
    }

    // MARK: tasks

    func runTasks(_ region: Region) throws -> String {
        let pool: LanePool
        do { pool = try LanePool(region: region, width: lanes, strategy: strategy) } catch { throw CommandFailure("\(error)", exit: .callFailed) }
        let taskCount = tasks
        let nanoseconds = UInt64(duration * 1e9)
        let widest = Atomic<Int>(0)
        let outcome = try waitFor { () async -> (counts: [Int], errors: Int, seconds: Double) in
            let start = CShm_monotonic_ns()
            let results = await withTaskGroup(of: (Int, Int).self) { group in
                for task in 0..<taskCount {
                    group.addTask {
                        var done = 0, errors = 0
                        while CShm_monotonic_ns() &- start < nanoseconds {
                            let bytes = withUnsafeBytes(of: (UInt32(task), UInt32(truncatingIfNeeded: done)), Array.init)
                            do {
                                if try await pool.withLane({ try await $0.call(bytes) }) == bytes { done += 1 } else { errors += 1 }
                            } catch {
                                errors += 1
                            }
                        }
                        return (done, errors)
                    }
                }
                // The pool's width while the tasks run (sampled).
                var results: [(Int, Int)] = []
                for await result in group {
                    widest.max(pool.width, ordering: .relaxed)
                    results.append(result)
                }
                return results
            }
            return (results.map(\.0), results.reduce(0) { $0 + $1.1 }, Double(CShm_monotonic_ns() &- start) / 1e9)
        }
        let total = outcome.counts.reduce(0, +)
        let slowest = outcome.counts.min() ?? 0, fastest = outcome.counts.max() ?? 0
        let fairness = fastest == 0 ? 0 : Double(slowest) / Double(fastest)
        guard outcome.errors == 0 else { throw CommandFailure("\(outcome.errors) calls failed or were answered wrongly", exit: .callFailed) }
        guard slowest > 0 else { throw CommandFailure("a task made no call", exit: .callFailed) }
        let rate = Double(total) / outcome.seconds
        if json {
            return "{\"mode\":\"tasks\",\"tasks\":\(taskCount),\"lanes\":\(lanes),\"pool_width\":\(widest.load(ordering: .relaxed)),"
                + "\"ops_per_sec\":\(Int(rate)),\"calls\":\(total),\"task_min_calls\":\(slowest),\"task_max_calls\":\(fastest),"
                + "\"task_fairness\":\(rounded(fairness)),\"errors\":0}"
        }
        return """
        \(taskCount) tasks over a pool of \(lanes) lanes (width seen: \(widest.load(ordering: .relaxed))), \(duration) s
        \(total) calls, \(Int(rate)) round trips/s, every response checked, 0 errors
        slowest/fastest task \(rounded(fairness)) (\(slowest) / \(fastest) calls)
        """
    }

    // MARK: slow-lane

    func slowLane(_ region: Region) throws -> String {
        let others = lanes - 1
        let nanoseconds = UInt64(duration * 1e9)
        var quiet: [Double] = [], beside: [Double] = []
        var slowCalls = 0
        for _ in 0..<repeats {
            for withSlow in [false, true] {
                let phase = try Self.slowLanePhase(region, others: others, withSlow: withSlow, nanoseconds: nanoseconds,
                                                   timeout: owner.callTimeoutNanoseconds)
                if withSlow {
                    beside.append(phase.p999)
                    slowCalls += phase.slowCalls
                } else {
                    quiet.append(phase.p999)
                }
            }
        }
        let q = median(quiet), s = median(beside)
        guard slowCalls > 0 else { throw CommandFailure("lane 0 made no call", exit: .callFailed) }
        if json {
            return "{\"mode\":\"slow-lane\",\"lanes\":\(lanes),\"p999_ns_quiet\":\(Int(q)),\"p999_ns_beside_slow\":\(Int(s)),"
                + "\"slow_lane_calls\":\(slowCalls),\"errors\":0}"
        }
        return """
        lanes 1..<\(lanes), p99.9 per call, median of \(repeats) phases of \(duration) s:
          lane 0 idle           \(rounded(q / 1000)) µs
          lane 0 slow (\(slowCalls) calls) \(rounded(s / 1000)) µs   (ratio \(rounded(s / q)))
        """
    }

    static func slowLanePhase(_ region: Region, others: Int, withSlow: Bool, nanoseconds: UInt64,
                              timeout: UInt64) throws -> (p999: Double, slowCalls: Int) {
        let stop = Atomic<Bool>(false)
        let failures = Atomic<Int>(0)
        let slowCalls = Atomic<Int>(0)
        let samples = Mutex<[UInt64]>([])
        var threads: [DXCore.Thread] = []
        if withSlow {
            threads.append(try DXCore.Thread {
                guard var lane = try? region.claimLane(strategy: .auto, startingAt: 0), lane.index == 0 else {
                    failures.add(1, ordering: .relaxed)
                    return
                }
                lane.callTimeoutNanoseconds = timeout
                while !stop.load(ordering: .relaxed) {
                    if (try? lane.call([0]).get()) == [0] { slowCalls.add(1, ordering: .relaxed) } else { failures.add(1, ordering: .relaxed) }
                }
            })
        }
        for index in 1...others {
            threads.append(try DXCore.Thread {
                guard var lane = try? region.claimLane(strategy: .auto, startingAt: index), lane.index != 0 else {
                    failures.add(1, ordering: .relaxed)
                    return
                }
                lane.callTimeoutNanoseconds = timeout
                var local: [UInt64] = []
                local.reserveCapacity(1 << 20)
                let start = CShm_monotonic_ns()
                var calls: UInt64 = 0
                while CShm_monotonic_ns() &- start < nanoseconds {
                    let value = calls
                    let before = CShm_monotonic_ns()
                    let echoed = lane.call(request: { $0.storeBytes(of: value, as: UInt64.self); return 64 },
                                           response: { $0.count == 64 ? $0.loadUnaligned(as: UInt64.self) : ~value })
                    let after = CShm_monotonic_ns()
                    if echoed != .success(value) { failures.add(1, ordering: .relaxed) }
                    if local.count < 1 << 20 { local.append(after &- before) }
                    calls &+= 1
                }
                samples.withLock { $0.append(contentsOf: local) }
            })
        }
        // Lane 0's thread stops when the others are done.
        for thread in threads.dropFirst(withSlow ? 1 : 0) { thread.join() }
        stop.store(true, ordering: .relaxed)
        threads.first?.join()
        guard failures.load(ordering: .relaxed) == 0 else {
            throw CommandFailure("\(failures.load(ordering: .relaxed)) calls failed, were answered wrongly, or got the wrong lane",
                                 exit: .callFailed)
        }
        let sorted = samples.withLock { $0 }.sorted()
        guard !sorted.isEmpty else { throw CommandFailure("no call was made", exit: .callFailed) }
        return (Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.999))]), slowCalls.load(ordering: .relaxed))
    }
}

/// Runs `body` in a task and blocks this (non-cooperative) thread until it returns.
func waitFor<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let result = Mutex<Result<T, any Error>?>(nil)
    let word = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
    word.initialize(to: 0)
    defer { word.deallocate() }
    let address = UInt(bitPattern: word)
    Task {
        let outcome = await Result { try await body() }
        result.withLock { $0 = outcome }
        let word = UnsafeMutablePointer<UInt32>(bitPattern: address)!
        CShm_store_release_u32(UnsafeMutableRawPointer(word), 1)
        _ = CShm_futex_wake(word, 1)
    }
    while CShm_load_acquire_u32(UnsafeMutableRawPointer(word)) == 0 { _ = CShm_futex_wait(word, 0, 1_000_000_000) }
    return try result.withLock { $0! }.get()
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

private func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
}

private func millions(_ rate: Double) -> String { String(format2(rate / 1e6)) }
private func rounded(_ value: Double) -> String { format2(value) }
private func format2(_ value: Double) -> String {
    let scaled = (value * 100).rounded()
    let whole = Int(scaled) / 100, fraction = abs(Int(scaled)) % 100
    return "\(whole).\(fraction < 10 ? "0" : "")\(fraction)"
}
