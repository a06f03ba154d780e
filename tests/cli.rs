//! End-to-end tests of the built `kmirror` binary.
//!
//! Every test runs `kmirror` as a subprocess, the way an operator does. Clusters come from
//! `kmirror dev-cluster` (librdkafka's mock cluster) running in ANOTHER process, so the
//! copy really crosses process boundaries and TCP; the dev-cluster is killed by a Drop
//! guard when the test ends, panics included. Routing files are written into a tempdir.
//!
//! What is checked: the printed plan (`check`), a full copy and its summary (`run --once`),
//! record-by-record verification (`verify`), checkpoints (`checkpoints show`), a real
//! verification mismatch (exit 1), kill -9 and SIGTERM in the middle of a run followed by a
//! rerun, 40+ malformed routing files (exit 3 with `file:line:column`, before connecting),
//! unreachable clusters and non-Kafka listeners (exit 4, bounded), missing topics (exit 4),
//! usage errors (exit 2), untrustworthy checkpoints (exit 5), `kmirror demo`, and the JSON of
//! `check`, `run`, `verify`, `checkpoints show` and `purge` against their schemas
//! (docs/*.schema.json).
//!
//! The binary is `target/debug/kmirror`: a build of another source tree into the same target
//! directory replaces it, so run these from a quiet tree.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cli::*;

/// Exit codes (src/error.rs).
const EXIT_OK: i32 = 0;
const EXIT_MISMATCH: i32 = 1;
const EXIT_CONFIG: i32 = 3;
const EXIT_CLUSTER: i32 = 4;

// ---------------------------------------------------------------------------------------
// Helpers: processes
// ---------------------------------------------------------------------------------------

/// `kmirror dev-cluster` in another process, killed when dropped.
struct DevCluster {
    child: Child,
    bootstraps: Vec<String>,
}

impl DevCluster {
    /// Starts `clusters` mock clusters of `brokers` brokers with `topics` (NAME:PARTITIONS)
    /// on every cluster and `seeds` (TOPIC:COUNT) produced into cluster 1, and waits for
    /// `ready`. Its stderr goes to `dir/dev-cluster.stderr`.
    fn start(dir: &Path, clusters: usize, brokers: i32, topics: &[&str], seeds: &[&str]) -> Self {
        let mut args = vec![
            "dev-cluster".to_string(),
            "--clusters".into(),
            clusters.to_string(),
            "--brokers".into(),
            brokers.to_string(),
        ];
        for t in topics {
            args.extend(["--topic".to_string(), t.to_string()]);
        }
        for s in seeds {
            args.extend(["--seed".to_string(), s.to_string()]);
        }
        let err_path = dir.join("dev-cluster.stderr");
        let err = fs::File::create(&err_path).expect("dev-cluster stderr file");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = kmirror(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn kmirror dev-cluster");
        let out = child.stdout.take().expect("dev-cluster stdout");
        let (tx, rx) = mpsc::channel::<String>();
        // Reads every line (and keeps draining after `ready`, so the pipe never fills).
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining quietly.
                }
            }
        });
        let mut guard = DevCluster {
            child,
            bootstraps: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((name, addr)) = line.split_once(" bootstrap=") {
                        assert_eq!(
                            name,
                            format!("cluster{}", guard.bootstraps.len() + 1),
                            "dev-cluster prints clusters in order: {line}"
                        );
                        guard.bootstraps.push(addr.trim().to_string());
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
        assert_eq!(
            guard.bootstraps.len(),
            clusters,
            "one bootstrap line per cluster"
        );
        guard
    }

    fn bootstrap(&self, cluster: usize) -> &str {
        &self.bootstraps[cluster - 1]
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Helpers: files and tables
// ---------------------------------------------------------------------------------------

/// Records `kmirror dev-cluster --seed` puts in partition `p` of `partitions` (by index).
fn share(total: i64, partitions: i64, p: i64) -> i64 {
    total / partitions + i64::from(p < total % partitions)
}

/// Partition number of a `cluster:topic/partition` cell.
fn partition_of(cell: &str) -> i64 {
    cell.rsplit('/').next().unwrap().parse().unwrap()
}

/// A routing file for `dir` with clusters `src` and `dst` and one route `orders`.
fn mirror_config(src: &str, dst: &str, route_extra: &str) -> String {
    format!(
        r#"[checkpoints]
interval = "500ms"

[run]
connect_timeout = "10s"

[clusters.src]
bootstrap = "{src}"

[clusters.dst]
bootstrap = "{dst}"

[[routes]]
name = "orders"
source = "src"
topics = ["orders"]
target = "dst"
{route_extra}
"#
    )
}

// ---------------------------------------------------------------------------------------
// 1. check prints the plan
// ---------------------------------------------------------------------------------------

#[test]
fn check_prints_one_plan_row_per_source_partition() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(
        dir.path(),
        2,
        3,
        &["orders:6", "orders.audit:3"],
        &["orders:5000"],
    );
    let cfg = write(
        dir.path(),
        "plan.toml",
        &format!(
            r#"[clusters.src]
bootstrap = "{}"
[clusters.dst]
bootstrap = "{}"

[[routes]]
name = "orders"
source = "src"
topics = ["orders"]
target = "dst"
end = "snapshot"

[[routes]]
name = "audit"
source = "src"
topics = ["orders"]
target = "dst"
target_topic = "{{topic}}.audit"
partitioning = "key"
start = 100
end = 500
"#,
            dc.bootstrap(1),
            dc.bootstrap(2)
        ),
    );
    let f = km(&["check", "-c", s(&cfg)], Duration::from_secs(60));
    f.expect_code(EXIT_OK, "check");
    assert!(
        f.stdout
            .contains("routing file OK (2 routes, 2 clusters; job \"plan\""),
        "{}",
        f.stdout
    );
    let rows = table(&f.stdout, "route");
    let mut want: Vec<Vec<String>> = Vec::new();
    for p in 0..6 {
        let n = share(5000, 6, p);
        want.push(vec![
            "orders".into(),
            format!("src:orders/{p}"),
            format!("dst:orders/{p}"),
            "0".into(),
            n.to_string(),
            format!("<= {n}"),
        ]);
    }
    for p in 0..6 {
        want.push(vec![
            "audit".into(),
            format!("src:orders/{p}"),
            "dst:orders.audit/key".into(),
            "100".into(),
            "500".into(),
            "<= 400".into(),
        ]);
    }
    let got: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            ["route", "source", "target", "start", "end", "estimate"]
                .iter()
                .map(|c| col(r, c).to_string())
                .collect()
        })
        .collect();
    assert_eq!(got, want, "plan rows:\n{}", f.stdout);
    assert!(
        f.stdout
            .contains("12 partition tasks; at most 7400 records to copy"),
        "{}",
        f.stdout
    );
    // check connects and plans; it must not copy or checkpoint anything.
    assert!(!dir.path().join("checkpoints").exists());
}

// ---------------------------------------------------------------------------------------
// 2. run --once, verify, checkpoints show
// ---------------------------------------------------------------------------------------

