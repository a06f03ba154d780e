//! The copy engine against librdkafka mock clusters: every test produces real records to a
//! source cluster, runs `kmirror::copy::run`, then reads the target back with a plain
//! consumer and asserts what is there, record by record (through the `kmirror.source`
//! provenance header), alongside the run report, the checkpoint and `kmirror::verify`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kmirror::checkpoint::FileStore;
use kmirror::cluster::ClusterError;
use kmirror::copy::{self, RunError, RunOptions};
use kmirror::dev_cluster::Control;
use rdkafka::Timestamp;
use rdkafka_sys::types::{RDKafkaApiKey, RDKafkaRespErr};

/// The helper's murmur2 must be Java's, or the key-partitioning assertions mean nothing.
/// Vectors from Kafka's `UtilsTest.testMurmur2`.
#[test]
fn murmur2_matches_java_test_vectors() {
    let cases: [(&[u8], i32); 6] = [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58897971,
        ),
        (b"abc", 479470107),
    ];
    for (data, want) in cases {
        assert_eq!(
            murmur2(data),
            want,
            "murmur2({:?})",
            String::from_utf8_lossy(data)
        );
    }
    assert_eq!(
        java_partition(b"foobar", 7),
        (-790332482i32 & 0x7fff_ffff) % 7
    );
}

/// Hand-made edge cases plus generated ones: null and empty keys, binary keys, tombstones,
/// repeated, null, empty and non-UTF-8 header values, explicit (also decreasing) timestamps.
fn fidelity_records() -> Vec<TestRecord> {
    let base = 1_600_000_000_000i64;
    let h = |k: &str, v: Option<&[u8]>| (k.to_string(), v.map(<[u8]>::to_vec));
    let mut out = vec![
        TestRecord {
            partition: 0,
            key: Some(b"alpha".to_vec()),
            value: Some(b"first".to_vec()),
            headers: vec![
                h("h1", Some(b"a")),
                h("bin", Some(&[0xff, 0xfe, 0x00, 0x80])),
                h("h1", Some(b"second h1")),
                h("null", None),
            ],
            timestamp: Some(base),
        },
        TestRecord {
            partition: 0,
            key: None,
            value: Some(b"no key".to_vec()),
            headers: vec![],
            timestamp: Some(base + 1),
        },
        TestRecord {
            partition: 0,
            key: Some(b"alpha".to_vec()),
            value: None, // tombstone
            headers: vec![h("why", Some(b"delete"))],
            timestamp: Some(base + 2),
        },
        TestRecord {
            partition: 1,
            key: Some(vec![0x00, 0xff, 0x80, 0x7f, 0xc3, 0x28]),
            value: Some((0..=255u8).collect()),
            headers: vec![
                h("latin1", Some(b"caf\xe9")),
                h("utf8-invalid", Some(&[0xc3, 0x28])),
            ],
            timestamp: Some(base - 5_000), // older than the previous record
        },
        TestRecord {
            partition: 1,
            key: Some(vec![]),
            value: Some(vec![]),
            headers: vec![h("empty", Some(b""))],
            timestamp: Some(1),
        },
        TestRecord {
            partition: 2,
            key: None,
            value: None,
            headers: vec![],
            timestamp: Some(base + 3),
        },
        TestRecord {
            partition: 2,
            key: Some(b"alpha".to_vec()), // same key from another source partition
            value: Some(b"third".to_vec()),
            headers: vec![h("h1", Some(b"z"))],
            timestamp: Some(base + 4),
        },
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let keys: Vec<Vec<u8>> = (0..40)
        .map(|i| {
            if i % 4 == 0 {
                rng.bytes(1 + (i % 9) as usize) // binary keys of 1..9 bytes
            } else {
                format!("customer-{i}").into_bytes()
            }
        })
        .collect();
    let names = ["a", "b", "trace-id", "a"];
    for i in 0..600i64 {
        let key = (rng.below(6) != 0).then(|| keys[rng.below(keys.len() as u64) as usize].clone());
        let value = (rng.below(8) != 0).then(|| {
            let n = rng.below(200) as usize;
            rng.bytes(n)
        });
        let headers = (0..rng.below(4))
            .map(|_| {
                let name = names[rng.below(names.len() as u64) as usize].to_string();
                let v = (rng.below(5) != 0).then(|| {
                    let n = rng.below(24) as usize;
                    rng.bytes(n)
                });
                (name, v)
            })
            .collect();
        out.push(TestRecord {
            partition: rng.below(3) as i32,
            key,
            value,
            headers,
            timestamp: Some(base + i * 13 - rng.below(1000) as i64),
        });
    }
    out
}

fn raw_headers(r: &TestRecord) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    r.headers
        .iter()
        .map(|(k, v)| (k.clone().into_bytes(), v.clone()))
        .collect()
}

