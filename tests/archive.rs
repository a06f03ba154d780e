//! Dumping topics into an archive (`[clusters.NAME] archive = "dir"` as a route's target):
//! every record kept byte for byte (read back with `PartitionReader`), the checkpoint only
//! ever covering committed segments, and a dump killed with SIGKILL resumed without gaps or
//! duplicates. The source is a mock cluster hosted by this test process; `kmirror` runs as
//! a subprocess.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cli::{json_with_schema, km, km_env, s, write, Running};
use common::{produce, read_partition, Mirror, TestRecord, PROVENANCE};
use kmirror::archive::{ArchivedRecord, PartitionReader, TsType};
use rdkafka::Timestamp;

const T: Duration = Duration::from_secs(120);

/// A routing file dumping topic `t` of the source cluster into `<dir>/archive`.
fn routing(m: &Mirror, extra: &str, checkpoints: &str) -> PathBuf {
    routing_to(m, "archive", extra, checkpoints)
}

/// As `routing`, into the archive `archive` (a directory or an `s3://` URL).
fn routing_to(m: &Mirror, archive: &str, extra: &str, checkpoints: &str) -> PathBuf {
    write(
        m.dir.path(),
        "dump.toml",
        &format!(
            r#"
[checkpoints]
dir = "{dir}/checkpoints"
job = "dump"
{checkpoints}

[clusters.src]
bootstrap = "{src}"

[clusters.vault]
archive = "{archive}"

[[routes]]
name = "keep"
source = "src"
target = "vault"
topics = ["t"]
{extra}
"#,
            dir = m.dir.path().display(),
            src = m.source(),
        ),
    )
}

fn archived(root: &Path, partition: i32) -> Vec<ArchivedRecord> {
    let r = PartitionReader::open(&kmirror::archive::Root::dir(root), "t", partition)
        .expect("open the archived partition");
    r.records(0)
        .collect::<Result<Vec<_>, _>>()
        .expect("every segment reads and verifies")
}

/// Every kind of record a topic can hold, dumped with `run --once` and read back from the
/// archive: keys, values (null vs empty), headers (order, duplicates, null values),
/// timestamps and their type, and offsets are the source's; the provenance header is
/// appended; the summary and the checkpoint say every record was copied.
#[test]
fn a_dump_keeps_every_record_byte_for_byte() {
    let m = Mirror::start(&[("t", 2)]);
    let records = varied_records(200, 2);
    produce(m.source(), "t", &records);
    let cfg = routing(&m, "", "");
    let c = km(&["check", "-c", s(&cfg)], T);
    c.expect_code(0, "check");
    let dir = m.dir.path().join("archive");
    assert!(
        c.stdout
            .contains(&format!("archive vault: {}", dir.display())),
        "{}",
        c.stdout
    );
    // The JSON plan names the archive too (it is not a cluster of brokers).
    let j = km(&["check", "-c", s(&cfg), "--output", "json"], T);
    j.expect_code(0, "check --output json");
    let j = json_with_schema(&j.stdout, "check-plan.schema.json");
    assert_eq!(
        j["routing_file"]["archives"],
        serde_json::json!([{ "name": "vault", "dir": dir.display().to_string() }]),
        "{j:#}"
    );
    assert!(
        c.stdout.contains("vault:t/1"),
        "the plan names the archive: {}",
        c.stdout
    );

    let r = km(&["run", "-c", s(&cfg), "--once", "--output", "json"], T);
    r.expect_code(0, "run --once into an archive");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(j["verdict"], "complete", "{j:#}");
    assert_eq!(j["totals"]["read"], 200, "{j:#}");
    assert_eq!(j["totals"]["acked"], 200, "{j:#}");

    let root = m.dir.path().join("archive");
    assert!(root.join("FORMAT").exists(), "the archive is made");
    let mut next_offsets = BTreeMap::new();
    for p in 0..2 {
        let source = read_partition(m.source(), "t", p);
        let got = archived(&root, p);
        assert_eq!(got.len(), source.len(), "partition {p}");
        assert_eq!(source.len(), 100);
        for (a, src) in got.iter().zip(&source) {
            assert_eq!(a.offset, src.offset);
            assert_eq!(a.key, src.key, "key at {}", a.offset);
            assert_eq!(a.value, src.value, "value at {}", a.offset);
            let (ts_type, ts) = match src.timestamp {
                Timestamp::CreateTime(t) => (TsType::Create, t),
                Timestamp::LogAppendTime(t) => (TsType::LogAppend, t),
                Timestamp::NotAvailable => (TsType::None, -1),
            };
            assert_eq!((a.ts_type, a.timestamp), (ts_type, ts), "at {}", a.offset);
            let (last, kept) = a.headers.split_last().expect("a provenance header");
            assert_eq!(kept, &src.headers[..], "headers at {}", a.offset);
            assert_eq!(last.0, PROVENANCE.as_bytes());
            assert_eq!(
                last.1.as_deref(),
                Some(format!("keep@src/t/{p}/{}", a.offset).as_bytes()),
                "provenance at {}",
                a.offset
            );
        }
        next_offsets.insert(p, 100);
    }
    // The checkpoint is past every record.
    let cp = std::fs::read_to_string(m.dir.path().join("checkpoints/dump.checkpoint.json"))
        .expect("a checkpoint");
    assert_eq!(
        common::cli::checkpoint_file_sum(&m.dir.path().join("checkpoints/dump.checkpoint.json")),
        200,
        "{cp}"
    );

    // `verify` compares the archive with its source, record by record where it must.
    let v = km(&["verify", "-c", s(&cfg)], T);
    v.expect_code(0, "verify of a route into an archive");
    assert!(
        v.stdout
            .contains("verified 2 partitions: every source record is on the target"),
        "{}",
        v.stdout
    );

    // Run again: nothing new is written, nothing is duplicated.
    let again = km(&["run", "-c", s(&cfg), "--once"], T);
    again.expect_code(0, "the second run");
    for p in 0..2 {
        assert_eq!(
            archived(&root, p).len(),
            100,
            "partition {p} after a second run"
        );
    }

    // Without its checkpoint (lost, or behind the archive after a crash), a dump reads
    // everything again and writes none of it twice: the archive already holds it.
    std::fs::remove_file(m.dir.path().join("checkpoints/dump.checkpoint.json")).unwrap();
    let r = km(&["run", "-c", s(&cfg), "--once", "--output", "json"], T);
    r.expect_code(0, "a run without the checkpoint");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["acked"], 200, "{j:#}");
    for p in 0..2 {
        let offsets: Vec<i64> = archived(&root, p).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..100).collect::<Vec<i64>>(), "partition {p}");
    }
}

/// `kill -9` in the middle of a dump, then runs until it is done: every offset exactly once
/// in the archive, no uncommitted file left, every segment verifies.
#[test]
fn a_dump_killed_mid_way_resumes_without_gaps_or_duplicates() {
    let m = Mirror::start(&[("t", 2)]);
    let n = 30_000u64;
    common::produce_numbered(m.source(), "t", 2, 0..n / 2, 1_700_000_000_000);
    let cfg = routing(&m, "max_messages_per_sec = 6000", "interval = \"200ms\"");
    let cp = m.dir.path().join("checkpoints/dump.checkpoint.json");
    let mut kills = 0;
    let root = m.dir.path().join("archive");
    let mut checked = 0;
    let mut leftovers = 0;
    for round in 0..3 {
        let mut r = Running::spawn(&["run", "-c", s(&cfg), "--once"]);
        let before = common::cli::checkpoint_file_sum(&cp);
        common::wait_until("the dump checkpoints progress", T, || {
            checkpoint_covers_only_the_archive(&cp, &root);
            checked += 1;
            common::cli::checkpoint_file_sum(&cp) > before || r.child.try_wait().unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(300 + 200 * round));
        if r.child.try_wait().unwrap().is_none() {
            r.child.kill().unwrap();
            let _ = r.child.wait();
            kills += 1;
            leftovers += uncommitted_files(&root);
        }
        checkpoint_covers_only_the_archive(&cp, &root);
    }
    eprintln!("{kills} kills leaving {leftovers} uncommitted segment files, the checkpoint checked against the archive {checked} times");
    // The kills hit open segments: the case the next run's cleanup and skipping is for.
    assert!(leftovers >= 1, "no kill left an uncommitted segment");
    assert!(kills >= 1, "the dump was never killed mid-way");
    let done = km(&["run", "-c", s(&cfg), "--once"], T);
    done.expect_code(0, "the run after the kills");
    assert_eq!(common::cli::checkpoint_file_sum(&cp), n as i64);
    for p in 0..2 {
        let got = archived(&root, p);
        let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
        let expected: Vec<i64> = (0..(n / 2) as i64).collect();
        assert_eq!(
            offsets.len(),
            expected.len(),
            "partition {p} after {kills} kills"
        );
        assert_eq!(
            offsets, expected,
            "each offset once, in order (partition {p})"
        );
        let source = read_partition(m.source(), "t", p);
        for (a, src) in got.iter().zip(&source) {
            assert_eq!(
                (&a.key, &a.value),
                (&src.key, &src.value),
                "at {}",
                a.offset
            );
        }
        for f in std::fs::read_dir(root.join("t").join(p.to_string())).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().to_string();
            assert!(
                name.ends_with(".seg.zst") || name.ends_with(".json"),
                "an uncommitted file is left: {name}"
            );
        }
    }
}

