import ArgumentParser
import DXCore

/// The wait-strategy flags `dx-host` and `dx-guest` share: a preset, then any parameter on its own.
public struct WaitOptions: ParsableArguments {
    @Option(name: .customLong("wait"), help: "Wait preset: \(WaitStrategy.presets.map(\.name).joined(separator: ", ")).")
    public var preset: String = "auto"

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

    @Flag(name: .customLong("avoid-worker-cpu"), inversion: .prefixedNo,
          help: "Guests: a turn holder moves off its serving worker's CPU (on in auto with 2+ CPUs).")
    public var avoidWorkerCPU: Bool?

    public init() {}

    /// The strategy these flags describe.
    public var strategy: WaitStrategy {
        get throws {
            let change = WaitStrategyChange(
                preset: preset, minSpins: spinMin, maxSpins: spinMax, startSpins: spinStart, yieldEvery: yieldEvery,
                sleepTimeoutMilliseconds: sleepTimeoutMilliseconds)
            do {
                var strategy = try change.applied(to: .auto)
                if noRelax { strategy.relax = false }
                if let turnCalls { strategy.turnCalls = turnCalls }
                if let avoidWorkerCPU { strategy.avoidWorkerCPU = avoidWorkerCPU }
                if let turnQuantumMicroseconds {
                    let (nanoseconds, overflow) = turnQuantumMicroseconds.multipliedReportingOverflow(by: 1000)
                    strategy.turnQuantumNanoseconds = overflow ? .max : nanoseconds
                }
                try strategy.validate()
                return strategy
            } catch {
                throw ValidationError(error.description)
            }
        }
    }

    public mutating func validate() throws {
        _ = try strategy
    }
}

/// Parses `--pin`: a CPU list such as `1`, `0,1` or `0-3`.
public func parseCPUList(_ text: String) throws -> [Int] {
    guard let cpus = CPUAffinity.parse(text) else {
        throw ValidationError("--pin takes a CPU list like 1, 0,1 or 0-3 (CPUs 0...1023)")
    }
    return cpus
}
