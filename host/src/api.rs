//! The HTTP API: `POST /_matrix/push/v1/notify`, `GET /health`, and the spec's error rules.

use crate::apps::AppTable;
use crate::dedup::Dedup;
use crate::dispatch::Failure;
use crate::metrics::{label, registry, Kind, Series};
use crate::notify::{parse, BadRequest};
use crate::otel;
use crate::server::{BodyRefused, DirectAnswer, DirectRoute};
use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, State};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::util::service_fn;
use tower::{Layer, Service};
use tracing::Instrument;

/// Bodies over this are refused with 413.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// What the handlers share.
pub struct AppState {
    /// The app table; swapped whole on reload.
    pub apps: ArcSwap<AppTable>,
    dedup: Dedup,
    metrics: CoreMetrics,
    request_ids: AtomicU64,
    instance: u32,
    /// `http.notify_timeout`: the bound on one whole dispatch.
    notify_timeout: Duration,
}

impl AppState {
    /// State serving `apps`.
    pub fn new(apps: AppTable) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        Ok(AppState {
            apps: ArcSwap::from_pointee(apps),
            dedup: Dedup::default(),
            metrics: CoreMetrics::new()?,
            request_ids: AtomicU64::new(0),
            instance: nanos ^ std::process::id().rotate_left(16),
            notify_timeout: Duration::from_secs_f64(crate::config::DEFAULT_NOTIFY_TIMEOUT),
        })
    }

    /// Suppresses duplicate notifications with `dedup` (off by default).
    pub fn with_dedup(mut self, dedup: Dedup) -> Self {
        self.dedup = dedup;
        self
    }

    /// Bounds each /notify's dispatch by `timeout` (`http.notify_timeout`).
    pub fn with_notify_timeout(mut self, timeout: Duration) -> Self {
        self.notify_timeout = timeout;
        self
    }

    fn next_request_id(&self) -> RequestId {
        RequestId::new(
            self.instance,
            self.request_ids.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// A request's id, `<instance, 8 hex digits>-<counter>`, kept without allocating: every
/// /notify gets one.
struct RequestId {
    text: [u8; 29],
    len: usize,
}

impl RequestId {
    fn new(instance: u32, counter: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 29];
        for (i, byte) in text[..8].iter_mut().enumerate() {
            *byte = HEX[(instance >> (28 - 4 * i) & 0xf) as usize];
        }
        text[8] = b'-';
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut rest = counter;
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let len = 9 + digits.len() - start;
        text[9..len].copy_from_slice(&digits[start..]);
        RequestId { text, len }
    }

    fn as_str(&self) -> &str {
        // ASCII by construction.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }
}

/// Sygnal's core series, resolved once.
struct CoreMetrics {
    received: Arc<Series>,
    devices_received: Arc<Series>,
    in_flight: Arc<Series>,
    /// (status code, `sygnal_pushgateway_status_codes`, `sygnal_notify_time`) for each code
    /// /notify answers with.
    by_code: Vec<(u16, Arc<Series>, Arc<Series>)>,
}

impl CoreMetrics {
    fn new() -> Result<Self, String> {
        let registry = registry();
        let series = |name: &str, help: &str, kind: Kind, labels: &str| {
            registry.try_series(name, help, kind, labels)
        };
        let by_code = [200u16, 400, 408, 413, 500, 502, 503]
            .into_iter()
            .map(|code| {
                let labels = label("code", &code.to_string());
                Ok((
                    code,
                    series(
                        "sygnal_pushgateway_status_codes",
                        "HTTP Response Codes given on the Push Gateway API",
                        Kind::Counter,
                        &labels,
                    )?,
                    series(
                        "sygnal_notify_time",
                        "Time taken to handle /notify push gateway request",
                        Kind::Histogram,
                        &labels,
                    )?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(CoreMetrics {
            received: series(
                "sygnal_notifications_received",
                "Number of notification pokes received",
                Kind::Counter,
                "",
            )?,
            devices_received: series(
                "sygnal_notifications_devices_received",
                "Number of devices been asked to push",
                Kind::Counter,
                "",
            )?,
            in_flight: series(
                "sygnal_requests_in_flight",
                "Number of HTTP requests in flight",
                Kind::Gauge,
                &label("resource", "V1NotifyHandler"),
            )?,
            by_code,
        })
    }

    fn finish(&self, code: u16, started: Instant) {
        if let Some((_, count, time)) = self.by_code.iter().find(|(c, _, _)| *c == code) {
            count.inc();
            time.observe(started.elapsed().as_secs_f64());
        }
    }
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a Series);

impl<'a> InFlight<'a> {
    fn enter(series: &'a Series) -> Self {
        series.add(1.0);
        InFlight(series)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.add(-1.0);
    }
}

/// The Push Gateway API router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            NOTIFY_PATH,
            post(notify).get(notify_get).fallback(method_not_allowed),
        )
        .route("/health", get(health).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `POST /notify` answered in front of the router (see [`DirectRoute`]), by the same
/// handler, its extractors and its body limit.
pub fn direct_notify(state: Arc<AppState>) -> DirectRoute {
    // The answer is boxed where it is made and passed on as the box: the handler's future is
    // large, and each wrapper around it would be another copy of it.
    let limited = DefaultBodyLimit::max(MAX_BODY_BYTES).layer(service_fn(
        move |request: Request<Body>| -> DirectAnswer {
            let state = Arc::clone(&state);
            Box::pin(async move {
                let (mut parts, body) = request.into_parts();
                let Ok(caller) = otel::Incoming::from_request_parts(&mut parts, &()).await;
                let body = Bytes::from_request(Request::from_parts(parts, body), &()).await;
                Ok(notify(State(state), caller, body).await)
            })
        },
    ));
    DirectRoute {
        method: Method::POST,
        path: NOTIFY_PATH,
        answer: Box::new(move |request| limited.clone().call(request)),
    }
}

fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errcode": errcode, "error": message });
    (status, axum::Json(body)).into_response()
}

/// The answer to a body over [`MAX_BODY_BYTES`].
pub fn payload_too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
        "request body too large",
    )
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "Unrecognized request",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "Method not allowed",
    )
}

async fn health() -> StatusCode {
    StatusCode::OK
}

/// UnifiedPush distributors probe this to discover a gateway.
async fn notify_get(State(state): State<Arc<AppState>>) -> Response {
    match &state.apps.load().notify_get_response {
        Some(body) => axum::Json(body.clone()).into_response(),
        None => method_not_allowed().await,
    }
}

async fn notify(
    State(state): State<Arc<AppState>>,
    caller: otel::Incoming,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::enter(&state.metrics.in_flight);
    let request_id = state.next_request_id();
    let request_id = request_id.as_str();
    let span = tracing::info_span!("notify", request_id = %request_id);
    let trace = otel::start_request(&caller, NOTIFY_PATH, request_id);
    let handler =
        handle_notify(&state, request_id, body, started + state.notify_timeout).instrument(span);
    let response = match &trace {
        Some(trace) => trace.scope(handler).await,
        None => handler.await,
    };
    let status = response.status().as_u16();
    state.metrics.finish(status, started);
    if let Some(trace) = trace {
        trace.finish(status);
    }
    response
}

/// The answer to a body that could not be read: too slow (408), no memory for it now (503),
/// or what axum found wrong.
fn unreadable_body(rejection: &BytesRejection) -> Response {
    let (status, reason) = match crate::server::refusal(rejection) {
        Some(BodyRefused::Timeout) => (StatusCode::REQUEST_TIMEOUT, "request body too slow"),
        Some(BodyRefused::Memory) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies being received; retry later",
        ),
        None => return error(rejection.status(), "M_UNKNOWN", &rejection.body_text()),
    };
    tracing::info!(%reason, "request body refused");
    error(status, "M_UNKNOWN", reason)
}

async fn handle_notify(
    state: &AppState,
    request_id: &str,
    body: Result<Bytes, BytesRejection>,
    deadline: Instant,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            tracing::warn!("request body over {MAX_BODY_BYTES} bytes refused");
            return payload_too_large();
        }
        Err(rejection) => return unreadable_body(&rejection),
    };
    state.metrics.received.inc();
    let parsed = match parse(&body) {
        Ok(parsed) => parsed,
        Err(bad) => {
            let (errcode, reason) = match bad {
                BadRequest::NotJson(reason) => ("M_NOT_JSON", reason),
                BadRequest::BadJson(reason) => ("M_BAD_JSON", reason),
            };
            tracing::info!(%reason, "invalid notification refused");
            return error(StatusCode::BAD_REQUEST, errcode, &reason);
        }
    };
    state
        .metrics
        .devices_received
        .add(parsed.devices.len() as f64);
    match state
        .dedup
        .dispatch(state.apps.load_full(), request_id, &parsed, deadline)
        .await
    {
        Ok(rejected) => {
            tracing::debug!(
                devices = parsed.devices.len(),
                rejected = rejected.len(),
                "notification dispatched"
            );
            rejected_response(&rejected)
        }
        Err(Failure::Dispatch) => error(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            "push provider dispatch failed",
        ),
        Err(Failure::Panic) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            "internal error while dispatching",
        ),
    }
}

