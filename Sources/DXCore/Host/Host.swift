#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import CoreMetrics
import Logging
import Synchronization

/// The host side: it owns a region, serves its lanes with worker threads, answers the raw
/// baseline, and keeps the heartbeat that tells guests it lives.
///
/// ```swift
/// let host = try Host(name: "demo", configuration: RegionConfiguration(laneCount: 8))
/// try host.start(handler: EchoHandler())
/// // … until shutdown:
/// host.stop()
/// ```
///
/// - Important: `start` and `stop` may be called from any thread, once each. `stop` wakes every
///   sleeping guest (their calls fail with ``CallError/shutdown``) and removes the region's name.
public final class Host: ControlTarget, @unchecked Sendable {
    /// The region this host serves.
    public let region: Region
    /// The serving workers' spin policy; ``setSpinPolicy(_:)`` changes it while they run.
    public var spinPolicy: SpinPolicy { policies.load() }
    private let policies: SpinPolicyCell
    private let logger: Logger
    private let stopFlag = StopFlag()
    private var threads: [Thread] = []
    private var stopped = false
    private let shutdownRequests: ShutdownRequests

    /// CPUs to pin the serving workers to (worker w on `workerCPUs[w % count]`); empty leaves
    /// them to the scheduler (the default). Set it before ``start(handler:)``. See ``CPUAffinity``.
    public var workerCPUs: [Int] = []
    /// Whether workers update their counters (on unless measuring their cost).
    public let counting: Bool
    private let counters: HostCounters
    private let metrics: HostMetrics

    /// Creates the region (see ``Region/create(name:configuration:)``). Nothing is served until
    /// ``start(handler:)``. `logger` receives the host's few lifecycle messages (never one per call).
    /// The host's metrics go to the swift-metrics factory in use now (`MetricsSystem.factory`):
    /// bootstrap a backend before creating the host, or get swift-metrics' no-op one (see
    /// <doc:CollectingMetrics>).
    public init(name: String, configuration: RegionConfiguration, spinPolicy: SpinPolicy = WaitStrategy.auto.spinPolicy,
                counting: Bool = true, logger: Logger = Logger(label: "dx.host")) throws(RegionCreateError) {
        do { try spinPolicy.validate() } catch { throw .invalidConfiguration(error.description) }
        self.region = try Region.create(name: name, configuration: configuration)
        self.policies = SpinPolicyCell(spinPolicy)
        self.counting = counting
        self.counters = HostCounters(laneCount: region.laneCount, workerCount: region.workerCount)
        self.metrics = HostMetrics(region: name, laneCount: region.laneCount, workerCount: region.workerCount,
                                   factory: MetricsSystem.factory)
        self.logger = logger
        self.shutdownRequests = ShutdownRequests(logger: logger)
    }

    /// Starts the serving workers, the raw baseline servers and the heartbeat thread. `handler`
    /// answers each request in place, on the serving thread (the fast path).
    public func start<Handler: RequestHandler>(handler: Handler) throws(SystemError) {
        let region = region, policies = policies, stop = stopFlag, counting = counting, counters = counters
        try startThreads { index in
            let worker = Worker(region: region, index: index, handler: handler, policies: policies,
                                stop: stop, counters: counters, counting: counting)
            return { worker.run() }
        }
    }

    /// Starts serving with an async handler: each request is handed to a task, and the serving
    /// workers go on serving the other lanes meanwhile (see ``AsyncRequestHandler``).
    ///
    /// At most `maxTasksInFlight` tasks run at once (default: the lane count, i.e. one per lane,
    /// which is no limit beyond the lanes themselves). The limit is shared evenly among the
    /// serving workers, each of which gets at least one, so a limit below the worker count is
    /// raised to it. A request that finds its worker at the limit waits in its lane, and the
    /// worker waits without spinning until a task comes back.
    ///
    /// ``stop()`` cancels the tasks still running and answers their guests (see
    /// ``ResponseStatus/cancelled``) before it lets go of the region.
    public func start<Handler: AsyncRequestHandler>(asyncHandler handler: Handler,
                                                   maxTasksInFlight: Int? = nil) throws(SystemError) {
        let region = region, policies = policies, stop = stopFlag, counting = counting, counters = counters
        let shares = Host.taskShares(limit: maxTasksInFlight ?? region.laneCount, workers: region.workerCount)
        try startThreads { index in
            let worker = AsyncWorker(region: region, index: index, handler: handler, maxTasks: shares[index],
                                     policies: policies, stop: stop, counters: counters, counting: counting)
            return { worker.run() }
        }
    }

    /// Each worker's share of a task limit: even, the remainder to the first workers, at least one.
    static func taskShares(limit: Int, workers: Int) -> [Int] {
        let limit = max(limit, workers)
        return (0..<workers).map { limit / workers + ($0 < limit % workers ? 1 : 0) }
    }

