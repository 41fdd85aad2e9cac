import CShm

/// Lane i, as a non-owning view (``Layout/Lane``): the guest's fields, the host's fields, the guest's
/// parker, the guest counters and the payload. Made by ``Region`` for a validated index; the one
/// place, with the other views, that does pointer arithmetic on a lane.
///
/// The guest side uses the request stores and the response loads; the host side the opposite.
/// Each accessor names its memory order and what it pairs with.
@usableFromInline
struct LaneView {
    @usableFromInline let base: UnsafeMutableRawPointer

    @inlinable init(_ base: UnsafeMutableRawPointer) { self.base = base }

    /// The payload: the request, then the response in place.
    @inlinable var payload: UnsafeMutableRawPointer { base + Layout.Lane.payload }

    // MARK: Request (guest writes, host reads)

    /// Relaxed: ordered by the seq-cst store of the request sequence that follows.
    @inlinable func setRequestLength(_ length: Int) {
        CShm_store_relaxed_u32(base + Layout.Lane.requestLength, UInt32(truncatingIfNeeded: length))
    }
    /// Relaxed: read after the acquire load of the request sequence.
    @inlinable var requestLength: Int { Int(CShm_load_relaxed_u32(base + Layout.Lane.requestLength)) }

    /// Seq-cst: publishes the request (a release, paired with the worker's acquire load) and orders
    /// it before the guest's load of the doorbell flag (the parker handshake).
    @inlinable func publishRequest(_ seq: UInt64) { CShm_store_seqcst_u64(base + Layout.Lane.requestSeq, seq) }
    /// Acquire: pairs with the guest's seq-cst store; makes length and payload visible.
    @inlinable var requestSeq: UInt64 { CShm_load_acquire_u64(base + Layout.Lane.requestSeq) }
    /// Seq-cst: the worker's re-check after announcing its sleep (the parker handshake).
    @inlinable var requestSeqSeqCst: UInt64 { CShm_load_seqcst_u64(base + Layout.Lane.requestSeq) }

    // MARK: Response (host writes, guest reads)

    /// Relaxed stores of length and status, then a seq-cst store of the sequence: publishes the
    /// response (paired with the guest's acquire load) and orders it before the worker's load of the
    /// guest's sleeping flag (the parker handshake).
    @inlinable func publishResponse(seq: UInt64, length: Int, status: ResponseStatus) {
        CShm_store_relaxed_u32(base + Layout.Lane.responseLength, UInt32(truncatingIfNeeded: length))
        CShm_store_relaxed_u32(base + Layout.Lane.status, status.rawValue)
        CShm_store_seqcst_u64(base + Layout.Lane.responseSeq, seq)
    }
    /// Acquire: pairs with the worker's seq-cst store; makes length, status and payload visible.
    @inlinable var responseSeq: UInt64 { CShm_load_acquire_u64(base + Layout.Lane.responseSeq) }
    /// Seq-cst: the guest's re-check after announcing its sleep (the parker handshake).
    @inlinable var responseSeqSeqCst: UInt64 { CShm_load_seqcst_u64(base + Layout.Lane.responseSeq) }
    /// Relaxed: ordered by the acquire load of the response sequence.
    @inlinable var status: UInt32 { CShm_load_relaxed_u32(base + Layout.Lane.status) }
    /// Relaxed: ordered by the acquire load of the response sequence.
    @inlinable var responseLength: Int { Int(CShm_load_relaxed_u32(base + Layout.Lane.responseLength)) }

    // MARK: Waiting, ownership, counters

    /// The guest sleeps on it; the worker posts it after publishing a response.
    @inlinable var parker: Parker {
        Parker(flag: base + Layout.Lane.guestSleeping, word: base + Layout.Lane.guestWord)
    }

    /// The owner word (claimed through `Region.claimOwner`, released by `OwnerClaim`).
    var owner: OwnerWordView { OwnerWordView(base + Layout.Lane.owner) }

    /// The guest's counters (``Layout/Counters``).
    @usableFromInline
    enum GuestCounter: CaseIterable {
        case calls, spinWins, yields, sleeps, doorbells, errors, turnWaits

        @inlinable var offset: Int {
            switch self {
            case .calls: return Layout.Counters.guestCalls
            case .spinWins: return Layout.Counters.guestSpinWins
            case .yields: return Layout.Counters.guestYields
            case .sleeps: return Layout.Counters.guestSleeps
            case .doorbells: return Layout.Counters.guestDoorbells
            case .errors: return Layout.Counters.guestErrors
            case .turnWaits: return Layout.Counters.guestTurnWaits
            }
        }
    }

    /// Bumps a guest counter: a relaxed load and store, by its only writer, the lane's guest.
    @inlinable func bump(_ counter: GuestCounter) {
        DXCore.bump(base + Layout.Lane.guestCounters + counter.offset)
    }

    /// Relaxed: the control plane's read of a guest counter (whatever the guest wrote).
    func read(_ counter: GuestCounter) -> UInt64 {
        CShm_load_relaxed_u64(base + Layout.Lane.guestCounters + counter.offset)
    }
}

/// An owner word (a lane's or a raw channel's): `pid << 32 | generation`, pid half 0 when free.
/// Who lives is the owner lock's business (``OwnerLock``); the word only arbitrates claims.
struct OwnerWordView {
    let address: UnsafeMutableRawPointer

    init(_ address: UnsafeMutableRawPointer) { self.address = address }

    /// Acquire: pairs with the last claim's or release's acquire-release CAS.
    var value: UInt64 { CShm_load_acquire_u64(address) }
    /// Relaxed: a hint (the claim order, the control plane's display).
    var hint: UInt64 { CShm_load_relaxed_u64(address) }
    /// Acquire-release: one claim or release wins; this owner's requests happen before the next's.
    func replace(_ expected: UInt64, with desired: UInt64) -> Bool { CShm_cas_acqrel_u64(address, expected, desired) }
}
