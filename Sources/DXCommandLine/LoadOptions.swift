import ArgumentParser
import DXCore

/// What a command that sends traffic defaults to: its thread counts and how long it runs.
public protocol LoadDefaults: Sendable {
    /// `--threads` when not given.
    static var threads: [Int] { get }
    /// True when `--threads` takes a comma-separated list (one run per count), false for one count.
    static var threadLists: Bool { get }
    /// `--duration` when not given, in seconds.
    static var duration: Double { get }
    /// The longest `--duration` accepted, in seconds.
    static var longestDuration: Double { get }
    /// What `--duration` means for this command ("Seconds per run.").
    static var durationHelp: String { get }
}

/// The flags of a command that sends traffic to a host: `--name`, `--threads` and `--duration`,
/// with the defaults `Defaults` gives (each command keeps its own).
public struct LoadOptions<Defaults: LoadDefaults>: ParsableArguments {
    /// `--name`.
    @OptionGroup public var target: RegionNameOption

    /// The thread counts: one run each, or (without ``LoadDefaults/threadLists``) exactly one.
    @Option(help: ArgumentHelp(LoadOptions.threadsHelp), transform: { try LoadOptions.parseThreads($0) })
    public var threads: [Int] = Defaults.threads

    /// Seconds to run (per run, for a list of thread counts).
    @Option(help: ArgumentHelp(Defaults.durationHelp))
    public var duration: Double = Defaults.duration

    public init() {}

    /// The region name (`--name`).
    public var name: String { target.name }

    /// The duration in nanoseconds.
    public var durationNanoseconds: UInt64 { UInt64(duration * 1e9) }

    /// The help of `--threads`, with its default (which ArgumentParser does not show for a transformed value).
    static var threadsHelp: String {
        let meaning = Defaults.threadLists ? "Comma-separated thread counts, one run each." : "Guest threads, each on its own lane."
        return meaning + " (default: \(Defaults.threads.map(String.init).joined(separator: ",")))"
    }

    static func parseThreads(_ text: String) throws -> [Int] {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        let values = parts.map { Int($0.filter { $0 != " " }) }
        guard !values.isEmpty, values.count == 1 || Defaults.threadLists,
              values.allSatisfy({ (1...Layout.maxLanes).contains($0 ?? 0) }) else {
            throw ValidationError(Defaults.threadLists
                ? "--threads takes a comma-separated list of counts from 1 to \(Layout.maxLanes), like 1,4,8"
                : "--threads must be one count between 1 and \(Layout.maxLanes)")
        }
        return values.map { $0! }
    }

    /// Refuses a duration that is not positive or longer than ``LoadDefaults/longestDuration``.
    public func validate() throws {
        guard duration > 0, duration <= Defaults.longestDuration else {
            throw ValidationError("--duration must be in (0, \(Int(Defaults.longestDuration))] seconds")
        }
    }
}
