#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import Synchronization

/// One thread of a private host's serving pool: it serves the private regions assigned to it,
/// however many, without a thread per guest or per lane.
///
/// Only *active* regions are polled: a region becomes active when its guest rings (or when it is
/// added), and inactive again after it had no request for the spin budget. An inactive region
/// costs nothing: its doorbell's parker is armed (flag 1, word 0) and an io_uring
/// `IORING_OP_FUTEX_WAIT` waits on its word (one request per region: no 128-word limit, and the
/// kernel needs no helper thread for it). A guest that publishes a request sees the flag and
/// posts the word (``Parker``), which completes the wait; the worker reads completions from the
/// ring's memory between polls, and blocks in the ring only when no region is active. Regions
/// are added and removed through a mailbox whose host-private futex word is waited on in the
/// same ring.
///
/// Everything a guest can write (its lanes, its doorbell) is as untrusted here as in ``Worker``:
/// a guest that posts its doorbell without requests buys itself polls of its own lanes for one
/// spin budget per post, and a guest that clears its flag only stops its own wake-ups.
final class PoolWorker<Handler: RequestHandler>: @unchecked Sendable {
    /// A region this worker serves.
    final class Entry: @unchecked Sendable {  // handed to the worker once, then used only there
        let id: Int
        let served: ServedLanes
        let doorbell: DoorbellView
        /// Rounds since one of its lanes last had a request.
        var idleRounds: UInt32 = 0
        /// Whether a futex wait on its doorbell is in the ring (the region is inactive).
        var armed = false
        /// Whether it is in the active list.
        var active = false

        init(id: Int, served: consuming ServedLanes) {
            self.id = id
            self.doorbell = served.region.doorbell(0)
            self.served = served
        }
    }

    enum Command: Sendable {
        case add(Entry)
        case remove(id: Int)
    }

    let index: Int
    let handler: Handler
    let policies: SpinPolicyCell
    let stop: StopFlag
    let counting: Bool
    private let counters: UnsafeMutableRawPointer
    private let ring: OpaquePointer
    /// Commands from the control thread, and the host-private futex word that announces them.
    private let commands = Mutex<[Command]>([])
    private let mailboxWord: UnsafeMutablePointer<UInt32>
    private var mailboxArmed = false
    private var entries: [Int: Entry] = [:]
    private var active: [Entry] = []

    /// Regions assigned to this worker (read by the host to balance the pool).
    let load = Atomic<Int>(0)

    private static var mailboxData: UInt64 { 1 << 63 }
    private static var cancelData: UInt64 { 1 << 62 }

    init(index: Int, handler: Handler, policies: SpinPolicyCell, stop: StopFlag, counters: UnsafeMutableRawPointer,
         counting: Bool, ringEntries: UInt32) throws(SystemError) {
        self.index = index
        self.handler = handler
        self.policies = policies
        self.stop = stop
        self.counters = counters
        self.counting = counting
        var ring: OpaquePointer?
        let rc = CShm_ring_create(ringEntries, &ring)
        guard rc == 0, let ring else { throw SystemError("io_uring_queue_init", errno: rc) }
        guard CShm_ring_has_futex(ring) else {
            CShm_ring_destroy(ring)
            throw SystemError("io_uring futex waits (Linux 6.7 or later)", errno: ENOSYS)
        }
        self.ring = ring
        mailboxWord = .allocate(capacity: 1)
        mailboxWord.initialize(to: 0)
    }

    deinit {
        CShm_ring_destroy(ring)
        mailboxWord.deallocate()
    }

    /// From any thread: hands the worker a command and wakes it.
    func send(_ command: Command) {
        commands.withLock { $0.append(command) }
        wake()
    }

    /// From any thread: wakes the worker if it sleeps (for a command, or to stop).
    func wake() {
        CShm_store_release_u32(UnsafeMutableRawPointer(mailboxWord), 1)
        _ = CShm_futex_wake_private(mailboxWord, 1)
    }

