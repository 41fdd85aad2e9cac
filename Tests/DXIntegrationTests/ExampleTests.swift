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
}
