import ArgumentParser
import DXCommandLine
import DXCore
#if canImport(Glibc)
import Glibc
#endif

/// `dx-host ctl …`: talk to a running host over its control socket.
struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Watch and steer a running host over its control socket.",
        subcommands: [Stats.self, Watch.self, Lanes.self, Config.self, Metrics.self, Shutdown.self])
}

/// The flags every `ctl` command takes.
struct CtlOptions: ParsableArguments {
    @OptionGroup var target: RegionNameOption

    @Option(help: "Control socket path (default: the one --name implies).")
    var control: String?

    @Flag(help: "Print the host's JSON replies instead of tables.")
    var json = false

    @Option(name: .customLong("host-uid"),
            help: "The uid the host runs as (default: this user's). A socket served by any other user is refused.")
    var hostUID: UInt32?

    /// The region name (`--name`).
    var name: String { target.name }

    var path: String { control ?? ControlPath.socket(for: name) }

    /// Connects, or explains that no host runs under this name (exit 3).
    func connect() throws -> ControlClient {
        do {
            return try ControlClient(path: path, hostUID: hostUID)
        } catch let error {
            switch error {
            case .noHost:
                throw CommandFailure("no dx host named '\(name)' is running (nothing listens on \(path))", exit: .noHost)
            default:
                throw CommandFailure("\(error)", exit: .noHost)
            }
        }
    }

    /// Sends one command; prints the raw reply with --json, else hands the decoded reply back.
    func call<Reply: Decodable>(_ command: ControlCommand, as type: Reply.Type) throws -> Reply? {
        var client = try connect()
        do {
            let line = try client.request(command.line)
            let reply = try ControlClient.decode(line, as: type)
            if json {
                print(line)
                return nil
            }
            return reply
        } catch {
            throw CommandFailure("\(error)", exit: .failure)
        }
    }
}

extension Ctl {
    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Uptime, round trips, ops/s over the last second and since start, and a per-lane table.")
        @OptionGroup var options: CtlOptions

