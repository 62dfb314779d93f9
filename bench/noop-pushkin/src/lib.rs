//! The no-op pushkin as a plugin library, loaded by `plugin-boundary` through the real ABI.

mod noop;

sygnal_plugin_api::export_pushkin!(noop::NoOp);
