//! The kafka checkpoint store (`[checkpoints] store = "kafka"`, issue 11), through the built
//! binary against librdkafka's mock clusters hosted in this process (real TCP): a run
//! resumes exactly from checkpoints kept in the target cluster with no local state, a
//! kill -9 loop loses nothing, a second process on the job fences the first (which stops
//! with exit 6 and writes nothing after; so does a `checkpoints reset --execute` of a running
//! job), an unreachable checkpoint cluster exits 4, damaged or foreign records in the checkpoint topic
//! are refused (exit 5) with cluster, topic, partition and offset, a missing topic on a
//! broker without CreateTopics is a clear error (exit 4), and `checkpoints show` / `reset`
//! work on the store. CreateTopics and the topic's compaction are checked against tansu in
//! tests/tansu.rs.
//!
//! Every assertion reads the clusters with plain clients (the provenance census of
//! tests/common), never kmirror's own counts.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cli::{km, s, signal, Running};
use common::{Mirror, SOURCE, TARGET, WAIT};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

const CP_TOPIC: &str = "kmirror-checkpoints";
const EXIT_LOCKED: i32 = 6;

/// A routing file in `dir` for job `job` copying `topic` from `src` to `dst`, checkpoints
/// in the kafka store (on `dst`, the routes' one target). `[checkpoints] dir` points at a
/// directory that must never be created: the kafka store needs no local state.
fn kafka_config(m: &Mirror, dir: &Path, job: &str, topic: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"[checkpoints]
store = "kafka"
job = "{job}"
interval = "200ms"
dir = "{never}"
{extra}

[clusters.{SOURCE}]
bootstrap = "{src}"

[clusters.{TARGET}]
bootstrap = "{dst}"

[[routes]]
name = "{topic}"
source = "{SOURCE}"
topics = ["{topic}"]
target = "{TARGET}"
"#,
        never = no_local_dir(dir).display(),
        src = m.source(),
        dst = m.target(),
    );
    let path = dir.join(format!("{job}.toml"));
    fs::write(&path, text).expect("write routing file");
    path
}

fn no_local_dir(dir: &Path) -> PathBuf {
    dir.join("no-local-checkpoints")
}

/// Every record of the checkpoint topic partition 0: (offset, key, value).
type CpRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn read_checkpoint_topic(bootstrap: &str) -> Vec<CpRecord> {
    read_topic_named(bootstrap, CP_TOPIC)
}

fn read_topic_named(bootstrap: &str, topic: &str) -> Vec<CpRecord> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kmirror-test-reader")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
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
    panic!("the checkpoint topic was not read to its end within {WAIT:?}");
}

fn value_json(v: &[u8]) -> serde_json::Value {
    serde_json::from_slice(v).expect("a checkpoint record is JSON")
}

/// Latest next_offset per source partition of `route`/`topic`, from the topic itself.
fn stored_positions(bootstrap: &str, job: &str, topic: &str) -> BTreeMap<i32, i64> {
    let mut latest: BTreeMap<i32, i64> = BTreeMap::new();
    for (_, key, value) in read_checkpoint_topic(bootstrap) {
        let key: serde_json::Value = serde_json::from_slice(&key.unwrap()).unwrap();
        if key[1] != job || key[2] != "partition" || key[4] != topic {
            continue;
        }
        let p = key[5].as_i64().unwrap() as i32;
        match value {
            Some(v) => {
                latest.insert(
                    p,
                    value_json(&v)["body"]["partition"]["checkpoint"]["next_offset"]
                        .as_i64()
                        .unwrap(),
                );
            }
            None => {
                latest.remove(&p);
            }
        }
    }
    latest
}

fn produce_raw(bootstrap: &str, topic: &str, partition: i32, key: Option<&[u8]>, value: &[u8]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    let mut r: BaseRecord<'_, [u8], [u8]> =
        BaseRecord::to(topic).partition(partition).payload(value);
    if let Some(k) = key {
        r = r.key(k);
    }
    p.send(r).map_err(|(e, _)| e).expect("send");
    p.flush(WAIT).expect("flush");
}

