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
/// The server parks on its channel (`Parker` (Wait/Parker.swift)) between sessions. A session starts when a guest
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
            _ = parker.park(timeoutNanoseconds: 1_000_000_000) {
                // Acquire loads, after the flag's seq-cst store; the guest's claim (or ping) is
                // followed by a seq-cst fence before it loads the flag.
                let word = owner.value
                return stop.isSet || (word >> 32 != 0 && (word != idleOwner || channel.ping != channel.pong))
            }
            let word = owner.value
            guard word >> 32 != 0, !stop.isSet else { continue }
            if region.reclaimOwner(owner, word: word) { continue }  // its owner died
            // An owner whose last session ended without pings gets a new one only for a new ping:
            // a post alone buys no spinning.
            if word == idleOwner, channel.ping == channel.pong { continue }
            idleOwner = session() ? 0 : word
        }
    }

    /// Answers pings until the guest releases the channel, the host stops, or about 200 µs pass
    /// without a ping (a guest that pings again posts the parker). Returns false when it ended for
    /// want of pings.
    private func session() -> Bool {
        var last = channel.pong
        var idle: UInt32 = 0
        var lastProgress = CShm_monotonic_ns()
        while true {
            let value = channel.ping  // acquire: the payload is visible
            if value != last {
                last = value
                channel.pong(value)  // seq-cst, like dx's response
                idle = 0
                continue
            }
            CShm_cpu_relax()
            idle &+= 1
            if idle & 0xFF == 0 {
                let now = CShm_monotonic_ns()
                if idle == 0x100 { lastProgress = now }  // the first check since the last ping (~7 µs)
                if stop.isSet || channel.owner.value >> 32 == 0 { return true }
                if now &- lastProgress > 200_000 { return false }
            }
        }
    }
}
