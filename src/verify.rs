//! Verification: for every checkpointed (route, source partition), read the source records
//! in the copied range and the target records in the written range, and compare them record
//! by record. Counting is done by reading, never by subtracting offsets: compaction,
//! transaction markers and some brokers leave gaps or misreport watermarks.
//!
//! With provenance headers (the default), each target record names its source offset, so
//! the comparison finds missing, duplicated and altered records (by content digest), not
//! just unequal counts. Without them, counts are compared.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::checkpoint::{parse_partition_key, CheckpointError, CheckpointStore};
use crate::cluster::{self, ClusterError};
use crate::config::{ClusterConfig, Config};
use crate::copy::record::{content_digest, parse_provenance, raw_headers, PROVENANCE_HEADER};
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
    pub missing: u64,
    pub duplicates: u64,
    pub altered: u64,
    /// Compared by content (provenance present) or only by count.
    pub by_content: bool,
}

impl VerifyRow {
    pub fn matches(&self, fail_on_duplicates: bool) -> bool {
        if self.by_content {
            self.missing == 0 && self.altered == 0 && (!fail_on_duplicates || self.duplicates == 0)
        } else {
            self.source_records == self.target_records
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
        self.rows.iter().all(|r| r.matches(self.fail_on_duplicates))
    }

    pub fn table(&self) -> String {
        let headers = [
            "route",
            "source",
            "range",
            "source records",
            "target",
            "target records",
            "missing",
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
                    r.target.clone(),
                    r.target_records.to_string(),
                    r.missing.to_string(),
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
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.offset() >= to {
                    return Ok(());
                }
                f(&m);
                if m.offset() + 1 >= to {
                    return Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
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
            // Source side: offset -> digest of every record in the copied range.
            let mut source: BTreeMap<i64, u64> = BTreeMap::new();
            scan(
                src,
                topic,
                partition,
                pc.first_offset,
                pc.next_offset,
                timeout,
                |m| {
                    source.insert(m.offset(), if r.provenance { content_digest(m) } else { 0 });
                },
            )?;
            row.source_records = source.len() as u64;
            // Target side: every record written for this task, found by provenance.
            let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
            let mut target_count = 0u64;
            for (tp, [a, b]) in &pc.target {
                scan(dst, &pc.target_topic, *tp, *a, b + 1, timeout, |m| {
                    if !r.provenance {
                        target_count += 1;
                        return;
                    }
                    let hdrs = raw_headers(m);
                    let Some(prov) = hdrs
                        .iter()
                        .rev()
                        .find(|h| h.name == PROVENANCE_HEADER.as_bytes())
                    else {
                        return; // another writer's record
                    };
                    let Some((c, t, p, o)) = prov.value.and_then(parse_provenance) else {
                        return;
                    };
                    if c != r.source
                        || t != topic
                        || p != partition
                        || o < pc.first_offset
                        || o >= pc.next_offset
                    {
                        return;
                    }
                    target_count += 1;
                    *seen.entry(o).or_default() += 1;
                    if source.get(&o).is_some_and(|d| *d != content_digest(m)) {
                        row.altered += 1;
                    }
                })?;
            }
            row.target_records = target_count;
            if r.provenance {
                row.missing = source.keys().filter(|o| !seen.contains_key(o)).count() as u64;
                row.duplicates = seen.values().map(|n| (*n as u64).saturating_sub(1)).sum();
            } else {
                row.missing = row.source_records.saturating_sub(row.target_records);
                row.duplicates = row.target_records.saturating_sub(row.source_records);
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