#[test]
fn run_once_copies_everything_then_verify_and_checkpoints_agree() {
    const SEEDED: i64 = 5000;
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 2, 3, &["orders:6"], &["orders:5000"]);
    let cfg = write(
        dir.path(),
        "mirror.toml",
        &mirror_config(dc.bootstrap(1), dc.bootstrap(2), ""),
    );

    let run = km(
        &["run", "-c", s(&cfg), "--once", "--progress", "0"],
        Duration::from_secs(60),
    );
    run.expect_code(EXIT_OK, "run --once");
    let t = totals(&run.stdout);
    assert_eq!(t["acked"], SEEDED, "TOTAL acked:\n{}", run.stdout);
    assert_eq!(t["read"], SEEDED);
    assert_eq!(
        (t["failed"], t["pending"], t["filtered"]),
        (0, 0, 0),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("complete in "), "{}", run.stdout);
    let rows = table(&run.stdout, "route");
    for p in 0..6i64 {
        let n = share(SEEDED, 6, p);
        let row = rows
            .iter()
            .find(|r| col(r, "source") == format!("src:orders/{p}"))
            .unwrap_or_else(|| panic!("no summary row for partition {p}:\n{}", run.stdout));
        assert_eq!(
            col(row, "range"),
            format!("[0, {n})"),
            "range of partition {p}"
        );
        assert_eq!(num(row, "read"), n, "read of partition {p}");
        assert_eq!(num(row, "acked"), n, "acked of partition {p}");
        assert_eq!(
            col(row, "target"),
            format!("dst:orders/{p} [0..={}]", n - 1)
        );
        assert_eq!(col(row, "status"), "done");
    }

    let v = km(&["verify", "-c", s(&cfg)], Duration::from_secs(60));
    v.expect_code(EXIT_OK, "verify");
    let vrows = table(&v.stdout, "route");
    assert_eq!(vrows.len(), 6, "{}", v.stdout);
    for r in &vrows {
        let n = share(SEEDED, 6, partition_of(col(r, "source")));
        assert_eq!(num(r, "source records"), n, "{r:?}");
        assert_eq!(num(r, "target records"), n, "{r:?}");
        assert_clean(r);
    }
    assert!(v
        .stdout
        .contains("verified 6 partitions: every source record is on the target"));
    // In blocks of 100 offsets on one thread: the same table. `--parallel 0` is refused.
    let small = km_env(
        &["verify", "-c", s(&cfg), "--parallel", "1"],
        &[("KMIRROR_VERIFY_BLOCK", "100")],
        Duration::from_secs(60),
    );
    small.expect_code(EXIT_OK, "verify in blocks of 100");
    assert_eq!(small.stdout, v.stdout);
    km(
        &["verify", "-c", s(&cfg), "--parallel", "0"],
        Duration::from_secs(30),
    )
    .expect_code(2, "verify --parallel 0");

    let (sum, cp_rows) = shown_next_offsets(&cfg);
    assert_eq!(sum, SEEDED, "checkpoint next offsets");
    assert_eq!(cp_rows.len(), 6);
    for r in &cp_rows {
        assert_eq!(col(r, "first offset"), "0", "{r:?}");
    }

    // A second run resumes from the checkpoint and finds nothing to copy...
    let again = km(
        &["run", "-c", s(&cfg), "--once", "--progress", "0"],
        Duration::from_secs(60),
    );
    again.expect_code(EXIT_OK, "second run --once");
    assert_eq!(totals(&again.stdout)["acked"], 0, "{}", again.stdout);
    // ...so nothing was delivered twice, and check now plans from the checkpoint.
    km(
        &["verify", "-c", s(&cfg), "--fail-on-duplicates"],
        Duration::from_secs(60),
    )
    .expect_code(EXIT_OK, "verify --fail-on-duplicates after a no-op rerun");
    let c = km(&["check", "-c", s(&cfg)], Duration::from_secs(60));
    c.expect_code(EXIT_OK, "check after the copy");
    for r in table(&c.stdout, "route") {
        let p = partition_of(col(&r, "source"));
        assert_eq!(
            col(&r, "start"),
            format!("{} (checkpoint)", share(SEEDED, 6, p)),
            "{r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. verify exits 1 on a real mismatch
// ---------------------------------------------------------------------------------------

/// An honest mismatch, with no hand-edited checkpoint: the target cluster is replaced by one
/// restored from a stale backup.
///
/// 1. Job `mirror` copies all of `src:orders` to cluster 2 (`dst`); verify says OK.
/// 2. Job `stale-backup` copies only offsets [0, 400) of every partition to cluster 3. That
///    is what a backup taken early in the migration would hold.
/// 3. The operator "restores" the target: the routing file keeps job `mirror` and its
///    checkpoint but `dst` now points at cluster 3. The checkpoint rightly claims offsets
///    [0, 834) were written to `dst`; the cluster now called `dst` holds only [0, 400).
///
/// A routing file `<name>.toml` for job `name`: the mirror route from `src` to `dst`, plus
/// `extra` route keys.
fn job_config(dir: &Path, name: &str, src: &str, dst: &str, extra: &str) -> PathBuf {
    write(
        dir,
        &format!("{name}.toml"),
        &mirror_config(src, dst, &format!("{extra}\n")).replace(
            "[checkpoints]\n",
            &format!("[checkpoints]\njob = \"{name}\"\n"),
        ),
    )
}

/// verify must read both sides and report the records the target really lacks.
#[test]
fn verify_exits_1_when_the_target_lacks_records() {
    const SEEDED: i64 = 5000;
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 3, 1, &["orders:6"], &["orders:5000"]);
    let job = |name: &str, dst: &str, extra: &str| {
        job_config(dir.path(), name, dc.bootstrap(1), dst, extra)
    };
    let mirror = job("mirror", dc.bootstrap(2), "");
    let stale = job("stale-backup", dc.bootstrap(3), "end = 400");
    let restored = write(
        dir.path(),
        "restored.toml",
        &fs::read_to_string(&mirror)
            .unwrap()
            .replace(dc.bootstrap(2), dc.bootstrap(3)),
    );

    km(
        &["run", "-c", s(&mirror), "--once"],
        Duration::from_secs(60),
    )
    .expect_code(EXIT_OK, "run mirror");
    km(&["verify", "-c", s(&mirror)], Duration::from_secs(60))
        .expect_code(EXIT_OK, "verify of the real target");
    let st = km(&["run", "-c", s(&stale)], Duration::from_secs(60));
    st.expect_code(EXIT_OK, "run stale-backup");
    assert_eq!(totals(&st.stdout)["acked"], 6 * 400, "{}", st.stdout);

    let v = km(&["verify", "-c", s(&restored)], Duration::from_secs(60));
    v.expect_code(EXIT_MISMATCH, "verify against the stale target");
    let rows = table(&v.stdout, "route");
    assert_eq!(rows.len(), 6, "{}", v.stdout);
    for r in &rows {
        let n = share(SEEDED, 6, partition_of(col(r, "source")));
        assert_eq!(num(r, "source records"), n, "{r:?}");
        assert_eq!(num(r, "target records"), 400, "{r:?}");
        assert_eq!(num(r, "missing"), n - 400, "{r:?}");
        assert_eq!(num(r, "duplicates"), 0, "{r:?}");
        assert_eq!(col(r, "result"), "MISMATCH", "{r:?}");
    }
    assert!(
        v.stdout.contains("6 of 6 partitions do NOT match"),
        "{}",
        v.stdout
    );
    // --route selects; an unknown route is an error, not a silent pass.
    // (verify reads for a second past every short target partition before calling the
    // rest missing, so the mismatching verify is run only once.)
    let one = km(
        &["verify", "-c", s(&mirror), "--route", "orders"],
        Duration::from_secs(60),
    );
    one.expect_code(EXIT_OK, "verify --route orders");
    let bad = km(
        &["verify", "-c", s(&restored), "--route", "nope"],
        Duration::from_secs(30),
    );
    bad.expect_code(2, "verify --route nope is a usage error");
    assert!(bad.stderr.contains("route \"nope\""), "{}", bad.stderr);

    // The route now reads from another source cluster: the checkpoint's offsets mean nothing
    // there. Everything refuses it (exit 5) and names the remedy, and the remedy works.
    let moved = write(
        dir.path(),
        "moved.toml",
        &fs::read_to_string(&mirror)
            .unwrap()
            .replace("source = \"src\"", "source = \"src2\"")
            .replace(
                "[clusters.dst]",
                &format!(
                    "[clusters.src2]\nbootstrap = \"{}\"\n\n[clusters.dst]",
                    dc.bootstrap(3)
                ),
            ),
    );
    for cmd in ["check", "verify", "run"] {
        let r = km(&[cmd, "-c", s(&moved)], Duration::from_secs(30));
        r.expect_code(5, &format!("{cmd} after the source moved"));
        assert!(
            r.stderr.contains("route \"orders\" was recorded for source cluster \"src\" but the routing file now reads it from \"src2\"")
                && r.stderr.contains("kmirror checkpoints reset --route orders"),
            "{cmd}: {}",
            r.stderr
        );
    }
    km(
        &[
            "checkpoints",
            "reset",
            "-c",
            s(&moved),
            "--route",
            "orders",
            "--execute",
        ],
        Duration::from_secs(30),
    )
    .expect_code(EXIT_OK, "the reset the error message asks for");
    let c = km(&["check", "-c", s(&moved)], Duration::from_secs(30));
    c.expect_code(EXIT_OK, "check after the reset");
    for r in table(&c.stdout, "route") {
        assert!(col(&r, "source").starts_with("src2:orders/"), "{r:?}");
        assert_eq!(col(&r, "start"), "0", "planned from `start` again: {r:?}");
    }
}

/// `checkpoints reset --to latest` moves a copy past every record: verify then compares empty
/// ranges. They match, but nothing was copied: a route with a fixed end must fail (exit 1)
/// and say what was never copied; a following route reports the gap without failing.
#[test]
fn verify_after_a_reset_past_the_records_says_they_were_never_copied() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 2, 1, &["orders:3"], &["orders:600"]);
    let cfg = |name: &str, extra: &str| {
        write(
            dir.path(),
            &format!("{name}.toml"),
            &mirror_config(dc.bootstrap(1), dc.bootstrap(2), &format!("{extra}\n")).replace(
                "[checkpoints]\n",
                &format!("[checkpoints]\njob = \"{name}\"\n"),
            ),
        )
    };
    for (name, extra, code, word) in [
        ("fixed", "end = \"snapshot\"", EXIT_MISMATCH, "INCOMPLETE"),
        ("follow", "", EXIT_OK, "BEHIND"),
    ] {
        let c = cfg(name, extra);
        km(
            &[
                "checkpoints",
                "reset",
                "-c",
                s(&c),
                "--to",
                "latest",
                "--execute",
            ],
            Duration::from_secs(60),
        )
        .expect_code(EXIT_OK, "reset to latest");
        let v = km(&["verify", "-c", s(&c)], Duration::from_secs(60));
        v.expect_code(code, name);
        let rows = table(&v.stdout, "route");
        assert_eq!(rows.len(), 3, "{}", v.stdout);
        for r in &rows {
            assert_eq!(num(r, "source records"), 0, "{r:?}");
            assert_eq!(col(r, "result"), word, "{r:?}");
            assert!(
                col(r, "not copied").contains("before the copied range never copied"),
                "{r:?}"
            );
        }
        assert!(
            !v.stdout.contains("every source record is on the target")
                && v.stdout.contains("600 offsets"),
            "{}",
            v.stdout
        );
    }
}

/// The JSON report of `verify --output json` against its schema (docs/verify-report.schema.json).
fn verify_json(stdout: &str) -> serde_json::Value {
    json_with_schema(stdout, "verify-report.schema.json")
}

