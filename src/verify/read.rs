//! Verify's reads: a partition range at a time on consumers each worker reuses, and a
//! bounded pool of workers. Prefetch is bounded per consumer, and a consumer stops fetching
//! (unassigns) as soon as its scan ends.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::batch::{self, drain, PartitionReader};
use super::record::Record;
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
    f: impl FnMut(&Record<'_>),
) -> Result<(), ClusterError> {
    if from >= to {
        return Ok(());
    }
    let consumer = verify_consumer(cluster)?;
    scan_with(&consumer, cluster, topic, partition, from, to, timeout, f)
}

/// What a verify consumer may hold ahead of the scan, and how it fetches. Verify runs
/// `--parallel` workers with a consumer per cluster each, so these bound its read buffers:
/// per consumer about 2,048 queued records (~300 B of librdkafka op each, plus the fetch
/// responses they pin) or 512 KiB of values, whichever comes first. Larger bounds made peak
/// RSS follow the records per partition up to the bound (heap profile in BENCHMARKS.md,
/// issue 9), for no gain in throughput against a broker a fetch round trip away.
const CONSUMER_PROPERTIES: &[(&str, &str)] = &[
    // One partition per consumer: a fetch response brings at most this much of it (a
    // record batch larger than this still comes whole, as Kafka's fetch guarantees).
    ("fetch.message.max.bytes", "131072"),
    // librdkafka's defaults (100,000 records, 64 MiB) let one partition queue its whole
    // range ahead of the scan. The byte bound counts record values only; the count bound
    // is the one that holds for small records.
    ("queued.min.messages", "2048"),
    ("queued.max.messages.kbytes", "512"),
    // Once the queue reaches those bounds, librdkafka waits this long before fetching the
    // partition again (1 s by default), however fast the scan drains it: with any partition
    // longer than the bounds, verify spent most of its time waiting (6,144,000 records over
    // 192 partitions: 90 s instead of 10 s).
    ("fetch.queue.backoff.ms", "10"),
    // Verify reads ranges that are already written: a fetch the broker holds open waiting
    // for new data (500 ms by default) only delays the next partition's first fetch on the
    // same connection.
    ("fetch.wait.max.ms", "10"),
];

/// Verify's reads: a partition at a time, so prefetch is bounded per consumer.
pub(super) fn verify_consumer(
    cluster: &ClusterConfig,
) -> Result<BaseConsumer<QuietContext>, ClusterError> {
    cluster::consumer(cluster, CONSUMER_PROPERTIES)
}

