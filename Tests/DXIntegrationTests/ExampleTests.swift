import Foundation
import Testing

/// Examples/KVHost and Examples/KVGuest, launched as built: the example daemon embeds DXCore's
/// host and control server, the client embeds its guest.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ExampleTests {
    static var kvHost: URL { Binaries.directory.appendingPathComponent("kv-host") }
    static var kvGuest: URL { Binaries.directory.appendingPathComponent("kv-guest") }

    @Test func kvGuestTalksToKVHost() throws {
        let name = uniqueName()
        let host = Process()
        host.executableURL = Self.kvHost
        host.arguments = ["--name", name, "--lanes", "4", "--max-entries", "3000"]
        let output = Pipe()
        host.standardOutput = output
        host.standardError = FileHandle.nullDevice
        try host.run()
        defer {
            if host.isRunning { kill(host.processIdentifier, SIGKILL) }
            unlink("/dev/shm/dx.\(name)")
        }
        // Ready when a GET gets an answer ("not found": exit 1).
        var ready = false
        for _ in 0..<250 where !ready {
            ready = try run(Self.kvGuest, ["get", "--name", name, "color"], timeout: 5).status == 1
            if !ready { usleep(20_000) }
        }
        try #require(ready)

        func guest(_ arguments: String...) throws -> Outcome {
            try run(Self.kvGuest, Array(arguments.prefix(1)) + ["--name", name] + arguments.dropFirst())
        }
        #expect(try guest("put", "color", "blue").status == 0)
        let get = try guest("get", "color")
        #expect(get.status == 0 && get.stdout == "blue\n")
        #expect(try guest("put", "color", "green").status == 0)
        #expect(try guest("get", "color").stdout == "green\n")
        #expect(try guest("del", "color").status == 0)
        #expect(try guest("get", "color").status == 1)
        #expect(try guest("del", "color").status == 1)

        // A key longer than the protocol allows is refused by the client, before any request.
        let long = try guest("put", String(repeating: "k", count: 256), "v")
        #expect(long.status == 3 && long.stderr.contains("1...255 bytes"))

        // 2000 keys written and read back, every value checked; then the store is full.
        let fill = try run(Self.kvGuest, ["fill", "--name", name, "--count", "2000"])
        #expect(fill.status == 0, "\(fill.stderr)")
        #expect(fill.stdout.contains("4000 requests"))
        #expect(try guest("get", "k1999").stdout == "value 1999\n")
        let full = try run(Self.kvGuest, ["fill", "--name", name, "--count", "3001"])
        #expect(full.status == 3 && full.stderr.contains("the store is full"))

        // A request that is not the KV protocol gets "bad request" (status 2), and the host goes on.
        let garbage = try run(Binaries.guest, ["call", "--name", name, "--hex", "garbage"])
        #expect(garbage.status == 0 && garbage.stdout == "0200000000\n", "\(garbage.stdout) \(garbage.stderr)")
        #expect(try guest("get", "k0").stdout == "value 0\n")

        // The embedded control server answers dx-host ctl.
        let stats = try run(Binaries.host, ["ctl", "stats", "--name", name, "--json"])
        #expect(stats.status == 0 && stats.stdout.contains("\"round_trips\""), "\(stats.stderr)")

        host.terminate()
        host.waitUntilExit()
        #expect(host.terminationStatus == 0)
        let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(said.contains("stopped after"))
        #expect(!regionExists(name))
    }

    /// The async side: kv-host with a journal (an async handler, in a ServiceGroup) and kv-guest's
    /// `load` (1000 tasks over 4 lanes, async calls through a LanePool). What was answered is in
    /// the journal: a second kv-host replays it.
    @Test func asyncKVHostJournalsAndManyTasksShareFewLanes() throws {
        let name = uniqueName()
        let journal = FileManager.default.temporaryDirectory.appendingPathComponent("kv-\(name).journal").path
        defer { unlink(journal) }
        func startHost() throws -> Process {
            let host = Process()
            host.executableURL = Self.kvHost
            host.arguments = ["--name", name, "--lanes", "4", "--journal", journal]
            host.standardOutput = FileHandle.nullDevice
            host.standardError = FileHandle.nullDevice
            try host.run()
            var ready = false
            for _ in 0..<250 where !ready && host.isRunning {
                ready = try run(Self.kvGuest, ["get", "--name", name, "t0-0"], timeout: 5).status != 3
                if !ready { usleep(20_000) }
            }
            try #require(ready, "kv-host --journal did not become ready")
            return host
        }
        let first = try startHost()
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let load = try run(Self.kvGuest, ["load", "--name", name, "--tasks", "1000", "--lanes", "4", "--keys", "3"], timeout: 100)
        #expect(load.status == 0, "\(load.stderr)")
        #expect(load.stdout.contains("6000 requests from 1000 tasks over 4 lanes (every value checked)"), "\(load.stdout)")
        first.terminate()
        first.waitUntilExit()
        #expect(first.terminationStatus == 0)

        let second = try startHost()
        defer { if second.isRunning { kill(second.processIdentifier, SIGKILL) } }
        for key in ["t0-0", "t517-1", "t999-2"] {
            let parts = key.dropFirst().split(separator: "-")
            let get = try run(Self.kvGuest, ["get", "--name", name, key])
            #expect(get.status == 0 && get.stdout == "value \(parts[0]) \(parts[1])\n", "\(key): \(get.stdout) \(get.stderr)")
        }
        second.terminate()
        second.waitUntilExit()
        #expect(second.terminationStatus == 0)
        #expect(!regionExists(name))
    }
}
