//! The per-route checks: one `[[routes]]` entry of the routing file becomes a checked
//! `RouteConfig` (source, target, positions, filters, validation, rate limits, dead letter),
//! or a diagnostic per problem. The whole-file rules (clusters, checkpoints, limits, and
//! how routes relate to each other) stay in `super::check`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;
use toml::Spanned;

use super::diag::Diagnostics;
use super::raw::RawRoute;
use super::{
    check_dead_letter, filter, rate_limits, regex_problem, valid_name, valid_topic, value,
    ClusterConfig, DeadLetter, EndPosition, ErrorAction, FileSource, OutOfRangePolicy,
    Partitioning, RouteConfig, StartPosition, TopicTemplate,
};

/// What every route inherits from the top of the file.
pub(super) struct RouteDefaults<'a> {
    pub(super) create: bool,
    pub(super) dead_letter: &'a Option<DeadLetter>,
    /// Relative paths (schemas) are resolved against the routing file's directory.
    pub(super) base_dir: &'a Path,
}

pub(super) fn check_route(
    i: usize,
    r: &Spanned<RawRoute>,
    clusters: &BTreeMap<String, ClusterConfig>,
    files: &BTreeMap<String, FileSource>,
    archives: &BTreeMap<String, crate::archive::Root>,
    defaults: &RouteDefaults<'_>,
    d: &mut Diagnostics<'_>,
) -> Option<RouteConfig> {
    let RouteDefaults {
        create: default_create,
        dead_letter: default_dlq,
        base_dir,
    } = *defaults;
    let route_span = r.span();
    let r = r.get_ref();
    let p = format!("routes[{i}].");
    let before = d.items.len();

    let name = r.name.get_ref().clone();
    if !valid_name(&name, &['.']) {
        d.push(
            &r.name.span(),
            format!("{p}name"),
            format!("\"{name}\" is refused: use letters, digits, '.', '_' and '-'"),
        );
    }
    for (key, c) in [("source", &r.source), ("target", &r.target)] {
        if key == "source" && files.contains_key(c.get_ref()) {
            continue;
        }
        if key == "target" && files.contains_key(c.get_ref()) {
            d.push(
                &c.span(),
                format!("{p}target"),
                format!(
                    "\"{}\" is a file source: files can be read (kmirror import), not written",
                    c.get_ref()
                ),
            );
            continue;
        }
        if archives.contains_key(c.get_ref()) {
            if key == "target" && archives.contains_key(r.source.get_ref()) {
                d.push(
                    &c.span(),
                    format!("{p}target"),
                    format!(
                        "\"{}\" is an archive and so is the source \"{}\": an archive is restored into a cluster of brokers (copy the directory to copy an archive)",
                        c.get_ref(),
                        r.source.get_ref()
                    ),
                );
            }
            continue;
        }
        if !clusters.contains_key(c.get_ref()) {
            let known: Vec<_> = clusters
                .keys()
                .chain(archives.keys())
                .map(String::as_str)
                .collect();
            d.push(
                &c.span(),
                format!("{p}{key}"),
                format!(
                    "cluster \"{}\" is not defined (defined: {})",
                    c.get_ref(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
    }

    let mut topics = Vec::new();
    if let Some(t) = &r.topics {
        if t.get_ref().is_empty() && r.topic_regex.is_none() {
            d.push(
                &t.span(),
                format!("{p}topics"),
                "is empty and no topic_regex is given: the route reads nothing",
            );
        }
        let mut seen = BTreeSet::new();
        for (j, topic) in t.get_ref().iter().enumerate() {
            let name = topic.get_ref();
            if !valid_topic(name) {
                d.push(&topic.span(), format!("{p}topics[{j}]"), format!("\"{name}\" is not a valid Kafka topic name (1-249 of letters, digits, '.', '_', '-')"));
            } else if !seen.insert(name.clone()) {
                d.push(
                    &topic.span(),
                    format!("{p}topics[{j}]"),
                    format!("\"{name}\" is listed twice"),
                );
            }
            topics.push(name.clone());
        }
    }
    let topic_regex = r.topic_regex.as_ref().and_then(|re| {
        // Anchored: `orders.*` must not also match `old-orders-archive`.
        match Regex::new(&format!("^(?:{})$", re.get_ref())) {
            Ok(x) => Some(x),
            Err(e) => {
                let msg = regex_problem(&e);
                d.push(
                    &re.span(),
                    format!("{p}topic_regex"),
                    format!("\"{}\" is not a valid regex: {msg}", re.get_ref()),
                );
                None
            }
        }
    });
    if r.topics.is_none() && r.topic_regex.is_none() {
        d.push(
            &route_span,
            format!("{p}topics"),
            format!("route \"{name}\" names no topics: give `topics` and/or `topic_regex`"),
        );
    }

    let target_topic = match &r.target_topic {
        None => TopicTemplate("{topic}".into()),
        Some(t) => {
            let s = t.get_ref();
            let mut rest = s.as_str();
            let mut literal = String::new();
            let mut ok = true;
            while let Some(open) = rest.find('{') {
                literal.push_str(&rest[..open]);
                let Some(close) = rest[open..].find('}') else {
                    d.push(
                        &t.span(),
                        format!("{p}target_topic"),
                        format!("\"{s}\": unclosed `{{`"),
                    );
                    ok = false;
                    break;
                };
                let ph = &rest[open + 1..open + close];
                if !["topic", "source", "route"].contains(&ph) {
                    d.push(&t.span(), format!("{p}target_topic"), format!("\"{s}\": unknown placeholder `{{{ph}}}` (known: {{topic}}, {{source}}, {{route}})"));
                    ok = false;
                }
                rest = &rest[open + close + 1..];
            }
            literal.push_str(rest);
            if ok
                && !literal
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                d.push(
                    &t.span(),
                    format!("{p}target_topic"),
                    format!(
                        "\"{s}\": topic names may only contain letters, digits, '.', '_' and '-'"
                    ),
                );
            }
            if ok && s.is_empty() {
                d.push(&t.span(), format!("{p}target_topic"), "must not be empty");
            }
            TopicTemplate(s.clone())
        }
    };

    let partitioning = match r
        .partitioning
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("preserve", _)) => Partitioning::Preserve,
        Some(("key", _)) => Partitioning::Key,
        Some(("round_robin", _)) => Partitioning::RoundRobin,
        Some((other, span)) => {
            d.push(&span, format!("{p}partitioning"), format!("\"{other}\" is not a partitioning: expected \"preserve\", \"key\" or \"round_robin\""));
            Partitioning::Preserve
        }
    };
    if archives.contains_key(r.target.get_ref()) {
        if files.contains_key(r.source.get_ref()) {
            d.push(
                &r.target.span(),
                format!("{p}target"),
                format!("\"{}\" is an archive: a file source is imported into a cluster, not into an archive", r.target.get_ref()),
            );
        } else if partitioning != Partitioning::Preserve {
            let span = r
                .partitioning
                .as_ref()
                .map(|s| s.span())
                .unwrap_or(r.target.span());
            d.push(
                &span,
                format!("{p}partitioning"),
                format!("\"{partitioning}\" is refused into an archive (\"{}\"): each source partition keeps its own directory, so use \"preserve\" (the default)", r.target.get_ref()),
            );
        }
    }

    let start = match &r.start {
        None => Some(StartPosition::Earliest),
        Some(v) => parse_start(v, &format!("{p}start"), d),
    };
    // A restore (an archive as the source) is finite: it ends at what the archive held
    // when the run started, so there is nothing to follow and no `latest` to start at.
    let restore = archives.contains_key(r.source.get_ref());
    let end = match &r.end {
        None if restore => Some(EndPosition::Snapshot),
        None => Some(EndPosition::None),
        Some(v) => parse_end(v, &format!("{p}end"), d),
    };
    if restore {
        let source = r.source.get_ref();
        if let (Some(EndPosition::None), Some(v)) = (&end, &r.end) {
            d.push(
                &v.span(),
                format!("{p}end"),
                format!("\"none\" (follow) is refused: \"{source}\" is an archive, which a route reads to the end it had when the run started; leave `end` out, or give an offset or a timestamp"),
            );
        }
        if let (Some(StartPosition::Latest), Some(v)) = (&start, &r.start) {
            d.push(
                &v.span(),
                format!("{p}start"),
                format!("\"latest\" is refused: \"{source}\" is an archive, where the latest position is its end, so nothing would be restored; use \"earliest\" (the default), an offset or a timestamp"),
            );
        }
    }
    if let (Some(s), Some(e), Some(ev)) = (&start, &end, &r.end) {
        let now = value::now_ms();
        let contradiction = match (s, e) {
            (StartPosition::Offset(a), EndPosition::Offset(b)) if b <= a => {
                Some(format!("end offset {b} is not after start offset {a}"))
            }
            (StartPosition::Timestamp(a), EndPosition::Timestamp(b)) if b <= a => Some(format!(
                "end {} is not after start {}",
                value::format_ms(*b),
                value::format_ms(*a)
            )),
            (StartPosition::Ago(ago), EndPosition::Timestamp(b))
                if *b <= now - ago.as_millis() as i64 =>
            {
                Some(format!(
                    "end {} is not after start ({} ago)",
                    value::format_ms(*b),
                    humantime::format_duration(*ago)
                ))
            }
            (StartPosition::Latest, EndPosition::Snapshot) => {
                Some("start = \"latest\" with end = \"snapshot\" copies nothing".to_string())
            }
            _ => None,
        };
        if let Some(m) = contradiction {
            d.push(
                &ev.span(),
                format!("{p}end"),
                format!("{m}: end must be after start"),
            );
        }
    }

    let rate = rate_limits(&r.max_messages_per_sec, &r.max_bytes_per_sec, &p, d);

    let on_offset_out_of_range = match r
        .on_offset_out_of_range
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("fail", _)) => OutOfRangePolicy::Fail,
        Some(("earliest", _)) => OutOfRangePolicy::Earliest,
        Some((other, span)) => {
            d.push(
                &span,
                format!("{p}on_offset_out_of_range"),
                format!("\"{other}\" is not a policy: expected \"fail\" or \"earliest\""),
            );
            OutOfRangePolicy::Fail
        }
    };

    if r.source.get_ref() == r.target.get_ref() && target_topic.0 == "{topic}" {
        let span = r
            .target_topic
            .as_ref()
            .map(|t| t.span())
            .unwrap_or(r.target.span());
        d.push(&span, format!("{p}target_topic"), format!("route \"{name}\" copies cluster \"{}\" onto itself with the same topic names: set a target_topic such as \"{{topic}}.copy\"", r.source.get_ref()));
    }

    let filter = r
        .filter
        .as_ref()
        .and_then(|f| filter::check_filter(f, &format!("{p}filter"), d));
    let validate = r
        .validate
        .as_ref()
        .map(|v| filter::check_validate(v, &format!("{p}validate"), base_dir, d))
        .unwrap_or_default();
    let headers = r
        .headers
        .as_ref()
        .map(|h| filter::check_headers(h, &format!("{p}headers"), d))
        .unwrap_or_default();
    let dead_letter = match &r.dead_letter {
        Some(dl) => check_dead_letter(dl, &format!("{p}dead_letter"), clusters, d),
        None => default_dlq.clone(),
    };
    let on_error = match r
        .on_error
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None if dead_letter.is_some() => ErrorAction::DeadLetter,
        None => ErrorAction::Stop,
        Some(("skip", _)) => ErrorAction::Skip,
        Some(("stop", _)) => ErrorAction::Stop,
        Some(("dead_letter", span)) => {
            if dead_letter.is_none() {
                d.push(&span, format!("{p}on_error"), "\"dead_letter\" needs a dead-letter destination: add dead_letter = { cluster = \"...\", topic = \"...\" } to the route or the top level");
            }
            ErrorAction::DeadLetter
        }
        Some((other, span)) => {
            d.push(
                &span,
                format!("{p}on_error"),
                format!(
                    "\"{other}\" is not an action: expected \"skip\", \"dead_letter\" or \"stop\""
                ),
            );
            ErrorAction::Stop
        }
    };

    if d.items.len() > before {
        return None;
    }
    Some(RouteConfig {
        filter,
        validate,
        headers,
        on_error,
        dead_letter,
        name,
        source: r.source.get_ref().clone(),
        topics,
        topic_regex,
        target: r.target.get_ref().clone(),
        target_topic,
        partitioning,
        start: start?,
        end: end?,
        rate,
        on_offset_out_of_range,
        create_target_topics: r
            .create_target_topics
            .as_ref()
            .map(|b| *b.get_ref())
            .unwrap_or(default_create),
        provenance: r.provenance.as_ref().map(|b| *b.get_ref()).unwrap_or(true),
    })
}

