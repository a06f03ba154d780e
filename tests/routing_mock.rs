//! Record routing against librdkafka mock clusters: filters (JSON fields, keys, headers,
//! timestamps, all/any/not), fan-out of one source topic to several targets, validation and
//! poison records (skip / dead_letter / stop), records the target refuses, header transforms,
//! provenance, routing-file diagnostics for bad filter definitions, and `verify` after a
//! filtered and dead-lettered run.
//!
//! Every test produces its own records with a plain rdkafka producer, runs
//! `kmirror::copy::run` (with `once`), then reads the targets back with a plain consumer and
//! asserts exactly which source records arrived, byte for byte, mapped back to their source
//! offsets through the `kmirror.source` provenance header. Expectations are computed from
//! the source as read back, by this file's own code, never by kmirror's filter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use kmirror::checkpoint::{Checkpoint, CheckpointStore, FileStore};
use kmirror::config::{Config, ConfigError, Diagnostic};
use kmirror::copy::record::{parse_provenance, raw_headers};
use kmirror::copy::{self, RunOptions, RunReport};
use kmirror::counts::{Counts, SummaryRow};
use kmirror::dev_cluster::DevClusters;
use kmirror::verify::{self, VerifyReport, VerifyRow};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;

/// Bound on every wait here, so a hang fails a test instead of blocking the suite.
const WAIT: Duration = Duration::from_secs(60);
const PROVENANCE: &str = "kmirror.source";
const DLQ_ROUTE: &str = "kmirror.dlq.route";
const DLQ_ERROR: &str = "kmirror.dlq.error";
const DLQ_SOURCE: &str = "kmirror.dlq.source";
/// 2026-01-01T00:00:00Z in milliseconds since the epoch.
const JAN1: i64 = 1_767_225_600_000;

fn init_logging() {
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

// ---------------------------------------------------------------------------------------
// Clusters and routing files

/// Named mock clusters (one broker each) and a directory for the routing file, schema files
/// and checkpoints.
struct Lab {
    clusters: DevClusters,
    names: Vec<&'static str>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn start(names: &[&'static str]) -> Lab {
        init_logging();
        let clusters = DevClusters::start(names.len(), 1, &[]).expect("start mock clusters");
        Lab {
            clusters,
            names: names.to_vec(),
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn idx(&self, cluster: &str) -> usize {
        self.names
            .iter()
            .position(|n| *n == cluster)
            .unwrap_or_else(|| panic!("no cluster {cluster}"))
    }

    fn bootstrap(&self, cluster: &str) -> &str {
        &self.clusters.bootstraps[self.idx(cluster)]
    }

    fn topic(&self, cluster: &str, topic: &str, partitions: i32) {
        self.clusters
            .create_topic(self.idx(cluster), topic, partitions)
            .unwrap_or_else(|e| panic!("create {cluster}:{topic}: {e}"));
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write file");
    }

    /// A checked routing file for job `job`: every cluster of the lab, checkpoints in the
    /// lab's directory, then `rest` verbatim (routes, cluster properties).
    fn config(&self, job: &str, rest: &str) -> Config {
        self.config_as(job, rest, &[])
    }

    /// [`Lab::config`], with some cluster names pointing at another cluster of the lab
    /// (`(name, stands_in)`): the same job seen through a different broker.
    fn config_as(&self, job: &str, rest: &str, stand_ins: &[(&str, &str)]) -> Config {
        let mut text =
            format!("[checkpoints]\ndir = \"${{DIR}}\"\ninterval = \"100ms\"\njob = \"{job}\"\n\n");
        for n in &self.names {
            text.push_str(&format!(
                "[clusters.{n}]\nbootstrap = \"${{BOOT_{n}}}\"\n\n"
            ));
        }
        text.push_str(rest);
        let mut vars: BTreeMap<String, String> = self
            .names
            .iter()
            .map(|n| {
                let at = stand_ins
                    .iter()
                    .find(|(name, _)| name == n)
                    .map_or(*n, |(_, other)| *other);
                (format!("BOOT_{n}"), self.bootstrap(at).to_string())
            })
            .collect();
        vars.insert("DIR".into(), self.dir.path().display().to_string());
        let path = self.dir.path().join(format!("{job}.toml"));
        Config::from_str(&path, text, &|k| vars.get(k).cloned())
            .unwrap_or_else(|e| panic!("routing file for {job}: {e}"))
    }
}

/// Runs `cfg` with `once` (every route ends at the high watermarks seen at the start) on a
/// thread; a run that does not end within [`WAIT`] is stopped and fails the test.
fn run_once(cfg: &Config) -> RunReport {
    let stop = Arc::new(AtomicBool::new(false));
    let (c, flag) = (cfg.clone(), stop.clone());
    let h = std::thread::spawn(move || {
        let store = FileStore::new(c.checkpoint_file());
        let opts = RunOptions {
            once: true,
            ..Default::default()
        };
        copy::run(&c, &store, &opts, flag)
    });
    let started = Instant::now();
    while !h.is_finished() {
        if started.elapsed() > WAIT {
            stop.store(true, Ordering::Relaxed);
            let r = h.join();
            panic!(
                "run of {} did not end within {WAIT:?}: {:?}",
                cfg.job,
                r.map(|r| r.map(|r| r.table()))
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = h
        .join()
        .expect("run thread panicked")
        .unwrap_or_else(|e| panic!("run of {} failed: {e}", cfg.job));
    // Whatever happened, nothing read may be unaccounted for once a run has ended.
    for r in &report.rows {
        let c = &r.counts;
        assert_eq!(
            c.read,
            c.filtered + c.acked + c.dead_lettered + c.skipped + c.failed,
            "{} {}: read != filtered + acked + dlq + skipped + failed\n{}",
            r.route,
            r.source,
            report.table()
        );
    }
    report
}

fn checkpoint(cfg: &Config) -> Checkpoint {
    FileStore::new(cfg.checkpoint_file())
        .load()
        .expect("checkpoint loads")
        .expect("a checkpoint was written")
}

fn next_offset(cp: &Checkpoint, route: &str, topic: &str, partition: i32) -> i64 {
    cp.get(route, topic, partition)
        .unwrap_or_else(|| panic!("no checkpoint for {route} {topic}/{partition}: {cp:?}"))
        .next_offset
}

fn row<'a>(report: &'a RunReport, route: &str, source: &str) -> &'a SummaryRow {
    report
        .rows
        .iter()
        .find(|r| r.route == route && r.source == source)
        .unwrap_or_else(|| panic!("no row {route} {source}:\n{}", report.table()))
}

/// The counts a row must show, the rest zero; `produced` is informational and not compared.
fn counts(read: u64, filtered: u64, acked: u64, dlq: u64, skipped: u64, failed: u64) -> Counts {
    Counts {
        read,
        filtered,
        acked,
        dead_lettered: dlq,
        skipped,
        failed,
        ..Default::default()
    }
}

fn assert_counts(report: &RunReport, route: &str, source: &str, want: Counts) {
    let mut got = row(report, route, source).counts;
    got.produced = 0;
    assert_eq!(
        got,
        want,
        "{route} {source}: counts (read, filtered, acked, dlq, skipped, failed)\n{}",
        report.table()
    );
}

/// Verifies with the default block size and again with blocks of 3 offsets (so poison,
/// dead-letter, skipped and filtered records fall in many blocks, some matching, some
/// re-read record by record): both must give the same report.
fn run_verify(cfg: &Config) -> VerifyReport {
    let store = FileStore::new(cfg.checkpoint_file());
    let v = verify::verify(cfg, &store, None, true).unwrap_or_else(|e| panic!("verify: {e}"));
    let tiny = verify::VerifyOptions {
        parallel: 2,
        block: 3,
        ..Default::default()
    };
    let t = verify::verify_with(cfg, &store, None, true, &tiny)
        .unwrap_or_else(|e| panic!("verify in blocks of 3: {e}"));
    assert_eq!(
        v.rows.iter().map(verdicts).collect::<Vec<_>>(),
        t.rows.iter().map(verdicts).collect::<Vec<_>>(),
        "one block per partition:\n{}\nblocks of 3:\n{}",
        v.table(),
        t.table()
    );
    v
}

/// Everything a verify row concludes (not how many blocks it took).
fn verdicts(r: &VerifyRow) -> String {
    let mut r = r.clone();
    (r.blocks, r.blocks_rechecked) = (0, 0);
    format!("{r:?}")
}

fn verify_row<'a>(v: &'a VerifyReport, route: &str, source: &str) -> &'a VerifyRow {
    v.rows
        .iter()
        .find(|r| r.route == route && r.source == source)
        .unwrap_or_else(|| panic!("no verify row {route} {source}:\n{}", v.table()))
}

// ---------------------------------------------------------------------------------------
// Producing and reading records

/// A record to produce, byte for byte.
#[derive(Debug, Clone, Default)]
struct Rec {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    ts: Option<i64>,
}

type Headers = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A record as stored on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Headers,
    ts: Option<i64>,
}

impl Got {
    /// Values of every header called `name`, in order.
    fn header(&self, name: &str) -> Vec<Option<&[u8]>> {
        self.headers
            .iter()
            .filter(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_deref())
            .collect()
    }

    /// The one header called `name` as text; panics if absent, repeated or null.
    fn header_text(&self, name: &str) -> String {
        match self.header(name).as_slice() {
            [Some(v)] => String::from_utf8_lossy(v).into_owned(),
            other => panic!(
                "record {}/{}: header {name} should appear once, found {other:?}",
                self.partition, self.offset
            ),
        }
    }

    fn headers_without(&self, names: &[&str]) -> Headers {
        self.headers
            .iter()
            .filter(|(k, _)| !names.iter().any(|n| n.as_bytes() == k.as_slice()))
            .cloned()
            .collect()
    }

    /// (cluster, topic, partition, offset) from the provenance header.
    fn provenance(&self) -> Option<(String, String, i32, i64)> {
        let v = self.header(PROVENANCE);
        assert!(v.len() <= 1, "repeated provenance header: {self:?}");
        let (c, t, p, o) = parse_provenance(v.first().copied().flatten()?)?;
        Some((c.to_string(), t.to_string(), p, o))
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(self.value.as_deref()?).ok()
    }

    fn pos(&self) -> (i32, i64) {
        (self.partition, self.offset)
    }
}

