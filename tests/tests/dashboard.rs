//! Dashboards against the real thing: a real Prometheus (Debian's `prometheus` package) scrapes
//! the gateway, parsing /metrics with Prometheus' own parser, and evaluates every query of
//! Sygnal's Grafana dashboard and of ours (contrib/grafana/sygnal.json): each must return data.
//!
//! Run `cargo build --workspace` first; `.ci/run` installs `prometheus` when it is missing.

#[allow(dead_code)]
#[path = "apns/fake_apns.rs"]
mod fake_apns;
#[allow(dead_code)]
#[path = "gcm/fake_fcm.rs"]
mod fake_fcm;

use serde_json::{json, Value};
use std::time::Duration;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::prometheus::{promtool_check_metrics, PrometheusServer};
use sygnal_tests::redis::RedisServer;
use sygnal_tests::serve::serve_http;

/// What Sygnal's own dashboard (contrib/grafana/Sygnal.json in Sygnal's repository) queries,
/// with its `$instance` and `$bucket_size` variables filled in.
const SYGNAL_DASHBOARD_QUERIES: &[&str] = &[
    r#"rate(process_cpu_seconds_total{job="sygnal",instance=~".*"}[1m])"#,
    r#"process_resident_memory_bytes{job="sygnal",instance=~".*"}"#,
    r#"process_open_fds{job="sygnal",instance=~".*"}"#,
    r#"process_max_fds{job="sygnal",instance=~".*"}"#,
    r#"rate(sygnal_notifications_devices_received_total{job="sygnal",instance=~".*"}[1m])"#,
    r#"sum(rate(sygnal_per_pushkin_type_total{job="sygnal",instance=~".*"}[1m])) by (pushkin)"#,
    r#"sum(rate(sygnal_notify_time_bucket{job="sygnal",instance=~".*",code="200"}[1m])) by(le)"#,
    r#"histogram_quantile(0.5, sum(rate(sygnal_notify_time_bucket{job="sygnal",instance=~".*",code="200"}[1m])) by (le))"#,
    r#"sum(rate(sygnal_notify_time_sum{job="sygnal",instance=~".*",code="200"}[1m]))/sum(rate(sygnal_notify_time_count{job="sygnal",instance=~".*",code="200"}[1m]))"#,
    r#"sum(rate(sygnal_pushgateway_status_codes_total{job="sygnal", instance=~".*"}[1m])) by (code)"#,
    r#"sygnal_requests_in_flight{instance=~".*"}"#,
    r#"sygnal_pending_gcm_requests{instance=~".*"}"#,
    r#"histogram_quantile(0.5, sum(rate(sygnal_gcm_queue_time_bucket{job="sygnal",instance=~".*"}[1m])) by (le))"#,
    r#"sum(rate(sygnal_gcm_queue_time_sum{job="sygnal",instance=~".*"}[1m])) / sum(rate(sygnal_gcm_queue_time_count{job="sygnal",instance=~".*"}[1m]))"#,
    r#"sygnal_active_gcm_requests{instance=~".*"}"#,
    r#"sum(rate(sygnal_gcm_status_codes_total{job="sygnal", instance=~".*"}[1m])) by (code)"#,
    r#"sum(rate(sygnal_gcm_request_time_bucket{job="sygnal",instance=~".*"}[1m])) by(le)"#,
    r#"sum(rate(sygnal_gcm_request_time_sum{job="sygnal",instance=~".*"}[1m])) / sum(rate(sygnal_gcm_request_time_count{job="sygnal",instance=~".*"}[1m]))"#,
    r#"sygnal_active_apns_requests{instance=~".*"}"#,
    r#"sum(rate(sygnal_apns_status_codes_total{job="sygnal", instance=~".*"}[1m])) by (code)"#,
    r#"sum(rate(sygnal_apns_request_time_bucket{job="sygnal",instance=~".*"}[1m])) by(le)"#,
    r#"rate(sygnal_apns_request_time_sum{instance=~".*"}[1m])/rate(sygnal_apns_request_time_count{instance=~".*"}[1m])"#,
    // The instance variable's query.
    r#"count by (instance) (sygnal_notifications_devices_received_total)"#,
];

/// Series our dashboard graphs that come from a feature this build may not have yet: config
/// reload metrics arrive with live reload. Their panels may be empty until then; every other
/// query must return data.
const OPTIONAL_SERIES: &[&str] = &[
    "sygnal_config_reloads_total",
    "sygnal_config_last_reload_successful",
];

