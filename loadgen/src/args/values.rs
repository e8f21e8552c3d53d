//! Parsing one flag's value, with a message that says what was expected:
//! rates (k and M suffixes), durations (ms, s, m), the sweep's step factor
//! and percentages.

use std::time::Duration;

/// Highest offered rate accepted (requests per second).
pub const MAX_RATE: f64 = 100e6;

/// Parses `--rate`: like [`parse_rate`], but 0 is allowed (checked
/// against `--junk` later).
pub fn parse_rate_or_zero(text: &str) -> Result<f64, String> {
    if text.trim().parse::<f64>() == Ok(0.0) {
        return Ok(0.0);
    }
    parse_rate(text).map_err(|e| {
        if e.contains("more than 0") {
            format!("{e} (or exactly 0 with --junk)")
        } else {
            e
        }
    })
}

/// Parses a rate: a positive number with an optional k or M suffix.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (num, scale) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a rate (requests per second, e.g. 20000 or 20k)"))?;
    let v = v * scale;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!(
            "the rate must be more than 0 requests per second, not `{text}`"
        ));
    }
    if v > MAX_RATE {
        return Err(format!(
            "`{text}` is above the limit of {MAX_RATE:.0} requests per second"
        ));
    }
    Ok(v)
}

/// Parses a duration: seconds, or a number with ms, s or m.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_secs(text, 86_400.0)
}

pub(super) fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_secs(text, 3600.0)?;
    if d < Duration::from_millis(10) {
        return Err(format!("`{text}`: the interval must be at least 10 ms"));
    }
    Ok(d)
}

pub(super) fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_secs(text, 60.0)
}

fn parse_secs(text: &str, max_s: f64) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (seconds, or e.g. 500ms, 10s, 2m)"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs < 0.001 {
        return Err(format!("`{text}`: the duration must be at least 1 ms"));
    }
    if secs > max_s {
        return Err(format!("`{text}`: at most {max_s} s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) fn parse_factor(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !(1.05..=4.0).contains(&v) {
        return Err(format!(
            "`{text}`: the step factor must be between 1.05 and 4"
        ));
    }
    Ok(v)
}

pub(super) fn parse_percent(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage"))?;
    if !(v > 0.0 && v < 100.0) {
        return Err(format!("`{text}`: must be above 0 and below 100 percent"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_accept_suffixes_and_refuse_zero() {
        assert_eq!(parse_rate("20k"), Ok(20_000.0));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000.0));
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert!(parse_rate("0").unwrap_err().contains("more than 0"));
        assert!(parse_rate("-5").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("1e12").is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_timeout("61").is_err());
    }
}
