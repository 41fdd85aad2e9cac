import CoreMetrics
import DXCore
import Prometheus

/// dx-host's metrics backend: swift-prometheus, bootstrapped once for the process, whose registry
/// `ctl metrics` renders. DXCore only talks to swift-metrics; this is the one place that picks a
/// backend.
enum PrometheusExport {
    static let registry = PrometheusCollectorRegistry()

    /// Bootstraps swift-metrics with the registry (once per process, before the host exists).
    static func bootstrap() {
        MetricsSystem.bootstrap(HelpfulPrometheusFactory(registry: registry))
    }

    /// The Prometheus text exposition of every series now.
    @Sendable static func text() -> String {
        registry.emitToString()
    }
}

/// swift-prometheus' factory, with `# HELP` lines for dx's families (``HostMetric/help``): the
/// stock factory has no way to carry help text through swift-metrics, and the names stay those
/// the hand-written exposition had.
struct HelpfulPrometheusFactory: MetricsFactory {
    let registry: PrometheusCollectorRegistry
    private let stock: PrometheusMetricsFactory
    private let help: [String: String]

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        stock = PrometheusMetricsFactory(registry: registry)
        help = Dictionary(HostMetric.all.map { ($0.label, $0.help) }, uniquingKeysWith: { first, _ in first })
    }

    private func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: help[label] ?? "")
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        aggregate ? stock.makeRecorder(label: label, dimensions: dimensions, aggregate: true)
            : registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        stock.makeTimer(label: label, dimensions: dimensions)
    }

    func destroyCounter(_ handler: any CounterHandler) { stock.destroyCounter(handler) }
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) { stock.destroyFloatingPointCounter(handler) }
    func destroyRecorder(_ handler: any RecorderHandler) { stock.destroyRecorder(handler) }
    func destroyMeter(_ handler: any MeterHandler) { stock.destroyMeter(handler) }
    func destroyTimer(_ handler: any TimerHandler) { stock.destroyTimer(handler) }
}
