#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm
import Logging

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
public final class Host: @unchecked Sendable {
    /// The region this host serves.
    public let region: Region
    /// The wait strategy of the serving workers.
    public let strategy: WaitStrategy
    private let logger: Logger
    private let stopFlag = StopFlag()
    private var threads: [Thread] = []
    private var stopped = false

    /// Creates the region (see ``Region/create(name:configuration:)``). Nothing is served until
    /// ``start(handler:)``.
    public init(name: String, configuration: RegionConfiguration, strategy: WaitStrategy = .fair,
                logger: Logger = Logger(label: "dx.host")) throws(RegionCreateError) {
        do { try strategy.validate() } catch { throw .invalidConfiguration(error.description) }
        self.region = try Region.create(name: name, configuration: configuration)
        self.strategy = strategy
        self.logger = logger
    }

    /// Starts the serving workers, the raw baseline servers and the heartbeat thread.
    public func start<Handler: RequestHandler>(handler: Handler) throws(SystemError) {
        let region = region, strategy = strategy, stop = stopFlag
        do {
            for index in 0..<region.workerCount {
                let worker = Worker(region: region, index: index, handler: handler, strategy: strategy, stop: stop)
                threads.append(try Thread { worker.run() })
            }
            for index in 0..<region.rawCount {
                let server = RawServer(region: region, index: index, stop: stop)
                threads.append(try Thread(stackSize: 64 * 1024) { server.run() })
            }
            threads.append(try Thread(stackSize: 64 * 1024) {
                while !stop.isSet {
                    region.beat()
                    usleepNanoseconds(100_000_000)
                }
            })
        } catch {
            self.stop()
            throw error
        }
        logger.info("serving", metadata: [
            "region": "\(Region.path(for: region.name))", "lanes": "\(region.laneCount)",
            "slot": "\(region.slotCapacity)", "workers": "\(region.workerCount)", "wait": "\(strategy)",
        ])
    }

    /// Stops serving: publishes `stopping`, wakes sleeping guests, joins every thread and
    /// removes the region's name. Safe to call more than once.
    public func stop() {
        if stopped { return }
        stopped = true
        region.setState(.stopping)
        stopFlag.set()
        for index in 0..<region.workerCount {
            Semaphore(region.doorbell(index) + Layout.Header.doorbellSemaphore).post()
        }
        for index in 0..<region.rawCount {
            Semaphore(region.rawChannel(index) + Layout.Raw.serverSemaphore).post()
        }
        for thread in threads { thread.join() }
        threads.removeAll()
        for index in 0..<region.laneCount { wakeSleepingGuest(lane: region.lane(index)) }
        region.unlink()
        logger.info("stopped", metadata: ["region": "\(Region.path(for: region.name))"])
    }

    deinit {
        stop()
    }
}

/// Sleeps the calling thread (`nanosleep`), for setup and housekeeping threads only.
func usleepNanoseconds(_ nanoseconds: UInt64) {
    var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 { request = remaining }
}
