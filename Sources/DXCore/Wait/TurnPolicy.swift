/// How guest threads that share a serving worker take turns (guests only; see
/// Guest/Lane+Turns.swift). Hosts have no turns.
///
/// With more guest threads than CPUs, threads that all spin for their responses starve the
/// worker and each other. With turns on, one thread of a worker's guests holds the turn and makes
/// calls; the others sleep until theirs. A holder passes its turn after ``turnCalls`` calls or
/// its quantum, whichever comes first, and only when someone waits. The quantum shrinks as
/// waiters queue up (``quantum(waiters:)``), so that a round of turns stays short.
public struct TurnPolicy: Sendable, Equatable, CustomStringConvertible {
    /// Calls per turn when other guest threads of the same worker wait; 0 turns turn-taking off.
    public var turnCalls: UInt32
    /// The longest a turn lasts, in nanoseconds (10 µs...1 s), however few calls it made: the
    /// quantum with up to ``quantaPerRound`` waiters; more waiters shorten it
    /// (``quantum(waiters:)``).
    public var turnQuantumNanoseconds: UInt64
    /// Whether a thread that holds its turn moves off the CPU its serving worker runs on (the
    /// worker publishes it). Two spinners that share a CPU while the other CPU idles make every
    /// exchange wait for a context switch until the scheduler separates them. The thread's
    /// affinity is narrowed for the turn (its own mask minus that CPU) and given back when the turn
    /// passes or the lane is released. In a private region (granted turns) it is narrowed from the
    /// claim until the lane is released, waits included: one worker serves
    /// many guests there, and a waiter woken onto its CPU preempts it.
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

// MARK: - The quantum rule (docs/LAYOUT.md, "Turns"; the C guest computes the same)

extension TurnPolicy {
    /// *k*: a round of turns (every waiter gets one) lasts at most this many configured quanta,
    /// until the floor.
    public static let quantaPerRound: UInt64 = 4
    /// *F*: the shortest quantum the rule gives (200 µs; a configured quantum shorter than this is
    /// kept). A hand-off costs a futex wake (~45 µs on the machines we measure), so shorter turns
    /// would spend most of their time handing off.
    public static let quantumFloorNanoseconds: UInt64 = 200_000
    /// *W*: counts above this are taken as this (a worker serves at most ``Layout/maxLanes``
    /// lanes, so more live waiters cannot exist: the rest are abandoned tickets or garbage).
    public static let maxCountedWaiters = UInt64(Layout.maxLanes)

    /// How many guests wait behind the holder, from the turnstile's two counters:
    /// `next − serving − 1`, clamped to 0...``maxCountedWaiters``.
    ///
    /// The counters are guest-written, so the count is a hint: it sizes the quantum and the stale
    /// period and nothing else. `next` at or behind `serving` (a race, an abandoned queue, garbage)
    /// counts as nobody, which gives the longest quantum.
    @inlinable
    public static func waiters(next: UInt64, serving: UInt64) -> UInt64 {
        let queued = next &- serving  // the holder and its waiters
        if queued == 0 || queued >= 1 << 62 { return 0 }
        return min(queued - 1, maxCountedWaiters)
    }

