//! `verify` over part of a copy: what source retention has removed (reported as no longer on
//! the source, not a failure), `--from/--to` ranges, and `--since-last` (resume from where
//! the last matching verification of each partition ended). Clusters are mock clusters
//! hosted by this test process (they listen on loopback TCP); `kmirror` runs as a
//! subprocess. The mock keeps at most 5 MB per partition, so producing ~6 MB of large
//! records moves a partition's low watermark: that is retention here.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cli::{km, s, write};
use common::{produce, produce_numbered, read_partition, watermarks, Mirror, TestRecord};

const T: Duration = Duration::from_secs(30);
const FIRST_TS: i64 = 1_700_000_000_000;

/// A routing file on disk for the CLI: one following route `t` -> `t`, provenance on.
fn routing(m: &Mirror, topic: &str) -> PathBuf {
    write(
        m.dir.path(),
        "job.toml",
        &format!(
            r#"
[checkpoints]
dir = "{dir}"
job = "job"

[clusters.src]
bootstrap = "{src}"

[clusters.dst]
bootstrap = "{dst}"

[[routes]]
name = "r"
source = "src"
target = "dst"
topics = ["{topic}"]
"#,
            dir = m.dir.path().display(),
            src = m.source(),
            dst = m.target(),
        ),
    )
}

/// [`routing`] with `extra` route keys.
fn routing_with(m: &Mirror, topic: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(routing(m, topic)).unwrap();
    write(m.dir.path(), "job.toml", &format!("{text}{extra}\n"))
}

fn run_once(cfg: &Path) {
    km(&["run", "-c", s(cfg), "--once"], T).expect_code(0, "run --once");
}

/// `verify --output json` with `extra` arguments: (exit code, the partition's JSON row).
fn verify(cfg: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["verify", "-c", s(cfg), "--output", "json"];
    args.extend_from_slice(extra);
    let f = km(&args, T);
    let v: serde_json::Value = serde_json::from_str(&f.stdout).unwrap_or_else(|e| {
        panic!(
            "verify {extra:?}: {e}\nstdout:\n{}\nstderr:\n{}",
            f.stdout, f.stderr
        )
    });
    let row = v["routes"][0]["partitions"][0].clone();
    (f.code, row, v["summary"].as_str().unwrap_or("").to_string())
}

fn range(row: &serde_json::Value) -> (i64, i64) {
    let r = &row["verified_range"];
    (
        r["start"]
            .as_i64()
            .unwrap_or_else(|| panic!("no verified_range in {row:#}")),
        r["end"].as_i64().unwrap(),
    )
}

fn count(row: &serde_json::Value, what: &str) -> i64 {
    row["counts"][what]
        .as_i64()
        .unwrap_or_else(|| panic!("no count {what} in {row:#}"))
}

/// A copy of source offset `offset` of `topic`/0 written to the target by hand, with a value
/// the source never had: an altered duplicate for verify to find.
fn plant_altered(m: &Mirror, topic: &str, offset: i64) {
    produce(
        m.target(),
        topic,
        &[TestRecord {
            partition: 0,
            key: Some(b"planted".to_vec()),
            value: Some(b"not what the source holds".to_vec()),
            headers: vec![(
                "kmirror.source".into(),
                Some(format!("r@src/{topic}/0/{offset}").into_bytes()),
            )],
            timestamp: Some(FIRST_TS + offset),
        }],
    );
}

/// Records of ~100 KB: 60 of them are more than the mock keeps in one partition.
fn produce_big(bootstrap: &str, topic: &str, n: usize) {
    let recs: Vec<TestRecord> = (0..n)
        .map(|i| TestRecord {
            partition: 0,
            key: Some(format!("big-{i}").into_bytes()),
            value: Some(vec![b'a' + (i % 26) as u8; 100_000]),
            headers: vec![],
            timestamp: None,
        })
        .collect();
    for chunk in recs.chunks(5) {
        produce(bootstrap, topic, chunk);
    }
}

