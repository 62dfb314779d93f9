//! The process lifecycle an operator drives: binary upgrade by socket handover (SIGUSR2)
//! under load, failed upgrades, systemd socket activation (LISTEN_FDS), sd_notify, and log
//! files that follow rotation.
//!
//! Every process a test starts is killed when the test ends, also on failure: the harness
//! kills its child, and processes started by an upgrade are tracked through the pid file.

use serde_json::json;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::load::{assert_none_failed, Load};
use sygnal_tests::process::{
    connect, read_head, read_until_closed, send, wait_for_pid_file, wait_gone, ProcessGuard,
};
use sygnal_tests::{free_port, sygnal_bin};

const APPS: &str = "com.example.a:\n  type: scripted\n";

fn notification(pushkey: &str) -> serde_json::Value {
    json!({"notification": {"event_id": "$e", "room_id": "!r",
        "devices": [{"app_id": "com.example.a", "pushkey": pushkey}]}})
}

/// `clients` clients notifying `pushkey` in a loop.
fn load(gw: &Gateway, clients: usize, pushkey: &str) -> Load {
    let body = notification(pushkey);
    Load::start(&gw.url(), clients, Duration::ZERO, move |_, _| body.clone())
}

/// An "installed" gateway: `dir/bin/sygnal`, a symlink to the built binary, replaced by the
/// tests the way a deploy replaces a binary (rename over it).
fn install(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let installed = bin.join("sygnal");
    std::os::unix::fs::symlink(sygnal_bin(), &installed).expect("symlink");
    installed
}

/// Replaces the installed binary by a script (atomically, as `mv` or `install` would).
fn replace_installed(installed: &Path, script: &str) {
    let staged = installed.with_extension("new");
    std::fs::write(&staged, script).expect("script");
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::rename(&staged, installed).expect("rename over the installed binary");
}

#[tokio::test]
async fn a_binary_upgrade_under_load_fails_no_request() {
    let install_dir = tempfile::tempdir().expect("dir");
    let installed = install(install_dir.path());
    let notify_dir = tempfile::tempdir().expect("dir");
    let (notify_socket, notify_path) = notify_socket(notify_dir.path());
    let mut gw = Gateway::builder(APPS)
        .program(&installed)
        .arg("--pid-file")
        .arg("{dir}/sygnal.pid")
        .env("NOTIFY_SOCKET", &notify_path)
        .start()
        .await;
    let old_pid = gw.pid();
    assert_eq!(receive(&notify_socket), "READY=1");
    let pid_file = gw.dir().join("sygnal.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file").trim(),
        old_pid.to_string()
    );

    // A new build is installed: a wrapper that records it ran, then runs the gateway.
    let marker = install_dir.path().join("new-binary-ran");
    replace_installed(
        &installed,
        &format!(
            "#!/bin/sh\necho $$ > '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            sygnal_bin().display()
        ),
    );

    // 16 clients, each on its own keep-alive connections; requests take ~20 ms.
    let load = load(&gw, 16, "delay:20:x");
    assert!(load.wait_for_more(100, Duration::from_secs(30)).await);

    // The documented procedure: SIGUSR2, the new process takes over, the old one drains.
    gw.signal("USR2");
    let new_pid = wait_for_pid_file(&pid_file, old_pid, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no new process took over:\n{}", gw.logs()));
    let new = ProcessGuard::new(new_pid);
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the old process did not exit:\n{}", gw.logs()));
    assert!(status.success(), "{status}\n{}", gw.logs());
    assert_eq!(
        std::fs::read_to_string(&marker)
            .expect("the installed binary ran")
            .trim(),
        new_pid.to_string()
    );
    // The new process announces itself; the old one confirms it.
    assert_eq!(
        receive(&notify_socket),
        format!("MAINPID={new_pid}\nREADY=1")
    );
    assert_eq!(receive(&notify_socket), format!("MAINPID={new_pid}"));

    // The new process serves the same port on its own.
    assert!(load.wait_for_more(100, Duration::from_secs(30)).await);
    let answers = load.stop().await;
    assert_none_failed(&answers, 16, 5);
    let logs = gw.logs();
    assert!(
        logs.contains("took over from the previous process"),
        "{logs}"
    );
    assert!(logs.contains("the new process serves"), "{logs}");

    // The old process did not tell systemd the service stops; the new one does, when it does.
    notify_socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert!(
        notify_socket.recv(&mut buf).is_err(),
        "unexpected notification"
    );
    notify_socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    new.signal(libc::SIGTERM);
    assert_eq!(receive(&notify_socket), "STOPPING=1");
    assert!(wait_gone(new_pid, Duration::from_secs(30)).await);
    assert!(!pid_file.exists(), "the last process removes its pid file");
}

