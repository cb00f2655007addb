//! Byte sizes a person types: `4.7G`, `700MB`, `4GiB`, `65536`.
//!
//! One convention for every flag that takes a size: `K`/`M`/`G`/`T` and `KB`/`MB`/`GB`/`TB`
//! are decimal (SI: `4.7G` is 4,700,000,000 bytes, as disc and stick makers count),
//! `KiB`/`MiB`/`GiB`/`TiB` are binary (IEC: `4GiB` is 4,294,967,296 bytes), a bare number or
//! `B` is bytes. Units are case-insensitive, a decimal fraction is allowed with a unit and
//! rounds down to whole bytes. Named sizes (`fat32`, `dvd`, …) are the caller's.

/// Why a size was refused; the text is quoted escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error(
        "invalid size {text:?}: expected a number with an optional unit, e.g. 4.7G, 700MiB or 65536"
    )]
    NotANumber { text: String },
    #[error(
        "invalid size {text:?}: unknown unit {unit:?} (K, M, G, T or KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers of 1024; none or B is bytes)"
    )]
    UnknownUnit { text: String, unit: String },
    #[error("invalid size {text:?}: a fraction of a byte (give a unit, or whole bytes)")]
    FractionOfByte { text: String },
    #[error("invalid size {text:?}: larger than {max} bytes", max = u64::MAX)]
    TooLarge { text: String },
}

/// The multiplier of `unit` (already trimmed), or `None` if it is not one.
fn unit_multiplier(unit: &str) -> Option<u64> {
    let m = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return None,
    };
    Some(m)
}

/// Parses `text` as a number of bytes (see the module documentation).
///
/// # Errors
/// [`SizeError`] naming the text and what is wrong with it.
pub fn parse_bytes(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(end);
    let not_a_number = || SizeError::NotANumber {
        text: text.to_string(),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // "4.", ".5" and "1.2.3" are typing mistakes, not sizes.
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unit_is_letters = unit.trim().bytes().all(|b| b.is_ascii_alphabetic());
    if !all_digits(whole) || (number.contains('.') && !all_digits(fraction)) || !unit_is_letters {
        return Err(not_a_number());
    }
    let multiplier = unit_multiplier(unit.trim()).ok_or_else(|| SizeError::UnknownUnit {
        text: text.to_string(),
        unit: unit.trim().to_string(),
    })?;
    let too_large = || SizeError::TooLarge {
        text: text.to_string(),
    };
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole
        .checked_mul(u128::from(multiplier))
        .ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // Beyond 30 digits nothing below a byte is left to count, and 10^30 fits u128.
        let digits = &fraction[..fraction.len().min(30)];
        let numerator: u128 = digits.parse().map_err(|_| not_a_number())?;
        let denominator = 10u128.pow(digits.len() as u32);
        let part = numerator * u128::from(multiplier);
        if multiplier == 1 && numerator != 0 {
            return Err(SizeError::FractionOfByte {
                text: text.to_string(),
            });
        }
        bytes += part / denominator;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// `n` bytes as a person reads them, in the one style of every message and report:
/// `512 B`, `1.5 KiB`, `730.2 MiB` (powers of 1024, one decimal).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_units_are_powers_of_1000() {
        assert_eq!(parse_bytes("4.7G"), Ok(4_700_000_000));
        assert_eq!(parse_bytes("4.7GB"), Ok(4_700_000_000));
        assert_eq!(parse_bytes("700M"), Ok(700_000_000));
        assert_eq!(parse_bytes("700mb"), Ok(700_000_000));
        assert_eq!(parse_bytes("64K"), Ok(64_000));
        assert_eq!(parse_bytes("1kB"), Ok(1_000));
        assert_eq!(parse_bytes("2T"), Ok(2_000_000_000_000));
        assert_eq!(parse_bytes("1.5TB"), Ok(1_500_000_000_000));
    }

    #[test]
    fn binary_units_are_powers_of_1024() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("4gib"), Ok(4 << 30));
        assert_eq!(parse_bytes("700MiB"), Ok(700 << 20));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        // A fraction rounds down to whole bytes.
        assert_eq!(parse_bytes("0.3KiB"), Ok(307));
        assert_eq!(parse_bytes("4.5 GiB"), Ok(9 << 29));
    }

    #[test]
    fn bare_numbers_are_bytes() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes(" 65536B "), Ok(65536));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1.0"), Ok(1));
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn mistakes_are_refused_naming_the_text() {
        for bad in ["", "G", ".5G", "4.G", "1.2.3G", "-1G", "4,7G", "x"] {
            let err = parse_bytes(bad).unwrap_err();
            assert!(
                matches!(err, SizeError::NotANumber { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let err = parse_bytes("4X").unwrap_err();
        assert_eq!(
            err,
            SizeError::UnknownUnit {
                text: "4X".into(),
                unit: "X".into()
            }
        );
        assert!(err.to_string().contains("KiB"), "{err}");
        assert!(matches!(
            parse_bytes("4 GiBs"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_bytes("1.5"),
            Err(SizeError::FractionOfByte { .. })
        ));
        assert!(matches!(
            parse_bytes("18446744073709551616"),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_bytes("20000000T"),
            Err(SizeError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_bytes("99999999999999999999999999999999999999999T"),
            Err(SizeError::TooLarge { .. })
        ));
    }
}
