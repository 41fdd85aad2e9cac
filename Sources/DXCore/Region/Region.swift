#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

/// A mapped dx region: the header, the lanes and the raw baseline channels.
///
/// The host makes one with ``create(name:configuration:)``; guests attach to it with
/// ``attach(name:)``. Both keep private copies of every size they validated, and never read
/// a size from shared memory again.
///
/// ```swift
/// // Guest: attach, claim a lane per thread, call.
/// let region = try Region.attach(name: "demo")
/// print(region.laneCount, region.slotCapacity)
/// var lane = try region.claimLane(strategy: .auto)
/// let reply = try lane.call(Array("ping".utf8)).get()
/// ```
///
/// - Important: `Region` is thread-safe. It owns the mapping; lanes and servers keep it alive.
public final class Region: @unchecked Sendable {
    /// The name given by the user (the region is `/dev/shm/dx.<name>`).
    public let name: String
    /// How many lanes (guest threads at once) the region has.
    public let laneCount: Int
    /// The largest request or response, in bytes.
    public let slotCapacity: Int
    /// The distance between lanes, in bytes.
    public let laneStride: Int
    /// How many workers serve the lanes; lane i is served by worker i mod workerCount.
    public let workerCount: Int
    /// How many raw baseline channels the region has.
    public let rawCount: Int
    /// The pid of the host that created the region, as the header says (informational: liveness
    /// comes from the host's lock, see ``Layout/Locks``).
    public let hostPID: Int32
    /// A value that differs for every region ever created under a name.
    public let epoch: UInt64
    /// The handler the host announced in the header.
    public let handler: HandlerKind

    private let memory: MappedMemory
    @usableFromInline let base: UnsafeMutableRawPointer
    /// The region's descriptor, kept open for its locks: the host's lock on the header, and the
    /// queries about every other lock (``Layout/Locks``).
    let descriptor: Int32
    /// The host's per-name lock (host side only).
    private let hostLock: HostLock?
    private var isCreator: Bool { hostLock != nil }
    /// The object's device and inode, so that removal never takes a newer region's name.
    private var identity: (dev_t, ino_t) = (0, 0)

    private init(name: String, memory: consuming MappedMemory, descriptor: Int32, hostLock: HostLock?, laneCount: Int,
                 slotCapacity: Int, workerCount: Int, rawCount: Int, hostPID: Int32, epoch: UInt64,
                 handler: HandlerKind) {
        self.name = name
        self.base = memory.base
        self.memory = memory
        self.descriptor = descriptor
        self.hostLock = hostLock
        self.laneCount = laneCount
        self.slotCapacity = slotCapacity
        self.laneStride = Layout.laneStride(slotCapacity: slotCapacity)
        self.workerCount = workerCount
        self.rawCount = rawCount
        self.hostPID = hostPID
        self.epoch = epoch
        self.handler = handler
    }

    /// This process's pid, as written (informationally) into the owner words of lanes it claims.
    static let ownPID = getpid()

    /// SIGBUS faults the host absorbed because someone truncated the region (host side only).
    public var truncationFaults: UInt64 { CShm_truncation_faults(base) }

    deinit {
        if isCreator { CShm_unguard_truncation(base) }
        hostLock?.release()
        close(descriptor)
    }


    /// The path of the shared-memory object for a name.
    public static func path(for name: String) -> String { "/dev/shm/\(objectName(for: name).dropFirst())" }

    static func objectName(for name: String) -> String { "/dx.\(name)" }

    /// The longest region name. Short enough that the control socket's default path
    /// (`<runtime directory>/<name>.sock`) fits a `sockaddr_un` (107 bytes) in the usual places.
    public static let maxNameLength = 64

    /// Whether `name` can name a region: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a dot.
    public static func isValidName(_ name: String) -> Bool {
        guard (1...maxNameLength).contains(name.utf8.count), name.utf8.first != UInt8(ascii: ".") else { return false }
        return name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
    }

    // MARK: - Views

