/// The views of a region, made from its validated, private sizes: the only place that computes
/// where a block starts. The views do the rest of the pointer arithmetic.
extension Region {
    /// The header.
    var header: HeaderView { HeaderView(base: base) }

    /// Lane `index`. The index is a private, validated value.
    @inlinable
    func lane(_ index: Int) -> LaneView {
        precondition(index >= 0 && index < laneCount)
        return LaneView(base + Layout.headerSize + index * laneStride)
    }

    /// Raw channel `index`.
    func rawChannel(_ index: Int) -> RawChannelView {
        precondition(index >= 0 && index < rawCount)
        return RawChannelView(base + Layout.headerSize + (laneCount + index) * laneStride)
    }

    /// The doorbell of serving worker `index`.
    @inlinable
    func doorbell(_ index: Int) -> DoorbellView {
        precondition(index >= 0 && index < workerCount)
        return DoorbellView(base + Layout.Header.doorbells + index * Layout.block)
    }

    /// A private region's grant block (granted turns).
    @inlinable
    var grant: GrantView { GrantView(base) }

    /// The turnstile of serving worker `index` (guests take turns per worker).
    @inlinable
    func turnstile(_ index: Int) -> TurnstileView {
        precondition(index >= 0 && index < workerCount)
        return TurnstileView(base + Layout.Header.turnstiles + index * Layout.Header.turnstileStride)
    }
}