/// Source retention passes the first copied offset (and the target's retention trims the
/// copies too): verify checks what is still on the source, reports the rest as no longer on
/// the source, and exits 0 because what remains matches. Before: exit 4, no table.
#[test]
fn verify_after_retention_passed_the_copied_start_checks_what_remains() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = routing(&m, "t");
    produce_numbered(m.source(), "t", 1, 0..20, FIRST_TS);
    run_once(&cfg);
    produce_big(m.source(), "t", 30);
    run_once(&cfg);
    produce_big(m.source(), "t", 30);
    run_once(&cfg);
    let (low, high) = watermarks(m.source(), "t", 0);
    assert!(low > 0, "retention did not move the source's low watermark");
    // The first copy still on the target names the lowest source offset it can prove.
    let first_copy = read_partition(m.target(), "t", 0)
        .first()
        .and_then(common::provenance)
        .map(|p| p.3)
        .expect("a copy on the target");
    let start = low.max(first_copy);
    // Copies gone from the target whose source records are gone too: counted only as no
    // longer on the source, never as missing.
    assert!(
        watermarks(m.target(), "t", 0).0 > 0,
        "the target kept every copy"
    );

    let (code, row, summary) = verify(&cfg, &[]);
    assert_eq!(code, 0, "{row:#}\n{summary}");
    assert_eq!(row["verdict"], "OK", "{row:#}");
    assert_eq!(range(&row), (start, high), "{row:#}");
    assert_eq!(count(&row, "no_longer_on_source"), low, "{row:#}");
    assert_eq!(
        count(&row, "aged_out_of_target"),
        (first_copy - low).max(0),
        "{row:#}"
    );
    assert_eq!(count(&row, "missing"), 0, "{row:#}");
    assert_eq!(count(&row, "unexpected"), 0, "{row:#}");
    assert_eq!(count(&row, "source_records"), high - start, "{row:#}");
    assert!(summary.contains("no longer on the source"), "{summary}");

    // The table says it too.
    let f = km(&["verify", "-c", s(&cfg)], T);
    f.expect_code(0, "verify (table)");
    let rows = common::cli::table(&f.stdout, "route");
    assert_eq!(
        common::cli::num(&rows[0], "no longer on source"),
        low,
        "{}",
        f.stdout
    );
}

/// `--from/--to` restrict the compared source range (offsets, or timestamps resolved by
/// reading where the broker cannot look them up): a planted difference outside the range is
/// not reported, one inside is.
#[test]
fn verify_from_to_compares_only_the_range_asked_for() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = routing(&m, "t");
    produce_numbered(m.source(), "t", 1, 0..100, FIRST_TS);
    run_once(&cfg);
    plant_altered(&m, "t", 10);
    plant_altered(&m, "t", 80);
    // More copies after the planted ones, so they lie inside the range the copy wrote.
    produce_numbered(m.source(), "t", 1, 100..120, FIRST_TS);
    run_once(&cfg);

    let (code, row, _) = verify(&cfg, &["--from", "50", "--to", "100"]);
    assert_eq!(code, 1, "{row:#}");
    assert_eq!(range(&row), (50, 100), "{row:#}");
    assert_eq!(row["first_altered"], serde_json::json!([80]), "{row:#}");
    assert_eq!(count(&row, "source_records"), 50, "{row:#}");

    let (code, row, _) = verify(&cfg, &["--to", "50"]);
    assert_eq!(code, 1, "{row:#}");
    assert_eq!(range(&row), (0, 50), "{row:#}");
    assert_eq!(row["first_altered"], serde_json::json!([10]), "{row:#}");

    // A timestamp: the numbered records are stamped FIRST_TS + their number.
    let (code, row, _) = verify(&cfg, &["--from", &(FIRST_TS + 90).to_string()]);
    assert_eq!(code, 0, "{row:#}");
    assert_eq!(range(&row), (90, 120), "{row:#}");
    assert_eq!(count(&row, "altered"), 0, "{row:#}");
    let (code, row, summary) = verify(&cfg, &["--from", "2023-11-14T22:13:20.080Z", "--to", "85"]);
    assert_eq!(code, 1, "{row:#}");
    assert_eq!(range(&row), (80, 85), "{row:#}");
    assert_eq!(row["first_altered"], serde_json::json!([80]), "{row:#}");
    let (code, row, summary2) = verify(&cfg, &["--from", "2023-11-14T22:13:20.081Z", "--to", "85"]);
    assert_eq!(code, 0, "{row:#}");
    assert_eq!(range(&row), (81, 85), "{row:#}");
    assert!(summary.contains("do NOT match"), "{summary}");
    assert!(summary2.contains("only the range asked for"), "{summary2}");
}

