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
    /// Claims lanes and writes huge, decreasing and random values into every lane's guest
    /// counters (which the host passes to swift-metrics).
    case counters
    /// A private region: says it wants the grant (want word 1) and rings the doorbell once, then
    /// never calls, and stays connected for the duration.
    case want
    /// Claims raw channel 0 for real (lock and owner word) and posts its server's parker every
    /// 50 ms without ever pinging.
    case rawPosts = "raw-posts"
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

    @Option(help: "How many lanes to claim and vandalise (modes lanes and counters).")
    var lanes: Int = 2

    @Option(help: "Seconds to keep at it.")
    var duration: Double = 2

    @Flag(help: "Also shrink the region object (ftruncate) at the end.")
    var truncate = false

    func run() throws {
        let region = try attach(name: target.name, owner: owner, lanes: 8)
        // Write through a mapping of our own, as any process of this user could (of a private
        // region, only its guest can: through the descriptor the host handed over).
        let fd = region.isPrivate ? dup(region.descriptor) : open(Region.path(for: target.name), O_RDWR)
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
        case .counters: try counters(region, base, end, &attacks)
        case .want: wantAndSleep(region, base, end, &attacks)
        case .fill: fill(base, size, end, &attacks)
        case .random: scribble(base, size, end, &attacks)
        case .fields: fields(region, base, end, &attacks)
        case .turn: holdTurn(region, base, end, &attacks)
        case .rawPosts: try postRaw(region, end, &attacks)
        }
        if truncate {
            attacks[ftruncate(fd, off_t(size / 2)) == 0 ? "truncated" : "truncate refused", default: 0] += 1
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
        let held = try claimFromTop(region)
        let fields = Layout.fields(laneCount: region.laneCount, workerCount: region.workerCount,
                                   rawCount: region.rawCount, slotCapacity: region.slotCapacity)
        let magic = fields.first { $0.name == "magic" }!
        let magicValue = load(base, magic)
        var random = SystemRandomNumberGenerator()
        while CShm_monotonic_ns() < end {
            let index = held.randomElement(using: &random)!.lane.index
            func field(_ name: String) -> Layout.Field { fields.first { $0.name == name && $0.index == index }! }
            switch Int.random(in: 0..<6, using: &random) {
            case 0:
                for field in fields where field.index == index && !field.name.hasPrefix("raw") {
                    store(base, field, .random(in: 0...UInt64.max, using: &random))
                }
                let payload = Layout.payload(lane: index, slotCapacity: region.slotCapacity)
                for offset in stride(from: payload.lowerBound, to: min(payload.upperBound, payload.lowerBound + 64), by: 8) {
                    CShm_store_relaxed_u64(base + offset, .random(in: 0...UInt64.max, using: &random))
                }
                attacks["random bytes", default: 0] += 1
            case 1:
                store(base, field("request seq"), .random(in: 0...UInt64.max, using: &random))
                attacks["sequence jump", default: 0] += 1
            case 2:
                store(base, field("request length"), UInt64(UInt32.random(in: UInt32(region.slotCapacity + 1)...UInt32.max, using: &random)))
                store(base, field("request seq"), load(base, field("request seq")) &+ 1)
                attacks["huge length", default: 0] += 1
            case 3:
                store(base, field("owner"), UInt64(1) << 32 | UInt64.random(in: 0...0xFFFF_FFFF, using: &random))
                attacks["owner of another pid", default: 0] += 1
            case 4:
                store(base, magic, ~magicValue)
                usleep(200)
                store(base, magic, magicValue)
                attacks["flipped magic", default: 0] += 1
            default:
                store(base, field("guest flag"), UInt64(UInt32.random(in: 0...UInt32.max, using: &random)))
                attacks["sleeping flag", default: 0] += 1
            }
            usleep(100)
        }
    }

    /// Claims `lanes` lanes from the top, the way a guest does, so that honest guests keep theirs.
    private func claimFromTop(_ region: Region) throws -> [Held] {
        var held: [Held] = []
        for index in stride(from: region.laneCount - 1, through: 0, by: -1) where held.count < lanes {
            if let lane = try? region.claimLane(strategy: .lowCPU, startingAt: index), lane.index == index {
                held.append(Held(lane))
            }
        }
        guard !held.isEmpty else { throw CommandFailure("no lane to vandalise", exit: .failure) }
        return held
    }

    /// Guest counters: every lane's, while holding some lanes so that the host keeps series for them.
    /// Each round writes one kind of value into all of them: the largest, just past `Int64.max`,
    /// `Int64.max`, zero, a value lower than the last, or noise.
    private func wantAndSleep(_ region: Region, _ base: UnsafeMutableRawPointer, _ end: UInt64,
                              _ attacks: inout [String: Int]) {
        CShm_store_seqcst_u32(base + Layout.Header.grantWant, 1)
        // Post the doorbell the way a guest does: flag 1 → 0, word 1, wake.
        let flag = base + Layout.Header.doorbells + Layout.Header.doorbellSleeping
        let word = base + Layout.Header.doorbells + Layout.Header.doorbellWord
        if CShm_cas_acqrel_u32(flag, 1, 0) {
            CShm_store_release_u32(word, 1)
            _ = CShm_futex_wake(word.assumingMemoryBound(to: UInt32.self), 1)
        }
        attacks["want without calls", default: 0] += 1
        let now = CShm_monotonic_ns()
        if end > now { CShm_sleep_ns(end - now) }
    }

    private func counters(_ region: Region, _ base: UnsafeMutableRawPointer, _ end: UInt64,
                          _ attacks: inout [String: Int]) throws {
        let held = try claimFromTop(region)
        defer { withExtendedLifetime(held) {} }  // the claims last until the vandal is done
        let counters = Layout.fields(laneCount: region.laneCount, workerCount: region.workerCount,
                                     rawCount: region.rawCount, slotCapacity: region.slotCapacity)
            .filter { $0.name == "guest counter" }
        var random = SystemRandomNumberGenerator()
        let kinds = ["UInt64.max", "Int64.max + 1", "Int64.max", "zero", "decreasing", "random"]
        var descending = UInt64.max
        var round = 0
        while CShm_monotonic_ns() < end {
            let kind = round % kinds.count
            if kind == 4 { descending /= 2 }
            for field in counters {
                let value: UInt64 = switch kind {
                case 0: .max
                case 1: UInt64(Int64.max) + 1
                case 2: UInt64(Int64.max)
                case 3: 0
                case 4: descending
                default: .random(in: 0...UInt64.max, using: &random)
                }
                store(base, field, value)
            }
            attacks[kinds[kind], default: 0] += 1
            round += 1
            usleep(500)
        }
    }

    /// A release store of a field's width.
    private func store(_ base: UnsafeMutableRawPointer, _ field: Layout.Field, _ value: UInt64) {
        if field.width == 8 {
            CShm_store_release_u64(base + field.offset, value)
        } else {
            CShm_store_release_u32(base + field.offset, UInt32(truncatingIfNeeded: value))
        }
    }

    private func load(_ base: UnsafeMutableRawPointer, _ field: Layout.Field) -> UInt64 {
        field.width == 8 ? CShm_load_relaxed_u64(base + field.offset) : UInt64(CShm_load_relaxed_u32(base + field.offset))
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
        let fields = Layout.fields(laneCount: region.laneCount, workerCount: region.workerCount,
                                   rawCount: region.rawCount, slotCapacity: region.slotCapacity)
        let values: [UInt64] = [0, 1, 2, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, .max, 0x7FFF_FFFF_FFFF_FFFF]
        var random = SystemRandomNumberGenerator()
        while CShm_monotonic_ns() < end {
            for field in fields {
                for value in values + [UInt64.random(in: 0...UInt64.max, using: &random)] {
                    store(base, field, value)
                    if let flag = field.parkerFlag {
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
    private func holdTurn(_ region: Region, _ base: UnsafeMutableRawPointer, _ end: UInt64, _ attacks: inout [String: Int]) {
        let fields = Layout.fields(laneCount: region.laneCount, workerCount: region.workerCount,
                                   rawCount: region.rawCount, slotCapacity: region.slotCapacity)
        func field(_ name: String) -> Layout.Field { fields.first { $0.name == name && $0.index == 0 }! }
        let next = field("turn next"), serving = field("turn serving"), lease = field("turn lease")
        let ticket = CShm_fetch_add_seqcst_u64(base + next.offset, 1)
        CShm_store_seqcst_u64(base + serving.offset, ticket)
        print("holding the turn")
        fflush(nil)
        while CShm_monotonic_ns() < end {
            CShm_store_seqcst_u64(base + serving.offset, ticket)
            CShm_store_relaxed_u64(base + lease.offset, CShm_monotonic_ns())
            attacks["lease renewals", default: 0] += 1
            usleep(1000)
        }
    }

    private func postRaw(_ region: Region, _ end: UInt64, _ attacks: inout [String: Int]) throws {
        guard let channel = try region.claimRawChannel(0) else {
            throw CommandFailure("raw channel 0 is not available (start the host with --raw)", exit: .failure)
        }
        print("posting")
        fflush(nil)
        while CShm_monotonic_ns() < end {
            channel.postServer()
            attacks["posts", default: 0] += 1
            usleep(50_000)
        }
    }
}
