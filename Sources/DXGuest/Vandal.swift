import ArgumentParser
import CShm
import DXCommandLine
import DXCore
#if canImport(Glibc)
import Glibc
#endif

/// A hostile guest, for tests: it claims lanes and writes garbage into them (and flips the
/// header's magic), to show that the host survives and other guests see nothing of it.
struct Vandal: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Test tool: claim lanes and write garbage into them while honest guests run.",
        shouldDisplay: false)

    @Option(help: "Region name of the host.")
    var name: String

    @Option(help: "How many lanes to claim and vandalise.")
    var lanes: Int = 2

    @Option(help: "Seconds to keep at it.")
    var duration: Double = 2

    @Flag(help: "Also shrink the region object (ftruncate) at the end.")
    var truncate = false

    func run() throws {
        let region = try attach(name: name)
        // Write through a mapping of our own, as any process of this user could.
        let fd = open(Region.path(for: name), O_RDWR)
        guard fd >= 0 else { throw CommandFailure("cannot open the region", exit: .failure) }
        defer { close(fd) }
        var info = stat()
        fstat(fd, &info)
        let size = Int(info.st_size)
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw CommandFailure("cannot map the region", exit: .failure)
        }
        defer { munmap(base, size) }
        // Claim free lanes from the top, the way a guest does, so that honest guests keep theirs.
        var claimed: [Int] = []
        for index in stride(from: region.laneCount - 1, through: 0, by: -1) where claimed.count < lanes {
            let owner = base + Layout.headerSize + index * region.laneStride + Layout.Lane.owner
            let word = CShm_load_acquire_u64(owner)
            if word >> 32 == 0, CShm_cas_acqrel_u64(owner, word, UInt64(getpid()) << 32 | (word &+ 1) & 0xFFFF_FFFF) {
                claimed.append(index)
            }
        }
        guard !claimed.isEmpty else { throw CommandFailure("no lane to vandalise", exit: .failure) }
        var random = SystemRandomNumberGenerator()
        let end = CShm_monotonic_ns() + UInt64(duration * 1e9)
        var attacks = [String: Int]()
        let magic = CShm_load_relaxed_u64(base + Layout.Header.magic)
        while CShm_monotonic_ns() < end {
            let lane = base + Layout.headerSize + claimed.randomElement(using: &random)! * region.laneStride
            switch Int.random(in: 0..<6, using: &random) {
            case 0:
                for offset in stride(from: 0, to: Layout.Lane.payload + 64, by: 8) {
                    (lane + offset).storeBytes(of: UInt64.random(in: 0...UInt64.max, using: &random), as: UInt64.self)
                }
                attacks["random bytes", default: 0] += 1
            case 1:
                CShm_store_release_u64(lane + Layout.Lane.requestSeq, UInt64.random(in: 0...UInt64.max, using: &random))
                attacks["sequence jump", default: 0] += 1
            case 2:
                CShm_store_relaxed_u32(lane + Layout.Lane.requestLength, UInt32.random(in: UInt32(region.slotCapacity + 1)...UInt32.max, using: &random))
                CShm_store_release_u64(lane + Layout.Lane.requestSeq, CShm_load_relaxed_u64(lane + Layout.Lane.requestSeq) &+ 1)
                attacks["huge length", default: 0] += 1
            case 3:
                CShm_store_release_u64(lane + Layout.Lane.owner, UInt64(1) << 32 | UInt64.random(in: 0...0xFFFF_FFFF, using: &random))
                attacks["owner of another pid", default: 0] += 1
            case 4:
                CShm_store_relaxed_u64(base + Layout.Header.magic, ~magic)
                usleep(200)
                CShm_store_relaxed_u64(base + Layout.Header.magic, magic)
                attacks["flipped magic", default: 0] += 1
            default:
                CShm_store_relaxed_u32(lane + Layout.Lane.guestSleeping, UInt32.random(in: 0...UInt32.max, using: &random))
                attacks["sleeping flag", default: 0] += 1
            }
            usleep(100)
        }
        if truncate {
            ftruncate(fd, off_t(Layout.headerSize + 4096))
            attacks["truncated", default: 0] += 1
        }
        // The lanes are garbage now; the host reclaims them once this process is gone.
        print("lanes \(claimed): " + attacks.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
    }
}