/// The checkpoint never claims a record the archive does not hold: each partition's
/// checkpointed position is at most where its committed segments end. The checkpoint is
/// read first: the archive only grows.
fn checkpoint_covers_only_the_archive(cp: &Path, root: &Path) {
    let Ok(text) = std::fs::read_to_string(cp) else {
        return;
    };
    let Ok(j) = serde_json::from_str::<serde_json::Value>(&text) else {
        return; // being replaced right now
    };
    for p in 0..2 {
        let Some(next) = j["checkpoint"]["routes"]["keep"]["partitions"][format!("t/{p}")]
            ["next_offset"]
            .as_i64()
        else {
            continue;
        };
        let held = PartitionReader::open(&kmirror::archive::Root::dir(root), "t", p)
            .ok()
            .and_then(|r| r.manifests().last().map(|m| m.next_offset))
            .unwrap_or(0);
        assert!(
            next <= held,
            "partition {p}: the checkpoint says {next}, the archive's committed segments end at {held}"
        );
    }
}

/// A dump keeps what a route does: the filter drops records (counted), `validate` sends
/// invalid ones to the dead-letter topic on a real cluster, the headers transform applies;
/// the archive holds exactly the rest and the summary accounts for every record.
#[test]
fn a_dump_filters_validates_and_dead_letters_to_a_cluster() {
    let m = Mirror::start(&[("t", 2), ("dlq", 1)]);
    let mut records = Vec::new();
    for i in 0..120u32 {
        let value = match i % 4 {
            0 => b"not json".to_vec(),
            1 => format!("{{\"tenant\": \"other\", \"n\": {i}}}").into_bytes(),
            _ => format!("{{\"tenant\": \"acme\", \"n\": {i}}}").into_bytes(),
        };
        records.push(TestRecord {
            partition: (i % 2) as i32,
            key: Some(i.to_string().into_bytes()),
            value: Some(value),
            headers: vec![("drop-me".into(), Some(b"x".to_vec()))],
            timestamp: Some(1_700_000_000_000 + i as i64),
        });
    }
    produce(m.source(), "t", &records);
    let cfg = routing(
        &m,
        &format!(
            r#"validate = {{ json = true }}
filter = {{ not = {{ json = "$.tenant", equals = "other" }} }}
on_error = "dead_letter"
dead_letter = {{ cluster = "dst", topic = "dlq" }}
headers = {{ drop = ["drop-me"] }}

[clusters.dst]
bootstrap = "{}""#,
            m.target()
        ),
        "",
    );
    let r = km(&["run", "-c", s(&cfg), "--once", "--output", "json"], T);
    r.expect_code(0, "run --once into an archive with a dead-letter topic");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["read"], 120, "{j:#}");
    assert_eq!(j["totals"]["filtered"], 30, "{j:#}");
    assert_eq!(j["totals"]["dead_lettered"], 30, "{j:#}");
    assert_eq!(j["totals"]["acked"], 60, "{j:#}");

    let root = m.dir.path().join("archive");
    let mut kept = 0;
    for p in 0..2 {
        for a in archived(&root, p) {
            let v = String::from_utf8(a.value.clone().unwrap()).unwrap();
            assert!(v.contains("\"acme\""), "only acme records archived: {v}");
            assert!(
                a.headers.iter().all(|(k, _)| k.as_slice() != b"drop-me"),
                "the headers transform applies at {}",
                a.offset
            );
            kept += 1;
        }
    }
    assert_eq!(kept, 60);
    let dead = common::read_topic(m.target(), "dlq");
    assert_eq!(dead.len(), 30);
    assert!(dead
        .iter()
        .all(|d| d.value.as_deref() == Some(&b"not json"[..])));

    // verify accounts for every source record: archived, filtered or dead-lettered.
    let v = km(&["verify", "-c", s(&cfg), "--output", "json"], T);
    v.expect_code(0, "verify of a filtered, dead-lettering dump");
    let j = json_with_schema(&v.stdout, "verify-report.schema.json");
    let (mut dl, mut target) = (0, 0);
    for row in j["routes"][0]["partitions"].as_array().unwrap() {
        assert_eq!(row["verdict"], "OK", "{j:#}");
        dl += row["counts"]["dead_lettered"].as_u64().unwrap();
        target += row["counts"]["target_records"].as_u64().unwrap();
    }
    assert_eq!((dl, target), (30, 60), "{j:#}");
}

/// An archive that cannot be written halts the partition, loudly, with the checkpoint left
/// where it was: nothing is acknowledged that is not in a committed segment.
#[test]
fn an_archive_that_cannot_be_written_halts_the_partition() {
    let m = Mirror::start(&[("t", 2)]);
    common::produce_numbered(m.source(), "t", 2, 0..50, 1_700_000_000_000);
    let cfg = routing(&m, "", "");
    // A file where partition 0's directory must go.
    let root = m.dir.path().join("archive");
    std::fs::create_dir_all(root.join("t")).unwrap();
    std::fs::write(root.join("t/0"), "in the way").unwrap();

    let r = km(&["run", "-c", s(&cfg), "--once", "--output", "json"], T);
    r.expect_code(1, "a run whose archive cannot be written");
    assert!(
        r.stderr.contains("cannot write to archive \"vault\""),
        "{}",
        r.stderr
    );
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    let parts = j["partitions"].as_array().unwrap();
    let state = |p: i64| {
        parts
            .iter()
            .find(|row| row["source_partition"]["partition"] == p)
            .unwrap_or_else(|| panic!("partition {p} in {j:#}"))
            .clone()
    };
    assert!(
        state(0)["state"].as_str().unwrap().starts_with("halted"),
        "{:#}",
        state(0)
    );
    assert_eq!(state(0)["counts"]["acked"], 0, "{:#}", state(0));
    assert_eq!(state(1)["state"], "done", "{:#}", state(1));
    assert_eq!(archived(&root, 1).len(), 50);
    let text =
        std::fs::read_to_string(m.dir.path().join("checkpoints/dump.checkpoint.json")).unwrap();
    let cp: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        cp["checkpoint"]["routes"]["keep"]["partitions"]["t/0"]["next_offset"], 0,
        "{cp:#}"
    );
}

/// Files in the archive's partition directories that no manifest commits (a killed
/// writer's open segment).
fn uncommitted_files(root: &Path) -> usize {
    (0..2)
        .filter_map(|p| std::fs::read_dir(root.join("t").join(p.to_string())).ok())
        .flatten()
        .filter(|f| {
            let name = f
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .to_string();
            name.contains(".tmp.")
        })
        .count()
}

/// A following dump (no `--once`): records produced while it runs are committed on the
/// checkpoint interval (the checkpoint moves without the partition ending); a reload that
/// moves the archive is refused (a cluster setting); SIGTERM commits what is open and exits 0.
#[test]
fn a_following_dump_commits_on_the_interval_and_refuses_moving_the_archive() {
    use common::cli::signal;
    let m = Mirror::start(&[("t", 2)]);
    common::produce_numbered(m.source(), "t", 2, 0..20, 1_700_000_000_000);
    let cfg = routing(&m, "", "interval = \"200ms\"");
    let cp = m.dir.path().join("checkpoints/dump.checkpoint.json");
    let run = Running::spawn(&["run", "-c", s(&cfg)]);
    common::wait_until("the first records committed", T, || {
        common::cli::checkpoint_file_sum(&cp) == 40
    });
    common::produce_numbered(m.source(), "t", 2, 20..30, 1_700_000_000_000);
    common::wait_until("records produced later committed", T, || {
        common::cli::checkpoint_file_sum(&cp) == 60
    });
    let root = m.dir.path().join("archive");
    checkpoint_covers_only_the_archive(&cp, &root);

    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("archive = \"archive\"", "archive = \"elsewhere\""),
    )
    .unwrap();
    signal(run.pid(), "-HUP");
    common::produce_numbered(m.source(), "t", 2, 30..35, 1_700_000_000_000);
    common::wait_until("the dump goes on into the same archive", T, || {
        common::cli::checkpoint_file_sum(&cp) == 70
    });
    signal(run.pid(), "-TERM");
    let done = run.wait(T);
    done.expect_code(0, "a following dump stopped by SIGTERM");
    assert!(
        done.stderr
            .lines()
            .any(|l| l.contains("reload refused") && l.contains("[clusters] changed")),
        "{}",
        done.stderr
    );
    assert!(!m.dir.path().join("elsewhere").exists());
    for p in 0..2 {
        let offsets: Vec<i64> = archived(&root, p).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..35).collect::<Vec<i64>>(), "partition {p}");
    }
}

