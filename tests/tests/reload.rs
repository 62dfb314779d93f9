//! Live operations on a running gateway: overwriting an installed library in place, reloading
//! the config on SIGHUP under load (apps added, libraries swapped, unchanged instances kept),
//! failed reloads, the bound on loaded library builds, and closing replaced pushkins.
//!
//! Run `cargo build --workspace` first: the swaps use the scripted fixture's two builds
//! (`sygnal-pushkin-scripted`, version 0.1.0, and `scripted-pushkin-next`, version 0.2.0).

#[allow(dead_code)]
#[path = "gcm/fake_fcm.rs"]
mod fake_fcm;
#[path = "reload/support.rs"]
mod support;

use fake_fcm::{Fake, CLIENT_EMAIL};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{metric, notification, reload, set_apps, CLIENTS, PAUSE};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::library;
use sygnal_tests::load::{assert_none_failed, Load};
use sygnal_tests::serve::serve_http;

const APP: &str = "com.example.app";

/// Which scripted build answered: the `build:<version>` key it rejected.
fn build_of(rejected: &[String]) -> Option<&str> {
    rejected.iter().find_map(|key| key.strip_prefix("build:"))
}

fn both_builds(app: &str) -> [(&str, &'static str); 2] {
    [(app, "build:0.1.0"), (app, "build:0.2.0")]
}

#[tokio::test]
async fn overwriting_a_loaded_library_in_place_fails_no_request() {
    let plugins = tempfile::tempdir().unwrap();
    let installed = plugins.path().join("libsygnal_pushkin_scripted.so");
    std::fs::copy(library("sygnal-pushkin-scripted"), &installed).unwrap();
    let gw = Gateway::builder(&format!("{APP}:\n  type: {}\n", installed.display()))
        .start()
        .await;
    let load = Load::start(&gw.url(), CLIENTS, PAUSE, |_, _| {
        notification(&both_builds(APP))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // What `make install` or Ansible's copy module do: rewrite the file in place.
    for build in ["sygnal-pushkin-scripted", "scripted-pushkin-next"] {
        let status = std::process::Command::new("cp")
            .arg(library(build))
            .arg(&installed)
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(gw.request("GET", "/health").await.0, 200, "{}", gw.logs());
    }
    let hup = Instant::now();
    let line = reload(&gw).await.expect("reload");
    let reloaded = Instant::now();
    assert!(
        line.contains(&format!("changed [{APP} (library)]")),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = load.stop().await;

    assert_none_failed(&answers, CLIENTS, 3);
    for answer in &answers {
        let build = build_of(&answer.rejected);
        if answer.sent > reloaded {
            assert_eq!(build, Some("0.2.0"), "{answer:?}");
        } else if answer.answered < hup {
            // The copy over the installed file did not reach the library in use.
            assert_eq!(build, Some("0.1.0"), "{answer:?}");
        }
    }
    assert!(answers.iter().any(|a| a.sent > reloaded));
}

/// A fake FCM v1 with its token endpoint, and a service account pointing at it.
struct Fcm {
    fake: Arc<Fake>,
    server: sygnal_tests::serve::TestServer,
    account: tempfile::NamedTempFile,
}

impl Fcm {
    async fn start() -> Self {
        let fake = Fake::new();
        let server = serve_http(fake_fcm::router(Arc::clone(&fake))).await;
        let token_uri = format!("{}/token", server.url());
        *fake.token_uri.lock().unwrap() = token_uri.clone();
        let account = tempfile::NamedTempFile::new().unwrap();
        let key = json!({
            "type": "service_account", "project_id": "test-project",
            "private_key_id": "test-key-id", "private_key": fake_fcm::TEST_KEY_PEM,
            "client_email": CLIENT_EMAIL, "token_uri": token_uri,
        });
        std::fs::write(account.path(), key.to_string()).unwrap();
        Fcm {
            fake,
            server,
            account,
        }
    }

    fn app(&self, app_id: &str) -> String {
        format!(
            "{app_id}:\n  type: gcm\n  api_version: v1\n  project_id: test-project\n  service_account_file: {}\n  endpoint: {}\n",
            self.account.path().display(),
            self.server.url()
        )
    }
}

#[tokio::test]
async fn reload_under_load_adds_an_app_swaps_a_library_and_keeps_unchanged_instances() {
    const ANDROID: &str = "com.example.android";
    const ADDED: &str = "com.example.added";
    let fcm = Fcm::start().await;
    let before = format!("{}{APP}:\n  type: scripted\n", fcm.app(ANDROID));
    let gw = Gateway::builder(&before).start().await;
    // Every request carries a device of the scripted app (both build probes), of the FCM app,
    // and of an app not configured yet (rejected as unroutable until it is).
    let load = Load::start(&gw.url(), CLIENTS, PAUSE, |_, _| {
        let [a, b] = both_builds(APP);
        notification(&[a, b, (ANDROID, "fcm-token"), (ADDED, "served-by-added")])
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while fcm.fake.fcm_requests().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fcm.fake.token_fetches(), 1);

    // First reload: one app more.
    let added = format!(
        "{}{APP}:\n  type: scripted\n{ADDED}:\n  type: scripted\n",
        fcm.app(ANDROID)
    );
    set_apps(&gw, &added);
    let first_hup = Instant::now();
    let line = reload(&gw).await.expect("reload");
    assert!(
        line.contains(&format!(
            "added [{ADDED}], changed [], removed [], kept [{ANDROID}, {APP}]"
        )),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Second reload: the scripted app moves to another build of its library.
    let next = library("scripted-pushkin-next");
    let swapped = format!(
        "{}{APP}:\n  type: {}\n{ADDED}:\n  type: scripted\n",
        fcm.app(ANDROID),
        next.display()
    );
    set_apps(&gw, &swapped);
    let second_hup = Instant::now();
    let line = reload(&gw).await.expect("reload");
    let reloaded = Instant::now();
    assert!(
        line.contains(&format!(
            "added [], changed [{APP} (config, library)], removed [], kept [{ADDED}, {ANDROID}]"
        )),
        "{line}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = load.stop().await;

    assert_none_failed(&answers, CLIENTS, 3);
    let first_served = answers
        .iter()
        .filter(|a| !a.rejected.iter().any(|k| k == "served-by-added"))
        .map(|a| a.answered)
        .min()
        .expect("the added app served");
    assert!(first_served > first_hup);
    let delay = first_served - first_hup;
    assert!(
        delay < Duration::from_secs(1),
        "the added app served after {delay:?}"
    );
    for answer in &answers {
        let build = build_of(&answer.rejected);
        if answer.sent > reloaded {
            assert_eq!(build, Some("0.2.0"), "{answer:?}");
        } else if answer.answered < second_hup {
            assert_eq!(build, Some("0.1.0"), "{answer:?}");
        }
    }
    // The FCM app kept its instance, so its OAuth token: no second fetch.
    assert_eq!(fcm.fake.token_fetches(), 1);
    let after_reload = fcm
        .fake
        .fcm_requests()
        .iter()
        .filter(|r| r.at > reloaded)
        .count();
    assert!(after_reload > 0, "FCM pushes continued after the reload");
    assert!(fcm.fake.token_errors.lock().unwrap().is_empty());

    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "sygnal_config_last_reload_successful"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "sygnal_config_reloads_total{result=\"success\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&metrics, "sygnal_config_reloads_total{result=\"failure\"}"),
        Some(0.0)
    );
    let logs = gw.logs();
    let ready = logs
        .lines()
        .find(|l| l.contains("app ready") && l.contains(ADDED))
        .unwrap_or_else(|| panic!("no app ready line for {ADDED}:\n{logs}"));
    assert!(
        ready.contains("sha256=") && ready.contains("version=0.1.0"),
        "{ready}"
    );
}

#[tokio::test]
async fn failed_reloads_change_nothing_and_say_why() {
    let gw = Gateway::builder(&format!("{APP}:\n  type: scripted\n  tag: one\n"))
        .start()
        .await;
    let serving_as_before = || async {
        let (status, answer) = gw
            .notify(notification(&[
                (APP, "tag:one"),
                (APP, "tag:two"),
                ("com.example.new", "x"),
            ]))
            .await;
        assert_eq!(status, 200);
        // The old instance (tag one) answers; the new app is not configured.
        let mut rejected: Vec<String> = serde_json::from_value(answer["rejected"].clone()).unwrap();
        rejected.sort();
        assert_eq!(rejected, ["tag:one", "x"]);
    };
    serving_as_before().await;
    let config = gw.config_path();
    let good = std::fs::read_to_string(&config).unwrap();
    let new_app_fails = format!(
        "{APP}:\n  type: scripted\n  tag: two\ncom.example.new:\n  type: scripted\n  fail_construct: broken on purpose\n"
    );
    // (whole file or apps section, what the error must name)
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            good.replace("apps:\n", "apps: [unclosed\n"),
            vec![config.display().to_string(), "not valid YAML".into()],
        ),
        (
            format!(
                "{APP}:\n  type: {}\n",
                library("incompatible-version-pushkin").display()
            ),
            vec![
                format!("apps.{APP}.type"),
                "incompatible plugin ABI".into(),
                "plugin-api 2.0.0".into(),
            ],
        ),
        (
            format!(
                "{APP}:\n  type: {}\n",
                library("incompatible-layout-pushkin").display()
            ),
            vec![format!("apps.{APP}.type"), "type layouts differ".into()],
        ),
        (
            format!("{APP}:\n  type: /nonexistent/libsygnal_pushkin_gone.so\n"),
            vec![
                format!("apps.{APP}.type"),
                "/nonexistent/libsygnal_pushkin_gone.so".into(),
            ],
        ),
        (
            new_app_fails.clone(),
            vec!["apps.com.example.new.fail_construct: broken on purpose".into()],
        ),
    ];
    for (round, (text, expected)) in cases.iter().enumerate() {
        if text.contains("\napps:") {
            support::write_atomically(&config, text);
        } else {
            set_apps(&gw, text);
        }
        let error = reload(&gw).await.expect_err("the reload must fail");
        for needle in expected {
            assert!(error.contains(needle.as_str()), "{needle:?} not in {error}");
        }
        assert!(error.contains("ERROR"), "logged at error level: {error}");
        serving_as_before().await;
        let metrics = gw.metrics().await;
        assert_eq!(
            metric(&metrics, "sygnal_config_last_reload_successful"),
            Some(0.0)
        );
        assert_eq!(
            metric(&metrics, "sygnal_config_reloads_total{result=\"failure\"}"),
            Some(round as f64 + 1.0)
        );
    }
    // The failed build constructed the changed app before the new one failed: that instance
    // was closed, and never served.
    let logs = gw.logs();
    assert!(logs.contains("tag=two"), "{logs}");
    assert_eq!(logs.matches("scripted pushkin closed").count(), 1, "{logs}");

    // An unreadable file fails too.
    std::fs::remove_file(&config).unwrap();
    let error = reload(&gw).await.expect_err("no config file");
    assert!(error.contains("cannot read config file"), "{error}");

    std::fs::write(&config, &good).unwrap();
    set_apps(&gw, &format!("{APP}:\n  type: scripted\n  tag: two\n"));
    let line = reload(&gw).await.expect("a good config reloads");
    assert!(
        line.contains(&format!("changed [{APP} (config)]")),
        "{line}"
    );
    let (status, answer) = gw.notify(notification(&[(APP, "tag:two")])).await;
    assert_eq!((status, answer), (200, json!({"rejected": ["tag:two"]})));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "sygnal_config_last_reload_successful"),
        Some(1.0)
    );
    let stamp = metric(
        &metrics,
        "sygnal_config_last_reload_success_timestamp_seconds",
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - stamp).abs() < 60.0, "{stamp} vs {now}");
}

#[tokio::test]
async fn loaded_library_builds_are_bounded_and_superseded_ones_stay_usable() {
    let gw = Gateway::builder(&format!("{APP}:\n  type: scripted\n"))
        .extra_yaml("plugins:\n  max_loaded_libraries: 2")
        .start()
        .await;
    let serving = |build: &'static str| {
        let gw = &gw;
        async move {
            let (status, answer) = gw.notify(notification(&both_builds(APP))).await;
            assert_eq!(status, 200, "{}", gw.logs());
            assert_eq!(answer["rejected"], json!([format!("build:{build}")]));
        }
    };
    serving("0.1.0").await;
    let next = library("scripted-pushkin-next");
    set_apps(&gw, &format!("{APP}:\n  type: {}\n", next.display()));
    reload(&gw).await.expect("second build");
    serving("0.2.0").await;

    // Back to the first build: already loaded, so nothing new is mapped, and its runtime
    // (idle since the swap) serves the new instance.
    let loads = gw.logs().matches("plugin library loaded").count();
    set_apps(&gw, &format!("{APP}:\n  type: scripted\n"));
    reload(&gw).await.expect("rollback");
    serving("0.1.0").await;
    assert_eq!(gw.logs().matches("plugin library loaded").count(), loads);

    // A third build would exceed the bound: refused, with what to do.
    let dir = tempfile::tempdir().unwrap();
    let third = dir.path().join("libthird.so");
    let mut bytes = std::fs::read(library("sygnal-pushkin-scripted")).unwrap();
    bytes.extend_from_slice(b"\0another build");
    std::fs::write(&third, bytes).unwrap();
    set_apps(&gw, &format!("{APP}:\n  type: {}\n", third.display()));
    let error = reload(&gw).await.expect_err("over the bound");
    assert!(
        error.contains("plugins.max_loaded_libraries = 2") && error.contains("restart"),
        "{error}"
    );
    serving("0.1.0").await;

    // Raising the bound in the same reload lets it through.
    let config = gw.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    support::write_atomically(
        &config,
        &text.replace("max_loaded_libraries: 2", "max_loaded_libraries: 3"),
    );
    reload(&gw).await.expect("bound raised");
    serving("0.1.0").await;
    assert_eq!(
        gw.logs().matches("plugin library loaded").count(),
        loads + 1
    );
}

