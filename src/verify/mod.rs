//! Verification: for every (route, source partition) of the plan, read the source records
//! in the copied range and the target records in the written range, and compare them record
//! by record; and say how much of the route's range the copy has not reached
//! (`coverage.rs`), because a copy can match and still be incomplete. Counting is done by
//! reading, never by subtracting offsets: compaction, transaction markers and some brokers
//! leave gaps or misreport watermarks.
//!
//! With provenance headers (the default), each target record names its route and source
//! offset, so the comparison finds missing, duplicated and altered records (`compare.rs`:
//! content digest, and timestamps where the target keeps them), not just unequal counts.
//! Without them, counts are compared: per partition under `preserve`, per route as a whole
//! otherwise (any task may write any target partition). `report.rs` renders the JSON and
//! JUnit reports; this file reads and decides.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

mod compare;
mod coverage;
mod report;

pub use compare::{compare, Comparison, Fingerprint};
pub use coverage::Coverage;
pub use report::JSON_SCHEMA_VERSION;

use crate::checkpoint::{partition_key, CheckpointError, CheckpointStore};
use crate::cluster::{self, ClusterError};
use crate::config::{ClusterConfig, Config, ErrorAction, Partitioning, RouteConfig};
use crate::copy::filter::{self, Decision, RecordView};
use crate::copy::record::{
    parse_provenance, parse_provenance_full, raw_headers, record_bytes, Provenance,
    DLQ_ROUTE_HEADER, DLQ_SOURCE_HEADER, PROVENANCE_HEADER,
};
use crate::counts::render_table;
use crate::plan::{self, CreateTopics, Ends, TaskEnd};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("nothing to verify: {0}")]
    Nothing(String),
}

/// How many offsets of each kind of difference a row lists.
pub const FIRST_OFFSETS: usize = 10;

#[derive(Debug, Clone, Default)]
pub struct VerifyRow {
    pub route: String,
    pub source: String,
    pub source_range: (i64, i64),
    pub source_records: u64,
    pub target: String,
    pub target_records: u64,
    /// Source records the route's filter leaves out (not expected on the target).
    pub filtered: u64,
    /// Source records found in the dead-letter topic instead of the target.
    pub dead_lettered: u64,
    /// Poison records a route with on_error = "skip" leaves out.
    pub skipped: u64,
    pub missing: u64,
    /// Target records naming a source offset in the range that the source does not hold,
    /// or that the route should not have copied (filtered or poison).
    pub unexpected: u64,
    pub duplicates: u64,
    pub altered: u64,
    /// Copies whose timestamp the target set itself (a topic with LogAppendTime): their
    /// timestamps could not be kept and were not compared (the rest of them was).
    pub timestamps_not_kept: u64,
    /// The first few ([`FIRST_OFFSETS`]) source offsets missing, altered, and unexpected on
    /// the target, in offset order: where to start looking.
    pub first_missing: Vec<i64>,
    pub first_altered: Vec<i64>,
    pub first_unexpected: Vec<i64>,
    /// Compared by content (provenance present) or only by count.
    pub by_content: bool,
    /// How much of the route's range the copy has reached.
    pub coverage: Coverage,
    /// Why this row cannot be verified (a failure), e.g. records that cannot be attributed.
    pub unverifiable: Option<String>,
    /// Count mode across partitions: the row counts the route's whole selection (from this
    /// many source partitions) against everything it wrote to the target topic.
    pub whole_route: Option<usize>,
    /// Count mode across partitions: this partition's copies are counted in the route's
    /// whole-route row, not here.
    pub in_group: bool,
}

/// Count mode across partitions: a route's selection and the target range it wrote.
#[derive(Debug, Default)]
struct CountGroup {
    expected: u64,
    tasks: usize,
    topics: BTreeSet<String>,
    /// Target partition -> `[from, to)` written by any of the route's tasks.
    ranges: BTreeMap<i32, (i64, i64)>,
}

impl VerifyRow {
    pub fn matches(&self, fail_on_duplicates: bool) -> bool {
        self.unverifiable.is_none()
            && self.missing == 0
            && self.unexpected == 0
            && self.altered == 0
            && (!fail_on_duplicates || self.duplicates == 0)
    }

