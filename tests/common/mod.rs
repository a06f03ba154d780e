//! Shared helpers for kmirror's integration tests against librdkafka mock clusters.
//!
//! What is here, so a test reads as "set up, run, assert real outcomes":
//! - [`Mirror`]: a source and a target mock cluster (3 brokers each) hosted by
//!   `kmirror::dev_cluster::DevClusters`, a temporary checkpoint directory, and a builder for
//!   routing files that point at them ([`Mirror::config`]);
//! - producing test data: [`produce`] (hand-made [`TestRecord`]s: keys, null keys, tombstones,
//!   binary headers, explicit timestamps, explicit partitions) and [`produce_numbered`] (bulk);
//! - reading a topic back exactly as stored: [`read_topic`], [`read_partition`] give
//!   [`ReadRecord`]s with raw key/value/header bytes and timestamps;
//! - provenance: [`provenance`] parses the `kmirror.source` header, [`census`] counts how
//!   often each source (partition, offset) appears on the target, and [`assert_exactly_once`]
//!   / [`assert_at_least_once`] compare that census with the expected offset ranges;
//! - runs: [`run_to_end`], [`spawn_run`] / [`RunningCopy`] (a run on a thread with its stop
//!   flag), [`checkpoint_progress`], [`wait_until`];
//! - report checks: [`assert_report_invariant`]; verification: [`verify_clean`];
//! - Java's murmur2 and the Java producer's partition choice: [`murmur2`], [`java_partition`].
//!
//! Everything here is independent of the copy path under test: records are produced and
//! read back with plain rdkafka clients, so an assertion never trusts kmirror's own view.
//!
//! Data sizes: the mock keeps at most 100,000 messages or 5 MB per partition (older ones are
//! deleted), so keep each partition well below that.
#![allow(dead_code)] // each test binary uses a different subset

pub mod cli;
pub mod kafka_double;
pub mod s3;
pub mod txn_source;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kmirror::checkpoint::{Checkpoint, CheckpointStore, FileStore};
use kmirror::config::Config;
use kmirror::copy::{self, RunError, RunOptions, RunReport};
use kmirror::dev_cluster::{Control, DevClusters};
use kmirror::verify::{self, VerifyReport};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, Timestamp};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Cluster names the routing files built by [`Mirror::config`] use.
pub const SOURCE: &str = "src";
pub const TARGET: &str = "dst";
/// Indexes of the two clusters in `Mirror::clusters` (for `Control` messages).
pub const SOURCE_IDX: usize = 0;
pub const TARGET_IDX: usize = 1;
/// Brokers per mock cluster (ids 1..=BROKERS).
pub const BROKERS: i32 = 3;
/// The provenance header kmirror adds to every copied record.
pub const PROVENANCE: &str = "kmirror.source";

/// Bound on any single wait in these helpers; a hang fails the test instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(60);

/// Logs from kmirror and librdkafka go to the test output (shown for failing tests).
/// `RUST_LOG` selects them; the default is warnings and errors.
pub fn init_logging() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A source and a target mock cluster plus a temporary directory for checkpoints.
pub struct Mirror {
    pub clusters: DevClusters,
    pub dir: tempfile::TempDir,
}

