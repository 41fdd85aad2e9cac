import CShm
import DXCore
import Foundation
import Testing

/// A raw control-socket client, for sending what a well-behaved client never would.
final class RawControlSocket {
    let fd: Int32

    init(_ path: String) throws {
        fd = CShm_unix_connect(path)
        guard fd >= 0 else { throw SystemError("connect", errno: -fd) }
        _ = CShm_socket_timeouts(fd, 5_000_000_000)
    }

    deinit { close(fd) }

    func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if count <= 0 { return }
            offset += count
        }
    }

    func write(_ text: String) { write(Array(text.utf8)) }

    /// Reads one line, or nil when the host closed the connection (or 5 s passed).
    func readLine() -> String? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while recv(fd, &byte, 1, 0) == 1 {
            if byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
        return line.isEmpty ? nil : String(decoding: line, as: UTF8.self)
    }

    /// True when the host closed its end (a read returns 0).
    func closedByHost() -> Bool {
        var byte: UInt8 = 0
        while true {
            let count = recv(fd, &byte, 1, 0)
            if count == 0 { return true }
            if count < 0 { return false }
        }
    }
}

/// The Prometheus text exposition format, parsed just enough for the tests: `# TYPE` and `# HELP`
/// lines by family, and every sample with its labels and value.
struct PrometheusText {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
        var line: String
    }

    var types: [String: String] = [:]
    var help: [String: String] = [:]
    var samples: [Sample] = []

    init(_ text: String) {
        for line in text.split(separator: "\n").map(String.init) {
            let words = line.split(separator: " ", maxSplits: 3).map(String.init)
            if line.hasPrefix("# TYPE "), words.count == 4 {
                types[words[2]] = words[3]
            } else if line.hasPrefix("# HELP "), words.count >= 3 {
                help[words[2]] = words.count == 4 ? words[3] : ""
            } else if !line.hasPrefix("#"), let space = line.lastIndex(of: " ") {
                let series = line[..<space]
                let name = String(series.prefix { $0 != "{" })
                var labels: [String: String] = [:]
                if let open = series.firstIndex(of: "{"), series.hasSuffix("}") {
                    for pair in series[series.index(after: open)..<series.index(before: series.endIndex)].split(separator: ",") {
                        let parts = pair.split(separator: "=", maxSplits: 1)
                        if parts.count == 2 { labels[String(parts[0])] = String(parts[1].dropFirst().dropLast()) }
                    }
                }
                samples.append(Sample(name: name, labels: labels, value: Double(line[line.index(after: space)...]) ?? -1, line: line))
            }
        }
    }
}

func reply(_ line: String?) throws -> [String: Any] {
    let line = try #require(line)
    return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
}

