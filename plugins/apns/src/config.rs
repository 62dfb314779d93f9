//! An app section of `sygnal.yaml` (`type: apns`), read with Sygnal's keys and turned into typed,
//! validated configuration.
//!
//! Every startup error names the app and the key (`apps.com.example.ios.keyfile: ...`), so the
//! operator knows which line to fix without reading code.

use serde::Deserialize;
use std::path::PathBuf;
use sygnal_plugin_api::http::{RetryPolicy, RetrySettings};
use sygnal_plugin_api::PushkinContext;

/// Apple's production host, used unless `platform: sandbox` or `endpoint` says otherwise.
pub const PRODUCTION_ENDPOINT: &str = "https://api.push.apple.com";
/// Apple's development (sandbox) host.
pub const SANDBOX_ENDPOINT: &str = "https://api.sandbox.push.apple.com";

/// The keys as they appear in the app section. Everything is optional here; [`ApnsConfig::from_context`]
/// decides what is required, so its errors can say which key is missing and why.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    /// `production` (or `prod`, or unset) | `sandbox`.
    pub platform: Option<String>,
    /// Certificate auth: PEM holding the client certificate and its unencrypted key.
    pub certfile: Option<String>,
    /// Token auth: the `.p8` signing key.
    pub keyfile: Option<String>,
    /// Token auth: the key's id (the JWT `kid`).
    pub key_id: Option<String>,
    /// Token auth: the team id (the JWT `iss`).
    pub team_id: Option<String>,
    /// The app's bundle id, sent as `apns-topic`. Required with `keyfile`.
    pub topic: Option<String>,
    /// `apns-push-type` (alert, background, voip, complication, fileprovider, mdm).
    pub push_type: Option<String>,
    /// Pushkeys are base64 and sent as lowercase hex (default true).
    pub convert_device_token_to_hex: bool,
    /// Include badge / unread_count / missed_calls (default true).
    pub send_badge_counts: bool,
    /// Base URL replacing Apple's host (for mocks and tests).
    pub endpoint: Option<String>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            platform: None,
            certfile: None,
            keyfile: None,
            key_id: None,
            team_id: None,
            topic: None,
            push_type: None,
            convert_device_token_to_hex: true,
            send_badge_counts: true,
            endpoint: None,
        }
    }
}

/// The `apns-push-type` values Sygnal accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushType {
    /// `alert`
    Alert,
    /// `background`
    Background,
    /// `voip`
    Voip,
    /// `complication`
    Complication,
    /// `fileprovider`
    FileProvider,
    /// `mdm`
    Mdm,
}

impl PushType {
    /// Parses a config value; `None` for anything Sygnal does not accept.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "alert" => PushType::Alert,
            "background" => PushType::Background,
            "voip" => PushType::Voip,
            "complication" => PushType::Complication,
            "fileprovider" => PushType::FileProvider,
            "mdm" => PushType::Mdm,
            _ => return None,
        })
    }

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
            PushType::Voip => "voip",
            PushType::Complication => "complication",
            PushType::FileProvider => "fileprovider",
            PushType::Mdm => "mdm",
        }
    }
}

/// How requests authenticate to APNs.
#[derive(Clone)]
pub enum Auth {
    /// Provider token (JWT signed with the team's `.p8` key).
    Token {
        /// The key file's contents (PEM, PKCS#8).
        key_pem: Vec<u8>,
        /// The JWT `kid`.
        key_id: String,
        /// The JWT `iss`.
        team_id: String,
        /// `apns-topic`.
        topic: String,
    },
    /// Mutual TLS with a client certificate.
    Certificate {
        /// The certfile's contents: certificate chain and unencrypted key, PEM.
        identity_pem: Vec<u8>,
        /// `apns-topic`, when configured (otherwise APNs takes it from the certificate).
        topic: Option<String>,
    },
}

// Hand-written so key material never reaches a log through `{:?}`.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token {
                key_id,
                team_id,
                topic,
                ..
            } => f
                .debug_struct("Token")
                .field("key_id", key_id)
                .field("team_id", team_id)
                .field("topic", topic)
                .finish_non_exhaustive(),
            Auth::Certificate { topic, .. } => f
                .debug_struct("Certificate")
                .field("topic", topic)
                .finish_non_exhaustive(),
        }
    }
}

impl Auth {
    /// The `apns-topic` header value, if any.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Auth::Token { topic, .. } => Some(topic),
            Auth::Certificate { topic, .. } => topic.as_deref(),
        }
    }
}

/// One APNs app's validated configuration.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// Credentials.
    pub auth: Auth,
    /// Base URL requests go to (`{endpoint}/3/device/{token}`), without a trailing slash.
    pub endpoint: String,
    /// `apns-push-type`, or no header.
    pub push_type: Option<PushType>,
    /// Pushkeys are base64, sent as hex.
    pub convert_device_token_to_hex: bool,
    /// Include badge counts in payloads.
    pub send_badge_counts: bool,
    /// Retries of temporary failures.
    pub retry: RetryPolicy,
}

