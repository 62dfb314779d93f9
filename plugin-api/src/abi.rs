//! The binary interface between the host and a pushkin library.
//!
//! Plugin authors never touch this module: [`export_pushkin!`](crate::export_pushkin) builds the
//! root module from a plain [`Pushkin`](crate::Pushkin) impl. The host uses it to load libraries.
//!
//! Rules that keep old plugins loadable by newer hosts:
//! - data crosses as JSON text (the notification, the devices, the app config, host information),
//!   so it can grow without changing any layout here;
//! - new root-module functions are appended after the last field, never inserted;
//! - [`PushkinFfi`] does not gain methods within a major version.

// sabi_trait generates impls inside a const block; the lint is about the macro, not this code.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};
use async_ffi::{FfiContext, FfiFuture, FfiPoll};

/// Severity of a log record forwarded from a plugin to the host.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing is logged (only meaningful as a maximum level).
    Off = 0,
    /// Errors.
    Error = 1,
    /// Warnings.
    Warn = 2,
    /// Informational messages.
    Info = 3,
    /// Debugging detail.
    Debug = 4,
    /// Very verbose tracing.
    Trace = 5,
}

/// What a metrics call does to the named series.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricOp {
    /// Add a non-negative amount to a counter.
    CounterAdd = 0,
    /// Set a gauge.
    GaugeSet = 1,
    /// Add a (possibly negative) amount to a gauge.
    GaugeAdd = 2,
    /// Record one observation in a histogram (seconds, default Prometheus buckets).
    HistogramObserve = 3,
}

/// Host log sink: `(level, plugin kind, target, message, fields)`.
///
/// `fields` is a JSON object of the record's fields (`{"request_id":"12","status":404}`), or
/// empty. Plugins built before plugin-api 1.0's structured fields sent `key=value` pairs
/// separated by spaces; hosts accept both, telling them apart by the leading `{`.
pub type LogFn = extern "C" fn(LogLevel, RStr<'_>, RStr<'_>, RStr<'_>, RStr<'_>);

/// Host metrics sink: `(op, metric name, help text, labels, value)`.
///
/// `labels` is the Prometheus label list without braces (`pushkin="a",code="200"`), or empty.
pub type MetricFn = extern "C" fn(MetricOp, RStr<'_>, RStr<'_>, RStr<'_>, f64);

/// Services the host lends to a pushkin, passed to every constructor call.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct HostCtx {
    /// Log sink; the host re-emits records in its own logger. See [`LogFn`].
    pub log: extern "C" fn(LogLevel, RStr<'_>, RStr<'_>, RStr<'_>, RStr<'_>),
    /// The most verbose level the host will print; plugins skip anything finer.
    pub max_log_level: LogLevel,
    /// Metrics sink; the series appear on the host's /metrics. See [`MetricFn`].
    pub metric: extern "C" fn(MetricOp, RStr<'_>, RStr<'_>, RStr<'_>, f64),
    /// Everything else, as a JSON object, so it can grow without an ABI break.
    /// See [`HostInfo`](crate::HostInfo) for the keys.
    pub host_info_json: RString,
}

/// How a dispatch failed.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushErrorKind {
    /// Worth retrying later (upstream 5xx, timeouts, retries exhausted).
    Temporary = 0,
    /// Will fail again the same way (bad credentials, malformed request).
    Permanent = 1,
    /// The plugin panicked while handling this dispatch.
    Panic = 2,
}

/// A failed dispatch, as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct FfiPushError {
    /// Temporary, permanent or panic.
    pub kind: PushErrorKind,
    /// Why, for the host's logs. Never contains secrets.
    pub message: RString,
}

/// The result of one dispatch: the rejected pushkeys, or why it failed.
pub type FfiDispatchResult = RResult<RVec<RString>, FfiPushError>;

