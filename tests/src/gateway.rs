//! Running the real `sygnal` binary on loopback.

use crate::{free_port, install_crypto, sygnal_bin};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Builds a gateway config around a test's apps and starts the binary.
pub struct GatewayBuilder {
    apps_yaml: String,
    extra_yaml: String,
    env: Vec<(String, OsString)>,
    http_yaml: Option<String>,
    raw_config: Option<String>,
    args: Vec<OsString>,
    program: Option<PathBuf>,
    separate_stdout: bool,
}

/// A running gateway, killed on drop.
pub struct Gateway {
    child: Option<Child>,
    /// The Push Gateway API port.
    pub port: u16,
    /// The Prometheus port.
    pub metrics_port: u16,
    dir: tempfile::TempDir,
    client: reqwest::Client,
}

fn indent(yaml: &str) -> String {
    yaml.lines().map(|line| format!("  {line}\n")).collect()
}

impl Gateway {
    /// A builder for a gateway serving `apps_yaml` (the mapping under `apps:`, at column 0).
    pub fn builder(apps_yaml: &str) -> GatewayBuilder {
        GatewayBuilder {
            apps_yaml: apps_yaml.to_owned(),
            extra_yaml: String::new(),
            env: Vec::new(),
            http_yaml: None,
            raw_config: None,
            args: Vec::new(),
            program: None,
            separate_stdout: false,
        }
    }

    /// A builder for a gateway running exactly `config` (`{port}` and `{metrics_port}` are
    /// replaced by free ports).
    pub fn builder_with_config(config: &str) -> GatewayBuilder {
        let mut builder = Self::builder("");
        builder.raw_config = Some(config.to_owned());
        builder
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The config file the gateway runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("sygnal.yaml")
    }

    /// The gateway's working directory (config, output), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// POSTs `body` to /notify: the status and the JSON answer (Null if not JSON).
    pub async fn notify(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.post_raw(
            "/_matrix/push/v1/notify",
            serde_json::to_vec(&body).expect("serialisable body"),
        )
        .await
    }

    /// POSTs raw bytes to `path`: the status and the JSON answer (Null if not JSON).
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("gateway reachable");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Sends `method` to `path`: the status and the body text.
    pub async fn request(&self, method: &str, path: &str) -> (u16, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = self
            .client
            .request(method, format!("{}{path}", self.url()))
            .send()
            .await
            .expect("gateway reachable");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics text")
    }

    /// A file in the gateway's working directory, empty if missing.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Everything the gateway printed so far (its stderr only, with
    /// [`GatewayBuilder::separate_stdout`]).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Waits until the logs contain `needle`.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Sends a signal (`TERM`, `INT`, ...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl GatewayBuilder {
    /// Adds top-level YAML (e.g. `proxy: http://...`).
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra_yaml.push_str(yaml);
        self.extra_yaml.push('\n');
        self
    }

    /// Replaces the generated `http` section (`{port}` is replaced by the chosen port).
    pub fn http_yaml(mut self, yaml: &str) -> Self {
        self.http_yaml = Some(yaml.to_owned());
        self
    }

    /// Adds a command-line argument (before the config); `{dir}` is replaced by the gateway's
    /// working directory.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs this program instead of the built `sygnal` (e.g. a symlink to it, as installed).
    pub fn program(mut self, path: &Path) -> Self {
        self.program = Some(path.to_owned());
        self
    }

    /// Sends the gateway's standard output to `stdout.log` in its directory (read it with
    /// [`Gateway::read`]) instead of mixing it with standard error.
    pub fn separate_stdout(mut self) -> Self {
        self.separate_stdout = true;
        self
    }

    /// Sets an environment variable for the gateway.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    fn config_text(&self, port: u16, metrics_port: u16) -> String {
        if let Some(raw) = &self.raw_config {
            return raw
                .replace("{port}", &port.to_string())
                .replace("{metrics_port}", &metrics_port.to_string());
        }
        let http = match &self.http_yaml {
            Some(http) => http.replace("{port}", &port.to_string()),
            None => format!("http:\n  bind_addresses: ['127.0.0.1']\n  port: {port}\n"),
        };
        format!(
            "log:\n  level: debug\n{http}\nmetrics:\n  prometheus:\n    enabled: true\n    address: '127.0.0.1'\n    port: {metrics_port}\n{}\napps:\n{}",
            self.extra_yaml,
            indent(&self.apps_yaml)
        )
    }

    fn command(&self, dir: &Path, config: &Path, log: &Path) -> Command {
        let program = self.program.clone().unwrap_or_else(sygnal_bin);
        let mut command = Command::new(program);
        for arg in &self.args {
            let arg = arg
                .to_string_lossy()
                .replace("{dir}", &dir.to_string_lossy());
            command.arg(arg);
        }
        command
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .env_remove("SYGNAL_CONF")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("SSL_CERT_FILE")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            // Plugin snapshots go to the test's own directory, removed with it.
            .env("XDG_RUNTIME_DIR", dir)
            .stdin(Stdio::null());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let err = File::create(log).expect("log file");
        let out = if self.separate_stdout {
            File::create(dir.join("stdout.log")).expect("stdout file")
        } else {
            err.try_clone().expect("log file")
        };
        command.stdout(out).stderr(err);
        command
    }

    fn prepare(&self) -> (tempfile::TempDir, u16, u16, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, metrics_port) = (free_port(), free_port());
        let config = dir.path().join("sygnal.yaml");
        std::fs::write(&config, self.config_text(port, metrics_port)).expect("config written");
        (dir, port, metrics_port, config)
    }

    /// Starts the gateway and waits until /health answers. Panics (with the gateway's output)
    /// if it exits or does not come up.
    pub async fn start(self) -> Gateway {
        install_crypto();
        // A port found free may be taken by a concurrent test before the gateway binds it:
        // then the gateway exits at once, and another pair of ports is tried.
        for _ in 1..5 {
            match self.try_start().await {
                Ok(gateway) => return gateway,
                Err(logs) if logs.contains("Address already in use") => continue,
                Err(logs) => panic!("{logs}"),
            }
        }
        self.try_start()
            .await
            .unwrap_or_else(|logs| panic!("{logs}"))
    }

    /// One attempt of [`start`](Self::start): the gateway, or what it said before exiting.
    async fn try_start(&self) -> Result<Gateway, String> {
        let (dir, port, metrics_port, config) = self.prepare();
        let log = dir.path().join("gateway.log");
        let child = self
            .command(dir.path(), &config, &log)
            .spawn()
            .expect("sygnal starts");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let mut gateway = Gateway {
            child: Some(child),
            port,
            metrics_port,
            dir,
            client,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = gateway.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "gateway exited ({status}) during start:\n{}",
                    gateway.logs()
                ));
            }
            let health = gateway
                .client
                .get(format!("{}/health", gateway.url()))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if matches!(&health, Ok(r) if r.status() == 200) {
                return Ok(gateway);
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not come up:\n{}",
                gateway.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the gateway expecting it to fail: its exit status and output.
    pub async fn start_expecting_failure(self) -> (ExitStatus, String) {
        let (dir, _, _, config) = self.prepare();
        let log = dir.path().join("gateway.log");
        let mut child = self
            .command(dir.path(), &config, &log)
            .spawn()
            .expect("sygnal starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, std::fs::read_to_string(&log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "gateway kept running:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `sygnal --config <this config> <args>` to completion.
    pub fn run(self, args: &[&str]) -> Output {
        let (dir, _, _, config) = self.prepare();
        let log = dir.path().join("command.log");
        let mut command = self.command(dir.path(), &config, &log);
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.output().expect("sygnal runs")
    }
}
