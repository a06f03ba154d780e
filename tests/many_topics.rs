//! A `topic_regex` route over many topics (issue 8 item 12): one reader per source cluster,
//! so threads (and prefetch memory, one consumer queue per reader) are bounded by the
//! configuration and the number of source clusters, not by how many topics the regex
//! matches; and every record of every topic is still copied exactly once.
//!
//! Its own test binary, so no other test's readers run in this process while the threads
//! are counted.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const TOPICS: usize = 40;
const RECORDS: u64 = 50;
const TS: i64 = 1_767_225_600_000;

/// Threads of this process whose name starts with `prefix` (Linux keeps the first 15
/// bytes of a thread name in `comm`).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .filter(|c| c.trim_end().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

fn all_threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[test]
fn a_regex_over_many_topics_reads_them_with_one_reader_per_source_cluster() {
    let names: Vec<String> = (0..TOPICS).map(|i| format!("many.{i:02}")).collect();
    let topics: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let m = Mirror::start(&topics);
    for t in &names {
        produce_numbered(m.source(), t, 1, 0..RECORDS, TS);
    }
    let cfg = m.config(
        "many",
        r#"
[[routes]]
name = "many"
source = "src"
target = "dst"
topic_regex = "many\\..*"
end = "snapshot"
"#,
    );
    let before = all_threads();
    let run = spawn_run(&cfg);
    // Sample while the run lives: the most reader threads ever seen at once.
    let (mut readers, mut threads) = (0, 0);
    while !run.is_finished() {
        readers = readers.max(threads_named("kmirror-src"));
        threads = threads.max(all_threads());
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = run.join(WAIT);
    println!("{}", report.table());
    println!(
        "{TOPICS} topics: at most {readers} reader thread(s), {threads} threads in all ({before} before the run)"
    );
    assert!(report.complete, "{}", report.table());
    assert_eq!(report.rows.len(), TOPICS);
    assert_eq!(
        readers, 1,
        "one reader thread for the one source cluster, whatever the number of topics"
    );
    for t in &names {
        let seen = census(&read_topic(m.target(), t), SOURCE, t);
        let expected: BTreeMap<i32, std::ops::Range<i64>> = same_range(1, 0..RECORDS as i64);
        assert_exactly_once(&seen, &expected);
    }
    assert_eq!(report.totals.acked, TOPICS as u64 * RECORDS);
}
