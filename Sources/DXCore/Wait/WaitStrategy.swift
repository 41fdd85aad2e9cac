/// How a side waits for its peer: spin, yield now and then, then sleep.
///
/// A wait spins with a CPU-relax hint up to an adaptive budget of spins (``AdaptiveSpin``),
/// calls `sched_yield` every ``yieldEvery`` spins, and then sleeps on a process-shared
/// semaphore for at most ``sleepTimeout`` nanoseconds at a time, re-checking the peer's health
/// between sleeps. The same type configures the guest's wait for a response and the host
/// worker's wait for requests.
///
/// ```swift
/// var strategy = WaitStrategy.balanced
/// strategy.yieldEvery = 1024
/// try strategy.validate()
/// ```
public struct WaitStrategy: Sendable, Equatable, CustomStringConvertible {
    /// The spin budget never falls below this.
    public var minSpins: UInt32
    /// The spin budget never grows above this.
    public var maxSpins: UInt32
    /// The budget a new waiter starts with.
    public var startSpins: UInt32
    /// `sched_yield` after every this many spins; 0 never yields.
    public var yieldEvery: UInt32
    /// The longest single sleep, in nanoseconds. The waiter re-checks shutdown and the peer's
    /// health after each.
    public var sleepTimeoutNanoseconds: UInt64
    /// Whether each spin executes the CPU-relax hint. Off only for experiments.
    public var relax: Bool
    /// Guest side: how many calls a guest thread makes in one turn when other guest threads of
    /// the same worker wait for one; 0 turns turn-taking off. See ``Lane``.
    public var turnCalls: UInt32
    /// Guest side: the longest a turn lasts, in nanoseconds, however few calls it made.
    public var turnQuantumNanoseconds: UInt64
    /// Guest side: whether a guest thread that holds its turn moves off the CPU its serving worker
    /// runs on (the worker publishes it). Two spinners that share a CPU while the other CPU idles
    /// make every exchange wait for a context switch until the scheduler separates them. The
    /// thread's affinity is narrowed for the turn (its own mask minus that CPU) and given back when
    /// the turn passes or the lane is released.
    public var avoidWorkerCPU = false

    /// A strategy; ``validate()`` it before use.
    public init(minSpins: UInt32, maxSpins: UInt32, startSpins: UInt32, yieldEvery: UInt32,
                sleepTimeoutNanoseconds: UInt64 = 50_000_000, relax: Bool = true, turnCalls: UInt32 = 0,
                turnQuantumNanoseconds: UInt64 = 4_000_000) {
        self.minSpins = minSpins
        self.maxSpins = maxSpins
        self.startSpins = startSpins
        self.yieldEvery = yieldEvery
        self.sleepTimeoutNanoseconds = sleepTimeoutNanoseconds
        self.relax = relax
        self.turnCalls = turnCalls
        self.turnQuantumNanoseconds = turnQuantumNanoseconds
    }

    /// The study's final choice: min 100, max 5000, start 2000, yield every 128 spins.
    public static let balanced = WaitStrategy(minSpins: 100, maxSpins: 5000, startSpins: 2000, yieldEvery: 128)
    /// Spins (with yields) and practically never sleeps: lowest latency, one busy CPU per waiter.
    public static let spin = WaitStrategy(minSpins: .max, maxSpins: .max, startSpins: .max, yieldEvery: 4096)
    /// Sleeps soon: little CPU while idle, a kernel wake-up (tens of µs) on most waits.
    public static let lowCPU = WaitStrategy(minSpins: 10, maxSpins: 500, startSpins: 100, yieldEvery: 16)
    /// Yields on every spin (the study's fair-but-slow reference).
    public static let yield = WaitStrategy(minSpins: 100, maxSpins: 5000, startSpins: 2000, yieldEvery: 1)

    /// Turn-taking: guest threads that share a worker take turns of 4096 calls (at most 4 ms),
    /// and those waiting for a turn sleep, so only one of them competes for a CPU.
    /// A larger spin budget than `balanced` (min 2000, max 20000, start 5000): a worker that sleeps
    /// through a guest's 10-50 µs hiccup (a timer tick, a turn passing) costs the next call a
    /// kernel wake-up of about the same length, so spinning through it is cheaper.
    public static let fair = WaitStrategy(minSpins: 2000, maxSpins: 20000, startSpins: 5000, yieldEvery: 128,
                                          turnCalls: 4096, turnQuantumNanoseconds: 4_000_000)

    /// The default. Tunes itself to the machine and the load. At first use it measures what one spin costs
    /// here and sets the spin budget in time rather than spins: 50 µs to 500 µs, starting at
    /// 125 µs (a kernel wake-up costs about 50 µs on a VM, so spinning shorter than that before
    /// sleeping loses). While running, each waiter adapts its budget to whether spinning pays off
    /// (as every preset does); guest threads take turns as in ``fair``, a turn passing only when
    /// another guest waits for one; and a turn holder keeps off the CPU its serving worker runs on
    /// (``avoidWorkerCPU``), which the worker publishes as it moves.
    public static let auto: WaitStrategy = {
        let perSpin = max(SpinCalibration.nanosecondsPerSpin, 1)
        func spins(_ nanoseconds: Double) -> UInt32 { UInt32(min(max(nanoseconds / perSpin, 100), 1_000_000)) }
        var strategy = WaitStrategy(minSpins: spins(50_000), maxSpins: spins(500_000), startSpins: spins(125_000),
                                    yieldEvery: 128, turnCalls: 4096, turnQuantumNanoseconds: 4_000_000)
        strategy.avoidWorkerCPU = CPUAffinity.allowedCPUs > 1
        return strategy
    }()

