import CShm
import DXCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A region name unique to this process and call, so tests never share a region.
func uniqueName(_ label: String = #function) -> String {
    let clean = label.filter { $0.isLetter || $0.isNumber }.prefix(40)
    let name = "test-\(clean)-\(getpid())-\(nameCounter.add(1, ordering: .relaxed).newValue)"
    recordTestName(name)
    return name
}

/// Appends `name` to the file `$DX_TEST_NAMES` names (scripts/test removes exactly those names'
/// regions, sockets and lock files if a run is cut short).
func recordTestName(_ name: String) {
    guard let path = getenv("DX_TEST_NAMES") else { return }
    let fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
    guard fd >= 0 else { return }
    let line = Array((name + "\n").utf8)
    _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}


private let nameCounter = Atomic<Int>(0)

/// Opens the region object of `name` directly, as a vandal would.
func withRawRegion<T>(_ name: String, _ body: (UnsafeMutableRawPointer, Int, Int32) throws -> T) throws -> T {
    let descriptor = open("/dev/shm/dx.\(name)", O_RDWR)
    guard descriptor >= 0 else { throw SystemError("open", errno: errno) }
    defer { close(descriptor) }
    var info = stat()
    guard fstat(descriptor, &info) == 0 else { throw SystemError("fstat", errno: errno) }
    let size = Int(info.st_size)
    guard let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0), base != MAP_FAILED else {
        throw SystemError("mmap", errno: errno)
    }
    defer { munmap(base, size) }
    return try body(base, size, descriptor)
}

func regionExists(_ name: String) -> Bool {
    access("/dev/shm/dx.\(name)", F_OK) == 0
}
