//! RFC 3339 timestamps of the admin API (jiff).

/// `2026-11-27T01:51:41.123Z` for milliseconds since the Unix epoch.
pub fn rfc3339(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        // Outside jiff's range (years -9999..9999): never a real timestamp of doze's.
        Err(_) => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_744_301_123), "2026-11-27T01:51:41.123Z");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }
}