/// 200 with the rejected pushkeys. Nearly every answer rejects none: that body is a constant.
fn rejected_response(rejected: &[String]) -> Response {
    #[derive(serde::Serialize)]
    struct Rejected<'a> {
        rejected: &'a [String],
    }
    let body = if rejected.is_empty() {
        Bytes::from_static(br#"{"rejected":[]}"#)
    } else {
        match serde_json::to_vec(&Rejected { rejected }) {
            Ok(body) => Bytes::from(body),
            Err(err) => {
                tracing::error!(%err, "could not write the rejected pushkeys");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "M_UNKNOWN",
                    "internal error",
                );
            }
        }
    };
    let mut response = Response::new(axum::body::Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The Prometheus router (`GET /metrics`).
pub fn metrics_router() -> Router {
    Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                {
                    let mut text = registry().render();
                    crate::process_metrics::render(&mut text);
                    text
                },
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_read_as_instance_and_counter() {
        for (instance, counter) in [(0, 0), (0xdead_beef, 42), (u32::MAX, u64::MAX), (7, 10)] {
            assert_eq!(
                RequestId::new(instance, counter).as_str(),
                format!("{instance:08x}-{counter}")
            );
        }
    }

    #[tokio::test]
    async fn the_direct_route_answers_as_the_router_does() {
        use tower::ServiceExt as _;
        let state = Arc::new(AppState::new(AppTable::new(vec![])).unwrap());
        let direct = direct_notify(Arc::clone(&state));
        let device = r#"{"app_id":"com.example.unknown","pushkey":"spqr"}"#;
        let over_the_limit = format!(
            r#"{{"notification":{{"devices":[{device}],"content":{{"body":"{}"}}}}}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let bodies = [
            format!(r#"{{"notification":{{"devices":[{device}]}}}}"#),
            "not json".to_owned(),
            r#"{"notification":{"devices":[]}}"#.to_owned(),
            r#"{"other":1}"#.to_owned(),
            over_the_limit,
        ];
        let request = |body: &str| {
            Request::post(NOTIFY_PATH)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap()
        };
        let read = |response: Response| async move {
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            (status, body)
        };
        let mut statuses = Vec::new();
        for body in &bodies {
            let routed = read(
                router(Arc::clone(&state))
                    .oneshot(request(body))
                    .await
                    .unwrap(),
            )
            .await;
            assert!(direct.matches(&request(body)));
            let Ok(direct) = (direct.answer)(request(body)).await;
            let direct = read(direct).await;
            assert_eq!(direct, routed, "{}", &body[..body.len().min(80)]);
            statuses.push(direct.0.as_u16());
        }
        assert_eq!(statuses, [200, 400, 400, 400, 413]);
    }

    #[tokio::test]
    async fn the_answer_lists_rejected_pushkeys_as_json() {
        for rejected in [vec![], vec!["a\"b".to_owned(), "c".to_owned()]] {
            let response = rejected_response(&rejected);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, serde_json::json!({ "rejected": rejected }));
        }
    }
}