    /// The copied range matches and, for a route with a fixed end, covers the whole range.
    /// (A following route that is behind is not a failure: it is reported as lag.)
    pub fn ok(&self, fail_on_duplicates: bool) -> bool {
        self.matches(fail_on_duplicates) && (self.coverage.complete() || !self.coverage.fixed_end())
    }

    /// One word for the row: OK, MISMATCH, INCOMPLETE (fixed end not reached) or BEHIND.
    pub fn verdict(&self, fail_on_duplicates: bool) -> &'static str {
        if self.unverifiable.is_some() {
            "UNVERIFIABLE"
        } else if !self.matches(fail_on_duplicates) {
            "MISMATCH"
        } else if self.coverage.complete() {
            "OK"
        } else if self.coverage.fixed_end() {
            "INCOMPLETE"
        } else {
            "BEHIND"
        }
    }
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub rows: Vec<VerifyRow>,
    pub fail_on_duplicates: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.ok(self.fail_on_duplicates))
    }

    pub fn table(&self) -> String {
        let headers = [
            "route",
            "source",
            "route range",
            "range",
            "source records",
            "filtered",
            "dead-lettered",
            "skipped",
            "target",
            "target records",
            "missing",
            "unexpected",
            "duplicates",
            "altered",
            "not copied",
            "result",
        ];
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.route.clone(),
                    r.source.clone(),
                    match r.whole_route {
                        Some(_) => "-".into(),
                        None => r.coverage.route_range(),
                    },
                    match r.whole_route {
                        Some(n) => format!("{n} partitions"),
                        None => format!("[{}, {})", r.source_range.0, r.source_range.1),
                    },
                    r.source_records.to_string(),
                    r.filtered.to_string(),
                    r.dead_lettered.to_string(),
                    r.skipped.to_string(),
                    r.target.clone(),
                    if r.in_group {
                        "in /* row".into()
                    } else {
                        r.target_records.to_string()
                    },
                    r.missing.to_string(),
                    r.unexpected.to_string(),
                    r.duplicates.to_string(),
                    if r.by_content {
                        r.altered.to_string()
                    } else {
                        "n/a".into()
                    },
                    match r.coverage.gaps() {
                        g if g.is_empty() => "-".into(),
                        g => g,
                    },
                    r.verdict(self.fail_on_duplicates).into(),
                ]
            })
            .collect();
        let mut out = render_table(&headers, &rows);
        for r in &self.rows {
            if let Some(why) = &r.unverifiable {
                out.push_str(&format!("{} {}: cannot verify: {why}\n", r.route, r.source));
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The closing line: exactly what was proven, and what was not.
    pub fn summary(&self) -> String {
        let n = self.rows.iter().filter(|r| r.whole_route.is_none()).count();
        let fod = self.fail_on_duplicates;
        let bad = self.rows.iter().filter(|r| !r.matches(fod)).count();
        let incomplete: Vec<&VerifyRow> = self
            .rows
            .iter()
            .filter(|r| r.coverage.fixed_end() && !r.coverage.complete())
            .collect();
        let behind: Vec<&VerifyRow> = self
            .rows
            .iter()
            .filter(|r| !r.coverage.fixed_end() && !r.coverage.complete())
            .collect();
        let copies: u64 = self
            .rows
            .iter()
            .filter(|r| r.whole_route.is_none())
            .map(|r| {
                r.source_records
                    .saturating_sub(r.filtered + r.skipped + r.dead_lettered + r.missing)
            })
            .sum();
        let offsets = |rows: &[&VerifyRow]| -> u64 {
            rows.iter()
                .map(|r| r.coverage.not_copied_before + r.coverage.behind)
                .sum()
        };
        let mut out = if bad > 0 {
            let unverifiable = self
                .rows
                .iter()
                .filter(|r| r.unverifiable.is_some())
                .count();
            // Whole-route count rows are rows, not partitions.
            let what = if self.rows.len() == n {
                "partitions"
            } else {
                "rows"
            };
            let mut m = format!("{bad} of {} {what} do NOT match", self.rows.len());
            if unverifiable > 0 {
                m.push_str(&format!(" ({unverifiable} cannot be verified, see above)"));
            }
            m
        } else if incomplete.is_empty() && behind.is_empty() {
            format!("verified {n} partitions: every source record is on the target ({copies} selected records in the routes' whole ranges, each copied and matching)")
        } else {
            format!("verified {n} partitions: the copied ranges match ({copies} selected records on the target), but the copy is NOT complete")
        };
        if !incomplete.is_empty() {
            out.push_str(&format!(
                "; {} partitions of routes with a fixed end are INCOMPLETE ({} offsets not copied)",
                incomplete.len(),
                offsets(&incomplete)
            ));
        }
        if !behind.is_empty() {
            out.push_str(&format!(
                "; {} partitions of following routes are behind by {} offsets (lag, not a mismatch)",
                behind.len(),
                offsets(&behind)
            ));
        }
        let not_kept: u64 = self.rows.iter().map(|r| r.timestamps_not_kept).sum();
        if not_kept > 0 {
            out.push_str(&format!(
                "; timestamps NOT compared for {not_kept} copies: the target set its own (LogAppendTime), so only key, value and headers were"
            ));
        }
        let dups: u64 = self.rows.iter().map(|r| r.duplicates).sum();
        if dups > 0 {
            out.push_str(&format!(
                "; {dups} duplicate deliveries (at-least-once retries or restarts){}",
                if fod { ", counted as failures" } else { "" }
            ));
        }
        out
    }
}

/// Reads `[from, to)` of a partition, calling `f` for every record. Bounded: fails if no
/// record or end-of-partition arrives for `timeout`. Ends at the first record at or past
/// `to`, or at end-of-partition (a trailing gap), whichever comes first.
pub fn scan(
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    timeout: Duration,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ClusterError> {
    if from >= to {
        return Ok(());
    }
    let consumer = cluster::consumer(cluster, &[("fetch.message.max.bytes", "4194304")])?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| lookup(cluster, topic, partition, e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| lookup(cluster, topic, partition, e))?;
    let mut last_progress = Instant::now();
    let mut next = from;
    // End-of-partition below `to` is either a trailing gap or a broker whose watermark runs
    // behind its data: keep reading for a moment before calling it a gap.
    let mut eof_since: Option<Instant> = None;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                eof_since = None;
                if m.offset() >= to {
                    return Ok(());
                }
                f(&m);
                next = m.offset() + 1;
                if next >= to {
                    return Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                if to == i64::MAX || next >= to {
                    return Ok(());
                }
                eof_since.get_or_insert_with(Instant::now);
            }
            Some(Err(e)) => {
                if matches!(
                    e.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::AutoOffsetReset)
                        | Some(rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange)
                ) {
                    return Err(ClusterError::Lookup {
                        cluster: cluster.name.clone(),
                        topic: topic.into(),
                        partition,
                        what: format!("read from offset {from}"),
                        detail: "offset out of range (deleted by retention?)".into(),
                    });
                }
                tracing::debug!("verify read: {e}");
            }
            None => {}
        }
        if eof_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::debug!("{topic}/{partition}: no records in [{next}, {to}): a gap");
            return Ok(());
        }
        if last_progress.elapsed() > timeout {
            return Err(ClusterError::Lookup {
                cluster: cluster.name.clone(),
                topic: topic.into(),
                partition,
                what: format!("read of offsets [{from}, {to})"),
                detail: format!("no record for {timeout:?}"),
            });
        }
    }
}

