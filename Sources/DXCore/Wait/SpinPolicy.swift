/// How a waiter spins, yields and sleeps before its peer answers: the part of a wait both sides
/// share (the host's workers waiting for requests, guests waiting for responses).
///
/// A wait spins with a CPU-relax hint up to an adaptive budget of spins (``AdaptiveSpin``,
/// between ``spinMin`` and ``spinMax``, starting at ``spinStart``), calls `sched_yield` every
/// ``yieldEvery`` spins, and then parks (`Parker` (Wait/Parker.swift)) for at most ``sleepTimeoutNanoseconds`` at a
/// time, re-checking the peer's health between sleeps.
///
/// Each setting has one name: `spinMin` here, `--spin-min` on the command line, `spin_min` in
/// the control protocol, the sweep's experiment files and the C guest's `dx_wait`.
public struct SpinPolicy: Sendable, Equatable, CustomStringConvertible {
    /// The spin budget never falls below this.
    public var spinMin: UInt32
    /// The spin budget never grows above this.
    public var spinMax: UInt32
    /// The budget a new waiter starts with.
    public var spinStart: UInt32
    /// `sched_yield` after every this many spins; 0 never yields.
    public var yieldEvery: UInt32
    /// The longest single sleep, in nanoseconds (1 ms...1 s).
    public var sleepTimeoutNanoseconds: UInt64
    /// Whether each spin executes the CPU-relax hint. Off only for experiments.
    public var relax: Bool

    /// A policy; ``validate()`` it before use.
    public init(spinMin: UInt32, spinMax: UInt32, spinStart: UInt32, yieldEvery: UInt32,
                sleepTimeoutNanoseconds: UInt64 = 50_000_000, relax: Bool = true) {
        self.spinMin = spinMin
        self.spinMax = spinMax
        self.spinStart = spinStart
        self.yieldEvery = yieldEvery
        self.sleepTimeoutNanoseconds = sleepTimeoutNanoseconds
        self.relax = relax
    }

    /// The wait of an async call on a Swift-concurrency thread: spins 2 µs to 50 µs (starting at
    /// 10 µs; measured in time, like ``WaitStrategy/auto``), never yields (a `sched_yield` on a
    /// cooperative thread gives the CPU to another process, not to another task), then suspends.
    /// A cooperative thread is the process's to share, so the budget stays µs-scale: a response
    /// slower than that costs a suspension, not a pool thread.
    public static let cooperative: SpinPolicy = {
        let perSpin = max(SpinCalibration.nanosecondsPerSpin, 1)
        func spins(_ nanoseconds: Double) -> UInt32 { UInt32(min(max(nanoseconds / perSpin, 16), 1_000_000)) }
        return SpinPolicy(spinMin: spins(2_000), spinMax: spins(50_000), spinStart: spins(10_000), yieldEvery: 0)
    }()

    /// Throws a sentence a person understands when the values do not fit together.
    public func validate() throws(WaitStrategyError) {
        guard spinMin <= spinMax else { throw .invalid("spin min \(spinMin) is larger than spin max \(spinMax)") }
        guard (spinMin...spinMax).contains(spinStart) else {
            throw .invalid("spin start \(spinStart) is not between min \(spinMin) and max \(spinMax)")
        }
        guard (1_000_000...1_000_000_000).contains(sleepTimeoutNanoseconds) else {
            throw .invalid("sleep timeout must be between 1 ms and 1000 ms")
        }
    }

    /// This policy with the given values changed, validated. When min or max moves and start is
    /// not given, start is clamped between them. The command line and the control socket's
    /// `config` both change a policy through this.
    public func changing(spinMin: UInt32? = nil, spinMax: UInt32? = nil, spinStart: UInt32? = nil,
                         yieldEvery: UInt32? = nil, sleepTimeoutMilliseconds: UInt64? = nil,
                         relax: Bool? = nil) throws(WaitStrategyError) -> SpinPolicy {
        var policy = self
        if let spinMin { policy.spinMin = spinMin }
        if let spinMax { policy.spinMax = spinMax }
        if let spinStart {
            policy.spinStart = spinStart
        } else if policy.spinMin <= policy.spinMax {
            policy.spinStart = min(max(policy.spinStart, policy.spinMin), policy.spinMax)
        }
        if let yieldEvery { policy.yieldEvery = yieldEvery }
        if let sleepTimeoutMilliseconds {
            let (nanoseconds, overflow) = sleepTimeoutMilliseconds.multipliedReportingOverflow(by: 1_000_000)
            policy.sleepTimeoutNanoseconds = overflow ? .max : nanoseconds
        }
        if let relax { policy.relax = relax }
        try policy.validate()
        return policy
    }

    /// The values, as the host logs them.
    public var description: String {
        "min \(spinMin) max \(spinMax) start \(spinStart) yield-every \(yieldEvery) "
            + "sleep-timeout \(sleepTimeoutNanoseconds / 1_000_000) ms\(relax ? "" : " no-relax")"
    }
}
