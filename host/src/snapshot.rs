//! Private copies ("snapshots") of plugin libraries.
//!
//! The host never maps an installed library file. Overwriting a mapped file in place (`cp`,
//! `make install`, Ansible's copy module) truncates and rewrites the pages the process runs,
//! and the process dies of SIGBUS or SIGSEGV. So each library is first copied into a directory
//! private to this process, named by the SHA-256 of its content, and the copy is loaded: the
//! installed file can then be replaced in any way while the gateway runs.
//!
//! Layout: `<base>/<pid>/<sha256>.so`, where `<base>` is `plugins.snapshot_dir`, else
//! `$XDG_RUNTIME_DIR/sygnal-plugins-<uid>`, else `<temp dir>/sygnal-plugins-<uid>`. The base
//! must be a real directory owned by this user and closed to others (a shared /tmp is safe: a
//! base someone else created or made a symlink is refused). The pid directory is removed at exit;
//! at start, directories of processes that no longer exist are removed, never a live process's
//! (two gateways run side by side during a binary upgrade).

use ring::digest;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A library's content hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A library copied into the snapshot directory.
#[derive(Clone)]
pub struct Snapshot {
    /// The private copy, to be loaded.
    pub path: PathBuf,
    /// The hash of its content.
    pub sha256: Sha256,
}

/// This process's snapshot directory; removed by [`remove`](SnapshotDir::remove) or when
/// dropped.
pub struct SnapshotDir {
    dir: PathBuf,
    incoming: AtomicU64,
    removed: AtomicBool,
    /// Installed file versions already copied: a reload does not copy an unchanged file again.
    copies: Mutex<HashMap<FileVersion, Snapshot>>,
}

/// How often a library that changes while it is copied is read again before giving up.
const COPY_ATTEMPTS: u32 = 5;

impl SnapshotDir {
    /// Creates `<base>/<pid>` (see the module docs for `<base>`), removing the directories of
    /// dead processes found beside it.
    pub fn create(configured: Option<&Path>) -> Result<Self, String> {
        let base = base_dir(configured);
        let describe = |err: std::io::Error| {
            format!(
                "plugin snapshot directory {}: {err} (set plugins.snapshot_dir to a private directory)",
                base.display()
            )
        };
        if configured.is_some() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&base)
                .map_err(describe)?;
        } else {
            match fs::DirBuilder::new().mode(0o700).create(&base) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(describe(err)),
            }
        }
        check_private(&base, configured.is_none())?;
        remove_dead_processes_dirs(&base);
        let dir = base.join(std::process::id().to_string());
        // Left by an earlier process that had our pid: nothing alive uses it.
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(describe)?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(describe)?;
        Ok(SnapshotDir {
            dir,
            incoming: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            copies: Mutex::new(HashMap::new()),
        })
    }

    /// Removes the directory and its copies (at exit: mapped libraries stay valid after their
    /// file is removed). Later copies fail.
    pub fn remove(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot remove the plugin snapshot directory");
        }
    }

    /// Where the copies are.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Copies the library at `installed` into the snapshot directory, hashing it on the way.
    /// A file that changes while it is read (an in-place copy in progress) is read again; one
    /// that stays incomplete is refused rather than loaded half-written.
    pub fn copy(&self, installed: &Path) -> Result<Snapshot, String> {
        let mut last_error = String::new();
        for attempt in 0..COPY_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
            }
            match self.try_copy(installed)? {
                Ok(snapshot) => return Ok(snapshot),
                Err(unstable) => last_error = unstable,
            }
        }
        Err(format!(
            "{}: {last_error}; retry once the file is completely written (install libraries by atomic rename)",
            installed.display()
        ))
    }

    /// `Err` for an unusable file, `Ok(Err)` for one that changed while read (worth retrying).
    fn try_copy(&self, installed: &Path) -> Result<Result<Snapshot, String>, String> {
        let io_error = |err: std::io::Error| format!("{}: {err}", installed.display());
        let mut source = File::open(installed).map_err(io_error)?;
        let before = source.metadata().map_err(io_error)?;
        if !before.is_file() {
            return Err(format!("{}: not a regular file", installed.display()));
        }
        let version = FileVersion::of(&before);
        if let Some(snapshot) = self.already_copied(&version) {
            return Ok(Ok(snapshot));
        }
        let incoming = self.dir.join(format!(
            ".incoming-{}",
            self.incoming.fetch_add(1, Ordering::Relaxed)
        ));
        let copied = copy_then_hash(&mut source, &incoming).map_err(|err| {
            let _ = fs::remove_file(&incoming);
            format!(
                "cannot copy {} into {}: {err}",
                installed.display(),
                self.dir.display()
            )
        })?;
        let (len, sha256, header) = copied;
        let after = source.metadata().map_err(io_error)?;
        let unstable = if FileVersion::of(&after) != version || len != after.len() {
            Some("the file changed while it was read".to_owned())
        } else {
            incomplete_elf(&header, len)
        };
        if let Some(reason) = unstable {
            let _ = fs::remove_file(&incoming);
            return Ok(Err(reason));
        }
        let path = self
            .dir
            .join(format!("{sha256}{}", std::env::consts::DLL_SUFFIX));
        if path.exists() {
            // The same content was copied before (and is loaded, or failed to load).
            let _ = fs::remove_file(&incoming);
        } else {
            let _ = fs::set_permissions(&incoming, fs::Permissions::from_mode(0o400));
            fs::rename(&incoming, &path).map_err(|err| {
                let _ = fs::remove_file(&incoming);
                format!("cannot store {}: {err}", path.display())
            })?;
        }
        let snapshot = Snapshot { path, sha256 };
        if version.settled() {
            if let Ok(mut copies) = self.copies.lock() {
                copies.insert(version, snapshot.clone());
            }
        }
        Ok(Ok(snapshot))
    }

    /// The snapshot of a file version copied before, if its copy is still there.
    fn already_copied(&self, version: &FileVersion) -> Option<Snapshot> {
        let copies = self.copies.lock().ok()?;
        copies.get(version).filter(|s| s.path.is_file()).cloned()
    }
}

