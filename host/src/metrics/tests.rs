//! The registry's rules and its exposition, checked without a running gateway.

use super::*;

#[test]
fn renders_counters_gauges_and_histograms_like_sygnal() {
    let registry = Registry::default();
    registry
        .series(
            "sygnal_notifications_received",
            "Number of notification pokes received",
            Kind::Counter,
            "",
        )
        .unwrap()
        .add(2.0);
    registry
        .series(
            "sygnal_requests_in_flight",
            "in flight",
            Kind::Gauge,
            "resource=\"V1NotifyHandler\"",
        )
        .unwrap()
        .set(3.0);
    let histogram = registry
        .series(
            "sygnal_notify_time",
            "notify time",
            Kind::Histogram,
            "code=\"200\"",
        )
        .unwrap();
    histogram.observe(0.02);
    histogram.observe(20.0);
    let text = registry.render();
    assert!(text.contains("# TYPE sygnal_notifications_received_total counter\nsygnal_notifications_received_total 2.0\n"), "{text}");
    assert!(
        text.contains("sygnal_requests_in_flight{resource=\"V1NotifyHandler\"} 3.0\n"),
        "{text}"
    );
    assert!(
        text.contains("sygnal_notify_time_bucket{code=\"200\",le=\"0.01\"} 0.0\n"),
        "{text}"
    );
    assert!(
        text.contains("sygnal_notify_time_bucket{code=\"200\",le=\"0.025\"} 1.0\n"),
        "{text}"
    );
    assert!(
        text.contains("sygnal_notify_time_bucket{code=\"200\",le=\"+Inf\"} 2.0\n"),
        "{text}"
    );
    assert!(
        text.contains("sygnal_notify_time_count{code=\"200\"} 2.0\n"),
        "{text}"
    );
    assert!(
        text.contains("sygnal_notify_time_sum{code=\"200\"} 20.02\n"),
        "{text}"
    );
}

/// Runs Prometheus' own parser (`promtool check metrics`, from Debian's `prometheus`
/// package, which .ci/run installs) over `text`: its exit code and what it said. Code 1 is
/// a parse error; 3 is lint advice only.
pub(crate) fn promtool(text: &str) -> (i32, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("exposition written");
    let output = child.wait_with_output().expect("promtool finishes");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), said)
}

fn plugin_report(
    registry: &Registry,
    op: MetricOp,
    name: &str,
    labels: &str,
    value: f64,
) -> Result<(), String> {
    report(
        registry,
        op,
        name,
        "help with \\ and\nnewline",
        labels,
        value,
    )
}

#[test]
fn hostile_plugin_reports_leave_a_valid_exposition() {
    let registry = Registry::default();
    let host = registry
        .series(
            "sygnal_notifications_received",
            "received",
            Kind::Counter,
            "",
        )
        .unwrap();
    host.add(3.0);
    let ok = |result: Result<(), String>| result.unwrap();
    ok(plugin_report(
        &registry,
        MetricOp::CounterAdd,
        "plugin_sent",
        r#"pushkin="a\"b\\c\nd""#,
        1.0,
    ));
    ok(plugin_report(
        &registry,
        MetricOp::HistogramObserve,
        "plugin_seconds",
        r#"pushkin="a""#,
        0.2,
    ));
    ok(plugin_report(
        &registry,
        MetricOp::GaugeSet,
        "plugin_active",
        "",
        2.0,
    ));
    let refused = [
        (
            MetricOp::CounterAdd,
            "sygnal_notifications_received",
            "",
            1.0,
            "belongs to the gateway",
        ),
        (
            MetricOp::GaugeSet,
            "sygnal_notifications_received_total",
            "",
            1.0,
            "belongs to the gateway",
        ),
        (
            MetricOp::GaugeSet,
            "sygnal_notify_time_count",
            "",
            1.0,
            "belongs to the gateway",
        ),
        (
            MetricOp::HistogramObserve,
            "plugin_sent",
            "",
            1.0,
            "registered as a counter",
        ),
        (
            MetricOp::GaugeSet,
            "plugin_sent_total",
            "",
            1.0,
            "collide with those of metric `plugin_sent`",
        ),
        (
            MetricOp::GaugeSet,
            "plugin_seconds_bucket",
            "",
            1.0,
            "collide",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_seconds",
            "",
            1.0,
            "registered as a histogram",
        ),
        (
            MetricOp::GaugeSet,
            "plugin_seconds_count",
            "",
            1.0,
            "collide",
        ),
        (
            MetricOp::CounterAdd,
            "bad-name",
            "",
            1.0,
            "not a valid metric name",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "bad-label=\"x\"",
            1.0,
            "not a valid label name",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "__x=\"x\"",
            1.0,
            "reserved",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "a=\"1\",a=\"2\"",
            1.0,
            "appears twice",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "a=\"1\"\nb=\"2\"",
            1.0,
            "comma-separated",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "a=\"x\ny\"",
            1.0,
            "raw newline",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "a=\"\\t\"",
            1.0,
            "invalid escape",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "a=\"open",
            1.0,
            "unterminated",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "a=1",
            1.0,
            "name=\"value\" pairs",
        ),
        (
            MetricOp::CounterAdd,
            "plugin_sent",
            "a=\"1\",",
            1.0,
            "comma-separated",
        ),
        (
            MetricOp::HistogramObserve,
            "plugin_seconds",
            "le=\"1\"",
            1.0,
            "reserved for histogram",
        ),
        (MetricOp::CounterAdd, "plugin_sent", "", -1.0, "only go up"),
        (
            MetricOp::GaugeSet,
            "plugin_active",
            "",
            f64::NAN,
            "not finite",
        ),
        (
            MetricOp::HistogramObserve,
            "plugin_seconds",
            "",
            f64::INFINITY,
            "not finite",
        ),
    ];
    for (op, name, labels, value, why) in refused {
        let err = plugin_report(&registry, op, name, labels, value)
            .expect_err(&format!("{name} {labels:?} {value} accepted"));
        assert!(err.contains(why), "{name} {labels:?}: {err}");
    }
    let text = registry.render();
    assert!(
        text.contains("sygnal_notifications_received_total 3.0\n"),
        "{text}"
    );
    assert!(!text.contains("bad-"), "{text}");
    let (code, said) = promtool(&text);
    assert!(
        code == 0 || code == 3,
        "promtool refused the exposition ({code}): {said}\n{text}"
    );
    // promtool does catch what the checks prevent: the same text with a hostile series
    // written in by hand is refused.
    let broken = format!("{text}plugin_sent_total{{bad-label=\"x\"}} 1.0\n");
    assert_eq!(
        promtool(&broken).0,
        1,
        "promtool must refuse an invalid label name"
    );
}