    /// The base of lane `index`. The index is a private, validated value.
    @inlinable
    func lane(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < laneCount)
        return base + Layout.headerSize + index * laneStride
    }

    /// The base of raw channel `index`.
    func rawChannel(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < rawCount)
        return base + Layout.headerSize + (laneCount + index) * laneStride
    }

    /// The doorbell of serving worker `index`.
    @inlinable
    func doorbell(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < workerCount)
        return base + Layout.Header.doorbells + index * Layout.block
    }

    /// The turnstile of serving worker `index` (guests take turns per worker).
    @inlinable
    func turnstile(_ index: Int) -> UnsafeMutableRawPointer {
        precondition(index >= 0 && index < workerCount)
        return base + Layout.Header.turnstiles + index * Layout.Header.turnstileStride
    }

    /// The worker that serves lane `index`.
    @inlinable
    func worker(forLane index: Int) -> Int { index % workerCount }

    /// The host's published state.
    public var state: HostState? {
        // Acquire: pairs with the host's release store when it changes state.
        HostState(rawValue: CShm_load_acquire_u32(base + Layout.Header.state))
    }

    /// The host's last heartbeat, CLOCK_MONOTONIC nanoseconds.
    public var heartbeat: UInt64 {
        CShm_load_relaxed_u64(base + Layout.Header.heartbeat)
    }

    func setState(_ state: HostState) {
        // Release: everything the host wrote before (responses, wake-ups) is visible with it.
        CShm_store_release_u32(base + Layout.Header.state, state.rawValue)
    }

    func beat() {
        CShm_store_relaxed_u64(base + Layout.Header.heartbeat, CShm_monotonic_ns())
    }

    /// Why the host can no longer answer, or nil while it can.
    ///
    /// The host lives while it holds its lock on the header (``Layout/Locks/host``): the kernel
    /// vouches for that, not the header. Only once the lock is free does the state word choose
    /// between "shutting down" and "gone", so a guest that writes `stopping` fools nobody.
    /// A system call (`F_OFD_GETLK`): for slow paths only.
    func hostProblem() -> HostProblem? {
        if CShm_ofd_held(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length)) != 0 {
            return nil
        }
        return state == .stopping ? .shutdown : .hostGone
    }

    /// Host side: lets go of the header lock, so that guests learn the host is gone (``stop``).
    package func releaseHostLock() {
        _ = CShm_ofd_unlock(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length))
    }

    enum HostProblem { case shutdown, hostGone }

    // MARK: - Removal

    /// Removes the region's name (`shm_unlink`). The mapping stays valid until the last
    /// reference goes away. Only the host that created the region does this.
    func unlink() {
        guard isCreator else { return }
        let objectName = Region.objectName(for: name)
        let descriptor = CShm_shm_open(objectName, O_RDONLY | O_CLOEXEC, 0)
        guard descriptor >= 0 else { return }
        var info = stat()
        let same = (try? retryingOnInterrupt("fstat") { fstat(descriptor, &info) }) != nil
            && info.st_dev == identity.0 && info.st_ino == identity.1
        close(descriptor)
        if same { _ = CShm_shm_unlink(objectName) }
        hostLock?.release()
    }
}

// MARK: - Create

/// What the host puts into a new region.
public struct RegionConfiguration: Sendable, Equatable {
    /// Lanes: how many guest threads can be connected at once (1...1024).
    public var laneCount: Int
    /// The largest request or response, in bytes (1 B...16 MiB).
    public var slotCapacity: Int
    /// Serving worker threads (1...16, at most the lane count).
    public var workerCount: Int
    /// Whether the region carries raw ping-pong channels for `--baseline raw` (off by default: each
    /// channel has a server thread, which an embedder does not want unless it benchmarks).
    public var rawChannels: Bool
    /// The handler announced in the header, so that guests can check responses.
    public var handler: HandlerKind

    /// A configuration; the defaults suit a small host.
    public init(laneCount: Int = 8, slotCapacity: Int = 4096, workerCount: Int = 1, rawChannels: Bool = false,
                handler: HandlerKind = .custom) {
        self.laneCount = laneCount
        self.slotCapacity = slotCapacity
        self.workerCount = workerCount
        self.rawChannels = rawChannels
        self.handler = handler
    }

