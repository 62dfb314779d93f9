//! The `process_*` series every Prometheus client library exports (Sygnal's dashboard graphs
//! CPU, memory and open file descriptors from them), read from /proc when /metrics is scraped:
//! nothing is counted on the request path.
//!
//! Names, types and help texts follow the Python client's process collector, which Sygnal uses.

use std::fmt::Write;

/// A snapshot of this process, as far as /proc tells it (Linux only: elsewhere, nothing).
#[derive(Debug, Default, PartialEq)]
struct Snapshot {
    cpu_seconds: Option<f64>,
    virtual_bytes: Option<f64>,
    resident_bytes: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

/// Appends the process series to a Prometheus text exposition.
pub fn render(out: &mut String) {
    let snapshot = read();
    let series = [
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
            snapshot.virtual_bytes,
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            snapshot.resident_bytes,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            snapshot.start_time_seconds,
        ),
        (
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            snapshot.cpu_seconds,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            snapshot.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            snapshot.max_fds,
        ),
    ];
    for (name, help, kind, value) in series {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value:?}\n"
            );
        }
    }
}

fn read() -> Snapshot {
    let ticks = clock_ticks_per_second();
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let stat = stat.as_deref().and_then(parse_stat);
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| parse_boot_time(&text));
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Snapshot {
        cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / ticks),
        virtual_bytes: stat.map(|s| s.vsize as f64),
        resident_bytes: status_kib(&status, "VmRSS:").map(|kib| kib * 1024.0),
        start_time_seconds: stat
            .zip(boot_time)
            .map(|(s, boot)| boot as f64 + s.starttime as f64 / ticks),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as f64),
        max_fds: std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| parse_max_fds(&text)),
    }
}

/// The fields of /proc/self/stat this module uses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

/// Parses /proc/<pid>/stat. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from its closing parenthesis.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Fields after the name, numbered as in proc(5): state is field 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
    })
}

fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

fn status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit on open files, from /proc/self/limits (`unlimited` is reported as such by
/// no client: it is left out).
fn parse_max_fds(limits: &str) -> Option<f64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_an_awkward_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss ...
        let text = "4242 (sy gn) al) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 12345 987654321 2000 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 250,
                stime: 50,
                starttime: 12345,
                vsize: 987654321
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_limits_status_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            status_kib("Name:\tsygnal\nVmRSS:\t   12345 kB\n", "VmRSS:"),
            Some(12345.0)
        );
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_is_described() {
        let snapshot = read();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = snapshot.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
        assert!(snapshot.resident_bytes.unwrap() > 1_000_000.0);
        assert!(snapshot.virtual_bytes.unwrap() >= snapshot.resident_bytes.unwrap());
        assert!(snapshot.open_fds.unwrap() >= 3.0);
        assert!(snapshot.max_fds.unwrap() >= snapshot.open_fds.unwrap());
        assert!(snapshot.cpu_seconds.unwrap() >= 0.0);
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                out.contains(&format!("\n{name} ")),
                "{name} missing:\n{out}"
            );
        }
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"));
    }
}