impl Mirror {
    /// Starts two mock clusters of [`BROKERS`] brokers, each with every `(topic, partitions)`.
    pub fn start(topics: &[(&str, i32)]) -> Mirror {
        init_logging();
        let topics: Vec<(String, i32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let clusters = DevClusters::start(2, BROKERS, &topics).expect("start mock clusters");
        Mirror {
            clusters,
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn source(&self) -> &str {
        &self.clusters.bootstraps[SOURCE_IDX]
    }

    pub fn target(&self) -> &str {
        &self.clusters.bootstraps[TARGET_IDX]
    }

    /// Creates a topic on the target cluster only (e.g. one with another partition count).
    pub fn create_target_topic(&self, topic: &str, partitions: i32) {
        self.clusters
            .create_topic(TARGET_IDX, topic, partitions)
            .expect("create target topic");
    }

    /// Injects a fault (see `kmirror::dev_cluster::Control`).
    pub fn control(&self, c: Control) {
        self.clusters
            .control(c.clone())
            .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }

    /// Takes every broker of cluster `idx` down (or back up).
    pub fn all_brokers(&self, idx: usize, up: bool) {
        for broker in 1..=BROKERS {
            self.control(if up {
                Control::BrokerUp {
                    cluster: idx,
                    broker,
                }
            } else {
                Control::BrokerDown {
                    cluster: idx,
                    broker,
                }
            });
        }
    }

    /// A checked routing file for job `job`: clusters `src` and `dst`, checkpoints in this
    /// mirror's directory written every 200ms, then `rest` (the `[[routes]]`, and any
    /// `[limits]` or `[run]` tables) verbatim.
    pub fn config(&self, job: &str, rest: &str) -> Config {
        let text = format!(
            r#"
[checkpoints]
dir = "${{TEST_DIR}}"
interval = "200ms"
job = "{job}"

[clusters.{SOURCE}]
bootstrap = "${{TEST_SOURCE}}"

[clusters.{TARGET}]
bootstrap = "${{TEST_TARGET}}"

{rest}
"#
        );
        let (src, dst) = (self.source().to_string(), self.target().to_string());
        let dir = self.dir.path().display().to_string();
        let env = move |k: &str| match k {
            "TEST_SOURCE" => Some(src.clone()),
            "TEST_TARGET" => Some(dst.clone()),
            "TEST_DIR" => Some(dir.clone()),
            _ => None,
        };
        let path = self.dir.path().join(format!("{job}.toml"));
        Config::from_str(&path, text, &env).unwrap_or_else(|e| panic!("routing file: {e}"))
    }

    /// The checkpoint store a run of `config` uses.
    pub fn store(&self, config: &Config) -> FileStore {
        FileStore::new(config.checkpoint_file())
    }
}

// ---------------------------------------------------------------------------------------
// Producing test data

/// A record to produce, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TestRecord {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// In order; a `None` value is a header with a null value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Milliseconds since the epoch; `None` lets the producer stamp the current time.
    pub timestamp: Option<i64>,
}

struct CountingContext {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error
                .lock()
                .unwrap()
                .get_or_insert_with(|| e.to_string());
        }
    }
}

/// A plain producer for test data. Use through [`produce`] / [`produce_numbered`], or
/// keep one for a background writer ([`DataProducer::send`] then [`DataProducer::flush`]).
pub struct DataProducer {
    producer: BaseProducer<CountingContext>,
}

impl DataProducer {
    pub fn new(bootstrap: &str) -> DataProducer {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            // Idempotent: test data lands in the order it was sent, even across retries.
            .set("enable.idempotence", "true")
            .set("log.connection.close", "false")
            .create_with_context(CountingContext {
                failed: AtomicU64::new(0),
                first_error: Mutex::new(None),
            })
            .expect("test producer");
        DataProducer { producer }
    }

    pub fn send(&self, topic: &str, r: &TestRecord) {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: v.as_deref(),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(r.partition);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        if !r.headers.is_empty() {
            rec = rec.headers(headers);
        }
        if let Some(ts) = r.timestamp {
            rec = rec.timestamp(ts);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(_), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("test producer: {e}"),
            }
        }
    }

    /// Waits until everything sent is acknowledged; panics if any record was refused.
    pub fn flush(&self) {
        self.producer.flush(WAIT).expect("flush test data");
        let failed = self.producer.context().failed.load(Ordering::Relaxed);
        assert_eq!(
            failed,
            0,
            "{failed} test records were not delivered (first error: {:?})",
            self.producer.context().first_error.lock().unwrap()
        );
    }
}