/// Caps glibc's malloc arenas for a `kmirror verify` (or `purge`) process, before its
/// consumers start.
///
/// librdkafka allocates each fetched record's op on its broker threads and verify frees it
/// on a worker thread; with glibc's default of up to 8 arenas per core, every one of the
/// ~30 threads of `--parallel` workers' consumers can get its own arena, and memory freed
/// into them stays there in fragments: peak RSS then grew with the records per partition
/// well beyond the heap in use (BENCHMARKS.md, issue 9). A few arenas, growing with
/// `--parallel`, keep it flat. Only the verify and purge commands call this: `run` (the
/// copy path) keeps glibc's defaults. No effect with another allocator or libc.
pub fn bound_malloc_arenas(parallel: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = parallel.div_ceil(2).clamp(2, 8) as libc::c_int;
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX is valid with any
        // positive value, and arenas already made are kept.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = parallel;
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
        f: impl FnMut(&Record<'_>),
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

/// Records taken from librdkafka at a time (at most): each consumer's queue holds up to
/// `queued.min.messages` more (CONSUMER_PROPERTIES).
const BATCH: usize = 256;

/// Events destroyed from a consumer's own queue at a time (see `batch::drain`).
const DRAIN: usize = 4096;

#[allow(clippy::too_many_arguments)]
pub(super) fn scan_with(
    consumer: &BaseConsumer<QuietContext>,
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    timeout: Duration,
    mut f: impl FnMut(&Record<'_>),
) -> Result<(), ClusterError> {
    // A reused consumer: what an earlier assignment fetched ahead is not ours.
    let mut stale = drained(consumer, DRAIN);
    let mut reader =
        PartitionReader::split(consumer, topic, partition, BATCH).ok_or_else(|| {
            ClusterError::Lookup {
                cluster: cluster.name.clone(),
                topic: topic.into(),
                partition,
                what: "assign".into(),
                detail: "librdkafka gave no queue for the partition".into(),
            }
        })?;
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
        let mut progressed = false;
        let batch = reader.next_batch(Duration::from_millis(100), |entry| {
            match entry {
                // Left from an earlier assignment of the same partition: no progress (it must
                // not hold off the timeout below either).
                batch::Entry::Record(m) if m.partition() != partition || m.offset() < next => {
                    stale += 1;
                }
                batch::Entry::Record(m) => {
                    progressed = true;
                    eof_since = None;
                    if m.offset() >= to {
                        return ControlFlow::Break(Ok(()));
                    }
                    f(&m);
                    next = m.offset() + 1;
                    if next >= to {
                        return ControlFlow::Break(Ok(()));
                    }
                }
                batch::Entry::Error {
                    code: RDKafkaErrorCode::PartitionEOF,
                    ..
                } => {
                    if to == i64::MAX || next >= to {
                        return ControlFlow::Break(Ok(()));
                    }
                    eof_since.get_or_insert_with(Instant::now);
                }
                batch::Entry::Error {
                    code: RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                    ..
                } => {
                    return ControlFlow::Break(Err(ClusterError::Lookup {
                        cluster: cluster.name.clone(),
                        topic: topic.into(),
                        partition,
                        what: format!("read from offset {from}"),
                        detail: "offset out of range (deleted by retention?)".into(),
                    }));
                }
                batch::Entry::Error { code, offset, text } => {
                    tracing::debug!(
                        "verify read of {topic}/{partition} at {offset}: {code:?}: {text}"
                    );
                }
            }
            ControlFlow::Continue(())
        });
        let taken = match batch {
            Ok(n) => n,
            Err(done) => return done,
        };
        // Caught up: serve the consumer's own queue (logs, errors, and records of earlier
        // scans, whose memory would otherwise stay held).
        if taken < BATCH {
            stale += drained(consumer, DRAIN);
        }
        let now = Instant::now();
        if progressed {
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

/// `batch::drain`, its errors logged as the per-message poll logged them.
fn drained(consumer: &BaseConsumer<QuietContext>, max: usize) -> u64 {
    let (records, errors) = drain(consumer, max);
    for e in errors {
        tracing::debug!("verify read: {e}");
    }
    records
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
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    match f(&mut reader, job) {
                        Ok(r) => results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r),
                        Err(e) => {
                            failed
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            break;
                        }
                    }
                }
                // Its consumers close off the way to the next pass and the report.
                crate::cluster::drop_in_background(reader);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ffi::CString;

    use rdkafka::client::Client;
    use rdkafka::message::{Header, OwnedHeaders, Timestamp};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;
    use rdkafka_sys as rdsys;

    use super::*;

    fn cluster(bootstrap: String) -> ClusterConfig {
        ClusterConfig {
            name: "c".into(),
            bootstrap,
            properties: BTreeMap::new(),
        }
    }

    /// A mock cluster holding `n` records in partition 0 of topic "t" (of 2 partitions):
    /// key `k<i>`, value `v<i>`, timestamp 1000 + i, a header `h` = `<i>`.
    fn seeded(n: usize) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 2, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for i in 0..n {
            let (k, v, h) = (format!("k{i}"), format!("v{i}"), i.to_string());
            let headers = OwnedHeaders::new().insert(Header {
                key: "h",
                value: Some(h.as_bytes()),
            });
            let mut r = BaseRecord::to("t")
                .partition(0)
                .key(k.as_bytes())
                .payload(v.as_bytes())
                .timestamp(1000 + i as i64)
                .headers(headers);
            loop {
                match producer.send(r) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        producer.poll(Duration::from_millis(10));
                        r = back;
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        mock
    }

    /// (offset, key, value, timestamp, header) of every record a scan offers.
    type Seen = Vec<(i64, String, String, Timestamp, String)>;

    fn scan_into(reader: &mut Reader, c: &ClusterConfig, from: i64, to: i64) -> Seen {
        let mut seen = Vec::new();
        reader
            .scan(c, "t", 0, from, to, |m| {
                let text = |b: Option<&[u8]>| String::from_utf8(b.unwrap().to_vec()).unwrap();
                let h: Vec<_> = m.headers().collect();
                assert_eq!(h.len(), 1);
                assert_eq!(h[0].name, b"h");
                assert_eq!(m.partition(), 0);
                seen.push((
                    m.offset(),
                    text(m.key()),
                    text(m.payload()),
                    m.timestamp(),
                    text(h[0].value),
                ));
            })
            .unwrap();
        seen
    }

    fn expected(range: std::ops::Range<i64>) -> Seen {
        range
            .map(|i| {
                (
                    i,
                    format!("k{i}"),
                    format!("v{i}"),
                    Timestamp::CreateTime(1000 + i),
                    i.to_string(),
                )
            })
            .collect()
    }

    /// Batches of records end exactly at `to` even in the middle of a batch (records fetched
    /// past it are not offered), each record whole (key, value, timestamp, headers), and the
    /// same consumer then reads other ranges of the same partition, earlier ones included,
    /// without offering what it had fetched ahead for the earlier scan.
    #[test]
    fn scans_end_at_to_mid_batch_and_a_reused_consumer_reads_only_its_range() {
        let mock = seeded(3000);
        let c = cluster(mock.bootstrap_servers());
        let mut reader = Reader::new(Duration::from_secs(30));
        assert_eq!(scan_into(&mut reader, &c, 100, 1337), expected(100..1337));
        assert_eq!(scan_into(&mut reader, &c, 5, 17), expected(5..17));
        assert_eq!(scan_into(&mut reader, &c, 1337, 1338), expected(1337..1338));
        // To the end of the partition: ends at EOF.
        assert_eq!(
            scan_into(&mut reader, &c, 2990, i64::MAX),
            expected(2990..3000)
        );
    }

    /// End of partition before `to` is a trailing gap, not a failure nor a hang; an empty
    /// partition too.
    #[test]
    fn end_of_partition_before_to_ends_the_scan() {
        let mock = seeded(50);
        let c = cluster(mock.bootstrap_servers());
        let mut reader = Reader::new(Duration::from_secs(30));
        assert_eq!(scan_into(&mut reader, &c, 40, 500), expected(40..50));
        let mut n = 0;
        reader.scan(&c, "t", 1, 0, 10, |_| n += 1).unwrap();
        assert_eq!(n, 0);
    }

    /// An error for the partition arrives in a batch as a message with `err` set: reading
    /// past the end (the broker answers offset out of range, and verify's consumers never
    /// reset) fails the scan with that reason instead of waiting for the timeout.
    #[test]
    fn an_error_in_a_batch_fails_the_scan_with_its_reason() {
        let mock = seeded(20);
        let c = cluster(mock.bootstrap_servers());
        let mut reader = Reader::new(Duration::from_secs(60));
        let t = Instant::now();
        let err = reader.scan(&c, "t", 0, 500, 600, |_| {}).unwrap_err();
        assert!(err.to_string().contains("offset out of range"), "{err}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "waited for the timeout"
        );
        // The consumer reads on afterwards.
        assert_eq!(scan_into(&mut reader, &c, 0, 20), expected(0..20));
    }

    /// Every message a batch returned is destroyed, however the scan ends (at `to` with
    /// more of the batch unread, in the middle of a callback's panic): librdkafka's
    /// consumer cannot be destroyed while a message of it lives (rd_kafka_destroy waits for
    /// them), so a leak shows as a consumer that never goes away.
    #[test]
    fn messages_are_destroyed_however_a_scan_ends() {
        let mock = seeded(2000);
        let c = cluster(mock.bootstrap_servers());
        let (tx, rx) = std::sync::mpsc::channel();
        let bootstrap = c.clone();
        std::thread::spawn(move || {
            let mut reader = Reader::new(Duration::from_secs(30));
            assert_eq!(scan_into(&mut reader, &bootstrap, 0, 3), expected(0..3));
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reader.scan(&bootstrap, "t", 0, 10, 1500, |m| {
                    if m.offset() == 20 {
                        panic!("stop");
                    }
                })
            }));
            assert!(panicked.is_err());
            drop(reader);
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the consumer was not destroyed: a message outlived its scan");
    }

    /// A property as the native client holds it once created.
    fn property(client: &Client<QuietContext>, name: &str) -> String {
        let name = CString::new(name).unwrap();
        let mut buf = vec![0u8; 64];
        let mut size = buf.len();
        // SAFETY: the conf belongs to the live client and is only read; `buf` holds `size`
        // bytes and librdkafka writes at most that many, NUL included.
        let res = unsafe {
            let conf = rdsys::rd_kafka_conf(client.native_ptr());
            rdsys::rd_kafka_conf_get(conf, name.as_ptr(), buf.as_mut_ptr().cast(), &mut size)
        };
        assert_eq!(
            res,
            rdsys::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK,
            "{name:?}"
        );
        buf.truncate(size.saturating_sub(1));
        String::from_utf8(buf).unwrap()
    }

    /// A scan drains its consumer's queue as fast as records arrive, so the consumer must
    /// fetch again as soon as the queue has room: librdkafka's default waits 1 s once the
    /// queue was full, which made verify idle most of the time on any partition longer
    /// than its queue (BENCHMARKS.md, issue 9). And the queue stays small: verify's peak
    /// memory is these bounds times the consumers, whatever the records per partition.
    #[test]
    fn verify_consumers_refetch_at_once_and_queue_little() {
        let cluster = ClusterConfig {
            name: "c".into(),
            // Never reached: creating a consumer does not wait for its broker.
            bootstrap: "127.0.0.1:9".into(),
            properties: BTreeMap::new(),
        };
        let consumer = verify_consumer(&cluster).unwrap();
        let client = consumer.client();
        let backoff: u64 = property(client, "fetch.queue.backoff.ms").parse().unwrap();
        let wait: u64 = property(client, "fetch.wait.max.ms").parse().unwrap();
        assert!(backoff <= wait, "fetch.queue.backoff.ms = {backoff}");
        let queued: u64 = property(client, "queued.min.messages").parse().unwrap();
        assert!(queued <= 4096, "queued.min.messages = {queued}");
        let kbytes: u64 = property(client, "queued.max.messages.kbytes")
            .parse()
            .unwrap();
        assert!(kbytes <= 1024, "queued.max.messages.kbytes = {kbytes}");
    }
}
