//! Routing-file syntax for filters, validation, header transforms and dead-lettering, and
//! the checks that turn it into the copy path's types. A filter is a small inline table
//! with exactly one subject:
//!
//! ```toml
//! filter = { all = [
//!   { json = "$.tenant_id", equals = "acme" },
//!   { any = [ { header = "region", equals = "eu" }, { key_prefix = "vip-" } ] },
//!   { not = { timestamp_from = "2026-11-20T12:30:00Z", timestamp_to = "2026-11-20T14:00:00Z" } },
//! ] }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::diag::Diagnostics;
use super::{regex_problem, value};
use crate::copy::filter::{Filter, JsonPath};
use crate::copy::validate::Validation;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub key_equals: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub key_regex: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub json: Option<Spanned<String>>,
    pub timestamp_from: Option<Spanned<toml::Value>>,
    pub timestamp_to: Option<Spanned<toml::Value>>,
    pub all: Option<Spanned<Vec<Spanned<RawFilter>>>>,
    pub any: Option<Spanned<Vec<Spanned<RawFilter>>>>,
    pub not: Option<Box<Spanned<RawFilter>>>,
    // Predicates, for `header` and `json` subjects.
    pub present: Option<Spanned<bool>>,
    pub equals: Option<Spanned<toml::Value>>,
    pub equals_hex: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    #[serde(rename = "in")]
    pub in_: Option<Spanned<Vec<toml::Value>>>,
    pub exists: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidate {
    pub json: Option<Spanned<bool>>,
    pub schema: Option<Spanned<String>>,
    pub max_record_bytes: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    #[serde(default)]
    pub set: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub drop: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeadLetter {
    pub cluster: Spanned<String>,
    pub topic: Spanned<String>,
}

/// Headers a route adds, overwrites or removes on every copied record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderTransform {
    pub set: Vec<(String, String)>,
    pub drop: Vec<String>,
}

impl HeaderTransform {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.drop.is_empty()
    }
}

/// What happens to a record that fails validation, cannot be filtered, or that the target
/// refuses permanently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Count it, log it (once per partition with its offset), go on.
    Skip,
    /// Write it unchanged to the dead-letter topic with headers saying why and from where.
    DeadLetter,
    /// Halt that partition at the record; the others keep going.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub cluster: String,
    pub topic: String,
}

const SUBJECTS: &str =
    "key_equals, key_prefix, key_regex, header, json, timestamp_from/timestamp_to, all, any or not";