/// Asserts a target record carries exactly the source record's content, and that its
/// provenance header is the single, last header and names `src/<topic>/<p>/<offset>`.
fn assert_same_record(src: &ReadRecord, dst: &ReadRecord, topic: &str) {
    let at = format!(
        "source {}/{} -> target {}/{}",
        src.partition, src.offset, dst.partition, dst.offset
    );
    assert_eq!(dst.key, src.key, "{at}: key");
    assert_eq!(dst.value, src.value, "{at}: value");
    assert_eq!(dst.timestamp, src.timestamp, "{at}: timestamp");
    assert_eq!(
        headers_without_provenance(dst),
        src.headers,
        "{at}: headers"
    );
    assert_eq!(
        dst.headers.len(),
        src.headers.len() + 1,
        "{at}: one provenance header added"
    );
    let (name, value) = dst.headers.last().expect("provenance header");
    assert_eq!(
        name.as_slice(),
        PROVENANCE.as_bytes(),
        "{at}: provenance is the last header"
    );
    // `<route>@<cluster>/<topic>/<partition>/<offset>`
    let want = format!("@{SOURCE}/{topic}/{}/{}", src.partition, src.offset);
    let got = String::from_utf8_lossy(value.as_deref().unwrap_or_default());
    assert!(
        got.ends_with(&want) && !got[..got.len() - want.len()].contains('/'),
        "{at}: provenance value {got:?}, want <route>{want}"
    );
}

/// Test 1: record-by-record fidelity through a `preserve` route and a `key` route reading
/// the same source topic.
#[test]
fn fidelity_preserve_and_key_routes() {
    let m = Mirror::start(&[("fid", 3)]);
    m.create_target_topic("fid.bykey", 5);
    let records = fidelity_records();
    produce(m.source(), "fid", &records);

    // The source holds what was produced (otherwise the rest proves nothing).
    let source = read_topic(m.source(), "fid");
    assert_eq!(source.len(), records.len());
    for p in 0..3 {
        let sent: Vec<&TestRecord> = records.iter().filter(|r| r.partition == p).collect();
        let got: Vec<&ReadRecord> = source.iter().filter(|r| r.partition == p).collect();
        assert_eq!(got.len(), sent.len(), "source partition {p}");
        for (s, g) in sent.iter().zip(&got) {
            assert_eq!(g.key, s.key, "source {p}/{}: key as produced", g.offset);
            assert_eq!(
                g.value, s.value,
                "source {p}/{}: value as produced",
                g.offset
            );
            assert_eq!(
                g.headers,
                raw_headers(s),
                "source {p}/{}: headers as produced",
                g.offset
            );
            assert_eq!(g.timestamp, Timestamp::CreateTime(s.timestamp.unwrap()));
        }
    }
    let by_offset: BTreeMap<(i32, i64), &ReadRecord> = source
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let expected: BTreeMap<i32, std::ops::Range<i64>> = (0..3)
        .map(|p| {
            (
                p,
                0..source.iter().filter(|r| r.partition == p).count() as i64,
            )
        })
        .collect();

    let config = m.config(
        "fidelity",
        r#"
[[routes]]
name = "preserve"
source = "src"
target = "dst"
topics = ["fid"]
partitioning = "preserve"
end = "snapshot"

[[routes]]
name = "bykey"
source = "src"
target = "dst"
topics = ["fid"]
target_topic = "{topic}.bykey"
partitioning = "key"
end = "snapshot"
"#,
    );
    let report = run_to_end(&config);
    assert!(report.complete, "{}", report.table());
    assert!(report.halted.is_empty(), "{:?}", report.halted);
    assert_report_invariant(&report);
    assert_eq!(report.rows.len(), 6);
    for route in ["preserve", "bykey"] {
        for (p, r) in &expected {
            let row = row(&report, route, "fid", *p);
            assert_eq!(row.counts.read, r.end as u64, "{route} {p} read");
            assert_eq!(row.counts.acked, r.end as u64, "{route} {p} acked");
            assert_eq!(row.range, (0, r.end), "{route} {p} range");
        }
    }

    // preserve: same partition, same order, same bytes.
    let target = read_topic(m.target(), "fid");
    assert_exactly_once(&census(&target, SOURCE, "fid"), &expected);
    for p in 0..3 {
        let in_p: Vec<&ReadRecord> = target.iter().filter(|r| r.partition == p).collect();
        let mut last = -1;
        for dst in in_p {
            let (_, _, sp, so) = provenance(dst).unwrap();
            assert_eq!(
                sp, p,
                "preserve: target partition {p} holds a record of source partition {sp}"
            );
            assert!(
                so > last,
                "preserve: order kept in partition {p} ({so} after {last})"
            );
            last = so;
            assert_same_record(by_offset[&(sp, so)], dst, "fid");
        }
    }

    // key: every source record once, placed by Java's murmur2 over the target's 5 partitions.
    let keyed = read_topic(m.target(), "fid.bykey");
    assert_exactly_once(&census(&keyed, SOURCE, "fid"), &expected);
    let mut placed: BTreeMap<Vec<u8>, BTreeSet<i32>> = BTreeMap::new();
    let mut null_keys = 0;
    for dst in &keyed {
        let (_, _, sp, so) = provenance(dst).unwrap();
        let src = by_offset[&(sp, so)];
        assert_same_record(src, dst, "fid");
        match &dst.key {
            Some(k) => {
                assert_eq!(
                    dst.partition,
                    java_partition(k, 5),
                    "key {k:?} (source {sp}/{so}) is in target partition {}, Java's producer would choose {}",
                    dst.partition,
                    java_partition(k, 5)
                );
                placed.entry(k.clone()).or_default().insert(dst.partition);
            }
            None => {
                assert!((0..5).contains(&dst.partition));
                null_keys += 1;
            }
        }
    }
    assert!(null_keys > 0, "the data has null keys");
    for (k, parts) in &placed {
        assert_eq!(
            parts.len(),
            1,
            "key {k:?} landed in several partitions: {parts:?}"
        );
    }
    let used: BTreeSet<i32> = placed.values().flatten().copied().collect();
    assert!(
        used.len() >= 4,
        "keys spread over the target partitions: {used:?}"
    );
    assert!(
        placed.len() >= 30,
        "many distinct keys were checked ({})",
        placed.len()
    );

    let v = verify_clean(&config, true);
    assert_eq!(v.rows.len(), 6);
    for r in &v.rows {
        assert_eq!(r.source_records, r.target_records, "{}", v.table());
    }
    let total: u64 = v.rows.iter().map(|r| r.source_records).sum();
    assert_eq!(total, 2 * records.len() as u64);
}

