//! Value parsers shared by every command line (the daemon's, the simulator's, the experiments'):
//! a leaf module, so a subsystem that declares its own clap arguments needs nothing from
//! [`crate::cli`].

/// Parses a human duration such as `500ms`, `5s` or `2m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 500ms, 5s, 2m)"))
}

/// Parses a positive integer (`--concurrency`): `0` and negative values are refused with a
/// message that says so, instead of clap's "unexpected argument" for `-1`.
pub fn parse_positive_u32(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 1 => {
            u32::try_from(n).map_err(|_| format!("{s:?} is too large (at most {})", u32::MAX))
        }
        Ok(_) => Err(format!("{s:?} must be positive (at least 1)")),
        Err(_) => Err(format!("{s:?} is not a whole number (must be positive)")),
    }
}

/// Parses a positive, finite number (`--rate`).
pub fn parse_positive_f64(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err(format!(
            "{s:?} must be positive (greater than 0) and finite"
        )),
        Err(_) => Err(format!("{s:?} is not a number (must be positive)")),
    }
}
