#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

extension Region {
    /// Creates, initialises and publishes a region (host side).
    ///
    /// First the host takes its per-name lock (`HostLock`, a flock on /dev/shm/dx-lock.<name>): while another host holds it, this
    /// one refuses. Holding it, the host replaces an object left by a dead host (after checking
    /// that it is this user's and taking its header lock itself, so that no live host can hold
    /// it), creates the object with `shm_open(O_CREAT | O_EXCL)` and mode 0600, locks its header
    /// (``Layout/Locks/host``) at once, before it sizes it, and publishes the header last: every
    /// field, then `magic` with a release store. So at no moment does a live host's object lack its
    /// header lock.
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
        // The object's identity, so that a failure below removes this object and no other.
        var created = stat()
        let identified = (try? retryingOnInterrupt("fstat") { fstat(descriptor, &created) }) != nil

        do throws(SystemError) {
            // The header lock first (an OFD lock may cover bytes past the end of the file): from
            // here on the object is visibly a live host's.
            let lock = CShm_ofd_trylock(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length))
            guard lock == 0 else { throw SystemError("fcntl F_OFD_SETLK (host lock)", errno: lock) }
            try retryingOnInterrupt("fchmod") { fchmod(descriptor, 0o600) }
            try retryingOnInterrupt("ftruncate") { ftruncate(descriptor, off_t(size)) }
            let memory = try MappedMemory(descriptor: descriptor, size: size)
            let pid = getpid()
            let epoch = CShm_monotonic_ns() ^ (UInt64(UInt32(bitPattern: pid)) << 40)
            let region = Region(name: name, memory: memory, descriptor: descriptor, hostLock: hostLock,
                                laneCount: configuration.laneCount, slotCapacity: configuration.slotCapacity,
                                workerCount: workers, rawCount: rawCount, hostPID: pid, epoch: epoch,
                                handler: configuration.handler)
            region.identity = (created.st_dev, created.st_ino)
            region.initialize(regionSize: size)
            // A guest can truncate the object under us; the host must not die of the SIGBUS.
            _ = CShm_guard_truncation(region.base, size)
            return region
        } catch {
            if identified { unlinkIfSame(objectName: objectName, as: created) }
            close(descriptor)
            hostLock.release()
            throw .system(error)
        }
    }

    /// Removes an object left under `objectName` by a host that died. Refuses one that belongs to
    /// another user (a squatter: never followed, never removed) and one whose header lock a live
    /// host holds. It takes that lock itself (`F_OFD_SETLK`, not a query) and holds it until the
    /// name is gone, so no host can start serving the object in between.
    private static func removeStale(objectName: String, name: String) throws(RegionCreateError) {
        let descriptor = CShm_shm_open(objectName, O_RDWR | O_CLOEXEC, 0)
        guard descriptor >= 0 else {
            if -descriptor == ENOENT { return }
            if -descriptor == EACCES { throw .nameTaken(name: name, uid: 0) }
            throw .system(SystemError("shm_open", errno: -descriptor))
        }
        defer { close(descriptor) }
        var info = stat()
        do { try retryingOnInterrupt("fstat") { fstat(descriptor, &info) } } catch { throw .system(error) }
        guard info.st_uid == getuid() else { throw .nameTaken(name: name, uid: info.st_uid) }
        let lock = CShm_ofd_trylock(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length))
        if lock == EAGAIN { throw .alreadyServed(name: name, pid: 0) }
        guard lock == 0 else { throw .system(SystemError("fcntl F_OFD_SETLK (stale region)", errno: lock)) }
        unlinkIfSame(objectName: objectName, as: info)
    }

    /// `shm_unlink`s the name only while it still names the object `identity` describes.
    private static func unlinkIfSame(objectName: String, as identity: stat) {
        let descriptor = CShm_shm_open(objectName, O_RDONLY | O_CLOEXEC, 0)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        var info = stat()
        guard (try? retryingOnInterrupt("fstat") { fstat(descriptor, &info) }) != nil,
              info.st_dev == identity.st_dev, info.st_ino == identity.st_ino else { return }
        _ = CShm_shm_unlink(objectName)
    }

    func initialize(regionSize: Int) {
        // The object is zero-filled: every flag and futex word starts at 0. Host pid and start
        // time are informational; nobody decides anything on them.
        header.store(HeaderView.Fields(
            version: Layout.version, headerSize: Layout.headerSize, laneStride: laneStride, laneCount: laneCount,
            slotCapacity: slotCapacity, workerCount: workerCount, regionSize: UInt64(regionSize), hostPID: hostPID,
            handler: handler.rawValue, hostStartTime: CShm_process_start_time(hostPID), epoch: epoch,
            lanesOffset: UInt64(Layout.headerSize), rawOffset: UInt64(Layout.headerSize + laneCount * laneStride),
            rawCount: rawCount))
        for worker in 0..<workerCount { doorbell(worker).workerCPU = .max }
        beat()
        setState(.ready)
        header.publish()
    }
}
