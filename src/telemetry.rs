//! Logs and traces: structured logs to stderr (`RUST_LOG` honoured, `info` by
//! default) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the same spans exported
//! over OTLP/HTTP. Without that variable nothing is exported.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

/// Keeps the exporter alive; flushes pending spans when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing traces: {e}");
            }
        }
    }
}

/// The spans of database calls (`store`), exported with traces but never
/// logged: created only when traces are exported.
const DATABASE_SPANS: &str = "passerelle::db=debug";

pub fn init() -> Telemetry {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter());
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|_| {
            // The exporter reads the endpoint and headers from the OTEL_* variables.
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(Resource::builder().with_service_name("passerelle").build())
                        .build(),
                ),
                Err(e) => {
                    eprintln!("OTLP exporter not started: {e}");
                    None
                }
            }
        });
    let otel = provider.as_ref().map(|p| {
        let mut traced = filter();
        if let Ok(directive) = DATABASE_SPANS.parse() {
            traced = traced.add_directive(directive);
        }
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("passerelle"))
            .with_filter(traced)
    });
    // A second init (tests start several servers in one process) is harmless.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

/// The W3C `traceparent` of the current span, to send with an outgoing call
/// (a subscription's callback) so that the receiver's trace joins ours; `None`
/// when traces are not exported.
pub fn traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace an incoming request names in its
/// `traceparent` header (a client's, or a proxy's), when it names one.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(value) = traceparent else {
        return;
    };
    let carrier = std::collections::HashMap::from([("traceparent".to_owned(), value.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}
