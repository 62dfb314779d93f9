//! The SDK: turns a plain [`Pushkin`] impl into the ABI's root module.
//!
//! A plugin library has its own copy of tokio, so it cannot run on the host's runtime. The SDK
//! owns one multi-thread runtime per library (sized by the host) and enters it for
//! constructors. A host that lends its reactor (`abi::HostIo`) gets each dispatch as an FFI
//! future it polls on its own thread, inside the plugin runtime's context; otherwise the
//! dispatch is spawned onto the plugin runtime and the future awaits the task. Every exported
//! function, and every poll of a dispatch, is wrapped in `catch_unwind`: a panic fails one
//! call, never the host.

use crate::abi::{
    FfiDispatchResult, FfiPushError, HostCtx, PluginMod, PluginModRef, PushErrorKind, PushkinBox,
    PushkinFfi, PushkinFfi_TO,
};
use crate::host_info::{HostInfo, PluginInfo};
use crate::metrics::Metrics;
use crate::notification::{JsonObject, Notification};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString, RVec};
use async_ffi::{FfiFuture, FutureExt as _};
use serde::de::DeserializeOwned;
use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::runtime::{Handle, Runtime};
use tracing::Instrument;

/// A push provider, as its author writes it.
///
/// The SDK calls [`new`](Pushkin::new) once per configured app of this kind, inside the plugin's
/// runtime (so it may create clients and spawn tasks, but must not block on the network), and
/// [`dispatch`](Pushkin::dispatch) once per notification for the devices routed to that app.
pub trait Pushkin: Sized + Send + Sync + 'static {
    /// The kind an app's `type` names to use this pushkin (`"apns"`, `"gcm"`, ...).
    const KIND: &'static str;

    /// What the plugin offers the host beyond dispatch.
    fn plugin_info() -> PluginInfo {
        PluginInfo::default()
    }

    /// Builds the pushkin for one app. An `Err` is a configuration error: name the config key.
    fn new(ctx: PushkinContext) -> Result<Self, String>;

    /// Delivers `notification` to its `devices` (all routed to this app).
    ///
    /// Returns the pushkeys the provider rejected for good (the homeserver then deletes those
    /// pushers), or why delivery failed. Handle retries inside: the error is final.
    fn dispatch(
        &self,
        notification: &Notification,
    ) -> impl Future<Output = Result<Vec<String>, PushError>> + Send;

    /// Releases resources before the app is dropped (on shutdown or reload). Must not block.
    fn close(&self) {}
}

/// Why a dispatch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushError {
    /// Whether trying again later could succeed.
    pub temporary: bool,
    /// What went wrong, for the operator. Never include secrets or whole pushkeys.
    pub message: String,
}

impl PushError {
    /// A failure that may succeed later (upstream 5xx, timeouts, retries exhausted).
    pub fn temporary(message: impl Into<String>) -> Self {
        PushError {
            temporary: true,
            message: message.into(),
        }
    }

    /// A failure that will repeat (bad credentials, a request the provider refuses).
    pub fn permanent(message: impl Into<String>) -> Self {
        PushError {
            temporary: false,
            message: message.into(),
        }
    }

    /// Of the failure kept so far and a new one, the one to report for the whole dispatch: a
    /// permanent failure says more about the configuration than a temporary one, so it wins;
    /// between equals the first is kept.
    pub fn worse(kept: Option<PushError>, new: PushError) -> PushError {
        match kept {
            Some(kept) if !kept.temporary || new.temporary => kept,
            _ => new,
        }
    }
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.temporary {
            "temporary"
        } else {
            "permanent"
        };
        write!(f, "{kind} failure: {}", self.message)
    }
}

impl std::error::Error for PushError {}

/// What a pushkin's constructor gets: its app, its config and the host's services.
#[derive(Debug, Clone)]
pub struct PushkinContext {
    app_id: String,
    config: JsonObject,
    host: HostInfo,
    metrics: Metrics,
}

