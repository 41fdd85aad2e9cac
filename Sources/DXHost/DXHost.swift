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

/// The handlers `--handler` offers.
enum HandlerChoice: String, ExpressibleByArgument, CaseIterable {
    case echo, checksum
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

    @Option(help: "Request handler: \(HandlerChoice.allCases.map(\.rawValue).joined(separator: ", ")).")
    var handler: HandlerChoice = .echo

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

    @OptionGroup var wait: SpinOptions

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

        let configuration = RegionConfiguration(
            laneCount: lanes, slotCapacity: slotSize, workerCount: workerCount, rawChannels: raw,
            handler: handler == .echo ? .echo : .checksum)
        let host: Host
        do {
            host = try Host(name: name, configuration: configuration, spinPolicy: try wait.spinPolicy,
                            counting: !noCounters, logger: logger)
        } catch let error as RegionCreateError {
            if case .alreadyServed = error { throw CommandFailure("\(error)", exit: .alreadyRunning) }
            throw CommandFailure("cannot create the region: \(error)", exit: .failure)
        }
        host.workerCPUs = pin ?? []
        let control = HostService.ControlSocket(
            path: self.control ?? ControlPath.socket(for: name),
            backend: ControlBackend(rawValue: controlBackend.rawValue) ?? .auto,
            idleTimeoutNanoseconds: UInt64(controlIdleTimeout * 1e9),
            metricsExposition: PrometheusExport.text)
        let service = switch handler {
        case .echo: HostService(host: host, handler: EchoHandler(), control: control, logger: logger)
        case .checksum: HostService(host: host, handler: ChecksumHandler(), control: control, logger: logger)
        }
        // The host service ends the group when it stops by itself (a control client's shutdown,
        // a truncated region), and a stop signal ends it through the group.
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
        // A stop no one asked for: a supervisor should see it (and may restart the host).
        if host.region.truncationFaults > 0 {
            throw CommandFailure("stopped because a guest truncated the region; the guests must attach again",
                                 exit: .failure)
        }
    }
}
