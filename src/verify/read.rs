//! Verify's reads: a partition range at a time on consumers each worker reuses, and a
//! bounded pool of workers. Prefetch is bounded per consumer, and a consumer stops fetching
//! (unassigns) as soon as its scan ends.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::cluster::{self, ClusterError, QuietContext};
use crate::config::ClusterConfig;

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
    f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ClusterError> {
    if from >= to {
        return Ok(());
    }
    let consumer = verify_consumer(cluster)?;
    scan_with(&consumer, cluster, topic, partition, from, to, timeout, f)
}

/// Verify's reads: a partition at a time, so prefetch is bounded per consumer.
pub(super) fn verify_consumer(
    cluster: &ClusterConfig,
) -> Result<BaseConsumer<QuietContext>, ClusterError> {
    cluster::consumer(
        cluster,
        &[
            ("fetch.message.max.bytes", "4194304"),
            // librdkafka's default lets one partition queue 64 MiB ahead; verify reads one
            // partition per consumer at a time, so this bounds its prefetch per worker.
            ("queued.max.messages.kbytes", "8192"),
            // The byte bound counts record values only; each prefetched record also costs a
            // ~270-byte op plus its share of the fetch buffer (the copy path's heap profile,
            // `copy::prefetch`), and librdkafka's default keeps 100,000 records per
            // partition queued. Bound the count too: 16,384 records x ~512 B = 8 MiB.
            ("queued.min.messages", "16384"),
            // Verify reads ranges that are already written: a fetch the broker holds open
            // waiting for new data (500 ms by default) only delays the next partition's
            // first fetch on the same connection.
            ("fetch.wait.max.ms", "10"),
        ],
    )
}

/// One worker's consumers, one per cluster, reused scan after scan (a consumer per scan
/// costs a connection and a metadata round trip each time).
pub(super) struct Reader {
    pub(super) consumers: HashMap<String, BaseConsumer<QuietContext>>,
    pub(super) timeout: Duration,
}

impl Reader {
    pub(super) fn new(timeout: Duration) -> Reader {
        Reader {
            consumers: HashMap::new(),
            timeout,
        }
    }

    pub(super) fn consumer(
        &mut self,
        cluster: &ClusterConfig,
    ) -> Result<&BaseConsumer<QuietContext>, ClusterError> {
        Ok(match self.consumers.entry(cluster.name.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(verify_consumer(cluster)?),
        })
    }

    pub(super) fn watermarks(
        &mut self,
        cluster: &ClusterConfig,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, i64), ClusterError> {
        let timeout = self.timeout;
        let consumer = self.consumer(cluster)?;
        cluster::watermarks(consumer, &cluster.name, topic, partition, timeout)
    }

    pub(super) fn scan(
        &mut self,
        cluster: &ClusterConfig,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        f: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), ClusterError> {
        if from >= to {
            return Ok(());
        }
        let timeout = self.timeout;
        let consumer = self.consumer(cluster)?;
        let r = scan_with(consumer, cluster, topic, partition, from, to, timeout, f);
        // Stop fetching ahead: an idle consumer must not fill its queue for nobody.
        let _ = consumer.unassign();
        r
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn scan_with(
    consumer: &BaseConsumer<QuietContext>,
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    timeout: Duration,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ClusterError> {
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
    let mut stale = 0u64;
    // Records are progress; the clock is read only when none arrives (a clock read per record
    // was an eighth of verify's CPU).
    let mut progressed = false;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            // A reused consumer: anything left from an earlier assignment is not ours, and is
            // no progress (it must not hold off the timeout below either).
            Some(Ok(m))
                if m.topic() != topic || m.partition() != partition || m.offset() < next =>
            {
                stale += 1;
            }
            Some(Ok(m)) => {
                progressed = true;
                eof_since = None;
                if m.offset() >= to {
                    return Ok(());
                }
                f(&m);
                next = m.offset() + 1;
                if next >= to {
                    return Ok(());
                }
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => {
                if to == i64::MAX || next >= to {
                    return Ok(());
                }
                eof_since.get_or_insert_with(Instant::now);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
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
        let now = Instant::now();
        if std::mem::take(&mut progressed) {
            last_progress = now;
        }
        if eof_since.is_some_and(|t| now - t >= Duration::from_secs(1)) {
            tracing::debug!("{topic}/{partition}: no records in [{next}, {to}): a gap");
            return Ok(());
        }
        if now - last_progress > timeout {
            return Err(ClusterError::Lookup {
                cluster: cluster.name.clone(),
                topic: topic.into(),
                partition,
                what: format!("read of offsets [{from}, {to})"),
                detail: format!(
                    "no record for {timeout:?} (at offset {next}; {stale} records of an earlier read skipped)"
                ),
            });
        }
    }
}

/// Runs `jobs` on `parallel` threads, each with its own [`Reader`]; results in job order.
/// The first error stops the rest.
pub(super) fn run_jobs<J: Sync, R: Send>(
    parallel: usize,
    timeout: Duration,
    jobs: &[J],
    f: impl Fn(&mut Reader, &J) -> Result<R, ClusterError> + Sync,
) -> Result<Vec<R>, ClusterError> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<ClusterError>> = Mutex::new(None);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, jobs.len().max(1)) {
            s.spawn(|| {
                let mut reader = Reader::new(timeout);
                loop {
                    if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { return };
                    match f(&mut reader, job) {
                        Ok(r) => results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r),
                        Err(e) => {
                            failed
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect())
}

pub(super) fn lookup(
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    e: KafkaError,
) -> ClusterError {
    ClusterError::Lookup {
        cluster: cluster.name.clone(),
        topic: topic.into(),
        partition,
        what: "assign".into(),
        detail: e.to_string(),
    }
}
