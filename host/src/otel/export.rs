//! Sending finished spans to the OTLP/HTTP endpoint: a bounded queue, batches, one POST at a
//! time with a timeout, on the host's runtime.
//!
//! A span is queued without waiting; when [`MAX_QUEUE`]-many (`max_queue_size`) wait, new
//! ones are dropped and counted (`sygnal_otel_spans_dropped_total{reason="queue_full"}`). The
//! exporter sends a batch when [`BATCH_SIZE`] spans are waiting or [`BATCH_DELAY`] after the
//! first one of the batch; a batch the endpoint does not take (an error status, no answer
//! within `export_timeout`) is dropped and counted (`reason="export_failed"`), with a warning
//! at most once a minute: traces are worth less than the memory and the requests they would
//! hold up.

use super::{proto, Attr, FinishedSpan};
use crate::config::OpenTelemetryConfig;
use crate::metrics::{label, registry, Kind, Series};
use crate::throttle::Throttle;
use std::sync::Arc;
use std::time::Duration;
use sygnal_plugin_api::http::{build_client, describe_error, reqwest, ClientOptions};
use sygnal_plugin_api::HostInfo;
use tokio::sync::{mpsc, oneshot};

/// Spans sent in one request, at most.
pub const BATCH_SIZE: usize = 512;
/// How long the first span of a batch waits for others.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// The default of `metrics.opentelemetry.max_queue_size`.
pub const MAX_QUEUE: usize = 2048;

enum Item {
    Span(FinishedSpan),
    Flush(oneshot::Sender<()>),
}

/// The exporter's handle.
pub struct Exporter {
    queue: mpsc::Sender<Item>,
    dropped_full: Arc<Series>,
}

struct Counters {
    exported: Arc<Series>,
    dropped_failed: Arc<Series>,
}

fn counter(name: &str, help: &str, labels: &str) -> Arc<Series> {
    registry()
        .series(name, help, Kind::Counter, labels)
        .unwrap_or_default()
}

const DROPPED: &str = "sygnal_otel_spans_dropped";
const DROPPED_HELP: &str =
    "Trace spans dropped: queue full, or the OTLP endpoint did not take them";

impl Exporter {
    /// Starts exporting to `config.endpoint` (call inside the runtime).
    pub fn start(config: &OpenTelemetryConfig, host: &HostInfo) -> Result<Exporter, String> {
        sygnal_plugin_api::http::install_crypto_provider();
        let timeout = Duration::from_secs_f64(config.export_timeout);
        // The collector runs beside the gateway: not through the push providers' proxy.
        let host = HostInfo {
            proxy: None,
            ..host.clone()
        };
        let client = build_client(
            &host,
            &ClientOptions {
                request_timeout: timeout,
                connect_timeout: timeout.min(Duration::from_secs(10)),
                max_idle_per_host: 1,
                ..ClientOptions::default()
            },
        )?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!("metrics.opentelemetry.headers: `{name}` is not a header name")
            })?;
            let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                format!("metrics.opentelemetry.headers.{name}: not a valid header value")
            })?;
            headers.insert(name, value);
        }
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/x-protobuf"),
        );
        let (queue, receiver) = mpsc::channel(config.max_queue_size.max(1));
        let resource = vec![
            (
                "service.name",
                Attr::Str(config.service_name.clone().into()),
            ),
            (
                "service.version",
                Attr::Str(env!("CARGO_PKG_VERSION").into()),
            ),
            ("telemetry.sdk.language", Attr::Str("rust".into())),
            ("telemetry.sdk.name", Attr::Str("sygnal".into())),
        ];
        let sender = Sender {
            client,
            url: config.traces_url(),
            headers,
            resource,
            counters: Counters {
                exported: counter(
                    "sygnal_otel_spans_exported",
                    "Trace spans the OTLP endpoint took",
                    "",
                ),
                dropped_failed: counter(DROPPED, DROPPED_HELP, &label("reason", "export_failed")),
            },
            warnings: Throttle::every(Duration::from_secs(60)),
        };
        tokio::spawn(sender.run(receiver));
        Ok(Exporter {
            queue,
            dropped_full: counter(DROPPED, DROPPED_HELP, &label("reason", "queue_full")),
        })
    }

    /// Queues `span`, or drops it (counted) when the queue is full.
    pub fn send(&self, span: FinishedSpan) {
        if self.queue.try_send(Item::Span(span)).is_err() {
            self.dropped_full.inc();
        }
    }

    /// Sends what is queued now, waiting at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let (done, sent) = oneshot::channel();
        let _ = tokio::time::timeout(timeout, async {
            if self.queue.send(Item::Flush(done)).await.is_ok() {
                let _ = sent.await;
            }
        })
        .await;
    }
}

struct Sender {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    resource: Vec<(&'static str, Attr)>,
    counters: Counters,
    warnings: Throttle,
}

impl Sender {
    async fn run(mut self, mut queue: mpsc::Receiver<Item>) {
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        while let Some(first) = queue.recv().await {
            let mut flushed = Vec::new();
            match first {
                Item::Span(span) => batch.push(span),
                Item::Flush(done) => flushed.push(done),
            }
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            while flushed.is_empty() && batch.len() < BATCH_SIZE {
                tokio::select! {
                    item = queue.recv() => match item {
                        Some(Item::Span(span)) => batch.push(span),
                        Some(Item::Flush(done)) => flushed.push(done),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            if !batch.is_empty() {
                self.export(&batch).await;
                batch.clear();
            }
            for done in flushed {
                let _ = done.send(());
            }
        }
    }

    async fn export(&mut self, batch: &[FinishedSpan]) {
        let body = proto::export_request(&self.resource, batch);
        let sent = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .await;
        let problem = match sent {
            Ok(response) if response.status().is_success() => {
                self.counters.exported.add(batch.len() as f64);
                return;
            }
            Ok(response) => format!("answered {}", response.status()),
            Err(err) => describe_error(err),
        };
        self.counters.dropped_failed.add(batch.len() as f64);
        if let Some(held_back) = self.warnings.admit() {
            tracing::warn!(%problem, spans = batch.len(), failures_not_logged = held_back, "cannot export traces; these spans are dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn span() -> FinishedSpan {
        FinishedSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: Cow::Borrowed("test"),
            kind: super::super::SpanKind::Internal,
            start_unix_nano: 1,
            end_unix_nano: 2,
            attributes: Vec::new(),
            error: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_and_a_failed_export_drop_spans_and_count_them() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let config = OpenTelemetryConfig {
            enabled: true,
            endpoint: format!("http://127.0.0.1:{port}"),
            max_queue_size: 1,
            export_timeout: 5.0,
            ..OpenTelemetryConfig::default()
        };
        let exporter = Exporter::start(&config, &HostInfo::default()).unwrap();
        // A current-thread runtime: the exporter's task has not run yet, so one span fits.
        for _ in 0..3 {
            exporter.send(span());
        }
        exporter.flush(Duration::from_secs(20)).await;
        let text = registry().render();
        for line in [
            "sygnal_otel_spans_dropped_total{reason=\"queue_full\"} 2.0",
            "sygnal_otel_spans_dropped_total{reason=\"export_failed\"} 1.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
