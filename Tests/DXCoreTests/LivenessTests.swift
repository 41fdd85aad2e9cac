import CShm
import DXCore
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Liveness comes from kernel locks (docs/LAYOUT.md, "Liveness"): what the kernel does with them is
/// what dx relies on, so it is checked here, then dx's use of it.
@Suite(.serialized, .timeLimit(.minutes(1))) struct LivenessTests {
    /// An OFD lock taken through a descriptor survives closing that descriptor while a mapping made
    /// from it exists (the mapping keeps the open file description), and goes with the mapping.
    @Test func anOFDLockLivesAsLongAsItsDescriptionIncludingMappings() throws {
        let name = "/dx." + uniqueName()
        let fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0o600)
        #expect(fd >= 0)
        defer { shm_unlink(name) }
        #expect(ftruncate(fd, 4096) == 0)
        #expect(CShm_ofd_trylock(fd, 16, 8) == 0)
        let mapping = try #require(mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        close(fd)
        let observer = shm_open(name, O_RDONLY, 0)
        defer { close(observer) }
        #expect(CShm_ofd_held(observer, 16, 8) == 1, "the lock went with the descriptor")
        #expect(CShm_ofd_held(observer, 0, 8) == 0, "other bytes are not locked")
        munmap(mapping, 4096)
        #expect(CShm_ofd_held(observer, 16, 8) == 0, "the lock outlived its last reference")
    }

    /// Two claims in one process are two descriptions: they conflict like two processes do, so one
    /// thread cannot take a lane another thread of the same process holds.
    @Test func claimsConflictWithinOneProcessAndReleaseFreesTheLock() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 2, slotCapacity: 64))
        defer { host.stop() }
        let region = try Region.attach(name: name)
        let observer = shm_open("/dx.\(name)", O_RDONLY, 0)
        defer { close(observer) }
        let lane0 = UInt64(Layout.headerSize + Layout.Lane.owner)
        let lane1 = lane0 + UInt64(region.laneStride)
        do {
            let first = try region.claimLane(startingAt: 0)
            #expect(first.index == 0)
            #expect(CShm_ofd_held(observer, lane0, 8) == 1)
            let second = try region.claimLane(startingAt: 0)
            #expect(second.index == 1, "lane 0 was claimed twice")
            #expect(CShm_ofd_held(observer, lane1, 8) == 1)
            #expect(throws: LaneClaimError.noFreeLane(laneCount: 2)) { _ = try region.claimLane() }
        }
        #expect(CShm_ofd_held(observer, lane0, 8) == 0 && CShm_ofd_held(observer, lane1, 8) == 0)
        // The owner words were freed too (pid 0, generation kept).
        try withRawRegion(name) { base, _, _ in
            #expect(CShm_load_relaxed_u64(base + Int(lane0)) == 1)
            #expect(CShm_load_relaxed_u64(base + Int(lane1)) == 1)
        }
    }

    /// An owner word left by a dead owner (no lock held) is taken over by the next claim, and an
    /// owner word forged over a live claim does not free its lane.
    @Test func ownerWordsAreNotTrustedLocksAre() throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 1, slotCapacity: 64))
        defer { host.stop() }
        try host.start(handler: EchoHandler())
        let region = try Region.attach(name: name)
        // A "dead" owner: a word with a pid and no lock.
        try withRawRegion(name) { base, _, _ in
            CShm_store_relaxed_u64(base + Layout.headerSize + Layout.Lane.owner, 0x7FFF_FFF0 << 32 | 41)
        }
        var lane = try region.claimLane()
        #expect(try lane.call([7]).get() == [7])
        try withRawRegion(name) { base, _, _ in
            #expect(CShm_load_relaxed_u64(base + Layout.headerSize + Layout.Lane.owner) & 0xFFFF_FFFF == 42)
            // Forge "free" over the live claim: the lock still says it lives.
            CShm_store_relaxed_u64(base + Layout.headerSize + Layout.Lane.owner, 42)
        }
        #expect(throws: LaneClaimError.noFreeLane(laneCount: 1)) { _ = try region.claimLane() }
        #expect(try lane.call([8]).get() == [8])
    }
}
