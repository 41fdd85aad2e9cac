import DXCore
import Foundation
import Testing

@Suite struct WaitStrategyTests {
    @Test func budgetGrowsWhileSpinningPaysOff() {
        var spin = AdaptiveSpin(SpinPolicy(spinMin: 100, spinMax: 5000, spinStart: 2000, yieldEvery: 128))
        #expect(spin.budget == 2000)
        spin.spinSucceeded()
        #expect(spin.budget == 2000 + 3000 / 16)
        for _ in 0..<1000 { spin.spinSucceeded() }
        #expect(spin.budget == 5000)  // reaches max exactly and stays there
        spin.spinSucceeded()
        #expect(spin.budget == 5000)
    }

    @Test func budgetHalvesWhenItHadToSleep() {
        var spin = AdaptiveSpin(WaitStrategy.balanced.spinPolicy)
        spin.hadToSleep()
        #expect(spin.budget == 1000)
        for _ in 0..<20 { spin.hadToSleep() }
        #expect(spin.budget == 100)  // never below min
    }

    @Test func budgetRecoversAfterSleeps() {
        var spin = AdaptiveSpin(WaitStrategy.balanced.spinPolicy)
        for _ in 0..<20 { spin.hadToSleep() }
        var previous = spin.budget
        for _ in 0..<50 {
            spin.spinSucceeded()
            #expect(spin.budget > previous || spin.budget == 5000)
            previous = spin.budget
        }
    }

    @Test func startIsClampedIntoRange() {
        let spin = AdaptiveSpin(SpinPolicy(spinMin: 10, spinMax: 20, spinStart: 50, yieldEvery: 0))
        #expect(spin.budget == 20)
    }

    @Test func presetsAreValidAndNamed() throws {
        for (name, strategy) in WaitStrategy.presets {
            try strategy.validate()
            #expect(try WaitStrategy.preset(named: name) == strategy)
        }
        let balanced = WaitStrategy.balanced.spinPolicy
        #expect(balanced == SpinPolicy(spinMin: 100, spinMax: 5000, spinStart: 2000, yieldEvery: 128))
        #expect(WaitStrategy.balanced.turnPolicy == .off)
        #expect(throws: WaitStrategyError.self) { try WaitStrategy.preset(named: "nope") }
    }

    /// `auto` sets its budget in time: 50 µs to 500 µs of spinning, whatever a spin costs here.
    @Test func autoIsCalibratedInTime() throws {
        let auto = WaitStrategy.auto
        try auto.validate()
        #expect(auto.turnPolicy.turnCalls > 0)
        #expect(auto.turnPolicy.avoidWorkerCPU == (CPUAffinity.allowedCPUs > 1))
        let spin = auto.spinPolicy
        #expect(spin.spinMin < spin.spinStart && spin.spinStart < spin.spinMax)
        // The ratios survive the calibration (up to the rounding and the 100-spin floor).
        #expect(spin.spinMax >= 9 * spin.spinMin && spin.spinMax <= 11 * spin.spinMin)
    }

    @Test(arguments: [("1", [1]), ("0,1", [0, 1]), ("0-3", [0, 1, 2, 3]), ("2,0-1", [2, 0, 1])])
    func cpuListsParse(text: String, cpus: [Int]) {
        #expect(CPUAffinity.parse(text) == cpus)
    }

    @Test(arguments: ["", "a", "1-", "3-1", "-1", "1,,2", "1024"])
    func badCPUListsAreRefused(text: String) {
        #expect(CPUAffinity.parse(text) == nil)
    }

    @Test func invalidCombinationsAreRefused() {
        #expect(throws: WaitStrategyError.self) {
            try SpinPolicy(spinMin: 10, spinMax: 5, spinStart: 5, yieldEvery: 0).validate()
        }
        #expect(throws: WaitStrategyError.self) {
            try SpinPolicy(spinMin: 10, spinMax: 50, spinStart: 60, yieldEvery: 0).validate()
        }
        #expect(throws: WaitStrategyError.self) {
            try SpinPolicy(spinMin: 1, spinMax: 5, spinStart: 2, yieldEvery: 0, sleepTimeoutNanoseconds: 10).validate()
        }
        #expect(throws: WaitStrategyError.self) {
            try TurnPolicy(turnCalls: 8, turnQuantumNanoseconds: 1).validate()
        }
    }

    @Test func changesApplyAPresetThenValues() throws {
        let fair = WaitStrategy.fair.spinPolicy
        let low = try SpinPolicyChange(preset: "low-cpu", yieldEvery: 32).applied(to: fair)
        #expect(low.spinMax == 500)
        #expect(low.yieldEvery == 32)
        // A new max below the preset's start pulls start down with it.
        let clamped = try WaitStrategy.balanced.spinPolicy.changing(spinMax: 1000)
        #expect(clamped.spinStart == 1000)
        #expect(throws: WaitStrategyError.self) { try SpinPolicyChange(preset: "warp").applied(to: fair) }
        #expect(throws: WaitStrategyError.self) { try SpinPolicyChange(spinMin: 10, spinMax: 5).applied(to: fair) }
    }

    /// One name per setting: the wire form of a spin policy uses the same names in snake case.
    @Test func aSpinPolicyCrossesTheWireUnderItsOwnNames() throws {
        let policy = SpinPolicy(spinMin: 1, spinMax: 9, spinStart: 4, yieldEvery: 2, sleepTimeoutNanoseconds: 7_000_000,
                                relax: false)
        let json = String(decoding: try JSONEncoder().encode(policy), as: UTF8.self)
        for key in ["\"spin_min\":1", "\"spin_max\":9", "\"spin_start\":4", "\"yield_every\":2",
                    "\"sleep_timeout_ms\":7", "\"relax\":false"] {
            #expect(json.contains(key), "\(json) lacks \(key)")
        }
        #expect(try JSONDecoder().decode(SpinPolicy.self, from: Data(json.utf8)) == policy)
    }
}
