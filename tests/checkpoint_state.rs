//! Checkpoint state that survives its own failures, against librdkafka mock clusters:
//! a checkpoint directory that stops being writable mid-run (the run keeps copying, retries,
//! and ends with the checkpoint at the true end), one that never comes back (reads stop
//! within `[checkpoints] max_unwritten`, exit 70), and checkpoints tied to the clusters
//! they were made on.
//!
//! Tests may run as root, where `chmod 0500` does not stop a write. The failure used here is
//! one that stops root too: the checkpoint directory is moved away and a plain file put in
//! its place, so creating the temporary file fails with ENOTDIR.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use kmirror::checkpoint::CheckpointStore;
use kmirror::config::Config;

const PARTS: i32 = 4;
const PER: i64 = 6_000;

fn rate_limited_route(topic: &str, end: &str) -> String {
    format!(
        r#"
[[routes]]
name = "r"
source = "src"
target = "dst"
topics = ["{topic}"]
{end}
max_messages_per_sec = 4000
"#
    )
}

/// `config` with checkpoints in `<mirror dir>/cp` (a directory of its own, so it can be
/// swapped for a file).
fn with_own_dir(m: &Mirror, mut config: Config, max_unwritten: Option<Duration>) -> Config {
    config.checkpoints.dir = m.dir.path().join("cp");
    if let Some(d) = max_unwritten {
        config.checkpoints.max_unwritten = d;
    }
    config
}

/// Puts a plain file where the directory `dir` was (the directory is kept at `dir.away`).
fn break_dir(dir: &Path) -> PathBuf {
    let away = dir.with_extension("away");
    fs::rename(dir, &away).unwrap();
    fs::write(dir, b"not a directory").unwrap();
    away
}

fn mend_dir(dir: &Path, away: &Path) {
    fs::remove_file(dir).unwrap();
    fs::rename(away, dir).unwrap();
}

#[test]
fn checkpoint_dir_unwritable_for_two_seconds_mid_run_loses_nothing() {
    let m = Mirror::start(&[("flaky", PARTS)]);
    produce_numbered(m.source(), "flaky", PARTS, 0..PER as u64, 1_700_000_000_000);
    let config = with_own_dir(
        &m,
        m.config("flaky", &rate_limited_route("flaky", "end = \"snapshot\"")),
        None,
    );
    let dir = config.checkpoints.dir.clone();

    let run = spawn_run(&config);
    wait_until("2,000 records checkpointed", WAIT, || {
        checkpoint_progress(&config) >= 2_000
    });
    let away = break_dir(&dir);
    let frozen = fs::read(away.join("flaky.checkpoint.json")).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fs::read(away.join("flaky.checkpoint.json")).unwrap(),
        frozen,
        "no checkpoint could be written while the directory was a file"
    );
    assert!(
        !run.is_finished(),
        "the run is still copying after 2s of failed writes"
    );
    mend_dir(&dir, &away);

    let report = run.join(WAIT);
    assert!(report.complete, "{}", report.table());
    assert!(report.halted.is_empty(), "{:?}", report.halted);
    assert_eq!(report.totals.acked as i64, PARTS as i64 * PER);
    assert_eq!(report.totals.failed, 0);
    let cp = load_checkpoint(&config).expect("final checkpoint");
    for p in 0..PARTS {
        assert_eq!(
            cp.get("r", "flaky", p).expect("partition").next_offset,
            PER,
            "partition {p}: the checkpoint is at the true end"
        );
    }
    let seen = census(&read_topic(m.target(), "flaky"), "src", "flaky");
    assert_exactly_once(&seen, &same_range(PARTS, 0..PER));
}

#[test]
fn checkpoints_unwritable_past_max_unwritten_stop_reads_with_an_io_error() {
    let m = Mirror::start(&[("stuck", PARTS)]);
    produce_numbered(m.source(), "stuck", PARTS, 0..PER as u64, 1_700_000_000_000);
    // Follows forever: only the checkpoint bound can end this run.
    let config = with_own_dir(
        &m,
        m.config("stuck", &rate_limited_route("stuck", "")),
        Some(Duration::from_secs(1)),
    );
    let dir = config.checkpoints.dir.clone();

    let run = spawn_run(&config);
    wait_until("1,000 records checkpointed", WAIT, || {
        checkpoint_progress(&config) >= 1_000
    });
    let away = break_dir(&dir);
    wait_until("the run to stop on its own", WAIT, || run.is_finished());
    let err = run.join_err();
    let code = kmirror::error::exit_code(&anyhow::Error::from(err));
    assert_eq!(code, kmirror::error::exit::OTHER, "an I/O error, not 5");
    mend_dir(&dir, &away);

    // What was copied is bounded by what was read before the stop; the checkpoint left
    // behind is still a valid one to resume from.
    let cp = load_checkpoint(&config).expect("checkpoint");
    let settled: i64 = (0..PARTS)
        .map(|p| cp.get("r", "stuck", p).map_or(0, |c| c.next_offset))
        .sum();
    assert!(settled >= 1_000, "{settled}");
}

