/// The cross-process contract: every offset in the shared region, as constants.
///
/// Swift struct layout is never used for shared memory. Each field is read and written at
/// a fixed byte offset through the CShm atomics. Fields written by different sides sit on
/// different 128-byte blocks (two cache lines, so that the adjacent-line prefetcher does not
/// make them share either).
///
/// ```
/// region  /dev/shm/<name>
/// ┌──────────────────────────────── header (8192 bytes) ─────────────────────────────────┐
/// │    0 magic u64 (stored last, release)   8 version u32   12 header size u32          │
/// │   16 lane stride u32   20 lane count u32   24 slot capacity u32   28 worker count u32 │
/// │   32 region size u64   40 host pid u32   44 handler u32   48 host start time u64     │
/// │   56 epoch u64          (pid, start time, state, heartbeat: informational only)        │
/// │  128 state u32   136 heartbeat u64 (host, every 100 ms)                                │
/// │  256 lanes offset u64   264 raw offset u64   272 raw count u32                          │
/// │ 1024 + 128·w  worker w doorbell: sleeping u32, futex word u32 (w < 16)                 │
/// │ 3072 grant u32, grants u32, grant quantum u64, grant cycle u64 (host; private regions)  │
/// │ 3200 want u32 (guest: a thread waits for a grant)                                       │
/// │ 4096 + 256·w  worker w turnstile: next ticket u64, serving u64, lease start u64,       │
/// │               and at +128 32 futex wake words u32 (guests take turns per worker)       │
/// ├──────────────────────────────── lane i (at lanes offset + i · stride) ───────────────┤
/// │    0 guest block: request seq u64, request length u32, owner u64 (pid << 32 | gen)    │
/// │                   (the owner's OFD lock on the owner word's 8 bytes says it lives)     │
/// │  128 host block:  response seq u64, response length u32, status u32                   │
/// │  256 guest wait:  sleeping u32, futex word u32 (the host posts it)                     │
/// │  384 reserved · 512 guest counters: calls, spin wins, yields, sleeps, doorbells,        │
/// │  errors, turn waits (u64, guest-written)                                               │
/// │  768 payload [slot capacity]: the request, then the response written in place         │
/// ├──────────────────────────────── raw channel i (at raw offset + i · stride) ──────────┤
/// │    0 ping u64, length u32, owner u64 · 128 pong u64 · 256 server sleeping u32, word   │
/// │  768 payload                                                                           │
/// └──────────────────────────────────────────────────────────────────────────────────────┘
/// ```
///
/// Version 2 keeps no libc object in the region: every semaphore is a `Parker` (Wait/Parker.swift) (a sleeping
/// flag and a futex word), and liveness comes from kernel locks (``Layout/Locks``), never from
/// a pid or a state word a guest could forge.
///
/// - Important: Changing any offset, size or meaning bumps ``Layout/version``. A guest
///   refuses a region whose version differs from its own.
public enum Layout {
    /// "DXREGION" in ASCII, read as a little-endian UInt64.
    public static let magic: UInt64 = 0x4E4F_4947_4552_5844
    /// The layout version. Bump it on any change to this table.
    public static let version: UInt32 = 2

    /// Alignment of blocks that different sides write.
    public static let block = 128
    /// The size of the header; lanes start right after it.
    public static let headerSize = 8192
    /// At most this many serving workers (doorbells in the header).
    public static let maxWorkers = 16
    /// At most this many lanes.
    public static let maxLanes = 1024
    /// The largest slot (payload buffer) a lane can have.
    public static let maxSlotCapacity = 16 * 1024 * 1024
    /// At most this many raw baseline channels (one server thread each).
    public static let maxRawChannels = 16

