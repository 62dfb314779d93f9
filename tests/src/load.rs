//! Steady load on a gateway: concurrent clients posting notifications until told to stop, every
//! answer recorded, so a test can check that nothing failed while it changed things.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// What one request got.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The client that sent it.
    pub client: usize,
    /// When it was sent and when its answer arrived.
    pub sent: Instant,
    /// When its answer arrived.
    pub answered: Instant,
    /// The status, or why there was none.
    pub status: Result<u16, String>,
    /// The `rejected` pushkeys of a 200 answer.
    pub rejected: Vec<String>,
}

impl Answer {
    /// Whether the request failed: no answer, or not a 200.
    pub fn failed(&self) -> bool {
        self.status != Ok(200)
    }
}

/// Clients posting to `/_matrix/push/v1/notify` in a loop.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    clients: Vec<JoinHandle<Vec<Answer>>>,
}

/// No load runs longer than this, whatever the test does.
const MAX_DURATION: Duration = Duration::from_secs(120);

impl Load {
    /// Starts `clients` clients, each on its own connection, posting `body(client, n)` for its
    /// `n`-th request and pausing `pause` between requests. Each request times out after 10 s.
    pub fn start(
        base_url: &str,
        clients: usize,
        pause: Duration,
        body: impl Fn(usize, u64) -> Value + Send + Sync + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(body);
        let url = format!("{base_url}/_matrix/push/v1/notify");
        let deadline = Instant::now() + MAX_DURATION;
        let clients = (0..clients)
            .map(|client| {
                let (stop, body, url) = (Arc::clone(&stop), Arc::clone(&body), url.clone());
                let ok = Arc::clone(&ok);
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .timeout(Duration::from_secs(10))
                        .pool_max_idle_per_host(1)
                        .build()
                        .expect("client");
                    let mut answers = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        let sent = Instant::now();
                        let result = http.post(&url).json(&body(client, n)).send().await;
                        let (status, rejected) = match result {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let answer: Value = response.json().await.unwrap_or(Value::Null);
                                let rejected = answer["rejected"]
                                    .as_array()
                                    .map(|keys| {
                                        keys.iter()
                                            .filter_map(|k| k.as_str().map(str::to_owned))
                                            .collect()
                                    })
                                    .unwrap_or_default();
                                (Ok(status), rejected)
                            }
                            Err(err) => (Err(format!("{err:?}")), Vec::new()),
                        };
                        if status == Ok(200) {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        answers.push(Answer {
                            client,
                            sent,
                            answered: Instant::now(),
                            status,
                            rejected,
                        });
                        n += 1;
                        tokio::time::sleep(pause).await;
                    }
                    answers
                })
            })
            .collect();
        Load { stop, ok, clients }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `more` further requests were answered 200 (false on timeout).
    pub async fn wait_for_more(&self, more: usize, timeout: Duration) -> bool {
        let target = self.ok() + more;
        let deadline = Instant::now() + timeout;
        while self.ok() < target {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops the clients and returns every answer, in no particular order.
    pub async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        let mut answers = Vec::new();
        for client in self.clients {
            answers.extend(client.await.expect("load client"));
        }
        answers
    }
}

/// Asserts that no request failed and that each client got at least `min_each` answers.
pub fn assert_none_failed(answers: &[Answer], clients: usize, min_each: usize) {
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.failed()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        answers.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    for client in 0..clients {
        let count = answers.iter().filter(|a| a.client == client).count();
        assert!(
            count >= min_each,
            "client {client} got only {count} answers"
        );
    }
}
