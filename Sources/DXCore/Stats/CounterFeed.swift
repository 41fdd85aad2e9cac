/// Turns successive readings of a counter that someone else keeps (a worker in host memory, or a
/// guest in the region) into increments: the difference from the last reading, kept in host memory.
///
/// A guest's counter may hold anything: `UInt64.max`, a value below the last one, noise. A
/// decrease is not counted; the next increase is counted from the lower value (a reset) for a
/// guest's counter, and from the highest value seen for the host's own (whose only decrease is a
/// derived figure read between two of its parts' bumps).
struct CounterFeed {
    /// Whether readings come from the host's own memory (never decrease but for a torn derived
    /// value) or from the region (anything at all).
    enum Source { case host, guest }

    let source: Source
    private(set) var last: UInt64 = 0

    init(_ source: Source) {
        self.source = source
    }

    /// How much the counter moved since the last reading; 0 when it went down.
    mutating func advance(to value: UInt64) -> UInt64 {
        guard value < last else {
            defer { last = value }
            return value - last
        }
        if source == .guest { last = value }
        return 0
    }
}
