//! A `topic_regex` route over many topics (issue 8 item 12): one reader per source cluster,
//! so threads (and prefetch memory, one consumer queue per reader) are bounded by the
//! configuration and the number of source clusters, not by how many topics the regex
//! matches; and every record of every topic is still copied exactly once.
//!
//! Its own test binary, so no other test's readers run in this process while the threads
//! are counted. The memory test runs the `kmirror` binary as a child process and reads the
//! kernel's peak resident set (`VmHWM`) of that child alone.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cli::{s, write, Running};
use common::*;

const TOPICS: usize = 40;
const RECORDS: u64 = 50;
const TS: i64 = 1_767_225_600_000;

/// Ids of this process's threads whose name starts with `prefix` (Linux keeps the first
/// 15 bytes of a thread name in `comm`).
fn threads_named(prefix: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm"))
                        .is_ok_and(|c| c.trim_end().starts_with(prefix))
                })
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
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
    // Sample while the run lives. A thread a reader starts (librdkafka's) carries the
    // reader's name until it names itself, as soon as it runs: so a reader thread is one
    // seen with the name in two samples or more and never seen with another name.
    let mut threads = 0;
    let (mut named, mut renamed): (BTreeMap<String, u32>, Vec<String>) = Default::default();
    while !run.is_finished() {
        let now = threads_named("kmirror-src");
        for tid in named.keys() {
            if !now.contains(tid)
                && std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
            {
                renamed.push(tid.clone());
            }
        }
        for tid in now {
            *named.entry(tid).or_insert(0) += 1;
        }
        threads = threads.max(all_threads());
        std::thread::sleep(Duration::from_millis(2));
    }
    let readers = named
        .iter()
        .filter(|(tid, n)| **n >= 2 && !renamed.contains(tid))
        .count();
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

/// The kernel's peak resident set of process `pid` in KiB (`VmHWM`), 0 once it is gone.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `kmirror run --once` over `config`; returns its peak RSS in MiB (sampled every 5 ms:
/// `VmHWM` only grows, so the last sample before the exit is the peak up to 5 ms of growth)
/// and its stdout. Panics unless it exits 0.
fn run_child_peak_rss(config: &std::path::Path) -> (f64, String) {
    let mut run = Running::spawn(&["run", "-c", s(config), "--once", "--progress", "0"]);
    let pid = run.pid();
    let mut peak = 0;
    while run.still_running() {
        peak = peak.max(peak_rss_kib(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let f = run.wait(WAIT);
    f.expect_code(0, "kmirror run --once");
    (peak as f64 / 1024.0, f.stdout)
}

/// Issue 8 item 12: kmirror's peak memory is bounded by its configuration, not by the backlog
/// it finds or the number of topics it reads. A heap profile (BENCHMARKS.md) showed what grew:
/// librdkafka's prefetched records (one ~270-byte op per record, plus the fetch buffers they
/// pin), which its byte bound (`queued.max.messages.kbytes`, counting values only) let reach
/// the whole backlog of small records. Here 300,000 records of ~100 bytes over 20 topics are
/// copied with an 8 MiB in-flight bound, so a 16 MiB prefetch budget (`copy::prefetch`). The
/// child's peak RSS must stay under its RSS for a 20-record copy (code, libraries, threads,
/// clients) + the in-flight bound + 3.5 budgets: one for the queue, half for one fetch
/// response per broker (3 x budget/16, whose small records cost ~2.5 times their bytes as
/// ops), two for allocator slack (records are allocated on librdkafka's broker threads and
/// freed on the reader's, across malloc arenas, which vary with load: 64-68 MiB seen, so one
/// budget of slack was too tight to run in CI). Limit ~89 MiB; before the fix 135-145 MiB
/// (the whole backlog prefetched).
#[test]
fn peak_memory_over_a_many_topic_backlog_is_bounded_by_the_configuration() {
    const MEM_TOPICS: usize = 20;
    const MEM_RECORDS: u64 = 15_000;
    const IN_FLIGHT_MIB: f64 = 8.0;
    // What `max_in_flight_bytes = 8MiB` gives the reader's prefetch (the 16 MiB minimum;
    // `copy::prefetch::budget`, checked at the end).
    const PREFETCH_MIB: f64 = 16.0;
    let names: Vec<String> = (0..MEM_TOPICS).map(|i| format!("mem.{i:02}")).collect();
    let mut topics: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    topics.push(("small", 1));
    let m = Mirror::start(&topics);
    for t in &names {
        produce_numbered(m.source(), t, 1, 0..MEM_RECORDS, TS);
    }
    produce_numbered(m.source(), "small", 1, 0..20, TS);
    let config = |job: &str, regex: &str| {
        let cp = m.dir.path().join(job);
        std::fs::create_dir_all(&cp).expect("checkpoint directory");
        let text = format!(
            r#"
[checkpoints]
dir = "{cp}"
job = "{job}"

[limits]
max_in_flight_bytes = "{IN_FLIGHT_MIB}MiB"
max_in_flight_bytes_per_partition = "1MiB"

[clusters.{SOURCE}]
bootstrap = "{src}"

[clusters.{TARGET}]
bootstrap = "{dst}"

[[routes]]
name = "{job}"
source = "{SOURCE}"
target = "{TARGET}"
topic_regex = "{regex}"
end = "snapshot"
"#,
            cp = cp.display(),
            src = m.source(),
            dst = m.target(),
        );
        write(m.dir.path(), &format!("{job}.toml"), &text)
    };
    // The fixed overhead (code, libraries, threads, clients) of this build, measured.
    let (base, _) = run_child_peak_rss(&config("small", "small"));
    let (peak, out) = run_child_peak_rss(&config("mem", "mem\\\\..*"));
    let limit = base + IN_FLIGHT_MIB + 3.5 * PREFETCH_MIB;
    println!(
        "peak RSS {peak:.1} MiB over {} records in {MEM_TOPICS} topics; 20-record copy {base:.1} MiB; limit {limit:.1} MiB\n{out}",
        MEM_TOPICS as u64 * MEM_RECORDS
    );
    for t in &names {
        assert_eq!(
            highs(m.target(), t, 1),
            vec![MEM_RECORDS as i64],
            "{t} copied in full"
        );
    }
    assert!(
        peak <= limit,
        "peak RSS {peak:.1} MiB exceeds {limit:.1} MiB (a 20-record copy's {base:.1} MiB + \
         {IN_FLIGHT_MIB} MiB in flight + 3.5 x {PREFETCH_MIB} MiB prefetch budget)"
    );
    assert_eq!(
        kmirror::copy::prefetch::budget(8 << 20),
        16 << 20,
        "the limit above assumes this prefetch budget"
    );
}
