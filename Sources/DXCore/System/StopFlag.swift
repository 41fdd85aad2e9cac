import Synchronization

/// A host-private flag that tells serving threads to finish. Never in shared memory: a guest
/// must not be able to stop the host.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)

    var isSet: Bool {
        // Relaxed: threads only need to see the flag eventually; they join after.
        value.load(ordering: .relaxed)
    }

    func set() {
        value.store(true, ordering: .relaxed)
    }
}
