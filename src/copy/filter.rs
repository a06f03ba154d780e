//! Filter: which records a route copies. Predicates on the key, headers, JSON payload fields
//! and timestamp, combined with all / any / not. A filtered-out record is settled at once
//! (it still advances the checkpoint) and counted as filtered.
//!
//! A JSON predicate on a payload that is not JSON cannot be answered: that is reported as
//! `Invalid`, and the route's `on_error` action handles the record. Filtering it out would
//! silently drop a record that may well belong to the tenant being migrated.
//!
//! JSON predicates do not parse the payload into a DOM: `json_scan` validates it in one pass
//! and finds the bytes of the one value on the path; only that value is compared. The
//! decisions are those of a full `serde_json` parse plus `JsonPath::lookup` (the
//! differential test in this module holds the two evaluators to the same answers).

#[cfg(test)]
mod differential;
mod json_scan;

use std::cell::{Cell, OnceCell};

use regex::bytes::Regex;
use serde_json::Value;

use super::record::RawHeader;

/// A step in a JSON field path: `$.meta.region`, `items[0].sku`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    pub text: String,
    pub steps: Vec<PathStep>,
}

impl JsonPath {
    /// Parses `$.a.b[2].c` (the `$.` is optional).
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let body = text.strip_prefix('$').unwrap_or(text);
        let body = body.strip_prefix('.').unwrap_or(body);
        if body.is_empty() {
            return Err(format!(
                "\"{text}\" names no field (expected e.g. \"$.tenant_id\" or \"meta.region\")"
            ));
        }
        let mut steps = Vec::new();
        for part in body.split('.') {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if name.is_empty() && steps.is_empty() && rest.is_empty() {
                return Err(format!("\"{text}\": empty field name"));
            }
            if !name.is_empty() {
                steps.push(PathStep::Field(name.to_string()));
            } else if rest.is_empty() {
                return Err(format!("\"{text}\": empty field name (two dots in a row?)"));
            }
            while !rest.is_empty() {
                let close = rest
                    .find(']')
                    .ok_or_else(|| format!("\"{text}\": unclosed `[`"))?;
                let idx: usize = rest[1..close].parse().map_err(|_| {
                    format!("\"{text}\": `{}` is not an array index", &rest[..=close])
                })?;
                steps.push(PathStep::Index(idx));
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(format!("\"{text}\": unexpected `{rest}` after an index"));
                }
            }
        }
        Ok(JsonPath {
            text: text.to_string(),
            steps,
        })
    }

    /// The value at this path in a parsed document (serde_json's semantics: an index on an
    /// object, a field on an array or a step into a scalar finds nothing).
    pub fn lookup<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        let mut cur = v;
        for s in &self.steps {
            cur = match s {
                PathStep::Field(f) => cur.get(f)?,
                PathStep::Index(i) => cur.get(*i)?,
            };
        }
        Some(cur)
    }
}

#[derive(Debug, Clone)]
pub enum Filter {
    KeyEquals(Vec<u8>),
    KeyPrefix(Vec<u8>),
    KeyRegex(Regex),
    /// Header present (true) or absent (false).
    HeaderPresent(Vec<u8>, bool),
    HeaderEquals(Vec<u8>, Vec<u8>),
    HeaderRegex(Vec<u8>, Regex),
    JsonEquals(JsonPath, Value),
    JsonIn(JsonPath, Vec<Value>),
    JsonExists(JsonPath, bool),
    /// Record timestamp in [from, to) (ms since the epoch).
    Timestamp {
        from: Option<i64>,
        to: Option<i64>,
    },
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
}

/// What a route decides about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Drop,
    /// The filter could not be evaluated (e.g. a JSON predicate on a non-JSON payload).
    Invalid(String),
}

/// A record as filters and validation see it; the payload is parsed as JSON at most once,
/// however many routes and predicates ask. JSON predicates scan the payload instead of
/// parsing it, unless a parse already happened (validation, or an invalid payload whose
/// error message came from the parser).
pub struct RecordView<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub timestamp: Option<i64>,
    pub headers: Vec<RawHeader<'a>>,
    json: OnceCell<Result<Value, String>>,
    /// JSON predicates answered by a full scan so far (see `SCANS_BEFORE_INDEX`).
    scans: Cell<u8>,
    /// The top-level members, once built (`None` inside: not an object or not JSON).
    members: OnceCell<Option<json_scan::Members>>,
}

