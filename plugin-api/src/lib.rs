//! # sygnal-plugin-api
//!
//! Everything a *pushkin* (a push-provider plugin for the sygnal push gateway) depends on.
//!
//! A pushkin is a `cdylib` that the gateway loads at run time, picked by an app's `type` in
//! `sygnal.yaml`. Its author writes a plain Rust type implementing [`Pushkin`] and one
//! [`export_pushkin!`] line; the SDK in this crate takes care of the stable ABI, the plugin's own
//! async runtime, panics, and forwarding logs and metrics to the host.
//!
//! ```no_run
//! use sygnal_plugin_api::{export_pushkin, Notification, PushError, Pushkin, PushkinContext};
//!
//! pub struct Echo { app_id: String }
//!
//! impl Pushkin for Echo {
//!     const KIND: &'static str = "echo";
//!     fn new(ctx: PushkinContext) -> Result<Self, String> {
//!         Ok(Echo { app_id: ctx.app_id().to_owned() })
//!     }
//!     async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
//!         tracing::info!(app = %self.app_id, devices = notification.devices.len(), "echo");
//!         Ok(Vec::new()) // nothing rejected
//!     }
//! }
//!
//! export_pushkin!(Echo);
//! ```
//!
//! The crate's `Cargo.toml` needs `crate-type = ["cdylib"]`, and the library is named
//! `libsygnal_pushkin_<kind>.so` (a package named `sygnal-pushkin-<kind>`) to be found by kind;
//! any other name is loaded by path (`type: /path/to/lib.so`).
//!
//! Modules:
//! - [`notification`]: the notification types ([`Notification`], [`Device`], [`Counts`], [`Tweaks`]).
//! - the SDK: [`Pushkin`], [`PushkinContext`], [`PushError`], [`Metrics`], [`export_pushkin!`].
//! - [`text`]: truncation helpers that respect character boundaries.
//! - [`lenient`]: reading config values as PyYAML (YAML 1.1) would have (`yes`, `"5000"`).
//! - [`validate`]: what a valid notification is (the host refuses the rest; the SDK parses it).
//! - [`http`] (feature `http`): the outbound HTTP client and retry policy shared by HTTP pushkins.
//! - [`abi`]: the binary interface itself, for the host.

#![warn(missing_docs)]

pub mod abi;
mod host_info;
pub mod lenient;
mod logging;
mod metrics;
pub mod notification;
mod sdk;
pub mod text;
pub mod validate;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;

#[cfg(feature = "http")]
pub mod http;

pub use host_info::{redact_url_credentials, HostInfo, PluginInfo};
pub use metrics::{GaugeGuard, Labels, Metrics};
pub use notification::{Counts, Device, JsonObject, Notification, Tweaks};
pub use sdk::{PushError, Pushkin, PushkinContext};

// Re-exported so plugins need no direct dependency on these to use the SDK fully.
pub use serde_json;
pub use tracing;

#[doc(hidden)]
pub mod __private {
    pub use crate::sdk::root_module;
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, IntoRootModuleResult, LibHeader,
        RootModuleResult,
    };
}

/// Exports a [`Pushkin`] implementation as this library's root module.
///
/// Use it once per plugin crate, at the top level of `lib.rs`.
#[macro_export]
macro_rules! export_pushkin {
    ($pushkin:ty) => {
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