fn lookup(cluster: &ClusterConfig, topic: &str, partition: i32, e: KafkaError) -> ClusterError {
    ClusterError::Lookup {
        cluster: cluster.name.clone(),
        topic: topic.into(),
        partition,
        what: "assign".into(),
        detail: e.to_string(),
    }
}

/// What the route does with a source record: the same decision as the copy path.
fn decide(r: &RouteConfig, m: &BorrowedMessage<'_>) -> Decision {
    if r.validate.is_empty() && r.filter.is_none() {
        return Decision::Copy;
    }
    let view = RecordView::new(
        m.key(),
        m.payload(),
        m.timestamp().to_millis(),
        raw_headers(m),
    );
    filter::decide(r, &view, record_bytes(m) as u64)
}

fn provenance<'m>(m: &'m BorrowedMessage<'_>) -> Option<Provenance<'m>> {
    let hdrs = raw_headers(m);
    let prov = hdrs
        .iter()
        .rev()
        .find(|h| h.name == PROVENANCE_HEADER.as_bytes())?;
    parse_provenance_full(prov.value?)
}

/// Source offsets (by source topic and partition) that `route` wrote to its dead-letter
/// topic, read from the whole topic (dead-letter topics are small by nature).
fn dead_lettered(
    config: &Config,
    route: &str,
    dl: &crate::config::DeadLetter,
    timeout: Duration,
) -> Result<BTreeMap<(String, i32), BTreeSet<i64>>, ClusterError> {
    let cluster = &config.clusters[&dl.cluster];
    let consumer = cluster::consumer(cluster, &[])?;
    let md = cluster::metadata(&consumer, cluster, Some(&dl.topic), timeout)?;
    let partitions = cluster::partition_count(&md, &dl.topic).unwrap_or(0);
    let mut out: BTreeMap<(String, i32), BTreeSet<i64>> = BTreeMap::new();
    for p in 0..partitions as i32 {
        let (low, _) = cluster::watermarks(&consumer, &dl.cluster, &dl.topic, p, timeout)?;
        scan(cluster, &dl.topic, p, low, i64::MAX, timeout, |m| {
            let hdrs = raw_headers(m);
            let get = |name: &str| {
                hdrs.iter()
                    .find(|h| h.name == name.as_bytes())
                    .and_then(|h| h.value)
            };
            if get(DLQ_ROUTE_HEADER) != Some(route.as_bytes()) {
                return;
            }
            if let Some((_, t, sp, o)) = get(DLQ_SOURCE_HEADER).and_then(parse_provenance) {
                out.entry((t.to_string(), sp)).or_default().insert(o);
            }
        })?;
    }
    Ok(out)
}

