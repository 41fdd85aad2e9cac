import ArgumentParser
import DXCore
import KVProtocol
#if canImport(Glibc)
import Glibc
#endif

/// The key-value example's client: one dx guest lane per run. See README.md next to this file.
///
/// Exit status: 0 ok, 1 the key does not exist (GET, DEL), 3 any other failure (with a message on
/// standard error), 64 a usage error.
@main
struct KVGuest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kv-guest", abstract: "Talk to a kv-host over dx shared memory.",
        subcommands: [Get.self, Put.self, Del.self, Fill.self, Load.self])

    struct Options: ParsableArguments {
        @Option(help: "The kv-host's region name.")
        var name = "kv"
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the value of a key.")
        @OptionGroup var options: Options
        @Argument var key: String
        func run() throws {
            var client = try KVClient(name: options.name)
            let value = try client.request(.get, key: key)
            print(String(decoding: value, as: UTF8.self))
        }
    }

    struct Put: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set a key's value.")
        @OptionGroup var options: Options
        @Argument var key: String
        @Argument var value: String
        func run() throws {
            var client = try KVClient(name: options.name)
            _ = try client.request(.put, key: key, value: Array(value.utf8))
        }
    }

    struct Del: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a key.")
        @OptionGroup var options: Options
        @Argument var key: String
        func run() throws {
            var client = try KVClient(name: options.name)
            _ = try client.request(.del, key: key)
        }
    }

    struct Fill: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "PUT keys k0...k<count-1>, read each back, and print requests per second.")
        @OptionGroup var options: Options
        @Option(help: "How many keys.") var count = 10_000
        func run() throws {
            var client = try KVClient(name: options.name)
            let clock = ContinuousClock()
            let start = clock.now
            for index in 0..<count {
                _ = try client.request(.put, key: "k\(index)", value: Array("value \(index)".utf8))
            }
            for index in 0..<count {
                let value = try client.request(.get, key: "k\(index)")
                guard value == Array("value \(index)".utf8) else { throw failure("k\(index) read back wrong") }
            }
            let elapsed = clock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let rate = Int(Double(2 * count) / seconds)
            print("\(2 * count) requests (\(count) PUT, \(count) GET, every value checked): \(rate) requests/s")
        }
    }
}

/// Many tasks, few lanes: `--tasks` tasks share a `LanePool` of `--lanes` lanes, each task
/// PUTting its own keys and reading them back with async calls.
struct Load: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "From many tasks over a few lanes: PUT keys t<task>-<i> and read each back; print requests per second.")
    @OptionGroup var options: KVGuest.Options
    @Option(help: "Concurrent tasks.") var tasks = 1000
    @Option(help: "Lanes the tasks share.") var lanes = 4
    @Option(help: "Keys per task.") var keys = 10

    func run() async throws {
        let pool: LanePool
        do {
            pool = try LanePool(region: try Region.attach(name: options.name), width: lanes)
        } catch {
            throw failure("\(error)")
        }
        let keys = keys
        let clock = ContinuousClock()
        let start = clock.now
        let wrong = try await withThrowingTaskGroup(of: Int.self) { group in
            for task in 0..<tasks {
                group.addTask {
                    var wrong = 0
                    for index in 0..<keys {
                        let key = "t\(task)-\(index)", value = Array("value \(task) \(index)".utf8)
                        _ = try await pool.withLane { try await $0.request(.put, key: key, value: value) }
                        if try await pool.withLane({ try await $0.request(.get, key: key) }) != value { wrong += 1 }
                    }
                    return wrong
                }
            }
            return try await group.reduce(0, +)
        }
        guard wrong == 0 else { throw failure("\(wrong) values read back wrong") }
        let elapsed = clock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let requests = 2 * tasks * keys
        print("\(requests) requests from \(tasks) tasks over \(lanes) lanes (every value checked): \(Int(Double(requests) / seconds)) requests/s")
    }
}

extension Lane {
    /// One KV request as an async call; returns the value (GET) or throws the status.
    mutating func request(_ op: KV.Op, key: String, value: [UInt8] = []) async throws -> [UInt8] {
        let key = Array(key.utf8)
        var fits = true
        let answer = try await call(
            request: { buffer in
                guard let length = KV.encode(op, key: key, value: value, into: buffer) else {
                    fits = false
                    return 0
                }
                return length
            },
            response: { KV.decode(response: $0) })
        guard fits else { throw failure("the key must have 1...255 bytes and fit the lane with its value") }
        guard let (status, value) = answer else { throw failure("kv-host sent a malformed response") }
        guard status == .ok else { throw failure("kv-host: \(status)") }
        return value
    }
}

/// One guest lane speaking the KV protocol.
struct KVClient: ~Copyable {
    private var lane: Lane

    init(name: String) throws {
        do {
            let region = try Region.attach(name: name)
            lane = try region.claimLane()
        } catch {
            throw failure("\(error)")
        }
    }

    /// Sends one request; returns the value (GET) or throws the status.
    mutating func request(_ op: KV.Op, key: String, value: [UInt8] = []) throws -> [UInt8] {
        let key = Array(key.utf8)
        var fits = true
        let result = lane.call(
            request: { buffer in
                guard let length = KV.encode(op, key: key, value: value, into: buffer) else {
                    fits = false
                    return 0
                }
                return length
            },
            response: { KV.decode(response: $0) })
        guard fits else { throw failure("the key must have 1...255 bytes and fit the lane with its value") }
        switch result {
        case .success(let (status, value)?) where status == .ok: return value
        case .success((let status, _)?) where status == .notFound: throw ExitCode(1)
        case .success((let status, _)?): throw failure("kv-host: \(status)")
        case .success(nil): throw failure("kv-host sent a malformed response")
        case .failure(let error): throw failure("\(error)")
        }
    }
}

/// Prints `message` to standard error and returns the exit status for a failure.
func failure(_ message: String) -> ExitCode {
    var line = "kv-guest: \(message)\n"
    line.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    return ExitCode(3)
}
