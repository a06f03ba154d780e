//! The shape of the routing file, checked before serde sees it: every unknown key (with a
//! "did you mean"), every value of the wrong type and every missing required key, each with
//! its key path (`routes[0].provenance`) and position, all in one report in file order.
//! serde's own errors stop at the first problem and carry no key path.
//!
//! The schema below mirrors `raw.rs` and `filter.rs`'s `Raw*` structures; a file that
//! passes here but not serde still gets serde's message (nothing is lost if they drift),
//! and `schema_accepts_every_shipped_example` in the tests keeps them in step.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diag::Diagnostics;

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Str,
    Int,
    /// A size, rate or position: a string or an integer.
    StrOrInt,
    /// Anything (checked later, in stage two).
    Any,
    StrList,
    AnyList,
    Table(&'static [Field]),
    TableList(&'static [Field]),
    /// A table of named tables (`[clusters.NAME]`).
    Named(&'static [Field]),
    /// A table of strings (`headers.set`).
    StrMap,
    /// A table of scalars (`properties`): their types are checked in stage two.
    AnyMap,
    Filter,
    FilterList,
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const DEAD_LETTER: &[Field] = &[req("cluster", Kind::Str), req("topic", Kind::Str)];

const TOP: &[Field] = &[
    opt(
        "checkpoints",
        Kind::Table(&[
            opt("dir", Kind::Str),
            opt("interval", Kind::Str),
            opt("job", Kind::Str),
            opt("max_unwritten", Kind::Str),
            opt("store", Kind::Str),
            opt("topic", Kind::Str),
            opt("cluster", Kind::Str),
        ]),
    ),
    opt(
        "limits",
        Kind::Table(&[
            opt("max_messages_per_sec", Kind::Int),
            opt("max_bytes_per_sec", Kind::StrOrInt),
            opt("max_in_flight_bytes", Kind::StrOrInt),
            opt("max_in_flight_bytes_per_partition", Kind::StrOrInt),
        ]),
    ),
    opt(
        "run",
        Kind::Table(&[
            opt("connect_timeout", Kind::Str),
            opt("shutdown_timeout", Kind::Str),
            opt("stall_timeout", Kind::Str),
            opt("metadata_refresh", Kind::Str),
        ]),
    ),
    opt(
        "http",
        Kind::Table(&[
            opt("listen", Kind::Str),
            opt("stalled_not_ready", Kind::Bool),
        ]),
    ),
    opt("verify", Kind::Table(&[opt("interval", Kind::Str)])),
    opt(
        "group",
        Kind::Table(&[
            opt("id", Kind::Str),
            opt("instance_id", Kind::Str),
            opt("session_timeout", Kind::Str),
        ]),
    ),
    opt(
        "delivery",
        Kind::Table(&[
            opt("guarantee", Kind::Str),
            opt("commit_interval", Kind::Str),
            opt("max_records_per_transaction", Kind::Int),
        ]),
    ),
    opt("create_target_topics", Kind::Bool),
    opt("dead_letter", Kind::Table(DEAD_LETTER)),
    opt(
        "clusters",
        Kind::Named(&[
            opt("bootstrap", Kind::Str),
            opt("archive", Kind::Str),
            opt("properties", Kind::AnyMap),
        ]),
    ),
    opt("routes", Kind::TableList(ROUTE)),
    opt(
        "files",
        Kind::Named(&[
            req("path", Kind::Str),
            opt("format", Kind::Str),
            opt("topic", Kind::Str),
            opt("rejects", Kind::Str),
            opt(
                "fields",
                Kind::Table(&[
                    opt("key", Kind::Str),
                    opt("value", Kind::Str),
                    opt("headers", Kind::Str),
                    opt("timestamp", Kind::Str),
                    opt("partition", Kind::Str),
                ]),
            ),
        ]),
    ),
];

const ROUTE: &[Field] = &[
    req("name", Kind::Str),
    req("source", Kind::Str),
    opt("topics", Kind::StrList),
    opt("topic_regex", Kind::Str),
    req("target", Kind::Str),
    opt("target_topic", Kind::Str),
    opt("partitioning", Kind::Str),
    opt("start", Kind::Any),
    opt("end", Kind::Any),
    opt("max_messages_per_sec", Kind::Int),
    opt("max_bytes_per_sec", Kind::StrOrInt),
    opt("on_offset_out_of_range", Kind::Str),
    opt("create_target_topics", Kind::Bool),
    opt("provenance", Kind::Bool),
    opt("filter", Kind::Filter),
    opt(
        "validate",
        Kind::Table(&[
            opt("json", Kind::Bool),
            opt("schema", Kind::Str),
            opt("max_record_bytes", Kind::StrOrInt),
        ]),
    ),
    opt(
        "headers",
        Kind::Table(&[opt("set", Kind::StrMap), opt("drop", Kind::StrList)]),
    ),
    opt("on_error", Kind::Str),
    opt("dead_letter", Kind::Table(DEAD_LETTER)),
];

const FILTER: &[Field] = &[
    opt("key_equals", Kind::Str),
    opt("key_prefix", Kind::Str),
    opt("key_regex", Kind::Str),
    opt("header", Kind::Str),
    opt("json", Kind::Str),
    opt("timestamp_from", Kind::Any),
    opt("timestamp_to", Kind::Any),
    opt("all", Kind::FilterList),
    opt("any", Kind::FilterList),
    opt("not", Kind::Filter),
    opt("present", Kind::Bool),
    opt("equals", Kind::Any),
    opt("equals_hex", Kind::Str),
    opt("regex", Kind::Str),
    opt("in", Kind::AnyList),
    opt("exists", Kind::Bool),
];

/// Checks `text` against the schema; pushes a diagnostic per problem. Syntax errors are
/// left to serde (which reports them with their position).
pub fn check(text: &str, d: &mut Diagnostics<'_>) {
    let Ok(doc) = DeTable::parse(text) else {
        return;
    };
    let mut found = Vec::new();
    table(doc.get_ref(), &doc.span(), "", TOP, &mut found);
    found.sort_by_key(|(span, _, _)| span.start);
    for (span, key, message) in found {
        d.push(&span, key, message);
    }
}

type Found = Vec<(Range<usize>, String, String)>;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn table(t: &DeTable<'_>, span: &Range<usize>, path: &str, fields: &[Field], out: &mut Found) {
    for (k, v) in t.iter() {
        let name = k.get_ref().as_ref();
        let key = join(path, name);
        match fields.iter().find(|f| f.name == name) {
            Some(f) => value(v, &key, f.kind, out),
            None => {
                let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
                let hint = match did_you_mean(name, &names) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None => String::new(),
                };
                out.push((
                    k.span(),
                    key,
                    format!(
                        "unknown field `{name}`{hint} (accepted here: {})",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    for f in fields.iter().filter(|f| f.required) {
        if !t.iter().any(|(k, _)| k.get_ref().as_ref() == f.name) {
            out.push((
                span.start..span.start,
                join(path, f.name),
                format!("missing field `{}`", f.name),
            ));
        }
    }
    // A cluster is brokers (`bootstrap`) or an archive (`archive`): one of them is required.
    let has = |name: &str| t.iter().any(|(k, _)| k.get_ref().as_ref() == name);
    let is = |name: &str| fields.iter().any(|f| f.name == name);
    if is("bootstrap") && is("archive") && !has("bootstrap") && !has("archive") {
        out.push((
            span.start..span.start,
            join(path, "bootstrap"),
            "missing field `bootstrap` (or `archive = \"dir\"` for an archive)".into(),
        ));
    }
}

fn type_name(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => {
            let s: &str = s.as_ref();
            if s.chars().count() > 40 {
                "a string".into()
            } else {
                format!("string \"{s}\"")
            }
        }
        DeValue::Integer(_) => "an integer".into(),
        DeValue::Float(_) => "a float".into(),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(_) => "a datetime".into(),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

fn value(v: &Spanned<DeValue<'_>>, key: &str, kind: Kind, out: &mut Found) {
    let wrong = |out: &mut Found, expected: &str| {
        out.push((
            v.span(),
            key.to_string(),
            format!(
                "invalid type: {}, expected {expected}",
                type_name(v.get_ref())
            ),
        ));
    };
    match (kind, v.get_ref()) {
        (Kind::Any, _) | (Kind::AnyMap, DeValue::Table(_)) | (Kind::AnyList, DeValue::Array(_)) => {
        }
        (Kind::Bool, DeValue::Boolean(_)) => {}
        (Kind::Bool, _) => wrong(out, "a boolean (true or false, unquoted)"),
        (Kind::Str, DeValue::String(_)) => {}
        (Kind::Str, _) => wrong(out, "a string"),
        (Kind::Int, DeValue::Integer(_)) => {}
        (Kind::Int, _) => wrong(out, "an integer"),
        (Kind::StrOrInt, DeValue::String(_) | DeValue::Integer(_)) => {}
        (Kind::StrOrInt, _) => wrong(out, "a string or an integer"),
        (Kind::StrList, DeValue::Array(a)) => {
            for (i, e) in a.iter().enumerate() {
                value(e, &format!("{key}[{i}]"), Kind::Str, out);
            }
        }
        (Kind::StrList, _) => wrong(out, "an array of strings"),
        (Kind::AnyMap, _) => wrong(out, "a table"),
        (Kind::AnyList, _) => wrong(out, "an array"),
        (Kind::Table(fields), DeValue::Table(t)) => table(t, &v.span(), key, fields, out),
        (Kind::Table(_), _) => wrong(out, "a table"),
        (Kind::TableList(fields), DeValue::Array(a)) => {
            for (i, e) in a.iter().enumerate() {
                value(e, &format!("{key}[{i}]"), Kind::Table(fields), out);
            }
        }
        (Kind::TableList(_), _) => wrong(out, "an array of tables ([[...]])"),
        (Kind::Named(fields), DeValue::Table(t)) => {
            for (k, e) in t.iter() {
                value(e, &join(key, k.get_ref()), Kind::Table(fields), out);
            }
        }
        (Kind::Named(_), _) => wrong(out, "a table of named tables"),
        (Kind::StrMap, DeValue::Table(t)) => {
            for (k, e) in t.iter() {
                value(e, &join(key, k.get_ref()), Kind::Str, out);
            }
        }
        (Kind::StrMap, _) => wrong(out, "a table of strings"),
        (Kind::Filter, DeValue::Table(t)) => table(t, &v.span(), key, FILTER, out),
        (Kind::Filter, DeValue::Array(_)) if key.ends_with(".not") => out.push((
            v.span(),
            key.to_string(),
            "`not` takes one filter, not an array: write `not = { ... }`; to exclude any of \
             several, `not = { any = [ {...}, {...} ] }`"
                .into(),
        )),
        (Kind::Filter, _) => wrong(out, "a filter table (e.g. `{ key_prefix = \"x\" }`)"),
        (Kind::FilterList, DeValue::Array(a)) => {
            for (i, e) in a.iter().enumerate() {
                value(e, &format!("{key}[{i}]"), Kind::Filter, out);
            }
        }
        (Kind::FilterList, _) => wrong(out, "an array of filter tables"),
    }
}

/// The accepted name closest to `name`, if it is close enough to be a typo.
fn did_you_mean<'a>(name: &str, accepted: &[&'a str]) -> Option<&'a str> {
    accepted
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= (a.len().max(name.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("topic", &["topics", "target"]), Some("topics"));
        assert_eq!(
            did_you_mean("provenace", &["provenance"]),
            Some("provenance")
        );
        assert_eq!(did_you_mean("zzz", &["topics", "target"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
