#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import Synchronization

/// One thread of a private host's serving pool: it serves the private regions assigned to it,
/// however many, without a thread per guest or per lane, and grants its attention to one region at
/// a time (docs/LAYOUT.md, "Granted turns").
///
/// Each region is in one of three states:
/// - **granted** (at most one): the worker polls its lanes, and its grant word says 1, so its
///   guest's threads call;
/// - **queued**: it wants the grant (a request waits, or a guest thread said it wants one); the
///   worker does not poll it, and its guest's threads sleep on the grant word;
/// - **armed**: idle. Its doorbell's parker is armed (flag 1, word 0) and an io_uring
///   `IORING_OP_FUTEX_WAIT` waits on its word (one request per region: no 128-word limit, and the
///   kernel needs no helper thread). A guest that wants service posts the word (``Parker``),
///   which completes the wait: the region is queued.
///
/// The grant passes to the next queued region when the granted one has held it for the grant
/// quantum while others wait, or when it has been idle for the spin budget and then, if others
/// wait, for a quarter quantum (at most 1 ms): its guest's threads may be passing their turn. A
/// region granted that has not called yet keeps the grant for its quantum (its guest's thread may
/// be slow to wake). The worker reads completions from the ring's memory
/// between polls, and blocks in the ring only when no region is granted or queued. Regions are
/// added and removed through a mailbox whose host-private futex word is waited on in the same ring.
///
/// Everything a guest can write (its lanes, its doorbell, its want word) is as untrusted here as
/// in ``Worker``: a guest gets service only while its region holds the grant, so ignoring the
/// grant word buys it nothing; ringing without requests buys it its share of grants and one spin
/// budget of polls of its own lanes each time; clearing its flag only stops its own service.
final class PoolWorker<Handler: RequestHandler>: @unchecked Sendable {
    /// A region this worker serves.
    final class Entry: @unchecked Sendable {  // handed to the worker once, then used only there
        enum State { case granted, queued, armed }
        let id: Int
        let served: ServedLanes
        let doorbell: DoorbellView
        let grant: GrantView
        var state = State.queued
        /// The grant counter as the host last stored it (host memory: the word is the guest's
        /// to scribble on), odd while granted.
        var grantCounter: UInt32 = 0

        /// Advances the grant counter to the next odd (granted) or even value and stores it.
        func advanceGrant(to granted: Bool) {
            grantCounter &+= 1
            if (grantCounter & 1 == 1) != granted { grantCounter &+= 1 }
            grant.set(grantCounter)
        }

        init(id: Int, served: consuming ServedLanes) {
            self.id = id
            self.doorbell = served.region.doorbell(0)
            self.grant = served.region.grant
            self.served = served
        }

        /// Whether the region wants the grant: a request waits, or a guest thread said it wants
        /// one (seq-cst loads: the re-check after arming the doorbell).
        var wantsGrant: Bool { served.anyPendingSeqCst() || grant.wants }
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
    /// How long a grant lasts while other regions wait.
    let grantQuantum: UInt64
    private let counters: UnsafeMutableRawPointer
    private let ring: OpaquePointer
    /// Commands from the control thread, and the host-private futex word that announces them.
    private let commands = Mutex<[Command]>([])
    private let mailboxWord: UnsafeMutablePointer<UInt32>
    private var mailboxArmed = false
    private var entries: [Int: Entry] = [:]
    /// The granted region, unretained: `entries` holds every region the worker serves (the
    /// granted one included, until `takeCommands` removes it and clears this first). A class
    /// reference here cost a retain and a release in every round of the serving loop.
    private var grantedHandle: Unmanaged<Entry>?
    /// The granted region, for the loop's slower paths (a retained reference).
    private var granted: Entry? { grantedHandle?.takeUnretainedValue() }
    /// Queued regions, first come first granted (`queueHead` is the next one; slots before it
    /// are nil, so that a region that left holds no memory here).
    private var queue: [Entry?] = []
    private var queueHead = 0
    private var grantStart: UInt64 = 0
    private var idleRounds: UInt32 = 0
    /// Whether the granted region has had a request answered in this grant.
    private var servedInGrant = false
    /// When the granted region went idle for the spin budget (0: it is not).
    private var idleSince: UInt64 = 0
    /// How long the granted region may sit idle while others wait before it loses the grant:
    /// long enough for its guest to pass a turn between its threads, or to wake.
    private var idleAllowance: UInt64 { min(grantQuantum / 4, 1_000_000) }

