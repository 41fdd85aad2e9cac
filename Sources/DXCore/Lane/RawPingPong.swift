#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

/// The raw baseline: a bare busy-spin ping-pong over one shared channel, with no library around it.
///
/// The guest writes a payload and a ping number; the host's raw server spins with the CPU-relax
/// hint until it sees the ping and answers with the same pong number (the payload is echoed in
/// place). This is the machine's limit for one lane, against which dx's overhead is measured.
/// The server parks on its channel (``Parker``) between sessions. A session starts when a guest
/// claims the channel and posts it, and ends when the guest releases the channel, when its owner
/// dies (its owner lock is free: the server reclaims the channel), or after a second without a
/// ping; a live owner that pings again after that posts the server. So a raw server never spins
/// for longer than a bounded session without a live, pinging owner.
final class RawServer: @unchecked Sendable {
    let region: Region
    let channel: RawChannelView
    let stop: StopFlag

    init(region: Region, index: Int, stop: StopFlag) {
        self.region = region
        self.channel = region.rawChannel(index)
        self.stop = stop
    }

    func run() {
        let parker = channel.parker, owner = channel.owner
        var idleOwner: UInt64 = 0  // the owner whose last session ended without pings
        while !stop.isSet {
            // A claim or a stalled guest posts the parker, and so does the host's stop: the timeout
            // is a backstop (and the pace of the dead-owner check below).
            let outcome = parker.park(timeoutNanoseconds: 1_000_000_000) {
                // Acquire, after the flag's seq-cst store; the guest's claim is an acquire-release
                // CAS followed by a seq-cst fence before it loads the flag.
                let word = owner.value
                return stop.isSet || (word >> 32 != 0 && word != idleOwner)
            }
            let word = owner.value
            guard word >> 32 != 0, !stop.isSet else { continue }
            if region.reclaimOwner(owner, word: word) { continue }  // its owner died
            // An owner that stopped pinging gets a session again only when it posts.
            if word == idleOwner, outcome != .posted { continue }
            idleOwner = session() ? 0 : word
        }
    }

    /// Answers pings until the guest releases the channel, the host stops, or a second passes
    /// without a ping. Returns false when it ended for want of pings.
    private func session() -> Bool {
        var last = channel.pong
        var idle: UInt32 = 0
        var lastProgress = CShm_monotonic_ns()
        while true {
            let value = channel.ping  // acquire: the payload is visible
            if value != last {
                last = value
                channel.pong(value)  // release
                idle = 0
                continue
            }
            CShm_cpu_relax()
            idle &+= 1
            if idle & 0xFFFF == 0 {
                let now = CShm_monotonic_ns()
                if idle == 0x10000 { lastProgress = now }  // the first check since the last ping
                if stop.isSet || channel.owner.value >> 32 == 0 { return true }
                if now - lastProgress > 1_000_000_000 { return false }
            }
        }
    }
}

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

    /// One bare round trip: copy the request in, ping, spin for the pong, copy the response out.
    /// Returns false when no pong came within about a second of spinning, or the host is gone.
    package mutating func roundTrip(_ request: UnsafeRawBufferPointer, into response: UnsafeMutableRawBufferPointer) -> Bool {
        let payload = channel.payload
        let count = min(request.count, capacity)
        if count > 0 { payload.copyMemory(from: request.baseAddress!, byteCount: count) }
        let seq = sequence &+ 1
        sequence = seq
        channel.ping(seq)  // release: publishes the payload
        var spins: UInt32 = 0
        while channel.pong != seq {  // acquire
            CShm_cpu_relax()
            spins &+= 1
            if spins & 0xFFFFF == 0 {
                // A long wait: the server may have parked after a pause of ours; post it.
                CShm_fence_seqcst()
                _ = channel.parker.unpark()
                if region.hostProblem() != nil || spins >= 0x4000_0000 { return false }
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
