import ArgumentParser
import DXCommandLine
import DXCore

@main
struct DXGuestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dx-guest",
        abstract: "Make requests to a dx host: benchmark it, or send one request.",
        subcommands: [Bench.self, Call.self, Soak.self, Vandal.self, Scale.self, ScaleGuest.self, AsyncBench.self])

    static func main() { runAndExit() }
}

/// Whose region to trust (`--host-uid`, for a host that runs as another user) and how long a call
/// may wait (`--call-timeout`).
struct HostOwnerOptions: ParsableArguments {
    @Option(name: .customLong("host-uid"),
            help: "The uid the host runs as (default: this user's). A region of any other owner is refused.")
    var hostUID: UInt32?

    @Option(name: .customLong("call-timeout"), help: "Seconds a call may wait for its turn and its response.")
    var callTimeout: Double = 10

    @Option(help: "The host's socket, for a private host (dx-host --private) whose socket is not at the default path ($XDG_RUNTIME_DIR/dx/<name>.sock or /tmp/dx-<uid>/<name>.sock).")
    var control: String?

    func validate() throws {
        guard callTimeout > 0, callTimeout <= 3600 else {
            throw ValidationError("--call-timeout must be between 0 and 3600 seconds, not \(callTimeout)")
        }
    }

    var callTimeoutNanoseconds: UInt64 { UInt64(callTimeout * 1e9) }
}

/// Attaches to the host's region, named or private (then asking for `lanes` lanes), turning its
/// errors into one-line failures with exit code 3.
func attach(name: String, owner: HostOwnerOptions, lanes: Int) throws -> Region {
    do {
        return try Region.open(name: name, lanes: lanes, controlPath: owner.control, hostUID: owner.hostUID)
    } catch {
        throw CommandFailure("\(error)", exit: .noHost)
    }
}
