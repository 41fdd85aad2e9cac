import CShm
import DXCore
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Two u32 words (a sleeping flag and a futex word) on their own line, as in a region.
final class ParkerWords: @unchecked Sendable {
    let base = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 128)
    init() { base.initializeMemory(as: UInt8.self, repeating: 0, count: 128) }
    deinit { base.deallocate() }
    var parker: Parker { Parker(flag: base, word: base + 8) }
    var ready: UnsafeMutableRawPointer { base + 64 }
    var ack: UnsafeMutableRawPointer { base + 96 }
}

/// dx's semaphore (Wait/Parker.swift): bounded whatever is written into it, binary, and no
/// wake-up is lost.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ParkerTests {
    /// A post left in the word before a sleep (garbage, or a stale post) does not make the next
    /// sleep return at once: the sleeper zeroes the word before it announces itself.
    @Test func aStalePostOrGarbageDoesNotCutTheNextSleepShort() {
        let words = ParkerWords()
        for garbage: UInt32 in [1, 0x7FFF_FFFF, 0xFFFF_FFFF] {
            CShm_store_relaxed_u32(words.base + 8, garbage)
            let start = CShm_monotonic_ns()
            let outcome = words.parker.park(timeoutNanoseconds: 20_000_000) { false }
            let took = CShm_monotonic_ns() - start
            #expect(outcome == .timedOut)
            #expect(took >= 19_000_000, "slept \(took) ns of 20 ms after the word held \(garbage)")
            #expect(CShm_load_relaxed_u32(words.base) == 0, "the flag is cleared after the sleep")
        }
    }

    /// A vandal flips the word and wakes the futex as fast as it can: every park still returns
    /// within its timeout (plus scheduling slack), never later and never in an endless loop.
    @Test func parksStayBoundedWhileTheWordIsVandalised() throws {
        let words = ParkerWords()
        let stop = Atomic<Bool>(false)
        let vandal = try DXCore.Thread {
            var value: UInt32 = 0
            while !stop.load(ordering: .relaxed) {
                value = value &* 1_103_515_245 &+ 12_345
                CShm_store_relaxed_u32(words.base + 8, value & 1 == 0 ? 0 : value)
                CShm_store_relaxed_u32(words.base, value >> 16 & 1)
                _ = CShm_futex_wake((words.base + 8).assumingMemoryBound(to: UInt32.self), Int32.max)
            }
        }
        var longest: UInt64 = 0
        var outcomes = [String: Int]()
        let end = CShm_monotonic_ns() + 1_000_000_000
        while CShm_monotonic_ns() < end {
            let start = CShm_monotonic_ns()
            let outcome = words.parker.park(timeoutNanoseconds: 10_000_000) { false }
            longest = max(longest, CShm_monotonic_ns() - start)
            outcomes["\(outcome)", default: 0] += 1
        }
        stop.store(true, ordering: .relaxed)
        vandal.join()
        print("vandalised parker: \(outcomes), longest park \(longest / 1000) µs of a 10 ms timeout")
        #expect(outcomes["ready"] == nil)
        #expect(longest < 60_000_000, "a 10 ms park took \(longest) ns")
    }

    /// The handshake, 10,000 times: the publisher waits a little (so that the sleeper often parks),
    /// sets a value (seq-cst) and unparks; the sleeper parks until it sees the value, then acks.
    /// A lost wake-up would cost a whole 1 s park: no wait may come near it.
    @Test func noWakeUpIsLost() throws {
        let words = ParkerWords()
        let rounds: UInt64 = 10_000
        let sleeperLongest = Atomic<UInt64>(0)
        let sleeper = try DXCore.Thread {
            var longest: UInt64 = 0
            for round in 1...rounds {
                let start = CShm_monotonic_ns()
                while CShm_load_acquire_u64(words.ready) < round {
                    _ = words.parker.park(timeoutNanoseconds: 1_000_000_000) {
                        CShm_load_seqcst_u64(words.ready) >= round
                    }
                }
                longest = max(longest, CShm_monotonic_ns() - start)
                CShm_store_release_u64(words.ack, round)
            }
            sleeperLongest.store(longest, ordering: .relaxed)
        }
        var posts = 0
        var stuck = false
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for round in 1...rounds where !stuck {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            for _ in 0..<(state % 3000) { CShm_cpu_relax() }
            CShm_store_seqcst_u64(words.ready, round)
            if words.parker.unpark() { posts += 1 }
            let deadline = CShm_monotonic_ns() + 5_000_000_000
            var spins = 0
            while CShm_load_acquire_u64(words.ack) != round {
                CShm_cpu_relax()
                spins += 1
                if spins & 1023 == 0, CShm_monotonic_ns() > deadline { stuck = true; break }
            }
        }
        CShm_store_seqcst_u64(words.ready, .max)  // free the sleeper if it is behind
        _ = words.parker.unpark()
        sleeper.join()
        let longest = sleeperLongest.load(ordering: .relaxed)
        print("parker handshake: \(posts) posts in \(rounds) rounds, longest wait \(longest / 1000) µs")
        #expect(!stuck, "the sleeper stopped acknowledging")
        #expect(posts > 10, "the sleeper hardly slept: the test did not exercise the handshake")
        #expect(longest < 500_000_000, "a wait took \(longest) ns: a wake-up was lost")
    }
}