/// Produces `records` to `topic` in order and waits until every one is acknowledged.
pub fn produce(bootstrap: &str, topic: &str, records: &[TestRecord]) {
    let p = DataProducer::new(bootstrap);
    for (i, r) in records.iter().enumerate() {
        p.send(topic, r);
        if i % 1000 == 0 {
            p.producer.poll(Duration::ZERO);
        }
    }
    p.flush();
}

/// The record [`produce_numbered`] writes as number `i` of `partition`: key `k-<p>-<i>`,
/// a ~100-byte value, a `seq` header and timestamp `first_ts + i`.
pub fn numbered_record(partition: i32, i: u64, first_ts: i64) -> TestRecord {
    TestRecord {
        partition,
        key: Some(format!("k-{partition}-{i}").into_bytes()),
        value: Some(
            format!(
                "value {i:08} of partition {partition:03} {}",
                "x".repeat(64)
            )
            .into_bytes(),
        ),
        headers: vec![("seq".into(), Some(i.to_be_bytes().to_vec()))],
        timestamp: Some(first_ts + i as i64),
    }
}

/// Produces records `range` (see [`numbered_record`]) to every partition `0..partitions`.
pub fn produce_numbered(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    range: Range<u64>,
    first_ts: i64,
) {
    let p = DataProducer::new(bootstrap);
    for i in range {
        for part in 0..partitions {
            p.send(topic, &numbered_record(part, i, first_ts));
        }
        if i % 500 == 0 {
            p.producer.poll(Duration::ZERO);
        }
    }
    p.flush();
}

// ---------------------------------------------------------------------------------------
// Reading back

/// A record as stored on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Names and values as bytes, in order.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub timestamp: Timestamp,
}

fn reader(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kmirror-tests-assign-only")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error")
        .set("log.connection.close", "false")
        .create()
        .expect("test consumer")
}

/// (low, high) watermarks of a partition.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    reader(bootstrap)
        .fetch_watermarks(topic, partition, WAIT)
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"))
}

/// High watermarks of partitions `0..partitions`.
pub fn highs(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c = reader(bootstrap);
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, WAIT)
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                .1
        })
        .collect()
}

/// Partition count of `topic`.
pub fn partition_count(bootstrap: &str, topic: &str) -> i32 {
    let md = reader(bootstrap)
        .fetch_metadata(Some(topic), WAIT)
        .expect("metadata");
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .unwrap_or_else(|| panic!("no topic {topic}"));
    assert!(t.error().is_none(), "topic {topic}: {:?}", t.error());
    t.partitions().len() as i32
}

/// Every record of a partition from the low watermark up to the high watermark seen when
/// called. Fails (rather than returning less) if the read stalls for [`WAIT`].
pub fn read_partition(bootstrap: &str, topic: &str, partition: i32) -> Vec<ReadRecord> {
    let c = reader(bootstrap);
    let (low, high) = c
        .fetch_watermarks(topic, partition, WAIT)
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"));
    let mut out = Vec::new();
    if high <= low {
        return out;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .unwrap();
    c.assign(&tpl).expect("assign");
    let mut last = Instant::now();
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        (0..h.count())
                            .map(|i| {
                                let hd = h.get(i);
                                (hd.key.as_bytes().to_vec(), hd.value.map(<[u8]>::to_vec))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp: m.timestamp(),
                });
                if m.offset() + 1 >= high {
                    return out;
                }
            }
            // A trailing offset gap (none on the mock) ends the partition before `high - 1`.
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading {topic}/{partition}: {e}"),
            None => {}
        }
        assert!(
            last.elapsed() < WAIT,
            "reading {topic}/{partition}: stalled at {} of [{low}, {high})",
            out.len()
        );
    }
}

