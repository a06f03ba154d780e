//! Reliability tests (issue 4, "prove nothing is lost"). RELIABILITY.md explains the method
//! and records the figures; run with `cargo test --test reliability -- --nocapture`.
//!
//! 1. crash loop: `kmirror run` killed with SIGKILL at seeded pseudo-random moments against
//!    `kmirror dev-cluster` in another process; every source offset must end up on the
//!    target, and the duplicates each kill causes are bounded by the in-flight window plus
//!    one checkpoint interval at the rate limit;
//! 2. SIGTERM: clean exit 0, a final checkpoint that matches the target exactly, and a rerun
//!    that copies exactly the rest (no duplicate at all);
//! 3. checkpoint refusals (truncated, checksum, another job: exit 5, nothing copied) and a
//!    checkpoint older than the retained log (exit 4 with the gap size, or the gap reported);
//! 4. broker faults through the library API and the mock cluster's fault injection: target
//!    brokers down for longer than the message timeout, leader moves, source request errors,
//!    a slow target under the in-flight bounds, producer-fencing errors;
//! 5. odd records copied byte for byte (empty and null, 1.5 MiB, 100 headers, non-UTF-8 key,
//!    header values and header names).
//!
//! Every assertion reads the clusters with plain clients (provenance headers read raw, so
//! non-UTF-8 header names cannot crash the reader); nothing trusts kmirror's own counts.
//! Tests take a process-wide lock and run one at a time: several of them measure time or
//! depend on a rate limit holding, which two CPU-heavy tests side by side on 2 cores blur.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use common::cli::{km, kmirror, s, signal, Running};
use common::{Mirror, TestRecord, BROKERS, SOURCE, SOURCE_IDX, TARGET, TARGET_IDX};
use kmirror::checkpoint::{Checkpoint, CheckpointStore, FileStore};
use kmirror::copy::record::{parse_provenance, raw_headers, PROVENANCE_HEADER};
use kmirror::dev_cluster::Control;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka_sys::types::{RDKafkaApiKey, RDKafkaRespErr};

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Harness: one test at a time, captured logs
// ---------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());
static LOGS: Mutex<String> = Mutex::new(String::new());

/// Takes the process-wide test lock (a failed test must not block the others) and installs
/// the log capture.
fn serial() -> MutexGuard<'static, ()> {
    init_capture();
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = String::from_utf8_lossy(buf);
        if std::env::var_os("KMIRROR_TEST_LOG").is_some() {
            eprint!("{s}");
        }
        let mut logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
        if logs.len() < 16 << 20 {
            logs.push_str(&s);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// kmirror's logs (reader threads included) go to a buffer tests can search, so a test can
/// tell, e.g., that the producer was recreated. `KMIRROR_TEST_LOG=1` also prints them.
/// Installed before `common::init_logging`, whose `try_init` then leaves it in place.
fn init_capture() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .try_init();
    });
}

/// Log lines captured since `from` (a length of the buffer taken earlier).
fn logs_since(from: usize) -> String {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    logs.get(from..).unwrap_or_default().to_string()
}

fn logs_len() -> usize {
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).len()
}

// ---------------------------------------------------------------------------------------
// Harness: kmirror processes
// ---------------------------------------------------------------------------------------

/// `kmirror dev-cluster` in another process (2 clusters of 3 brokers), killed when dropped.
struct DevClusterProc {
    child: Child,
    bootstraps: Vec<String>,
}

impl DevClusterProc {
    fn start(dir: &Path, topics: &[&str]) -> DevClusterProc {
        let mut args = vec!["dev-cluster", "--clusters", "2", "--brokers", "3"];
        for t in topics {
            args.extend(["--topic", t]);
        }
        let err_path = dir.join("dev-cluster.stderr");
        let err = fs::File::create(&err_path).expect("dev-cluster stderr file");
        let mut child = kmirror(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn kmirror dev-cluster");
        let out = child.stdout.take().expect("dev-cluster stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut dc = DevClusterProc {
            child,
            bootstraps: Vec::new(),
        };
        loop {
            match rx.recv_timeout(WAIT) {
                Ok(line) => {
                    if let Some((_, addr)) = line.split_once(" bootstrap=") {
                        dc.bootstraps.push(addr.trim().to_string());
                    } else if line.starts_with("ready") {
                        break;
                    }
                }
                Err(e) => panic!(
                    "dev-cluster did not print `ready` ({e:?}); stderr:\n{}",
                    fs::read_to_string(&err_path).unwrap_or_default()
                ),
            }
        }
        assert_eq!(dc.bootstraps.len(), 2, "two clusters");
        dc
    }
}

impl Drop for DevClusterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A routing file with clusters `src` and `dst` at the given addresses, then `rest`.
fn write_config(path: &Path, header: &str, src: &str, dst: &str, rest: &str) -> PathBuf {
    let text = format!(
        r#"{header}

[clusters.{SOURCE}]
bootstrap = "{src}"

[clusters.{TARGET}]
bootstrap = "{dst}"

{rest}
"#
    );
    fs::write(path, text).expect("write routing file");
    path.to_path_buf()
}

// ---------------------------------------------------------------------------------------
// Harness: reading raw, provenance census
// ---------------------------------------------------------------------------------------

/// A record exactly as stored: header names and values as bytes (names may not be UTF-8,
/// which rust-rdkafka's `Headers::get` would panic on).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    timestamp: Option<i64>,
}

fn raw_consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kmirror-reliability-assign-only")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error")
        .set("fetch.message.max.bytes", "4194304")
        .set("log.connection.close", "false")
        .create()
        .expect("test consumer")
}