pub(super) fn check_filter(
    f: &Spanned<RawFilter>,
    key: &str,
    d: &mut Diagnostics<'_>,
) -> Option<Filter> {
    let span = f.span();
    let r = f.get_ref();
    let mut subjects = Vec::new();
    for (name, present) in [
        ("key_equals", r.key_equals.is_some()),
        ("key_prefix", r.key_prefix.is_some()),
        ("key_regex", r.key_regex.is_some()),
        ("header", r.header.is_some()),
        ("json", r.json.is_some()),
        (
            "timestamp_from/timestamp_to",
            r.timestamp_from.is_some() || r.timestamp_to.is_some(),
        ),
        ("all", r.all.is_some()),
        ("any", r.any.is_some()),
        ("not", r.not.is_some()),
    ] {
        if present {
            subjects.push(name);
        }
    }
    if subjects.len() != 1 {
        let found = if subjects.is_empty() {
            "none".to_string()
        } else {
            subjects.join(" and ")
        };
        d.push(&span, key, format!("a filter needs exactly one of {SUBJECTS}; found {found} (combine several with all = [...] or any = [...])"));
        return None;
    }
    let subject = subjects[0];
    // Predicates belong to `header` and `json` only; say so where they are misplaced.
    type Predicate<'a> = (&'a str, Option<std::ops::Range<usize>>, &'a [&'a str]);
    let predicates: [Predicate<'_>; 6] = [
        ("present", r.present.as_ref().map(|v| v.span()), &["header"]),
        (
            "equals",
            r.equals.as_ref().map(|v| v.span()),
            &["header", "json"],
        ),
        (
            "equals_hex",
            r.equals_hex.as_ref().map(|v| v.span()),
            &["header"],
        ),
        ("regex", r.regex.as_ref().map(|v| v.span()), &["header"]),
        ("in", r.in_.as_ref().map(|v| v.span()), &["json"]),
        ("exists", r.exists.as_ref().map(|v| v.span()), &["json"]),
    ];
    let mut given = Vec::new();
    for (name, sp, allowed) in &predicates {
        if let Some(sp) = sp {
            if !allowed.contains(&subject) {
                d.push(
                    sp,
                    format!("{key}.{name}"),
                    format!(
                        "`{name}` applies to {} filters, not to `{subject}`",
                        allowed.join(" and ")
                    ),
                );
                return None;
            }
            given.push(*name);
        }
    }
    if given.len() > 1 {
        d.push(
            &span,
            key,
            format!(
                "give one predicate, not {} (combine with all = [...])",
                given.join(" and ")
            ),
        );
        return None;
    }
    let regex =
        |s: &Spanned<String>, k: &str, d: &mut Diagnostics<'_>| match regex::bytes::Regex::new(
            s.get_ref(),
        ) {
            Ok(re) => Some(re),
            Err(e) => {
                let msg = regex_problem(&e);
                d.push(
                    &s.span(),
                    k,
                    format!("\"{}\" is not a valid regex: {msg}", s.get_ref()),
                );
                None
            }
        };
    match subject {
        "key_equals" => Some(Filter::KeyEquals(
            r.key_equals.as_ref()?.get_ref().as_bytes().to_vec(),
        )),
        "key_prefix" => Some(Filter::KeyPrefix(
            r.key_prefix.as_ref()?.get_ref().as_bytes().to_vec(),
        )),
        "key_regex" => {
            regex(r.key_regex.as_ref()?, &format!("{key}.key_regex"), d).map(Filter::KeyRegex)
        }
        "header" => {
            let name = r.header.as_ref()?.get_ref().as_bytes().to_vec();
            if let Some(p) = &r.present {
                Some(Filter::HeaderPresent(name, *p.get_ref()))
            } else if let Some(v) = &r.equals {
                match v.get_ref() {
                    toml::Value::String(s) => {
                        Some(Filter::HeaderEquals(name, s.as_bytes().to_vec()))
                    }
                    other => {
                        d.push(&v.span(), format!("{key}.equals"), format!("a header value is compared as a string; found a {} (quote it, or use equals_hex for bytes)", other.type_str()));
                        None
                    }
                }
            } else if let Some(h) = &r.equals_hex {
                match decode_hex(h.get_ref()) {
                    Ok(b) => Some(Filter::HeaderEquals(name, b)),
                    Err(m) => {
                        d.push(&h.span(), format!("{key}.equals_hex"), m);
                        None
                    }
                }
            } else if let Some(re) = &r.regex {
                regex(re, &format!("{key}.regex"), d).map(|re| Filter::HeaderRegex(name, re))
            } else {
                Some(Filter::HeaderPresent(name, true))
            }
        }
        "json" => {
            let p = r.json.as_ref()?;
            let path = match JsonPath::parse(p.get_ref()) {
                Ok(path) => path,
                Err(m) => {
                    d.push(&p.span(), format!("{key}.json"), m);
                    return None;
                }
            };
            if let Some(v) = &r.equals {
                Some(Filter::JsonEquals(path, to_json(v.get_ref())))
            } else if let Some(vs) = &r.in_ {
                if vs.get_ref().is_empty() {
                    d.push(
                        &vs.span(),
                        format!("{key}.in"),
                        "an empty list matches nothing",
                    );
                    return None;
                }
                Some(Filter::JsonIn(
                    path,
                    vs.get_ref().iter().map(to_json).collect(),
                ))
            } else if let Some(e) = &r.exists {
                Some(Filter::JsonExists(path, *e.get_ref()))
            } else {
                d.push(
                    &span,
                    key,
                    format!(
                        "json = \"{}\" needs a predicate: equals, in or exists",
                        p.get_ref()
                    ),
                );
                None
            }
        }
        "timestamp_from/timestamp_to" => {
            let ts = |v: &Option<Spanned<toml::Value>>,
                      k: &str,
                      d: &mut Diagnostics<'_>|
             -> Result<Option<i64>, ()> {
                let Some(v) = v else { return Ok(None) };
                let text = match v.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Datetime(dt) => dt.to_string(),
                    other => {
                        d.push(
                            &v.span(),
                            format!("{key}.{k}"),
                            format!(
                                "expected an RFC 3339 timestamp, found a {}",
                                other.type_str()
                            ),
                        );
                        return Err(());
                    }
                };
                value::parse_timestamp_ms(&text)
                    .map(Some)
                    .map_err(|m| d.push(&v.span(), format!("{key}.{k}"), m))
            };
            let from = ts(&r.timestamp_from, "timestamp_from", d).ok()?;
            let to = ts(&r.timestamp_to, "timestamp_to", d).ok()?;
            if let (Some(a), Some(b)) = (from, to) {
                if b <= a {
                    let sp = r.timestamp_to.as_ref().map(|v| v.span()).unwrap_or(span);
                    d.push(
                        &sp,
                        format!("{key}.timestamp_to"),
                        format!(
                            "{} is not after timestamp_from {}: the window is empty",
                            value::format_ms(b),
                            value::format_ms(a)
                        ),
                    );
                    return None;
                }
            }
            Some(Filter::Timestamp { from, to })
        }
        "all" | "any" => {
            let list = if subject == "all" {
                r.all.as_ref()?
            } else {
                r.any.as_ref()?
            };
            if list.get_ref().is_empty() {
                d.push(
                    &list.span(),
                    format!("{key}.{subject}"),
                    "an empty list is refused (it would match everything or nothing)",
                );
                return None;
            }
            let before = d.items.len();
            let items: Vec<Filter> = list
                .get_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, f)| check_filter(f, &format!("{key}.{subject}[{i}]"), d))
                .collect();
            if d.items.len() > before {
                return None;
            }
            Some(if subject == "all" {
                Filter::All(items)
            } else {
                Filter::Any(items)
            })
        }
        "not" => check_filter(r.not.as_ref()?, &format!("{key}.not"), d)
            .map(|f| Filter::Not(Box::new(f))),
        _ => None,
    }
}

