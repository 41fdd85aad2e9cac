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
    @Option(help: "Keep the store in this journal file: replayed at start, and every PUT and DEL appended (by an async handler, off the serving worker) before it is answered.")
    var journal: String?

    func run() async throws {
        let logger = Logger(label: "kv-host")
        signal(SIGPIPE, SIG_IGN)
        // Watch the stop signals before the region exists: the first stops the service group
        // gracefully, a second exits at once, still removing the region and the socket.
        let stopSignals = await StopSignals(logger: logger)

        let store = Store(maxEntries: maxEntries)
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: lanes, slotCapacity: slotSize))
        // `dx-host ctl stats --name <name>` works for this daemon too.
        let control = HostService.ControlSocket(path: ControlPath.socket(for: name))
        let service: HostService
        if let journal {
            // The async handler: the serving worker hands each request (a copy) to a task and goes
            // on serving other lanes while the task waits for the journal's write.
            let log = try Journal(path: journal)
            let replayed = try await log.replay { _ = store.apply($0) }
            say("kv-host: replayed \(replayed) changes from \(journal)")
            let slot = slotSize
            service = HostService(host: host, asyncHandler: AsyncClosureHandler { request, _ in
                try await Self.answer(request, store: store, journal: log, slot: slot)
            }, control: control, logger: logger)
        } else {
            // The synchronous handler runs on the serving worker: it parses the request out of the
            // lane, and writes the response in place.
            service = HostService(host: host, handler: ClosureHandler { request, response in
                guard let decoded = KV.decode(request: request) else {
                    return KV.encode(status: .badRequest, into: response)
                }
                let (status, value) = store.apply(decoded)
                return KV.encode(status: status, value: value, into: response)
            }, control: control, logger: logger)
        }
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

    /// The async handler's work: a change goes to the journal before the store answers it, so an
    /// answered PUT survives a restart.
    static func answer(_ request: [UInt8], store: Store, journal: Journal, slot: Int) async throws -> [UInt8] {
        var response = [UInt8](repeating: 0, count: slot)
        guard let decoded = request.withUnsafeBytes({ KV.decode(request: $0) }) else {
            let length = response.withUnsafeMutableBytes { KV.encode(status: .badRequest, into: $0) }
            return Array(response.prefix(length))
        }
        if decoded.op != .get { try await journal.append(request) }
        let (status, value) = store.apply(decoded)
        let length = response.withUnsafeMutableBytes { KV.encode(status: status, value: value, into: $0) }
        return Array(response.prefix(length))
    }
}

/// The store's journal: every change request, as it came (length-prefixed), appended in order.
/// An actor: appends from many handler tasks are serialised, and none of them blocks a serving
/// worker. (The write is a plain `write(2)`, not an `fsync`: a crash of the machine may lose the
/// last changes, a crash of the daemon does not.)
actor Journal {
    private let descriptor: Int32

    init(path: String) throws {
        descriptor = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw failure("cannot open the journal \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(descriptor) }

    /// Appends one change request.
    func append(_ request: [UInt8]) throws {
        var record = withUnsafeBytes(of: UInt32(request.count).littleEndian, Array.init)
        record.append(contentsOf: request)
        let written = record.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        guard written == record.count else { throw failure("cannot write the journal: \(String(cString: strerror(errno)))") }
    }

    /// Applies every change in the journal, in order; returns how many. A torn last record (the
    /// daemon died while writing it) is ignored.
    func replay(_ apply: (KV.Request) -> Void) throws -> Int {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        lseek(descriptor, 0, SEEK_SET)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            bytes.append(contentsOf: chunk.prefix(count))
        }
        var offset = 0, applied = 0
        while offset + 4 <= bytes.count {
            let length = bytes[offset..<offset + 4].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
            guard offset + 4 + length <= bytes.count else { break }
            let request = bytes[(offset + 4)..<(offset + 4 + length)].withUnsafeBytes { KV.decode(request: $0) }
            if let request {
                apply(request)
                applied += 1
            }
            offset += 4 + length
        }
        return applied
    }
}

/// An error with its sentence, for the daemon's start.
struct StartFailure: Error, CustomStringConvertible {
    let description: String
}

func failure(_ message: String) -> StartFailure { StartFailure(description: "kv-host: " + message) }

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