fn parse_start(
    v: &Spanned<toml::Value>,
    key: &str,
    d: &mut Diagnostics<'_>,
) -> Option<StartPosition> {
    let span = v.span();
    let shown = value_text(v.get_ref());
    match v.get_ref() {
        toml::Value::Integer(o) if *o >= 0 => Some(StartPosition::Offset(*o)),
        toml::Value::Integer(o) => {
            d.push(
                &span,
                key,
                format!("{o} is refused: an offset must be zero or more"),
            );
            None
        }
        toml::Value::Datetime(dt) => match value::parse_timestamp_ms(&dt.to_string()) {
            Ok(ms) => Some(StartPosition::Timestamp(ms)),
            Err(m) => {
                d.push(&span, key, m);
                None
            }
        },
        toml::Value::String(s) => match s.trim() {
            "earliest" => Some(StartPosition::Earliest),
            "latest" => Some(StartPosition::Latest),
            t if looks_like_timestamp(t) => match value::parse_timestamp_ms(t) {
                Ok(ms) => Some(StartPosition::Timestamp(ms)),
                Err(m) => {
                    d.push(&span, key, m);
                    None
                }
            },
            t => match value::parse_duration(t) {
                Ok(dur) if !dur.is_zero() => Some(StartPosition::Ago(dur)),
                _ => {
                    d.push(
                        &span,
                        key,
                        format!(
                            "{shown} is not a start position: expected \"earliest\", \"latest\", an offset (integer), an RFC 3339 timestamp or a duration ago such as \"2h\""
                        ),
                    );
                    None
                }
            },
        },
        other => {
            d.push(&span, key, format!("{shown} is a {}: expected \"earliest\", \"latest\", an offset, a timestamp or a duration", other.type_str()));
            None
        }
    }
}