/// Two routes writing the same archive directory would interleave their offsets: the
/// second is halted with the reason, the first completes, and the archive holds each
/// offset once.
#[test]
fn two_routes_into_one_archive_directory_halt_the_second() {
    let m = Mirror::start(&[("t", 1)]);
    common::produce_numbered(m.source(), "t", 1, 0..30, 1_700_000_000_000);
    let cfg = routing(
        &m,
        "\n[[routes]]\nname = \"again\"\nsource = \"src\"\ntopics = [\"t\"]\ntarget = \"vault\"",
        "",
    );
    let r = km(&["run", "-c", s(&cfg), "--once", "--output", "json"], T);
    r.expect_code(1, "two routes into one directory");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    let states: Vec<String> = j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states.iter().filter(|s| *s == "done").count(), 1, "{j:#}");
    assert!(
        states
            .iter()
            .any(|s| s.starts_with("halted") && s.contains("is written by another route")),
        "{j:#}"
    );
    let root = m.dir.path().join("archive");
    let r = PartitionReader::open(&kmirror::archive::Root::dir(&root), "t", 0).unwrap();
    let offsets: Vec<i64> = r.records(0).map(|r| r.unwrap().offset).collect();
    assert_eq!(offsets, (0..30).collect::<Vec<i64>>());
}

