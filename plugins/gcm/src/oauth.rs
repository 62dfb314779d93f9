//! OAuth2 access tokens for FCM v1 from a Google service account (the JWT-bearer grant, RFC 7523).
//!
//! We sign the assertion ourselves with `ring` and post it to the service account file's own
//! `token_uri` through the pushkin's shared HTTP client, so the host's proxy and extra trust
//! roots apply to the token fetch exactly as to FCM itself (a separate OAuth library would
//! bring its own HTTP stack and bypass both).
//!
//! Tokens are cached, with the `Authorization` header carrying them, and refreshed shortly
//! before they expire; concurrent pushes wait for a single fetch instead of each starting their
//! own. A push while the token is fresh takes neither the fetch lock nor builds a header.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use sygnal_plugin_api::http::reqwest::header::HeaderValue;
use sygnal_plugin_api::http::{describe_error, read_body_limited, reqwest};
use sygnal_plugin_api::jwt;
use tokio::sync::Mutex;

/// The scope FCM v1 requires.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Google's token endpoint, used when a service account file does not name one.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// How long an assertion (and the token asked for) is valid; Google's maximum.
const ASSERTION_LIFETIME_SECS: u64 = 3600;

/// Refresh a token this long before it expires (less for very short-lived tokens).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// After a failed early refresh, keep using the current token this long before asking again.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// Token endpoint responses are small; refuse anything absurd.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The parts of a service account key file we use.
#[derive(Deserialize)]
struct ServiceAccountFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

/// A Google service account able to sign token requests.
pub struct ServiceAccount {
    client_email: String,
    key_id: Option<String>,
    key: Arc<RsaKeyPair>,
    token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads and validates a service account key file (as downloaded from the Firebase console).
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        Self::from_json(&text).map_err(|err| format!("{}: {err}", path.display()))
    }

    /// Parses a service account key file's contents.
    pub fn from_json(text: &str) -> Result<Self, String> {
        // serde_json's message carries a position, never the (secret) content.
        let file: ServiceAccountFile = serde_json::from_str(text)
            .map_err(|err| format!("not a service account JSON file ({err})"))?;
        if let Some(kind) = file.kind.as_deref() {
            if kind != "service_account" {
                return Err(format!(
                    "credentials of type {kind:?}, expected \"service_account\""
                ));
            }
        }
        let client_email = file
            .client_email
            .filter(|email| !email.is_empty())
            .ok_or("missing client_email")?;
        let pem = file.private_key.ok_or("missing private_key")?;
        let key = parse_pkcs8_pem(&pem)?;
        let token_uri = file
            .token_uri
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
        sygnal_plugin_api::http::base_url(&token_uri).map_err(|err| format!("token_uri {err}"))?;
        Ok(ServiceAccount {
            client_email,
            key_id: file.private_key_id.filter(|id| !id.is_empty()),
            key: Arc::new(key),
            token_uri,
        })
    }

    /// The account's e-mail address (the assertion's issuer).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// Where tokens are requested.
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// A signed JWT asking for an FCM token, issued at `now` (Unix seconds).
    pub fn assertion(&self, now: u64) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        jwt::sign_compact(&header, &claims, |input| {
            let mut signature = vec![0; self.key.public().modulus_len()];
            self.key
                .sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input,
                    &mut signature,
                )
                .map_err(|_| "signing the token request failed".to_owned())?;
            Ok(signature)
        })
    }
}

/// Decodes a PEM `PRIVATE KEY` (PKCS#8, as Google issues them) into an RSA key pair.
fn parse_pkcs8_pem(pem: &str) -> Result<RsaKeyPair, String> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem
        .find(BEGIN)
        .ok_or("private_key is not a PEM \"PRIVATE KEY\" (PKCS#8)")?
        + BEGIN.len();
    let end = pem[start..]
        .find(END)
        .ok_or("private_key has no PEM end line")?
        + start;
    let base64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = STANDARD
        .decode(base64)
        .map_err(|_| "private_key is not valid base64".to_owned())?;
    RsaKeyPair::from_pkcs8(&der)
        .map_err(|err| format!("private_key is not a usable RSA key ({err})"))
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    /// Whether trying again later could help (network trouble, token endpoint 5xx/429).
    pub temporary: bool,
    /// For the operator; holds no secrets.
    pub message: String,
}

