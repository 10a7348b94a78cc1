//! Human-friendly counts: `300M`, `1.3G`, `2.5k`, `300e6`, `1_000_000`.

use crate::SpaceError;

/// Parses a non-negative count with an optional SI suffix (`k`, `M`, `G`, `T`; case of `k`
/// and `m` is accepted either way, `m` meaning mega since milli makes no sense here).
/// Fractions are allowed when the result is a whole number (`1.3G`), underscores are ignored.
///
/// # Errors
/// [`SpaceError::ParseCount`] for empty text, a non-number, or a negative, non-finite, too
/// large or fractional count.
pub fn parse_count(text: &str) -> Result<u64, SpaceError> {
    let err = |message: &str| SpaceError::ParseCount { text: text.to_string(), message: message.to_string() };
    let cleaned: String = text.trim().chars().filter(|c| *c != '_').collect();
    if cleaned.is_empty() {
        return Err(err("empty"));
    }
    let (number, scale) = match cleaned.chars().last() {
        Some('k' | 'K') => (&cleaned[..cleaned.len() - 1], 1e3),
        Some('m' | 'M') => (&cleaned[..cleaned.len() - 1], 1e6),
        Some('g' | 'G') => (&cleaned[..cleaned.len() - 1], 1e9),
        Some('t' | 'T') => (&cleaned[..cleaned.len() - 1], 1e12),
        _ => (cleaned.as_str(), 1.0),
    };
    if scale == 1.0 && !number.contains(['.', 'e', 'E']) {
        return number.parse::<u64>().map_err(|_| err("expected a whole number such as 300M, 1.3G or 300000000"));
    }
    let value: f64 = number.parse().map_err(|_| err("expected a number such as 300M, 1.3G or 300000000"))?;
    let value = value * scale;
    if !value.is_finite() || value < 0.0 {
        return Err(err("must be a finite, non-negative number"));
    }
    if value > u64::MAX as f64 {
        return Err(err("too large"));
    }
    let rounded = value.round();
    if (value - rounded).abs() > 1e-6 * value.max(1.0) {
        return Err(err("is not a whole number"));
    }
    Ok(rounded as u64)
}

/// Formats a count with an SI suffix and two decimals (`288.08M`); below 1000 as is.
pub fn format_count(n: u64) -> String {
    let v = n as f64;
    if v >= 1e12 {
        format!("{:.2}T", v / 1e12)
    } else if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2}k", v / 1e3)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_and_plain_numbers() {
        assert_eq!(parse_count("300M").unwrap(), 300_000_000);
        assert_eq!(parse_count("1.3G").unwrap(), 1_300_000_000);
        assert_eq!(parse_count("2.5k").unwrap(), 2_500);
        assert_eq!(parse_count("300e6").unwrap(), 300_000_000);
        assert_eq!(parse_count("1_000").unwrap(), 1_000);
        assert_eq!(parse_count(" 42 ").unwrap(), 42);
        assert_eq!(parse_count("18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "M", "abc", "-3M", "1.5", "3X", "1e400", "nan"] {
            assert!(parse_count(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_count(288_082_368), "288.08M");
        assert_eq!(format_count(1_269_181_536), "1.27G");
        assert_eq!(format_count(999), "999");
    }
}
