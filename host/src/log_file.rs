//! Log files, following rotation: when the file at a configured path is moved or deleted
//! (logrotate), the next lines go to a new file at that path, as Python's WatchedFileHandler
//! does for Sygnal. Every file handler of `log.setup` gets this; handlers naming the same path
//! share one file. SIGHUP reopens them all at once ([`reopen`]).
//!
//! Python stats the path before every line; this checks at most every
//! [`CHECK_INTERVAL_MS`] (one `stat` per interval however many lines are written), so a
//! rotation is followed within that interval of the next line.

use arc_swap::ArcSwap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How often, at most, the path is compared with the open file.
pub const CHECK_INTERVAL_MS: u64 = 250;

/// The log files of the process, once opened (for [`reopen`]).
static LOG_FILES: Mutex<Vec<Arc<LogFile>>> = Mutex::new(Vec::new());

/// An append-only log file that reopens its path when the file there changes.
pub struct LogFile {
    path: PathBuf,
    current: ArcSwap<Opened>,
    /// Milliseconds since `epoch` at which the path is next checked.
    next_check: AtomicU64,
    epoch: Instant,
    /// Serialises reopening; writers never wait for it.
    reopening: Mutex<()>,
    /// A reopen failed and was reported: stay quiet until one succeeds.
    failing: AtomicBool,
}

struct Opened {
    file: File,
    device: u64,
    inode: u64,
}

fn open(path: &Path) -> io::Result<Opened> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let metadata = file.metadata()?;
    Ok(Opened {
        file,
        device: metadata.dev(),
        inode: metadata.ino(),
    })
}

impl LogFile {
    /// Opens (creating) `path` for appending, or returns the file already opened there, and
    /// makes it one of the files [`reopen`] acts on.
    pub fn install(path: &Path) -> io::Result<Arc<LogFile>> {
        let mut files = LOG_FILES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = files.iter().find(|log| log.path == path) {
            return Ok(Arc::clone(log));
        }
        let log = Arc::new(LogFile::open(path)?);
        files.push(Arc::clone(&log));
        Ok(log)
    }

    /// Appends one whole line (one `write` call, so concurrent lines never interleave).
    pub fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut writer = self;
        writer.write_all(line)
    }

    fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(open(path)?),
            next_check: AtomicU64::new(CHECK_INTERVAL_MS),
            epoch: Instant::now(),
            reopening: Mutex::new(()),
            failing: AtomicBool::new(false),
        })
    }

    /// Checks the path when the interval has passed; one writer does it, the others go on.
    fn check_if_due(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let due = self.next_check.load(Ordering::Relaxed);
        if now < due
            || self
                .next_check
                .compare_exchange(
                    due,
                    now + CHECK_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let moved = match std::fs::metadata(&self.path) {
            Ok(metadata) => {
                let current = self.current.load();
                metadata.dev() != current.device || metadata.ino() != current.inode
            }
            Err(err) => err.kind() == io::ErrorKind::NotFound,
        };
        if moved {
            self.reopen();
        }
    }

    /// Opens the path again and writes there from now on. On failure the old file is kept and
    /// the error reported on stderr (once until a reopen succeeds).
    pub fn reopen(&self) {
        let Ok(_guard) = self.reopening.lock() else {
            return;
        };
        match open(&self.path) {
            Ok(opened) => {
                self.current.store(Arc::new(opened));
                self.failing.store(false, Ordering::Relaxed);
            }
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "sygnal: cannot reopen log file {}: {err}; still writing to the old one",
                        self.path.display()
                    );
                }
            }
        }
    }
}

impl Write for &LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check_if_due();
        let current = self.current.load();
        (&current.file).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reopens every log file (SIGHUP).
pub fn reopen() {
    let files = LOG_FILES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for log in files {
        log.reopen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_line(log: &LogFile, line: &str) {
        let mut writer = log;
        writer.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn follows_a_moved_file_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sygnal.log");
        let log = LogFile::open(&path).unwrap();
        write_line(&log, "before\n");
        std::fs::rename(&path, dir.path().join("sygnal.log.1")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(CHECK_INTERVAL_MS + 50));
        write_line(&log, "after\n");
        let rotated = std::fs::read_to_string(dir.path().join("sygnal.log.1")).unwrap();
        assert_eq!(rotated, "before\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn follows_a_deleted_file_and_reopens_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sygnal.log");
        let log = LogFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        log.reopen();
        write_line(&log, "line\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line\n");
    }

    #[test]
    fn handlers_naming_one_path_share_its_file_and_reopen_follows_all() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one.log"), dir.path().join("two.log"));
        let first = LogFile::install(&one).unwrap();
        assert!(Arc::ptr_eq(&first, &LogFile::install(&one).unwrap()));
        let second = LogFile::install(&two).unwrap();
        std::fs::remove_file(&one).unwrap();
        std::fs::remove_file(&two).unwrap();
        reopen();
        first.write_line(b"a\n").unwrap();
        second.write_line(b"b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&one).unwrap(), "a\n");
        assert_eq!(std::fs::read_to_string(&two).unwrap(), "b\n");
    }

    #[test]
    fn a_failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("sygnal.log");
        let log = LogFile::open(&path).unwrap();
        std::fs::rename(&path, dir.path().join("kept.log")).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        log.reopen();
        write_line(&log, "still here\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("kept.log")).unwrap(),
            "still here\n"
        );
    }
}
