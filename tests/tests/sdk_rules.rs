//! The SDK's rules as the host enforces them, end to end: libraries built with
//! `panic = "abort"` are refused, plugin metrics never break /metrics (checked with Prometheus'
//! own parser), and plugin log fields land where the host's own do, in text and JSON.

use serde_json::{json, Value};
use std::time::Duration;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::out_of_tree::{cargo_build, workspace_root};
use sygnal_tests::prometheus::promtool_check_metrics;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn libraries_built_with_panic_abort_are_refused() {
    let crate_dir = workspace_root().join("tests/abort-pushkin");
    // export_pushkin! itself refuses to compile such a crate...
    let refused = cargo_build(&crate_dir, "abort-pushkin", &["macro"], "abort_pushkin");
    assert!(
        !refused.success,
        "export_pushkin! compiled under panic = \"abort\""
    );
    assert!(
        refused
            .stderr
            .contains("sygnal pushkins must be built with panic = \"unwind\""),
        "{}",
        refused.stderr
    );
    // ...so a careless author writes the root module by hand; the host refuses the library.
    let built = cargo_build(&crate_dir, "abort-pushkin", &[], "abort_pushkin");
    assert!(built.success, "{}", built.stderr);
    let lib = built.library;
    let expected = "built with panic = \"abort\": a panic in it would end the gateway";

    let apps = format!("com.example.app:\n  type: {}\n", lib.display());
    let (status, output) = Gateway::builder(&apps).start_expecting_failure().await;
    assert!(!status.success());
    assert!(output.contains(expected), "serve: {output}");
    assert!(
        output.contains(&lib.display().to_string()),
        "serve: {output}"
    );

    let check = Gateway::builder(&apps).run(&["check"]);
    assert!(!check.status.success(), "check accepted it");
    assert!(
        stderr(&check).contains(expected),
        "check: {}",
        stderr(&check)
    );

    // Found by kind through plugins.dirs, `sygnal plugins` gives the same reason.
    let dir = tempfile::tempdir().unwrap();
    let file = format!(
        "{}sygnal_pushkin_aborting{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    std::fs::copy(&lib, dir.path().join(&file)).unwrap();
    let listing = Gateway::builder("a:\n  type: scripted\n")
        .extra_yaml(&format!("plugins:\n  dirs: ['{}']", dir.path().display()))
        .run(&["plugins"]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&listing.stdout),
        stderr(&listing)
    );
    let line = printed
        .lines()
        .find(|line| line.contains(&file))
        .unwrap_or_else(|| panic!("{file} not listed:\n{printed}"));
    assert!(line.contains(expected), "plugins: {line}");
}