fn parse_end(v: &Spanned<toml::Value>, key: &str, d: &mut Diagnostics<'_>) -> Option<EndPosition> {
    let span = v.span();
    let shown = value_text(v.get_ref());
    match v.get_ref() {
        toml::Value::Integer(o) if *o >= 0 => Some(EndPosition::Offset(*o)),
        toml::Value::Integer(o) => {
            d.push(
                &span,
                key,
                format!("{o} is refused: an offset must be zero or more"),
            );
            None
        }
        toml::Value::Datetime(dt) => match value::parse_timestamp_ms(&dt.to_string()) {
            Ok(ms) => Some(EndPosition::Timestamp(ms)),
            Err(m) => {
                d.push(&span, key, m);
                None
            }
        },
        toml::Value::String(s) => match s.trim() {
            "none" => Some(EndPosition::None),
            "snapshot" => Some(EndPosition::Snapshot),
            t if looks_like_timestamp(t) => match value::parse_timestamp_ms(t) {
                Ok(ms) => Some(EndPosition::Timestamp(ms)),
                Err(m) => {
                    d.push(&span, key, m);
                    None
                }
            },
            _ => {
                d.push(
                    &span,
                    key,
                    format!("{shown} is not an end position: expected \"none\", \"snapshot\", an offset (integer) or an RFC 3339 timestamp"),
                );
                None
            }
        },
        other => {
            d.push(
                &span,
                key,
                format!(
                    "{shown} is a {}: expected \"none\", \"snapshot\", an offset or a timestamp",
                    other.type_str()
                ),
            );
            None
        }
    }
}

fn looks_like_timestamp(s: &str) -> bool {
    s.len() >= 10 && s.as_bytes()[4] == b'-' && s[..4].chars().all(|c| c.is_ascii_digit())
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}
