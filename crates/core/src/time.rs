//! RFC 3339 text for [`UnixTime`]: the one time format of every text and JSON output.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::class::{Classify, ErrorClass};
use crate::record::UnixTime;

/// Days from 1970-01-01 to the civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // In range by construction: 1..=31 and 1..=12.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// Latest second written as a four-digit year: 9999-12-31T23:59:59Z.
const MAX_SECS: u64 = 253_402_300_799;

impl UnixTime {
    /// The time of a system clock reading (before 1970 reads as 1970).
    pub fn from_system(t: SystemTime) -> UnixTime {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        UnixTime {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }
}

/// `2026-12-06T10:55:01Z`, with nine fraction digits when `nanos` is not zero.
impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.secs.min(MAX_SECS);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )?;
        if self.nanos != 0 {
            write!(f, ".{:09}", self.nanos)?;
        }
        f.write_str("Z")
    }
}

/// Why a text is not an RFC 3339 UTC time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time {text:?}: expected RFC 3339 in UTC, such as 2026-12-06T10:55:01Z")]
pub struct TimeError {
    pub text: String,
}

impl Classify for TimeError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Input
    }
}

/// Accepts `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`, the forms [`fmt::Display`] writes and
/// their UTC equivalents; offsets other than zero are refused.
impl FromStr for UnixTime {
    type Err = TimeError;

    fn from_str(text: &str) -> Result<UnixTime, TimeError> {
        parse(text).ok_or_else(|| TimeError {
            text: text.chars().take(64).collect(),
        })
    }
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse(text: &str) -> Option<UnixTime> {
    let b = text.as_bytes();
    if b.len() < 20 || b.len() > 40 || !text.is_ascii() {
        return None;
    }
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && (sep(10, b'T') || sep(10, b't')) && sep(13, b':'))
        || !sep(16, b':')
    {
        return None;
    }
    let (y, mo, d) = (num(&text[0..4])?, num(&text[5..7])?, num(&text[8..10])?);
    let (h, mi, s) = (
        num(&text[11..13])?,
        num(&text[14..16])?,
        num(&text[17..19])?,
    );
    let rest = &text[19..];
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    if rest.starts_with('.') && (frac.is_empty() || frac.len() > 9) {
        return None;
    }
    if !matches!(zone, "Z" | "z" | "+00:00") {
        return None;
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let max_day = *month_days.get(usize::try_from(mo).ok()?.checked_sub(1)?)?;
    if y < 1970 || d == 0 || d > max_day || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::from(y), mo, d)).ok()?;
    let secs = days * 86_400 + u64::from(h) * 3600 + u64::from(mi) * 60 + u64::from(s);
    let nanos = if frac.is_empty() {
        0
    } else {
        num(frac)? * 10u32.pow(9 - u32::try_from(frac.len()).ok()?)
    };
    Some(UnixTime { secs, nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64, nanos: u32) -> UnixTime {
        UnixTime { secs, nanos }
    }

    #[test]
    fn known_instants() {
        assert_eq!(t(0, 0).to_string(), "1970-01-01T00:00:00Z");
        // `date -u -d @1796554501 +%FT%TZ`
        assert_eq!(t(1_796_554_501, 0).to_string(), "2026-12-06T10:55:01Z");
        assert_eq!(
            t(951_782_400, 5).to_string(),
            "2000-02-29T00:00:00.000000005Z"
        );
        assert_eq!(t(u64::MAX, 0).to_string(), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn parse_round_trips() {
        for (secs, nanos) in [
            (0, 0),
            (1_796_554_501, 0),
            (951_782_400, 5),
            (MAX_SECS, 999_999_999),
        ] {
            let x = t(secs, nanos);
            assert_eq!(x.to_string().parse::<UnixTime>(), Ok(x));
        }
        assert_eq!(
            "2026-12-06T10:55:01.5+00:00".parse(),
            Ok(t(1_796_554_501, 500_000_000))
        );
    }

    #[test]
    fn parse_refuses() {
        for bad in [
            "",
            "2026-12-06",
            "2026-12-06T10:55:01",
            "2026-12-06T10:55:01+01:00",
            "2026-02-30T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-12-06T24:00:00Z",
            "2026-12-06T10:55:01.Z",
            "2026-12-06T10:55:01.1234567890Z",
            "+026-12-06T10:55:01Z",
        ] {
            assert!(bad.parse::<UnixTime>().is_err(), "{bad}");
        }
    }
}
