import ArgumentParser
import CShm
import DXCommandLine
import DXCore
#if canImport(Glibc)
import Glibc
#endif

/// What the vandal attacks.
enum VandalMode: String, ExpressibleByArgument, CaseIterable {
    /// Claims lanes the way a guest does and writes garbage into them (and flips the magic).
    case lanes
    /// Fills the whole region, every 32-bit word, with one value after another.
    case fill
    /// Writes random values at random places of the whole region, as fast as it can.
    case random
    /// Writes hostile values into every field of every block, one field at a time, with the
    /// sleeping flags set and the futex words woken.
    case fields
    /// Takes the turn of worker 0's turnstile and never passes it, renewing its lease.
    case turn
}

/// A hostile guest, for tests: it writes whatever it likes into the region (as any process of the
/// host's user may), to show that the host survives, and that honest guests' calls always end.
struct Vandal: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Test tool: write garbage into the region while honest guests run.",
        shouldDisplay: false)

    @OptionGroup var target: RegionNameOption

    @OptionGroup var owner: HostOwnerOptions

    @Option(help: "What to attack: \(VandalMode.allCases.map(\.rawValue).joined(separator: ", ")).")
    var mode: VandalMode = .lanes

    @Option(help: "How many lanes to claim and vandalise (mode lanes).")
    var lanes: Int = 2

    @Option(help: "Seconds to keep at it.")
    var duration: Double = 2

    @Flag(help: "Also shrink the region object (ftruncate) at the end.")
    var truncate = false

    func run() throws {
        let region = try attach(name: target.name, owner: owner)
        // Write through a mapping of our own, as any process of this user could.
        let fd = open(Region.path(for: target.name), O_RDWR)
        guard fd >= 0 else { throw CommandFailure("cannot open the region", exit: .failure) }
        defer { close(fd) }
        var info = stat()
        fstat(fd, &info)
        let size = Int(info.st_size)
        guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw CommandFailure("cannot map the region", exit: .failure)
        }
        defer { munmap(base, size) }
        let end = CShm_monotonic_ns() + UInt64(duration * 1e9)
        var attacks = [String: Int]()
        switch mode {
        case .lanes: try vandaliseLanes(region, base, end, &attacks)
        case .fill: fill(base, size, end, &attacks)
        case .random: scribble(base, size, end, &attacks)
        case .fields: fields(region, base, end, &attacks)
        case .turn: holdTurn(base, end, &attacks)
        }
        if truncate {
            ftruncate(fd, off_t(Layout.headerSize + 4096))
            attacks["truncated", default: 0] += 1
        }
        print("\(mode.rawValue): " + attacks.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
    }

    /// Lanes claimed for real (lock and owner word), kept until the vandal exits.
    final class Held {
        let lane: Lane
        init(_ lane: consuming Lane) { self.lane = lane }
    }

    private func vandaliseLanes(_ region: Region, _ base: UnsafeMutableRawPointer, _ end: UInt64,
                                _ attacks: inout [String: Int]) throws {
        // Claim from the top, the way a guest does, so that honest guests keep theirs.
        var held: [Held] = []
        for index in stride(from: region.laneCount - 1, through: 0, by: -1) where held.count < lanes {
            if let lane = try? region.claimLane(strategy: .lowCPU, startingAt: index), lane.index == index {
                held.append(Held(lane))
            }
        }
        guard !held.isEmpty else { throw CommandFailure("no lane to vandalise", exit: .failure) }
        var random = SystemRandomNumberGenerator()
        let magic = CShm_load_relaxed_u64(base + Layout.Header.magic)
        while CShm_monotonic_ns() < end {
            let lane = base + Layout.headerSize + held.randomElement(using: &random)!.lane.index * region.laneStride
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
    }

    /// Every 32-bit word of the region, one value after another (the values that crashed glibc's
    /// `sem_t` in layout 1 first), every millisecond.
    private func fill(_ base: UnsafeMutableRawPointer, _ size: Int, _ end: UInt64, _ attacks: inout [String: Int]) {
        let values: [UInt32] = [1, 142, 137, 0xFFFF_FFFF, 0, 0x7FFF_FFFF, 0x8000_0000, 2, 0xDEAD_BEEF]
        var random = SystemRandomNumberGenerator()
        var round = 0
        while CShm_monotonic_ns() < end {
            let value = round < values.count ? values[round] : UInt32.random(in: 0...UInt32.max, using: &random)
            round = (round + 1) % (values.count * 2)
            for offset in stride(from: 0, to: size, by: 4) { CShm_store_relaxed_u32(base + offset, value) }
            attacks["fills", default: 0] += 1
            usleep(1000)
        }
    }

    /// Random words at random offsets, with no pause: a guest that burns a CPU on it.
    private func scribble(_ base: UnsafeMutableRawPointer, _ size: Int, _ end: UInt64, _ attacks: inout [String: Int]) {
        var random = SystemRandomNumberGenerator()
        var writes = 0
        while CShm_monotonic_ns() < end {
            for _ in 0..<4096 {
                let offset = Int.random(in: 0..<(size / 8), using: &random) * 8
                CShm_store_relaxed_u64(base + offset, UInt64.random(in: 0...UInt64.max, using: &random))
            }
            writes += 4096
        }
        attacks["random writes", default: 0] = writes
    }

    /// Hostile values into every field of every block, one field at a time: the header, each
    /// doorbell and turnstile, each lane and each raw channel. A futex word is written with its
    /// sleeping flag set and then woken, so that every sleeper on it returns spuriously.
    private func fields(_ region: Region, _ base: UnsafeMutableRawPointer, _ end: UInt64, _ attacks: inout [String: Int]) {
        var fields: [(name: String, offset: Int, width: Int, flag: Int?)] = [
            ("magic", Layout.Header.magic, 8, nil), ("version", Layout.Header.version, 4, nil),
            ("header size", Layout.Header.headerSize, 4, nil), ("lane stride", Layout.Header.laneStride, 4, nil),
            ("lane count", Layout.Header.laneCount, 4, nil), ("slot capacity", Layout.Header.slotCapacity, 4, nil),
            ("worker count", Layout.Header.workerCount, 4, nil), ("region size", Layout.Header.regionSize, 8, nil),
            ("host pid", Layout.Header.hostPID, 4, nil), ("handler", Layout.Header.handler, 4, nil),
            ("host start time", Layout.Header.hostStartTime, 8, nil), ("epoch", Layout.Header.epoch, 8, nil),
            ("state", Layout.Header.state, 4, nil), ("heartbeat", Layout.Header.heartbeat, 8, nil),
            ("lanes offset", Layout.Header.lanesOffset, 8, nil), ("raw offset", Layout.Header.rawOffset, 8, nil),
            ("raw count", Layout.Header.rawCount, 4, nil),
        ]
        for worker in 0..<region.workerCount {
            let doorbell = Layout.Header.doorbells + worker * Layout.block
            fields += [("doorbell flag", doorbell + Layout.Header.doorbellSleeping, 4, nil),
                       ("doorbell word", doorbell + Layout.Header.doorbellWord, 4, doorbell + Layout.Header.doorbellSleeping),
                       ("worker cpu", doorbell + Layout.Header.doorbellWorkerCPU, 4, nil)]
            let turnstile = Layout.Header.turnstiles + worker * Layout.Header.turnstileStride
            fields += [("turn next", turnstile + Layout.Header.turnNext, 8, nil),
                       ("turn serving", turnstile + Layout.Header.turnServing, 8, nil),
                       ("turn lease", turnstile + Layout.Header.turnLease, 8, nil)]
            for slot in 0..<Layout.Header.turnWakeSlotCount {
                fields.append(("turn wake word", turnstile + Layout.Header.turnWakeSlots + 4 * slot, 4, nil))
            }
        }
        for index in 0..<region.laneCount {
            let lane = Layout.headerSize + index * region.laneStride
            fields += [("request seq", lane + Layout.Lane.requestSeq, 8, nil),
                       ("request length", lane + Layout.Lane.requestLength, 4, nil),
                       ("owner", lane + Layout.Lane.owner, 8, nil),
                       ("response seq", lane + Layout.Lane.responseSeq, 8, nil),
                       ("response length", lane + Layout.Lane.responseLength, 4, nil),
                       ("status", lane + Layout.Lane.status, 4, nil),
                       ("guest flag", lane + Layout.Lane.guestSleeping, 4, nil),
                       ("guest word", lane + Layout.Lane.guestWord, 4, lane + Layout.Lane.guestSleeping)]
            for counter in 0..<7 { fields.append(("guest counter", lane + Layout.Lane.guestCounters + 8 * counter, 8, nil)) }
        }
        for index in 0..<region.rawCount {
            let channel = Layout.headerSize + (region.laneCount + index) * region.laneStride
            fields += [("raw ping", channel + Layout.Raw.ping, 8, nil), ("raw length", channel + Layout.Raw.length, 4, nil),
                       ("raw owner", channel + Layout.Raw.owner, 8, nil), ("raw pong", channel + Layout.Raw.pong, 8, nil),
                       ("raw flag", channel + Layout.Raw.serverSleeping, 4, nil),
                       ("raw word", channel + Layout.Raw.serverWord, 4, channel + Layout.Raw.serverSleeping)]
        }
        let values: [UInt64] = [0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, .max, 0x7FFF_FFFF_FFFF_FFFF]
        var random = SystemRandomNumberGenerator()
        while CShm_monotonic_ns() < end {
            for field in fields {
                for value in values + [UInt64.random(in: 0...UInt64.max, using: &random)] {
                    if field.width == 8 {
                        CShm_store_release_u64(base + field.offset, value)
                    } else {
                        CShm_store_release_u32(base + field.offset, UInt32(truncatingIfNeeded: value))
                    }
                    if let flag = field.flag {
                        CShm_store_seqcst_u32(base + flag, 1)
                        _ = CShm_futex_wake((base + field.offset).assumingMemoryBound(to: UInt32.self), Int32.max)
                    }
                    usleep(50)
                }
                attacks[field.name, default: 0] += 1
                if CShm_monotonic_ns() >= end { break }
            }
        }
    }

    /// Takes a ticket at worker 0's turnstile, makes it the one served, and renews its lease every
    /// millisecond without ever passing: every honest guest that waits for a turn there must fail
    /// its call at its timeout.
    private func holdTurn(_ base: UnsafeMutableRawPointer, _ end: UInt64, _ attacks: inout [String: Int]) {
        let turnstile = base + Layout.Header.turnstiles
        let ticket = CShm_fetch_add_seqcst_u64(turnstile + Layout.Header.turnNext, 1)
        CShm_store_seqcst_u64(turnstile + Layout.Header.turnServing, ticket)
        print("holding the turn")
        fflush(nil)
        while CShm_monotonic_ns() < end {
            CShm_store_seqcst_u64(turnstile + Layout.Header.turnServing, ticket)
            CShm_store_relaxed_u64(turnstile + Layout.Header.turnLease, CShm_monotonic_ns())
            attacks["lease renewals", default: 0] += 1
            usleep(1000)
        }
    }
}
