//! The HTTP server's limits against slow, stalled and greedy clients, over raw TCP: header,
//! body and idle timeouts, the connection limit, early 413 for `Expect: 100-continue`, h2c,
//! and a graceful stop that is not held by a stalled upload (and a second signal that does
//! not wait at all).

use serde_json::json;
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::process::{connect, read_head, read_until_closed, send};

const APPS: &str = "com.example.a:\n  type: scripted\n";

fn http(extra: &str) -> String {
    format!("http:\n  bind_addresses: ['127.0.0.1']\n  port: {{port}}\n{extra}")
}

async fn gateway(limits: &str) -> Gateway {
    Gateway::builder(APPS)
        .http_yaml(&http(limits))
        .start()
        .await
}

fn notify_body(pushkey: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"notification": {"event_id": "$e", "room_id": "!r",
        "devices": [{"app_id": "com.example.a", "pushkey": pushkey}]}}))
    .expect("body")
}

/// Sends a notification the pushkin takes a while over, and waits until it is being handled:
/// the answer's status, or the error if none came.
async fn request_in_flight(
    gw: &Gateway,
    pushkey: &str,
) -> tokio::task::JoinHandle<Result<u16, reqwest::Error>> {
    let (url, body) = (gw.url(), notify_body(pushkey));
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/_matrix/push/v1/notify"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(
        gw.wait_for_log("scripted dispatch", Duration::from_secs(10))
            .await
    );
    in_flight
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: gateway\r\n\r\n";