/// Calls `f` for every record of `[low, high)` of a partition (watermarks read first).
/// Returns the number of records. Fails if the read stalls for a minute.
fn scan(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> u64 {
    let c = raw_consumer(bootstrap);
    let (low, high) = c
        .fetch_watermarks(topic, partition, WAIT)
        .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"));
    if high <= low {
        return 0;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .unwrap();
    c.assign(&tpl).expect("assign");
    let mut n = 0;
    let mut last = Instant::now();
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                n += 1;
                f(&m);
                if m.offset() + 1 >= high {
                    return n;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return n,
            Some(Err(e)) => panic!("reading {topic}/{partition}: {e}"),
            None => {}
        }
        assert!(
            last.elapsed() < WAIT,
            "reading {topic}/{partition}: stalled after {n} records of [{low}, {high})"
        );
    }
}

fn to_raw(m: &BorrowedMessage<'_>) -> Raw {
    Raw {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers: raw_headers(m)
            .into_iter()
            .map(|h| (h.name.to_vec(), h.value.map(<[u8]>::to_vec)))
            .collect(),
        timestamp: m.timestamp().to_millis(),
    }
}

fn read_raw(bootstrap: &str, topic: &str, partition: i32) -> Vec<Raw> {
    let mut out = Vec::new();
    scan(bootstrap, topic, partition, |m| out.push(to_raw(m)));
    out
}

/// Copies of each source (partition, offset) of `src_topic` among the target records of
/// `topic` partitions `0..partitions`. Panics on a record without provenance or from
/// another source: these target topics are written only by kmirror.
fn census(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    src_topic: &str,
) -> BTreeMap<(i32, i64), u32> {
    let mut seen = BTreeMap::new();
    for p in 0..partitions {
        scan(bootstrap, topic, p, |m| {
            let hdrs = raw_headers(m);
            let prov = hdrs
                .iter()
                .rev()
                .find(|h| h.name == PROVENANCE_HEADER.as_bytes())
                .and_then(|h| h.value)
                .and_then(parse_provenance)
                .unwrap_or_else(|| panic!("{topic}/{p}@{}: no provenance header", m.offset()));
            assert_eq!(
                (prov.0, prov.1),
                (SOURCE, src_topic),
                "{topic}/{p}@{} names another source",
                m.offset()
            );
            *seen.entry((prov.2, prov.3)).or_insert(0) += 1;
        });
    }
    seen
}

/// Loss and duplication against the expected source offset ranges.
#[derive(Debug, Default)]
struct Tally {
    expected: u64,
    target_records: u64,
    missing: u64,
    first_missing: Option<(i32, i64)>,
    duplicates: u64,
    /// Target records naming a source offset outside the expected ranges.
    extra: u64,
}

fn tally(seen: &BTreeMap<(i32, i64), u32>, expected: &BTreeMap<i32, Range<i64>>) -> Tally {
    let mut t = Tally::default();
    for (p, r) in expected {
        for o in r.clone() {
            t.expected += 1;
            if !seen.contains_key(&(*p, o)) {
                t.missing += 1;
                t.first_missing.get_or_insert((*p, o));
            }
        }
    }
    for ((p, o), n) in seen {
        t.target_records += *n as u64;
        if expected.get(p).is_some_and(|r| r.contains(o)) {
            t.duplicates += (*n - 1) as u64;
        } else {
            t.extra += *n as u64;
        }
    }
    t
}

fn ranges(partitions: i32, r: Range<i64>) -> BTreeMap<i32, Range<i64>> {
    (0..partitions).map(|p| (p, r.clone())).collect()
}

/// Asserts nothing is missing and nothing foreign is there; returns the tally.
fn assert_nothing_lost(what: &str, t: &Tally) {
    assert!(
        t.missing == 0 && t.extra == 0,
        "{what}: {} of {} source records missing on the target (first {:?}), {} records outside the copied range",
        t.missing,
        t.expected,
        t.first_missing,
        t.extra
    );
}

/// `next_offset` per partition of `topic` for `route` in a checkpoint (0 when absent).
fn cp_positions(cp: Option<&Checkpoint>, route: &str, topic: &str, partitions: i32) -> Vec<i64> {
    (0..partitions)
        .map(|p| {
            cp.and_then(|c| c.get(route, topic, p))
                .map_or(0, |pc| pc.next_offset)
        })
        .collect()
}

/// A small linear congruential generator (Knuth's MMIX constants): the kill schedule is a
/// pure function of the seed, printed with the figures.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The record the crash and SIGTERM tests use: every one charges exactly `FIXED_BYTES`
/// against the in-flight bound (key 11 + value 160 + header name 3 + header value 8), so
/// the bounds below are exact record counts.
fn fixed_record(p: i32, i: i64) -> TestRecord {
    let mut value = format!("p{p:02}o{i:07}|").into_bytes();
    value.resize(160, b'v');
    TestRecord {
        partition: p,
        key: Some(format!("k{p:02}-{i:07}").into_bytes()),
        value: Some(value),
        headers: vec![("seq".into(), Some(i.to_be_bytes().to_vec()))],
        timestamp: Some(1_700_000_000_000 + i),
    }
}
const FIXED_BYTES: u64 = 182;

/// Produces `per_partition` fixed records to each of `partitions` partitions.
fn produce_fixed(bootstrap: &str, topic: &str, partitions: i32, per_partition: i64) {
    let p = common::DataProducer::new(bootstrap);
    for i in 0..per_partition {
        for part in 0..partitions {
            p.send(topic, &fixed_record(part, i));
        }
    }
    p.flush();
}

// ---------------------------------------------------------------------------------------
// 1. Crash loop: kill -9 at seeded pseudo-random moments
// ---------------------------------------------------------------------------------------

const CRASH_TOPIC: &str = "crash";
const CRASH_PARTITIONS: i32 = 16;
/// 16 x 12,500 = 200,000 records of 182 bytes (about 3 MB per target partition with the
/// provenance header and record overhead: under the mock's 5 MB retention, duplicates
/// included).
const CRASH_PER_PARTITION: i64 = 12_500;
const CRASH_KILLS: usize = 15;
const CRASH_SEED: u64 = 20_261_122;
const CRASH_RATE: u64 = 4_000;
const CRASH_INTERVAL_MS: u64 = 500;
const CRASH_IN_FLIGHT: u64 = 256 * 1024;

#[test]
fn crash_loop_kill_9_loses_nothing_and_bounds_duplicates() {
    let _serial = serial();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let dc = DevClusterProc::start(dir.path(), &[&format!("{CRASH_TOPIC}:{CRASH_PARTITIONS}")]);
    let (src, dst) = (dc.bootstraps[0].clone(), dc.bootstraps[1].clone());
    assert_eq!(
        fixed_record(15, 12_499)
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
            + 11
            + 160,
        FIXED_BYTES as usize
    );
    produce_fixed(&src, CRASH_TOPIC, CRASH_PARTITIONS, CRASH_PER_PARTITION);
    let total = CRASH_PER_PARTITION * CRASH_PARTITIONS as i64;
    let cfg = write_config(
        &dir.path().join("crash.toml"),
        &format!(
            "[checkpoints]\ninterval = \"{CRASH_INTERVAL_MS}ms\"\n\n[limits]\nmax_in_flight_bytes = {CRASH_IN_FLIGHT}\nmax_in_flight_bytes_per_partition = \"128KiB\""
        ),
        &src,
        &dst,
        &format!(
            "[[routes]]\nname = \"crash\"\nsource = \"{SOURCE}\"\ntopics = [\"{CRASH_TOPIC}\"]\ntarget = \"{TARGET}\"\nmax_messages_per_sec = {CRASH_RATE}\n"
        ),
    );
    let store = FileStore::new(dir.path().join("checkpoints/crash.checkpoint.json"));

    // Duplicates one kill can cause, from the configuration. After a kill the next run
    // resumes at the newest checkpoint, so the records it copies again are those that
    // reached the target at or above that checkpoint's positions:
    // (a) records in flight (produced, not yet acknowledged) when the checkpoint's
    //     positions were taken. The reader takes no batch while in-flight bytes are at
    //     `max_in_flight_bytes`, and caps a batch at the remaining budget (at least one
    //     record), so at most max_in_flight_bytes / FIXED_BYTES + 1 records (one reader:
    //     one source topic). The budget is counted in key + value bytes, so the bound
    //     below uses those (171 of the 182 bytes), which is the looser of the two.
    // (b) records read after the positions were taken and before the kill. Positions are
    //     published by the reader every 200 ms, the checkpoint writer wakes every 50 ms and
    //     writes every `interval`; a reader turn waits at most ~100 ms on the rate limiter
    //     plus a 50 ms poll. So the newest checkpoint is at most interval + 500 ms old at
    //     the kill, and the route reads at most `rate` records a second plus its burst
    //     (rate / 10, governor's bucket) in that window.
    let window = CRASH_IN_FLIGHT.div_ceil(FIXED_BYTES - 11) + 1;
    let lag = CRASH_RATE * (CRASH_INTERVAL_MS + 500) / 1000 + CRASH_RATE / 10;
    let bound = (window + lag) as i64;

    let mut lcg = Lcg(CRASH_SEED);
    let mut prev_cp = vec![0i64; CRASH_PARTITIONS as usize];
    let mut prev_hw = vec![0i64; CRASH_PARTITIONS as usize];
    let mut kill_dups = Vec::new();
    let mut schedule = Vec::new();
    for k in 0..CRASH_KILLS {
        let delay = Duration::from_millis(200 + lcg.below(3_800));
        let mut run = Running::spawn(&["run", "-c", s(&cfg), "--once", "--progress", "0"]);
        std::thread::sleep(delay);
        assert!(
            run.still_running(),
            "kill {k}: the run ended before the kill at {delay:?}: {:?}",
            run.wait(Duration::from_secs(1))
        );
        run.child.kill().expect("SIGKILL");
        let f = run.wait(Duration::from_secs(10));
        assert_eq!(f.code, -1, "kill {k}: killed by SIGKILL: {f:?}");
        // A kill at any instant leaves a checkpoint that loads (atomic rename).
        let cp = store
            .load()
            .unwrap_or_else(|e| panic!("kill {k}: the checkpoint does not load: {e}"));
        let pos = cp_positions(cp.as_ref(), "crash", CRASH_TOPIC, CRASH_PARTITIONS);
        let hw = common::highs(&dst, CRASH_TOPIC, CRASH_PARTITIONS);
        let mut dups = 0;
        for p in 0..CRASH_PARTITIONS as usize {
            let written = hw[p] - prev_hw[p];
            let advanced = pos[p] - prev_cp[p];
            // This run wrote source offsets prev_cp.. in order into target partition p (one
            // idempotent producer per run), so a checkpoint that advanced further than
            // the records written would have skipped records.
            assert!(
                advanced >= 0 && advanced <= written,
                "kill {k} partition {p}: the checkpoint moved {advanced} but only {written} records reached the target"
            );
            dups += written - advanced;
        }
        assert!(
            dups <= bound,
            "kill {k} after {delay:?}: {dups} duplicates > bound {bound} (window {window} + lag {lag})"
        );
        schedule.push(delay.as_millis());
        kill_dups.push(dups);
        eprintln!(
            "kill {k:2} at {:5} ms: checkpoint {:6} -> {:6}, duplicates {dups}",
            delay.as_millis(),
            prev_cp.iter().sum::<i64>(),
            pos.iter().sum::<i64>()
        );
        prev_cp = pos;
        prev_hw = hw;
    }
    let before_final = prev_cp.iter().sum::<i64>();
    assert!(
        before_final > 0 && before_final < total,
        "the kills landed mid-copy: {before_final} of {total} checkpointed"
    );
    let fin = km(
        &["run", "-c", s(&cfg), "--once", "--progress", "0"],
        Duration::from_secs(180),
    );
    fin.expect_code(0, "final run");
    assert!(fin.stdout.contains("complete in "), "{}", fin.stdout);
    let cp = store.load().unwrap();
    let pos = cp_positions(cp.as_ref(), "crash", CRASH_TOPIC, CRASH_PARTITIONS);
    assert!(pos.iter().all(|&p| p == CRASH_PER_PARTITION), "{pos:?}");

    let seen = census(&dst, CRASH_TOPIC, CRASH_PARTITIONS, CRASH_TOPIC);
    let t = tally(&seen, &ranges(CRASH_PARTITIONS, 0..CRASH_PER_PARTITION));
    let dups_from_kills: i64 = kill_dups.iter().sum();
    println!(
        "crash loop: kills={} records={} missing={} duplicates={} (per kill: max {} mean {:.0}, bound {bound} = in-flight window {window} + checkpoint lag {lag}); target records {}; seed {CRASH_SEED}, kill delays ms {schedule:?}; {:.1}s",
        kill_dups.len(),
        t.expected,
        t.missing,
        t.duplicates,
        kill_dups.iter().max().unwrap(),
        dups_from_kills as f64 / kill_dups.len() as f64,
        t.target_records,
        t0.elapsed().as_secs_f64()
    );
    assert_nothing_lost("crash loop", &t);
    assert_eq!(t.expected as i64, total);
    // kmirror's own verification agrees, record by record: exit 0 (nothing missing), and
    // exactly the duplicates the census found, including copies written by a run killed
    // before its first checkpoint (verify reads from the target's position before the job's
    // first write, `target_start` in the checkpoint).
    let v = km(&["verify", "-c", s(&cfg)], Duration::from_secs(180));
    v.expect_code(0, "verify after the crash loop");
    let reported: u64 = v
        .stdout
        .split("; ")
        .find_map(|part| {
            part.strip_suffix(" duplicate deliveries (at-least-once retries or restarts)\n")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    println!("crash loop: verify reports {reported} duplicates");
    assert_eq!(
        reported, t.duplicates,
        "verify's duplicates == duplicates by census:\n{}",
        v.stdout
    );
    // Every duplicate is accounted for by a kill: the final (clean) run added none.
    assert_eq!(
        t.duplicates as i64, dups_from_kills,
        "duplicates per kill add up"
    );
}

// ---------------------------------------------------------------------------------------
// 2. SIGTERM mid-run: exit 0, exact final checkpoint, the rerun copies exactly the rest
// ---------------------------------------------------------------------------------------

const TERM_TOPIC: &str = "term";
const TERM_PARTITIONS: i32 = 8;
const TERM_PER_PARTITION: i64 = 5_000;

#[test]
fn sigterm_mid_run_exits_0_and_the_rerun_copies_exactly_the_rest() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dc = DevClusterProc::start(dir.path(), &[&format!("{TERM_TOPIC}:{TERM_PARTITIONS}")]);
    let (src, dst) = (dc.bootstraps[0].clone(), dc.bootstraps[1].clone());
    produce_fixed(&src, TERM_TOPIC, TERM_PARTITIONS, TERM_PER_PARTITION);
    let total = TERM_PER_PARTITION * TERM_PARTITIONS as i64;
    let shutdown = Duration::from_secs(10);
    let cfg = write_config(
        &dir.path().join("term.toml"),
        "[checkpoints]\ninterval = \"500ms\"\n\n[run]\nshutdown_timeout = \"10s\"",
        &src,
        &dst,
        &format!(
            "[[routes]]\nname = \"term\"\nsource = \"{SOURCE}\"\ntopics = [\"{TERM_TOPIC}\"]\ntarget = \"{TARGET}\"\nmax_messages_per_sec = 8000\n"
        ),
    );
    let store = FileStore::new(dir.path().join("checkpoints/term.checkpoint.json"));
    let checkpointed = || {
        store.load().ok().flatten().map_or(0, |cp| {
            cp_positions(Some(&cp), "term", TERM_TOPIC, TERM_PARTITIONS)
                .iter()
                .sum::<i64>()
        })
    };

    let mut run = Running::spawn(&["run", "-c", s(&cfg), "--once", "--progress", "0"]);
    let deadline = Instant::now() + WAIT;
    while run.started.elapsed() < Duration::from_millis(1500) || checkpointed() == 0 {
        assert!(run.still_running(), "the run ended before SIGTERM");
        assert!(Instant::now() < deadline, "no checkpointed progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    signal(run.pid(), "-TERM");
    let stopped = run.wait(shutdown + Duration::from_secs(20));
    let took = t.elapsed();
    stopped.expect_code(0, "SIGTERM");
    assert!(stopped.stdout.contains("stopped in "), "{}", stopped.stdout);
    // Bounded: waiting for in-flight deliveries is capped by run.shutdown_timeout; the
    // rest (final checkpoint, summary) is quick.
    assert!(
        took < shutdown + Duration::from_secs(5),
        "SIGTERM to exit took {took:?}"
    );

    let cp = store.load().unwrap().expect("a final checkpoint");
    let pos = cp_positions(Some(&cp), "term", TERM_TOPIC, TERM_PARTITIONS);
    let at_stop: i64 = pos.iter().sum();
    // Mid-copy: the total is strictly between 0 and the end. (Per partition it need not be:
    // the consumer fills its queue from a few partitions at a time, so under a rate limit
    // some partitions are finished and others untouched after 1.5 s.)
    assert!(
        at_stop > 0
            && at_stop < total
            && pos.iter().all(|&p| (0..=TERM_PER_PARTITION).contains(&p)),
        "stopped mid-copy: {pos:?}"
    );
    // A clean stop waits for what is in flight, so the final checkpoint says exactly what
    // the target holds: every offset below it once, nothing above it.
    let expected: BTreeMap<i32, Range<i64>> = pos
        .iter()
        .enumerate()
        .map(|(p, &n)| (p as i32, 0..n))
        .collect();
    let first = tally(
        &census(&dst, TERM_TOPIC, TERM_PARTITIONS, TERM_TOPIC),
        &expected,
    );
    assert_nothing_lost("after SIGTERM", &first);
    assert_eq!(first.duplicates, 0, "a clean stop duplicates nothing");

    let rerun = km(
        &["run", "-c", s(&cfg), "--once", "--progress", "0"],
        Duration::from_secs(120),
    );
    rerun.expect_code(0, "rerun after SIGTERM");
    assert!(rerun.stdout.contains("complete in "), "{}", rerun.stdout);
    let verify = km(
        &["verify", "-c", s(&cfg), "--fail-on-duplicates"],
        Duration::from_secs(120),
    );
    verify.expect_code(0, "verify --fail-on-duplicates after SIGTERM and rerun");

    let source_count: u64 = (0..TERM_PARTITIONS)
        .map(|p| scan(&src, TERM_TOPIC, p, |_| {}))
        .sum();
    let after = tally(
        &census(&dst, TERM_TOPIC, TERM_PARTITIONS, TERM_TOPIC),
        &ranges(TERM_PARTITIONS, 0..TERM_PER_PARTITION),
    );
    println!(
        "sigterm: stopped after {:.1}s at {at_stop}/{total} (per partition {pos:?}), exit 0 in {:.2}s; rerun: target records {} = source records {source_count}, missing={} duplicates={}",
        stopped.elapsed.as_secs_f64() - took.as_secs_f64(),
        took.as_secs_f64(),
        after.target_records,
        after.missing,
        after.duplicates
    );
    assert_nothing_lost("after the rerun", &after);
    assert_eq!(after.duplicates, 0);
    assert_eq!(source_count, total as u64);
    assert_eq!(
        after.target_records, source_count,
        "target count == source count"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Checkpoints that must be refused, and a checkpoint behind the retained log
// ---------------------------------------------------------------------------------------

fn binary_config(m: &Mirror, name: &str, job: &str, route_extra: &str, topic: &str) -> PathBuf {
    let cp_dir = m.dir.path().join(format!("cp-{job}"));
    write_config(
        &m.dir.path().join(format!("{name}.toml")),
        &format!(
            "[checkpoints]\ndir = \"{}\"\njob = \"{job}\"\ninterval = \"200ms\"",
            cp_dir.display()
        ),
        m.source(),
        m.target(),
        &format!(
            "[[routes]]\nname = \"{topic}\"\nsource = \"{SOURCE}\"\ntopics = [\"{topic}\"]\ntarget = \"{TARGET}\"\n{route_extra}\n"
        ),
    )
}

#[test]
fn truncated_corrupt_and_foreign_checkpoints_exit_5_and_copy_nothing() {
    let _serial = serial();
    let m = Mirror::start(&[("refuse", 4)]);
    common::produce_numbered(m.source(), "refuse", 4, 0..100, 1_700_000_000_000);
    let cfg = binary_config(&m, "refuse", "refuse", "", "refuse");
    let other = binary_config(&m, "other", "other", "", "refuse");
    // Valid checkpoints (next offset 0 everywhere) without copying anything.
    for c in [&cfg, &other] {
        km(
            &[
                "checkpoints",
                "reset",
                "-c",
                s(c),
                "--to",
                "earliest",
                "--execute",
            ],
            WAIT,
        )
        .expect_code(0, "checkpoints reset");
    }
    let cp_file = m.dir.path().join("cp-refuse/refuse.checkpoint.json");
    let good = fs::read_to_string(&cp_file).unwrap();
    let foreign = fs::read_to_string(m.dir.path().join("cp-other/other.checkpoint.json")).unwrap();
    let at = good.find("\"next_offset\": 0").expect("a next_offset") + "\"next_offset\": ".len();
    let mut flipped = good.clone().into_bytes();
    flipped[at] ^= 0x01; // '0' -> '1': still valid JSON, one bit changed
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "truncated",
            good.as_bytes()[..good.len() / 2].to_vec(),
            "truncated",
        ),
        ("one bit flipped in next_offset", flipped, "checksum"),
        (
            "another job's checkpoint",
            foreign.into_bytes(),
            "belongs to job \"other\"",
        ),
    ];
    for (what, bytes, reason) in cases {
        fs::write(&cp_file, &bytes).unwrap();
        let f = km(&["run", "-c", s(&cfg), "--once"], WAIT);
        f.expect_code(5, what);
        assert!(
            f.stderr.contains(s(&cp_file)) && f.stderr.contains(reason),
            "{what}: the message names the file and says {reason:?}:\n{}",
            f.stderr
        );
        assert_eq!(
            fs::read(&cp_file).unwrap(),
            bytes,
            "{what}: the refused file is left as it was"
        );
        assert_eq!(
            common::highs(m.target(), "refuse", 4),
            vec![0; 4],
            "{what}: nothing was copied"
        );
        println!(
            "refused ({what}): exit 5: {}",
            f.stderr.lines().find(|l| l.contains("error")).unwrap_or("")
        );
    }
}

#[test]
fn checkpoint_behind_retention_exits_4_with_the_gap_or_continues_loudly() {
    let _serial = serial();
    let m = Mirror::start(&[("gap", 1)]);
    let small = |i: u64| TestRecord {
        partition: 0,
        key: Some(format!("{i:08}").into_bytes()),
        value: Some(format!("{i:040}").into_bytes()),
        headers: vec![],
        timestamp: Some(1_700_000_000_000 + i as i64),
    };
    let first: Vec<TestRecord> = (0..50).map(small).collect();
    common::produce(m.source(), "gap", &first);
    let fail = binary_config(&m, "gap-fail", "gap", "", "gap");
    km(
        &[
            "checkpoints",
            "reset",
            "-c",
            s(&fail),
            "--to",
            "10",
            "--execute",
        ],
        WAIT,
    )
    .expect_code(0, "checkpoint at offset 10");
    // The mock keeps at most 5 MB per partition (and 100,000 message SETS): 120,000 records
    // of ~60 bytes on the wire exceed the size, so the oldest batches are deleted.
    let p = common::DataProducer::new(m.source());
    for i in 50..120_050 {
        p.send("gap", &small(i));
    }
    p.flush();
    let (low, high) = common::watermarks(m.source(), "gap", 0);
    assert!(
        low > 10,
        "retention deleted the checkpointed offset: low {low}"
    );
    let gap = low - 10;

    let f = km(&["run", "-c", s(&fail), "--once"], WAIT);
    f.expect_code(4, "checkpoint behind the retained log");
    let want = format!("{gap} records were deleted by retention");
    assert!(
        f.stderr.contains(&want) && f.stderr.contains("resume offset 10"),
        "the message reports the gap ({want}):\n{}",
        f.stderr
    );
    assert_eq!(
        common::highs(m.target(), "gap", 1),
        vec![0],
        "nothing copied"
    );

    // Same job, on_offset_out_of_range = "earliest": continue from the low watermark and
    // say how much was lost. `end` keeps the copy small (the target has a 5 MB cap too).
    let end = low + 2_000;
    let earliest = binary_config(
        &m,
        "gap-earliest",
        "gap",
        &format!("on_offset_out_of_range = \"earliest\"\nend = {end}"),
        "gap",
    );
    let f2 = km(&["run", "-c", s(&earliest)], WAIT);
    f2.expect_code(0, "on_offset_out_of_range = earliest");
    let line = format!("GAP: {gap} records were deleted by retention");
    assert!(f2.stdout.contains(&line), "{line}:\n{}", f2.stdout);
    let t = tally(
        &census(m.target(), "gap", 1, "gap"),
        &BTreeMap::from([(0, low..end)]),
    );
    println!(
        "retention gap: checkpoint 10, source [{low}, {high}): run exits 4 naming {gap} deleted records; with \"earliest\": `{line}`, copied [{low}, {end}) missing={} duplicates={}",
        t.missing, t.duplicates
    );
    assert_nothing_lost("after the gap", &t);
    assert_eq!(t.duplicates, 0);
}

// ---------------------------------------------------------------------------------------
// 4. Broker faults (library API, fault injection on the in-process mock clusters)
// ---------------------------------------------------------------------------------------

const TS: i64 = 1_700_000_000_000;

/// `[[routes]]` for a route named like its topic, `end = "snapshot"`, plus `extra`.
fn route(topic: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{topic}\"\nsource = \"{SOURCE}\"\ntopics = [\"{topic}\"]\ntarget = \"{TARGET}\"\nend = \"snapshot\"\n{extra}\n"
    )
}

/// Reads the whole target, asserts nothing is missing, runs `verify`; returns the tally.
fn check_copy(
    m: &Mirror,
    cfg: &kmirror::config::Config,
    topic: &str,
    partitions: i32,
    per: i64,
) -> Tally {
    let t = tally(
        &census(m.target(), topic, partitions, topic),
        &ranges(partitions, 0..per),
    );
    assert_nothing_lost(topic, &t);
    let v = common::verify_clean(cfg, false);
    let vd: u64 = v.rows.iter().map(|r| r.duplicates).sum();
    assert_eq!(vd, t.duplicates, "verify counts the same duplicates");
    t
}

fn total_retried(r: &kmirror::copy::RunReport) -> u64 {
    r.rows.iter().map(|r| r.counts.retried).sum()
}

fn assert_complete(r: &kmirror::copy::RunReport) {
    assert!(
        r.complete && r.halted.is_empty() && r.totals.failed == 0,
        "{:?}\n{}",
        r.halted,
        r.table()
    );
    common::assert_report_invariant(r);
}

#[test]
fn target_down_longer_than_the_message_timeout_loses_nothing_and_never_checkpoints_ahead() {
    let _serial = serial();
    const P: i32 = 8;
    const N: i64 = 4_000;
    let m = Mirror::start(&[("outage", P)]);
    common::produce_numbered(m.source(), "outage", P, 0..N as u64, TS);
    let cfg = m.config(
        "outage",
        &format!(
            "[clusters.{TARGET}.properties]\n\"message.timeout.ms\" = \"3000\"\n\n{}",
            route("outage", "max_messages_per_sec = 4000")
        ),
    );
    let store = m.store(&cfg);
    let run = common::spawn_run(&cfg);
    common::wait_until("checkpointed progress", WAIT, || {
        common::checkpoint_progress(&cfg) >= 4_000
    });
    assert!(!run.is_finished());

    // All target brokers down for 8 s (> message.timeout.ms = 3 s). Meanwhile the target
    // cannot change, so every checkpoint written now must be covered by what it holds.
    m.all_brokers(TARGET_IDX, false);
    let down = Instant::now();
    let mut snapshots: Vec<Vec<i64>> = Vec::new();
    let poll = |snapshots: &mut Vec<Vec<i64>>| {
        let cp = store.load().unwrap_or_else(|e| {
            panic!("a checkpoint written during the outage does not load: {e}")
        });
        snapshots.push(cp_positions(cp.as_ref(), "outage", "outage", P));
    };
    while down.elapsed() < Duration::from_secs(8) {
        poll(&mut snapshots);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Bring the brokers back with every Produce refused (not appended: the mock checks an
    // injected error before appending), read what the target holds, then let it write.
    m.control(Control::RequestErrors {
        cluster: TARGET_IDX,
        api: RDKafkaApiKey::Produce,
        error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        count: 1_000_000,
    });
    m.all_brokers(TARGET_IDX, true);
    let held = census(m.target(), "outage", P, "outage");
    poll(&mut snapshots);
    let held_again = census(m.target(), "outage", P, "outage");
    assert_eq!(held, held_again, "the target did not change while frozen");
    m.control(Control::ClearRequestErrors {
        cluster: TARGET_IDX,
        api: RDKafkaApiKey::Produce,
    });
    // Contiguous prefix of source offsets the target holds, per partition.
    let prefix: Vec<i64> = (0..P)
        .map(|p| (0..).find(|o| !held.contains_key(&(p, *o))).unwrap())
        .collect();
    for (i, snap) in snapshots.iter().enumerate() {
        for p in 0..P as usize {
            assert!(
                snap[p] <= prefix[p],
                "checkpoint #{i} taken during the outage says partition {p} is copied up to {} but the target holds only [0, {})",
                snap[p],
                prefix[p]
            );
        }
    }
    let report = run.join(Duration::from_secs(150));
    assert_complete(&report);
    let retried = total_retried(&report);
    let t = check_copy(&m, &cfg, "outage", P, N);
    println!(
        "target down 8 s (message.timeout.ms 3000): {} checkpoints polled during the outage, all <= target (checkpointed {} of {} held); retried={retried} records={} missing={} duplicates={} in {:.1}s",
        snapshots.len(),
        snapshots.last().unwrap().iter().sum::<i64>(),
        prefix.iter().sum::<i64>(),
        t.expected,
        t.missing,
        t.duplicates,
        report.elapsed.as_secs_f64()
    );
    assert!(
        retried > 0,
        "deliveries timed out during the outage and were retried"
    );
}

#[test]
fn partition_leaders_moving_on_source_and_target_lose_nothing() {
    let _serial = serial();
    const P: i32 = 8;
    const N: i64 = 5_000;
    let m = Mirror::start(&[("moves", P)]);
    common::produce_numbered(m.source(), "moves", P, 0..N as u64, TS);
    let cfg = m.config("moves", &route("moves", "max_messages_per_sec = 8000"));
    let run = common::spawn_run(&cfg);
    let mut moves = 0;
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(600));
        if run.is_finished() {
            break;
        }
        for p in 0..P {
            for cluster in [SOURCE_IDX, TARGET_IDX] {
                m.control(Control::PartitionLeader {
                    cluster,
                    topic: "moves".into(),
                    partition: p,
                    broker: (p + round + cluster as i32) % BROKERS + 1,
                });
            }
        }
        moves += 1;
    }
    assert!(moves >= 3, "leaders moved {moves} times during the copy");
    let report = run.join(Duration::from_secs(120));
    assert_complete(&report);
    let t = check_copy(&m, &cfg, "moves", P, N);
    println!(
        "leader moves: {moves} rounds x {P} partitions on both clusters; retried={} records={} missing={} duplicates={} in {:.1}s",
        total_retried(&report),
        t.expected,
        t.missing,
        t.duplicates,
        report.elapsed.as_secs_f64()
    );
}

#[test]
fn source_fetch_and_list_offsets_errors_lose_nothing() {
    let _serial = serial();
    const P: i32 = 8;
    const N: i64 = 5_000;
    let m = Mirror::start(&[("flaky", P)]);
    common::produce_numbered(m.source(), "flaky", P, 0..N as u64, TS);
    let cfg = m.config("flaky", &route("flaky", "max_messages_per_sec = 10000"));
    let inject = |api: RDKafkaApiKey, n: usize| {
        for error in [
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
        ] {
            m.control(Control::RequestErrors {
                cluster: SOURCE_IDX,
                api,
                error,
                count: n,
            });
        }
    };
    // ListOffsets answers the plan's watermark lookups (one per partition) before copying.
    inject(RDKafkaApiKey::ListOffsets, 3);
    let run = common::spawn_run(&cfg);
    let mut rounds = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        if run.is_finished() {
            break;
        }
        inject(RDKafkaApiKey::Fetch, 3);
        rounds += 1;
    }
    let report = run.join(Duration::from_secs(120));
    for api in [RDKafkaApiKey::Fetch, RDKafkaApiKey::ListOffsets] {
        m.control(Control::ClearRequestErrors {
            cluster: SOURCE_IDX,
            api,
        });
    }
    assert!(
        rounds >= 3,
        "Fetch errors injected {rounds} times during the copy"
    );
    assert_complete(&report);
    let t = check_copy(&m, &cfg, "flaky", P, N);
    println!(
        "source errors: ListOffsets 3 x NOT_LEADER + 3 x __TRANSPORT before the plan, Fetch 3 x NOT_LEADER + 3 x __TRANSPORT in each of {rounds} rounds; records={} missing={} duplicates={} in {:.1}s",
        t.expected,
        t.missing,
        t.duplicates,
        report.elapsed.as_secs_f64()
    );
}

/// Issue 8 item 2: a permanent source error (Fetch answering TOPIC_AUTHORIZATION_FAILED on
/// every request) halts every partition with the reason instead of leaving a snapshot run
/// sitting at "0 records/s"; the run ends, names cluster/topic/partition at warn or above,
/// counts the errors, and its verdict is exit 1.
#[test]
fn source_authorization_failure_halts_the_partitions_and_exits_1() {
    let _serial = serial();
    const P: i32 = 4;
    let m = Mirror::start(&[("denied", P)]);
    common::produce_numbered(m.source(), "denied", P, 0..200, TS);
    let cfg = m.config("denied", &route("denied", ""));
    m.control(Control::RequestErrors {
        cluster: SOURCE_IDX,
        api: RDKafkaApiKey::Fetch,
        error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        count: 1_000_000,
    });
    let from = logs_len();
    let report = common::spawn_run(&cfg).join(Duration::from_secs(60));
    m.control(Control::ClearRequestErrors {
        cluster: SOURCE_IDX,
        api: RDKafkaApiKey::Fetch,
    });
    let logs = logs_since(from);
    println!("{}\n{}", report.table(), report.verdict().summary);
    assert!(!report.complete && !report.stopped, "{}", report.table());
    assert_eq!(report.halted.len(), P as usize, "{:?}", report.halted);
    for (src, why) in &report.halted {
        assert!(
            why.contains("src:denied") && why.to_lowercase().contains("authorization"),
            "{src}: {why}"
        );
    }
    for p in 0..P {
        let row = common::row(&report, "denied", "denied", p);
        assert!(row.status.starts_with("halted: "), "{}", row.status);
        assert!(row.source_errors >= 1, "partition {p}: errors counted");
        assert_eq!(row.counts.read, 0);
        let line = logs
            .lines()
            .find(|l| {
                (l.contains("WARN") || l.contains("ERROR"))
                    && l.contains(&format!("src:denied/{p}"))
                    && l.to_lowercase().contains("authorization")
            })
            .unwrap_or_else(|| panic!("no warn/error line names src:denied/{p}:\n{logs}"));
        println!("{line}");
    }
    assert!(report.source_errors >= P as u64);
    let v = report.verdict();
    assert_eq!(v.code, kmirror::error::exit::MISMATCH, "{v:?}");
    assert!(v.summary.contains("4 partitions halted"), "{v:?}");
    assert_eq!(
        cp_positions(
            m.store(&cfg).load().unwrap().as_ref(),
            "denied",
            "denied",
            P
        ),
        vec![0; P as usize],
        "nothing was checkpointed past what was copied"
    );
}

/// Issue 8 item 2: while every Fetch fails with a retriable error the partitions show
/// "retrying: <reason>", one warn line per episode names cluster/topic/partitions (not one
/// per poll), the errors are counted, and a run stopped then is not a success (exit 1,
/// "stopped while N partitions were failing").
#[test]
fn stopped_while_source_fetches_fail_is_not_success() {
    let _serial = serial();
    const P: i32 = 4;
    let m = Mirror::start(&[("failing", P)]);
    common::produce_numbered(m.source(), "failing", P, 0..200, TS);
    let cfg = m.config("failing", &route("failing", ""));
    m.control(Control::RequestErrors {
        cluster: SOURCE_IDX,
        api: RDKafkaApiKey::Fetch,
        error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        count: 1_000_000,
    });
    let from = logs_len();
    let run = common::spawn_run(&cfg);
    common::wait_until("a warn line about the failing fetches", WAIT, || {
        logs_since(from).contains("consumer error on src:failing")
    });
    // Several fetch backoffs, so errors repeat within the episode.
    std::thread::sleep(Duration::from_secs(3));
    run.request_stop();
    let report = run.join(WAIT);
    m.control(Control::ClearRequestErrors {
        cluster: SOURCE_IDX,
        api: RDKafkaApiKey::Fetch,
    });
    let logs = logs_since(from);
    println!("{}\n{}", report.table(), report.verdict().summary);
    assert!(report.stopped && !report.complete);
    assert!(report.halted.is_empty(), "{:?}", report.halted);
    assert_eq!(report.failing.len(), P as usize, "{:?}", report.failing);
    for p in 0..P {
        let row = common::row(&report, "failing", "failing", p);
        assert!(
            row.status
                .starts_with("stopped while retrying: source fetch error"),
            "{}",
            row.status
        );
        // Each partition's own fetch errors, attributed to it (librdkafka names the
        // topic and partition of a fetch error).
        assert!(row.source_errors >= 1, "partition {p}: errors counted");
    }
    let warns: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("consumer error on src:failing"))
        .collect();
    assert_eq!(warns.len(), 1, "one warn line per episode:\n{logs}");
    // The line names the partition whose error opened the episode (the others' errors
    // join it, counted, not logged).
    assert!(
        (0..P).any(|p| warns[0].contains(&format!("partitions [{p}]"))),
        "{}",
        warns[0]
    );
    assert!(
        report.source_errors > warns.len() as u64,
        "errors after the first are counted ({})",
        report.source_errors
    );
    let v = report.verdict();
    assert_eq!(v.code, kmirror::error::exit::MISMATCH, "{v:?}");
    assert!(
        v.summary
            .contains("stopped while 4 partitions were failing"),
        "{v:?}"
    );
}

/// Issue 13 (batch reads): a source topic that stops existing reaches the reader as an error
/// of each of its own partitions, named by topic and partition, while the other topic goes
/// on. librdkafka queues it as a plain error on the partition's queue (not as a message),
/// which a batch read (`rd_kafka_consume_batch_queue`) serves through the client's error
/// callback: without the callback `kmirror::copy::poll` sets, it became a librdkafka log
/// line and the partitions sat at "copying" with nothing counted.
#[test]
fn a_source_topic_gone_from_metadata_is_an_error_of_its_own_partitions() {
    let _serial = serial();
    let m = Mirror::start(&[("t-drop", 2), ("t-keep", 2)]);
    common::produce_numbered(m.source(), "t-drop", 2, 0..20, TS);
    common::produce_numbered(m.source(), "t-keep", 2, 0..20, TS);
    // Metadata read often, and an unknown topic believed at once (not after 30 s).
    let cfg = m.config(
        "gone",
        &format!(
            r#"
[clusters.{SOURCE}.properties]
"topic.metadata.refresh.interval.ms" = "200"
"topic.metadata.propagation.max.ms" = "0"

[[routes]]
name = "r"
source = "{SOURCE}"
topics = ["t-drop", "t-keep"]
target = "{TARGET}"
"#
        ),
    );
    let from = logs_len();
    let run = common::spawn_run(&cfg);
    common::wait_until("both copied", WAIT, || {
        common::checkpoint_progress(&cfg) == 80
    });
    // What a deleted topic looks like to a client on the mock (no DeleteTopics there).
    m.control(Control::TopicError {
        cluster: SOURCE_IDX,
        topic: "t-drop".into(),
        error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    });
    common::wait_until("a warn line about t-drop", WAIT, || {
        logs_since(from).contains(&format!("consumer error on {SOURCE}:t-drop"))
    });
    common::produce_numbered(m.source(), "t-keep", 2, 20..30, TS);
    common::wait_until("t-keep followed", WAIT, || {
        common::checkpoint_progress(&cfg) == 100
    });
    run.request_stop();
    let report = run.join(WAIT);
    let logs = logs_since(from);
    println!("{}\n{}", report.table(), report.verdict().summary);
    for p in 0..2 {
        let gone = common::row(&report, "r", "t-drop", p);
        assert!(
            gone.source_errors >= 1,
            "t-drop/{p}: its errors counted\n{logs}"
        );
        assert_eq!(gone.counts.acked, 20);
        let kept = common::row(&report, "r", "t-keep", p);
        assert_eq!(kept.source_errors, 0, "t-keep/{p}: not t-drop's errors");
        assert_eq!(kept.counts.acked, 30);
    }
    let warn = logs
        .lines()
        .find(|l| l.contains("WARN") && l.contains(&format!("consumer error on {SOURCE}:t-drop")))
        .unwrap();
    assert!(warn.to_lowercase().contains("unknown"), "{warn}");
}

/// 1 KiB records for the slow-target test: key 8 + value 1000 + header 3 + 8 = 1019 bytes.
fn kib_record(p: i32, i: i64) -> TestRecord {
    TestRecord {
        partition: p,
        key: Some(format!("k{p}-{i:05}").into_bytes()),
        value: Some(vec![b'0' + (i % 10) as u8; 1000]),
        headers: vec![("seq".into(), Some(i.to_be_bytes().to_vec()))],
        timestamp: Some(TS + i),
    }
}
const KIB_BYTES: u64 = 1019;

#[test]
fn slow_target_is_held_to_the_in_flight_bound_and_slows_reading() {
    let _serial = serial();
    const P: i32 = 8;
    const N: i64 = 2_000;
    const MAX: u64 = 1 << 20;
    let m = Mirror::start(&[("fast", P), ("slow", P)]);
    for topic in ["fast", "slow"] {
        let prod = common::DataProducer::new(m.source());
        for i in 0..N {
            for p in 0..P {
                prod.send(topic, &kib_record(p, i));
            }
        }
        prod.flush();
    }
    // `fetch.queue.backoff.ms`: the reader's prefetch queue is sized from the per-partition
    // bound (1 MiB at least), and with librdkafka's default 1 s backoff once it is full the
    // source side alone caps a copy of 1 KiB records near 2-3 MB/s, with or without a slow
    // target. A short backoff takes that out, so the comparison measures the target.
    let limits = format!(
        "[clusters.{SOURCE}.properties]\n\"fetch.queue.backoff.ms\" = \"10\"\n\n[limits]\nmax_in_flight_bytes = \"1MiB\"\nmax_in_flight_bytes_per_partition = \"256KiB\"\n"
    );
    let fast_cfg = m.config("fast", &format!("{limits}\n{}", route("fast", "")));
    let slow_cfg = m.config("slow", &format!("{limits}\n{}", route("slow", "")));

    let fast = common::run_to_end(&fast_cfg);
    assert_complete(&fast);
    let rtts = [100u64, 150, 200];
    for (b, ms) in (1..=BROKERS).zip(rtts) {
        m.control(Control::RoundTripTime {
            cluster: TARGET_IDX,
            broker: b,
            delay: Duration::from_millis(ms),
        });
    }
    let slow = common::run_to_end(&slow_cfg);
    for b in 1..=BROKERS {
        m.control(Control::RoundTripTime {
            cluster: TARGET_IDX,
            broker: b,
            delay: Duration::ZERO,
        });
    }
    assert_complete(&slow);
    check_copy(&m, &fast_cfg, "fast", P, N);
    let t = check_copy(&m, &slow_cfg, "slow", P, N);

    // The bound: the reader takes no batch while in-flight bytes are at the limit, and a
    // batch takes at most the remaining budget, stopping at the record that reaches it. So
    // in-flight bytes exceed the limit by less than one record per reader (one topic: one
    // reader): peak <= max_in_flight_bytes + one record.
    let bound = MAX + KIB_BYTES;
    // Every record stays in flight at least one round trip (>= 100 ms): the mock delays
    // each Produce response by the broker's RTT. With at most `peak` bytes in flight,
    // copying `total` bytes takes at least total / peak round trips (Little's law).
    let total = (P as u64) * (N as u64) * KIB_BYTES;
    let floor = Duration::from_secs_f64(total as f64 / slow.peak_in_flight_bytes as f64 * 0.1);
    println!(
        "slow target (RTT {rtts:?} ms): peak in flight {} bytes (fast run {}), bound {bound} = 1 MiB + one {KIB_BYTES}-byte record; {:.2}s vs {:.2}s without RTT (floor from the bound: {:.2}s); missing={} duplicates={}",
        slow.peak_in_flight_bytes,
        fast.peak_in_flight_bytes,
        slow.elapsed.as_secs_f64(),
        fast.elapsed.as_secs_f64(),
        floor.as_secs_f64(),
        t.missing,
        t.duplicates
    );
    assert!(
        slow.peak_in_flight_bytes <= bound && fast.peak_in_flight_bytes <= bound,
        "peak in flight {} / {} > bound {bound}",
        slow.peak_in_flight_bytes,
        fast.peak_in_flight_bytes
    );
    assert!(
        slow.peak_in_flight_bytes > MAX / 2,
        "the slow target filled the window"
    );
    assert!(
        slow.elapsed > fast.elapsed && slow.elapsed >= floor,
        "reading slowed down: {:?} with RTT vs {:?} without",
        slow.elapsed,
        fast.elapsed
    );
}

#[test]
fn fatal_idempotent_producer_errors_recreate_the_producer_and_lose_nothing() {
    let _serial = serial();
    const P: i32 = 4;
    const N: i64 = 15_000;
    let m = Mirror::start(&[("fenced", P)]);
    common::produce_numbered(m.source(), "fenced", P, 0..N as u64, TS);
    let cfg = m.config("fenced", &route("fenced", "max_messages_per_sec = 20000"));
    let logs = logs_len();
    let run = common::spawn_run(&cfg);
    common::wait_until("copy progress", WAIT, || {
        common::checkpoint_progress(&cfg) >= 2_000
    });
    // One Produce request each: OUT_OF_ORDER_SEQUENCE_NUMBER on the head-of-line request
    // makes librdkafka raise a fatal error (it cannot reason about the sequence any more);
    // UNKNOWN_PRODUCER_ID with nothing outstanding it handles itself (epoch bump, retry).
    let mut recreated = Vec::new();
    for error in [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID,
    ] {
        assert!(!run.is_finished(), "{error:?} injected mid-copy");
        let from = logs_len();
        m.control(Control::RequestErrors {
            cluster: TARGET_IDX,
            api: RDKafkaApiKey::Produce,
            error,
            count: 1,
        });
        std::thread::sleep(Duration::from_millis(700));
        let n = logs_since(from)
            .matches("recreating the target producer")
            .count();
        recreated.push((format!("{error:?}"), n));
    }
    let report = run.join(Duration::from_secs(120));
    m.control(Control::ClearRequestErrors {
        cluster: TARGET_IDX,
        api: RDKafkaApiKey::Produce,
    });
    assert_complete(&report);
    let t = check_copy(&m, &cfg, "fenced", P, N);
    println!(
        "fatal producer errors: producer recreations after each {recreated:?}; retried={} records={} missing={} duplicates={}",
        total_retried(&report),
        t.expected,
        t.missing,
        t.duplicates
    );
    assert!(
        recreated[0].1 >= 1,
        "OUT_OF_ORDER_SEQUENCE_NUMBER (fatal in librdkafka) recreated the producer:\n{}",
        logs_since(logs)
    );
}

// ---------------------------------------------------------------------------------------
// 5. Odd records, byte for byte
// ---------------------------------------------------------------------------------------

/// A record to produce with raw header names (any bytes but NUL).
struct RawOut {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    timestamp: i64,
}

/// Produces `records` in order to partition 0 of `topic`. Header names go through
/// librdkafka's `rd_kafka_header_add` (name and length), because rust-rdkafka only takes
/// `&str` names. `message.max.bytes` is raised so the 1.5 MiB record can be produced.
fn produce_raw(bootstrap: &str, topic: &str, records: &[RawOut]) {
    use std::os::raw::{c_char, c_void};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "4194304")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("raw producer");
    for r in records {
        let headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (name, value) in &r.headers {
            assert!(!name.contains(&0), "librdkafka header names end at NUL");
            // SAFETY: `as_borrowed` views the same native header list (as kmirror's
            // record.rs does); we own `headers` and nothing else references it yet.
            // librdkafka copies name and value.
            let err = unsafe {
                let ptr = headers.as_borrowed() as *const BorrowedHeaders
                    as *mut rdkafka_sys::rd_kafka_headers_t;
                rdkafka_sys::rd_kafka_header_add(
                    ptr,
                    name.as_ptr() as *const c_char,
                    name.len() as isize,
                    value
                        .as_ref()
                        .map_or(std::ptr::null(), |v| v.as_ptr() as *const c_void),
                    value.as_ref().map_or(0, |v| v.len() as isize),
                )
            };
            assert_eq!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR);
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(0)
            .timestamp(r.timestamp)
            .headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v.as_slice());
        }
        producer.send(rec).map_err(|(e, _)| e).expect("produce");
    }
    producer.flush(WAIT).expect("flush");
}

