//! The app section of a `type: gcm` app, turned into a typed and validated configuration.
//!
//! Keys and defaults are Sygnal's (`api_version`, `api_key`, `project_id`,
//! `service_account_file`, `fcm_options`, `send_badge_counts`, `max_connections`) plus the
//! gateway's own `endpoint`, `max_tries` and `retry_delay_base`. Every error names the app and
//! the key (`apps.<app>.<key>: ...`), so a bad section fails at startup, not at the first push.

use crate::oauth::ServiceAccount;
use serde::Deserialize;
use sygnal_plugin_api::http::{RetryPolicy, RetrySettings};
use sygnal_plugin_api::{JsonObject, PushkinContext};

/// Default of `max_connections`: the FCM requests of one app in flight at once.
///
/// Sygnal's 20 came from its HTTP/1.1 client, which used one connection per request, and caps a
/// slow but healthy FCM at 20 per round trip (400 pushes/s at 50 ms). Over HTTP/2 (FCM's API
/// negotiates it) the requests are streams on one connection. Against an HTTP/1.1
/// FCM-compatible server each is a connection kept open for reuse, 40-50 KB of the gateway's
/// memory (BENCHMARKS.md: at 256 clients the gateway's peak RSS went from 33.2 MB with 512 to
/// 23.5 MB with 64). 64 allows 640-1,280 pushes/s per app at 50-100 ms per request.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Where FCM lives unless `endpoint` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";

/// The app section as written (`max_tries` and `retry_delay_base` are read by
/// [`RetrySettings::from_context`]). Kept private: [`GcmConfig`] is the validated form.
#[derive(Debug, Deserialize)]
struct RawConfig {
    api_version: Option<String>,
    api_key: Option<String>,
    project_id: Option<String>,
    service_account_file: Option<String>,
    fcm_options: Option<JsonObject>,
    send_badge_counts: Option<bool>,
    max_connections: Option<usize>,
    endpoint: Option<String>,
}

/// Which FCM API an app uses, with the credentials it needs.
#[derive(Debug)]
pub enum Api {
    /// The legacy HTTP API (`POST {endpoint}/fcm/send`, `Authorization: key=...`).
    Legacy {
        /// The server key. Secret: never log it.
        api_key: String,
    },
    /// The HTTP v1 API (`POST {endpoint}/v1/projects/{project_id}/messages:send`, OAuth2).
    V1 {
        /// The Firebase project.
        project_id: String,
        /// The service account whose tokens authorise the requests.
        service_account: ServiceAccount,
    },
}

/// A validated `type: gcm` app configuration.
#[derive(Debug)]
pub struct GcmConfig {
    /// API version and credentials.
    pub api: Api,
    /// Extra fields merged into every request body (`fcm_options`).
    pub fcm_options: JsonObject,
    /// Whether `unread` and `missed_calls` go into the data (`send_badge_counts`, default true).
    pub send_badge_counts: bool,
    /// Upper bound on concurrent upstream requests for this app (`max_connections`).
    pub max_connections: usize,
    /// Retry policy (`max_tries`, `retry_delay_base`).
    pub retry: RetryPolicy,
    /// Base URL of FCM, without a trailing slash (`endpoint`).
    pub endpoint: String,
}

impl GcmConfig {
    /// Reads and validates the app section, including the service account file for v1.
    pub fn from_context(ctx: &PushkinContext) -> Result<Self, String> {
        let raw: RawConfig = ctx.config()?;
        let retry = RetrySettings::from_context(ctx)?;
        Self::validate(ctx.app_id(), raw, retry)
    }

