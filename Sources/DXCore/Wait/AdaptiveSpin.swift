import CShm

/// The adaptive spin budget of one waiter.
///
/// A wait that ends while spinning means spinning paid off: the budget grows by a sixteenth of
/// the way to `max` (at least 1). A wait that had to sleep means the spin was wasted: the
/// budget halves, down to `min`. The budget therefore climbs slowly under steady traffic and
/// falls fast when the peer goes quiet.
public struct AdaptiveSpin: Sendable, Equatable {
    @usableFromInline var _budget: UInt32
    /// The floor.
    public let spinMin: UInt32
    /// The ceiling.
    public let spinMax: UInt32

    /// The spins the next wait may make before it sleeps.
    @inlinable public var budget: UInt32 { _budget }

    /// A budget at the policy's start value, clamped between its min and max.
    public init(_ policy: SpinPolicy) {
        spinMin = policy.spinMin
        spinMax = policy.spinMax
        _budget = min(max(policy.spinStart, policy.spinMin), policy.spinMax)
    }

    /// The wait ended while spinning.
    @inlinable
    public mutating func spinSucceeded() {
        if _budget < spinMax { _budget += max((spinMax - _budget) / 16, 1) }
    }

    /// The wait ran out of spins and slept.
    @inlinable
    public mutating func hadToSleep() {
        _budget = max(_budget / 2, spinMin)
    }
}

/// What one spin (a load and the CPU-relax hint) costs on this machine, measured once.
enum SpinCalibration {
    /// The median of five timed runs of 20,000 spins.
    static let nanosecondsPerSpin: Double = {
        var word: UInt64 = 0
        var samples: [Double] = []
        withUnsafeMutablePointer(to: &word) { pointer in
            for _ in 0..<5 {
                let start = CShm_monotonic_ns()
                for _ in 0..<20_000 {
                    if CShm_load_acquire_u64(pointer) == 1 { break }
                    CShm_cpu_relax()
                }
                samples.append(Double(CShm_monotonic_ns() &- start) / 20_000)
            }
        }
        return samples.sorted()[2]
    }()
}