#[tokio::test]
async fn plugin_metrics_never_break_the_exposition() {
    let gw = Gateway::builder("com.example.app:\n  type: scripted\n")
        .start()
        .await;
    let body = json!({"notification": {"devices": [{"app_id": "com.example.app", "pushkey": "metrics:1"}]}});
    assert_eq!(gw.notify(body).await, (200, json!({"rejected": []})));
    let text = gw.metrics().await;
    let (code, said) = promtool_check_metrics(&text);
    assert!(
        code == 0 || code == 3,
        "promtool refused /metrics ({code}): {said}\n{text}"
    );

    // What was valid is there, escaped.
    assert!(
        text.contains(r#"scripted_awkward_total{pushkin="com.example.app",note="quote \" backslash \\ newline \n end"} 1.0"#),
        "{text}"
    );
    assert!(
        text.contains("# HELP scripted_awkward_total Help with \\\\ and\\na newline\n"),
        "{text}"
    );
    assert!(
        text.contains("scripted_seconds_count{pushkin=\"com.example.app\"} 1.0"),
        "{text}"
    );
    // The gateway's own series are the gateway's: one notification received, not 101.
    assert!(
        text.contains("\nsygnal_notifications_received_total 1.0\n"),
        "{text}"
    );
    for absent in [
        "scripted-dashed",
        "bad-label",
        "# TYPE scripted_dispatches histogram",
        "gauge\nscripted_dispatches_total",
    ] {
        assert!(!text.contains(absent), "{absent} in:\n{text}");
    }
    // Each refusal is logged, naming the plugin and the problem.
    let wanted = [
        ("scripted-dashed", "not a valid metric name"),
        ("scripted_labelled", "`bad-label` is not a valid label name"),
        ("scripted_awkward", "counters only go up"),
        ("sygnal_notifications_received", "belongs to the gateway"),
        (
            "scripted_dispatches",
            "reported as a histogram but registered as a counter",
        ),
        (
            "scripted_dispatches_total",
            "collide with those of metric `scripted_dispatches`",
        ),
    ];
    for (metric, problem) in wanted {
        assert!(
            gw.wait_for_log(problem, Duration::from_secs(5)).await,
            "{problem}: {}",
            gw.logs()
        );
        let logs = gw.logs();
        let line = logs
            .lines()
            .find(|line| line.contains(problem))
            .unwrap_or_default();
        assert!(line.contains(metric) && line.contains("ERROR"), "{line}");
        if !problem.contains("gateway")
            && !problem.contains("registered")
            && !problem.contains("collide")
        {
            // Refused inside the plugin by the SDK: the line names the plugin.
            assert!(line.contains("plugin=\"scripted\""), "{line}");
        }
    }
}

fn config(format: &str) -> String {
    format!(
        "log:\n  level: debug\n  format: {format}\nhttp:\n  bind_addresses: ['127.0.0.1']\n  port: {{port}}\napps:\n  com.example.app:\n    type: scripted\n"
    )
}

/// One notification whose dispatch logs a plugin line and then a host line (the scripted
/// failure), both about the same request.
async fn plugin_and_host_lines(format: &str) -> (String, String) {
    let gw = Gateway::builder_with_config(&config(format)).start().await;
    let body = json!({"notification": {"event_id": "$e", "devices": [{"app_id": "com.example.app", "pushkey": "temporary:1"}]}});
    assert_eq!(gw.notify(body).await.0, 502);
    assert!(
        gw.wait_for_log("dispatch failed", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    let find = |needle: &str| {
        logs.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no {needle} line in\n{logs}"))
            .to_owned()
    };
    (find("scripted dispatch"), find("dispatch failed"))
}

#[tokio::test]
async fn plugin_log_fields_sit_where_host_fields_do_in_json() {
    let (plugin, host) = plugin_and_host_lines("json").await;
    let plugin: Value = serde_json::from_str(&plugin).expect("plugin line is JSON");
    let host: Value = serde_json::from_str(&host).expect("host line is JSON");
    // The request id: in the request's span, for both.
    assert_eq!(host["span"]["name"], "notify", "{host}");
    assert!(host["span"]["request_id"].is_string(), "{host}");
    assert_eq!(
        plugin["span"], host["span"],
        "plugin: {plugin}\nhost: {host}"
    );
    // The app: a field, for both; the plugin's own fields beside it, typed.
    assert_eq!(host["fields"]["app"], "com.example.app", "{host}");
    assert_eq!(plugin["fields"]["app"], "com.example.app", "{plugin}");
    assert_eq!(
        plugin["fields"]["devices"], 1,
        "a number stays a number: {plugin}"
    );
    assert_eq!(plugin["fields"]["event_id"], "Some(\"$e\")", "{plugin}");
    assert_eq!(plugin["fields"]["plugin"], "scripted", "{plugin}");
    assert_eq!(plugin["fields"]["message"], "scripted dispatch", "{plugin}");
    assert!(
        plugin["fields"].get("fields").is_none(),
        "no pre-formatted string: {plugin}"
    );
}

#[tokio::test]
async fn plugin_log_fields_sit_where_host_fields_do_in_text() {
    let (plugin, host) = plugin_and_host_lines("text").await;
    let span = |line: &str| {
        let start = line
            .find("notify{")
            .unwrap_or_else(|| panic!("no request span: {line}"));
        line[start..]
            .split_once("}:")
            .map(|(span, _)| span.to_owned())
            .unwrap()
    };
    assert!(span(&host).starts_with("notify{request_id="), "{host}");
    assert_eq!(span(&plugin), span(&host), "plugin: {plugin}\nhost: {host}");
    assert!(host.contains("app=com.example.app"), "{host}");
    assert!(plugin.contains("app=com.example.app"), "{plugin}");
    assert!(plugin.contains("devices=1"), "{plugin}");
    assert!(
        !plugin.contains("fields="),
        "no pre-formatted string: {plugin}"
    );
}