/// Reads and validates the app section of `ctx`, reading the key or certificate file.
pub fn load(ctx: &PushkinContext) -> Result<ApnsConfig, String> {
    ApnsConfig::from_context(ctx, |path| std::fs::read(path))
}

/// Python's truthiness for an optional string: Sygnal treats `""` like an absent key.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl ApnsConfig {
    /// Validates the app section; `read_file` reads the key or certificate (a parameter so
    /// tests need no files).
    pub fn from_context(
        ctx: &PushkinContext,
        read_file: impl Fn(&PathBuf) -> std::io::Result<Vec<u8>>,
    ) -> Result<Self, String> {
        let app_id = ctx.app_id();
        let raw: RawConfig = ctx.config()?;
        let err = |key: &str, message: String| format!("apps.{app_id}.{key}: {message}");

        let sandbox = match raw.platform.as_deref() {
            None | Some("") | Some("production") | Some("prod") => false,
            Some("sandbox") => true,
            Some(other) => {
                return Err(err(
                    "platform",
                    format!("invalid platform {other:?}: use production or sandbox"),
                ))
            }
        };

        let read = |key: &str, path: &str| {
            let path = PathBuf::from(path);
            read_file(&path).map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))
        };

        // Like Sygnal, a certfile wins when both are given.
        let auth = if let Some(certfile) = non_empty(&raw.certfile) {
            if non_empty(&raw.keyfile).is_some() {
                sygnal_plugin_api::tracing::warn!(
                    app = %app_id,
                    "both certfile and keyfile are set: using certfile, keyfile ignored"
                );
            }
            Auth::Certificate {
                identity_pem: read("certfile", certfile)?,
                topic: non_empty(&raw.topic).map(str::to_owned),
            }
        } else if let Some(keyfile) = non_empty(&raw.keyfile) {
            let required = |key: &str, value: &Option<String>| {
                non_empty(value)
                    .map(str::to_owned)
                    .ok_or_else(|| err(key, "required with keyfile (token authentication)".into()))
            };
            let key_pem = read("keyfile", keyfile)?;
            Auth::Token {
                key_pem,
                key_id: required("key_id", &raw.key_id)?,
                team_id: required("team_id", &raw.team_id)?,
                topic: required("topic", &raw.topic)?,
            }
        } else {
            return Err(format!(
                "apps.{app_id}: set keyfile (with key_id, team_id, topic) for token \
                 authentication, or certfile for certificate authentication"
            ));
        };

        let push_type = match non_empty(&raw.push_type) {
            None => None,
            Some(value) => Some(PushType::parse(value).ok_or_else(|| {
                err(
                    "push_type",
                    format!(
                        "invalid push_type {value:?}: use alert, background, voip, \
                         complication, fileprovider or mdm"
                    ),
                )
            })?),
        };

        let endpoint = match non_empty(&raw.endpoint) {
            Some(url) => sygnal_plugin_api::http::base_url(url).map_err(|m| err("endpoint", m))?,
            None if sandbox => SANDBOX_ENDPOINT.to_owned(),
            None => PRODUCTION_ENDPOINT.to_owned(),
        };

        let retry = RetrySettings::from_context(ctx)?;

        Ok(ApnsConfig {
            auth,
            endpoint,
            push_type,
            convert_device_token_to_hex: raw.convert_device_token_to_hex,
            send_badge_counts: raw.send_badge_counts,
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sygnal_plugin_api::HostInfo;

    fn ctx(config: serde_json::Value) -> PushkinContext {
        let serde_json::Value::Object(map) = config else {
            panic!("config must be an object")
        };
        PushkinContext::for_tests("com.example.ios", map, HostInfo::default())
    }

    fn parse(config: serde_json::Value) -> Result<ApnsConfig, String> {
        ApnsConfig::from_context(&ctx(config), |path| {
            if path.to_str() == Some("/missing") {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            } else {
                Ok(b"PEM".to_vec())
            }
        })
    }

    fn token_config() -> serde_json::Value {
        json!({"type": "apns", "keyfile": "/k.p8", "key_id": "KEYID12345",
               "team_id": "TEAMID1234", "topic": "com.example.ios"})
    }

    #[test]
    fn token_auth_defaults() {
        let config = parse(token_config()).unwrap();
        assert_eq!(config.endpoint, PRODUCTION_ENDPOINT);
        assert_eq!(config.auth.topic(), Some("com.example.ios"));
        assert!(matches!(config.auth, Auth::Token { ref key_id, .. } if key_id == "KEYID12345"));
        assert!(config.convert_device_token_to_hex && config.send_badge_counts);
        assert_eq!(config.push_type, None);
        assert_eq!(config.retry.max_tries, 3);
        assert_eq!(config.retry.retry_delay_base.as_secs(), 10);
    }

    #[test]
    fn every_sygnal_key_is_read() {
        let mut c = token_config();
        c["platform"] = json!("sandbox");
        c["push_type"] = json!("voip");
        c["convert_device_token_to_hex"] = json!(false);
        c["send_badge_counts"] = json!(false);
        c["max_tries"] = json!(5);
        c["retry_delay_base"] = json!(0.05);
        let config = parse(c).unwrap();
        assert_eq!(config.endpoint, SANDBOX_ENDPOINT);
        assert_eq!(config.push_type, Some(PushType::Voip));
        assert!(!config.convert_device_token_to_hex && !config.send_badge_counts);
        assert_eq!(config.retry.max_tries, 5);
        assert_eq!(config.retry.retry_delay_base.as_millis(), 50);
    }

    #[test]
    fn platform_values() {
        for (value, endpoint) in [
            ("production", PRODUCTION_ENDPOINT),
            ("prod", PRODUCTION_ENDPOINT),
            ("", PRODUCTION_ENDPOINT),
            ("sandbox", SANDBOX_ENDPOINT),
        ] {
            let mut c = token_config();
            c["platform"] = json!(value);
            assert_eq!(parse(c).unwrap().endpoint, endpoint, "{value}");
        }
        let mut c = token_config();
        c["platform"] = json!("staging");
        let e = parse(c).unwrap_err();
        assert!(e.starts_with("apps.com.example.ios.platform: "), "{e}");
    }

    #[test]
    fn endpoint_replaces_the_host() {
        let mut c = token_config();
        c["platform"] = json!("sandbox");
        c["endpoint"] = json!("https://localhost:8443/");
        assert_eq!(parse(c).unwrap().endpoint, "https://localhost:8443");
        for bad in ["not a url", "ftp://x", "https://x/?q=1"] {
            let mut c = token_config();
            c["endpoint"] = json!(bad);
            let e = parse(c).unwrap_err();
            assert!(e.starts_with("apps.com.example.ios.endpoint: "), "{e}");
        }
    }

    #[test]
    fn push_types() {
        for value in [
            "alert",
            "background",
            "voip",
            "complication",
            "fileprovider",
            "mdm",
        ] {
            let mut c = token_config();
            c["push_type"] = json!(value);
            assert_eq!(
                parse(c).unwrap().push_type.map(PushType::as_str),
                Some(value)
            );
        }
        let mut c = token_config();
        c["push_type"] = json!("liveactivity");
        assert!(parse(c)
            .unwrap_err()
            .starts_with("apps.com.example.ios.push_type: "));
    }

    #[test]
    fn token_auth_requires_its_keys() {
        for key in ["key_id", "team_id", "topic"] {
            let mut c = token_config();
            c.as_object_mut().unwrap().remove(key);
            let e = parse(c.clone()).unwrap_err();
            assert_eq!(
                e,
                format!("apps.com.example.ios.{key}: required with keyfile (token authentication)")
            );
            c[key] = json!("");
            assert!(parse(c).unwrap_err().contains(key));
        }
    }

    #[test]
    fn missing_files_name_the_key() {
        let mut c = token_config();
        c["keyfile"] = json!("/missing");
        let e = parse(c).unwrap_err();
        assert!(
            e.starts_with("apps.com.example.ios.keyfile: cannot read /missing"),
            "{e}"
        );
        let e = parse(json!({"certfile": "/missing"})).unwrap_err();
        assert!(
            e.starts_with("apps.com.example.ios.certfile: cannot read /missing"),
            "{e}"
        );
    }

    #[test]
    fn no_credentials_is_an_error() {
        let e = parse(json!({"type": "apns", "topic": "x"})).unwrap_err();
        assert!(
            e.starts_with("apps.com.example.ios: ") && e.contains("keyfile"),
            "{e}"
        );
    }

    #[test]
    fn certificate_auth_with_and_without_topic() {
        let config = parse(json!({"certfile": "/c.pem"})).unwrap();
        assert!(matches!(config.auth, Auth::Certificate { topic: None, .. }));
        let config =
            parse(json!({"certfile": "/c.pem", "topic": "com.x", "keyfile": "/k"})).unwrap();
        assert_eq!(config.auth.topic(), Some("com.x"));
        assert!(matches!(config.auth, Auth::Certificate { .. }));
    }

    #[test]
    fn wrong_types_and_retry_settings_name_the_key() {
        let mut c = token_config();
        c["convert_device_token_to_hex"] = json!("maybe");
        let e = parse(c).unwrap_err();
        assert!(e.contains("convert_device_token_to_hex"), "{e}");
        // YAML 1.1 booleans, as PyYAML reads them, are booleans.
        let mut c = token_config();
        c["convert_device_token_to_hex"] = json!("no");
        assert!(!parse(c).unwrap().convert_device_token_to_hex);
        let mut c = token_config();
        c["max_tries"] = json!(0);
        let e = parse(c).unwrap_err();
        assert!(e.starts_with("apps.com.example.ios.max_tries: "), "{e}");
    }

    #[test]
    fn debug_output_hides_key_material() {
        let mut c = token_config();
        c["keyfile"] = json!("/k.p8");
        let config = parse(c).unwrap();
        assert!(!format!("{config:?}").contains("PEM"));
    }
}