/// Config keys read by the host (`type`, `inflight_request_limit`) or by the SDK's shared
/// helpers (the retry settings): a pushkin's own config struct need not declare them.
const SHARED_APP_KEYS: &[&str] = &[
    "type",
    "inflight_request_limit",
    "max_tries",
    "retry_delay_base",
    crate::fan_out::MAX_CONCURRENT_DEVICES_KEY,
];

impl PushkinContext {
    /// The app id (the key of this app's section under `apps`).
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The app's config section, as JSON.
    pub fn raw_config(&self) -> &JsonObject {
        &self.config
    }

    /// A configuration error naming the key, as the host shows it:
    /// `apps.<app id>.<key>: <why>`. Return it from [`Pushkin::new`].
    pub fn config_error(&self, key: &str, why: impl std::fmt::Display) -> String {
        format!("apps.{}.{key}: {why}", self.app_id)
    }

    /// The app's config section, deserialized. Booleans and numbers are read as PyYAML would
    /// (`yes`, `"5000"`: see [`lenient`](crate::lenient)). Errors name the app and the offending
    /// key; keys `T` does not know are logged as warnings, as Sygnal does.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, String> {
        let value = serde_json::Value::Object(self.config.clone());
        let mut unknown = Vec::new();
        let ignoring = serde_ignored_keys(value, &mut unknown);
        let parsed = ignoring.map_err(|err| {
            let path = err.path().to_string();
            let key = if path == "." {
                String::new()
            } else {
                format!(".{path}")
            };
            format!("apps.{}{key}: {}", self.app_id, err.inner())
        })?;
        for key in unknown
            .iter()
            .filter(|key| !SHARED_APP_KEYS.contains(&key.as_str()))
        {
            tracing::warn!(app = %self.app_id, key = %key, "unrecognised configuration key, ignored");
        }
        Ok(parsed)
    }

    /// What the host told this plugin (proxy, extra trust roots, user agent, ...).
    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    /// The host's metrics registry.
    pub fn metrics(&self) -> Metrics {
        self.metrics
    }

    /// A context for unit-testing a pushkin without a host: logs and metrics go nowhere.
    pub fn for_tests(app_id: &str, config: JsonObject, host: HostInfo) -> Self {
        extern "C" fn discard(
            _: crate::abi::MetricOp,
            _: RStr<'_>,
            _: RStr<'_>,
            _: RStr<'_>,
            _: f64,
        ) {
        }
        PushkinContext {
            app_id: app_id.to_owned(),
            config,
            host,
            metrics: Metrics::new(discard),
        }
    }
}

/// Deserializes `value` into `T`, collecting the paths of the keys `T` ignored.
fn serde_ignored_keys<T: DeserializeOwned>(
    value: serde_json::Value,
    unknown: &mut Vec<String>,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let ignoring =
        serde_ignored::Deserializer::new(crate::lenient::Lenient::new(value), &mut record);
    serde_path_to_error::deserialize(ignoring)
}

struct PluginRuntime {
    handle: Handle,
    runtime: Mutex<Option<Runtime>>,
}

static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
static PLUGIN_VERSION: OnceLock<&'static str> = OnceLock::new();

fn runtime(kind: &str, worker_threads: usize) -> std::io::Result<&'static PluginRuntime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_name(format!("pushkin-{kind}"))
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let _ = RUNTIME.set(PluginRuntime {
        handle,
        runtime: Mutex::new(Some(runtime)),
    });
    // A concurrent first call may have won the race; its runtime is the one kept.
    Ok(RUNTIME.get().expect("runtime was just set"))
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Builds the root module for pushkin `P`. Called through [`export_pushkin!`](crate::export_pushkin).
pub fn root_module<P: Pushkin>(plugin_version: &'static str) -> PluginModRef {
    let _ = PLUGIN_VERSION.set(plugin_version);
    PluginMod {
        kind: kind::<P>,
        version,
        info_json: info_json::<P>,
        new: new_pushkin::<P>,
        shutdown,
        attach_host_io: crate::host_io::attach,
    }
    .leak_into_prefix()
}

extern "C" fn kind<P: Pushkin>() -> RStr<'static> {
    RStr::from_str(P::KIND)
}

extern "C" fn version() -> RStr<'static> {
    RStr::from_str(PLUGIN_VERSION.get().copied().unwrap_or("unknown"))
}

