//! A fake UnifiedPush endpoint (push server) on loopback.

use crate::serve::{serve_http, TestServer};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Answers the scripted statuses in turn (then 200) on `/up/{token}`, recording every request.
#[derive(Clone, Default)]
pub struct Endpoint {
    script: Arc<Mutex<Vec<u16>>>,
    /// The JSON bodies received, in order.
    pub bodies: Arc<Mutex<Vec<Value>>>,
    /// The token (last path segment) and JSON body of every request, in order.
    pub requests: Arc<Mutex<Vec<(String, Value)>>>,
    hits: Arc<AtomicUsize>,
}

impl Endpoint {
    /// Starts an endpoint answering `script` (then 200).
    pub async fn start(script: &[u16]) -> (Endpoint, TestServer) {
        let endpoint = Endpoint {
            script: Arc::new(Mutex::new(script.iter().rev().copied().collect())),
            ..Endpoint::default()
        };
        let router = Router::new()
            .route("/up/{token}", post(receive))
            .with_state(endpoint.clone());
        (endpoint, serve_http(router).await)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The bodies received for `token`, in order.
    pub fn bodies_for(&self, token: &str) -> Vec<Value> {
        let requests = self.requests.lock().expect("requests");
        requests
            .iter()
            .filter(|(t, _)| t == token)
            .map(|(_, body)| body.clone())
            .collect()
    }
}

async fn receive(
    State(endpoint): State<Endpoint>,
    Path(token): Path<String>,
    body: axum::body::Bytes,
) -> StatusCode {
    endpoint.hits.fetch_add(1, Ordering::SeqCst);
    if let Ok(json) = serde_json::from_slice::<Value>(&body) {
        endpoint.bodies.lock().expect("bodies").push(json.clone());
        endpoint
            .requests
            .lock()
            .expect("requests")
            .push((token, json));
    }
    let status = endpoint.script.lock().expect("script").pop().unwrap_or(200);
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
