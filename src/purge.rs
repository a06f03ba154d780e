//! Purge: the last step of a migration. Deletes from the SOURCE cluster the records a job has
//! copied and `verify` has just proven are on the target, with Kafka's DeleteRecords (and,
//! asked for, DeleteTopics). It owns the decision of what may be deleted; the proof is
//! `verify`'s, called here again right before deleting, never a stale report.
//!
//! What it will delete, per source partition: `[low watermark now, verified end)`, where the
//! verified end is the checkpoint position `verify` compared up to (DeleteRecords can only
//! delete everything below an offset). A partition is refused, with the reason, unless every
//! route that reads it:
//! - was compared record by record (provenance) and matches (nothing missing, unexpected,
//!   altered, or unverifiable);
//! - for a fixed `end`: copied its whole range (not INCOMPLETE: halted, stopped, reset);
//!   a following route is purged only up to the position verified now, never further, so a
//!   copy still running (its end moving on) loses nothing;
//! - began its copy at or below the source's first offset now (records below the copied range
//!   were never copied, and DeleteRecords would take them too).
//!
//! Records in the range the routes did not select (filtered out, skipped poison) would be
//! lost: refused unless `include_unselected`. Dead-lettered records are not lost (the
//! dead-letter topic holds them whole, and `verify` found them there), so they do not block a
//! purge; the plan shows how many. Deleting a topic (`delete_topic`) needs every one of its
//! partitions purgeable with nothing unselected and no record after the verified end.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{json, Value};

use crate::checkpoint::{parse_partition_key, CheckpointStore};
use crate::cluster::{self, ClusterError, QuietContext};
use crate::config::{Config, RouteConfig};
use crate::copy::filter::Decision;
use crate::counts::render_table;
use crate::exit;
use crate::plan::{self, CreateTopics, Ends};
use crate::redact::redact;
use crate::verify::{self, VerifyError, VerifyRow};

/// The `version` of the JSON plan (`docs/purge-plan.schema.json`).
pub const JSON_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{0}")]
    Verify(#[source] VerifyError),
    #[error("{0}")]
    Cluster(#[source] ClusterError),
}

impl From<VerifyError> for PurgeError {
    fn from(e: VerifyError) -> Self {
        PurgeError::Verify(e)
    }
}

impl From<ClusterError> for PurgeError {
    fn from(e: ClusterError) -> Self {
        PurgeError::Cluster(e)
    }
}

/// What `purge` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct PurgeOptions {
    /// Only this route's partitions (other routes reading them are checked too).
    pub route: Option<String>,
    /// Delete ranges that also hold records no route selected.
    pub include_unselected: bool,
    /// Delete whole source topics whose every partition is purgeable with nothing unselected.
    pub delete_topic: bool,
}

/// One source partition: what would be deleted, or why not.
#[derive(Debug, Clone)]
pub struct PartitionPurge {
    pub cluster: String,
    pub topic: String,
    pub partition: i32,
    /// Every route reading this partition (all are verified and must pass).
    pub routes: Vec<String>,
    /// The source's first offset now.
    pub low: i64,
    /// Where the verified range ends (the smallest over the routes); `None`: nothing verified.
    pub verified_end: Option<i64>,
    /// Records in `[low, verified_end)`, counted by reading.
    pub records: u64,
    /// Records in the range no route selected (filtered out, skipped poison). Exact when
    /// `unselected_exact` (one route over exactly this range, or every record decided for
    /// every route reading it), else an upper bound (the fewest any one route left out of its
    /// verified range, which contains this one: when some route skipped poison records).
    pub unselected: u64,
    pub unselected_exact: bool,
    /// Records of the range on a dead-letter topic (kept there whole: not lost).
    pub dead_lettered: u64,
    /// Why this partition is not deleted; empty when it is (or would be).
    pub refused: Vec<String>,
    /// A following route: the copy may be past `verified_end` already; only what was
    /// verified is deleted.
    pub following: bool,
    /// After `execute`: the new first offset the broker answered, or why the deletion failed.
    pub outcome: Option<Result<i64, String>>,
    /// After `execute`: the source's first offset read back after a failed deletion (so
    /// "nothing was deleted" is checked, not assumed).
    pub low_after: Option<i64>,
}