/// Element names of an XML document in order, checking every tag closes where it should
/// (a small well-formedness check: no attributes with `>` in them, no CDATA).
fn xml_elements(xml: &str) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = xml.trim_start();
    rest = rest
        .strip_prefix("<?xml")
        .map(|r| &r[r.find("?>").expect("declaration ends") + 2..])
        .unwrap_or(rest);
    while let Some(i) = rest.find('<') {
        assert!(
            !rest[..i].contains('>') && !rest[..i].contains('<'),
            "stray markup: {:?}",
            &rest[..i]
        );
        let j = rest[i..].find('>').expect("tag ends") + i;
        let tag = &rest[i + 1..j];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "closing tag in\n{xml}");
        } else {
            let name = tag.split_whitespace().next().unwrap().trim_end_matches('/');
            assert_eq!(tag.matches('"').count() % 2, 0, "quotes in <{tag}>");
            seen.push(name.to_string());
            if !tag.ends_with('/') {
                open.push(name.to_string());
            }
        }
        rest = &rest[j + 1..];
    }
    assert!(
        open.is_empty() && rest.trim().is_empty(),
        "unclosed {open:?}"
    );
    seen
}

/// `verify --output json` follows its schema and lists where records are missing;
/// `--junit` writes one testcase per route partition, failures naming their offsets. The
/// exit code is the same as with the table.
#[test]
fn verify_writes_json_and_junit_reports() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 3, 1, &["orders:3"], &["orders:600"]);
    let job = |name: &str, dst: &str, extra: &str| {
        job_config(dir.path(), name, dc.bootstrap(1), dst, extra)
    };
    let mirror = job("mirror", dc.bootstrap(2), "");
    let stale = job("stale", dc.bootstrap(3), "end = 100");
    for c in [&mirror, &stale] {
        km(&["run", "-c", s(c), "--once"], Duration::from_secs(60)).expect_code(EXIT_OK, "run");
    }
    let restored = write(
        dir.path(),
        "restored.toml",
        &fs::read_to_string(&mirror)
            .unwrap()
            .replace(dc.bootstrap(2), dc.bootstrap(3)),
    );

    let good = km(
        &["verify", "-c", s(&mirror), "--output", "json"],
        Duration::from_secs(60),
    );
    good.expect_code(EXIT_OK, "verify --output json of a good copy");
    let j = verify_json(&good.stdout);
    assert_eq!(j["ok"], true, "{j:#}");
    let parts = j["routes"][0]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{j:#}");
    let total: i64 = parts
        .iter()
        .map(|p| p["counts"]["target_records"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 600, "{j:#}");

    // checkpoints show --output json: next offsets with the source's end and the lag.
    for (c, copied) in [(&mirror, None), (&stale, Some(100))] {
        let shown = km(
            &["checkpoints", "show", "-c", s(c), "--output", "json"],
            Duration::from_secs(30),
        );
        shown.expect_code(EXIT_OK, "checkpoints show --output json");
        let j = json_with_schema(&shown.stdout, "checkpoints-show.schema.json");
        let parts = j["routes"][0]["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 3, "{j:#}");
        for p in parts {
            let end = p["log_end_offset"].as_i64().expect("log end offset");
            let next = p["next_offset"].as_i64().unwrap();
            assert_eq!(next, copied.unwrap_or(end), "{p:#}");
            assert_eq!(p["lag"].as_i64(), Some(end - next), "{p:#}");
        }
    }

    let junit = dir.path().join("verify.xml");
    let bad = km(
        &[
            "verify",
            "-c",
            s(&restored),
            "--output",
            "json",
            "--junit",
            s(&junit),
        ],
        Duration::from_secs(60),
    );
    bad.expect_code(
        EXIT_MISMATCH,
        "verify --output json against the stale target",
    );
    let j = verify_json(&bad.stdout);
    assert_eq!(j["ok"], false);
    let parts = j["routes"][0]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{j:#}");
    for p in parts {
        let n = p["counts"]["source_records"].as_i64().unwrap();
        assert_eq!(p["verdict"], "MISMATCH", "{p:#}");
        assert_eq!(p["counts"]["missing"].as_i64(), Some(n - 100), "{p:#}");
        let first: Vec<i64> = (100..110).collect();
        assert_eq!(p["first_missing"], serde_json::json!(first), "{p:#}");
    }
    let xml = fs::read_to_string(&junit).unwrap();
    let elements = xml_elements(&xml);
    assert_eq!(
        elements.iter().filter(|e| *e == "testcase").count(),
        3,
        "{xml}"
    );
    assert_eq!(
        elements.iter().filter(|e| *e == "failure").count(),
        3,
        "{xml}"
    );
    assert!(
        xml.contains("tests=\"3\" failures=\"3\"")
            && xml.contains("first missing source offsets: 100, 101, 102"),
        "{xml}"
    );
}

/// Issue 9: `check --output json` and `run --output json` print one JSON document on stdout
/// (logs stay on stderr) that matches its schema and carries the plan's and the run's
/// numbers; a run whose partitions halt still prints its summary (exit 1), and an error
/// before a run has a summary prints nothing on stdout (exit 4, the error on stderr).
#[test]
fn check_and_run_print_json_matching_their_schemas() {
    const SEEDED: i64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 2, 1, &["orders:3"], &["orders:600"]);
    let mirror = write(
        dir.path(),
        "mirror.toml",
        &mirror_config(dc.bootstrap(1), dc.bootstrap(2), "end = \"snapshot\"\n"),
    );

    // Offline: the routing file alone, its secret masked.
    let secret = "hunter2-json-secret";
    let offline_cfg = write(
        dir.path(),
        "offline.toml",
        &fs::read_to_string(&mirror).unwrap().replace(
            "[clusters.dst]\n",
            "[clusters.dst]\nproperties = { \"sasl.password\" = \"${KMIRROR_TEST_PW}\" }\n",
        ),
    );
    let offline = km_env(
        &[
            "check",
            "-c",
            s(&offline_cfg),
            "--offline",
            "--output",
            "json",
        ],
        &[("KMIRROR_TEST_PW", secret)],
        Duration::from_secs(30),
    );
    offline.expect_code(EXIT_OK, "check --offline --output json");
    let j = json_with_schema(&offline.stdout, "check-plan.schema.json");
    assert!(j["plan"].is_null(), "{j:#}");
    assert_eq!(j["routing_file"]["routes"][0]["end"]["kind"], "snapshot");
    let dst = j["routing_file"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dst")
        .expect("cluster dst");
    assert_eq!(dst["properties"]["sasl.password"], "******", "{j:#}");
    assert!(
        !offline.stdout.contains(secret) && !offline.stderr.contains(secret),
        "the secret leaked:\n{}\n{}",
        offline.stdout,
        offline.stderr
    );

    // The plan: one task per source partition, ending at the snapshot.
    let plan = |what: &str| {
        let f = km(
            &["check", "-c", s(&mirror), "--output", "json"],
            Duration::from_secs(60),
        );
        f.expect_code(EXIT_OK, what);
        json_with_schema(&f.stdout, "check-plan.schema.json")
    };
    let j = plan("check --output json");
    let tasks = j["plan"]["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3, "{j:#}");
    for (p, t) in tasks.iter().enumerate() {
        let n = share(SEEDED, 3, p as i64);
        assert_eq!(t["route"], "orders");
        assert_eq!(
            t["source"],
            serde_json::json!({"cluster": "src", "topic": "orders", "partition": p})
        );
        assert_eq!(t["target"]["cluster"], "dst");
        assert_eq!(t["target"]["topic"], "orders");
        assert_eq!(t["target"]["partition"], p);
        assert_eq!(t["start"], 0);
        assert_eq!(t["resumes_from_checkpoint"], false);
        assert_eq!(
            t["end"],
            serde_json::json!({"kind": "snapshot", "offset": n}),
            "{t:#}"
        );
        assert_eq!(t["estimate"], n);
    }
    assert_eq!(j["plan"]["estimate_total"], SEEDED);

    // The run: stdout is the summary and nothing else (json_with_schema parses all of it).
    let r = km(
        &["run", "-c", s(&mirror), "--once", "--output", "json"],
        Duration::from_secs(60),
    );
    r.expect_code(EXIT_OK, "run --once --output json");
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!(
        (&j["verdict"], &j["ok"]),
        (&"complete".into(), &true.into())
    );
    assert_eq!(j["exit_code"], EXIT_OK);
    assert_eq!(j["totals"]["acked"], SEEDED, "{j:#}");
    assert_eq!(j["totals"]["read"], SEEDED, "{j:#}");
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{j:#}");
    for (p, row) in parts.iter().enumerate() {
        let n = share(SEEDED, 3, p as i64);
        assert_eq!(row["state"], "done", "{row:#}");
        assert_eq!(row["source_partition"]["partition"], p);
        assert_eq!(row["range"], serde_json::json!({"start": 0, "end": n}));
        assert_eq!(row["counts"]["acked"], n);
        assert_eq!(
            row["target_written"],
            serde_json::json!([{"partition": p, "first": 0, "last": n - 1}]),
            "{row:#}"
        );
    }

    // After the run, the plan resumes each partition from the checkpoint, at its end.
    let j = plan("check --output json after the run");
    for (p, t) in j["plan"]["tasks"].as_array().unwrap().iter().enumerate() {
        let n = share(SEEDED, 3, p as i64);
        assert_eq!(
            (&t["start"], &t["resumes_from_checkpoint"], &t["estimate"]),
            (&n.into(), &true.into(), &0.into()),
            "{t:#}"
        );
    }

    // Halted partitions: exit 1, and still the summary, saying why.
    let halting = write(
        dir.path(),
        "halting.toml",
        &mirror_config(
            dc.bootstrap(1),
            dc.bootstrap(2),
            "end = \"snapshot\"\nvalidate = { max_record_bytes = \"10B\" }\non_error = \"stop\"\n",
        )
        .replace("[checkpoints]\n", "[checkpoints]\njob = \"halting\"\n"),
    );
    let r = km(
        &["run", "-c", s(&halting), "--once", "--output", "json"],
        Duration::from_secs(60),
    );
    r.expect_code(EXIT_MISMATCH, "run --output json with halting partitions");
    // The ERROR log lines went to stderr; stdout still parses as one document.
    assert!(r.stderr.contains("partition halted"), "{}", r.stderr);
    let j = json_with_schema(&r.stdout, "run-summary.schema.json");
    assert_eq!((&j["verdict"], &j["ok"]), (&"failed".into(), &false.into()));
    assert_eq!(j["exit_code"], EXIT_MISMATCH);
    assert!(
        j["summary"]
            .as_str()
            .unwrap()
            .starts_with("FAILED: 3 partitions halted"),
        "{j:#}"
    );
    let halted = j["halted"].as_array().unwrap();
    assert_eq!(halted.len(), 3, "{j:#}");
    for h in halted {
        assert!(
            h["reason"].as_str().unwrap().contains("max_record_bytes"),
            "{h:#}"
        );
    }
    assert!(j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["state"] == "halted" && p["counts"]["acked"] == 0));
    assert_eq!(j["totals"]["failed"], 3, "{j:#}");

    // No summary to print: an unreachable cluster fails before the run. Nothing on stdout.
    let unreachable = write(
        dir.path(),
        "unreachable.toml",
        &mirror_config(&format!("127.0.0.1:{}", closed_port()), dc.bootstrap(2), "")
            .replace("connect_timeout = \"10s\"", "connect_timeout = \"3s\"")
            .replace("[checkpoints]\n", "[checkpoints]\njob = \"unreachable\"\n"),
    );
    for cmd in [&["check"][..], &["run", "--once"][..]] {
        let mut args = cmd.to_vec();
        args.extend(["-c", s(&unreachable), "--output", "json"]);
        let r = km(&args, Duration::from_secs(60));
        r.expect_code(EXIT_CLUSTER, &format!("{cmd:?} --output json, unreachable"));
        assert_eq!(r.stdout, "", "{cmd:?}: nothing on stdout");
        assert!(
            r.stderr.contains("error: cluster \"src\""),
            "{cmd:?}: {}",
            r.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4 and 5. kill -9 and SIGTERM in the middle of a run
// ---------------------------------------------------------------------------------------

const BIG: i64 = 60_000;

/// A dev-cluster seeded with 60k records over 6 partitions and a routing file whose route
/// is rate limited to 15k records/s (about 4 s for the whole copy).
fn big_setup(dir: &Path) -> (DevCluster, PathBuf) {
    let dc = DevCluster::start(dir, 2, 3, &["orders:6"], &["orders:60000"]);
    let cfg = write(
        dir,
        "big.toml",
        &mirror_config(
            dc.bootstrap(1),
            dc.bootstrap(2),
            "max_messages_per_sec = 15000",
        ),
    );
    (dc, cfg)
}

/// Starts `run --once` and returns it once it has run at least 1.5 s AND written a
/// checkpoint with progress, so the interruption really lands in the middle of the copy.
fn start_and_wait_for_progress(cfg: &Path) -> Running {
    start_and_wait_for_progress_with(cfg, &[])
}

/// [`start_and_wait_for_progress`] with more `run` arguments.
fn start_and_wait_for_progress_with(cfg: &Path, extra: &[&str]) -> Running {
    let cp_file = cfg
        .parent()
        .unwrap()
        .join("checkpoints/big.checkpoint.json");
    let mut args = vec!["run", "-c", s(cfg), "--once", "--progress", "1"];
    args.extend(extra);
    let mut run = Running::spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.started.elapsed() < Duration::from_millis(1500) || checkpoint_file_sum(&cp_file) == 0
    {
        if !run.still_running() {
            let f = run.wait(Duration::from_secs(1));
            panic!("the rate-limited run ended before it could be interrupted: {f:?}");
        }
        assert!(Instant::now() < deadline, "no checkpointed progress in 30s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(run.still_running(), "run ended before the interruption");
    run
}

#[test]
fn kill_9_mid_run_then_rerun_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_dc, cfg) = big_setup(dir.path());

    let mut run = start_and_wait_for_progress(&cfg);
    let pid = run.pid();
    run.child.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    let killed = run.wait(Duration::from_secs(10));
    assert_eq!(killed.code, -1, "killed by a signal: {killed:?}");
    assert!(!killed.stdout.contains("complete"), "{}", killed.stdout);

    let (before, _) = shown_next_offsets(&cfg);
    assert!(
        before > 0 && before < BIG,
        "the checkpoint left by pid {pid} is mid-copy: {before}"
    );

    let rerun = km(
        &["run", "-c", s(&cfg), "--once", "--progress", "0"],
        Duration::from_secs(90),
    );
    rerun.expect_code(EXIT_OK, "rerun after kill -9");
    assert!(rerun.stdout.contains("complete in "), "{}", rerun.stdout);
    let t = totals(&rerun.stdout);
    assert_eq!(
        t["acked"],
        BIG - before,
        "the rerun starts at the checkpoint"
    );
    assert_eq!((t["failed"], t["pending"]), (0, 0));
    let (after, _) = shown_next_offsets(&cfg);
    assert_eq!(after, BIG);

    let v = km(&["verify", "-c", s(&cfg)], Duration::from_secs(90));
    v.expect_code(EXIT_OK, "verify after kill -9 and rerun");
    let rows = table(&v.stdout, "route");
    assert_eq!(rows.len(), 6);
    let mut dups = 0i64;
    for r in &rows {
        assert_eq!(num(r, "source records"), share(BIG, 6, 0), "{r:?}");
        assert_eq!(num(r, "missing"), 0, "{r:?}");
        assert_eq!(num(r, "altered"), 0, "{r:?}");
        assert_eq!(col(r, "result"), "OK", "{r:?}");
        dups += num(r, "duplicates");
    }
    println!(
        "kill -9 after {:.1}s: checkpoint at {before}/{BIG}; rerun copied {}; verify: missing 0, {dups} duplicates (at-least-once)",
        killed.elapsed.as_secs_f64(),
        t["acked"]
    );
}

/// Exit code of a job locked by another process (src/error.rs).
const EXIT_LOCKED: i32 = 6;

#[test]
fn a_live_run_holds_the_job_lock_against_a_second_run_and_reset_until_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (dc, cfg) = big_setup(dir.path());

    let mut first = start_and_wait_for_progress(&cfg);
    let pid = first.pid();
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    for cmd in [
        &["run", "--once", "--progress", "0"][..],
        &["checkpoints", "reset", "--execute"][..],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-c", s(&cfg)]);
        let r = km(&args, Duration::from_secs(60));
        r.expect_code(
            EXIT_LOCKED,
            &format!("{cmd:?} while pid {pid} runs the job"),
        );
        assert!(
            r.stderr
                .contains(&format!("pid {pid} on host {host} since "))
                && r.stderr.contains("big.lock"),
            "{cmd:?}: the refusal names the holder: {}",
            r.stderr
        );
        assert!(
            r.elapsed < Duration::from_secs(10),
            "refused at once: {:?}",
            r.elapsed
        );
    }
    assert!(first.still_running(), "the holder is untouched");

    // The OS drops a killed holder's lock: no stale pid file blocks the next run.
    first.child.kill().expect("SIGKILL");
    assert_eq!(first.wait(Duration::from_secs(10)).code, -1);
    let (before, _) = shown_next_offsets(&cfg);
    assert!(before > 0 && before < BIG, "killed mid-copy: {before}");
    let rerun = km(
        &["run", "-c", s(&cfg), "--once", "--progress", "0"],
        Duration::from_secs(90),
    );
    rerun.expect_code(EXIT_OK, "rerun after the holder was killed");
    assert_eq!(totals(&rerun.stdout)["acked"], BIG - before);
    assert_eq!(shown_next_offsets(&cfg).0, BIG);
    let shown = km(
        &["checkpoints", "show", "-c", s(&cfg)],
        Duration::from_secs(30),
    );
    assert!(
        shown
            .stdout
            .contains("orders: source cluster id mockCluster")
            && shown.stdout.contains("target cluster id mockCluster"),
        "the checkpoint shows the cluster ids it is tied to: {}",
        shown.stdout
    );
    drop(dc);
}

#[test]
fn checkpoints_that_stay_unwritable_stop_the_run_with_exit_70_and_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (_dc, cfg) = big_setup(dir.path());
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "interval = \"500ms\"",
        "interval = \"500ms\"\nmax_unwritten = \"1s\"",
    );
    fs::write(&cfg, text).unwrap();

    let mut run = start_and_wait_for_progress(&cfg);
    // A plain file where the checkpoint directory was: fails for root too (unlike chmod).
    let cp_dir = dir.path().join("checkpoints");
    fs::rename(&cp_dir, dir.path().join("checkpoints.away")).unwrap();
    fs::write(&cp_dir, b"not a directory").unwrap();
    assert!(run.still_running());
    let f = run.wait(Duration::from_secs(60));
    f.expect_code(70, "checkpoints unwritable for longer than max_unwritten");
    assert!(
        f.stderr.contains("could not be written") && f.stderr.contains("big.checkpoint.json"),
        "{}",
        f.stderr
    );
    assert_eq!(
        f.stderr
            .matches("the write is retried with backoff")
            .count(),
        1,
        "one warning per episode of failures: {}",
        f.stderr
    );
    assert!(!f.stdout.contains("complete"), "{}", f.stdout);
}

/// A checkpoint directory that cannot be written (here: under a plain file, which stops
/// root too) is an I/O error, exit 70, refused before anything connects or is copied; exit 5
/// stays for checkpoints that cannot be trusted.
#[test]
fn an_unwritable_checkpoint_directory_exits_70_before_copying() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("state"), b"a file, not a directory").unwrap();
    let cfg = write(
        dir.path(),
        "ro.toml",
        &mirror_config("127.0.0.1:9", "127.0.0.1:9", "").replace(
            "[checkpoints]\n",
            "[checkpoints]\ndir = \"state/checkpoints\"\n",
        ),
    );
    for cmd in [
        &["run", "--once"][..],
        &["checkpoints", "reset", "--execute"][..],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-c", s(&cfg)]);
        let r = km(&args, Duration::from_secs(30));
        r.expect_code(
            70,
            &format!("{cmd:?} with an unwritable checkpoint directory"),
        );
        assert!(
            r.stderr.contains("cannot write") && r.stderr.contains("state/checkpoints"),
            "{cmd:?}: {}",
            r.stderr
        );
    }
}

/// Issue 9: a run stopped by SIGTERM still prints its JSON summary: `stopped`, nothing
/// pending, and the acknowledged total is what the final checkpoint holds.
#[test]
fn sigterm_mid_run_prints_a_stopped_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (_dc, cfg) = big_setup(dir.path());
    let run = start_and_wait_for_progress_with(&cfg, &["--output", "json"]);
    signal(run.pid(), "-TERM");
    let stopped = run.wait(Duration::from_secs(30));
    stopped.expect_code(EXIT_OK, "SIGTERM with --output json");
    let j = json_with_schema(&stopped.stdout, "run-summary.schema.json");
    assert_eq!(
        (&j["verdict"], &j["stopped"], &j["complete"]),
        (&"stopped".into(), &true.into(), &false.into()),
        "{j:#}"
    );
    assert_eq!(j["totals"]["pending"], 0, "{j:#}");
    let acked = j["totals"]["acked"].as_i64().unwrap();
    assert!(acked > 0 && acked < BIG, "{j:#}");
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 6, "{j:#}");
    assert!(
        parts.iter().any(|p| p["state"] == "stopped")
            && parts
                .iter()
                .all(|p| p["state"] == "stopped" || p["state"] == "done"),
        "{j:#}"
    );
    let (cp, _) = shown_next_offsets(&cfg);
    assert_eq!(cp, acked, "final checkpoint == acked");
}

#[test]
fn sigterm_mid_run_stops_cleanly_and_rerun_has_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (_dc, cfg) = big_setup(dir.path());

    let run = start_and_wait_for_progress(&cfg);
    let t0 = Instant::now();
    signal(run.pid(), "-TERM");
    let stopped = run.wait(Duration::from_secs(30));
    let took = t0.elapsed();
    stopped.expect_code(EXIT_OK, "SIGTERM");
    assert!(
        took < Duration::from_secs(15),
        "SIGTERM to exit took {took:?}"
    );
    assert!(stopped.stdout.contains("stopped in "), "{}", stopped.stdout);
    let t = totals(&stopped.stdout);
    assert_eq!(
        (t["pending"], t["failed"]),
        (0, 0),
        "a clean stop settles everything in flight:\n{}",
        stopped.stdout
    );
    assert!(t["acked"] > 0 && t["acked"] < BIG, "{}", stopped.stdout);
    // The final checkpoint covers exactly what was acknowledged.
    let (cp, _) = shown_next_offsets(&cfg);
    assert_eq!(cp, t["acked"], "final checkpoint == acked");

    let rerun = km(
        &["run", "-c", s(&cfg), "--once", "--progress", "0"],
        Duration::from_secs(90),
    );
    rerun.expect_code(EXIT_OK, "rerun after SIGTERM");
    assert!(rerun.stdout.contains("complete in "), "{}", rerun.stdout);
    assert_eq!(totals(&rerun.stdout)["acked"], BIG - t["acked"]);

    let v = km(
        &["verify", "-c", s(&cfg), "--fail-on-duplicates"],
        Duration::from_secs(90),
    );
    v.expect_code(
        EXIT_OK,
        "verify --fail-on-duplicates after SIGTERM and rerun",
    );
    for r in table(&v.stdout, "route") {
        assert_eq!(num(&r, "source records"), share(BIG, 6, 0), "{r:?}");
        assert_clean(&r);
    }
    println!(
        "SIGTERM after {:.1}s: exited in {:.2}s with {} acked; rerun copied the other {}",
        stopped.elapsed.as_secs_f64() - took.as_secs_f64(),
        took.as_secs_f64(),
        t["acked"],
        BIG - t["acked"]
    );
}

// ---------------------------------------------------------------------------------------
// 6. configuration errors
// ---------------------------------------------------------------------------------------

/// Every file in tests/configs/ is a malformed routing file whose header says what `check`
/// must report: `# expect: LINE:COL: fragment` (one or more) and optionally
/// `# expect-count: N`. Their clusters point at 127.0.0.1:9, where nothing listens: a file
/// that got as far as connecting would take the 10 s connect timeout, so the time bound
/// also proves the refusal comes before any connection.
#[test]
fn malformed_routing_files_exit_3_with_file_line_column() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/configs")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "only {} fixtures", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        let expects: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .map(|e| {
                let (lc, frag) = e.split_once(": ").expect("`# expect: L:C: fragment`");
                (lc.to_string(), frag.to_string())
            })
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no `# expect:` line",
            f.display()
        );
        let count: Option<usize> = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-count: "))
            .map(|n| n.trim().parse().unwrap());
        let r = km(&["check", "-c", s(f)], Duration::from_secs(30));
        let mut problems = Vec::new();
        if r.code != EXIT_CONFIG {
            problems.push(format!("exit {} (want {EXIT_CONFIG})", r.code));
        }
        if r.elapsed > Duration::from_secs(3) {
            problems.push(format!("took {:?} (did it connect?)", r.elapsed));
        }
        for (lc, frag) in &expects {
            // The diagnostic line itself must carry both the position and the message.
            let pos = format!("{}:{lc}: ", f.display());
            let hit = r
                .stderr
                .lines()
                .any(|l| l.contains(&pos) && l.contains(frag.as_str()));
            if !hit {
                problems.push(format!("no line with `{pos}` and `{frag}`"));
            }
        }
        let diag_lines = r
            .stderr
            .lines()
            .filter(|l| l.contains(&format!("{}:", f.display())))
            .count();
        let want = count.unwrap_or(1);
        if diag_lines != want {
            problems.push(format!("{diag_lines} diagnostics, want {want}"));
        }
        if want > 1
            && !r
                .stderr
                .contains(&format!("{want} problems in the routing file"))
        {
            problems.push("no problem count".into());
        }
        if !r.stdout.is_empty() {
            problems.push(format!("printed to stdout: {}", r.stdout));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {}",
                f.file_name().unwrap().to_string_lossy(),
                problems.join("; "),
                r.stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn missing_routing_file_is_a_config_error() {
    let r = km(
        &["check", "-c", "/nonexistent/kmirror.toml"],
        Duration::from_secs(10),
    );
    r.expect_code(EXIT_CONFIG, "missing routing file");
    assert!(
        r.stderr
            .contains("/nonexistent/kmirror.toml: cannot read routing file"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("No such file or directory").count(),
        1,
        "the OS error is printed once: {}",
        r.stderr
    );
}

/// An OS error under a kmirror error is printed once, not once per link of the chain
/// (here: a checkpoint that cannot be read because its directory is under a file).
#[test]
fn os_errors_are_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "not-a-dir", "");
    let cfg = write(
        dir.path(),
        "cp.toml",
        &mirror_config("127.0.0.1:9", "127.0.0.1:9", "").replace(
            "[checkpoints]",
            &format!("[checkpoints]\ndir = \"{}/sub\"", s(&file)),
        ),
    );
    let r = km(
        &["checkpoints", "reset", "-c", s(&cfg)],
        Duration::from_secs(10),
    );
    r.expect_code(70, "checkpoint directory under a file (an I/O error)");
    assert!(
        r.stderr.contains("cp.checkpoint.json: cannot"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches("os error").count(),
        1,
        "the OS error is printed once: {}",
        r.stderr
    );
}

/// `check` changes nothing: a missing target topic under create_target_topics is reported
/// as what `run` will create, not created (the mock refuses CreateTopics, so an attempt
/// would fail the check); `check --create-topics` does attempt it.
#[test]
fn check_does_not_create_target_topics_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 2, 1, &["orders:2"], &[]);
    let cfg = write(
        dir.path(),
        "create.toml",
        &mirror_config(
            dc.bootstrap(1),
            dc.bootstrap(2),
            "target_topic = \"orders.copy\"\ncreate_target_topics = true",
        ),
    );
    let r = km(&["check", "-c", s(&cfg)], Duration::from_secs(60));
    r.expect_code(EXIT_OK, "check with a missing target topic to create");
    assert!(
        r.stdout
            .contains("target topic dst:orders.copy does not exist: `run` will create it"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("created target topic"), "{}", r.stdout);
    assert!(r.stdout.contains("(1 route, 2 clusters;"), "{}", r.stdout);
    let r = km(
        &["check", "--create-topics", "-c", s(&cfg)],
        Duration::from_secs(60),
    );
    r.expect_code(EXIT_CLUSTER, "check --create-topics against the mock");
    assert!(
        r.stderr
            .contains("cluster \"dst\": cannot create topic \"orders.copy\""),
        "{}",
        r.stderr
    );
}

