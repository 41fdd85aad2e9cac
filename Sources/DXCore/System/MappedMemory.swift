#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The single owner of a shared mapping: it unmaps the memory when it goes away.
///
/// The corresponding C functions are `mmap` and `munmap`. Views into the mapping are made
/// from `base` after bounds checks (see ``Layout``); they must not outlive the owner.
struct MappedMemory: ~Copyable, @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let size: Int

    /// Maps `size` bytes of `descriptor` shared, readable and writable.
    init(descriptor: Int32, size: Int) throws(SystemError) {
        let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0)
        guard let pointer, pointer != MAP_FAILED else {
            throw SystemError("mmap", errno: errno)
        }
        self.base = pointer
        self.size = size
    }

    deinit {
        munmap(base, size)
    }
}
