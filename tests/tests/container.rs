//! The container image, built and run with podman (Debian's `podman`, `runc`, `debootstrap`;
//! `.ci/run` installs them).
//!
//! No container registry is reachable from this machine, so the Dockerfile's base images cannot
//! be pulled and its Rust builder stage cannot run here. What runs: a Debian bookworm base made
//! with debootstrap from the Debian archive, tagged as the Dockerfile's runtime base; the
//! Dockerfile's runtime stage, verbatim except that it copies the binary and plugins these tests
//! were built with instead of the builder stage's; the container started, its HEALTHCHECK run,
//! its user and plugins checked. Podman runs rootful here with runc and cgroupfs (crun refuses
//! this machine's hybrid cgroup layout) and no default ulimits (raising them is not permitted).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use sygnal_tests::{free_port, target_dir};

const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
const IMAGE: &str = "localhost/sygnal-rs:test";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "`{program}` not found: install Debian's podman, runc and debootstrap \
         (apt-get install podman runc debootstrap; .ci/run does this)"
    );
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Podman with its own storage under the target directory and the settings this machine needs.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let dir = target_dir().join("test-cache").join("podman");
        std::fs::create_dir_all(&dir).expect("podman dir");
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n",
        )
        .expect("containers.conf");
        Podman { dir }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.runroot())
            .args(["--storage-driver", "overlay"]);
        command
    }

    /// Podman refuses a runroot longer than 50 characters, which a checkout's target directory
    /// easily is; this one is short, in /tmp, and still unique per target directory (runtime
    /// state only, like a tmpfs runroot after a reboot, so its loss is harmless).
    fn runroot(&self) -> PathBuf {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.dir.hash(&mut hasher);
        PathBuf::from(format!("/tmp/sygnal-podman-{:016x}", hasher.finish()))
    }

    fn has_image(&self, image: &str) -> bool {
        self.command()
            .args(["image", "exists", image])
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Debian bookworm (minbase) as the runtime base image, made once with debootstrap.
fn base_image(podman: &Podman) {
    if podman.has_image(BASE_IMAGE) {
        return;
    }
    let tar = target_dir().join("test-cache").join("bookworm-minbase.tar");
    if !tar.is_file() {
        let rootfs = tempfile::tempdir().expect("temp dir");
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(rootfs.path())
            .arg(DEBIAN_MIRROR));
        let _ = std::fs::remove_dir_all(rootfs.path().join("var/cache/apt/archives"));
        let partial = tar.with_extension("partial");
        run(Command::new("tar")
            .arg("-C")
            .arg(rootfs.path())
            .arg("-cf")
            .arg(&partial)
            .arg("."));
        std::fs::rename(&partial, &tar).expect("base tarball");
    }
    run(podman.command().arg("import").arg(&tar).arg(BASE_IMAGE));
}

/// The Dockerfile's runtime stage, copying from the context's `out/` instead of the builder.
fn runtime_dockerfile() -> String {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let runtime = dockerfile
        .find("FROM ${RUNTIME_IMAGE} AS runtime")
        .expect("a runtime stage");
    let args: String = dockerfile[..runtime]
        .lines()
        .filter(|line| line.starts_with("ARG RUNTIME_IMAGE="))
        .map(|line| format!("{line}\n"))
        .collect();
    let copy = "COPY --from=builder /out/ /usr/local/lib/sygnal/";
    assert!(dockerfile[runtime..].contains(copy));
    format!(
        "{args}{}",
        dockerfile[runtime..].replace(copy, "COPY out/ /usr/local/lib/sygnal/")
    )
}

/// The build context: the runtime stage's Dockerfile, `out/` with the binary and every built-in
/// plugin (as the builder stage's `cp` collects them), and the files the stage copies.
fn context() -> tempfile::TempDir {
    let context = tempfile::tempdir().expect("temp dir");
    let out = context.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let built = target_dir();
    std::fs::copy(built.join("sygnal"), out.join("sygnal"))
        .expect("binary (cargo build --workspace)");
    for plugin in std::fs::read_dir(repo().join("plugins")).unwrap() {
        let name = plugin.unwrap().file_name().to_string_lossy().into_owned();
        let library = format!("libsygnal_pushkin_{name}.so");
        std::fs::copy(built.join(&library), out.join(&library))
            .unwrap_or_else(|err| panic!("{library}: {err} (cargo build --workspace)"));
    }
    std::fs::create_dir_all(context.path().join("deploy/docker")).unwrap();
    std::fs::copy(
        repo().join("deploy/docker/sygnal.yaml"),
        context.path().join("deploy/docker/sygnal.yaml"),
    )
    .unwrap();
    std::fs::write(context.path().join("Dockerfile"), runtime_dockerfile()).unwrap();
    context
}

/// A running container, removed on drop.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl Container<'_> {
    fn exec(&self, args: &[&str]) -> Output {
        self.podman
            .command()
            .args(["exec", &self.name])
            .args(args)
            .output()
            .expect("podman exec runs")
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .command()
            .args(["rm", "--force", "--time", "5", &self.name])
            .output();
    }
}

#[test]
fn the_image_runs_healthy_as_non_root_with_its_plugins() {
    for program in ["podman", "runc", "debootstrap"] {
        require(program);
    }
    let podman = Podman::new();
    base_image(&podman);
    let context = context();
    run(podman
        .command()
        .args([
            "build",
            "--pull=never",
            "--isolation=chroot",
            "--format",
            "docker",
            "-t",
            IMAGE,
        ])
        .arg(context.path()));

    // The image's own default config listens on 0.0.0.0:5000; tests listen on loopback only,
    // so the container shares the host's network and gets a loopback config.
    let port = free_port();
    let config = context.path().join("loopback.yaml");
    std::fs::write(
        &config,
        format!("http:\n  bind_addresses: ['127.0.0.1']\n  port: {port}\napps:\n  '*':\n    type: unifiedpush\n"),
    )
    .unwrap();
    let name = format!("sygnal-test-{port}");
    run(podman
        .command()
        .args([
            "run",
            "--detach",
            "--name",
            &name,
            "--network",
            "host",
            "--volume",
        ])
        .arg(format!("{}:/etc/sygnal/sygnal.yaml:ro", config.display()))
        .arg(IMAGE));
    let container = Container {
        podman: &podman,
        name: name.clone(),
    };

    // The HEALTHCHECK (`sygnal health`) passes once the gateway is up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let check = podman
            .command()
            .args(["healthcheck", "run", &name])
            .output()
            .expect("podman healthcheck runs");
        if check.status.success() {
            break;
        }
        if Instant::now() > deadline {
            let logs = podman.command().args(["logs", &name]).output().unwrap();
            panic!(
                "never healthy: {check:?}\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let id = container.exec(&["id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "10001");
    // The built-in plugins are found beside the binary.
    let plugins = container.exec(&["sygnal", "plugins"]);
    let listing = String::from_utf8_lossy(&plugins.stdout);
    for kind in ["apns", "gcm", "unifiedpush"] {
        assert!(
            listing.contains(&format!(
                "/usr/local/lib/sygnal/libsygnal_pushkin_{kind}.so"
            )),
            "{listing}"
        );
    }
    // The health check fails when the gateway is not answering.
    let wrong = container.exec(&["sh", "-c", &format!(
        "printf \"http:\\n  bind_addresses: ['127.0.0.1']\\n  port: {}\\napps:\\n  a:\\n    type: unifiedpush\\n\" > /tmp/c.yaml && sygnal --config /tmp/c.yaml health",
        free_port()
    )]);
    assert!(!wrong.status.success(), "{wrong:?}");
}