/// Every line of the issue's "bad input" list, against both event loops: after each, the host
/// still serves the data path and answers the next good client.
@Suite(.serialized, .timeLimit(.minutes(5))) struct ControlTests {
    struct Setup {
        let host: RunningHost
        let socket: String
    }

    func start(_ backend: String, _ extra: [String] = []) throws -> Setup {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dx-ctl-\(getpid())-\(UUID().uuidString.prefix(8))")
        let socket = directory.appendingPathComponent("c.sock").path
        let host = try RunningHost(arguments: ["--control", socket, "--control-backend", backend] + extra)
        try #require(eventually(timeout: 10) { access(socket, F_OK) == 0 } != nil,
                     "the host never created its control socket \(socket)")
        return Setup(host: host, socket: socket)
    }

    /// The data path and a good client still work.
    func stillServes(_ setup: Setup) throws {
        #expect(try run(Binaries.guest, ["call", "--name", setup.host.name, "still"]).stdout == "still\n")
        let stats = try reply(try RawControlSocket(setup.socket).request(#"{"v":1,"cmd":"stats"}"#))
        #expect(stats["ok"] as? Bool == true)
    }

    @Test(arguments: ["uring", "poll"])
    func commandsAnswer(backend: String) throws {
        let setup = try start(backend)
        let client = try RawControlSocket(setup.socket)
        for command in ["stats", "lanes", "config", "metrics"] {
            let answer = try reply(client.request(#"{"v":1,"cmd":"\#(command)"}"#))
            #expect(answer["ok"] as? Bool == true)
            #expect(answer["v"] as? Int == 1)
            #expect(answer["cmd"] as? String == command)
        }
        let changed = try reply(client.request(#"{"v":1,"cmd":"config","set":{"wait":"low-cpu"}}"#))
        #expect(changed["changed"] as? Bool == true)
        #expect((changed["wait"] as? [String: Any])?["spin_max"] as? Int == 500)
        // A bad value gets an error and changes nothing.
        let refused = try reply(client.request(#"{"v":1,"cmd":"config","set":{"spin_min":10,"spin_max":5}}"#))
        #expect(refused["ok"] as? Bool == false)
        let after = try reply(client.request(#"{"v":1,"cmd":"config"}"#))
        #expect((after["wait"] as? [String: Any])?["spin_max"] as? Int == 500)
        try stillServes(setup)
        #expect(try setup.host.stop() == 0)
    }

    @Test(arguments: ["uring", "poll"])
    func badRequestsGetErrorsAndTheHostCarriesOn(backend: String) throws {
        let setup = try start(backend)
        let client = try RawControlSocket(setup.socket)
        let cases: [(String, String)] = [
            ("\u{01}\u{02}garbage\u{ff}\n", "invalid request"),
            ("{not json\n", "invalid request"),
            (#"{"v":1,"cmd":"reboot"}"# + "\n", "unknown command"),
            (#"{"v":"one","cmd":"stats"}"# + "\n", "wrong type"),
            (#"{"v":1,"cmd":42}"# + "\n", "wrong type"),
            (#"{"v":1,"cmd":"watch","interval_ms":"fast"}"# + "\n", "wrong type"),
            (#"{"v":2,"cmd":"stats"}"# + "\n", "unsupported protocol version"),
            (#"{"cmd":"stats"}"# + "\n", "missing field"),
        ]
        for (line, message) in cases {
            client.write(line)
            let answer = try reply(client.readLine())
            #expect(answer["ok"] as? Bool == false, "\(line)")
            #expect((answer["error"] as? String ?? "").contains(message), "\(line): \(answer)")
        }
        // The same connection still works after all of that.
        #expect(try reply(client.request(#"{"v":1,"cmd":"stats"}"#))["ok"] as? Bool == true)
        try stillServes(setup)
        #expect(try setup.host.stop() == 0)
    }

    @Test(arguments: ["uring", "poll"])
    func overlongLineClosesTheConnection(backend: String) throws {
        let setup = try start(backend)
        let client = try RawControlSocket(setup.socket)
        client.write([UInt8](repeating: UInt8(ascii: "x"), count: 70 * 1024))
        let answer = try reply(client.readLine())
        #expect((answer["error"] as? String ?? "").contains("longer than 65536 bytes"))
        #expect(client.closedByHost())
        try stillServes(setup)
        #expect(try setup.host.stop() == 0)
    }

    @Test(arguments: ["uring", "poll"])
    func halfLineThenDisconnect(backend: String) throws {
        let setup = try start(backend)
        for _ in 0..<20 {
            let client = try RawControlSocket(setup.socket)
            client.write(#"{"v":1,"cmd":"sta"#)
        }
        try stillServes(setup)
        #expect(try setup.host.stop() == 0)
    }

    @Test(arguments: ["uring", "poll"])
    func watchStreamsAndAStalledWatcherBlocksNobody(backend: String) throws {
        let setup = try start(backend)
        let watcher = try RawControlSocket(setup.socket)
        watcher.write(#"{"v":1,"cmd":"watch","interval_ms":20}"# + "\n")
        for _ in 0..<3 {
            let line = try reply(watcher.readLine())
            #expect(line["cmd"] as? String == "watch")
            #expect(line["ops_per_sec"] != nil)
        }
        // Another watcher at 10 ms that never reads, while a guest runs and others ask for stats.
        let stalled = try RawControlSocket(setup.socket)
        stalled.write(#"{"v":1,"cmd":"watch","interval_ms":10}"# + "\n")
        let bench = try run(Binaries.guest, ["bench", "--name", setup.host.name, "--threads", "2", "--duration", "2", "--json"])
        #expect(bench.status == 0)
        for _ in 0..<10 { try stillServes(setup) }
        _ = stalled
        #expect(try setup.host.stop() == 0)
    }

    @Test(arguments: ["uring", "poll"])
    func twoHundredConnectionsAtOnce(backend: String) throws {
        let setup = try start(backend)
        var clients: [RawControlSocket] = []
        for _ in 0..<200 { clients.append(try RawControlSocket(setup.socket)) }
        for client in clients { client.write(#"{"v":1,"cmd":"stats"}"# + "\n") }
        var answered = 0, refused = 0
        for client in clients {
            let answer = try reply(client.readLine())
            if answer["ok"] as? Bool == true { answered += 1 }
            if (answer["error"] as? String ?? "").contains("too many control connections") { refused += 1 }
        }
        #expect(answered == 64)
        #expect(refused == 136)
        clients.removeAll()
        try stillServes(setup)
        #expect(try setup.host.stop() == 0)
    }

    @Test(arguments: ["uring", "poll"])
    func shutdownOverTheSocket(backend: String) throws {
        let setup = try start(backend)
        let answer = try reply(try RawControlSocket(setup.socket).request(#"{"v":1,"cmd":"shutdown"}"#))
        #expect(answer["ok"] as? Bool == true)
        let deadline = Date().addingTimeInterval(10)
        while setup.host.process.isRunning, Date() < deadline { usleep(10_000) }
        #expect(!setup.host.process.isRunning)
        #expect(setup.host.process.terminationStatus == 0)
        #expect(!regionExists(setup.host.name))
        #expect(access(setup.socket, F_OK) != 0)
    }

    @Test func ctlCommandsUnderLoad() throws {
        let setup = try start("auto")
        let name = setup.host.name
        let control = ["--name", name, "--control", setup.socket]
        let guest = Process()
        guest.executableURL = Binaries.guest
        guest.arguments = ["bench", "--name", name, "--threads", "8", "--duration", "3", "--json"]
        guest.standardOutput = FileHandle.nullDevice
        try guest.run()
        // Under load: all 8 lanes claimed and round trips counted over the last second.
        let loaded = try eventually(timeout: 10) {
            let stats = try hostStats(name, control: setup.socket)
            return stats["lanes_claimed"] as? Int == 8 && (stats["ops_per_sec_last"] as? Double ?? 0) > 0
        }
        try #require(loaded != nil, "the guest never loaded all 8 lanes")
        let stats = try run(Binaries.host, ["ctl", "stats"] + control)
        #expect(stats.status == 0)
        #expect(stats.stdout.contains("8 of 8 lanes claimed"), "\(stats.stdout)")
        let json = try run(Binaries.host, ["ctl", "stats", "--json"] + control)
        let parsed = try reply(json.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect((parsed["ops_per_sec_last"] as? Double ?? 0) > 0)
        #expect((parsed["lanes"] as? [Any])?.count == 8)
        let watch = try run(Binaries.host, ["ctl", "watch", "--count", "2", "--interval-ms", "200"] + control)
        #expect(watch.status == 0)
        #expect(watch.stdout.split(separator: "\n").count == 3)  // header and two lines
        let lanes = try run(Binaries.host, ["ctl", "lanes"] + control)
        #expect(lanes.stdout.contains("claimed"))
        let metrics = try run(Binaries.host, ["ctl", "metrics"] + control)
        #expect(metrics.stdout.contains("# TYPE dx_lane_round_trips_total counter"))
        let config = try run(Binaries.host, ["ctl", "config", "--wait", "low-cpu"] + control)
        #expect(config.stdout.contains("changed; now wait: spin min 10 max 500"))
        let bad = try run(Binaries.host, ["ctl", "config", "--spin-min", "9", "--spin-max", "3"] + control)
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("nothing changed"))
        guest.waitUntilExit()
        #expect(guest.terminationStatus == 0)  // the guest never noticed the live change
        #expect(try setup.host.stop() == 0)
    }

    /// `dx-host ctl metrics` is swift-prometheus' rendering of the host's swift-metrics series, under
    /// the names the hand-written exposition had (and its labels), with a few host-wide additions.
    @Test func metricsKeepTheirNames() throws {
        let setup = try start("auto", ["--lanes", "4"])
        let name = setup.host.name
        let control = ["--name", name, "--control", setup.socket]
        // Lane series exist while a lane is claimed: keep two claimed while scraping.
        let guest = try Background(Binaries.guest, ["soak", "--name", name, "--threads", "2", "--duration", "4"])
        #expect(try eventually(timeout: 10) { try (hostStats(name, control: setup.socket)["lanes_claimed"] as? Int ?? 0) >= 2 } != nil)
        var text = PrometheusText("")
        let scraped = try eventually(timeout: 10) {
            let outcome = try run(Binaries.host, ["ctl", "metrics"] + control)
            guard outcome.status == 0 else { return false }
            text = PrometheusText(outcome.stdout)
            return text.samples.contains { $0.name == "dx_lane_round_trips_total" && $0.value > 0 }
        }
        #expect(scraped != nil, "no lane round trips in \(text.types)")
        let legacy: [String: String] = [
            "dx_uptime_seconds": "gauge", "dx_ops_per_second": "gauge", "dx_reclaimed_lanes_total": "counter",
            "dx_lane_round_trips_total": "counter", "dx_lane_wakes_sent_total": "counter",
            "dx_lane_wakes_skipped_total": "counter", "dx_lane_host_errors_total": "counter",
            "dx_lane_guest_calls_total": "counter", "dx_lane_guest_spin_wins_total": "counter",
            "dx_lane_guest_yields_total": "counter", "dx_lane_guest_sleeps_total": "counter",
            "dx_lane_guest_doorbells_total": "counter", "dx_lane_guest_turn_waits_total": "counter",
            "dx_worker_spin_wins_total": "counter", "dx_worker_yields_total": "counter", "dx_worker_sleeps_total": "counter",
        ]
        let added: [String: String] = [
            "dx_round_trips_total": "counter", "dx_wakes_sent_total": "counter", "dx_host_errors_total": "counter",
            "dx_lanes_claimed": "gauge",
        ]
        for (family, type) in legacy.merging(added, uniquingKeysWith: { $1 }) {
            #expect(text.types[family] == type, "\(family): \(text.types[family] ?? "missing")")
            #expect(text.help[family].map { !$0.isEmpty } == true, "\(family) has no HELP line")
        }
        #expect(Set(text.types.keys) == Set(legacy.keys).union(added.keys), "unexpected families: \(text.types.keys.sorted())")
        for sample in text.samples {
            #expect(sample.labels["region"] == name, "\(sample.line)")
            if sample.name.hasPrefix("dx_lane_") { #expect(sample.labels["lane"].flatMap { Int($0) }.map { (0..<4).contains($0) } == true) }
            if sample.name.hasPrefix("dx_worker_") { #expect(sample.labels["worker"] != nil) }
            #expect(sample.value >= 0, "\(sample.line)")
        }
        let total = text.samples.first { $0.name == "dx_round_trips_total" }?.value ?? 0
        let lanes = text.samples.filter { $0.name == "dx_lane_round_trips_total" }.reduce(0) { $0 + $1.value }
        #expect(total >= lanes && lanes > 0)
        #expect(guest.wait(timeout: 20) != nil)
        #expect(guest.process.terminationStatus == 0, "\(guest.errors)")
        // Released lanes take their series with them; the host-wide ones stay.
        let after = try eventually(timeout: 5) {
            let text = PrometheusText(try run(Binaries.host, ["ctl", "metrics"] + control).stdout)
            return !text.types.keys.contains { $0.hasPrefix("dx_lane_") } && text.types["dx_round_trips_total"] != nil
        }
        #expect(after != nil, "the lane series outlived their claims")
        #expect(try setup.host.stop() == 0)
    }

    /// A client that pipelines `lanes` requests and never reads: the host's memory stays flat, the
    /// connection is closed once its unsent replies pass the cap, and the drop is counted.
    @Test(arguments: ["uring", "poll"])
    func aClientThatNeverReadsIsCutOff(backend: String) throws {
        let setup = try start(backend)
        let pid = setup.host.process.processIdentifier
        let before = residentKiB(pid)
        let flooder = try RawControlSocket(setup.socket)
        let request = Array((#"{"v":1,"cmd":"lanes"}"# + "\n").utf8)
        var burst: [UInt8] = []
        for _ in 0..<200 { burst += request }
        // Write, never reading, until the host closes the connection (EPIPE), 50 MB went out, or
        // 20 s passed.
        var sent = 0
        var closed = false
        let deadline = Date().addingTimeInterval(20)
        while sent < 50_000_000, Date() < deadline {
            let count = burst.withUnsafeBytes { send(flooder.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if count > 0 { sent += count; continue }
            if errno == EAGAIN || errno == EINTR { usleep(1_000); continue }
            closed = true  // EPIPE or ECONNRESET
            break
        }
        #expect(closed, "the host never closed a client that never reads")
        let after = residentKiB(pid)
        print("\(backend): flood of \(sent) request bytes; host RSS \(before) KiB -> \(after) KiB")
        #expect(sent < 50_000_000, "the host kept reading a client that never reads")
        #expect(after - before < 20_000, "host memory grew by \(after - before) KiB")
        let stats = try reply(try RawControlSocket(setup.socket).request(#"{"v":1,"cmd":"stats"}"#))
        #expect(stats["control_dropped"] as? Int == 1)
        try stillServes(setup)
        #expect(try setup.host.stop() == 0)
    }

    /// A client that asks for more than the kernel buffers and then stops reading (less than the
    /// output cap) is closed once its output has not moved for the idle timeout, so such clients
    /// cannot fill the connection table; a client that reads is not.
    @Test(arguments: ["uring", "poll"])
    func aClientThatStopsReadingIsClosedAfterTheIdleTimeout(backend: String) throws {
        let setup = try start(backend, ["--control-idle-timeout", "0.5"])
        let host = setup.host, socket = setup.socket
        let stalled = try RawControlSocket(socket)
        // 2 KB a reply: 115 replies (230 KB) are more than the kernel buffers, less than the cap.
        stalled.write(String(repeating: #"{"v":1,"cmd":"stats"}"# + "\n", count: 115))
        let start = Date()
        let dropped = eventually(timeout: 10) {
            (try? reply(try RawControlSocket(socket).request(#"{"v":1,"cmd":"stats"}"#)))?["control_dropped"] as? Int == 1
        }
        #expect(dropped != nil, "a client that stopped reading was never closed")
        #expect(Date().timeIntervalSince(start) < 5)
        // Its connection is gone: reading now ends in EOF after the replies that were buffered.
        #expect(stalled.closedByHost())
        // A watcher that never reads: its lines fill only the kernel's buffer for a long while;
        // it is closed all the same once it has read nothing for the idle timeout.
        let watcher = try RawControlSocket(socket)
        watcher.write(#"{"v":1,"cmd":"watch","interval_ms":100}"# + "\n")
        let watcherDropped = eventually(timeout: 10) {
            (try? reply(try RawControlSocket(socket).request(#"{"v":1,"cmd":"stats"}"#)))?["control_dropped"] as? Int == 2
        }
        #expect(watcherDropped != nil, "a watcher that never reads was not closed")
        #expect(try host.stop() == 0)
    }

    /// A client that connects and says nothing is closed after the idle timeout; a watcher is not.
    @Test(arguments: ["uring", "poll"])
    func idleConnectionsAreClosed(backend: String) throws {
        let setup = try start(backend, ["--control-idle-timeout", "0.3"])
        let host = setup.host, socket = setup.socket
        let idle = try RawControlSocket(socket)
        let watcher = try RawControlSocket(socket)
        watcher.write(#"{"v":1,"cmd":"watch","interval_ms":100}"# + "\n")
        // The watcher reads as its lines come, for 1.5 s: five idle timeouts.
        for _ in 0..<15 { #expect(try reply(watcher.readLine())["cmd"] as? String == "watch") }
        // By then the idle client was closed: reading it ends at once in EOF.
        let start = Date()
        #expect(idle.closedByHost())
        #expect(Date().timeIntervalSince(start) < 0.5, "the idle client was still open after 1.5 s")
        #expect(try host.stop() == 0)
    }

    /// `--control` never changes an existing directory's mode, never removes what is not a stale dx
    /// socket of its own, and refuses unsafe places with a sentence.
    @Test func unsafeControlPathsAreRefusedAndNothingIsTouched() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("dx-paths-\(getpid())-\(UUID().uuidString.prefix(6))").path
        #expect(mkdir(base, 0o755) == 0)
        defer { try? FileManager.default.removeItem(atPath: base) }
        func mode(_ path: String) -> mode_t {
            var info = stat()
            return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : 0
        }
        func refused(_ control: String, _ message: String) throws {
            let outcome = try run(Binaries.host, ["--name", uniqueName(), "--control", control, "--log-level", "error"], timeout: 20)
            #expect(outcome.status != 0, "\(control) was accepted")
            #expect(outcome.stderr.contains(message), "\(control): \(outcome.stderr)")
        }
        // A directory of ours, open for reading: used as it is, its mode untouched.
        let host = try RunningHost(arguments: ["--control", base + "/ok.sock"])
        #expect(mode(base) == 0o755)
        #expect(try host.stop() == 0)
        #expect(access(base + "/ok.sock", F_OK) != 0)
        // A directory others may write to without the sticky bit: refused, mode untouched.
        let open = base + "/open"
        #expect(mkdir(open, 0o777) == 0 && chmod(open, 0o777) == 0)
        try refused(open + "/h.sock", "writable by others and not sticky")
        #expect(mode(open) == 0o777)
        // A sticky, world-writable directory such as /tmp keeps its mode (and its sticky bit).
        let sticky = base + "/sticky"
        #expect(mkdir(sticky, 0o777) == 0 && chmod(sticky, 0o1777) == 0)
        let inSticky = try RunningHost(arguments: ["--control", sticky + "/h.sock"])
        #expect(mode(sticky) == 0o1777)
        #expect(try inSticky.stop() == 0)
        // A regular file, a symlink and a directory at the path: refused, left where they are.
        let file = base + "/file.sock"
        #expect(FileManager.default.createFile(atPath: file, contents: Data("keep".utf8)))
        try refused(file, "exists and is not a socket of this user")
        #expect((try? String(contentsOfFile: file, encoding: .utf8)) == "keep")
        let link = base + "/link.sock"
        #expect(symlink(file, link) == 0)
        try refused(link, "exists and is not a socket of this user")
        #expect(access(link, F_OK) == 0)
        // The parent is a symlink to a directory: refused.
        #expect(symlink(sticky, base + "/dirlink") == 0)
        try refused(base + "/dirlink/h.sock", "is not a directory")
        // Too long for a Unix socket: refused before anything is created.
        try refused(base + "/" + String(repeating: "x", count: 120) + ".sock", "must have 1 to 107 bytes")
        // A stale socket of ours (nobody listens) is replaced.
        let stale = base + "/stale.sock"
        let listener = CShm_unix_listen(stale, 1)
        #expect(listener >= 0)
        close(listener)
        let replacing = try RunningHost(arguments: ["--control", stale])
        #expect(try replacing.stop() == 0)
    }

    /// `ctl watch` through a pipe (not a terminal): each line arrives as it is produced, not when a
    /// buffer fills or the process ends. Two lines a second apart must arrive within 8 s; a 4 KiB
    /// block buffer would hold them back for about 20 lines (20 s).
    @Test func ctlWatchWritesLineByLineThroughAPipe() throws {
        let setup = try start("auto")
        let watch = Process()
        watch.executableURL = Binaries.host
        watch.arguments = ["ctl", "watch", "--name", setup.host.name, "--control", setup.socket, "--interval-ms", "1000",
                           "--json"]
        let pipe = Pipe()
        watch.standardOutput = pipe
        try watch.run()
        defer {
            if watch.isRunning { kill(watch.processIdentifier, SIGKILL) }
            watch.waitUntilExit()
        }
        // Read two lines while the watcher keeps running (it has no --count: it never ends by itself).
        let fd = pipe.fileHandleForReading.fileDescriptor
        var text = [UInt8]()
        let deadline = Date().addingTimeInterval(8)
        while text.filter({ $0 == UInt8(ascii: "\n") }).count < 2, Date() < deadline {
            var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 200) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            text += chunk[0..<count]
        }
        #expect(watch.isRunning, "the watcher ended before its lines were read")
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n")
        #expect(lines.count >= 2, "got \(lines.count) lines within 8 s through a pipe")
        for line in lines.prefix(2) { #expect(try reply(String(line))["cmd"] as? String == "watch") }
        #expect(try setup.host.stop() == 0)
    }

    @Test func ctlWithoutAHostSaysSo() throws {
        let name = uniqueName()
        let outcome = try run(Binaries.host, ["ctl", "stats", "--name", name])
        #expect(outcome.status == 3)
        #expect(outcome.stderr.contains("no dx host named '\(name)' is running"))
    }

    /// As root, a process of another user (nobody) is refused: by the 0700 directory, and, when
    /// the directory is opened up, by the host's SO_PEERCRED check. The client checks the host's
    /// credentials too: without --host-uid it refuses a host of another user itself.
    @Test(.enabled(if: HostileTests.canActAsAnotherUser, "needs root and setpriv to act as another user"))
    func anotherUserIsRefused() throws {
        let setup = try start("auto")
        let asNobody = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", Binaries.host.path,
                        "ctl", "stats", "--name", setup.host.name, "--control", setup.socket]
        // The helper binary must be reachable by nobody: run it from a copy in /tmp.
        let copy = "/tmp/dx-host-\(getpid())"
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: Binaries.host.path, toPath: copy)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        var arguments = asNobody
        arguments[3] = copy
        let blocked = try run(URL(fileURLWithPath: "/usr/bin/setpriv"), arguments)
        #expect(blocked.status != 0)
        #expect(blocked.stderr.contains("permission denied") || blocked.stderr.contains("Permission denied"), "\(blocked.stderr)")
        // Open the directory and the socket: now only the peer-credential check stands.
        let directory = (setup.socket as NSString).deletingLastPathComponent
        chmod(directory, 0o755)
        chmod(setup.socket, 0o666)
        let notTrusted = try run(URL(fileURLWithPath: "/usr/bin/setpriv"), arguments)
        #expect(notTrusted.status != 0)
        #expect(notTrusted.stderr.contains("is served by uid 0, not by the host's uid"), "\(notTrusted.stderr)")
        let refused = try run(URL(fileURLWithPath: "/usr/bin/setpriv"), arguments + ["--host-uid", "0"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("permission denied: this host serves uid 0 only"), "\(refused.stderr)")
        try stillServes(setup)
        #expect(try setup.host.stop() == 0)
    }
}

extension RawControlSocket {
    func request(_ line: String) -> String? {
        write(line + "\n")
        return readLine()
    }
}