extern "C" fn info_json<P: Pushkin>() -> RString {
    let info = catch_unwind(P::plugin_info).unwrap_or_default();
    let mut json = match serde_json::to_value(info) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    // Reported by the SDK itself: the host's refusal must not depend on the author.
    json.insert(
        crate::host_info::PANIC_STRATEGY_KEY.to_owned(),
        crate::host_info::PANIC_STRATEGY.into(),
    );
    serde_json::Value::Object(json).to_string().into()
}

extern "C" fn shutdown() {
    let _ = catch_unwind(|| {
        if let Some(rt) = RUNTIME.get() {
            let taken = rt.runtime.lock().map(|mut guard| guard.take());
            if let Ok(Some(runtime)) = taken {
                runtime.shutdown_background();
            }
        }
    });
}

extern "C" fn new_pushkin<P: Pushkin>(
    host: HostCtx,
    app_id: RStr<'_>,
    config_json: RStr<'_>,
) -> RResult<PushkinBox, RString> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        construct::<P>(host, app_id, config_json)
    }));
    match outcome {
        Ok(Ok(pushkin)) => ROk(pushkin),
        Ok(Err(message)) => RErr(message.into()),
        Err(payload) => {
            RErr(format!("pushkin constructor panicked: {}", panic_message(&*payload)).into())
        }
    }
}

fn construct<P: Pushkin>(
    host: HostCtx,
    app_id: RStr<'_>,
    config_json: RStr<'_>,
) -> Result<PushkinBox, String> {
    crate::logging::install(host.log, host.max_log_level, P::KIND);
    let host_info: HostInfo = serde_json::from_str(host.host_info_json.as_str())
        .map_err(|err| format!("host information is not valid JSON: {err}"))?;
    let config: JsonObject = serde_json::from_str(config_json.as_str())
        .map_err(|err| format!("apps.{app_id}: config is not a JSON object: {err}"))?;
    let rt = runtime(P::KIND, host_info.worker_threads)
        .map_err(|err| format!("cannot start the plugin runtime: {err}"))?;
    let ctx = PushkinContext {
        app_id: app_id.as_str().to_owned(),
        config,
        host: host_info,
        metrics: Metrics::new(host.metric),
    };
    let _entered = rt.handle.enter();
    let pushkin = P::new(ctx)?;
    let adapter = Adapter {
        inner: Arc::new(pushkin),
        app_id: app_id.as_str().to_owned(),
        handle: rt.handle.clone(),
        log: host.log,
    };
    Ok(PushkinFfi_TO::from_value(adapter, TD_Opaque))
}

struct Adapter<P> {
    inner: Arc<P>,
    app_id: String,
    handle: Handle,
    /// The host's log callback, which also takes finished spans (see [`crate::trace`]).
    log: crate::abi::LogFn,
}

/// A pushkin's dispatch, boxed: a pushkin's future can hold a few KiB of state, and tokio copies
/// a task's whole cell when it hands the output back; a box keeps that to a pointer.
type Dispatch = Pin<Box<dyn Future<Output = Result<Vec<String>, PushError>> + Send>>;

/// Why a dispatch ended without its own result.
enum Stopped {
    Panicked(Box<dyn Any + Send>),
    /// Its task was dropped by the runtime shutting down.
    Cancelled,
}

/// Aborts the dispatch task when the host drops the future (request cancelled).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A dispatch polled on the host's thread, inside this library's runtime context (its timers
/// and spawned tasks live there), when the host lends its reactor: the upstream's sockets are
/// then the host's, and no answer has to cross from a plugin thread to a host thread.
struct Inline {
    dispatch: Option<Dispatch>,
    handle: Handle,
}

