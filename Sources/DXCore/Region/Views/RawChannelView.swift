import CShm

/// Raw baseline channel i (``Layout/Raw``): a bare ping-pong with no library around it, for
/// `dx-guest bench --baseline raw`.
struct RawChannelView {
    let base: UnsafeMutableRawPointer

    init(_ base: UnsafeMutableRawPointer) { self.base = base }

    var payload: UnsafeMutableRawPointer { base + Layout.Raw.payload }

    /// Seq-cst, as dx stores its request sequence (the floor pays what dx pays): publishes the
    /// payload; pairs with the server's acquire load.
    func ping(_ value: UInt64) { CShm_store_seqcst_u64(base + Layout.Raw.ping, value) }
    /// Acquire: pairs with the guest's release store; the payload is visible.
    var ping: UInt64 { CShm_load_acquire_u64(base + Layout.Raw.ping) }
    /// Seq-cst, as dx's worker stores its response sequence: pairs with the guest's acquire load.
    func pong(_ value: UInt64) { CShm_store_seqcst_u64(base + Layout.Raw.pong, value) }
    /// Acquire: pairs with the server's release store of pong.
    var pong: UInt64 { CShm_load_acquire_u64(base + Layout.Raw.pong) }

    /// The server sleeps on it between sessions; a claim posts it.
    var parker: Parker { Parker(flag: base + Layout.Raw.serverSleeping, word: base + Layout.Raw.serverWord) }

    var owner: OwnerWordView { OwnerWordView(base + Layout.Raw.owner) }
}
