import CShm

/// The region's header, as a non-owning view (``Layout/Header``). Made by ``Region`` over a mapping
/// of at least ``Layout/headerSize`` bytes; every accessor names its memory order.
///
/// The sizes it reads at attach are validated there once and copied into ``Region``; nothing
/// reads a size from the header again.
struct HeaderView {
    let base: UnsafeMutableRawPointer

    // MARK: Publishing and validating

    /// Acquire: pairs with the host's release store, which it makes last.
    var magic: UInt64 { CShm_load_acquire_u64(base + Layout.Header.magic) }
    /// Release: publishes every field stored before it.
    func publish() { CShm_store_release_u64(base + Layout.Header.magic, Layout.magic) }

    /// The fields a host writes once before it publishes, and a guest reads once after the magic
    /// (relaxed: ordered by the magic's release and acquire).
    struct Fields: Equatable {
        var version: UInt32
        var headerSize: Int
        var laneStride: Int
        var laneCount: Int
        var slotCapacity: Int
        var workerCount: Int
        var regionSize: UInt64
        var hostPID: Int32
        var handler: UInt32
        var hostStartTime: UInt64
        var epoch: UInt64
        var lanesOffset: UInt64
        var rawOffset: UInt64
        var rawCount: Int
    }

    var fields: Fields {
        func u32(_ offset: Int) -> UInt32 { CShm_load_relaxed_u32(base + offset) }
        func u64(_ offset: Int) -> UInt64 { CShm_load_relaxed_u64(base + offset) }
        return Fields(
            version: u32(Layout.Header.version), headerSize: Int(u32(Layout.Header.headerSize)),
            laneStride: Int(u32(Layout.Header.laneStride)), laneCount: Int(u32(Layout.Header.laneCount)),
            slotCapacity: Int(u32(Layout.Header.slotCapacity)), workerCount: Int(u32(Layout.Header.workerCount)),
            regionSize: u64(Layout.Header.regionSize), hostPID: Int32(bitPattern: u32(Layout.Header.hostPID)),
            handler: u32(Layout.Header.handler), hostStartTime: u64(Layout.Header.hostStartTime),
            epoch: u64(Layout.Header.epoch), lanesOffset: u64(Layout.Header.lanesOffset),
            rawOffset: u64(Layout.Header.rawOffset), rawCount: Int(u32(Layout.Header.rawCount)))
    }

    /// The layout version alone, for the refusal that must come before any other field is read.
    var version: UInt32 { CShm_load_relaxed_u32(base + Layout.Header.version) }

    func store(_ fields: Fields) {
        func u32(_ offset: Int, _ value: UInt32) { CShm_store_relaxed_u32(base + offset, value) }
        func u64(_ offset: Int, _ value: UInt64) { CShm_store_relaxed_u64(base + offset, value) }
        u32(Layout.Header.version, fields.version)
        u32(Layout.Header.headerSize, UInt32(fields.headerSize))
        u32(Layout.Header.laneStride, UInt32(fields.laneStride))
        u32(Layout.Header.laneCount, UInt32(fields.laneCount))
        u32(Layout.Header.slotCapacity, UInt32(fields.slotCapacity))
        u32(Layout.Header.workerCount, UInt32(fields.workerCount))
        u64(Layout.Header.regionSize, fields.regionSize)
        u32(Layout.Header.hostPID, UInt32(bitPattern: fields.hostPID))
        u32(Layout.Header.handler, fields.handler)
        u64(Layout.Header.hostStartTime, fields.hostStartTime)
        u64(Layout.Header.epoch, fields.epoch)
        u64(Layout.Header.lanesOffset, fields.lanesOffset)
        u64(Layout.Header.rawOffset, fields.rawOffset)
        u32(Layout.Header.rawCount, UInt32(fields.rawCount))
    }

    // MARK: Informational, written while serving

    /// Acquire: pairs with the host's release store when it changes state.
    var state: HostState? { HostState(rawValue: CShm_load_acquire_u32(base + Layout.Header.state)) }
    /// Release: everything the host wrote before (responses, wake-ups) is visible with it.
    func setState(_ state: HostState) { CShm_store_release_u32(base + Layout.Header.state, state.rawValue) }

    /// Relaxed: informational.
    var heartbeat: UInt64 { CShm_load_relaxed_u64(base + Layout.Header.heartbeat) }
    func beat(_ now: UInt64) { CShm_store_relaxed_u64(base + Layout.Header.heartbeat, now) }
}