/// What identifies one version of a file without reading it: any write changes its
/// modification and change times (the change time cannot be set from user space).
#[derive(Clone, PartialEq, Eq, Hash)]
struct FileVersion {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileVersion {
    fn of(metadata: &fs::Metadata) -> Self {
        FileVersion {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Whether the file was last changed long enough ago that a later write shows in its times,
    /// even on a file system with whole-second timestamps.
    fn settled(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.changed.0 + 2 < now && self.modified.0 + 2 < now
    }
}

impl Drop for SnapshotDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The directory holding every process's snapshot directory.
pub fn base_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    let parent = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: geteuid cannot fail and has no preconditions.
    let uid = unsafe { libc::geteuid() };
    parent.join(format!("sygnal-plugins-{uid}"))
}

/// Refuses a base directory another user could write to (or swap for a symlink).
fn check_private(base: &Path, must_be_private: bool) -> Result<(), String> {
    let metadata = fs::symlink_metadata(base)
        .map_err(|err| format!("plugin snapshot directory {}: {err}", base.display()))?;
    // SAFETY: geteuid cannot fail and has no preconditions.
    let uid = unsafe { libc::geteuid() };
    // What the path leads to (the symlink's target, when it is one and that is allowed).
    let target = fs::metadata(base).ok();
    let problem = if metadata.file_type().is_symlink() && must_be_private {
        Some("is a symlink")
    } else if !target.as_ref().is_some_and(|m| m.is_dir()) {
        Some("is not a directory")
    } else if target.as_ref().map_or(u32::MAX, |m| m.uid()) != uid {
        Some("belongs to another user")
    } else if target.as_ref().is_none_or(|m| m.mode() & 0o022 != 0) {
        Some("is writable by other users")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(format!(
            "plugin snapshot directory {} {problem}: refusing to load plugin libraries from it (remove it, or set plugins.snapshot_dir to a private directory)",
            base.display()
        )),
    }
}

/// Removes the snapshot directories of processes that no longer exist.
fn remove_dead_processes_dirs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own || process_exists(pid) {
            continue;
        }
        match fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(pid, dir = %entry.path().display(), "removed the plugin snapshots of a process that no longer runs")
            }
            Err(err) => {
                tracing::warn!(pid, dir = %entry.path().display(), error = %err, "cannot remove stale plugin snapshots")
            }
        }
    }
}

