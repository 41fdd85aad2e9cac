/// A guest thread's whole wait: how it spins and sleeps (``SpinPolicy``, which a host's workers use
/// too) and how it takes turns with the other guest threads of its worker (``TurnPolicy``).
/// Presets are named, for `--wait`.
///
/// ```swift
/// var strategy = WaitStrategy.balanced
/// strategy.spinPolicy.yieldEvery = 1024
/// try strategy.validate()
/// let host = try Host(name: "demo", configuration: RegionConfiguration(), spinPolicy: strategy.spinPolicy)
/// ```
public struct WaitStrategy: Sendable, Equatable, CustomStringConvertible {
    /// Spinning, yielding and sleeping.
    public var spinPolicy: SpinPolicy
    /// Turns (guests only).
    public var turnPolicy: TurnPolicy

    /// A strategy; ``validate()`` it before use.
    public init(spinPolicy: SpinPolicy, turnPolicy: TurnPolicy = .off) {
        self.spinPolicy = spinPolicy
        self.turnPolicy = turnPolicy
    }

    /// The study's final choice: min 100, max 5000, start 2000, yield every 128 spins; no turns.
    public static let balanced = WaitStrategy(spinPolicy: SpinPolicy(spinMin: 100, spinMax: 5000, spinStart: 2000, yieldEvery: 128))
    /// Spins (with yields) and practically never sleeps: lowest latency, one busy CPU per waiter.
    public static let spin = WaitStrategy(spinPolicy: SpinPolicy(spinMin: .max, spinMax: .max, spinStart: .max, yieldEvery: 4096))
    /// Sleeps soon: little CPU while idle, a kernel wake-up (tens of µs) on most waits.
    public static let lowCPU = WaitStrategy(spinPolicy: SpinPolicy(spinMin: 10, spinMax: 500, spinStart: 100, yieldEvery: 16))
    /// Yields on every spin (the study's fair-but-slow reference).
    public static let yield = WaitStrategy(spinPolicy: SpinPolicy(spinMin: 100, spinMax: 5000, spinStart: 2000, yieldEvery: 1))

    /// Turn-taking: guest threads that share a worker take turns of 4096 calls (at most 4 ms),
    /// and those waiting for a turn sleep, so only one of them competes for a CPU.
    /// A larger spin budget than `balanced` (min 2000, max 20000, start 5000): a worker that sleeps
    /// through a guest's 10-50 µs hiccup (a timer tick, a turn passing) costs the next call a
    /// kernel wake-up of about the same length, so spinning through it is cheaper.
    public static let fair = WaitStrategy(
        spinPolicy: SpinPolicy(spinMin: 2000, spinMax: 20000, spinStart: 5000, yieldEvery: 128),
        turnPolicy: TurnPolicy(turnCalls: 4096, turnQuantumNanoseconds: 4_000_000))

    /// The default. Tunes itself to the machine and the load. At first use it measures what one spin costs
    /// here and sets the spin budget in time rather than spins: 50 µs to 500 µs, starting at
    /// 125 µs (a kernel wake-up costs about 50 µs on a VM, so spinning shorter than that before
    /// sleeping loses). While running, each waiter adapts its budget to whether spinning pays off
    /// (as every preset does); guest threads take turns as in ``fair``, a turn passing only when
    /// another guest waits for one; and a turn holder keeps off the CPU its serving worker runs on
    /// (``TurnPolicy/avoidWorkerCPU``), which the worker publishes as it moves.
    public static let auto: WaitStrategy = {
        let perSpin = max(SpinCalibration.nanosecondsPerSpin, 1)
        func spins(_ nanoseconds: Double) -> UInt32 { UInt32(min(max(nanoseconds / perSpin, 100), 1_000_000)) }
        return WaitStrategy(
            spinPolicy: SpinPolicy(spinMin: spins(50_000), spinMax: spins(500_000), spinStart: spins(125_000), yieldEvery: 128),
            turnPolicy: TurnPolicy(turnCalls: 4096, turnQuantumNanoseconds: 4_000_000,
                                   avoidWorkerCPU: CPUAffinity.allowedCPUs > 1))
    }()

    /// For lanes that tasks share (``LanePool``'s default): the cooperative spin
    /// (``SpinPolicy/cooperative``) and no turns. Turns keep more spinning threads than CPUs off the
    /// worker's back; tasks spin only on the cooperative pool's threads, as many as the CPUs, and
    /// only for microseconds before they suspend, so turns would only add a hand-off per slow call
    /// (measured: 1000 tasks over 8 lanes, 3× the round trips/s without them; BENCHMARKS.md, "Async").
    public static let cooperative = WaitStrategy(spinPolicy: SpinPolicy.cooperative)

    /// The presets by the name `--wait` takes. (The first use measures the machine for `auto`:
    /// about 2.5 ms of spinning.)
    public static let presets: [(name: String, strategy: WaitStrategy)] = [
        ("auto", .auto), ("balanced", .balanced), ("fair", .fair), ("spin", .spin), ("low-cpu", .lowCPU),
        ("yield", .yield),
    ]

    /// The preset called `name`, or a sentence naming the ones there are.
    public static func preset(named name: String) throws(WaitStrategyError) -> WaitStrategy {
        guard let preset = presets.first(where: { $0.name == name }) else {
            throw .invalid("unknown wait preset '\(name)'; choose one of: " + presets.map(\.name).joined(separator: ", "))
        }
        return preset.strategy
    }

    /// Throws a sentence a person understands when the values do not fit together.
    public func validate() throws(WaitStrategyError) {
        try spinPolicy.validate()
        try turnPolicy.validate()
    }

    /// The values, as logged.
    public var description: String {
        "\(spinPolicy)" + (turnPolicy.turnCalls == 0 ? "" : " \(turnPolicy)")
    }
}

/// A wait strategy whose values do not fit together.
public enum WaitStrategyError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalid(String)

    /// The values, as the host logs them.
    public var description: String {
        switch self { case .invalid(let text): return text }
    }
}
