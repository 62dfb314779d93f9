//! docs/writing-a-pushkin.md, followed as an author would: examples/webhook built on its own
//! (outside this workspace, depending on plugin-api alone) delivers through the real gateway,
//! loaded by path and by kind; and the plugin-api crate-level example compiles out of tree.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::out_of_tree::{cargo_build, workspace_root};
use sygnal_tests::serve::serve_http;

/// What the webhook endpoint saw: (authorization header, body), and the status to answer.
type Seen = Arc<Mutex<(Vec<(String, Value)>, u16)>>;

async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let mut seen = seen.lock().unwrap();
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    seen.0.push((
        auth.unwrap_or_default(),
        serde_json::from_slice(&body).unwrap(),
    ));
    StatusCode::from_u16(seen.1).unwrap()
}

#[tokio::test]
async fn the_guide_s_webhook_example_delivers_by_path_and_by_kind() {
    let crate_dir = workspace_root().join("examples/webhook");
    let source = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    assert!(
        source.lines().count() < 80,
        "the example is meant to stay under 80 lines"
    );
    let built = cargo_build(
        &crate_dir,
        "external-pushkin",
        &[],
        "sygnal_pushkin_webhook",
    );
    assert!(built.success, "{}", built.stderr);

    let seen: Seen = Arc::new(Mutex::new((Vec::new(), 200)));
    let server = serve_http(
        Router::new()
            .route("/hook", post(hook))
            .with_state(Arc::clone(&seen)),
    )
    .await;
    let section = format!(
        "  url: {}/hook\n  headers:\n    Authorization: Bearer s3cret\n  max_tries: 1\n",
        server.url()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        &built.library,
        dir.path().join(built.library.file_name().unwrap()),
    )
    .unwrap();
    let by_path = format!(
        "org.example.hook:\n  type: {}\n{section}",
        built.library.display()
    );
    let by_kind = format!("org.example.hook:\n  type: webhook\n{section}");
    let dirs = format!("plugins:\n  dirs: ['{}']", dir.path().display());
    for gateway in [
        Gateway::builder(&by_path),
        Gateway::builder(&by_kind).extra_yaml(&dirs),
    ] {
        let gw = gateway.start().await;
        seen.lock().unwrap().0.clear();
        let body = json!({"notification": {"event_id": "$e", "room_id": "!r", "devices": [
            {"app_id": "org.example.hook", "pushkey": "one"},
            {"app_id": "org.example.hook", "pushkey": "two"}]}});
        seen.lock().unwrap().1 = 200;
        assert_eq!(
            gw.notify(body.clone()).await,
            (200, json!({"rejected": []}))
        );
        let mut got = seen.lock().unwrap().0.clone();
        got.sort_by_key(|(_, body)| body["notification"]["devices"][0]["pushkey"].to_string());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "Bearer s3cret");
        assert_eq!(
            got[0].1,
            json!({"notification": {"event_id": "$e", "room_id": "!r",
                "devices": [{"app_id": "org.example.hook", "pushkey": "one"}]}})
        );
        // 404 and 410 reject; a 400 fails the dispatch (502).
        for (status, expected) in [
            (404, (200, json!({"rejected": ["one", "two"]}))),
            (410, (200, json!({"rejected": ["one", "two"]}))),
        ] {
            seen.lock().unwrap().1 = status;
            // A new event each time: the same one again would be answered as a duplicate.
            let (code, answer) = gw.notify(with_event(&body, status)).await;
            let mut rejected: Vec<String> =
                serde_json::from_value(answer["rejected"].clone()).unwrap();
            rejected.sort();
            assert_eq!((code, json!({"rejected": rejected})), expected, "{status}");
        }
        seen.lock().unwrap().1 = 400;
        assert_eq!(gw.notify(with_event(&body, 400)).await.0, 502);
    }
}

/// `body` for another event (`$e<n>`).
fn with_event(body: &Value, n: u16) -> Value {
    let mut body = body.clone();
    body["notification"]["event_id"] = json!(format!("$e{n}"));
    body
}

/// The `//!` example of plugin-api's lib.rs, built as its own crate with plugin-api as its one
/// dependency: what an author copying it gets.
#[test]
fn the_crate_level_example_compiles_out_of_tree() {
    let root = workspace_root();
    let lib = std::fs::read_to_string(root.join("plugin-api/src/lib.rs")).unwrap();
    let doc: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("//!"))
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect();
    let start = doc
        .iter()
        .position(|l| l.starts_with("```"))
        .expect("an example")
        + 1;
    let end = start
        + doc[start..]
            .iter()
            .position(|l| l.starts_with("```"))
            .unwrap();
    let example = doc[start..end].join("\n");
    assert!(example.contains("export_pushkin!"), "{example}");

    let dir = root.join("target/crate-example");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), example).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"crate-example\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nsygnal-plugin-api = {{ path = \"{}\" }}\n\n[workspace]\n",
            root.join("plugin-api").display()
        ),
    )
    .unwrap();
    let built = cargo_build(&dir, "external-pushkin", &[], "crate_example");
    assert!(
        built.success,
        "the crate-level example does not compile out of tree:\n{}",
        built.stderr
    );
    assert!(built.library.is_file());
}
