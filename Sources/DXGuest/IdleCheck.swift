import CShm
import DXCommandLine
import DXCore
#if canImport(Glibc)
import Glibc
#endif

/// What an idle host and guest cost, how long the first call after the pause takes, and, to judge
/// that call against the machine, what a bare futex wake of a sleeping thread costs here.
struct IdleCheck {
    let region: Region
    let strategy: WaitStrategy
    let seconds: Double

    struct Report {
        var seconds: Double
        /// CPU time of both processes over the idle period, in percent of one CPU.
        var cpuPercent: Double
        var firstCallNanoseconds: UInt64
        /// The median of 21 bare futex wakes of a thread that slept 50 ms (no library): the
        /// kernel's part of a first call after idle.
        var bareWakeNanoseconds: UInt64
        /// The same with the sleeper in another process (median of 11), as dx's worker is: the
        /// yardstick a first call after idle is fairly compared with.
        var bareProcessWakeNanoseconds: UInt64

        var json: String {
            "{\"mode\":\"idle\",\"idle_s\":\(format(seconds, 3)),\"cpu_percent\":\(format(cpuPercent, 3)),"
                + "\"first_call_ns\":\(firstCallNanoseconds),\"bare_futex_wake_ns\":\(bareWakeNanoseconds),"
                + "\"bare_process_wake_ns\":\(bareProcessWakeNanoseconds)}"
        }

        var text: String {
            "idle \(format(seconds, 1)) s with a lane claimed: host + guest used \(format(cpuPercent, 3)) % of one CPU; "
                + "first call after it: \(format(Double(firstCallNanoseconds) / 1000, 1)) µs; "
                + "a bare futex wake of a thread asleep 50 ms: \(format(Double(bareWakeNanoseconds) / 1000, 1)) µs (median of 21), "
                + "of another process: \(format(Double(bareProcessWakeNanoseconds) / 1000, 1)) µs (median of 11)"
        }
    }

    func run() throws -> Report {
        var lane: Lane
        do { lane = try region.claimLane(strategy: strategy) } catch {
            throw CommandFailure("\(error)", exit: .callFailed)
        }
        guard case .success = lane.call([1]) else { throw CommandFailure("the warm-up call failed", exit: .callFailed) }
        let guest0 = CShm_self_cpu_ns(), host0 = CShm_process_cpu_ns(region.hostPID)
        let start = CShm_monotonic_ns()
        usleep(UInt32(seconds * 1_000_000))
        let elapsed = CShm_monotonic_ns() - start
        let guest1 = CShm_self_cpu_ns(), host1 = CShm_process_cpu_ns(region.hostPID)
        let t0 = CShm_monotonic_ns()
        let answer = lane.call([2])
        let firstCall = CShm_monotonic_ns() - t0
        guard answer == .success(region.handler == .checksum ? checksum([2]) : [2]) else {
            throw CommandFailure("the call after the idle period failed", exit: .verificationFailed)
        }
        let cpu = Double((guest1 - guest0) + max(0, host1 - host0))
        return Report(seconds: Double(elapsed) / 1e9, cpuPercent: cpu / Double(elapsed) * 100, firstCallNanoseconds: firstCall,
                      bareWakeNanoseconds: try IdleCheck.bareFutexWake(), bareProcessWakeNanoseconds: IdleCheck.bareProcessWake())
    }

    /// Two words a sleeper and a waker share: the futex word and when the sleeper woke.
    private final class WakeWords: @unchecked Sendable {
        let base = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 64)
        init() { base.initializeMemory(as: UInt8.self, repeating: 0, count: 128) }
        deinit { base.deallocate() }
        var word: UnsafeMutablePointer<UInt32> { base.assumingMemoryBound(to: UInt32.self) }
        var wokeAt: UnsafeMutableRawPointer { base + 64 }
    }

    /// A thread sleeps on a futex word; 50 ms later the main thread stamps the time, sets the word
    /// and wakes it; the sleeper stamps when it runs again. The median of 21 rounds.
    static func bareFutexWake(rounds: Int = 21) throws -> UInt64 {
        let words = WakeWords()
        var samples: [UInt64] = []
        for round in 1...rounds {
            CShm_store_seqcst_u32(words.word, 0)
            CShm_store_seqcst_u64(words.wokeAt, 0)
            let sleeper = try DXCore.Thread {
                while CShm_load_acquire_u32(words.word) == 0 {
                    _ = CShm_futex_wait(words.word, 0, 2_000_000_000)
                }
                CShm_store_release_u64(words.wokeAt, CShm_monotonic_ns())
            }
            usleep(50_000)  // let it fall properly asleep, as an idle lane's peer does
            let t0 = CShm_monotonic_ns()
            CShm_store_seqcst_u32(words.word, UInt32(round))
            _ = CShm_futex_wake(words.word, 1)
            sleeper.join()
            let woke = CShm_load_acquire_u64(words.wokeAt)
            if woke > t0 { samples.append(woke - t0) }
        }
        return samples.isEmpty ? 0 : samples.sorted()[samples.count / 2]
    }

    /// ``bareFutexWake(rounds:)`` with the sleeper in a child process (`CShm_bare_process_wake_ns`):
    /// the median of `rounds`.
    static func bareProcessWake(rounds: Int = 11) -> UInt64 {
        let samples = (0..<rounds).map { _ in CShm_bare_process_wake_ns(50) }.filter { $0 > 0 }.sorted()
        return samples.isEmpty ? 0 : samples[samples.count / 2]
    }

    private func checksum(_ bytes: [UInt8]) -> [UInt8] {
        let sum = bytes.withUnsafeBytes { Checksum.fnv1a64($0) }
        return withUnsafeBytes(of: sum.littleEndian) { Array($0) }
    }
}
