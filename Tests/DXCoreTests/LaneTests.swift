import CShm
import DXCore
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized, .timeLimit(.minutes(2))) struct LaneTests {
    @Test func claimsAreExclusiveUnderRacingThreads() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 8, slotCapacity: 64))
        defer { host.stop() }
        let region = try Region.attach(name: name)
        for _ in 0..<20 {
            let winners = Mutex<[Int]>([])
            let losers = Atomic<Int>(0)
            let holding = Atomic<Int>(0)
            let threads = try (0..<16).map { _ in
                try DXCore.Thread {
                    do {
                        let lane = try region.claimLane()
                        winners.withLock { $0.append(lane.index) }
                        holding.add(1, ordering: .relaxed)
                        // Hold the lane until every thread has tried, so no lane is claimed twice.
                        while holding.load(ordering: .relaxed) + losers.load(ordering: .relaxed) < 16 { sched_yield() }
                    } catch {
                        losers.add(1, ordering: .relaxed)
                    }
                }
            }
            for thread in threads { thread.join() }
            let claimed = winners.withLock { $0 }
            #expect(claimed.count == 8)
            #expect(Set(claimed).count == 8)
            #expect(losers.load(ordering: .relaxed) == 8)
        }
    }

    @Test func releasedLaneCanBeClaimedAgain() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 64))
        defer { host.stop() }
        let region = try Region.attach(name: name)
        var generations: [UInt64] = []
        for _ in 0..<3 {
            let lane = try region.claimLane()
            #expect(lane.index == 0)
            #expect(throws: LaneClaimError.noFreeLane(laneCount: 1)) { _ = try region.claimLane() }
            generations.append(try withRawRegion(name) { base, _, _ in
                CShm_load_acquire_u64(base + Layout.headerSize + Layout.Lane.owner)
            })
            _ = consume lane
        }
        // The owner word holds our pid and a generation that grows with every claim.
        #expect(generations.allSatisfy { $0 >> 32 == UInt64(getpid()) })
        #expect(generations.map { $0 & 0xFFFF_FFFF } == [1, 2, 3])
        let free = try withRawRegion(name) { base, _, _ in CShm_load_acquire_u64(base + Layout.headerSize + Layout.Lane.owner) }
        #expect(free == 3)
    }

    @Test func claimAfterShutdownFails() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        let region = try Region.attach(name: name)
        host.stop()
        #expect(throws: LaneClaimError.shutdown) { _ = try region.claimLane() }
    }
}
