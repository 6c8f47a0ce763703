//! Calendar dates as compact day numbers.
//!
//! Every date in the domain is a Japanese calendar day written `YYYYMMDD`.
//! [`Date`] stores it as the number of days since 1970-01-01 in an `i32`,
//! which is what the snapshot stores too: comparisons are integer
//! comparisons and no time-zone arithmetic happens after parsing.

use std::fmt;
use std::str::FromStr;

/// A calendar day (proleptic Gregorian), as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date(i32);

/// Seconds Japan time is ahead of UTC (JST has no daylight saving).
const JST_OFFSET_SECS: i64 = 9 * 3600;

/// Now, in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, Unix microseconds.
pub fn unix_now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A moment given in Unix nanoseconds, as ISO 8601 (RFC 3339) in Japan
/// time, the domain's time zone: `2026-12-05T10:55:03.25+09:00` (whole
/// seconds without a fraction). Empty for a moment `time` cannot hold.
pub fn iso_jst_nanos(unix_nanos: i128) -> String {
    let offset =
        time::UtcOffset::from_whole_seconds(JST_OFFSET_SECS as i32).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_nanos)
        .ok()
        .and_then(|t| {
            t.to_offset(offset)
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Unix seconds as ISO 8601 in Japan time: `2026-12-05T10:55:03+09:00`.
pub fn iso_jst(unix_secs: u64) -> String {
    iso_jst_nanos(i128::from(unix_secs) * 1_000_000_000)
}

/// The earliest and latest years a [`Date`] accepts.
const MIN_YEAR: i32 = 1800;
const MAX_YEAR: i32 = 2999;
/// Day numbers of the first and last accepted days.
const MIN_DAY: i32 = days_from_civil(MIN_YEAR, 1, 1);
const MAX_DAY: i32 = days_from_civil(MAX_YEAR, 12, 31);

/// Why a `YYYYMMDD` string is not a date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    /// Not exactly eight ASCII digits.
    #[error("expected 8 digits YYYYMMDD")]
    Format,
    /// Eight digits, but no such day (month 13, 30 February, year 0950, ...).
    #[error("no such calendar day (years {MIN_YEAR}-{MAX_YEAR})")]
    NoSuchDay,
}

impl Date {
    /// Builds a date from its parts, or `None` if there is no such day.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(MIN_YEAR..=MAX_YEAR).contains(&year) || !(1..=12).contains(&month) {
            return None;
        }
        if day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Date(days_from_civil(year, month, day)))
    }

    /// The date from its day number, if it lies in the accepted years
    /// (any `i32`: snapshot bytes are not trusted to hold a real day).
    pub fn from_day_number(days: i32) -> Option<Date> {
        (MIN_DAY..=MAX_DAY).contains(&days).then_some(Date(days))
    }

    /// Days since 1970-01-01.
    pub fn day_number(self) -> i32 {
        self.0
    }

    /// Year, month (1-12) and day (1-31).
    pub fn ymd(self) -> (i32, u32, u32) {
        civil_from_days(self.0)
    }

    /// Today in Japan time (UTC+9).
    pub fn today_jst() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Date(((secs + JST_OFFSET_SECS).div_euclid(86_400)) as i32)
    }

    /// This date plus (or minus) a number of days, clamped to the valid range.
    pub fn add_days(self, days: i32) -> Date {
        let d = self.0.saturating_add(days);
        Date::from_day_number(d).unwrap_or(self)
    }

    /// The date `years` years later on the same month and day (29 February
    /// becomes 28 February in a common year).
    pub fn add_years(self, years: i32) -> Date {
        let (y, m, d) = self.ymd();
        let y = (y + years).clamp(MIN_YEAR, MAX_YEAR);
        let d = d.min(days_in_month(y, m));
        Date(days_from_civil(y, m, d))
    }

    /// Whole years from `birth` to `self` (age on this date).
    pub fn years_since(self, birth: Date) -> i32 {
        let (y1, m1, d1) = birth.ymd();
        let (y2, m2, d2) = self.ymd();
        let mut age = y2 - y1;
        if (m2, d2) < (m1, d1) {
            age -= 1;
        }
        age
    }
}