/// An access token, and the `Authorization` header that carries it (marked sensitive).
pub struct AccessToken {
    value: Box<str>,
    authorization: HeaderValue,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret: its length only.
        f.debug_struct("AccessToken")
            .field("len", &self.value.len())
            .finish_non_exhaustive()
    }
}

impl AccessToken {
    fn new(value: String) -> Result<AccessToken, TokenError> {
        let mut authorization =
            HeaderValue::try_from(format!("Bearer {value}")).map_err(|_| TokenError {
                temporary: false,
                message: "the OAuth access token is not usable in an HTTP header".to_owned(),
            })?;
        authorization.set_sensitive(true);
        Ok(AccessToken {
            value: value.into(),
            authorization,
        })
    }

    /// The token itself.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// `Bearer <token>`, for the `Authorization` header.
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }
}

struct CachedToken {
    token: Arc<AccessToken>,
    refresh_at: Instant,
    usable_until: Instant,
}

/// Hands out access tokens for one service account, fetching and caching them.
pub struct TokenSource {
    account: ServiceAccount,
    client: reqwest::Client,
    // A tokio mutex held across the fetch is the single flight: whoever finds the token stale
    // fetches it, everyone else waits for that one result.
    cached: Mutex<Option<CachedToken>>,
    /// The cached token while it needs no refresh, and until when: what pushes read.
    fresh: std::sync::Mutex<Option<(Arc<AccessToken>, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenSource {
    /// A token source fetching through `client`.
    pub fn new(account: ServiceAccount, client: reqwest::Client) -> Self {
        TokenSource {
            account,
            client,
            cached: Mutex::new(None),
            fresh: std::sync::Mutex::new(None),
        }
    }

    /// A valid access token, fetched only when the cached one is due for refresh.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        if let Some((token, refresh_at)) = self.fresh().as_ref() {
            if Instant::now() < *refresh_at {
                return Ok(Arc::clone(token));
            }
        }
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        if let Some(cached) = cached.as_ref() {
            if now < cached.refresh_at {
                return Ok(Arc::clone(&cached.token));
            }
        }
        let result = match self.fetch().await {
            Ok(fetched) => {
                let token = Arc::clone(&fetched.token);
                *cached = Some(fetched);
                Ok(token)
            }
            // A failed early refresh is no reason to fail pushes while the old token still works.
            Err(err) => match cached.as_mut() {
                Some(current) if Instant::now() < current.usable_until => {
                    sygnal_plugin_api::tracing::warn!(error = %err.message, "refreshing the FCM access token failed; using the current one");
                    // Try again a little later, not on every push meanwhile.
                    let later = Instant::now() + REFRESH_RETRY;
                    current.refresh_at = later.min(current.usable_until);
                    Ok(Arc::clone(&current.token))
                }
                _ => Err(err),
            },
        };
        *self.fresh() = cached
            .as_ref()
            .map(|cached| (Arc::clone(&cached.token), cached.refresh_at));
        result
    }