/// `--since-last` starts each partition where its last matching verification ended, and a
/// partition that did not match is verified again from the same place next time.
#[test]
fn verify_since_last_resumes_and_re_verifies_a_mismatch() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = routing(&m, "t");
    produce_numbered(m.source(), "t", 1, 0..50, FIRST_TS);
    run_once(&cfg);
    let (code, row, _) = verify(&cfg, &["--since-last"]);
    assert_eq!((code, range(&row)), (0, (0, 50)), "{row:#}");

    produce_numbered(m.source(), "t", 1, 50..80, FIRST_TS);
    run_once(&cfg);
    let (code, row, _) = verify(&cfg, &["--since-last"]);
    assert_eq!((code, range(&row)), (0, (50, 80)), "{row:#}");

    produce_numbered(m.source(), "t", 1, 80..100, FIRST_TS);
    run_once(&cfg);
    plant_altered(&m, "t", 90);
    produce_numbered(m.source(), "t", 1, 100..110, FIRST_TS);
    run_once(&cfg);
    let (code, row, _) = verify(&cfg, &["--since-last"]);
    assert_eq!((code, range(&row)), (1, (80, 110)), "{row:#}");
    assert_eq!(row["first_altered"], serde_json::json!([90]), "{row:#}");
    // Not remembered: the same range again.
    let (code, row, _) = verify(&cfg, &["--since-last"]);
    assert_eq!((code, range(&row)), (1, (80, 110)), "{row:#}");
}

/// A route with a fixed end that finished its copy, then source retention passed its
/// checkpoint: nothing is left to copy, so planning (check, run, verify) must not call it a
/// gap. verify proves nothing there and says so, without failing. Before: check, run and
/// verify all exited 4 with "offset out of range".
#[test]
fn retention_past_a_finished_routes_checkpoint_is_not_an_error() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = routing_with(&m, "t", "end = 20");
    produce_numbered(m.source(), "t", 1, 0..20, FIRST_TS);
    km(&["run", "-c", s(&cfg)], T).expect_code(0, "run to the end");
    produce_big(m.source(), "t", 60);
    let (low, _) = watermarks(m.source(), "t", 0);
    assert!(low > 20, "retention did not pass the checkpoint: low {low}");
    km(&["check", "-c", s(&cfg)], T).expect_code(0, "check");
    km(&["run", "-c", s(&cfg)], T).expect_code(0, "run with nothing left to copy");
    let (code, row, summary) = verify(&cfg, &[]);
    assert_eq!(code, 0, "{row:#}\n{summary}");
    assert_eq!(count(&row, "no_longer_on_source"), 20, "{row:#}");
    assert_eq!(range(&row), (20, 20), "{row:#}");
    assert!(
        summary.contains("NOT proven: 20 copied offsets no longer on the source"),
        "{summary}"
    );
}

