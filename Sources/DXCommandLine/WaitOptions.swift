import ArgumentParser
import DXCore

/// The spin-policy flags `dx-host` and `dx-guest` share: a preset, then any value on its own. They
/// build a ``SpinPolicy`` directly (``SpinPolicy/changing(spinMin:spinMax:spinStart:yieldEvery:sleepTimeoutMilliseconds:relax:)``).
public struct SpinOptions: ParsableArguments {
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

    public init() {}

    /// The preset these flags name, whole (its turns too, for guests).
    var presetStrategy: WaitStrategy {
        get throws { do { return try WaitStrategy.preset(named: preset) } catch { throw ValidationError(error.description) } }
    }

    /// The spin policy these flags describe.
    public var spinPolicy: SpinPolicy {
        get throws {
            do {
                return try presetStrategy.spinPolicy.changing(
                    spinMin: spinMin, spinMax: spinMax, spinStart: spinStart, yieldEvery: yieldEvery,
                    sleepTimeoutMilliseconds: sleepTimeoutMilliseconds, relax: noRelax ? false : nil)
            } catch let error as WaitStrategyError {
                throw ValidationError(error.description)
            }
        }
    }

    public mutating func validate() throws {
        _ = try spinPolicy
    }
}

/// A guest's wait flags: the spin policy's, and the turn policy's on top of the preset's.
public struct WaitOptions: ParsableArguments {
    @OptionGroup public var spin: SpinOptions

    @Option(name: .customLong("turn-calls"), help: "Calls per turn when guest threads share a worker (0: no turns).")
    public var turnCalls: UInt32?

    @Option(name: .customLong("turn-quantum-us"), help: "The longest a turn lasts, in µs, with up to 4 guests waiting; more waiting shorten it (to this × 4 / waiters, not below 200 µs).")
    public var turnQuantumMicroseconds: UInt64?

    @Flag(name: .customLong("avoid-worker-cpu"), inversion: .prefixedNo,
          help: "A turn holder moves off its serving worker's CPU (on in auto with 2+ CPUs).")
    public var avoidWorkerCPU: Bool?

    public init() {}

    /// The strategy these flags describe.
    public var strategy: WaitStrategy {
        get throws {
            var turns = try spin.presetStrategy.turnPolicy
            if let turnCalls { turns.turnCalls = turnCalls }
            if let avoidWorkerCPU { turns.avoidWorkerCPU = avoidWorkerCPU }
            if let turnQuantumMicroseconds {
                let (nanoseconds, overflow) = turnQuantumMicroseconds.multipliedReportingOverflow(by: 1000)
                turns.turnQuantumNanoseconds = overflow ? .max : nanoseconds
            }
            let strategy = WaitStrategy(spinPolicy: try spin.spinPolicy, turnPolicy: turns)
            do { try strategy.validate() } catch { throw ValidationError(error.description) }
            return strategy
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