/// The container image sets KMIRROR_CHECKPOINT_DIR to its state volume: a routing file on a
/// read-only mount must not get its checkpoints (or lock) beside it, unless it says so.
#[test]
fn checkpoint_dir_defaults_to_kmirror_checkpoint_dir_when_the_file_sets_none() {
    let text = |dir: &str| {
        format!(
            "{dir}\n[clusters.src]\nbootstrap = \"a:9092\"\n[clusters.dst]\nbootstrap = \"b:9092\"\n\
             [[routes]]\nname = \"r\"\nsource = \"src\"\ntarget = \"dst\"\ntopics = [\"t\"]\n"
        )
    };
    let path = Path::new("/config/routes.toml");
    let env = |k: &str| (k == "KMIRROR_CHECKPOINT_DIR").then(|| "/var/lib/kmirror".to_string());
    let no_env = |_: &str| None;
    let c = Config::from_str(path, text(""), &env).unwrap();
    assert_eq!(
        c.checkpoint_file(),
        Path::new("/var/lib/kmirror/routes.checkpoint.json")
    );
    assert_eq!(
        kmirror::checkpoint::JobLock::path_for(&c),
        Path::new("/var/lib/kmirror/routes.lock")
    );
    let c = Config::from_str(path, text(""), &no_env).unwrap();
    assert_eq!(
        c.checkpoint_file(),
        Path::new("/config/checkpoints/routes.checkpoint.json")
    );
    let c = Config::from_str(path, text("[checkpoints]\ndir = \"/state\""), &env).unwrap();
    assert_eq!(
        c.checkpoint_file(),
        Path::new("/state/routes.checkpoint.json"),
        "the routing file's own dir wins"
    );
    let c = Config::from_str(
        path,
        text("[checkpoints]\nmax_unwritten = \"90s\""),
        &no_env,
    )
    .unwrap();
    assert_eq!(c.checkpoints.max_unwritten, Duration::from_secs(90));
}

const ROUTE: &str = r#"
[[routes]]
name = "r"
source = "src"
target = "dst"
topics = ["ids"]
end = "snapshot"
"#;

/// A checkpoint records the clusters' and topics' ids; pointing `src` at another cluster
/// afterwards is refused (exit 5) naming the route and the reset command, and an old
/// checkpoint without ids is accepted and filled in.
#[test]
fn a_checkpoint_made_on_another_cluster_is_refused_and_old_ones_are_filled_in() {
    let a = Mirror::start(&[("ids", 2)]);
    produce_numbered(a.source(), "ids", 2, 0..300, 1_700_000_000_000);
    let config = a.config("ids", ROUTE);
    let report = run_to_end(&config);
    assert_eq!(report.totals.acked, 600);
    let cp = load_checkpoint(&config).unwrap();
    let rc = &cp.routes["r"];
    println!(
        "recorded ids: source {:?} target {:?} topics {:?}",
        rc.source_cluster_id, rc.target_cluster_id, rc.topic_ids
    );
    let (src_id, dst_id) = (
        rc.source_cluster_id
            .clone()
            .expect("source cluster id recorded"),
        rc.target_cluster_id
            .clone()
            .expect("target cluster id recorded"),
    );
    assert_ne!(src_id, dst_id);

    // An old checkpoint (no ids) is accepted, and the next run fills them in.
    let mut old = cp.clone();
    for rc in old.routes.values_mut() {
        rc.source_cluster_id = None;
        rc.target_cluster_id = None;
        rc.topic_ids.clear();
    }
    a.store(&config).save(&old).unwrap();
    let again = run_to_end(&config);
    assert_eq!(again.totals.acked, 0, "resumed at the end");
    let filled = load_checkpoint(&config).unwrap();
    assert_eq!(
        filled.routes["r"].source_cluster_id.as_deref(),
        Some(src_id.as_str())
    );

    // Same names, same topic, same offsets, another cluster: refused.
    let b = Mirror::start(&[("ids", 2)]);
    produce_numbered(b.source(), "ids", 2, 0..500, 1_700_000_000_000);
    let mut moved = b.config("ids", ROUTE);
    moved.checkpoints.dir = config.checkpoints.dir.clone();
    moved.path = config.path.clone();
    let store = a.store(&moved);
    let err = kmirror::copy::run(
        &moved,
        &store,
        &kmirror::copy::RunOptions::default(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .map(|r| r.table())
    .expect_err("a checkpoint made on another cluster must be refused");
    let msg = err.to_string();
    let code = kmirror::error::exit_code(&anyhow::Error::from(err));
    assert_eq!(code, kmirror::error::exit::CHECKPOINT, "{msg}");
    assert!(
        msg.contains("route \"r\"")
            && msg.contains(&src_id)
            && msg.contains(&format!(
                "kmirror checkpoints reset -c {} --route r",
                config.path.display()
            )),
        "{msg}"
    );
    assert_eq!(
        load_checkpoint(&config).unwrap(),
        filled,
        "a refused run leaves the checkpoint alone"
    );
}
