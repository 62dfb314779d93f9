//! The times log lines show: RFC 3339 in UTC, Twisted's access-log time, and local time with
//! a `strftime` pattern (Python's `asctime`).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn utc_parts(time: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    (
        year,
        month,
        day,
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros(),
    )
}

/// `2025-01-30T12:34:56.123456Z`.
pub fn write_rfc3339(time: SystemTime, out: &mut String) {
    let (y, mo, d, h, mi, s, micros) = utc_parts(time);
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micros:06}Z"
    );
}

/// Twisted's access-log time: `[30/Jan/2025:12:34:56 +0000]`. The text is cached per thread
/// for the current second.
pub fn write_access_time(time: SystemTime, out: &mut impl std::fmt::Write) -> std::fmt::Result {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            let (y, mo, d, h, mi, s, _) = utc_parts(time);
            let month = MONTHS[(mo as usize).saturating_sub(1) % 12];
            last.1.clear();
            write!(
                last.1,
                "[{d:02}/{month}/{y:04}:{h:02}:{mi:02}:{s:02} +0000]"
            )?;
            last.0 = secs;
        }
        out.write_str(&last.1)
    })
}

/// Local time of `secs` with `strftime` pattern `datefmt` (Python's default without one).
/// The text is cached per thread for the current second.
pub(super) fn local_time(secs: u64, datefmt: Option<&std::ffi::CStr>, out: &mut String) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, Option<std::ffi::CString>, String)> =
            const { std::cell::RefCell::new((u64::MAX, None, String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs || last.1.as_deref() != datefmt {
            let text = crate::sys::strftime_local(secs, datefmt.unwrap_or(c"%Y-%m-%d %H:%M:%S"));
            *last = (secs, datefmt.map(std::ffi::CStr::to_owned), text);
        }
        out.push_str(&last.2);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn access_time_is_twisteds() {
        let mut text = String::new();
        write_access_time(UNIX_EPOCH + Duration::from_secs(1_391_035_850), &mut text).unwrap();
        assert_eq!(text, "[29/Jan/2014:22:50:50 +0000]");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
