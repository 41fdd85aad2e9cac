/// Why a call did not return a response.
public enum CallError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The request is larger than the lane's slot. Nothing was published.
    case payloadTooLarge(length: Int, capacity: Int)
    /// The host is shutting down.
    case shutdown
    /// The host process no longer exists.
    case hostGone
    /// No response came within the lane's call timeout.
    case timedOut
    /// The host answered with an error status.
    case rejected(ResponseStatus)
    /// The host's response was malformed (unknown status, or a length larger than the slot).
    case badResponse
    /// An earlier call on this lane failed in a way that leaves the lane unusable.
    case laneBroken

    /// A sentence for a person, with what to do about it.
    public var description: String {
        switch self {
        case .payloadTooLarge(let length, let capacity):
            return "the request has \(length) bytes but a lane holds at most \(capacity); send less or start the host with a larger --slot-size"
        case .shutdown: return "the dx host is shutting down"
        case .hostGone: return "the dx host is no longer running"
        case .timedOut: return "the dx host did not answer in time"
        case .rejected(let status): return "the dx host rejected the request (\(status))"
        case .badResponse: return "the dx host sent a malformed response"
        case .laneBroken: return "this lane failed earlier; release it and claim another"
        }
    }
}

/// Why a guest could not claim a lane.
public enum LaneClaimError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Every lane is owned by a live guest.
    case noFreeLane(laneCount: Int)
    /// The host is shutting down.
    case shutdown
    /// The host process no longer exists.
    case hostGone
    /// A system call failed (for example, no descriptor was left for the lane's owner lock).
    case system(SystemError)

    /// A sentence for a person, with what to do about it.
    public var description: String {
        switch self {
        case .system(let error): return "cannot claim a lane: \(error)"
        case .noFreeLane(let count):
            return "all \(count) lanes are in use; start the host with more --lanes or stop other guests"
        case .shutdown: return "the dx host is shutting down"
        case .hostGone: return "the dx host is no longer running"
        }
    }
}
