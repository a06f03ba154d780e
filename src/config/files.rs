//! `[files.NAME]`: dump files a route reads instead of a source cluster (`kmirror import`):
//! where the file is, how its lines are laid out, and where rejected lines go. Routes that
//! read a file are checked like every route (filter, validate, on_error, dead letter,
//! partitioning, target) and then kept apart in `Config::imports`, so the commands that
//! talk to source clusters (run, verify, purge, check's plan) never see them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::diag::Diagnostics;
use super::raw::{RawFileSource, RawRoute};
use super::{valid_name, valid_topic, ClusterConfig};

/// How each line of a dump is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `kcat -C -J` output: one JSON envelope per line (topic, partition, offset, tstype,
    /// ts, headers, key, payload).
    Kcat,
    /// Each line is one record value: a JSON document, produced as written.
    Jsonl,
    /// Each line is a JSON object holding the record's fields (names in `[files.NAME.fields]`).
    Records,
}

impl FileFormat {
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Kcat => "kcat",
            FileFormat::Jsonl => "jsonl",
            FileFormat::Records => "records",
        }
    }
}

/// The field names of `format = "records"` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldNames {
    pub key: String,
    pub value: String,
    pub headers: String,
    pub timestamp: String,
    pub partition: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames {
            key: "key".into(),
            value: "value".into(),
            headers: "headers".into(),
            timestamp: "timestamp".into(),
            partition: "partition".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileSource {
    pub name: String,
    pub path: PathBuf,
    pub format: FileFormat,
    /// The topic every line belongs to (`jsonl`, `records`); `kcat` lines name their own.
    pub topic: Option<String>,
    /// Where rejected lines are kept (with their line number and the error) when the route's
    /// `on_error` is `skip` or `stop`; `None`: beside the checkpoint.
    pub rejects: Option<PathBuf>,
    pub fields: FieldNames,
}

pub(super) fn check_files(
    raw: &BTreeMap<Spanned<String>, Spanned<RawFileSource>>,
    clusters: &BTreeMap<String, ClusterConfig>,
    base_dir: &Path,
    d: &mut Diagnostics<'_>,
) -> BTreeMap<String, FileSource> {
    let mut files = BTreeMap::new();
    for (name, f) in raw {
        let key = format!("files.{}", name.get_ref());
        if !valid_name(name.get_ref(), &[]) {
            d.push(
                &name.span(),
                &key,
                format!(
                    "file source name \"{}\" is refused: use letters, digits, '_' and '-'",
                    name.get_ref()
                ),
            );
        }
        if clusters.contains_key(name.get_ref()) {
            d.push(
                &name.span(),
                &key,
                format!(
                    "\"{}\" is also the name of a cluster: a route's `source` must name one or the other",
                    name.get_ref()
                ),
            );
        }
        let f = f.get_ref();
        let resolve = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base_dir.join(p)
            }
        };
        if f.path.get_ref().trim().is_empty() {
            d.push(&f.path.span(), format!("{key}.path"), "must name a file");
        }
        let format = match f.format.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
            None | Some(("kcat", _)) => FileFormat::Kcat,
            Some(("jsonl", _)) => FileFormat::Jsonl,
            Some(("records", _)) => FileFormat::Records,
            Some((other, span)) => {
                d.push(
                    &span,
                    format!("{key}.format"),
                    format!("\"{other}\" is not a dump format: use \"kcat\" (kcat -J output), \"jsonl\" (each line a value) or \"records\" (each line an object with key, value, headers, timestamp)"),
                );
                FileFormat::Kcat
            }
        };
        let topic = f.topic.as_ref().map(|t| {
            if !valid_topic(t.get_ref()) {
                d.push(
                    &t.span(),
                    format!("{key}.topic"),
                    format!("\"{}\" is not a valid Kafka topic name", t.get_ref()),
                );
            }
            t.get_ref().clone()
        });
        match (&topic, format, &f.topic) {
            (Some(_), FileFormat::Kcat, Some(t)) => d.push(
                &t.span(),
                format!("{key}.topic"),
                "kcat lines name their own topic: select them with the route's `topics`",
            ),
            (None, FileFormat::Jsonl | FileFormat::Records, _) => d.push(
                &name.span(),
                format!("{key}.topic"),
                format!(
                    "format \"{}\" lines carry no topic: give `topic`, the topic name the route's `topics` selects",
                    format.name()
                ),
            ),
            _ => {}
        }
        let mut fields = FieldNames::default();
        if let Some(fl) = &f.fields {
            if format != FileFormat::Records {
                d.push(
                    &fl.span(),
                    format!("{key}.fields"),
                    "only format = \"records\" lines have configurable field names",
                );
            }
            let fl = fl.get_ref();
            for (v, slot) in [
                (&fl.key, &mut fields.key),
                (&fl.value, &mut fields.value),
                (&fl.headers, &mut fields.headers),
                (&fl.timestamp, &mut fields.timestamp),
                (&fl.partition, &mut fields.partition),
            ] {
                if let Some(v) = v {
                    *slot = v.get_ref().clone();
                }
            }
        }
        files.insert(
            name.get_ref().clone(),
            FileSource {
                name: name.get_ref().clone(),
                path: resolve(f.path.get_ref()),
                format,
                topic,
                rejects: f.rejects.as_ref().map(|r| resolve(r.get_ref())),
                fields,
            },
        );
    }
    files
}

/// What a route that reads a file may not say: positions belong to clusters, and a file's
/// topic is fixed. `p` is the route's key prefix (`routes[3].`).
pub(super) fn check_file_route(
    r: &Spanned<RawRoute>,
    p: &str,
    file: &FileSource,
    topics: &[String],
    d: &mut Diagnostics<'_>,
) {
    let span: Range<usize> = r.span();
    let r = r.get_ref();
    for (k, v) in [("start", &r.start), ("end", &r.end)] {
        if let Some(v) = v {
            d.push(
                &v.span(),
                format!("{p}{k}"),
                format!(
                    "a route reading the file source \"{}\" has no {k}: the file is read from its first line (or where the last import stopped) to its last",
                    file.name
                ),
            );
        }
    }
    if let Some(v) = &r.on_offset_out_of_range {
        d.push(
            &v.span(),
            format!("{p}on_offset_out_of_range"),
            "a file source has no offsets to fall out of range",
        );
    }
    if let Some(t) = &file.topic {
        let matches = topics.iter().any(|x| x == t)
            || r.topic_regex.as_ref().is_some_and(|re| {
                regex::Regex::new(&format!("^(?:{})$", re.get_ref())).is_ok_and(|x| x.is_match(t))
            });
        if !matches {
            d.push(
                &span,
                format!("{p}topics"),
                format!(
                    "the file source \"{}\" holds only topic \"{t}\": the route's topics do not select it",
                    file.name
                ),
            );
        }
    }
}