/// Memory follows `max_in_flight_bytes` however many partitions a dump writes: at most one
/// open segment (a zstd stream of a few MiB) per 4 MiB of it, opening one more commits the
/// least recently written. Records arrive interleaved over 8 partitions while the dump
/// follows; sampled meanwhile: never more uncommitted segment files than the bound (2);
/// every offset archived once.
#[test]
fn a_dump_of_many_partitions_keeps_few_segments_open() {
    use common::cli::signal;
    let m = Mirror::start(&[("t", 8)]);
    let cfg = write(
        m.dir.path(),
        "dump.toml",
        &format!(
            r#"
[checkpoints]
dir = "{dir}/checkpoints"
job = "dump"
interval = "1s"
[limits]
max_in_flight_bytes = "8MiB"
max_in_flight_bytes_per_partition = "1MiB"
[clusters.src]
bootstrap = "{src}"
[clusters.vault]
archive = "archive"
[[routes]]
name = "keep"
source = "src"
topics = ["t"]
target = "vault"
"#,
            dir = m.dir.path().display(),
            src = m.source(),
        ),
    );
    let root = m.dir.path().join("archive");
    let cp = m.dir.path().join("checkpoints/dump.checkpoint.json");
    let open_now = || -> usize {
        (0..8)
            .filter_map(|p| std::fs::read_dir(root.join("t").join(p.to_string())).ok())
            .flatten()
            .filter(|f| {
                f.as_ref()
                    .is_ok_and(|f| f.file_name().to_string_lossy().contains(".seg.zst.tmp."))
            })
            .count()
    };
    let run = Running::spawn(&["run", "-c", s(&cfg)]);
    let mut most = 0;
    for round in 0..20u64 {
        common::produce_numbered(
            m.source(),
            "t",
            8,
            round * 20..round * 20 + 20,
            1_700_000_000_000,
        );
        for _ in 0..10 {
            most = most.max(open_now());
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    common::wait_until("everything committed", T, || {
        most = most.max(open_now());
        common::cli::checkpoint_file_sum(&cp) == 8 * 400
    });
    signal(run.pid(), "-TERM");
    run.wait(T).expect_code(0, "the dump stopped by SIGTERM");
    eprintln!("at most {most} segments open at once");
    assert!(most >= 1, "never saw an open segment");
    assert!(most <= 2, "{most} segments open at once, the bound is 2");
    let mut segments = 0;
    for p in 0..8 {
        let reader = PartitionReader::open(&kmirror::archive::Root::dir(&root), "t", p).unwrap();
        segments += reader.manifests().len();
        let offsets: Vec<i64> = reader.records(0).map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, (0..400).collect::<Vec<i64>>(), "partition {p}");
    }
    eprintln!("{segments} segments");
}

/// A routing file restoring topic `t` of the archive `<dir>/archive` into the target
/// cluster (`dst`), as topic `t` (created with the archive's partition count).
fn restore_routing(m: &Mirror, extra: &str, checkpoints: &str) -> PathBuf {
    restore_routing_from(m, "archive", extra, checkpoints)
}

/// As `restore_routing`, from the archive `archive` (a directory or an `s3://` URL).
fn restore_routing_from(m: &Mirror, archive: &str, extra: &str, checkpoints: &str) -> PathBuf {
    write(
        m.dir.path(),
        "restore.toml",
        &format!(
            r#"
[checkpoints]
dir = "{dir}/checkpoints"
job = "restore"
{checkpoints}

[clusters.vault]
archive = "{archive}"

[clusters.dst]
bootstrap = "{dst}"

[[routes]]
name = "back"
source = "vault"
target = "dst"
topics = ["t"]
create_target_topics = true
{extra}
"#,
            dir = m.dir.path().display(),
            dst = m.target(),
        ),
    )
}

/// Every kind of record a topic holds (tombstones, empty values, binary keys, duplicate and
/// null headers, explicit timestamps), spread over `partitions`.
fn varied_records(n: u32, partitions: u32) -> Vec<TestRecord> {
    (0..n)
        .map(|i| {
            let p = (i % partitions) as i32;
            match i % 5 {
                0 => TestRecord {
                    partition: p,
                    key: Some(vec![0, 255, (i % 256) as u8, 0]),
                    value: None, // a tombstone
                    headers: vec![],
                    timestamp: Some(1_600_000_000_000 + i as i64),
                },
                1 => TestRecord {
                    partition: p,
                    key: None,
                    value: Some(vec![]), // empty, not null
                    headers: vec![("h".into(), None), ("h".into(), Some(vec![]))],
                    timestamp: Some(1_700_000_000_000 - i as i64),
                },
                2 => TestRecord {
                    partition: p,
                    key: Some(vec![]),
                    value: Some(vec![0xff, 0, 0xfe, b'\n']),
                    headers: vec![
                        ("dup".into(), Some(b"1".to_vec())),
                        ("other".into(), Some(vec![0, 1, 2])),
                        ("dup".into(), Some(b"2".to_vec())),
                    ],
                    timestamp: Some(1),
                },
                _ => TestRecord {
                    partition: p,
                    key: Some(format!("k{i}").into_bytes()),
                    value: Some(format!("{{\"n\": {i}}}").into_bytes()),
                    headers: vec![("n".into(), Some(i.to_string().into_bytes()))],
                    timestamp: Some(1_650_000_000_000 + i as i64),
                },
            }
        })
        .collect()
}

/// Headers without any provenance header (the dump's, kept in the archive, and the
/// restore's).
fn without_provenance(h: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    h.iter()
        .filter(|(k, _)| k.as_slice() != PROVENANCE.as_bytes())
        .cloned()
        .collect()
}

/// Asserts the restored partition `p` is the source's, record by record and in order:
/// key, value (null vs empty), headers in order (provenance aside), timestamp.
fn assert_same_partition(m: &Mirror, p: i32) {
    let source = read_partition(m.source(), "t", p);
    let restored = read_partition(m.target(), "t", p);
    assert_eq!(restored.len(), source.len(), "partition {p}: record count");
    for (r, src) in restored.iter().zip(&source) {
        let at = format!("partition {p} offset {}", src.offset);
        assert_eq!(r.offset, src.offset, "{at}: order");
        assert_eq!(r.key, src.key, "{at}: key");
        assert_eq!(r.value, src.value, "{at}: value");
        assert_eq!(
            without_provenance(&r.headers),
            src.headers,
            "{at}: headers in order"
        );
        assert_eq!(
            r.timestamp.to_millis(),
            src.timestamp.to_millis(),
            "{at}: timestamp"
        );
        let (cluster, topic, rp, ro) = common::provenance(r).expect("a provenance header");
        assert_eq!(
            (cluster.as_str(), topic.as_str(), rp, ro),
            ("vault", "t", p, src.offset)
        );
    }
}

/// Issue 14 round trip: a topic with headers (duplicate names, null values), tombstones,
/// empty values, binary keys and explicit timestamps over three partitions is dumped into
/// an archive, then restored (the archive as the route's source) into another cluster:
/// every partition is the source's record by record, the summary and checkpoint account
/// for every record, and a second run restores nothing twice.
#[test]
fn a_restore_gives_back_every_record_in_its_partition_and_order() {
    let m = Mirror::start(&[("t", 3)]);
    produce(m.source(), "t", &varied_records(300, 3));
    let dump = routing(&m, "", "");
    km(&["run", "-c", s(&dump), "--once"], T).expect_code(0, "the dump");

    let cfg = restore_routing(&m, "", "");
    let c = km(&["check", "-c", s(&cfg)], T);
    c.expect_code(0, "check of a restore");
    assert!(c.stdout.contains("vault:t/2"), "{}", c.stdout);
    let r = km(&["run", "-c", s(&cfg), "--output", "json"], T);
    r.expect_code(0, "the restore (ends by itself: an archive is finite)");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(j["verdict"], "complete", "{j:#}");
    assert_eq!(j["totals"]["read"], 300, "{j:#}");
    assert_eq!(j["totals"]["acked"], 300, "{j:#}");
    for p in 0..3 {
        assert_same_partition(&m, p);
    }
    let cp = m.dir.path().join("checkpoints/restore.checkpoint.json");
    assert_eq!(common::cli::checkpoint_file_sum(&cp), 300);

    // `checkpoints show`: the source's end is the archive's, nothing left to restore.
    let shown = km(
        &["checkpoints", "show", "-c", s(&cfg), "--output", "json"],
        T,
    );
    shown.expect_code(0, "checkpoints show of a restore");
    let j = json_with_schema(&shown.stdout, "checkpoints-show.schema.json");
    let parts = j["routes"][0]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{j:#}");
    for p in parts {
        assert_eq!(p["log_end_offset"], 100, "{p:#}");
        assert_eq!(p["lag"], 0, "{p:#}");
    }

    // `verify` reads the archive as the source side and the target record by record.
    let v = km(&["verify", "-c", s(&cfg), "--output", "json"], T);
    v.expect_code(0, "verify of a restore (archive -> cluster)");
    let j: serde_json::Value = serde_json::from_str(&v.stdout).expect("verify JSON");
    assert_eq!(j["ok"], true, "{j:#}");
    let parts = j["routes"][0]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{j:#}");
    for p in parts {
        assert_eq!(p["counts"]["source_records"], 100, "{p:#}");
        assert_eq!(p["counts"]["target_records"], 100, "{p:#}");
        assert_eq!(p["verdict"], "OK", "{p:#}");
    }

    // `purge` deletes from source logs: an archive is none, so it has nothing to do here.
    let p = km(&["purge", "-c", s(&cfg)], T);
    p.expect_code(0, "purge of a restore");
    assert!(p.stdout.contains("0 of 0 partitions"), "{}", p.stdout);

    // Run again: the checkpoint is at the archive's end, nothing is produced twice.
    let again = km(&["run", "-c", s(&cfg), "--output", "json"], T);
    again.expect_code(0, "the second restore");
    let j = json_with_schema(&again.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["read"], 0, "{j:#}");
    for p in 0..3 {
        assert_same_partition(&m, p);
    }
}

/// A segment whose bytes no longer match its manifest (one byte flipped after the dump)
/// halts its partition before any of its records is produced, naming the archive, topic,
/// partition, segment file and the offset restored up to; the other partitions restore
/// in full, and the run exits 1.
#[test]
fn a_corrupt_segment_halts_its_partition_and_produces_none_of_it() {
    let m = Mirror::start(&[("t", 2)]);
    produce(m.source(), "t", &varied_records(200, 2));
    let dump = routing(&m, "", "");
    km(&["run", "-c", s(&dump), "--once"], T).expect_code(0, "the dump");
    let root = m.dir.path().join("archive");
    let reader = PartitionReader::open(&kmirror::archive::Root::dir(&root), "t", 1).unwrap();
    let seg = reader.manifests()[0].segment.clone();
    let path = root.join("t/1").join(&seg);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let cfg = restore_routing(&m, "", "");
    let r = km(&["run", "-c", s(&cfg), "--output", "json"], T);
    r.expect_code(1, "a restore with a corrupt segment");
    let log = format!("{}{}", r.stdout, r.stderr);
    for want in [
        root.display().to_string(),
        "topic t partition 1".to_string(),
        seg.clone(),
        "restored up to offset 0".to_string(),
    ] {
        assert!(log.contains(&want), "`{want}` not said: {log}");
    }
    assert_same_partition(&m, 0);
    assert_eq!(
        common::watermarks(m.target(), "t", 1).1,
        0,
        "nothing of the corrupt segment was produced"
    );
}

/// `kill -9` during a restore (the real binary, a few kills), then a run to the end: every
/// archived record is on the target (census by provenance), duplicates only from what was
/// in flight or acknowledged after the last checkpoint, each partition in source order
/// after its duplicates, the checkpoint at the archive's end, the archive intact.
#[test]
fn a_restore_killed_mid_way_resumes_and_misses_nothing() {
    let m = Mirror::start(&[("t", 2)]);
    let n = 20_000u64;
    common::produce_numbered(m.source(), "t", 2, 0..n / 2, 1_700_000_000_000);
    let dump = routing(&m, "", "");
    km(&["run", "-c", s(&dump), "--once"], T).expect_code(0, "the dump");

    let cfg = restore_routing(&m, "max_messages_per_sec = 5000", "interval = \"200ms\"");
    let cp = m.dir.path().join("checkpoints/restore.checkpoint.json");
    let mut kills = 0;
    for round in 0..3 {
        let mut r = Running::spawn(&["run", "-c", s(&cfg)]);
        let before = common::cli::checkpoint_file_sum(&cp);
        common::wait_until("the restore checkpoints progress", T, || {
            common::cli::checkpoint_file_sum(&cp) > before || r.child.try_wait().unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(300 + 200 * round));
        if r.child.try_wait().unwrap().is_none() {
            r.child.kill().unwrap();
            let _ = r.child.wait();
            kills += 1;
        }
    }
    assert!(kills >= 1, "the restore was never killed mid-way");
    let resumed_at = common::cli::checkpoint_file_sum(&cp);
    assert!(resumed_at > 0 && resumed_at < n as i64, "{resumed_at}");
    let done = km(&["run", "-c", s(&cfg), "--output", "json"], T);
    done.expect_code(0, "the run after the kills");
    let j = json_with_schema(&done.stdout, "run-summary.schema.json");
    // The last run read from the checkpoint on: exactly what was left.
    assert_eq!(j["totals"]["read"], n as i64 - resumed_at, "{j:#}");
    assert_eq!(common::cli::checkpoint_file_sum(&cp), n as i64);
    let target = common::read_topic(m.target(), "t");
    let seen = common::census(&target, "vault", "t");
    let diff = common::CensusDiff::new(&seen, &common::same_range(2, 0..(n / 2) as i64));
    assert!(
        diff.missing.is_empty(),
        "missing after {kills} kills: {:?}",
        &diff.missing[..diff.missing.len().min(10)]
    );
    assert!(diff.extra.is_empty(), "{:?}", diff.extra);
    let dups: u32 = diff.duplicated.iter().map(|(_, k)| k - 1).sum();
    eprintln!("{kills} kills; {dups} duplicates on the target (in flight or acknowledged after a checkpoint)");
    // At most what one run had in flight or acknowledged since its last checkpoint (200 ms
    // at 5000/s, plus one rate-limited batch), per kill.
    assert!(
        dups <= kills as u32 * 3000,
        "{dups} duplicates for {kills} kills"
    );
    // Each partition: source order, except that a resumed run starts again at its checkpoint.
    for p in 0..2 {
        let offsets: Vec<i64> = target
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| common::provenance(r).unwrap().3)
            .collect();
        let restarts = offsets.windows(2).filter(|w| w[1] <= w[0]).count();
        assert!(
            restarts <= kills,
            "partition {p}: {restarts} restarts for {kills} kills"
        );
        for w in offsets.windows(2).filter(|w| w[1] > w[0]) {
            assert_eq!(w[1], w[0] + 1, "partition {p}: a gap in order");
        }
    }
    for p in 0..2 {
        assert_eq!(
            archived(&m.dir.path().join("archive"), p).len() as u64,
            n / 2
        );
    }
}

/// `verify` of a restore finds what differs between the archive and the target: a record
/// altered on the target (a copy with another value, under the same provenance) and one
/// produced twice. Exit 1, each named with its offset.
#[test]
fn verify_of_a_restore_finds_altered_and_duplicated_records() {
    let m = Mirror::start(&[("t", 2)]);
    produce(m.source(), "t", &varied_records(100, 2));
    let dump = routing(&m, "", "");
    km(&["run", "-c", s(&dump), "--once"], T).expect_code(0, "the dump");
    // Restored in two runs of the route (the first ends at offset 25), with records added
    // on the target in between: inside the range the route wrote, which verify reads.
    let cfg = restore_routing(&m, "end = 25", "");
    km(&["run", "-c", s(&cfg)], T).expect_code(0, "the restore up to offset 25");
    km(&["verify", "-c", s(&cfg)], T).expect_code(0, "verify before anything changes");

    // On the target: offset 7 of partition 1 again with another value (altered: the last
    // copy of an offset is compared), and offset 3 of partition 0 again, identical (a
    // duplicate).
    let restored = read_partition(m.target(), "t", 1);
    let at7 = restored.iter().find(|r| r.offset == 7).unwrap();
    let restored0 = read_partition(m.target(), "t", 0);
    let at3 = restored0.iter().find(|r| r.offset == 3).unwrap();
    let p = common::DataProducer::new(m.target());
    for (r, partition, value) in [
        (at7, 1, Some(b"changed".to_vec())),
        (at3, 0, at3.value.clone()),
    ] {
        let headers = r
            .headers
            .iter()
            .map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), v.clone()))
            .collect();
        p.send(
            "t",
            &TestRecord {
                partition,
                key: r.key.clone(),
                value,
                headers,
                timestamp: r.timestamp.to_millis(),
            },
        );
    }
    p.flush();
    let cfg = restore_routing(&m, "", "");
    km(&["run", "-c", s(&cfg)], T).expect_code(0, "the rest of the restore");

    let v = km(&["verify", "-c", s(&cfg), "--output", "json"], T);
    v.expect_code(1, "verify after the target changed");
    let j: serde_json::Value = serde_json::from_str(&v.stdout).expect("verify JSON");
    assert_eq!(j["ok"], false, "{j:#}");
    let parts = j["routes"][0]["partitions"].as_array().unwrap();
    let part = |n: i32| {
        parts
            .iter()
            .find(|p| p["source"] == format!("vault:t/{n}"))
            .unwrap_or_else(|| panic!("no row for partition {n}: {j:#}"))
    };
    assert_eq!(part(1)["counts"]["altered"], 1, "{j:#}");
    assert_eq!(part(1)["first_altered"], serde_json::json!([7]), "{j:#}");
    assert_eq!(part(1)["verdict"], "MISMATCH", "{j:#}");
    assert_eq!(part(0)["counts"]["duplicates"], 1, "{j:#}");
    assert_eq!(part(0)["counts"]["missing"], 0, "{j:#}");
}