    /// Throws when a value is out of range.
    public func validate() throws(RegionCreateError) {
        guard (1...Layout.maxLanes).contains(laneCount) else {
            throw .invalidConfiguration("lane count \(laneCount) is not in 1...\(Layout.maxLanes)")
        }
        guard (1...Layout.maxSlotCapacity).contains(slotCapacity) else {
            throw .invalidConfiguration("slot size \(slotCapacity) is not in 1...\(Layout.maxSlotCapacity)")
        }
        guard (1...Layout.maxWorkers).contains(workerCount) else {
            throw .invalidConfiguration("worker count \(workerCount) is not in 1...\(Layout.maxWorkers)")
        }
    }
}

extension Region {
    /// Creates, initialises and publishes a region (host side).
    ///
    /// First the host takes its per-name lock (``HostLock``): while another host holds it, this
    /// one refuses. Holding it, the host replaces an object left by a dead host (after checking
    /// that it is this user's and that no host holds its header lock), creates the object with
    /// `shm_open(O_CREAT | O_EXCL)` and mode 0600, locks the header (``Layout/Locks/host``) and
    /// publishes the header last: every field, then `magic` with a release store.
    public static func create(name: String, configuration: RegionConfiguration) throws(RegionCreateError) -> Region {
        guard isValidName(name) else { throw .invalidName(name) }
        try configuration.validate()
        let workers = min(configuration.workerCount, configuration.laneCount)
        let rawCount = configuration.rawChannels ? min(configuration.laneCount, Layout.maxRawChannels) : 0
        let size = Layout.regionSize(laneCount: configuration.laneCount, slotCapacity: configuration.slotCapacity,
                                     rawCount: rawCount)
        let objectName = objectName(for: name)
        let hostLock = try HostLock(name: name)

        var descriptor: Int32 = -1
        for _ in 0..<3 where descriptor < 0 {
            descriptor = CShm_shm_open(objectName, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
            if descriptor >= 0 { break }
            let code = -descriptor
            guard code == EEXIST else { throw .system(SystemError("shm_open", errno: code)) }
            try removeStale(objectName: objectName, name: name)
        }
        guard descriptor >= 0 else { throw .system(SystemError("shm_open", errno: EEXIST)) }

        do throws(SystemError) {
            try retryingOnInterrupt("fchmod") { fchmod(descriptor, 0o600) }
            try retryingOnInterrupt("ftruncate") { ftruncate(descriptor, off_t(size)) }
            let lock = CShm_ofd_trylock(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length))
            guard lock == 0 else { throw SystemError("fcntl F_OFD_SETLK (host lock)", errno: lock) }
            let memory = try MappedMemory(descriptor: descriptor, size: size)
            let pid = getpid()
            let epoch = CShm_monotonic_ns() ^ (UInt64(UInt32(bitPattern: pid)) << 40)
            let region = Region(name: name, memory: memory, descriptor: descriptor, hostLock: hostLock,
                                laneCount: configuration.laneCount, slotCapacity: configuration.slotCapacity,
                                workerCount: workers, rawCount: rawCount, hostPID: pid, epoch: epoch,
                                handler: configuration.handler)
            var info = stat()
            try retryingOnInterrupt("fstat") { fstat(descriptor, &info) }
            region.identity = (info.st_dev, info.st_ino)
            region.initialize(regionSize: size)
            // A guest can truncate the object under us; the host must not die of the SIGBUS.
            _ = CShm_guard_truncation(region.base, size)
            return region
        } catch {
            close(descriptor)
            _ = CShm_shm_unlink(objectName)
            hostLock.release()
            throw .system(error)
        }
    }