/// Every record of every partition of `topic`, partition by partition, in offset order.
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<ReadRecord> {
    (0..partition_count(bootstrap, topic))
        .flat_map(|p| read_partition(bootstrap, topic, p))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Provenance

/// Where a copied record came from: (cluster, topic, partition, offset), from the last
/// `kmirror.source` header.
pub fn provenance(r: &ReadRecord) -> Option<(String, String, i32, i64)> {
    let (_, v) = r
        .headers
        .iter()
        .rev()
        .find(|(k, _)| k.as_slice() == PROVENANCE.as_bytes())?;
    let s = std::str::from_utf8(v.as_deref()?).ok()?;
    let mut it = s.rsplitn(3, '/');
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let (who, topic) = it.next()?.split_once('/')?;
    // `<route>@<cluster>`, or just `<cluster>` in values written before routes were named.
    let cluster = who.split_once('@').map_or(who, |(_, c)| c);
    Some((cluster.to_string(), topic.to_string(), partition, offset))
}

/// The headers of a copied record without kmirror's provenance header.
pub fn headers_without_provenance(r: &ReadRecord) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.as_slice() != PROVENANCE.as_bytes())
        .cloned()
        .collect()
}

/// How many times each source (partition, offset) of `source_cluster:topic` appears among
/// `target` records. Panics on a target record without a provenance header or naming
/// another source: these tests write the target topics only through kmirror.
pub fn census(
    target: &[ReadRecord],
    source_cluster: &str,
    topic: &str,
) -> BTreeMap<(i32, i64), u32> {
    let mut seen = BTreeMap::new();
    for r in target {
        let (c, t, p, o) = provenance(r).unwrap_or_else(|| {
            panic!(
                "target record at {}/{} has no provenance header",
                r.partition, r.offset
            )
        });
        assert_eq!(
            (c.as_str(), t.as_str()),
            (source_cluster, topic),
            "target record at {}/{} names another source",
            r.partition,
            r.offset
        );
        *seen.entry((p, o)).or_insert(0) += 1;
    }
    seen
}

/// Asserts the census holds every offset of `expected[partition]` exactly once and nothing
/// else (no loss, no duplicate, nothing outside the range).
pub fn assert_exactly_once(seen: &BTreeMap<(i32, i64), u32>, expected: &BTreeMap<i32, Range<i64>>) {
    let d = CensusDiff::new(seen, expected);
    assert!(
        d.missing.is_empty() && d.duplicated.is_empty() && d.extra.is_empty(),
        "target differs from the expected source ranges {expected:?}: {} missing (first {:?}), {} duplicated (first {:?}), {} outside the ranges (first {:?})",
        d.missing.len(),
        d.missing.first(),
        d.duplicated.len(),
        d.duplicated.first(),
        d.extra.len(),
        d.extra.first()
    );
}

/// Asserts every offset of `expected` is present at least once and nothing outside the
/// ranges is; returns the number of duplicate deliveries (allowed by at-least-once).
pub fn assert_at_least_once(
    seen: &BTreeMap<(i32, i64), u32>,
    expected: &BTreeMap<i32, Range<i64>>,
) -> u64 {
    let d = CensusDiff::new(seen, expected);
    assert!(
        d.missing.is_empty() && d.extra.is_empty(),
        "target differs from the expected source ranges {expected:?}: {} missing (first {:?}), {} outside the ranges (first {:?})",
        d.missing.len(),
        d.missing.first(),
        d.extra.len(),
        d.extra.first()
    );
    d.duplicated.iter().map(|(_, n)| (*n - 1) as u64).sum()
}

/// A census compared with the expected source ranges.
pub struct CensusDiff {
    /// Expected (partition, offset)s absent from the target.
    pub missing: Vec<(i32, i64)>,
    /// (partition, offset)s present more than once, with their count.
    pub duplicated: Vec<((i32, i64), u32)>,
    /// (partition, offset)s on the target but outside the expected ranges.
    pub extra: Vec<(i32, i64)>,
}

