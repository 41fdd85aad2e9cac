import CShm
import DXCommandLine
import DXCore
import Histogram
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What is measured: dx's lanes, or a baseline over a raw channel (no library around it):
/// `raw`, timed per call like dx, or `floor`, the bare exchange with no per-call clock, the
/// hardware's limit for one lane.
enum BenchMode: String, Sendable {
    case dx, raw, floor
}

/// The outcome of one timed run at one thread count.
struct BenchResult: Sendable {
    var mode: BenchMode
    /// Whether each call was timed (the latency fields are 0 when not).
    var timed: Bool
    var threads: Int
    var payload: Int
    var durationSeconds: Double
    var ops: UInt64
    var p50: UInt64
    var p99: UInt64
    var p999: UInt64
    var max: UInt64
    /// p99.9 of the exchange alone (publish to response), sampled on every 16th call.
    var exchangeP999: UInt64
    var laneMinOps: UInt64
    var laneMaxOps: UInt64
    var cpuMicrosecondsPerOp: Double
    var errors: UInt64
    /// Turns passed to a waiter, and waits for a turn, over every lane of a dx run (0 without turns).
    var turnPasses: UInt64 = 0
    var turnWaits: UInt64 = 0
    var failure: String?
    /// Round trips per thread (lane), and the merged call latencies in ``BenchClock`` units.
    var laneOps: [UInt64] = []
    var histogram: Histogram<UInt64>? = nil
    /// For a dx run: the throughput of the raw runs made just before it, at the same thread
    /// count and at one thread.
    var pairedRawSameThreads: Double?
    var pairedRawOneThread: Double?
    /// The thread count of the round this run belongs to (a raw one-thread run made as the
    /// baseline of an 8-thread dx run belongs to the 8-thread round).
    var round = 0
    /// The host's view of a dx run, from its control socket: round trips it counted, its
    /// sleeps and the wake-ups sent, per second of the run.
    var hostOpsPerSecond: Double?
    var hostSleepsPerSecond: Double?
    var hostWakesPerSecond: Double?

    var opsPerSecond: Double { durationSeconds > 0 ? Double(ops) / durationSeconds : 0 }
    /// Turn hand-offs per 1000 calls: how often a holder passed its turn, and how often a call
    /// slept for one (each such call pays a futex wake in its latency).
    var turnPassesPerThousand: Double { ops > 0 ? Double(turnPasses) * 1000 / Double(ops) : 0 }
    var turnWaitsPerThousand: Double { ops > 0 ? Double(turnWaits) * 1000 / Double(ops) : 0 }

    /// One JSON object with exactly the documented fields.
    var json: String {
        "{\"mode\":\"\(mode.rawValue)\",\"timed\":\(timed),\"threads\":\(threads),\"payload\":\(payload),"
            + "\"duration_s\":\(format(durationSeconds, 3)),\"ops\":\(ops),\"ops_per_sec\":\(format(opsPerSecond, 1)),"
            + "\"p50_ns\":\(p50),\"p99_ns\":\(p99),\"p999_ns\":\(p999),\"max_ns\":\(max),"
            + "\"exchange_p999_ns\":\(exchangeP999),"
            + "\"lane_min_ops\":\(laneMinOps),\"lane_max_ops\":\(laneMaxOps),"
            + "\"cpu_us_per_op\":\(format(cpuMicrosecondsPerOp, 4)),\"errors\":\(errors),"
            + "\"turn_passes_per_1k_calls\":\(format(turnPassesPerThousand, 4)),"
            + "\"turn_waits_per_1k_calls\":\(format(turnWaitsPerThousand, 4))}"
    }
}

/// What one benchmark thread saw. Written by its thread only; read after the join.
final class ThreadRecord: @unchecked Sendable {
    var ops: UInt64 = 0
    var errors: UInt64 = 0
    /// The lane's own turn counts (``Lane/turnPasses``, ``Lane/turnWaits``) at the end of the run.
    var turnPasses: UInt64 = 0
    var turnWaits: UInt64 = 0
    var failure: String?
    /// Call latencies, in ``BenchClock`` units.
    var histogram = BenchClock.shared.newHistogram()
    /// Exchange latencies, in nanoseconds.
    var exchanges = ThreadRecord.newHistogram()