    /// The presets by the name `--wait` takes. (The first use measures the machine for `auto`:
    /// about 2.5 ms of spinning.)
    public static let presets: [(name: String, strategy: WaitStrategy)] = [
        ("auto", .auto), ("balanced", .balanced), ("fair", .fair), ("spin", .spin), ("low-cpu", .lowCPU),
        ("yield", .yield),
    ]

    /// The preset called `name`, or nil.
    public static func preset(named name: String) -> WaitStrategy? {
        presets.first { $0.name == name }?.strategy
    }

    /// Throws a sentence a person understands when the values do not fit together.
    public func validate() throws(WaitStrategyError) {
        guard minSpins <= maxSpins else { throw .invalid("spin min \(minSpins) is larger than spin max \(maxSpins)") }
        guard (minSpins...maxSpins).contains(startSpins) else {
            throw .invalid("spin start \(startSpins) is not between min \(minSpins) and max \(maxSpins)")
        }
        guard (1_000_000...1_000_000_000).contains(sleepTimeoutNanoseconds) else {
            throw .invalid("sleep timeout must be between 1 ms and 1000 ms")
        }
        guard (10_000...1_000_000_000).contains(turnQuantumNanoseconds) else {
            throw .invalid("turn quantum must be between 10 µs and 1000 ms")
        }
    }

    /// The values, as the host logs them.
    public var description: String {
        "min \(minSpins) max \(maxSpins) start \(startSpins) yield-every \(yieldEvery) "
            + "sleep-timeout \(sleepTimeoutNanoseconds / 1_000_000) ms\(relax ? "" : " no-relax")"
            + (turnCalls == 0 ? "" : " turn \(turnCalls) calls/\(turnQuantumNanoseconds / 1000) µs")
            + (avoidWorkerCPU ? " avoid-worker-cpu" : "")
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

/// Changes to a wait strategy as people give them (command-line flags, the control socket's
/// `config`): a preset first, then any single value on top.
public struct WaitStrategyChange: Sendable {
    /// A preset to start from (`--wait`, `"wait"`).
    public var preset: String?
    /// A new ``WaitStrategy/minSpins``.
    public var minSpins: UInt32?
    /// A new ``WaitStrategy/maxSpins``.
    public var maxSpins: UInt32?
    /// A new ``WaitStrategy/startSpins``.
    public var startSpins: UInt32?
    /// A new ``WaitStrategy/yieldEvery``.
    public var yieldEvery: UInt32?
    /// A new sleep timeout, in milliseconds.
    public var sleepTimeoutMilliseconds: UInt64?

    /// Changes; nil leaves a value as it is.
    public init(preset: String? = nil, minSpins: UInt32? = nil, maxSpins: UInt32? = nil, startSpins: UInt32? = nil,
                yieldEvery: UInt32? = nil, sleepTimeoutMilliseconds: UInt64? = nil) {
        self.preset = preset
        self.minSpins = minSpins
        self.maxSpins = maxSpins
        self.startSpins = startSpins
        self.yieldEvery = yieldEvery
        self.sleepTimeoutMilliseconds = sleepTimeoutMilliseconds
    }

    /// The strategy with the changes made, validated. When min or max moves and start is not
    /// given, start is clamped between them.
    public func applied(to base: WaitStrategy) throws(WaitStrategyError) -> WaitStrategy {
        var strategy = base
        if let preset {
            guard let named = WaitStrategy.preset(named: preset) else {
                throw .invalid("unknown wait preset '\(preset)'; choose one of: "
                    + WaitStrategy.presets.map(\.name).joined(separator: ", "))
            }
            strategy = named
        }
        if let minSpins { strategy.minSpins = minSpins }
        if let maxSpins { strategy.maxSpins = maxSpins }
        if let startSpins {
            strategy.startSpins = startSpins
        } else if strategy.minSpins <= strategy.maxSpins {
            strategy.startSpins = min(max(strategy.startSpins, strategy.minSpins), strategy.maxSpins)
        }
        if let yieldEvery { strategy.yieldEvery = yieldEvery }
        if let sleepTimeoutMilliseconds {
            let (nanoseconds, overflow) = sleepTimeoutMilliseconds.multipliedReportingOverflow(by: 1_000_000)
            strategy.sleepTimeoutNanoseconds = overflow ? .max : nanoseconds
        }
        try strategy.validate()
        return strategy
    }
}

/// On the wire, a `config` change is `{"wait": preset, "spin_min": …, "spin_max": …, "spin_start": …,
/// "yield_every": …, "sleep_timeout_ms": …}`, every field optional.
extension WaitStrategyChange: Codable {
    enum CodingKeys: String, CodingKey {
        case preset = "wait"
        case minSpins = "spin_min"
        case maxSpins = "spin_max"
        case startSpins = "spin_start"
        case yieldEvery = "yield_every"
        case sleepTimeoutMilliseconds = "sleep_timeout_ms"
    }
}
