//! Exactly-once delivery (`[delivery] guarantee = "exactly_once"`, issue 12), through the
//! built binary against librdkafka's mock clusters hosted in this process (real TCP).
//!
//! What these brokers can and cannot show (shared/BROKERS.md): the mock cluster accepts
//! transactions (InitProducerId, AddPartitionsToTxn, EndTxn) but writes no commit or abort
//! markers and hands out a fresh producer id on every InitProducerId, so on it an aborted
//! transaction's records stay visible to read_committed readers and an old producer is not
//! fenced by the broker. A test here therefore never counts on the broker hiding aborted
//! records: it asserts what kmirror itself guarantees on top (every committed transaction's
//! checkpoint is exactly the end of the records committed with it; a process whose job was
//! taken commits nothing more), with the census read by plain clients.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cli::{km, s, signal, Running};
use common::{Mirror, SOURCE, TARGET, TARGET_IDX, WAIT};
use kmirror::dev_cluster::Control;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use rdkafka_sys::types::{RDKafkaApiKey, RDKafkaRespErr};

const CP_TOPIC: &str = "kmirror-checkpoints";

/// A routing file in `dir` for job `job` copying `topic` exactly-once from `src` to `dst`,
/// checkpoints in the kafka store on `dst`; `delivery` goes into `[delivery]`.
fn eos_config(m: &Mirror, dir: &Path, job: &str, topic: &str, delivery: &str) -> PathBuf {
    eos_config_with(m, dir, job, topic, delivery, "")
}

/// As `eos_config`, with `tail` (e.g. a `[limits]` table) after the route.
fn eos_config_with(
    m: &Mirror,
    dir: &Path,
    job: &str,
    topic: &str,
    delivery: &str,
    tail: &str,
) -> PathBuf {
    let text = format!(
        r#"[checkpoints]
store = "kafka"
job = "{job}"

[delivery]
guarantee = "exactly_once"
{delivery}

[clusters.{SOURCE}]
bootstrap = "{src}"

[clusters.{TARGET}]
bootstrap = "{dst}"

[[routes]]
name = "{topic}"
source = "{SOURCE}"
topics = ["{topic}"]
target = "{TARGET}"

{tail}
"#,
        src = m.source(),
        dst = m.target(),
    );
    let path = dir.join(format!("{job}.toml"));
    fs::write(&path, text).expect("write routing file");
    path
}

/// Every record of the checkpoint topic: (offset, key, value).
fn read_checkpoint_topic(bootstrap: &str) -> Vec<(i64, Vec<u8>, Option<Vec<u8>>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kmirror-test-reader")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(CP_TOPIC, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push((
                m.offset(),
                m.key().map(<[u8]>::to_vec).expect("keyed"),
                m.payload().map(<[u8]>::to_vec),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading the checkpoint topic: {e}"),
            None => {}
        }
    }
    panic!("the checkpoint topic was not read to its end within {WAIT:?}");
}

/// The partition records of `job`/`topic` in log order: (offset, source partition,
/// next_offset, writer pid).
fn partition_records(bootstrap: &str, job: &str, topic: &str) -> Vec<(i64, i32, i64, u64)> {
    read_checkpoint_topic(bootstrap)
        .into_iter()
        .filter_map(|(o, k, v)| {
            let key: serde_json::Value = serde_json::from_slice(&k).ok()?;
            if key[1] != job || key[2] != "partition" || key[4] != topic {
                return None;
            }
            let v: serde_json::Value = serde_json::from_slice(&v?).ok()?;
            let body = &v["body"];
            Some((
                o,
                key[5].as_i64()? as i32,
                body["partition"]["checkpoint"]["next_offset"].as_i64()?,
                body["owner"]["pid"].as_u64()?,
            ))
        })
        .collect()
}