        func run() throws {
            guard let stats = try options.call(ControlCommand("stats"), as: StatsReply.self) else { return }
            print("host '\(stats.name)' pid \(stats.host_pid), up \(Table.seconds(stats.uptime_s))")
            print("round trips \(Table.grouped(stats.round_trips)), \(Table.rate(stats.ops_per_sec_last))/s over the last second, "
                + "\(Table.rate(stats.ops_per_sec_avg))/s since start; \(stats.lanes_claimed) of \(stats.lanes.count) lanes claimed")
            print("wait: \(Table.strategy(stats.wait))")
            print("worker sleeps \(stats.sleeps), wake-ups sent \(stats.wakes_sent), errors \(stats.errors), "
                + "lanes reclaimed from dead guests \(stats.reclaimed_lanes)")
            print("")
            print(TextTable.render(
                ["lane", "owner", "state", "round trips", "ops/s", "wakes sent", "wakes skipped", "errors",
                 "guest: spin wins", "yields", "sleeps", "turn waits"],
                stats.lanes.map { lane in
                    ["\(lane.lane)", lane.owner_pid == 0 ? "-" : "\(lane.owner_pid)", lane.state,
                     Table.grouped(lane.round_trips), Table.rate(lane.ops_per_sec), "\(lane.wakes_sent)",
                     "\(lane.wakes_skipped)", "\(lane.errors)", "\(lane.spin_wins)", "\(lane.yields)", "\(lane.sleeps)",
                     "\(lane.turn_waits)"]
                }, leftAligned: [0, 2]))
            print("")
            if stats.workers.contains(where: { $0.async_started != nil }) {
                print(TextTable.render(["worker", "spin wins", "yields", "sleeps", "tasks started", "finished", "dropped"],
                                       stats.workers.map {
                    ["\($0.worker)", "\($0.spin_wins)", "\($0.yields)", "\($0.sleeps)", "\($0.async_started ?? 0)",
                     "\($0.async_finished ?? 0)", "\($0.async_dropped ?? 0)"]
                }))
            } else {
                print(TextTable.render(["worker", "spin wins", "yields", "sleeps"], stats.workers.map {
                    ["\($0.worker)", "\($0.spin_wins)", "\($0.yields)", "\($0.sleeps)"]
                }))
            }
        }
    }

    struct Watch: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One line per interval until Ctrl-C.")
        @OptionGroup var options: CtlOptions

        @Option(name: .customLong("interval-ms"), help: "Milliseconds between lines.")
        var intervalMilliseconds = 1000

        @Option(help: "Stop after this many lines (default: until Ctrl-C).")
        var count: Int?

        func run() throws {
            var client = try options.connect()
            do {
                try client.send(ControlCommand("watch", intervalMilliseconds: intervalMilliseconds).line)
                var printed = 0
                if !options.json { print("uptime      ops/s    slowest lane/s  fastest lane/s    sleeps/s    wakes/s") }
                while count.map({ printed < $0 }) ?? true {
                    let line = try client.readLine()
                    let watch = try ControlClient.decode(line, as: WatchLine.self)
                    if options.json {
                        print(line)
                    } else {
                        print([Table.seconds(watch.uptime_s).padding(10), Table.rate(watch.ops_per_sec).padding(10),
                               Table.rate(watch.lane_min_ops_per_sec).padding(16), Table.rate(watch.lane_max_ops_per_sec).padding(16),
                               Table.rate(watch.sleeps_per_sec).padding(10), Table.rate(watch.wakes_per_sec).padding(10)]
                            .joined(separator: " "))
                    }
                    printed += 1
                }
            } catch {
                throw CommandFailure("\(error)", exit: .failure)
            }
        }
    }

    struct Lanes: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lane, owner pid, state, round trips and last activity.")
        @OptionGroup var options: CtlOptions

        func run() throws {
            guard let reply = try options.call(ControlCommand("lanes"), as: LanesReply.self) else { return }
            print(TextTable.render(["lane", "owner", "state", "round trips", "last activity"], reply.lanes.map { lane in
                ["\(lane.lane)", lane.owner_pid == 0 ? "-" : "\(lane.owner_pid)", lane.state, Table.grouped(lane.round_trips),
                 lane.last_activity_s.map { Table.seconds($0) + " ago" } ?? "never"]
            }, leftAligned: [0, 2]))
        }
    }

    struct Config: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the host's wait strategy, or change it while the host runs.")
        @OptionGroup var options: CtlOptions

        @Option(name: .customLong("wait"), help: "A wait preset: \(WaitStrategy.presets.map(\.name).joined(separator: ", ")).")
        var preset: String?
        @Option(name: .customLong("spin-min")) var spinMin: UInt32?
        @Option(name: .customLong("spin-max")) var spinMax: UInt32?
        @Option(name: .customLong("spin-start")) var spinStart: UInt32?
        @Option(name: .customLong("yield-every")) var yieldEvery: UInt32?
        @Option(name: .customLong("sleep-timeout-ms")) var sleepTimeoutMilliseconds: UInt64?

        func run() throws {
            let change = SpinPolicyChange(preset: preset, spinMin: spinMin, spinMax: spinMax, spinStart: spinStart,
                                          yieldEvery: yieldEvery, sleepTimeoutMilliseconds: sleepTimeoutMilliseconds)
            guard let reply = try options.call(ControlCommand("config", set: change.isEmpty ? nil : change), as: ConfigReply.self)
            else { return }
            print("\(reply.changed ? "changed; now " : "")wait: \(Table.strategy(reply.wait))")
            print("lanes \(reply.lanes), slot size \(reply.slot_size) bytes, workers \(reply.workers)")
        }
    }

    struct Metrics: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The counters in Prometheus text exposition format.")
        @OptionGroup var options: CtlOptions

        func run() throws {
            guard let reply = try options.call(ControlCommand("metrics"), as: MetricsReply.self) else { return }
            print(reply.text, terminator: "")
        }
    }

    struct Shutdown: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop the host gracefully.")
        @OptionGroup var options: CtlOptions

        func run() throws {
            guard try options.call(ControlCommand("shutdown"), as: ShutdownReply.self) != nil else { return }
            print("the host '\(options.name)' is shutting down")
        }
    }
}

/// Cell formats for the ctl tables (rendered by ``TextTable``).
enum Table {
    static func grouped(_ value: UInt64) -> String { Format.grouped(value) }

    static func rate(_ value: Double) -> String { grouped(UInt64(max(0, value.rounded()))) }

    static func seconds(_ value: Double) -> String {
        value < 60 ? "\((value * 10).rounded() / 10) s" : "\(Int(value) / 60) min \(Int(value) % 60) s"
    }

    static func strategy(_ wait: SpinPolicy) -> String {
        "spin min \(wait.spinMin) max \(wait.spinMax) start \(wait.spinStart), yield every \(wait.yieldEvery), "
            + "sleep timeout \(wait.sleepTimeoutNanoseconds / 1_000_000) ms\(wait.relax ? "" : ", no relax")"
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
