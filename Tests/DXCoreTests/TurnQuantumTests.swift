import CDXGuest
import DXCore
import Testing

/// The quantum rule (``TurnPolicy/quantum(waiters:)``, docs/LAYOUT.md "Turns"): its bound, its shape,
/// the stale period's consistency, and the C guest computing the same.
@Suite(.timeLimit(.minutes(1))) struct TurnQuantumTests {
    static let k = TurnPolicy.quantaPerRound
    static let floor = TurnPolicy.quantumFloorNanoseconds
    static let most = TurnPolicy.maxCountedWaiters
    /// Quanta across the valid range, around the floor and the defaults.
    static let quanta: [UInt64] = [10_000, 100_000, 199_999, 200_000, 200_001, 1_000_000, 4_000_000, 10_000_000,
                                   123_456_789, 1_000_000_000]
    /// Waiter counts: every count up to past the clamp, and garbage.
    static let counts: [UInt64] = Array(0...(most + 100)) + [1 << 20, 1 << 40, 1 << 62, .max - 1, .max]

    func policy(_ quantum: UInt64) -> TurnPolicy { TurnPolicy(turnCalls: 4096, turnQuantumNanoseconds: quantum) }

    /// The bound: w · quantum(w) ≤ max(k · q, w · min(q, F)) for the clamped count w, and so the last
    /// of w waiters waits at most max(k · q, w · F) + w · h with h the hand-off.
    @Test(arguments: quanta) func aRoundOfTurnsIsBounded(quantum q: UInt64) {
        let policy = policy(q)
        let h: UInt64 = 100_000  // a generous hand-off: futex wake plus 64 calls
        for count in Self.counts {
            let w = min(count, Self.most)
            let quantum = policy.quantum(waiters: count)
            #expect(quantum >= min(q, Self.floor) && quantum <= q, "q \(q), w \(count): \(quantum)")
            #expect(w * quantum <= max(Self.k * q, w * min(q, Self.floor)), "q \(q), w \(count): \(quantum)")
            #expect(w * (quantum + h) <= max(Self.k * q, w * min(q, Self.floor)) + w * h)
        }
    }

    /// With the default quantum (4 ms): one round of turns spends at most 16 ms in quanta up to 80
    /// waiters, and 205 ms at the clamp; with 100 µs hand-offs the last waiter waits at most 24 ms
    /// with 80 ahead of it (a constant quantum: 320 ms) and 0.31 s with 1024 (a constant: 4.1 s).
    @Test func theDefaultBoundInNumbers() {
        let policy = WaitStrategy.fair.turnPolicy
        #expect(policy.turnQuantumNanoseconds == 4_000_000)
        for w in UInt64(1)...80 { #expect(w * policy.quantum(waiters: w) <= 16_000_000) }
        #expect(80 * (policy.quantum(waiters: 80) + 100_000) <= 24_000_000)
        #expect(policy.quantum(waiters: 81) == 200_000)
        #expect(1024 * policy.quantum(waiters: 1024) == 204_800_000)
        #expect(1024 * (policy.quantum(waiters: .max) + 100_000) <= 310_000_000)
    }

    /// Few waiters keep long turns: 4 threads (3 waiters) the whole quantum, 8 threads (7) 4/7 of it,
    /// 2.3 ms: at 0.5 M calls/s that is over 1000 calls, so hand-offs stay rarer than 1 in 1000 calls
    /// (and at the usual 2 M/s or more, the 4096-call quota ends the turn first).
    @Test func fewWaitersKeepLongTurns() {
        let policy = WaitStrategy.fair.turnPolicy
        for w in UInt64(0)...4 { #expect(policy.quantum(waiters: w) == 4_000_000) }
        #expect(policy.quantum(waiters: 7) == 2_285_712)
        #expect(policy.quantum(waiters: 7) * 500_000 / 1_000_000_000 > 1000)
        #expect(UInt64(policy.turnCalls) * 1_000_000_000 / 2_000_000 < policy.quantum(waiters: 7))
    }

    /// The rule never grows with the count, and a waiter's stale period outlasts the quantum of any
    /// holder that counts at least one waiter fewer than the waiter did, by 1 ms (see
    /// ``TurnPolicy/staleLeaseNanoseconds(waiters:)``).
    @Test(arguments: quanta) func theStalePeriodOutlastsTheHoldersQuantum(quantum q: UInt64) {
        let policy = policy(q)
        var previous = UInt64.max
        for w in Self.counts {
            let quantum = policy.quantum(waiters: w)
            #expect(quantum <= previous, "q \(q): quantum(\(w)) = \(quantum) > \(previous)")
            previous = quantum
            let stale = policy.staleLeaseNanoseconds(waiters: w)
            #expect(stale == 2 * quantum + 1_000_000)
            // What a holder with w - 1 (or more) waiters may hold.
            #expect(stale >= policy.quantum(waiters: w == 0 ? 0 : w - 1) + 1_000_000, "q \(q), w \(w)")
        }
    }

    /// The count from the turnstile's words: next − serving − 1, nobody when next is at or behind
    /// serving, clamped to the most lanes a worker has.
    @Test func theCountComesFromTheTurnstileAndIsClamped() {
        #expect(TurnPolicy.waiters(next: 1, serving: 0) == 0)
        #expect(TurnPolicy.waiters(next: 8, serving: 0) == 7)
        #expect(TurnPolicy.waiters(next: 5, serving: .max - 1) == 6)  // across the wrap
        #expect(TurnPolicy.waiters(next: 3, serving: 3) == 0)
        #expect(TurnPolicy.waiters(next: 3, serving: 7) == 0)  // serving ahead of next: garbage or a race
        #expect(TurnPolicy.waiters(next: 1 << 40, serving: 0) == Self.most)
        #expect(TurnPolicy.waiters(next: 0, serving: 1 << 63) == 0)
    }

    /// The C guest (Sources/CDXGuest) computes the same rule, value for value, in a grant too.
    @Test(arguments: quanta) func theCGuestComputesTheSameRule(quantum q: UInt64) {
        #expect(UInt64(DX_TURN_QUANTA_PER_ROUND) == Self.k && DX_TURN_QUANTUM_FLOOR_NS == Self.floor
            && UInt64(DX_TURN_MAX_COUNTED_WAITERS) == Self.most)
        let policy = policy(q)
        var mismatches = 0
        for w in Self.counts where dx_turn_quantum_ns(q, w) != policy.quantum(waiters: w)
            || dx_turn_stale_lease_ns(q, w) != policy.staleLeaseNanoseconds(waiters: w) {
            mismatches += 1
        }
        #expect(mismatches == 0)
        // Within a private host's grant: min(quantum(w), max(G / (2 (w + 1)), 20 µs)), G clamped to 10 µs...1 s.
        #expect(DX_TURN_GRANT_QUANTUM_MIN_NS == 10_000 && DX_TURN_GRANT_QUANTUM_MAX_NS == 1_000_000_000
            && DX_TURN_GRANT_SHARE_FLOOR_NS == 20_000)
        let grantQuanta: [UInt64] = [0, 1, 9_999, 10_000, 20_000, 100_000, 1_000_000, 4_000_000, 999_999_999,
                                     1_000_000_000, 1_000_000_001, 1 << 40, .max]
        var grantMismatches = 0
        for g in grantQuanta {
            for w in Self.counts where dx_turn_quantum_in_grant_ns(q, w, g)
                != TurnPolicy.quantum(waiters: w, withinGrant: g, policy: policy) {
                grantMismatches += 1
            }
        }
        #expect(grantMismatches == 0)
        let words: [(UInt64, UInt64)] = [(1, 0), (8, 0), (5, .max - 1), (3, 3), (3, 7), (1 << 40, 0), (0, 1 << 63),
                                          (1 << 62, 0), ((1 << 62) + 1, 0)]
        for (next, serving) in words {
            #expect(dx_turn_waiters(next, serving) == TurnPolicy.waiters(next: next, serving: serving))
        }
    }
}
