//! Verification: for every checkpointed (route, source partition), read the source records
//! in the copied range and the target records in the written range, and compare them record
//! by record. Counting is done by reading, never by subtracting offsets: compaction,
//! transaction markers and some brokers leave gaps or misreport watermarks.
//!
//! With provenance headers (the default), each target record names its source offset, so
//! the comparison finds missing, duplicated and altered records (by content digest), not
//! just unequal counts. Without them, counts are compared.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::checkpoint::{parse_partition_key, CheckpointError, CheckpointStore};
use crate::cluster::{self, ClusterError};
use crate::config::{ClusterConfig, Config, ErrorAction, RouteConfig};
use crate::copy::filter::{self, Decision, RecordView};
use crate::copy::record::{
    content_digest, parse_provenance, raw_headers, record_bytes, DLQ_ROUTE_HEADER,
    DLQ_SOURCE_HEADER, PROVENANCE_HEADER,
};
use crate::counts::render_table;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("nothing to verify: {0}")]
    Nothing(String),
}

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
    /// Compared by content (provenance present) or only by count.
    pub by_content: bool,
}

impl VerifyRow {
    pub fn matches(&self, fail_on_duplicates: bool) -> bool {
        self.missing == 0
            && self.unexpected == 0
            && self.altered == 0
            && (!fail_on_duplicates || self.duplicates == 0)
    }
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub rows: Vec<VerifyRow>,
    pub fail_on_duplicates: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.matches(self.fail_on_duplicates))
    }

    pub fn table(&self) -> String {
        let headers = [
            "route",
            "source",
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
            "result",
        ];
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.route.clone(),
                    r.source.clone(),
                    format!("[{}, {})", r.source_range.0, r.source_range.1),
                    r.source_records.to_string(),
                    r.filtered.to_string(),
                    r.dead_lettered.to_string(),
                    r.skipped.to_string(),
                    r.target.clone(),
                    r.target_records.to_string(),
                    r.missing.to_string(),
                    r.unexpected.to_string(),
                    r.duplicates.to_string(),
                    if r.by_content {
                        r.altered.to_string()
                    } else {
                        "n/a".into()
                    },
                    if r.matches(self.fail_on_duplicates) {
                        "OK".into()
                    } else {
                        "MISMATCH".into()
                    },
                ]
            })
            .collect();
        let mut out = render_table(&headers, &rows);
        let bad = self
            .rows
            .iter()
            .filter(|r| !r.matches(self.fail_on_duplicates))
            .count();
        let dups: u64 = self.rows.iter().map(|r| r.duplicates).sum();
        out.push_str(&if bad == 0 {
            format!(
                "verified {} partitions: every source record is on the target",
                self.rows.len()
            )
        } else {
            format!("{bad} of {} partitions do NOT match", self.rows.len())
        });
        if dups > 0 {
            out.push_str(&format!(
                "; {dups} duplicate deliveries (at-least-once retries or restarts){}",
                if self.fail_on_duplicates {
                    ", counted as failures"
                } else {
                    ""
                }
            ));
        }
        out.push('\n');
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

fn provenance<'m>(m: &'m BorrowedMessage<'_>) -> Option<(&'m str, &'m str, i32, i64)> {
    let hdrs = raw_headers(m);
    let prov = hdrs
        .iter()
        .rev()
        .find(|h| h.name == PROVENANCE_HEADER.as_bytes())?;
    parse_provenance(prov.value?)
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

/// Compares source and target for every checkpointed task of the selected routes.
pub fn verify(
    config: &Config,
    store: &dyn CheckpointStore,
    route: Option<&str>,
    fail_on_duplicates: bool,
) -> Result<VerifyReport, VerifyError> {
    let cp = crate::copy::load_checkpoint(config, store)?.ok_or_else(|| {
        VerifyError::Nothing(format!("no checkpoint at {} (run first)", store.describe()))
    })?;
    let timeout = config.run.connect_timeout.max(Duration::from_secs(10));
    let mut rows = Vec::new();
    for r in &config.routes {
        if route.is_some_and(|n| n != r.name) {
            continue;
        }
        let Some(rc) = cp.routes.get(&r.name) else {
            continue;
        };
        let src = &config.clusters[&r.source];
        let dlq = match &r.dead_letter {
            Some(dl) => dead_lettered(config, &r.name, dl, timeout)?,
            None => BTreeMap::new(),
        };
        // Headers the route sets or drops are compared separately (set) or not at all (drop).
        let ignore: Vec<&str> = r
            .headers
            .set
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(r.headers.drop.iter().map(String::as_str))
            .collect();
        for (key, pc) in &rc.partitions {
            let Some((topic, partition)) = parse_partition_key(key) else {
                continue;
            };
            let Some(dst) = config.clusters.get(&pc.target_cluster) else {
                continue;
            };
            let mut row = VerifyRow {
                route: r.name.clone(),
                source: format!("{}:{}/{}", r.source, topic, partition),
                source_range: (pc.first_offset, pc.next_offset),
                target: format!("{}:{}", pc.target_cluster, pc.target_topic),
                by_content: r.provenance,
                ..Default::default()
            };
            // Source side: what the route should have done with every record in the copied
            // range, decided exactly as the copy path decides it.
            let mut expected: BTreeMap<i64, u64> = BTreeMap::new();
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
                                if r.provenance {
                                    content_digest(m, &ignore)
                                } else {
                                    0
                                },
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
                }
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
                    let Some((c, t, p, o)) = provenance(m) else {
                        return;
                    };
                    if c != r.source
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
                    if !set_ok
                        || expected
                            .get(&o)
                            .is_some_and(|d| *d != content_digest(m, &ignore))
                    {
                        row.altered += 1;
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
                    }
                }
                row.unexpected = seen.keys().filter(|o| !expected.contains_key(o)).count() as u64;
                row.duplicates = seen.values().map(|n| (*n as u64).saturating_sub(1)).sum();
            } else {
                let want = expected.len() as u64;
                row.missing += want.saturating_sub(row.target_records);
                row.duplicates = row.target_records.saturating_sub(want);
            }
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return Err(VerifyError::Nothing(
            "the checkpoint records no copied partitions for these routes".into(),
        ));
    }
    Ok(VerifyReport {
        rows,
        fail_on_duplicates,
    })
}