impl FromStr for Date {
    type Err = DateError;

    fn from_str(s: &str) -> Result<Date, DateError> {
        let b = s.as_bytes();
        if b.len() != 8 || !b.iter().all(u8::is_ascii_digit) {
            return Err(DateError::Format);
        }
        let num = |r: std::ops::Range<usize>| {
            b[r].iter()
                .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'))
        };
        Date::from_ymd(num(0..4) as i32, num(4..6), num(6..8)).ok_or(DateError::NoSuchDay)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}{m:02}{d:02}")
    }
}

impl serde::Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's `days_from_civil` / `civil_from_days`.
const fn days_from_civil(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400) as u32;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i32 - 719_468
}

fn civil_from_days(z: i32) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u32;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i32 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_read_in_japan_time() {
        assert_eq!(iso_jst(0), "1970-01-01T09:00:00+09:00");
        // 2026-12-04T15:30:00Z is past midnight in Tokyo.
        assert_eq!(iso_jst(1_796_398_200), "2026-12-05T00:30:00+09:00");
        assert_eq!(
            iso_jst_nanos(1_796_398_200_250_000_000),
            "2026-12-05T00:30:00.25+09:00"
        );
        assert_eq!(iso_jst_nanos(i128::MAX), "");
    }

    /// Found by the `snapshot` fuzz target: a day number near `i32::MAX`
    /// in a (resealed) snapshot overflowed the calendar arithmetic.
    #[test]
    fn any_day_number_is_a_date_or_none() {
        for n in [
            i32::MIN,
            i32::MIN + 1,
            -1_000_000,
            MIN_DAY - 1,
            MAX_DAY + 1,
            1_000_000,
            i32::MAX - 719_467,
            i32::MAX,
        ] {
            assert_eq!(Date::from_day_number(n), None, "{n}");
        }
        for n in [MIN_DAY, 0, 20_000, MAX_DAY] {
            let d = Date::from_day_number(n).unwrap();
            let (y, m, day) = d.ymd();
            assert_eq!(Date::from_ymd(y, m, day), Some(d), "{n}");
        }
        assert_eq!(
            Date::from_day_number(MIN_DAY).unwrap().ymd(),
            (MIN_YEAR, 1, 1)
        );
        assert_eq!(
            Date::from_day_number(MAX_DAY).unwrap().ymd(),
            (MAX_YEAR, 12, 31)
        );
    }

    #[test]
    fn parses_and_formats() {
        for (text, days) in [
            ("19700101", 0),
            ("19691231", -1),
            ("20000229", 11_016),
            ("20241202", 20_059),
        ] {
            let d: Date = text.parse().unwrap();
            assert_eq!(d.day_number(), days, "{text}");
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_dates() {
        for (text, err) in [
            ("2024123", DateError::Format),
            ("2024-12-0", DateError::Format),
            ("２０２４１２０２", DateError::Format),
            ("20230229", DateError::NoSuchDay),
            ("20241301", DateError::NoSuchDay),
            ("20240431", DateError::NoSuchDay),
            ("20240100", DateError::NoSuchDay),
            ("17991231", DateError::NoSuchDay),
        ] {
            assert_eq!(text.parse::<Date>(), Err(err), "{text}");
        }
    }

    #[test]
    fn round_trips_every_day_of_four_centuries() {
        let start = Date::from_ymd(1900, 1, 1).unwrap().day_number();
        for n in start..start + 146_097 {
            let (y, m, d) = civil_from_days(n);
            assert_eq!(days_from_civil(y, m, d), n);
        }
    }

    #[test]
    fn age_counts_whole_years() {
        let birth: Date = "19800615".parse().unwrap();
        assert_eq!("20100614".parse::<Date>().unwrap().years_since(birth), 29);
        assert_eq!("20100615".parse::<Date>().unwrap().years_since(birth), 30);
    }
}
