import ArgumentParser
import DXCore

/// `--name`: the region a host serves and its guests call, checked the same way by every command
/// of `dx-host` and `dx-guest`.
public struct RegionNameOption: ParsableArguments {
    /// The region's name: letters, digits, '.', '_' and '-', as ``Region/isValidName(_:)`` allows.
    @Option(help: "Region name: the region is /dev/shm/dx.<name>.")
    public var name: String

    public init() {}

    /// Refuses a name no region can have, with a sentence that says what a name may hold.
    public func validate() throws {
        guard Region.isValidName(name) else {
            throw ValidationError("--name '\(name)' is not a valid region name: use 1 to \(Region.maxNameLength) letters, digits, '.', '_' or '-' (no '/')")
        }
    }
}
