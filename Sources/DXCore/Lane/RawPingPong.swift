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
/// The server sleeps on its channel's semaphore between sessions; a session starts when a guest
/// claims the channel and posts it, and ends when the guest releases the channel.
final class RawServer: @unchecked Sendable {
    let region: Region
    let channel: UnsafeMutableRawPointer
    let stop: StopFlag

    init(region: Region, index: Int, stop: StopFlag) {
        self.region = region
        self.channel = region.rawChannel(index)
        self.stop = stop
    }

    func run() {
        let sleeping = channel + Layout.Raw.serverSleeping
        let semaphore = Semaphore(channel + Layout.Raw.serverSemaphore)
        while !stop.isSet {
            // Seq-cst: the flag before the owner check, paired with the guest's claim then post.
            CShm_store_seqcst_u32(sleeping, 1)
            if CShm_load_seqcst_u64(channel + Layout.Raw.owner) >> 32 == 0 {
                // A claim posts the semaphore, and so does the host's stop: the timeout is a backstop.
                _ = semaphore.wait(timeoutNanoseconds: 1_000_000_000)
            }
            CShm_store_relaxed_u32(sleeping, 0)
            if CShm_load_acquire_u64(channel + Layout.Raw.owner) >> 32 != 0 { session() }
        }
    }

    /// Answers pings until the guest releases the channel, the host stops, or a second passes
    /// without a ping.
    private func session() {
        let ping = channel + Layout.Raw.ping
        let pong = channel + Layout.Raw.pong
        var last = CShm_load_acquire_u64(pong)
        var idle: UInt32 = 0
        var lastProgress = CShm_monotonic_ns()
        while true {
            // Acquire: pairs with the guest's release store of ping; the payload is visible.
            let value = CShm_load_acquire_u64(ping)
            if value != last {
                last = value
                // Release: pairs with the guest's acquire load of pong.
                CShm_store_release_u64(pong, value)
                idle = 0
                continue
            }
            CShm_cpu_relax()
            idle &+= 1
            if idle & 0xFFFF == 0 {
                let now = CShm_monotonic_ns()
                if idle == 0x10000 { lastProgress = now }  // the first check since the last ping
                if stop.isSet || CShm_load_acquire_u64(channel + Layout.Raw.owner) >> 32 == 0
                    || now - lastProgress > 1_000_000_000 {
                    return
                }
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
    let channel: UnsafeMutableRawPointer
    let ownerWord: UInt64
    var sequence: UInt64

    init(region: Region, channel: UnsafeMutableRawPointer, ownerWord: UInt64) {
        self.region = region
        self.channel = channel
        self.capacity = region.slotCapacity
        self.ownerWord = ownerWord
        self.sequence = CShm_load_acquire_u64(channel + Layout.Raw.pong)
        CShm_store_release_u64(channel + Layout.Raw.ping, sequence)
    }

    deinit {
        _ = CShm_cas_acqrel_u64(channel + Layout.Raw.owner, ownerWord, ownerWord & 0xFFFF_FFFF)
    }

    /// One bare round trip: copy the request in, ping, spin for the pong, copy the response out.
    /// Returns false when no pong came within a second.
    package mutating func roundTrip(_ request: UnsafeRawBufferPointer, into response: UnsafeMutableRawBufferPointer) -> Bool {
        let payload = channel + Layout.Raw.payload
        let count = min(request.count, capacity)
        if count > 0 { payload.copyMemory(from: request.baseAddress!, byteCount: count) }
        let seq = sequence &+ 1
        sequence = seq
        // Release: publishes the payload; pairs with the server's acquire load.
        CShm_store_release_u64(channel + Layout.Raw.ping, seq)
        var spins: UInt32 = 0
        // Acquire: pairs with the server's release store of pong.
        while CShm_load_acquire_u64(channel + Layout.Raw.pong) != seq {
            CShm_cpu_relax()
            spins &+= 1
            if spins & 0xFFFFF == 0, region.hostProblem() != nil || spins >= 0x4000_0000 { return false }
        }
        let out = min(count, response.count)
        if out > 0 { response.baseAddress!.copyMemory(from: payload, byteCount: out) }
        return true
    }
}

extension Region {
    /// Claims raw baseline channel `index` and wakes its server. Returns nil when the host has
    /// no raw channel with that index or another guest uses it.
    package func claimRawChannel(_ index: Int) -> RawChannel? {
        guard index >= 0, index < rawCount else { return nil }
        let channel = rawChannel(index)
        let owner = channel + Layout.Raw.owner
        let word = CShm_load_acquire_u64(owner)
        guard word >> 32 == 0 else { return nil }
        let mine = UInt64(UInt32(bitPattern: getpid())) << 32 | UInt64(UInt32(truncatingIfNeeded: word &+ 1))
        guard CShm_cas_acqrel_u64(owner, word, mine) else { return nil }
        let raw = RawChannel(region: self, channel: channel, ownerWord: mine)
        // Seq-cst: the claim is visible before we load the server's sleeping flag, which the
        // server stores before it checks the owner.
        CShm_fence_seqcst()
        if CShm_load_seqcst_u32(channel + Layout.Raw.serverSleeping) != 0 {
            Semaphore(channel + Layout.Raw.serverSemaphore).post()
        }
        return raw
    }
}
