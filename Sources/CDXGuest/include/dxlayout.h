// dxlayout: every offset, size and limit of the dx region (layout version 2), for C.
//
// The C side of the table in docs/LAYOUT.md, kept beside its Swift side,
// Sources/DXCore/Region/Layout.swift, name by name and grouped like it: DX_<GROUP>_<FIELD> for
// Layout.<Group>.<field>, DX_<FIELD> for Layout.<field>. CGuestTests (in
// Tests/DXCoreTests/CGuestLayoutTests.swift) compares every constant here with its Layout counterpart
// and fails when either side has a field the other lacks: change both, and bump DX_LAYOUT_VERSION
// with Layout.version on any change to the table.
//
// Offsets are in bytes: header fields from the region's start, lane and raw channel fields from the
// lane's (channel's) base, doorbell and turnstile fields from their block's start, counters from the
// lane's guest counters. Widths (u32/u64) are LAYOUT.md's.
#ifndef DXLAYOUT_H
#define DXLAYOUT_H

#include <stdint.h>

/// "DXREGION" in ASCII, read as a little-endian u64 (Layout.magic).
#define DX_MAGIC 0x4E4F494745525844ull
/// The region layout this library implements (Layout.version). A region with another version is
/// refused (DX_E_VERSION) before anything else in it is read.
#define DX_LAYOUT_VERSION 2u

/// Sizes and limits (Layout.*).
enum {
    DX_BLOCK = 128,                      ///< alignment of blocks that different sides write
    DX_HEADER_SIZE = 8192,               ///< the header's size; lanes start right after it
    DX_MAX_WORKERS = 16,                 ///< serving workers (doorbells in the header)
    DX_MAX_LANES = 1024,                 ///< lanes
    DX_MAX_SLOT_CAPACITY = 16777216,     ///< the largest slot (payload buffer): 16 MiB
    DX_MAX_RAW_CHANNELS = 16,            ///< raw baseline channels
};

/// Header field offsets (Layout.Header).
enum {
    DX_HEADER_MAGIC = 0,           ///< u64, stored last with release order
    DX_HEADER_VERSION = 8,         ///< u32
    DX_HEADER_HEADER_SIZE = 12,    ///< u32 (DX_HEADER_SIZE)
    DX_HEADER_LANE_STRIDE = 16,    ///< u32
    DX_HEADER_LANE_COUNT = 20,     ///< u32
    DX_HEADER_SLOT_CAPACITY = 24,  ///< u32
    DX_HEADER_WORKER_COUNT = 28,   ///< u32
    DX_HEADER_REGION_SIZE = 32,    ///< u64
    DX_HEADER_HOST_PID = 40,       ///< u32 (informational: liveness is the host lock)
    DX_HEADER_HANDLER = 44,        ///< u32
    DX_HEADER_HOST_START_TIME = 48,///< u64 (clock ticks since boot; informational)
    DX_HEADER_EPOCH = 56,          ///< u64, differs for every region created under a name
    DX_HEADER_STATE = 128,         ///< u32 (DX_STATE_*; informational: guests trust the host lock)
    DX_HEADER_HEARTBEAT = 136,     ///< u64 (CLOCK_MONOTONIC ns, every 100 ms)
    DX_HEADER_LANES_OFFSET = 256,  ///< u64
    DX_HEADER_RAW_OFFSET = 264,    ///< u64
    DX_HEADER_RAW_COUNT = 272,     ///< u32
    /// Worker w's doorbell: DX_BLOCK bytes at DX_HEADER_DOORBELLS + DX_BLOCK * w.
    DX_HEADER_DOORBELLS = 1024,
    DX_DOORBELL_SLEEPING = 0,      ///< u32, within a doorbell
    DX_DOORBELL_WORD = 8,          ///< u32 futex word, within a doorbell
    DX_DOORBELL_WORKER_CPU = 64,   ///< u32, the CPU the worker last ran on (0xFFFFFFFF until known)
    /// Private regions' granted turns (docs/LAYOUT.md, "Granted turns"): host-written grant block.
    DX_HEADER_GRANT = 3072,         ///< u32 futex word: 1 while the region holds its worker's grant
    DX_HEADER_GRANTS = 3076,        ///< u32: 1 when the host grants turns (set before publishing)
    DX_HEADER_GRANT_QUANTUM = 3080, ///< u64 ns: how long a grant lasts while others wait
    DX_HEADER_GRANT_CYCLE = 3088,   ///< u64 ns: the host's estimate of a waiting region's wait
    DX_HEADER_GRANT_WANT = 3200,    ///< u32, guest-written: a thread waits for a grant
    /// Worker w's turnstile: at DX_HEADER_TURNSTILES + DX_TURNSTILE_STRIDE * w.
    DX_HEADER_TURNSTILES = 4096,
    DX_TURNSTILE_STRIDE = 256,
    DX_TURN_NEXT = 0,              ///< u64, the next ticket to hand out, within a turnstile
    DX_TURN_SERVING = 8,           ///< u64, the ticket that holds the turn
    DX_TURN_LEASE = 16,            ///< u64, when the holder's lease began (CLOCK_MONOTONIC ns)
    DX_TURN_WAKE_SLOTS = 128,      ///< DX_TURN_WAKE_SLOT_COUNT u32 futex words: ticket t sleeps on t mod count
    DX_TURN_WAKE_SLOT_COUNT = 32,
};