/// Whether a process with this pid exists (one of another user counts).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Copies `source` into a new file at `target`, then hashes the
/// copy, which is what gets loaded: (bytes copied, their hash, the first 64 bytes).
fn copy_then_hash(source: &mut File, target: &Path) -> std::io::Result<(u64, Sha256, Vec<u8>)> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)?;
    // Page by page, not in the kernel in large chunks: a large write makes large page-cache
    // folios, and a fault on a folio maps all of it, so a library copied in one piece kept
    // megabytes of cold code resident (see `code_pages`).
    let mut copied = 0u64;
    let mut page = [0u8; 4096];
    loop {
        let read = source.read(&mut page)?;
        if read == 0 {
            break;
        }
        out.write_all(&page[..read])?;
        copied += read as u64;
    }
    drop(out);
    let mut copy = File::open(target)?;
    let mut context = digest::Context::new(&digest::SHA256);
    let mut buffer = vec![0u8; 256 * 1024];
    let mut header = Vec::with_capacity(64);
    loop {
        let read = copy.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        let chunk = &buffer[..read];
        if header.len() < 64 {
            let wanted = (64 - header.len()).min(read);
            header.extend_from_slice(&chunk[..wanted]);
        }
        context.update(chunk);
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(context.finish().as_ref());
    Ok((copied, Sha256(sha256), header))
}

/// Why a 64-bit little-endian ELF file of `len` bytes is cut short, if it is: its section header
/// table, which linkers put last, must fit. Other formats are left to the loader.
fn incomplete_elf(header: &[u8], len: u64) -> Option<String> {
    if header.len() < 64 || &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([header[at], header[at + 1]]));
    let section_headers_end = u64_at(0x28).saturating_add(u16_at(0x3a) * u16_at(0x3c));
    (section_headers_end > len).then(|| {
        format!("the file is incomplete ({len} bytes, its ELF headers need {section_headers_end})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_named_by_content_and_removed_with_the_directory() {
        let base = tempfile::tempdir().unwrap();
        let snapshots = SnapshotDir::create(Some(base.path())).unwrap();
        let own = snapshots.path().to_path_buf();
        assert_eq!(own, base.path().join(std::process::id().to_string()));
        let source = base.path().join("lib.so");
        fs::write(&source, b"not really a library").unwrap();
        let first = snapshots.copy(&source).unwrap();
        assert_eq!(
            first.sha256.to_string(),
            "8c94411e7c8b87bd238af6ff286f5e356e89b0b393364163b58e2ca433a40fe5"
        );
        assert_eq!(
            first.path,
            own.join(format!("{}{}", first.sha256, std::env::consts::DLL_SUFFIX))
        );
        assert_eq!(fs::read(&first.path).unwrap(), b"not really a library");
        let again = snapshots.copy(&source).unwrap();
        assert_eq!(again.path, first.path);
        fs::write(&source, b"another build").unwrap();
        let other = snapshots.copy(&source).unwrap();
        assert_ne!(other.sha256, first.sha256);
        assert_eq!(fs::read_dir(&own).unwrap().count(), 2, "no stray files");
        drop(snapshots);
        assert!(!own.exists());
    }

    #[test]
    fn dead_processes_dirs_are_removed_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        // Pids above the kernel's maximum (4194304) never run.
        let dead = base.path().join("4999999");
        let parent = base
            .path()
            .join(std::os::unix::process::parent_id().to_string());
        let unrelated = base.path().join("notes");
        for dir in [&dead, &parent, &unrelated] {
            fs::create_dir(dir).unwrap();
        }
        let _snapshots = SnapshotDir::create(Some(base.path())).unwrap();
        assert!(!dead.exists());
        assert!(parent.exists());
        assert!(unrelated.exists());
    }

    #[test]
    fn a_base_open_to_others_is_refused() {
        let base = tempfile::tempdir().unwrap();
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = SnapshotDir::create(Some(base.path())).err().unwrap();
        assert!(err.contains("writable by other users"), "{err}");
        let target = tempfile::tempdir().unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(target.path(), &link).unwrap();
        assert!(check_private(&link, true).unwrap_err().contains("symlink"));
    }

    #[test]
    fn a_truncated_elf_file_is_incomplete() {
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[0x28..0x30].copy_from_slice(&1000u64.to_le_bytes());
        header[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        header[0x3c..0x3e].copy_from_slice(&10u16.to_le_bytes());
        assert_eq!(incomplete_elf(&header, 1640), None);
        assert!(incomplete_elf(&header, 1639).is_some());
        assert_eq!(incomplete_elf(b"short", 5), None);
    }
}