    fn validate(app_id: &str, raw: RawConfig, retry: RetryPolicy) -> Result<Self, String> {
        let key_error = |key: &str, message: String| format!("apps.{app_id}.{key}: {message}");

        let legacy = match raw.api_version.as_deref() {
            None => {
                sygnal_plugin_api::tracing::warn!(
                    app = %app_id,
                    "api_version not set in config, defaulting to legacy"
                );
                true
            }
            Some("legacy") => true,
            Some("v1") => false,
            Some(other) => {
                return Err(key_error(
                    "api_version",
                    format!("must be \"v1\" or \"legacy\", not {other:?}"),
                ))
            }
        };

        let api = if legacy {
            let api_key = non_empty(raw.api_key)
                .ok_or_else(|| key_error("api_key", "required with the legacy API".into()))?;
            Api::Legacy { api_key }
        } else {
            let project_id = non_empty(raw.project_id)
                .ok_or_else(|| key_error("project_id", "required with api_version v1".into()))?;
            // The project id becomes a URL path segment: refuse anything that would change the path.
            if !project_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(key_error(
                    "project_id",
                    "may contain only letters, digits, '-', '_' and '.'".into(),
                ));
            }
            let path = non_empty(raw.service_account_file).ok_or_else(|| {
                key_error(
                    "service_account_file",
                    "required with api_version v1".into(),
                )
            })?;
            let service_account = ServiceAccount::from_file(std::path::Path::new(&path))
                .map_err(|err| key_error("service_account_file", err))?;
            Api::V1 {
                project_id,
                service_account,
            }
        };