/// `check --offline` validates where the secrets are not: an unset `${ENV}` is a warning.
/// Online `check` still refuses it. Every `-c` has help text.
#[test]
fn offline_check_warns_about_unset_env_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "env.toml",
        &mirror_config("${KMIRROR_UNSET_BROKERS}", "127.0.0.1:9", "").replace(
            "[clusters.dst]",
            "[clusters.src.properties]\n\"sasl.password\" = \"${KMIRROR_UNSET_PW}\"\n[clusters.dst]",
        ),
    );
    let r = km(
        &["check", "--offline", "-c", s(&cfg)],
        Duration::from_secs(10),
    );
    r.expect_code(EXIT_OK, "offline check with unset variables");
    for v in ["KMIRROR_UNSET_BROKERS", "KMIRROR_UNSET_PW"] {
        assert!(
            r.stderr
                .contains(&format!("environment variable `{v}` is not set")),
            "{v}: {}",
            r.stderr
        );
    }
    let r = km(&["check", "-c", s(&cfg)], Duration::from_secs(10));
    r.expect_code(EXIT_CONFIG, "online check with unset variables");
    for cmd in [
        &["check"][..],
        &["run"],
        &["verify"],
        &["checkpoints", "show"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let r = km(&args, Duration::from_secs(10));
        let line = r
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with("-c, --config <CONFIG>"))
            .unwrap_or_else(|| panic!("{cmd:?} --help: {}", r.stdout));
        assert!(
            line.contains("routing file"),
            "{cmd:?}: -c has help text: {line}"
        );
    }
}

