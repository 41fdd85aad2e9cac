import ArgumentParser
import DXCommandLine
import DXCore

struct Call: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one request and print the host's answer.")

    @OptionGroup var target: RegionNameOption

    @OptionGroup var owner: HostOwnerOptions

    @Flag(help: "Print the response as hexadecimal bytes.")
    var hex = false

    @OptionGroup var wait: WaitOptions

    @Argument(help: "The request, sent as UTF-8 bytes.")
    var message: String

    func run() throws {
        let region = try attach(name: target.name, owner: owner, lanes: 1)
        var lane: Lane
        do { lane = try region.claimLane(strategy: try wait.strategy) } catch {
            throw CommandFailure("\(error)", exit: .callFailed)
        }
        lane.callTimeoutNanoseconds = owner.callTimeoutNanoseconds
        switch lane.call(Array(message.utf8)) {
        case .success(let response):
            if !hex, let text = String(validating: response, as: UTF8.self),
               text.unicodeScalars.allSatisfy({ $0.value >= 0x20 || $0 == "\n" || $0 == "\t" }) {
                print(text)
            } else {
                print(response.map { byte in
                    let digits = String(byte, radix: 16)
                    return digits.count == 1 ? "0" + digits : digits
                }.joined())
            }
        case .failure(let error):
            throw CommandFailure("\(error)", exit: .callFailed)
        }
    }
}
