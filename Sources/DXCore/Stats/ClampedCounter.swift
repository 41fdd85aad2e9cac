import CoreMetrics

/// A swift-metrics counter that never receives what would trap: its running total is kept in host
/// memory and stays within `0...Int64.max` (`Counter.increment(by:)` traps past `Int64.max`, and the
/// Prometheus backend's increment has a non-negative precondition). Past the cap it saturates.
struct ClampedCounter {
    let counter: Counter
    private(set) var total: Int64 = 0

    init(label: String, dimensions: [(String, String)], factory: any MetricsFactory) {
        counter = Counter(label: label, dimensions: dimensions, factory: factory)
    }

    mutating func add(_ amount: UInt64) {
        let step = Int64(min(amount, UInt64(Int64.max - total)))
        guard step > 0 else { return }
        total += step
        counter.increment(by: step)
    }

    func destroy() {
        counter.destroy()
    }
}