/// A gateway with an APNs app (fake APNs) and an FCM legacy app (fake FCM), having delivered one
/// notification through each.
/// Duplicate suppression is shared through a real Redis, as a deployment of replicas has it.
async fn busy_gateway(
    redis: &RedisServer,
) -> (
    Gateway,
    fake_apns::FakeApns,
    sygnal_tests::serve::TestServer,
) {
    let apns = fake_apns::FakeApns::start(false).await;
    let fcm = fake_fcm::Fake::new();
    let fcm_server = serve_http(fake_fcm::router(fcm.clone())).await;
    let apps = format!(
        "com.example.ios:\n  type: apns\n  keyfile: {}\n  key_id: {}\n  team_id: {}\n  topic: {}\n  \
         endpoint: {}\ncom.example.android:\n  type: gcm\n  api_version: legacy\n  api_key: k\n  endpoint: {}\n",
        apns.keyfile().display(),
        fake_apns::KEY_ID,
        fake_apns::TEAM_ID,
        fake_apns::TOPIC,
        apns.url(),
        fcm_server.url()
    );
    let gateway = Gateway::builder(&apps)
        .extra_yaml(&format!("dedup:\n  redis_url: '{}'\n", redis.url()))
        .env("SSL_CERT_FILE", apns.pki.ca_file())
        .start()
        .await;
    for (app, pushkey) in [
        ("com.example.ios", "AAEC"),
        ("com.example.android", "fcm-token"),
    ] {
        let body = json!({"notification": {"event_id": "$e", "room_id": "!r:x",
            "counts": {"unread": 1}, "devices": [{"app_id": app, "pushkey": pushkey}]}});
        assert_eq!(gateway.notify(body).await, (200, json!({"rejected": []})));
    }
    (gateway, apns, fcm_server)
}

/// Every PromQL expression in a Grafana dashboard: panel targets (rows included) and query
/// variables.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn panels(list: &Value, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(target["expr"].as_str().expect("target has expr").to_owned());
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(expr, label) is Grafana's: Prometheus evaluates the inner selector.
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map(|(selector, _)| selector.to_owned())
                .expect("label_values query");
            out.push(inner);
        }
    }
    out
}

/// Grafana's variables, as a dashboard viewer showing all instances of job `sygnal` has them.
fn fill_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$job", "sygnal")
        .replace("$instance", ".*")
}

#[tokio::test]
async fn sygnal_and_our_dashboards_resolve_against_a_real_prometheus() {
    let redis = RedisServer::start();
    let (gateway, _apns, _fcm) = busy_gateway(&redis).await;

    // Prometheus' own linter accepts the exposition.
    let exposition = gateway.metrics().await;
    let (code, report) = promtool_check_metrics(&exposition);
    assert_eq!(code, 0, "promtool check metrics:\n{report}\n{exposition}");

    let prometheus = PrometheusServer::start(&[("sygnal", gateway.metrics_port)]).await;
    // rate() needs two samples in its window.
    prometheus
        .wait_for_scrapes("sygnal", 3, Duration::from_secs(60))
        .await;

    let mut empty = Vec::new();
    for expr in SYGNAL_DASHBOARD_QUERIES {
        if prometheus.query(expr).await.is_empty() {
            empty.push(expr.to_string());
        }
    }
    assert!(
        empty.is_empty(),
        "queries of Sygnal's dashboard returned nothing:\n{}\n\n{exposition}",
        empty.join("\n")
    );

    let ours: Value = serde_json::from_str(include_str!("../../contrib/grafana/sygnal.json"))
        .expect("contrib/grafana/sygnal.json is JSON");
    let queries = dashboard_queries(&ours);
    assert!(queries.len() > 30, "{queries:?}");
    for expr in &queries {
        let filled = fill_variables(expr);
        let result = prometheus.query(&filled).await;
        let optional = OPTIONAL_SERIES.iter().any(|name| expr.contains(name))
            && !exposition.contains("sygnal_config_");
        if result.is_empty() && !optional {
            empty.push(filled);
        }
    }
    assert!(
        empty.is_empty(),
        "queries of contrib/grafana/sygnal.json returned nothing:\n{}\n\n{exposition}",
        empty.join("\n")
    );
}

#[test]
fn our_dashboard_is_well_formed() {
    let dashboard: Value = serde_json::from_str(include_str!("../../contrib/grafana/sygnal.json"))
        .expect("contrib/grafana/sygnal.json is JSON");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(dashboard["uid"], "sygnal-rs");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut previous_y = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["y"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && h > 0 && y >= previous_y, "{title}: {grid}");
        previous_y = y;
        let kind = panel["type"].as_str().unwrap();
        assert!(
            ["row", "timeseries", "heatmap", "stat"].contains(&kind),
            "{title}: {kind}"
        );
        if kind != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{title}: no queries");
            for target in targets {
                let expr = target["expr"].as_str().unwrap();
                // Every selector is scoped to the chosen job and instances.
                for (at, _) in expr
                    .match_indices("sygnal_")
                    .chain(expr.match_indices("process_"))
                {
                    let rest = &expr[at..];
                    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
                    let after = end.map(|end| &rest[end..]).unwrap_or("");
                    assert!(
                        after.starts_with("{job=~\"$job\",instance=~\"$instance\""),
                        "{title}: unscoped selector in {expr}"
                    );
                }
            }
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);
}
