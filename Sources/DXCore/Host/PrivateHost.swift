#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import Logging
import Synchronization

/// Who may ask a private host for a region, and how much they may have.
public struct PrivateHostLimits: Sendable, Equatable {
    /// Lanes a guest may ask for (1...`maxLanes`); a guest that names no count gets `defaultLanes`.
    public var maxLanes: Int
    /// Lanes a guest gets when it names no count.
    public var defaultLanes: Int
    /// The largest request or response, in bytes, in every guest's region.
    public var slotCapacity: Int
    /// Regions at once: in all, and per user.
    public var maxGuests: Int
    /// Regions at once per user.
    public var maxGuestsPerUID: Int
    /// Bytes of regions at once: in all, and per user.
    public var maxBytes: Int
    /// Bytes of regions at once per user.
    public var maxBytesPerUID: Int
    /// Users besides the host's own (and root) that may connect: by uid, or by the primary gid
    /// `SO_PEERCRED` reports. They may ask for regions, nothing else.
    public var allowedUIDs: Set<uid_t>
    /// Primary gids besides the host's own users that may ask for regions.
    public var allowedGIDs: Set<gid_t>

    /// Limits for a host on a shared machine: 8 lanes by default, up to 64; 4 KiB slots; 1024
    /// guests (256 per user); 1 GiB of regions (256 MiB per user).
    public init(maxLanes: Int = 64, defaultLanes: Int = 8, slotCapacity: Int = 4096, maxGuests: Int = 1024,
                maxGuestsPerUID: Int = 256, maxBytes: Int = 1 << 30, maxBytesPerUID: Int = 256 << 20,
                allowedUIDs: Set<uid_t> = [], allowedGIDs: Set<gid_t> = []) {
        self.maxLanes = maxLanes
        self.defaultLanes = defaultLanes
        self.slotCapacity = slotCapacity
        self.maxGuests = maxGuests
        self.maxGuestsPerUID = maxGuestsPerUID
        self.maxBytes = maxBytes
        self.maxBytesPerUID = maxBytesPerUID
        self.allowedUIDs = allowedUIDs
        self.allowedGIDs = allowedGIDs
    }

    /// Throws a sentence when a value is out of range.
    public func validate() throws(RegionCreateError) {
        guard (1...Layout.maxLanes).contains(maxLanes), (1...maxLanes).contains(defaultLanes) else {
            throw .invalidConfiguration("lanes per guest must be 1...\(Layout.maxLanes), the default at most the maximum")
        }
        guard (1...Layout.maxSlotCapacity).contains(slotCapacity) else {
            throw .invalidConfiguration("slot size \(slotCapacity) is not in 1...\(Layout.maxSlotCapacity)")
        }
        guard (1...65_536).contains(maxGuests), (1...maxGuests).contains(maxGuestsPerUID) else {
            throw .invalidConfiguration("guests must be 1...65536, per user at most that")
        }
        guard maxBytes > 0, (1...maxBytes).contains(maxBytesPerUID) else {
            throw .invalidConfiguration("region bytes must be positive, per user at most the total")
        }
    }
}

/// One guest of a private host, as the control plane shows it.
public struct PrivateGuest: Sendable, Equatable {
    /// The host's number for the guest (never reused while the host runs).
    public var id: Int
    /// Its row in snapshots (``RegionSnapshot/lanes``): reused after the guest goes.
    public var slot: Int
    /// The guest's pid (`SO_PEERCRED` at connect; 0 in another pid namespace).
    public var pid: Int32
    /// The guest's uid.
    public var uid: uid_t
    /// Its region's lanes.
    public var lanes: Int
    /// Its region's size in bytes.
    public var bytes: Int
    /// The pool worker that serves it.
    public var worker: Int
}

