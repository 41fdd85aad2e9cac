import CShm

/// The host's own counters, in host memory: a guest can write anything into the region, so what
/// the host counts about itself (round trips, wake-ups, errors, sleeps, reclaimed lanes) stays
/// out of its reach. Each counter has one writer (a worker, or the housekeeping thread) that
/// bumps it with relaxed stores; the control thread reads it with relaxed loads. Lanes and
/// workers each get their own 64-byte line, so workers never share one.
final class HostCounters: @unchecked Sendable {
    /// Within a lane's line.
    enum Lane {
        static let roundTrips = 0
        static let wakesSent = 8
        static let errors = 16
    }

    /// Within a worker's line.
    enum Worker {
        static let spinWins = 0
        static let yields = 8
        static let sleeps = 16
        /// Requests handed to async handler tasks.
        static let asyncStarted = 24
        /// Async handler tasks whose outcome the worker took back.
        static let asyncFinished = 32
        /// Async handler outcomes that did not reach their request's guest: the lane had moved on
        /// (a new sequence number, a new owner), or the host stopped first.
        static let asyncDropped = 40
    }

    static let line = 64
    let laneCount: Int
    let workerCount: Int
    private let storage: UnsafeMutableRawPointer

    init(laneCount: Int, workerCount: Int) {
        self.laneCount = laneCount
        self.workerCount = workerCount
        let size = (laneCount + workerCount + 1) * HostCounters.line
        storage = .allocate(byteCount: size, alignment: HostCounters.line)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    }

    deinit {
        storage.deallocate()
    }

    func lane(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < laneCount)
        return storage + index * HostCounters.line
    }

    func worker(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < workerCount)
        return storage + (laneCount + index) * HostCounters.line
    }

    /// Lanes taken back from guests that died.
    var reclaimedLanes: UnsafeMutableRawPointer { storage + (laneCount + workerCount) * HostCounters.line }

    func read(_ counter: UnsafeMutableRawPointer) -> UInt64 { CShm_load_relaxed_u64(counter) }
}
