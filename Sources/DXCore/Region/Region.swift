#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

/// A mapped dx region: the header, the lanes and the raw baseline channels.
///
/// The host makes one with ``create(name:configuration:)``; guests attach to it with
/// ``attach(name:hostUID:)``. Both keep private copies of every size they validated, and never read
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
    package let descriptor: Int32
    /// The host's per-name lock (host side of a named region only).
    private let hostLock: HostLock?
    private var isCreator: Bool { hostLock != nil }
    /// A private region's guest side: the connection to the host that handed the region over.
    /// The host lives while it is open; -1 for named regions and on the host side.
    package let connection: Int32
    /// Whether the region is private: one guest's, handed over its connection (``connect(name:lanes:controlPath:hostUID:timeoutNanoseconds:)``), with no name
    /// and no locks. Its owner words are claimed without locks: the guest is one process.
    public let isPrivate: Bool
    /// The object's device and inode, so that removal never takes a newer region's name.
    var identity: (dev_t, ino_t) = (0, 0)

    init(name: String, memory: consuming MappedMemory, descriptor: Int32, hostLock: HostLock?, laneCount: Int,
                 slotCapacity: Int, workerCount: Int, rawCount: Int, hostPID: Int32, epoch: UInt64,
                 handler: HandlerKind, isPrivate: Bool = false, connection: Int32 = -1) {
        self.name = name
        self.isPrivate = isPrivate
        self.connection = connection
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
        if connection >= 0 { close(connection) }
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

    /// The worker that serves lane `index`.
    @inlinable
    func worker(forLane index: Int) -> Int { index % workerCount }

    /// The host's published state (informational: liveness is the host lock).
    public var state: HostState? { header.state }

    /// The host's last heartbeat, CLOCK_MONOTONIC nanoseconds (informational).
    public var heartbeat: UInt64 { header.heartbeat }

    func setState(_ state: HostState) { header.setState(state) }

    func beat() { header.beat(CShm_monotonic_ns()) }

    /// Why the host can no longer answer, or nil while it can.
    ///
    /// The host lives while it holds its lock on the header (``Layout/Locks/host``): the kernel
    /// vouches for that, not the header. Only once the lock is free does the state word choose
    /// between "shutting down" and "gone", so a guest that writes `stopping` fools nobody.
    /// A private region's host lives while the connection it handed the region over is open.
    /// A system call (`F_OFD_GETLK`, or a `poll` of the connection): for slow paths only.
    func hostProblem() -> HostProblem? {
        if connection >= 0 {
            // A failed poll counts as alive, like a failed lock query: never give up on a guess.
            if CShm_socket_hung_up(connection) != 1 { return nil }
        } else if !isPrivate,
                  CShm_ofd_held(descriptor, UInt64(Layout.Locks.host.start), UInt64(Layout.Locks.host.length)) != 0 {
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
        // The name's lock goes whatever happened to the region's name (someone may have removed it).
        defer { hostLock?.release() }
        let objectName = Region.objectName(for: name)
        let descriptor = CShm_shm_open(objectName, O_RDONLY | O_CLOEXEC, 0)
        guard descriptor >= 0 else { return }
        var info = stat()
        let same = (try? retryingOnInterrupt("fstat") { fstat(descriptor, &info) }) != nil
            && info.st_dev == identity.0 && info.st_ino == identity.1
        close(descriptor)
        if same { _ = CShm_shm_unlink(objectName) }
    }
}
