//! Machine-readable reports of `check` and `run` (`--output json`): the validated routing
//! file and the plan (schema `docs/check-plan.schema.json`), and the end-of-run summary
//! (schema `docs/run-summary.schema.json`). Each document carries `kind` and `version` like
//! the verify report; `version` changes when a field changes meaning or goes away, adding a
//! field does not. Secrets never get here: cluster properties are the redacted ones, and
//! free-text reasons pass through `redact`.

use serde_json::{json, Value};

use crate::config::{value, Config, EndPosition, StartPosition};
use crate::copy::RunReport;
use crate::counts::SummaryRow;
use crate::plan::{Plan, StartFrom, TaskEnd};
use crate::redact::redact;

/// The `version` of the check and run JSON documents.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// A timestamp as both milliseconds and RFC 3339, so a pipeline needs no date parsing to
/// compare and a person can read it.
fn timestamp(ms: i64) -> Value {
    json!({ "ms": ms, "rfc3339": value::format_ms(ms) })
}

fn start_position(s: &StartPosition) -> Value {
    match s {
        StartPosition::Earliest => json!({ "kind": "earliest" }),
        StartPosition::Latest => json!({ "kind": "latest" }),
        StartPosition::Offset(o) => json!({ "kind": "offset", "offset": o }),
        StartPosition::Timestamp(ms) => json!({ "kind": "timestamp", "timestamp": timestamp(*ms) }),
        StartPosition::Ago(d) => json!({ "kind": "ago", "seconds": d.as_secs_f64() }),
    }
}

fn end_position(e: &EndPosition) -> Value {
    match e {
        EndPosition::None => json!({ "kind": "none" }),
        EndPosition::Snapshot => json!({ "kind": "snapshot" }),
        EndPosition::Offset(o) => json!({ "kind": "offset", "offset": o }),
        EndPosition::Timestamp(ms) => json!({ "kind": "timestamp", "timestamp": timestamp(*ms) }),
    }
}

/// A task's resolved end. `snapshot` says the offset is the partition's end when planned
/// (the route's `end = "snapshot"`), not an offset from the file.
fn task_end(end: &TaskEnd, route_end: Option<&EndPosition>) -> Value {
    match end {
        TaskEnd::None => json!({ "kind": "none" }),
        TaskEnd::Offset(o) if route_end == Some(&EndPosition::Snapshot) => {
            json!({ "kind": "snapshot", "offset": o })
        }
        TaskEnd::Offset(o) => json!({ "kind": "offset", "offset": o }),
        TaskEnd::Timestamp(ms) => json!({ "kind": "timestamp", "timestamp": timestamp(*ms) }),
        TaskEnd::TimestampOrOffset(ms, o) => json!({
            "kind": "timestamp_or_offset",
            "timestamp": timestamp(*ms),
            "offset": o,
        }),
    }
}

/// The validated routing file: what `check` prints before the plan. Cluster properties are
/// redacted (`ClusterConfig::redacted_properties`), the bootstrap list masked like logs.
fn routing_file(config: &Config) -> Value {
    json!({
        "path": config.path.display().to_string(),
        "job": config.job,
        "checkpoint": config.checkpoint_location(),
        "clusters": config.clusters.values().map(|c| json!({
            "name": c.name,
            "bootstrap": redact(&c.bootstrap),
            "properties": c.redacted_properties(),
        })).collect::<Vec<_>>(),
        "routes": config.routes.iter().map(|r| json!({
            "name": r.name,
            "source": r.source,
            "topics": r.topics,
            "topic_regex": r.topic_regex.as_ref().map(|re| re.as_str()),
            "target": r.target,
            "target_topic": r.target_topic.0,
            "partitioning": r.partitioning.to_string(),
            "start": start_position(&r.start),
            "end": end_position(&r.end),
            "create_target_topics": r.create_target_topics,
            "provenance": r.provenance,
        })).collect::<Vec<_>>(),
        // Routes reading [files] dumps: replayed by `kmirror import`, never in the plan.
        "imports": config.imports.iter().map(|r| {
            let f = &config.files[&r.source];
            json!({
                "name": r.name,
                "file": f.path.display().to_string(),
                "format": f.format.name(),
                "topics": r.topics,
                "topic_regex": r.topic_regex.as_ref().map(|re| re.as_str()),
                "target": r.target,
                "target_topic": r.target_topic.0,
            })
        }).collect::<Vec<_>>(),
        // `[clusters.NAME] archive = "dir"`: directories routes dump into or restore from.
        "archives": config.archives.iter().map(|(name, dir)| json!({
            "name": name,
            "dir": dir.display().to_string(),
        })).collect::<Vec<_>>(),
    })
}

