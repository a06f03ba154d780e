//! A following run follows the source layout (`kmirror::copy::discovery`): a topic created
//! mid-run that matches a route is copied and checkpointed without a restart; one whose
//! target cannot take it starts halted with the reason in its state (never silent); a topic
//! deleted mid-run shows "source gone" in the summary and `/status` while the rest of the run
//! goes on, and the run stopped afterwards exits 0.
//!
//! Brokers: librdkafka's mock cluster (topics created mid-run with `create_topic`; it has no
//! CreateTopics, CreatePartitions or DeleteTopics) and tansu (DeleteTopics; no
//! CreatePartitions). Neither broker can add partitions to an existing topic, so the added-
//! partition path is covered by the target side: a `preserve` target too small for a new
//! topic asks for CreatePartitions, which the mock refuses, and the state says so.

mod common;

use common::*;
use kmirror::copy::RunOptions;
use kmirror::dev_cluster::Control;
use kmirror::observe::Observer;
use rdkafka_sys::types::RDKafkaRespErr;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A route following every `t-*` topic, with metadata read again every 300ms.
fn following(m: &Mirror, job: &str, route_extra: &str) -> kmirror::config::Config {
    m.config(
        job,
        &format!(
            r#"
[run]
metadata_refresh = "300ms"

[[routes]]
name = "r"
source = "{SOURCE}"
topic_regex = "t-.*"
target = "{TARGET}"
{route_extra}
"#
        ),
    )
}

#[test]
fn a_topic_created_mid_run_is_copied_and_checkpointed_without_a_restart() {
    let m = Mirror::start(&[("t-a", 2)]);
    let cfg = following(&m, "new-topic", "");
    produce_numbered(m.source(), "t-a", 2, 0..100, 1_700_000_000_000);
    let run = spawn_run(&cfg);
    wait_until("t-a copied", WAIT, || checkpoint_progress(&cfg) == 200);

    // The target topic exists (the mock has no CreateTopics), then the source one appears,
    // with records produced before kmirror can have seen it: a route whose start is the
    // default (`earliest`) copies them all.
    m.create_target_topic("t-b", 3);
    m.clusters.create_topic(SOURCE_IDX, "t-b", 3).unwrap();
    let created = std::time::Instant::now();
    produce_numbered(m.source(), "t-b", 3, 0..40, 1_700_000_000_000);
    wait_until("t-b copied", WAIT, || {
        load_checkpoint(&cfg).is_some_and(|cp| {
            (0..3).all(|p| cp.get("r", "t-b", p).is_some_and(|c| c.next_offset == 40))
        })
    });
    // Shown, not asserted: the refresh (300ms) plus a checkpoint interval (200ms) bound it.
    eprintln!(
        "t-b created -> copied and checkpointed: {:?}",
        created.elapsed()
    );
    // Records produced after the pick-up are followed like any others.
    produce_numbered(m.source(), "t-b", 3, 40..50, 1_700_000_000_000);
    wait_until("t-b followed", WAIT, || {
        load_checkpoint(&cfg).is_some_and(|cp| {
            (0..3).all(|p| cp.get("r", "t-b", p).is_some_and(|c| c.next_offset == 50))
        })
    });
    run.request_stop();
    let report = run.join(WAIT);
    assert_eq!(report.verdict().code, 0, "{}", report.table());
    assert_report_invariant(&report);
    for p in 0..3 {
        let r = row(&report, "r", "t-b", p);
        assert_eq!(r.counts.acked, 50, "{}", report.table());
    }
    let target = read_topic(m.target(), "t-b");
    assert_eq!(target.len(), 150);
    assert_exactly_once(&census(&target, SOURCE, "t-b"), &same_range(3, 0..50));
    // The checkpoint's entries carry where the copy began (for `verify`).
    let cp = load_checkpoint(&cfg).unwrap();
    for p in 0..3 {
        let c = cp.get("r", "t-b", p).unwrap();
        assert_eq!((c.first_offset, c.target_topic.as_str()), (0, "t-b"));
    }
    verify_clean(&cfg, true);
}