    /// Removes an object left under `objectName` by a host that died. Refuses one that belongs to
    /// another user (a squatter: never followed, never removed) and one whose header lock is held
    /// (a live host that keeps its lock file elsewhere).
    private static func removeStale(objectName: String, name: String) throws(RegionCreateError) {
        let descriptor = CShm_shm_open(objectName, O_RDONLY | O_CLOEXEC, 0)
        guard descriptor >= 0 else {
            if -descriptor == ENOENT { return }
            throw .system(SystemError("shm_open", errno: -descriptor))
        }
        defer { close(descriptor) }
        var info = stat()
        do { try retryingOnInterrupt("fstat") { fstat(descriptor, &info) } } catch { throw .system(error) }
        guard info.st_uid == getuid() else { throw .nameTaken(name: name, uid: info.st_uid) }
        if CShm_ofd_held(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length)) != 0 {
            throw .alreadyServed(name: name, pid: 0)
        }
        _ = CShm_shm_unlink(objectName)
    }

    private func initialize(regionSize: Int) {
        let header = base
        // Informational: who serves it. Nobody decides anything on these two.
        CShm_store_relaxed_u64(header + Layout.Header.hostStartTime, CShm_process_start_time(hostPID))
        CShm_store_relaxed_u32(header + Layout.Header.hostPID, UInt32(bitPattern: hostPID))
        CShm_store_relaxed_u32(header + Layout.Header.version, Layout.version)
        CShm_store_relaxed_u32(header + Layout.Header.headerSize, UInt32(Layout.headerSize))
        CShm_store_relaxed_u32(header + Layout.Header.laneStride, UInt32(laneStride))
        CShm_store_relaxed_u32(header + Layout.Header.laneCount, UInt32(laneCount))
        CShm_store_relaxed_u32(header + Layout.Header.slotCapacity, UInt32(slotCapacity))
        CShm_store_relaxed_u32(header + Layout.Header.workerCount, UInt32(workerCount))
        CShm_store_relaxed_u64(header + Layout.Header.regionSize, UInt64(regionSize))
        CShm_store_relaxed_u32(header + Layout.Header.handler, handler.rawValue)
        CShm_store_relaxed_u64(header + Layout.Header.epoch, epoch)
        CShm_store_relaxed_u64(header + Layout.Header.lanesOffset, UInt64(Layout.headerSize))
        CShm_store_relaxed_u64(header + Layout.Header.rawOffset, UInt64(Layout.headerSize + laneCount * laneStride))
        CShm_store_relaxed_u32(header + Layout.Header.rawCount, UInt32(rawCount))
        // Every futex word and flag starts at 0 (a new object is zero-filled).
        for worker in 0..<workerCount {
            CShm_store_relaxed_u32(doorbell(worker) + Layout.Header.doorbellWorkerCPU, .max)
        }
        beat()
        setState(.ready)
        // Release: publishes every field above; pairs with the guest's acquire load of magic.
        CShm_store_release_u64(header + Layout.Header.magic, Layout.magic)
    }
}

// MARK: - Attach

extension Region {
    /// Attaches to the region a host published under `name` (guest side).
    ///
    /// The object must belong to `hostUID` (this process's own uid unless the caller names the
    /// host's) and must not be writable by group or others: a name another user created first is
    /// refused, never followed. The check is on the opened descriptor (`fstat`), not the path.
    /// Then every header field is validated before any is used: magic, version, header size,
    /// counts, capacity, stride and the total size against the object's real size. Last, the host
    /// must hold its header lock (``Layout/Locks/host``).
    public static func attach(name: String, hostUID: uid_t? = nil) throws(RegionAttachError) -> Region {
        guard isValidName(name) else { throw .invalidName(name) }
        let descriptor = CShm_shm_open(objectName(for: name), O_RDWR | O_CLOEXEC, 0)
        guard descriptor >= 0 else {
            let code = -descriptor
            switch code {
            case ENOENT: throw .noSuchRegion(name: name)
            case EACCES, EPERM: throw .permissionDenied(name: name)
            default: throw .system(SystemError("shm_open", errno: code))
            }
        }
        do {
            return try attach(name: name, descriptor: descriptor, hostUID: hostUID ?? getuid())
        } catch {
            close(descriptor)
            throw error
        }
    }