    /// Starts a thread per serving worker (running what `makeWorker` returns for its index), the
    /// raw baseline servers and the housekeeping thread.
    private func startThreads(_ makeWorker: (_ index: Int) -> @Sendable () -> Void) throws(SystemError) {
        let region = region, stop = stopFlag, counters = counters
        let cpus = workerCPUs, logger = logger, metrics = metrics
        do {
            for index in 0..<region.workerCount {
                let run = makeWorker(index)
                let cpu = cpus.isEmpty ? nil : cpus[index % cpus.count]
                threads.append(try Thread {
                    if let cpu {
                        do { try CPUAffinity.pinCurrentThread(to: cpu) } catch {
                            logger.warning("cannot pin serving worker \(index) to CPU \(cpu): \(error)")
                        }
                    }
                    run()
                })
            }
            for index in 0..<region.rawCount {
                let server = RawServer(region: region, index: index, stop: stop)
                threads.append(try Thread(stackSize: 64 * 1024) { server.run() })
            }
            threads.append(try Thread(stackSize: 256 * 1024) { [weak self] in
                var watch = OwnerWatch(region: region, counters: counters)
                var truncated = false
                var ticks = 0
                while !stop.isSet {
                    region.beat()
                    if !truncated, region.truncationFaults > 0 {
                        truncated = true
                        logger.error("the region was truncated under the host (a guest shrank \(Region.path(for: region.name))); stopping")
                        region.setState(.stopping)
                        self?.requestShutdown()
                    }
                    for lane in watch.reclaimDeadOwners() {
                        logger.notice("reclaimed a lane whose guest died", metadata: ["lane": "\(lane.index)", "pid": "\(lane.pid)"])
                    }
                    // Once a second: the counters to swift-metrics (never from the data path).
                    ticks += 1
                    if ticks % 10 == 0 { metrics.collect(counters.snapshot(of: region)) }
                    CShm_sleep_ns(100_000_000)
                }
            })
        } catch {
            self.stop()
            throw error
        }
        logger.info("serving", metadata: [
            "region": "\(Region.path(for: region.name))", "lanes": "\(region.laneCount)",
            "slot": "\(region.slotCapacity)", "workers": "\(region.workerCount)", "wait": "\(policies.load())",
            "pin": "\(cpus.isEmpty ? "none" : cpus.map(String.init).joined(separator: ","))",
        ])
    }

    /// Changes the serving workers' spin policy. They pick it up at their next idle moment or
    /// within 1024 polls; the call path takes no lock for it.
    public func setSpinPolicy(_ policy: SpinPolicy) throws(WaitStrategyError) {
        try policy.validate()
        policies.store(policy)
        logger.info("spin policy changed", metadata: ["wait": "\(policy)"])
    }

    /// What to do when a control client asks the host to shut down, or the housekeeping thread
    /// finds the region truncated. ``HostService`` sets it to end its `run()`. Without a handler
    /// such requests are logged and ignored.
    public func onShutdownRequest(_ handler: @escaping @Sendable () -> Void) {
        shutdownRequests.onRequest(handler)
    }

    /// Asks the host's owner to shut down: runs the ``onShutdownRequest(_:)`` handler.
    public func requestShutdown() {
        shutdownRequests.request()
    }

    /// Every counter now: the host's own (from host memory) and the guests' (from the region).
    public func snapshot() -> RegionSnapshot {
        counters.snapshot(of: region)
    }

    /// The region's name.
    public var name: String { region.name }
    /// This process's pid.
    public var hostPID: Int32 { region.hostPID }
    /// The region's lanes, slot size and workers.
    public var shape: HostShape {
        HostShape(lanes: region.laneCount, slotCapacity: region.slotCapacity, workers: region.workerCount, privateRegions: false)
    }
    /// A named host is no private host.
    public var privateHost: PrivateHost? { nil }

    /// "free", "claimed" (its owner's lock is held) or "owner-gone" (housekeeping reclaims it).
    public func laneState(_ index: Int) -> String {
        guard index >= 0, index < region.laneCount else { return "free" }
        let owner = region.lane(index).owner
        if owner.hint >> 32 == 0 { return "free" }
        return region.ownerLives(owner) ? "claimed" : "owner-gone"
    }

    /// Passes what the counters moved since the last collection to swift-metrics (see
    /// <doc:CollectingMetrics>). The housekeeping thread does it once a second, and the control server
    /// before every `metrics` reply; call it before reading your own backend to see the counters as of now.
    public func collectMetrics() {
        metrics.collect(counters.snapshot(of: region))
    }

    /// The quick way out, for a second stop signal: publishes `stopping`, lets go of the host
    /// lock, wakes sleeping guests and removes the region's name, without waiting for any thread.
    /// The process should exit next.
    public func abandon() {
        region.setState(.stopping)
        stopFlag.set()
        region.releaseHostLock()
        for index in 0..<region.laneCount { wakeSleepingGuest(lane: region.lane(index)) }
        region.unlink()
    }

    /// Stops serving: publishes `stopping`, joins every thread, lets go of the host lock (guests
    /// check it), wakes sleeping guests and removes the region's name. Safe to call more than once.
    ///
    /// With an async handler, each serving worker first cancels its tasks still running and
    /// answers their guests (the tasks' outcomes as they come back, for up to a second; then
    /// ``ResponseStatus/cancelled``), so `stop` may take that long. A task that ignores its
    /// cancellation and returns later keeps the region's memory mapped until it does; its answer is
    /// dropped.
    public func stop() {
        if stopped { return }
        stopped = true
        region.setState(.stopping)
        stopFlag.set()
        // Post whatever the flags say (a guest may have cleared them): each sleep is bounded anyway.
        for index in 0..<region.workerCount { region.doorbell(index).parker.post() }
        for index in 0..<region.rawCount { region.rawChannel(index).parker.post() }
        for thread in threads { thread.join() }
        threads.removeAll()
        // The last increments, then every series goes (a host of the same name may follow).
        collectMetrics()
        metrics.destroy()
        // Guests learn that the host is gone from its lock, so let go of it before waking them.
        region.releaseHostLock()
        for index in 0..<region.laneCount { wakeSleepingGuest(lane: region.lane(index)) }
        region.unlink()
        logger.info("stopped", metadata: ["region": "\(Region.path(for: region.name))"])
    }

    deinit {
        stop()
    }
}
