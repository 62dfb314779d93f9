//! Building crates outside the workspace, as a third-party pushkin author would: their own
//! `cargo build`, depending on plugin-api alone.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// What a build produced.
pub struct Built {
    /// Whether cargo succeeded.
    pub success: bool,
    /// What cargo printed on stderr (its diagnostics).
    pub stderr: String,
    /// The cdylib `lib<lib_name>.so` in the build's target directory (present on success).
    pub library: PathBuf,
}

/// `cargo build --manifest-path <crate_dir>/Cargo.toml [--features ...]` into
/// `target/<target_name>` of the workspace (kept between runs so rebuilds are incremental).
/// The workspace's Cargo.lock is copied in first, so the build uses the versions already
/// downloaded.
pub fn cargo_build(
    crate_dir: &Path,
    target_name: &str,
    features: &[&str],
    lib_name: &str,
) -> Built {
    let root = workspace_root();
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock")).expect("lock copied");
    let target = root.join("target").join(target_name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    if !features.is_empty() {
        command.arg("--features").arg(features.join(","));
    }
    let output = command.output().expect("cargo runs");
    Built {
        success: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        library: target.join("debug").join(format!(
            "{}{lib_name}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        )),
    }
}