fn odd_records() -> Vec<RawOut> {
    let mut rng = common::Rng(0x0dd);
    let hundred: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..100usize)
        .map(|i| {
            // Repeated names, null, empty and binary values: order and duplicates matter.
            let name = format!("h{:02}", i % 60).into_bytes();
            let value = match i % 4 {
                0 => None,
                1 => Some(Vec::new()),
                2 => Some(rng.bytes(i)),
                _ => Some(format!("value-{i}").into_bytes()),
            };
            (name, value)
        })
        .collect();
    vec![
        // Empty (not null) key and value.
        RawOut {
            key: Some(Vec::new()),
            value: Some(Vec::new()),
            headers: vec![],
            timestamp: TS,
        },
        // Null key and value.
        RawOut {
            key: None,
            value: None,
            headers: vec![],
            timestamp: TS + 1,
        },
        // 1.5 MiB of random bytes.
        RawOut {
            key: Some(b"big".to_vec()),
            value: Some(rng.bytes(1536 * 1024)),
            headers: vec![(b"size".to_vec(), Some(b"1.5MiB".to_vec()))],
            timestamp: TS + 2,
        },
        RawOut {
            key: Some(b"many-headers".to_vec()),
            value: Some(b"100 headers".to_vec()),
            headers: hundred,
            timestamp: TS + 3,
        },
        // Non-UTF-8 key, value, header values and header names; an empty header name.
        RawOut {
            key: Some(vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28]),
            value: Some(vec![0x00, 0xff, 0x80, 0xc0]),
            headers: vec![
                (b"bin".to_vec(), Some(vec![0xff, 0x00, 0xfe])),
                (vec![0xff, 0xfe, b'n'], Some(b"name is not UTF-8".to_vec())),
                (vec![0xc3, 0x28], Some(vec![0x80])),
                (Vec::new(), Some(b"empty name".to_vec())),
            ],
            timestamp: TS + 4,
        },
        // A header with an empty value next to one with a null value, negative-free but
        // old timestamp (epoch + 1 ms).
        RawOut {
            key: Some(b"old".to_vec()),
            value: Some(b"x".to_vec()),
            headers: vec![
                (b"empty".to_vec(), Some(Vec::new())),
                (b"null".to_vec(), None),
            ],
            timestamp: 1,
        },
    ]
}

