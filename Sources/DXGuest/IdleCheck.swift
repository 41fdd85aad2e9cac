import CShm
import DXCommandLine
import DXCore
#if canImport(Glibc)
import Glibc
#endif

/// What an idle host and guest cost, and how long the first call after the pause takes.
struct IdleCheck {
    let region: Region
    let strategy: WaitStrategy
    let seconds: Double

    struct Report {
        var seconds: Double
        /// CPU time of both processes over the idle period, in percent of one CPU.
        var cpuPercent: Double
        var firstCallNanoseconds: UInt64

        var json: String {
            "{\"mode\":\"idle\",\"idle_s\":\(format(seconds, 3)),\"cpu_percent\":\(format(cpuPercent, 3)),"
                + "\"first_call_ns\":\(firstCallNanoseconds)}"
        }

        var text: String {
            "idle \(format(seconds, 1)) s with a lane claimed: host + guest used \(format(cpuPercent, 3)) % of one CPU; "
                + "first call after it: \(format(Double(firstCallNanoseconds) / 1000, 1)) µs"
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
        return Report(seconds: Double(elapsed) / 1e9, cpuPercent: cpu / Double(elapsed) * 100, firstCallNanoseconds: firstCall)
    }

    private func checksum(_ bytes: [UInt8]) -> [UInt8] {
        let sum = bytes.withUnsafeBytes { Checksum.fnv1a64($0) }
        return withUnsafeBytes(of: sum.littleEndian) { Array($0) }
    }
}