    static func newHistogram() -> Histogram<UInt64> {
        Histogram(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
    }

    /// Hands the histograms (made with the record, before the run) to the loop, which keeps them
    /// in locals and stores them back at the end. The record keeps tiny placeholders meanwhile, so
    /// the loop's copies are unique: no copy-on-write of a megabyte at the first record. Making
    /// them inside the window instead cost hundreds of threads starting together half a second.
    func takeHistograms() -> (calls: Histogram<UInt64>, exchanges: Histogram<UInt64>) {
        defer {
            histogram = Histogram(lowestDiscernibleValue: 1, highestTrackableValue: 2, numberOfSignificantValueDigits: .one)
            exchanges = histogram
        }
        return (histogram, exchanges)
    }
}

/// Runs `threads` threads against the host for `duration` seconds and checks every response.
struct BenchRun {
    let region: Region
    let mode: BenchMode
    let threads: Int
    let payload: Int
    let durationNanoseconds: UInt64
    let strategy: WaitStrategy
    /// When set, each thread stops after this many calls instead of after the duration.
    var callsPerThread: UInt64? = nil
    /// When set, request sizes cycle through 0, 1, the slot capacity and sizes in between,
    /// up to `payload` bytes.
    var varyPayload = false
    /// Whether the lanes update their guest counters.
    var counting = true
    /// CPUs to pin the threads to (thread t on `cpus[t % count]`); empty: no pinning.
    var cpus: [Int] = []
    /// The lanes' call timeout, when not the default.
    var callTimeoutNanoseconds: UInt64?
    /// Whether each call is timed (``BenchClock``); a floor run never is, and `--no-latency`
    /// turns it off for dx.
    var timed = true
    /// One call in this many (a power of two) is timed, chosen at random per call, so that the
    /// sample is not in step with anything periodic (turn checks every 64 calls); 1 times every call.
    var sampleEvery: UInt32 = 1

    /// Whether this run times calls at all.
    private var timesCalls: Bool { timed && mode != .floor }

    /// Runs the threads. `waitForStart` is called once every thread holds its lane and waits at
    /// the start line: it returns the `CLOCK_MONOTONIC` time (ns) the run starts at, and the run
    /// ends `duration` after it, so that processes given the same start share one window
    /// (`dx-guest scale`); nil starts now. `waitForEnd` is called once the threads are done and
    /// measured, before the results are put together (merging histograms costs CPU that other
    /// processes of the same run, still in their last calls, would be measured waiting for).
    func run(waitForStart: () -> UInt64? = { nil }, waitForEnd: () -> Void = {}) throws -> BenchResult {
        // The clock calibrates (tens of ms) at its first use: before the start, not inside the
        // measured window (with many guest processes starting at once, it was a second of it).
        _ = BenchClock.shared
        let records = (0..<threads).map { _ in ThreadRecord() }
        let gate = Gate()
        var started: [DXCore.Thread] = []
        for index in 0..<threads {
            let record = records[index]
            let run = self
            started.append(try DXCore.Thread { run.thread(index: index, record: record, gate: gate) })
        }
        // Wait (bounded) until every thread holds its lane, then open the gate.
        let readyDeadline = CShm_monotonic_ns() + 5_000_000_000
        while gate.arrived < threads, CShm_monotonic_ns() < readyDeadline {
            usleep(1000)
        }
        let startAt = waitForStart()
        if let startAt {
            let now = CShm_monotonic_ns()
            if startAt > now { CShm_sleep_ns(startAt - now) }
        }
        let guestCPU0 = CShm_self_cpu_ns()
        let hostCPU0 = CShm_process_cpu_ns(region.hostPID)
        let t0 = startAt ?? CShm_monotonic_ns()
        gate.open(at: t0)
        for thread in started { thread.join() }
        let elapsed = CShm_monotonic_ns() - t0
        let guestCPU = CShm_self_cpu_ns() - guestCPU0
        let hostCPU1 = CShm_process_cpu_ns(region.hostPID)
        let hostCPU = hostCPU0 >= 0 && hostCPU1 >= 0 ? hostCPU1 - hostCPU0 : 0
        waitForEnd()

        var histogram = records[0].histogram
        var exchanges = records[0].exchanges
        for record in records.dropFirst() {
            histogram.add(record.histogram)
            exchanges.add(record.exchanges)
        }
        let ops = records.reduce(0) { $0 + $1.ops }
        let failure = records.compactMap(\.failure).first
        if gate.arrived < threads, failure == nil {
            throw BenchFailure("not every thread could start within 5 s")
        }
        let clock = BenchClock.shared
        let timedHere = timesCalls
        func percentile(_ value: Double) -> UInt64 { timedHere ? clock.nanoseconds(histogram.valueAtPercentile(value)) : 0 }
        return BenchResult(
            mode: mode, timed: timedHere, threads: threads, payload: payload, durationSeconds: Double(elapsed) / 1e9,
            ops: ops, p50: percentile(50), p99: percentile(99), p999: percentile(99.9),
            max: timedHere ? clock.nanoseconds(histogram.max) : 0,
            exchangeP999: mode != .dx ? percentile(99.9) : exchanges.valueAtPercentile(99.9),
            laneMinOps: records.map(\.ops).min() ?? 0, laneMaxOps: records.map(\.ops).max() ?? 0,
            cpuMicrosecondsPerOp: ops > 0 ? Double(guestCPU + hostCPU) / 1000 / Double(ops) : 0,
            errors: records.reduce(0) { $0 + $1.errors },
            turnPasses: records.reduce(0) { $0 + $1.turnPasses }, turnWaits: records.reduce(0) { $0 + $1.turnWaits },
            failure: failure, laneOps: records.map(\.ops), histogram: timedHere ? histogram : nil)
    }