/// Test 2: a clean stop in the middle writes a checkpoint that covers exactly what the
/// target holds; a second run resumes there, and the result has no loss and no duplicate.
#[test]
fn stop_midway_then_resume_loses_and_duplicates_nothing() {
    const PARTS: i32 = 8;
    const PER: i64 = 5_000;
    let m = Mirror::start(&[("resume", PARTS)]);
    produce_numbered(
        m.source(),
        "resume",
        PARTS,
        0..PER as u64,
        1_700_000_000_000,
    );
    let config = m.config(
        "resume",
        r#"
[[routes]]
name = "r"
source = "src"
target = "dst"
topics = ["resume"]
end = "snapshot"
max_messages_per_sec = 10000
"#,
    );

    let run = spawn_run(&config);
    wait_until("8,000 records checkpointed", WAIT, || {
        checkpoint_progress(&config) >= 8_000
    });
    run.request_stop();
    let first = run.join(WAIT);
    assert!(first.stopped, "the run saw the stop");
    assert!(
        !first.complete,
        "stopped before the end:\n{}",
        first.table()
    );
    assert!(first.halted.is_empty(), "{:?}", first.halted);
    assert_report_invariant(&first);

    let cp1 = load_checkpoint(&config).expect("a checkpoint after a clean stop");
    let pos1: BTreeMap<i32, i64> = (0..PARTS)
        .map(|p| {
            (
                p,
                cp1.get("r", "resume", p)
                    .expect("partition checkpointed")
                    .next_offset,
            )
        })
        .collect();
    let done1: i64 = pos1.values().sum();
    assert!(
        (8_000..PARTS as i64 * PER).contains(&done1),
        "checkpoint covers {done1} of {} records",
        PARTS as i64 * PER
    );
    for (p, pos) in &pos1 {
        let row = row(&first, "r", "resume", *p);
        assert_eq!(
            row.range.1, *pos,
            "report and checkpoint agree on partition {p}"
        );
        assert_eq!(
            row.counts.acked as i64, *pos,
            "partition {p}: acked = checkpointed position"
        );
        assert_eq!(
            row.counts.read, row.counts.acked,
            "partition {p}: nothing pending after the drain"
        );
    }
    // Drained before the final checkpoint: the target holds exactly [0, position) of each
    // partition, nothing beyond it (which a resume would then duplicate).
    let after_stop = read_topic(m.target(), "resume");
    let expected1: BTreeMap<i32, std::ops::Range<i64>> =
        pos1.iter().map(|(p, o)| (*p, 0..*o)).collect();
    assert_exactly_once(&census(&after_stop, SOURCE, "resume"), &expected1);

    let second = run_to_end(&config);
    assert!(second.complete && !second.stopped, "{}", second.table());
    assert_report_invariant(&second);
    for p in 0..PARTS {
        let row = row(&second, "r", "resume", p);
        assert_eq!(
            row.range,
            (pos1[&p], PER),
            "partition {p} resumed at its checkpoint"
        );
        assert_eq!(
            row.counts.read as i64,
            PER - pos1[&p],
            "partition {p}: read only the rest"
        );
        assert_eq!(row.counts.retried, 0);
    }
    assert_eq!(
        first.totals.read + second.totals.read,
        (PARTS as i64 * PER) as u64
    );

    let cp2 = load_checkpoint(&config).unwrap();
    for p in 0..PARTS {
        let pc = cp2.get("r", "resume", p).unwrap();
        assert_eq!((pc.first_offset, pc.next_offset), (0, PER), "partition {p}");
        assert_eq!(
            pc.target,
            [(p, [0, PER - 1])].into_iter().collect(),
            "partition {p} target range"
        );
    }
    let target = read_topic(m.target(), "resume");
    assert_eq!(target.len() as i64, PARTS as i64 * PER);
    assert_exactly_once(
        &census(&target, SOURCE, "resume"),
        &same_range(PARTS, 0..PER),
    );
    let v = verify_clean(&config, true);
    assert!(v
        .rows
        .iter()
        .all(|r| r.source_records == PER as u64 && r.target_records == PER as u64));
}