/// A following copy that stopped, then source retention passed its checkpoint: `run` refuses
/// (on_offset_out_of_range = "fail"), but verify still answers: nothing copied is left on
/// the source (reported as no longer on the source) and the copy is behind. Before: exit 4.
#[test]
fn verify_reports_a_stalled_copy_that_retention_overtook() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = routing(&m, "t");
    produce_numbered(m.source(), "t", 1, 0..20, FIRST_TS);
    run_once(&cfg);
    produce_big(m.source(), "t", 30);
    run_once(&cfg);
    produce_big(m.source(), "t", 60);
    let (low, high) = watermarks(m.source(), "t", 0);
    assert!(low > 50, "retention did not pass the checkpoint: low {low}");
    km(&["run", "-c", s(&cfg), "--once"], T).expect_code(4, "run refuses the gap");
    let (code, row, summary) = verify(&cfg, &[]);
    assert_eq!(
        code, 0,
        "a following route behind is lag: {row:#}\n{summary}"
    );
    assert_eq!(row["verdict"], "BEHIND", "{row:#}");
    assert_eq!(range(&row), (50, 50), "{row:#}");
    assert_eq!(count(&row, "no_longer_on_source"), 50, "{row:#}");
    assert_eq!(row["not_copied"]["behind"], high - 50, "{row:#}");
}

/// The target's retention removed copies of records the source still holds: they are
/// reported apart (aged out of the target: not proven, not a copy failure), not as missing,
/// and what the target still holds is compared. Before: exit 4 (the target read started below
/// its low watermark).
#[test]
fn verify_tells_copies_aged_out_of_the_target_from_missing_ones() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = routing(&m, "t");
    produce_numbered(m.source(), "t", 1, 0..50, FIRST_TS);
    run_once(&cfg);
    // Other writers fill the target partition past its retention.
    produce_big(m.target(), "t", 60);
    let (tlow, _) = watermarks(m.target(), "t", 0);
    assert!(
        tlow > 50,
        "the target's retention kept the copies: low {tlow}"
    );
    produce_numbered(m.source(), "t", 1, 50..60, FIRST_TS);
    run_once(&cfg);
    assert_eq!(watermarks(m.source(), "t", 0), (0, 60));

    let (code, row, summary) = verify(&cfg, &[]);
    assert_eq!(code, 0, "{row:#}\n{summary}");
    assert_eq!(range(&row), (50, 60), "{row:#}");
    assert_eq!(count(&row, "aged_out_of_target"), 50, "{row:#}");
    assert_eq!(count(&row, "no_longer_on_source"), 0, "{row:#}");
    assert_eq!(count(&row, "missing"), 0, "{row:#}");
    assert_eq!(count(&row, "target_records"), 10, "{row:#}");
    assert!(
        summary.contains("NOT proven: 50 offsets still on the source whose copies the target's retention removed"),
        "{summary}"
    );
}

/// The remembered position of `t/0` (the `.verified` file beside the checkpoint), if any.
fn verified_position(m: &Mirror) -> Option<i64> {
    let path = m.dir.path().join("job.checkpoint.json.verified");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["routes"]["r"]["partitions"]["t/0"].as_i64()
}