    /// The effective quantum for a holder with `waiters` guests queued behind it:
    /// `clamp(q · k / max(k, w), min(q, F), q)` with *q* the configured quantum, *k* =
    /// ``quantaPerRound``, *F* = ``quantumFloorNanoseconds`` and *w* the count clamped to
    /// ``maxCountedWaiters``, computed as `q / w · k` (no overflow; exact to *k* ns).
    ///
    /// **The bound.** `w · quantum(w) ≤ max(k · q, w · min(q, F))`. The last of *w* waiters gets
    /// its turn within `w · (quantum(w) + h) ≤ max(k · q, w · F) + w · h`, where *h* is one
    /// hand-off (a futex wake, plus up to 64 calls until the holder's next turn check). With the
    /// default *q* = 4 ms: up to 80 waiters, one round of turns spends at most 16 ms in quanta;
    /// beyond that each turn lasts 200 µs, so at the clamp, 1024 waiters, 205 ms. A constant
    /// quantum would give `w · q`: 4 s for 1024 waiters.
    ///
    /// **Few waiters keep long turns.** Up to *k* = 4 waiters the quantum is *q*; 7 (eight
    /// threads on one worker) get `4/7 · q` ≈ 2.3 ms, longer than the 4096-call quota takes at
    /// 2 M calls/s, so turns still end by their quota: one hand-off per 4096 calls.
    ///
    /// The rule never increases with *w*, and `quantum(w − 1) ≤ 2 · quantum(w)`, which is what
    /// keeps the stale period (``staleLeaseNanoseconds(waiters:)``) consistent between a waiter
    /// and a holder that read different counts.
    @inlinable
    public func quantum(waiters: UInt64) -> UInt64 {
        let q = turnQuantumNanoseconds
        let k = TurnPolicy.quantaPerRound
        let w = min(waiters, TurnPolicy.maxCountedWaiters)
        guard w > k else { return q }
        return max(q / w * k, min(q, TurnPolicy.quantumFloorNanoseconds))
    }

    /// The quantum in a region whose turns the host grants (private regions): the holder's turn
    /// also ends once its share of the region's grant is used, so that every waiting thread of
    /// the guest gets a turn within one grant: `min(quantum(w), max(G / (2 (w + 1)), 20 µs))` with
    /// *G* the host's grant quantum (guest-visible, so clamped to 10 µs...1 s). Half an equal
    /// share: with whole shares the hand-offs between them (10-25 µs each here) left room for
    /// about six of eight threads' turns in a grant, so a thread waited two grant cycles for its
    /// turn and then, when its turn came after the grant ended, a third for the grant (64 × 8:
    /// worst calls of 126-138 ms at 640 µs grants; with half shares 87-93 ms).
    public static func quantum(waiters: UInt64, withinGrant grantQuantum: UInt64, policy: TurnPolicy) -> UInt64 {
        let w = min(waiters, TurnPolicy.maxCountedWaiters)
        let share = min(max(grantQuantum, 10_000), 1_000_000_000) / (2 * (w + 1))
        return min(policy.quantum(waiters: w), max(share, 20_000))
    }

    /// How old the lease of a holder with `waiters` guests queued behind it must be before a
    /// waiter takes its turn away: `2 · quantum(waiters) + 1 ms`.
    ///
    /// A waiter sleeps for this period, sized by the count it read before the sleep, then judges
    /// the lease by that same period. The holder reads both counters at every turn check and
    /// passes once its lease is older than the quantum for the count it reads. While *serving*
    /// stays put, *next* only grows, so every holder check after the waiter's read sees at least
    /// the waiter's count: a holder that is still calling passes by `quantum + one check` into
    /// the waiter's sleep, before the period ends. When the turn moved on meanwhile, the new
    /// holder counts at least one fewer (`w − 1`), and `quantum(w − 1) ≤ 2 · quantum(w)`, so the
    /// period still exceeds its quantum by 1 ms. A waiter with an older, smaller count only waits
    /// longer before it skips a dead holder.
    @inlinable
    public func staleLeaseNanoseconds(waiters: UInt64) -> UInt64 {
        let quantum = quantum(waiters: waiters)
        return quantum > (UInt64.max - 1_000_000) / 2 ? .max : 2 * quantum + 1_000_000
    }

    /// The shortest ``quantum(waiters:)`` can be: `min(q, F)`. A holder younger than this keeps
    /// its turn without reading the turnstile.
    @inlinable
    public var shortestQuantumNanoseconds: UInt64 { min(turnQuantumNanoseconds, TurnPolicy.quantumFloorNanoseconds) }
}
