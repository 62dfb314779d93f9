//! Shared helpers for the integration tests: the real `sygnal` binary and plugin libraries,
//! driven over loopback against fake upstreams.
//!
//! Everything the tests need is built by `cargo build --workspace` (the README's test command
//! runs it first): the binary and the cdylibs land in the same target directory as the tests.

pub mod gateway;
pub mod load;
pub mod otlp;
pub mod out_of_tree;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod python;
pub mod redis;
pub mod serve;
pub mod synapse;
pub mod tls;
pub mod unifiedpush;

use std::path::PathBuf;

/// The target directory the tests were built into (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test binary>
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("target profile dir").to_path_buf()
}

/// The gateway binary under test.
pub fn sygnal_bin() -> PathBuf {
    let bin = target_dir().join("sygnal");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        bin.display()
    );
    bin
}

/// A plugin library (or fixture) built by the workspace, by crate name.
pub fn library(crate_name: &str) -> PathBuf {
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let path = target_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// The bodies Synapse 1.163.2 really sent (`tests/data/synapse-notify-bodies.json`).
pub fn synapse_bodies() -> Vec<serde_json::Value> {
    let text = include_str!("../data/synapse-notify-bodies.json");
    let cases: serde_json::Value = serde_json::from_str(text).expect("test data is JSON");
    cases
        .as_array()
        .expect("test data is a list")
        .iter()
        .map(|case| case["body"].clone())
        .collect()
}

/// Installs rustls' ring provider for the test process (idempotent).
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A free loopback TCP port (bound then released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