    /// Header field offsets.
    public enum Header {
        /// The offset of the magic u64: written last, with release order.
        public static let magic = 0
        /// The offset of the layout version u32.
        public static let version = 8
        /// The offset of the header size u32 (8192).
        public static let headerSize = 12
        /// The offset of the lane stride u32.
        public static let laneStride = 16
        /// The offset of the lane count u32.
        public static let laneCount = 20
        /// The offset of the slot capacity u32.
        public static let slotCapacity = 24
        /// The offset of the worker count u32.
        public static let workerCount = 28
        /// The offset of the region size u64.
        public static let regionSize = 32
        /// The offset of the host pid u32 (informational: liveness is the host lock).
        public static let hostPID = 40
        /// The offset of the handler kind u32.
        public static let handler = 44
        /// The offset of the host start time u64 (clock ticks since boot; informational).
        public static let hostStartTime = 48
        /// The offset of the epoch u64: differs for every region created under a name.
        public static let epoch = 56
        /// The offset of the host state u32 (``HostState``; informational: guests trust the host lock).
        public static let state = 128
        /// The offset of the heartbeat u64 (CLOCK_MONOTONIC ns, every 100 ms).
        public static let heartbeat = 136
        /// The offset of the lanes offset u64.
        public static let lanesOffset = 256
        /// The offset of the raw channels offset u64.
        public static let rawOffset = 264
        /// The offset of the raw channel count u32.
        public static let rawCount = 272
        /// The offset of the first worker doorbell (128 bytes each).
        public static let doorbells = 1024
        /// Within a doorbell block.
        public static let doorbellSleeping = 0
        /// The offset of the doorbell's futex word, within a doorbell block (see `Parker` (Wait/Parker.swift)).
        public static let doorbellWord = 8
        /// The CPU the worker last ran on (u32, written by the worker when it changes; 0xFFFFFFFF
        /// until known), within a doorbell block. Guests with ``TurnPolicy/avoidWorkerCPU`` read it.
        public static let doorbellWorkerCPU = 64
        /// Private regions' granted turns (docs/LAYOUT.md, "Granted turns"). The grant block is
        /// host-written: the grant futex word u32 (1 while this region holds its worker's grant, 0
        /// otherwise).
        public static let grant = 3072
        /// The offset of the grants flag u32: 1 when the host grants turns (private regions), set
        /// once before the region is published; guests ignore the grant block while it is 0.
        public static let grants = 3076
        /// The offset of the grant quantum u64 (ns): how long a grant lasts while other regions
        /// wait; guests fit their threads' turns into it. Set once.
        public static let grantQuantum = 3080
        /// The offset of the grant cycle u64 (ns): the host's latest estimate of how long a waiting
        /// region waits for its next grant. Turn waiters sleep at least this long between checks.
        public static let grantCycle = 3088
        /// The offset of the want word u32 (guest-written): 1 when a guest thread waits for a
        /// grant; stored seq-cst before it rings the doorbell.
        public static let grantWant = 3200
        /// Worker w's turnstile: 256 bytes at `turnstiles + 256 · w`.
        public static let turnstiles = 4096
        /// The offset of the distance between turnstiles.
        public static let turnstileStride = 256
        /// Within a turnstile: the next ticket to hand out, the ticket that holds the turn, and
        /// when the holder's lease began (CLOCK_MONOTONIC ns). All written by guests.
        public static let turnNext = 0
        /// The offset of the ticket holding the turn, u64.
        public static let turnServing = 8
        /// The offset of the lease start u64.
        public static let turnLease = 16
        /// 32 futex words: the waiter with ticket t sleeps on word t mod 32.
        public static let turnWakeSlots = 128
        /// The offset of the number of futex wake words.
        public static let turnWakeSlotCount = 32
    }

    /// The guest's counters, in a lane's guest block (`Lane.guestCounters`): UInt64s written by
    /// the lane's guest with relaxed stores and read by the host's control plane. They are the
    /// guest's word: the host's own counters are kept in host memory, out of guests' reach.
    public enum Counters {
        /// The offset of the calls counter.
        public static let guestCalls = 0
        /// The offset of the spin wins counter.
        public static let guestSpinWins = 8
        /// The offset of the yields counter.
        public static let guestYields = 16
        /// The offset of the sleeps counter.
        public static let guestSleeps = 24
        /// The offset of the doorbells counter.
        public static let guestDoorbells = 32
        /// The offset of the errors counter.
        public static let guestErrors = 40
        /// The offset of the turn waits counter.
        public static let guestTurnWaits = 48
    }

