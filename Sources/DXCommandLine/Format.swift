/// Number formats for tables and JSON, shared by dx-host and dx-guest.
public enum Format {
    /// `1234567` as `1,234,567`.
    public static func grouped<Value: BinaryInteger>(_ value: Value) -> String {
        let digits = String(value)
        var out = ""
        for (offset, character) in digits.enumerated() {
            if offset > 0, character != "-", (digits.count - offset) % 3 == 0 { out.append(",") }
            out.append(character)
        }
        return out
    }

    /// `value` rounded to `digits` decimals, never in exponent notation.
    public static func decimal(_ value: Double, _ digits: Int) -> String {
        guard value.isFinite else { return "0" }
        var scale = 1.0
        for _ in 0..<digits { scale *= 10 }
        let rounded = (value * scale).rounded() / scale
        var text = "\(rounded)"
        if text.contains("e") { text = "\(Int64(rounded))" }
        return text
    }
}
