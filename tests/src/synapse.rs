//! A real Synapse homeserver for end-to-end tests.
//!
//! Synapse is installed from PyPI (pinned to [`SYNAPSE_VERSION`]) into a Python venv cached
//! under the target directory, so only the first run pays for the install. Each [`Synapse`]
//! runs on loopback with SQLite in a temporary directory and is killed when dropped, also when
//! the test fails. Nothing is skipped: without python3, its venv module or PyPI, the test fails
//! saying what is missing.

use crate::target_dir;
use base64::Engine as _;
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Synapse release the tests run against (the one the captured bodies come from).
pub const SYNAPSE_VERSION: &str = "1.163.2";

/// The shared secret for admin registration.
const SHARED_SECRET: &str = "sygnal-test-registration-secret";

/// Installing Synapse from PyPI takes about 2 minutes on a fresh machine; allow for a slow one.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Synapse starts in about 6 seconds here.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `command` to completion within `timeout`, its output going to `log`. Panics with
/// `what` and the log's tail if it fails.
fn run_logged(mut command: Command, log: &Path, timeout: Duration, what: &str) {
    let out = File::create(log).expect("install log");
    let err = out.try_clone().expect("install log");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|err| panic!("{what}: cannot run {command:?}: {err}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: did not finish within {timeout:?}:\n{}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{what}: {status}:\n{}", tail(log));
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The venv's Python with Synapse installed, installing it on first use. Blocking.
///
/// The venv is built beside its final place and renamed into it once complete, so an
/// interrupted install is redone rather than half-used.
pub fn python() -> PathBuf {
    let root = target_dir()
        .parent()
        .expect("target dir")
        .join("synapse-venv");
    let venv = root.join(SYNAPSE_VERSION);
    let python = venv.join("bin").join("python");
    let ready = venv.join("sygnal-tests-ready");
    if ready.is_file() {
        return python;
    }
    std::fs::create_dir_all(&root).expect("venv root");
    match Command::new("python3").arg("--version").output() {
        Ok(output) if output.status.success() => {}
        other => panic!(
            "the Synapse end-to-end test needs python3 (with its venv module and pip) to install \
             matrix-synapse {SYNAPSE_VERSION} from PyPI; on Debian: apt-get install python3 \
             python3-venv ({other:?})"
        ),
    }
    let building = root.join(format!("{SYNAPSE_VERSION}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let log = root.join(format!("install-{}.log", std::process::id()));
    let mut venv_command = Command::new("python3");
    venv_command.args(["-m", "venv"]).arg(&building);
    run_logged(
        venv_command,
        &log,
        Duration::from_secs(300),
        "python3 -m venv failed (on Debian: apt-get install python3-venv)",
    );
    let started = Instant::now();
    let mut pip = Command::new(building.join("bin").join("python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
    ])
    .arg(format!("matrix-synapse=={SYNAPSE_VERSION}"));
    run_logged(
        pip,
        &log,
        INSTALL_TIMEOUT,
        "pip install matrix-synapse failed (PyPI must be reachable)",
    );
    eprintln!(
        "installed matrix-synapse {SYNAPSE_VERSION} into {} in {:.0?}",
        venv.display(),
        started.elapsed()
    );
    std::fs::write(building.join("sygnal-tests-ready"), SYNAPSE_VERSION).expect("marker");
    if std::fs::rename(&building, &venv).is_err() {
        // Another test run finished first: use its venv.
        let _ = std::fs::remove_dir_all(&building);
        assert!(
            ready.is_file(),
            "cannot move the venv into {}",
            venv.display()
        );
    }
    let _ = std::fs::remove_file(&log);
    python
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    /// `@name:localhost`.
    pub user_id: String,
    /// The access token.
    pub token: String,
}

/// A running Synapse, killed on drop.
pub struct Synapse {
    child: Child,
    dir: tempfile::TempDir,
    /// The client API port on 127.0.0.1.
    pub port: u16,
    client: reqwest::Client,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a path segment (room and event ids hold `!`, `$`, `:`).
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Synapse {
    /// Installs (once) and starts Synapse on a free loopback port, with SQLite, pushing to
    /// loopback allowed (`ip_range_whitelist`), rate limits out of the way, and shared-secret
    /// registration. Waits until the client API answers.
    pub async fn start() -> Synapse {
        let python = tokio::task::spawn_blocking(python)
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port();
        let config = dir.path().join("homeserver.yaml");
        std::fs::write(&config, config_yaml(dir.path(), port)).expect("config");
        // A signing key in Synapse's format, so no slow `--generate-keys` run is needed.
        let seed: Vec<u8> = (0..32u8).collect();
        let key = base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed);
        std::fs::write(
            dir.path().join("signing.key"),
            format!("ed25519 a_test {key}\n"),
        )
        .expect("signing key");
        let log = File::create(dir.path().join("synapse.log")).expect("log");
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("synapse starts");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut synapse = Synapse {
            child,
            dir,
            port,
            client,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = synapse.child.try_wait() {
                panic!(
                    "synapse exited ({status}) while starting:\n{}",
                    synapse.logs()
                );
            }
            let versions = synapse
                .client
                .get(format!("{}/_matrix/client/versions", synapse.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if matches!(&versions, Ok(r) if r.status() == 200) {
                return synapse;
            }
            assert!(
                Instant::now() < deadline,
                "synapse did not come up within {START_TIMEOUT:?}:\n{}",
                synapse.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The client API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The last lines Synapse logged.
    pub fn logs(&self) -> String {
        tail(&self.dir.path().join("synapse.log"))
    }

    /// Sends a client API request: the status and the JSON answer.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("synapse reachable");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Like [`request`](Self::request), panicking (with Synapse's log) unless the answer is 200.
    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (status, answer) = self.request(method, path, Some(token), Some(body)).await;
        assert_eq!(status, 200, "{method} {path}: {answer}\n{}", self.logs());
        answer
    }

    /// Registers `name` through the shared-secret admin API.
    pub async fn register(&self, name: &str) -> User {
        let path = "/_synapse/admin/v1/register";
        let (status, nonce) = self.request("GET", path, None, None).await;
        assert_eq!(status, 200, "{nonce}");
        let nonce = nonce["nonce"].as_str().expect("nonce").to_owned();
        let password = format!("{name}-password");
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            SHARED_SECRET.as_bytes(),
        );
        let message = format!("{nonce}\0{name}\0{password}\0notadmin");
        let mac: String = ring::hmac::sign(&key, message.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let body = json!({"nonce": nonce, "username": name, "password": password,
                          "admin": false, "mac": mac});
        let (status, answer) = self.request("POST", path, None, Some(body)).await;
        assert_eq!(status, 200, "register {name}: {answer}\n{}", self.logs());
        User {
            user_id: answer["user_id"].as_str().expect("user_id").to_owned(),
            token: answer["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
        }
    }

    /// The pushkeys of `user`'s pushers.
    pub async fn pushkeys(&self, user: &User) -> Vec<String> {
        let (status, answer) = self
            .request("GET", "/_matrix/client/v3/pushers", Some(&user.token), None)
            .await;
        assert_eq!(status, 200, "{answer}");
        answer["pushers"]
            .as_array()
            .expect("pushers")
            .iter()
            .filter_map(|p| p["pushkey"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Waits until `check` returns something, polling; panics with `what` after `timeout`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config_yaml(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    let generous = "{per_second: 1000, burst_count: 1000}";
    format!(
        r#"server_name: localhost
public_baseurl: http://127.0.0.1:{port}/
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {dir}/homeserver.db
media_store_path: {dir}/media
signing_key_path: {dir}/signing.key
registration_shared_secret: "{SHARED_SECRET}"
report_stats: false
enable_metrics: false
trusted_key_servers: []
suppress_key_server_warning: true
# Synapse refuses to push to loopback addresses otherwise.
ip_range_whitelist: ["127.0.0.0/8"]
rc_message: {generous}
rc_registration: {generous}
rc_joins:
  local: {generous}
  remote: {generous}
rc_invites:
  per_room: {generous}
  per_user: {generous}
"#
    )
}