fn produce(bootstrap: &str, topic: &str, recs: &[Rec]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        // One producer session in order: offsets follow the order records are sent in.
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "1000000")
        .set("log.connection.close", "false")
        .create()
        .expect("test producer");
    for r in recs {
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
        if let Some(ts) = r.ts {
            rec = rec.timestamp(ts);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("test producer: {e}"),
            }
        }
    }
    producer.flush(WAIT).expect("flush test data");
}

/// Every record of `topic` from the low to the high watermark seen when called, sorted by
/// (partition, offset). Headers are read raw (names need not be UTF-8).
fn read_topic(bootstrap: &str, topic: &str) -> Vec<Got> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "routing-mock-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .set("log.connection.close", "false")
        .create()
        .expect("test consumer");
    let md = c.fetch_metadata(Some(topic), WAIT).expect("metadata");
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .unwrap_or_else(|| panic!("no topic {topic}"));
    assert!(t.error().is_none(), "topic {topic}: {:?}", t.error());
    let mut tpl = TopicPartitionList::new();
    let mut want: BTreeMap<i32, i64> = BTreeMap::new();
    for p in 0..t.partitions().len() as i32 {
        let (low, high) = c
            .fetch_watermarks(topic, p, WAIT)
            .unwrap_or_else(|e| panic!("watermarks {topic}/{p}: {e}"));
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("partition offset");
            want.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if want.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let mut last = Instant::now();
    while !want.is_empty() {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            last = Instant::now();
            let p = m.partition();
            out.push(Got {
                partition: p,
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers: raw_headers(&m)
                    .iter()
                    .map(|h| (h.name.to_vec(), h.value.map(<[u8]>::to_vec)))
                    .collect(),
                ts: m.timestamp().to_millis(),
            });
            if want.get(&p).is_some_and(|h| m.offset() + 1 >= *h) {
                want.remove(&p);
            }
        }
        assert!(
            last.elapsed() < WAIT,
            "reading {topic}: stalled with {want:?} to go"
        );
    }
    out.sort_by_key(|g| (g.partition, g.offset));
    out
}

/// Produces `recs` to `topic` (an empty topic) and reads it back, asserting every record
/// landed where it was sent, in order; returns the source as stored.
fn seed(bootstrap: &str, topic: &str, recs: &[Rec]) -> Vec<Got> {
    produce(bootstrap, topic, recs);
    let source = read_topic(bootstrap, topic);
    assert_eq!(source.len(), recs.len(), "records on the source");
    let mut by_partition: BTreeMap<i32, Vec<&Rec>> = BTreeMap::new();
    for r in recs {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for g in &source {
        let r = by_partition[&g.partition][g.offset as usize];
        assert_eq!(
            (&g.key, &g.value),
            (&r.key, &r.value),
            "source record {g:?}"
        );
    }
    source
}

fn high_watermarks(source: &[Got]) -> BTreeMap<i32, i64> {
    let mut h = BTreeMap::new();
    for g in source {
        let e = h.entry(g.partition).or_insert(0);
        *e = (*e).max(g.offset + 1);
    }
    h
}

/// Checks every target record against the source record its provenance names: same key,
/// value, timestamp and headers (apart from `transformed` headers and provenance), from
/// `cluster:topic`, on the same partition when `preserve`; returns the source positions
/// in target order, asserting none appears twice (the map target -> source is injective).
fn map_to_source(
    target: &[Got],
    source: &[Got],
    cluster: &str,
    topic: &str,
    preserve: bool,
    transformed: &[&str],
) -> Vec<(i32, i64)> {
    let by_pos: BTreeMap<(i32, i64), &Got> = source.iter().map(|g| (g.pos(), g)).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for t in target {
        let (c, tp, p, o) = t
            .provenance()
            .unwrap_or_else(|| panic!("target record without provenance: {t:?}"));
        assert_eq!((c.as_str(), tp.as_str()), (cluster, topic), "{t:?}");
        let s = by_pos
            .get(&(p, o))
            .unwrap_or_else(|| panic!("provenance names no source record: {t:?}"));
        if preserve {
            assert_eq!(t.partition, p, "partition preserved for {t:?}");
        }
        assert_eq!(t.key, s.key, "key of {p}/{o}");
        assert_eq!(t.value, s.value, "value of {p}/{o}");
        assert_eq!(t.ts, s.ts, "timestamp of {p}/{o}");
        let mut skip = transformed.to_vec();
        skip.push(PROVENANCE);
        assert_eq!(
            t.headers_without(&skip),
            s.headers_without(transformed),
            "headers of {p}/{o}"
        );
        // `<route>@<cluster>/<topic>/<partition>/<offset>`
        let prov = t.header_text(PROVENANCE);
        let (route, rest) = prov.split_once('@').expect("provenance names its route");
        assert!(!route.is_empty() && !route.contains('/'), "{prov}");
        assert_eq!(rest, format!("{cluster}/{topic}/{p}/{o}"));
        assert!(seen.insert((p, o)), "source {p}/{o} arrived twice");
        out.push((p, o));
    }
    out
}

fn json_rec(partition: i32, key: &str, json: String, i: u64) -> Rec {
    Rec {
        partition,
        key: Some(key.as_bytes().to_vec()),
        value: Some(json.into_bytes()),
        headers: vec![
            ("trace-id".into(), Some(format!("t-{i}").into_bytes())),
            ("bin".into(), Some(vec![0xde, 0xad, 0x00, 0xff])),
        ],
        ts: Some(JAN1 + i as i64),
    }
}

fn tenant_of(i: u64) -> &'static str {
    const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
    TENANTS[((i.wrapping_mul(2_654_435_761) >> 7) % 4) as usize]
}

/// Interleaved tenants' orders: `per_partition` records on each of `partitions`, in
/// round-robin order. The first and last record of every partition are not acme's (so a
/// filtered record must move the checkpoint to the end), and one in the middle is a
/// tombstone (no fields, so no tenant).
fn tenant_orders(partitions: i32, per_partition: u64) -> Vec<Rec> {
    let mut out = Vec::new();
    for j in 0..per_partition {
        for p in 0..partitions {
            let i = j * partitions as u64 + p as u64;
            let tenant = if j == 0 || j + 1 == per_partition {
                "globex"
            } else {
                tenant_of(i)
            };
            let mut r = json_rec(
                p,
                &format!("order-{i}"),
                format!(
                    r#"{{"tenant_id":"{tenant}","order_id":{i},"amount":{}.5}}"#,
                    i % 90
                ),
                i,
            );
            if j == per_partition / 2 {
                r.value = None;
            }
            out.push(r);
        }
    }
    out
}

/// Source positions whose JSON payload has `tenant_id` == `tenant` (this file's own reading).
fn tenant_positions(source: &[Got], tenant: &str) -> BTreeSet<(i32, i64)> {
    source
        .iter()
        .filter(|g| {
            g.json()
                .is_some_and(|v| v.get("tenant_id") == Some(&Value::from(tenant)))
        })
        .map(Got::pos)
        .collect()
}

fn per_partition(set: &BTreeSet<(i32, i64)>, p: i32) -> u64 {
    set.iter().filter(|(q, _)| *q == p).count() as u64
}

// ---------------------------------------------------------------------------------------
// 1. One tenant to another cluster

#[test]
fn json_filter_copies_exactly_one_tenant_to_another_cluster_in_order() {
    let lab = Lab::start(&["src", "dst"]);
    lab.topic("src", "orders", 12);
    lab.topic("dst", "orders", 12);
    let source = seed(lab.bootstrap("src"), "orders", &tenant_orders(12, 60));
    let highs = high_watermarks(&source);
    let acme = tenant_positions(&source, "acme");
    assert!(
        acme.len() > 100 && acme.len() < 300,
        "{} acme records",
        acme.len()
    );

    let cfg = lab.config(
        "tenant",
        r#"
[[routes]]
name = "acme"
source = "src"
topics = ["orders"]
target = "dst"
partitioning = "preserve"
filter = { json = "$.tenant_id", equals = "acme" }
"#,
    );
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );

    let target = read_topic(lab.bootstrap("dst"), "orders");
    let mapped = map_to_source(&target, &source, "src", "orders", true, &[]);
    let arrived: BTreeSet<(i32, i64)> = mapped.iter().copied().collect();
    assert_eq!(arrived, acme, "exactly acme's records arrive");
    for t in &target {
        assert_eq!(
            t.json().and_then(|v| v.get("tenant_id").cloned()),
            Some(Value::from("acme"))
        );
    }
    // Source order per partition: target offsets increase with source offsets.
    let cp = checkpoint(&cfg);
    for p in 0..12 {
        let in_p: Vec<&Got> = target.iter().filter(|t| t.partition == p).collect();
        let src_offsets: Vec<i64> = in_p.iter().map(|t| t.provenance().unwrap().3).collect();
        assert!(
            src_offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: source offsets out of order on the target: {src_offsets:?}"
        );
        let n = per_partition(&acme, p);
        assert_eq!(in_p.len() as u64, n);
        let high = highs[&p];
        assert_counts(
            &report,
            "acme",
            &format!("src:orders/{p}"),
            counts(high as u64, high as u64 - n, n, 0, 0, 0),
        );
        // Filtered records (the last one of each partition is) advance the checkpoint.
        let pc = cp.get("acme", "orders", p).expect("partition checkpoint");
        assert_eq!(pc.next_offset, high, "partition {p} checkpoint");
        assert_eq!(
            pc.target.get(&p),
            Some(&[in_p[0].offset, in_p[in_p.len() - 1].offset]),
            "partition {p}: target range in the checkpoint"
        );
    }
    assert_eq!(report.totals.acked, acme.len() as u64);
    assert_eq!(
        report.totals.filtered,
        source.len() as u64 - acme.len() as u64
    );
}

// ---------------------------------------------------------------------------------------
// 2. Fan-out