/// A restore keeps its checkpoint in Kafka (`store = "kafka"`, on the target cluster) as
/// well as in a file: a route restored in two runs (the first ends at offset 3000) resumes
/// from the stored positions, and the target holds every archived record exactly once.
#[test]
fn a_restore_resumes_from_a_checkpoint_kept_in_kafka() {
    let m = Mirror::start(&[("t", 2)]);
    let n = 10_000u64;
    common::produce_numbered(m.source(), "t", 2, 0..n / 2, 1_700_000_000_000);
    let dump = routing(&m, "", "");
    km(&["run", "-c", s(&dump), "--once"], T).expect_code(0, "the dump");

    // The mock cluster cannot create a compacted topic itself (BROKERS.md).
    m.create_target_topic("kmirror-checkpoints", 1);
    let first = restore_routing(&m, "end = 3000", "store = \"kafka\"");
    let r = km(&["run", "-c", s(&first), "--output", "json"], T);
    r.expect_code(0, "the restore up to offset 3000");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["acked"], 6000, "{j:#}");
    let rest = restore_routing(&m, "", "store = \"kafka\"");
    let r = km(&["run", "-c", s(&rest), "--output", "json"], T);
    r.expect_code(0, "the rest of the restore");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(
        j["totals"]["read"],
        n as i64 - 6000,
        "resumed where the first run ended: {j:#}"
    );
    let target = common::read_topic(m.target(), "t");
    let seen = common::census(&target, "vault", "t");
    common::assert_exactly_once(&seen, &common::same_range(2, 0..(n / 2) as i64));
}

/// A restore keeps what a route does, as a copy between clusters does: the filter drops
/// records (counted), `validate` dead-letters the invalid ones (the poison replay of the
/// incident never reaches the topic), `partitioning = "key"` places records by key in a
/// target topic of another partition count (each key in one partition, in source order),
/// and `verify` of the restore says OK. Every record is accounted for.
#[test]
fn a_restore_filters_validates_dead_letters_and_partitions_by_key() {
    let m = Mirror::start(&[("t", 2), ("dlq", 1), ("by-key", 3)]);
    let mut records = Vec::new();
    for i in 0..120u32 {
        let value = match i % 4 {
            0 => b"{\"truncated".to_vec(),
            1 => format!("{{\"tenant\": \"other\", \"n\": {i}}}").into_bytes(),
            _ => format!("{{\"tenant\": \"acme\", \"n\": {i}}}").into_bytes(),
        };
        records.push(TestRecord {
            partition: (i % 2) as i32,
            key: Some(format!("k{}", i % 7).into_bytes()),
            value: Some(value),
            headers: vec![],
            timestamp: Some(1_700_000_000_000 + i as i64),
        });
    }
    produce(m.source(), "t", &records);
    km(&["run", "-c", s(&routing(&m, "", "")), "--once"], T).expect_code(0, "the dump");

    let cfg = restore_routing(
        &m,
        r#"target_topic = "by-key"
partitioning = "key"
validate = { json = true }
filter = { not = { json = "$.tenant", equals = "other" } }
on_error = "dead_letter"
dead_letter = { cluster = "dst", topic = "dlq" }"#,
        "",
    );
    let r = km(&["run", "-c", s(&cfg), "--output", "json"], T);
    r.expect_code(0, "a restore with filter, validate and dead letters");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["read"], 120, "{j:#}");
    assert_eq!(j["totals"]["filtered"], 30, "{j:#}");
    assert_eq!(j["totals"]["dead_lettered"], 30, "{j:#}");
    assert_eq!(j["totals"]["acked"], 60, "{j:#}");

    let dead = common::read_topic(m.target(), "dlq");
    assert_eq!(dead.len(), 30);
    assert!(dead
        .iter()
        .all(|d| d.value.as_deref() == Some(&b"{\"truncated"[..])));
    let restored = common::read_topic(m.target(), "by-key");
    assert_eq!(restored.len(), 60);
    let mut partition_of_key: BTreeMap<Vec<u8>, i32> = BTreeMap::new();
    let mut last: BTreeMap<(i32, Vec<u8>), i64> = BTreeMap::new();
    for r in &restored {
        let v = String::from_utf8(r.value.clone().unwrap()).unwrap();
        assert!(v.contains("\"acme\""), "only acme records restored: {v}");
        let k = r.key.clone().unwrap();
        let p = *partition_of_key.entry(k.clone()).or_insert(r.partition);
        assert_eq!(p, r.partition, "key {k:?} in one partition");
        // Per key and source partition, in source order.
        let (_, _, sp, so) = common::provenance(r).unwrap();
        if let Some(prev) = last.insert((sp, k.clone()), so) {
            assert!(so > prev, "key {k:?}: offset {so} after {prev}");
        }
    }
    assert!(
        partition_of_key
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1,
        "keys spread over the target's partitions"
    );
    let v = km(&["verify", "-c", s(&cfg)], T);
    v.expect_code(0, "verify of a restore with filter and dead letters");
}

/// Open segments are bounded (one per 4 MiB of `max_in_flight_bytes`: here one) whatever
/// the number of partitions, and a partition that halts (`on_error = "stop"` on a record
/// that is not JSON) gives its open segment up: the other partitions restore completely,
/// the halted one up to the bad record, and the run exits 1 naming it.
#[test]
fn a_restore_with_one_open_segment_finishes_every_other_partition_after_a_halt() {
    let m = Mirror::start(&[("t", 4)]);
    let mut records = Vec::new();
    for i in 0..400u32 {
        let p = (i % 4) as i32;
        let value = if p == 0 && i / 4 == 5 {
            b"not json".to_vec()
        } else {
            format!("{{\"n\": {i}}}").into_bytes()
        };
        records.push(TestRecord {
            partition: p,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(value),
            headers: vec![],
            timestamp: Some(1_700_000_000_000 + i as i64),
        });
    }
    produce(m.source(), "t", &records);
    km(&["run", "-c", s(&routing(&m, "", "")), "--once"], T).expect_code(0, "the dump");
    let cfg = restore_routing(
        &m,
        r#"validate = { json = true }
on_error = "stop"

[limits]
max_in_flight_bytes = "4MiB"
max_in_flight_bytes_per_partition = "1KiB""#,
        "",
    );
    let r = km(&["run", "-c", s(&cfg), "--output", "json"], T);
    r.expect_code(1, "a restore with a halted partition");
    assert!(
        r.stderr.contains("record at offset 5") && r.stderr.contains("on_error = \"stop\""),
        "{}",
        r.stderr
    );
    assert_eq!(
        read_partition(m.target(), "t", 0).len(),
        5,
        "up to the bad record"
    );
    for p in 1..4 {
        assert_same_partition(&m, p);
    }
}

