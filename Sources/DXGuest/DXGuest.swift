import ArgumentParser
import DXCommandLine
import DXCore

@main
struct DXGuestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dx-guest",
        abstract: "Make requests to a dx host: benchmark it, or send one request.",
        subcommands: [Bench.self, Call.self, Soak.self, Vandal.self])

    static func main() { runAndExit() }
}

/// Attaches to a region, turning its errors into one-line failures with exit code 3.
func attach(name: String) throws -> Region {
    do {
        return try Region.attach(name: name)
    } catch {
        throw CommandFailure("\(error)", exit: .noHost)
    }
}

/// Validates a `--name` value the way the host does.
func validateName(_ name: String) throws {
    guard Region.isValidName(name) else {
        throw ValidationError("--name '\(name)' is not a valid region name: use 1 to 200 letters, digits, '.', '_' or '-' (no '/')")
    }
}