    private static func attach(name: String, descriptor: Int32, hostUID: uid_t) throws(RegionAttachError) -> Region {
        var info = stat()
        do { try retryingOnInterrupt("fstat") { fstat(descriptor, &info) } } catch { throw .system(error) }
        guard info.st_uid == hostUID else { throw .wrongOwner(name: name, owner: info.st_uid, expected: hostUID) }
        guard info.st_mode & S_IFMT == S_IFREG, info.st_mode & 0o022 == 0 else {
            throw .unsafeMode(name: name, mode: info.st_mode & 0o7777)
        }
        let fileSize = Int(info.st_size)
        guard fileSize >= Layout.headerSize else { throw .notReady(name: name) }

        let memory: MappedMemory
        do { memory = try MappedMemory(descriptor: descriptor, size: fileSize) } catch { throw .system(error) }
        let header = memory.base
        // Acquire: pairs with the host's release store of magic, which it writes last.
        let magic = CShm_load_acquire_u64(header + Layout.Header.magic)
        if magic == 0 { throw .notReady(name: name) }
        guard magic == Layout.magic else { throw .notADXRegion(name: name) }
        let version = CShm_load_relaxed_u32(header + Layout.Header.version)
        guard version == Layout.version else { throw .versionMismatch(found: version, expected: Layout.version) }

        func field32(_ offset: Int) -> Int { Int(CShm_load_relaxed_u32(header + offset)) }
        func field64(_ offset: Int) -> UInt64 { CShm_load_relaxed_u64(header + offset) }
        let headerSize = field32(Layout.Header.headerSize)
        let laneCount = field32(Layout.Header.laneCount)
        let slotCapacity = field32(Layout.Header.slotCapacity)
        let laneStride = field32(Layout.Header.laneStride)
        let workerCount = field32(Layout.Header.workerCount)
        let rawCount = field32(Layout.Header.rawCount)
        let regionSize = field64(Layout.Header.regionSize)
        guard headerSize == Layout.headerSize else {
            throw .sizeMismatch("header size \(headerSize), expected \(Layout.headerSize)")
        }
        guard (1...Layout.maxLanes).contains(laneCount) else { throw .sizeMismatch("lane count \(laneCount)") }
        guard (1...Layout.maxSlotCapacity).contains(slotCapacity) else {
            throw .sizeMismatch("slot capacity \(slotCapacity)")
        }
        guard laneStride == Layout.laneStride(slotCapacity: slotCapacity) else {
            throw .sizeMismatch("lane stride \(laneStride) for slot capacity \(slotCapacity)")
        }
        guard (1...min(Layout.maxWorkers, laneCount)).contains(workerCount) else {
            throw .sizeMismatch("worker count \(workerCount)")
        }
        guard rawCount <= min(laneCount, Layout.maxRawChannels) else { throw .sizeMismatch("raw channel count \(rawCount)") }
        let expectedSize = Layout.regionSize(laneCount: laneCount, slotCapacity: slotCapacity, rawCount: rawCount)
        guard regionSize == UInt64(expectedSize) else {
            throw .sizeMismatch("region size \(regionSize), expected \(expectedSize)")
        }
        guard fileSize >= expectedSize else {
            throw .sizeMismatch("the region object has \(fileSize) bytes, the header says \(expectedSize)")
        }
        guard field64(Layout.Header.lanesOffset) == UInt64(Layout.headerSize),
              field64(Layout.Header.rawOffset) == UInt64(Layout.headerSize + laneCount * laneStride) else {
            throw .sizeMismatch("lane or raw channel offsets")
        }
        let pid = Int32(bitPattern: CShm_load_relaxed_u32(header + Layout.Header.hostPID))
        let handler = HandlerKind(rawValue: CShm_load_relaxed_u32(header + Layout.Header.handler)) ?? .custom
        // The host lives while it holds its header lock; the state word only names why it does not.
        if CShm_ofd_held(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length)) == 0 {
            let state = HostState(rawValue: CShm_load_acquire_u32(header + Layout.Header.state))
            throw state == .stopping ? .hostStopping(name: name) : .hostGone(name: name)
        }
        // From here the region owns the descriptor.
        return Region(name: name, memory: memory, descriptor: descriptor, hostLock: nil, laneCount: laneCount,
                      slotCapacity: slotCapacity, workerCount: workerCount, rawCount: rawCount, hostPID: pid,
                      epoch: field64(Layout.Header.epoch), handler: handler)
    }
}
