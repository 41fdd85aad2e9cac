#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A region name unique to this process and call, so tests never share a region:
/// `<prefix>-<label, letters and digits, at most 40>-<pid>-<counter>`, well under the 64-byte limit.
/// It is recorded in `$DX_TEST_NAMES` (see ``recordTestName(_:)``).
public func uniqueTestName(prefix: String, label: String) -> String {
    let clean = label.filter { $0.isLetter || $0.isNumber }.prefix(40)
    let name = "\(prefix)-\(clean)-\(getpid())-\(nameCounter.add(1, ordering: .relaxed).newValue)"
    recordTestName(name)
    return name
}

private let nameCounter = Atomic<Int>(0)

/// Appends `name` to the file `$DX_TEST_NAMES` names: scripts/test removes exactly those names'
/// regions, sockets and lock files if a run is cut short.
public func recordTestName(_ name: String) {
    guard let path = getenv("DX_TEST_NAMES") else { return }
    let fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
    guard fd >= 0 else { return }
    let line = Array((name + "\n").utf8)
    _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}