#[test]
fn odd_records_are_copied_byte_for_byte() {
    let _serial = serial();
    let m = Mirror::start(&[("odd", 1), ("odd-default", 1)]);
    let records = odd_records();
    produce_raw(m.source(), "odd", &records);
    // The source holds exactly what was meant (so a difference below is kmirror's).
    let source = read_raw(m.source(), "odd", 0);
    assert_eq!(source.len(), records.len());
    for (r, s) in records.iter().zip(&source) {
        assert_eq!(
            (&s.key, &s.value, &s.headers, s.timestamp),
            (&r.key, &r.value, &r.headers, Some(r.timestamp)),
            "source record {}",
            s.offset
        );
    }

    // What the 1.5 MiB record needs: the target producer's `message.max.bytes` (librdkafka
    // refuses larger messages locally, default 1,000,000). kmirror's source consumer needs
    // nothing: librdkafka returns a record larger than `fetch.message.max.bytes` anyway.
    let cfg = m.config(
        "odd",
        &format!(
            "[clusters.{TARGET}.properties]\n\"message.max.bytes\" = \"4194304\"\n\n{}",
            route("odd", "")
        ),
    );
    let report = common::run_to_end(&cfg);
    assert_complete(&report);
    let target = read_raw(m.target(), "odd", 0);
    assert_eq!(target.len(), source.len(), "one copy of each record");
    for (s, t) in source.iter().zip(&target) {
        let (last, rest) = t.headers.split_last().expect("provenance header");
        assert_eq!(
            last.0,
            PROVENANCE_HEADER.as_bytes(),
            "provenance comes last"
        );
        assert_eq!(
            last.1.as_deref(),
            Some(format!("odd@{SOURCE}/odd/0/{}", s.offset).as_bytes())
        );
        assert_eq!(t.key, s.key, "key of {}", s.offset);
        assert_eq!(t.value, s.value, "value of {}", s.offset);
        assert_eq!(rest, s.headers.as_slice(), "headers of {}", s.offset);
        assert_eq!(t.timestamp, s.timestamp, "timestamp of {}", s.offset);
    }
    common::verify_clean(&cfg, true);

    // Without raising it, the big record is refused for good and the partition halts AT
    // it: the record before it is copied, nothing after it is, nothing is skipped silently.
    let small = |k: &str| RawOut {
        key: Some(k.as_bytes().to_vec()),
        value: Some(b"small".to_vec()),
        headers: vec![],
        timestamp: TS,
    };
    produce_raw(
        m.source(),
        "odd-default",
        &[
            small("before"),
            RawOut {
                key: Some(b"big".to_vec()),
                value: Some(vec![7; 1536 * 1024]),
                headers: vec![],
                timestamp: TS,
            },
            small("after"),
        ],
    );
    let plain = m.config("odd-default", &route("odd-default", ""));
    let refused = common::run_to_end(&plain);
    let cp = common::load_checkpoint(&plain).expect("checkpoint");
    let held = read_raw(m.target(), "odd-default", 0);
    println!(
        "odd records: {} copied byte for byte (empty and null key/value, 1.5 MiB value, 100 headers, non-UTF-8 key/value/header values/header names, empty header name); without target message.max.bytes: {:?}",
        target.len(),
        refused.halted
    );
    assert_eq!(refused.totals.failed, 1, "{}", refused.table());
    assert!(
        refused.halted.len() == 1 && refused.halted[0].1.contains("offset 1"),
        "{:?}",
        refused.halted
    );
    assert_eq!(
        cp.get("odd-default", "odd-default", 0).unwrap().next_offset,
        1
    );
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].key.as_deref(), Some(&b"before"[..]));
}

