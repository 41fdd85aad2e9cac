import DXCommandLine

/// The human table: the median run of each mode and thread count, and dx as a ratio of the baseline.
enum BenchTable {
    static func render(_ results: [BenchResult], repeats: Int, baseline: Baseline?) -> String {
        var lines: [String] = []
        let base = baseline?.rawValue ?? "raw"
        let header = ["mode", "threads", "round trips/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "exch p99.9 µs",
                      "slowest/fastest lane", "CPU µs/op", "errors", "vs \(base) (same T)", "vs \(base) 1T",
                      "host: ops/s", "sleeps/s", "wakes/s", "turn passes/1k", "turn waits/1k"]
        var rows: [[String]] = []
        var threadCounts: [Int] = []
        for result in results where !threadCounts.contains(result.threads) { threadCounts.append(result.threads) }
        for threads in threadCounts {
            let dxRuns = results.filter { $0.mode == .dx && $0.threads == threads }
            for mode in [BenchMode.floor, .raw, .dx] {
                guard let row = median(results.filter { $0.mode == mode && $0.threads == threads && $0.round == threads })
                else { continue }
                let fairness = row.laneMaxOps > 0 ? Double(row.laneMinOps) / Double(row.laneMaxOps) : 0
                var versusRaw = "", versusRawOne = ""
                if mode == .dx {
                    if let ratio = medianRatio(dxRuns, \.pairedRawSameThreads) { versusRaw = format(ratio, 2) }
                    if let ratio = medianRatio(dxRuns, \.pairedRawOneThread) { versusRawOne = format(ratio, 2) }
                }
                rows.append([
                    mode.rawValue, "\(threads)", grouped(Int(row.opsPerSecond.rounded())),
                    micro(row.p50, row.timed), micro(row.p99, row.timed), micro(row.p999, row.timed),
                    micro(row.max, row.timed), micro(row.exchangeP999, row.timed),
                    format(fairness, 2), format(row.cpuMicrosecondsPerOp, 3), "\(row.errors)", versusRaw, versusRawOne,
                    row.hostOpsPerSecond.map { grouped(Int($0.rounded())) } ?? "",
                    row.hostSleepsPerSecond.map { format($0, 1) } ?? "", row.hostWakesPerSecond.map { format($0, 1) } ?? "",
                    // Turns pass between a run's own threads only: one thread has nobody to pass to.
                    mode == .dx && threads > 1 ? format(row.turnPassesPerThousand, 3) : "",
                    mode == .dx && threads > 1 ? format(row.turnWaitsPerThousand, 3) : "",
                ])
            }
        }
        lines.append(TextTable.render(header, rows, leftAligned: [0, 1]))
        if repeats > 1 {
            lines.append("(median of \(repeats) runs by round trips/s; ratios are medians of each dx run over the \(base) runs just before it)")
        }
        return lines.joined(separator: "\n")
    }

    /// The run with the median throughput (the lower middle one for an even count).
    static func median(_ runs: [BenchResult]) -> BenchResult? {
        guard !runs.isEmpty else { return nil }
        let sorted = runs.sorted { $0.opsPerSecond < $1.opsPerSecond }
        return sorted[(sorted.count - 1) / 2]
    }

    /// The median of each run's throughput over its paired raw throughput.
    static func medianRatio(_ runs: [BenchResult], _ raw: KeyPath<BenchResult, Double?>) -> Double? {
        let ratios = runs.compactMap { run in run[keyPath: raw].flatMap { $0 > 0 ? run.opsPerSecond / $0 : nil } }.sorted()
        guard !ratios.isEmpty else { return nil }
        let middle = ratios.count / 2
        return ratios.count % 2 == 1 ? ratios[middle] : (ratios[middle - 1] + ratios[middle]) / 2
    }

    static func micro(_ nanoseconds: UInt64, _ timed: Bool = true) -> String {
        timed ? format(Double(nanoseconds) / 1000, 2) : "-"
    }

    static func grouped(_ value: Int) -> String { Format.grouped(value) }
}