/// One configured app's pushkin instance, as the host sees it.
#[sabi_trait]
pub trait PushkinFfi: Send + Sync {
    /// Deliver `notification_json` (the notification object as the homeserver sent it; its own
    /// `devices` may name other apps' devices and are to be ignored) to the devices in
    /// `devices_json` (a JSON array, all routed to this app). `request_id` tags the logs.
    ///
    /// Resolves to the pushkeys the provider rejected for good, or an error. Dropping the future
    /// cancels the dispatch.
    fn dispatch(
        &self,
        request_id: RStr<'_>,
        notification_json: RStr<'_>,
        devices_json: RStr<'_>,
    ) -> FfiFuture<FfiDispatchResult>;

    /// Stop background work and release connections. Called once, before the host drops the
    /// instance. Must not block.
    #[sabi(last_prefix_field)]
    fn close(&self);
}

/// An owned, type-erased pushkin instance.
pub type PushkinBox = PushkinFfi_TO<'static, RBox<()>>;

/// The root module every pushkin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin kind, the name an app's `type` uses (`apns`, `gcm`, ...).
    pub kind: extern "C" fn() -> RStr<'static>,
    /// The plugin's own version (its crate version).
    pub version: extern "C" fn() -> RStr<'static>,
    /// What the plugin offers the host beyond dispatch, as a JSON object.
    /// See [`PluginInfo`](crate::PluginInfo) for the keys.
    pub info_json: extern "C" fn() -> RString,
    /// Build the pushkin for one app: `(host services, app_id, the app's config as JSON)`.
    /// An `Err` is a configuration error, shown to the operator as is.
    pub new: extern "C" fn(HostCtx, RStr<'_>, RStr<'_>) -> RResult<PushkinBox, RString>,
    /// Library-wide shutdown: stop the plugin's runtime without blocking.
    #[sabi(last_prefix_field)]
    pub shutdown: extern "C" fn(),
    /// Lends the library the host's reactor for its upstream sockets (see [`HostIo`]). Called
    /// once, before the first `new`. Libraries built before it existed lack it: the host checks.
    #[sabi(missing_field(option))]
    pub attach_host_io: extern "C" fn(HostIo),
}

/// An OS error number (`errno`) crossing the boundary; 0 when the error had none.
pub type IoErrorCode = i32;

/// Sockets driven by the host's reactor on a plugin's behalf.
///
/// A plugin's runtime is a second tokio with its own reactor thread: every answer from the
/// upstream would wake a plugin thread, which then wakes the host's task awaiting the dispatch.
/// A socket handed to the host instead is waited on by the host's own reactor, so a dispatch
/// the host polls runs start to end on the host's thread.
///
/// A handle is the host's, opaque to the plugin, and valid until `close`. The functions never
/// block; `Pending` means the context's waker will be woken when the socket is ready.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostIo {
    /// Takes ownership of a connected, non-blocking TCP socket (closed by the host on error too).
    pub adopt: extern "C" fn(fd: i32) -> RResult<usize, IoErrorCode>,
    /// Reads into the `len` bytes at `buf` (which need not be initialised); `Ok(0)` at the
    /// end of the stream.
    pub poll_read: unsafe extern "C" fn(
        handle: usize,
        cx: &mut FfiContext<'_>,
        buf: *mut u8,
        len: usize,
    ) -> FfiPoll<RResult<usize, IoErrorCode>>,
    /// Writes from the first buffer, then the second, in one vectored write; returns the bytes
    /// written, which may be fewer than both.
    pub poll_write: extern "C" fn(
        handle: usize,
        cx: &mut FfiContext<'_>,
        first: RSlice<'_, u8>,
        second: RSlice<'_, u8>,
    ) -> FfiPoll<RResult<usize, IoErrorCode>>,
    /// Shuts the writing half down.
    pub shutdown_write: extern "C" fn(handle: usize) -> RResult<(), IoErrorCode>,
    /// Closes the socket and releases the handle.
    pub close: extern "C" fn(handle: usize),
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "sygnal_pushkin";
    const NAME: &'static str = "sygnal_pushkin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The interface version this crate implements (the crate version, checked by the loader).
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");
