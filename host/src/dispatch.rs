//! Handing one notification to the apps its devices route to, concurrently.

use crate::apps::{App, AppTable};
use crate::notify::ParsedNotify;
use crate::otel;
use abi_stable::std_types::{RResult, RStr};
use futures_util::future::join_all;
use std::sync::Arc;
use std::time::Instant;
use sygnal_plugin_api::abi::PushErrorKind;

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
    let notification_json = parsed.notification;
    let mut pending = Vec::with_capacity(batches.len());
    let mut dispatched = Vec::with_capacity(batches.len());
    for batch in batches {
        let Some(slot) = batch.app.try_acquire() else {
            batch.app.inflight_drops.inc();
            tracing::warn!(app = %batch.app.id, "too many in-flight requests for this app: dispatch dropped");
            failure = failure.max(Some(Failure::Dispatch));
            continue;
        };
        // Traced, the plugin gets the trace context with the request id (docs/plugin-abi.md).
        let trace = otel::start_dispatch(&batch.app.id, &batch.app.kind, batch.devices);
        let traced_id = trace
            .as_ref()
            .map(|span| span.plugin_request_id(request_id));
        let future = batch.app.pushkin.dispatch(
            RStr::from_str(traced_id.as_deref().unwrap_or(request_id)),
            RStr::from_str(notification_json),
            RStr::from_str(&batch.devices_json),
        );
        let app = batch.app;
        dispatched.push(Arc::clone(&app));
        pending.push(async move {
            let started = Instant::now();
            let outcome = future.await;
            if let Some(trace) = trace {
                trace.finish(&outcome);
            }
            app.dispatch_time.observe(started.elapsed().as_secs_f64());
            drop(slot);
            (app, outcome)
        });
    }

    let outcomes = match tokio::time::timeout_at(deadline.into(), join_all(pending)).await {
        Ok(outcomes) => outcomes,
        Err(_) => {
            let apps: Vec<&str> = dispatched.iter().map(|app| app.id.as_str()).collect();
            tracing::warn!(
                ?apps,
                "notify deadline (http.notify_timeout) passed: dispatch cancelled"
            );
            return Err(Failure::Dispatch);
        }
    };
    for (app, outcome) in outcomes {
        match outcome {
            RResult::ROk(keys) => rejected.extend(keys.into_iter().map(String::from)),
            RResult::RErr(err) => {
                let kind = kind_label(err.kind);
                tracing::warn!(app = %app.id, plugin = %app.kind, kind, error = %err.message, "dispatch failed");
                crate::sentry::dispatch_failed(
                    &app.id,
                    &app.kind,
                    err.kind,
                    &err.message,
                    request_id,
                );
                let this = match err.kind {
                    PushErrorKind::Panic => Failure::Panic,
                    _ => Failure::Dispatch,
                };
                failure = failure.max(Some(this));
            }
        }
    }
    match failure {
        Some(failure) => Err(failure),
        None => Ok(rejected),
    }
}
