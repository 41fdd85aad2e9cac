import Synchronization

/// The serving workers' wait strategy, replaceable while they run.
///
/// - Important: Workers never lock on the call path. They compare ``version`` (one relaxed
///   atomic load) every 1024 polls and after each sleep, and take the lock only when it moved.
public final class StrategyCell: Sendable {
    private let current: Mutex<WaitStrategy>
    private let counter = Atomic<UInt64>(0)

    /// A cell holding `strategy`.
    public init(_ strategy: WaitStrategy) {
        current = Mutex(strategy)
    }

    /// Bumped by every ``store(_:)``.
    public var version: UInt64 {
        // Acquiring: pairs with the releasing increment in store, so a reader that sees a new
        // version and then locks reads the new strategy.
        counter.load(ordering: .acquiring)
    }

    /// The current strategy (takes the lock: not for the call path).
    public func load() -> WaitStrategy {
        current.withLock { $0 }
    }

    /// Replaces the strategy. Validate it first.
    public func store(_ strategy: WaitStrategy) {
        current.withLock { $0 = strategy }
        counter.add(1, ordering: .releasing)
    }
}
