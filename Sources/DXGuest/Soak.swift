import ArgumentParser
import CShm
import DXCommandLine
import DXCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Long-running checked traffic for `scripts/soak`: random sizes, checksummed payloads, and
/// totals printed every second so that a guest killed on purpose leaves its counts behind.
struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send checked traffic with random sizes for a while, printing totals every second (scripts/soak).",
        discussion: "The host must serve the echo handler.")

    /// Two threads for 20 s by default; a soak may run for up to a week.
    enum Defaults: LoadDefaults {
        static let threads = [2]
        static let threadLists = false
        static let duration = 20.0
        static let longestDuration = 7 * 86_400.0
        static let durationHelp = "Seconds to run."
    }

    @OptionGroup var load: LoadOptions<Defaults>

    @OptionGroup var owner: HostOwnerOptions

    @OptionGroup var wait: WaitOptions

    @Flag(name: .customLong("keep-going"),
          help: "After a failed call, release the lane, claim another and go on (for traffic beside a vandal); count what went wrong and exit 0.")
    var keepGoing = false

    /// Totals of one soak process, shared by its threads (relaxed counters, read by the reporter).
    final class Totals: Sendable {
        let calls = Atomic<UInt64>(0)
        let errors = Atomic<UInt64>(0)
        let lost = Atomic<UInt64>(0)
        let duplicated = Atomic<UInt64>(0)
        let corrupted = Atomic<UInt64>(0)

        var line: String {
            "{\"calls\":\(calls.load(ordering: .relaxed)),\"errors\":\(errors.load(ordering: .relaxed)),"
                + "\"lost\":\(lost.load(ordering: .relaxed)),\"duplicated\":\(duplicated.load(ordering: .relaxed)),"
                + "\"corrupted\":\(corrupted.load(ordering: .relaxed))}"
        }
    }

    func run() throws {
        let region = try attach(name: load.name, owner: owner, lanes: load.threads.max() ?? 1)
        guard region.handler == .echo else { throw CommandFailure("soak needs a host serving the echo handler", exit: .usage) }
        let strategy = try wait.strategy
        let totals = Totals()
        let end = CShm_monotonic_ns() + load.durationNanoseconds
        let timeout = owner.callTimeoutNanoseconds, keepGoing = keepGoing
        let workers = try (0..<load.threads[0]).map { index in  // one count: soak takes no list
            try DXCore.Thread {
                repeat {
                    Soak.traffic(region: region, index: index, strategy: strategy, callTimeout: timeout, end: end, totals: totals)
                } while keepGoing && CShm_monotonic_ns() < end
            }
        }
        while CShm_monotonic_ns() < end {
            usleep(1_000_000)
            print(totals.line)
            fflush(nil)  // every line out at once: the process may be killed next
        }
        for worker in workers { worker.join() }
        print(totals.line)
        // With --keep-going a vandal shares the region: failed and spoiled calls are expected, and
        // only counted. The point is that every call ends (the process exits on time).
        if keepGoing { return }
        let bad = totals.errors.load(ordering: .relaxed) + totals.lost.load(ordering: .relaxed)
            + totals.duplicated.load(ordering: .relaxed) + totals.corrupted.load(ordering: .relaxed)
        if bad > 0 { throw CommandFailure("\(bad) calls went wrong", exit: .verificationFailed) }
    }

    /// One thread: requests of random size, each `[seq u64][checksum u64][body]` with the FNV-1a of
    /// the body; the echo must come back with the same sequence number and checksum.
    static func traffic(region: Region, index: Int, strategy: WaitStrategy, callTimeout: UInt64, end: UInt64,
                        totals: Totals) {
        guard var lane = try? region.claimLane(strategy: strategy, startingAt: index) else {
            totals.errors.add(1, ordering: .relaxed)
            usleep(10_000)  // a retry with --keep-going comes at a bounded rate
            return
        }
        lane.callTimeoutNanoseconds = callTimeout
        let capacity = region.slotCapacity
        var request = [UInt8](repeating: 0, count: capacity)
        var response = [UInt8](repeating: 0, count: capacity)
        var state = UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15 ^ CShm_monotonic_ns()
        var seq: UInt64 = 0
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        while CShm_monotonic_ns() < end {
            seq &+= 1
            let size = capacity < 16 ? capacity : 16 + Int(next() % UInt64(capacity - 15))
            request.withUnsafeMutableBytes { buffer in
                var word = next()
                for offset in stride(from: 16, to: size, by: 1) {
                    if offset % 8 == 0 { word = next() }
                    buffer[offset] = UInt8(truncatingIfNeeded: word >> ((offset % 8) * 8))
                }
                if size >= 16 {
                    buffer.storeBytes(of: seq, toByteOffset: 0, as: UInt64.self)
                    buffer.storeBytes(of: Checksum.fnv1a64(UnsafeRawBufferPointer(rebasing: buffer[16..<size])),
                                      toByteOffset: 8, as: UInt64.self)
                }
            }
            let result = request.withUnsafeBytes { requestBytes in
                response.withUnsafeMutableBytes { responseBytes in
                    lane.call(UnsafeRawBufferPointer(rebasing: requestBytes[0..<size]), into: responseBytes)
                }
            }
            totals.calls.add(1, ordering: .relaxed)
            switch result {
            case .failure:
                totals.lost.add(1, ordering: .relaxed)
                return  // the lane cannot be trusted after a failed call
            case .success(let length):
                guard length == size else {
                    totals.corrupted.add(1, ordering: .relaxed)
                    continue
                }
                guard size >= 16 else { continue }
                response.withUnsafeBytes { bytes in
                    let echoedSeq = bytes.load(fromByteOffset: 0, as: UInt64.self)
                    let echoedSum = bytes.load(fromByteOffset: 8, as: UInt64.self)
                    if echoedSeq != seq {
                        totals.duplicated.add(1, ordering: .relaxed)
                    } else if echoedSum != Checksum.fnv1a64(UnsafeRawBufferPointer(rebasing: bytes[16..<size])) {
                        totals.corrupted.add(1, ordering: .relaxed)
                    }
                }
            }
        }
    }
}
