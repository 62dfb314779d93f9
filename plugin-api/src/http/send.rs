//! Sending one push request: the retry policy, what the answer means, `Retry-After`, and a
//! bounded read of the body so the connection can be reused.

use super::{describe_error, reqwest, retry, retry_after, Attempt, RetryPolicy};
use crate::PushError;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use std::time::{Duration, Instant};

/// Response bodies are read up to this many bytes by default; the rest is not read.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What an upstream's answer means for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Delivered,
    /// The upstream says the pushkey is gone for good: reject it (the homeserver deletes the
    /// pusher). Only for a definitive answer.
    Reject,
    /// Worth another try (the retry policy applies, `Retry-After` is honoured); once the tries
    /// are spent, the dispatch fails temporarily (502, the homeserver retries later).
    Temporary,
    /// Will fail the same way again: no retry. The caller decides what it means (an error, or a
    /// drop that is logged and counted).
    Permanent,
}

/// The reading most push services share: 2xx delivered; 404 and 410 (the subscription or
/// token is gone) reject; 408, 425, 429 and 5xx temporary; anything else permanent.
pub fn default_verdict(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        404 | 410 => Verdict::Reject,
        408 | 425 | 429 | 500..=599 => Verdict::Temporary,
        _ => Verdict::Permanent,
    }
}

/// An upstream's answer to one attempt.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, cut at the sender's limit.
    pub body: Vec<u8>,
    /// How long the attempt took, body included.
    pub elapsed: Duration,
}

impl Answer {
    /// The body as text (lossy), for logs. Never log a body that may echo secrets.
    pub fn body_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Sends push requests with one retry policy. Cheap to clone (the client is shared).
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: RetryPolicy,
    max_response_bytes: usize,
}

