//! FHIR date, dateTime and instant values as time ranges, and the HTTP date format.
//!
//! A partial date is a range (`2026-11` is the whole month), which is what search and
//! `_since`/`_at` need: every value becomes `[low, high)` in UTC.

use chrono::{
    DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc,
};

/// A half-open interval of instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub low: DateTime<Utc>,
    pub high: DateTime<Utc>,
}

/// Parses a FHIR `date`, `dateTime` or `instant` (any precision) into the range it
/// covers. A time without a zone is taken as UTC. `None` when it is not one.
pub fn parse_range(text: &str) -> Option<Range> {
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut fields = date_part.split('-');
    let year: i32 = fields.next()?.parse().ok()?;
    if date_part.len() < 4 || !date_part.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let month: Option<u32> = fields.next().map(str::parse).transpose().ok()?;
    let day: Option<u32> = fields.next().map(str::parse).transpose().ok()?;
    if fields.next().is_some() {
        return None;
    }
    let utc = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default());
    match (month, day, time_part) {
        (None, None, None) => {
            let low = NaiveDate::from_ymd_opt(year, 1, 1)?;
            let high = NaiveDate::from_ymd_opt(year + 1, 1, 1)?;
            Some(Range {
                low: utc(low),
                high: utc(high),
            })
        }
        (Some(m), None, None) => {
            let low = NaiveDate::from_ymd_opt(year, m, 1)?;
            let high = if m == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, m + 1, 1)?
            };
            Some(Range {
                low: utc(low),
                high: utc(high),
            })
        }
        (Some(m), Some(d), None) => {
            let low = NaiveDate::from_ymd_opt(year, m, d)?;
            Some(Range {
                low: utc(low),
                high: utc(low + Duration::days(1)),
            })
        }
        (Some(_), Some(_), Some(time)) => time_range(date_part, time),
        _ => None,
    }
}

/// A dateTime with a time: precise to the digits given (seconds, or the fraction).
fn time_range(date_part: &str, time: &str) -> Option<Range> {
    let zone_at = time.find(['Z', '+', '-']).unwrap_or(time.len());
    let (clock, zone) = time.split_at(zone_at);
    let fraction_digits = clock.split_once('.').map_or(0, |(_, f)| f.len());
    let naive =
        NaiveDateTime::parse_from_str(&format!("{date_part}T{clock}"), "%Y-%m-%dT%H:%M:%S%.f")
            .ok()?;
    let offset = match zone {
        "" | "Z" => FixedOffset::east_opt(0)?,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (h, m) = z[1..].split_once(':')?;
            let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
            FixedOffset::east_opt(sign * secs)?
        }
    };
    let low = offset
        .from_local_datetime(&naive)
        .single()?
        .with_timezone(&Utc);
    // Precision beyond microseconds is beyond what PostgreSQL keeps.
    let step = match fraction_digits {
        0 => Duration::seconds(1),
        1 => Duration::milliseconds(100),
        2 => Duration::milliseconds(10),
        3 => Duration::milliseconds(1),
        4 => Duration::microseconds(100),
        5 => Duration::microseconds(10),
        _ => Duration::microseconds(1),
    };
    Some(Range {
        low,
        high: low + step,
    })
}

/// True when the date part of a date/dateTime/instant names a real calendar day.
pub fn is_valid_calendar_date(text: &str) -> bool {
    let date_part = text.split('T').next().unwrap_or(text);
    let fields: Vec<&str> = date_part.split('-').collect();
    match fields.as_slice() {
        [y, m, d] => match (y.parse(), m.parse(), d.parse()) {
            (Ok(y), Ok(m), Ok(d)) => NaiveDate::from_ymd_opt(y, m, d).is_some(),
            _ => false,
        },
        _ => true,
    }
}

/// The server's `meta.lastUpdated` form: UTC with microseconds.
pub fn format_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// RFC 7231 HTTP-date, for `Last-Modified`.
pub fn format_http_date(t: DateTime<Utc>) -> String {
    httpdate::fmt_http_date(t.into())
}

/// Parses an HTTP-date in any of RFC 7231's three forms (IMF-fixdate, RFC 850,
/// asctime), for `If-Modified-Since`.
pub fn parse_http_date(text: &str) -> Option<DateTime<Utc>> {
    httpdate::parse_http_date(text.trim())
        .ok()
        .map(DateTime::<Utc>::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    #[test]
    fn partial_dates_are_ranges() {
        let y = parse_range("2026").expect("year");
        assert_eq!(
            (y.low, y.high),
            (at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        let m = parse_range("2024-02").expect("month");
        assert_eq!(m.high, at("2024-03-01T00:00:00Z"));
        let d = parse_range("2024-12-31").expect("day");
        assert_eq!(d.high, at("2025-01-01T00:00:00Z"));
    }

    #[test]
    fn times_with_zones_and_fractions() {
        let r = parse_range("2026-11-25T10:00:00+01:00").expect("dt");
        assert_eq!(r.low, at("2026-11-25T09:00:00Z"));
        assert_eq!(r.high, at("2026-11-25T09:00:01Z"));
        let f = parse_range("2026-11-25T10:00:00.123Z").expect("fraction");
        assert_eq!(f.high - f.low, Duration::milliseconds(1));
        let local = parse_range("2026-11-25T10:00:00").expect("no zone");
        assert_eq!(local.low, at("2026-11-25T10:00:00Z"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "20",
            "2026-13",
            "2026-02-30",
            "yesterday",
            "2026-01-01T25:00:00Z",
            "2026-1-1x",
        ] {
            assert!(parse_range(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn http_dates_round_trip() {
        let t = at("2026-11-25T16:21:56Z");
        let s = format_http_date(t);
        assert_eq!(s, "Wed, 25 Nov 2026 16:21:56 GMT");
        assert_eq!(parse_http_date(&s), Some(t));
        assert_eq!(
            parse_http_date("Wednesday, 25-Nov-26 16:21:56 GMT"),
            Some(t)
        );
        assert_eq!(parse_http_date("Wed Nov 25 16:21:56 2026"), Some(t));
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(format_instant(t), "2026-11-25T16:21:56.000000+00:00");
    }
}
