import Foundation
import Testing

/// Two real processes: the built dx-host and dx-guest over real POSIX shared memory.
@Suite(.serialized, .timeLimit(.minutes(5))) struct ExchangeIntegrationTests {
    @Test func callPrintsTheEcho() throws {
        let host = try RunningHost()
        let outcome = try run(Binaries.guest, ["call", "--name", host.name, "hello"])
        #expect(outcome.status == 0)
        #expect(outcome.stdout == "hello\n")
        #expect(try host.stop() == 0)
    }

    @Test func checksumHandlerAnswersTheChecksum() throws {
        let host = try RunningHost(arguments: ["--handler", "checksum"])
        let outcome = try run(Binaries.guest, ["call", "--name", host.name, "hello"])
        #expect(outcome.status == 0)
        #expect(outcome.stdout == "0bbdaa8046d830a4\n")  // FNV-1a 64 of "hello", little-endian
        #expect(try host.stop() == 0)
    }

    /// 8 threads × 100 k round trips, sizes from 0 to the slot capacity, every response checked.
    @Test func eightThreadsOfVariedPayloadsLoseNothing() throws {
        let host = try RunningHost(arguments: ["--lanes", "8", "--slot-size", "4096"])
        let outcome = try run(Binaries.guest, [
            "bench", "--name", host.name, "--threads", "8", "--calls", "100000", "--payload", "4096",
            "--vary-payload", "--json",
        ], timeout: 240)
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let runs = try jsonLines(outcome.stdout)
        #expect(runs.count == 1)
        #expect(runs.first?["ops"] as? Int == 800_000)
        #expect(runs.first?["errors"] as? Int == 0)
        #expect(runs.first?["lane_min_ops"] as? Int == 100_000)
        #expect(try host.stop() == 0)
    }

    @Test func checksumBenchVerifiesEveryResponse() throws {
        let host = try RunningHost(arguments: ["--handler", "checksum", "--lanes", "4", "--slot-size", "256"])
        let outcome = try run(Binaries.guest, [
            "bench", "--name", host.name, "--threads", "2", "--calls", "20000", "--payload", "256",
            "--vary-payload", "--json",
        ])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let runs = try jsonLines(outcome.stdout)
        #expect(runs.first?["ops"] as? Int == 40_000)
        #expect(runs.first?["errors"] as? Int == 0)
        #expect(try host.stop() == 0)
    }

    @Test func benchReportsDxAndRawWithEveryField() throws {
        let host = try RunningHost(arguments: ["--lanes", "4", "--raw"])
        let outcome = try run(Binaries.guest, [
            "bench", "--name", host.name, "--threads", "1,2", "--duration", "0.3", "--baseline", "raw", "--json",
        ])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let runs = try jsonLines(outcome.stdout)
        #expect(runs.map { $0["mode"] as? String } == ["raw", "dx", "raw", "raw", "dx"])
        #expect(runs.map { $0["threads"] as? Int } == [1, 1, 2, 1, 2])
        let fields: Set = ["mode", "timed", "threads", "payload", "duration_s", "ops", "ops_per_sec", "p50_ns", "p99_ns",
                           "p999_ns", "max_ns", "exchange_p999_ns", "lane_min_ops", "lane_max_ops", "cpu_us_per_op", "errors",
                           "turn_passes_per_1k_calls", "turn_waits_per_1k_calls"]
        for run in runs {
            #expect(Set(run.keys) == fields)
            #expect((run["ops"] as? Int ?? 0) > 0)
            #expect(run["errors"] as? Int == 0)
            // Turns pass only at a turn check, every 64 calls (a loaded machine may make them pass by
            // time, so no tighter figure here); raw has none.
            let passes = (run["turn_passes_per_1k_calls"] as? NSNumber)?.doubleValue ?? -1
            let waits = (run["turn_waits_per_1k_calls"] as? NSNumber)?.doubleValue ?? -1
            #expect(passes >= 0 && passes <= 1000.0 / 64, "turn passes per 1000 calls: \(passes)")
            #expect(waits >= 0 && waits <= 1000, "turn waits per 1000 calls: \(waits)")
            if run["mode"] as? String == "raw" { #expect(passes == 0 && waits == 0) }
        }
        #expect(try host.stop() == 0)
    }

    /// `--baseline floor`: the bare exchange, untimed (no latency figures), every response checked,
    /// before each dx run; `--no-latency` times no dx call either; the table names the floor and the
    /// timing cost.
    @Test func benchMeasuresTheFloorAndCanSkipLatency() throws {
        let host = try RunningHost(arguments: ["--lanes", "4", "--raw"])
        let timed = try run(Binaries.guest, [
            "bench", "--name", host.name, "--threads", "1,2", "--duration", "0.3", "--baseline", "floor", "--json",
        ])
        #expect(timed.status == 0, "\(timed.stderr)")
        let runs = try jsonLines(timed.stdout)
        #expect(runs.map { $0["mode"] as? String } == ["floor", "dx", "floor", "floor", "dx"])
        for run in runs {
            #expect((run["ops"] as? Int ?? 0) > 0 && run["errors"] as? Int == 0)
            let isFloor = run["mode"] as? String == "floor"
            #expect(run["timed"] as? Bool == !isFloor)
            #expect(((run["p50_ns"] as? Int ?? 0) > 0) == !isFloor, "\(run)")
        }
        let untimed = try run(Binaries.guest, [
            "bench", "--name", host.name, "--threads", "1", "--duration", "0.3", "--no-latency", "--json",
        ])
        #expect(untimed.status == 0, "\(untimed.stderr)")
        let dx = try #require(try jsonLines(untimed.stdout).first)
        #expect(dx["timed"] as? Bool == false && dx["p999_ns"] as? Int == 0 && (dx["ops"] as? Int ?? 0) > 0)
        let sampled = try run(Binaries.guest, [
            "bench", "--name", host.name, "--threads", "1", "--duration", "0.3", "--latency-sample", "4", "--json",
        ])
        #expect(sampled.status == 0, "\(sampled.stderr)")
        let some = try #require(try jsonLines(sampled.stdout).first)
        #expect(some["timed"] as? Bool == true && (some["p50_ns"] as? Int ?? 0) > 0 && some["errors"] as? Int == 0)
        let odd = try run(Binaries.guest, ["bench", "--name", host.name, "--latency-sample", "3"])
        #expect(odd.status == 2 && odd.stderr.contains("must be a power of two"), "\(odd.stderr)")
        let table = try run(Binaries.guest, [
            "bench", "--name", host.name, "--threads", "1", "--duration", "0.2", "--baseline", "floor",
        ])
        #expect(table.status == 0, "\(table.stderr)")
        #expect(table.stdout.contains("vs floor (same T)") && table.stdout.contains("floor  1"), "\(table.stdout)")
        #expect(table.stdout.contains("timing costs ≈"), "\(table.stdout)")
        #expect(try host.stop() == 0)
    }

    @Test func idleCheckReportsCPUAndTheFirstCall() throws {
        let host = try RunningHost()
        let outcome = try run(Binaries.guest, [
            "bench", "--name", host.name, "--threads", "1", "--calls", "1000", "--idle", "0.5", "--json",
        ])
        #expect(outcome.status == 0, "\(outcome.stderr)")
        let lines = try jsonLines(outcome.stdout)
        let idle = try #require(lines.last)
        #expect(idle["mode"] as? String == "idle")
        // Idle means asleep: host and guest together use a small part of one CPU, not a spinning core.
        let cpu = try #require(idle["cpu_percent"] as? Double)
        #expect(cpu >= 0 && cpu < 20, "host + guest used \(cpu) % of a CPU while idle")
        #expect((idle["idle_s"] as? Double ?? 0) >= 0.5)
        #expect((idle["first_call_ns"] as? Int ?? 0) > 0)
        #expect((idle["bare_futex_wake_ns"] as? Int ?? 0) > 0)
        #expect((idle["bare_process_wake_ns"] as? Int ?? 0) > 0)
        #expect(try host.stop() == 0)
    }

    @Test func oversizeRequestIsRefused() throws {
        let host = try RunningHost(arguments: ["--slot-size", "16"])
        let outcome = try run(Binaries.guest, ["call", "--name", host.name, String(repeating: "x", count: 17)])
        #expect(outcome.status == 5)
        #expect(outcome.stderr.contains("the request has 17 bytes but a lane holds at most 16"))
        // The host still serves.
        #expect(try run(Binaries.guest, ["call", "--name", host.name, "still here"]).stdout == "still here\n")
        #expect(try host.stop() == 0)
    }

    @Test func sigtermLeavesNothingInDevShm() throws {
        let host = try RunningHost()
        #expect(regionExists(host.name))
        #expect(try host.stop() == 0)
        #expect(!regionExists(host.name))
    }

    @Test func secondHostOnALiveNameIsRefused() throws {
        let host = try RunningHost()
        let second = try run(Binaries.host, ["--name", host.name])
        #expect(second.status == 4)
        #expect(second.stderr.contains("already serves '\(host.name)'"))
        #expect(try run(Binaries.guest, ["call", "--name", host.name, "ok"]).status == 0)
        #expect(try host.stop() == 0)
    }

    @Test func guestWithoutHostSaysSo() throws {
        let name = uniqueName()
        let outcome = try run(Binaries.guest, ["call", "--name", name, "hello"])
        #expect(outcome.status == 3)
        #expect(outcome.stderr.contains("no dx host named '\(name)' is running (no region /dev/shm/dx.\(name))"))
        #expect(!outcome.stderr.contains("Fatal error"))
    }
}

@Suite(.timeLimit(.minutes(1))) struct CommandLineTests {
    @Test(arguments: [
        ["--name", "demo", "--lanes", "0"],
        ["--name", "a/b"],
        ["--name", "demo", "--slot-size", "0"],
        ["--name", "demo", "--slot-size", "999999999"],
        ["--name", "demo", "--workers", "0"],
        ["--name", "demo", "--wait", "fastest"],
        ["--name", "demo", "--spin-min", "10", "--spin-max", "5"],
        ["--name", "demo", "--handler", "nope"],
        ["--lanes", "4"],
    ])
    func badHostArgumentsExitTwo(arguments: [String]) throws {
        let outcome = try run(Binaries.host, arguments)
        #expect(outcome.status == 2)
        #expect(!outcome.stderr.isEmpty)
        #expect(!outcome.stderr.contains("Fatal error"))
    }

    @Test(arguments: [
        ["bench", "--name", "demo", "--threads", "0"],
        ["bench", "--name", "demo", "--threads", "1,x"],
        ["bench", "--name", "demo", "--duration", "0"],
        ["bench", "--name", "demo", "--payload", "-1"],
        ["bench", "--name", "a/b"],
        ["call", "--name", "demo"],
        ["nonsense"],
    ])
    func badGuestArgumentsExitTwo(arguments: [String]) throws {
        let outcome = try run(Binaries.guest, arguments)
        #expect(outcome.status == 2)
        #expect(!outcome.stderr.isEmpty)
    }

    @Test(arguments: [["--help"], ["run", "--help"], ["ctl", "--help"], ["ctl", "stats", "--help"]])
    func hostHelpExitsZero(arguments: [String]) throws {
        let outcome = try run(Binaries.host, arguments)
        #expect(outcome.status == 0)
        #expect(outcome.stdout.contains("USAGE:"), "\(outcome.stdout)\(outcome.stderr)")
    }

    @Test(arguments: [["--help"], ["bench", "--help"], ["call", "--help"], ["soak", "--help"]])
    func guestHelpExitsZero(arguments: [String]) throws {
        let outcome = try run(Binaries.guest, arguments)
        #expect(outcome.status == 0)
        #expect(outcome.stdout.contains("USAGE:"), "\(outcome.stdout)\(outcome.stderr)")
    }

    @Test func errorMessagesNameTheProblem() throws {
        let lanes = try run(Binaries.host, ["--name", "demo", "--lanes", "0"])
        #expect(lanes.stderr.contains("--lanes must be between 1 and 1024, not 0"))
        let name = try run(Binaries.host, ["--name", "a/b"])
        #expect(name.stderr.contains("is not a valid region name"))
    }
}
