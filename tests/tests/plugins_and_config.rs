//! Loading plugins and configs: kinds and paths, a third-party pushkin built outside the
//! workspace, ABI-incompatible libraries, config errors, `sygnal check` and `sygnal plugins`.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::{library, sygnal_bin};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Builds tests/external-pushkin the way its author would: its own `cargo build`, depending on
/// plugin-api alone, outside this workspace.
fn build_external_pushkin() -> PathBuf {
    let root = workspace_root();
    let crate_dir = root.join("tests/external-pushkin");
    // Same dependency versions as the workspace, so the build reuses what is downloaded.
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock")).expect("lock copied");
    let target = root.join("target/external-pushkin");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the external pushkin failed");
    target.join("debug").join(format!(
        "{}acme_pushkin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

#[tokio::test]
async fn a_pushkin_built_outside_the_workspace_loads_by_path() {
    let lib = build_external_pushkin();
    let apps = format!(
        "org.acme.app:\n  type: {}\n  deny: ['bad-key']\ncom.example.scripted:\n  type: scripted\n",
        lib.display()
    );
    let gw = Gateway::builder(&apps).start().await;
    let body = json!({"notification": {"event_id": "$e", "devices": [
        {"app_id": "org.acme.app", "pushkey": "bad-key"},
        {"app_id": "org.acme.app", "pushkey": "good-key"},
        {"app_id": "com.example.scripted", "pushkey": "reject:s"},
    ]}});
    let (status, answer) = gw.notify(body).await;
    assert_eq!(status, 200);
    let mut rejected: Vec<String> = serde_json::from_value(answer["rejected"].clone()).unwrap();
    rejected.sort();
    assert_eq!(rejected, vec!["bad-key", "reject:s"]);
    assert!(
        gw.wait_for_log("acme dispatch", std::time::Duration::from_secs(5))
            .await
    );
    let logs = gw.logs();
    assert!(logs.contains("kind=acme version=2.3.4"), "{logs}");
}

#[tokio::test]
async fn plugins_dirs_extend_the_search_path_for_kinds() {
    let lib = build_external_pushkin();
    let dir = tempfile::tempdir().unwrap();
    // Named by the convention, a library is found by its kind.
    std::fs::copy(&lib, dir.path().join(library_file_name("acme"))).unwrap();
    let apps = "org.acme.app:\n  type: acme\n  deny: ['bad-key']\n";
    let config = format!("plugins:\n  dirs: ['{}']", dir.path().display());
    let gw = Gateway::builder(apps).extra_yaml(&config).start().await;
    let body =
        json!({"notification": {"devices": [{"app_id": "org.acme.app", "pushkey": "bad-key"}]}});
    assert_eq!(
        gw.notify(body).await,
        (200, json!({"rejected": ["bad-key"]}))
    );
    // Without the directory, the kind is unknown.
    let (status, output) = Gateway::builder(apps).start_expecting_failure().await;
    assert!(!status.success());
    assert!(output.contains("no plugin for type `acme`"), "{output}");
    // A library whose file name promises another kind is refused.
    std::fs::copy(&lib, dir.path().join(library_file_name("other"))).unwrap();
    let (status, output) = Gateway::builder("org.acme.app:\n  type: other\n")
        .extra_yaml(&config)
        .start_expecting_failure()
        .await;
    assert!(!status.success());
    assert!(
        output.contains("implements kind `acme`, not `other`"),
        "{output}"
    );
}

fn library_file_name(kind: &str) -> String {
    format!(
        "{}sygnal_pushkin_{kind}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

#[tokio::test]
async fn incompatible_libraries_fail_startup_with_a_clear_reason() {
    for (fixture, expected) in [
        (
            "incompatible-version-pushkin",
            "built against plugin-api 2.0.0, this host implements 1.0.0",
        ),
        ("incompatible-layout-pushkin", "type layouts differ"),
    ] {
        let lib = library(fixture);
        let apps = format!("com.example.app:\n  type: {}\n", lib.display());
        let (status, output) = Gateway::builder(&apps).start_expecting_failure().await;
        assert!(!status.success());
        assert!(
            output.contains("incompatible plugin ABI"),
            "{fixture}: {output}"
        );
        assert!(output.contains(expected), "{fixture}: {output}");
        assert!(
            output.contains(&lib.display().to_string()),
            "{fixture}: {output}"
        );
        assert!(
            output.contains("apps.com.example.app.type"),
            "{fixture}: {output}"
        );
        // A condensed line, not abi_stable's full layout report.
        assert!(output.lines().count() < 20, "{fixture}: {output}");

        let check = Gateway::builder(&apps).run(&["check"]);
        assert!(!check.status.success());
        assert!(stderr(&check).contains(expected), "{}", stderr(&check));
    }
}

#[tokio::test]
async fn startup_errors_name_the_key() {
    let cases = [
        (
            "com.example.app:\n  type: nosuchkind\n",
            "apps.com.example.app.type: no plugin for type `nosuchkind`",
        ),
        (
            "com.example.app:\n  kind: scripted\n",
            "apps.com.example.app.type: missing",
        ),
        (
            "com.example.app:\n  type: scripted\n  inflight_request_limit: lots\n",
            "apps.com.example.app.inflight_request_limit",
        ),
        (
            "com.example.app:\n  type: scripted\n  fail_construct: broken on purpose\n",
            "apps.com.example.app.fail_construct: broken on purpose",
        ),
        (
            "com.example.app:\n  type: scripted\n  panic_construct: true\n",
            "pushkin constructor panicked",
        ),
        (
            "com.example.app:\n  type: mycompany.pushkins.Custom\n",
            "Python class path",
        ),
    ];
    for (apps, expected) in cases {
        let (status, output) = Gateway::builder(apps).start_expecting_failure().await;
        assert_eq!(status.code(), Some(1), "{apps}: {output}");
        assert!(
            output.contains(expected),
            "{apps}: expected {expected:?} in {output}"
        );
    }
    let (status, output) =
        Gateway::builder_with_config("http:\n  port: high\napps:\n  a:\n    type: scripted\n")
            .start_expecting_failure()
            .await;
    assert_eq!(status.code(), Some(1));
    assert!(output.contains("http.port:"), "{output}");
    let (status, output) = Gateway::builder_with_config("http:\n  port: {port}\n")
        .start_expecting_failure()
        .await;
    assert_eq!(status.code(), Some(1));
    assert!(output.contains("apps: no apps configured"), "{output}");
}

#[tokio::test]
async fn sygnal_class_paths_and_unknown_keys_are_accepted() {
    let apps =
        "com.example.app:\n  type: sygnal.scriptedpushkin.ScriptedPushkin\n  mystery_key: 1\n";
    let gw = Gateway::builder(apps)
        .extra_yaml("surprise_section: {}")
        .start()
        .await;
    let body = json!({"notification": {"devices": [{"app_id": "com.example.app", "pushkey": "reject:x"}]}});
    assert_eq!(
        gw.notify(body).await,
        (200, json!({"rejected": ["reject:x"]}))
    );
    let logs = gw.logs();
    assert!(
        logs.contains("unknown config key `surprise_section` ignored"),
        "{logs}"
    );
    assert!(
        logs.contains("unrecognised configuration key") && logs.contains("mystery_key"),
        "{logs}"
    );
}

#[test]
fn check_validates_and_constructs_every_app() {
    let ok = Gateway::builder("a:\n  type: scripted\nb.*:\n  type: unifiedpush\n").run(&["check"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("2 app(s)"));
    let failing =
        Gateway::builder("a:\n  type: scripted\nb:\n  type: scripted\n  fail_construct: no\n")
            .run(&["check"]);
    assert_eq!(failing.status.code(), Some(1));
    assert!(
        stderr(&failing).contains("apps.b.fail_construct: no"),
        "{}",
        stderr(&failing)
    );
}

#[test]
fn config_path_comes_from_flag_then_env_then_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "apps:\n  a:\n    type: scripted\n").unwrap();
    let bad = dir.path().join("sygnal.yaml");
    std::fs::write(&bad, "apps: {}\n").unwrap();
    let run = |args: &[&str], env: Option<&Path>| {
        let mut command = Command::new(sygnal_bin());
        command
            .args(args)
            .current_dir(dir.path())
            .env_remove("SYGNAL_CONF");
        if let Some(env) = env {
            command.env("SYGNAL_CONF", env);
        }
        command.output().unwrap()
    };
    // ./sygnal.yaml (no apps) is the default.
    let default = run(&["check"], None);
    assert!(!default.status.success());
    assert!(
        stderr(&default).contains("sygnal.yaml"),
        "{}",
        stderr(&default)
    );
    assert!(run(&["check"], Some(&good)).status.success());
    let flag = good.to_string_lossy().into_owned();
    assert!(run(&["--config", &flag, "check"], Some(&bad))
        .status
        .success());
    let missing = run(&["--config", "/nonexistent.yaml", "check"], None);
    assert!(stderr(&missing).contains("/nonexistent.yaml"));
}

#[test]
fn plugins_lists_the_libraries_found() {
    let output = Command::new(sygnal_bin())
        .arg("plugins")
        .env_remove("SYGNAL_CONF")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(output.status.success());
    let listing = String::from_utf8_lossy(&output.stdout);
    for kind in ["scripted", "unifiedpush"] {
        let line = listing
            .lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_else(|| panic!("{kind} missing from\n{listing}"));
        assert!(line.contains("1.0.0"), "ABI version missing: {line}");
        assert!(
            line.contains(&format!("sygnal_pushkin_{kind}")),
            "path missing: {line}"
        );
    }
}
