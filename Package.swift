// swift-tools-version: 6.0
import PackageDescription

// MARK: - Shared settings

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

// MARK: - Package

let package = Package(
    name: "dx",
    products: [
        .library(name: "DXCore", targets: ["DXCore"]),
        .library(name: "CDXGuest", targets: ["CDXGuest"]),
        .executable(name: "dx-host", targets: ["DXHost"]),
        .executable(name: "dx-guest", targets: ["DXGuest"]),
        .executable(name: "kv-host", targets: ["KVHost"]),
        .executable(name: "kv-guest", targets: ["KVGuest"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // MARK: Library
        .target(
            name: "CShm",
            linkerSettings: [.linkedLibrary("pthread"), .linkedLibrary("uring")]
        ),
        .target(
            name: "DXCore",
            dependencies: [
                "CShm",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // The guest side in C, written from docs/LAYOUT.md, for programs in other languages.
        .target(name: "CDXGuest", linkerSettings: [.linkedLibrary("pthread")]),

        // MARK: Executables
        .target(
            name: "DXCommandLine",
            dependencies: [
                "DXCore", "CShm",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "DXHost",
            dependencies: [
                "DXCore",
                "DXCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                // The exposition behind `ctl metrics`; DXCore itself only talks to swift-metrics.
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "DXGuest",
            dependencies: [
                "DXCore",
                "DXCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),

        // MARK: Examples (see Examples/README.md)
        .target(name: "KVProtocol", path: "Examples/KVProtocol", swiftSettings: swiftSettings),
        .executableTarget(
            name: "KVHost",
            dependencies: [
                "DXCore", "KVProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/KVHost",
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "KVGuest",
            dependencies: [
                "DXCore", "KVProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/KVGuest",
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),

        // MARK: Tests
        .target(name: "CAllocationCounter", path: "Tests/CAllocationCounter"),
        .target(name: "DXTestSupport", path: "Tests/DXTestSupport", swiftSettings: swiftSettings),
        .testTarget(
            name: "DXCoreTests",
            dependencies: [
                "DXCore", "CShm", "CAllocationCounter", "CDXGuest", "DXTestSupport",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "DXIntegrationTests",
            dependencies: ["DXCore", "CShm", "DXTestSupport"],
            swiftSettings: swiftSettings
        ),
    ]
)
