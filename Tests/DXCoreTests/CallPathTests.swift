import CAllocationCounter
import DXCore
import Synchronization
import Testing

/// The call path allocates nothing, on either side, once a lane is claimed.
@Suite(.serialized, .timeLimit(.minutes(2))) struct CallPathTests {
    @Test func theCounterSeesAllocations() {
        AllocationCounter_countThisThread(1)
        let before = AllocationCounter_count()
        let array = [Int](repeating: 7, count: 1000)
        let after = AllocationCounter_count()
        AllocationCounter_countThisThread(0)
        #expect(array.count == 1000)
        #expect(after > before)  // otherwise the test below could not fail
    }

    @Test(arguments: [WaitStrategy.auto, .fair, .balanced, .lowCPU])
    func callsAllocateNothing(strategy: WaitStrategy) throws {
        let name = uniqueName()
        let host = try Host(name: name, configuration: RegionConfiguration(laneCount: 4, slotCapacity: 256),
                            spinPolicy: strategy.spinPolicy)
        // The handler turns counting on for the worker thread on its first request.
        try host.start(handler: ClosureHandler { request, _ in
            AllocationCounter_countThisThread(1)
            return request.count
        })
        defer { host.stop() }
        var lane = try Region.attach(name: name).claimLane(strategy: strategy)
        let request = [UInt8](repeating: 1, count: 200)
        var response = [UInt8](repeating: 0, count: 256)
        /// Both call forms, `count` times each; returns how many pairs were answered correctly.
        func roundTrips(_ count: Int) -> Int {
            var answered = 0
            request.withUnsafeBytes { requestBytes in
                response.withUnsafeMutableBytes { responseBytes in
                    for _ in 0..<count {
                        let copied = lane.call(requestBytes, into: responseBytes)
                        let inPlace = lane.call(request: { $0[0] = 9; return 1 }, response: { Int($0[0]) })
                        if copied == .success(200), inPlace == .success(9) { answered += 1 }
                    }
                }
            }
            return answered
        }
        #expect(roundTrips(100) == 100)  // warm up: the worker now counts its own allocations
        AllocationCounter_countThisThread(1)
        let before = AllocationCounter_count()
        let answered = roundTrips(20_000)
        let after = AllocationCounter_count()
        AllocationCounter_countThisThread(0)
        #expect(answered == 20_000)
        #expect(after - before == 0, "allocations on the call path (guest and worker): \(after - before)")
    }
}
