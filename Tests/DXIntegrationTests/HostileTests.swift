import CShm
import DXCore
import Foundation
import Testing

/// CPU time (user + system) a process has used so far, in seconds, from /proc/PID/stat.
func cpuSeconds(_ pid: Int32) -> Double {
    Double(max(CShm_process_cpu_ns(pid), 0)) / 1e9
}

/// The resident set size of a process, in KiB, from /proc/PID/status.
func residentKiB(_ pid: Int32) -> Int {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
}

/// A field of the region of `name`, read through a read-only mapping of our own (the field table
/// of a host with `lanes` lanes, one worker, 4 KiB slots and `raw` raw channels).
func regionField(_ name: String, _ field: String, index: Int, lanes: Int, raw: Int) throws -> UInt64 {
    let fields = Layout.fields(laneCount: lanes, workerCount: 1, rawCount: raw, slotCapacity: 4096)
    let wanted = try #require(fields.first { $0.name == field && $0.index == index })
    let fd = open("/dev/shm/dx.\(name)", O_RDONLY)
    guard fd >= 0 else { throw SystemError("open", errno: errno) }
    defer { close(fd) }
    let size = Layout.regionSize(laneCount: lanes, slotCapacity: 4096, rawCount: raw)
    guard let base = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), base != MAP_FAILED else {
        throw SystemError("mmap", errno: errno)
    }
    defer { munmap(base, size) }
    return wanted.width == 8 ? CShm_load_acquire_u64(base + wanted.offset) : UInt64(CShm_load_acquire_u32(base + wanted.offset))
}

/// The files a host of `name` keeps besides its region: its control socket and its lock file.
func runtimeFiles(_ name: String) -> [String] {
    [ControlPath.socket(for: name), "/dev/shm/dx-lock.\(name)"].filter { access($0, F_OK) == 0 }
}