#[test]
fn two_routes_on_one_topic_fan_out_each_tenant_to_its_own_topic() {
    let lab = Lab::start(&["src", "dst"]);
    lab.topic("src", "orders", 4);
    lab.topic("dst", "acme-orders", 4);
    lab.topic("dst", "globex-orders", 4);
    let source = seed(lab.bootstrap("src"), "orders", &tenant_orders(4, 150));
    let highs = high_watermarks(&source);
    let cfg = lab.config(
        "fanout",
        r#"
[[routes]]
name = "acme"
source = "src"
topics = ["orders"]
target = "dst"
target_topic = "acme-orders"
filter = { json = "$.tenant_id", equals = "acme" }

[[routes]]
name = "globex"
source = "src"
topics = ["orders"]
target = "dst"
target_topic = "globex-orders"
filter = { json = "tenant_id", in = ["globex"] }
"#,
    );
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    assert_eq!(report.rows.len(), 8, "one task per (route, partition)");
    let cp = checkpoint(&cfg);
    for tenant in ["acme", "globex"] {
        let want = tenant_positions(&source, tenant);
        let target = read_topic(lab.bootstrap("dst"), &format!("{tenant}-orders"));
        let got: BTreeSet<(i32, i64)> = map_to_source(&target, &source, "src", "orders", true, &[])
            .into_iter()
            .collect();
        assert_eq!(
            got, want,
            "{tenant}-orders holds exactly {tenant}'s records"
        );
        for p in 0..4 {
            let n = per_partition(&want, p);
            let high = highs[&p] as u64;
            assert_counts(
                &report,
                tenant,
                &format!("src:orders/{p}"),
                counts(high, high - n, n, 0, 0, 0),
            );
            assert_eq!(next_offset(&cp, tenant, "orders", p), highs[&p]);
        }
    }
    let both = tenant_positions(&source, "acme").len() + tenant_positions(&source, "globex").len();
    assert!(both < source.len() - 100, "other tenants stay behind");
}

// ---------------------------------------------------------------------------------------
// 3. Key, header and timestamp filters

/// Hand-made records for the filter matrix; JSON payload `{"n": i}` names each. Partition
/// `i % 2`. Timestamps are relative to JAN1 (window [JAN1, JAN1 + 10s)).
fn filter_records() -> Vec<Rec> {
    type Spec<'a> = (Option<&'a [u8]>, Vec<(&'a str, Option<&'a [u8]>)>, i64);
    let specs: Vec<Spec<'_>> = vec![
        /* 0 */ (Some(b"user-1"), vec![("region", Some(b"eu"))], -1),
        /* 1 */ (Some(b"user-2"), vec![("region", Some(b"us"))], 0),
        /* 2 */
        (
            Some(b"vip-user-3"),
            vec![
                ("region", Some(b"eu-west")),
                ("flags", Some(&[0x00, 0xff, 0x80])),
            ],
            1,
        ),
        /* 3 */ (None, vec![], 9_999),
        /* 4 */ (Some(b"user-x"), vec![("region", Some(b"ap-south"))], 10_000),
        /* 5 */
        (
            Some(b"user-7"),
            vec![("flags", Some(&[0x00, 0xff]))],
            10_001,
        ),
        /* 6 */
        (
            Some(b"vip-9"),
            vec![("region", Some(b"")), ("flags", Some(&[0x00, 0xff, 0x80]))],
            5_000,
        ),
        /* 7 */ (Some(b""), vec![("region", None)], 20_000),
        /* 8 */ (Some(b"user-7"), vec![("region", Some(b"EU"))], 3_000),
        /* 9 */
        (
            Some(b"user-12"),
            vec![("region", Some(b"us")), ("region", Some(b"eu"))],
            -5_000,
        ),
        /* 10 */
        (
            Some(&[0xff, 0x00, 0xfe]),
            vec![("flags", Some(&[0xff]))],
            7_000,
        ),
        /* 11 */ (Some(b"vip-"), vec![("region", Some(b"us"))], 100),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (key, headers, dt))| Rec {
            partition: (i % 2) as i32,
            key: key.map(<[u8]>::to_vec),
            value: Some(format!(r#"{{"n":{i},"meta":{{"odd":{}}}}}"#, i % 2 == 1).into_bytes()),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.map(<[u8]>::to_vec)))
                .collect(),
            ts: Some(JAN1 + dt),
        })
        .collect()
}

#[test]
fn key_header_timestamp_and_combined_filters_select_exact_records() {
    // (route, filter, record numbers that must arrive)
    let cases: &[(&str, &str, &[usize])] = &[
        (
            "hdr-present",
            r#"{ header = "region" }"#,
            &[0, 1, 2, 4, 6, 7, 8, 9, 11],
        ),
        (
            "hdr-absent",
            r#"{ header = "region", present = false }"#,
            &[3, 5, 10],
        ),
        (
            "hdr-equals",
            r#"{ header = "region", equals = "eu" }"#,
            &[0, 9],
        ),
        (
            "hdr-regex",
            r#"{ header = "region", regex = "^eu(-|$)" }"#,
            &[0, 2, 9],
        ),
        (
            "hdr-hex",
            r#"{ header = "flags", equals_hex = "00FF80" }"#,
            &[2, 6],
        ),
        ("key-equals", r#"{ key_equals = "user-7" }"#, &[5, 8]),
        ("key-prefix", r#"{ key_prefix = "vip-" }"#, &[2, 6, 11]),
        (
            "key-regex",
            r#"{ key_regex = "^user-[0-9]+$" }"#,
            &[0, 1, 5, 8, 9],
        ),
        (
            "ts-window",
            r#"{ timestamp_from = "2026-01-01T00:00:00Z", timestamp_to = 2026-01-01T00:00:10Z }"#,
            &[1, 2, 3, 6, 8, 10, 11],
        ),
        (
            "ts-from",
            r#"{ timestamp_from = "2026-01-01T00:00:05Z" }"#,
            &[3, 4, 5, 6, 7, 10],
        ),
        (
            "any-not",
            r#"{ any = [ { key_prefix = "vip-" }, { not = { header = "region" } } ] }"#,
            &[2, 3, 5, 6, 10, 11],
        ),
        (
            "all-not",
            r#"{ all = [ { key_regex = "^user-" }, { not = { header = "region", equals = "eu" } } ] }"#,
            &[1, 4, 5, 8],
        ),
        (
            "json-in",
            r#"{ json = "$.n", in = [1, 4.0, 100, "7"] }"#,
            &[1, 4],
        ),
        (
            "json-nested",
            r#"{ json = "meta.odd", equals = true }"#,
            &[1, 3, 5, 7, 9, 11],
        ),
        (
            "json-absent",
            r#"{ json = "$.meta.tag", exists = false }"#,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        ),
    ];
    let lab = Lab::start(&["src", "dst"]);
    lab.topic("src", "events", 2);
    let recs = filter_records();
    let source = seed(lab.bootstrap("src"), "events", &recs);
    let pos_of: BTreeMap<u64, (i32, i64)> = source
        .iter()
        .map(|g| (g.json().unwrap()["n"].as_u64().unwrap(), g.pos()))
        .collect();
    let mut routes = String::new();
    for (name, filter, _) in cases {
        lab.topic("dst", &format!("f-{name}"), 2);
        routes.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nsource = \"src\"\ntopics = [\"events\"]\ntarget = \"dst\"\ntarget_topic = \"f-{name}\"\nfilter = {filter}\n\n"
        ));
    }
    let cfg = lab.config("filters", &routes);
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    for (name, _, want) in cases {
        let target = read_topic(lab.bootstrap("dst"), &format!("f-{name}"));
        let got: BTreeSet<(i32, i64)> = map_to_source(&target, &source, "src", "events", true, &[])
            .into_iter()
            .collect();
        let want: BTreeSet<(i32, i64)> = want.iter().map(|n| pos_of[&(*n as u64)]).collect();
        let named = |s: &BTreeSet<(i32, i64)>| -> Vec<u64> {
            s.iter()
                .map(|p| *pos_of.iter().find(|(_, q)| *q == p).unwrap().0)
                .collect()
        };
        assert_eq!(
            named(&got),
            named(&want),
            "route {name}: record numbers that arrived"
        );
        let (acked, filtered): (u64, u64) = report
            .rows
            .iter()
            .filter(|r| r.route == *name)
            .fold((0, 0), |(a, f), r| {
                (a + r.counts.acked, f + r.counts.filtered)
            });
        assert_eq!(
            (acked, filtered),
            (want.len() as u64, 12 - want.len() as u64),
            "{name}"
        );
    }
    // The window's boundaries, spelled out: from is inclusive, to exclusive.
    let window = read_topic(lab.bootstrap("dst"), "f-ts-window");
    let ts: BTreeSet<i64> = window.iter().map(|g| g.ts.unwrap() - JAN1).collect();
    assert!(ts.contains(&0) && ts.contains(&9_999), "{ts:?}");
    assert!(!ts.contains(&-1) && !ts.contains(&10_000), "{ts:?}");
    // The binary key (record 10) is copied byte for byte.
    let absent = read_topic(lab.bootstrap("dst"), "f-hdr-absent");
    assert!(absent
        .iter()
        .any(|g| g.key.as_deref() == Some(&[0xff, 0x00, 0xfe][..])));
}

// ---------------------------------------------------------------------------------------
// 4. Poison records: validation failures and records the target refuses

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["tenant_id", "order_id", "amount"],
  "properties": {
    "tenant_id": { "type": "string" },
    "order_id": { "type": "integer" },
    "amount": { "type": "number" }
  }
}"#;

