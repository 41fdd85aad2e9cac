import CShm
import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

/// The exit codes of `dx-host` and `dx-guest` (documented in the README).
public enum DXExit: Int32, Sendable {
    case ok = 0
    /// A failure not covered below.
    case failure = 1
    /// Bad command-line arguments.
    case usage = 2
    /// No host serves the name, or its region cannot be used.
    case noHost = 3
    /// A host already serves the name.
    case alreadyRunning = 4
    /// A call failed: the host stopped, died, timed out or rejected it.
    case callFailed = 5
    /// A benchmark saw wrong, lost or failed responses.
    case verificationFailed = 6
    /// Interrupted (SIGINT) before the end; what was measured so far was printed.
    case interrupted = 130
}

/// A failure with its one-line message and exit code.
public struct CommandFailure: Error, CustomStringConvertible {
    public var message: String
    public var exit: DXExit

    public init(_ message: String, exit: DXExit) {
        self.message = message
        self.exit = exit
    }

    public var description: String { message }
}

extension ParsableCommand {
    /// Parses and runs the command. Usage errors print ArgumentParser's message and exit 2,
    /// failures print one line and exit with their code, and nothing prints a stack trace.
    public static func runAndExit(_ arguments: [String]? = nil) -> Never {
        lineBufferStandardOutput()
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Glibc.exit(DXExit.ok.rawValue)
        } catch {
            exit(reporting: error)
        }
    }

    /// Prints `error` as ``runAndExit(_:)`` does and exits with its code.
    static func exit(reporting error: any Error) -> Never {
        if let failure = error as? CommandFailure {
            printError("\(commandName): \(failure.message)")
            Glibc.exit(failure.exit.rawValue)
        }
        // --help and --version (which can surface from parsing or from a command group's
        // run) exit 0 with their text; usage errors print ArgumentParser's message, exit 2.
        let code = exitCode(for: error)
        if code == .success { self.exit(withError: error) }
        let message = fullMessage(for: error)
        if code == .validationFailure {
            printError(message.isEmpty ? "\(commandName): invalid arguments" : message)
            Glibc.exit(DXExit.usage.rawValue)
        }
        printError("\(commandName): \(message.isEmpty ? "\(error)" : message)")
        Glibc.exit(DXExit.failure.rawValue)
    }

    private static var commandName: String { configuration.commandName ?? "dx" }
}

extension AsyncParsableCommand {
    /// ``ParsableCommand/runAndExit(_:)`` for a command tree with asynchronous subcommands.
    public static func runAndExit(_ arguments: [String]? = nil) async -> Never {
        lineBufferStandardOutput()
        do {
            var command = try parseAsRoot(arguments)
            if var asynchronous = command as? any AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
            Glibc.exit(DXExit.ok.rawValue)
        } catch {
            exit(reporting: error)
        }
    }
}

/// Writes one line to standard error (file descriptor 2, unbuffered).
public func printError(_ line: String) {
    var text = line
    if !text.hasSuffix("\n") { text += "\n" }
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(2, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 { if errno == EINTR { continue } else { return } }
            offset += written
        }
    }
}

/// Makes standard output line-buffered also when it is a pipe or a file (C's default there is a
/// 4 KiB block buffer), so that every line (`ctl watch`, `soak`'s totals, bench's JSON) reaches
/// a reader as it is produced, and nothing is lost to a buffer when the process is interrupted.
func lineBufferStandardOutput() {
    CShm_line_buffer_stdout()
}
