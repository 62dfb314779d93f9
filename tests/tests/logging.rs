//! Logging as Sygnal's `log.setup` says, with the real binary: each handler shape of Sygnal's
//! sample config and of public deployments, logger levels and propagation as Python applies
//! them, the access log (`sygnal.access`), and log files following rotation.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;

const WAIT: Duration = Duration::from_secs(10);

/// Waits until `read()` contains `needle`; false at the deadline.
async fn wait_for(read: impl Fn() -> String, needle: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if read().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn notification(pushkey: &str) -> Value {
    json!({"notification": {"event_id": "$e", "devices": [{"app_id": "com.example.app", "pushkey": pushkey}]}})
}

fn config(log: &str, extra: &str) -> String {
    format!(
        "log:\n{log}\nhttp:\n  bind_addresses: ['127.0.0.1']\n  port: {{port}}\n{extra}apps:\n  com.example.app:\n    type: scripted\n"
    )
}

/// The `log` section of Sygnal's sygnal.yaml.sample, verbatim, indented under `log:`.
fn sygnal_sample_log() -> String {
    include_str!("../data/sygnal-sample-log.yaml")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `2025-01-30 12:34:56,789 [<pid>] <level padded to 5> <logger> `: Sygnal's "normal" format.
fn is_normal_line(line: &str, pid: u32, level: &str, logger: &str) -> bool {
    let bytes = line.as_bytes();
    let stamp_ok = bytes.len() > 24
        && bytes[4] == b'-'
        && bytes[10] == b' '
        && bytes[19] == b','
        && bytes[..23]
            .iter()
            .enumerate()
            .all(|(i, b)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19) || b.is_ascii_digit());
    stamp_ok && line[23..].starts_with(&format!(" [{pid}] {level:<5} {logger} "))
}

#[tokio::test]
async fn sygnals_sample_sends_each_logger_to_its_own_handlers() {
    let gw = Gateway::builder_with_config(&config(&sygnal_sample_log(), ""))
        .separate_stdout()
        .start()
        .await;
    assert_eq!(gw.notify(notification("ok:1")).await.0, 200);
    assert_eq!(gw.request("GET", "/health").await.0, 200);
    let stdout = || gw.read("stdout.log");
    assert!(
        wait_for(stdout, "POST /_matrix/push/v1/notify").await,
        "{}",
        stdout()
    );
    let pid = gw.pid();

    // sygnal.access: stdout only (propagate: false), from INFO: /health (DEBUG) is not there.
    let access = stdout();
    let line = access
        .lines()
        .find(|line| line.contains("POST /_matrix/push/v1/notify"))
        .unwrap();
    assert!(is_normal_line(line, pid, "INFO", "sygnal.access"), "{line}");
    let (_, rest) = line
        .split_once("Handled request: \"127.0.0.1\" - - [")
        .unwrap();
    let (time, rest) = rest.split_once("] ").unwrap();
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    assert!(
        rest.starts_with("\"POST /_matrix/push/v1/notify HTTP/1.1\" 200 15 \"-\" \""),
        "{rest}"
    );
    assert!(rest.ends_with("ms"), "{rest}");
    assert!(!access.contains("/health"), "{access}");
    assert!(!access.contains("sygnal.lifecycle"), "{access}");

    // sygnal: stderr and the file, from the root's INFO; never the access lines.
    for (name, text) in [("stderr", gw.logs()), ("sygnal.log", gw.read("sygnal.log"))] {
        let listening = text
            .lines()
            .find(|line| line.contains("push gateway listening"))
            .unwrap_or_else(|| panic!("no listening line in {name}:\n{text}"));
        assert!(
            is_normal_line(listening, pid, "INFO", "sygnal.lifecycle"),
            "{listening}"
        );
        // A plugin's line, on its own logger, with the request id as Sygnal's lines have it.
        let plugin = text
            .lines()
            .find(|line| line.contains("scripted dispatch"))
            .unwrap_or_else(|| panic!("no plugin line in {name}:\n{text}"));
        assert!(
            is_normal_line(plugin, pid, "INFO", "sygnal.pushkin.scripted"),
            "{plugin}"
        );
        let message = plugin.split("sygnal.pushkin.scripted ").nth(1).unwrap();
        assert!(message.starts_with('[') && message.contains("] scripted dispatch"));
        assert!(!text.contains("Handled request"), "{name}:\n{text}");
        assert!(!text.contains("DEBUG"), "{name}:\n{text}");
    }
}

#[tokio::test]
async fn a_logger_level_beats_the_root_level_as_in_python() {
    let handlers = "    handlers:\n      stderr: {class: logging.StreamHandler, formatter: f}\n    formatters:\n      f: {format: '%(levelname)s %(name)s %(message)s'}\n";
    // `sygnal` at INFO under a root at WARNING: the gateway's INFO lines are kept.
    let log = format!("  setup:\n    version: 1\n{handlers}    loggers:\n      sygnal: {{level: INFO}}\n    root: {{level: WARNING, handlers: [stderr]}}");
    let gw = Gateway::builder_with_config(&config(&log, ""))
        .start()
        .await;
    assert_eq!(gw.notify(notification("ok:1")).await.0, 200);
    assert!(
        gw.wait_for_log("INFO sygnal.access Handled request", WAIT)
            .await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        logs.contains("INFO sygnal.lifecycle push gateway listening"),
        "{logs}"
    );
    assert!(
        logs.contains("INFO sygnal.pushkin.scripted scripted pushkin constructed"),
        "{logs}"
    );
    assert!(!logs.contains("DEBUG"), "{logs}");
    drop(gw);

    // The root alone at WARNING: warnings only.
    let log = format!(
        "  setup:\n    version: 1\n{handlers}    root: {{level: WARNING, handlers: [stderr]}}"
    );
    let gw = Gateway::builder_with_config(&config(&log, "surprise_key: 1\n"))
        .start()
        .await;
    assert_eq!(gw.notify(notification("temporary:1")).await.0, 502);
    assert!(
        gw.wait_for_log("WARNING sygnal.dispatch", WAIT).await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        logs.contains("WARNING sygnal unknown config key `surprise_key` ignored"),
        "{logs}"
    );
    assert!(
        !logs.contains("INFO ") && !logs.contains("Handled request"),
        "{logs}"
    );
}

#[tokio::test]
async fn file_and_stream_handlers_both_write_each_at_its_own_level() {
    let log = "  setup:\n    version: 1\n    formatters:\n      f: {format: '%(levelname)s %(name)s %(message)s'}\n    handlers:\n      console: {class: logging.StreamHandler, formatter: f, level: WARNING}\n      file: {class: logging.FileHandler, formatter: f, filename: all.log, level: DEBUG}\n    root: {level: DEBUG, handlers: [console, file]}";
    let gw = Gateway::builder_with_config(&config(log, "surprise_key: 1\n"))
        .start()
        .await;
    assert_eq!(gw.notify(notification("ok:1")).await.0, 200);
    let file = || gw.read("all.log");
    assert!(wait_for(file, "Handled request").await, "{}", file());
    let file = file();
    for line in [
        "WARNING sygnal unknown config key `surprise_key` ignored",
        "INFO sygnal.lifecycle push gateway listening",
        "DEBUG sygnal.api [",
        "DEBUG sygnal.access Handled request: \"127.0.0.1\" - - [",
    ] {
        assert!(file.contains(line), "{line} missing from the file:\n{file}");
    }
    let console = gw.logs();
    assert!(
        console.contains("WARNING sygnal unknown config key `surprise_key` ignored"),
        "{console}"
    );
    assert!(
        !console.contains("INFO ") && !console.contains("DEBUG "),
        "{console}"
    );
}

#[tokio::test]
async fn the_access_log_takes_x_forwarded_for_only_when_asked_and_health_at_debug() {
    for trusted in [false, true] {
        let log = format!("  level: debug\n  access:\n    x_forwarded_for: {trusted}");
        let gw = Gateway::builder_with_config(&config(&log, ""))
            .start()
            .await;
        let response = reqwest::Client::new()
            .post(format!("{}/_matrix/push/v1/notify", gw.url()))
            .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
            .header("user-agent", "Synapse/1.163.2")
            .json(&notification("reject:1"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            gw.wait_for_log("\"POST /_matrix/push/v1/notify HTTP/1.1\" 200", WAIT)
                .await,
            "{}",
            gw.logs()
        );
        let logs = gw.logs();
        let line = logs
            .lines()
            .find(|line| line.contains("POST /_matrix/push/v1/notify"))
            .unwrap();
        let client = if trusted { "203.0.113.9" } else { "127.0.0.1" };
        assert!(
            line.contains(&format!(
                " INFO sygnal::access: Handled request: \"{client}\" - - ["
            )),
            "{line}"
        );
        assert!(line.contains("\"-\" \"Synapse/1.163.2\" "), "{line}");
        // The start-up probes of /health: logged, at debug.
        assert!(
            logs.lines()
                .any(|line| line.contains("DEBUG sygnal::access")
                    && line.contains("\"GET /health HTTP/1.1\" 200 - ")),
            "{logs}"
        );
    }
}

#[tokio::test]
async fn json_applies_to_every_handler() {
    let log = format!("{}\n  format: json", sygnal_sample_log());
    let gw = Gateway::builder_with_config(&config(&log, ""))
        .separate_stdout()
        .start()
        .await;
    assert_eq!(gw.notify(notification("ok:1")).await.0, 200);
    let stdout = || gw.read("stdout.log");
    assert!(wait_for(stdout, "Handled request").await, "{}", stdout());
    let access: Value = serde_json::from_str(stdout().lines().next().unwrap()).unwrap();
    assert_eq!(access["logger"], "sygnal.access");
    assert_eq!(access["level"], "INFO");
    assert!(access["fields"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Handled request: \"127.0.0.1\""));
    let file = gw.read("sygnal.log");
    let plugin: Value = file
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON line"))
        .find(|line| line["fields"]["message"] == "scripted dispatch")
        .unwrap_or_else(|| panic!("{file}"));
    assert_eq!(plugin["logger"], "sygnal.pushkin.scripted");
    assert!(plugin["span"]["request_id"].is_string(), "{plugin}");
}

#[tokio::test]
async fn every_log_file_follows_rotation() {
    let log = "  setup:\n    version: 1\n    formatters:\n      f: {format: '%(name)s %(message)s'}\n    handlers:\n      access: {class: logging.handlers.WatchedFileHandler, formatter: f, filename: access.log}\n      main: {class: logging.handlers.RotatingFileHandler, formatter: f, filename: main.log, maxBytes: 1000000}\n    loggers:\n      sygnal.access: {handlers: [access], propagate: false}\n    root: {level: DEBUG, handlers: [main]}";
    let gw = Gateway::builder_with_config(&config(log, "")).start().await;
    let dir = gw.dir().to_owned();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    assert_eq!(gw.notify(notification("ok:first")).await.0, 200);
    assert!(wait_for(|| read("access.log"), "notify").await);
    assert!(wait_for(|| read("main.log"), "notification dispatched").await);
    assert!(read("main.log").contains("RotatingFileHandler rotation is left to logrotate"));

    // logrotate moves both files away: the next lines go to new files at the same paths.
    for name in ["access.log", "main.log"] {
        std::fs::rename(dir.join(name), dir.join(format!("{name}.1"))).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gw.notify(notification("ok:second")).await.0, 200);
    assert!(
        wait_for(|| read("access.log"), "POST").await,
        "{}",
        read("access.log.1")
    );
    assert!(wait_for(|| read("main.log"), "notification dispatched").await);
    assert_eq!(read("access.log.1").matches("POST").count(), 1);

    // SIGHUP reopens every file at once.
    for name in ["access.log", "main.log"] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    gw.signal("HUP");
    assert!(wait_for(|| read("main.log"), "SIGHUP received").await);
    assert_eq!(gw.request("GET", "/nowhere").await.0, 404);
    assert!(wait_for(|| read("access.log"), "GET /nowhere").await);
}