fn stored_positions(bootstrap: &str, job: &str, topic: &str) -> BTreeMap<i32, i64> {
    partition_records(bootstrap, job, topic)
        .into_iter()
        .map(|(_, p, n, _)| (p, n))
        .collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bounded copy commits many small transactions (at most 500 records each) and ends with
/// every record once and the checkpoint at the end; the checkpoint topic holds a record per
/// commit per partition that moved, each one's position a point the target reached.
#[test]
fn a_bounded_copy_commits_small_transactions_and_copies_every_record_once() {
    let m = Mirror::start(&[("eos", 4)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(m.source(), "eos", 4, 0..5_000, 1_700_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = eos_config(
        &m,
        dir.path(),
        "bounded",
        "eos",
        "commit_interval = \"50ms\"\nmax_records_per_transaction = 500",
    );
    let c = km(&["check", "-c", s(&cfg)], WAIT);
    c.expect_code(0, "check");
    assert!(
        c.stdout.contains(
            "delivery: exactly_once (transactional.id \"kmirror-bounded-eos\" on cluster dst; a commit every 50ms or 500 records"
        ),
        "check says how it delivers: {}",
        c.stdout
    );
    let f = km(&["run", "-c", s(&cfg), "--once"], WAIT);
    f.expect_code(0, "exactly-once run --once");
    let seen = common::census(&common::read_topic(m.target(), "eos"), SOURCE, "eos");
    common::assert_exactly_once(&seen, &common::same_range(4, 0..5_000));
    assert_eq!(
        stored_positions(m.target(), "bounded", "eos"),
        (0..4).map(|p| (p, 5_000)).collect()
    );
    let records = partition_records(m.target(), "bounded", "eos");
    // 20,000 records at most 500 a transaction: at least 40 commits, each moving at least
    // one partition (the first save before copying writes one record per partition too).
    assert!(
        records.len() >= 40,
        "one checkpoint record per partition per commit: {} records",
        records.len()
    );
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

const CRASH_TOPIC: &str = "eoscrash";
const CRASH_PARTITIONS: i32 = 16;
/// 16 x 12,500 = 200,000 records (under the mock's 100,000 records / 5 MB per partition,
/// the aborted copies included).
const CRASH_PER_PARTITION: u64 = 12_500;
const CRASH_KILLS: usize = 12;
const CRASH_SEED: u64 = 20_261_201;
const CRASH_RATE: u64 = 5_000;
const CRASH_TXN_RECORDS: u64 = 1_000;
/// The most a reader's batch takes at once (`source_partition`): what a full transaction
/// can overshoot `max_records_per_transaction` by.
const BATCH_MAX: u64 = 2_000;

/// What one killed run left: the target's ends before and after it, and the checkpoint the
/// next run loads.
struct Kill {
    before: Vec<i64>,
    after: Vec<i64>,
    checkpoint: BTreeMap<i32, i64>,
    delay_ms: u64,
}

/// Issue 12: `kmirror run` in exactly-once mode killed with SIGKILL at seeded pseudo-random
/// moments, then a clean run to the end.
///
/// Census with read_committed accounting done here, because the mock broker writes no
/// abort markers (module doc): after each kill, the records that run wrote (target offsets
/// between the ends before and after it) whose source offset is at or past the checkpoint
/// the next run loads were in its open transaction, which a broker with markers aborts
/// when the next run's InitProducerId fences the transactional id. Those are set aside;
/// what remains (the committed view) must hold every source record exactly once. What
/// this catches: a checkpoint ahead of the committed data (missing records), a transaction
/// holding records twice, a restart that does not resume exactly at the checkpoint
/// (duplicates), and a checkpoint lagging behind the data (the set-aside tail of a kill
/// then exceeds one transaction: bounded by `max_records_per_transaction` plus one batch).
/// `verify` agrees: 0 missing, and the duplicates it counts on this broker are exactly the
/// set-aside records (so its exactly-once default, fail on duplicates, exits 1 here).
#[test]
fn kill_9_loop_commits_every_record_exactly_once() {
    let m = Mirror::start(&[(CRASH_TOPIC, CRASH_PARTITIONS)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(
        m.source(),
        CRASH_TOPIC,
        CRASH_PARTITIONS,
        0..CRASH_PER_PARTITION,
        1_700_000_000_000,
    );
    let total = CRASH_PARTITIONS as u64 * CRASH_PER_PARTITION;
    let dir = tempfile::tempdir().unwrap();
    let job = "eoscrash";
    let cfg = eos_config_with(
        &m,
        dir.path(),
        job,
        CRASH_TOPIC,
        // Transactions end on size: the commit interval is longer than any run here.
        &format!("commit_interval = \"10m\"\nmax_records_per_transaction = {CRASH_TXN_RECORDS}"),
        &format!("[limits]\nmax_messages_per_sec = {CRASH_RATE}"),
    );
    let highs = || common::highs(m.target(), CRASH_TOPIC, CRASH_PARTITIONS);
    let mut rng = Lcg(CRASH_SEED);
    let mut kills = Vec::new();
    let started = Instant::now();
    for k in 0..CRASH_KILLS {
        let before = highs();
        let mut run = Running::spawn(&["run", "-c", s(&cfg)]);
        let delay_ms = 1_500 + rng.below(2_500);
        std::thread::sleep(Duration::from_millis(delay_ms));
        assert!(
            run.still_running(),
            "kill {k}: the run ended before the kill at {delay_ms} ms"
        );
        signal(run.pid(), "-KILL");
        let f = run.wait(WAIT);
        assert_eq!(f.code, -1, "kill {k}: killed by SIGKILL: {}", f.stderr);
        // Requests the process sent before dying are answered by now.
        std::thread::sleep(Duration::from_millis(300));
        kills.push(Kill {
            before,
            after: highs(),
            checkpoint: stored_positions(m.target(), job, CRASH_TOPIC),
            delay_ms,
        });
    }
    let before_final = highs();
    let copied_before_final: i64 = kills
        .last()
        .map(|k| k.checkpoint.values().sum())
        .unwrap_or(0);
    assert!(
        copied_before_final > 0 && (copied_before_final as u64) < total,
        "the kills landed mid-copy: {copied_before_final} of {total} committed"
    );
    let f = km(&["run", "-c", s(&cfg), "--once"], Duration::from_secs(300));
    f.expect_code(0, "the final run copies the rest");

    // Census: which run wrote each target record, and whether it was set aside.
    let mut committed: BTreeMap<(i32, i64), u32> = BTreeMap::new();
    let mut aborted = vec![0u64; kills.len()];
    let mut raw = 0u64;
    for tp in 0..CRASH_PARTITIONS {
        for r in common::read_partition(m.target(), CRASH_TOPIC, tp) {
            raw += 1;
            let (cluster, topic, p, o) = common::provenance(&r).expect("provenance header");
            assert_eq!((cluster.as_str(), topic.as_str()), (SOURCE, CRASH_TOPIC));
            let idx = tp as usize;
            let by = kills
                .iter()
                .position(|k| r.offset >= k.before[idx] && r.offset < k.after[idx]);
            match by {
                Some(k) if o >= kills[k].checkpoint.get(&p).copied().unwrap_or(0) => {
                    aborted[k] += 1
                }
                _ => *committed.entry((p, o)).or_insert(0) += 1,
            }
        }
    }
    let expected = common::same_range(CRASH_PARTITIONS, 0..CRASH_PER_PARTITION as i64);
    common::assert_exactly_once(&committed, &expected);
    let set_aside: u64 = aborted.iter().sum();
    assert_eq!(
        raw,
        total + set_aside,
        "every other target record is set aside"
    );
    let bound = CRASH_TXN_RECORDS + BATCH_MAX;
    for (k, (kill, n)) in kills.iter().zip(&aborted).enumerate() {
        let written: i64 = kill
            .after
            .iter()
            .zip(&kill.before)
            .map(|(a, b)| a - b)
            .sum();
        println!(
            "kill {k:2} at {:5} ms: wrote {written:6}, committed up to {:6}, open transaction {n:5}",
            kill.delay_ms,
            kill.checkpoint.values().sum::<i64>()
        );
        assert!(
            *n <= bound,
            "kill {k}: {n} records past the committed checkpoint, more than one transaction ({bound})"
        );
    }
    println!(
        "exactly-once crash loop: kills={} records={total} committed view: missing=0 duplicates=0; set aside (open transactions at the kills, visible on the mock only) {set_aside}; before the final run {copied_before_final} committed, target ends {:?}; seed {CRASH_SEED}; {:.1}s",
        kills.len(),
        before_final.iter().sum::<i64>(),
        started.elapsed().as_secs_f64()
    );

    // verify reads what the mock shows: nothing missing, the set-aside records as duplicates.
    let v = km(
        &[
            "verify",
            "-c",
            s(&cfg),
            "--allow-duplicates",
            "--output",
            "json",
        ],
        Duration::from_secs(300),
    );
    v.expect_code(0, "verify, duplicates allowed");
    let json: serde_json::Value = serde_json::from_str(&v.stdout).expect("verify JSON");
    let sum = |key: &str| common::verify_count(&json, key);
    assert_eq!(sum("missing"), 0, "verify: nothing missing");
    assert_eq!(
        sum("duplicates"),
        set_aside,
        "verify's duplicates are the set-aside records"
    );
    let strict = km(&["verify", "-c", s(&cfg)], Duration::from_secs(300));
    assert_eq!(
        strict.code,
        if set_aside == 0 { 0 } else { 1 },
        "exactly-once verify fails on duplicates by default: {}",
        strict.stdout
    );
}

/// (offset, pid) of the owner records of `job` in log order.
fn owner_records(bootstrap: &str, job: &str) -> Vec<(i64, u64)> {
    read_checkpoint_topic(bootstrap)
        .into_iter()
        .filter_map(|(o, k, v)| {
            let key: serde_json::Value = serde_json::from_slice(&k).ok()?;
            if key[1] != job || key[2] != "owner" {
                return None;
            }
            let v: serde_json::Value = serde_json::from_slice(&v?).ok()?;
            Some((o, v["body"]["owner"]["pid"].as_u64()?))
        })
        .collect()
}

/// Issue 12: a second process on the job fences the first. The first learns it at its next
/// commit, aborts its open transaction and stops (exit 6) naming the new holder, and
/// commits nothing after the new holder's claim: no checkpoint record of the old process
/// follows the new one's owner record. The mock hands out a fresh producer id on every
/// InitProducerId instead of fencing by transactional.id (and shows aborted records), so
/// here the fence is the kafka store's owner record, and the old process's aborted
/// transaction stays visible on the target: the census finds nothing missing, and every
/// duplicate is a record of that transaction (past the old process's last committed
/// checkpoint, within one transaction of it).
#[test]
fn a_fenced_process_aborts_its_transaction_and_commits_nothing_after_the_takeover() {
    let m = Mirror::start(&[("fence", 4)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(m.source(), "fence", 4, 0..5_000, 1_700_000_000_000);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let delivery = "max_records_per_transaction = 1000";
    let limits = "[limits]\nmax_messages_per_sec = 4000";
    let cfg_a = eos_config_with(&m, dir_a.path(), "fence", "fence", delivery, limits);
    let cfg_b = eos_config_with(&m, dir_b.path(), "fence", "fence", delivery, limits);

    let a = Running::spawn(&["run", "-c", s(&cfg_a)]);
    let a_pid = a.pid() as u64;
    wait_for("A's first commits", || {
        stored_positions(m.target(), "fence", "fence")
            .values()
            .sum::<i64>()
            >= 2_000
    });
    let mut b = Running::spawn(&["run", "-c", s(&cfg_b)]);
    let b_pid = b.pid() as u64;
    let fa = a.wait(WAIT);
    assert_eq!(fa.code, 6, "the fenced process exits 6: {}", fa.stderr);
    assert!(
        fa.stderr.contains("was taken over by") && fa.stderr.contains(&format!("pid {b_pid} ")),
        "A names who took the job: {}",
        fa.stderr
    );
    assert!(b.still_running(), "B goes on");
    let full: BTreeMap<i32, i64> = (0..4).map(|p| (p, 5_000)).collect();
    wait_for("B's commits to the end", || {
        stored_positions(m.target(), "fence", "fence") == full
    });
    signal(b.pid(), "-TERM");
    b.wait(WAIT).expect_code(0, "B stops cleanly");

    let claim = owner_records(m.target(), "fence")
        .into_iter()
        .rfind(|(_, pid)| *pid == b_pid)
        .expect("B's owner record")
        .0;
    let records = partition_records(m.target(), "fence", "fence");
    let after: Vec<_> = records
        .iter()
        .filter(|(o, _, _, pid)| *o > claim && *pid == a_pid)
        .collect();
    assert!(
        after.is_empty(),
        "A committed after B's claim at offset {claim}: {after:?}"
    );
    let a_last: BTreeMap<i32, i64> = records
        .iter()
        .filter(|(_, _, _, pid)| *pid == a_pid)
        .map(|(_, p, n, _)| (*p, *n))
        .collect();
    let seen = common::census(&common::read_topic(m.target(), "fence"), SOURCE, "fence");
    let dups = common::assert_at_least_once(&seen, &common::same_range(4, 0..5_000));
    for ((p, o), n) in &seen {
        if *n > 1 {
            let from = a_last.get(p).copied().unwrap_or(0);
            assert!(
                *o >= from && *o < from + 3_000,
                "{p}/{o} is on the target {n} times but is not in A's open transaction (A committed up to {from})"
            );
        }
    }
    println!("A (pid {a_pid}) committed up to {a_last:?}; {dups} copies of its aborted transaction visible on the mock");
}

/// Issue 12: a delivery that fails inside a transaction dooms it. The run aborts the
/// transaction and exits 70 naming the record and the cluster; the next run resumes from
/// the last commit. The target refuses every Produce (INVALID_RECORD, a permanent error)
/// once the first run has committed; the records its open transaction holds (visible on the
/// mock, which writes no abort marker) are set aside as in the kill loop, and the rest
/// holds every source record exactly once.
#[test]
fn a_failed_delivery_aborts_the_transaction_and_the_rerun_resumes_from_the_last_commit() {
    let m = Mirror::start(&[("doomed", 4)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(m.source(), "doomed", 4, 0..5_000, 1_700_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = eos_config_with(
        &m,
        dir.path(),
        "doomed",
        "doomed",
        "max_records_per_transaction = 1000",
        "[limits]\nmax_messages_per_sec = 4000",
    );
    let before = common::highs(m.target(), "doomed", 4);
    let run = Running::spawn(&["run", "-c", s(&cfg)]);
    wait_for("the first commits", || {
        stored_positions(m.target(), "doomed", "doomed")
            .values()
            .sum::<i64>()
            >= 2_000
    });
    m.control(Control::RequestErrors {
        cluster: TARGET_IDX,
        api: RDKafkaApiKey::Produce,
        error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD,
        count: 1_000_000,
    });
    let f = run.wait(WAIT);
    m.control(Control::ClearRequestErrors {
        cluster: TARGET_IDX,
        api: RDKafkaApiKey::Produce,
    });
    assert_eq!(
        f.code, 70,
        "an aborted transaction ends the run: {}",
        f.stderr
    );
    // What failed first is a race with the refusals: a copied record's delivery (named by
    // its source position), or, when every record of the open transaction was delivered
    // before the target began refusing, the checkpoint records the commit writes.
    let aborted = "exactly-once: the transaction on cluster \"dst\" was aborted: ";
    assert!(
        (f.stderr
            .contains(&format!("{aborted}delivery of src:doomed/"))
            || f.stderr
                .contains(&format!("{aborted}CommitTransaction failed")))
            && f.stderr
                .contains("the next run resumes from the last committed checkpoint"),
        "the error names what failed, the cluster and what happens next: {}",
        f.stderr
    );
    let after = common::highs(m.target(), "doomed", 4);
    let committed_at = stored_positions(m.target(), "doomed", "doomed");
    km(&["run", "-c", s(&cfg), "--once"], WAIT).expect_code(0, "the rerun");

    let mut committed: BTreeMap<(i32, i64), u32> = BTreeMap::new();
    let mut set_aside = 0u64;
    for tp in 0..4 {
        for r in common::read_partition(m.target(), "doomed", tp) {
            let (_, _, p, o) = common::provenance(&r).expect("provenance header");
            let first_run = r.offset >= before[tp as usize] && r.offset < after[tp as usize];
            if first_run && o >= committed_at.get(&p).copied().unwrap_or(0) {
                set_aside += 1;
            } else {
                *committed.entry((p, o)).or_insert(0) += 1;
            }
        }
    }
    common::assert_exactly_once(&committed, &common::same_range(4, 0..5_000));
    assert!(
        set_aside <= CRASH_TXN_RECORDS + BATCH_MAX,
        "{set_aside} records past the last commit: more than one transaction"
    );
    println!("aborted transaction: {set_aside} records set aside (visible on the mock only)");
}

/// `kmirror check` (and `run`) refuse exactly_once without the kafka store with exit 3 and
/// the diagnostic's file:line:column and key, before connecting anywhere.
#[test]
fn check_refuses_exactly_once_with_the_file_store_naming_where() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eos.toml");
    fs::write(
        &path,
        r#"[delivery]
guarantee = "exactly_once"

[clusters.src]
bootstrap = "127.0.0.1:1"

[clusters.dst]
bootstrap = "127.0.0.1:1"

[[routes]]
name = "r"
source = "src"
topics = ["t"]
target = "dst"
"#,
    )
    .unwrap();
    for cmd in ["check", "run"] {
        let f = km(&[cmd, "-c", s(&path)], WAIT);
        assert_eq!(f.code, 3, "{cmd}: invalid routing file: {}", f.stderr);
        assert!(
            f.stderr.contains(&format!(
                "{}:2:13: delivery.guarantee: exactly_once needs [checkpoints] store = \"kafka\"",
                path.display()
            )),
            "{cmd}: {}",
            f.stderr
        );
    }
}

/// A clean stop (SIGTERM) commits the last transaction with the final positions: the target
/// holds exactly the records below the checkpoint, nothing past it, and the rerun copies
/// exactly the rest (no record set aside, none twice).
#[test]
fn sigterm_commits_the_open_transaction_and_the_rerun_copies_exactly_the_rest() {
    let m = Mirror::start(&[("term", 4)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(m.source(), "term", 4, 0..5_000, 1_700_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = eos_config_with(
        &m,
        dir.path(),
        "term",
        "term",
        "max_records_per_transaction = 1000",
        "[limits]\nmax_messages_per_sec = 4000",
    );
    let run = Running::spawn(&["run", "-c", s(&cfg)]);
    wait_for("some commits", || {
        stored_positions(m.target(), "term", "term")
            .values()
            .sum::<i64>()
            >= 2_000
    });
    signal(run.pid(), "-TERM");
    run.wait(WAIT).expect_code(0, "a clean stop");
    let at_stop = stored_positions(m.target(), "term", "term");
    let total: i64 = at_stop.values().sum();
    assert!(total < 20_000, "stopped mid-copy: {at_stop:?}");
    let seen = common::census(&common::read_topic(m.target(), "term"), SOURCE, "term");
    let expected: BTreeMap<i32, std::ops::Range<i64>> = (0..4)
        .map(|p| (p, 0..at_stop.get(&p).copied().unwrap_or(0)))
        .collect();
    common::assert_exactly_once(&seen, &expected);
    km(&["run", "-c", s(&cfg), "--once"], WAIT).expect_code(0, "the rerun");
    let seen = common::census(&common::read_topic(m.target(), "term"), SOURCE, "term");
    common::assert_exactly_once(&seen, &common::same_range(4, 0..5_000));
}