impl Future for Inline {
    type Output = FfiDispatchResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FfiDispatchResult> {
        let this = &mut *self;
        let Some(dispatch) = this.dispatch.as_mut() else {
            return Poll::Pending; // finished: the host does not poll again
        };
        let _entered = this.handle.enter();
        let outcome = match catch_unwind(AssertUnwindSafe(|| dispatch.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => Ok(result),
            Err(payload) => Err(Stopped::Panicked(payload)),
        };
        drop_quietly(this.dispatch.take());
        Poll::Ready(to_ffi(outcome))
    }
}

impl Drop for Inline {
    /// The host dropped an unfinished dispatch (request cancelled).
    fn drop(&mut self) {
        if let Some(dispatch) = self.dispatch.take() {
            let _entered = self.handle.enter();
            drop_quietly(Some(dispatch));
        }
    }
}

/// Drops a dispatch that may have panicked: its destructors may panic too.
fn drop_quietly(dispatch: Option<Dispatch>) {
    let _ = catch_unwind(AssertUnwindSafe(move || drop(dispatch)));
}

fn to_ffi(outcome: Result<Result<Vec<String>, PushError>, Stopped>) -> FfiDispatchResult {
    match outcome {
        Ok(Ok(rejected)) => ROk(rejected.into_iter().map(RString::from).collect::<RVec<_>>()),
        Ok(Err(err)) => RErr(FfiPushError {
            kind: if err.temporary {
                PushErrorKind::Temporary
            } else {
                PushErrorKind::Permanent
            },
            message: err.message.into(),
        }),
        Err(Stopped::Panicked(payload)) => RErr(FfiPushError {
            kind: PushErrorKind::Panic,
            message: format!("pushkin panicked: {}", panic_message(&*payload)).into(),
        }),
        Err(Stopped::Cancelled) => RErr(FfiPushError {
            kind: PushErrorKind::Temporary,
            message: "dispatch cancelled: the plugin runtime is shutting down".into(),
        }),
    }
}

fn failed(kind: PushErrorKind, message: String) -> FfiFuture<FfiDispatchResult> {
    let result = RErr(FfiPushError {
        kind,
        message: message.into(),
    });
    std::future::ready(result).into_ffi()
}

impl<P: Pushkin> Adapter<P> {
    fn start(
        &self,
        request_id: RStr<'_>,
        notification_json: RStr<'_>,
        devices_json: RStr<'_>,
    ) -> FfiFuture<FfiDispatchResult> {
        let notification = match Notification::from_dispatch_json(
            notification_json.as_str(),
            devices_json.as_str(),
        ) {
            Ok(notification) => notification,
            Err(message) => return failed(PushErrorKind::Permanent, message),
        };
        let pushkin = Arc::clone(&self.inner);
        let (request_id, trace) = crate::trace::split_request_id(request_id.as_str());
        let span = tracing::info_span!("dispatch", request_id = %request_id, app = %self.app_id);
        let dispatch: Dispatch =
            Box::pin(async move { pushkin.dispatch(&notification).await }.instrument(span));
        let dispatch = match trace {
            Some(context) => Box::pin(crate::trace::in_dispatch(
                context,
                self.log,
                P::KIND,
                dispatch,
            )),
            None => dispatch,
        };
        if crate::host_io::lent().is_some() {
            return Inline {
                dispatch: Some(dispatch),
                handle: self.handle.clone(),
            }
            .into_ffi();
        }
        let task = AbortOnDrop(self.handle.spawn(dispatch));
        async move {
            let mut task = task;
            to_ffi((&mut task.0).await.map_err(|join_err| {
                if join_err.is_panic() {
                    Stopped::Panicked(join_err.into_panic())
                } else {
                    Stopped::Cancelled
                }
            }))
        }
        .into_ffi()
    }
}

impl<P: Pushkin> PushkinFfi for Adapter<P> {
    fn dispatch(
        &self,
        request_id: RStr<'_>,
        notification_json: RStr<'_>,
        devices_json: RStr<'_>,
    ) -> FfiFuture<FfiDispatchResult> {
        match catch_unwind(AssertUnwindSafe(|| {
            self.start(request_id, notification_json, devices_json)
        })) {
            Ok(future) => future,
            Err(payload) => failed(
                PushErrorKind::Panic,
                format!("pushkin panicked: {}", panic_message(&*payload)),
            ),
        }
    }

    fn close(&self) {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let _entered = self.handle.enter();
            self.inner.close();
        }));
    }
}
