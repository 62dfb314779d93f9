//! A fake FCM (legacy `/fcm/send` and v1 `messages:send`) and a fake Google OAuth token endpoint,
//! recording every request and answering from a script.
//!
//! The token endpoint checks the JWT-bearer assertion as Google would: RS256 signature against
//! the test service account's public key, issuer, scope and audience. v1 requests must carry a
//! token it issued. Replies are scripted per pushkey (v1) or per request (legacy); unscripted
//! requests succeed.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::signature::{RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The test-only service account key (never a real credential).
pub const TEST_KEY_PEM: &str = include_str!("../../data/gcm-test-only-rsa-key.pem");
pub const CLIENT_EMAIL: &str = "sygnal-test@test-project.iam.gserviceaccount.com";
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Where [`write_service_account`] writes the file in `dir`.
pub fn service_account_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("service-account.json")
}

/// Writes a service account file for project `test-project` whose token endpoint is this
/// fake's (served at `base_url`); returns its path.
pub fn write_service_account(dir: &std::path::Path, base_url: &str) -> std::path::PathBuf {
    let account = json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "test-key-id",
        "private_key": TEST_KEY_PEM,
        "client_email": CLIENT_EMAIL,
        "client_id": "1",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": format!("{base_url}/token"),
    });
    let path = service_account_path(dir);
    std::fs::write(&path, account.to_string()).expect("service account file");
    path
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// A Google API error body, with FcmError / BadRequest details as given.
    pub fn google_error(status: u16, grpc_status: &str, message: &str, details: Value) -> Self {
        Reply::new(
            status,
            json!({"error": {"code": status, "message": message, "status": grpc_status, "details": details}}),
        )
    }
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Value,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

#[derive(Default)]
pub struct Fake {
    pub requests: Mutex<Vec<Recorded>>,
    /// v1: per pushkey; legacy: under "*".
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    pub token_fetches: AtomicUsize,
    pub token_expires_in: AtomicUsize,
    /// Errors found in token requests (bad signature, claims...): must stay empty.
    pub token_errors: Mutex<Vec<String>>,
    issued: Mutex<Vec<String>>,
    /// Delay before answering FCM requests (to observe concurrency).
    pub delay_ms: AtomicUsize,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// The audience the assertion must name (the token_uri in the service account file).
    pub token_uri: Mutex<String>,
    /// Legacy: registration ids answered `NotRegistered` in unscripted requests.
    pub unregistered: Mutex<std::collections::HashSet<String>>,
}

impl Fake {
    pub fn new() -> Arc<Self> {
        let fake = Fake::default();
        fake.token_expires_in.store(3600, Ordering::SeqCst);
        Arc::new(fake)
    }

    /// Queues `replies` for requests to `pushkey` (v1) or, with "*", for legacy requests.
    pub fn script(&self, key: &str, replies: impl IntoIterator<Item = Reply>) {
        self.script
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default()
            .extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn fcm_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path != "/token")
            .collect()
    }

    pub fn token_fetches(&self) -> usize {
        self.token_fetches.load(Ordering::SeqCst)
    }

    fn next_reply(&self, key: &str) -> Option<Reply> {
        self.script
            .lock()
            .unwrap()
            .get_mut(key)
            .and_then(|queue| queue.pop_front())
    }

    fn record(&self, path: String, version: Version, headers: &HeaderMap, body: Value) {
        self.requests.lock().unwrap().push(Recorded {
            path,
            version,
            headers: headers.clone(),
            body,
            at: Instant::now(),
        });
    }
}

/// The router serving all three endpoints.
pub fn router(fake: Arc<Fake>) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/fcm/send", post(legacy_send))
        .route("/v1/projects/{project}/messages:send", post(v1_send))
        .with_state(fake)
}

fn reply(reply: Reply) -> Response {
    let mut response = (
        StatusCode::from_u16(reply.status).expect("valid status"),
        reply.body.to_string(),
    )
        .into_response();
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}

/// The test key's public half, as ring wants it.
pub fn test_public_key() -> Vec<u8> {
    let body: String = TEST_KEY_PEM
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(body).expect("test key base64");
    let pair = RsaKeyPair::from_pkcs8(&der).expect("test key");
    use ring::signature::KeyPair as _;
    pair.public_key().as_ref().to_vec()
}