impl CensusDiff {
    pub fn new(seen: &BTreeMap<(i32, i64), u32>, expected: &BTreeMap<i32, Range<i64>>) -> Self {
        let mut missing = Vec::new();
        for (p, r) in expected {
            for o in r.clone() {
                if !seen.contains_key(&(*p, o)) {
                    missing.push((*p, o));
                }
            }
        }
        CensusDiff {
            missing,
            duplicated: seen
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(k, n)| (*k, *n))
                .collect(),
            extra: seen
                .keys()
                .filter(|(p, o)| !expected.get(p).is_some_and(|r| r.contains(o)))
                .copied()
                .collect(),
        }
    }
}

/// `{p: range}` for partitions `0..n`, all with the same range.
pub fn same_range(n: i32, r: Range<i64>) -> BTreeMap<i32, Range<i64>> {
    (0..n).map(|p| (p, r.clone())).collect()
}

// ---------------------------------------------------------------------------------------
// Runs

/// Runs `config` to its end (no stop) and returns the report.
pub fn run_to_end(config: &Config) -> RunReport {
    let store = FileStore::new(config.checkpoint_file());
    copy::run(
        config,
        &store,
        &RunOptions::default(),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_or_else(|e| panic!("run failed: {e}"))
}

/// A run on its own thread, with the stop flag that ends it.
pub struct RunningCopy {
    pub stop: Arc<AtomicBool>,
    pub started: Instant,
    handle: Option<JoinHandle<Result<RunReport, RunError>>>,
}

/// Starts `config` on a thread.
pub fn spawn_run(config: &Config) -> RunningCopy {
    spawn_run_with(config, RunOptions::default())
}

/// Starts `config` on a thread with `opts` (e.g. `once`, an observer for the HTTP endpoint).
pub fn spawn_run_with(config: &Config, opts: RunOptions) -> RunningCopy {
    let stop = Arc::new(AtomicBool::new(false));
    let (config, flag) = (config.clone(), stop.clone());
    let handle = std::thread::Builder::new()
        .name("test-run".into())
        .spawn(move || {
            let store = FileStore::new(config.checkpoint_file());
            copy::run(&config, &store, &opts, flag)
        })
        .expect("spawn run");
    RunningCopy {
        stop,
        started: Instant::now(),
        handle: Some(handle),
    }
}

impl RunningCopy {
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Raises the stop flag (a clean stop, like Ctrl-C).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the run to end by itself; after `limit` raises stop and panics, so a run that
    /// never reaches its end fails the test instead of hanging it.
    pub fn join(mut self, limit: Duration) -> RunReport {
        let h = self.handle.take().expect("joined once");
        let deadline = self.started + limit;
        while !h.is_finished() {
            if Instant::now() > deadline {
                self.stop.store(true, Ordering::Relaxed);
                let r = h.join();
                panic!(
                    "the run did not finish within {limit:?}; stopped it: {:?}",
                    r.map(|r| r.map(|r| r.table()))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        h.join()
            .expect("run thread panicked")
            .unwrap_or_else(|e| panic!("run failed: {e}"))
    }
}

impl RunningCopy {
    /// Waits (bounded by [`WAIT`]) for a run expected to fail, and returns its error.
    pub fn join_err(mut self) -> RunError {
        let h = self.handle.take().expect("joined once");
        wait_until("the run to end", WAIT, || h.is_finished());
        match h.join().expect("run thread panicked") {
            Ok(r) => panic!("the run was expected to fail; it ended:\n{}", r.table()),
            Err(e) => e,
        }
    }
}

impl Drop for RunningCopy {
    fn drop(&mut self) {
        // A failing test must not leave a run copying in the background.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The stored checkpoint for `config`, if any (panics on a corrupt one).
pub fn load_checkpoint(config: &Config) -> Option<Checkpoint> {
    FileStore::new(config.checkpoint_file())
        .load()
        .expect("checkpoint loads")
}

/// Records settled so far according to the checkpoint: sum of `next_offset - first_offset`.
pub fn checkpoint_progress(config: &Config) -> i64 {
    load_checkpoint(config).map_or(0, |cp| {
        cp.routes
            .values()
            .flat_map(|r| r.partitions.values())
            .map(|p| p.next_offset - p.first_offset)
            .sum()
    })
}

/// `next_offset` by (route, topic/partition key) in a checkpoint.
pub fn positions(cp: &Checkpoint) -> BTreeMap<(String, String), i64> {
    cp.routes
        .iter()
        .flat_map(|(r, rc)| {
            rc.partitions
                .iter()
                .map(move |(k, p)| ((r.clone(), k.clone()), p.next_offset))
        })
        .collect()
}

/// Polls `f` every 20ms until it holds; panics after `limit` naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Per row: `read = filtered + acked + dead_lettered + skipped + failed`, i.e. nothing read
/// is unaccounted for (no record pending once a run has ended).
pub fn assert_report_invariant(report: &RunReport) {
    for row in &report.rows {
        let c = &row.counts;
        assert_eq!(
            c.read,
            c.filtered + c.acked + c.dead_lettered + c.skipped + c.failed,
            "row {} {}: read {} != filtered {} + acked {} + dlq {} + skipped {} + failed {}\n{}",
            row.route,
            row.source,
            c.read,
            c.filtered,
            c.acked,
            c.dead_lettered,
            c.skipped,
            c.failed,
            report.table()
        );
        assert!(
            c.produced >= c.acked,
            "row {}: produced {} < acked {}",
            row.source,
            c.produced,
            c.acked
        );
    }
    let sum: u64 = report.rows.iter().map(|r| r.counts.read).sum();
    assert_eq!(
        sum, report.totals.read,
        "totals.read is the sum of the rows"
    );
}

/// The report row for `route` and source `topic/partition`.
pub fn row<'a>(
    report: &'a RunReport,
    route: &str,
    topic: &str,
    partition: i32,
) -> &'a kmirror::counts::SummaryRow {
    let source = format!("{SOURCE}:{topic}/{partition}");
    report
        .rows
        .iter()
        .find(|r| r.route == route && r.source == source)
        .unwrap_or_else(|| panic!("no row for {route} {source}:\n{}", report.table()))
}

/// Runs `kmirror::verify` and asserts no partition has missing or altered records (and, if
/// `no_duplicates`, no duplicates). Returns the report for further assertions.
/// The sum of count `key` (`missing`, `duplicates`, ...) over every route partition of a
/// `verify --output json` report.
pub fn verify_count(json: &serde_json::Value, key: &str) -> u64 {
    json["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .flat_map(|r| r["partitions"].as_array().expect("partitions").iter())
        .map(|p| p["counts"][key].as_u64().expect("a count"))
        .sum()
}

pub fn verify_clean(config: &Config, no_duplicates: bool) -> VerifyReport {
    let store = FileStore::new(config.checkpoint_file());
    let v = verify::verify(config, &store, None, no_duplicates)
        .unwrap_or_else(|e| panic!("verify failed: {e}"));
    for r in &v.rows {
        assert!(r.by_content, "{}: compared by content", r.source);
        assert_eq!(r.missing, 0, "{} missing\n{}", r.source, v.table());
        assert_eq!(r.altered, 0, "{} altered\n{}", r.source, v.table());
        if no_duplicates {
            assert_eq!(r.duplicates, 0, "{} duplicates\n{}", r.source, v.table());
        }
    }
    assert!(v.ok(), "{}", v.table());
    v
}

// ---------------------------------------------------------------------------------------
// Java-compatible key partitioning

/// Kafka's Java `Utils.murmur2` (seed 0x9747b28c), as librdkafka's `murmur2_random`
/// partitioner computes it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java producer's default partitioner picks for a non-null key:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// A small deterministic generator (xorshift64*) for varied test data without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
