import DXCore
import Testing

@Suite struct WaitStrategyTests {
    @Test func budgetGrowsWhileSpinningPaysOff() {
        var spin = AdaptiveSpin(WaitStrategy(minSpins: 100, maxSpins: 5000, startSpins: 2000, yieldEvery: 128))
        #expect(spin.budget == 2000)
        spin.spinSucceeded()
        #expect(spin.budget == 2000 + 3000 / 16)
        for _ in 0..<1000 { spin.spinSucceeded() }
        #expect(spin.budget == 5000)  // reaches max exactly and stays there
        spin.spinSucceeded()
        #expect(spin.budget == 5000)
    }

    @Test func budgetHalvesWhenItHadToSleep() {
        var spin = AdaptiveSpin(.balanced)
        spin.hadToSleep()
        #expect(spin.budget == 1000)
        for _ in 0..<20 { spin.hadToSleep() }
        #expect(spin.budget == 100)  // never below min
    }

    @Test func budgetRecoversAfterSleeps() {
        var spin = AdaptiveSpin(.balanced)
        for _ in 0..<20 { spin.hadToSleep() }
        var previous = spin.budget
        for _ in 0..<50 {
            spin.spinSucceeded()
            #expect(spin.budget > previous || spin.budget == 5000)
            previous = spin.budget
        }
    }

    @Test func startIsClampedIntoRange() {
        let spin = AdaptiveSpin(WaitStrategy(minSpins: 10, maxSpins: 20, startSpins: 50, yieldEvery: 0))
        #expect(spin.budget == 20)
    }

    @Test func presetsAreValidAndNamed() throws {
        for (name, strategy) in WaitStrategy.presets {
            try strategy.validate()
            #expect(WaitStrategy.preset(named: name) == strategy)
        }
        #expect(WaitStrategy.balanced.minSpins == 100)
        #expect(WaitStrategy.balanced.maxSpins == 5000)
        #expect(WaitStrategy.balanced.startSpins == 2000)
        #expect(WaitStrategy.balanced.yieldEvery == 128)
        #expect(WaitStrategy.preset(named: "nope") == nil)
    }

    /// `auto` sets its budget in time: 50 µs to 500 µs of spinning, whatever a spin costs here.
    @Test func autoIsCalibratedInTime() throws {
        let auto = WaitStrategy.auto
        try auto.validate()
        #expect(auto.turnCalls > 0)
        #expect(auto.avoidWorkerCPU == (CPUAffinity.allowedCPUs > 1))
        #expect(auto.minSpins < auto.startSpins && auto.startSpins < auto.maxSpins)
        // The ratios survive the calibration (up to the rounding and the 100-spin floor).
        #expect(auto.maxSpins >= 9 * auto.minSpins && auto.maxSpins <= 11 * auto.minSpins)
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
            try WaitStrategy(minSpins: 10, maxSpins: 5, startSpins: 5, yieldEvery: 0).validate()
        }
        #expect(throws: WaitStrategyError.self) {
            try WaitStrategy(minSpins: 10, maxSpins: 50, startSpins: 60, yieldEvery: 0).validate()
        }
        #expect(throws: WaitStrategyError.self) {
            try WaitStrategy(minSpins: 1, maxSpins: 5, startSpins: 2, yieldEvery: 0, sleepTimeoutNanoseconds: 10).validate()
        }
    }

    @Test func changesApplyAPresetThenValues() throws {
        let low = try WaitStrategyChange(preset: "low-cpu", yieldEvery: 32).applied(to: .fair)
        #expect(low.maxSpins == 500)
        #expect(low.yieldEvery == 32)
        // A new max below the preset's start pulls start down with it.
        let clamped = try WaitStrategyChange(maxSpins: 1000).applied(to: .balanced)
        #expect(clamped.startSpins == 1000)
        #expect(throws: WaitStrategyError.self) { try WaitStrategyChange(preset: "warp").applied(to: .fair) }
        #expect(throws: WaitStrategyError.self) { try WaitStrategyChange(minSpins: 10, maxSpins: 5).applied(to: .fair) }
    }
}