fn wait_for_position(m: &Mirror, want: i64, run: common::cli::Running) -> common::cli::Running {
    let deadline = std::time::Instant::now() + T;
    while verified_position(m) != Some(want) {
        if std::time::Instant::now() > deadline {
            common::cli::signal(run.pid(), "-TERM");
            let f = run.wait(T);
            panic!(
                "the in-run verification did not reach {want} (at {:?})\n{}\n{}",
                verified_position(m),
                f.stdout,
                f.stderr
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run
}

/// `[verify] interval` verifies inside a following run, each time from where the last
/// verification ended, and the run's closing lines say how the verifications went. Before:
/// the routing file was refused (unknown key `verify`).
#[test]
fn run_verifies_on_an_interval_while_it_follows() {
    let m = Mirror::start(&[("t", 1)]);
    let base = std::fs::read_to_string(routing(&m, "t")).unwrap();
    let cfg = write(
        m.dir.path(),
        "job.toml",
        &base.replace(
            "[clusters.src]",
            "[verify]\ninterval = \"1s\"\n\n[clusters.src]",
        ),
    );
    let run = common::cli::Running::spawn(&["run", "-c", s(&cfg)]);
    produce_numbered(m.source(), "t", 1, 0..30, FIRST_TS);
    let run = wait_for_position(&m, 30, run);
    produce_numbered(m.source(), "t", 1, 30..50, FIRST_TS);
    let run = wait_for_position(&m, 50, run);
    common::cli::signal(run.pid(), "-TERM");
    let f = run.wait(T);
    assert_eq!(f.code, 0, "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stderr
            .contains("0 found differences, 0 could not complete"),
        "{}",
        f.stderr
    );
    // A verify by hand from there has nothing new to compare.
    let (code, row, _) = verify(&cfg, &["--since-last"]);
    assert_eq!((code, range(&row)), (0, (50, 50)), "{row:#}");
}

/// A round of the in-run verification that finds a difference counts it, keeps the
/// partition's position (so the next round compares the same range again), and a later
/// round still finds it.
#[test]
fn an_in_run_verification_counts_a_difference_and_keeps_checking_it() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = routing(&m, "t");
    produce_numbered(m.source(), "t", 1, 0..20, FIRST_TS);
    run_once(&cfg);
    let config = kmirror::config::Config::load(&cfg).expect("routing file");
    let (mut rounds, mut failing) = (kmirror::verify::interval::Rounds::default(), false);
    kmirror::verify::interval::round(&config, &mut rounds, &mut failing);
    assert_eq!((rounds.done, rounds.mismatched, failing), (1, 0, false));
    assert_eq!(verified_position(&m), Some(20));

    produce_numbered(m.source(), "t", 1, 20..30, FIRST_TS);
    run_once(&cfg);
    plant_altered(&m, "t", 35);
    produce_numbered(m.source(), "t", 1, 30..40, FIRST_TS);
    run_once(&cfg);
    for n in 1..=2 {
        kmirror::verify::interval::round(&config, &mut rounds, &mut failing);
        assert_eq!((rounds.done, rounds.mismatched, failing), (1 + n, n, true));
        assert_eq!(
            verified_position(&m),
            Some(20),
            "a mismatch keeps the position"
        );
    }
}

/// `checkpoints reset` makes the partitions it resets copy again (here: the same records
/// once more); `--since-last` must then verify the new copy from its start, not trust what
/// was proven about the old one. Before: the remembered position survived the reset, so
/// `--since-last` compared the empty range [50, 50) and said OK over an altered copy.
#[test]
fn a_checkpoint_reset_forgets_the_verified_positions_of_the_partitions_it_resets() {
    let m = Mirror::start(&[("t", 1)]);
    let cfg = routing(&m, "t");
    produce_numbered(m.source(), "t", 1, 0..50, FIRST_TS);
    run_once(&cfg);
    let (code, row, _) = verify(&cfg, &["--since-last"]);
    assert_eq!((code, range(&row)), (0, (0, 50)), "{row:#}");

    let reset = km(
        &[
            "checkpoints",
            "reset",
            "-c",
            s(&cfg),
            "--route",
            "r",
            "--to",
            "earliest",
            "--execute",
        ],
        T,
    );
    reset.expect_code(0, "checkpoints reset --to earliest");
    assert!(
        reset.stdout.contains("verified positions forgotten"),
        "{}",
        reset.stdout
    );
    run_once(&cfg);
    // Inside the target range the new copy writes (before its last records).
    plant_altered(&m, "t", 10);
    produce_numbered(m.source(), "t", 1, 50..60, FIRST_TS);
    run_once(&cfg);
    let (code, row, _) = verify(&cfg, &["--since-last"]);
    assert_eq!((code, range(&row)), (1, (0, 60)), "{row:#}");
    assert_eq!(row["first_altered"], serde_json::json!([10]), "{row:#}");
}