/// Exit 2 for usage errors and 5 for a checkpoint that cannot be trusted (truncated, not a
/// checkpoint, another job's), all before connecting (the clusters do not exist).
#[test]
fn usage_errors_exit_2_and_untrustworthy_checkpoints_exit_5() {
    let r = km(&["run"], Duration::from_secs(10));
    r.expect_code(2, "run without -c");
    assert!(r.stderr.contains("--config"), "{}", r.stderr);
    km(&["bogus"], Duration::from_secs(10)).expect_code(2, "unknown subcommand");

    let dir = tempfile::tempdir().unwrap();
    let cfg = |job: &str| {
        write(
            dir.path(),
            &format!("{job}.toml"),
            &mirror_config("127.0.0.1:9", "127.0.0.1:9", "").replace(
                "[run]\nconnect_timeout = \"10s\"",
                "[run]\nconnect_timeout = \"1s\"",
            ),
        )
    };
    let (a, b) = (cfg("a"), cfg("b"));
    let cp_dir = dir.path().join("checkpoints");
    // `checkpoints reset` without --to only forgets: it writes a valid, empty checkpoint
    // without connecting.
    km(
        &["checkpoints", "reset", "-c", s(&a), "--execute"],
        Duration::from_secs(10),
    )
    .expect_code(EXIT_OK, "checkpoints reset (forget)");
    let good = fs::read_to_string(cp_dir.join("a.checkpoint.json")).unwrap();
    km(
        &["checkpoints", "show", "-c", s(&a)],
        Duration::from_secs(10),
    )
    .expect_code(EXIT_OK, "show the empty checkpoint");
    // Nothing to verify yet is a failure, not a silent pass.
    let v = km(&["verify", "-c", s(&a)], Duration::from_secs(30));
    v.expect_code(EXIT_MISMATCH, "verify with nothing checkpointed");
    assert!(v.stderr.contains("nothing to verify"), "{}", v.stderr);

    let cases = [
        ("truncated", good[..good.len() / 2].to_string(), "truncated"),
        (
            "not a checkpoint",
            "{\"hello\": 1}".to_string(),
            "not a kmirror checkpoint",
        ),
        ("empty", String::new(), "empty"),
        (
            "edited",
            good.replace("\"job\": \"a\"", "\"job\": \"A\""),
            "checksum",
        ),
    ];
    for (what, text, message) in &cases {
        fs::write(cp_dir.join("a.checkpoint.json"), text).unwrap();
        for cmd in [
            &["check"][..],
            &["run", "--once"][..],
            &["verify"][..],
            &["checkpoints", "show"][..],
            &["checkpoints", "reset", "--execute"][..],
        ] {
            let mut args = cmd.to_vec();
            args.extend(["-c", s(&a)]);
            let r = km(&args, Duration::from_secs(30));
            r.expect_code(5, &format!("{cmd:?} with a {what} checkpoint"));
            assert!(
                r.stderr.contains(message) && r.stderr.contains("a.checkpoint.json"),
                "{cmd:?} with a {what} checkpoint: {}",
                r.stderr
            );
            assert!(
                r.elapsed < Duration::from_secs(5),
                "{cmd:?}: {:?}",
                r.elapsed
            );
        }
    }
    // Another job's checkpoint copied into place is refused too.
    fs::write(cp_dir.join("b.checkpoint.json"), &good).unwrap();
    for cmd in [
        &["run", "--once"][..],
        &["checkpoints", "reset", "--execute"][..],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["-c", s(&b)]);
        let r = km(&args, Duration::from_secs(30));
        r.expect_code(5, &format!("{cmd:?} over another job's checkpoint"));
        assert!(
            r.stderr.contains("belongs to job \"a\", not \"b\""),
            "{cmd:?}: {}",
            r.stderr
        );
    }
    assert_eq!(
        fs::read_to_string(cp_dir.join("b.checkpoint.json")).unwrap(),
        good,
        "a refused reset leaves the file alone"
    );
}