impl Plan {
    /// The plan part of `check --output json`; `config` is the file it was built from (for
    /// each route's configured end).
    fn json(&self, config: &Config) -> Value {
        let topics = |v: &[(String, String)]| {
            v.iter()
                .map(|(c, t)| json!({ "cluster": c, "topic": t }))
                .collect::<Vec<_>>()
        };
        json!({
            "tasks": self.tasks.iter().map(|t| json!({
                "route": t.route_name,
                "source": {
                    "cluster": t.source_cluster,
                    "topic": t.topic,
                    "partition": t.partition,
                },
                "target": {
                    "cluster": t.target_cluster,
                    "topic": t.target_topic,
                    "partition": t.preserved_partition(),
                    "partitioning": t.partitioning.to_string(),
                    "partitions": t.target_partitions,
                },
                "watermarks": { "low": t.low, "high": t.high },
                "start": t.start,
                "resumes_from_checkpoint": t.start_from == StartFrom::Checkpoint,
                "first_offset": t.first_offset,
                "gap": t.gap,
                "end": task_end(&t.end, config.routes.get(t.route).map(|r| &r.end)),
                "estimate": t.estimate(),
                "available_now": (t.high - t.start).max(0),
            })).collect::<Vec<_>>(),
            "estimate_total": self.tasks.iter().filter_map(|t| t.estimate()).sum::<i64>(),
            "created_topics": topics(&self.created_topics),
            "topics_to_create": topics(&self.topics_to_create),
        })
    }
}

/// `check --output json`: the validated routing file, and the plan unless `--offline`
/// (then `plan` is null). Schema: `docs/check-plan.schema.json`.
pub fn check_json(config: &Config, plan: Option<&Plan>) -> Value {
    json!({
        "kind": "kmirror-check",
        "version": JSON_SCHEMA_VERSION,
        "routing_file": routing_file(config),
        "plan": plan.map(|p| p.json(config)),
    })
}

/// `cluster:topic/partition` split into its parts. Topic names hold no `:` or `/`, so the
/// last `:` and `/` are the separators whatever the cluster is called.
fn source_parts(label: &str) -> Value {
    let parts = label.rsplit_once('/').and_then(|(ct, p)| {
        let (c, t) = ct.rsplit_once(':')?;
        Some((c, t, p.parse::<i32>().ok()?))
    });
    match parts {
        Some((c, t, p)) => json!({ "cluster": c, "topic": t, "partition": p }),
        None => json!({ "cluster": null, "topic": null, "partition": null }),
    }
}

/// Verification counts as the JSON documents give them.
pub(crate) fn counts_json(c: &crate::counts::Counts) -> Value {
    json!({
        "read": c.read,
        "filtered": c.filtered,
        "produced": c.produced,
        "acked": c.acked,
        "dead_lettered": c.dead_lettered,
        "skipped": c.skipped,
        "failed": c.failed,
        "pending": c.pending(),
        "retried": c.retried,
    })
}

/// A partition's state word from its status text (`copy::summary_status`, or
/// `TaskProgress::state` while running): `halted` and `failing` name only the source
/// partition, which two routes can share.
fn state_word(status: &str) -> &'static str {
    match status {
        "done" => "done",
        "source gone" => "source_gone",
        "removed by reload" => "removed",
        s if s.starts_with("released") => "released",
        s if s.starts_with("halted") || s.starts_with("HALTED") => "halted",
        s if s.starts_with("stopped while retrying") || s.starts_with("retrying") => "failing",
        s if s.starts_with("stopped") => "stopped",
        _ => "copying",
    }
}

/// One element of the run summary's `partitions` (also `/status`'s, which adds live fields).
pub(crate) fn partition_json(r: &SummaryRow) -> Value {
    json!({
        "route": r.route,
        "source": r.source,
        "source_partition": source_parts(&r.source),
        "range": { "start": r.range.0, "end": r.range.1 },
        "counts": counts_json(&r.counts),
        "source_errors": r.source_errors,
        "target": r.target,
        "target_written": r.target_written.iter().map(|(p, [a, b])| json!({
            "partition": p, "first": a, "last": b,
        })).collect::<Vec<_>>(),
        "state": state_word(&r.status),
        "status": redact(&r.status),
    })
}

impl RunReport {
    /// `run --output json`: what the summary table and the closing line say. Schema:
    /// `docs/run-summary.schema.json`.
    pub fn json(&self) -> Value {
        let verdict = self.verdict();
        let reasons = |v: &[(String, String)]| {
            v.iter()
                .map(|(src, why)| json!({ "source": src, "reason": redact(why) }))
                .collect::<Vec<_>>()
        };
        json!({
            "kind": "kmirror-run-summary",
            "version": JSON_SCHEMA_VERSION,
            "verdict": if verdict.code == crate::error::exit::OK {
                verdict.summary.clone()
            } else {
                "failed".to_string()
            },
            "ok": verdict.code == crate::error::exit::OK,
            "summary": redact(&verdict.summary),
            "exit_code": verdict.code,
            "complete": self.complete,
            "stopped": self.stopped,
            "partitions": self.rows.iter().map(partition_json).collect::<Vec<_>>(),
            "totals": counts_json(&self.totals),
            "source_errors": self.source_errors,
            "gaps": self.gaps,
            "halted": reasons(&self.halted),
            "failing": reasons(&self.failing),
            "peak_in_flight_bytes": self.peak_in_flight_bytes,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "checkpoint": self.checkpoint,
        })
    }
}