    /// One benchmark thread: claim a lane or raw channel, wait at the gate, then make round trips
    /// with unique payloads (sequence number and pattern) and verify every response.
    private func thread(index: Int, record: ThreadRecord, gate: Gate) {
        if !cpus.isEmpty {
            do { try CPUAffinity.pinCurrentThread(to: cpus[index % cpus.count]) } catch {
                record.failure = "cannot pin thread \(index): \(error)"
            }
        }
        var request = [UInt8](repeating: 0, count: max(payload, 1))
        for position in request.indices { request[position] = UInt8(truncatingIfNeeded: index &* 31 &+ position) }
        var response = [UInt8](repeating: 0, count: max(payload, 8))
        let expectChecksum = mode == .dx && region.handler == .checksum
        let sizes = varyPayload ? BenchRun.sizes(upTo: payload, seed: UInt64(index)) : [payload]
        request.withUnsafeMutableBytes { requestBuffer in
            response.withUnsafeMutableBytes { responseBuffer in
                let whole = requestBuffer
                switch mode {
                case .dx:
                    var lane: Lane
                    do { lane = try region.claimLane(strategy: strategy, startingAt: index) } catch {
                        record.failure = "\(error)"
                        gate.arrive()
                        return
                    }
                    lane.counting = counting
                    if let callTimeoutNanoseconds { lane.callTimeoutNanoseconds = callTimeoutNanoseconds }
                    let end = gate.arriveAndWait() + durationNanoseconds
                    var calls: UInt32 = 0
                    loop(record: record, request: whole, sizes: sizes, end: end) { request, exchange in
                        let payload = request.count
                        calls &+= 1
                        let timed = timed && calls & 15 == 0
                        lane.timeNextExchange = timed
                        let result = lane.call(UnsafeRawBufferPointer(request), into: responseBuffer)
                        if timed { exchange = lane.lastExchangeNanoseconds }
                        switch result {
                        case .success(let length):
                            if expectChecksum {
                                let sum = Checksum.fnv1a64(UnsafeRawBufferPointer(request))
                                return length == 8 && responseBuffer.load(as: UInt64.self) == sum.littleEndian ? .ok : .wrong
                            }
                            return length == payload
                                && (payload == 0 || memcmp(request.baseAddress!, responseBuffer.baseAddress!, payload) == 0)
                                ? .ok : .wrong
                        case .failure(let error):
                            return .failed("\(error)")
                        }
                    }
                    // The lane was claimed for this run: its counts are this run's.
                    record.turnPasses = lane.turnPasses
                    record.turnWaits = lane.turnWaits
                case .raw, .floor:
                    guard var channel = try? region.claimRawChannel(index) else {
                        record.failure = "raw channel \(index) is not available (the host serves \(region.rawCount))"
                        gate.arrive()
                        return
                    }
                    let end = gate.arriveAndWait() + durationNanoseconds
                    loop(record: record, request: whole, sizes: sizes, end: end) { request, _ in
                        let payload = request.count
                        guard channel.roundTrip(UnsafeRawBufferPointer(request), into: responseBuffer) else {
                            return .failed("the raw baseline server did not answer")
                        }
                        return payload == 0 || memcmp(request.baseAddress!, responseBuffer.baseAddress!, payload) == 0
                            ? .ok : .wrong
                    }
                }
            }
        }
    }

