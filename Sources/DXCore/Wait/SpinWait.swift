#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

/// The spin half of every wait: one step per unsuccessful check, with the CPU-relax hint, a
/// `sched_yield` every `yieldEvery` steps, until the budget is spent; then the caller parks
/// (`Parker` (Wait/Parker.swift)). The guest's wait for a response and the worker's wait for requests both run it.
///
/// ```swift
/// var wait = SpinWait(budget: spin.budget, policy: policy)
/// while !ready() {
///     if wait.step() == .exhausted { /* park */ }
/// }
/// ```
@usableFromInline
struct SpinWait {
    /// Steps taken since the last reset.
    @usableFromInline var spins: UInt32 = 0
    @usableFromInline var untilYield: UInt32
    @usableFromInline let budget: UInt32
    @usableFromInline let yieldEvery: UInt32
    @usableFromInline let relax: Bool

    /// What one step did.
    @usableFromInline
    enum Step { case spun, yielded, exhausted }

    @inlinable
    init(budget: UInt32, policy: SpinPolicy) {
        self.budget = budget
        self.yieldEvery = policy.yieldEvery
        self.relax = policy.relax
        self.untilYield = policy.yieldEvery
    }

    /// One idle step: relax (and yield every `yieldEvery` steps), or `.exhausted` when the
    /// budget is spent.
    @inlinable @inline(__always)
    mutating func step() -> Step {
        spins &+= 1
        if spins >= budget { return .exhausted }
        if relax { CShm_cpu_relax() }
        if untilYield != 0 {
            untilYield &-= 1
            if untilYield == 0 {
                untilYield = yieldEvery
                sched_yield()
                return .yielded
            }
        }
        return .spun
    }

    /// Starts over: work arrived (yield after N idle steps in a row, not N in total).
    @inlinable @inline(__always)
    mutating func reset() {
        spins = 0
        untilYield = yieldEvery
    }
}
