import CShm
import Histogram

/// How bench times a call: the CPU's counter (calibrated against CLOCK_MONOTONIC once) where it is
/// steady, else `clock_gettime`. Reading it costs a fraction of a clock call, so the latency
/// columns measure the call more than the clock; ``costNanoseconds`` says what is left.
struct BenchClock: Sendable {
    /// Whether the CPU's counter is used.
    let usesTicks: Bool
    /// Nanoseconds per unit of ``now()``.
    let nanosecondsPerUnit: Double
    /// What timing one call costs: two reads and one histogram record, measured here.
    private(set) var costNanoseconds: Double = 0

    static let shared = BenchClock()

    private init() {
        usesTicks = CShm_ticks_usable() && CShm_ticks() != 0
        if usesTicks {
            // 20 ms against CLOCK_MONOTONIC: error well under 0.1 %.
            let ns0 = CShm_monotonic_ns(), ticks0 = CShm_ticks()
            while CShm_monotonic_ns() &- ns0 < 20_000_000 { CShm_cpu_relax() }
            let ns1 = CShm_monotonic_ns(), ticks1 = CShm_ticks()
            nanosecondsPerUnit = ticks1 > ticks0 ? Double(ns1 &- ns0) / Double(ticks1 &- ticks0) : 1
        } else {
            nanosecondsPerUnit = 1
        }
        costNanoseconds = measureCost()
    }

    /// Now, in this clock's units.
    @inline(__always)
    func now() -> UInt64 { usesTicks ? CShm_ticks() : CShm_monotonic_ns() }

    func nanoseconds(_ units: UInt64) -> UInt64 { UInt64((Double(units) * nanosecondsPerUnit).rounded()) }

    /// A histogram for values in this clock's units (up to two minutes).
    func newHistogram() -> Histogram<UInt64> {
        Histogram(lowestDiscernibleValue: 1, highestTrackableValue: UInt64(120e9 / min(nanosecondsPerUnit, 1)),
                  numberOfSignificantValueDigits: .three)
    }

    /// The median of five runs of 100,000 timed empty iterations, as the bench loop times a call.
    private func measureCost() -> Double {
        var samples: [Double] = []
        var histogram = newHistogram()
        for _ in 0..<5 {
            let start = CShm_monotonic_ns()
            for _ in 0..<100_000 {
                let t0 = now()
                let t1 = now()
                _ = histogram.record(t1 &- t0)
            }
            samples.append(Double(CShm_monotonic_ns() &- start) / 100_000)
        }
        return samples.sorted()[2]
    }

    var name: String { usesTicks ? "the CPU's counter" : "clock_gettime" }
}