    /// Serves until the stop flag is set.
    func run() {
        var version = policies.version
        var policy = policies.load()
        var spin = AdaptiveSpin(policy)
        var idle = SpinWait(budget: .max, policy: policy)
        var rounds: UInt32 = 0
        while true {
            if CShm_load_acquire_u32(UnsafeMutableRawPointer(mailboxWord)) != 0 { takeCommands() }
            var servedAny = false
            var position = 0
            while position < active.count {
                let entry = active[position]
                var servedHere = false
                for slot in 0..<entry.served.count {
                    if let seq = entry.served.pending(slot) {
                        entry.served.serve(slot: slot, seq: seq, handler: handler, counting: counting)
                        servedHere = true
                    }
                }
                if servedHere {
                    if entry.idleRounds != 0 {
                        spin.spinSucceeded()
                        if counting { bump(counters + HostCounters.Worker.spinWins) }
                    }
                    entry.idleRounds = 0
                    servedAny = true
                } else {
                    entry.idleRounds &+= 1
                    if entry.idleRounds >= spin.budget, deactivate(entry) {
                        spin.hadToSleep()
                        // Swap-remove: order among active regions does not matter.
                        active[position] = active[active.count - 1]
                        active.removeLast()
                        continue
                    }
                }
                position += 1
            }
            rounds &+= 1
            if rounds & 0xF == 0 || active.isEmpty { reapCompletions() }
            if rounds & 0x3FF == 0 {
                if stop.isSet { return }
                publishCPU()
                if policies.version != version {
                    version = policies.version
                    policy = policies.load()
                    spin = AdaptiveSpin(policy)
                    idle = SpinWait(budget: .max, policy: policy)
                }
            }
            if servedAny {
                idle.reset()
                continue
            }
            if !active.isEmpty {
                if idle.step() == .yielded, counting { bump(counters + HostCounters.Worker.yields) }
                continue
            }
            // Nothing active: sleep in the ring until a doorbell or the mailbox is posted.
            if stop.isSet { return }
            armMailbox()
            if CShm_load_acquire_u32(UnsafeMutableRawPointer(mailboxWord)) != 0 { continue }
            if counting { bump(counters + HostCounters.Worker.sleeps) }
            _ = CShm_ring_submit_and_wait(ring, policy.sleepTimeoutNanoseconds)
            if stop.isSet { return }
            reapCompletions()
            idle.reset()
        }
    }

    /// The CPU this worker ran on at its last look, published into active regions' doorbells for
    /// guests that keep off it (``TurnPolicy/avoidWorkerCPU``).
    private var cpu: Int32 = -1

    private func publishCPU() {
        let now = CShm_current_cpu()
        let changed = now != cpu
        cpu = now
        for entry in active where changed || entry.doorbell.workerCPU != UInt32(bitPattern: now) {
            // Relaxed: a hint; a stale value costs a guest one more check.
            entry.doorbell.workerCPU = UInt32(bitPattern: now)
        }
    }

    /// Takes the control thread's commands.
    private func takeCommands() {
        CShm_store_relaxed_u32(UnsafeMutableRawPointer(mailboxWord), 0)
        let taken = commands.withLock { commands in
            defer { commands.removeAll() }
            return commands
        }
        for command in taken {
            switch command {
            case .add(let entry):
                entries[entry.id] = entry
                activate(entry)
            case .remove(let id):
                guard let entry = entries.removeValue(forKey: id) else { continue }
                if entry.armed {
                    // The wait goes before the mapping can: its completion (-ECANCELED) is ignored.
                    _ = CShm_ring_cancel(ring, Self.userData(entry), Self.cancelData)
                    _ = CShm_ring_submit(ring)
                }
                if entry.active, let position = active.firstIndex(where: { $0 === entry }) {
                    active[position] = active[active.count - 1]
                    active.removeLast()
                }
                load.subtract(1, ordering: .relaxed)
            }
        }
    }

    private static func userData(_ entry: Entry) -> UInt64 { UInt64(entry.id) }

    /// Makes a region polled again (its guest rang, or it is new).
    private func activate(_ entry: Entry) {
        entry.armed = false
        entry.doorbell.parker.disarm()
        entry.idleRounds = 0
        entry.doorbell.workerCPU = UInt32(bitPattern: cpu)
        if !entry.active {
            entry.active = true
            active.append(entry)
        }
    }

    /// Arms the region's doorbell and queues a futex wait on it, unless a request came meanwhile.
    /// Returns whether the region is inactive now.
    private func deactivate(_ entry: Entry) -> Bool {
        let parker = entry.doorbell.parker
        parker.arm()
        if entry.served.anyPendingSeqCst() {
            parker.disarm()
            entry.idleRounds = 0
            return false
        }
        guard CShm_ring_futex_wait(ring, parker.word.assumingMemoryBound(to: UInt32.self), 0, true,
                                   Self.userData(entry)) == 0 else {
            parker.disarm()  // the ring is full: keep polling it
            return false
        }
        entry.armed = true
        entry.active = false
        return true
    }

    private func armMailbox() {
        guard !mailboxArmed else { return }
        if CShm_ring_futex_wait(ring, mailboxWord, 0, false, Self.mailboxData) == 0 { mailboxArmed = true }
    }

    /// Reads every completion in the ring (no system call): posted doorbells make their regions
    /// active.
    private func reapCompletions() {
        var data: UInt64 = 0, result: Int32 = 0, flags: UInt32 = 0
        while CShm_ring_next(ring, &data, &result, &flags) {
            if data == Self.mailboxData {
                mailboxArmed = false
                continue
            }
            if data == Self.cancelData || result == -ECANCELED { continue }
            // Woken (0), or the word was not 0 any more (-EAGAIN: a post came first), or the
            // kernel refused the wait: serve the region until it idles again.
            guard let entry = entries[Int(truncatingIfNeeded: data)], entry.armed else { continue }
            activate(entry)
        }
    }
}