#[tokio::test]
async fn a_binary_upgrade_applies_a_new_listening_port() {
    let mut gw = Gateway::builder(APPS)
        .arg("--pid-file")
        .arg("{dir}/sygnal.pid")
        .start()
        .await;
    let (old_pid, old_port, new_port) = (gw.pid(), gw.port, free_port());
    let config = std::fs::read_to_string(gw.config_path()).expect("config");
    let changed = config.replace(&format!("port: {old_port}"), &format!("port: {new_port}"));
    assert_ne!(config, changed);
    std::fs::write(gw.config_path(), changed).expect("config");
    gw.signal("USR2");
    let new_pid = wait_for_pid_file(
        &gw.dir().join("sygnal.pid"),
        old_pid,
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|| panic!("no new process took over:\n{}", gw.logs()));
    let _new = ProcessGuard::new(new_pid);
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("old process exited");
    assert!(status.success(), "{status}");
    assert!(
        health(new_port, Duration::from_secs(10)).await,
        "{}",
        gw.logs()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", old_port)).is_err(),
        "the old port is still open"
    );
    assert!(
        gw.logs().contains("no longer listening here"),
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn a_new_process_that_fails_leaves_the_old_one_serving() {
    let install_dir = tempfile::tempdir().expect("dir");
    let installed = install(install_dir.path());
    let gw = Gateway::builder(APPS)
        .program(&installed)
        .http_yaml("http:\n  bind_addresses: ['127.0.0.1']\n  port: {port}\n  upgrade_timeout: 2\n")
        .start()
        .await;
    let load = load(&gw, 4, "ok");
    assert!(load.wait_for_more(20, Duration::from_secs(30)).await);

    // 1. A config the new process refuses.
    let config = std::fs::read_to_string(gw.config_path()).expect("config");
    std::fs::write(gw.config_path(), "apps: [not, a, mapping\n").expect("broken config");
    gw.signal("USR2");
    assert!(
        gw.wait_for_log("binary upgrade failed", Duration::from_secs(30))
            .await,
        "{}",
        gw.logs()
    );
    assert!(
        gw.logs().contains("exited before it was ready"),
        "{}",
        gw.logs()
    );
    std::fs::write(gw.config_path(), config).expect("config restored");
    assert!(load.wait_for_more(20, Duration::from_secs(30)).await);

    // 2. A binary that never becomes ready: killed after http.upgrade_timeout.
    let hung_pid = install_dir.path().join("hung.pid");
    replace_installed(
        &installed,
        &format!(
            "#!/bin/sh\necho $$ > '{}'\nexec sleep 600\n",
            hung_pid.display()
        ),
    );
    gw.signal("USR2");
    let hung = ProcessGuard::new(
        wait_for_pid_file(&hung_pid, 0, Duration::from_secs(30))
            .await
            .expect("the hung binary started"),
    );
    assert!(
        gw.wait_for_log(
            "not ready within http.upgrade_timeout",
            Duration::from_secs(30)
        )
        .await,
        "{}",
        gw.logs()
    );
    assert!(wait_gone(hung.pid(), Duration::from_secs(10)).await);

    // 3. A binary that cannot be executed at all.
    replace_installed(&installed, "not a program\n");
    std::fs::set_permissions(
        &installed,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod");
    gw.signal("USR2");
    assert!(
        gw.wait_for_log("cannot start", Duration::from_secs(30))
            .await,
        "{}",
        gw.logs()
    );

    // The old process served throughout.
    assert!(load.wait_for_more(20, Duration::from_secs(30)).await);
    assert_none_failed(&load.stop().await, 4, 5);
    assert_eq!(gw.request("GET", "/health").await.0, 200);
}

/// Starts the gateway as systemd would with socket activation: `sockets` as descriptors
/// 3, 4, ... named by `LISTEN_FDNAMES`, `LISTEN_PID` set to the gateway's own pid.
fn start_activated(
    config: &Path,
    sockets: &[&std::net::TcpListener],
    names: &str,
    log: &Path,
) -> ProcessGuard {
    let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let mut command = activated(config, fds);
    command
        .env("LISTEN_FDNAMES", names)
        .stdout(out.try_clone().expect("log"))
        .stderr(out);
    let child = command.spawn().expect("gateway starts");
    let guard = ProcessGuard::new(child.id());
    // Reaped by a thread, so that its exit is seen (no zombie).
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    guard
}

/// The gateway on `config`, passed `fds` as 3, 4, ... with `LISTEN_FDS` and `LISTEN_PID` set
/// to its own pid.
fn activated(config: &Path, fds: Vec<i32>) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        // The shell's pid is the gateway's: exec keeps it.
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(sygnal_bin())
        .arg("--config")
        .arg(config)
        .env("LISTEN_FDS", fds.len().to_string())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    pass_fds(&mut command, fds);
    command
}

/// Makes `fds` descriptors 3, 4, ... of the command's process, as systemd passes them.
fn pass_fds(command: &mut Command, fds: Vec<i32>) {
    // SAFETY: only dup2 and close between fork and exec, on numbers collected before the
    // fork. The sources move above the target range first, so that none is overwritten.
    unsafe {
        command.pre_exec(move || {
            let base = 100;
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, base + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..fds.len() {
                if libc::dup2(base + i as i32, 3 + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(base + i as i32);
            }
            Ok(())
        });
    }
}

async fn health(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    while Instant::now() < deadline {
        let answer = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .timeout(Duration::from_millis(500))
            .send()
            .await;
        if matches!(answer, Ok(r) if r.status() == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn socket_activation_serves_on_the_inherited_sockets_which_outlive_the_process() {
    sygnal_tests::install_crypto();
    let dir = tempfile::tempdir().expect("dir");
    let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (api_port, metrics_port) = (
        api.local_addr().expect("addr").port(),
        metrics.local_addr().expect("addr").port(),
    );
    // The config names other ports: the inherited sockets win.
    let (config_port, config_metrics_port) = (free_port(), free_port());
    let config = dir.path().join("sygnal.yaml");
    std::fs::write(
        &config,
        format!(
            "log:\n  level: debug\nhttp:\n  bind_addresses: ['127.0.0.1']\n  port: {config_port}\nmetrics:\n  prometheus:\n    enabled: true\n    port: {config_metrics_port}\napps:\n  com.example.a:\n    type: scripted\n"
        ),
    )
    .expect("config");
    let log = dir.path().join("gateway.log");
    let first = start_activated(&config, &[&api, &metrics], "sygnal.socket:metrics", &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        health(api_port, Duration::from_secs(30)).await,
        "{}",
        logs()
    );
    let scrape = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics on the inherited socket");
    assert_eq!(scrape.status(), 200);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", config_port)).is_err(),
        "the config's port is not bound when a socket is inherited"
    );
    assert!(logs().contains("using inherited sockets"), "{}", logs());

    // Stop it: the socket stays open (this test holds it, as systemd would), so a request
    // sent while no gateway runs waits in the queue...
    first.signal(libc::SIGTERM);
    assert!(wait_gone(first.pid(), Duration::from_secs(30)).await);
    let mut waiting = connect(api_port).await;
    let body = serde_json::to_vec(&notification("ok")).expect("body");
    let request = format!(
        "POST /_matrix/push/v1/notify HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    assert!(send(&mut waiting, request.as_bytes()).await);
    assert!(send(&mut waiting, &body).await);
    // ...and the next gateway on the same socket answers it.
    let second = start_activated(&config, &[&api, &metrics], "sygnal.socket:metrics", &log);
    let head = read_head(&mut waiting, Duration::from_secs(30)).await;
    assert!(
        head.as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 200")),
        "{head:?}\n{}",
        logs()
    );
    let (rest, _) = read_until_closed(&mut waiting, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&rest).contains("\"rejected\":[]"));
    drop(second);
}

#[tokio::test]
async fn a_descriptor_that_is_not_a_listening_socket_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("sygnal.yaml");
    std::fs::write(&config, "apps:\n  com.example.a:\n    type: scripted\n").expect("config");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let output = activated(&config, vec![udp.as_raw_fd()])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("inherited descriptor 3 is not a listening TCP socket"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sd_notify_reports_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().expect("dir");
    let (socket, path) = notify_socket(dir.path());
    let mut gw = Gateway::builder(APPS)
        .env("NOTIFY_SOCKET", &path)
        .start()
        .await;
    assert_eq!(receive(&socket), "READY=1");
    gw.signal("HUP");
    let reloading = receive(&socket);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{reloading}"));
    assert!(usec > 0);
    assert_eq!(receive(&socket), "READY=1");
    gw.signal("TERM");
    assert_eq!(receive(&socket), "STOPPING=1");
    let status = gw.wait_exit(Duration::from_secs(30)).await.expect("exited");
    assert!(status.success());
}

/// A socket standing in for systemd's `NOTIFY_SOCKET`, in `dir`.
fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    (socket, path)
}

/// The next notification sent to `socket`.
fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 20 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_log_file_follows_rotation_and_sighup() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("sygnal.log");
    let gw = Gateway::builder_with_config(&format!(
        "log:\n  level: debug\n  file: '{}'\nhttp:\n  bind_addresses: ['127.0.0.1']\n  port: {{port}}\napps:\n  com.example.a:\n    type: scripted\n",
        log.display()
    ))
    .start()
    .await;
    let load = load(&gw, 2, "delay:20:x");
    assert!(load.wait_for_more(10, Duration::from_secs(30)).await);
    assert!(std::fs::read_to_string(&log)
        .expect("log file")
        .contains("scripted dispatch"));

    // logrotate's default: move the file away, then (here: without any signal) the next lines
    // go to a new file at the configured path within a second.
    std::fs::rename(&log, dir.path().join("sygnal.log.1")).expect("rotate");
    let moved_at = Instant::now();
    let followed =
        wait_for_file_containing(&log, "scripted dispatch", Duration::from_secs(10)).await;
    assert!(followed, "no new log file");
    assert!(
        moved_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        moved_at.elapsed()
    );

    // Deleted, then SIGHUP: reopened (the SIGHUP line is already in the new file).
    std::fs::remove_file(&log).expect("delete");
    gw.signal("HUP");
    assert!(
        wait_for_file_containing(&log, "SIGHUP received", Duration::from_secs(10)).await,
        "SIGHUP did not reopen the log file"
    );
    assert_none_failed(&load.stop().await, 2, 1);
    assert!(std::fs::read_to_string(dir.path().join("sygnal.log.1"))
        .expect("rotated file")
        .contains("scripted dispatch"));
}

async fn wait_for_file_containing(path: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|text| text.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Resident KiB and size in KiB of the executable mappings of the plugin snapshots.
fn snapshot_code_kib(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let (mut resident, mut size, mut in_snapshot_code) = (0, 0, false);
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first().is_some_and(|range| range.contains('-')) && fields.len() >= 5 {
            in_snapshot_code = fields[1] == "r-xp"
                && fields
                    .get(5)
                    .is_some_and(|path| path.contains("sygnal-plugins"));
        } else if in_snapshot_code {
            let kib = || fields[1].parse::<u64>().expect("kB");
            match fields[0] {
                "Size:" => size += kib(),
                "Rss:" => resident += kib(),
                _ => {}
            }
        }
    }
    (resident, size)
}

#[tokio::test]
async fn code_only_startup_ran_is_released_once_serving_and_after_a_reload() {
    let gw = Gateway::builder(APPS).start().await;
    assert!(
        gw.wait_for_log("code pages used to start released", Duration::from_secs(10))
            .await,
        "{}",
        gw.logs()
    );
    let (resident, size) = snapshot_code_kib(gw.pid());
    assert!(size > 0, "no plugin snapshot mapped");
    // Loading and constructing map all of this debug build's plugin code (measured: 1,660 of
    // 1,660 KiB without the release); idle, part of it is mapped again by the plugin's own
    // threads (up to half of it on a loaded machine), never all.
    assert!(
        resident * 10 < size * 9,
        "{resident} KiB of {size} KiB of plugin code still resident"
    );
    // What runs again maps its code back.
    let (status, _) = gw.notify(notification("k")).await;
    assert_eq!(status, 200);
    assert!(
        gw.wait_for_log("scripted dispatch", Duration::from_secs(5))
            .await
    );
    gw.signal("HUP");
    let released_twice = async {
        while gw
            .logs()
            .matches("code pages used to start released")
            .count()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), released_twice)
        .await
        .unwrap_or_else(|_| panic!("not released after the reload:\n{}", gw.logs()));
    let (status, _) = gw.notify(notification("k2")).await;
    assert_eq!(status, 200);
}