#[tokio::test]
async fn slow_request_headers_are_cut_at_header_timeout() {
    let gw = gateway("  header_timeout: 1\n  idle_timeout: 60\n").await;

    // A connection that never sends anything.
    let mut silent = connect(gw.port).await;
    // Slowloris: a header line every 300 ms, never finishing the head.
    let mut slow = connect(gw.port).await;
    let started = Instant::now();
    assert!(send(&mut slow, b"POST /_matrix/push/v1/notify HTTP/1.1\r\n").await);
    let mut closed_at = None;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !send(&mut slow, format!("x-drip-{i}: 1\r\n").as_bytes()).await {
            closed_at = Some(started.elapsed());
            break;
        }
        let (_, closed) = read_until_closed(&mut slow, Duration::from_millis(1)).await;
        if closed {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("slowloris connection still open after 12 s");
    assert!(
        closed_at >= Duration::from_millis(900),
        "closed too early: {closed_at:?}"
    );
    let (received, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(closed, "silent connection still open");
    assert!(received.is_empty());

    // A later request's head is timed from its first byte, not from the previous response.
    let mut keep_alive = connect(gw.port).await;
    assert!(send(&mut keep_alive, HEALTH).await);
    let head = read_head(&mut keep_alive, Duration::from_secs(5)).await;
    assert!(head.expect("answered").starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let partial_at = Instant::now();
    assert!(
        send(&mut keep_alive, b"GET /health HTTP/1.1\r\n").await,
        "an idle keep-alive connection must outlive header_timeout"
    );
    let (_, closed) = read_until_closed(&mut keep_alive, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(partial_at.elapsed() >= Duration::from_millis(900));

    // Prompt clients are served meanwhile, and the timeouts are counted.
    assert_eq!(gw.request("GET", "/health").await.0, 200);
    let count = metric(
        &gw,
        "sygnal_http_timeouts_total{listener=\"api\",phase=\"header\"}",
    )
    .await;
    assert_eq!(count, 3.0);
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_closed_at_body_timeout() {
    let gw = gateway("  body_timeout: 1\n").await;
    let mut stalled = connect(gw.port).await;
    let started = Instant::now();
    assert!(
        send(
            &mut stalled,
            b"POST /_matrix/push/v1/notify HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 500000\r\n\r\n{\"notific"
        )
        .await
    );
    let (received, closed) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    assert!(closed, "stalled upload still open after 10 s");
    assert!(
        elapsed >= Duration::from_millis(900),
        "cut too early: {elapsed:?}"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request body too slow"), "{text}");

    // A body that arrives in pieces within the limit is fine.
    let body = notify_body("ok");
    let mut chunked = connect(gw.port).await;
    let head = format!(
        "POST /_matrix/push/v1/notify HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    assert!(send(&mut chunked, head.as_bytes()).await);
    for piece in body.chunks(body.len() / 3 + 1) {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(send(&mut chunked, piece).await);
    }
    let (received, _) = read_until_closed(&mut chunked, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    let body_timeouts = metric(
        &gw,
        "sygnal_http_timeouts_total{listener=\"api\",phase=\"body\"}",
    )
    .await;
    assert_eq!(body_timeouts, 1.0);
    let answered_408 = metric(&gw, "sygnal_pushgateway_status_codes_total{code=\"408\"}").await;
    assert_eq!(answered_408, 1.0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_at_idle_timeout() {
    let gw = gateway("  idle_timeout: 1\n  header_timeout: 30\n").await;
    let mut conn = connect(gw.port).await;
    assert!(send(&mut conn, HEALTH).await);
    let head = read_head(&mut conn, Duration::from_secs(5)).await;
    assert!(head.expect("answered").starts_with("HTTP/1.1 200"));
    let idle_from = Instant::now();
    // Still usable before the timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(send(&mut conn, HEALTH).await);
    let head = read_head(&mut conn, Duration::from_secs(5)).await;
    assert!(head.expect("answered again").starts_with("HTTP/1.1 200"));
    let idle_from_again = Instant::now();
    let (_, closed) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(closed, "idle connection still open after 10 s");
    assert!(idle_from_again.elapsed() >= Duration::from_millis(900));
    assert!(idle_from.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_health_answers_below_it() {
    let gw = gateway("  max_connections: 4\n").await;
    // Fill the limit (the harness's own client may hold one of the four) with keep-alive
    // connections that each completed a request; the next ones are answered 503 and closed,
    // before they send anything.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..7 {
        let mut conn = connect(gw.port).await;
        let (received, closed) = read_until_closed(&mut conn, Duration::from_millis(300)).await;
        if closed {
            let text = String::from_utf8_lossy(&received);
            assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
            refused += 1;
            continue;
        }
        assert!(received.is_empty());
        assert_eq!(
            refused, 0,
            "admitted after a refusal while the limit is full"
        );
        assert!(send(&mut conn, HEALTH).await);
        let head = read_head(&mut conn, Duration::from_secs(5)).await;
        assert!(head.expect("admitted").starts_with("HTTP/1.1 200"));
        held.push(conn);
    }
    assert!((3..=4).contains(&held.len()), "{} admitted", held.len());
    assert_eq!(held.len() + refused, 7);

    // Once below the limit, a fresh connection is served.
    held.truncate(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fresh = connect(gw.port).await;
        let _ = send(&mut fresh, HEALTH).await;
        if let Some(head) = read_head(&mut fresh, Duration::from_secs(2)).await {
            if head.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/health not served below the limit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Logged at warning level once (rate-limited), counted every time.
    let logs = gw.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("http.max_connections reached"))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    // (The retries above may have been refused too, while closed connections were noticed.)
    let counted = metric(
        &gw,
        "sygnal_http_refused_connections_total{listener=\"api\"}",
    )
    .await;
    assert!(counted >= refused as f64, "{counted} < {refused}");
}

/// The value of one series.
async fn metric(gw: &Gateway, series: &str) -> f64 {
    let metrics = gw.metrics().await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test]
async fn expect_continue_with_an_announced_body_over_the_limit_gets_an_early_413() {
    let gw = gateway("").await;
    let mut conn = connect(gw.port).await;
    assert!(
        send(
            &mut conn,
            b"POST /_matrix/push/v1/notify HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 600000\r\nexpect: 100-continue\r\n\r\n"
        )
        .await
    );
    // Without sending a byte of the body: the answer is 413, not "100 Continue".
    let head = read_head(&mut conn, Duration::from_secs(5))
        .await
        .expect("answered without the body");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Within the limit, the client is invited to send the body and it is handled.
    let body = notify_body("ok");
    let mut conn = connect(gw.port).await;
    let head = format!(
        "POST /_matrix/push/v1/notify HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    assert!(send(&mut conn, head.as_bytes()).await);
    let interim = read_head(&mut conn, Duration::from_secs(5)).await;
    assert!(
        interim
            .as_deref()
            .is_some_and(|h| h.starts_with("HTTP/1.1 100")),
        "{interim:?}"
    );
    assert!(send(&mut conn, &body).await);
    let head = read_head(&mut conn, Duration::from_secs(5)).await;
    assert!(head.expect("final answer").starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let gw = gateway("").await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let health = client
        .get(format!("{}/health", gw.url()))
        .send()
        .await
        .expect("h2c");
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert_eq!(health.status(), 200);
    let notify = client
        .post(format!("{}/_matrix/push/v1/notify", gw.url()))
        .header("content-type", "application/json")
        .body(notify_body("reject:me"))
        .send()
        .await
        .expect("h2c");
    assert_eq!(notify.status(), 200);
    let answer: serde_json::Value = notify.json().await.expect("json");
    assert_eq!(answer["rejected"], json!(["reject:me"]));
}

#[tokio::test]
async fn the_drain_waits_for_requests_being_handled_not_for_a_stalled_upload() {
    let mut gw =
        gateway("  body_timeout: 120\n  header_timeout: 120\n  shutdown_timeout: 60\n").await;
    // A stalled upload and a sender stuck in its headers...
    let mut stalled = connect(gw.port).await;
    assert!(
        send(
            &mut stalled,
            b"POST /_matrix/push/v1/notify HTTP/1.1\r\nhost: gateway\r\ncontent-length: 500000\r\n\r\n{\"notif"
        )
        .await
    );
    let mut slow_head = connect(gw.port).await;
    assert!(send(&mut slow_head, b"POST /_matrix/push/v1/notify HTTP/1.1\r\n").await);
    // ...and a request being handled for 1.5 s.
    let in_flight = request_in_flight(&gw, "delay:1500:x").await;
    let stop = Instant::now();
    gw.signal("TERM");
    assert_eq!(in_flight.await.unwrap().expect("answered"), 200);
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exited well before shutdown_timeout and body_timeout");
    assert!(status.success(), "{status}");
    assert!(stop.elapsed() < Duration::from_secs(20));
    let (_, closed) = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(closed);
    let (_, closed) = read_until_closed(&mut slow_head, Duration::from_secs(5)).await;
    assert!(closed);
}

async fn second_signal_exits_at_once(first: &str, second: &str) {
    let mut gw = gateway("  shutdown_timeout: 120\n").await;
    let in_flight = request_in_flight(&gw, "delay:60000:x").await;
    gw.signal(first);
    assert!(
        gw.wait_for_log("shutting down", Duration::from_secs(10))
            .await
    );
    // The first signal drains: the process waits for the 60 s request.
    assert!(gw.wait_exit(Duration::from_millis(500)).await.is_none());
    let second_at = Instant::now();
    gw.signal(second);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the second signal exits at once");
    assert!(second_at.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(gw
        .logs()
        .contains("received again: exiting without waiting"));
    assert!(
        in_flight.await.unwrap().is_err(),
        "the cut request has no answer"
    );
}

#[tokio::test]
async fn a_second_sigterm_during_the_drain_exits_at_once() {
    second_signal_exits_at_once("TERM", "TERM").await;
}

#[tokio::test]
async fn a_second_sigint_during_the_drain_exits_at_once() {
    second_signal_exits_at_once("INT", "INT").await;
}

#[tokio::test]
async fn sigint_drains_and_exits_zero() {
    let mut gw = gateway("").await;
    let in_flight = request_in_flight(&gw, "delay:800:x").await;
    gw.signal("INT");
    assert_eq!(in_flight.await.unwrap().expect("answered"), 200);
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert!(status.success(), "{status}");
}

/// A wrapper that starts the gateway under `ulimit_args` (shell `ulimit` syntax).
fn with_ulimit(dir: &std::path::Path, ulimit_args: &str) -> std::path::PathBuf {
    let script = dir.join("sygnal-limited");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nulimit {ulimit_args} || exit 97\nexec '{}' \"$@\"\n",
            sygnal_tests::sygnal_bin().display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    script
}

/// Lowers another process's soft open-files limit, keeping its hard limit.
fn set_soft_open_files_limit(pid: u32, soft: u64) {
    let mut current = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a valid rlimit64 to read into; no new limit is passed.
    let got = unsafe {
        libc::prlimit64(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut current,
        )
    };
    assert_eq!(got, 0, "prlimit read: {}", std::io::Error::last_os_error());
    let lowered = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: current.rlim_max,
    };
    // SAFETY: `lowered` is a valid rlimit64; the old value is not asked for.
    let set = unsafe {
        libc::prlimit64(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lowered,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "prlimit set: {}", std::io::Error::last_os_error());
}

/// (soft, hard) open-files limits of a process.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

#[tokio::test]
async fn the_soft_open_files_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().expect("dir");
    let gw = Gateway::builder(APPS)
        .program(&with_ulimit(dir.path(), "-Sn 64"))
        .start()
        .await;
    let (soft, hard) = open_files_limit(gw.pid());
    assert_eq!(soft, hard);
    if hard != "64" {
        assert!(
            gw.logs().contains("open-files limit raised"),
            "{}",
            gw.logs()
        );
    }
}

/// CPU time (user + system, in clock ticks) a process used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::test]
async fn out_of_descriptors_accept_backs_off_logs_once_and_recovers() {
    let dir = tempfile::tempdir().expect("dir");
    // 40 descriptors hold the connection limit at 20 (half of it). How many the process
    // itself uses varies by machine (each connection thread holds two: pinned to two here, as
    // the default follows the cores), so once it is up its soft limit is lowered to a few
    // above what it holds: accepting then runs out of descriptors well before 20.
    let gw = Gateway::builder(APPS)
        .http_yaml(&http("  worker_threads: 2\n"))
        .program(&with_ulimit(dir.path(), "-n 40"))
        .start()
        .await;
    assert!(gw
        .logs()
        .contains("http.max_connections is above half the open-files limit"));
    let own = std::fs::read_dir(format!("/proc/{}/fd", gw.pid()))
        .expect("fd dir")
        .count() as u64;
    assert!(own + 5 < 40, "the gateway holds {own} descriptors");
    set_soft_open_files_limit(gw.pid(), own + 5);
    let mut held = Vec::new();
    for _ in 0..30 {
        // The kernel completes the handshake whether or not the gateway accepts.
        held.push(connect(gw.port).await);
    }
    assert!(
        gw.wait_for_log("cannot accept connections", Duration::from_secs(10))
            .await,
        "{}",
        gw.logs()
    );
    // While out of descriptors, the accept loop sleeps instead of spinning.
    let before = cpu_ticks(gw.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(gw.pid()) - before;
    assert!(
        used < 50,
        "{used} ticks of CPU in 3 s while out of descriptors"
    );
    let logged = gw
        .logs()
        .lines()
        .filter(|l| l.contains("cannot accept connections"))
        .count();
    assert_eq!(logged, 1, "not rate-limited:\n{}", gw.logs());
    // Descriptors come back: the waiting connections are served.
    held.clear();
    let mut fresh = connect(gw.port).await;
    assert!(send(&mut fresh, HEALTH).await);
    let head = read_head(&mut fresh, Duration::from_secs(15)).await;
    assert!(head.expect("served again").starts_with("HTTP/1.1 200"));
}

/// A body that sends its first bytes, then nothing more, ever.
struct StalledBody(Option<hyper::body::Bytes>);

impl hyper::body::Body for StalledBody {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.0.take() {
            Some(bytes) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes)))),
            None => std::task::Poll::Pending,
        }
    }
}

#[tokio::test]
async fn a_stalled_http2_stream_is_answered_408_while_the_connection_serves_others() {
    let gw = gateway("  body_timeout: 1\n").await;
    let io = hyper_util::rt::TokioIo::new(connect(gw.port).await);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let stalled = http::Request::post(format!("{}/_matrix/push/v1/notify", gw.url()))
        .header("content-type", "application/json")
        .header("content-length", "500000")
        .body(StalledBody(Some(hyper::body::Bytes::from_static(
            b"{\"notif",
        ))))
        .expect("request");
    let started = Instant::now();
    let stalled = sender.send_request(stalled);
    // The same connection keeps serving other streams meanwhile.
    let mut other = sender.clone();
    // (/health does not read its request body, so this one needs none.)
    let health = http::Request::get(format!("{}/health", gw.url()))
        .body(StalledBody(None))
        .expect("request");
    let health = other.send_request(health).await.expect("health on h2");
    assert_eq!(health.status(), 200);
    let answer = tokio::time::timeout(Duration::from_secs(10), stalled)
        .await
        .expect("answered within 10 s")
        .expect("a response");
    assert_eq!(answer.status(), 408);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// The head of a /notify POST announcing `length` bytes.
fn notify_head(length: usize) -> String {
    format!(
        "POST /_matrix/push/v1/notify HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_get_503_while_small_ones_pass() {
    // A body's first 64 KiB are free; beyond that, 100 kB are shared by all bodies arriving.
    let gw = gateway("  body_buffer_bytes: 100000\n  body_timeout: 60\n").await;
    let sent = 64 * 1024 + 80_000;
    let mut uploads = Vec::new();
    for _ in 0..2 {
        let mut upload = connect(gw.port).await;
        assert!(send(&mut upload, notify_head(200_000).as_bytes()).await);
        assert!(send(&mut upload, &vec![b' '; sent]).await);
        uploads.push(upload);
    }
    // Both stall; only one fits in the budget: the other is refused at once.
    let mut refused = 0;
    for upload in &mut uploads {
        if let Some(head) = read_head(upload, Duration::from_secs(5)).await {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            refused += 1;
        }
    }
    assert_eq!(refused, 1);
    // Small bodies do not need the budget.
    assert_eq!(
        gw.notify(serde_json::from_slice(&notify_body("ok")).unwrap())
            .await
            .0,
        200
    );
    // The stalled upload gone, its share comes back for a large body.
    uploads.clear();
    let mut body = notify_body("ok");
    body.resize(sent, b' ');
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = gw.post_raw("/_matrix/push/v1/notify", body.clone()).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "the budget did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = metric(&gw, "sygnal_http_refused_bodies_total{listener=\"api\"}").await;
    assert!(refused >= 1.0);
}