/// A host for many sandboxes (`dx-host --private`): it creates no named region. Each guest that
/// connects to its socket and asks gets a private, sealed region of its own
/// (``Region/connect(name:lanes:controlPath:hostUID:timeoutNanoseconds:)``); no guest ever maps
/// another's memory. A fixed pool of worker threads (`PoolWorker`) serves every region, so the host's
/// thread count does not grow with its guests, and idle guests cost nothing. A guest's region is
/// freed when its connection closes (the guest closed it, or died).
///
/// - Important: `start` and `stop` may be called from any thread, once each. Regions are opened
///   and closed by the control thread (``ControlServer``).
public final class PrivateHost: ControlTarget, @unchecked Sendable {
    /// The name guests use to find the host's socket.
    public let name: String
    /// Who may connect and how much they may have.
    public let limits: PrivateHostLimits
    /// The handler every region's header announces (guests check responses by it).
    public let handlerKind: HandlerKind
    /// The pool workers' spin policy; ``setSpinPolicy(_:)`` changes it while they run.
    public var spinPolicy: SpinPolicy { policies.load() }
    private let policies: SpinPolicyCell
    private let logger: Logger
    private let stopFlag = StopFlag()
    private let counting: Bool
    /// The pool's width.
    public let poolSize: Int
    /// How long a region's grant lasts while other regions of its worker wait (docs/LAYOUT.md,
    /// "Granted turns").
    public let grantQuantumNanoseconds: UInt64
    /// Start `(worker, region)`, stop: set by ``start(handler:)``, typed away from the handler.
    private var addToWorker: ((Int, Int, Region, HostCounters) -> Void)?
    private var removeFromWorker: ((Int, Int) -> Void)?
    private var wakeWorkers: (() -> Void)?
    private var workerLoads: (() -> [Int])?
    private var threads: [Thread] = []
    private let workerCounters: HostCounters
    private var stopped = false
    private let shutdownRequests: ShutdownRequests
    private let startTime = CShm_monotonic_ns()

    /// The guests' table: guarded by its mutex (the control thread writes it, snapshots read it).
    private struct Guest {
        var info: PrivateGuest
        let region: Region
        let counters: HostCounters
    }
    private let table: Mutex<(slots: [Guest?], nextID: Int, freed: UInt64, lastFreed: UInt64)>

    /// A host named `name` with a pool of `poolSize` workers (default: the CPUs this process may
    /// use minus one, at least one: each worker and the guest thread it serves spin) granting
    /// turns of `grantQuantumNanoseconds` (10 µs...1 s). Nothing is served before ``start(handler:)``.
    /// When the process may use more CPUs than there are workers, each worker runs pinned to one of
    /// the last of them, and guests keep off it.
    ///
    /// It raises the process's soft limit of open descriptors to the hard limit (each guest holds
    /// two of the host's), and throws when even that is below what `limits.maxGuests` needs.
    public init(name: String, limits: PrivateHostLimits = PrivateHostLimits(), handler: HandlerKind = .custom, poolSize: Int? = nil,
                grantQuantumNanoseconds: UInt64 = 640_000,
                spinPolicy: SpinPolicy = WaitStrategy.auto.spinPolicy, counting: Bool = true,
                logger: Logger = Logger(label: "dx.host")) throws(RegionCreateError) {
        guard Region.isValidName(name) else { throw .invalidName(name) }
        try limits.validate()
        do { try spinPolicy.validate() } catch { throw .invalidConfiguration(error.description) }
        let width = poolSize ?? max(1, CPUAffinity.allowedCPUs - 1)
        guard (10_000...1_000_000_000).contains(grantQuantumNanoseconds) else {
            throw .invalidConfiguration("the grant quantum must be between 10 µs and 1 s")
        }
        self.grantQuantumNanoseconds = grantQuantumNanoseconds
        // Each guest holds two of the host's descriptors (its connection and its region), on top
        // of the control clients and the host's own: a limit below that would show only once the
        // host is full, as refused connections.
        let needed = 2 * limits.maxGuests + ControlConnections.maxConnections + 64
        let available = CShm_raise_descriptor_limit()
        guard available < 0 || available >= Int64(needed) else {
            throw .invalidConfiguration("the descriptor limit (\(available), ulimit -n) is below the \(needed) that \(limits.maxGuests) guests need; raise it or lower the guest limit")
        }
        guard (1...Layout.maxWorkers).contains(width) else {
            throw .invalidConfiguration("pool size \(width) is not in 1...\(Layout.maxWorkers)")
        }
        self.name = name
        self.limits = limits
        self.handlerKind = handler
        self.poolSize = width
        self.policies = SpinPolicyCell(spinPolicy)
        self.counting = counting
        self.logger = logger
        self.shutdownRequests = ShutdownRequests(logger: logger)
        workerCounters = HostCounters(laneCount: 0, workerCount: width)
        table = Mutex((Array(repeating: nil, count: limits.maxGuests), 1, 0, 0))
    }