/// Guest counter offsets, from DX_LANE_GUEST_COUNTERS (Layout.Counters): u64s the lane's guest
/// writes with relaxed stores.
enum {
    DX_COUNTER_CALLS = 0,
    DX_COUNTER_SPIN_WINS = 8,
    DX_COUNTER_YIELDS = 16,
    DX_COUNTER_SLEEPS = 24,
    DX_COUNTER_DOORBELLS = 32,
    DX_COUNTER_ERRORS = 40,
    DX_COUNTER_TURN_WAITS = 48,
};

/// Lane field offsets, from the lane's base (Layout.Lane).
enum {
    DX_LANE_REQUEST_SEQ = 0,       ///< u64 (guest, seq-cst store)
    DX_LANE_REQUEST_LENGTH = 8,    ///< u32 (guest)
    DX_LANE_OWNER = 16,            ///< u64: pid << 32 | generation, claimed by CAS
    DX_LANE_RESPONSE_SEQ = 128,    ///< u64 (host, seq-cst store)
    DX_LANE_RESPONSE_LENGTH = 136, ///< u32 (host)
    DX_LANE_STATUS = 140,          ///< u32 (DX_STATUS_*)
    DX_LANE_GUEST_SLEEPING = 256,  ///< u32, the guest's sleeping flag
    DX_LANE_GUEST_WORD = 264,      ///< u32, the guest's futex word (the host posts it)
    DX_LANE_GUEST_COUNTERS = 512,  ///< the guest counters (DX_COUNTER_*)
    DX_LANE_PAYLOAD = 768,         ///< slot capacity bytes
};

/// Raw ping-pong channel offsets, from the channel's base (Layout.Raw).
enum {
    DX_RAW_PING = 0,               ///< u64 (guest, release)
    DX_RAW_LENGTH = 8,             ///< u32
    DX_RAW_OWNER = 16,             ///< u64: pid << 32 | generation, claimed by CAS
    DX_RAW_PONG = 128,             ///< u64 (server, release)
    DX_RAW_SERVER_SLEEPING = 256,  ///< u32
    DX_RAW_SERVER_WORD = 264,      ///< u32, the server's futex word
    DX_RAW_PAYLOAD = 768,          ///< slot capacity bytes
};

/// The byte ranges of the liveness locks, open-file-description write locks (Layout.Locks).
enum {
    DX_LOCK_HOST_START = 0,        ///< the host holds [start, start + length) (the magic) while it serves
    DX_LOCK_HOST_LENGTH = 8,
    DX_LOCK_OWNER_LENGTH = 8,      ///< a lane's (raw channel's) owner holds its owner word's bytes
};

/// The host's lifecycle, in the header's state word (HostState).
enum {
    DX_STATE_INITIALIZING = 0,
    DX_STATE_READY = 1,
    DX_STATE_STOPPING = 2,
};

/// What a response's status word says (ResponseStatus).
enum {
    DX_STATUS_OK = 0,
    DX_STATUS_BAD_LENGTH = 1,      ///< the request length was larger than the slot
    DX_STATUS_BAD_SEQUENCE = 2,    ///< the request sequence number was not the last one plus one
    DX_STATUS_HANDLER_FAILED = 3,  ///< the handler returned a length outside the slot, or threw
    DX_STATUS_CANCELLED = 4,       ///< answered without the handler's answer (host stopping, lane changed hands)
};

/// The distance between lanes (and between raw channels) for a slot capacity (Layout.laneStride).
static inline uint64_t dx_lane_stride(uint64_t slot_capacity) {
    return (DX_LANE_PAYLOAD + slot_capacity + DX_BLOCK - 1) / DX_BLOCK * DX_BLOCK;
}

/// The total size of a region (Layout.regionSize).
static inline uint64_t dx_region_size(uint64_t lane_count, uint64_t slot_capacity, uint64_t raw_count) {
    return DX_HEADER_SIZE + (lane_count + raw_count) * dx_lane_stride(slot_capacity);
}

#endif
