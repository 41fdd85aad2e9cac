import ArgumentParser
import DXCore
import KVProtocol
import Logging
import ServiceLifecycle
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A key-value daemon that embeds a dx host: guests GET, PUT and DEL keys over shared memory.
/// See README.md next to this file.
@main
struct KVHost: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv-host", abstract: "Serve a tiny key-value store to dx guests.")

    @Option(help: "The region name (the region is /dev/shm/dx.<name>).")
    var name = "kv"
    @Option(help: "How many guest threads can be connected at once.")
    var lanes = 8
    @Option(help: "The largest request or response, in bytes.")
    var slotSize = 4096
    @Option(help: "The most keys the store holds.")
    var maxEntries = 100_000

    func run() async throws {
        let logger = Logger(label: "kv-host")
        signal(SIGPIPE, SIG_IGN)
        // Watch the stop signals before the region exists: the first stops the service group
        // gracefully, a second exits at once, still removing the region and the socket.
        let stopSignals = await StopSignals(logger: logger)

        let store = Store(maxEntries: maxEntries)
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: lanes, slotCapacity: slotSize))
        // The handler runs on the serving worker: it parses the request out of the lane, and
        // writes the response in place.
        let handler = ClosureHandler { request, response in
            guard let decoded = KV.decode(request: request) else {
                return KV.encode(status: .badRequest, into: response)
            }
            let (status, value) = store.apply(decoded)
            return KV.encode(status: status, value: value, into: response)
        }
        // `dx-host ctl stats --name <name>` works for this daemon too.
        let service = HostService(host: host, handler: handler,
                                  control: .init(path: ControlPath.socket(for: name)), logger: logger)
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: StopSignals.all, logger: logger))
        say("kv-host: serving '\(name)' (\(lanes) lanes, \(slotSize)-byte slots); Ctrl-C stops")
        try await stopSignals.run(group) {
            service.abandon()
            Glibc.exit(0)
        }
        let stats = host.snapshot()
        say("kv-host: stopped after \(stats.roundTrips) requests; \(store.count) keys")
    }
}

/// The key-value store. Workers may run the handler concurrently, so it takes a lock; that is
/// the embedder's choice and does not touch dx's own call path.
final class Store: Sendable {
    private let entries = Mutex<[[UInt8]: [UInt8]]>([:])
    let maxEntries: Int

    init(maxEntries: Int) { self.maxEntries = maxEntries }

    var count: Int { entries.withLock { $0.count } }

    func apply(_ request: KV.Request) -> (KV.Status, [UInt8]) {
        entries.withLock { entries in
            switch request.op {
            case .get:
                guard let value = entries[request.key] else { return (.notFound, []) }
                return (.ok, value)
            case .put:
                guard entries[request.key] != nil || entries.count < maxEntries else { return (.full, []) }
                entries[request.key] = request.value
                return (.ok, [])
            case .del:
                return entries.removeValue(forKey: request.key) == nil ? (.notFound, []) : (.ok, [])
            }
        }
    }
}

/// Writes a line to standard output at once (a daemon's output is often a pipe).
func say(_ text: String) {
    var line = text + "\n"
    line.withUTF8 { _ = write(STDOUT_FILENO, $0.baseAddress, $0.count) }
}
