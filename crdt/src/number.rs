//! Number parsing and formatting with Redis's rules.
//!
//! Whether a register holds a number decides how a merged key reads, so every
//! node must judge it identically: these functions are the one definition.

/// Parses a Redis integer: optional `-`, no `+`, no spaces, no leading zeros
/// (`"0"` itself excepted), within i64. Mirrors Redis's `string2ll`.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] => return (!neg).then_some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    if digits.len() > 19 {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        if magnitude <= i64::MAX as u64 + 1 {
            Some((magnitude as i64).wrapping_neg())
        } else {
            None
        }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Parses a Redis float: a finite decimal number with no surrounding spaces.
pub fn parse_float(s: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(s).ok()?;
    let first = *s.first()?;
    let last = *s.last()?;
    if first.is_ascii_whitespace() || last.is_ascii_whitespace() {
        return None;
    }
    // Rust accepts "inf", "nan" and "infinity"; Redis values never hold them.
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    let v: f64 = text.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Parses a sorted-set score as Redis's `strtod` check does: any float,
/// `inf`, `+inf`, `-inf` (any case, `infinity` too), never NaN, no spaces.
pub fn parse_score(s: &[u8]) -> Option<f64> {
    if let Some(v) = parse_float(s) {
        return Some(v);
    }
    let text = std::str::from_utf8(s).ok()?;
    let unsigned = text.trim_start_matches(['+', '-']);
    if text.len() - unsigned.len() > 1
        || !(unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity"))
    {
        return None;
    }
    Some(if text.starts_with('-') {
        f64::NEG_INFINITY
    } else {
        f64::INFINITY
    })
}

/// Formats a score as Redis's `%.17g` lays it out (an exponent with a
/// sign and two digits at least, below 1e-4 or from 1e17 on; `inf`,
/// `-inf`, `-0`), with the shortest digits that read back to the same
/// double (as Redis 7.2; 7.0 printed 17 significant digits, `0.1` as
/// `0.10000000000000001`). `nan` only for the case docs/crdt-semantics.md
/// describes.
pub fn format_score(v: f64) -> String {
    if v.is_nan() {
        return "nan".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..17).contains(&exp) {
        format!("{v}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

/// Formats a float the way a user reads it: shortest round-trip digits, no
/// exponent, integral values without a fraction, and no negative zero.
pub fn format_float(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_parse_as_redis_and_print_shortest() {
        assert_eq!(parse_score(b"1.5"), Some(1.5));
        assert_eq!(parse_score(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_score(b"+INF"), Some(f64::INFINITY));
        assert_eq!(parse_score(b"infinity"), Some(f64::INFINITY));
        for bad in [&b"nan"[..], b"", b" 1", b"--inf", b"1x", b"inf "] {
            assert_eq!(parse_score(bad), None, "{bad:?}");
        }
        assert_eq!(format_score(3.0), "3");
        assert_eq!(format_score(0.1), "0.1");
        assert_eq!(format_score(-0.0), "-0");
        assert_eq!(format_score(f64::INFINITY), "inf");
        assert_eq!(format_score(1e300), "1e+300");
        assert_eq!(format_score(-1.5e-7), "-1.5e-07");
        assert_eq!(format_score(5e-5), "5e-05");
        assert_eq!(format_score(0.0001), "0.0001");
        assert_eq!(format_score(1e16), "10000000000000000");
        assert_eq!(format_score(1.25e17), "1.25e+17");
        assert_eq!(parse_score(format_score(1e-300).as_bytes()), Some(1e-300));
    }

    #[test]
    fn ints_follow_redis_string2ll() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0",
            b"1.0",
            b"9223372036854775808",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn floats_reject_spaces_and_non_finite() {
        assert_eq!(parse_float(b"10.5"), Some(10.5));
        assert_eq!(parse_float(b"-1e3"), Some(-1000.0));
        assert_eq!(parse_float(b"5"), Some(5.0));
        for bad in [&b""[..], b" 1", b"1 ", b"inf", b"nan", b"abc", b"1e999"] {
            assert_eq!(parse_float(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn float_format_is_plain() {
        assert_eq!(format_float(10.5), "10.5");
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(-0.0), "0");
        assert_eq!(format_float(1e20), "100000000000000000000");
    }
}
