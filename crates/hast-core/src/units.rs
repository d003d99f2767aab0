//! Sizes as people write them (`-e 2M`, `-m 1G`) and as hastctl prints them.

use thiserror::Error;

/// A size argument that is not a number with an optional k/M/G/T/P/E suffix.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid size '{0}': expected a number with an optional k, M, G, T, P or E suffix")]
pub struct SizeError(pub String);

/// Parses `expand_number(3)` style sizes: digits, then an optional suffix that multiplies
/// by a power of 1024 (case-insensitive, an optional trailing `B`/`iB` is accepted).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let err = || SizeError(text.to_string());
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return Err(err());
    }
    let number: u64 = text[..digits_end].parse().map_err(|_| err())?;
    let suffix = text[digits_end..].to_ascii_lowercase();
    let suffix = suffix
        .strip_suffix("ib")
        .or_else(|| suffix.strip_suffix('b'))
        .unwrap_or(&suffix);
    let shift = match suffix {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        "e" => 60,
        _ => return Err(err()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Formats a byte count the way FreeBSD's `humanize_number(…, HN_AUTOSCALE, HN_B |
/// HN_NOSPACE | HN_DECIMAL)` does in hastctl: at most three digits, one decimal below 10,
/// powers of 1024: `512B`, `2.0M`, `64M`, `1.0G`.
pub fn humanize(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];
    let mut value = bytes as f64;
    let mut unit = 0;
    // Scale while the rounded value would need a fourth digit.
    while unit + 1 < UNITS.len() && value.round() >= 1000.0 {
        value /= 1024.0;
        unit += 1;
    }
    if unit > 0 && value < 9.95 {
        format!("{value:.1}{}", UNITS[unit])
    } else {
        format!("{:.0}{}", value, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("3k"), Ok(3072));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "",
            "M",
            "-1",
            "1.5M",
            "1X",
            "99999999999999999999",
            "16E",
            "1 M",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn humanize_matches_freebsd_style() {
        assert_eq!(humanize(0), "0B");
        assert_eq!(humanize(512), "512B");
        assert_eq!(humanize(999), "999B");
        assert_eq!(humanize(1000), "1.0K");
        assert_eq!(humanize(2 << 20), "2.0M");
        assert_eq!(humanize(64 << 20), "64M");
        assert_eq!(humanize(1 << 30), "1.0G");
        assert_eq!(humanize((1 << 30) - 69632), "1.0G");
        assert_eq!(humanize(1 << 40), "1.0T");
    }
}
