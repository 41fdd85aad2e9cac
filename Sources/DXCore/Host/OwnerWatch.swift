import CShm

/// Finds lanes and raw channels whose owner died and gives them back, from the host's
/// housekeeping thread.
///
/// An owner lives while it holds the lock on its block's owner word (``OwnerLock``); the kernel
/// drops that lock when the owner dies, whatever the owner word says. Lanes whose round-trip
/// count moved since the last look are skipped: their owner is evidently alive, and the check (an
/// `F_OFD_GETLK`) is a system call. The lock is taken before the owner word is written, so a
/// guest in the middle of a claim is never mistaken for a dead one.
struct OwnerWatch {
    let region: Region
    let counters: HostCounters
    private var lastRoundTrips: [UInt64]

    init(region: Region, counters: HostCounters) {
        self.region = region
        self.counters = counters
        lastRoundTrips = Array(repeating: .max, count: region.laneCount)
    }

    /// Reclaims every lane and raw channel with a dead owner; returns the lanes, for the log.
    mutating func reclaimDeadOwners() -> [(index: Int, pid: Int32)] {
        var reclaimed: [(index: Int, pid: Int32)] = []
        for index in 0..<region.laneCount {
            let lane = region.lane(index)
            let roundTrips = counters.read(counters.lane(index) + HostCounters.Lane.roundTrips)
            defer { lastRoundTrips[index] = roundTrips }
            guard roundTrips == lastRoundTrips[index] else { continue }
            let owner = lane.owner.value
            if region.reclaimOwner(lane.owner, word: owner) {
                bump(counters.reclaimedLanes)
                reclaimed.append((index, Int32(truncatingIfNeeded: owner >> 32)))
            }
        }
        for index in 0..<region.rawCount {
            let owner = region.rawChannel(index).owner
            _ = region.reclaimOwner(owner, word: owner.value)
        }
        return reclaimed
    }
}
