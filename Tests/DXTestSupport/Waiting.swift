#if canImport(Glibc)
import Glibc
#endif

/// Polls `condition` every millisecond until it holds (true) or `seconds` pass (false): a bounded
/// wait for something another thread or process does, instead of a sleep that hopes it is done.
/// The unit and the integration tests share it.
public func waitUntil(seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: .nanoseconds(Int64(seconds * 1e9)))
    while clock.now < deadline {
        if try condition() { return true }
        usleep(1000)
    }
    return try condition()
}