/// A scan costs about a quarter of a full parse on a small record, but each JSON predicate
/// scans the whole payload again, where a parse used to be shared by all. One view serves
/// every route on a topic, so a fan-out of tenant routes asks one record many times: after
/// this many scans the record's top-level members are indexed once (one more scan) and each
/// further predicate looks its first step up there and scans only that value.
const SCANS_BEFORE_INDEX: u8 = 2;

impl<'a> RecordView<'a> {
    pub fn new(
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
        timestamp: Option<i64>,
        headers: Vec<RawHeader<'a>>,
    ) -> Self {
        RecordView {
            key,
            payload,
            timestamp,
            headers,
            json: OnceCell::new(),
            scans: Cell::new(0),
            members: OnceCell::new(),
        }
    }

    /// The payload parsed as JSON; `Ok(None)` for a null payload (tombstone).
    pub fn json(&self) -> Result<Option<&Value>, &str> {
        let Some(p) = self.payload else {
            return Ok(None);
        };
        match self.json.get_or_init(|| {
            serde_json::from_slice(p).map_err(|e| format!("payload is not valid JSON: {e}"))
        }) {
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(e.as_str()),
        }
    }

    fn header_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = Option<&'a [u8]>> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| h.value)
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Filter {
    pub fn evaluate(&self, r: &RecordView<'_>) -> Outcome {
        match self.eval(r) {
            Ok(true) => Outcome::Pass,
            Ok(false) => Outcome::Drop,
            Err(e) => Outcome::Invalid(e),
        }
    }

    fn eval(&self, r: &RecordView<'_>) -> Result<bool, String> {
        Ok(match self {
            Filter::KeyEquals(k) => r.key == Some(k.as_slice()),
            Filter::KeyPrefix(p) => r.key.is_some_and(|k| k.starts_with(p)),
            Filter::KeyRegex(re) => r.key.is_some_and(|k| re.is_match(k)),
            Filter::HeaderPresent(n, want) => r.header_values(n).next().is_some() == *want,
            Filter::HeaderEquals(n, v) => r.header_values(n).any(|x| x == Some(v.as_slice())),
            Filter::HeaderRegex(n, re) => r
                .header_values(n)
                .any(|x| x.is_some_and(|x| re.is_match(x))),
            Filter::JsonEquals(p, v) => json_matches(r, p, std::slice::from_ref(v))?,
            Filter::JsonIn(p, vs) => json_matches(r, p, vs)?,
            Filter::JsonExists(p, want) => json_field(r, p)?.exists() == *want,
            Filter::Timestamp { from, to } => match r.timestamp {
                None => false,
                Some(ts) => from.is_none_or(|f| ts >= f) && to.is_none_or(|t| ts < t),
            },
            Filter::All(fs) => {
                for f in fs {
                    if !f.eval(r)? {
                        return Ok(false);
                    }
                }
                true
            }
            Filter::Any(fs) => {
                for f in fs {
                    if f.eval(r)? {
                        return Ok(true);
                    }
                }
                false
            }
            Filter::Not(f) => !f.eval(r)?,
        })
    }
}

/// What a route does with a record, decided in one place for the copy path and `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Copy,
    Filtered,
    /// Cannot be filtered, or fails validation: the route's `on_error` handles it.
    Poison(String),
}

/// The value a JSON path leads to, as found by a scan (its raw bytes) or in a parsed
/// document.
enum Field<'r> {
    Missing,
    Raw(&'r [u8]),
    Parsed(&'r Value),
}

impl Field<'_> {
    fn exists(&self) -> bool {
        !matches!(self, Field::Missing)
    }

    /// Whether the value equals any of `targets` (`json_eq`: numbers compare as f64); `None`
    /// if scanned bytes do not parse, which the scan's validation rules out.
    fn matches(&self, targets: &[Value]) -> Option<bool> {
        Some(match self {
            Field::Missing => false,
            Field::Parsed(x) => targets.iter().any(|t| json_eq(x, t)),
            Field::Raw(raw) => {
                // The common case, a plain string against string targets: bytes compare.
                if let Some(s) = json_scan::plain_str(raw) {
                    return Some(
                        targets
                            .iter()
                            .any(|t| matches!(t, Value::String(t) if t.as_bytes() == s)),
                    );
                }
                // Anything else (numbers, escapes, containers) is parsed on its own bytes,
                // which the scan validated, so that equality is serde_json's exactly.
                let x = serde_json::from_slice::<Value>(raw).ok()?;
                targets.iter().any(|t| json_eq(&x, t))
            }
        })
    }
}