    /// Lane field offsets, relative to the lane's base.
    public enum Lane {
        /// The offset of the request sequence u64 (guest, seq-cst store).
        public static let requestSeq = 0
        /// The offset of the request length u32 (guest).
        public static let requestLength = 8
        /// The offset of the owner word u64: `pid << 32 | generation`, claimed by CAS.
        public static let owner = 16
        /// The offset of the response sequence u64 (host, seq-cst store).
        public static let responseSeq = 128
        /// The offset of the response length u32 (host).
        public static let responseLength = 136
        /// The offset of the response status u32 (``ResponseStatus``).
        public static let status = 140
        /// The offset of the guest sleeping flag u32.
        public static let guestSleeping = 256
        /// The offset of the guest's futex word (the host posts it; see `Parker` (Wait/Parker.swift)).
        public static let guestWord = 264
        /// The offset of the guest counters (``Layout/Counters``).
        public static let guestCounters = 512
        /// The offset of the payload: slot capacity bytes.
        public static let payload = 768
    }

    /// Raw ping-pong channel offsets, relative to the channel's base.
    public enum Raw {
        /// The offset of the ping u64 (guest, release).
        public static let ping = 0
        /// The offset of the payload length u32.
        public static let length = 8
        /// The offset of the owner word u64: `pid << 32 | generation`, claimed by CAS.
        public static let owner = 16
        /// The offset of the pong u64 (server, release).
        public static let pong = 128
        /// The offset of the server sleeping flag u32.
        public static let serverSleeping = 256
        /// The offset of the server's futex word (see `Parker` (Wait/Parker.swift)).
        public static let serverWord = 264
        /// The offset of the payload: slot capacity bytes.
        public static let payload = 768
    }

    /// The byte ranges whose open-file-description locks (`F_OFD_SETLK`) say who lives. The
    /// kernel drops a lock when its holder dies, so liveness never depends on a guest's word.
    public enum Locks {
        /// The host holds a write lock on these bytes of the region (the magic) while it serves.
        public static let host = (start: 0, length: 8)
        /// A lane's (or raw channel's) owner holds a write lock on its owner word's 8 bytes.
        public static let ownerLength = 8
    }

    /// One field of a region, at its byte offset from the region's start.
    package struct Field: Sendable, Equatable {
        /// What it is, as docs/LAYOUT.md names it ("request seq", "doorbell word", …).
        package var name: String
        /// Its offset from the region's start.
        package var offset: Int
        /// 4 or 8 bytes.
        package var width: Int
        /// For a parker's futex word: the offset of its sleeping flag.
        package var parkerFlag: Int?
        /// Which lane, worker or raw channel it belongs to (nil for the header's own fields).
        package var index: Int?
    }

