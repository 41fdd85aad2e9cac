import ArgumentParser
import CShm
import DXCommandLine
import DXCore
import Logging
import ServiceLifecycle
#if canImport(Glibc)
import Glibc
#endif

@main
struct DXHostCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dx-host",
        abstract: "Serve a dx shared-memory region to guests.",
        subcommands: [Run.self, Ctl.self],
        defaultSubcommand: Run.self)

    static func main() async { await runAndExit() }
}

enum ControlBackendChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, uring, poll
}

/// The handlers `--handler` offers: `delay` is the echo, answered by an async task after
/// `--delay-us` (the load async serving is measured with).
enum HandlerChoice: String, ExpressibleByArgument, CaseIterable {
    case echo, checksum, delay
}

/// Parses `--delay-lanes`: a list like 0, 0,2 or 0-3.
func parseLaneList(_ text: String) throws -> [Int] {
    guard let lanes = CPUAffinity.parse(text) else {
        throw ValidationError("--delay-lanes takes a lane list like 0, 0,2 or 0-3 (lanes 0...1023)")
    }
    return lanes
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Create the region and serve it until SIGTERM, SIGINT or SIGHUP (the default subcommand).")

    @OptionGroup var target: RegionNameOption

    @Option(help: "Number of lanes (one per concurrent guest thread), 1...\(Layout.maxLanes).")
    var lanes: Int = 8

    @Option(name: .customLong("slot-size"), help: "Largest request or response in bytes, 1...\(Layout.maxSlotCapacity).")
    var slotSize: Int = 4096

    @Option(help: "Serving threads polling the lanes, 1...\(Layout.maxWorkers) (default: CPUs - 1, at least 1).")
    var workers: Int?

    @Option(help: "Request handler: \(HandlerChoice.allCases.map(\.rawValue).joined(separator: ", ")) (delay: echo from an async task after --delay-us).")
    var handler: HandlerChoice = .echo

    @Option(name: .customLong("delay-us"), help: "--handler delay: how long each request waits (suspended, in µs, 0...10000000) before its echo; 0 still suspends once.")
    var delayMicroseconds: UInt64 = 0

    @Option(name: .customLong("delay-lanes"), help: "--handler delay: only requests on these lanes (like 0 or 0-3) wait --delay-us; the others are echoed after one suspension (default: every lane).",
            transform: parseLaneList)
    var delayLanes: [Int]?

    @Option(name: .customLong("max-tasks"), help: "--handler delay: async handler tasks at once, in all (default: --lanes; at least --workers).")
    var maxTasks: Int?

    @Flag(help: "Also serve the raw ping-pong baseline channels (for dx-guest bench --baseline raw).")
    var raw = false

    @Flag(name: .customLong("no-counters"), help: "Do not update the per-lane counters (to measure what they cost).")
    var noCounters = false

    @Option(help: "Pin serving worker w to the w-th CPU of this list (like 1 or 0-1); experiments only.",
            transform: parseCPUList)
    var pin: [Int]?

    @Option(help: "Control socket path (default: $XDG_RUNTIME_DIR/dx/<name>.sock, or /tmp/dx-<uid>/<name>.sock).")
    var control: String?

    @Option(name: .customLong("control-backend"), help: "Control socket event loop: auto (io_uring, else poll), uring or poll.")
    var controlBackend: ControlBackendChoice = .auto

    @Option(name: .customLong("control-idle-timeout"), help: "Close control connections idle for this many seconds (not while watching).")
    var controlIdleTimeout: Double = 60

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @Flag(name: .customLong("private"), help: "Create no named region: give each guest that connects to the socket a private, sealed region of its own (many sandboxes). --lanes is then the default per guest, --workers the pool size (default: CPUs - 1, at least 1).")
    var privateRegions = false

    @Option(name: .customLong("allow-uid"), help: "Private mode: also let this uid ask for a region (repeatable). Its guests pass --control PATH --host-uid UID; the socket is made connectable (mode 0666) and SO_PEERCRED refuses everyone else.")
    var allowUIDs: [UInt32] = []

    @Option(name: .customLong("allow-gid"), help: "Private mode: also let processes of this primary gid ask for a region (repeatable).")
    var allowGIDs: [UInt32] = []

    @Option(name: .customLong("grant-quantum-us"), help: "Private mode: how long a guest's turn at its pool worker lasts while others wait, in µs (10...1000000).")
    var grantQuantumMicroseconds: UInt64 = 640

    @Option(name: .customLong("max-lanes"), help: "Private mode: the most lanes a guest may ask for.")
    var maxLanes: Int = 64

    @Option(name: .customLong("max-guests"), help: "Private mode: regions at once, in all.")
    var maxGuests: Int = 1024

    @Option(name: .customLong("max-guests-per-uid"), help: "Private mode: regions at once, per user (default: 256, at most --max-guests).")
    var maxGuestsPerUID: Int?

    @Option(name: .customLong("max-mib"), help: "Private mode: MiB of regions at once, in all.")
    var maxMiB: Int = 1024

    @Option(name: .customLong("max-mib-per-uid"), help: "Private mode: MiB of regions at once, per user (default: 256, at most --max-mib).")
    var maxMiBPerUID: Int?

    @OptionGroup var wait: SpinOptions

    var limits: PrivateHostLimits {
        PrivateHostLimits(maxLanes: maxLanes, defaultLanes: lanes, slotCapacity: slotSize, maxGuests: maxGuests,
                          maxGuestsPerUID: maxGuestsPerUID ?? min(256, maxGuests), maxBytes: maxMiB << 20,
                          maxBytesPerUID: (maxMiBPerUID ?? min(256, maxMiB)) << 20,
                          allowedUIDs: Set(allowUIDs), allowedGIDs: Set(allowGIDs))
    }

    var workerCount: Int { workers ?? max(1, CPUAffinity.allowedCPUs - 1) }

    /// The region name (`--name`).
    var name: String { target.name }

    func validate() throws {
        guard (1...Layout.maxLanes).contains(lanes) else {
            throw ValidationError("--lanes must be between 1 and \(Layout.maxLanes), not \(lanes)")
        }
        guard (1...Layout.maxSlotCapacity).contains(slotSize) else {
            throw ValidationError("--slot-size must be between 1 and \(Layout.maxSlotCapacity) bytes, not \(slotSize)")
        }
        guard (1...Layout.maxWorkers).contains(workerCount) else {
            throw ValidationError("--workers must be between 1 and \(Layout.maxWorkers), not \(workerCount)")
        }
        let socket = control ?? ControlPath.socket(for: name)
        guard !socket.isEmpty, socket.utf8.count <= ControlPath.maxSocketPathLength else {
            throw ValidationError("the control socket path \(socket) must have 1 to \(ControlPath.maxSocketPathLength) bytes (a Unix socket's limit); use a shorter --name or --control")
        }
        guard controlIdleTimeout > 0, controlIdleTimeout <= 86_400 else {
            throw ValidationError("--control-idle-timeout must be between 0 and 86400 seconds, not \(controlIdleTimeout)")
        }
        if handler == .delay {
            guard delayMicroseconds <= 10_000_000 else {
                throw ValidationError("--delay-us must be between 0 and 10000000 (10 s), not \(delayMicroseconds)")
            }
            if let lane = delayLanes?.first(where: { $0 >= lanes }) {
                throw ValidationError("--delay-lanes names lane \(lane), but there are \(lanes) lanes (0...\(lanes - 1))")
            }
            if let maxTasks, !(workerCount...Layout.maxLanes).contains(maxTasks) {
                throw ValidationError("--max-tasks must be between the worker count (\(workerCount): each worker needs one) and \(Layout.maxLanes), not \(maxTasks)")
            }
            guard !privateRegions else {
                throw ValidationError("--handler delay (an async handler) is not supported with --private: the pool workers answer in place only")
            }
        } else if delayMicroseconds != 0 || delayLanes != nil || maxTasks != nil {
            throw ValidationError("--delay-us, --delay-lanes and --max-tasks go with --handler delay")
        }
        if privateRegions {
            do { try limits.validate() } catch { throw ValidationError("\(error)") }
            guard !raw else { throw ValidationError("--raw serves a named region's baseline channels; it does not go with --private") }
        } else if !allowUIDs.isEmpty || !allowGIDs.isEmpty {
            throw ValidationError("--allow-uid and --allow-gid go with --private (a named region is its user's alone)")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "dx-host")
        // The metrics backend, before the host (which takes the factory in use when it is made).
        PrometheusExport.bootstrap()

        // SIGPIPE (a control client gone mid-reply) is ignored. The stop signals are watched from
        // here on, before the region exists: the first stops the service group gracefully, a
        // second exits at once (still removing the region, the socket and the lock file).
        signal(SIGPIPE, SIG_IGN)
        let stopSignals = await StopSignals(logger: logger)

        let control = HostService.ControlSocket(
            path: self.control ?? ControlPath.socket(for: name),
            backend: ControlBackend(rawValue: controlBackend.rawValue) ?? .auto,
            idleTimeoutNanoseconds: UInt64(controlIdleTimeout * 1e9),
            metricsExposition: PrometheusExport.text)
        if privateRegions {
            let host: PrivateHost
            do {
                host = try PrivateHost(name: name, limits: limits, handler: handler == .echo ? .echo : .checksum, poolSize: workers,
                                       grantQuantumNanoseconds: grantQuantumMicroseconds &* 1000, spinPolicy: try wait.spinPolicy,
                                       counting: !noCounters, logger: logger)
            } catch {
                throw CommandFailure("cannot start the private host: \(error)", exit: .failure)
            }
            let service = switch handler {
            case .echo, .delay: HostService(privateHost: host, handler: EchoHandler(), control: control, logger: logger)  // delay: refused by validate()
            case .checksum: HostService(privateHost: host, handler: ChecksumHandler(), control: control, logger: logger)
            }
            try await serve(service, stopSignals: stopSignals, logger: logger)
            return
        }
        let configuration = RegionConfiguration(
            laneCount: lanes, slotCapacity: slotSize, workerCount: workerCount, rawChannels: raw,
            handler: handler == .checksum ? .checksum : .echo)
        let host: Host
        do {
            host = try Host(name: name, configuration: configuration, spinPolicy: try wait.spinPolicy,
                            counting: !noCounters, logger: logger)
        } catch let error as RegionCreateError {
            if case .alreadyServed = error { throw CommandFailure("\(error)", exit: .alreadyRunning) }
            throw CommandFailure("cannot create the region: \(error)", exit: .failure)
        }
        host.workerCPUs = pin ?? []
        let service = switch handler {
        case .echo: HostService(host: host, handler: EchoHandler(), control: control, logger: logger)
        case .checksum: HostService(host: host, handler: ChecksumHandler(), control: control, logger: logger)
        case .delay:
            HostService(host: host, asyncHandler: DelayedEchoHandler(delayNanoseconds: delayMicroseconds &* 1000,
                                                                     lanes: delayLanes.map(Set.init)),
                        maxTasksInFlight: maxTasks, control: control, logger: logger)
        }
        try await serve(service, stopSignals: stopSignals, logger: logger)
        // A stop no one asked for: a supervisor should see it (and may restart the host).
        if host.region.truncationFaults > 0 {
            throw CommandFailure("stopped because a guest truncated the region; the guests must attach again",
                                 exit: .failure)
        }
    }

    /// Runs the host service in a service group until it stops by itself (a control client's
    /// shutdown, a truncated region) or a stop signal ends the group; a second signal exits at once.
    private func serve(_ service: HostService, stopSignals: StopSignals, logger: Logger) async throws {
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: StopSignals.all, logger: logger))
        do {
            try await stopSignals.run(group) {
                service.abandon()
                Glibc.exit(DXExit.ok.rawValue)
            }
        } catch let error as ControlError {
            throw CommandFailure("cannot serve the control socket: \(error)", exit: .failure)
        }
    }
}
