import CShm
import DXCore
import DXTestSupport
import Foundation
import Synchronization
import Testing

/// `dx-host --private`: a sealed region per guest, handed over the host's socket. Every test runs
/// the real dx-host; guests are this process (through DXCore) or real dx-guest processes.
@Suite(.serialized, .timeLimit(.minutes(5))) struct PrivateRegionTests {
    /// A private host; ready when its socket hands out a region.
    func privateHost(_ arguments: [String] = []) throws -> RunningHost {
        try RunningHost(arguments: ["--private"] + arguments)
    }

    func guests(_ host: RunningHost) throws -> [[String: Any]] {
        try hostStats(host.name)["guests"] as? [[String: Any]] ?? []
    }

    @Test func aGuestGetsASealedRegionOfItsOwnThatNoNameReaches() throws {
        let host = try privateHost(["--lanes", "4"])
        let region = try Region.connect(name: host.name, lanes: 2)
        #expect(region.isPrivate)
        #expect(region.laneCount == 2)
        // No name anywhere: not in /dev/shm, and no lock file.
        #expect(!regionExists(host.name))
        #expect(access("/dev/shm/dx-lock.\(host.name)", F_OK) != 0)
        // Sealed: neither side can resize it (a guest cannot SIGBUS the host).
        #expect(CShm_seals_complete(CShm_seals(region.descriptor)))
        #expect(ftruncate(region.descriptor, 0) == -1 && errno == EPERM)
        #expect(ftruncate(region.descriptor, 1 << 30) == -1 && errno == EPERM)
        // Calls work, and the host counts this guest.
        var lane = try region.claimLane()
        let reply = try lane.call(Array("private".utf8)).get()
        #expect(reply == Array("private".utf8))
        let listed = try guests(host)
        #expect(listed.count == 1)
        #expect(listed.first?["pid"] as? Int == Int(getpid()))
        #expect(listed.first?["lanes"] as? Int == 2)
        // Two guests get two different objects.
        let other = try Region.connect(name: host.name, lanes: 1)
        var mine = stat(), theirs = stat()
        fstat(region.descriptor, &mine)
        fstat(other.descriptor, &theirs)
        #expect(mine.st_ino != theirs.st_ino)
        #expect(try guests(host).count == 2)
        #expect(try host.stop() == 0)
        #expect(runtimeFiles(host.name) == [])
    }

    @Test func limitsAreRefusedWithASentence() throws {
        let host = try privateHost(["--lanes", "2", "--max-lanes", "4", "--max-guests", "3", "--max-guests-per-uid", "2"])
        #expect(throws: RegionAttachError.self) { try Region.connect(name: host.name, lanes: 5) }
        do {
            _ = try Region.connect(name: host.name, lanes: 5)
        } catch {
            #expect("\(error)".contains("lanes must be between 1 and 4"), "\(error)")
        }
        let first = try Region.connect(name: host.name, lanes: 1)
        let second = try Region.connect(name: host.name, lanes: 1)
        do {
            _ = try Region.connect(name: host.name, lanes: 1)
            Issue.record("a third region for one uid was handed out")
        } catch {
            #expect("\(error)".contains("has its limit of 2 regions"), "\(error)")
        }
        _ = (first, second)
        #expect(try host.stop() == 0)
    }

    /// A guest that closes its connection, or dies, has its region freed at once; the others keep
    /// being served.
    @Test func aKilledGuestsRegionIsFreedAndTheOthersGoOn() throws {
        let host = try privateHost()
        let keeper = try Region.connect(name: host.name, lanes: 1)
        var lane = try keeper.claimLane()
        let victim = try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "2", "--duration", "60"])
        #expect(try eventually(timeout: 10) { try guests(host).count == 2 } != nil)
        kill(victim.process.processIdentifier, SIGKILL)
        victim.process.waitUntilExit()
        let freedAfter = try eventually(timeout: 5) { try guests(host).count == 1 }
        #expect(freedAfter != nil, "the dead guest's region was never freed")
        print("private: killed guest's region freed \(String(format: "%.3f", freedAfter ?? -1)) s after SIGKILL (polled every 20 ms)")
        for round in 0..<100 {
            let reply = try lane.call(Array("still \(round)".utf8)).get()
            #expect(reply == Array("still \(round)".utf8))
        }
        // Closing the connection (dropping the region) frees it too.
        _ = consume lane
        _ = consume keeper
        #expect(try eventually(timeout: 5) { try guests(host).isEmpty } != nil)
        #expect(try host.stop() == 0)
    }

    /// Guests killed in the middle of their calls, again and again, while another guest calls:
    /// the host frees each region while its worker may still be answering it, and must neither
    /// crash nor stop serving the others. (A region's host counters once went with the guest
    /// before the worker let go of the region: the worker wrote into freed memory.)
    @Test func guestsKilledMidCallNeverHurtTheHost() throws {
        let host = try privateHost()
        let keeper = try Region.connect(name: host.name, lanes: 1)
        var lane = try keeper.claimLane()
        for round in 0..<6 {
            let victims = try (0..<3).map { _ in
                try Background(Binaries.guest, ["bench", "--name", host.name, "--threads", "2", "--duration", "60", "--no-latency"])
            }
            // Killed once every victim is connected and calling (its region counts round trips).
            let calling = try eventually(timeout: 10) {
                let listed = try guests(host)
                return listed.count == 4 && listed.allSatisfy { ($0["round_trips"] as? Int ?? 0) > 0 || $0["pid"] as? Int == Int(getpid()) }
            }
            #expect(calling != nil, "round \(round): the victims never called")
            for victim in victims { kill(victim.process.processIdentifier, SIGKILL) }
            for victim in victims { victim.process.waitUntilExit() }
            #expect(try eventually(timeout: 5) { try guests(host).count == 1 } != nil, "round \(round): regions not freed")
            let reply = try lane.call(Array("round \(round)".utf8)).get()
            #expect(reply == Array("round \(round)".utf8))
        }
        #expect(host.process.isRunning)
        _ = consume lane
        #expect(try host.stop() == 0)
    }

    /// A guest that hangs up while its thread keeps calling, 100 times: the host frees the region
    /// while requests still arrive in it; its worker must stop touching the region's memory and
    /// counters only when it lets go of it, never write into freed host memory.
    @Test func hangingUpMidTrafficIsSafe() throws {
        let host = try privateHost(["--lanes", "1"])
        for cycle in 0..<100 {
            let region = try Region.connect(name: host.name, lanes: 1)
            let calls = Atomic<Int>(0)
            let caller = try DXCore.Thread {
                guard var lane = try? region.claimLane() else { return }
                lane.callTimeoutNanoseconds = 200_000_000
                while case .success = lane.call([UInt8(truncatingIfNeeded: cycle)]) {
                    calls.add(1, ordering: .relaxed)
                }
            }
            while calls.load(ordering: .relaxed) < 50 { sched_yield() }
            shutdown(region.connection, Int32(SHUT_RDWR))
            caller.join()
        }
        #expect(host.process.isRunning, "the host died")
        let region = try Region.connect(name: host.name, lanes: 1)
        var lane = try region.claimLane()
        #expect(try lane.call([7]).get() == [7])
        _ = consume lane
        #expect(try host.stop() == 0)
    }

    /// A guest that says it wants the grant and never calls (review: it kept the worker granting
    /// it at 100 % of a CPU): the host arms its region after one grant and idles, while it stays
    /// connected.
    @Test func aWantWithoutCallsBuysNoSpinning() throws {
        let host = try privateHost()
        let vandal = try Background(Binaries.guest, ["vandal", "--name", host.name, "--mode", "want", "--duration", "4"])
        #expect(try eventually(timeout: 5) { try guests(host).count == 1 } != nil)
        // Over a second while it sits there, connected, wanting: below 10 % of a CPU.
        let cpu = HostileTests().hostCPU(host, over: 1)
        print("private: host CPU beside a want without calls \(String(format: "%.1f", cpu * 100)) %")
        #expect(cpu < 0.10)
        #expect(try guests(host).count == 1, "the vandal left before the measurement ended")
        #expect(vandal.wait(timeout: 10) != nil)
        #expect(try host.stop() == 0)
    }

    /// A flood of connections (260 held open: the 64 clients it takes, those it refuses, a full
    /// listen backlog) does not make the host spin, and it serves again once they go.
    @Test func aFloodOfConnectionsDoesNotSpinTheHost() throws {
        let host = try privateHost(["--max-guests", "30"])
        let socket = ControlPath.socket(for: host.name)
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        for _ in 0..<260 {
            let fd = CShm_unix_connect_within(socket, 200_000_000)
            if fd >= 0 { held.append(fd) }
        }
        let cpu = HostileTests().hostCPU(host, over: 1)
        print("private: host CPU with \(held.count) connections held: \(String(format: "%.1f", cpu * 100)) %")
        #expect(cpu < 0.10)
        for fd in held { close(fd) }
        held.removeAll()
        #expect(eventually(timeout: 10) { (try? Region.connect(name: host.name, lanes: 1)) != nil } != nil)
        #expect(try host.stop() == 0)
    }

    /// A descriptor limit too low for the guest limit (each guest holds two of the host's
    /// descriptors) is refused at start, with a sentence, instead of showing once the host is full.
    @Test func aDescriptorLimitBelowTheGuestLimitIsRefused() throws {
        let outcome = try run(URL(fileURLWithPath: "/bin/sh"),
                              ["-c", "ulimit -n 100 && exec \"$0\" --name \"$1\" --private --max-guests 30",
                               Binaries.host.path, uniqueName()], timeout: 20)
        #expect(outcome.status == 1)
        #expect(outcome.stderr.contains("the descriptor limit (100, ulimit -n) is below the 188 that 30 guests need"),
                "\(outcome.stderr)")
    }

    /// 1000 connect/disconnect cycles: the host's descriptors and threads come back to where they
    /// were, and its memory grows by less than 4 MiB.
    @Test func connectDisconnectCyclesLeaveTheHostFlat() throws {
        let host = try privateHost()
        func process() throws -> (fds: Int, threads: Int, rss: Int) {
            let facts = try #require(hostStats(host.name)["process"] as? [String: Any])
            return (facts["open_fds"] as? Int ?? -1, facts["threads"] as? Int ?? -1, facts["rss_kb"] as? Int ?? -1)
        }
        let fresh = try process()
        for _ in 0..<50 { _ = try Region.connect(name: host.name, lanes: 4) }  // warm up allocators
        // Each region's descriptor closes when its pool worker lets go of it, just after the guest
        // leaves the table.
        #expect(try eventually(timeout: 5) { try guests(host).isEmpty && process().fds == fresh.fds } != nil)
        let before = try process()
        for cycle in 0..<1000 {
            let region = try Region.connect(name: host.name, lanes: 4)
            if cycle % 100 == 0 {
                var lane = try region.claimLane()
                #expect(try lane.call([1, 2, 3]).get() == [1, 2, 3])
            }
        }
        #expect(try eventually(timeout: 5) { try guests(host).isEmpty && process().fds == before.fds } != nil)
        let after = try process()
        print("private: 1000 cycles: fds \(before.fds) → \(after.fds), threads \(before.threads) → \(after.threads), RSS \(before.rss) → \(after.rss) KiB")
        #expect(after.fds == before.fds)
        #expect(after.threads <= before.threads + 2)
        #expect(after.rss - before.rss < 4096)
        #expect(try host.stop() == 0)
    }

    /// The hostile suite on one private guest while 8 others run checked traffic: the vandal
    /// harms only its own region. The honest guests see no error at all.
    @Test(arguments: ["fill", "random", "fields", "lanes"])
    func aVandalHarmsOnlyItsOwnRegion(mode: String) throws {
        let host = try privateHost()
        let honest = try (0..<8).map { _ in
            try Background(Binaries.guest, ["soak", "--name", host.name, "--threads", "1", "--duration", "4",
                                            "--call-timeout", "2", "--wait", "fair"])
        }
        #expect(try eventually(timeout: 10) { try guests(host).count == 8 } != nil)
        let vandal = try run(Binaries.guest, ["vandal", "--name", host.name, "--mode", mode, "--lanes", "3", "--duration", "2",
                                              "--truncate"])
        #expect(vandal.status == 0, "\(vandal.stderr)")
        // The region is sealed: the vandal cannot shrink it under the host.
        #expect(vandal.stdout.contains("truncate refused 1"), "\(vandal.stdout)")
        for guest in honest {
            #expect(guest.wait(timeout: 30) != nil, "\(mode): an honest guest hung")
            #expect(guest.process.terminationReason == .exit && guest.process.terminationStatus == 0,
                    "\(mode): an honest guest failed: \(guest.errors)")
        }
        print("private \(mode): honest \(honest[0].output.split(separator: "\n").last ?? "")")
        #expect(try eventually(timeout: 5) { try guests(host).isEmpty } != nil)
        // Alive, idle below 10 % of a CPU, stops cleanly, leaves nothing.
        try HostileTests().expectHostSurvived(host, "private \(mode)")
    }

    /// As root: another user is refused unless the host allows it; allowed, it gets a region
    /// through a socket path it can reach, and may do nothing else there.
    @Test(.enabled(if: HostileTests.canActAsAnotherUser, "needs root and setpriv to act as another user"))
    func anotherUserIsRefusedUnlessAllowed() throws {
        let directory = "/tmp/dx-private-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        #expect(mkdir(directory, 0o755) == 0)
        defer { rmdir(directory) }
        let socket = "\(directory)/host.sock"
        let copy = "\(directory)/dx-guest"
        try FileManager.default.copyItem(atPath: Binaries.guest.path, toPath: copy)
        defer { unlink(copy) }
        let nobody = URL(fileURLWithPath: "/usr/bin/setpriv")
        func asNobody(_ arguments: [String]) throws -> Outcome {
            try run(nobody, ["--reuid=nobody", "--regid=nogroup", "--clear-groups", copy] + arguments, timeout: 20)
        }
        do {
            let host = try privateHost(["--control", socket])
            let refused = try asNobody(["call", "--name", host.name, "--control", socket, "--host-uid", "0", "hi"])
            #expect(refused.status != 0)
            #expect(refused.stderr.contains("permission denied"), "\(refused.stderr)")
            #expect(try host.stop() == 0)
        }
        let nobodyUID = try #require(getpwnam("nobody")).pointee.pw_uid
        let host = try privateHost(["--control", socket, "--allow-uid", String(nobodyUID)])
        let allowed = try asNobody(["call", "--name", host.name, "--control", socket, "--host-uid", "0", "hi"])
        #expect(allowed.status == 0, "\(allowed.stderr)")
        #expect(allowed.stdout.contains("hi"))
        // Without --host-uid the guest refuses a host of another user.
        let wrongOwner = try asNobody(["call", "--name", host.name, "--control", socket, "hi"])
        #expect(wrongOwner.status != 0)
        #expect(wrongOwner.stderr.contains("served by uid 0"), "\(wrongOwner.stderr)")
        // An allowed user may ask for a region, nothing else.
        let shutdown = try run(nobody, ["--reuid=nobody", "--regid=nogroup", "--clear-groups", Binaries.host.path,
                                        "ctl", "shutdown", "--control", socket, "--host-uid", "0"], timeout: 20)
        #expect(shutdown.status != 0)
        #expect(host.process.isRunning)
        #expect(try host.stop() == 0)
    }
}
