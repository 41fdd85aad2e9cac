import CShm
import DXCore
import DXTestSupport
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A region name unique to this process and call, so tests never share a region.
func uniqueName(_ label: String = #function) -> String {
    uniqueTestName(prefix: "test", label: label)
}

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