/// A restore's window: `start` a timestamp (the first archived record at or after it, found
/// by reading the archive) and `end` an offset narrow what is restored; `verify` of the
/// window says OK and names it complete.
#[test]
fn a_restore_window_starts_at_a_timestamp_and_ends_at_an_offset() {
    let m = Mirror::start(&[("t", 2)]);
    common::produce_numbered(m.source(), "t", 2, 0..200, 1_700_000_000_000);
    km(&["run", "-c", s(&routing(&m, "", "")), "--once"], T).expect_code(0, "the dump");
    // Record i has timestamp 1_700_000_000_000 + i: 2023-11-14T22:13:20.050Z is record 50.
    let cfg = restore_routing(&m, "start = \"2023-11-14T22:13:20.050Z\"\nend = 150", "");
    let r = km(&["run", "-c", s(&cfg), "--output", "json"], T);
    r.expect_code(0, "a restore of a window");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["acked"], 200, "{j:#}");
    for p in 0..2 {
        let offsets: Vec<i64> = read_partition(m.target(), "t", p)
            .iter()
            .map(|r| common::provenance(r).unwrap().3)
            .collect();
        assert_eq!(offsets, (50..150).collect::<Vec<i64>>(), "partition {p}");
    }
    km(&["verify", "-c", s(&cfg)], T).expect_code(0, "verify of the window");
}

/// A restore from a directory that is no archive (nothing was dumped there) is refused
/// before anything is produced: exit 4 (like an unreachable cluster), naming the directory.
#[test]
fn a_restore_from_a_directory_that_is_no_archive_exits_4() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = restore_routing(&m, "", "");
    let r = km(&["run", "-c", s(&cfg)], T);
    r.expect_code(4, "a restore from a missing archive");
    let dir = m.dir.path().join("archive");
    assert!(
        r.stderr
            .contains(&format!("{} is not a kmirror archive", dir.display())),
        "{}",
        r.stderr
    );
    assert_eq!(common::watermarks(m.target(), "t", 0).1, 0);
}

/// A checkpoint names the archive it was made on (the id its `FORMAT` file was given when
/// created): pointing the archive's cluster name at a directory with no archive, or at
/// another archive, is refused with exit 5 naming the route, the archive, its directory,
/// both ids and the reset command, and nothing is written anywhere. Pointed back, the dump
/// resumes. A restore resumed against another archive is refused the same way.
#[test]
fn a_checkpoint_made_on_another_archive_is_refused() {
    let m = Mirror::start(&[("t", 2)]);
    common::produce_numbered(m.source(), "t", 2, 0..20, 1_700_000_000_000);
    let cfg = routing(&m, "", "");
    km(&["run", "-c", s(&cfg), "--once"], T).expect_code(0, "the dump into A");
    let a = m.dir.path().join("archive");
    let id_a = kmirror::archive::id(&kmirror::archive::Root::dir(&a))
        .unwrap()
        .expect("A has an id");
    let cp = m.dir.path().join("checkpoints/dump.checkpoint.json");
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    assert_eq!(
        recorded["checkpoint"]["routes"]["keep"]["target_cluster_id"], id_a,
        "{recorded:#}"
    );
    let before = std::fs::read_to_string(&cp).unwrap();
    common::produce_numbered(m.source(), "t", 2, 20..30, 1_700_000_000_000);

    let text = std::fs::read_to_string(&cfg).unwrap();
    let point_at = |dir: &str| {
        std::fs::write(
            &cfg,
            text.replace("archive = \"archive\"", &format!("archive = \"{dir}\"")),
        )
        .unwrap();
    };
    let b = m.dir.path().join("b");
    let refused = |what: &str, ids: &[&str], route: &str, cfg: &Path| {
        let r = km(&["run", "-c", s(cfg), "--once"], T);
        r.expect_code(5, what);
        let err = &r.stderr;
        assert!(
            err.contains(&format!("route \"{route}\""))
                && err.contains("archive \"vault\"")
                && err.contains(&b.display().to_string())
                && ids.iter().all(|id| err.contains(id))
                && err.contains(&format!(
                    "kmirror checkpoints reset -c {} --route {route}",
                    cfg.display()
                )),
            "{what}: {err}"
        );
    };

    // A fresh directory: no archive there.
    point_at("b");
    refused(
        "a dump pointed at an empty directory",
        &[&id_a],
        "keep",
        &cfg,
    );
    assert!(!b.exists(), "nothing created in B");
    // Another archive.
    let id_b = kmirror::archive::init(&kmirror::archive::Root::dir(&b)).unwrap();
    assert_ne!(id_a, id_b);
    refused(
        "a dump pointed at another archive",
        &[&id_a, &id_b],
        "keep",
        &cfg,
    );
    assert_eq!(
        kmirror::archive::partitions(&kmirror::archive::Root::dir(&b)).unwrap(),
        vec![]
    );
    assert_eq!(
        std::fs::read_to_string(&cp).unwrap(),
        before,
        "checkpoint untouched"
    );

    // Back to A: the dump resumes where it was.
    point_at("archive");
    km(&["run", "-c", s(&cfg), "--once"], T).expect_code(0, "the dump resumed into A");
    for p in 0..2 {
        let offsets: Vec<i64> = archived(&a, p).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (0..30).collect::<Vec<i64>>(), "partition {p}");
    }

    // A restore from A, then resumed against B (which holds a partition of its own).
    let restore = restore_routing(&m, "end = 10", "");
    km(&["run", "-c", s(&restore)], T).expect_code(0, "the restore from A up to 10");
    let restored = |p| read_partition(m.target(), "t", p).len();
    let counts = (restored(0), restored(1));
    assert_eq!(counts, (10, 10));
    let rtext = std::fs::read_to_string(&restore).unwrap();
    std::fs::write(
        &restore,
        rtext
            .replace("archive = \"archive\"", "archive = \"b\"")
            .replace("end = 10", ""),
    )
    .unwrap();
    for p in 0..2 {
        let mut w = kmirror::archive::PartitionWriter::open(
            &kmirror::archive::Root::dir(&b),
            "t",
            p,
            "elsewhere",
            kmirror::archive::SegmentLimits::default(),
        )
        .unwrap();
        for offset in 0..40 {
            w.append(&kmirror::archive::RecordRef {
                offset,
                ts_type: TsType::Create,
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(b"from B"),
                headers: &[],
            })
            .unwrap();
        }
        w.seal(Some(40)).unwrap();
    }
    refused(
        "a restore resumed against another archive",
        &[&id_a, &id_b],
        "back",
        &restore,
    );
    assert_eq!(
        (restored(0), restored(1)),
        counts,
        "nothing restored from B"
    );
}