    /// Starts the pool. Throws when a thread or a ring cannot be made (the kernel must have io_uring
    /// futex waits: Linux 6.7 or later).
    public func start<Handler: RequestHandler>(handler: Handler) throws(SystemError) {
        // Same-user processes must not reach guests' regions through /proc/<pid>/fd or ptrace.
        let rc = CShm_forbid_inspection()
        if rc != 0 { logger.warning("cannot make the host undumpable (errno \(rc)); same-user processes could open guests' regions through /proc") }
        var workers: [PoolWorker<Handler>] = []
        let ringEntries = UInt32(max(64, min(4096, limits.maxGuests + 16)))
        do {
            for index in 0..<poolSize {
                workers.append(try PoolWorker(index: index, handler: handler, policies: policies, stop: stopFlag,
                                              counters: workerCounters.worker(index), counting: counting,
                                              grantQuantum: grantQuantumNanoseconds, ringEntries: ringEntries))
            }
            // Each worker gets a CPU of its own when the host may use more CPUs than it has
            // workers (the last ones): its guests keep off that CPU (docs/LAYOUT.md, "Granted
            // turns", placement), and a worker the scheduler moved would leave the guests that sleep
            // narrowed to the very CPU it moved to. Best effort: an unpinned worker still works.
            let cpus = (0..<Int32(1024)).filter { CShm_cpu_allowed($0) }.map { Int($0) }
            let own = cpus.count > workers.count ? Array(cpus.suffix(workers.count)) : []
            for (index, worker) in workers.enumerated() {
                let cpu = own.isEmpty ? nil : own[index]
                threads.append(try Thread {
                    if let cpu { try? CPUAffinity.pinCurrentThread(to: cpu) }
                    worker.run()
                })
            }
        } catch {
            stop()
            throw error
        }
        let counting = counting
        addToWorker = { index, id, region, counters in
            let entry = PoolWorker<Handler>.Entry(
                id: id, served: ServedLanes(region: region, indices: Array(0..<region.laneCount), counters: counters))
            _ = counting
            workers[index].load.add(1, ordering: .relaxed)
            workers[index].send(.add(entry))
        }
        removeFromWorker = { index, id in workers[index].send(.remove(id: id)) }
        wakeWorkers = { for worker in workers { worker.wake() } }
        workerLoads = { workers.map { $0.load.load(ordering: .relaxed) } }
        logger.info("serving private regions", metadata: [
            "name": "\(name)", "pool": "\(poolSize)", "grant": "\(grantQuantumNanoseconds / 1000) µs", "wait": "\(policies.load())",
            "lanes": "\(limits.defaultLanes) (max \(limits.maxLanes))", "slot": "\(limits.slotCapacity)",
            "guests": "\(limits.maxGuests) (\(limits.maxGuestsPerUID) per user)",
        ])
    }

    // MARK: - Guests

    /// Whether a process of `uid`/`gid` may connect: the host's own user, root, or an allowed one.
    public func allows(uid: uid_t, gid: gid_t) -> Bool {
        uid == getuid() || uid == 0 || limits.allowedUIDs.contains(uid) || limits.allowedGIDs.contains(gid)
    }

