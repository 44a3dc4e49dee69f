//! Ollama's timestamps (`created_at`, `modified_at`, `expires_at`): RFC 3339 in UTC with
//! nanoseconds, as Go's `time.Time` marshals them. Written here from the days-to-civil
//! algorithm (Howard Hinnant's) rather than pulling a date crate in for three fields.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as `2026-12-06T07:01:02.123456789Z` (times before 1970 print as the epoch).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Seconds since the epoch, as a file's modification time is kept.
pub fn rfc3339_secs(secs: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Year, month, day of `days` since 1970-01-01 (proleptic Gregorian).
fn civil(days: u64) -> (u64, u64, u64) {
    // Shifted so that eras of 400 years start on 0000-03-01, which puts the leap day last.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_ones() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (a leap day of a century leap year) and 2026-12-06 07:01:02.
        assert_eq!(rfc3339_secs(951_782_400), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(1_796_540_462, 5)),
            "2026-12-06T07:01:02.000000005Z"
        );
        assert_eq!(
            rfc3339_secs(4_107_542_400),
            "2100-03-01T00:00:00.000000000Z"
        );
    }
}