        let fcm_options = raw.fcm_options.unwrap_or_default();
        if !legacy {
            // v1 merges `android` with the priority it sets, so it must be a mapping.
            if let Some(android) = fcm_options.get("android") {
                if !android.is_object() {
                    return Err(key_error("fcm_options.android", "must be a mapping".into()));
                }
            }
        }

        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(key_error("max_connections", "must be at least 1".into()));
        }

        let endpoint = raw.endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let endpoint = sygnal_plugin_api::http::base_url(&endpoint)
            .map_err(|err| key_error("endpoint", err))?;

        Ok(GcmConfig {
            api,
            fcm_options,
            send_badge_counts: raw.send_badge_counts.unwrap_or(true),
            max_connections,
            retry,
            endpoint,
        })
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sygnal_plugin_api::HostInfo;

    pub(crate) const TEST_KEY: &str = include_str!("../../../tests/data/gcm-test-only-rsa-key.pem");

    fn parse(config: serde_json::Value) -> Result<GcmConfig, String> {
        let serde_json::Value::Object(map) = config else {
            panic!("test config must be an object")
        };
        let ctx = PushkinContext::for_tests("com.example.android", map, HostInfo::default());
        GcmConfig::from_context(&ctx)
    }

    fn service_account_file(dir: &std::path::Path, key: &str) -> String {
        let path = dir.join("sa.json");
        let account = json!({
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "kid1",
            "private_key": key,
            "client_email": "sygnal@p.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.example/token",
        });
        std::fs::write(&path, account.to_string()).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gcm-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn unset_api_version_means_legacy_with_defaults() {
        let config = parse(json!({"type": "gcm", "api_key": "AIza"})).unwrap();
        assert!(matches!(&config.api, Api::Legacy { api_key } if api_key == "AIza"));
        assert!(config.fcm_options.is_empty());
        assert!(config.send_badge_counts);
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(config.retry.max_tries, 3);
        assert_eq!(
            config.retry.retry_delay_base,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(config.endpoint, "https://fcm.googleapis.com");
    }

    #[test]
    fn legacy_reads_every_key() {
        let config = parse(json!({
            "type": "gcm", "api_version": "legacy", "api_key": "k",
            "fcm_options": {"time_to_live": 60}, "send_badge_counts": false,
            "max_connections": 4, "max_tries": 5, "retry_delay_base": 0.05,
            "endpoint": "http://127.0.0.1:9/base/",
        }))
        .unwrap();
        assert_eq!(config.fcm_options["time_to_live"], 60);
        assert!(!config.send_badge_counts);
        assert_eq!(config.max_connections, 4);
        assert_eq!(config.retry.max_tries, 5);
        assert_eq!(
            config.retry.retry_delay_base,
            std::time::Duration::from_millis(50)
        );
        assert_eq!(config.endpoint, "http://127.0.0.1:9/base");
    }

    #[test]
    fn errors_name_the_app_and_the_key() {
        let cases = [
            (
                json!({"api_version": "v2", "api_key": "k"}),
                "apps.com.example.android.api_version:",
            ),
            (
                json!({"api_version": "legacy"}),
                "apps.com.example.android.api_key:",
            ),
            (json!({"api_key": ""}), "apps.com.example.android.api_key:"),
            (
                json!({"api_version": "v1", "service_account_file": "/x"}),
                "apps.com.example.android.project_id:",
            ),
            (
                json!({"api_version": "v1", "project_id": "a/b", "service_account_file": "/x"}),
                "apps.com.example.android.project_id:",
            ),
            (
                json!({"api_version": "v1", "project_id": "p"}),
                "apps.com.example.android.service_account_file:",
            ),
            (
                json!({"api_version": "v1", "project_id": "p", "service_account_file": "/nonexistent/sa.json"}),
                "apps.com.example.android.service_account_file:",
            ),
            (
                json!({"api_key": "k", "fcm_options": [1]}),
                "apps.com.example.android.fcm_options:",
            ),
            (
                json!({"api_key": "k", "max_connections": 0}),
                "apps.com.example.android.max_connections:",
            ),
            (
                json!({"api_key": "k", "max_connections": "many"}),
                "apps.com.example.android.max_connections:",
            ),
            (
                json!({"api_key": "k", "max_tries": 0}),
                "apps.com.example.android.max_tries:",
            ),
            (
                json!({"api_key": "k", "retry_delay_base": -1}),
                "apps.com.example.android.retry_delay_base:",
            ),
            (
                json!({"api_key": "k", "send_badge_counts": "sometimes"}),
                "apps.com.example.android.send_badge_counts:",
            ),
            (
                json!({"api_key": "k", "endpoint": "ftp://x"}),
                "apps.com.example.android.endpoint:",
            ),
            (
                json!({"api_key": "k", "endpoint": "not a url"}),
                "apps.com.example.android.endpoint:",
            ),
        ];
        for (config, prefix) in cases {
            let err = parse(config.clone()).unwrap_err();
            assert!(err.starts_with(prefix), "{config}: {err}");
        }
    }

    #[test]
    fn v1_loads_the_service_account() {
        let dir = temp_dir("v1");
        let file = service_account_file(&dir, TEST_KEY);
        let config = parse(json!({
            "api_version": "v1", "project_id": "my-project", "service_account_file": file,
            "fcm_options": {"android": {"ttl": "60s"}},
        }))
        .unwrap();
        let Api::V1 {
            project_id,
            service_account,
        } = &config.api
        else {
            panic!("expected v1")
        };
        assert_eq!(project_id, "my-project");
        assert_eq!(
            service_account.client_email(),
            "sygnal@p.iam.gserviceaccount.com"
        );
        assert_eq!(service_account.token_uri(), "https://oauth2.example/token");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn invalid_service_account_and_android_options_are_startup_errors() {
        let dir = temp_dir("bad");
        let good = service_account_file(&dir, TEST_KEY);
        let err = parse(json!({
            "api_version": "v1", "project_id": "p", "service_account_file": good,
            "fcm_options": {"android": "high"},
        }))
        .unwrap_err();
        assert!(
            err.starts_with("apps.com.example.android.fcm_options.android:"),
            "{err}"
        );

        let bad_key = service_account_file(
            &dir,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let err =
            parse(json!({"api_version": "v1", "project_id": "p", "service_account_file": bad_key}))
                .unwrap_err();
        assert!(
            err.starts_with("apps.com.example.android.service_account_file:"),
            "{err}"
        );
        assert!(!err.contains("AAAA"), "must not echo key material: {err}");

        let not_json = dir.join("garbage.json");
        std::fs::write(&not_json, "{not json").unwrap();
        let err = parse(json!({"api_version": "v1", "project_id": "p",
            "service_account_file": not_json.to_string_lossy()}))
        .unwrap_err();
        assert!(
            err.starts_with("apps.com.example.android.service_account_file:"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
