import Foundation
import DXTestSupport
import Synchronization

/// The built `dx-host` and `dx-guest`, next to this test bundle (or in `DX_BIN_DIR`).
enum Binaries {
    static let directory: URL = {
        if let override = ProcessInfo.processInfo.environment["DX_BIN_DIR"] {
            return URL(fileURLWithPath: override)
        }
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return executable.deletingLastPathComponent()
    }()

    static var host: URL { directory.appendingPathComponent("dx-host") }
    static var guest: URL { directory.appendingPathComponent("dx-guest") }
}

/// What a finished process left.
struct Outcome {
    var status: Int32
    var stdout: String
    var stderr: String
}

enum ProcessError: Error {
    case timedOut(String)
}

/// Runs a binary to completion, killing it after `timeout` seconds. Output goes to temporary
/// files, so a chatty process never blocks on a full pipe.
func run(_ binary: URL, _ arguments: [String], timeout: Double = 60) throws -> Outcome {
    let directory = FileManager.default.temporaryDirectory
    let token = UUID().uuidString
    let outURL = directory.appendingPathComponent("dx-test-\(token).out")
    let errURL = directory.appendingPathComponent("dx-test-\(token).err")
    _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
    _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
    defer {
        try? FileManager.default.removeItem(at: outURL)
        try? FileManager.default.removeItem(at: errURL)
    }
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    process.standardOutput = try FileHandle(forWritingTo: outURL)
    process.standardError = try FileHandle(forWritingTo: errURL)
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning, Date() < deadline { usleep(5_000) }
    if process.isRunning {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        throw ProcessError.timedOut("\(binary.lastPathComponent) \(arguments.joined(separator: " "))")
    }
    process.waitUntilExit()
    return Outcome(status: process.terminationStatus,
                   stdout: (try? String(contentsOf: outURL, encoding: .utf8)) ?? "",
                   stderr: (try? String(contentsOf: errURL, encoding: .utf8)) ?? "")
}

/// A `dx-host` running in the background for one test. Stop it with `stop()` (SIGTERM);
/// dropping it kills it and removes its region.
final class RunningHost {
    let name: String
    let process = Process()

    /// `readyByCall`: ready when a call is answered (the default), or, for a host whose handler
    /// takes its time, when `ctl stats` is.
    init(arguments: [String] = [], name: String = uniqueName(), readyByCall: Bool = true) throws {
        self.name = name
        process.executableURL = Binaries.host
        process.arguments = ["--name", name, "--log-level", "warning"] + arguments
        try process.run()
        // Ready when a call gets an answer (bounded: 10 s).
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let control = arguments.firstIndex(of: "--control").map { ["--control", arguments[$0 + 1]] } ?? []
            let probe = readyByCall ? (Binaries.guest, ["call", "--name", name, "ready?"]) : (Binaries.host, ["ctl", "stats", "--name", name])
            if let outcome = try? run(probe.0, probe.1 + control, timeout: 5), outcome.status == 0 {
                return
            }
            guard process.isRunning else { break }
            usleep(20_000)
        }
        kill()
        throw ProcessError.timedOut("dx-host --name \(name) did not become ready")
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    func stop(timeout: Double = 10) throws -> Int32 {
        process.terminate()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill()
            throw ProcessError.timedOut("dx-host did not exit after SIGTERM")
        }
        return process.terminationStatus
    }

    func kill() {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        unlink("/dev/shm/dx.\(name)")
        for file in runtimeFiles(name) { unlink(file) }
    }

    deinit { kill() }
}

func uniqueName(_ label: String = #function) -> String {
    uniqueTestName(prefix: "it", label: label)
}

func regionExists(_ name: String) -> Bool {
    access("/dev/shm/dx.\(name)", F_OK) == 0
}

/// The JSON objects `dx-guest bench --json` printed, one per line.
func jsonLines(_ text: String) throws -> [[String: Any]] {
    try text.split(separator: "\n").map { line in
        try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
    }
}