    /// Creates a region of `lanes` lanes (nil: the default) for a guest, within the limits, and
    /// hands it to the least-loaded pool worker. Returns the guest, its region (whose descriptor
    /// the caller sends), or a sentence saying why not.
    public func openRegion(lanes requested: Int?, pid: Int32, uid: uid_t) -> Result<(PrivateGuest, Region), RegionRefusal> {
        guard !stopFlag.isSet, let addToWorker, let workerLoads else { return .failure(RegionRefusal("the host is stopping")) }
        let lanes = requested ?? limits.defaultLanes
        guard (1...limits.maxLanes).contains(lanes) else {
            return .failure(RegionRefusal("lanes must be between 1 and \(limits.maxLanes), not \(lanes)"))
        }
        let bytes = Layout.regionSize(laneCount: lanes, slotCapacity: limits.slotCapacity, rawCount: 0)
        let limits = limits, name = name, handlerKind = handlerKind, quantum = grantQuantumNanoseconds
        let loads = workerLoads()
        let worker = loads.indices.min { loads[$0] < loads[$1] } ?? 0
        // Checked and taken under one lock, the region made inside it (a memfd and a mapping): two
        // callers at once can neither pass the same limit nor get the same slot.
        let made: Result<(PrivateGuest, Region, HostCounters), RegionRefusal> = table.withLock { table in
            let live = table.slots.compactMap { $0?.info }
            guard let slot = table.slots.firstIndex(where: { $0 == nil }) else {
                return .failure(RegionRefusal("the host serves its limit of \(limits.maxGuests) guests"))
            }
            let mine = live.filter { $0.uid == uid }
            guard mine.count < limits.maxGuestsPerUID else {
                return .failure(RegionRefusal("uid \(uid) has its limit of \(limits.maxGuestsPerUID) regions"))
            }
            guard live.reduce(0, { $0 + $1.bytes }) + bytes <= limits.maxBytes else {
                return .failure(RegionRefusal("the host's regions would exceed its limit of \(limits.maxBytes) bytes"))
            }
            guard mine.reduce(0, { $0 + $1.bytes }) + bytes <= limits.maxBytesPerUID else {
                return .failure(RegionRefusal("uid \(uid)'s regions would exceed its limit of \(limits.maxBytesPerUID) bytes"))
            }
            let region: Region
            do {
                region = try Region.createPrivate(
                    label: name, configuration: RegionConfiguration(laneCount: lanes, slotCapacity: limits.slotCapacity,
                                                                    workerCount: 1, handler: handlerKind),
                    grantQuantumNanoseconds: quantum)
            } catch {
                return .failure(RegionRefusal("cannot create the region: \(error)"))
            }
            let id = table.nextID
            table.nextID += 1
            let guest = PrivateGuest(id: id, slot: slot, pid: pid, uid: uid, lanes: lanes, bytes: bytes, worker: worker)
            let counters = HostCounters(laneCount: lanes, workerCount: 1)
            table.slots[slot] = Guest(info: guest, region: region, counters: counters)
            return .success((guest, region, counters))
        }
        switch made {
        case .failure(let refusal):
            return .failure(refusal)
        case .success(let (guest, region, counters)):
            addToWorker(worker, guest.id, region, counters)
            return .success((guest, region))
        }
    }

    /// Frees a guest's region: its worker stops serving it, and the memory goes with the last
    /// mapping (the guest's, if it still lives).
    public func closeRegion(id: Int) {
        let removed: Guest? = table.withLock { table in
            guard let slot = table.slots.firstIndex(where: { $0?.info.id == id }) else { return nil }
            defer { table.slots[slot] = nil; table.freed += 1; table.lastFreed = CShm_monotonic_ns() }
            return table.slots[slot]
        }
        guard let removed else { return }
        removed.region.setState(.stopping)
        Self.wakeEveryone(in: removed.region)
        removeFromWorker?(removed.info.worker, id)
    }

    /// Wakes a region's sleeping guest threads: on their lanes and on the grant word (their next
    /// check finds the host stopping, or the region gone).
    private static func wakeEveryone(in region: Region) {
        for lane in 0..<region.laneCount { wakeSleepingGuest(lane: region.lane(lane)) }
        _ = CShm_futex_wake(region.grant.word, Int32.max)
    }

    /// The guests now.
    public var guests: [PrivateGuest] { table.withLock { $0.slots.compactMap { $0?.info } } }

    /// Regions freed since the host started.
    public var freedRegions: UInt64 { table.withLock { $0.freed } }

    /// When the last region was freed (CLOCK_MONOTONIC ns, which every process of the machine
    /// shares; 0 before the first): a killed guest's region is freed this long after its death.
    public var lastFreedNanoseconds: UInt64 { table.withLock { $0.lastFreed } }

    // MARK: - ControlTarget

    /// This process's pid.
    public var hostPID: Int32 { getpid() }
    /// The default lanes per guest, the slot size and the pool's width.
    public var shape: HostShape {
        HostShape(lanes: limits.defaultLanes, slotCapacity: limits.slotCapacity, workers: poolSize, privateRegions: true)
    }

