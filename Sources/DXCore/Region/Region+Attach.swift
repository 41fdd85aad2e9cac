#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

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
        try map(name: name, descriptor: descriptor, hostUID: hostUID, connection: -1)
    }

    /// Checks the object behind `descriptor` and its header, and maps it: the one home of every
    /// check a guest makes before it trusts a region's sizes. A named region (`connection` -1)
    /// must have its host's header lock; a private one (handed over `connection`) must be sealed
    /// against resizing, and its host must not have hung up. On success the region owns both
    /// descriptors.
    static func map(name: String, descriptor: Int32, hostUID: uid_t, connection: Int32) throws(RegionAttachError) -> Region {
        var info = stat()
        do { try retryingOnInterrupt("fstat") { fstat(descriptor, &info) } } catch { throw .system(error) }
        guard info.st_uid == hostUID else { throw .wrongOwner(name: name, owner: info.st_uid, expected: hostUID) }
        guard info.st_mode & S_IFMT == S_IFREG, info.st_mode & 0o022 == 0 else {
            throw .unsafeMode(name: name, mode: info.st_mode & 0o7777)
        }
        if connection >= 0, !CShm_seals_complete(CShm_seals(descriptor)) {
            // A region whose size its host can change under the guest (or the guest under the
            // host) is not what a private host hands over.
            throw .unsafeMode(name: name, mode: info.st_mode & 0o7777)
        }
        let fileSize = Int(info.st_size)
        guard fileSize >= Layout.headerSize else { throw .notReady(name: name) }

        let memory: MappedMemory
        do { memory = try MappedMemory(descriptor: descriptor, size: fileSize) } catch { throw .system(error) }
        let header = HeaderView(base: memory.base)
        let magic = header.magic
        if magic == 0 { throw .notReady(name: name) }
        guard magic == Layout.magic else { throw .notADXRegion(name: name) }
        let version = header.version
        guard version == Layout.version else { throw .versionMismatch(found: version, expected: Layout.version) }

        let fields = header.fields
        let laneCount = fields.laneCount, slotCapacity = fields.slotCapacity, laneStride = fields.laneStride
        let workerCount = fields.workerCount, rawCount = fields.rawCount
        guard fields.headerSize == Layout.headerSize else {
            throw .sizeMismatch("header size \(fields.headerSize), expected \(Layout.headerSize)")
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
        guard fields.regionSize == UInt64(expectedSize) else {
            throw .sizeMismatch("region size \(fields.regionSize), expected \(expectedSize)")
        }
        guard fileSize >= expectedSize else {
            throw .sizeMismatch("the region object has \(fileSize) bytes, the header says \(expectedSize)")
        }
        guard fields.lanesOffset == UInt64(Layout.headerSize),
              fields.rawOffset == UInt64(Layout.headerSize + laneCount * laneStride) else {
            throw .sizeMismatch("lane or raw channel offsets")
        }
        let handler = HandlerKind(rawValue: fields.handler) ?? .custom
        // The host lives while it holds its header lock (a private region's: while its connection
        // is open); the state word only names why it does not.
        let hostAlive = connection >= 0 ? CShm_socket_hung_up(connection) != 1
            : CShm_ofd_held(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length)) != 0
        if !hostAlive {
            throw header.state == .stopping ? .hostStopping(name: name) : .hostGone(name: name)
        }
        // From here the region owns the descriptors.
        return Region(name: name, memory: memory, descriptor: descriptor, hostLock: nil, laneCount: laneCount,
                      slotCapacity: slotCapacity, workerCount: workerCount, rawCount: rawCount, hostPID: fields.hostPID,
                      epoch: fields.epoch, handler: handler, isPrivate: connection >= 0, connection: connection)
    }
}