impl PartitionPurge {
    pub fn source(&self) -> String {
        format!("{}:{}/{}", self.cluster, self.topic, self.partition)
    }

    /// The offset DeleteRecords is given: everything below it goes.
    pub fn delete_before(&self) -> i64 {
        self.verified_end.unwrap_or(self.low).max(self.low)
    }

    /// What a failed deletion left, as read back.
    pub fn after_failure(&self) -> String {
        match self.low_after {
            Some(o) if o == self.low => format!("first offset still {o}: nothing was deleted"),
            Some(o) => format!("first offset now {o} (was {})", self.low),
            None => "the first offset could not be read back".into(),
        }
    }

    /// Offsets `[low, delete_before)` hold records to delete and nothing refuses them.
    pub fn deletable(&self) -> bool {
        self.refused.is_empty() && self.delete_before() > self.low
    }
}

/// A source topic under `delete_topic`: deleted whole, or why not.
#[derive(Debug, Clone)]
pub struct TopicPurge {
    pub cluster: String,
    pub topic: String,
    pub partitions: usize,
    /// Records found after the verified end (written since, or past a route's `end`).
    pub records_after: u64,
    pub refused: Vec<String>,
    pub outcome: Option<Result<(), String>>,
}

#[derive(Debug, Clone)]
pub struct PurgePlan {
    pub options: PurgeOptions,
    pub partitions: Vec<PartitionPurge>,
    /// Only with `delete_topic`.
    pub topics: Vec<TopicPurge>,
    /// `execute` ran.
    pub executed: bool,
}

