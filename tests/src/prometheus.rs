//! A real Prometheus server (Debian's `prometheus` package) scraping a gateway on loopback, so
//! tests parse /metrics with Prometheus' own text-format parser and evaluate PromQL against it.
//!
//! `.ci/run` installs the package when it is missing; a test run without it fails with a message
//! saying so.

use crate::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of a program from Debian's `prometheus` package (`prometheus`, `promtool`).
pub fn require(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{program}` not found: install Debian's `prometheus` package \
             (apt-get install prometheus; .ci/run does this)"
        )
    })
}

/// A Prometheus server scraping loopback targets every second, killed on drop.
pub struct PrometheusServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` (`(job, port)`: `http://127.0.0.1:<port>/metrics`)
    /// and waits until its API answers.
    pub async fn start(targets: &[(&str, u16)]) -> PrometheusServer {
        let binary = require("prometheus");
        let dir = tempfile::tempdir().expect("temp dir");
        let jobs: String = targets
            .iter()
            .map(|(job, port)| {
                format!(
                    "  - job_name: '{job}'\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
                )
            })
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("prometheus config written");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let server = PrometheusServer {
            child,
            port,
            dir,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = server
                .client
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .await;
            if matches!(&ready, Ok(r) if r.status() == 200) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready:\n{}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prometheus' own log.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GETs `/api/v1/<path>`: the JSON answer.
    async fn api(&self, path: &str) -> serde_json::Value {
        self.client
            .get(format!("http://127.0.0.1:{}/api/v1/{path}", self.port))
            .send()
            .await
            .expect("prometheus reachable")
            .json()
            .await
            .expect("prometheus answers JSON")
    }

    /// Evaluates `expr` now: the result vector (each element `{"metric": {...}, "value": [t, v]}`).
    /// Panics with Prometheus' error when the expression is invalid.
    pub async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let response = self
            .api(&format!("query?query={}", percent_encode(expr)))
            .await;
        assert_eq!(
            response["status"], "success",
            "query `{expr}` failed: {response}"
        );
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The scrape targets' health: `(job, health, last error)` for each.
    pub async fn targets(&self) -> Vec<(String, String, String)> {
        let response = self.api("targets").await;
        response["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let field = |name: &str| t[name].as_str().unwrap_or_default().to_owned();
                (field("scrapePool"), field("health"), field("lastError"))
            })
            .collect()
    }

    /// Waits until every target has been scraped successfully `scrapes` times from now on
    /// (counted as samples of its `up` series).
    pub async fn wait_for_scrapes(&self, job: &str, scrapes: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let expr = format!("count_over_time(up{{job=\"{job}\"}}[10m])");
        let start = self.sample_count(&expr).await;
        loop {
            let healthy = self
                .targets()
                .await
                .iter()
                .any(|(pool, health, _)| pool == job && health == "up");
            if healthy && self.sample_count(&expr).await >= start + scrapes as f64 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} was not scraped {scrapes} times: targets {:?}\n{}",
                self.targets().await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn sample_count(&self, expr: &str) -> f64 {
        self.query(expr)
            .await
            .first()
            .and_then(|sample| sample["value"][1].as_str()?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool check metrics` (Prometheus' own parser and linter) on an exposition: its exit
/// code and what it said. Code 1 is a parse error; 3 is lint advice only.
pub fn promtool_check_metrics(exposition: &str) -> (i32, String) {
    use std::io::Write as _;
    let mut child = Command::new(require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("exposition written");
    let output = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}