#[test]
fn a_new_topic_the_target_cannot_take_starts_halted_with_the_reason() {
    let m = Mirror::start(&[("t-a", 1)]);
    // `preserve` needs 2 target partitions; the target has 1 and the mock cannot add one.
    let cfg = following(&m, "too-small", "partitioning = \"preserve\"");
    produce_numbered(m.source(), "t-a", 1, 0..10, 1_700_000_000_000);
    let observer = Observer::for_config(&cfg);
    let run = spawn_run_with(
        &cfg,
        RunOptions {
            observer: Some(observer.clone()),
            ..Default::default()
        },
    );
    wait_until("t-a copied", WAIT, || checkpoint_progress(&cfg) == 10);
    m.create_target_topic("t-small", 1);
    m.clusters.create_topic(SOURCE_IDX, "t-small", 2).unwrap();
    produce_numbered(m.source(), "t-small", 2, 0..20, 1_700_000_000_000);
    wait_until("t-small/0 copied", WAIT, || {
        load_checkpoint(&cfg).is_some_and(|cp| {
            cp.get("r", "t-small", 0)
                .is_some_and(|c| c.next_offset == 20)
        })
    });
    let states = partition_states(&observer);
    let s1 = &states[&("t-small".to_string(), 1)];
    assert!(
        s1.starts_with("halted: ") && s1.contains("CreatePartitions"),
        "{s1}"
    );
    assert_eq!(states[&("t-small".to_string(), 0)], "copying");
    run.request_stop();
    let report = run.join(WAIT);
    // A partition that cannot be copied is a failure of the run, said in its verdict.
    assert_eq!(report.verdict().code, 1, "{}", report.table());
    assert!(row(&report, "r", "t-small", 1).status.contains("needs 2"));
    assert_eq!(read_topic(m.target(), "t-small").len(), 20);
}