    /// Every field of a region of these dimensions, block by block: the header's, each doorbell's
    /// and turnstile's, each lane's and each raw channel's. For tools that must name fields
    /// without pointer arithmetic of their own (the vandal of the hostile tests).
    package static func fields(laneCount: Int, workerCount: Int, rawCount: Int, slotCapacity: Int) -> [Field] {
        let stride = laneStride(slotCapacity: slotCapacity)
        func field(_ name: String, _ offset: Int, _ width: Int, flag: Int? = nil, index: Int? = nil) -> Field {
            Field(name: name, offset: offset, width: width, parkerFlag: flag, index: index)
        }
        var fields = [
            field("magic", Header.magic, 8), field("version", Header.version, 4),
            field("header size", Header.headerSize, 4), field("lane stride", Header.laneStride, 4),
            field("lane count", Header.laneCount, 4), field("slot capacity", Header.slotCapacity, 4),
            field("worker count", Header.workerCount, 4), field("region size", Header.regionSize, 8),
            field("host pid", Header.hostPID, 4), field("handler", Header.handler, 4),
            field("host start time", Header.hostStartTime, 8), field("epoch", Header.epoch, 8),
            field("state", Header.state, 4), field("heartbeat", Header.heartbeat, 8),
            field("lanes offset", Header.lanesOffset, 8), field("raw offset", Header.rawOffset, 8),
            field("raw count", Header.rawCount, 4),
            field("grant", Header.grant, 4), field("grants", Header.grants, 4),
            field("grant quantum", Header.grantQuantum, 8), field("grant cycle", Header.grantCycle, 8),
            field("grant want", Header.grantWant, 4),
        ]
        for worker in 0..<workerCount {
            let doorbell = Header.doorbells + worker * block
            fields += [
                field("doorbell flag", doorbell + Header.doorbellSleeping, 4, index: worker),
                field("doorbell word", doorbell + Header.doorbellWord, 4, flag: doorbell + Header.doorbellSleeping,
                      index: worker),
                field("worker cpu", doorbell + Header.doorbellWorkerCPU, 4, index: worker),
            ]
            let turnstile = Header.turnstiles + worker * Header.turnstileStride
            fields += [
                field("turn next", turnstile + Header.turnNext, 8, index: worker),
                field("turn serving", turnstile + Header.turnServing, 8, index: worker),
                field("turn lease", turnstile + Header.turnLease, 8, index: worker),
            ]
            for slot in 0..<Header.turnWakeSlotCount {
                fields.append(field("turn wake word", turnstile + Header.turnWakeSlots + 4 * slot, 4, index: worker))
            }
        }
        for index in 0..<laneCount {
            let lane = headerSize + index * stride
            fields += [
                field("request seq", lane + Lane.requestSeq, 8, index: index),
                field("request length", lane + Lane.requestLength, 4, index: index),
                field("owner", lane + Lane.owner, 8, index: index),
                field("response seq", lane + Lane.responseSeq, 8, index: index),
                field("response length", lane + Lane.responseLength, 4, index: index),
                field("status", lane + Lane.status, 4, index: index),
                field("guest flag", lane + Lane.guestSleeping, 4, index: index),
                field("guest word", lane + Lane.guestWord, 4, flag: lane + Lane.guestSleeping, index: index),
            ]
            for counter in 0..<7 {
                fields.append(field("guest counter", lane + Lane.guestCounters + 8 * counter, 8, index: index))
            }
        }
        for index in 0..<rawCount {
            let channel = headerSize + (laneCount + index) * stride
            fields += [
                field("raw ping", channel + Raw.ping, 8, index: index), field("raw length", channel + Raw.length, 4, index: index),
                field("raw owner", channel + Raw.owner, 8, index: index), field("raw pong", channel + Raw.pong, 8, index: index),
                field("raw flag", channel + Raw.serverSleeping, 4, index: index),
                field("raw word", channel + Raw.serverWord, 4, flag: channel + Raw.serverSleeping, index: index),
            ]
        }
        return fields
    }

    /// The byte range of lane `index`'s payload, for the same tools.
    package static func payload(lane index: Int, slotCapacity: Int) -> Range<Int> {
        let start = headerSize + index * laneStride(slotCapacity: slotCapacity) + Lane.payload
        return start..<(start + slotCapacity)
    }

    /// The distance between lanes (and between raw channels) for a slot capacity.
    public static func laneStride(slotCapacity: Int) -> Int {
        (Lane.payload + slotCapacity + block - 1) / block * block
    }

    /// The total size of a region.
    public static func regionSize(laneCount: Int, slotCapacity: Int, rawCount: Int) -> Int {
        headerSize + (laneCount + rawCount) * laneStride(slotCapacity: slotCapacity)
    }
}

/// The host's lifecycle, as published in the header's `state` word.
public enum HostState: UInt32, Sendable {
    case initializing = 0
    case ready = 1
    case stopping = 2
}

/// What a response's status word says.
public enum ResponseStatus: UInt32, Sendable {
    case ok = 0
    /// The request length was larger than the slot.
    case badLength = 1
    /// The request sequence number was not the last one plus one.
    case badSequence = 2
    /// The handler returned a length outside the slot, or (an async handler) threw.
    case handlerFailed = 3
    /// The request was answered without its handler's answer: the host stopped while an async
    /// handler ran, or the lane changed hands (its guest died) before the handler returned.
    case cancelled = 4
}