    /// One row per guest slot (``PrivateGuest/slot``): the guest's pid as owner, its id as the
    /// generation, and the sums over its lanes. Empty slots are zero rows.
    public func snapshot() -> RegionSnapshot {
        let rows = table.withLock { table in
            table.slots.enumerated().map { slot, guest -> LaneSnapshot in
                var row = LaneSnapshot(index: slot, ownerPID: 0, generation: 0, roundTrips: 0, wakesSent: 0, hostErrors: 0,
                                       calls: 0, spinWins: 0, yields: 0, sleeps: 0, doorbells: 0, guestErrors: 0, turnWaits: 0)
                guard let guest else { return row }
                row.ownerPID = guest.info.pid
                row.generation = UInt32(truncatingIfNeeded: guest.info.id)
                for lane in guest.counters.snapshot(of: guest.region).lanes {
                    row.roundTrips &+= lane.roundTrips
                    row.wakesSent &+= lane.wakesSent
                    row.hostErrors &+= lane.hostErrors
                    row.calls &+= lane.calls
                    row.spinWins &+= lane.spinWins
                    row.yields &+= lane.yields
                    row.sleeps &+= lane.sleeps
                    row.doorbells &+= lane.doorbells
                    row.guestErrors &+= lane.guestErrors
                    row.turnWaits &+= lane.turnWaits
                }
                return row
            }
        }
        let workers = (0..<poolSize).map { index -> WorkerSnapshot in
            let counters = workerCounters.worker(index)
            return WorkerSnapshot(index: index, spinWins: workerCounters.read(counters + HostCounters.Worker.spinWins),
                                  yields: workerCounters.read(counters + HostCounters.Worker.yields),
                                  sleeps: workerCounters.read(counters + HostCounters.Worker.sleeps))
        }
        return RegionSnapshot(time: CShm_monotonic_ns(), lanes: rows, workers: workers, reclaimedLanes: freedRegions)
    }

    /// "guest" for a taken guest slot, else "free".
    public func laneState(_ index: Int) -> String {
        table.withLock { index < $0.slots.count && $0.slots[index] != nil } ? "guest" : "free"
    }

    /// Changes the pool workers' spin policy; they pick it up within 1024 polls.
    public func setSpinPolicy(_ policy: SpinPolicy) throws(WaitStrategyError) {
        try policy.validate()
        policies.store(policy)
        logger.info("spin policy changed", metadata: ["wait": "\(policy)"])
    }

    /// Itself: its socket hands out regions.
    public var privateHost: PrivateHost? { self }

    /// What to do when a control client asks the host to shut down (``HostService`` sets it).
    public func onShutdownRequest(_ handler: @escaping @Sendable () -> Void) {
        shutdownRequests.onRequest(handler)
    }

    /// Asks the host's owner to shut down: runs the ``onShutdownRequest(_:)`` handler.
    public func requestShutdown() {
        shutdownRequests.request()
    }

    // MARK: - Stopping

    /// The quick way out, for a second stop signal: tells every guest the host stops and wakes
    /// them. The process should exit next (its end closes every connection).
    public func abandon() {
        stopFlag.set()
        for guest in table.withLock({ $0.slots.compactMap { $0 } }) {
            guest.region.setState(.stopping)
            Self.wakeEveryone(in: guest.region)
        }
    }

    /// Stops serving: publishes `stopping` in every region, joins the pool and wakes sleeping
    /// guests. Their connections close with the control server (stop it first) or the process.
    public func stop() {
        if stopped { return }
        stopped = true
        abandon()
        wakeWorkers?()
        for thread in threads { thread.join() }
        threads.removeAll()
        table.withLock { table in
            for slot in table.slots.indices { table.slots[slot] = nil }
        }
        logger.info("stopped", metadata: ["name": "\(name)"])
    }

    deinit {
        stop()
    }
}

/// Why a private host refused a region, in a sentence.
public struct RegionRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// The sentence.
    public var description: String
    init(_ description: String) { self.description = description }
}

/// What `config` and `stats` show of a host's shape.
public struct HostShape: Sendable, Equatable {
    /// Lanes (a private host: the default per guest).
    public var lanes: Int
    /// The largest request or response, in bytes.
    public var slotCapacity: Int
    /// Serving workers (a private host: its pool).
    public var workers: Int
    /// Whether the host hands out private regions.
    public var privateRegions: Bool
}
