/// What the host puts into a new region.
public struct RegionConfiguration: Sendable, Equatable {
    /// Lanes: how many guest threads can be connected at once (1...1024).
    public var laneCount: Int
    /// The largest request or response, in bytes (1 B...16 MiB).
    public var slotCapacity: Int
    /// Serving worker threads (1...16, at most the lane count).
    public var workerCount: Int
    /// Whether the region carries raw ping-pong channels for `--baseline raw` (off by default: each
    /// channel has a server thread, which an embedder does not want unless it benchmarks).
    public var rawChannels: Bool
    /// The handler announced in the header, so that guests can check responses.
    public var handler: HandlerKind

    /// A configuration; the defaults suit a small host.
    public init(laneCount: Int = 8, slotCapacity: Int = 4096, workerCount: Int = 1, rawChannels: Bool = false,
                handler: HandlerKind = .custom) {
        self.laneCount = laneCount
        self.slotCapacity = slotCapacity
        self.workerCount = workerCount
        self.rawChannels = rawChannels
        self.handler = handler
    }

    /// Throws when a value is out of range.
    public func validate() throws(RegionCreateError) {
        guard (1...Layout.maxLanes).contains(laneCount) else {
            throw .invalidConfiguration("lane count \(laneCount) is not in 1...\(Layout.maxLanes)")
        }
        guard (1...Layout.maxSlotCapacity).contains(slotCapacity) else {
            throw .invalidConfiguration("slot size \(slotCapacity) is not in 1...\(Layout.maxSlotCapacity)")
        }
        guard (1...Layout.maxWorkers).contains(workerCount) else {
            throw .invalidConfiguration("worker count \(workerCount) is not in 1...\(Layout.maxWorkers)")
        }
    }
}
