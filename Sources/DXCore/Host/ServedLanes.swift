import CShm

/// The lanes of one region that one worker serves, with the worker's private memory of them:
/// the one home of answering a request. ``Worker`` has one (its share of a named region), a
/// ``PoolWorker`` one per private region it serves.
///
/// Everything read from a lane is copied once and checked; the last answered sequence number of
/// each lane is host memory, never the guest's word.
struct ServedLanes: ~Copyable {
    /// Keeps the mapping alive while the lanes are served.
    let region: Region
    let capacity: Int
    /// Bases of the lanes.
    let lanes: UnsafeMutableBufferPointer<LaneView>
    /// The host-memory counters of each of those lanes (pointers into `hostCounters`, which this
    /// keeps alive: a private region's counters go with its guest, possibly before its worker
    /// has let go of the region).
    let counters: UnsafeMutableBufferPointer<UnsafeMutableRawPointer>
    private let hostCounters: HostCounters
    /// The last sequence number answered on each lane (host-private).
    let answered: UnsafeMutableBufferPointer<UInt64>

    /// The lanes `indices` of `region`, counted in `hostCounters`.
    init(region: Region, indices: [Int], counters hostCounters: HostCounters) {
        self.region = region
        self.hostCounters = hostCounters
        capacity = region.slotCapacity
        lanes = .allocate(capacity: indices.count)
        _ = lanes.initialize(from: indices.map { region.lane($0) })
        counters = .allocate(capacity: indices.count)
        _ = counters.initialize(from: indices.map { hostCounters.lane($0) })
        answered = .allocate(capacity: indices.count)
        for slot in 0..<indices.count { answered[slot] = lanes[slot].responseSeq }
    }

    deinit {
        lanes.deallocate()
        counters.deallocate()
        answered.deallocate()
    }

    var count: Int { lanes.count }

    /// The request sequence number of lane `slot` when a request waits there, else nil
    /// (acquire: makes its length and payload visible).
    @inline(__always)
    func pending(_ slot: Int) -> UInt64? {
        let seq = lanes[slot].requestSeq
        return seq != answered[slot] ? seq : nil
    }

    /// Whether any lane has a request, with seq-cst loads: the re-check after a sleeper armed its
    /// parker (guests store requestSeq seq-cst and then load the flag, so either we see their
    /// request here or they see the flag and post).
    func anyPendingSeqCst() -> Bool {
        for slot in 0..<lanes.count where lanes[slot].requestSeqSeqCst != answered[slot] { return true }
        return false
    }

    /// Answers the request `seq` on lane `slot` in place and wakes its guest if it sleeps.
    @inline(__always)
    func serve<Handler: RequestHandler>(slot: Int, seq: UInt64, handler: Handler, counting: Bool) {
        let lane = lanes[slot]
        let payload = lane.payload
        var status = ResponseStatus.ok
        var length = 0
        if seq != answered[slot] &+ 1 {
            status = .badSequence
        } else {
            let requestLength = lane.requestLength
            if requestLength > capacity {
                status = .badLength
            } else {
                let written = handler.handle(request: UnsafeRawBufferPointer(start: payload, count: requestLength),
                                             response: UnsafeMutableRawBufferPointer(start: payload, count: capacity))
                if written >= 0, written <= capacity { length = written } else { status = .handlerFailed }
            }
        }
        answered[slot] = seq
        if counting {
            bump(counters[slot] + HostCounters.Lane.roundTrips)
            if status != .ok { bump(counters[slot] + HostCounters.Lane.errors) }
        }
        // Publishes the response and orders it before the guest's sleeping-flag load in unpark
        // (the parker handshake: no lost wake-up).
        lane.publishResponse(seq: seq, length: length, status: status)
        if lane.parker.unpark(), counting {
            bump(counters[slot] + HostCounters.Lane.wakesSent)
        }
    }
}