    /// Regions assigned to this worker (read by the host to balance the pool).
    let load = Atomic<Int>(0)

    private static var mailboxData: UInt64 { 1 << 63 }
    private static var cancelData: UInt64 { 1 << 62 }

    init(index: Int, handler: Handler, policies: SpinPolicyCell, stop: StopFlag, counters: UnsafeMutableRawPointer,
         counting: Bool, grantQuantum: UInt64, ringEntries: UInt32) throws(SystemError) {
        self.index = index
        self.handler = handler
        self.policies = policies
        self.stop = stop
        self.counters = counters
        self.counting = counting
        self.grantQuantum = grantQuantum
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

    private var queuedCount: Int { queue.count - queueHead }

    /// Serves until the stop flag is set.
    func run() {
        var version = policies.version
        var policy = policies.load()
        var spin = AdaptiveSpin(policy)
        var idle = SpinWait(budget: .max, policy: policy)
        var rounds: UInt32 = 0
        cpu = CShm_current_cpu()
        while true {
            if CShm_load_acquire_u32(UnsafeMutableRawPointer(mailboxWord)) != 0 { takeCommands() }
            var servedAny = false
            if let handle = grantedHandle {
                // Borrowed, not retained: `entries` keeps the region alive (see `grantedHandle`).
                servedAny = handle._withUnsafeGuaranteedRef { serveAll($0) }
                if servedAny {
                    if idleRounds != 0 {
                        spin.spinSucceeded()
                        if counting { bump(counters + HostCounters.Worker.spinWins) }
                    }
                    idleRounds = 0
                    servedInGrant = true
                } else {
                    idleRounds &+= 1
                }
            }
            rounds &+= 1
            if rounds & 0xF == 0 || grantedHandle == nil { reapCompletions() }
            if grantedHandle != nil, rounds & 0x3F == 0 || idleRounds >= spin.budget, let entry = granted {
                let now = CShm_monotonic_ns()
                if servedAny || idleRounds < spin.budget { idleSince = 0 } else if idleSince == 0 { idleSince = now }
                if queuedCount > 0, now &- grantStart >= grantQuantum {
                    release(entry)  // its quantum is up and others wait
                } else if idleRounds >= spin.budget,
                          queuedCount == 0 || (servedInGrant ? now &- idleSince >= idleAllowance : now &- grantStart >= grantQuantum) {
                    // Idle for the spin budget with nobody else waiting: arm it, so the worker can
                    // sleep. With others waiting, only after the idle allowance: a guest passing its
                    // turn between its threads (a futex wake) must not lose its grant for it; and a
                    // guest that has not called yet keeps it for its quantum (its thread may be slow
                    // to wake on a loaded machine).
                    if release(entry) == .armed { spin.hadToSleep() }
                    idleRounds = 0
                    idleSince = 0
                }
            }
            if grantedHandle == nil, queuedCount > 0 { grantNext() }
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
            if grantedHandle != nil {
                if idle.step() == .yielded, counting { bump(counters + HostCounters.Worker.yields) }
                continue
            }
            // Nothing granted or queued: sleep in the ring until a doorbell or the mailbox is posted.
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

    /// Answers every waiting request of the granted region; returns whether there was one.
    @inline(__always)
    private func serveAll(_ entry: Entry) -> Bool {
        var served = false
        for slot in 0..<entry.served.count {
            if let seq = entry.served.pending(slot) {
                entry.served.serve(slot: slot, seq: seq, handler: handler, counting: counting)
                served = true
            }
        }
        return served
    }

    /// The CPU this worker ran on at its last look, published into the granted region's doorbell
    /// for guests that keep off it (``TurnPolicy/avoidWorkerCPU``).
    private var cpu: Int32 = -1

    private func publishCPU() {
        cpu = CShm_current_cpu()
        // Relaxed: a hint; a stale value costs a guest one more check.
        granted?.doorbell.workerCPU = UInt32(bitPattern: cpu)
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
                // Armed, not queued: its guest's first call asks for the grant (rings), so a guest
                // that connects and never calls, or reconnects over and over, costs no grant.
                entries[entry.id] = entry
                // Its guest's threads keep off this CPU from their first wait on.
                entry.doorbell.workerCPU = UInt32(bitPattern: cpu)
                if !arm(entry) { enqueue(entry) }
            case .remove(let id):
                guard let entry = entries.removeValue(forKey: id) else { continue }
                switch entry.state {
                case .granted:
                    grantedHandle = nil
                case .queued:
                    if let position = queue[queueHead...].firstIndex(where: { $0 === entry }) { queue.remove(at: position) }
                case .armed:
                    // The wait goes before the mapping can: its completion (-ECANCELED) is ignored.
                    _ = CShm_ring_cancel(ring, UInt64(entry.id), Self.cancelData)
                    _ = CShm_ring_submit(ring)
                }
                load.subtract(1, ordering: .relaxed)
            }
        }
    }

    /// Puts a region at the end of the queue for the grant.
    private func enqueue(_ entry: Entry) {
        entry.state = .queued
        // Its guests need not ring while it waits: the worker knows.
        entry.doorbell.parker.disarm()
        if queueHead > 0, queueHead * 2 >= queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        queue.append(entry)
    }

    /// Gives the grant to the first queued region and wakes its guest's waiting threads.
    private func grantNext() {
        let next = queue[queueHead]
        queue[queueHead] = nil
        queueHead += 1
        guard let entry = next else { return }
        entry.state = .granted
        grantedHandle = Unmanaged.passUnretained(entry)
        grantStart = CShm_monotonic_ns()
        idleRounds = 0
        idleSince = 0
        servedInGrant = false
        // How long the regions queued now wait for their next grant, at most.
        entry.grant.cycle = UInt64(queuedCount + 1) &* grantQuantum
        entry.doorbell.workerCPU = UInt32(bitPattern: cpu)
        // Only a want stored after this grant counts when it ends: a guest that leaves its want set
        // and never calls gets one grant per ring.
        entry.grant.clearWant()
        entry.advanceGrant(to: true)
    }

    /// Ends the granted region's grant: back to the queue when it still wants one (a request
    /// waits, or a want stored since the grant), else armed. A region that leaves its want word
    /// set and never calls is armed after one grant (the grant cleared its want), and must ring
    /// again to be queued, so it cannot keep a worker granting it for nothing.
    @discardableResult
    private func release(_ entry: Entry) -> Entry.State {
        entry.advanceGrant(to: false)
        // One last pass after the revoke: a request its guest published while the grant held
        // is answered now, not a whole grant cycle later (its thread would spin for it meanwhile,
        // on the CPU the next region's thread needs). A request published after this pass was
        // published after the guest's check of the grant; it waits for the next grant.
        _ = serveAll(entry)
        grantedHandle = nil
        if !entry.wantsGrant, arm(entry) { return .armed }
        enqueue(entry)
        return .queued
    }

    /// Arms the region's doorbell and queues a futex wait on it, unless it wants the grant after
    /// all (a request or a want that came meanwhile). Returns whether it is armed.
    private func arm(_ entry: Entry) -> Bool {
        let parker = entry.doorbell.parker
        parker.arm()
        if entry.wantsGrant {
            parker.disarm()
            return false
        }
        guard CShm_ring_futex_wait(ring, parker.word.assumingMemoryBound(to: UInt32.self), 0, true,
                                   UInt64(entry.id)) == 0 else {
            parker.disarm()  // the ring is full: keep it queued
            return false
        }
        // Submitted now, not at the worker's next sleep: while the worker serves others, the wait
        // must already be in the kernel for the guest's post to complete it.
        _ = CShm_ring_submit(ring)
        entry.state = .armed
        return true
    }

    private func armMailbox() {
        guard !mailboxArmed else { return }
        if CShm_ring_futex_wait(ring, mailboxWord, 0, false, Self.mailboxData) == 0 { mailboxArmed = true }
    }

    /// Reads every completion in the ring (no system call): posted doorbells queue their regions.
    private func reapCompletions() {
        var data: UInt64 = 0, result: Int32 = 0, flags: UInt32 = 0
        while CShm_ring_next(ring, &data, &result, &flags) {
            if data == Self.mailboxData {
                mailboxArmed = false
                continue
            }
            if data == Self.cancelData || result == -ECANCELED { continue }
            // Woken (0), or the word was not 0 any more (-EAGAIN: a post came first), or the
            // kernel refused the wait: the region wants service.
            guard let entry = entries[Int(truncatingIfNeeded: data)], entry.state == .armed else { continue }
            enqueue(entry)
        }
    }
}
