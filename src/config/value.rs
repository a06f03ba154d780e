//! Parsers for the value syntaxes the routing file accepts: sizes (`"64MiB"`), durations
//! (`"2h"`), timestamps (RFC 3339) and `${ENV}` interpolation. Each returns a message that
//! states the rule, so the caller only adds the position and key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Expands `${NAME}` from the environment; `$$` is a literal `$`.
pub fn interpolate_env(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    interpolate_env_parts(input, lookup).map(|(s, _)| s)
}

/// As `interpolate_env`, also returning the environment values it substituted (they are
/// treated as secrets when they land in librdkafka properties).
pub fn interpolate_env_parts(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), String> {
    let mut used = Vec::new();
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated `${` (write `$$` for a literal `$`)".to_string())?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable reference"
                ));
            }
            match lookup(name) {
                Some(v) => {
                    out.push_str(&v);
                    used.push(v);
                }
                None => {
                    return Err(format!(
                        "environment variable `{name}` is not set (referenced as `${{{name}}}`)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok((out, used))
}

/// Parses a byte size: an integer, or a string such as `"512KiB"`, `"64MiB"`, `"1GB"`.
pub fn parse_size(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(i) if *i > 0 => Ok(*i as u64),
        toml::Value::Integer(i) => Err(format!("{i} must be greater than zero")),
        toml::Value::String(s) => parse_size_str(s),
        other => Err(format!(
            "expected a size (integer bytes or a string like \"64MiB\"), found {}",
            other.type_str()
        )),
    }
}

pub fn parse_size_str(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| {
        format!("\"{s}\" is not a size (expected e.g. \"64MiB\", \"512KiB\", 1048576)")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "\"{s}\": unknown size unit \"{u}\" (use B, KB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    let bytes = (num * mult as f64).round();
    if bytes < 1.0 {
        return Err(format!("\"{s}\" must be greater than zero"));
    }
    Ok(bytes as u64)
}

/// Parses a duration such as `"30s"`, `"2h"`, `"1h30m"`, `"500ms"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "\"{s}\" is not a duration ({e}; expected e.g. \"500ms\", \"30s\", \"2h\", \"1h30m\")"
        )
    })
}

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch.
pub fn parse_timestamp_ms(s: &str) -> Result<i64, String> {
    if let Some((local, offset_min)) = split_utc_offset(s.trim()) {
        // Valid RFC 3339, but humantime cannot parse offsets: say what the rule is (and what
        // the UTC spelling would be) instead of calling the timestamp malformed.
        let utc = humantime::parse_rfc3339_weak(local)
            .ok()
            .map(|t| format_ms(system_time_ms(t) - offset_min * 60_000))
            .map(|u| format!("; in UTC this is \"{u}\""))
            .unwrap_or_default();
        return Err(format!(
            "\"{s}\": timestamps must be in UTC and end with `Z`, not carry an offset (e.g. \"2026-11-20T12:30:00Z\"{utc})"
        ));
    }
    let t = humantime::parse_rfc3339_weak(s.trim()).map_err(|e| {
        format!(
            "\"{s}\" is not an RFC 3339 timestamp ({e}; expected e.g. \"2026-11-20T12:30:00Z\")"
        )
    })?;
    if !s.trim().ends_with('Z') && !s.trim().ends_with('z') {
        // humantime accepts only UTC; an offset or a local time would be misread silently.
        return Err(format!(
            "\"{s}\": timestamps must be in UTC and end with `Z` (e.g. \"2026-11-20T12:30:00Z\")"
        ));
    }
    Ok(system_time_ms(t))
}

/// Splits `2026-01-01T00:00:00+02:00` into the local part and the offset in minutes.
fn split_utc_offset(t: &str) -> Option<(&str, i64)> {
    let b = t.as_bytes();
    if b.len() < 25 || !t.is_char_boundary(b.len() - 6) {
        return None;
    }
    let (local, off) = t.split_at(t.len() - 6);
    let ob = off.as_bytes();
    let sign = match ob[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = |r: &[u8]| r.iter().all(u8::is_ascii_digit);
    if ob[3] != b':' || !digits(&ob[1..3]) || !digits(&ob[4..6]) || !local.contains(['T', 't', ' '])
    {
        return None;
    }
    let h: i64 = off[1..3].parse().ok()?;
    let m: i64 = off[4..6].parse().ok()?;
    Some((local, sign * (h * 60 + m)))
}

pub fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

pub fn now_ms() -> i64 {
    system_time_ms(SystemTime::now())
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn format_ms(ms: i64) -> String {
    if ms < 0 {
        return format!("{ms}ms");
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_interpolation() {
        let lookup = |k: &str| (k == "PW").then(|| "s3cret".to_string());
        assert_eq!(interpolate_env("a${PW}b", &lookup).unwrap(), "as3cretb");
        assert_eq!(interpolate_env("cost $$5", &lookup).unwrap(), "cost $5");
        assert_eq!(interpolate_env("plain $x", &lookup).unwrap(), "plain $x");
        let err = interpolate_env("${MISSING}", &lookup).unwrap_err();
        assert!(err.contains("`MISSING` is not set"), "{err}");
        assert!(interpolate_env("${PW", &lookup)
            .unwrap_err()
            .contains("unterminated"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_str("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size_str("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size_str("10MB").unwrap(), 10_000_000);
        assert!(parse_size_str("10 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size(&toml::Value::Integer(0)).is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp_ms("1970-01-01T00:00:01Z").unwrap(), 1000);
        let e = parse_timestamp_ms("2026-01-01T00:00:00+02:00").unwrap_err();
        assert!(e.contains("must be in UTC"), "{e}");
        assert!(e.contains("2025-12-31T22:00:00.000Z"), "{e}");
        assert!(parse_timestamp_ms("yesterday").is_err());
        assert_eq!(format_ms(1500), "1970-01-01T00:00:01.500Z");
    }
}