/// Issue 8 item 6: with every target broker down, a long `message.timeout.ms` and a tiny
/// producer queue, the reader sits in the QueueFull retry loop. A stop must end the run
/// well before the message timeout (the guard brings the brokers back after 60 s so a
/// regression fails instead of hanging), and the checkpoint must not pass anything the
/// target acknowledged (nothing, here).
#[test]
fn stop_during_a_target_outage_with_a_full_producer_queue_returns_promptly() {
    let _serial = serial();
    const P: i32 = 2;
    let m = Mirror::start(&[("stuck", P)]);
    common::produce_numbered(m.source(), "stuck", P, 0..500, TS);
    let cfg = m.config(
        "stuck",
        &format!(
            "[run]\nshutdown_timeout = \"2s\"\n\n[clusters.{TARGET}.properties]\n\"message.timeout.ms\" = \"300000\"\n\"queue.buffering.max.messages\" = \"10\"\n\n{}",
            route("stuck", "max_messages_per_sec = 100")
        ),
    );
    let run = common::spawn_run(&cfg);
    // Planning needs the target: take it down once the run has written its first checkpoint.
    common::wait_until("the first checkpoint", WAIT, || {
        common::load_checkpoint(&cfg).is_some()
    });
    m.all_brokers(TARGET_IDX, false);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!run.is_finished(), "the run waits for the target");
    run.request_stop();
    let stopped = Instant::now();
    let mut brought_back = false;
    while !run.is_finished() {
        if stopped.elapsed() > Duration::from_secs(60) && !brought_back {
            m.all_brokers(TARGET_IDX, true);
            brought_back = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = stopped.elapsed();
    let report = run.join(Duration::from_secs(600));
    assert!(
        !brought_back,
        "the run ignored stop for over 60 s while the producer queue was full ({took:?})"
    );
    if !brought_back {
        m.all_brokers(TARGET_IDX, true);
    }
    let held = census(m.target(), "stuck", P, "stuck");
    let cp = m.store(&cfg).load().expect("checkpoint loads");
    for (p, next) in cp_positions(cp.as_ref(), "stuck", "stuck", P)
        .into_iter()
        .enumerate()
    {
        let prefix = (0..).find(|o| !held.contains_key(&(p as i32, *o))).unwrap();
        assert!(
            next <= prefix,
            "partition {p}: checkpoint {next} passes what the target holds ([0, {prefix}))\n{}",
            report.table()
        );
    }
    println!("stop with the target down and its queue full: returned in {took:?}");
}

/// Issue 8 item 3: a target outage is logged at warn within seconds (librdkafka's broker
/// errors, long before `message.timeout.ms`), once, naming the target, and its recovery
/// is logged once too. Before, nothing showed at warn until the deliveries timed out.
#[test]
fn a_target_outage_is_warned_about_once_and_its_recovery_reported() {
    let _serial = serial();
    const P: i32 = 4;
    let m = Mirror::start(&[("seen", P)]);
    common::produce_numbered(m.source(), "seen", P, 0..4_000, TS);
    let cfg = m.config(
        "seen",
        &format!(
            "[clusters.{TARGET}.properties]\n\"message.timeout.ms\" = \"60000\"\n\n{}",
            route("seen", "max_messages_per_sec = 1000")
        ),
    );
    let run = common::spawn_run(&cfg);
    common::wait_until("checkpointed progress", WAIT, || {
        common::checkpoint_progress(&cfg) >= 500
    });
    let from = logs_len();
    m.all_brokers(TARGET_IDX, false);
    // Far below message.timeout.ms (60 s): only an early warning can satisfy this.
    common::wait_until(
        "a warning naming the target",
        Duration::from_secs(20),
        || logs_since(from).contains("target dst is failing"),
    );
    std::thread::sleep(Duration::from_secs(2));
    m.all_brokers(TARGET_IDX, true);
    common::wait_until("the recovery line", WAIT, || {
        logs_since(from).contains("target dst recovered after")
    });
    let report = run.join(Duration::from_secs(150));
    assert_complete(&report);
    let logs = logs_since(from);
    let (failing, recovered) = (
        logs.matches("target dst is failing").count(),
        logs.matches("target dst recovered after").count(),
    );
    println!("outage: {failing} failing warnings, {recovered} recoveries");
    // Once per episode, not per record: a broker still reconnecting right after the first
    // acknowledgement can open (and close) a short second episode, never hundreds.
    assert!(
        failing <= recovered + 1 && failing <= 3,
        "one warning per episode ({failing} warnings, {recovered} recoveries):\n{logs}"
    );
    check_copy(&m, &cfg, "seen", P, 4_000);
}

/// Issue 8 item 3: the progress line's `read` never goes backwards. A target outage longer
/// than `message.timeout.ms` makes deliveries fail and the partitions rewind; the records
/// read again are counted as `re-read`, not subtracted from `read` (which went 62000 ->
/// 60000 before). Runs the built binary and reads its progress lines.
#[test]
fn progress_read_count_never_goes_backwards_across_a_rewinding_outage() {
    let _serial = serial();
    const P: i32 = 8;
    const N: i64 = 3_000;
    let m = Mirror::start(&[("reread", P)]);
    produce_fixed(m.source(), "reread", P, N);
    let cfg = binary_config(
        &m,
        "reread",
        "reread",
        "end = \"snapshot\"\nmax_messages_per_sec = 3000",
        "reread",
    );
    // Deliveries time out (and partitions rewind) well within the outage.
    let extra = format!("\n[clusters.{TARGET}.properties]\n\"message.timeout.ms\" = \"2000\"\n");
    fs::write(&cfg, fs::read_to_string(&cfg).unwrap() + &extra).unwrap();
    let run = Running::spawn(&["run", "-c", s(&cfg), "--progress", "1"]);
    std::thread::sleep(Duration::from_secs(3));
    m.all_brokers(TARGET_IDX, false);
    std::thread::sleep(Duration::from_secs(6));
    m.all_brokers(TARGET_IDX, true);
    let done = run.wait(Duration::from_secs(120));
    done.expect_code(0, "a run through a target outage");
    let reads: Vec<(u64, u64)> = done
        .stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("progress: read ")? + "progress: read ".len()..];
            let read = rest.split_whitespace().next()?.parse().ok()?;
            let again = rest
                .split("re-read ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Some((read, again))
        })
        .collect();
    assert!(reads.len() >= 5, "progress lines: {}", done.stderr);
    for w in reads.windows(2) {
        assert!(
            w[1].0 >= w[0].0,
            "read went backwards ({} -> {}):\n{}",
            w[0].0,
            w[1].0,
            done.stderr
        );
    }
    let rereads = reads.last().unwrap().1;
    assert!(
        rereads > 0,
        "the outage made records be read again (re-read 0):\n{}",
        done.stderr
    );
    assert!(
        reads.last().unwrap().0 <= (P as u64) * N as u64,
        "read counts each offset once"
    );
    println!(
        "{} progress lines, read monotonic, re-read {rereads}",
        reads.len()
    );
}
