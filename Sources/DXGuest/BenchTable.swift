/// The human table: the median run of each mode and thread count, and dx as a ratio of raw.
enum BenchTable {
    static func render(_ results: [BenchResult], repeats: Int) -> String {
        var lines: [String] = []
        let header = ["mode", "threads", "round trips/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs",
                      "slowest/fastest lane", "CPU µs/op", "errors", "vs raw (same T)", "vs raw 1T"]
        var rows: [[String]] = []
        let rawOneThread = median(results.filter { $0.mode == .raw && $0.threads == 1 })?.opsPerSecond
        var threadCounts: [Int] = []
        for result in results where !threadCounts.contains(result.threads) { threadCounts.append(result.threads) }
        for threads in threadCounts {
            let raw = median(results.filter { $0.mode == .raw && $0.threads == threads })
            for mode in [BenchMode.raw, .dx] {
                guard let row = median(results.filter { $0.mode == mode && $0.threads == threads }) else { continue }
                let fairness = row.laneMaxOps > 0 ? Double(row.laneMinOps) / Double(row.laneMaxOps) : 0
                var versusRaw = "", versusRawOne = ""
                if mode == .dx, let raw, raw.opsPerSecond > 0 { versusRaw = format(row.opsPerSecond / raw.opsPerSecond, 2) }
                if mode == .dx, let rawOneThread, rawOneThread > 0 { versusRawOne = format(row.opsPerSecond / rawOneThread, 2) }
                rows.append([
                    mode.rawValue, "\(threads)", grouped(Int(row.opsPerSecond.rounded())),
                    micro(row.p50), micro(row.p99), micro(row.p999), micro(row.max),
                    format(fairness, 2), format(row.cpuMicrosecondsPerOp, 3), "\(row.errors)", versusRaw, versusRawOne,
                ])
            }
        }
        let widths = header.indices.map { column in
            max(header[column].count, rows.map { $0[column].count }.max() ?? 0)
        }
        func line(_ cells: [String]) -> String {
            cells.indices.map { column in
                let cell = cells[column]
                let pad = String(repeating: " ", count: widths[column] - cell.count)
                return column < 2 ? cell + pad : pad + cell
            }.joined(separator: "  ")
        }
        lines.append(line(header))
        lines.append(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
        for row in rows { lines.append(line(row)) }
        if repeats > 1 { lines.append("(median of \(repeats) runs by round trips/s)") }
        return lines.joined(separator: "\n")
    }

    /// The run with the median throughput (the lower middle one for an even count).
    static func median(_ runs: [BenchResult]) -> BenchResult? {
        guard !runs.isEmpty else { return nil }
        let sorted = runs.sorted { $0.opsPerSecond < $1.opsPerSecond }
        return sorted[(sorted.count - 1) / 2]
    }

    static func micro(_ nanoseconds: UInt64) -> String { format(Double(nanoseconds) / 1000, 2) }

    static func grouped(_ value: Int) -> String {
        let digits = String(value)
        var out = ""
        for (offset, character) in digits.enumerated() {
            if offset > 0, (digits.count - offset) % 3 == 0 { out.append(",") }
            out.append(character)
        }
        return out
    }
}