/// `equals` / `in`: the scanned value compared, or (should the scan ever return bytes that
/// do not parse) the parsed document's, so a scanner defect cannot change a decision.
fn json_matches(r: &RecordView<'_>, p: &JsonPath, targets: &[Value]) -> Result<bool, String> {
    match json_field(r, p)?.matches(targets) {
        Some(m) => Ok(m),
        None => {
            debug_assert!(false, "json_scan returned unparsable bytes for {}", p.text);
            // A defect, not a record's fault: said once per process, the decision still right.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    path = %p.text,
                    "JSON filter scan disagreed with the parser; deciding by a full parse (please report)"
                )
            });
            Ok(parsed_field(r, p)?.matches(targets).unwrap_or(false))
        }
    }
}

fn json_field<'r>(r: &'r RecordView<'_>, p: &JsonPath) -> Result<Field<'r>, String> {
    let Some(payload) = r.payload else {
        return Ok(Field::Missing);
    };
    // Parsed already (by validation, or to word an error): the document answers.
    if r.json.get().is_none() {
        let found = if r.scans.get() < SCANS_BEFORE_INDEX {
            r.scans.set(r.scans.get() + 1);
            json_scan::find(payload, &p.steps)
        } else {
            match r
                .members
                .get_or_init(|| json_scan::members(payload).ok().flatten())
            {
                Some(members) => json_scan::find_in_members(payload, members, &p.steps),
                None => json_scan::find(payload, &p.steps),
            }
        };
        match found {
            Ok(Some(range)) => return Ok(Field::Raw(&payload[range])),
            Ok(None) => return Ok(Field::Missing),
            // Not JSON: the parser says why, in the words the route's errors have always had.
            Err(json_scan::NotJson) => {}
        }
    }
    parsed_field(r, p)
}

fn parsed_field<'r>(r: &'r RecordView<'_>, p: &JsonPath) -> Result<Field<'r>, String> {
    match r.json() {
        Ok(Some(v)) => Ok(p.lookup(v).map_or(Field::Missing, Field::Parsed)),
        Ok(None) => Ok(Field::Missing),
        Err(e) => Err(format!("cannot evaluate {}: {e}", p.text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        key: &'a [u8],
        payload: &'a [u8],
        ts: i64,
        headers: Vec<RawHeader<'a>>,
    ) -> RecordView<'a> {
        RecordView::new(Some(key), Some(payload), Some(ts), headers)
    }

    #[test]
    fn json_paths() {
        let p = JsonPath::parse("$.items[1].sku").unwrap();
        assert_eq!(
            p.steps,
            vec![
                PathStep::Field("items".into()),
                PathStep::Index(1),
                PathStep::Field("sku".into())
            ]
        );
        let v: Value = serde_json::from_str(r#"{"items":[{"sku":"a"},{"sku":"b"}]}"#).unwrap();
        assert_eq!(p.lookup(&v), Some(&Value::from("b")));
        assert!(JsonPath::parse("$.").is_err());
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[x]").is_err());
    }

    #[test]
    fn combinations() {
        let h = vec![RawHeader {
            name: b"region",
            value: Some(b"eu"),
        }];
        let r = view(b"customer-7", br#"{"tenant_id":"acme","n":3}"#, 1000, h);
        let acme = Filter::JsonEquals(JsonPath::parse("tenant_id").unwrap(), Value::from("acme"));
        let eu = Filter::HeaderEquals(b"region".to_vec(), b"eu".to_vec());
        let n3 = Filter::JsonIn(
            JsonPath::parse("$.n").unwrap(),
            vec![Value::from(3.0), Value::from(9)],
        );
        assert_eq!(
            Filter::All(vec![acme.clone(), eu.clone(), n3]).evaluate(&r),
            Outcome::Pass
        );
        assert_eq!(
            Filter::Not(Box::new(acme.clone())).evaluate(&r),
            Outcome::Drop
        );
        assert_eq!(
            Filter::Any(vec![
                Filter::KeyPrefix(b"x".to_vec()),
                Filter::Timestamp {
                    from: Some(1000),
                    to: Some(1001)
                }
            ])
            .evaluate(&r),
            Outcome::Pass
        );
        assert_eq!(
            Filter::Timestamp {
                from: None,
                to: Some(1000)
            }
            .evaluate(&r),
            Outcome::Drop
        );
        let bad = view(b"k", b"{not json", 0, vec![]);
        assert!(matches!(acme.evaluate(&bad), Outcome::Invalid(m) if m.contains("not valid JSON")));
        let tomb = RecordView::new(Some(b"k"), None, None, vec![]);
        assert_eq!(
            acme.evaluate(&tomb),
            Outcome::Drop,
            "a tombstone has no fields"
        );
    }
}