/// A guest that writes anything anywhere in its region, against the real binaries. After each
/// attack the host is alive, uses little CPU once the vandal stops, stops on SIGTERM with exit 0
/// and leaves nothing behind; honest guests beside the vandal may see failed calls, but every one
/// of their calls ends.
@Suite(.serialized, .timeLimit(.minutes(10))) struct HostileTests {
    /// The host's CPU use over `seconds`, as a fraction of one CPU.
    func hostCPU(_ host: RunningHost, over seconds: Double) -> Double {
        let pid = host.process.processIdentifier
        let start = cpuSeconds(pid)
        usleep(UInt32(seconds * 1e6))
        return (cpuSeconds(pid) - start) / seconds
    }

    /// The end of every attack: the host lives, idles cheaply, stops cleanly, leaves nothing.
    func expectHostSurvived(_ host: RunningHost, _ attack: String) throws {
        #expect(host.process.isRunning, "\(attack): the host died")
        let cpu = hostCPU(host, over: 1)
        print("\(attack): host CPU after the attack \(String(format: "%.1f", cpu * 100)) % of a CPU")
        #expect(cpu < 0.10, "\(attack): the host keeps spinning after the vandal stopped")
        #expect(try host.stop() == 0, "\(attack): the host did not stop cleanly")
        #expect(host.process.terminationReason == .exit)
        #expect(!regionExists(host.name))
        #expect(runtimeFiles(host.name) == [], "\(attack): left \(runtimeFiles(host.name))")
    }

    /// Whole-region fills, random writes, every field of every block, and garbage in claimed lanes,
    /// each while two honest guest threads run checked traffic in the same region. In a named
    /// region the vandal writes the honest lanes too: they count failures, but never hang or crash.
    @Test(arguments: ["fill", "random", "fields", "lanes"])
    func vandalBesideHonestTraffic(mode: String) throws {
        let host = try RunningHost(arguments: ["--lanes", "8", "--raw"])
        let honest = try Background(Binaries.guest, ["soak", "--name", host.name, "--threads", "2", "--duration", "3.5",
                                                     "--keep-going", "--call-timeout", "1", "--wait", "fair"])
        #expect(try eventually(timeout: 5) { try (hostStats(host.name)["lanes_claimed"] as? Int ?? 0) >= 2 } != nil)
        let vandal = try run(Binaries.guest, ["vandal", "--name", host.name, "--mode", mode, "--lanes", "3", "--duration", "2"])
        #expect(vandal.status == 0, "\(vandal.stderr)")
        print("vandal \(vandal.stdout.prefix(300))")
        let honestTook = honest.wait(timeout: 20)
        #expect(honestTook != nil, "\(mode): an honest guest hung")
        #expect(honest.process.terminationReason == .exit && honest.process.terminationStatus == 0, "\(honest.errors)")
        print("\(mode): honest traffic \(honest.output.split(separator: "\n").last ?? "")")
        try expectHostSurvived(host, mode)
    }

    /// A vandal writes `UInt64.max`, values past `Int64.max`, zero, decreasing values and noise into
    /// every lane's guest counters while a scraper asks for `ctl metrics` again and again (each
    /// scrape collects them into swift-metrics and renders swift-prometheus): every scrape answers,
    /// no value goes negative or past `Int64.max`, and the host survives.
    @Test func hugeAndDecreasingGuestCountersCannotCrashTheMetrics() throws {
        let host = try RunningHost(arguments: ["--lanes", "4"])
        let honest = try Background(Binaries.guest, ["soak", "--name", host.name, "--threads", "1", "--duration", "4",
                                                     "--keep-going", "--call-timeout", "1"])
        #expect(try eventually(timeout: 5) { try (hostStats(host.name)["lanes_claimed"] as? Int ?? 0) >= 1 } != nil)
        let vandal = try Background(Binaries.guest, ["vandal", "--name", host.name, "--mode", "counters", "--lanes", "2",
                                                     "--duration", "3"])
        var scrapes = 0
        var guestSamples = 0
        while vandal.process.isRunning {
            let outcome = try run(Binaries.host, ["ctl", "metrics", "--name", host.name], timeout: 10)
            #expect(outcome.status == 0, "scrape \(scrapes): \(outcome.stderr)")
            let text = PrometheusText(outcome.stdout)
            for sample in text.samples {
                #expect(sample.value >= 0 && sample.value <= Double(Int64.max), "\(sample.line)")
            }
            guestSamples += text.samples.filter { $0.name.hasPrefix("dx_lane_guest_") }.count
            scrapes += 1
        }
        #expect(vandal.wait(timeout: 10) != nil)
        #expect(vandal.process.terminationStatus == 0, "\(vandal.errors)")
        print("counters: \(scrapes) scrapes, \(guestSamples) guest samples; vandal \(vandal.output.prefix(200))")
        #expect(scrapes >= 3 && guestSamples > 0)
        #expect(honest.wait(timeout: 20) != nil, "the honest guest hung")
        // The metrics still answer after the attack, with the host's own counts intact.
        let after = PrometheusText(try run(Binaries.host, ["ctl", "metrics", "--name", host.name]).stdout)
        #expect((after.samples.first { $0.name == "dx_round_trips_total" }?.value ?? 0) > 0)
        try expectHostSurvived(host, "counters")
    }

    /// A guest killed during a raw baseline run leaves its channel owned; the raw server finds the
    /// owner's lock free, reclaims the channel (its owner word goes back to free, which only a
    /// reclaim does: the guest is dead) and goes back to sleep instead of spinning forever.
    @Test func killedRawGuestDoesNotLeaveTheServerSpinning() throws {
        let host = try RunningHost(arguments: ["--lanes", "2", "--raw"])
        let guest = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "1", "--duration", "60",
                                                    "--baseline", "raw"])
        // The raw run comes first; the host burns a CPU on it while it runs.
        #expect(eventually(timeout: 5) { hostCPU(host, over: 0.2) > 0.5 } != nil)
        #expect(try regionField(host.name, "raw owner", index: 0, lanes: 2, raw: 2) >> 32 != 0)
        kill(guest.process.processIdentifier, SIGKILL)
        guest.process.waitUntilExit()
        let reclaimedAfter = try eventually(timeout: 5) {
            try regionField(host.name, "raw owner", index: 0, lanes: 2, raw: 2) >> 32 == 0
        }
        #expect(reclaimedAfter != nil, "the dead guest's raw channel was never reclaimed")
        let quietAfter = eventually(timeout: 5) { hostCPU(host, over: 0.5) < 0.10 }
        #expect(quietAfter != nil, "the raw server kept spinning for a dead guest")
        // The channel is free again.
        let again = try run(Binaries.guest, ["bench", "--name", host.name, "--threads", "1", "--calls", "1000",
                                             "--baseline", "raw", "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        try expectHostSurvived(host, "raw guest killed")
    }

    /// A raw-baseline guest that claims a channel and then only posts the server's parker, never
    /// pinging, buys no spinning: a session ends ~200 µs after the last ping, and only a new ping
    /// starts one again (the review's attack: a post every 0.9 s kept half a CPU busy).
    @Test func postsWithoutPingsBuyNoSpinning() throws {
        let host = try RunningHost(arguments: ["--lanes", "2", "--raw"])
        let vandal = try Background(Binaries.guest, ["vandal", "--name", host.name, "--mode", "raw-posts", "--duration", "4"])
        #expect(eventually(timeout: 5) { vandal.output.contains("posting") } != nil)
        let cpu = hostCPU(host, over: 2)
        print("raw posts without pings: host CPU \(String(format: "%.1f", cpu * 100)) % of a CPU")
        #expect(cpu < 0.10, "each post bought a spinning session")
        #expect(vandal.wait(timeout: 10) != nil)
        try expectHostSurvived(host, "raw posts")
    }

    /// Someone removes the region's name while the host serves: the host still stops cleanly and
    /// lets go of its lock file (found by the second review: the lock stayed behind).
    @Test func aRemovedRegionNameStillLetsTheHostCleanUp() throws {
        let host = try RunningHost()
        #expect(unlink("/dev/shm/dx.\(host.name)") == 0)
        #expect(try host.stop() == 0)
        #expect(runtimeFiles(host.name) == [], "left \(runtimeFiles(host.name))")
    }

    /// A turn held forever by a vandal: an honest call fails at its timeout, it does not hang.
    @Test func aTurnHeldForeverFailsTheCallAtItsTimeout() throws {
        let host = try RunningHost(arguments: ["--lanes", "2"])
        let vandal = try Background(Binaries.guest, ["vandal", "--name", host.name, "--mode", "turn", "--duration", "6"])
        #expect(eventually(timeout: 5) { vandal.output.contains("holding the turn") } != nil)
        let start = Date()
        let call = try run(Binaries.guest, ["call", "--name", host.name, "--wait", "fair", "--call-timeout", "1", "hi"])
        let took = Date().timeIntervalSince(start)
        #expect(call.status == 5, "\(call.stdout) \(call.stderr)")
        #expect(call.stderr.contains("did not answer in time"), "\(call.stderr)")
        #expect(took < 3, "the call took \(took) s with a 1 s timeout")
        #expect(vandal.wait(timeout: 10) != nil)
        // Without the vandal the turn moves on (its lease goes stale) and calls work again.
        #expect(try run(Binaries.guest, ["call", "--name", host.name, "--wait", "fair", "again"]).stdout == "again\n")
        try expectHostSurvived(host, "turn held")
    }

    /// A guest that stalls while it holds its lanes (SIGSTOP) keeps them: its lock is held, so it
    /// is alive whatever its owner words say. Killed, it loses them at once.
    @Test func aStalledGuestKeepsItsLanesAndADeadOneLosesThem() throws {
        let host = try RunningHost(arguments: ["--lanes", "4"])
        let guest = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "2", "--duration", "60"])
        #expect(try eventually(timeout: 5) { try hostStats(host.name)["lanes_claimed"] as? Int == 2 } != nil)
        kill(guest.process.processIdentifier, SIGSTOP)
        // Absence over time: the host looks every 100 ms, so 1 s is ten looks.
        usleep(1_000_000)
        var stats = try hostStats(host.name)
        #expect(stats["reclaimed_lanes"] as? Int == 0)
        #expect(stats["lanes_claimed"] as? Int == 2)
        kill(guest.process.processIdentifier, SIGKILL)
        guest.process.waitUntilExit()
        let reclaimedAfter = try eventually(timeout: 5) { try hostStats(host.name)["reclaimed_lanes"] as? Int == 2 }
        #expect(reclaimedAfter != nil)
        print("stalled then killed: lanes reclaimed \(String(format: "%.2f", reclaimedAfter ?? -1)) s after SIGKILL")
        #expect((reclaimedAfter ?? .infinity) < 2, "a dead guest's lanes were reclaimed only after \(reclaimedAfter ?? -1) s")
        stats = try hostStats(host.name)
        #expect(stats["lanes_claimed"] as? Int == 0)
        try expectHostSurvived(host, "stalled guest")
    }

    /// Two hosts started at once under one name, 100 times: exactly one serves each time, and the
    /// other refuses with "already running" (exit 4). Every other try the second host runs in
    /// another environment (its own `XDG_RUNTIME_DIR`, as from another session), which must not
    /// give it a lock of its own.
    @Test func twoHostsRacingForANameNeverBothServe() throws {
        let name = uniqueName()
        let otherRuntime = FileManager.default.temporaryDirectory.appendingPathComponent("dx-xdg-\(getpid())-\(UUID().uuidString.prefix(6))").path
        #expect(mkdir(otherRuntime, 0o700) == 0)
        defer { try? FileManager.default.removeItem(atPath: otherRuntime) }
        var outcomes = [Int32: Int]()
        for attempt in 0..<100 {
            let first = try Background(Binaries.host, ["--name", name, "--log-level", "error", "--lanes", "1"])
            let second = try Background(Binaries.host, ["--name", name, "--log-level", "error", "--lanes", "1"],
                                        environment: attempt % 2 == 1 ? ["XDG_RUNTIME_DIR": otherRuntime] : [:])
            // One of them refuses at once; wait for that.
            let loserGone = eventually(timeout: 10) { !first.process.isRunning || !second.process.isRunning }
            #expect(loserGone != nil)
            let (loser, winner) = first.process.isRunning ? (second, first) : (first, second)
            outcomes[loser.process.terminationStatus, default: 0] += 1
            #expect(winner.process.isRunning, "neither host serves: \(loser.errors) \(winner.errors)")
            kill(winner.process.processIdentifier, SIGTERM)
            #expect(winner.wait(timeout: 10) != nil)
            #expect(winner.process.terminationStatus == 0, "\(winner.errors)")
        }
        #expect(outcomes == [4: 100], "exit statuses of the refused hosts: \(outcomes)")
        #expect(!regionExists(name))
        #expect(runtimeFiles(name) == [])
    }

    /// A region object that another user could write (mode 0666) is refused by guests, which
    /// touch nothing in it; dx-host replaces it only because it is its own user's and unlocked.
    @Test func aWorldWritableRegionIsRefused() throws {
        let name = uniqueName()
        let fd = shm_open("/dx.\(name)", O_CREAT | O_EXCL | O_RDWR, 0o600)
        #expect(fd >= 0)
        defer { shm_unlink("/dx.\(name)") }
        #expect(fchmod(fd, 0o666) == 0 && ftruncate(fd, off_t(Layout.headerSize)) == 0)
        close(fd)
        let call = try run(Binaries.guest, ["call", "--name", name, "hi"])
        #expect(call.status == 3)
        #expect(call.stderr.contains("has mode 666, writable by other users; refusing it"), "\(call.stderr)")
        let host = try RunningHost(name: name)
        var info = stat()
        #expect(stat("/dev/shm/dx.\(name)", &info) == 0 && info.st_mode & 0o777 == 0o600)
        try expectHostSurvived(host, "world-writable squat")
    }

    static let canActAsAnotherUser = getuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0

    /// As root: user nobody creates the region's name first (a squatter). The host refuses to use
    /// or remove it, and a guest refuses to call it; naming the squatter's uid is the only way in.
    @Test(.enabled(if: canActAsAnotherUser, "needs root and setpriv to act as another user"))
    func anotherUsersObjectUnderTheNameIsNeverFollowed() throws {
        let name = uniqueName()
        let squat = try run(URL(fileURLWithPath: "/usr/bin/setpriv"),
                            ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "/bin/sh", "-c",
                             "umask 0; head -c 8192 /dev/zero > /dev/shm/dx.\(name)"])
        #expect(squat.status == 0, "\(squat.stderr)")
        defer { unlink("/dev/shm/dx.\(name)") }
        var info = stat()
        #expect(stat("/dev/shm/dx.\(name)", &info) == 0)
        let refusedHost = try run(Binaries.host, ["--name", name, "--log-level", "error"], timeout: 10)
        #expect(refusedHost.status == 1)
        #expect(refusedHost.stderr.contains("is taken by uid \(info.st_uid)"), "\(refusedHost.stderr)")
        #expect(regionExists(name))  // not removed
        #expect(runtimeFiles(name) == [], "the refused host left \(runtimeFiles(name))")
        let call = try run(Binaries.guest, ["call", "--name", name, "hi"])
        #expect(call.status == 3)
        #expect(call.stderr.contains("belongs to uid \(info.st_uid), not to the host's uid 0"), "\(call.stderr)")
    }

    /// As root: a process of user nobody can neither attach to the region nor reach the socket.
    @Test(.enabled(if: canActAsAnotherUser, "needs root and setpriv to act as another user"))
    func anotherUserCannotAttach() throws {
        let host = try RunningHost()
        var info = stat()
        #expect(stat("/dev/shm/dx.\(host.name)", &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        let copy = "/tmp/dx-guest-\(getpid())"
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: Binaries.guest.path, toPath: copy)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let outcome = try run(URL(fileURLWithPath: "/usr/bin/setpriv"),
                              ["--reuid=nobody", "--regid=nogroup", "--clear-groups", copy, "call", "--name", host.name,
                               "--host-uid", "0", "hi"])
        #expect(outcome.status == 3)
        #expect(outcome.stderr.contains("permission denied for region /dev/shm/dx.\(host.name)"), "\(outcome.stderr)")
        try expectHostSurvived(host, "another user")
    }
}
