//! RFC 3339 timestamps of the admin API (jiff).

/// `2026-11-27T01:51:41.123Z` for milliseconds since the Unix epoch.
pub fn rfc3339(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        // Outside jiff's range (years -9999..9999): never a real timestamp of doze's.
        Err(_) => ms.to_string(),
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp (`2026-11-01T00:00:00Z`) or of a
/// date (`2026-11-01`, midnight UTC), as the usage API takes them.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    text.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp().as_millisecond())
        .ok_or_else(|| {
            format!("{text:?} is not a time: give RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamps_and_dates() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000));
        assert_eq!(
            parse_time("2026-11-27T01:51:41.123Z"),
            Ok(1_795_744_301_123)
        );
        assert_eq!(
            parse_time("2026-11-27T02:51:41.123+01:00"),
            Ok(1_795_744_301_123)
        );
        assert_eq!(parse_time("1970-01-02"), Ok(86_400_000));
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_744_301_123), "2026-11-27T01:51:41.123Z");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }
}