#[test]
fn the_gateway_takes_back_a_name_a_plugin_reported_first() {
    let registry = Registry::default();
    // A name outside HOST_OWNED, registered by a plugin, then by the host.
    plugin_report(
        &registry,
        MetricOp::GaugeSet,
        "sygnal_later_metric",
        "",
        5.0,
    )
    .unwrap();
    let host = registry
        .series("sygnal_later_metric", "host", Kind::Counter, "")
        .expect("the host's registration wins");
    host.inc();
    let text = registry.render();
    assert!(
        text.contains("# TYPE sygnal_later_metric_total counter\nsygnal_later_metric_total 1.0\n"),
        "{text}"
    );
    assert!(!text.contains("gauge"), "{text}");
    assert!(plugin_report(
        &registry,
        MetricOp::GaugeSet,
        "sygnal_later_metric",
        "",
        1.0
    )
    .is_err());
}

#[test]
fn a_removed_app_loses_its_series_until_configured_again() {
    let registry = Registry::default();
    let gone = label("pushkin", "gone.app");
    let kept = label("pushkin", "gone.app.2");
    let with_code = format!("{gone},code=\"200\"");
    for labels in [&gone, &kept] {
        registry
            .series("sygnal_per_pushkin_type", "", Kind::Counter, labels)
            .unwrap()
            .inc();
    }
    plugin_report(
        &registry,
        MetricOp::CounterAdd,
        "plugin_sent",
        &with_code,
        1.0,
    )
    .unwrap();
    registry.retire_app("gone.app");
    let text = registry.render();
    assert!(!text.contains("pushkin=\"gone.app\""), "{text}");
    assert!(text.contains("pushkin=\"gone.app.2\""), "{text}");
    // A late report from the removed app's last request does not bring it back.
    assert_eq!(
        plugin_report(
            &registry,
            MetricOp::CounterAdd,
            "plugin_sent",
            &with_code,
            1.0
        ),
        Err(REMOVED_APP.to_owned())
    );
    assert!(!registry.render().contains("pushkin=\"gone.app\""));
    registry.restore_app("gone.app");
    plugin_report(
        &registry,
        MetricOp::CounterAdd,
        "plugin_sent",
        &with_code,
        1.0,
    )
    .unwrap();
    assert!(registry.render().contains("pushkin=\"gone.app\""));
}

#[test]
fn a_name_keeps_its_first_kind() {
    let registry = Registry::default();
    assert!(registry.series("m", "", Kind::Counter, "").is_some());
    assert!(registry.series("m", "", Kind::Gauge, "").is_none());
}

#[test]
fn repeated_reports_reach_the_same_series() {
    let registry = Registry::default();
    let labels = label("pushkin", "app");
    for value in [1.0, 2.0, 3.0] {
        plugin_report(
            &registry,
            MetricOp::CounterAdd,
            "plugin_pushes",
            &labels,
            value,
        )
        .unwrap();
        plugin_report(
            &registry,
            MetricOp::HistogramObserve,
            "plugin_time",
            &labels,
            0.02,
        )
        .unwrap();
    }
    // Another registry on the same thread has series of its own.
    let other = Registry::default();
    plugin_report(&other, MetricOp::CounterAdd, "plugin_pushes", &labels, 10.0).unwrap();
    let text = registry.render();
    assert!(
        text.contains("plugin_pushes_total{pushkin=\"app\"} 6.0\n"),
        "{text}"
    );
    assert!(
        text.contains("plugin_time_count{pushkin=\"app\"} 3.0\n"),
        "{text}"
    );
    assert!(other
        .render()
        .contains("plugin_pushes_total{pushkin=\"app\"} 10.0\n"));
}