/// Test 3: `end = "snapshot"` ends at the high watermarks captured when the run starts,
/// although a producer keeps appending to the source while the copy runs.
///
/// The producer holds still only while the run plans, so the snapshot is known exactly
/// (`snapshot`, read by the test); then it appends throughout the copy.
#[test]
fn snapshot_end_ignores_records_appended_during_the_run() {
    const PARTS: i32 = 4;
    const RUNNING: u8 = 0;
    const PAUSE: u8 = 1;
    const PAUSED: u8 = 2;
    const QUIT: u8 = 3;
    let m = Mirror::start(&[("snap", PARTS)]);
    // 1 KB records and small fetches (below): librdkafka's prefetch (1 MB a partition here)
    // cannot reach the snapshot before the appends start, so records past the snapshot
    // arrive in the same fetches as the last ones below it, not only after end-of-partition.
    let big = |p: i32, i: u64| {
        let mut r = numbered_record(p, i, 1_700_000_000_000);
        r.value.as_mut().unwrap().resize(1_000, b'.');
        r
    };
    let seed: Vec<TestRecord> = (0..2_000)
        .flat_map(|i| (0..PARTS).map(move |p| (p, i)))
        .map(|(p, i)| big(p, i))
        .collect();
    produce(m.source(), "snap", &seed);

    // Appends 20 records per partition every ~20ms; acknowledges a pause once its last
    // batch is flushed.
    let state = Arc::new(AtomicU8::new(RUNNING));
    let appended = Arc::new(AtomicU64::new(0));
    let writer = {
        let (bootstrap, state, n) = (m.source().to_string(), state.clone(), appended.clone());
        std::thread::spawn(move || {
            let p = DataProducer::new(&bootstrap);
            let mut i = 2_000u64;
            loop {
                match state.load(Ordering::SeqCst) {
                    QUIT => return,
                    PAUSE => state.store(PAUSED, Ordering::SeqCst),
                    PAUSED => {}
                    _ => {
                        for part in 0..PARTS {
                            for j in 0..20 {
                                p.send("snap", &big(part, i + j));
                            }
                        }
                        i += 20;
                        p.flush();
                        n.fetch_add(20 * PARTS as u64, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    wait_until("the background producer to append", WAIT, || {
        appended.load(Ordering::SeqCst) > 0
    });
    state.store(PAUSE, Ordering::SeqCst);
    wait_until("the background producer to pause", WAIT, || {
        state.load(Ordering::SeqCst) == PAUSED
    });
    let snapshot = highs(m.source(), "snap", PARTS);

    let config = m.config(
        "snapshot",
        r#"
[[routes]]
name = "snap"
source = "src"
target = "dst"
topics = ["snap"]
end = "snapshot"
max_messages_per_sec = 4000

[limits]
max_in_flight_bytes_per_partition = "1MiB" # also sizes the reader's prefetch queue

[clusters.src.properties]
"fetch.message.max.bytes" = 65536
"#,
    );
    let run = spawn_run(&config);
    // The first checkpoint is written after planning: the snapshot is taken by then.
    wait_until("the first checkpoint", WAIT, || {
        load_checkpoint(&config).is_some()
    });
    state.store(RUNNING, Ordering::SeqCst);
    let resumed_at = appended.load(Ordering::SeqCst);
    wait_until("appends during the copy", WAIT, || {
        appended.load(Ordering::SeqCst) >= resumed_at + 100 * PARTS as u64
    });
    let during = highs(m.source(), "snap", PARTS);
    let progress_during = checkpoint_progress(&config);
    let report = run.join(WAIT);
    state.store(QUIT, Ordering::SeqCst);
    writer.join().expect("background producer");

    let total: i64 = snapshot.iter().sum();
    assert!(
        progress_during < total,
        "the source grew while the copy was still going ({progress_during} of {total} done)"
    );
    assert!(report.complete, "{}", report.table());
    assert_report_invariant(&report);
    let cp = load_checkpoint(&config).unwrap();
    let target = read_topic(m.target(), "snap");
    let mut expected = BTreeMap::new();
    for p in 0..PARTS {
        let snap = snapshot[p as usize];
        assert!(
            during[p as usize] >= snap + 100,
            "partition {p}: appended past the snapshot"
        );
        let pc = cp.get("snap", "snap", p).unwrap();
        assert_eq!(
            pc.next_offset, snap,
            "partition {p}: checkpoint ends at the snapshot"
        );
        let row = row(&report, "snap", "snap", p);
        assert_eq!(row.range, (0, snap), "partition {p}");
        assert_eq!(
            row.counts.read as i64, snap,
            "partition {p}: read exactly the snapshot"
        );
        let on_target = target.iter().filter(|r| r.partition == p).count() as i64;
        assert_eq!(
            on_target, snap,
            "partition {p}: target holds exactly the snapshot"
        );
        expected.insert(p, 0..snap);
    }
    assert_exactly_once(&census(&target, SOURCE, "snap"), &expected);
    verify_clean(&config, true);
}

/// Test 4a: a route's `max_messages_per_sec` holds (lower bound on the elapsed time only).
#[test]
fn route_rate_limit_holds() {
    let m = Mirror::start(&[("rate", 3)]);
    produce_numbered(m.source(), "rate", 3, 0..1_000, 1_700_000_000_000);
    let config = m.config(
        "rate",
        r#"
[[routes]]
name = "slow"
source = "src"
target = "dst"
topics = ["rate"]
end = "snapshot"
max_messages_per_sec = 1000
"#,
    );
    let t = Instant::now();
    let report = run_to_end(&config);
    let wall = t.elapsed();
    assert!(report.complete, "{}", report.table());
    assert_report_invariant(&report);
    assert_eq!(report.totals.acked, 3_000);
    // 3,000 records at 1,000/s with a 100-record burst need at least 2.9s.
    assert!(
        report.elapsed >= Duration::from_millis(2_500),
        "copied in {:?}",
        report.elapsed
    );
    assert!(wall >= Duration::from_millis(2_500), "copied in {wall:?}");
    let target = read_topic(m.target(), "rate");
    assert_exactly_once(&census(&target, SOURCE, "rate"), &same_range(3, 0..1_000));
    verify_clean(&config, true);
}

/// Test 4b: the global `[limits] max_messages_per_sec` holds across routes.
#[test]
fn global_rate_limit_holds() {
    let m = Mirror::start(&[("grate", 2)]);
    m.create_target_topic("grate.b", 2);
    produce_numbered(m.source(), "grate", 2, 0..400, 1_700_000_000_000);
    let config = m.config(
        "grate",
        r#"
[limits]
max_messages_per_sec = 500

[[routes]]
name = "a"
source = "src"
target = "dst"
topics = ["grate"]
end = "snapshot"

[[routes]]
name = "b"
source = "src"
target = "dst"
topics = ["grate"]
target_topic = "{topic}.b"
end = "snapshot"
"#,
    );
    let report = run_to_end(&config);
    assert!(report.complete, "{}", report.table());
    assert_report_invariant(&report);
    assert_eq!(
        report.totals.acked, 1_600,
        "800 records through each of two routes"
    );
    // 800 source records read once for both routes, at 500/s with a 50-record burst: >= 1.5s.
    assert!(
        report.elapsed >= Duration::from_millis(1_400),
        "copied in {:?}",
        report.elapsed
    );
    for t in ["grate", "grate.b"] {
        let target = read_topic(m.target(), t);
        assert_exactly_once(&census(&target, SOURCE, "grate"), &same_range(2, 0..400));
    }
    verify_clean(&config, true);
}

/// Test 5: every target broker goes down for a few seconds during a run, then comes back.
/// The copy stalls, resumes and loses nothing. With the default `message.timeout.ms`
/// librdkafka rides out the outage; with a short one every delivery in flight fails and
/// kmirror itself must rewind and produce again.
fn target_outage(job: &str, target_properties: &str) -> kmirror::copy::RunReport {
    const PARTS: i32 = 4;
    const PER: i64 = 5_000;
    let m = Mirror::start(&[("outage", PARTS)]);
    produce_numbered(
        m.source(),
        "outage",
        PARTS,
        0..PER as u64,
        1_700_000_000_000,
    );
    let config = m.config(
        job,
        &format!(
            r#"
[[routes]]
name = "o"
source = "src"
target = "dst"
topics = ["outage"]
end = "snapshot"
max_messages_per_sec = 8000

[clusters.dst.properties]
{target_properties}
"#
        ),
    );
    let run = spawn_run(&config);
    wait_until("2,000 records checkpointed", WAIT, || {
        checkpoint_progress(&config) >= 2_000
    });
    m.all_brokers(TARGET_IDX, false);
    std::thread::sleep(Duration::from_secs(4));
    // Without the outage the 20,000 records take 2.5s: still running proves the fault bit.
    let during = checkpoint_progress(&config);
    assert!(
        !run.is_finished(),
        "the run finished while every target broker was down"
    );
    assert!(
        during < PARTS as i64 * PER,
        "checkpoint covers {during} records during the outage"
    );
    m.all_brokers(TARGET_IDX, true);
    let report = run.join(Duration::from_secs(90));

    assert!(report.complete, "{}", report.table());
    assert!(report.halted.is_empty(), "{:?}", report.halted);
    assert_report_invariant(&report);
    for p in 0..PARTS {
        let row = row(&report, "o", "outage", p);
        assert_eq!(row.range, (0, PER));
        assert_eq!(row.counts.read as i64, PER, "partition {p}");
        assert_eq!(row.counts.acked as i64, PER, "partition {p}");
    }
    let target = read_topic(m.target(), "outage");
    let dups = assert_at_least_once(
        &census(&target, SOURCE, "outage"),
        &same_range(PARTS, 0..PER),
    );
    eprintln!(
        "{job}: {dups} duplicate deliveries (at-least-once), {} records re-read",
        report.totals.retried
    );
    let v = verify_clean(&config, false);
    assert_eq!(
        v.rows.iter().map(|r| r.duplicates).sum::<u64>(),
        dups,
        "verify counts the same duplicates"
    );
    report
}

#[test]
fn target_outage_loses_nothing() {
    target_outage("outage", "");
}

#[test]
fn target_outage_past_message_timeout_loses_nothing() {
    let report = target_outage("outage-timeout", r#""message.timeout.ms" = 1500"#);
    assert!(
        report.totals.retried > 0,
        "deliveries timed out during the outage, so kmirror re-read and produced again:\n{}",
        report.table()
    );
}

/// Test 6: transport errors on the source's Fetch requests (the mock drops the connection)
/// during a run: the reader reconnects and resumes; nothing is lost or duplicated.
#[test]
fn source_fetch_transport_errors_lose_nothing() {
    const PARTS: i32 = 4;
    const PER: i64 = 5_000;
    let m = Mirror::start(&[("flaky", PARTS)]);
    produce_numbered(m.source(), "flaky", PARTS, 0..PER as u64, 1_700_000_000_000);
    let config = m.config(
        "flaky",
        r#"
[[routes]]
name = "f"
source = "src"
target = "dst"
topics = ["flaky"]
end = "snapshot"
max_messages_per_sec = 10000
"#,
    );
    let run = spawn_run(&config);
    for at in [2_000, 8_000] {
        wait_until("progress", WAIT, || checkpoint_progress(&config) >= at);
        assert!(!run.is_finished(), "the faults are injected during the run");
        m.control(Control::RequestErrors {
            cluster: SOURCE_IDX,
            api: RDKafkaApiKey::Fetch,
            error: RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
            count: 5,
        });
    }
    let report = run.join(Duration::from_secs(90));
    // Errors the run did not meet would cut the connections of the checks below (each
    // one doubles librdkafka's reconnect backoff, and verify gives up after 10s).
    m.control(Control::ClearRequestErrors {
        cluster: SOURCE_IDX,
        api: RDKafkaApiKey::Fetch,
    });
    assert!(report.complete, "{}", report.table());
    assert!(report.halted.is_empty(), "{:?}", report.halted);
    assert_report_invariant(&report);
    assert_eq!(report.totals.read, (PARTS as i64 * PER) as u64);
    assert_eq!(report.totals.acked, (PARTS as i64 * PER) as u64);
    let target = read_topic(m.target(), "flaky");
    // A source-side fault never makes the engine produce a record twice.
    assert_exactly_once(
        &census(&target, SOURCE, "flaky"),
        &same_range(PARTS, 0..PER),
    );
    verify_clean(&config, true);
}

/// Test 7a: `start = <offset>` copies from that offset in every partition.
#[test]
fn start_at_offset() {
    let m = Mirror::start(&[("pos", 3)]);
    m.create_target_topic("pos.from300", 3);
    produce_numbered(m.source(), "pos", 3, 0..1_000, 1_700_000_000_000);
    let config = m.config(
        "from300",
        r#"
[[routes]]
name = "from300"
source = "src"
target = "dst"
topics = ["pos"]
target_topic = "{topic}.from300"
start = 300
end = "snapshot"
"#,
    );
    let report = run_to_end(&config);
    assert!(report.complete, "{}", report.table());
    assert_report_invariant(&report);
    let cp = load_checkpoint(&config).unwrap();
    for p in 0..3 {
        let row = row(&report, "from300", "pos", p);
        assert_eq!(row.range, (300, 1_000));
        assert_eq!(row.counts.read, 700, "partition {p}");
        let pc = cp.get("from300", "pos", p).unwrap();
        assert_eq!((pc.first_offset, pc.next_offset), (300, 1_000));
    }
    let target = read_topic(m.target(), "pos.from300");
    assert_eq!(target.len(), 2_100);
    assert_exactly_once(&census(&target, SOURCE, "pos"), &same_range(3, 300..1_000));
    let v = verify_clean(&config, true);
    assert!(v.rows.iter().all(|r| r.source_records == 700));
}

/// Test 7b: `start = "latest"` with `end = <offset>` copies only records appended after
/// the run started, up to (not including) the end offset.
#[test]
fn start_latest_until_end_offset() {
    let m = Mirror::start(&[("live", 3)]);
    produce_numbered(m.source(), "live", 3, 0..1_000, 1_700_000_000_000);
    let config = m.config(
        "latest",
        r#"
[[routes]]
name = "latest"
source = "src"
target = "dst"
topics = ["live"]
start = "latest"
end = 1200
"#,
    );
    let run = spawn_run(&config);
    // The first checkpoint is written after planning: "latest" is resolved by then.
    wait_until("the first checkpoint", WAIT, || {
        load_checkpoint(&config).is_some()
    });
    assert!(!run.is_finished(), "the run waits for offset 1200");
    produce_numbered(m.source(), "live", 3, 1_000..1_300, 1_700_000_000_000);
    let report = run.join(WAIT);
    assert!(report.complete, "{}", report.table());
    assert_report_invariant(&report);
    let cp = load_checkpoint(&config).unwrap();
    for p in 0..3 {
        let row = row(&report, "latest", "live", p);
        assert_eq!(row.range, (1_000, 1_200), "partition {p}");
        assert_eq!(row.counts.read, 200, "partition {p}");
        let pc = cp.get("latest", "live", p).unwrap();
        assert_eq!((pc.first_offset, pc.next_offset), (1_000, 1_200));
    }
    let target = read_topic(m.target(), "live");
    assert_eq!(target.len(), 600);
    assert_exactly_once(
        &census(&target, SOURCE, "live"),
        &same_range(3, 1_000..1_200),
    );
    verify_clean(&config, true);
}

/// Test 7c: a timestamp start cannot be resolved on the mock (it answers -1 to every
/// timestamp lookup): the run refuses with a clear error instead of copying a wrong range.
#[test]
fn start_timestamp_is_refused_on_the_mock() {
    let m = Mirror::start(&[("ts", 2)]);
    // Records stamped now: a lookup for 2020 or for an hour ago must find offset 0.
    produce_numbered(
        m.source(),
        "ts",
        2,
        0..100,
        kmirror::config::value::now_ms(),
    );
    for (job, start) in [
        ("ts-rfc3339", "\"2020-01-01T00:00:00Z\""),
        ("ts-ago", "\"1h\""),
    ] {
        let config = m.config(
            job,
            &format!(
                r#"
[[routes]]
name = "by-time"
source = "src"
target = "dst"
topics = ["ts"]
start = {start}
end = "snapshot"
"#
            ),
        );
        let store = FileStore::new(config.checkpoint_file());
        let err = copy::run(
            &config,
            &store,
            &RunOptions::default(),
            Arc::new(AtomicBool::new(false)),
        )
        .err()
        .unwrap_or_else(|| panic!("start = {start} must be refused on the mock"));
        match &err {
            RunError::Cluster(ClusterError::TimestampUnsupported { topic, offset, .. }) => {
                assert_eq!(topic, "ts");
                assert_eq!(*offset, 99, "the last record was read to tell -1 apart");
            }
            other => panic!("start = {start}: expected TimestampUnsupported, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("cannot look up offsets by timestamp"), "{msg}");
        assert!(
            msg.contains("timestamp_from") && msg.contains("works on any broker"),
            "the refusal points at the filter that selects by time on any broker: {msg}"
        );
        assert!(
            load_checkpoint(&config).is_none(),
            "no checkpoint after a refused plan"
        );
    }
    assert_eq!(highs(m.target(), "ts", 2), vec![0, 0], "nothing was copied");
}

/// Test 8: the checkpoint takes precedence over `start`: a rerun after completion copies
/// nothing and leaves the checkpoint as it was; after appends, a rerun copies only them.
#[test]
fn checkpoint_takes_precedence_on_rerun() {
    const PARTS: i32 = 4;
    let m = Mirror::start(&[("again", PARTS)]);
    produce_numbered(m.source(), "again", PARTS, 0..500, 1_700_000_000_000);
    let config = m.config(
        "again",
        r#"
[[routes]]
name = "again"
source = "src"
target = "dst"
topics = ["again"]
start = "earliest"
end = "snapshot"
"#,
    );
    let first = run_to_end(&config);
    assert!(first.complete, "{}", first.table());
    assert_eq!(first.totals.read, 2_000);
    let cp1 = load_checkpoint(&config).unwrap();
    std::thread::sleep(Duration::from_millis(5)); // a later written_at

    let second = run_to_end(&config);
    assert!(second.complete, "{}", second.table());
    assert_report_invariant(&second);
    for r in &second.rows {
        assert_eq!(r.counts.read, 0, "{}: nothing new to read", r.source);
        assert_eq!(r.counts.produced, 0, "{}", r.source);
        assert_eq!(r.range, (500, 500), "{}", r.source);
    }
    let cp2 = load_checkpoint(&config).unwrap();
    assert_ne!(
        cp2.written_at, cp1.written_at,
        "the checkpoint was rewritten"
    );
    let mut cp2_same_time = cp2.clone();
    cp2_same_time.written_at = cp1.written_at.clone();
    assert_eq!(cp2_same_time, cp1, "unchanged except written_at");
    assert_eq!(read_topic(m.target(), "again").len(), 2_000);

    produce_numbered(m.source(), "again", PARTS, 500..600, 1_700_000_000_000);
    let third = run_to_end(&config);
    assert!(third.complete, "{}", third.table());
    assert_report_invariant(&third);
    for p in 0..PARTS {
        let row = row(&third, "again", "again", p);
        assert_eq!(row.range, (500, 600), "partition {p}");
        assert_eq!(
            row.counts.read, 100,
            "partition {p}: only the appended records"
        );
        let pc = load_checkpoint(&config).unwrap();
        let pc = pc.get("again", "again", p).unwrap();
        assert_eq!((pc.first_offset, pc.next_offset), (0, 600));
        assert_eq!(pc.target, [(p, [0, 599])].into_iter().collect());
    }
    let target = read_topic(m.target(), "again");
    assert_exactly_once(
        &census(&target, SOURCE, "again"),
        &same_range(PARTS, 0..600),
    );
    verify_clean(&config, true);
}

/// Issue 8 item 5: `--once` ends each partition at whichever comes first, the route's own
/// `end` (offset or timestamp) or the snapshot; it never widens a replay window to the
/// whole topic. Three routes read the same topic: an offset window, a timestamp window,
/// and an offset end beyond the snapshot (which stops at the snapshot).
#[test]
fn once_keeps_each_routes_end_and_stops_at_the_snapshot() {
    const TS: i64 = 1_700_000_000_000;
    let m = Mirror::start(&[("window", 2)]);
    produce_numbered(m.source(), "window", 2, 0..1_000, TS);
    for t in ["by-offset", "by-time", "past-snapshot"] {
        m.create_target_topic(t, 2);
    }
    let until = kmirror::config::value::format_ms(TS + 700);
    let config = m.config(
        "window",
        &format!(
            r#"
[[routes]]
name = "by-offset"
source = "src"
target = "dst"
topics = ["window"]
target_topic = "{{route}}"
start = 200
end = 500

[[routes]]
name = "by-time"
source = "src"
target = "dst"
topics = ["window"]
target_topic = "{{route}}"
end = "{until}"

[[routes]]
name = "past-snapshot"
source = "src"
target = "dst"
topics = ["window"]
target_topic = "{{route}}"
end = 5000
"#
        ),
    );
    let store = FileStore::new(config.checkpoint_file());
    let stop = Arc::new(AtomicBool::new(false));
    let (c, flag) = (config.clone(), stop.clone());
    let h = std::thread::spawn(move || {
        let opts = RunOptions {
            once: true,
            ..Default::default()
        };
        copy::run(&c, &FileStore::new(c.checkpoint_file()), &opts, flag)
    });
    let started = Instant::now();
    while !h.is_finished() && started.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let report = h.join().expect("run thread").expect("run");
    assert!(report.complete, "{}", report.table());
    assert_report_invariant(&report);
    let cp = kmirror::checkpoint::CheckpointStore::load(&store)
        .unwrap()
        .unwrap();
    for (route, window) in [
        ("by-offset", 200..500),
        ("by-time", 0..700),
        ("past-snapshot", 0..1_000),
    ] {
        for p in 0..2 {
            let r = row(&report, route, "window", p);
            assert_eq!(r.range, (window.start, window.end), "{route} partition {p}");
            let pc = cp.get(route, "window", p).unwrap();
            assert_eq!(
                pc.next_offset, window.end,
                "{route} partition {p} checkpoint"
            );
        }
        let target = read_topic(m.target(), route);
        assert_exactly_once(
            &census(&target, SOURCE, "window"),
            &same_range(2, window.clone()),
        );
    }
    verify_clean(&config, true);
}
