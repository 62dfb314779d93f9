//! Handing one notification to the apps its devices route to, concurrently.

use crate::apps::{App, AppTable, InflightGuard};
use crate::notify::ParsedNotify;
use crate::otel;
use abi_stable::std_types::{RResult, RStr};
use async_ffi::FfiFuture;
use futures_util::future::join_all;
use std::sync::Arc;
use std::time::Instant;
use sygnal_plugin_api::abi::{FfiDispatchResult, PushErrorKind};

/// Why a notification could not be delivered; decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// A pushkin failed (permanent, retries exhausted, in-flight limit): 502.
    Dispatch,
    /// A pushkin panicked: 500.
    Panic,
}

/// How a failed dispatch is named in logs and traces.
pub fn kind_label(kind: PushErrorKind) -> &'static str {
    match kind {
        PushErrorKind::Temporary => "temporary",
        PushErrorKind::Permanent => "permanent",
        PushErrorKind::Panic => "panic",
    }
}

/// The devices of one notification routed to one app.
struct Batch {
    app: Arc<App>,
    devices_json: String,
    devices: usize,
}

/// Routes the devices, dispatches each app's batch concurrently and joins the outcomes: the
/// rejected pushkeys (unroutable ones included), or the worst failure.
///
/// Whatever is still running at `deadline` is cancelled (dropping a plugin's future aborts its
/// task, retries and connection waits included) and the notification fails.
///
/// The table is let go of once the devices are routed: after a reload, a replaced pushkin is
/// closed as soon as the requests using it end, not those using other apps.
pub async fn dispatch(
    table: Arc<AppTable>,
    request_id: &str,
    parsed: &ParsedNotify<'_>,
    deadline: Instant,
) -> Result<Vec<String>, Failure> {
    let mut rejected = Vec::new();
    // Notifications from Synapse carry one device: a Vec beats a map here.
    let mut batches: Vec<Batch> = Vec::with_capacity(1);
    for device in &parsed.devices {
        let Some(app) = table.route(&device.app_id) else {
            tracing::info!(app_id = %device.app_id, "no unique app for this app_id: pushkey rejected");
            rejected.push(device.pushkey.clone().into_owned());
            continue;
        };
        app.devices_sent.inc();
        match batches
            .iter_mut()
            .find(|batch| Arc::ptr_eq(&batch.app, app))
        {
            Some(batch) => {
                batch.devices += 1;
                batch.devices_json.pop();
                batch.devices_json.push(',');
                batch.devices_json.push_str(device.raw.get());
                batch.devices_json.push(']');
            }
            None => {
                let mut devices_json = String::with_capacity(device.raw.get().len() + 2);
                devices_json.push('[');
                devices_json.push_str(device.raw.get());
                devices_json.push(']');
                batches.push(Batch {
                    app: Arc::clone(app),
                    devices_json,
                    devices: 1,
                });
            }
        }
    }

    drop(table);

    let mut failure = None;
    if batches.len() == 1 {
        // What Synapse sends (one device): awaited directly, without the lists a join needs.
        if let Some(delivery) = batches
            .pop()
            .and_then(|batch| start(batch, request_id, parsed))
        {
            let app = Arc::clone(&delivery.app);
            match tokio::time::timeout_at(deadline.into(), delivery.run()).await {
                Ok((app, outcome)) => {
                    absorb(&app, outcome, request_id, &mut rejected, &mut failure)
                }
                Err(_) => return Err(deadline_passed(&[app.id.as_str()])),
            }
        } else {
            failure = Some(Failure::Dispatch);
        }
    } else {
        let mut pending = Vec::with_capacity(batches.len());
        for batch in batches {
            match start(batch, request_id, parsed) {
                Some(delivery) => pending.push(delivery),
                None => failure = Some(Failure::Dispatch),
            }
        }
        let apps: Vec<Arc<App>> = pending.iter().map(|d| Arc::clone(&d.app)).collect();
        let running = join_all(pending.into_iter().map(Delivery::run));
        match tokio::time::timeout_at(deadline.into(), running).await {
            Ok(outcomes) => {
                for (app, outcome) in outcomes {
                    absorb(&app, outcome, request_id, &mut rejected, &mut failure);
                }
            }
            Err(_) => {
                let ids: Vec<&str> = apps.iter().map(|app| app.id.as_str()).collect();
                return Err(deadline_passed(&ids));
            }
        }
    }
    match failure {
        Some(failure) => Err(failure),
        None => Ok(rejected),
    }
}

/// One app's dispatch, started.
struct Delivery {
    app: Arc<App>,
    future: FfiFuture<FfiDispatchResult>,
    trace: Option<otel::DispatchSpan>,
    slot: InflightGuard,
}

impl Delivery {
    /// Awaits the plugin's answer, timing and tracing it.
    async fn run(self) -> (Arc<App>, FfiDispatchResult) {
        let started = Instant::now();
        let outcome = self.future.await;
        if let Some(trace) = self.trace {
            trace.finish(&outcome);
        }
        self.app
            .dispatch_time
            .observe(started.elapsed().as_secs_f64());
        drop(self.slot);
        (self.app, outcome)
    }
}

/// Hands `batch` to its app's pushkin; `None` (logged and counted) when the app has too many
/// requests in flight.
fn start(batch: Batch, request_id: &str, parsed: &ParsedNotify<'_>) -> Option<Delivery> {
    let Some(slot) = batch.app.try_acquire() else {
        batch.app.inflight_drops.inc();
        tracing::warn!(app = %batch.app.id, "too many in-flight requests for this app: dispatch dropped");
        return None;
    };
    // Traced, the plugin gets the trace context with the request id (docs/plugin-abi.md).
    let trace = otel::start_dispatch(&batch.app.id, &batch.app.kind, batch.devices);
    let traced_id = trace
        .as_ref()
        .map(|span| span.plugin_request_id(request_id));
    let future = batch.app.pushkin.dispatch(
        RStr::from_str(traced_id.as_deref().unwrap_or(request_id)),
        RStr::from_str(parsed.notification),
        RStr::from_str(&batch.devices_json),
    );
    Some(Delivery {
        app: batch.app,
        future,
        trace,
        slot,
    })
}

/// Adds a plugin's answer to the notification's: its rejected pushkeys, or its failure.
fn absorb(
    app: &App,
    outcome: FfiDispatchResult,
    request_id: &str,
    rejected: &mut Vec<String>,
    failure: &mut Option<Failure>,
) {
    match outcome {
        RResult::ROk(keys) => rejected.extend(keys.into_iter().map(String::from)),
        RResult::RErr(err) => {
            let kind = kind_label(err.kind);
            tracing::warn!(app = %app.id, plugin = %app.kind, kind, error = %err.message, "dispatch failed");
            crate::sentry::dispatch_failed(&app.id, &app.kind, err.kind, &err.message, request_id);
            let this = match err.kind {
                PushErrorKind::Panic => Failure::Panic,
                _ => Failure::Dispatch,
            };
            *failure = (*failure).max(Some(this));
        }
    }
}

/// Logs the apps still dispatching when the notify deadline passed.
fn deadline_passed(apps: &[&str]) -> Failure {
    tracing::warn!(
        ?apps,
        "notify deadline (http.notify_timeout) passed: dispatch cancelled"
    );
    Failure::Dispatch
}