// ---------------------------------------------------------------------------------------
// 7. unreachable clusters
// ---------------------------------------------------------------------------------------

/// A port where nothing listens (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A port where an HTTP server answers every connection with a 400 and closes it.
fn http_junk_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 22\r\nConnection: close\r\n\r\n<h1>Bad Request</h1>\r\n",
            );
        }
    });
    port
}

#[test]
fn unreachable_or_non_kafka_cluster_exits_4_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 1, 1, &["orders:2"], &[]);
    // Accepts connections (the kernel does, from the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    // Each failure names its cause, found by kmirror's own probe (librdkafka says
    // BrokerTransportFailure to all of them).
    let cases = [
        (
            "closed port",
            format!("127.0.0.1:{}", closed_port()),
            "connection refused",
        ),
        (
            "HTTP server",
            format!("127.0.0.1:{}", http_junk_port()),
            "an HTTP server answered",
        ),
        (
            "unresolvable name",
            "nonexistent.invalid:9092".to_string(),
            "the name does not resolve",
        ),
        (
            "silent listener",
            format!("127.0.0.1:{}", silent.local_addr().unwrap().port()),
            "accepted the connection but sent nothing back",
        ),
    ];
    for (what, addr, cause) in &cases {
        // `dst` is real; `src` is the broken one (and is contacted second, so a message that
        // names the first cluster it tried would be wrong).
        let cfg = write(
            dir.path(),
            "unreachable.toml",
            &format!(
                r#"[run]
connect_timeout = "3s"
[clusters.src]
bootstrap = "{addr}"
[clusters.dst]
bootstrap = "{}"
[[routes]]
name = "orders"
source = "src"
topics = ["orders"]
target = "dst"
"#,
                dc.bootstrap(1)
            ),
        );
        for cmd in [&["check"][..], &["run", "--once"][..]] {
            let mut args = cmd.to_vec();
            args.extend(["-c", s(&cfg)]);
            let r = km(&args, Duration::from_secs(60));
            r.expect_code(EXIT_CLUSTER, &format!("{cmd:?} against a {what}"));
            assert!(
                r.elapsed < Duration::from_secs(20),
                "{cmd:?} against a {what} took {:?}",
                r.elapsed
            );
            assert!(
                r.stderr.contains(&format!("cluster \"src\" ({addr})"))
                    && r.stderr.contains("no Kafka broker answered within 3s"),
                "{cmd:?} against a {what}: {}",
                r.stderr
            );
            assert!(!r.stderr.contains("cluster \"dst\""), "{}", r.stderr);
            assert!(
                r.stderr.contains(cause),
                "{cmd:?} against a {what} says \"{cause}\": {}",
                r.stderr
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8. missing topics
// ---------------------------------------------------------------------------------------

#[test]
fn missing_topics_and_small_targets_exit_4_naming_cluster_and_topic() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 2, 1, &["orders:6", "small:2"], &["orders:600"]);
    let cases = [
        (
            "missing source topic",
            r#"topics = ["orders", "nope"]"#,
            r#"cluster "src": topic "nope" does not exist (route "orders" reads it)"#,
        ),
        (
            "regex matching nothing",
            r#"topic_regex = "payments\\..*""#,
            r#"route "orders": topic_regex "payments\..*" matches no topic on cluster "src""#,
        ),
        (
            "target too small for preserve",
            "topics = [\"orders\"]\ntarget_topic = \"small\"",
            r#"target topic "small" on cluster "dst" has 2 partitions but partitioning = "preserve" needs at least 6"#,
        ),
        (
            "missing target topic",
            "topics = [\"orders\"]\ntarget_topic = \"{topic}.copy\"",
            r#"cluster "dst": topic "orders.copy" does not exist (route "orders" writes to it; create it with 6 partitions"#,
        ),
    ];
    for (what, topics, message) in cases {
        let cfg = write(
            dir.path(),
            "topics.toml",
            &format!(
                r#"[run]
connect_timeout = "5s"
[clusters.src]
bootstrap = "{}"
[clusters.dst]
bootstrap = "{}"
[[routes]]
name = "orders"
source = "src"
target = "dst"
{topics}
"#,
                dc.bootstrap(1),
                dc.bootstrap(2)
            ),
        );
        for cmd in ["check", "run"] {
            let r = km(&[cmd, "-c", s(&cfg)], Duration::from_secs(60));
            r.expect_code(EXIT_CLUSTER, &format!("{cmd}: {what}"));
            assert!(
                r.stderr.contains(message),
                "{cmd}: {what}: want `{message}` in:\n{}",
                r.stderr
            );
        }
        // Nothing was copied or checkpointed (the directory may hold the job's lock file).
        assert!(
            !dir.path()
                .join("checkpoints/topics.checkpoint.json")
                .exists(),
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 9. demo
// ---------------------------------------------------------------------------------------

#[test]
fn demo_runs_and_verifies() {
    let r = km(&["demo", "--records", "5000"], Duration::from_secs(120));
    r.expect_code(EXIT_OK, "demo");
    assert!(r.stdout.contains("demo OK"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("verified 6 partitions: every source record is on the target"),
        "{}",
        r.stdout
    );
}

// ---------------------------------------------------------------------------------------
// 10. secrets never printed
// ---------------------------------------------------------------------------------------

/// A secret from `${ENV}` under a valid property, under a valid property with a value
/// librdkafka refuses, inside a bad `sasl.jaas.config`, and under a mistyped property name,
/// never appears in what any command prints at -vv (librdkafka's debug lines included).
#[test]
fn secrets_from_env_never_appear_in_output_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 2, 1, &["orders:2"], &["orders:20"]);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let secret = format!("Zk{:x}q{}", nanos, std::process::id());
    let variants = [
        (
            "valid property",
            r#""security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanism" = "PLAIN"
"sasl.username" = "kmirror"
"sasl.password" = "${KMIRROR_TEST_SECRET}""#,
        ),
        (
            "refused value",
            r#""security.protocol" = "${KMIRROR_TEST_SECRET}""#,
        ),
        (
            "bad sasl.jaas.config",
            r#""sasl.jaas.config" = "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"u\" password=\"${KMIRROR_TEST_SECRET}\";""#,
        ),
        (
            // librdkafka's configuration dump at -vv quotes non-sensitive properties.
            "librdkafka debug log",
            r#""debug" = "conf,broker"
"client.rack" = "${KMIRROR_TEST_SECRET}""#,
        ),
        (
            "mistyped property",
            r#""sasl.pasword" = "${KMIRROR_TEST_SECRET}""#,
        ),
    ];
    for (what, props) in variants {
        let cfg = write(
            dir.path(),
            "secret.toml",
            &format!(
                r#"[checkpoints]
dir = "{dir}"
[run]
connect_timeout = "3s"
[clusters.src]
bootstrap = "{src}"
[clusters.src.properties]
{props}
[clusters.dst]
bootstrap = "{dst}"
[clusters.dst.properties]
{props}
[[routes]]
name = "orders"
source = "src"
topics = ["orders"]
target = "dst"
end = "snapshot"
"#,
                dir = s(dir.path()),
                src = dc.bootstrap(1),
                dst = dc.bootstrap(2),
            ),
        );
        let commands: [&[&str]; 7] = [
            &["check"],
            &["check", "--offline"],
            &["run", "--once"],
            &["verify"],
            &["checkpoints", "show"],
            &["checkpoints", "reset", "--to", "earliest"],
            &["checkpoints", "reset"],
        ];
        for cmd in commands {
            let mut args = vec!["-vv"];
            args.extend_from_slice(cmd);
            args.extend(["-c", s(&cfg)]);
            let r = km_env(
                &args,
                &[("KMIRROR_TEST_SECRET", secret.as_str())],
                Duration::from_secs(60),
            );
            assert!(
                !r.stdout.contains(&secret) && !r.stderr.contains(&secret),
                "{what}: `kmirror {}` printed the secret (exit {})",
                args.join(" "),
                r.code
            );
            // The commands did run (and said something), so the assertion above is not
            // vacuous: -vv prints kmirror's and librdkafka's debug lines.
            assert!(
                !r.stderr.is_empty() || !r.stdout.is_empty(),
                "{what}: {args:?} printed nothing"
            );
        }
    }
}

/// `dev-cluster` on SIGTERM says what it does (shuts its clusters down), not the copy
/// path's "writing the final checkpoint", and exits 0.
#[test]
fn dev_cluster_sigterm_says_it_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut dc = DevCluster::start(dir.path(), 1, 1, &[], &[]);
    signal(dc.child.id(), "-TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = dc.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "dev-cluster did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(EXIT_OK));
    let err = fs::read_to_string(dir.path().join("dev-cluster.stderr")).unwrap();
    assert!(
        err.contains("shutting the in-memory clusters down"),
        "{err}"
    );
    assert!(!err.contains("checkpoint"), "{err}");
}

/// `checkpoints reset` shows old -> new per partition and writes nothing without
/// --execute; --route and --topic T[:P,..] scope it; a bad --to, an unknown route and a
/// --topic matching nothing are usage errors (exit 2) naming the flag.
#[test]
fn checkpoints_reset_previews_scopes_and_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 2, 1, &["orders:2"], &["orders:20"]);
    let cfg = write(
        dir.path(),
        "reset.toml",
        &mirror_config(dc.bootstrap(1), dc.bootstrap(2), ""),
    );
    km(
        &["run", "--once", "--progress", "0", "-c", s(&cfg)],
        Duration::from_secs(60),
    )
    .expect_code(EXIT_OK, "run --once");
    let cp_file = dir.path().join("checkpoints/reset.checkpoint.json");
    let before = fs::read_to_string(&cp_file).unwrap();
    let offsets = |cfg: &Path| -> Vec<(String, i64)> {
        let (_, rows) = shown_next_offsets(cfg);
        rows.iter()
            .map(|r| (col(r, "source").to_string(), num(r, "next offset")))
            .collect()
    };
    assert_eq!(
        offsets(&cfg),
        vec![("src:orders/0".into(), 10), ("src:orders/1".into(), 10)]
    );

    // Preview: old -> new for each partition, nothing written.
    let r = km(
        &["checkpoints", "reset", "--to", "earliest", "-c", s(&cfg)],
        Duration::from_secs(60),
    );
    r.expect_code(EXIT_OK, "reset preview");
    let rows = table(&r.stdout, "route");
    assert_eq!(rows.len(), 2, "{}", r.stdout);
    for row in &rows {
        assert_eq!(col(row, "next offset now"), "10", "{row:?}");
        assert_eq!(col(row, "after reset"), "0", "{row:?}");
    }
    assert!(r.stdout.contains("preview only"), "{}", r.stdout);
    assert_eq!(
        fs::read_to_string(&cp_file).unwrap(),
        before,
        "a preview writes nothing"
    );

    // --topic orders:1 --execute moves only partition 1.
    km(
        &[
            "checkpoints",
            "reset",
            "--to",
            "earliest",
            "--topic",
            "orders:1",
            "--route",
            "orders",
            "--execute",
            "-c",
            s(&cfg),
        ],
        Duration::from_secs(60),
    )
    .expect_code(EXIT_OK, "scoped reset");
    assert_eq!(
        offsets(&cfg),
        vec![("src:orders/0".into(), 10), ("src:orders/1".into(), 0)]
    );
    // Forgetting partition 0 only.
    km(
        &[
            "checkpoints",
            "reset",
            "--topic",
            "orders:0",
            "--execute",
            "-c",
            s(&cfg),
        ],
        Duration::from_secs(60),
    )
    .expect_code(EXIT_OK, "scoped forget");
    assert_eq!(offsets(&cfg), vec![("src:orders/1".into(), 0)]);

    let after = fs::read_to_string(&cp_file).unwrap();
    for (args, flag) in [
        (&["--to", "bogus"][..], "--to"),
        (&["--to", "-5"][..], "--to"),
        (&["--route", "nope"][..], "--route"),
        (&["--topic", "nope:0", "--to", "earliest"][..], "--topic"),
        (&["--topic", "orders:x"][..], "--topic"),
    ] {
        let mut a = vec!["checkpoints", "reset", "--execute", "-c", s(&cfg)];
        a.extend_from_slice(args);
        let r = km(&a, Duration::from_secs(60));
        r.expect_code(2, &format!("{args:?}"));
        assert!(r.stderr.contains(flag), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("`start`"), "{args:?}: {}", r.stderr);
    }
    assert_eq!(
        fs::read_to_string(&cp_file).unwrap(),
        after,
        "usage errors write nothing"
    );
}