/// `verify` of a dump reads the target side from the archive: an intact dump is OK; an
/// archive that lost a committed segment (its file and manifest) and one whose segments
/// were rewritten consistently with one record's value changed give exit 1, naming the
/// missing offsets and the altered one. Both reports validate against the schema.
#[test]
fn verify_of_a_dump_finds_missing_and_altered_records() {
    let m = Mirror::start(&[("t", 2)]);
    let cfg = routing(&m, "", "");
    // Two runs: each partition gets segments [0, 20) and [20, 40).
    common::produce_numbered(m.source(), "t", 2, 0..20, 1_700_000_000_000);
    km(&["run", "-c", s(&cfg), "--once"], T).expect_code(0, "the first dump");
    common::produce_numbered(m.source(), "t", 2, 20..40, 1_700_000_000_000);
    km(&["run", "-c", s(&cfg), "--once"], T).expect_code(0, "the second dump");

    let v = km(&["verify", "-c", s(&cfg), "--output", "json"], T);
    v.expect_code(0, "verify of an intact dump");
    let j = json_with_schema(&v.stdout, "verify-report.schema.json");
    assert_eq!(j["ok"], true, "{j:#}");
    let rows = j["routes"][0]["partitions"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{j:#}");
    for row in rows {
        assert_eq!(row["verdict"], "OK", "{j:#}");
        assert_eq!(row["counts"]["target_records"], 40, "{j:#}");
    }

    let root = m.dir.path().join("archive");
    // Partition 1 loses its second segment, file and manifest.
    let dir1 = root.join("t/1");
    let stem = format!("{:020}", 20);
    std::fs::remove_file(dir1.join(format!("{stem}.seg.zst"))).unwrap();
    std::fs::remove_file(dir1.join(format!("{stem}.json"))).unwrap();
    // Partition 0 is rewritten with offset 5's value changed, segments and manifests
    // consistent (the reader's checks pass).
    let records = archived(&root, 0);
    std::fs::remove_dir_all(root.join("t/0")).unwrap();
    let mut w = kmirror::archive::PartitionWriter::open(
        &kmirror::archive::Root::dir(&root),
        "t",
        0,
        "src",
        kmirror::archive::SegmentLimits::default(),
    )
    .unwrap();
    for r in &records {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        let value = if r.offset == 5 {
            Some(&b"tampered"[..])
        } else {
            r.value.as_deref()
        };
        w.append(&kmirror::archive::RecordRef {
            offset: r.offset,
            ts_type: r.ts_type,
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value,
            headers: &headers,
        })
        .unwrap();
        if r.offset == 19 || r.offset == 39 {
            w.seal(Some(r.offset + 1)).unwrap();
        }
    }
    drop(w);
    assert_eq!(
        archived(&root, 0).len(),
        40,
        "the rewritten partition reads"
    );

    let v = km(&["verify", "-c", s(&cfg), "--output", "json"], T);
    v.expect_code(1, "verify of a tampered dump");
    let j = json_with_schema(&v.stdout, "verify-report.schema.json");
    assert_eq!(j["ok"], false, "{j:#}");
    let rows = j["routes"][0]["partitions"].as_array().unwrap();
    let part = |n: i32| {
        rows.iter()
            .find(|p| p["source"] == format!("src:t/{n}"))
            .unwrap_or_else(|| panic!("no row for partition {n}: {j:#}"))
    };
    assert_eq!(part(1)["verdict"], "MISMATCH", "{j:#}");
    assert_eq!(part(1)["counts"]["missing"], 20, "{j:#}");
    assert_eq!(
        part(1)["first_missing"],
        serde_json::json!((20..30).collect::<Vec<i64>>()),
        "{j:#}"
    );
    assert_eq!(part(0)["verdict"], "MISMATCH", "{j:#}");
    assert_eq!(part(0)["counts"]["altered"], 1, "{j:#}");
    assert_eq!(part(0)["counts"]["missing"], 0, "{j:#}");
    assert_eq!(part(0)["first_altered"], serde_json::json!([5]), "{j:#}");
    let t = km(&["verify", "-c", s(&cfg)], T);
    t.expect_code(1, "verify of a tampered dump, as text");
    assert!(
        t.stdout.contains("2 of 2 partitions do NOT match"),
        "{}",
        t.stdout
    );
}

/// An archive and a checkpoint written before archives had ids (FORMAT with the version
/// line only, no `target_cluster_id`) are accepted: the next run gives the archive an id
/// (FORMAT rewritten, still version 1), records it in the checkpoint and resumes.
#[test]
fn an_archive_and_checkpoint_from_before_ids_are_accepted_and_given_one() {
    let m = Mirror::start(&[("t", 1)]);
    common::produce_numbered(m.source(), "t", 1, 0..10, 1_700_000_000_000);
    let cfg = routing(&m, "", "");
    km(&["run", "-c", s(&cfg), "--once"], T).expect_code(0, "the first dump");
    let root = m.dir.path().join("archive");
    let cp = m.dir.path().join("checkpoints/dump.checkpoint.json");
    std::fs::write(root.join("FORMAT"), "kmirror-archive 1\n").unwrap();
    {
        use kmirror::checkpoint::CheckpointStore;
        let store = kmirror::checkpoint::FileStore::new(&cp);
        let mut old = store.load().unwrap().expect("a checkpoint");
        let rc = old.routes.get_mut("keep").unwrap();
        assert!(rc.target_cluster_id.take().is_some(), "an id was recorded");
        store.save(&old).unwrap();
    }

    common::produce_numbered(m.source(), "t", 1, 10..15, 1_700_000_000_000);
    km(&["run", "-c", s(&cfg), "--once"], T).expect_code(0, "the dump resumed");
    let format = std::fs::read_to_string(root.join("FORMAT")).unwrap();
    let id = format
        .strip_prefix("kmirror-archive 1\nid ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("FORMAT: {format:?}"));
    assert_eq!(id.len(), 32, "{format:?}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    assert_eq!(j["checkpoint"]["routes"]["keep"]["target_cluster_id"], id);
    let offsets: Vec<i64> = archived(&root, 0).iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..15).collect::<Vec<i64>>());
}

// --- `s3://` archives, on an S3-compatible server (moto_server, tests/common/s3.rs) ---

/// The S3 server's environment for kmirror, plus `TMPDIR` inside the test's directory (the
/// spool segments are encoded in before their upload), as `km_env` takes it.
fn s3_env(s3: &common::s3::S3Server, m: &Mirror) -> Vec<(String, String)> {
    let spool = m.dir.path().join("tmp");
    std::fs::create_dir_all(&spool).unwrap();
    let mut env = s3.env();
    env.push(("TMPDIR".into(), spool.display().to_string()));
    env
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Every object under `prefix` is committed: a segment with its manifest, a manifest with
/// its segment of the size it records, `FORMAT`, or a `topic.json`. Returns the number of
/// committed segments.
fn assert_only_committed_objects(s3: &common::s3::S3Server, prefix: &str) -> usize {
    let (segments, uncommitted) = committed_objects(s3, prefix);
    assert!(
        uncommitted.is_empty(),
        "uncommitted segments are left: {uncommitted:?}"
    );
    segments
}

/// As `assert_only_committed_objects`, but a segment without its manifest (a crash
/// between the segment's upload and its manifest's) is returned rather than refused; a
/// manifest never stands without its segment. (committed segments, uncommitted ones)
fn committed_objects(s3: &common::s3::S3Server, prefix: &str) -> (usize, Vec<String>) {
    let mut uncommitted = Vec::new();
    let objects = s3.objects(prefix);
    let names: BTreeMap<String, u64> = objects.into_iter().collect();
    assert!(
        names.contains_key(&format!("{prefix}/FORMAT")),
        "no FORMAT: {names:?}"
    );
    let mut segments = 0;
    for (key, size) in &names {
        let rel = key.strip_prefix(&format!("{prefix}/")).unwrap();
        if rel == "FORMAT" || rel.ends_with("/topic.json") {
            continue;
        }
        if let Some(stem) = rel.strip_suffix(".seg.zst") {
            let manifest = format!("{prefix}/{stem}.json");
            if !names.contains_key(&manifest) {
                uncommitted.push(key.clone());
                continue;
            }
            let m: serde_json::Value =
                serde_json::from_slice(&s3.get(&manifest)).expect("a JSON manifest");
            assert_eq!(
                m["compressed_bytes"], *size,
                "{key}: size against its manifest"
            );
            segments += 1;
        } else if let Some(stem) = rel.strip_suffix(".json") {
            assert!(
                names.contains_key(&format!("{prefix}/{stem}.seg.zst")),
                "a manifest without its segment: {key}"
            );
        } else {
            panic!("an object the archive format has no place for: {key}");
        }
    }
    (segments, uncommitted)
}

/// Issue 14's round trip through an S3 bucket: a topic holding every kind of record is
/// dumped into `s3://BUCKET/PREFIX`, the bucket then holds only committed segments with
/// their manifests; `verify` proves the archive against the source; the archive restored
/// into another cluster is the source record by record, `verify` proves that too, and a
/// second restore produces nothing. The S3 secret is in no output, even at debug level.
#[test]
fn an_s3_archive_round_trips_every_record_and_verifies_both_ways() {
    let s3 = common::s3::S3Server::start();
    let m = Mirror::start(&[("t", 3)]);
    let env = s3_env(&s3, &m);
    let env = env_refs(&env);
    produce(m.source(), "t", &varied_records(300, 3));
    let url = format!("s3://{}/dumps/one", common::s3::BUCKET);
    let dump = routing_to(&m, &url, "", "");

    let c = km_env(&["check", "-c", s(&dump)], &env, T);
    c.expect_code(0, "check of a dump into S3");
    assert!(
        c.stdout.contains(&format!("archive vault: {url}")),
        "{}",
        c.stdout
    );
    let mut debug = env.clone();
    debug.push(("RUST_LOG", "debug"));
    let d = km_env(
        &["run", "-c", s(&dump), "--once", "--output", "json"],
        &debug,
        T,
    );
    d.expect_code(0, "the dump into S3");
    let j = json_with_schema(&d.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["acked"], 300, "{j:#}");
    for out in [&d.stdout, &d.stderr] {
        assert!(
            !out.contains("kmirror-test-secret"),
            "the secret was printed"
        );
    }
    let segments = assert_only_committed_objects(&s3, "dumps/one");
    assert!(
        segments >= 3,
        "one segment per partition at least: {segments}"
    );
    let spool = m.dir.path().join("tmp/kmirror-archive-spool");
    let left: Vec<_> = walk(&spool);
    assert!(
        left.is_empty(),
        "the spool keeps files after the dump: {left:?}"
    );

    // `checkpoints show` names the archive's id as an archive's, not a cluster's.
    let format = String::from_utf8(s3.get("dumps/one/FORMAT")).unwrap();
    let id = format.lines().nth(1).unwrap().strip_prefix("id ").unwrap();
    let shown = km_env(&["checkpoints", "show", "-c", s(&dump)], &env, T);
    shown.expect_code(0, "checkpoints show of the dump");
    assert!(
        shown.stdout.contains(&format!("target archive id {id}")),
        "{}",
        shown.stdout
    );

    let v = km_env(&["verify", "-c", s(&dump), "--output", "json"], &env, T);
    v.expect_code(0, "verify of the dump (cluster -> S3 archive)");
    let j: serde_json::Value = serde_json::from_str(&v.stdout).expect("verify JSON");
    assert_eq!(j["ok"], true, "{j:#}");

    let restore = restore_routing_from(&m, &url, "", "");
    let r = km_env(&["run", "-c", s(&restore), "--output", "json"], &env, T);
    r.expect_code(0, "the restore from S3");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["read"], 300, "{j:#}");
    assert_eq!(j["totals"]["acked"], 300, "{j:#}");
    for p in 0..3 {
        assert_same_partition(&m, p);
    }
    let v = km_env(&["verify", "-c", s(&restore), "--output", "json"], &env, T);
    v.expect_code(0, "verify of the restore (S3 archive -> cluster)");
    let j: serde_json::Value = serde_json::from_str(&v.stdout).expect("verify JSON");
    for p in j["routes"][0]["partitions"].as_array().unwrap() {
        assert_eq!(p["counts"]["source_records"], 100, "{p:#}");
        assert_eq!(p["verdict"], "OK", "{p:#}");
    }
    let shown = km_env(&["checkpoints", "show", "-c", s(&restore)], &env, T);
    assert!(
        shown.stdout.contains(&format!("source archive id {id}")),
        "{}",
        shown.stdout
    );
    let again = km_env(&["run", "-c", s(&restore), "--output", "json"], &env, T);
    again.expect_code(0, "the second restore");
    let j = json_with_schema(&again.stdout, "run-summary.schema.json");
    assert_eq!(j["totals"]["read"], 0, "{j:#}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `kill -9` in the middle of a dump into S3, then a run to the end: the bucket holds only
/// committed segments, each offset exactly once (restored and compared with the source),
/// and the spool the killed runs left behind is cleaned up.
#[test]
fn an_s3_dump_killed_mid_way_resumes_without_gaps_or_duplicates() {
    let s3 = common::s3::S3Server::start();
    let m = Mirror::start(&[("t", 2)]);
    let env = s3_env(&s3, &m);
    let env = env_refs(&env);
    let n = 20_000u64;
    common::produce_numbered(m.source(), "t", 2, 0..n / 2, 1_700_000_000_000);
    let url = format!("s3://{}/killed", common::s3::BUCKET);
    let cfg = routing_to(
        &m,
        &url,
        "max_messages_per_sec = 6000",
        "interval = \"200ms\"",
    );
    let cp = m.dir.path().join("checkpoints/dump.checkpoint.json");
    let spool = m.dir.path().join("tmp/kmirror-archive-spool");
    let (mut kills, mut leftovers, mut unuploaded) = (0, 0, 0);
    for round in 0..3 {
        let mut r = Running::spawn_env(&["run", "-c", s(&cfg), "--once"], &env);
        let before = common::cli::checkpoint_file_sum(&cp);
        common::wait_until("the dump checkpoints progress", T, || {
            common::cli::checkpoint_file_sum(&cp) > before || r.child.try_wait().unwrap().is_some()
        });
        std::thread::sleep(Duration::from_millis(300 + 200 * round));
        if r.child.try_wait().unwrap().is_none() {
            r.child.kill().unwrap();
            let _ = r.child.wait();
            kills += 1;
            leftovers += walk(&spool).len();
        }
        // A kill between a segment's upload and its manifest's leaves that segment: at most
        // one per partition, removed by the next run.
        let (_, uncommitted) = committed_objects(&s3, "killed");
        assert!(uncommitted.len() <= 2, "{uncommitted:?}");
        unuploaded += uncommitted.len();
    }
    eprintln!("{kills} kills leaving {leftovers} half-written spool files and {unuploaded} segments without a manifest");
    assert!(kills >= 1, "the dump was never killed mid-way");
    assert!(leftovers >= 1, "no kill left an open segment");
    km_env(&["run", "-c", s(&cfg), "--once"], &env, T).expect_code(0, "the run after the kills");
    assert_eq!(common::cli::checkpoint_file_sum(&cp), n as i64);
    assert_only_committed_objects(&s3, "killed");
    assert!(
        walk(&spool).is_empty(),
        "spool files left: {:?}",
        walk(&spool)
    );
    // Every offset once: restored into the target, partition by partition as the source.
    let restore = restore_routing_from(&m, &url, "", "");
    km_env(&["run", "-c", s(&restore)], &env, T).expect_code(0, "the restore");
    for p in 0..2 {
        let got = read_partition(m.target(), "t", p);
        let offsets: Vec<i64> = got
            .iter()
            .map(|r| common::provenance(r).expect("provenance").3)
            .collect();
        assert_eq!(
            offsets,
            (0..(n / 2) as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
        let source = read_partition(m.source(), "t", p);
        for (a, src) in got.iter().zip(&source) {
            assert_eq!(
                (&a.key, &a.value),
                (&src.key, &src.value),
                "at {}",
                src.offset
            );
        }
    }
}

/// A damaged object in the bucket (a segment overwritten after the dump) halts the restore
/// of its partition, naming its `s3://` URL; a prefix holding no archive is refused with
/// exit 4 naming the URL, and so is a dump into a bucket that does not exist (by `check`
/// too); an archive kind this build does not know is a config error naming the file, line,
/// column and key.
#[test]
fn s3_archives_that_cannot_be_used_are_refused_with_their_url() {
    let s3 = common::s3::S3Server::start();
    let m = Mirror::start(&[("t", 1)]);
    let env = s3_env(&s3, &m);
    let env = env_refs(&env);

    let empty = format!("s3://{}/nothing-here", common::s3::BUCKET);
    let r = km_env(
        &["run", "-c", s(&restore_routing_from(&m, &empty, "", ""))],
        &env,
        T,
    );
    r.expect_code(4, "a restore from a prefix with no archive");
    assert!(
        r.stderr
            .contains(&format!("{empty} is not a kmirror archive")),
        "{}",
        r.stderr
    );

    // A dump into a bucket that does not exist: refused before anything is read, by `check`
    // and by `run` alike, with the URL and S3's own reason.
    let missing = routing_to(&m, "s3://no-such-bucket/dumps", "", "");
    for args in [
        vec!["check", "-c", s(&missing)],
        vec!["run", "-c", s(&missing), "--once"],
    ] {
        let r = km_env(&args, &env, T);
        r.expect_code(4, "a dump into a missing bucket");
        assert!(
            r.stderr
                .contains("archive s3://no-such-bucket/dumps: list:")
                && r.stderr
                    .contains("NoSuchBucket: The specified bucket does not exist"),
            "{}",
            r.stderr
        );
    }
    assert!(
        !m.dir
            .path()
            .join("checkpoints/dump.checkpoint.json")
            .exists(),
        "a refused run wrote a checkpoint"
    );

    produce(m.source(), "t", &varied_records(50, 1));
    let url = format!("s3://{}/damaged", common::s3::BUCKET);
    km_env(
        &["run", "-c", s(&routing_to(&m, &url, "", "")), "--once"],
        &env,
        T,
    )
    .expect_code(0, "the dump");
    let (seg, size) = s3
        .objects("damaged/t/0/")
        .into_iter()
        .find(|(k, _)| k.ends_with(".seg.zst"))
        .expect("a segment");
    let mut bytes = s3.get(&seg);
    assert_eq!(bytes.len() as u64, size);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    s3.put(&seg, &bytes);
    let r = km_env(
        &["run", "-c", s(&restore_routing_from(&m, &url, "", ""))],
        &env,
        T,
    );
    r.expect_code(1, "a restore of a damaged segment");
    let name = format!("s3://{}/{seg}", common::s3::BUCKET);
    assert!(
        r.stderr.contains(&name),
        "the damaged object is named: {}",
        r.stderr
    );
    assert_eq!(
        common::watermarks(m.target(), "t", 0).1,
        0,
        "nothing of it produced"
    );

    let bad = routing_to(&m, "gs://bucket/x", "", "");
    let c = km(&["check", "-c", s(&bad)], T);
    c.expect_code(3, "an unknown archive kind (a configuration error)");
    assert!(
        c.stderr.contains("clusters.vault.archive")
            && c.stderr.contains("`gs://` is not an archive kind")
            && c.stderr.contains(&format!("{}:", bad.display())),
        "{}",
        c.stderr
    );
}
