import Synchronization

/// The serving workers' spin policy, replaceable while they run.
///
/// - Important: Workers never lock on the call path. They compare ``version`` (one relaxed
///   atomic load) every 1024 polls and after each sleep, and take the lock only when it moved.
public final class SpinPolicyCell: Sendable {
    private let current: Mutex<SpinPolicy>
    private let counter = Atomic<UInt64>(0)

    /// A cell holding `policy`.
    public init(_ policy: SpinPolicy) {
        current = Mutex(policy)
    }

    /// Bumped by every ``store(_:)``.
    public var version: UInt64 {
        // Acquiring: pairs with the releasing increment in store, so a reader that sees a new
        // version and then locks reads the new policy.
        counter.load(ordering: .acquiring)
    }

    /// The current policy (takes the lock: not for the call path).
    public func load() -> SpinPolicy {
        current.withLock { $0 }
    }

    /// Replaces the policy. Validate it first.
    public func store(_ policy: SpinPolicy) {
        current.withLock { $0 = policy }
        counter.add(1, ordering: .releasing)
    }
}