// ---------------------------------------------------------------------------------------
// 11. dev-cluster with many topics
// ---------------------------------------------------------------------------------------

/// 300 topics on 2 clusters (the count form `--topic t:300:1`) are ready promptly, and a
/// `topic_regex` route over all of them copies everything. Before the mock's thread was
/// nudged, each topic creation could wait for its 1 s poll timeout: 300 topics on 2 clusters
/// took from 16 s to minutes (50 topics once took 25 s). The bound below is generous (the
/// fixed start takes under a second); it only catches that regression.
#[test]
fn dev_cluster_creates_300_topics_promptly_and_a_regex_route_copies_them() {
    const TOPICS: usize = 300;
    const PER_TOPIC: u64 = 10;
    for (bad, says) in [
        ("t:0:1", "is not a topic count"),
        ("t:x:1", "is not a topic count"),
        ("t:3:0", "at least 1 partition"),
        ("a:b:c:1", "PREFIX:COUNT:PARTITIONS"),
        ("a b:2:1", "is not a valid topic name"),
    ] {
        let r = km(&["dev-cluster", "--topic", bad], Duration::from_secs(10));
        r.expect_code(2, bad);
        assert!(r.stderr.contains(says), "{bad}: {}", r.stderr);
    }
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let dc = DevCluster::start(dir.path(), 2, 1, &[&format!("t:{TOPICS}:1")], &[]);
    let ready_in = started.elapsed();
    assert!(
        ready_in < Duration::from_secs(20),
        "300 topics on 2 clusters took {ready_in:?} to be ready"
    );
    let stderr = fs::read_to_string(dir.path().join("dev-cluster.stderr")).unwrap();
    assert!(
        stderr.contains(&format!("creating topics: cluster2 {TOPICS}/{TOPICS}"))
            && stderr.contains(&format!("created {TOPICS} topics on each of 2 clusters")),
        "progress lines on stderr:\n{stderr}"
    );

    let p = common::DataProducer::new(dc.bootstrap(1));
    for t in 1..=TOPICS {
        for i in 0..PER_TOPIC {
            p.send(
                &format!("t{t}"),
                &common::numbered_record(0, i, 1_700_000_000_000),
            );
        }
    }
    p.flush();

    let cfg = write(
        dir.path(),
        "many.toml",
        &format!(
            r#"[checkpoints]
interval = "1s"

[run]
connect_timeout = "10s"

[clusters.src]
bootstrap = "{}"

[clusters.dst]
bootstrap = "{}"

[[routes]]
name = "many"
source = "src"
topic_regex = "t[0-9]+"
target = "dst"
"#,
            dc.bootstrap(1),
            dc.bootstrap(2)
        ),
    );
    let copy_started = Instant::now();
    let run = km(
        &["run", "-c", s(&cfg), "--once", "--progress", "0"],
        Duration::from_secs(300),
    );
    run.expect_code(EXIT_OK, "run --once over 300 topics");
    let t = totals(&run.stdout);
    let want = (TOPICS as u64 * PER_TOPIC) as i64;
    assert_eq!(
        (t["read"], t["acked"], t["pending"], t["failed"]),
        (want, want, 0, 0),
        "{}",
        run.stdout
    );
    assert_eq!(
        table(&run.stdout, "route").len(),
        TOPICS + 1,
        "a row per topic and TOTAL"
    );
    eprintln!(
        "dev-cluster ready in {ready_in:?}; copy of {TOPICS} topics took {:?}",
        copy_started.elapsed()
    );
}

