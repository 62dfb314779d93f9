//! # sygnal-plugin-api
//!
//! Everything a *pushkin* (a push-provider plugin for the sygnal push gateway) depends on.
//!
//! A pushkin is a `cdylib` that the gateway loads at run time, picked by an app's `type` in
//! `sygnal.yaml`. Its author writes a plain Rust type implementing [`Pushkin`] and one
//! [`export_pushkin!`] line; the SDK in this crate takes care of the stable ABI, the plugin's own
//! async runtime, panics, and forwarding logs and metrics to the host. This crate is the only
//! dependency a pushkin needs: it re-exports [`serde`] (with derive), [`serde_json`] and
//! [`tracing`].
//!
//! ```no_run
//! use sygnal_plugin_api::serde::Deserialize;
//! use sygnal_plugin_api::{
//!     export_pushkin, tracing, FanOut, Notification, PushError, Pushkin, PushkinContext,
//! };
//!
//! #[derive(Deserialize)]
//! #[serde(crate = "sygnal_plugin_api::serde")]
//! struct Config {
//!     greeting: String,
//! }
//!
//! pub struct Echo {
//!     greeting: String,
//!     fan_out: FanOut,
//! }
//!
//! impl Pushkin for Echo {
//!     const KIND: &'static str = "echo";
//!
//!     fn new(ctx: PushkinContext) -> Result<Self, String> {
//!         let config: Config = ctx.config()?;
//!         if config.greeting.is_empty() {
//!             return Err(ctx.config_error("greeting", "must not be empty"));
//!         }
//!         Ok(Echo { greeting: config.greeting, fan_out: FanOut::from_context(&ctx)? })
//!     }
//!
//!     async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
//!         // At most `max_concurrent_devices` devices in flight; returns the rejected pushkeys.
//!         self.fan_out
//!             .run(&notification.devices, |device| async move {
//!                 tracing::info!(greeting = %self.greeting, "echo");
//!                 Ok(device.pushkey.is_empty()) // true: reject this pushkey
//!             })
//!             .await
//!     }
//! }
//!
//! export_pushkin!(Echo);
//! ```
//!
//! The crate's `Cargo.toml` needs `crate-type = ["cdylib"]` (and never `panic = "abort"`: the
//! SDK turns a panic into one failed request, and [`export_pushkin!`] refuses to compile
//! otherwise), and the library is named `libsygnal_pushkin_<kind>.so` (a package named
//! `sygnal-pushkin-<kind>`) to be found by kind; any other name is loaded by path
//! (`type: /path/to/lib.so`). `docs/writing-a-pushkin.md` in the gateway's repository is the
//! author's guide.
//!
//! Modules:
//! - [`notification`]: the notification types ([`Notification`], [`Device`], [`Counts`], [`Tweaks`]).
//! - the SDK: [`Pushkin`], [`PushkinContext`], [`PushError`], [`FanOut`], [`Metrics`],
//!   [`export_pushkin!`].
//! - [`text`]: truncation helpers that respect character boundaries, and glob matching.
//! - [`http`] (feature `http`): the outbound HTTP client, the send-classify-retry helper and the
//!   guard for client-given endpoints, shared by HTTP pushkins.
//! - [`lenient`]: reading config values as PyYAML (YAML 1.1) would have (`yes`, `"5000"`).
//! - [`jwt`]: compact JSON Web Tokens (APNs provider tokens, OAuth assertions, VAPID), signed
//!   with the caller's key.
//! - [`validate`]: what a valid notification is (the host refuses the rest; the SDK parses it).
//! - [`trace`]: the OpenTelemetry trace context across the plugin boundary (upstream tries
//!   become spans of the host's trace).
//! - [`abi`]: the binary interface itself, for the host.

#![warn(missing_docs)]

pub mod abi;
mod fan_out;
mod host_info;
mod host_io;
pub mod jwt;
pub mod lenient;
mod logging;
mod metrics;
pub mod notification;
mod sdk;
pub mod text;
pub mod trace;
pub mod validate;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;

#[cfg(feature = "http")]
pub mod http;

pub use fan_out::FanOut;
pub use host_info::{
    decode_url_credential, redact_url_credentials, HostInfo, PluginInfo, PANIC_STRATEGY,
    PANIC_STRATEGY_KEY,
};
pub use metrics::{label_name_problem, metric_name_problem, GaugeGuard, Labels, Metrics};
pub use notification::{Counts, Device, JsonObject, Notification, Tweaks};
pub use sdk::{PushError, Pushkin, PushkinContext};

// Re-exported so plugins need no direct dependency on these to use the SDK fully. serde's
// derive needs `#[serde(crate = "sygnal_plugin_api::serde")]` to find it through this path.
pub use serde;
pub use serde_json;
pub use tracing;

#[doc(hidden)]
pub mod __private {
    pub use crate::sdk::root_module;
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, IntoRootModuleResult, LibHeader,
        RootModuleResult,
    };
    #[cfg(feature = "mimalloc")]
    pub use mimalloc::MiMalloc;
}

/// The library's global allocator, with feature `mimalloc` (see [`export_pushkin!`]).
#[cfg(feature = "mimalloc")]
#[doc(hidden)]
#[macro_export]
macro_rules! __sygnal_global_allocator {
    () => {
        #[global_allocator]
        static __SYGNAL_PUSHKIN_ALLOCATOR: $crate::__private::MiMalloc =
            $crate::__private::MiMalloc;
    };
}

/// Without feature `mimalloc`, the library keeps whatever allocator its author chose.
#[cfg(not(feature = "mimalloc"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __sygnal_global_allocator {
    () => {};
}

/// Exports a [`Pushkin`] implementation as this library's root module.
///
/// Use it once per plugin crate, at the top level of `lib.rs`.
///
/// With this crate's feature `mimalloc`, it also makes mimalloc the library's global allocator
/// (every cdylib has its own; glibc's malloc is the default). Memory crossing the boundary is
/// never freed by the other side's allocator: `RString`, `RVec`, `RBox` and the FFI future
/// carry the functions that free them. Leave the feature off if the crate declares its own
/// `#[global_allocator]`.
///
/// A crate built with `panic = "abort"` does not compile: the SDK relies on unwinding to turn a
/// panic into one failed request, and an aborting plugin would take the whole gateway down.
#[macro_export]
macro_rules! export_pushkin {
    ($pushkin:ty) => {
        $crate::__sygnal_global_allocator!();

        #[cfg(panic = "abort")]
        ::core::compile_error!(
            "sygnal pushkins must be built with panic = \"unwind\": with panic = \"abort\" a panic in the plugin ends the whole gateway (set panic = \"unwind\" in the [profile.*] sections of Cargo.toml)"
        );

        #[doc(hidden)]
        pub fn __sygnal_pushkin_root_module() -> $crate::abi::PluginModRef {
            $crate::__private::root_module::<$pushkin>(env!("CARGO_PKG_VERSION"))
        }

        // The symbol abi_stable's loader looks up (the mangled name of `#[export_root_module]`,
        // spelled out so plugins need no direct abi_stable dependency; a unit test pins it).
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = {
            pub extern "C" fn __sygnal_erased_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::__call_root_module_loader(__sygnal_pushkin_root_module)
            }
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::abi::PluginModRef>(
                    __sygnal_erased_root_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_macro_uses_the_loader_symbol_name() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
