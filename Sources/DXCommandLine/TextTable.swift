/// Text tables for people, as `dx-host ctl` and `dx-guest bench` print them: a header, a rule of
/// dashes, then the rows, with columns two spaces apart and each as wide as its widest cell.
public enum TextTable {
    /// Renders `rows` under `header`. Columns in `leftAligned` (names, states) are padded on the
    /// right; the others (numbers) on the left, so that their digits line up.
    ///
    /// Every row has as many cells as the header.
    public static func render(_ header: [String], _ rows: [[String]], leftAligned: Set<Int> = [0]) -> String {
        let widths = header.indices.map { column in max(header[column].count, rows.map { $0[column].count }.max() ?? 0) }
        func line(_ cells: [String]) -> String {
            cells.indices.map { column in
                let pad = String(repeating: " ", count: widths[column] - cells[column].count)
                return leftAligned.contains(column) ? cells[column] + pad : pad + cells[column]
            }.joined(separator: "  ")
        }
        let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
        return ([line(header), rule] + rows.map(line)).joined(separator: "\n")
    }
}