fn to_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => serde_json::Value::from(s.as_str()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::from(*b),
        toml::Value::Datetime(dt) => serde_json::Value::from(dt.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    if t.len() % 2 != 0 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "\"{s}\" is not hex bytes (an even number of 0-9a-f digits)"
        ));
    }
    Ok((0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&t[i..i + 2], 16).expect("checked hex"))
        .collect())
}

pub(super) fn check_validate(
    v: &RawValidate,
    key: &str,
    base_dir: &Path,
    d: &mut Diagnostics<'_>,
) -> Validation {
    let mut out = Validation {
        json: v.json.as_ref().is_some_and(|b| *b.get_ref()),
        ..Default::default()
    };
    if let Some(m) = &v.max_record_bytes {
        match value::parse_size(m.get_ref()) {
            Ok(n) => out.max_record_bytes = Some(n),
            Err(msg) => d.push(
                &m.span(),
                format!("{key}.max_record_bytes"),
                format!("{msg}: must be a size greater than zero"),
            ),
        }
    }
    if let Some(s) = &v.schema {
        let path = base_dir.join(s.get_ref());
        let k = format!("{key}.schema");
        match std::fs::read_to_string(&path) {
            Err(e) => d.push(
                &s.span(),
                k,
                format!("cannot read JSON Schema {}: {e}", path.display()),
            ),
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Err(e) => d.push(&s.span(), k, format!("{} is not JSON: {e}", path.display())),
                Ok(doc) => match jsonschema::validator_for(&doc) {
                    Err(e) => d.push(
                        &s.span(),
                        k,
                        format!("{} is not a valid JSON Schema: {e}", path.display()),
                    ),
                    Ok(val) => out.schema = Some((s.get_ref().clone(), Arc::new(val))),
                },
            },
        }
    }
    out
}

pub(super) fn check_headers(h: &RawHeaders, key: &str, d: &mut Diagnostics<'_>) -> HeaderTransform {
    let mut out = HeaderTransform::default();
    for (k, v) in &h.set {
        if k.get_ref().starts_with("kmirror.") {
            d.push(&k.span(), format!("{key}.set"), format!("\"{}\": headers named kmirror.* are reserved for provenance and dead-letter metadata", k.get_ref()));
        } else if k.get_ref().is_empty() {
            d.push(
                &k.span(),
                format!("{key}.set"),
                "a header name must not be empty",
            );
        } else {
            out.set.push((k.get_ref().clone(), v.get_ref().clone()));
        }
    }
    for n in &h.drop {
        if n.get_ref().is_empty() {
            d.push(
                &n.span(),
                format!("{key}.drop"),
                "a header name must not be empty",
            );
        } else if out.set.iter().any(|(k, _)| k == n.get_ref()) {
            d.push(
                &n.span(),
                format!("{key}.drop"),
                format!("\"{}\" is both set and dropped", n.get_ref()),
            );
        } else {
            out.drop.push(n.get_ref().clone());
        }
    }
    out
}
