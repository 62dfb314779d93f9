//! Helpers shared by the reload tests: editing a running gateway's config and reloading it.

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;

/// Concurrent clients of the load the reload tests run under.
pub const CLIENTS: usize = 16;
/// Pause of each client between two requests.
pub const PAUSE: Duration = Duration::from_millis(5);

/// A notification for `(app_id, pushkey)` devices.
pub fn notification(devices: &[(&str, &str)]) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|(app_id, pushkey)| json!({"app_id": app_id, "pushkey": pushkey}))
        .collect();
    json!({"notification": {"event_id": "$event", "room_id": "!room", "devices": devices}})
}

/// The value of the sample `name_and_labels` (exactly as exposed) in a Prometheus text page.
pub fn metric(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Replaces a file the way a careful deploy does: write a sibling, rename it over.
pub fn write_atomically(path: &Path, text: &str) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, text).expect("config written");
    std::fs::rename(&staging, path).expect("config renamed");
}

/// Replaces the `apps` section of the gateway's config (`apps` at column 0).
pub fn set_apps(gw: &Gateway, apps: &str) {
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).expect("config readable");
    let head = text.find("\napps:").map_or(text.as_str(), |at| &text[..at]);
    let apps: String = apps.lines().map(|line| format!("  {line}\n")).collect();
    write_atomically(&path, &format!("{head}\napps:\n{apps}"));
}

/// Sends SIGHUP and waits for the outcome: the `config reloaded` line, or the error line.
pub async fn reload(gw: &Gateway) -> Result<String, String> {
    const OK: &str = "config reloaded:";
    const FAILED: &str = "config reload failed";
    let count = |needle: &str| gw.logs().matches(needle).count();
    let (ok_before, failed_before) = (count(OK), count(FAILED));
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let logs = gw.logs();
        let last_line = |needle: &str| {
            logs.lines()
                .rfind(|l| l.contains(needle))
                .unwrap_or_default()
                .to_owned()
        };
        if logs.matches(OK).count() > ok_before {
            return Ok(last_line(OK));
        }
        if logs.matches(FAILED).count() > failed_before {
            return Err(last_line(FAILED));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no reload outcome logged:\n{}", gw.logs());
}