/// `purge`: the dry run prints its plan (text, and JSON that matches
/// docs/purge-plan.schema.json) and exits 0; `--execute` against the mock, which lacks
/// DeleteRecords, exits 4 naming that per partition, with nothing deleted (verify still
/// passes); a partition whose copy is short of its end is refused (exit 1), as is one holding
/// records the route filtered out, unless --include-unselected (the topic is still not
/// deleted under --delete-topic); `--delete-topic --execute` needs the job lock (exit 6);
/// an unknown `--route` is a usage error.
#[test]
fn purge_plans_as_json_and_the_mock_refuses_delete_records() {
    let dir = tempfile::tempdir().unwrap();
    let dc = DevCluster::start(dir.path(), 2, 1, &["orders:3", "acme:3"], &["orders:600"]);
    let mirror = job_config(dir.path(), "mirror", dc.bootstrap(1), dc.bootstrap(2), "");
    km(
        &["run", "-c", s(&mirror), "--once"],
        Duration::from_secs(60),
    )
    .expect_code(EXIT_OK, "run");

    let dry = km(
        &["purge", "-c", s(&mirror), "--output", "json"],
        Duration::from_secs(60),
    );
    dry.expect_code(EXIT_OK, "purge dry run");
    let j = json_with_schema(&dry.stdout, "purge-plan.schema.json");
    assert_eq!(j["executed"], false, "{j:#}");
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{j:#}");
    for p in parts {
        assert_eq!(p["action"], "WOULD DELETE", "{j:#}");
        assert_eq!(p["low"], 0);
        assert_eq!(p["delete_before"], p["verified_end"]);
    }
    let total: i64 = parts.iter().map(|p| p["records"].as_i64().unwrap()).sum();
    assert_eq!(total, 600, "{j:#}");
    let text = km(&["purge", "-c", s(&mirror)], Duration::from_secs(60));
    text.expect_code(EXIT_OK, "purge dry run (text)");
    assert!(
        text.stdout
            .contains("dry run, nothing deleted: 3 of 3 partitions would lose 600 records"),
        "{}",
        text.stdout
    );

    let exec = km(
        &["purge", "-c", s(&mirror), "--execute", "--output", "json"],
        Duration::from_secs(60),
    );
    exec.expect_code(EXIT_CLUSTER, "purge --execute on the mock");
    let j = json_with_schema(&exec.stdout, "purge-plan.schema.json");
    assert_eq!(j["executed"], true);
    for p in j["partitions"].as_array().unwrap() {
        assert_eq!(p["action"], "FAILED", "{j:#}");
        let e = p["error"].as_str().unwrap();
        assert!(
            e.contains("the broker does not support DeleteRecords")
                && e.contains("first offset still 0: nothing was deleted"),
            "{e}"
        );
    }
    km(&["verify", "-c", s(&mirror)], Duration::from_secs(60)).expect_code(
        EXIT_OK,
        "verify after the failed purge: nothing was deleted",
    );

    // Deleting a topic under a live run of the job: refused (the job lock), nothing deleted.
    let cfg = kmirror::config::Config::load(&mirror).unwrap();
    let held = kmirror::checkpoint::JobLock::acquire(&kmirror::checkpoint::JobLock::path_for(&cfg))
        .unwrap();
    let locked = km(
        &["purge", "-c", s(&mirror), "--delete-topic", "--execute"],
        Duration::from_secs(60),
    );
    locked.expect_code(
        EXIT_LOCKED,
        "purge --delete-topic --execute while the job is locked",
    );
    assert!(
        locked.stderr.contains("is held by pid"),
        "{}",
        locked.stderr
    );
    drop(held);

    // A copy to offset 100 of a route that now ends at 150: refused, exit 1.
    let partial = job_config(
        dir.path(),
        "partial",
        dc.bootstrap(1),
        dc.bootstrap(2),
        "end = 100",
    );
    km(
        &["run", "-c", s(&partial), "--once"],
        Duration::from_secs(60),
    )
    .expect_code(EXIT_OK, "run");
    let text = fs::read_to_string(&partial)
        .unwrap()
        .replace("end = 100", "end = 150");
    fs::write(&partial, text).unwrap();
    let refused = km(&["purge", "-c", s(&partial)], Duration::from_secs(60));
    refused.expect_code(EXIT_MISMATCH, "purge of an incomplete copy");
    assert!(
        refused
            .stdout
            .contains("src:orders/0 refused: route \"orders\": INCOMPLETE: stopped at 100, 50 short of the end 150"),
        "{}",
        refused.stdout
    );

    // One tenant of four: the other tenants' records would be lost, so refused (exit 1)
    // unless --include-unselected; --delete-topic never deletes a topic holding them.
    let acme = job_config(
        dir.path(),
        "acme",
        dc.bootstrap(1),
        dc.bootstrap(2),
        "end = \"snapshot\"\ntarget_topic = \"acme\"\nfilter = { json = \"$.tenant_id\", equals = \"acme\" }",
    );
    km(&["run", "-c", s(&acme), "--once"], Duration::from_secs(60)).expect_code(EXIT_OK, "run");
    let refused = km(&["purge", "-c", s(&acme)], Duration::from_secs(60));
    refused.expect_code(EXIT_MISMATCH, "purge with unselected records");
    assert!(
        refused.stdout.contains("not selected by any route (filtered out or skipped) and would be lost; give --include-unselected"),
        "{}",
        refused.stdout
    );
    let included = km(
        &[
            "purge",
            "-c",
            s(&acme),
            "--include-unselected",
            "--delete-topic",
            "--output",
            "json",
        ],
        Duration::from_secs(60),
    );
    included.expect_code(
        EXIT_MISMATCH,
        "the topic is refused, the partitions are not",
    );
    let j = json_with_schema(&included.stdout, "purge-plan.schema.json");
    let parts = j["partitions"].as_array().unwrap();
    assert!(parts.iter().all(|p| p["action"] == "WOULD DELETE"), "{j:#}");
    let unselected: i64 = parts
        .iter()
        .map(|p| p["unselected"].as_i64().unwrap())
        .sum();
    assert!(unselected > 0 && unselected < 600, "{j:#}");
    assert_eq!(j["topics"][0]["deleted"], false, "{j:#}");
    assert!(
        j["topics"][0]["refused"][0]
            .as_str()
            .unwrap()
            .contains(&format!(
                "{unselected} records were not selected by any route"
            )),
        "{j:#}"
    );

    km(
        &["purge", "-c", s(&partial), "--route", "nope"],
        Duration::from_secs(10),
    )
    .expect_code(2, "unknown route");
}