    /// Forgets `token` if it is still the cached one (FCM answered 401 to it).
    pub async fn invalidate(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|cached| cached.token.value() == token)
        {
            *cached = None;
            *self.fresh() = None;
        }
    }

    fn fresh(&self) -> std::sync::MutexGuard<'_, Option<(Arc<AccessToken>, Instant)>> {
        // Only ever holds a complete value: a panic elsewhere cannot leave it half-written.
        self.fresh
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn fetch(&self) -> Result<CachedToken, TokenError> {
        let permanent = |message: String| TokenError {
            temporary: false,
            message,
        };
        let temporary = |message: String| TokenError {
            temporary: true,
            message,
        };
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| permanent("the system clock is before 1970".into()))?
            .as_secs();
        let assertion = self.account.assertion(now_unix).map_err(permanent)?;
        // The assertion is base64url and dots: nothing in it needs form-encoding.
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let started = Instant::now();
        let response = self
            .client
            .post(&self.account.token_uri)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|err| temporary(format!("token request failed: {}", describe_error(err))))?;
        let status = response.status();
        let body = read_body_limited(response, MAX_TOKEN_RESPONSE_BYTES)
            .await
            .map_err(|err| temporary(format!("token request failed: {err}")))?;
        if !status.is_success() {
            let detail: TokenErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
            let message = format!(
                "token endpoint answered {status}: {} {}",
                detail.error.unwrap_or_default(),
                detail.error_description.unwrap_or_default()
            );
            let message = message.trim_end().to_owned();
            // 4xx (invalid_grant, invalid_client...) means the service account itself is refused.
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                temporary(message)
            } else {
                permanent(message)
            });
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|err| temporary(format!("token endpoint sent an unusable answer ({err})")))?;
        if token.access_token.is_empty() {
            return Err(temporary(
                "token endpoint sent an empty access_token".into(),
            ));
        }
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(ASSERTION_LIFETIME_SECS));
        // Count the lifetime from when we asked: the token was minted no earlier than that.
        sygnal_plugin_api::tracing::debug!(
            lifetime_s = lifetime.as_secs(),
            "fetched an FCM access token"
        );
        Ok(CachedToken {
            token: Arc::new(AccessToken::new(token.access_token)?),
            refresh_at: started + lifetime.saturating_sub(REFRESH_MARGIN.min(lifetime / 2)),
            usable_until: started
                + lifetime.saturating_sub(Duration::from_secs(30).min(lifetime / 4)),
        })
    }
}

#[cfg(test)]
#[path = "oauth_token_tests.rs"]
mod token_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    const TEST_KEY: &str = include_str!("../../../tests/data/gcm-test-only-rsa-key.pem");

    fn account_json(extra: serde_json::Value) -> String {
        let mut account = serde_json::json!({
            "type": "service_account",
            "private_key_id": "kid-1",
            "private_key": TEST_KEY,
            "client_email": "push@proj.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.example/token",
        });
        if let (Some(base), Some(extra)) = (account.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        account.to_string()
    }

    #[test]
    fn assertion_is_a_verifiable_rs256_jwt_with_the_right_claims() {
        let account = ServiceAccount::from_json(&account_json(serde_json::json!({}))).unwrap();
        let jwt = account.assertion(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"})
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "push@proj.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/firebase.messaging",
                "aud": "https://oauth2.example/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
        let public = UnparsedPublicKey::new(
            &RSA_PKCS1_2048_8192_SHA256,
            account.key.public().as_ref().to_vec(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public.verify(signed.as_bytes(), &signature).unwrap();
        assert!(public.verify(b"tampered", &signature).is_err());
    }

    #[test]
    fn token_uri_defaults_to_google() {
        let account =
            ServiceAccount::from_json(&account_json(serde_json::json!({"token_uri": null})))
                .unwrap();
        assert_eq!(account.token_uri(), "https://oauth2.googleapis.com/token");
    }

    #[test]
    fn rejects_unusable_files_without_echoing_secrets() {
        for (extra, expected) in [
            (
                serde_json::json!({"type": "authorized_user"}),
                "authorized_user",
            ),
            (serde_json::json!({"client_email": null}), "client_email"),
            (serde_json::json!({"private_key": null}), "private_key"),
            (
                serde_json::json!({"private_key": "MIIEvQ-secret"}),
                "PKCS#8",
            ),
            (
                serde_json::json!({"private_key": "-----BEGIN PRIVATE KEY-----\n!!secret!!\n-----END PRIVATE KEY-----"}),
                "base64",
            ),
            (
                serde_json::json!({"private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----"}),
                "RSA key",
            ),
            (
                serde_json::json!({"token_uri": "file:///etc/passwd"}),
                "token_uri",
            ),
        ] {
            let err = ServiceAccount::from_json(&account_json(extra.clone())).unwrap_err();
            assert!(err.contains(expected), "{extra}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
        assert!(ServiceAccount::from_json("[]").is_err());
        let debug = format!(
            "{:?}",
            ServiceAccount::from_json(&account_json(serde_json::json!({}))).unwrap()
        );
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }
}
