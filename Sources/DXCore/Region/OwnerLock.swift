#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CShm

/// The kernel's word that a lane's (or raw channel's) owner lives: a write lock (`F_OFD_SETLK`)
/// on the 8 bytes of the block's owner word, held through an open file description of the
/// region that belongs to this claim alone.
///
/// The kernel drops the lock when the description goes away: when the lane is released, or when
/// the process dies, at any instruction. A pid and start time in guest memory could be forged or
/// reused; the lock cannot, and it works across pid namespaces. Each claim has its own
/// description because OFD locks of one description never conflict with each other: two threads
/// of one process claiming the same lane must see each other's lock.
struct OwnerLock: ~Copyable {
    /// A descriptor of its own open file description of the region.
    let descriptor: Int32
    /// The locked byte range: the owner word.
    private(set) var ownerOffset = -1

    /// Opens the region behind `regionDescriptor` again.
    init(reopening regionDescriptor: Int32) throws(SystemError) {
        let fd = CShm_reopen(regionDescriptor)
        guard fd >= 0 else { throw SystemError("open /proc/self/fd", errno: -fd) }
        descriptor = fd
    }

    /// Takes the lock on the owner word at `ownerOffset` (from the region's start). Returns false
    /// when another description holds it (its owner lives). Holds one lock at a time.
    mutating func tryLock(ownerOffset offset: Int) throws(SystemError) -> Bool {
        precondition(ownerOffset < 0, "an OwnerLock holds one lock at a time")
        let rc = CShm_ofd_trylock(descriptor, UInt64(offset), UInt64(Layout.Locks.ownerLength))
        if rc == EAGAIN { return false }
        guard rc == 0 else { throw SystemError("fcntl F_OFD_SETLK", errno: rc) }
        ownerOffset = offset
        return true
    }

    /// Gives the lock back (the claim that took it failed).
    mutating func unlock() {
        guard ownerOffset >= 0 else { return }
        _ = CShm_ofd_unlock(descriptor, UInt64(ownerOffset), UInt64(Layout.Locks.ownerLength))
        ownerOffset = -1
    }

    deinit {
        // The last descriptor of the description: the kernel drops the lock with it.
        close(descriptor)
    }
}

/// A claimed lane or raw channel: the owner word written into it and the lock that says its
/// owner lives. Releasing it frees the word (keeping the generation) and then drops the lock.
struct OwnerClaim: ~Copyable {
    /// Keeps the mapping alive until the release below has run.
    let region: Region
    let owner: OwnerWordView
    /// Nil in a private region: its one guest process is its owners' liveness.
    let lock: OwnerLock?
    /// `pid << 32 | generation`, as stored in the owner word (the pid is informational).
    let word: UInt64

    deinit {
        // A failed CAS means the word was vandalised; the lock still goes with this claim.
        _ = owner.replace(word, with: word & 0xFFFF_FFFF)
    }
}

extension Region {
    /// The byte offset of an owner word in the region: the range its lock covers.
    private func lockOffset(_ owner: OwnerWordView) -> UInt64 { UInt64(owner.address - base) }

    /// Claims the block whose owner word is `owner`: lock first, then CAS the owner word.
    ///
    /// While we hold the lock no live process owns the block, so any owner word we find is a dead
    /// owner's (or one being released) and may be replaced. Returns the claim, or nil when a live
    /// owner holds the lock or the word changed under us (then `lock` is kept, unlocked, for the
    /// next attempt). The one place that claims an owner word.
    func claimOwner(_ owner: OwnerWordView, lock: inout OwnerLock?) throws(SystemError) -> OwnerClaim? {
        if isPrivate {
            // One guest process: its threads claim free words by CAS alone; the host frees the
            // whole region when the process goes.
            let word = owner.value
            guard word >> 32 == 0 else { return nil }
            let mine = UInt64(UInt32(bitPattern: Region.ownPID)) << 32 | UInt64(UInt32(truncatingIfNeeded: word &+ 1))
            guard owner.replace(word, with: mine) else { return nil }
            return OwnerClaim(region: self, owner: owner, lock: nil, word: mine)
        }
        if lock == nil { lock = try OwnerLock(reopening: descriptor) }
        guard try lock!.tryLock(ownerOffset: Int(lockOffset(owner))) else { return nil }
        let word = owner.value
        let mine = UInt64(UInt32(bitPattern: Region.ownPID)) << 32 | UInt64(UInt32(truncatingIfNeeded: word &+ 1))
        guard owner.replace(word, with: mine) else {
            lock!.unlock()
            return nil
        }
        return OwnerClaim(region: self, owner: owner, lock: lock.take()!, word: mine)
    }

    /// Whether the owner of `owner` lives: someone holds its lock. A system error counts as alive
    /// (never reclaim on a guess).
    func ownerLives(_ owner: OwnerWordView) -> Bool {
        CShm_ofd_held(descriptor, lockOffset(owner), UInt64(Layout.Locks.ownerLength)) != 0
    }

    /// Frees `owner` if it still holds `word` and its owner is dead (host housekeeping, raw servers).
    /// Returns whether it did. The generation stays, so the next claim differs from the dead one.
    func reclaimOwner(_ owner: OwnerWordView, word: UInt64) -> Bool {
        guard word >> 32 != 0, !ownerLives(owner) else { return false }
        return owner.replace(word, with: word & 0xFFFF_FFFF)
    }
}