/// Compares source and target for every task of the selected routes: the copied range
/// record by record, and how much of the route's range the copy has not reached.
pub fn verify(
    config: &Config,
    store: &dyn CheckpointStore,
    route: Option<&str>,
    fail_on_duplicates: bool,
) -> Result<VerifyReport, VerifyError> {
    let cp = crate::copy::load_checkpoint(config, store)?.ok_or_else(|| {
        VerifyError::Nothing(format!("no checkpoint at {} (run first)", store.describe()))
    })?;
    let copied_any = config
        .routes
        .iter()
        .filter(|r| route.is_none_or(|n| n == r.name))
        .any(|r| {
            cp.routes
                .get(&r.name)
                .is_some_and(|rc| !rc.partitions.is_empty())
        });
    if !copied_any {
        return Err(VerifyError::Nothing(
            "the checkpoint records no copied partitions for these routes".into(),
        ));
    }
    let timeout = config.run.connect_timeout.max(Duration::from_secs(10));
    // The plan gives every partition of the routes' topics, the source's end now and each
    // route's end, so partitions the copy never reached are reported too.
    let plan = plan::build_with(config, Some(&cp), CreateTopics::Never, Ends::AsConfigured)?;
    let mut rows = Vec::new();
    for (ri, r) in config.routes.iter().enumerate() {
        if route.is_some_and(|n| n != r.name) {
            continue;
        }
        let rc = cp.routes.get(&r.name);
        let src = &config.clusters[&r.source];
        let dlq = match &r.dead_letter {
            Some(dl) if rc.is_some() => dead_lettered(config, &r.name, dl, timeout)?,
            _ => BTreeMap::new(),
        };
        // Headers the route sets or drops are compared separately (set) or not at all (drop).
        let ignore: Vec<&str> = r
            .headers
            .set
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(r.headers.drop.iter().map(String::as_str))
            .collect();
        let grouped = !r.provenance && r.partitioning != Partitioning::Preserve;
        let mut groups: BTreeMap<(String, String), CountGroup> = BTreeMap::new();
        // Count mode cannot tell this route's records from another's without provenance.
        let shared_without_provenance = (!r.provenance)
            .then(|| {
                plan.tasks.iter().find(|t| {
                    t.route != ri
                        && !config.routes[t.route].provenance
                        && plan.tasks.iter().any(|o| {
                            o.route == ri
                                && o.target_cluster == t.target_cluster
                                && o.target_topic == t.target_topic
                        })
                })
            })
            .flatten()
            .map(|t| {
                format!(
                    "route \"{}\" also writes {}:{} without provenance, so records cannot be attributed; set provenance = true on both",
                    t.route_name, t.target_cluster, t.target_topic
                )
            });
        for task in plan.tasks.iter().filter(|t| t.route == ri) {
            let (topic, partition) = (task.topic.as_str(), task.partition);
            let pc = rc.and_then(|rc| rc.partitions.get(&partition_key(topic, partition)));
            // A timestamp end is where the copy path stops: the first record at or after it
            // (read, not looked up: not every broker answers lookups by time).
            let end_offset = match task.end {
                TaskEnd::Timestamp(ts) => {
                    let from = pc.map_or(task.start, |pc| pc.next_offset);
                    let mut at = None;
                    scan(src, topic, partition, from, task.high, timeout, |m| {
                        if at.is_none() && m.timestamp().to_millis().is_some_and(|t| t >= ts) {
                            at = Some(m.offset());
                        }
                    })?;
                    Some(at.unwrap_or(task.high))
                }
                _ => None,
            };
            let coverage = Coverage::new(
                r,
                task,
                pc.map(|pc| (pc.first_offset, pc.next_offset)),
                pc.and_then(|pc| pc.end),
                end_offset,
            );
            let mut row = VerifyRow {
                route: r.name.clone(),
                source: format!("{}:{}/{}", r.source, topic, partition),
                source_range: (coverage.copied_to, coverage.copied_to),
                target: format!("{}:{}", task.target_cluster, task.target_topic),
                by_content: r.provenance,
                coverage,
                ..Default::default()
            };
            let Some(pc) = pc else {
                rows.push(row);
                continue;
            };
            let Some(dst) = config.clusters.get(&pc.target_cluster) else {
                rows.push(row);
                continue;
            };
            row.source_range = (pc.first_offset, pc.next_offset);
            row.target = format!("{}:{}", pc.target_cluster, pc.target_topic);
            // Source side: what the route should have done with every record in the copied
            // range, decided exactly as the copy path decides it.
            let mut expected: BTreeMap<i64, Option<Fingerprint>> = BTreeMap::new();
            let mut poison: Vec<i64> = Vec::new();
            let mut source_records = 0u64;
            scan(
                src,
                topic,
                partition,
                pc.first_offset,
                pc.next_offset,
                timeout,
                |m| {
                    source_records += 1;
                    match decide(r, m) {
                        Decision::Copy => {
                            expected.insert(
                                m.offset(),
                                r.provenance.then(|| Fingerprint::of(m, &ignore)),
                            );
                        }
                        Decision::Filtered => row.filtered += 1,
                        Decision::Poison(_) => poison.push(m.offset()),
                    }
                },
            )?;
            row.source_records = source_records;
            let dlq_offsets = dlq.get(&(topic.to_string(), partition));
            for o in &poison {
                if dlq_offsets.is_some_and(|s| s.contains(o)) {
                    row.dead_lettered += 1;
                } else if r.on_error == ErrorAction::Skip {
                    row.skipped += 1;
                } else {
                    row.missing += 1;
                    if row.first_missing.len() < FIRST_OFFSETS {
                        row.first_missing.push(*o);
                    }
                }
            }
            if let Some(why) = &shared_without_provenance {
                row.unverifiable = Some(why.clone());
            }
            if grouped {
                // Without provenance, a record cannot be traced to the task that wrote it
                // and every task may write every target partition: only the route's whole
                // selection against the whole range it wrote can be counted soundly.
                let g = groups
                    .entry((pc.target_cluster.clone(), pc.target_topic.clone()))
                    .or_default();
                g.expected += expected.len() as u64;
                g.topics.insert(topic.to_string());
                g.tasks += 1;
                for (tp, [a, b]) in &pc.target {
                    let from = pc.target_start.get(tp).map_or(*a, |s| (*s).min(*a));
                    let e = g.ranges.entry(*tp).or_insert((from, b + 1));
                    e.0 = e.0.min(from);
                    e.1 = e.1.max(b + 1);
                }
                row.in_group = true;
                rows.push(row);
                continue;
            }
            // Target side: every record written for this task, found by provenance.
            let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
            let mut target_count = 0u64;
            for (tp, [a, b]) in &pc.target {
                // From before the first write: copies by a run that died before it could
                // checkpoint are duplicates to count, and lie below the first recorded offset.
                let from = pc.target_start.get(tp).map_or(*a, |s| (*s).min(*a));
                scan(dst, &pc.target_topic, *tp, from, b + 1, timeout, |m| {
                    if !r.provenance {
                        target_count += 1;
                        return;
                    }
                    let Some(pv) = provenance(m) else {
                        return;
                    };
                    let (c, t, p, o) = (pv.cluster, pv.topic, pv.partition, pv.offset);
                    // Another route's copy of the same source record (two routes with
                    // disjoint filters into one topic) is that route's, not unexpected here.
                    // Values written before routes were named are attributed by range alone.
                    if pv.route.is_some_and(|n| n != r.name)
                        || c != r.source
                        || t != topic
                        || p != partition
                        || o < pc.first_offset
                        || o >= pc.next_offset
                    {
                        return; // another task's or another writer's record
                    }
                    target_count += 1;
                    *seen.entry(o).or_default() += 1;
                    let set_ok = r.headers.set.iter().all(|(k, v)| {
                        raw_headers(m)
                            .iter()
                            .filter(|h| h.name == k.as_bytes())
                            .map(|h| h.value)
                            .eq([Some(v.as_bytes())])
                    });
                    let verdict = match expected.get(&o) {
                        Some(Some(want)) => compare(want, &Fingerprint::of(m, &ignore)),
                        _ => Comparison::Same,
                    };
                    if verdict == Comparison::SameTimestampNotKept {
                        row.timestamps_not_kept += 1;
                    }
                    if !set_ok || verdict == Comparison::Altered {
                        row.altered += 1;
                        if row.first_altered.len() < FIRST_OFFSETS {
                            row.first_altered.push(o);
                        }
                    }
                })?;
            }
            row.target_records = target_count;
            if r.provenance {
                for o in expected.keys() {
                    if seen.contains_key(o) {
                        continue;
                    }
                    // Refused by the target and dead-lettered from there.
                    if dlq_offsets.is_some_and(|s| s.contains(o)) {
                        row.dead_lettered += 1;
                    } else {
                        row.missing += 1;
                        if row.first_missing.len() < 2 * FIRST_OFFSETS {
                            row.first_missing.push(*o);
                        }
                    }
                }
                let unexpected: Vec<i64> = seen
                    .keys()
                    .filter(|o| !expected.contains_key(o))
                    .copied()
                    .collect();
                row.unexpected = unexpected.len() as u64;
                row.first_unexpected = unexpected.into_iter().take(FIRST_OFFSETS).collect();
                row.duplicates = seen.values().map(|n| (*n as u64).saturating_sub(1)).sum();
            } else {
                let want = expected.len() as u64;
                row.missing += want.saturating_sub(row.target_records);
                row.duplicates = row.target_records.saturating_sub(want);
            }
            row.first_missing.sort_unstable();
            row.first_missing.truncate(FIRST_OFFSETS);
            rows.push(row);
        }
        for ((tc, tt), g) in groups {
            let Some(dst) = config.clusters.get(&tc) else {
                continue;
            };
            let mut target_records = 0u64;
            for (tp, (from, to)) in &g.ranges {
                scan(dst, &tt, *tp, *from, *to, timeout, |m| {
                    // Another route's copy names its route; this route's records carry none.
                    if provenance(m).is_none() {
                        target_records += 1;
                    }
                })?;
            }
            let topics: Vec<&str> = g.topics.iter().map(String::as_str).collect();
            rows.push(VerifyRow {
                route: r.name.clone(),
                source: format!("{}:{}/*", r.source, topics.join(",")),
                source_records: g.expected,
                target: format!("{tc}:{tt}"),
                target_records,
                missing: g.expected.saturating_sub(target_records),
                duplicates: target_records.saturating_sub(g.expected),
                whole_route: Some(g.tasks),
                unverifiable: shared_without_provenance.clone(),
                ..Default::default()
            });
        }
    }
    Ok(VerifyReport {
        rows,
        fail_on_duplicates,
    })
}
