#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

extension Region {
    /// Creates a private region for one guest (host side of `dx-host --private`): an anonymous
    /// object (`memfd_create`, mode 0600) of exactly the layout's size, sealed against shrinking
    /// and growing (`F_SEAL_SHRINK | F_SEAL_GROW`, then `F_SEAL_SEAL`), so that no guest can ever
    /// make the host fault on it. It has no name, no lock file and no header lock: the host hands
    /// its descriptor over the guest's connection, and the connection is each side's liveness.
    /// One doorbell: a pool worker serves all its lanes.
    /// The host grants turns in it (docs/LAYOUT.md, "Granted turns"), each grant lasting
    /// `grantQuantumNanoseconds` while other regions wait.
    package static func createPrivate(label: String, configuration: RegionConfiguration,
                                      grantQuantumNanoseconds: UInt64) throws(RegionCreateError) -> Region {
        try configuration.validate()
        let size = Layout.regionSize(laneCount: configuration.laneCount, slotCapacity: configuration.slotCapacity,
                                     rawCount: 0)
        let descriptor = CShm_memfd_sealed("dx-private", UInt64(size))
        guard descriptor >= 0 else { throw .system(SystemError("memfd_create", errno: -descriptor)) }
        do throws(SystemError) {
            let memory = try MappedMemory(descriptor: descriptor, size: size)
            let pid = getpid()
            let epoch = CShm_monotonic_ns() ^ (UInt64(UInt32(bitPattern: pid)) << 40)
            let region = Region(name: label, memory: memory, descriptor: descriptor, hostLock: nil,
                                laneCount: configuration.laneCount, slotCapacity: configuration.slotCapacity,
                                workerCount: 1, rawCount: 0, hostPID: pid, epoch: epoch,
                                handler: configuration.handler, isPrivate: true)
            // Before the header is published: guests read these once, at claim.
            region.grant.grants = true
            region.grant.quantum = grantQuantumNanoseconds
            region.initialize(regionSize: size)
            return region
        } catch {
            close(descriptor)
            throw .system(error)
        }
    }
}