#[tokio::test]
async fn replaced_pushkins_close_after_their_last_request_and_removed_apps_leave_metrics() {
    const OTHER: &str = "com.example.other";
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "first secret").unwrap();
    let apps = format!(
        "{APP}:\n  type: scripted\n  tag: one\n  secret_file: {}\n{OTHER}:\n  type: scripted\n",
        secret.path().display()
    );
    let gw = Gateway::builder(&apps).start().await;
    let (status, _) = gw.notify(notification(&[(APP, "x"), (OTHER, "y")])).await;
    assert_eq!(status, 200);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!("pushkin=\"{OTHER}\"")),
        "{metrics}"
    );

    // Nothing changed: every instance is kept, nothing is constructed.
    let constructed = gw.logs().matches("scripted pushkin constructed").count();
    let line = reload(&gw).await.expect("reload");
    assert!(
        line.contains(&format!(
            "added [], changed [], removed [], kept [{APP}, {OTHER}]"
        )),
        "{line}"
    );
    assert_eq!(
        gw.logs().matches("scripted pushkin constructed").count(),
        constructed
    );

    // A file the section names changed (a rotated key): that app is rebuilt.
    std::fs::write(secret.path(), "rotated secret").unwrap();
    let line = reload(&gw).await.expect("reload");
    assert!(line.contains(&format!("changed [{APP} (files)]")), "{line}");

    // A request in flight on the app keeps its instance open through a reload that replaces it.
    let closed = |gw: &Gateway, app: &str| {
        gw.logs()
            .lines()
            .filter(|l| l.contains("scripted pushkin closed") && l.contains(app))
            .count()
    };
    let closed_before = closed(&gw, APP);
    let url = gw.url();
    let slow = tokio::spawn(async move {
        let body = notification(&[(APP, "delay:2000:slow"), (APP, "tag:one")]);
        let response = reqwest::Client::new()
            .post(format!("{url}/_matrix/push/v1/notify"))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_apps(
        &gw,
        &format!(
            "{APP}:\n  type: scripted\n  tag: two\n  secret_file: {}\n",
            secret.path().display()
        ),
    );
    let line = reload(&gw).await.expect("reload");
    assert!(
        line.contains(&format!("changed [{APP} (config)], removed [{OTHER}]")),
        "{line}"
    );
    assert!(
        gw.wait_for_log("scripted pushkin closed", Duration::from_secs(5))
            .await
    );
    assert_eq!(closed(&gw, OTHER), 1, "the idle removed app closes at once");
    assert_eq!(closed(&gw, APP), closed_before, "still serving a request");
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body, r#"{"rejected":["tag:one"]}"#,
        "served by the old instance"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed(&gw, APP) == closed_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed(&gw, APP), closed_before + 1, "{}", gw.logs());

    // The removed app's series are gone, as after a restart; the kept app's stay.
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains(&format!("pushkin=\"{OTHER}\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "sygnal_per_pushkin_type_total{{pushkin=\"{APP}\"}}"
        )),
        "{metrics}"
    );
    let (status, answer) = gw.notify(notification(&[(APP, "tag:two")])).await;
    assert_eq!((status, answer), (200, json!({"rejected": ["tag:two"]})));
}

#[tokio::test]
async fn settings_read_at_startup_keep_their_value_with_a_warning() {
    let gw = Gateway::builder(&format!("{APP}:\n  type: scripted\n"))
        .start()
        .await;
    let config = gw.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    let other_port = sygnal_tests::free_port();
    let edited = text
        .replace(
            &format!("port: {}\n", gw.port),
            &format!("port: {other_port}\n"),
        )
        .replace("level: debug", "level: warn");
    assert_ne!(edited, text);
    support::write_atomically(
        &config,
        &format!("{edited}  {APP}.two:\n    type: scripted\n"),
    );
    let line = reload(&gw).await.expect("the rest is applied");
    assert!(line.contains(&format!("added [{APP}.two]")), "{line}");
    let logs = gw.logs();
    for (key, why) in [
        ("http.port", "it needs a new listener"),
        ("log.level", "it is read at startup only"),
    ] {
        let warning = logs
            .lines()
            .find(|l| l.contains("WARN") && l.contains(&format!("{key} changed")))
            .unwrap_or_else(|| panic!("no warning for {key}:\n{logs}"));
        assert!(
            warning.contains(why) && warning.contains("restarted"),
            "{warning}"
        );
    }
    // Still on the old port, at the old level, with the new app.
    let (status, answer) = gw
        .notify(notification(&[(&format!("{APP}.two"), "reject:x")]))
        .await;
    assert_eq!((status, answer), (200, json!({"rejected": ["reject:x"]})));
    assert!(std::net::TcpStream::connect(("127.0.0.1", other_port)).is_err());
    let logs = gw.logs();
    let after_reload = &logs[logs.find("config reloaded").unwrap()..];
    assert!(
        after_reload.contains("DEBUG") && after_reload.contains("notification dispatched"),
        "debug logging goes on:\n{after_reload}"
    );
}
