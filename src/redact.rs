//! Secret redaction: the set of secret values, known once the routing file has loaded, and
//! the one function every boundary where text leaves the process passes it through (the
//! log writer, error printing and the panic hook in the binary).
//!
//! What is secret (decided when the routing file loads, `config::check`):
//! - the value of every librdkafka property whose key looks secret (`config::is_secret_key`:
//!   password, secret, token, jaas, private keys);
//! - every value that came from `${ENV}` expansion inside `properties`, whatever the key
//!   (a mistyped `sasl.pasword = "${PW}"` is still a password), both the expanded value
//!   and the environment variable's own value (so a fragment echoed from inside a JAAS
//!   line is caught too).
//!
//! Values shorter than `MIN_LEN` characters are not registered: masking every `1` or `on`
//! in the output would garble offsets and counts, and such a value is no secret anyway.
//!
//! Redaction is structural first (client-creation errors never format a property value,
//! `ClusterConfig`'s Debug and `redacted_properties` mask values), and this registry is the
//! net under it: librdkafka's own log lines and error strings may quote a value in ways
//! kmirror does not control.

use std::borrow::Cow;
use std::io::Write;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not masked in free text (see the module comment).
pub const MIN_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds a secret value; from now on `redact` masks it wherever it appears.
pub fn register(value: &str) {
    if value.chars().count() < MIN_LEN {
        return;
    }
    // A JSON log line (`--log-format json`) carries the value escaped: a quote or a
    // backslash in it (a JAAS line has both) would hide it from a plain match.
    let escaped = serde_json::to_string(value).ok();
    let escaped = escaped
        .as_deref()
        .map(|q| &q[1..q.len() - 1])
        .filter(|e| *e != value);
    let mut s = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    for v in std::iter::once(value).chain(escaped) {
        if !s.iter().any(|known| known == v) {
            s.push(v.to_string());
        }
    }
    // Longest first: a JAAS line is masked whole before the password inside it.
    s.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// Whether `text` contains a registered secret.
pub fn contains_secret(text: &str) -> bool {
    let s = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    s.iter().any(|v| text.contains(v.as_str()))
}

/// `text` with every registered secret replaced by `MASK`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let s = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    if !s.iter().any(|v| text.contains(v.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for v in s.iter() {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), MASK);
        }
    }
    Cow::Owned(out)
}

/// A `tracing_subscriber` writer factory: each event is buffered whole, redacted, then
/// written to stderr (above a live progress display, `progress::write_stderr`), so a secret
/// split across `write` calls is still caught.
#[derive(Clone, Copy, Default)]
pub struct RedactingStderr;

/// One event's bytes on their way to stderr.
pub struct EventBuffer(Vec<u8>);

impl Write for EventBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuffer {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        crate::progress::write_stderr(redact(&text).as_bytes());
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = EventBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        EventBuffer(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_registered_values_longest_first() {
        register("pw-1234567");
        register("user=u password=pw-1234567;");
        register("ab"); // too short to register
        assert_eq!(
            redact("got user=u password=pw-1234567; and pw-1234567 and ab"),
            "got *** and *** and ab"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
        assert!(contains_secret("x pw-1234567"));
    }

    #[test]
    fn masks_values_escaped_in_json_log_lines() {
        let jaas = r#"PlainLoginModule required password="q\uote-pw";"#;
        register(jaas);
        let line = serde_json::json!({ "message": format!("bad config: {jaas}") }).to_string();
        assert!(!line.contains(jaas), "escaped in JSON: {line}");
        assert_eq!(redact(&line), r#"{"message":"bad config: ***"}"#);
    }
}
