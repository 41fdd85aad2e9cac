import CShm

extension Region {
    /// Claims a free lane for the calling thread.
    ///
    /// The claim takes the lane's owner lock first, then CASes the owner word to
    /// `pid << 32 | generation + 1` (see `claimOwner` in Region/OwnerLock.swift). Lanes whose owner word
    /// says free are tried first; then lanes whose owner died (their lock is free). A lane whose
    /// last request is still unanswered (its owner died mid-call) is skipped until the host has
    /// answered it.
    public func claimLane(strategy: WaitStrategy = .auto, startingAt hint: Int = 0) throws(LaneClaimError) -> Lane {
        switch hostProblem() {
        case .shutdown?: throw .shutdown
        case .hostGone?: throw .hostGone
        case nil: break
        }
        var lock: OwnerLock?
        for deadOwners in [false, true] {
            for step in 0..<laneCount {
                let index = (max(hint, 0) % laneCount + step) % laneCount
                let lane = lane(index)
                // A hint for the order; the claim itself is the lock and the CAS.
                guard (lane.owner.hint >> 32 != 0) == deadOwners else { continue }
                let claim: OwnerClaim
                do {
                    guard let claimed = try claimOwner(lane.owner, lock: &lock) else { continue }
                    claim = claimed
                } catch {
                    throw .system(error)
                }
                // Acquire: pairs with the worker's and the last owner's seq-cst stores.
                guard lane.requestSeq == lane.responseSeq else { continue }  // dropping the claim releases it
                var claimed = Lane(region: self, index: index, claim: claim, sequence: lane.responseSeq, strategy: strategy)
                // A granted region's thread keeps off its worker's CPU from the claim on (the first
                // turn check would do it too, but as part of a call's latency).
                if claimed.grants, strategy.turnPolicy.turnCalls != 0, strategy.turnPolicy.avoidWorkerCPU {
                    claimed.keepOffWorkerCPU()
                }
                return claimed
            }
        }
        throw .noFreeLane(laneCount: laneCount)
    }
}
