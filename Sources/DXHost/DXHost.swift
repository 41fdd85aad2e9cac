import ArgumentParser
import CShm
import DXCommandLine
import DXCore
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

@main
struct DXHostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dx-host",
        abstract: "Serve a dx shared-memory region to guests.",
        subcommands: [Run.self, Ctl.self],
        defaultSubcommand: Run.self)

    static func main() { runAndExit() }
}

enum ControlBackendChoice: String, ExpressibleByArgument, CaseIterable {
    case auto, uring, poll
}

/// The handlers `--handler` offers.
enum HandlerChoice: String, ExpressibleByArgument, CaseIterable {
    case echo, checksum
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Create the region and serve it until SIGINT or SIGTERM (the default subcommand).")

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

    @OptionGroup var wait: WaitOptions

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

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "dx-host")

        // Block the stop signals before any thread starts, so that every thread inherits the
        // mask and only the main thread's sigtimedwait sees them. SIGHUP (a closed terminal)
        // stops cleanly like SIGTERM; SIGPIPE (a control client gone mid-reply) is ignored.
        signal(SIGPIPE, SIG_IGN)
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        sigaddset(&signals, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let configuration = RegionConfiguration(
            laneCount: lanes, slotCapacity: slotSize, workerCount: workerCount, rawChannels: raw,
            handler: handler == .echo ? .echo : .checksum)
        let host: Host
        do {
            host = try Host(name: name, configuration: configuration, strategy: try wait.strategy,
                            counting: !noCounters, logger: logger)
        } catch let error as RegionCreateError {
            if case .alreadyServed = error { throw CommandFailure("\(error)", exit: .alreadyRunning) }
            throw CommandFailure("cannot create the region: \(error)", exit: .failure)
        }
        host.workerCPUs = pin ?? []
        switch handler {
        case .echo: try host.start(handler: EchoHandler())
        case .checksum: try host.start(handler: ChecksumHandler())
        }
        // A control client's shutdown arrives here as our own SIGTERM, like any other stop request.
        host.onShutdownRequest { kill(getpid(), SIGTERM) }
        let controlServer: ControlServer
        do {
            controlServer = try ControlServer(
                target: host, path: control ?? ControlPath.socket(for: name),
                backend: ControlBackend(rawValue: controlBackend.rawValue) ?? .auto,
                idleTimeoutNanoseconds: UInt64(controlIdleTimeout * 1e9), logger: logger)
        } catch {
            host.stop()
            throw CommandFailure("cannot serve the control socket: \(error)", exit: .failure)
        }
        var received: Int32 = 0
        while received <= 0 {
            var timeout = timespec(tv_sec: 1, tv_nsec: 0)
            received = sigtimedwait(&signals, nil, &timeout)
        }
        let signalName = received == SIGINT ? "SIGINT" : received == SIGHUP ? "SIGHUP" : "SIGTERM"
        logger.info("signal received, stopping", metadata: ["signal": "\(signalName)"])
        // Stop on another thread, so that a second signal can still cut the shutdown short.
        let done = Atomic<Bool>(false)
        let stopper = try DXCore.Thread {
            controlServer.stop()
            host.stop()
            done.store(true, ordering: .releasing)
        }
        while !done.load(ordering: .acquiring) {
            var timeout = timespec(tv_sec: 0, tv_nsec: 20_000_000)
            if sigtimedwait(&signals, nil, &timeout) > 0 {
                logger.warning("second signal: exiting at once")
                host.abandon()
                unlink(controlServer.path)
                Glibc.exit(0)
            }
        }
        stopper.join()
    }
}
