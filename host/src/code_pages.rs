//! Handing back the code pages only startup used.
//!
//! Loading a plugin library runs code the gateway never runs again: its async runtime, TLS
//! client and resolver setup, config parsing, the ABI's layout checks. On a kernel that maps
//! whole page-cache folios at a fault, each library then keeps 2-3 MiB of its code mapped,
//! most of it cold, and counted in the process's resident memory. Once the gateway serves (and
//! after each reload), its read-only file mappings (code, and the constants beside it) are
//! dropped from the page tables: the pages stay in the page cache, and the code that runs
//! again maps its pages back at the next call, with a minor fault.
//!
//! Only read-only file mappings holding nothing but the file's pages are touched: dropping
//! them loses nothing, and nothing can write to them meanwhile. A mapping with private
//! (copied-on-write) pages, as relocated constants or a debugger's breakpoints have, is left as
//! it is.

use std::io::{BufRead, BufReader};

/// What [`release`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Read-only file mappings dropped from the page tables.
    pub mappings: usize,
    /// Their resident size before, in KiB.
    pub resident_kib: u64,
}

/// Drops every read-only file mapping of this process that holds only the file's pages from
/// its page tables.
pub fn release() -> std::io::Result<Released> {
    let smaps = std::fs::File::open("/proc/self/smaps")?;
    let mut released = Released::default();
    let mut current: Option<Mapping> = None;
    for line in BufReader::new(smaps).lines() {
        let line = line?;
        if let Some(mapping) = Mapping::parse_header(&line) {
            if let Some(done) = current.replace(mapping) {
                done.release_into(&mut released);
            }
        } else if let Some(mapping) = current.as_mut() {
            mapping.add_field(&line);
        }
    }
    if let Some(done) = current {
        done.release_into(&mut released);
    }
    Ok(released)
}

/// One mapping of `/proc/self/smaps`, as far as releasing it goes.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    /// Read-only (code, or the constants beside it), private, backed by a file.
    read_only_file: bool,
    resident_kib: u64,
    private_kib: u64,
}

impl Mapping {
    /// `start-end perms offset dev inode [path]`; `None` for a field line.
    fn parse_header(line: &str) -> Option<Mapping> {
        let mut parts = line.split_whitespace();
        let (start, end) = parts.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let perms = parts.next()?;
        let path = parts.nth(3);
        Some(Mapping {
            start,
            end,
            // Read-only: nothing can write a page between the check and the release.
            read_only_file: matches!(perms, "r-xp" | "r--p")
                && path.is_some_and(|p| p.starts_with('/')),
            resident_kib: 0,
            private_kib: 0,
        })
    }

    fn add_field(&mut self, line: &str) {
        let Some((key, value)) = line.split_once(':') else {
            return;
        };
        let kib = || {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        };
        match key {
            "Rss" => self.resident_kib = kib(),
            // Pages copied on write. (`Private_Dirty` also counts file pages not yet written
            // back, as a fresh snapshot's are: those are the file's and may be dropped.)
            "Anonymous" => self.private_kib = kib(),
            _ => {}
        }
    }

    fn release_into(self, released: &mut Released) {
        if !self.read_only_file || self.private_kib != 0 || self.resident_kib == 0 {
            return;
        }
        // SAFETY: the range is a whole mapping of this process, read from smaps just now, and
        // holds only the file's own pages: MADV_DONTNEED unmaps them, and the next access maps the
        // same bytes from the file again. Libraries are never unloaded, so the range cannot be
        // reused for something else meanwhile.
        let result = unsafe {
            libc::madvise(
                self.start as *mut libc::c_void,
                self.end - self.start,
                libc::MADV_DONTNEED,
            )
        };
        if result == 0 {
            released.mappings += 1;
            released.resident_kib += self.resident_kib;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers_and_fields() {
        let mut code = Mapping::parse_header(
            "7f5030d69000-7f5031119000 r-xp 00169000 fe:00 123 /tmp/sygnal-plugins-0/1/ab.so",
        )
        .expect("header");
        assert!(code.read_only_file);
        assert_eq!(code.end - code.start, 0x3b0000);
        code.add_field("Rss:                2276 kB");
        code.add_field("Private_Dirty:      2276 kB");
        code.add_field("Anonymous:             0 kB");
        code.add_field("VmFlags: rd ex mr mw me sd");
        assert_eq!((code.resident_kib, code.private_kib), (2276, 0));

        let constants =
            Mapping::parse_header("7f50311-7f50312 r--p 00000000 fe:00 123 /usr/lib/x.so")
                .expect("header");
        assert!(constants.read_only_file);
        let data = Mapping::parse_header("7f50311-7f50312 rw-p 00000000 fe:00 123 /usr/lib/x.so")
            .expect("header");
        assert!(!data.read_only_file);
        let vdso = Mapping::parse_header("7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]")
            .expect("header");
        assert!(!vdso.read_only_file);
        let anonymous =
            Mapping::parse_header("7ffd1000-7ffd3000 r-xp 00000000 00:00 0").expect("header");
        assert!(!anonymous.read_only_file);
        assert_eq!(Mapping::parse_header("Rss:  4 kB"), None);
    }

    #[test]
    fn releases_this_process_code_and_keeps_it_runnable() {
        let released = release().expect("smaps");
        assert!(released.mappings >= 1, "{released:?}");
        assert!(released.resident_kib > 0, "{released:?}");
        // The code released runs again: this parses smaps once more, through the same code.
        let again = release().expect("smaps after the release");
        assert!(again.mappings >= 1, "{again:?}");
    }
}