/// `/status`: (topic, partition) -> state.
fn partition_states(observer: &Arc<Observer>) -> BTreeMap<(String, i32), String> {
    let status = observer.status_json();
    status["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions in {status}"))
        .iter()
        .map(|p| {
            let source = p["source"].as_str().unwrap();
            let (topic, part) = source.split_once(':').unwrap().1.rsplit_once('/').unwrap();
            (
                (topic.to_string(), part.parse().unwrap()),
                p["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_topic_deleted_mid_run_is_source_gone_and_the_rest_goes_on() {
    let m = Mirror::start(&[("t-keep", 2), ("t-drop", 2)]);
    let cfg = following(&m, "gone", "");
    produce_numbered(m.source(), "t-keep", 2, 0..30, 1_700_000_000_000);
    produce_numbered(m.source(), "t-drop", 2, 0..30, 1_700_000_000_000);
    let observer = Observer::for_config(&cfg);
    let run = spawn_run_with(
        &cfg,
        RunOptions {
            observer: Some(observer.clone()),
            ..Default::default()
        },
    );
    wait_until("both copied", WAIT, || checkpoint_progress(&cfg) == 120);
    // The mock has no DeleteTopics: its metadata answering "unknown topic" for t-drop is
    // what a deleted topic looks like to a client (tests/tansu.rs says why not tansu).
    m.control(Control::TopicError {
        cluster: SOURCE_IDX,
        topic: "t-drop".into(),
        error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    });
    wait_until("t-drop source gone in /status", WAIT, || {
        let s = partition_states(&observer);
        (0..2).all(|p| s[&("t-drop".to_string(), p)] == "source gone")
    });
    let metrics = kmirror::observe::metrics::render(&observer);
    let gone_series = metrics
        .lines()
        .filter(|l| {
            l.starts_with("kmirror_partition_state{")
                && l.contains("topic=\"t-drop\"")
                && l.contains("state=\"source_gone\"")
                && l.ends_with(" 1")
        })
        .count();
    assert_eq!(gone_series, 2, "{metrics}");
    // The rest of the run goes on.
    produce_numbered(m.source(), "t-keep", 2, 30..45, 1_700_000_000_000);
    wait_until("t-keep followed", WAIT, || {
        load_checkpoint(&cfg).is_some_and(|cp| {
            (0..2).all(|p| {
                cp.get("r", "t-keep", p)
                    .is_some_and(|c| c.next_offset == 45)
            })
        })
    });
    assert_eq!(
        partition_states(&observer)[&("t-keep".to_string(), 0)],
        "copying"
    );
    run.request_stop();
    let report = run.join(WAIT);
    // A deleted source topic is no failure of the mirror: stopped, the run exits 0.
    assert_eq!(report.verdict().code, 0, "{}", report.table());
    for p in 0..2 {
        assert_eq!(row(&report, "r", "t-drop", p).status, "source gone");
        assert_eq!(row(&report, "r", "t-drop", p).counts.acked, 30);
        assert_eq!(row(&report, "r", "t-keep", p).counts.acked, 45);
    }
    let json = report.json();
    let states: Vec<&str> = json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["source"].as_str().unwrap().contains("t-drop"))
        .map(|x| x["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["source_gone", "source_gone"]);
    // Its checkpoint entries stay where the copy got to.
    let cp = load_checkpoint(&cfg).unwrap();
    assert_eq!(cp.get("r", "t-drop", 1).unwrap().next_offset, 30);
    assert_eq!(read_topic(m.target(), "t-drop").len(), 60);
    assert_eq!(read_topic(m.target(), "t-keep").len(), 90);
}

/// The routing file for the SIGHUP test: `routes` are `(name, topic)`, each following.
fn routing_file(m: &Mirror, routes: &[(&str, &str)], extra: &str) -> String {
    let mut text = format!(
        r#"
[checkpoints]
dir = "{dir}"
interval = "200ms"
job = "reload"

[run]
metadata_refresh = "300ms"
shutdown_timeout = "5s"

[clusters.{SOURCE}]
bootstrap = "{src}"

[clusters.{TARGET}]
bootstrap = "{dst}"
"#,
        dir = m.dir.path().display(),
        src = m.source(),
        dst = m.target(),
    );
    for (name, topic) in routes {
        text.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\nsource = \"{SOURCE}\"\ntopics = [\"{topic}\"]\ntarget = \"{TARGET}\"\n{extra}\n"
        ));
    }
    text
}

/// SIGHUP to a `kmirror run` process: a bad routing file is refused with every error logged
/// and the run goes on as it was; a route removed stops (its checkpoint stays), a route added
/// starts, and the removed route added back resumes where it stopped: nothing lost, nothing
/// copied twice.
#[test]
fn sighup_reloads_the_routes_and_refuses_a_bad_file() {
    use common::cli::{signal, write, Running};
    let m = Mirror::start(&[("a", 2), ("b", 2)]);
    let path = write(
        m.dir.path(),
        "reload.toml",
        &routing_file(&m, &[("ra", "a")], ""),
    );
    let cfg = kmirror::config::Config::load(&path).unwrap();
    let at = |route: &str, topic: &str| -> Vec<i64> {
        load_checkpoint(&cfg).map_or(vec![], |cp| {
            (0..2)
                .map(|p| cp.get(route, topic, p).map_or(-1, |c| c.next_offset))
                .collect()
        })
    };
    produce_numbered(m.source(), "a", 2, 0..20, 1_700_000_000_000);
    produce_numbered(m.source(), "b", 2, 0..20, 1_700_000_000_000);
    let run = Running::spawn(&["run", "-c", path.to_str().unwrap()]);
    wait_until("ra copied", WAIT, || at("ra", "a") == [20, 20]);

    // A file with two errors (one per route): refused, both logged; the running routes go on.
    write(
        m.dir.path(),
        "reload.toml",
        &routing_file(&m, &[("ra", "a"), ("rb", "b")], "bogus = 1"),
    );
    signal(run.pid(), "-HUP");
    produce_numbered(m.source(), "a", 2, 20..25, 1_700_000_000_000);
    wait_until("ra goes on", WAIT, || at("ra", "a") == [25, 25]);
    assert_eq!(at("rb", "b"), [-1, -1], "a refused file started a route");

    // ra removed, rb added.
    write(
        m.dir.path(),
        "reload.toml",
        &routing_file(&m, &[("rb", "b")], ""),
    );
    signal(run.pid(), "-HUP");
    wait_until("rb copied", WAIT, || at("rb", "b") == [20, 20]);
    produce_numbered(m.source(), "a", 2, 25..30, 1_700_000_000_000);
    produce_numbered(m.source(), "b", 2, 20..30, 1_700_000_000_000);
    wait_until("rb followed", WAIT, || at("rb", "b") == [30, 30]);
    assert_eq!(at("ra", "a"), [25, 25], "a removed route copied on");

    // ra back: it resumes from its checkpoint.
    write(
        m.dir.path(),
        "reload.toml",
        &routing_file(&m, &[("ra", "a"), ("rb", "b")], ""),
    );
    signal(run.pid(), "-HUP");
    wait_until("ra resumed", WAIT, || at("ra", "a") == [30, 30]);

    // Both routes changed (a rate limit): each restarts from where it got to.
    write(
        m.dir.path(),
        "reload.toml",
        &routing_file(
            &m,
            &[("ra", "a"), ("rb", "b")],
            "max_messages_per_sec = 100000",
        ),
    );
    signal(run.pid(), "-HUP");
    produce_numbered(m.source(), "a", 2, 30..40, 1_700_000_000_000);
    produce_numbered(m.source(), "b", 2, 30..40, 1_700_000_000_000);
    wait_until("ra and rb after the change", WAIT, || {
        at("ra", "a") == [40, 40] && at("rb", "b") == [40, 40]
    });
    signal(run.pid(), "-TERM");
    let done = run.wait(WAIT);
    done.expect_code(0, "kmirror run stopped by SIGTERM");
    let refusals: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert!(
        refusals.iter().any(|l| l.contains("routes[0].bogus"))
            && refusals.iter().any(|l| l.contains("routes[1].bogus"))
            && refusals
                .iter()
                .any(|l| l.contains("keeping the running configuration")),
        "{}",
        done.stderr
    );
    assert!(done.stdout.contains("removed by reload"), "{}", done.stdout);
    assert_exactly_once(
        &census(&read_topic(m.target(), "a"), SOURCE, "a"),
        &same_range(2, 0..40),
    );
    assert_exactly_once(
        &census(&read_topic(m.target(), "b"), SOURCE, "b"),
        &same_range(2, 0..40),
    );
}

/// The built binary: a topic deleted mid-run is logged once at warn however long the run
/// goes on, the printed summary and `--output json` say "source gone", and the run stopped
/// afterwards exits 0.
#[test]
fn a_deleted_topic_is_logged_once_and_the_printed_summary_says_source_gone() {
    use common::cli::{signal, write, Running};
    let m = Mirror::start(&[("a", 2), ("gone", 2)]);
    let mut text = routing_file(&m, &[("ra", "a"), ("rg", "gone")], "");
    text = text.replace("job = \"reload\"", "job = \"gone-cli\"");
    let path = write(m.dir.path(), "gone.toml", &text);
    let cfg = kmirror::config::Config::load(&path).unwrap();
    produce_numbered(m.source(), "a", 2, 0..10, 1_700_000_000_000);
    produce_numbered(m.source(), "gone", 2, 0..10, 1_700_000_000_000);
    let run = Running::spawn(&["run", "-c", path.to_str().unwrap(), "--output", "json"]);
    wait_until("both copied", WAIT, || checkpoint_progress(&cfg) == 40);
    m.control(Control::TopicError {
        cluster: SOURCE_IDX,
        topic: "gone".into(),
        error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    });
    // Many refreshes (300ms) after the deletion: still one warning. The run goes on.
    for i in 10..16 {
        produce_numbered(m.source(), "a", 2, i..i + 1, 1_700_000_000_000);
        wait_until("a followed", WAIT, || {
            checkpoint_progress(&cfg) == 2 * (i as i64 + 1) + 20
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    signal(run.pid(), "-TERM");
    let done = run.wait(WAIT);
    done.expect_code(0, "stopped after a source topic was deleted");
    let warned: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("src:gone was deleted"))
        .collect();
    assert_eq!(warned.len(), 1, "{}", done.stderr);
    assert!(warned[0].contains("[rg/0,rg/1]"), "{}", warned[0]);
    let json: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    let states: BTreeMap<String, String> = json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["source"].as_str().unwrap().to_string(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states["src:gone/0"], "source_gone", "{json:#}");
    assert_eq!(states["src:gone/1"], "source_gone", "{json:#}");
    assert_eq!(states["src:a/0"], "stopped", "{json:#}");
    assert_eq!(json["exit_code"], 0);
}
