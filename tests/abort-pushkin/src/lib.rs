//! A pushkin built with `panic = "abort"`.

use sygnal_plugin_api::{Notification, PushError, Pushkin, PushkinContext};

/// Delivers nothing, rejects nothing.
pub struct Aborting;

impl Pushkin for Aborting {
    const KIND: &'static str = "aborting";

    fn new(_ctx: PushkinContext) -> Result<Self, String> {
        Ok(Aborting)
    }

    async fn dispatch(&self, _notification: &Notification) -> Result<Vec<String>, PushError> {
        Ok(Vec::new())
    }
}

#[cfg(feature = "macro")]
sygnal_plugin_api::export_pushkin!(Aborting);

/// What `export_pushkin!` expands to, without its `compile_error!`.
#[cfg(not(feature = "macro"))]
mod hand_written_root_module {
    use sygnal_plugin_api::__private::{
        CheckTypeLayout, LibHeader, RootModuleResult, __call_root_module_loader,
    };
    use sygnal_plugin_api::abi::PluginModRef;

    fn root_module() -> PluginModRef {
        sygnal_plugin_api::__private::root_module::<super::Aborting>("0.1.0")
    }

    #[unsafe(no_mangle)]
    pub static _1as_0lib_1header_0root_bmodule_bloader: LibHeader = {
        extern "C" fn erased() -> RootModuleResult {
            __call_root_module_loader(root_module)
        }
        unsafe { LibHeader::from_constructor::<PluginModRef>(erased, CheckTypeLayout::Yes) }
    };
}
