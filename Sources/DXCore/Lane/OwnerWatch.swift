import CShm

/// Finds lanes whose guest died and gives them back, from the host's housekeeping thread.
///
/// A lane's owner is dead when no process has its pid, or the process with that pid started at
/// another time than the one the guest wrote when it claimed the lane (the pid was reused). Lanes
/// whose round-trip count moved since the last look are skipped: their owner is evidently alive,
/// and the check (a read of /proc) is not free. An owner is reclaimed only when two looks in a row
/// find the same owner word dead, so a guest that has just claimed a lane, and not yet written
/// its start time, is never mistaken for a dead one.
struct OwnerWatch {
    let region: Region
    let counters: HostCounters
    private var lastRoundTrips: [UInt64]
    /// The owner word each lane had when it last looked dead, or 0.
    private var suspects: [UInt64]

    init(region: Region, counters: HostCounters) {
        self.region = region
        self.counters = counters
        lastRoundTrips = Array(repeating: .max, count: region.laneCount)
        suspects = Array(repeating: 0, count: region.laneCount)
    }

    /// Reclaims every lane with a dead owner; returns which, for the log.
    mutating func reclaimDeadOwners() -> [(index: Int, pid: Int32)] {
        var reclaimed: [(index: Int, pid: Int32)] = []
        for index in 0..<region.laneCount {
            let lane = region.lane(index)
            let roundTrips = counters.read(counters.lane(index) + HostCounters.Lane.roundTrips)
            defer { lastRoundTrips[index] = roundTrips }
            // Acquire: pairs with the claiming guest's CAS, so its start time is visible.
            let owner = CShm_load_acquire_u64(lane + Layout.Lane.owner)
            let pid = Int32(truncatingIfNeeded: owner >> 32)
            guard pid != 0, roundTrips == lastRoundTrips[index] else {
                suspects[index] = 0
                continue
            }
            let startTime = CShm_load_relaxed_u64(lane + Layout.Lane.ownerStartTime)
            if CShm_process_alive(pid), CShm_process_start_time(pid) == startTime {
                suspects[index] = 0
                continue
            }
            guard suspects[index] == owner else {
                suspects[index] = owner  // look again next time
                continue
            }
            suspects[index] = 0
            // The generation stays, so the next claim is distinguishable from the dead one's.
            if CShm_cas_acqrel_u64(lane + Layout.Lane.owner, owner, owner & 0xFFFF_FFFF) {
                bump(counters.reclaimedLanes)
                reclaimed.append((index, pid))
            }
        }
        return reclaimed
    }
}
