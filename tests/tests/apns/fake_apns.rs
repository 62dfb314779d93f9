//! A fake APNs: HTTP/2 over TLS (ALPN h2) with the test CA, recording every request and
//! answering from a per-device-token script (unscripted requests get 200).
//!
//! It checks what Apple checks about the provider token: an ES256 JWT whose signature verifies
//! with the public key of the test's `.p8`, with the right `kid` and `iss` and a recent `iat`.

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use sygnal_tests::serve::{serve_tls, ConnInfo, TestServer};
use sygnal_tests::tls::TestPki;

pub const KEY_ID: &str = "ABC123DEFG";
pub const TEAM_ID: &str = "DEF123GHIJ";
pub const TOPIC: &str = "com.example.ios";

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub method: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub conn: ConnInfo,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    /// The device token from the path (`/3/device/<token>`).
    pub fn token(&self) -> &str {
        self.path.strip_prefix("/3/device/").unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("APNs body is JSON")
    }
}

/// An answer: status and APNs `reason` (None for 200).
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub status: u16,
    pub reason: Option<&'static str>,
    /// Waits this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn ok() -> Self {
        Reply {
            status: 200,
            reason: None,
            delay: Duration::ZERO,
        }
    }

    pub fn error(status: u16, reason: &'static str) -> Self {
        Reply {
            status,
            reason: Some(reason),
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct Script {
    received: Vec<Received>,
    replies: HashMap<String, VecDeque<Reply>>,
    default_reply: Option<Reply>,
    in_flight: usize,
    max_in_flight: usize,
}

/// The running fake, its TLS identity and the `.p8` key the gateway signs with.
pub struct FakeApns {
    pub server: TestServer,
    pub pki: TestPki,
    script: Arc<Mutex<Script>>,
    key_dir: tempfile::TempDir,
    public_key: Vec<u8>,
}

impl FakeApns {
    /// A fake APNs; with `client_auth`, TLS requires a client certificate from the test CA.
    pub async fn start(client_auth: bool) -> FakeApns {
        let pki = TestPki::new();
        let config = if client_auth {
            pki.server_config_with_client_auth(&[b"h2"])
        } else {
            pki.server_config(&[b"h2"])
        };
        let script = Arc::new(Mutex::new(Script::default()));
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&script));
        let server = serve_tls(router, config).await;

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p8 key");
        let key_dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(key_dir.path().join("AuthKey.p8"), key.serialize_pem()).expect("p8 file");
        std::fs::write(
            key_dir.path().join("client.pem"),
            pki.client_identity_pem("Apple Push Services: com.example.ios"),
        )
        .expect("certfile");
        FakeApns {
            server,
            pki,
            script,
            key_dir,
            public_key: key.public_key_raw().to_vec(),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn keyfile(&self) -> PathBuf {
        self.key_dir.path().join("AuthKey.p8")
    }

    pub fn certfile(&self) -> PathBuf {
        self.key_dir.path().join("client.pem")
    }

    /// Where to write extra files (bad keys and the like).
    pub fn dir(&self) -> &std::path::Path {
        self.key_dir.path()
    }

    /// Queues answers for requests to `token` (used up in order, then 200).
    pub fn script(&self, token: &str, replies: impl IntoIterator<Item = Reply>) {
        let mut script = self.script.lock().expect("script");
        script
            .replies
            .entry(token.to_owned())
            .or_default()
            .extend(replies);
    }

    /// The answer for tokens without a script.
    pub fn default_reply(&self, reply: Reply) {
        self.script.lock().expect("script").default_reply = Some(reply);
    }

    /// The most requests this fake was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.script.lock().expect("script").max_in_flight
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().expect("script").received.clone()
    }

    pub fn received_for(&self, token: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.token() == token)
            .collect()
    }

    /// Checks the provider token like APNs: ES256 signature with the test key, header `kid`,
    /// claims `iss` and a recent `iat`. Returns the JWT.
    pub fn verify_provider_token(&self, request: &Received) -> String {
        let authorization = request
            .header("authorization")
            .expect("authorization header");
        let jwt = authorization.strip_prefix("bearer ").expect("bearer token");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWS compact serialization");
        let decode = |part: &str| -> Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
        };
        assert_eq!(decode(parts[0]), json!({"alg": "ES256", "kid": KEY_ID}));
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], TEAM_ID);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let iat = claims["iat"].as_u64().expect("numeric iat");
        assert!(iat <= now + 5 && now - iat < 3600, "iat {iat} vs now {now}");
        assert_eq!(claims.as_object().map(|c| c.len()), Some(2), "{claims}");
        let signature = URL_SAFE_NO_PAD
            .decode(parts[2])
            .expect("base64url signature");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public_key)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the JWT signature verifies with the .p8's public key");
        jwt.to_owned()
    }
}

async fn handle(
    State(script): State<Arc<Mutex<Script>>>,
    Extension(conn): Extension<ConnInfo>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let received = Received {
        path: parts.uri.path().to_owned(),
        method: parts.method.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
        conn,
        at: std::time::Instant::now(),
    };
    let reply = {
        let mut script = script.lock().expect("script");
        let token = received.token().to_owned();
        script.received.push(received);
        script.in_flight += 1;
        script.max_in_flight = script.max_in_flight.max(script.in_flight);
        script
            .replies
            .get_mut(&token)
            .and_then(VecDeque::pop_front)
            .or(script.default_reply)
            .unwrap_or_else(Reply::ok)
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    script.lock().expect("script").in_flight -= 1;
    let status = StatusCode::from_u16(reply.status).expect("status");
    let apns_id = parts
        .headers
        .get("apns-id")
        .cloned()
        .unwrap_or_else(|| axum::http::HeaderValue::from_static("none"));
    match reply.reason {
        None => (status, [("apns-id", apns_id)]).into_response(),
        Some(reason) => (
            status,
            [
                ("apns-id", apns_id),
                ("content-type", "application/json".parse().expect("value")),
            ],
            json!({"reason": reason}).to_string(),
        )
            .into_response(),
    }
}
