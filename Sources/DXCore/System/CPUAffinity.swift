import CShm
#if canImport(Glibc)
import Glibc
#endif

/// CPU placement for the calling thread.
///
/// ```swift
/// try CPUAffinity.pinCurrentThread(to: 1)   // this thread now runs on CPU 1 only
/// ```
///
/// - Important: Pinning is for experiments and for embedders that own the machine's layout. On
///   a VM whose CPUs the hypervisor moves, or with a guest and the worker pinned to one CPU, it
///   can make things much worse (the tuning study's experiment 5).
public enum CPUAffinity {
    /// Pins the calling thread to `cpu`.
    public static func pinCurrentThread(to cpu: Int) throws(SystemError) {
        guard let value = Int32(exactly: cpu) else { throw SystemError("pthread_setaffinity_np", errno: EINVAL) }
        let rc = CShm_pin_self(value)
        if rc != 0 { throw SystemError("pthread_setaffinity_np", errno: rc) }
    }

    /// How many CPUs the calling thread may run on (its affinity mask).
    public static var allowedCPUs: Int { max(Int(CShm_available_cpus()), 1) }

    /// Parses a CPU list such as `0`, `0,1` or `2-3`; nil when it is malformed or names a CPU
    /// beyond 1023.
    public static func parse(_ text: String) -> [Int]? {
        var cpus: [Int] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
            guard let first = bounds.first ?? nil, bounds.count <= 2, bounds.allSatisfy({ ($0 ?? -1) >= 0 && $0! < 1024 })
            else { return nil }
            let last = bounds.count == 2 ? bounds[1]! : first
            guard first <= last else { return nil }
            cpus += Array(first...last)
        }
        return cpus.isEmpty ? nil : cpus
    }
}