/// Re-verifies every partition the selected routes read and works out what may be deleted.
/// Reads only; deletes nothing.
pub fn plan(
    config: &Config,
    store: &dyn CheckpointStore,
    options: &PurgeOptions,
) -> Result<PurgePlan, PurgeError> {
    let cp = crate::copy::load_checkpoint(config, store)
        .map_err(|e| PurgeError::Verify(VerifyError::Checkpoint(e)))?;
    let timeout = config.run.connect_timeout.max(Duration::from_secs(10));
    let layout = plan::build_with(config, cp.as_ref(), CreateTopics::Never, Ends::AsConfigured)?;
    // Source partition -> the routes reading it. A partition of the selected routes is
    // deleted for every route that reads it, so all of those must have copied it.
    let mut readers: BTreeMap<(String, String, i32), Vec<String>> = BTreeMap::new();
    for t in &layout.tasks {
        if config.archives.contains_key(&t.source_cluster) {
            continue; // a restore: an archive is not a log records are deleted from
        }
        readers
            .entry((t.source_cluster.clone(), t.topic.clone(), t.partition))
            .or_default()
            .push(t.route_name.clone());
    }
    let selected = |route: &str| options.route.as_deref().is_none_or(|r| r == route);
    readers.retain(|_, routes| routes.iter().any(|r| selected(r)));
    let mut to_verify: Vec<&str> = readers.values().flatten().map(String::as_str).collect();
    to_verify.sort_unstable();
    to_verify.dedup();

    // Verify each route now (the proof a deletion rests on is never an old report).
    // A route that has copied nothing at all has no rows: its partitions are "not copied".
    let mut rows: BTreeMap<(String, String, i32), Vec<VerifyRow>> = BTreeMap::new();
    for route in to_verify {
        let r = config.route(route).expect("a planned route is in the file");
        match verify::verify(config, store, Some(route), false) {
            Ok(report) => {
                for row in report.rows {
                    let Some((topic, partition)) = row
                        .source
                        .strip_prefix(&format!("{}:", r.source))
                        .and_then(parse_partition_key)
                        .map(|(t, p)| (t.to_string(), p))
                    else {
                        continue; // a whole-route count row: count mode is refused below
                    };
                    rows.entry((r.source.clone(), topic, partition))
                        .or_default()
                        .push(row);
                }
            }
            Err(VerifyError::Nothing(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let mut consumers = BTreeMap::new();
    let mut partitions = Vec::new();
    for ((cluster_name, topic, partition), routes) in &readers {
        let src = &config.clusters[cluster_name];
        if !consumers.contains_key(cluster_name) {
            consumers.insert(cluster_name.clone(), cluster::consumer(src, &[])?);
        }
        let (low, _) = cluster::watermarks(
            &consumers[cluster_name],
            cluster_name,
            topic,
            *partition,
            timeout,
        )?;
        let found = rows
            .get(&(cluster_name.clone(), topic.clone(), *partition))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut p = PartitionPurge {
            cluster: cluster_name.clone(),
            topic: topic.clone(),
            partition: *partition,
            routes: routes.clone(),
            low,
            verified_end: None,
            records: 0,
            unselected: 0,
            unselected_exact: false,
            dead_lettered: 0,
            refused: Vec::new(),
            following: false,
            outcome: None,
            low_after: None,
        };
        let mut ends = Vec::new();
        for route in routes {
            match found.iter().find(|r| &r.route == route) {
                None => p.refused.push(format!("route \"{route}\": not copied")),
                Some(row) => match gate(row, low) {
                    Ok(end) => ends.push(end),
                    Err(why) => p.refused.push(format!("route \"{route}\": {why}")),
                },
            }
        }
        p.following = found.iter().any(|r| !r.coverage.fixed_end());
        let complete = p.refused.is_empty() && !ends.is_empty();
        if complete {
            let end = ends.iter().copied().min().expect("not empty");
            p.verified_end = Some(end);
            // The verify rows count exactly this range when one route covers [low, end).
            let exact = match found {
                [row] => row.source_range == (low, end),
                _ => false,
            };
            p.unselected = found
                .iter()
                .map(|r| r.filtered + r.skipped)
                .min()
                .unwrap_or(0);
            p.unselected_exact = exact || p.unselected == 0;
            p.dead_lettered = found.iter().map(|r| r.dead_lettered).sum();
            let skipped: u64 = found.iter().map(|r| r.skipped).sum();
            if exact {
                p.records = found[0].source_records;
            } else if p.unselected > 0 && skipped == 0 {
                // Several routes (e.g. one per tenant) may together select every record:
                // decide each record of the range for every route, as the copy path does.
                // With no poison skipped, a record is lost only if every route filters it out.
                let routes: Vec<&RouteConfig> =
                    routes.iter().filter_map(|r| config.route(r)).collect();
                let (records, unselected) =
                    count_unselected(src, &routes, topic, *partition, (low, end), timeout)?;
                p.records = records;
                p.unselected = unselected;
                p.unselected_exact = true;
            } else {
                p.records = count(src, topic, *partition, low, end, timeout)?;
            }
            if p.unselected > 0 && !options.include_unselected {
                p.refused.push(format!(
                    "{}{} records in the range were not selected by any route (filtered out or skipped) and would be lost; give --include-unselected to delete them too",
                    if p.unselected_exact { "" } else { "up to " },
                    p.unselected
                ));
            }
        }
        partitions.push(p);
    }

    let mut topics = Vec::new();
    if options.delete_topic {
        let mut by_topic: BTreeMap<(String, String), Vec<&PartitionPurge>> = BTreeMap::new();
        for p in &partitions {
            by_topic
                .entry((p.cluster.clone(), p.topic.clone()))
                .or_default()
                .push(p);
        }
        for ((cluster_name, topic), parts) in by_topic {
            let src = &config.clusters[&cluster_name];
            let mut t = TopicPurge {
                cluster: cluster_name.clone(),
                topic: topic.clone(),
                partitions: parts.len(),
                records_after: 0,
                refused: Vec::new(),
                outcome: None,
            };
            let refused: Vec<String> = parts
                .iter()
                .filter(|p| !p.refused.is_empty())
                .map(|p| p.partition.to_string())
                .collect();
            if !refused.is_empty() {
                t.refused.push(format!(
                    "partitions {} are refused (see above)",
                    refused.join(", ")
                ));
            }
            let unselected: u64 = parts.iter().map(|p| p.unselected).sum();
            if unselected > 0 {
                t.refused.push(format!(
                    "{unselected} records were not selected by any route (--include-unselected does not extend to deleting a topic)"
                ));
            }
            if t.refused.is_empty() {
                // Read, not looked up: a watermark alone can under-report (tansu).
                for p in &parts {
                    t.records_after += count(
                        src,
                        &topic,
                        p.partition,
                        p.delete_before(),
                        i64::MAX,
                        timeout,
                    )?;
                }
                if t.records_after > 0 {
                    t.refused.push(format!(
                        "{} records lie after the verified ends (written since, or past a route's end): deleting the topic would lose them",
                        t.records_after
                    ));
                }
            }
            topics.push(t);
        }
    }

    Ok(PurgePlan {
        options: options.clone(),
        partitions,
        topics,
        executed: false,
    })
}

/// One route's row for a partition: the end it proves, or why it proves nothing to delete.
fn gate(row: &VerifyRow, low: i64) -> Result<i64, String> {
    let c = &row.coverage;
    if let Some(why) = &row.unverifiable {
        return Err(format!("cannot verify: {why}"));
    }
    if !c.started {
        return Err("not copied (no checkpoint for this partition)".into());
    }
    if !row.by_content {
        return Err("compared by count only (provenance = false); purge deletes only what was compared record by record".into());
    }
    if !row.matches(false) {
        return Err(format!(
            "MISMATCH: {} missing, {} unexpected, {} altered",
            row.missing, row.unexpected, row.altered
        ));
    }
    if c.fixed_end() && !c.complete() {
        return Err(format!("INCOMPLETE: {}", c.gaps()));
    }
    if c.not_copied_before > 0 {
        return Err(format!(
            "{} offsets of the route's range before the copied range were never copied",
            c.not_copied_before
        ));
    }
    if row.aged_out_of_target > 0 {
        // Their copies may be gone from the target: deleting the source would lose them.
        return Err(format!(
            "{} offsets of the range are no longer proven on the target (its retention may have removed their copies)",
            row.aged_out_of_target
        ));
    }
    let (first, end) = row.source_range;
    if first > low {
        return Err(format!(
            "the copy began at offset {first}, but the source holds records from {low}: [{low}, {first}) was never copied and DeleteRecords would delete it too"
        ));
    }
    Ok(end)
}

/// Records in `[from, to)`, counted by reading (offsets can have gaps).
fn count(
    cluster: &crate::config::ClusterConfig,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    timeout: Duration,
) -> Result<u64, ClusterError> {
    let mut n = 0u64;
    verify::scan(cluster, topic, partition, from, to, timeout, |_| n += 1)?;
    Ok(n)
}

/// Records in `range`, and how many of them every one of `routes` filters out.
fn count_unselected(
    cluster: &crate::config::ClusterConfig,
    routes: &[&RouteConfig],
    topic: &str,
    partition: i32,
    range: (i64, i64),
    timeout: Duration,
) -> Result<(u64, u64), ClusterError> {
    let (mut records, mut unselected) = (0u64, 0u64);
    verify::scan(cluster, topic, partition, range.0, range.1, timeout, |m| {
        records += 1;
        let filtered = routes.iter().all(|r| {
            if r.validate.is_empty() && r.filter.is_none() {
                return false;
            }
            r.decide(&m.view(), m.bytes() as u64) == Decision::Filtered
        });
        if filtered {
            unselected += 1;
        }
    })?;
    Ok((records, unselected))
}

/// Deletes what the plan allows: whole topics (under `delete_topic`) and, for the other
/// purgeable partitions, the records below their verified end. Records each outcome in the
/// plan; a broker that refuses is reported per partition, never fatal to the rest.
pub fn execute(config: &Config, plan: &mut PurgePlan) {
    plan.executed = true;
    let timeout = config.run.connect_timeout.max(Duration::from_secs(10));
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let admin = |name: &str| -> Result<AdminClient<QuietContext>, String> {
        cluster::base_config(&config.clusters[name])
            .create_with_context(QuietContext {
                cluster: name.to_string(),
            })
            .map_err(|e| cluster::client_error_detail(&e))
    };

    let deleting: Vec<(String, String)> = plan
        .topics
        .iter()
        .filter(|t| t.refused.is_empty())
        .map(|t| (t.cluster.clone(), t.topic.clone()))
        .collect();
    for t in plan.topics.iter_mut().filter(|t| t.refused.is_empty()) {
        let outcome = admin(&t.cluster).and_then(|a| {
            match futures::executor::block_on(a.delete_topics(&[&t.topic], &opts)) {
                Err(e) => Err(unsupported(&e, "DeleteTopics")),
                Ok(r) => match r.into_iter().next() {
                    Some(Err((_, code))) => Err(code_text(code, "DeleteTopics")),
                    _ => Ok(()),
                },
            }
        });
        // Deletions are logged at warn so they stay in the log under --quiet too.
        match &outcome {
            Ok(()) => tracing::warn!(
                "purge: deleted topic {}:{} (every partition verified)",
                t.cluster,
                t.topic
            ),
            Err(e) => tracing::error!("purge: topic {}:{} not deleted: {e}", t.cluster, t.topic),
        }
        t.outcome = Some(outcome);
    }

    // DeleteRecords, one request per cluster for all its purgeable partitions.
    let mut by_cluster: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in plan.partitions.iter().enumerate() {
        if p.deletable() && !deleting.contains(&(p.cluster.clone(), p.topic.clone())) {
            by_cluster.entry(p.cluster.clone()).or_default().push(i);
        }
    }
    for (name, idx) in by_cluster {
        let mut tpl = TopicPartitionList::new();
        for &i in &idx {
            let p = &plan.partitions[i];
            if let Err(e) =
                tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.delete_before()))
            {
                plan.partitions[i].outcome = Some(Err(e.to_string()));
            }
        }
        let res = admin(&name).and_then(|a| {
            futures::executor::block_on(a.delete_records(&tpl, &opts))
                .map_err(|e| unsupported(&e, "DeleteRecords"))
        });
        for &i in &idx {
            let p = &mut plan.partitions[i];
            if p.outcome.is_some() {
                continue;
            }
            let outcome = match &res {
                Err(e) => Err(e.clone()),
                Ok(done) => match done.find_partition(&p.topic, p.partition) {
                    None => Err("the broker's answer does not name this partition".into()),
                    Some(e) => match (e.error(), e.offset()) {
                        (Err(KafkaError::AdminOp(code)), _) => {
                            Err(code_text(code, "DeleteRecords"))
                        }
                        (Err(err), _) => Err(unsupported(&err, "DeleteRecords")),
                        (Ok(()), Offset::Offset(o)) => Ok(o),
                        (Ok(()), other) => Err(format!("unexpected answer {other:?}")),
                    },
                },
            };
            if outcome.is_err() {
                p.low_after = low_now(config, p, timeout);
            }
            match &outcome {
                Ok(low) => tracing::warn!(
                    "purge: deleted {} records below offset {} of {} (verified); it now starts at {low}",
                    p.records,
                    p.delete_before(),
                    p.source()
                ),
                Err(e) => tracing::error!("purge: {}: DeleteRecords failed: {e}", p.source()),
            }
            p.outcome = Some(outcome);
        }
    }
}

/// The partition's first offset read back, `None` if the lookup fails too.
fn low_now(config: &Config, p: &PartitionPurge, timeout: Duration) -> Option<i64> {
    let c = cluster::consumer(&config.clusters[&p.cluster], &[]).ok()?;
    cluster::watermarks(&c, &p.cluster, &p.topic, p.partition, timeout)
        .ok()
        .map(|(low, _)| low)
}

/// A request the broker does not know is said in those words: it is the likely answer of
/// brokers without the API (librdkafka's mock cluster; tansu refuses it in its storage).
fn unsupported(e: &KafkaError, api: &str) -> String {
    match e {
        KafkaError::AdminOp(code) => code_text(*code, api),
        e => match e.rdkafka_error_code() {
            Some(code) => code_text(code, api),
            None => format!("{api} failed: {e}"),
        },
    }
}

fn code_text(code: RDKafkaErrorCode, api: &str) -> String {
    match code {
        RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion => {
            format!("the broker does not support {api} ({code})")
        }
        // What a broker that has the request but not its implementation does (tansu 0.6.0's
        // storage panics on DeleteRecords and the connection goes).
        RDKafkaErrorCode::BrokerTransportFailure => format!(
            "the broker does not support {api}, or failed on it: it dropped the connection ({code})"
        ),
        // librdkafka's mock cluster never answers DeleteTopics.
        RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut => {
            format!("no answer to {api} in time ({code}): the broker may not support it")
        }
        _ => format!("{api} failed: {code}"),
    }
}

impl PurgePlan {
    /// 0: every selected partition is (or would be) deleted or had nothing to delete;
    /// 1 (`exit::MISMATCH`): some were refused; 4 (`exit::CLUSTER`): a deletion failed.
    pub fn exit_code(&self) -> i32 {
        let failed = self
            .partitions
            .iter()
            .any(|p| matches!(p.outcome, Some(Err(_))))
            || self
                .topics
                .iter()
                .any(|t| matches!(t.outcome, Some(Err(_))));
        let refused = self.partitions.iter().any(|p| !p.refused.is_empty())
            || self.topics.iter().any(|t| !t.refused.is_empty());
        if failed {
            exit::CLUSTER
        } else if refused {
            exit::MISMATCH
        } else {
            exit::OK
        }
    }

    fn topic_deleted(&self, p: &PartitionPurge) -> Option<&TopicPurge> {
        self.topics
            .iter()
            .find(|t| t.cluster == p.cluster && t.topic == p.topic && t.refused.is_empty())
    }

    /// What happens (or happened) to a partition, in a word or two.
    fn action(&self, p: &PartitionPurge) -> String {
        if let Some(t) = self.topic_deleted(p) {
            return match (&t.outcome, self.executed) {
                (Some(Ok(())), _) => "TOPIC DELETED".into(),
                (Some(Err(_)), _) => "FAILED (topic)".into(),
                (None, _) => "WOULD DELETE TOPIC".into(),
            };
        }
        if !p.refused.is_empty() {
            return "REFUSED".into();
        }
        if !p.deletable() {
            return "nothing to delete".into();
        }
        match &p.outcome {
            Some(Ok(_)) => "DELETED".into(),
            Some(Err(_)) => "FAILED".into(),
            None => "WOULD DELETE".into(),
        }
    }

    pub fn table(&self) -> String {
        let headers = [
            "source",
            "routes",
            "delete range",
            "records",
            "unselected",
            "dead-lettered",
            "action",
            "first offset now",
        ];
        let rows: Vec<Vec<String>> = self
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.source(),
                    p.routes.join(","),
                    match p.verified_end {
                        Some(_) => format!("[{}, {})", p.low, p.delete_before()),
                        None => "-".into(),
                    },
                    p.records.to_string(),
                    if p.unselected_exact || p.unselected == 0 {
                        p.unselected.to_string()
                    } else {
                        format!("<={}", p.unselected)
                    },
                    p.dead_lettered.to_string(),
                    self.action(p),
                    match (&p.outcome, p.low_after, self.topic_deleted(p)) {
                        (_, _, Some(_)) => "-".into(),
                        (Some(Ok(o)), _, _) => o.to_string(),
                        (_, Some(o), _) => o.to_string(),
                        _ => p.low.to_string(),
                    },
                ]
            })
            .collect();
        let mut out = render_table(&headers, &rows);
        for p in &self.partitions {
            for why in &p.refused {
                out.push_str(&format!("{} refused: {why}\n", p.source()));
            }
            if let Some(Err(e)) = &p.outcome {
                out.push_str(&format!(
                    "{} FAILED: {e}; {}\n",
                    p.source(),
                    p.after_failure()
                ));
            }
            if p.following && p.refused.is_empty() && p.deletable() {
                out.push_str(&format!(
                    "{}: a following route: only up to {}, the position verified now, whatever the copy has reached since\n",
                    p.source(),
                    p.delete_before()
                ));
            }
        }
        for t in &self.topics {
            for why in &t.refused {
                out.push_str(&format!(
                    "topic {}:{} not deleted: {why}\n",
                    t.cluster, t.topic
                ));
            }
            if let Some(Err(e)) = &t.outcome {
                out.push_str(&format!("topic {}:{} FAILED: {e}\n", t.cluster, t.topic));
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The closing line: what was (or would be) deleted, and what is kept elsewhere.
    pub fn summary(&self) -> String {
        let ready: Vec<&PartitionPurge> = self
            .partitions
            .iter()
            .filter(|p| p.refused.is_empty() && (p.deletable() || self.topic_deleted(p).is_some()))
            .collect();
        let records: u64 = ready.iter().map(|p| p.records).sum();
        let unselected: u64 = ready.iter().map(|p| p.unselected).sum();
        let dead: u64 = ready.iter().map(|p| p.dead_lettered).sum();
        let refused = self
            .partitions
            .iter()
            .filter(|p| !p.refused.is_empty())
            .count();
        let failed = self
            .partitions
            .iter()
            .filter(|p| matches!(p.outcome, Some(Err(_))))
            .count()
            + self
                .topics
                .iter()
                .filter(|t| matches!(t.outcome, Some(Err(_))))
                .count();
        let mut out = if self.executed {
            let deleted = ready
                .iter()
                .filter(|p| {
                    matches!(p.outcome, Some(Ok(_)))
                        || self
                            .topic_deleted(p)
                            .is_some_and(|t| matches!(t.outcome, Some(Ok(()))))
                })
                .count();
            format!(
                "deleted the verified records of {deleted} of {} partitions",
                self.partitions.len()
            )
        } else {
            format!(
                "dry run, nothing deleted: {} of {} partitions would lose {records} records, each verified on the target now",
                ready.len(),
                self.partitions.len()
            )
        };
        if unselected > 0 {
            out.push_str(&format!(
                "; {unselected} of them were NOT selected by any route and are lost (--include-unselected)"
            ));
        }
        if dead > 0 {
            out.push_str(&format!(
                "; {dead} of them were dead-lettered: kept on their dead-letter topics, not lost"
            ));
        }
        if refused > 0 {
            out.push_str(&format!("; {refused} partitions REFUSED (see above)"));
        }
        if failed > 0 {
            out.push_str(&format!("; {failed} deletions FAILED (see above)"));
        }
        if !self.executed && !ready.is_empty() {
            out.push_str("; run again with --execute to delete");
        }
        out
    }

    /// The JSON document (schema `docs/purge-plan.schema.json`).
    pub fn json(&self) -> Value {
        json!({
            "kind": "kmirror-purge-plan",
            "version": JSON_SCHEMA_VERSION,
            "executed": self.executed,
            "include_unselected": self.options.include_unselected,
            "delete_topic": self.options.delete_topic,
            "summary": self.summary(),
            "partitions": self.partitions.iter().map(|p| json!({
                "source": p.source(),
                "cluster": p.cluster,
                "topic": p.topic,
                "partition": p.partition,
                "routes": p.routes,
                "low": p.low,
                "verified_end": p.verified_end,
                "delete_before": p.verified_end.map(|_| p.delete_before()),
                "records": p.records,
                "unselected": p.unselected,
                "unselected_exact": p.unselected_exact,
                "dead_lettered": p.dead_lettered,
                "following": p.following,
                "action": self.action(p),
                "refused": p.refused,
                "low_after": match &p.outcome { Some(Ok(o)) => Some(*o), _ => p.low_after },
                "error": match &p.outcome {
                    Some(Err(e)) => Some(redact(&format!("{e}; {}", p.after_failure())).into_owned()),
                    _ => None,
                },
            })).collect::<Vec<_>>(),
            "topics": self.topics.iter().map(|t| json!({
                "cluster": t.cluster,
                "topic": t.topic,
                "partitions": t.partitions,
                "records_after": t.records_after,
                "refused": t.refused,
                "deleted": matches!(t.outcome, Some(Ok(()))),
                "error": match &t.outcome { Some(Err(e)) => Some(redact(e).into_owned()), _ => None },
            })).collect::<Vec<_>>(),
        })
    }
}
