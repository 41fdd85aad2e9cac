import CShm
import DXCore
import Foundation
import Testing

/// A process started in the background, killed if still running when dropped.
final class Background {
    let process = Process()
    let stdout: URL
    let stderr: URL

    init(_ binary: URL, _ arguments: [String], environment: [String: String] = [:]) throws {
        let token = UUID().uuidString
        stdout = FileManager.default.temporaryDirectory.appendingPathComponent("dx-bg-\(token).out")
        stderr = FileManager.default.temporaryDirectory.appendingPathComponent("dx-bg-\(token).err")
        _ = FileManager.default.createFile(atPath: stdout.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderr.path, contents: nil)
        process.executableURL = binary
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = try FileHandle(forWritingTo: stdout)
        process.standardError = try FileHandle(forWritingTo: stderr)
        try process.run()
    }

    /// Waits (bounded) for the exit; returns the seconds it took, or nil on timeout.
    func wait(timeout: Double) -> Double? {
        let start = Date()
        while process.isRunning, Date().timeIntervalSince(start) < timeout { usleep(5_000) }
        return process.isRunning ? nil : Date().timeIntervalSince(start)
    }

    var output: String { (try? String(contentsOf: stdout, encoding: .utf8)) ?? "" }
    var errors: String { (try? String(contentsOf: stderr, encoding: .utf8)) ?? "" }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: stdout)
        try? FileManager.default.removeItem(at: stderr)
    }
}

