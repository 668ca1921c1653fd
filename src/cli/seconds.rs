//! Flags that take a number of seconds: a positive, finite number up to a week, read into a `Duration` by clap
//! (so `--heartbeat-timeout 1e20` or `--duration nan` is a usage error naming the flag, never a panic).

use std::time::Duration;

/// The longest duration a flag takes: a week.
pub const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// clap's parser of a seconds flag.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.trim().parse().map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!("{text} seconds is not in (0, {MAX_SECONDS}] (a week)"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text} seconds: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_positive_finite_and_at_most_a_week() {
        assert_eq!(parse_seconds("300").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_seconds("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_seconds("604800").unwrap(), Duration::from_secs(604_800));
        for bad in ["1e20", "604801", "0", "-1", "nan", "inf", "soon", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
