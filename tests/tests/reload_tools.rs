//! The operator's tools around reloads: `sygnal check --against` (what a reload would do),
//! `sygnal plugins` (which library serves what, which file wins a kind), relative library paths,
//! and the private library snapshots (where they live, who cleans them up).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::{library, sygnal_bin};

/// Runs `sygnal <args>` from `cwd`, with snapshots under `cwd`.
fn sygnal(cwd: &Path, args: &[&str]) -> Output {
    Command::new(sygnal_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("SYGNAL_CONF")
        .env("XDG_RUNTIME_DIR", cwd)
        .output()
        .expect("sygnal runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn line_of<'a>(text: &'a str, starts: &str) -> &'a str {
    text.lines()
        .find(|line| line.trim_start().starts_with(starts))
        .unwrap_or_else(|| panic!("no line starting with {starts:?} in\n{text}"))
}

fn kind_file(kind: &str) -> String {
    format!(
        "{}sygnal_pushkin_{kind}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

#[test]
fn check_against_prints_what_a_reload_would_do() {
    let dir = tempfile::tempdir().unwrap();
    let running = dir.path().join("running.yaml");
    let new = dir.path().join("new.yaml");
    std::fs::write(
        &running,
        "apps:\n  a:\n    type: scripted\n  b:\n    type: scripted\n    tag: x\n  c:\n    type: scripted\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("lib")).unwrap();
    std::fs::copy(
        library("scripted-pushkin-next"),
        dir.path().join("lib/libnext.so"),
    )
    .unwrap();
    // A relative path: taken from the config file's directory, not the working directory.
    std::fs::write(
        &new,
        "http:\n  port: 6001\napps:\n  a:\n    type: scripted\n  b:\n    type: scripted\n    tag: y\n  d:\n    type: lib/libnext.so\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let (new_arg, running_arg) = (new.to_str().unwrap(), running.to_str().unwrap());
    let output = sygnal(
        elsewhere.path(),
        &["--config", new_arg, "check", "--against", running_arg],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(
        out.starts_with("config OK: 3 app(s); a reload from ")
            && out.contains("would add 1, change 1, remove 1, keep 1"),
        "{out}"
    );
    let added = line_of(&out, "added ");
    assert!(
        added.contains(" d ")
            && added.contains("scripted 0.2.0 sha256:")
            && added.contains(&dir.path().join("lib/libnext.so").display().to_string()),
        "{added}"
    );
    assert!(line_of(&out, "changed ").contains(" b "), "{out}");
    assert!(
        line_of(&out, "changed ").contains("(config) scripted 0.1.0"),
        "{out}"
    );
    assert_eq!(
        line_of(&out, "removed ").split_whitespace().nth(1),
        Some("c")
    );
    assert!(line_of(&out, "kept ").contains(" a "), "{out}");
    assert!(
        line_of(&out, "warning: http.port changed").contains("needs a new listener"),
        "{out}"
    );
    // It constructed what a reload would construct (b and d), not the kept app.
    let logs = stderr(&output);
    assert_eq!(
        logs.matches("scripted pushkin constructed").count(),
        2,
        "{logs}"
    );

    // Without --against, every app is new.
    let output = sygnal(elsewhere.path(), &["--config", new_arg, "check"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.starts_with("config OK: 3 app(s) constructed"), "{out}");
    assert_eq!(out.matches("  added ").count(), 3, "{out}");

    // A change the reload would refuse fails the check with the reason.
    std::fs::write(
        &new,
        "apps:\n  a:\n    type: scripted\n  b:\n    type: scripted\n    fail_construct: not today\n",
    )
    .unwrap();
    let output = sygnal(
        elsewhere.path(),
        &["--config", new_arg, "check", "--against", running_arg],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("apps.b.fail_construct: not today"),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
}

#[test]
fn plugins_lists_every_library_marks_the_winner_and_fails_on_incompatible_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&second).unwrap();
    // The executable's directory (searched first) already has scripted 0.1.0: the copies of
    // the 0.2.0 build in both extra directories are shadowed by it.
    for dir in [&first, &second] {
        std::fs::copy(
            library("scripted-pushkin-next"),
            dir.join(kind_file("scripted")),
        )
        .unwrap();
    }
    std::fs::copy(
        library("scripted-pushkin-next"),
        dir.path().join("libbypath.so"),
    )
    .unwrap();
    let config = dir.path().join("sygnal.yaml");
    std::fs::write(
        &config,
        "plugins:\n  dirs: [first, second]\napps:\n  a:\n    type: scripted\n  b:\n    type: libbypath.so\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config_arg = config.to_str().unwrap();
    let output = sygnal(elsewhere.path(), &["--config", config_arg, "plugins"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let row = |path: &Path| {
        let path = path.display().to_string();
        out.lines()
            .find(|l| l.contains(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} not listed:\n{out}"))
            .to_owned()
    };
    let exe_dir = sygnal_bin().parent().unwrap().canonicalize().unwrap();
    let builtin = row(&exe_dir.join(kind_file("scripted")));
    assert!(builtin.contains(" wins "), "{builtin}");
    let shadowed = row(&first.join(kind_file("scripted")));
    assert!(
        shadowed.contains(" shadowed ") && shadowed.contains("0.2.0") && shadowed.contains("(by "),
        "{shadowed}"
    );
    assert!(
        row(&second.join(kind_file("scripted"))).contains(" shadowed "),
        "{out}"
    );
    let others = ["apns", "gcm", "unifiedpush"].map(|kind| row(&exe_dir.join(kind_file(kind))));
    assert!(others.iter().all(|row| row.contains(" ok ")), "{others:?}");
    // Each app, with the library serving it: by kind, and by a path relative to the config.
    let app_a = line_of(&out, "a ");
    assert!(
        app_a.contains("scripted 0.1.0 sha256:")
            && app_a.contains(&exe_dir.join(kind_file("scripted")).display().to_string()),
        "{app_a}"
    );
    let app_b = line_of(&out, "b ");
    assert!(
        app_b.contains("scripted 0.2.0 sha256:")
            && app_b.contains(&dir.path().join("libbypath.so").display().to_string()),
        "{app_b}"
    );
    // The hash is the file's SHA-256.
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &std::fs::read(dir.path().join("libbypath.so")).unwrap(),
    );
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert!(app_b.contains(&format!("sha256:{hex}")), "{app_b}");

    // A library whose file name promises another kind is an error: `type: other` would fail.
    std::fs::copy(
        library("sygnal-pushkin-scripted"),
        second.join(kind_file("other")),
    )
    .unwrap();
    let output = sygnal(elsewhere.path(), &["--config", config_arg, "plugins"]);
    assert_eq!(output.status.code(), Some(1));
    let other = row_of(&stdout(&output), &second.join(kind_file("other")));
    assert!(
        other.contains(" error ") && other.contains("implements kind `scripted`"),
        "{other}"
    );
    std::fs::remove_file(second.join(kind_file("other"))).unwrap();

    // An incompatible library anywhere in the listing fails the command.
    std::fs::copy(
        library("incompatible-version-pushkin"),
        second.join(kind_file("broken")),
    )
    .unwrap();
    let output = sygnal(elsewhere.path(), &["--config", config_arg, "plugins"]);
    assert_eq!(output.status.code(), Some(1));
    let broken = row_of(&stdout(&output), &second.join(kind_file("broken")));
    assert!(
        broken.contains(" error ") && broken.contains("incompatible plugin ABI"),
        "{broken}"
    );
    assert!(
        stderr(&output).contains("plugin-api 2.0.0"),
        "{}",
        stderr(&output)
    );

    // So does an app whose library cannot be loaded, by path.
    std::fs::remove_file(second.join(kind_file("broken"))).unwrap();
    let incompatible = library("incompatible-layout-pushkin");
    std::fs::write(
        &config,
        format!("apps:\n  c:\n    type: {}\n", incompatible.display()),
    )
    .unwrap();
    let output = sygnal(elsewhere.path(), &["--config", config_arg, "plugins"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        line_of(&stdout(&output), "c ").contains("type layouts differ"),
        "{}",
        stdout(&output)
    );
}

fn row_of(out: &str, path: &Path) -> String {
    let path = path.display().to_string();
    out.lines()
        .find(|l| l.contains(&path))
        .unwrap_or_else(|| panic!("{path} not listed:\n{out}"))
        .to_owned()
}

#[tokio::test]
async fn snapshots_are_what_is_mapped_and_are_cleaned_up() {
    let runtime = tempfile::tempdir().unwrap();
    let uid = std::fs::metadata(runtime.path()).unwrap().uid();
    let base = runtime.path().join(format!("sygnal-plugins-{uid}"));
    std::fs::create_dir(&base).unwrap();
    // Pids above the kernel's maximum never run; this test's own pid is alive.
    let dead = base.join("4999999");
    let live = base.join(std::process::id().to_string());
    for dir in [&dead, &live] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("lib.so"), b"left over").unwrap();
    }
    let mut gw = Gateway::builder("com.example.app:\n  type: scripted\n")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .start()
        .await;
    assert!(!dead.exists(), "a dead process's snapshots are removed");
    assert!(live.join("lib.so").exists(), "a live process's are kept");

    let own = base.join(gw.pid().to_string());
    let installed = library("sygnal-pushkin-scripted");
    let digest = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&installed).unwrap());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let snapshot = own.join(format!("{hex}{}", std::env::consts::DLL_SUFFIX));
    assert!(snapshot.is_file(), "{}", gw.logs());
    let mode = std::fs::metadata(&own).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", gw.pid())).unwrap();
    assert!(maps.contains(&snapshot.display().to_string()), "{maps}");
    let installed_dir = installed.parent().unwrap().display().to_string();
    assert!(
        !maps
            .lines()
            .any(|l| l.contains(&installed_dir) && l.contains("sygnal_pushkin")),
        "an installed library is mapped:\n{maps}"
    );

    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    assert!(status.success(), "{status}");
    assert!(
        !own.exists(),
        "the own snapshot directory is removed at exit"
    );
    assert!(live.exists());
}

#[test]
fn a_shared_snapshot_directory_that_is_not_private_is_refused() {
    let runtime = tempfile::tempdir().unwrap();
    let uid = std::fs::metadata(runtime.path()).unwrap().uid();
    let base = runtime.path().join(format!("sygnal-plugins-{uid}"));
    // Someone made the directory a symlink to a place of their choosing.
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &base).unwrap();
    let config = runtime.path().join("sygnal.yaml");
    std::fs::write(&config, "apps:\n  a:\n    type: scripted\n").unwrap();
    let output = sygnal(
        runtime.path(),
        &["--config", config.to_str().unwrap(), "check"],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("is a symlink") && err.contains("plugins.snapshot_dir"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}
