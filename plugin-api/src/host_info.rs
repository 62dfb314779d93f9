//! JSON side-channels of the ABI: what the host tells plugins, and what plugins tell the host.
//!
//! Both travel as JSON objects so fields can be added without breaking loaded plugins: unknown
//! fields are ignored and missing ones take their defaults.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the host tells every pushkin at construction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostInfo {
    /// The host's version.
    pub host_version: String,
    /// The outbound HTTP CONNECT proxy (`http://[user:pass@]host:port`) every upstream
    /// connection must use, from the config's `proxy` or `HTTPS_PROXY`. Contains credentials:
    /// never log it whole.
    pub proxy: Option<String>,
    /// PEM files whose certificates outbound TLS trusts in addition to the public roots
    /// (`SSL_CERT_FILE`, when set).
    pub extra_root_certs: Vec<PathBuf>,
    /// The User-Agent for outbound requests.
    pub user_agent: String,
    /// Worker threads the plugin's runtime should use, so host and plugins together do not
    /// oversubscribe the cores.
    pub worker_threads: usize,
}

/// What a plugin library tells the host about itself, beyond its kind and version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginInfo {
    /// The JSON body `GET /_matrix/push/v1/notify` answers while an app of this kind is
    /// configured (UnifiedPush distributors probe it to discover a gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify_get_response: Option<serde_json::Value>,
}

/// The key the SDK adds to every library's info JSON (beside [`PluginInfo`]'s own, whatever
/// the pushkin's `plugin_info` says): how the library handles panics, `"unwind"` or `"abort"`.
/// The host refuses `"abort"`, since a panic would then end the gateway. Libraries built before
/// it was reported lack it.
pub const PANIC_STRATEGY_KEY: &str = "panic_strategy";

/// The panic strategy this crate, and so the whole library using it, was compiled with.
pub const PANIC_STRATEGY: &str = if cfg!(panic = "unwind") {
    "unwind"
} else {
    "abort"
};

/// Formats a proxy URL for logs, without its credentials.
pub fn redact_url_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A URL's user name or password with its `%XX` escapes decoded (proxy and Redis URLs); the
/// error says what is wrong without repeating the credential.
pub fn decode_url_credential(part: &str) -> Result<String, &'static str> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(high), Some(low)) => out.push((high * 16 + low) as u8),
                _ => return Err("bad %-escape in credentials"),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_decoded_strictly() {
        assert_eq!(
            decode_url_credential("us%40er%3A1").as_deref(),
            Ok("us@er:1")
        );
        assert_eq!(decode_url_credential("plain").as_deref(), Ok("plain"));
        for bad in ["%zz", "%4", "%", "%+1"] {
            assert_eq!(
                decode_url_credential(bad),
                Err("bad %-escape in credentials"),
                "{bad}"
            );
        }
        assert_eq!(
            decode_url_credential("%e2%82"),
            Err("credentials are not UTF-8")
        );
    }

    #[test]
    fn unknown_and_missing_host_info_fields_are_tolerated() {
        let info: HostInfo =
            serde_json::from_str(r#"{"proxy":"http://p:1","some_future_field":1}"#).unwrap();
        assert_eq!(info.proxy.as_deref(), Some("http://p:1"));
        assert_eq!(info.worker_threads, 0);
    }

    #[test]
    fn redacts_proxy_credentials() {
        assert_eq!(
            redact_url_credentials("http://u:secret@proxy:3128"),
            "http://***@proxy:3128"
        );
        assert_eq!(
            redact_url_credentials("http://proxy:3128"),
            "http://proxy:3128"
        );
    }
}
