//! Durations as people write them: `90s`, `30m`, `2h`, `1d`, or a bare number of seconds;
//! `0` means never (for an idle timeout).
//!
//! Owns: parsing such text into whole seconds ([`parse_duration_secs`]) and writing seconds
//! back in the largest unit that is exact ([`format_duration_secs`]).
//!
//! Must not: know what the duration is for beyond the field name it reports in an error.

use crate::InvalidInput;

/// The longest duration accepted: a year (anything longer is a typo, not an idle timeout).
pub const MAX_DURATION_SECS: u64 = 366 * 24 * 3600;

/// Parses `90s`, `30m`, `2h`, `1d` or `45` (seconds) into seconds. `field` names the input in
/// the error.
pub fn parse_duration_secs(field: &'static str, text: &str) -> Result<u64, InvalidInput> {
    let t = text.trim();
    let bad = || {
        InvalidInput::new(
            field,
            format!(
                "{field} {text:?} is not a duration: write a whole number with a unit, e.g. \
                 90s, 30m, 2h or 1d (0 means never)"
            ),
        )
    };
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(factor).ok_or_else(bad)?;
    if secs > MAX_DURATION_SECS {
        return Err(InvalidInput::new(
            field,
            format!("{field} {text:?} is longer than a year; use 0 for never"),
        ));
    }
    Ok(secs)
}

/// `secs` in the largest exact unit: `90s`, `30m`, `2h`, `1d`; `0` stays `0`.
pub fn format_duration_secs(secs: u64) -> String {
    match secs {
        0 => "0".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_people_write_them() {
        for (text, want) in [
            ("0", Some(0)),
            ("90s", Some(90)),
            ("30m", Some(1800)),
            ("2h", Some(7200)),
            ("1d", Some(86_400)),
            ("45", Some(45)),
            (" 5m ", Some(300)),
            ("", None),
            ("m", None),
            ("5 m", None),
            ("1.5h", None),
            ("-1s", None),
            ("10w", None),
            ("30M", None),
            ("400d", None),
            ("99999999999999999999s", None),
        ] {
            assert_eq!(
                parse_duration_secs("idle_timeout", text).ok(),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_refusal_says_how_to_write_one() {
        let e = parse_duration_secs("idle_timeout", "soon").unwrap_err();
        assert_eq!(e.field, "idle_timeout");
        assert!(e.message.contains("30m"), "{}", e.message);
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        for (secs, want) in [
            (0, "0"),
            (90, "90s"),
            (1800, "30m"),
            (7200, "2h"),
            (86_400, "1d"),
            (3601, "3601s"),
        ] {
            assert_eq!(format_duration_secs(secs), want);
            if secs > 0 {
                assert_eq!(parse_duration_secs("x", want).unwrap(), secs);
            }
        }
    }
}