/// `dx-host ctl stats --json`, decoded.
func hostStats(_ name: String, control: String? = nil) throws -> [String: Any] {
    let outcome = try run(Binaries.host, ["ctl", "stats", "--name", name, "--json"] + (control.map { ["--control", $0] } ?? []))
    return try #require(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns the seconds it took.
func eventually(timeout: Double, _ condition: () throws -> Bool) rethrows -> Double? {
    let start = Date()
    while Date().timeIntervalSince(start) < timeout {
        if try condition() { return Date().timeIntervalSince(start) }
        usleep(20_000)
    }
    return nil
}

@Suite(.serialized, .timeLimit(.minutes(5))) struct ReliabilityTests {
    @Test func deadGuestLanesAreReclaimedWhileOthersKeepServing() throws {
        let host = try RunningHost(arguments: ["--lanes", "4"])
        let honest = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "1", "--duration", "3", "--json"])
        let victim = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "2", "--duration", "60"])
        #expect(try eventually(timeout: 5) { try hostStats(host.name)["lanes_claimed"] as? Int == 3 } != nil)
        kill(victim.process.processIdentifier, SIGKILL)
        victim.process.waitUntilExit()
        let reclaimedAfter = try eventually(timeout: 5) {
            let stats = try hostStats(host.name)
            return stats["reclaimed_lanes"] as? Int == 2 && stats["lanes_claimed"] as? Int == 1
        }
        #expect(reclaimedAfter != nil)
        print("dead guest: lanes reclaimed \(String(format: "%.2f", reclaimedAfter ?? -1)) s after SIGKILL")
        // The host looks for dead owners every 100 ms: well within two seconds (each look here
        // runs dx-host ctl, which takes part of that).
        #expect((reclaimedAfter ?? .infinity) < 2, "a dead guest's lanes were reclaimed only after \(reclaimedAfter ?? -1) s")
        // The honest guest never noticed, and the reclaimed lanes can be claimed again.
        #expect(honest.wait(timeout: 30) != nil)
        #expect(honest.process.terminationStatus == 0, "\(honest.errors)")
        #expect(try jsonLines(honest.output).first?["errors"] as? Int == 0)
        let again = try run(Binaries.guest, ["bench", "--name", host.name, "--threads", "4", "--calls", "2000", "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try host.stop() == 0)
    }

    @Test(arguments: ["auto", "fair", "spin", "low-cpu"])
    func deadHostFailsWaitingGuestsThenANewHostTakesOver(wait: String) throws {
        let host = try RunningHost(arguments: ["--lanes", "2"])
        let name = host.name
        let guest = try Background(Binaries.guest, ["bench", "--name", name, "--threads", "2", "--duration", "60", "--wait", wait])
        #expect(try eventually(timeout: 5) { try hostStats(name)["lanes_claimed"] as? Int == 2 } != nil)
        kill(host.process.processIdentifier, SIGKILL)
        host.process.waitUntilExit()
        let failedAfter = guest.wait(timeout: 10)
        #expect(failedAfter != nil, "the guest hung after its host died")
        print("dead host (\(wait)): the guest failed \(String(format: "%.2f", failedAfter ?? -1)) s after SIGKILL")
        // Waiting guests look at the host's lock between bounded sleeps (50 ms) or every 2²⁰ spins.
        #expect((failedAfter ?? .infinity) < 2, "the guest failed only \(failedAfter ?? -1) s after its host died")
        #expect(guest.process.terminationStatus == 6)
        #expect(guest.errors.contains("the dx host is no longer running"), "\(guest.errors)")
        // The dead host's region is still there; a new host takes it over without --force.
        #expect(regionExists(name))
        let successor = try RunningHost(name: name)
        #expect(try run(Binaries.guest, ["call", "--name", name, "again"]).stdout == "again\n")
        #expect(try successor.stop() == 0)
    }

    @Test func vandalHurtsOnlyItsOwnLanes() throws {
        let host = try RunningHost(arguments: ["--lanes", "6"])
        let honest = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "2", "--duration", "3",
                                                     "--vary-payload", "--payload", "4096", "--json"])
        #expect(try eventually(timeout: 5) { try hostStats(host.name)["lanes_claimed"] as? Int == 2 } != nil)
        let vandal = try run(Binaries.guest, ["vandal", "--name", host.name, "--lanes", "3", "--duration", "2"])
        #expect(vandal.status == 0, "\(vandal.stderr)")
        #expect(honest.wait(timeout: 30) != nil)
        #expect(honest.process.terminationStatus == 0, "\(honest.errors)")
        #expect(try jsonLines(honest.output).first?["errors"] as? Int == 0)
        let stats = try hostStats(host.name)
        #expect((stats["errors"] as? Int ?? 0) > 0)  // the vandal's lanes got error statuses
        #expect(host.process.isRunning)
        #expect(try run(Binaries.guest, ["call", "--name", host.name, "fine"]).stdout == "fine\n")
        #expect(try host.stop() == 0)
    }

    @Test func truncatedRegionStopsTheHostCleanly() throws {
        let host = try RunningHost(arguments: ["--lanes", "8"])
        let vandal = try run(Binaries.guest, ["vandal", "--name", host.name, "--lanes", "1", "--duration", "0.1", "--truncate"])
        #expect(vandal.status == 0, "\(vandal.stderr)")
        let stoppedAfter = eventually(timeout: 10) { !host.process.isRunning }
        #expect(stoppedAfter != nil, "the host did not stop after its region was truncated")
        #expect(host.process.terminationReason == .exit)  // not killed by SIGBUS
        // A stop nobody asked for exits 1, so that a supervisor notices; everything is removed.
        #expect(host.process.terminationStatus == 1)
        #expect(!regionExists(host.name))
        #expect(runtimeFiles(host.name) == [])
    }

    @Test func sigtermWakesWaitingGuestsAndCleansUp() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dx-rel-\(getpid())-\(UUID().uuidString.prefix(6))")
        let socket = directory.appendingPathComponent("h.sock").path
        let host = try RunningHost(arguments: ["--control", socket, "--lanes", "2"])
        // One guest busy (it spins for its responses), one that sleeps in (almost) every call: a
        // spin budget of one, so it is asleep in a call most of the time. Both must hear of the shutdown.
        let busy = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "1", "--duration", "60"])
        let sleepy = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "1", "--duration", "60",
                                                     "--wait", "low-cpu", "--spin-min", "1", "--spin-max", "1", "--spin-start", "1"])
        func lane(of guest: Background, in stats: [String: Any]) -> [String: Any]? {
            (stats["lanes"] as? [[String: Any]])?.first { $0["owner_pid"] as? Int == Int(guest.process.processIdentifier) }
        }
        var last: [String: Any] = [:]
        let running = try eventually(timeout: 10) {
            last = try hostStats(host.name, control: socket)
            guard let busyLane = lane(of: busy, in: last), let sleepyLane = lane(of: sleepy, in: last) else { return false }
            let sleepyCalls = sleepyLane["round_trips"] as? Int ?? 0
            return (busyLane["round_trips"] as? Int ?? 0) > 0 && sleepyCalls > 100
                && (sleepyLane["sleeps"] as? Int ?? 0) * 2 >= sleepyCalls
        }
        #expect(running != nil, "the guests never got going, or the sleepy one did not sleep on most calls: \(last)")
        #expect(try host.stop() == 0)
        for (guest, role) in [(busy, "busy"), (sleepy, "sleepy")] {
            let failedAfter = guest.wait(timeout: 10)
            #expect(failedAfter != nil, "the \(role) guest hung after SIGTERM")
            print("shutdown: the \(role) guest stopped \(String(format: "%.2f", failedAfter ?? -1)) s after the host exited")
            #expect((failedAfter ?? .infinity) < 2, "the \(role) guest stopped only \(failedAfter ?? -1) s after the host")
            #expect(guest.errors.contains("shutting down") || guest.errors.contains("no longer running"), "\(role): \(guest.errors)")
        }
        #expect(!regionExists(host.name))
        #expect(access(socket, F_OK) != 0)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [] == [])
    }

    /// Two signals, each delivered: the second is sent only once the host has taken the first
    /// (it logged it), so the kernel cannot merge them into one pending signal.
    @Test func secondSignalExitsAtOnceAndStillCleansUp() throws {
        let host = try Background(Binaries.host, ["--name", uniqueName(), "--log-level", "info", "--lanes", "2"])
        let name = try #require(host.process.arguments?[1])
        #expect(eventually(timeout: 10) { host.errors.contains("control socket") } != nil)
        kill(host.process.processIdentifier, SIGTERM)
        #expect(eventually(timeout: 10) { host.errors.contains("signal received, stopping") } != nil)
        let secondDelivered = kill(host.process.processIdentifier, SIGTERM) == 0
        #expect(host.wait(timeout: 10) != nil)
        #expect(host.process.terminationReason == .exit && host.process.terminationStatus == 0, "\(host.errors)")
        print("second signal \(secondDelivered ? "delivered while stopping" : "came after the exit")"
              + (host.errors.contains("second signal") ? ": exited at once" : ": the clean stop had finished"))
        #expect(!regionExists(name))
        #expect(runtimeFiles(name) == [])
    }

    /// SIGHUP (a closed terminal) stops the host as cleanly as SIGTERM; SIGPIPE is ignored.
    @Test func sighupStopsCleanlyAndSigpipeIsIgnored() throws {
        let host = try RunningHost()
        kill(host.process.processIdentifier, SIGPIPE)
        #expect(try run(Binaries.guest, ["call", "--name", host.name, "after SIGPIPE"]).stdout == "after SIGPIPE\n")
        kill(host.process.processIdentifier, SIGHUP)
        #expect(eventually(timeout: 10) { !host.process.isRunning } != nil)
        #expect(host.process.terminationReason == .exit && host.process.terminationStatus == 0)
        #expect(!regionExists(host.name))
        #expect(runtimeFiles(host.name) == [])
    }

    @Test func guestInterruptedReleasesItsLanesAndReportsWhatItHas() throws {
        let host = try RunningHost(arguments: ["--lanes", "4"])
        let guest = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "2", "--duration", "60"])
        #expect(try eventually(timeout: 5) { try hostStats(host.name)["lanes_claimed"] as? Int == 2 } != nil)
        kill(guest.process.processIdentifier, SIGINT)
        #expect(guest.wait(timeout: 10) != nil)
        #expect(guest.process.terminationStatus == 130)
        #expect(guest.output.contains("round trips/s"), "\(guest.output)")
        #expect(guest.errors.contains("interrupted"))
        // Released by the guest itself, not reclaimed by the host.
        let stats = try hostStats(host.name)
        #expect(stats["lanes_claimed"] as? Int == 0)
        #expect(stats["reclaimed_lanes"] as? Int == 0)
        #expect(try host.stop() == 0)
    }
}
