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
    /// The last sequence number answered on each lane (host-private). For an async handler, the
    /// last one taken: a request handed to a task counts as answered, so ``pending(_:)`` skips it.
    let answered: UnsafeMutableBufferPointer<UInt64>
    /// The region's index of each lane.
    let indices: [Int]

    /// The lanes `indices` of `region`, counted in `hostCounters`.
    init(region: Region, indices: [Int], counters hostCounters: HostCounters) {
        self.region = region
        self.hostCounters = hostCounters
        self.indices = indices
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
        respond(lane, slot: slot, seq: seq, length: length, status: status, counting: counting)
    }

    /// Publishes the response to `seq` on lane `slot` (`lane`, already loaded by the caller; the
    /// response's `length` bytes are in its payload), counts it and wakes the guest if it sleeps.
    @inline(__always)
    private func respond(_ lane: LaneView, slot: Int, seq: UInt64, length: Int, status: ResponseStatus, counting: Bool) {
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

// MARK: - Async handlers

extension ServedLanes {
    /// Whether lane `slot` has a request, with a seq-cst load (``anyPendingSeqCst()`` for one lane).
    func pendingSeqCst(_ slot: Int) -> Bool {
        lanes[slot].requestSeqSeqCst != answered[slot]
    }

    /// Takes the request `seq` on lane `slot` for an async handler. A bad sequence number or
    /// length is answered at once, as ``serve(slot:seq:handler:counting:)`` would, and gives nil.
    /// Otherwise the request is copied out of the lane (the handler's task never reads the
    /// region), the lane counts as answered up to `seq`, and the copy comes back with the lane's
    /// owner word as it is now: the answer will be published only if the lane still has both.
    func take(slot: Int, seq: UInt64, counting: Bool) -> (request: [UInt8], owner: UInt64)? {
        let lane = lanes[slot]
        var status = ResponseStatus.badSequence
        if seq == answered[slot] &+ 1 {
            let length = lane.requestLength  // read once
            if length <= capacity {
                // Acquire, after the acquire load of the sequence: the claim that made this word
                // happened before the guest published the request.
                let owner = lane.owner.value
                let request = [UInt8](UnsafeRawBufferPointer(start: lane.payload, count: length))
                answered[slot] = seq
                return (request, owner)
            }
            status = .badLength
        }
        respond(lane, slot: slot, seq: seq, length: 0, status: status, counting: counting)
        return nil
    }

    /// Publishes what became of the request `seq` that ``take(slot:seq:counting:)`` took from lane
    /// `slot` when its owner word was `owner`. Returns whether the outcome reached that request's
    /// guest.
    ///
    /// - The lane's request sequence (acquire) is no longer `seq`: the guest published again
    ///   (or wrote garbage) meanwhile. Nothing is published; ``pending(_:)`` sees the new value and
    ///   answers it as any other.
    /// - The owner word (acquire) is no longer `owner`: the guest died, and its lane was reclaimed
    ///   (and perhaps claimed again). The answer is dropped, never written into the lane: the lane
    ///   gets an empty ``ResponseStatus/cancelled`` for `seq`, so that its sequences agree again
    ///   (a guest claims only a lane whose sequences agree: until this store, no conforming guest
    ///   can have claimed it). The checks come before the copy, so a guest that rewrites the
    ///   sequence and owner words under the worker (a guest of the same region: one trust domain)
    ///   can still have an answer land on a lane it took over meanwhile; the host is not at risk.
    /// - Otherwise the outcome is published: the answer if it fits the slot
    ///   (``ResponseStatus/handlerFailed`` if not, or if the handler threw), or ``ResponseStatus/cancelled``.
    func publish(slot: Int, seq: UInt64, owner: UInt64, outcome: TaskOutcome, counting: Bool) -> Bool {
        let lane = lanes[slot]
        guard lane.requestSeq == seq else { return false }
        guard lane.owner.value == owner else {
            respond(lane, slot: slot, seq: seq, length: 0, status: .cancelled, counting: counting)
            return false
        }
        var length = 0
        let status: ResponseStatus
        switch outcome {
        case .answer(let bytes):
            if bytes.count <= capacity {
                bytes.withUnsafeBytes { source in
                    if let base = source.baseAddress { lane.payload.copyMemory(from: base, byteCount: source.count) }
                }
                length = bytes.count
                status = .ok
            } else {
                status = .handlerFailed
            }
        case .failed: status = .handlerFailed
        case .cancelled: status = .cancelled
        }
        respond(lane, slot: slot, seq: seq, length: length, status: status, counting: counting)
        return true
    }
}
