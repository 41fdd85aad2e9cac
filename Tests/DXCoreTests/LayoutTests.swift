import CShm
import DXCore
import Testing

/// The offsets are the cross-process contract: changing one must be a conscious version bump.
@Suite struct LayoutTests {
    @Test func headerOffsetsArePinned() {
        #expect(Layout.version == 2)
        #expect(Layout.magic == 0x4E4F_4947_4552_5844)
        #expect(Layout.headerSize == 8192)
        let header: [(Int, Int)] = [
            (Layout.Header.magic, 0), (Layout.Header.version, 8), (Layout.Header.headerSize, 12),
            (Layout.Header.laneStride, 16), (Layout.Header.laneCount, 20), (Layout.Header.slotCapacity, 24),
            (Layout.Header.workerCount, 28), (Layout.Header.regionSize, 32), (Layout.Header.hostPID, 40),
            (Layout.Header.handler, 44), (Layout.Header.hostStartTime, 48), (Layout.Header.epoch, 56),
            (Layout.Header.state, 128), (Layout.Header.heartbeat, 136), (Layout.Header.lanesOffset, 256),
            (Layout.Header.rawOffset, 264), (Layout.Header.rawCount, 272), (Layout.Header.doorbells, 1024),
            (Layout.Header.doorbellSleeping, 0), (Layout.Header.doorbellWord, 8), (Layout.Header.doorbellWorkerCPU, 64),
            (Layout.Header.turnstiles, 4096), (Layout.Header.turnstileStride, 256), (Layout.Header.turnNext, 0),
            (Layout.Header.turnServing, 8), (Layout.Header.turnLease, 16), (Layout.Header.turnWakeSlots, 128),
            (Layout.Header.turnWakeSlotCount, 32),
        ]
        for (actual, expected) in header { #expect(actual == expected) }
    }

    @Test func laneOffsetsArePinned() {
        let lane: [(Int, Int)] = [
            (Layout.Lane.requestSeq, 0), (Layout.Lane.requestLength, 8), (Layout.Lane.owner, 16),
            (Layout.Lane.responseSeq, 128), (Layout.Lane.responseLength, 136), (Layout.Lane.status, 140),
            (Layout.Lane.guestSleeping, 256), (Layout.Lane.guestWord, 264),
            (Layout.Lane.guestCounters, 512), (Layout.Lane.payload, 768),
            (Layout.Raw.ping, 0), (Layout.Raw.length, 8), (Layout.Raw.owner, 16), (Layout.Raw.pong, 128),
            (Layout.Raw.serverSleeping, 256), (Layout.Raw.serverWord, 264), (Layout.Raw.payload, 768),
        ]
        for (actual, expected) in lane { #expect(actual == expected) }
    }

    @Test func sidesWriteSeparateBlocks() {
        // Guest-written, host-written and wait fields each sit in their own 128-byte block.
        let blocks = [Layout.Lane.requestSeq, Layout.Lane.responseSeq, Layout.Lane.guestSleeping,
                      Layout.Lane.guestCounters, Layout.Lane.payload].map { $0 / Layout.block }
        #expect(Set(blocks).count == blocks.count)
        #expect(Layout.Lane.requestLength / Layout.block == Layout.Lane.requestSeq / Layout.block)
        #expect(Layout.Lane.status / Layout.block == Layout.Lane.responseSeq / Layout.block)
        #expect(Layout.Header.state / Layout.block != Layout.Header.magic / Layout.block)
    }

    /// Version 2 keeps no libc object in the region: a parker is two u32 words, in its own block,
    /// and the liveness locks cover the magic and each owner word.
    @Test func parkersAndLocksFitTheirPlaces() {
        for (flag, word) in [(Layout.Lane.guestSleeping, Layout.Lane.guestWord),
                             (Layout.Raw.serverSleeping, Layout.Raw.serverWord),
                             (Layout.Header.doorbellSleeping, Layout.Header.doorbellWord)] {
            #expect(word % 4 == 0 && flag % 4 == 0 && word >= flag + 4)
            #expect(word / Layout.block == flag / Layout.block)
        }
        #expect(Layout.Lane.guestWord + 4 <= Layout.Lane.guestCounters)
        #expect(Layout.Header.doorbellWord + 4 <= Layout.Header.doorbellWorkerCPU)
        #expect(Layout.Locks.host == (start: Layout.Header.magic, length: 8))
        #expect(Layout.Locks.ownerLength == 8)
        #expect(Layout.Lane.owner == Layout.Raw.owner)
        #expect(Layout.Header.doorbells + Layout.maxWorkers * Layout.block <= Layout.Header.turnstiles)
        #expect(Layout.Header.turnstiles + Layout.maxWorkers * Layout.Header.turnstileStride <= Layout.headerSize)
        #expect(Layout.Header.turnWakeSlots + Layout.Header.turnWakeSlotCount * 4 <= Layout.Header.turnstileStride)
    }

    @Test func strideAndSizeFollowTheSlot() {
        #expect(Layout.laneStride(slotCapacity: 1) == 896)
        #expect(Layout.laneStride(slotCapacity: 128) == 896)
        #expect(Layout.laneStride(slotCapacity: 4096) == 4864)
        #expect(Layout.laneStride(slotCapacity: 4097) % Layout.block == 0)
        #expect(Layout.regionSize(laneCount: 8, slotCapacity: 4096, rawCount: 8) == 8192 + 16 * 4864)
    }
}