/// Checks a JWT-bearer assertion; returns what is wrong with it.
fn check_assertion(form: &str, audience: &str) -> Result<(), String> {
    let mut grant_type = None;
    let mut assertion = None;
    for pair in form.split('&') {
        match pair.split_once('=') {
            Some(("grant_type", v)) => grant_type = Some(v.replace("%3A", ":")),
            Some(("assertion", v)) => assertion = Some(v.to_owned()),
            _ => return Err(format!("unexpected form field {pair}")),
        }
    }
    if grant_type.as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Err(format!("grant_type {grant_type:?}"));
    }
    let assertion = assertion.ok_or("no assertion")?;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("assertion is not a JWS".into());
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|e| e.to_string());
    let header: Value = serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" || header["typ"] != "JWT" {
        return Err(format!("header {header}"));
    }
    let public = test_public_key();
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &decode(signature)?,
        )
        .map_err(|_| "bad RS256 signature".to_owned())?;
    let claims: Value = serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if claims["iss"] != CLIENT_EMAIL
        || claims["scope"] != SCOPE
        || claims["aud"] != audience
        || iat.abs_diff(now) > 60
        || exp != iat + 3600
    {
        return Err(format!("claims {claims}"));
    }
    Ok(())
}

async fn token(
    State(fake): State<Arc<Fake>>,
    version: Version,
    headers: HeaderMap,
    body: String,
) -> Response {
    let n = fake.token_fetches.fetch_add(1, Ordering::SeqCst) + 1;
    fake.record(
        "/token".into(),
        version,
        &headers,
        Value::String(body.clone()),
    );
    let audience = fake.token_uri.lock().unwrap().clone();
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        fake.token_errors
            .lock()
            .unwrap()
            .push("token request is not form-encoded".into());
    }
    if let Err(err) = check_assertion(&body, &audience) {
        fake.token_errors.lock().unwrap().push(err);
        return reply(Reply::new(
            400,
            json!({"error": "invalid_grant", "error_description": "bad assertion"}),
        ));
    }
    if let Some(scripted) = fake.next_reply("/token") {
        return reply(scripted);
    }
    let token = format!("ya29.test-token-{n}");
    fake.issued.lock().unwrap().push(token.clone());
    let expires_in = fake.token_expires_in.load(Ordering::SeqCst);
    reply(Reply::new(
        200,
        json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}),
    ))
}

/// Counts requests in flight while alive.
struct InFlight(Arc<Fake>);

impl InFlight {
    fn enter(fake: &Arc<Fake>) -> Self {
        let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(fake))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn delay(fake: &Fake) {
    let ms = fake.delay_ms.load(Ordering::SeqCst) as u64;
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn legacy_send(
    State(fake): State<Arc<Fake>>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&fake);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.record("/fcm/send".into(), version, &headers, body.clone());
    delay(&fake).await;
    if let Some(scripted) = fake.next_reply("*") {
        return reply(scripted);
    }
    let recipients: Vec<&str> = match body.get("to") {
        Some(to) => vec![to.as_str().unwrap_or("")],
        None => body["registration_ids"]
            .as_array()
            .map(|ids| ids.iter().map(|id| id.as_str().unwrap_or("")).collect())
            .unwrap_or_default(),
    };
    let unregistered = fake.unregistered.lock().unwrap();
    let results: Vec<Value> = recipients
        .iter()
        .enumerate()
        .map(|(i, id)| match unregistered.contains(*id) {
            true => json!({"error": "NotRegistered"}),
            false => json!({"message_id": format!("0:{i}")}),
        })
        .collect();
    let failure = results.iter().filter(|r| r.get("error").is_some()).count();
    reply(Reply::new(
        200,
        json!({"multicast_id": 1, "success": results.len() - failure, "failure": failure,
               "canonical_ids": 0, "results": results}),
    ))
}

async fn v1_send(
    State(fake): State<Arc<Fake>>,
    Path(project): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&fake);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.record(
        format!("/v1/projects/{project}/messages:send"),
        version,
        &headers,
        body.clone(),
    );
    delay(&fake).await;
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !fake.issued.lock().unwrap().iter().any(|t| t == bearer) {
        return reply(Reply::google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            json!([]),
        ));
    }
    let token = body["message"]["token"].as_str().unwrap_or("").to_owned();
    if let Some(scripted) = fake.next_reply(&token) {
        return reply(scripted);
    }
    reply(Reply::new(
        200,
        json!({"name": format!("projects/{project}/messages/0:1")}),
    ))
}