#[test]
fn a_restart_with_no_local_state_resumes_exactly_from_the_target_cluster() {
    let m = Mirror::start(&[("orders", 4)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(m.source(), "orders", 4, 0..100, 1_700_000_000_000);
    let first_dir = tempfile::tempdir().unwrap();
    let cfg = kafka_config(&m, first_dir.path(), "resume", "orders", "");
    km(&["run", "-c", s(&cfg), "--once"], WAIT).expect_code(0, "first run");
    assert_eq!(
        stored_positions(m.target(), "resume", "orders"),
        (0..4).map(|p| (p, 100)).collect(),
        "one record per source partition at its end"
    );
    assert!(
        !no_local_dir(first_dir.path()).exists(),
        "no local state written"
    );

    // The second run starts from another, empty directory: only the cluster remembers.
    drop(first_dir);
    common::produce_numbered(m.source(), "orders", 4, 100..150, 1_700_000_100_000);
    let second_dir = tempfile::tempdir().unwrap();
    let cfg = kafka_config(&m, second_dir.path(), "resume", "orders", "");
    km(&["run", "-c", s(&cfg), "--once"], WAIT).expect_code(0, "second run");
    assert!(
        !no_local_dir(second_dir.path()).exists(),
        "no local state written"
    );
    let seen = common::census(&common::read_topic(m.target(), "orders"), SOURCE, "orders");
    common::assert_exactly_once(&seen, &common::same_range(4, 0..150));
    assert_eq!(
        stored_positions(m.target(), "resume", "orders"),
        (0..4).map(|p| (p, 150)).collect()
    );
}

/// Records of the checkpoint topic in order, with the pid each says wrote it (`None` for a
/// tombstone) and its key.
fn writers(bootstrap: &str) -> Vec<(i64, Vec<u8>, Option<u64>, bool)> {
    read_checkpoint_topic(bootstrap)
        .into_iter()
        .map(|(o, k, v)| {
            let k = k.expect("every checkpoint record has a key");
            let owner = v.as_ref().map(|v| value_json(v));
            let is_owner = owner
                .as_ref()
                .is_some_and(|j| j["body"]["partition"].is_null());
            let pid = owner.and_then(|j| j["body"]["owner"]["pid"].as_u64());
            (o, k, pid, is_owner)
        })
        .collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_process_on_the_job_fences_the_first_which_stops_without_writing_over_it() {
    let m = Mirror::start(&[("fence", 2)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(m.source(), "fence", 2, 0..200, 1_700_000_000_000);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_a = kafka_config(&m, dir_a.path(), "fence", "fence", "");
    let cfg_b = kafka_config(&m, dir_b.path(), "fence", "fence", "");
    let full = |n: i64| (0..2).map(|p| (p, n)).collect::<BTreeMap<i32, i64>>();

    // A follows the topic (no end) and has checkpointed everything there is.
    let a = Running::spawn(&["run", "-c", s(&cfg_a)]);
    wait_for("A's checkpoints at 200", || {
        stored_positions(m.target(), "fence", "fence") == full(200)
    });
    let a_pid = a.pid() as u64;

    // B takes the job: A learns it at its next checkpoint and stops, exit 6, naming B.
    let mut b = Running::spawn(&["run", "-c", s(&cfg_b)]);
    let b_pid = b.pid() as u64;
    let fa = a.wait(WAIT);
    eprintln!("--- A's stderr\n{}", fa.stderr);
    assert_eq!(fa.code, EXIT_LOCKED, "the fenced process exits 6");
    assert!(
        fa.stderr.contains("was taken over by")
            && fa.stderr.contains(&format!("pid {b_pid} "))
            && fa.stderr.contains(&format!(
                "kafka topic \"{CP_TOPIC}\" on cluster \"{TARGET}\""
            )),
        "A says who took the job, and where: {}",
        fa.stderr
    );
    assert!(b.still_running(), "B goes on");

    // B copies what comes next and checkpoints it.
    common::produce_numbered(m.source(), "fence", 2, 200..300, 1_700_000_100_000);
    wait_for("B's checkpoints at 300", || {
        stored_positions(m.target(), "fence", "fence") == full(300)
    });
    signal(b.pid(), "-TERM");
    b.wait(WAIT).expect_code(0, "B stops cleanly");

    // In the topic: B's owner record is the last one; after it A wrote at most what it had
    // in flight when B claimed, and every key's last record is B's, so compaction keeps B's.
    let recs = writers(m.target());
    let claim = recs
        .iter()
        .rposition(|(_, _, _, is_owner)| *is_owner)
        .expect("an owner record");
    assert_eq!(recs[claim].2, Some(b_pid), "the last owner record is B's");
    let a_after = recs[claim..]
        .iter()
        .filter(|(_, _, pid, _)| *pid == Some(a_pid))
        .count();
    let mut last: BTreeMap<&[u8], Option<u64>> = BTreeMap::new();
    for (_, k, pid, is_owner) in &recs {
        if !is_owner {
            last.insert(k, *pid);
        }
    }
    assert_eq!(last.len(), 2, "one key per source partition");
    assert!(
        last.values().all(|p| *p == Some(b_pid)),
        "every partition's latest record is B's: {last:?}"
    );
    println!("A (pid {a_pid}) wrote {a_after} records after B's claim");
    let seen = common::census(&common::read_topic(m.target(), "fence"), SOURCE, "fence");
    let dups = common::assert_at_least_once(&seen, &common::same_range(2, 0..300));
    println!("0 missing, {dups} duplicates across the takeover");
}

/// Runs `cfg` once so its topic holds valid records for its job.
fn run_once(cfg: &Path) {
    km(&["run", "-c", s(cfg), "--once"], WAIT).expect_code(0, "run --once");
}

#[test]
fn damaged_foreign_and_other_jobs_records_are_refused_with_exit_5_and_their_offset() {
    let m = Mirror::start(&[("refuse", 2)]);
    common::produce_numbered(m.source(), "refuse", 2, 0..50, 1_700_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let topic_of = |case: &str| format!("cp-{case}");
    let cfg_for = |case: &str, job: &str| {
        let d = dir.path().join(case);
        fs::create_dir_all(&d).unwrap();
        kafka_config(
            &m,
            &d,
            job,
            "refuse",
            &format!("topic = \"{}\"", topic_of(case)),
        )
    };
    // A valid record of this job, to damage; and one of job "other" in the same topic.
    let latest = |topic: &str| -> (i64, Vec<u8>, Vec<u8>) {
        let recs = read_topic_named(m.target(), topic);
        let (o, k, v) = recs
            .into_iter()
            .rev()
            .find(|(_, _, v)| {
                v.as_ref()
                    .is_some_and(|v| !value_json(v)["body"]["partition"].is_null())
            })
            .expect("a partition record");
        (o, k.unwrap(), v.unwrap())
    };

    for case in ["foreign", "flipped", "otherjob"] {
        m.create_target_topic(&topic_of(case), 1);
        let cfg = cfg_for(case, "refuse");
        run_once(&cfg);
        let (_, key, value) = latest(&topic_of(case));
        let (inject_key, inject_value, reason): (Vec<u8>, Vec<u8>, &str) = match case {
            "foreign" => (
                b"hello".to_vec(),
                b"world".to_vec(),
                "not a kmirror checkpoint key",
            ),
            "flipped" => {
                // One field changed, the seal left as it was.
                let mut j = value_json(&value);
                let cp = &mut j["body"]["partition"]["checkpoint"];
                cp["next_offset"] = (cp["next_offset"].as_i64().unwrap() + 1).into();
                (key, serde_json::to_vec(&j).unwrap(), "checksum")
            }
            _ => {
                // Job "other" writes to the same topic; its record is put under our key.
                let d = dir.path().join("other-writer");
                fs::create_dir_all(&d).unwrap();
                let topic = format!("topic = \"{}\"", topic_of(case));
                run_once(&kafka_config(&m, &d, "other", "refuse", &topic));
                let (_, _, other_value) = latest(&topic_of(case));
                (key, other_value, "belongs to job \"other\"")
            }
        };
        produce_raw(
            m.target(),
            &topic_of(case),
            0,
            Some(&inject_key),
            &inject_value,
        );
        let at = read_topic_named(m.target(), &topic_of(case))
            .last()
            .unwrap()
            .0;
        common::produce_numbered(m.source(), "refuse", 2, 50..60, 1_700_000_100_000);
        let before = common::highs(m.target(), "refuse", 2);
        let f = km(&["run", "-c", s(&cfg), "--once"], WAIT);
        f.expect_code(5, case);
        let place = format!(
            "cluster \"{TARGET}\" topic \"{}\" partition 0 offset {at}",
            topic_of(case)
        );
        assert!(
            f.stderr.contains(&place) && f.stderr.contains(reason),
            "{case}: the message names {place} and says {reason:?}: {}",
            f.stderr
        );
        assert_eq!(
            common::highs(m.target(), "refuse", 2),
            before,
            "{case}: nothing copied"
        );
        // `checkpoints show` refuses the same way.
        let f = km(&["checkpoints", "show", "-c", s(&cfg)], WAIT);
        f.expect_code(5, case);
        assert!(f.stderr.contains(&place), "{}", f.stderr);
    }
}

#[test]
fn a_missing_checkpoint_topic_on_a_broker_without_create_topics_says_how_to_create_it() {
    // librdkafka's mock cluster has no CreateTopics.
    let m = Mirror::start(&[("orders", 2)]);
    common::produce_numbered(m.source(), "orders", 2, 0..20, 1_700_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_config(&m, dir.path(), "missing", "orders", "topic = \"cps\"");
    let f = km(&["run", "-c", s(&cfg), "--once"], WAIT);
    f.expect_code(
        4,
        "a checkpoint topic that cannot be created is a cluster problem",
    );
    assert!(
        f.stderr.contains("checkpoint topic \"cps\" does not exist on cluster \"dst\"")
            && f.stderr.contains(&format!(
                "kafka-topics.sh --bootstrap-server {} --create --topic cps --partitions 1 --config cleanup.policy=compact",
                m.target()
            )),
        "{}",
        f.stderr
    );
    assert_eq!(
        common::highs(m.target(), "orders", 2),
        vec![0, 0],
        "nothing copied"
    );
    // Readers do not create it: there is simply no checkpoint yet.
    let f = km(&["checkpoints", "show", "-c", s(&cfg)], WAIT);
    f.expect_code(0, "show");
    assert!(
        f.stdout
            .contains("no checkpoint at kafka topic \"cps\" on cluster \"dst\""),
        "{}",
        f.stdout
    );
}

#[test]
fn checkpoints_show_and_reset_work_on_the_kafka_store() {
    let m = Mirror::start(&[("orders", 2)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(m.source(), "orders", 2, 0..40, 1_700_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_config(&m, dir.path(), "showreset", "orders", "");
    run_once(&cfg);
    // verify reads the checkpoints from the store too.
    let f = km(&["verify", "-c", s(&cfg)], WAIT);
    f.expect_code(0, "verify");
    assert!(
        f.stdout
            .contains("every source record is on the target (80 selected records"),
        "{}",
        f.stdout
    );

    let (sum, rows) = common::cli::shown_next_offsets(&cfg);
    assert_eq!(
        (sum, rows.len()),
        (80, 2),
        "show reads both partitions at 40"
    );
    let f = km(
        &["checkpoints", "show", "-c", s(&cfg), "--output", "json"],
        WAIT,
    );
    f.expect_code(0, "show json");
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap();
    assert_eq!(v["kind"], "kmirror-checkpoints");
    assert_eq!(v["job"], "showreset");
    assert_eq!(
        v["checkpoint"],
        format!("kafka topic \"{CP_TOPIC}\" on cluster \"{TARGET}\"")
    );
    let parts = v["routes"][0]["partitions"].as_array().unwrap();
    assert!(
        parts
            .iter()
            .all(|p| p["next_offset"] == 40 && p["lag"] == 0),
        "{v:#}"
    );

    // A preview writes nothing.
    let before = read_checkpoint_topic(m.target()).len();
    km(
        &[
            "checkpoints",
            "reset",
            "-c",
            s(&cfg),
            "--topic",
            "orders:1",
            "--to",
            "10",
        ],
        WAIT,
    )
    .expect_code(0, "preview");
    assert_eq!(
        read_checkpoint_topic(m.target()).len(),
        before,
        "a preview writes nothing"
    );

    // Move partition 1 back to 10: the next run copies 10..40 of it again, nothing of 0.
    km(
        &[
            "checkpoints",
            "reset",
            "-c",
            s(&cfg),
            "--topic",
            "orders:1",
            "--to",
            "10",
            "--execute",
        ],
        WAIT,
    )
    .expect_code(0, "reset --to 10");
    assert_eq!(
        stored_positions(m.target(), "showreset", "orders"),
        [(0, 40), (1, 10)].into_iter().collect()
    );
    run_once(&cfg);
    let seen = common::census(&common::read_topic(m.target(), "orders"), SOURCE, "orders");
    let twice: Vec<(i32, i64)> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        twice,
        (10..40).map(|o| (1, o)).collect::<Vec<_>>(),
        "exactly 1/10..40 again"
    );

    // Forgetting writes tombstones: nothing is left for the job, and show says so.
    km(&["checkpoints", "reset", "-c", s(&cfg), "--execute"], WAIT).expect_code(0, "forget");
    assert!(stored_positions(m.target(), "showreset", "orders").is_empty());
    let f = km(&["checkpoints", "show", "-c", s(&cfg)], WAIT);
    f.expect_code(0, "show after forget");
    assert!(
        f.stdout.contains("no checkpoint at kafka topic"),
        "{}",
        f.stdout
    );
}

#[test]
fn kill_9_loop_with_the_kafka_store_loses_nothing() {
    const PARTITIONS: i32 = 4;
    const PER_PARTITION: u64 = 5_000;
    let m = Mirror::start(&[("crash", PARTITIONS)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(
        m.source(),
        "crash",
        PARTITIONS,
        0..PER_PARTITION,
        1_700_000_000_000,
    );
    let dir = tempfile::tempdir().unwrap();
    // Slow enough that each kill lands mid-copy.
    let cfg = kafka_config(&m, dir.path(), "crash", "crash", "");
    let text = fs::read_to_string(&cfg).unwrap() + "max_messages_per_sec = 2000\n";
    fs::write(&cfg, text).unwrap();
    let mut kills = 0;
    for round in 0..6 {
        let mut r = Running::spawn(&["run", "-c", s(&cfg), "--once"]);
        // Wait for this round's progress to reach the topic, then kill at once.
        let before: i64 = stored_positions(m.target(), "crash", "crash")
            .values()
            .sum();
        wait_for("progress checkpointed", || {
            !r.still_running()
                || stored_positions(m.target(), "crash", "crash")
                    .values()
                    .sum::<i64>()
                    > before + 500
        });
        if !r.still_running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100 * round));
        signal(r.pid(), "-KILL");
        let _ = r.wait(WAIT);
        kills += 1;
    }
    km(&["run", "-c", s(&cfg), "--once"], Duration::from_secs(120)).expect_code(0, "final run");
    assert!(kills >= 3, "only {kills} kills landed mid-copy");
    let seen = common::census(&common::read_topic(m.target(), "crash"), SOURCE, "crash");
    let dups = common::assert_at_least_once(
        &seen,
        &common::same_range(PARTITIONS, 0..PER_PARTITION as i64),
    );
    assert_eq!(
        stored_positions(m.target(), "crash", "crash"),
        (0..PARTITIONS).map(|p| (p, PER_PARTITION as i64)).collect()
    );
    println!("{kills} kills: 0 missing, {dups} duplicates");
    assert!(!no_local_dir(dir.path()).exists(), "no local state written");
}

#[test]
fn an_unreachable_checkpoint_cluster_is_a_cluster_error_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // dropped at once: nothing listens there
    let cfg = dir.path().join("unreachable.toml");
    fs::write(
        &cfg,
        format!(
            r#"[checkpoints]
store = "kafka"

[run]
connect_timeout = "1s"

[clusters.src]
bootstrap = "127.0.0.1:{closed}"

[clusters.dst]
bootstrap = "127.0.0.1:{closed}"

[[routes]]
name = "r"
source = "src"
topics = ["orders"]
target = "dst"
"#
        ),
    )
    .unwrap();
    for args in [vec!["checkpoints", "show"], vec!["run", "--once"]] {
        let mut a = args.clone();
        a.extend(["-c", s(&cfg)]);
        let f = km(&a, WAIT);
        f.expect_code(4, &args.join(" "));
        assert!(
            f.stderr.contains(&format!(
                "checkpoints in kafka topic \"{CP_TOPIC}\" on cluster \"dst\""
            )) && f.stderr.contains("no Kafka broker answered"),
            "{}",
            f.stderr
        );
    }
    assert!(
        !dir.path().join("checkpoints").exists(),
        "no local state written"
    );
}

#[test]
fn a_reset_of_a_running_job_stops_the_run_which_does_not_write_over_the_reset() {
    let m = Mirror::start(&[("live", 2)]);
    m.create_target_topic(CP_TOPIC, 1);
    common::produce_numbered(m.source(), "live", 2, 0..50, 1_700_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_config(&m, dir.path(), "live", "live", "");
    let at = |n: i64| (0..2).map(|p| (p, n)).collect::<BTreeMap<i32, i64>>();
    let run = Running::spawn(&["run", "-c", s(&cfg)]);
    wait_for("the run's checkpoints at 50", || {
        stored_positions(m.target(), "live", "live") == at(50)
    });
    km(
        &[
            "checkpoints",
            "reset",
            "-c",
            s(&cfg),
            "--to",
            "5",
            "--execute",
        ],
        WAIT,
    )
    .expect_code(0, "reset of a running job");
    let f = run.wait(WAIT);
    assert_eq!(f.code, EXIT_LOCKED, "the run was taken over: {}", f.stderr);
    assert!(f.stderr.contains("was taken over by"), "{}", f.stderr);
    // The run, stopped, wrote no checkpoint over the reset (not even its final one).
    assert_eq!(stored_positions(m.target(), "live", "live"), at(5));
}