    /// The loop: stamp the sequence number, make one round trip (timed when it is in the sample),
    /// check it. A failed call ends the loop (the lane cannot be trusted after it); a wrong response
    /// is counted. Untimed calls read no clock; the end is checked on timed calls and every 256 calls.
    ///
    /// Everything the loop updates is local (histograms included) and stored into the record at
    /// the end: the record is a class, and touching its properties per call costs exclusivity
    /// checks that would be measured as round-trip time.
    @inline(__always)
    private func loop(record: ThreadRecord, request whole: UnsafeMutableRawBufferPointer, sizes: [Int], end: UInt64,
                      _ roundTrip: (UnsafeMutableRawBufferPointer, inout UInt64) -> Outcome) {
        var seq: UInt64 = 0
        var ops: UInt64 = 0
        var errors: UInt64 = 0
        let clock = BenchClock.shared
        var (histogram, exchanges) = record.takeHistograms()
        var failure: String?
        let limit = callsPerThread ?? .max
        let timed = timesCalls
        // The end in the clock's units, for the timed loop's per-call check.
        let nowNanoseconds = CShm_monotonic_ns(), nowUnits = clock.now()
        let endUnits = end > nowNanoseconds
            ? nowUnits &+ UInt64(Double(end &- nowNanoseconds) / clock.nanosecondsPerUnit) : nowUnits
        var pastEnd = false
        var next = 0
        // The sample: xorshift32, seeded per thread and run.
        var random = UInt32(truncatingIfNeeded: CShm_ticks() ^ UInt64(UInt(bitPattern: ObjectIdentifier(record).hashValue))) | 1
        let sampleMask = sampleEvery &- 1
        while true {
            seq &+= 1
            let size = sizes[next]
            next = next + 1 == sizes.count ? 0 : next + 1
            let request = UnsafeMutableRawBufferPointer(rebasing: whole[0..<size])
            let stamp = min(size, 8)
            withUnsafeBytes(of: seq) { bytes in
                if stamp > 0 { request.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: stamp) }
            }
            var exchange: UInt64 = 0
            let outcome: Outcome
            random ^= random << 13
            random ^= random >> 17
            random ^= random << 5
            if timed, random & sampleMask == 0 {
                let t0 = clock.now()
                outcome = roundTrip(request, &exchange)
                let t1 = clock.now()
                _ = histogram.record(t1 &- t0)
                pastEnd = t1 >= endUnits
                if exchange != 0 { _ = exchanges.record(exchange) }
            } else {
                outcome = roundTrip(request, &exchange)
            }
            switch outcome {
            case .ok: ops &+= 1
            case .wrong: errors &+= 1
            case .failed(let text):
                errors &+= 1
                failure = text
            }
            if failure != nil { break }
            if seq >= limit { break }
            if callsPerThread == nil, pastEnd || (seq & 255 == 0 && CShm_monotonic_ns() >= end) { break }
            if seq & 255 == 0, Interrupt.requested { break }
        }
        record.ops = ops
        record.errors = errors
        record.histogram = histogram
        record.exchanges = exchanges
        record.failure = record.failure ?? failure
    }

    /// What one round trip of the loop came to.
    enum Outcome {
        case ok
        /// The response did not match the request.
        case wrong
        /// The call failed; the lane cannot be trusted any more.
        case failed(String)
    }
}

extension BenchRun {
    /// Request sizes for `--vary-payload`: the edges (0, 1, 7, 8, 9, 63, 64, 65, max - 1, max)
    /// and pseudo-random sizes between, different for each thread.
    static func sizes(upTo maximum: Int, seed: UInt64) -> [Int] {
        var sizes = [0, 1, 7, 8, 9, 63, 64, 65, maximum - 1, maximum].filter { $0 >= 0 && $0 <= maximum }
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        for _ in 0..<54 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            sizes.append(Int(state % UInt64(maximum + 1)))
        }
        return sizes
    }
}

/// SIGINT: benchmark threads finish their current call and stop; the command prints what it has.
enum Interrupt {
    private static let flag = Atomic<Bool>(false)

    static var requested: Bool { flag.load(ordering: .relaxed) }

    /// Installs the SIGINT handler (it only sets the flag: an atomic store is async-signal-safe),
    /// and unblocks SIGINT, which a parent may have left blocked in the mask we inherited.
    static func install() {
        signal(SIGINT) { _ in Interrupt.flag.store(true, ordering: .relaxed) }
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}

/// The start line: threads arrive when they hold their lane, then sleep until the start time is
/// given (a futex word, not a polling loop: hundreds of threads polling would be the load that
/// delays the start they wait for).
final class Gate: @unchecked Sendable {
    private let ready = Atomic<Int>(0)
    private let start = Atomic<UInt64>(0)
    /// 0 until the gate opens; the threads sleep on it.
    private let word = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)

    init() { word.initialize(to: 0) }
    deinit { word.deallocate() }

    var arrived: Int { ready.load(ordering: .acquiring) }

    func arrive() {
        ready.add(1, ordering: .releasing)
    }

    /// Arrives, then waits for the start time and returns it.
    func arriveAndWait() -> UInt64 {
        arrive()
        while true {
            let time = start.load(ordering: .acquiring)
            if time != 0 { return time }
            if Interrupt.requested { return 1 }
            // Bounded, so that an interrupt is noticed.
            _ = CShm_futex_wait(word, 0, 50_000_000)
        }
    }

    /// Lets every thread go, with `time` as the common start.
    func open(at time: UInt64) {
        start.store(max(time, 1), ordering: .releasing)
        CShm_store_release_u32(UnsafeMutableRawPointer(word), 1)
        _ = CShm_futex_wake(word, Int32.max)
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// `value` with `digits` decimals, for JSON and tables.
func format(_ value: Double, _ digits: Int) -> String { Format.decimal(value, digits) }
