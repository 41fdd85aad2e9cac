#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

/// The guest end of a raw baseline channel.
///
/// - Important: One thread at a time, like ``Lane``. Dropping it ends the session.
package struct RawChannel: ~Copyable {
    /// The largest payload, in bytes.
    package let capacity: Int
    let region: Region
    let channel: RawChannelView
    let claim: OwnerClaim
    var sequence: UInt64

    init(region: Region, channel: RawChannelView, claim: consuming OwnerClaim) {
        self.region = region
        self.channel = channel
        self.capacity = region.slotCapacity
        self.claim = claim
        self.sequence = channel.pong
        channel.ping(sequence)
    }

    /// Posts the server's parker whatever its flag says (the vandal's raw-posts mode: a post
    /// without a ping must buy no spinning).
    package func postServer() { channel.parker.post() }

    /// One bare round trip: copy the request in, ping, spin for the pong, copy the response out.
    /// Returns false when no pong came within a second, or the host is gone.
    package mutating func roundTrip(_ request: UnsafeRawBufferPointer, into response: UnsafeMutableRawBufferPointer) -> Bool {
        let payload = channel.payload
        let count = min(request.count, capacity)
        if count > 0 { payload.copyMemory(from: request.baseAddress!, byteCount: count) }
        let seq = sequence &+ 1
        sequence = seq
        channel.ping(seq)  // seq-cst, like dx's request: publishes the payload
        var spins: UInt32 = 0
        var deadline: UInt64 = 0
        while channel.pong != seq {  // acquire
            CShm_cpu_relax()
            spins &+= 1
            if spins & 0xFFF == 0 {
                // ~100 µs without a pong: the server may have parked after a pause of ours (it
                // does after ~200 µs without a ping); post it. Seq-cst fence: the ping is
                // visible before we load its sleeping flag.
                CShm_fence_seqcst()
                _ = channel.parker.unpark()
                if spins & 0x3FFFF == 0 {
                    // Every ~7 ms: the host's lock, and a one-second deadline from the first look.
                    let now = CShm_monotonic_ns()
                    if deadline == 0 { deadline = now &+ 1_000_000_000 }
                    if region.hostProblem() != nil || now >= deadline { return false }
                }
            }
        }
        let out = min(count, response.count)
        if out > 0 { response.baseAddress!.copyMemory(from: payload, byteCount: out) }
        return true
    }
}

extension Region {
    /// Claims raw baseline channel `index` and wakes its server. Returns nil when the host has
    /// no raw channel with that index or another live guest uses it.
    package func claimRawChannel(_ index: Int) throws(LaneClaimError) -> RawChannel? {
        guard index >= 0, index < rawCount else { return nil }
        let channel = rawChannel(index)
        var lock: OwnerLock?
        let claim: OwnerClaim
        do {
            guard let claimed = try claimOwner(channel.owner, lock: &lock) else { return nil }
            claim = claimed
        } catch {
            throw .system(error)
        }
        let raw = RawChannel(region: self, channel: channel, claim: claim)
        // Seq-cst: the claim is visible before we load the server's sleeping flag, which the
        // server stores before it checks the owner.
        CShm_fence_seqcst()
        _ = channel.parker.unpark()
        return raw
    }
}