impl Sender {
    /// A sender using `client` (see [`build_client`](super::build_client)) and `policy`
    /// (see [`RetrySettings::from_context`](super::RetrySettings::from_context)).
    pub fn new(client: reqwest::Client, policy: RetryPolicy) -> Self {
        Sender {
            client,
            policy,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// Reads at most `bytes` of each response body (default 64 KiB).
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The HTTP client, for requests that are not pushes (a token fetch, say).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Sends the request `build` makes (called again for each attempt), reads the answer's body
    /// (bounded) and lets `classify` say what it means. Connection failures and
    /// [`Verdict::Temporary`] answers are retried per the policy, waiting `Retry-After` when
    /// the upstream gives one.
    ///
    /// Returns the verdict ([`Delivered`](Verdict::Delivered), [`Reject`](Verdict::Reject) or
    /// [`Permanent`](Verdict::Permanent), never `Temporary`) with the last answer, or a
    /// temporary [`PushError`] once the tries are spent. `upstream` names the upstream in logs
    /// and errors (a host name: never a URL, which may hold a pushkey).
    pub async fn send<B, C>(
        &self,
        upstream: &str,
        mut build: B,
        classify: C,
    ) -> Result<(Verdict, Answer), PushError>
    where
        B: FnMut(&reqwest::Client) -> reqwest::RequestBuilder,
        C: Fn(&Answer) -> Verdict,
    {
        let classify = &classify;
        retry(&self.policy, |_| {
            let request = build(&self.client);
            async move {
                crate::trace::record_upstream(upstream);
                let started = Instant::now();
                let response = match request.send().await {
                    Ok(response) => response,
                    Err(err) => {
                        return Ok(Attempt::Retry {
                            reason: format!("{upstream} unreachable: {}", describe_error(err)),
                            retry_after: None,
                        })
                    }
                };
                let status = response.status();
                crate::trace::record_http_status(status.as_u16());
                let headers = response.headers().clone();
                let body = read_bounded(response, self.max_response_bytes).await;
                let answer = Answer {
                    status,
                    headers,
                    body,
                    elapsed: started.elapsed(),
                };
                Ok(match classify(&answer) {
                    Verdict::Temporary => Attempt::Retry {
                        reason: format!("{upstream} answered {}", status.as_u16()),
                        retry_after: retry_after(&answer.headers),
                    },
                    verdict => Attempt::Done((verdict, answer)),
                })
            }
        })
        .await
    }
}

/// Reads up to `limit` bytes of the body. Reading it to the end lets the connection be reused;
/// past the limit the rest is left unread and the connection is dropped. A body that fails
/// halfway is kept as far as it came: the status has already been decided.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            break;
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{build_client, ClientOptions, RetrySettings};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn default_verdicts() {
        let verdict = |code| default_verdict(StatusCode::from_u16(code).unwrap());
        for code in [200, 201, 202, 204] {
            assert_eq!(verdict(code), Verdict::Delivered, "{code}");
        }
        for code in [404, 410] {
            assert_eq!(verdict(code), Verdict::Reject, "{code}");
        }
        for code in [408, 425, 429, 500, 502, 503] {
            assert_eq!(verdict(code), Verdict::Temporary, "{code}");
        }
        for code in [301, 400, 401, 403, 413] {
            assert_eq!(verdict(code), Verdict::Permanent, "{code}");
        }
    }

    /// An HTTP/1.1 server answering each connection's request with the next scripted
    /// response (raw text), counting requests.
    async fn scripted(responses: Vec<String>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            let mut responses = responses.into_iter();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                counter.fetch_add(1, Ordering::SeqCst);
                let Some(response) = responses.next() else {
                    return;
                };
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        (url, hits)
    }

    fn response(status: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra_headers}\r\n{body}",
            body.len()
        )
    }

    fn sender(max_tries: u32) -> Sender {
        crate::http::install_crypto_provider();
        let client = build_client(&crate::HostInfo::default(), &ClientOptions::default()).unwrap();
        let policy = RetrySettings {
            max_tries,
            retry_delay_base: 0.01,
        }
        .policy()
        .unwrap();
        Sender::new(client, policy).max_response_bytes(8)
    }

    fn classify(answer: &Answer) -> Verdict {
        default_verdict(answer.status)
    }

    #[tokio::test]
    async fn temporary_answers_are_retried_honouring_retry_after() {
        let (url, hits) = scripted(vec![
            response("503 Service Unavailable", "retry-after: 0\r\n", ""),
            response("429 Too Many Requests", "", ""),
            response("201 Created", "", "a body longer than the limit"),
        ])
        .await;
        let (verdict, answer) = sender(3)
            .send("push.example.org", |client| client.post(&url), classify)
            .await
            .unwrap();
        assert_eq!((verdict, answer.status.as_u16()), (Verdict::Delivered, 201));
        assert_eq!(answer.body, b"a body l", "the body is read up to the limit");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn rejections_and_permanent_answers_are_final() {
        for (status, expected) in [
            ("410 Gone", Verdict::Reject),
            ("400 Bad Request", Verdict::Permanent),
        ] {
            let (url, hits) = scripted(vec![response(status, "", "why")]).await;
            let (verdict, answer) = sender(3)
                .send("push.example.org", |client| client.post(&url), classify)
                .await
                .unwrap();
            assert_eq!((verdict, answer.body_text().as_ref()), (expected, "why"));
            assert_eq!(hits.load(Ordering::SeqCst), 1, "{status} is not retried");
        }
    }

    #[tokio::test]
    async fn spent_tries_and_unreachable_upstreams_are_temporary_errors() {
        let (url, hits) = scripted(vec![response("500 Oops", "", ""); 2]).await;
        let err = sender(2)
            .send("push.example.org", |client| client.post(&url), classify)
            .await
            .unwrap_err();
        assert!(
            err.temporary && err.message.contains("push.example.org answered 500"),
            "{err}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 2);

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let secret = format!("http://127.0.0.1:{port}/secret-token");
        let err = sender(2)
            .send("push.example.org", |client| client.post(&secret), classify)
            .await
            .unwrap_err();
        assert!(
            err.temporary && err.message.contains("unreachable"),
            "{err}"
        );
        assert!(!err.message.contains("secret-token"), "{err}");
    }
}
