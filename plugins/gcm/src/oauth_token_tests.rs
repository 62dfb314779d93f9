//! TokenSource against a fake token endpoint on loopback: caching, single flight, refresh,
//! failures.

use super::*;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

const TEST_KEY: &str = include_str!("../../../tests/data/gcm-test-only-rsa-key.pem");

#[derive(Default)]
struct Fake {
    fetches: AtomicUsize,
    /// 0 = answer 200 with a token.
    fail_with: AtomicU16,
    expires_in: AtomicUsize,
    bodies: std::sync::Mutex<Vec<String>>,
}

async fn token(State(fake): State<Arc<Fake>>, body: String) -> (StatusCode, String) {
    let n = fake.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    fake.bodies.lock().unwrap().push(body);
    // Slow enough that concurrent callers overlap with the fetch.
    tokio::time::sleep(Duration::from_millis(100)).await;
    match fake.fail_with.load(Ordering::SeqCst) {
        0 => {
            let expires_in = fake.expires_in.load(Ordering::SeqCst);
            let answer = serde_json::json!({"access_token": format!("token-{n}"),
                "expires_in": expires_in, "token_type": "Bearer"});
            (StatusCode::OK, answer.to_string())
        }
        code => (
            StatusCode::from_u16(code).unwrap(),
            r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#.into(),
        ),
    }
}

async fn source(expires_in: usize) -> (Arc<Fake>, Arc<TokenSource>) {
    let fake = Arc::new(Fake::default());
    fake.expires_in.store(expires_in, Ordering::SeqCst);
    let app = Router::new()
        .route("/token", post(token))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let account = ServiceAccount::from_json(
        &serde_json::json!({
            "type": "service_account", "private_key": TEST_KEY,
            "client_email": "sa@p.iam.gserviceaccount.com",
            "token_uri": format!("http://{addr}/token"),
        })
        .to_string(),
    )
    .unwrap();
    let client =
        sygnal_plugin_api::http::build_client(&Default::default(), &Default::default()).unwrap();
    (fake, Arc::new(TokenSource::new(account, client)))
}

#[tokio::test]
async fn concurrent_callers_share_one_fetch_and_the_token_is_cached() {
    let (fake, tokens) = source(3600).await;
    let calls = (0..20).map(|_| {
        let tokens = Arc::clone(&tokens);
        tokio::spawn(async move { tokens.token().await })
    });
    for call in futures_util::future::join_all(calls).await {
        assert_eq!(call.unwrap().unwrap().value(), "token-1");
    }
    for _ in 0..10 {
        assert_eq!(tokens.token().await.unwrap().value(), "token-1");
    }
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    // The header is built once per token, and kept out of debug output.
    let token = tokens.token().await.unwrap();
    assert_eq!(token.authorization(), "Bearer token-1");
    assert!(token.authorization().is_sensitive());
    assert!(Arc::ptr_eq(&token, &tokens.token().await.unwrap()));
    assert!(!format!("{token:?}").contains("token-1"));

    let body = fake.bodies.lock().unwrap()[0].clone();
    let (grant, assertion) = body.split_once('&').unwrap();
    assert_eq!(
        grant,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    );
    let jwt = assertion.strip_prefix("assertion=").unwrap();
    assert_eq!(jwt.split('.').count(), 3);
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_before_they_expire() {
    let (fake, tokens) = source(2).await;
    assert_eq!(tokens.token().await.unwrap().value(), "token-1");
    assert_eq!(tokens.token().await.unwrap().value(), "token-1");
    // Refreshed once half the lifetime (under 5 minutes) is left.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(tokens.token().await.unwrap().value(), "token-2");
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failed_early_refresh_keeps_the_current_token() {
    let (fake, tokens) = source(2).await;
    assert_eq!(tokens.token().await.unwrap().value(), "token-1");
    fake.fail_with.store(503, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(tokens.token().await.unwrap().value(), "token-1");
    // Past its usable life, the failure shows.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let err = tokens.token().await.unwrap_err();
    assert!(err.temporary && err.message.contains("503"), "{err:?}");
}

#[tokio::test]
async fn token_endpoint_errors_are_classified() {
    let (fake, tokens) = source(3600).await;
    fake.fail_with.store(400, Ordering::SeqCst);
    let err = tokens.token().await.unwrap_err();
    assert!(!err.temporary, "{err:?}");
    assert!(
        err.message.contains("invalid_grant") && err.message.contains("Invalid JWT Signature"),
        "{err:?}"
    );
    fake.fail_with.store(500, Ordering::SeqCst);
    assert!(tokens.token().await.unwrap_err().temporary);
    fake.fail_with.store(429, Ordering::SeqCst);
    assert!(tokens.token().await.unwrap_err().temporary);
}

#[tokio::test]
async fn invalidate_forces_a_new_fetch_only_for_the_current_token() {
    let (fake, tokens) = source(3600).await;
    assert_eq!(tokens.token().await.unwrap().value(), "token-1");
    tokens.invalidate("some-older-token").await;
    assert_eq!(tokens.token().await.unwrap().value(), "token-1");
    tokens.invalidate("token-1").await;
    assert_eq!(tokens.token().await.unwrap().value(), "token-2");
    assert_eq!(fake.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unreachable_token_endpoint_is_temporary() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let account = ServiceAccount::from_json(
        &serde_json::json!({"private_key": TEST_KEY, "client_email": "sa@p",
            "token_uri": format!("http://{addr}/token")})
        .to_string(),
    )
    .unwrap();
    let client =
        sygnal_plugin_api::http::build_client(&Default::default(), &Default::default()).unwrap();
    let err = TokenSource::new(account, client).token().await.unwrap_err();
    assert!(err.temporary, "{err:?}");
}

#[test]
fn a_token_unusable_in_a_header_is_refused_for_good() {
    let err = AccessToken::new("bad\ntoken".to_owned()).unwrap_err();
    assert!(!err.temporary);
    assert!(!err.message.contains("bad"), "{}", err.message);
}
