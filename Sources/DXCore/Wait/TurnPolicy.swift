/// How guest threads that share a serving worker take turns (guests only; see
/// Guest/Lane+Turns.swift). Hosts have no turns.
///
/// With more guest threads than CPUs, threads that all spin for their responses starve the
/// worker and each other. With turns on, one thread of a worker's guests holds the turn and makes
/// calls; the others sleep until theirs. A holder passes its turn after ``turnCalls`` calls or
/// ``turnQuantumNanoseconds``, whichever comes first, and only when someone waits.
public struct TurnPolicy: Sendable, Equatable, CustomStringConvertible {
    /// Calls per turn when other guest threads of the same worker wait; 0 turns turn-taking off.
    public var turnCalls: UInt32
    /// The longest a turn lasts, in nanoseconds (10 µs...1 s), however few calls it made.
    public var turnQuantumNanoseconds: UInt64
    /// Whether a thread that holds its turn moves off the CPU its serving worker runs on (the
    /// worker publishes it). Two spinners that share a CPU while the other CPU idles make every
    /// exchange wait for a context switch until the scheduler separates them. The thread's
    /// affinity is narrowed for the turn (its own mask minus that CPU) and given back when the turn
    /// passes or the lane is released.
    public var avoidWorkerCPU: Bool

    /// A policy; ``validate()`` it before use.
    public init(turnCalls: UInt32, turnQuantumNanoseconds: UInt64 = 4_000_000, avoidWorkerCPU: Bool = false) {
        self.turnCalls = turnCalls
        self.turnQuantumNanoseconds = turnQuantumNanoseconds
        self.avoidWorkerCPU = avoidWorkerCPU
    }

    /// No turns: every guest thread competes for CPU on its own.
    public static let off = TurnPolicy(turnCalls: 0)

    /// Throws a sentence a person understands when a value is out of range.
    public func validate() throws(WaitStrategyError) {
        guard (10_000...1_000_000_000).contains(turnQuantumNanoseconds) else {
            throw .invalid("turn quantum must be between 10 µs and 1000 ms")
        }
    }

    /// The values, as logged.
    public var description: String {
        turnCalls == 0 ? "no turns"
            : "turn \(turnCalls) calls/\(turnQuantumNanoseconds / 1000) µs" + (avoidWorkerCPU ? " avoid-worker-cpu" : "")
    }
}
