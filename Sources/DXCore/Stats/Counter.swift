import CShm

/// Bumps a single-writer counter in shared memory: a relaxed load and a relaxed store, no
/// atomic read-modify-write (only its owner ever writes it).
@inlinable @inline(__always)
func bump(_ counter: UnsafeMutableRawPointer, by amount: UInt64 = 1) {
    CShm_store_relaxed_u64(counter, CShm_load_relaxed_u64(counter) &+ amount)
}
