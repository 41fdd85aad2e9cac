import ArgumentParser
import DXCore

/// The wait-strategy flags `dx-host` and `dx-guest` share: a preset, then any parameter on its own.
public struct WaitOptions: ParsableArguments {
    @Option(name: .customLong("wait"), help: "Wait preset: \(WaitStrategy.presets.map(\.name).joined(separator: ", ")).")
    public var preset: String = "fair"

    @Option(name: .customLong("spin-min"), help: "Smallest adaptive spin budget.")
    public var spinMin: UInt32?

    @Option(name: .customLong("spin-max"), help: "Largest adaptive spin budget.")
    public var spinMax: UInt32?

    @Option(name: .customLong("spin-start"), help: "Spin budget a new waiter starts with.")
    public var spinStart: UInt32?

    @Option(name: .customLong("yield-every"), help: "sched_yield every this many spins (0: never).")
    public var yieldEvery: UInt32?

    @Option(name: .customLong("sleep-timeout-ms"), help: "Longest single sleep before re-checking the peer, in ms.")
    public var sleepTimeoutMilliseconds: UInt64?

    @Flag(name: .customLong("no-relax"), help: "Spin without the CPU-relax hint (experiments only).")
    public var noRelax = false

    @Option(name: .customLong("turn-calls"), help: "Guests: calls per turn when guest threads share a worker (0: no turns).")
    public var turnCalls: UInt32?

    @Option(name: .customLong("turn-quantum-us"), help: "Guests: the longest a turn lasts, in µs.")
    public var turnQuantumMicroseconds: UInt64?

    public init() {}

    /// The strategy these flags describe.
    public var strategy: WaitStrategy {
        get throws {
            guard var strategy = WaitStrategy.preset(named: preset) else {
                throw ValidationError("unknown wait preset '\(preset)'; choose one of: "
                    + WaitStrategy.presets.map(\.name).joined(separator: ", "))
            }
            if let spinMin { strategy.minSpins = spinMin }
            if let spinMax { strategy.maxSpins = spinMax }
            if let spinStart { strategy.startSpins = spinStart }
            if let yieldEvery { strategy.yieldEvery = yieldEvery }
            if let sleepTimeoutMilliseconds {
                let (nanoseconds, overflow) = sleepTimeoutMilliseconds.multipliedReportingOverflow(by: 1_000_000)
                strategy.sleepTimeoutNanoseconds = overflow ? .max : nanoseconds
            }
            if noRelax { strategy.relax = false }
            if let turnCalls { strategy.turnCalls = turnCalls }
            if let turnQuantumMicroseconds {
                let (nanoseconds, overflow) = turnQuantumMicroseconds.multipliedReportingOverflow(by: 1000)
                strategy.turnQuantumNanoseconds = overflow ? .max : nanoseconds
            }
            // A preset's start may fall outside a min or max given on their own: clamp it.
            if spinStart == nil, strategy.minSpins <= strategy.maxSpins {
                strategy.startSpins = min(max(strategy.startSpins, strategy.minSpins), strategy.maxSpins)
            }
            do { try strategy.validate() } catch { throw ValidationError(error.description) }
            return strategy
        }
    }

    public mutating func validate() throws {
        _ = try strategy
    }
}