/// 3 partitions x 21 orders; every third record (j % 3 == 2) is globex's, the rest acme's.
/// Partition 1 holds three acme poison records: invalid JSON at offset 4, a schema
/// violation at 7, an over-size record at 13.
fn poison_orders() -> Vec<Rec> {
    let mut out = Vec::new();
    for j in 0..21u64 {
        for p in 0..3 {
            let i = j * 3 + p as u64;
            let tenant = if j % 3 == 2 { "globex" } else { "acme" };
            let json = match (p, j) {
                (1, 4) => format!(r#"{{"tenant_id":"acme","order_id":{i},"amou"#),
                (1, 7) => format!(r#"{{"tenant_id":"acme","order_id":{i},"amount":"lots"}}"#),
                (1, 13) => format!(
                    r#"{{"tenant_id":"acme","order_id":{i},"amount":1,"note":"{}"}}"#,
                    "x".repeat(3000)
                ),
                _ => format!(r#"{{"tenant_id":"{tenant}","order_id":{i},"amount":{j}.25}}"#),
            };
            out.push(json_rec(p, &format!("order-{i}"), json, i));
        }
    }
    out
}

const POISON: [(i64, &str); 3] = [
    (4, "not valid JSON"),
    (7, "violates schema"),
    (13, "max_record_bytes"),
];

fn poison_route(action: &str, dead_letter: &str) -> String {
    format!(
        r#"
[[routes]]
name = "acme-{action}"
source = "src"
topics = ["orders"]
target = "dst"
target_topic = "orders-{action}"
filter = {{ json = "$.tenant_id", equals = "acme" }}
validate = {{ json = true, schema = "order.schema.json", max_record_bytes = "1KiB" }}
on_error = "{action}"
{dead_letter}
"#
    )
}

/// Expected arrivals: acme's records that are not poison.
fn valid_acme(source: &[Got]) -> BTreeSet<(i32, i64)> {
    let mut s = tenant_positions(source, "acme");
    for (o, _) in POISON {
        s.remove(&(1, o));
    }
    s
}

#[test]
fn poison_records_skip_dead_letter_or_stop() {
    let lab = Lab::start(&["src", "dst"]);
    lab.topic("src", "orders", 3);
    for t in ["orders-skip", "orders-dead_letter", "orders-stop"] {
        lab.topic("dst", t, 3);
    }
    lab.topic("dst", "orders.dlq", 2);
    lab.write("order.schema.json", ORDER_SCHEMA);
    let source = seed(lab.bootstrap("src"), "orders", &poison_orders());
    let by_pos: BTreeMap<(i32, i64), &Got> = source.iter().map(|g| (g.pos(), g)).collect();
    let valid = valid_acme(&source);
    assert_eq!(valid.len(), 3 * 14 - 3);

    // skip: counted, everything else copied, the checkpoint passes them.
    let cfg = lab.config("poison-skip", &poison_route("skip", ""));
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    let target = read_topic(lab.bootstrap("dst"), "orders-skip");
    let got: BTreeSet<_> = map_to_source(&target, &source, "src", "orders", true, &[])
        .into_iter()
        .collect();
    assert_eq!(got, valid);
    let cp = checkpoint(&cfg);
    for p in 0..3 {
        let want = if p == 1 {
            counts(21, 7, 11, 0, 3, 0)
        } else {
            counts(21, 7, 14, 0, 0, 0)
        };
        assert_counts(&report, "acme-skip", &format!("src:orders/{p}"), want);
        assert_eq!(next_offset(&cp, "acme-skip", "orders", p), 21);
    }

    // dead_letter: the original record, with headers saying which route, why and from where.
    let dl = r#"dead_letter = { cluster = "dst", topic = "orders.dlq" }"#;
    let cfg = lab.config("poison-dlq", &poison_route("dead_letter", dl));
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    let target = read_topic(lab.bootstrap("dst"), "orders-dead_letter");
    let got: BTreeSet<_> = map_to_source(&target, &source, "src", "orders", true, &[])
        .into_iter()
        .collect();
    assert_eq!(got, valid);
    let dlq = read_topic(lab.bootstrap("dst"), "orders.dlq");
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    let mut dlq_offsets = BTreeSet::new();
    for d in &dlq {
        let src = d.header_text(DLQ_SOURCE);
        let (c, t, p, o) = parse_provenance(src.as_bytes()).expect("dlq source header");
        assert_eq!((c, t, p), ("src", "orders", 1), "{src}");
        let (_, why) = POISON
            .iter()
            .find(|(x, _)| *x == o)
            .unwrap_or_else(|| panic!("dead-lettered offset {o} is not a poison record"));
        let s = by_pos[&(1, o)];
        assert_eq!(d.key, s.key, "original key of {o}");
        assert_eq!(d.value, s.value, "original value bytes of {o}");
        assert_eq!(d.ts, s.ts, "original timestamp of {o}");
        assert_eq!(
            d.headers_without(&[DLQ_ROUTE, DLQ_ERROR, DLQ_SOURCE]),
            s.headers,
            "original headers of {o}"
        );
        assert_eq!(d.header_text(DLQ_ROUTE), "acme-dead_letter");
        let err = d.header_text(DLQ_ERROR);
        assert!(
            err.contains(why),
            "offset {o}: error {err:?} should say {why:?}"
        );
        assert!(dlq_offsets.insert(o), "offset {o} dead-lettered twice");
    }
    assert_eq!(dlq_offsets, POISON.iter().map(|(o, _)| *o).collect());
    let cp = checkpoint(&cfg);
    for p in 0..3 {
        let want = if p == 1 {
            counts(21, 7, 11, 3, 0, 0)
        } else {
            counts(21, 7, 14, 0, 0, 0)
        };
        assert_counts(
            &report,
            "acme-dead_letter",
            &format!("src:orders/{p}"),
            want,
        );
        assert_eq!(next_offset(&cp, "acme-dead_letter", "orders", p), 21);
    }
    let v = run_verify(&cfg);
    assert!(v.ok(), "{}", v.table());
    let r1 = verify_row(&v, "acme-dead_letter", "src:orders/1");
    assert_eq!(
        (r1.filtered, r1.dead_lettered, r1.missing),
        (7, 3, 0),
        "{}",
        v.table()
    );

    // stop: partition 1 halts AT the first poison record; the others complete.
    let cfg = lab.config("poison-stop", &poison_route("stop", ""));
    for attempt in 0..2 {
        let report = run_once(&cfg);
        assert!(!report.complete, "{}", report.table());
        assert_eq!(report.halted.len(), 1, "{:?}", report.halted);
        let (which, why) = &report.halted[0];
        assert_eq!(which, "src:orders/1");
        assert!(
            why.contains("offset 4") && why.contains("not valid JSON"),
            "{why}"
        );
        let cp = checkpoint(&cfg);
        assert_eq!(next_offset(&cp, "acme-stop", "orders", 1), 4);
        for p in [0, 2] {
            assert_eq!(next_offset(&cp, "acme-stop", "orders", p), 21);
        }
        if attempt == 0 {
            // Offsets 0..=4 read: 0, 1, 3 copied, 2 filtered, 4 failed.
            assert_counts(
                &report,
                "acme-stop",
                "src:orders/1",
                counts(5, 1, 3, 0, 0, 1),
            );
            for p in [0, 2] {
                assert_counts(
                    &report,
                    "acme-stop",
                    &format!("src:orders/{p}"),
                    counts(21, 7, 14, 0, 0, 0),
                );
            }
        } else {
            // Resumed at the poison record: it halts again at once, nothing new is written.
            assert_counts(
                &report,
                "acme-stop",
                "src:orders/1",
                counts(1, 0, 0, 0, 0, 1),
            );
        }
        let target = read_topic(lab.bootstrap("dst"), "orders-stop");
        let got: BTreeSet<_> = map_to_source(&target, &source, "src", "orders", true, &[])
            .into_iter()
            .collect();
        let want: BTreeSet<_> = valid
            .iter()
            .filter(|(p, o)| *p != 1 || *o < 4)
            .copied()
            .collect();
        assert_eq!(got, want, "attempt {attempt}");
    }
}

/// 2 partitions x 10 small records; offset 3 of partition 0 and offset 6 of partition 1
/// are 6,000-byte records.
fn big_and_small() -> Vec<Rec> {
    let mut out = Vec::new();
    for j in 0..10u64 {
        for p in 0..2 {
            let i = j * 2 + p as u64;
            let big = (p, j) == (0, 3) || (p, j) == (1, 6);
            let pad = if big { 6000 } else { 10 };
            let json = format!(
                r#"{{"tenant_id":"acme","order_id":{i},"pad":"{}"}}"#,
                "p".repeat(pad)
            );
            out.push(json_rec(p, &format!("order-{i}"), json, i));
        }
    }
    out
}

const BIG: [(i32, i64); 2] = [(0, 3), (1, 6)];

#[test]
fn records_the_target_refuses_are_dead_lettered_skipped_or_stop_the_partition() {
    let lab = Lab::start(&["src", "dst", "ops"]);
    lab.topic("src", "big", 2);
    for t in ["big-dead_letter", "big-skip", "big-stop"] {
        lab.topic("dst", t, 2);
    }
    lab.topic("ops", "refused.dlq", 1);
    let source = seed(lab.bootstrap("src"), "big", &big_and_small());
    let by_pos: BTreeMap<(i32, i64), &Got> = source.iter().map(|g| (g.pos(), g)).collect();
    let all: BTreeSet<(i32, i64)> = source.iter().map(Got::pos).collect();
    let small: BTreeSet<(i32, i64)> = all.iter().filter(|x| !BIG.contains(x)).copied().collect();
    // The target's producer refuses records over 4,000 bytes (MsgSizeTooLarge, locally).
    let route = |action: &str, extra: &str| {
        format!(
            r#"
[clusters.dst.properties]
"message.max.bytes" = "4000"
"batch.size" = "4000"

[[routes]]
name = "r-{action}"
source = "src"
topics = ["big"]
target = "dst"
target_topic = "big-{action}"
on_error = "{action}"
{extra}
"#
        )
    };

    // dead_letter, to a third cluster.
    let cfg = lab.config(
        "refused-dlq",
        &route(
            "dead_letter",
            r#"dead_letter = { cluster = "ops", topic = "refused.dlq" }"#,
        ),
    );
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    let target = read_topic(lab.bootstrap("dst"), "big-dead_letter");
    let got: BTreeSet<_> = map_to_source(&target, &source, "src", "big", true, &[])
        .into_iter()
        .collect();
    assert_eq!(got, small);
    let dlq = read_topic(lab.bootstrap("ops"), "refused.dlq");
    let mut dead = BTreeSet::new();
    for d in &dlq {
        let (_, _, p, o) = parse_provenance(d.header_text(DLQ_SOURCE).as_bytes()).unwrap();
        let s = by_pos[&(p, o)];
        assert_eq!((&d.key, &d.value, d.ts), (&s.key, &s.value, s.ts));
        assert_eq!(
            d.headers_without(&[DLQ_ROUTE, DLQ_ERROR, DLQ_SOURCE]),
            s.headers
        );
        assert_eq!(d.header_text(DLQ_ROUTE), "r-dead_letter");
        let err = d.header_text(DLQ_ERROR).to_lowercase();
        assert!(err.contains("too large"), "{err}");
        assert!(dead.insert((p, o)));
    }
    assert_eq!(dead, BIG.into_iter().collect());
    for p in 0..2 {
        assert_counts(
            &report,
            "r-dead_letter",
            &format!("src:big/{p}"),
            counts(10, 0, 9, 1, 0, 0),
        );
    }
    let v = run_verify(&cfg);
    assert!(v.ok(), "{}", v.table());
    for p in 0..2 {
        let r = verify_row(&v, "r-dead_letter", &format!("src:big/{p}"));
        assert_eq!(
            (r.target_records, r.dead_lettered, r.missing),
            (9, 1, 0),
            "{}",
            v.table()
        );
    }

    // skip
    let cfg = lab.config("refused-skip", &route("skip", ""));
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    let target = read_topic(lab.bootstrap("dst"), "big-skip");
    let got: BTreeSet<_> = map_to_source(&target, &source, "src", "big", true, &[])
        .into_iter()
        .collect();
    assert_eq!(got, small);
    let cp = checkpoint(&cfg);
    for p in 0..2 {
        assert_counts(
            &report,
            "r-skip",
            &format!("src:big/{p}"),
            counts(10, 0, 9, 0, 1, 0),
        );
        assert_eq!(next_offset(&cp, "r-skip", "big", p), 10);
    }

    // stop: each partition halts at its refused record.
    let cfg = lab.config("refused-stop", &route("stop", ""));
    let report = run_once(&cfg);
    let halted: BTreeMap<&str, &str> = report
        .halted
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(halted.len(), 2, "{}", report.table());
    assert!(halted["src:big/0"].contains("offset 3"), "{halted:?}");
    assert!(halted["src:big/1"].contains("offset 6"), "{halted:?}");
    let cp = checkpoint(&cfg);
    assert_eq!(next_offset(&cp, "r-stop", "big", 0), 3);
    assert_eq!(next_offset(&cp, "r-stop", "big", 1), 6);
    assert_counts(&report, "r-stop", "src:big/0", counts(4, 0, 3, 0, 0, 1));
    assert_counts(&report, "r-stop", "src:big/1", counts(7, 0, 6, 0, 0, 1));
    let target = read_topic(lab.bootstrap("dst"), "big-stop");
    let got: BTreeSet<_> = map_to_source(&target, &source, "src", "big", true, &[])
        .into_iter()
        .collect();
    let want: BTreeSet<_> = all
        .iter()
        .filter(|(p, o)| *o < if *p == 0 { 3 } else { 6 })
        .copied()
        .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------
// 5. Provenance and header transforms

#[test]
fn provenance_maps_every_record_back_and_header_transforms_apply() {
    let lab = Lab::start(&["src", "dst"]);
    lab.topic("src", "audit", 3);
    lab.topic("dst", "audit-t", 3);
    lab.topic("dst", "audit-np", 3);
    let mut recs = Vec::new();
    for i in 0..90u64 {
        let mut headers: Vec<(String, Option<Vec<u8>>)> = vec![
            ("trace-id".into(), Some(format!("t-{i}").into_bytes())),
            (
                "secret-header".into(),
                Some(format!("s3cr3t-{i}").into_bytes()),
            ),
            ("dup".into(), Some(b"a".to_vec())),
            ("nullh".into(), None),
            ("dup".into(), Some(b"b".to_vec())),
        ];
        if i % 5 == 0 {
            headers.insert(1, ("migrated-by".into(), Some(b"someone-else".to_vec())));
        }
        if i % 7 == 0 {
            headers.push(("secret-header".into(), Some(vec![0xff, 0x00])));
        }
        recs.push(Rec {
            partition: (i % 3) as i32,
            key: (i % 11 != 0).then(|| format!("k-{i}").into_bytes()),
            value: Some(format!("payload {i}").into_bytes()),
            headers,
            ts: Some(JAN1 - 1_000_000 + i as i64 * 37),
        });
    }
    let source = seed(lab.bootstrap("src"), "audit", &recs);
    let cfg = lab.config(
        "transform",
        r#"
[[routes]]
name = "transform"
source = "src"
topics = ["audit"]
target = "dst"
target_topic = "audit-t"
headers = { set = { "migrated-by" = "kmirror" }, drop = ["secret-header"] }

[[routes]]
name = "noprov"
source = "src"
topics = ["audit"]
target = "dst"
target_topic = "audit-np"
provenance = false
"#,
    );
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );

    let target = read_topic(lab.bootstrap("dst"), "audit-t");
    let by_pos: BTreeMap<(i32, i64), &Got> = source.iter().map(|g| (g.pos(), g)).collect();
    // Key, value, timestamp and every header other than the transformed ones are intact.
    let mapped = map_to_source(
        &target,
        &source,
        "src",
        "audit",
        true,
        &["migrated-by", "secret-header"],
    );
    // A bijection onto the source offsets: as many target records as source records, each
    // naming a different source record.
    assert_eq!(mapped.len(), source.len());
    let image: BTreeSet<(i32, i64)> = mapped.iter().copied().collect();
    assert_eq!(image, by_pos.keys().copied().collect());
    for t in &target {
        assert_eq!(
            t.header("migrated-by"),
            vec![Some(&b"kmirror"[..])],
            "{t:?}"
        );
        assert!(t.header("secret-header").is_empty(), "{t:?}");
        assert_eq!(t.header("dup"), vec![Some(&b"a"[..]), Some(&b"b"[..])]);
        assert_eq!(t.header("nullh"), vec![None]);
    }

    // provenance = false: no kmirror.source, headers exactly as on the source.
    let np = read_topic(lab.bootstrap("dst"), "audit-np");
    assert_eq!(np.len(), source.len());
    for p in 0..3 {
        let s: Vec<&Got> = source.iter().filter(|g| g.partition == p).collect();
        let t: Vec<&Got> = np.iter().filter(|g| g.partition == p).collect();
        assert_eq!(s.len(), t.len(), "partition {p}");
        for (s, t) in s.iter().zip(&t) {
            assert!(t.header(PROVENANCE).is_empty(), "{t:?}");
            assert_eq!(
                (&t.key, &t.value, t.ts, &t.headers),
                (&s.key, &s.value, s.ts, &s.headers),
                "partition {p}: source offset {} copied in order",
                s.offset
            );
        }
    }

    let v = run_verify(&cfg);
    assert!(v.ok(), "{}", v.table());
    assert!(v
        .rows
        .iter()
        .filter(|r| r.route == "transform")
        .all(|r| r.by_content));
    assert!(v
        .rows
        .iter()
        .filter(|r| r.route == "noprov")
        .all(|r| !r.by_content));
}

// ---------------------------------------------------------------------------------------
// 6. Diagnostics for bad filter, validation, header and dead-letter definitions

const DIAG_PATH: &str = "/nonexistent-kmirror-routing-test/routing.toml";

fn diagnose(route_extra: &str) -> (String, Vec<Diagnostic>) {
    let text = format!(
        r#"[clusters.src]
bootstrap = "127.0.0.1:9092"

[clusters.dst]
bootstrap = "127.0.0.1:9093"

[[routes]]
name = "r"
source = "src"
topics = ["orders"]
target = "dst"
{route_extra}
"#
    );
    let err: ConfigError = Config::from_str(Path::new(DIAG_PATH), text.clone(), &|_| None)
        .expect_err("the routing file must be refused");
    let diags = err.diagnostics().to_vec();
    assert!(!diags.is_empty(), "no diagnostics: {err}");
    for d in &diags {
        assert_eq!(d.location.file, DIAG_PATH);
    }
    // The rendered error names position, key and message too.
    let shown = err.to_string();
    for d in &diags {
        assert!(shown.contains(&d.to_string()), "{shown}");
    }
    (text, diags)
}

/// 1-based line and column (in characters) of the first occurrence of `needle`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"));
    assert_eq!(text.matches(needle).count(), 1, "{needle:?} is not unique");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Asserts a diagnostic at the position of `at`, for `key`, whose message holds every
/// fragment.
fn assert_diag(text: &str, diags: &[Diagnostic], at: &str, key: &str, fragments: &[&str]) {
    let (line, column) = position(text, at);
    let found = diags.iter().any(|d| {
        d.location.line == line
            && d.location.column == column
            && d.key == key
            && fragments.iter().all(|f| d.message.contains(f))
    });
    assert!(
        found,
        "no diagnostic at {line}:{column} for {key} saying {fragments:?}; got:\n{}",
        diags
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn bad_filter_definitions_are_reported_with_positions() {
    // (route lines, where the diagnostic points, key, message fragments, diagnostics expected)
    let cases: &[(&str, &str, &str, &[&str], usize)] = &[
        (
            r#"filter = { key_prefix = "a", header = "h" }"#,
            r#"{ key_prefix"#,
            "routes[0].filter",
            &["exactly one of", "found key_prefix and header"],
            1,
        ),
        (
            r#"filter = { equals = "acme" }"#,
            r#"{ equals"#,
            "routes[0].filter",
            &["exactly one of", "found none"],
            1,
        ),
        (
            r#"filter = { header = "region", in = ["eu", "us"] }"#,
            r#"["eu""#,
            "routes[0].filter.in",
            &["`in` applies to json filters, not to `header`"],
            1,
        ),
        (
            r#"filter = { key_regex = "user-(" }"#,
            r#""user-(""#,
            "routes[0].filter.key_regex",
            &["\"user-(\" is not a valid regex"],
            1,
        ),
        (
            r#"filter = { json = "$.meta..region", equals = "eu" }"#,
            r#""$.meta..region""#,
            "routes[0].filter.json",
            &["$.meta..region", "empty field name"],
            1,
        ),
        (
            r#"filter = { all = [] }"#,
            r#"[]"#,
            "routes[0].filter.all",
            &["empty list"],
            1,
        ),
        (
            r#"filter = { timestamp_from = "2026-01-02T00:00:00Z", timestamp_to = "2026-01-01T00:00:00Z" }"#,
            r#""2026-01-01T00:00:00Z""#,
            "routes[0].filter.timestamp_to",
            &["not after timestamp_from", "window is empty"],
            1,
        ),
        (
            r#"filter = { header = "flags", equals_hex = "0ff" }"#,
            r#""0ff""#,
            "routes[0].filter.equals_hex",
            &["\"0ff\" is not hex bytes"],
            1,
        ),
        (
            // Nested: the key names the path down to the bad regex.
            r#"filter = { all = [ { json = "tenant_id", equals = "acme" }, { not = { key_regex = "[z-a]" } } ] }"#,
            r#""[z-a]""#,
            "routes[0].filter.all[1].not.key_regex",
            &["is not a valid regex"],
            1,
        ),
        (
            r#"on_error = "dead_letter""#,
            r#""dead_letter""#,
            "routes[0].on_error",
            &["needs a dead-letter destination"],
            1,
        ),
        (
            r#"on_error = "retry""#,
            r#""retry""#,
            "routes[0].on_error",
            &["\"retry\" is not an action", "skip", "dead_letter", "stop"],
            1,
        ),
        (
            r#"dead_letter = { cluster = "nowhere", topic = "orders.dlq" }"#,
            r#""nowhere""#,
            "routes[0].dead_letter.cluster",
            &["cluster \"nowhere\" is not defined"],
            1,
        ),
        (
            r#"validate = { json = true, schema = "missing.schema.json" }"#,
            r#""missing.schema.json""#,
            "routes[0].validate.schema",
            &["cannot read JSON Schema", "missing.schema.json"],
            1,
        ),
        (
            r#"headers = { set = { "kmirror.source" = "forged" } }"#,
            r#""kmirror.source""#,
            "routes[0].headers.set",
            &["kmirror.source", "reserved"],
            1,
        ),
    ];
    for (lines, at, key, fragments, n) in cases {
        let (text, diags) = diagnose(lines);
        assert_diag(&text, &diags, at, key, fragments);
        assert_eq!(diags.len(), *n, "{lines}: {diags:#?}");
    }

    // Several problems in one file are all reported, each at its own position.
    let (text, diags) = diagnose(
        "filter = { header = \"h\", equals_hex = \"zz\" }\non_error = \"explode\"\ndead_letter = { cluster = \"dst\", topic = \"bad topic\" }",
    );
    assert_diag(
        &text,
        &diags,
        "\"zz\"",
        "routes[0].filter.equals_hex",
        &["not hex bytes"],
    );
    assert_diag(
        &text,
        &diags,
        "\"explode\"",
        "routes[0].on_error",
        &["is not an action"],
    );
    assert_diag(
        &text,
        &diags,
        "\"bad topic\"",
        "routes[0].dead_letter.topic",
        &["not a valid Kafka topic name"],
    );
}

// ---------------------------------------------------------------------------------------
// 7. verify after a filtered and dead-lettered run

#[test]
fn verify_after_filtered_and_dead_lettered_run_matches_the_run() {
    let lab = Lab::start(&["src", "dst", "ops"]);
    lab.topic("src", "orders", 4);
    lab.topic("dst", "orders", 4);
    lab.topic("ops", "orders.dlq", 2);
    let mut recs = tenant_orders(4, 200);
    // Poison: payloads that are not JSON (partitions 0 and 3), and acme records too large
    // for the target (partition 1), which the target's producer refuses.
    for (n, r) in recs.iter_mut().enumerate() {
        let j = n / 4;
        match (r.partition, j) {
            (0, 17) | (0, 150) | (3, 42) => r.value = Some(b"{\"tenant_id\":\"acme\"".to_vec()),
            (1, 33) | (1, 34) | (1, 120) => {
                r.value = Some(
                    format!(
                        r#"{{"tenant_id":"acme","order_id":{n},"blob":"{}"}}"#,
                        "b".repeat(5000)
                    )
                    .into_bytes(),
                )
            }
            _ => {}
        }
    }
    let source = seed(lab.bootstrap("src"), "orders", &recs);
    let cfg = lab.config(
        "verify",
        r#"
[clusters.dst.properties]
"message.max.bytes" = "4000"
"batch.size" = "4000"

[[routes]]
name = "acme"
source = "src"
topics = ["orders"]
target = "dst"
filter = { json = "$.tenant_id", equals = "acme" }
validate = { json = true }
headers = { set = { "migrated-by" = "kmirror" } }
dead_letter = { cluster = "ops", topic = "orders.dlq" }
"#,
    );
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    assert_eq!(report.totals.dead_lettered, 6, "{}", report.table());
    assert_eq!(report.totals.read, source.len() as u64);
    let dlq = read_topic(lab.bootstrap("ops"), "orders.dlq");
    assert_eq!(dlq.len(), 6);
    // What arrived: acme's records minus the six poison ones.
    let mut want = tenant_positions(&source, "acme");
    for g in &dlq {
        let (_, _, p, o) = parse_provenance(g.header_text(DLQ_SOURCE).as_bytes()).unwrap();
        assert!(want.remove(&(p, o)) || g.json().is_none(), "{p}/{o}");
    }
    let target = read_topic(lab.bootstrap("dst"), "orders");
    let got: BTreeSet<_> = map_to_source(&target, &source, "src", "orders", true, &["migrated-by"])
        .into_iter()
        .collect();
    assert_eq!(got, want);

    let v = run_verify(&cfg);
    assert!(v.ok(), "{}", v.table());
    assert_eq!(v.rows.len(), 4);
    for r in &report.rows {
        let vr = verify_row(&v, "acme", &r.source);
        let c = &r.counts;
        assert_eq!(
            (
                vr.source_records,
                vr.filtered,
                vr.dead_lettered,
                vr.skipped,
                vr.target_records
            ),
            (c.read, c.filtered, c.dead_lettered, 0, c.acked),
            "{}: verify vs run\n{}\n{}",
            r.source,
            report.table(),
            v.table()
        );
        assert_eq!((vr.missing, vr.duplicates, vr.altered), (0, 0, 0));
        assert!(vr.by_content);
    }
    let dl: Vec<u64> = (0..4)
        .map(|p| {
            row(&report, "acme", &format!("src:orders/{p}"))
                .counts
                .dead_lettered
        })
        .collect();
    assert_eq!(dl, vec![2, 3, 0, 1]);
}

/// A refusal reported by the broker (in the delivery report, after the record was queued:
/// here one injected MSG_SIZE_TOO_LARGE answer, which refuses a whole batch) goes through
/// the same on_error path as a local one. Which partition's batch is refused is up to the
/// producer, so the assertions hold for any.
#[test]
fn records_the_broker_refuses_follow_on_error() {
    use kmirror::dev_cluster::Control;
    use rdkafka_sys::types::{RDKafkaApiKey, RDKafkaRespErr};
    let lab = Lab::start(&["src", "dst", "ops"]);
    lab.topic("src", "orders", 2);
    for action in ["dead_letter", "stop", "skip"] {
        lab.topic("dst", &format!("o-{action}"), 2);
    }
    lab.topic("ops", "orders.dlq", 1);
    let source = seed(lab.bootstrap("src"), "orders", &tenant_orders(2, 40));
    let all: BTreeSet<(i32, i64)> = source.iter().map(Got::pos).collect();
    let refuse_next_produce = || {
        lab.clusters
            .control(Control::RequestErrors {
                cluster: lab.idx("dst"),
                api: RDKafkaApiKey::Produce,
                error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
                count: 1,
            })
            .expect("inject produce error")
    };
    let config = |action: &str, extra: &str| {
        lab.config(
            &format!("broker-{action}"),
            &format!(
                "[[routes]]\nname = \"r\"\nsource = \"src\"\ntopics = [\"orders\"]\ntarget = \"dst\"\ntarget_topic = \"o-{action}\"\non_error = \"{action}\"\n{extra}\n"
            ),
        )
    };

    // dead_letter: every record is on the target or in the dead-letter topic, exactly once
    // between them; the dead-letter copy is the source record (not the refused copy, which
    // carried a provenance header and a producer-side timestamp).
    refuse_next_produce();
    let cfg = config(
        "dead_letter",
        r#"dead_letter = { cluster = "ops", topic = "orders.dlq" }"#,
    );
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    let target = read_topic(lab.bootstrap("dst"), "o-dead_letter");
    let mut arrived: BTreeSet<(i32, i64)> =
        map_to_source(&target, &source, "src", "orders", true, &[])
            .into_iter()
            .collect();
    let dlq = read_topic(lab.bootstrap("ops"), "orders.dlq");
    assert!(
        !dlq.is_empty(),
        "the injected refusal dead-lettered nothing"
    );
    for d in &dlq {
        let (_, _, p, o) = parse_provenance(d.header_text(DLQ_SOURCE).as_bytes()).unwrap();
        let s = source.iter().find(|g| g.pos() == (p, o)).unwrap();
        assert_eq!(
            (&d.key, &d.value, d.ts),
            (&s.key, &s.value, s.ts),
            "{p}/{o}"
        );
        assert_eq!(
            d.headers_without(&[DLQ_ROUTE, DLQ_ERROR, DLQ_SOURCE]),
            s.headers
        );
        assert!(d.header_text(DLQ_ERROR).contains("refused by dst"));
        assert!(
            arrived.insert((p, o)),
            "{p}/{o} both copied and dead-lettered"
        );
    }
    assert_eq!(arrived, all);
    assert_eq!(report.totals.dead_lettered, dlq.len() as u64);
    assert_eq!(report.totals.acked, target.len() as u64);
    let cp = checkpoint(&cfg);
    for p in 0..2 {
        assert_eq!(next_offset(&cp, "r", "orders", p), 40);
    }
    let v = run_verify(&cfg);
    assert!(v.ok(), "{}", v.table());
    let verified: u64 = v.rows.iter().map(|r| r.dead_lettered).sum();
    assert_eq!(verified, dlq.len() as u64, "{}", v.table());

    // stop: a refused partition halts at its first refused record; nothing below its
    // checkpoint is missing from the target; every record read is accounted for.
    refuse_next_produce();
    let cfg = config("stop", "");
    let report = run_once(&cfg);
    assert!(!report.halted.is_empty(), "{}", report.table());
    let target = read_topic(lab.bootstrap("dst"), "o-stop");
    let arrived: BTreeSet<(i32, i64)> = map_to_source(&target, &source, "src", "orders", true, &[])
        .into_iter()
        .collect();
    let cp = checkpoint(&cfg);
    for p in 0..2 {
        let label = format!("src:orders/{p}");
        let next = next_offset(&cp, "r", "orders", p);
        let first_missing = (0..40).find(|o| !arrived.contains(&(p, *o))).unwrap_or(40);
        match report.halted.iter().find(|(s, _)| *s == label) {
            Some((_, why)) => {
                assert_eq!(
                    next, first_missing,
                    "{label} halts at its first refused record"
                );
                assert!(why.contains(&format!("offset {next}")), "{why}");
                assert!(why.contains("on_error = \"stop\""), "{why}");
                assert!(row(&report, "r", &label).counts.failed >= 1);
            }
            None => {
                assert_eq!((next, first_missing), (40, 40), "{label}");
                assert_counts(&report, "r", &label, counts(40, 0, 40, 0, 0, 0));
            }
        }
    }

    // skip: counted as skipped, the checkpoint passes them, the rest is copied.
    refuse_next_produce();
    let cfg = config("skip", "");
    let report = run_once(&cfg);
    assert!(
        report.complete && report.halted.is_empty(),
        "{}",
        report.table()
    );
    let target = read_topic(lab.bootstrap("dst"), "o-skip");
    let arrived: BTreeSet<(i32, i64)> = map_to_source(&target, &source, "src", "orders", true, &[])
        .into_iter()
        .collect();
    assert!(report.totals.skipped > 0, "{}", report.table());
    let cp = checkpoint(&cfg);
    for p in 0..2 {
        let label = format!("src:orders/{p}");
        let n = per_partition(&arrived, p);
        assert_counts(&report, "r", &label, counts(40, 0, n, 0, 40 - n, 0));
        assert_eq!(next_offset(&cp, "r", "orders", p), 40);
    }
}

/// Refusals outside the list of retriable errors (issue 8): the broker answering
/// INVALID_TIMESTAMP (e.g. `message.timestamp.*.max.ms` when replaying old data),
/// POLICY_VIOLATION or UNSUPPORTED_COMPRESSION_TYPE used to rewind the
/// partition every 200 ms forever, so a `--once` run never ended. Now each is permanent
/// for the refused records and follows on_error; `run_once` fails the test if a run does
/// not end within its bound (it raises stop and panics). (CORRUPT_MESSAGE is not injected:
/// librdkafka retries that one itself, so a single injected answer refuses nothing.)
#[test]
fn permanent_broker_refusals_follow_on_error_instead_of_retrying_forever() {
    use kmirror::dev_cluster::Control;
    use rdkafka_sys::types::{RDKafkaApiKey, RDKafkaRespErr};
    let lab = Lab::start(&["src", "dst", "ops"]);
    lab.topic("src", "orders", 2);
    lab.topic("ops", "orders.dlq", 1);
    let source = seed(lab.bootstrap("src"), "orders", &tenant_orders(2, 40));
    let all: BTreeSet<(i32, i64)> = source.iter().map(Got::pos).collect();
    let cases = [
        (RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP, "skip"),
        (
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION,
            "dead_letter",
        ),
        (
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNSUPPORTED_COMPRESSION_TYPE,
            "stop",
        ),
    ];
    for (n, (error, action)) in cases.into_iter().enumerate() {
        let topic = format!("permanent-{n}");
        lab.topic("dst", &topic, 2);
        lab.clusters
            .control(Control::RequestErrors {
                cluster: lab.idx("dst"),
                api: RDKafkaApiKey::Produce,
                error,
                count: 1,
            })
            .expect("inject produce error");
        let dead_letter = if action == "dead_letter" {
            r#"dead_letter = { cluster = "ops", topic = "orders.dlq" }"#
        } else {
            ""
        };
        let cfg = lab.config(
            &format!("permanent-{n}"),
            &format!(
                "[[routes]]\nname = \"r\"\nsource = \"src\"\ntopics = [\"orders\"]\ntarget = \"dst\"\ntarget_topic = \"{topic}\"\non_error = \"{action}\"\n{dead_letter}\n"
            ),
        );
        let report = run_once(&cfg);
        let label = format!("{error:?} with on_error = {action}");
        let target = read_topic(lab.bootstrap("dst"), &topic);
        let arrived: BTreeSet<(i32, i64)> =
            map_to_source(&target, &source, "src", "orders", true, &[])
                .into_iter()
                .collect();
        assert_eq!(
            report.totals.acked,
            target.len() as u64,
            "{label}\n{}",
            report.table()
        );
        let refused = 80 - target.len() as u64;
        assert!(refused > 0, "{label}: the injected refusal refused nothing");
        match action {
            "skip" => {
                assert!(
                    report.complete && report.halted.is_empty(),
                    "{label}\n{}",
                    report.table()
                );
                assert_eq!(report.totals.skipped, refused, "{label}");
            }
            "dead_letter" => {
                assert!(
                    report.complete && report.halted.is_empty(),
                    "{label}\n{}",
                    report.table()
                );
                let dlq = read_topic(lab.bootstrap("ops"), "orders.dlq");
                assert_eq!(report.totals.dead_lettered, refused, "{label}");
                assert_eq!(dlq.len() as u64, refused, "{label}");
                let mut copied = arrived.clone();
                for d in &dlq {
                    assert!(d.header_text(DLQ_ERROR).contains("refused by dst"));
                    let (_, _, p, o) =
                        parse_provenance(d.header_text(DLQ_SOURCE).as_bytes()).unwrap();
                    assert!(copied.insert((p, o)), "{label}: {p}/{o} twice");
                }
                assert_eq!(copied, all, "{label}: every record copied or dead-lettered");
            }
            _ => {
                assert!(!report.complete, "{label}\n{}", report.table());
                assert!(!report.halted.is_empty(), "{label}\n{}", report.table());
                for (_, why) in &report.halted {
                    assert!(why.contains("refused by dst"), "{label}: {why}");
                    assert!(why.contains("on_error = \"stop\""), "{label}: {why}");
                }
                assert!(report.totals.failed >= 1, "{label}");
            }
        }
        let cp = checkpoint(&cfg);
        for p in 0..2 {
            let next = next_offset(&cp, "r", "orders", p);
            let first_missing = (0..40).find(|o| !arrived.contains(&(p, *o))).unwrap_or(40);
            if action == "stop" {
                assert!(next <= first_missing, "{label}: partition {p} checkpoint {next} passes a refused record at {first_missing}");
            } else {
                assert_eq!(next, 40, "{label}: partition {p}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8. verify verdicts: a matching copy is not necessarily a complete one

/// A partition halted on a poison record (on_error = "stop") matches over what it copied,
/// but the route's range is not copied. With a fixed end that is a failure (INCOMPLETE);
/// following, it is lag (BEHIND), never "every source record is on the target".
#[test]
fn verify_tells_a_matching_copy_from_a_complete_one() {
    let lab = Lab::start(&["src", "dst"]);
    lab.topic("src", "orders", 3);
    lab.topic("dst", "orders-stop", 3);
    lab.topic("dst", "orders-follow", 3);
    lab.write("order.schema.json", ORDER_SCHEMA);
    seed(lab.bootstrap("src"), "orders", &poison_orders());

    let fixed = lab.config("verify-fixed", &poison_route("stop", "end = \"snapshot\""));
    let report = run_once(&fixed);
    assert_eq!(report.halted.len(), 1, "{}", report.table());
    let v = run_verify(&fixed);
    let text = v.table();
    assert!(
        !v.ok(),
        "a halted partition of a fixed-end route fails:\n{text}"
    );
    let r1 = verify_row(&v, "acme-stop", "src:orders/1");
    assert_eq!(r1.missing + r1.unexpected + r1.altered, 0, "{text}");
    assert_eq!(r1.source_range, (0, 4), "{text}");
    assert_eq!(
        (
            r1.coverage.copied_to,
            r1.coverage.behind,
            r1.coverage.route_end
        ),
        (4, 17, Some(21)),
        "{text}"
    );
    assert_eq!(r1.verdict(true), "INCOMPLETE", "{text}");
    for p in [0, 2] {
        let r = verify_row(&v, "acme-stop", &format!("src:orders/{p}"));
        assert_eq!(r.verdict(true), "OK", "{text}");
    }
    assert!(
        text.contains(
            "1 partitions of routes with a fixed end are INCOMPLETE (17 offsets not copied)"
        ) && text.contains("stopped at 4, 17 short of the end 21")
            && !text.contains("every source record is on the target"),
        "{text}"
    );

    let follow = lab.config(
        "verify-follow",
        &poison_route("stop", "").replace("orders-stop", "orders-follow"),
    );
    run_once(&follow);
    let v = run_verify(&follow);
    let text = v.table();
    assert!(v.ok(), "lag of a following route is not a failure:\n{text}");
    let r1 = verify_row(&v, "acme-stop", "src:orders/1");
    assert_eq!(
        (r1.coverage.behind, r1.coverage.route_end, r1.verdict(true)),
        (17, None, "BEHIND"),
        "{text}"
    );
    assert!(
        text.contains("1 partitions of following routes are behind by 17 offsets")
            && !text.contains("every source record is on the target"),
        "{text}"
    );
}

/// Without provenance, under `round_robin` (or `key`) every task writes every target
/// partition, so counting each task's records in each task's target range counts the other
/// tasks' copies too: a gap used to hide behind "duplicates". The route's whole selection is
/// counted against the whole range it wrote instead.
#[test]
fn count_mode_finds_missing_records_under_round_robin() {
    let lab = Lab::start(&["src", "dst"]);
    lab.topic("src", "orders", 2);
    lab.topic("dst", "orders", 2);
    lab.topic("dst", "shared", 2);
    seed(lab.bootstrap("src"), "orders", &tenant_orders(2, 100));
    let cfg = lab.config(
        "count-rr",
        r#"
[[routes]]
name = "rr"
source = "src"
topics = ["orders"]
target = "dst"
provenance = false
partitioning = "round_robin"
end = 60
"#,
    );
    let report = run_once(&cfg);
    assert_eq!(report.totals.acked, 120, "{}", report.table());
    let v = verify::verify(&cfg, &FileStore::new(cfg.checkpoint_file()), None, false).unwrap();
    assert!(v.ok(), "a complete copy verifies:\n{}", v.table());
    // Lose 40 records: the checkpoint claims partition 0 copied up to 100. And let both
    // tasks' writes interleave over the whole target range (as they do when both run at
    // once; which task wrote last is otherwise up to timing).
    let store = FileStore::new(cfg.checkpoint_file());
    let mut cp = checkpoint(&cfg);
    let parts = &mut cp.routes.get_mut("rr").unwrap().partitions;
    let mut whole: BTreeMap<i32, [i64; 2]> = BTreeMap::new();
    for pc in parts.values() {
        for (tp, [a, b]) in &pc.target {
            let e = whole.entry(*tp).or_insert([*a, *b]);
            *e = [e[0].min(*a), e[1].max(*b)];
        }
    }
    for pc in parts.values_mut() {
        pc.target = whole.clone();
    }
    parts.get_mut("orders/0").unwrap().next_offset = 100;
    store.save(&cp).unwrap();
    let v = verify::verify(&cfg, &store, None, false).unwrap();
    let text = v.table();
    assert!(!v.ok(), "40 records are missing:\n{text}");
    let whole = verify_row(&v, "rr", "src:orders/*");
    assert_eq!(
        (
            whole.source_records,
            whole.target_records,
            whole.missing,
            whole.duplicates
        ),
        (160, 120, 40, 0),
        "{text}"
    );
    assert!(text.contains("MISMATCH"), "{text}");

    // Two routes writing one target topic without provenance cannot be told apart: refused.
    let cfg = lab.config(
        "count-shared",
        r#"
[[routes]]
name = "acme"
source = "src"
topics = ["orders"]
target = "dst"
target_topic = "shared"
provenance = false
filter = { json = "$.tenant_id", equals = "acme" }

[[routes]]
name = "globex"
source = "src"
topics = ["orders"]
target = "dst"
target_topic = "shared"
provenance = false
filter = { json = "$.tenant_id", equals = "globex" }
"#,
    );
    run_once(&cfg);
    let v = verify::verify(&cfg, &FileStore::new(cfg.checkpoint_file()), None, false).unwrap();
    let text = v.table();
    assert!(!v.ok(), "{text}");
    let r = verify_row(&v, "acme", "src:orders/0");
    assert_eq!(r.verdict(false), "UNVERIFIABLE", "{text}");
    assert!(
        text.contains("cannot verify: route \"globex\" also writes dst:shared without provenance"),
        "{text}"
    );
}

/// Two routes from one source topic with disjoint filters into one target topic: each
/// route's verify must find its own records and leave the other route's alone (each used to
/// call the other's copies `unexpected`). The provenance header names the route.
#[test]
fn two_routes_into_one_topic_each_verify_their_own_records() {
    let lab = Lab::start(&["src", "dst"]);
    lab.topic("src", "orders", 2);
    lab.topic("dst", "merged", 2);
    let source = seed(lab.bootstrap("src"), "orders", &tenant_orders(2, 60));
    let cfg = lab.config(
        "merge",
        r#"
[[routes]]
name = "acme"
source = "src"
topics = ["orders"]
target = "dst"
target_topic = "merged"
filter = { json = "$.tenant_id", equals = "acme" }

[[routes]]
name = "globex"
source = "src"
topics = ["orders"]
target = "dst"
target_topic = "merged"
filter = { json = "$.tenant_id", equals = "globex" }
"#,
    );
    run_once(&cfg);
    let target = read_topic(lab.bootstrap("dst"), "merged");
    let prov = |g: &Got| g.header_text(PROVENANCE);
    let acme = tenant_positions(&source, "acme");
    for g in &target {
        let (_, _, p, o) = parse_provenance(prov(g).as_bytes()).unwrap();
        let want = if acme.contains(&(p, o)) {
            "acme@"
        } else {
            "globex@"
        };
        assert!(prov(g).starts_with(want), "{} names its route", prov(g));
    }
    let v = run_verify(&cfg);
    let text = v.table();
    assert!(v.ok(), "{text}");
    for (route, tenant) in [("acme", "acme"), ("globex", "globex")] {
        let want = tenant_positions(&source, tenant);
        for p in 0..2 {
            let r = verify_row(&v, route, &format!("src:orders/{p}"));
            assert_eq!(
                (r.unexpected, r.missing, r.target_records),
                (0, 0, per_partition(&want, p)),
                "{text}"
            );
        }
    }
}

/// Verify keeps a digest per block of offsets, not a record, and re-reads record by record
/// only the blocks whose digests differ. A target forged from a real copy, with a record
/// dropped, one altered, one delivered twice and one the route never selected, each deep
/// inside a range of many blocks: verify must name exactly those (counts and offsets, the
/// same as with one block for the whole range), and re-read only the blocks holding them.
#[test]
fn verify_finds_each_difference_deep_inside_a_range_of_many_blocks() {
    const BLOCK: i64 = 64;
    let lab = Lab::start(&["src", "dst", "forged"]);
    lab.topic("src", "orders", 2);
    lab.topic("dst", "orders", 3);
    lab.topic("forged", "orders", 3);
    let source = seed(lab.bootstrap("src"), "orders", &tenant_orders(2, 1500));
    // Keyed into 3 target partitions: every target partition holds both source partitions'
    // copies, so attribution by provenance is exercised too.
    let route = r#"
[[routes]]
name = "acme"
source = "src"
topics = ["orders"]
target = "dst"
partitioning = "key"
filter = { json = "$.tenant_id", equals = "acme" }
"#;
    let cfg = lab.config("forge", route);
    run_once(&cfg);
    let copy = read_topic(lab.bootstrap("dst"), "orders");
    let acme = tenant_positions(&source, "acme");
    assert_eq!(copy.len(), acme.len(), "the real copy is complete");

    // Forge target partition 1 from the copy. Source offsets named, per source partition.
    let on_1: Vec<&Got> = copy.iter().filter(|g| g.partition == 1).collect();
    let n = on_1.len();
    let src_of = |g: &Got| g.provenance().map(|(_, _, p, o)| (p, o)).unwrap();
    let (dropped_a, dropped_b, altered, doubled) = (n / 5, n / 2 + 3, 2 * n / 3, 4 * n / 5);
    // The unexpected copy names a record of the same source partition that the filter left
    // out, in the middle of the copied range.
    let near = src_of(on_1[n / 3]);
    let stranger = source
        .iter()
        .find(|g| g.partition == near.0 && g.offset > near.1 && !acme.contains(&g.pos()))
        .unwrap()
        .pos();
    let as_rec = |g: &Got| Rec {
        partition: g.partition,
        key: g.key.clone(),
        value: g.value.clone(),
        headers: g
            .headers
            .iter()
            .map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), v.clone()))
            .collect(),
        ts: g.ts,
    };
    let mut forged = Vec::new();
    for g in &copy {
        if g.partition != 1 {
            forged.push(as_rec(g));
            continue;
        }
        let i = on_1.iter().position(|h| h.offset == g.offset).unwrap();
        if i == dropped_a || i == dropped_b {
            continue;
        }
        let mut r = as_rec(g);
        if i == altered {
            r.value.as_mut().unwrap().push(b' ');
        }
        if i == doubled {
            forged.push(r.clone());
        }
        forged.push(r);
        if i == n / 3 {
            let mut u = as_rec(g);
            let prov = g.header_text(PROVENANCE);
            let base = prov.rsplit_once('/').unwrap().0;
            let at = base.rsplit_once('/').unwrap().0;
            for h in &mut u.headers {
                if h.0 == PROVENANCE {
                    h.1 = Some(format!("{at}/{}/{}", stranger.0, stranger.1).into_bytes());
                }
            }
            forged.push(u);
        }
    }
    // As many records as the real copy: the checkpoint's target ranges cover them all.
    assert_eq!(forged.len(), copy.len());
    produce(lab.bootstrap("forged"), "orders", &forged);

    // The same job, its target cluster answered by the forged broker.
    let view = lab.config_as("forge", route, &[("dst", "forged")]);
    let store = FileStore::new(view.checkpoint_file());
    let small = verify::VerifyOptions {
        parallel: 3,
        block: BLOCK,
        ..Default::default()
    };
    let v = verify::verify_with(&view, &store, None, true, &small).unwrap();
    let text = v.table();
    assert!(!v.ok(), "{text}");
    // Per source partition: (missing, altered, unexpected offsets, duplicates).
    type Want = (Vec<i64>, Vec<i64>, Vec<i64>, u64);
    let mut want: BTreeMap<i32, Want> = BTreeMap::new();
    for i in [dropped_a, dropped_b] {
        let (p, o) = src_of(on_1[i]);
        want.entry(p).or_default().0.push(o);
    }
    let (p, o) = src_of(on_1[altered]);
    want.entry(p).or_default().1.push(o);
    want.entry(stranger.0).or_default().2.push(stranger.1);
    want.entry(src_of(on_1[doubled]).0).or_default().3 += 1;
    let mut rechecked = 0;
    for p in 0..2 {
        let r = verify_row(&v, "acme", &format!("src:orders/{p}"));
        let (mut missing, altered, unexpected, dups) = want.get(&p).cloned().unwrap_or_default();
        missing.sort_unstable();
        assert_eq!(
            (
                &r.first_missing,
                &r.first_altered,
                &r.first_unexpected,
                r.duplicates
            ),
            (&missing, &altered, &unexpected, dups),
            "partition {p}:\n{text}"
        );
        assert_eq!(
            (r.missing, r.altered, r.unexpected),
            (
                missing.len() as u64,
                altered.len() as u64,
                unexpected.len() as u64
            ),
            "partition {p}:\n{text}"
        );
        assert_eq!(r.source_records, 1500, "{text}");
        assert_eq!(r.blocks, 1500_u64.div_ceil(BLOCK as u64), "{text}");
        rechecked += r.blocks_rechecked;
    }
    // Only the blocks holding a difference were read again.
    let touched: BTreeSet<(i32, i64)> = [
        src_of(on_1[dropped_a]),
        src_of(on_1[dropped_b]),
        src_of(on_1[altered]),
        src_of(on_1[doubled]),
        stranger,
    ]
    .iter()
    .map(|(p, o)| (*p, o / BLOCK))
    .collect();
    assert_eq!(rechecked, touched.len() as u64, "{text}");

    // One block for the whole range gives the same verdicts, offsets and counts.
    let whole = verify::VerifyOptions {
        parallel: 1,
        block: i64::MAX / 4,
        ..Default::default()
    };
    let w = verify::verify_with(&view, &store, None, true, &whole).unwrap();
    for (a, b) in v.rows.iter().zip(&w.rows) {
        let key = |r: &VerifyRow| {
            (
                r.source.clone(),
                r.source_records,
                r.target_records,
                r.filtered,
                r.missing,
                r.unexpected,
                r.duplicates,
                r.altered,
                r.first_missing.clone(),
                r.first_altered.clone(),
                r.first_unexpected.clone(),
            )
        };
        assert_eq!(key(a), key(b), "{text}\n{}", w.table());
    }
    // The real copy matches, in every block.
    let real = verify::verify_with(&cfg, &store, None, true, &small).unwrap();
    assert!(real.ok(), "{}", real.table());
    assert!(
        real.rows.iter().all(|r| r.blocks_rechecked == 0),
        "{}",
        real.table()
    );
}
