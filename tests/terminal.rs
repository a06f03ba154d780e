//! What a person or a log shipper reading the binary's terminal output gets: JSON log lines
//! (`--log-format json`, for every command) that parse and carry the partition's fields,
//! the `KMIRROR_LOG` filter, and `check`'s plan summary for routes that follow.
//!
//! The binary runs as a subprocess (tests/common/cli.rs) against librdkafka mock clusters
//! hosted in this test process (tests/common/mod.rs `Mirror`), reached over TCP.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::cli::{km, km_env, s, write};
use common::{numbered_record, produce, produce_numbered, Mirror, SOURCE, TARGET};

const TOPIC: &str = "orders";
const TS: i64 = 1_700_000_000_000;
const LIMIT: Duration = Duration::from_secs(90);

/// A routing file on disk for `m`'s clusters: checkpoints in its directory, then `routes`.
fn routing_file(m: &Mirror, job: &str, routes: &str) -> PathBuf {
    write(
        m.dir.path(),
        &format!("{job}.toml"),
        &format!(
            r#"[checkpoints]
dir = "{dir}"
interval = "200ms"
job = "{job}"

[run]
connect_timeout = "10s"

[clusters.{SOURCE}]
bootstrap = "{src}"

[clusters.{TARGET}]
bootstrap = "{dst}"

{routes}
"#,
            dir = s(m.dir.path()),
            src = m.source(),
            dst = m.target(),
        ),
    )
}

fn route(name: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nsource = \"{SOURCE}\"\ntopics = [\"{TOPIC}\"]\ntarget = \"{TARGET}\"\n{extra}\n\n"
    )
}

/// Every line of `stderr` as JSON; panics naming the first line that is not.
fn json_lines(stderr: &str, what: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| {
                panic!("{what}: a stderr line is not JSON ({e}): {l:?}\n--- stderr\n{stderr}")
            })
        })
        .collect()
}

/// A partition with one oversized record among 30, skipped by validation (on_error =
/// "skip"): the run logs one warn about it. With `--log-format json` every stderr line of
/// every command parses, and that warn carries route, cluster, topic and partition as
/// fields (and the text still says what happened).
#[test]
fn json_logs_parse_and_carry_the_partition_fields() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..20, TS);
    let mut big = numbered_record(1, 20, TS);
    big.value = Some(vec![b'x'; 2000]);
    produce(m.source(), TOPIC, &[big]);
    produce_numbered(m.source(), TOPIC, 2, 21..30, TS);
    let cfg = routing_file(
        &m,
        "jsonlogs",
        &route(
            "r",
            "end = \"snapshot\"\nvalidate = { max_record_bytes = \"1KiB\" }\non_error = \"skip\"",
        ),
    );

    let run = km(
        &["--log-format", "json", "run", "--once", "-c", s(&cfg)],
        LIMIT,
    );
    run.expect_code(0, "run --once with a skipped record");
    let lines = json_lines(&run.stderr, "run");
    let skip = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("skipping record at offset 20"))
        })
        .unwrap_or_else(|| panic!("no skip warning in:\n{}", run.stderr));
    assert_eq!(skip["level"], "WARN", "{skip}");
    assert_eq!(skip["route"], "r", "{skip}");
    assert_eq!(skip["cluster"], SOURCE, "{skip}");
    assert_eq!(skip["topic"], TOPIC, "{skip}");
    assert_eq!(skip["partition"], 1, "{skip}");
    assert!(
        skip["message"]
            .as_str()
            .unwrap()
            .contains("on_error = \"skip\""),
        "{skip}"
    );
    // The summary still goes to stdout as text.
    assert!(run.stdout.contains("complete in "), "{}", run.stdout);

    // The other commands, -v included (debug lines from kmirror and librdkafka), and an
    // error exit: still one JSON document per line.
    let commands: [&[&str]; 4] = [
        &["-v", "--log-format", "json", "check", "-c", s(&cfg)],
        &["--log-format", "json", "verify", "-c", s(&cfg)],
        &["--log-format", "json", "checkpoints", "show", "-c", s(&cfg)],
        &["-v", "--log-format", "json", "run", "--once", "-c", s(&cfg)],
    ];
    for args in commands {
        let f = km(args, LIMIT);
        f.expect_code(0, &args.join(" "));
        let lines = json_lines(&f.stderr, &args.join(" "));
        if args.contains(&"run") {
            // Not vacuous: -v gives kmirror's debug lines.
            assert!(lines.iter().any(|l| l["level"] == "DEBUG"), "{}", f.stderr);
        }
    }
    // A usage error clap finds is a JSON line too.
    let f = km(&["--log-format", "json", "run", "--bogus"], LIMIT);
    f.expect_code(2, "an unknown flag");
    let lines = json_lines(&f.stderr, "an unknown flag");
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"].as_str().is_some_and(|m| m.contains("--bogus"))),
        "{}",
        f.stderr
    );
    let missing = m.dir.path().join("missing.toml");
    let f = km(&["--log-format", "json", "check", "-c", s(&missing)], LIMIT);
    assert_ne!(f.code, 0, "{f:?}");
    let lines = json_lines(&f.stderr, "check of a missing file");
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("missing.toml"))),
        "{}",
        f.stderr
    );
}

/// `KMIRROR_LOG` is the log filter and wins over `RUST_LOG` (and over `-v`/`-q`, which
/// apply when neither is set).
#[test]
fn kmirror_log_filters_and_wins_over_rust_log() {
    let m = Mirror::start(&[(TOPIC, 1)]);
    produce_numbered(m.source(), TOPIC, 1, 0..10, TS);
    let cfg = routing_file(&m, "filter", &route("r", "end = \"snapshot\""));
    let run = ["run", "--once", "-c", s(&cfg)];
    // A run logs "job lock taken" at debug; at the default (info) it does not.
    const DEBUG_LINE: &str = "job lock taken";
    let default = km(&run, LIMIT);
    default.expect_code(0, "run");
    assert!(!default.stderr.contains(DEBUG_LINE), "{}", default.stderr);
    let debug = km_env(&run, &[("KMIRROR_LOG", "kmirror=debug")], LIMIT);
    debug.expect_code(0, "run with KMIRROR_LOG=kmirror=debug");
    assert!(debug.stderr.contains(DEBUG_LINE), "{}", debug.stderr);
    let both = km_env(
        &run,
        &[("KMIRROR_LOG", "kmirror=debug"), ("RUST_LOG", "off")],
        LIMIT,
    );
    both.expect_code(0, "run with KMIRROR_LOG and RUST_LOG");
    assert!(
        both.stderr.contains(DEBUG_LINE),
        "KMIRROR_LOG wins: {}",
        both.stderr
    );
    // KMIRROR_LOG wins over -q too (an explicit filter says exactly what to show).
    let off = km_env(
        &["-v", "run", "--once", "-c", s(&cfg)],
        &[("KMIRROR_LOG", "off")],
        LIMIT,
    );
    off.expect_code(0, "run with KMIRROR_LOG=off");
    assert!(off.stderr.is_empty(), "{}", off.stderr);
    let rust_log = km_env(&run, &[("RUST_LOG", "kmirror=debug")], LIMIT);
    rust_log.expect_code(0, "run with RUST_LOG");
    assert!(
        rust_log.stderr.contains(DEBUG_LINE),
        "RUST_LOG still works: {}",
        rust_log.stderr
    );
}

/// `check` on routes that follow says so, instead of "at most 0 records to copy"; with a
/// fixed-end route beside them the estimate counts that route only.
#[test]
fn check_says_a_follow_route_follows() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..25, TS);
    let follow = routing_file(&m, "follow", &route("live", ""));
    let f = km(&["check", "-c", s(&follow)], LIMIT);
    f.expect_code(0, "check on a follow route");
    assert!(!f.stdout.contains("at most 0 records"), "{}", f.stdout);
    assert!(
        f.stdout.contains(
            "2 partition tasks; all follow (no fixed end): 50 records there now, then live"
        ),
        "{}",
        f.stdout
    );

    m.create_target_topic("copy", 2);
    let mixed = routing_file(
        &m,
        "mixed",
        &(route("live", "") + &route("window", "target_topic = \"copy\"\nstart = 5\nend = 15")),
    );
    let f = km(&["check", "-c", s(&mixed)], LIMIT);
    f.expect_code(0, "check on a follow route and a fixed-end route");
    assert!(
        f.stdout.contains(
            "4 partition tasks; 2 follow (no fixed end; 50 records there now, then live); at most 20 records to copy for the 2 with a fixed end"
        ),
        "{}",
        f.stdout
    );
}

/// A rate-limited one-shot run (about 3 s) over two partitions with one oversized record
/// late in partition 1, skipped with a warning while the copy goes on.
fn slow_run_with_a_skip(m: &Mirror, job: &str) -> PathBuf {
    produce_numbered(m.source(), TOPIC, 2, 0..1500, TS);
    let mut big = numbered_record(1, 1500, TS);
    big.value = Some(vec![b'x'; 2000]);
    produce(m.source(), TOPIC, &[big]);
    produce_numbered(m.source(), TOPIC, 2, 1501..1600, TS);
    routing_file(m, job, &slow_route())
}

/// 3,199 records: 1,599 in partition 0, 1,600 in partition 1.
const SLOW_RECORDS: u64 = 3_199;

fn slow_route() -> String {
    route(
        "r",
        "end = \"snapshot\"\nmax_messages_per_sec = 1000\nvalidate = { max_record_bytes = \"1KiB\" }\non_error = \"skip\"",
    )
}

/// Not a terminal: the periodic plain line, with dead-lettered, skipped, lag and the share
/// of the planned offsets; `--no-progress` turns it off.
#[test]
fn progress_lines_off_a_terminal_carry_every_count_and_the_lag() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    let cfg = slow_run_with_a_skip(&m, "plain");
    let f = km(&["run", "--once", "--progress", "1", "-c", s(&cfg)], LIMIT);
    f.expect_code(0, "a slow run with progress lines");
    let lines: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| l.contains("progress: read "))
        .collect();
    assert!(!lines.is_empty(), "no progress line:\n{}", f.stderr);
    let first = lines[0];
    for part in [
        " dead-lettered 0 ",
        " skipped ",
        " lag ",
        &format!("% of {SLOW_RECORDS} offsets"),
        "ETA ",
    ] {
        assert!(first.contains(part), "{part:?} missing from {first:?}");
    }
    let lag: u64 = first
        .split(" lag ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lag number in {first:?}"));
    assert!(
        lag > 0 && lag <= SLOW_RECORDS,
        "the copy was behind: {first:?}"
    );

    // Copied already: a job of another name copies it again, without progress output.
    let again = routing_file(&m, "quiet", &slow_route());
    let f = km(
        &[
            "run",
            "--once",
            "--no-progress",
            "--progress",
            "1",
            "-c",
            s(&again),
        ],
        LIMIT,
    );
    f.expect_code(0, "a slow run with --no-progress");
    assert!(f.stdout.contains("complete in "), "{}", f.stdout);
    assert!(!f.stderr.contains("progress: "), "{}", f.stderr);
}

/// `text` without ANSI escape sequences (colors, cursor moves) and carriage returns.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// On a terminal (a pseudo-terminal from util-linux `script`), a one-shot run draws the
/// live display (a bar, records of the planned total, rate, ETA, a line per route), the
/// skip warning prints whole above it, and the summary follows.
#[test]
fn a_one_shot_run_at_a_terminal_draws_the_display_and_logs_above_it() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    let cfg = slow_run_with_a_skip(&m, "tty");
    // The pseudo-terminal gets a size, as a terminal window has: the display fits its
    // lines to it, and the emulator below wraps at the same width.
    let cmd = format!(
        "stty cols 160 rows 50 && exec {} run --once -c {}",
        common::cli::BIN,
        s(&cfg)
    );
    let out = std::process::Command::new("timeout")
        .args(["120", "script", "-qefc", &cmd, "/dev/null"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run `script` (util-linux, in Debian's essential bsdutils)");
    let raw = String::from_utf8_lossy(&out.stdout);
    let text = strip_ansi(&raw);
    assert!(out.status.success(), "exit {:?}:\n{text}", out.status);
    assert!(text.contains("complete in "), "{text}");
    // The display was drawn: a bar with the planned total, a rate, an ETA, the route line.
    for part in [
        "/3,199 records",
        "records/s",
        "ETA ",
        "] ",
        "  r: 0/2 partitions done",
        "lag ",
    ] {
        assert!(text.contains(part), "{part:?} not drawn:\n{text}");
    }
    // What the terminal shows at the end, as a terminal emulator draws those bytes: the
    // warning whole on a row of its own (a write straight to stderr would land at the end
    // of the bars and be overwritten by their next redraw), the display cleared, then the
    // summary.
    let mut screen = vt100::Parser::new(50, 160, 0);
    screen.process(&out.stdout);
    // (Rows a long line wrapped onto are joined back.)
    let shown = screen.screen().contents();
    let rows: Vec<&str> = shown.lines().collect();
    let warn = rows
        .iter()
        .find(|r| r.contains("skipping record at offset 1500"))
        .unwrap_or_else(|| panic!("no skip warning on the screen:\n{shown}"));
    assert!(
        warn.starts_with("20")
            && warn.contains("Z  WARN skipping record at offset 1500: record is ")
            && warn.ends_with(
                "further skips on this partition are counted, not logged) route=r source=src:orders/1 cluster=src topic=orders partition=1"
            ),
        "{warn:?} on the screen:\n{shown}"
    );
    assert!(
        !shown.contains("records/s"),
        "the display was not cleared:\n{shown}"
    );
    assert!(shown.contains("complete in "), "{shown}");
}

/// A secret with a quote and a backslash in it is escaped in a JSON log line (`\"`, `\\`):
/// it is masked there too, not only where it appears as typed. librdkafka's configuration
/// dump (`debug = "conf"` at -vv) quotes `client.rack`, which holds the secret here.
#[test]
fn json_logs_mask_a_secret_with_quotes_and_backslashes() {
    let m = Mirror::start(&[(TOPIC, 1)]);
    produce_numbered(m.source(), TOPIC, 1, 0..10, TS);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let secret = format!("Zk\"q\\{nanos:x}");
    let escaped = serde_json::to_string(&secret).unwrap();
    let escaped = &escaped[1..escaped.len() - 1];
    assert_ne!(escaped, secret);
    let cfg = write(
        m.dir.path(),
        "secret.toml",
        &format!(
            r#"[checkpoints]
dir = "{dir}"
[run]
connect_timeout = "10s"
[clusters.{SOURCE}]
bootstrap = "{src}"
[clusters.{SOURCE}.properties]
"debug" = "conf"
"client.rack" = "${{KMIRROR_TEST_SECRET}}"
[clusters.{TARGET}]
bootstrap = "{dst}"

{route}
"#,
            dir = s(m.dir.path()),
            src = m.source(),
            dst = m.target(),
            route = route("r", "end = \"snapshot\""),
        ),
    );
    for cmd in [&["check"][..], &["run", "--once"]] {
        let mut args = vec!["-vv", "--log-format", "json"];
        args.extend_from_slice(cmd);
        args.extend(["-c", s(&cfg)]);
        let f = km_env(&args, &[("KMIRROR_TEST_SECRET", secret.as_str())], LIMIT);
        f.expect_code(0, &args.join(" "));
        let lines = json_lines(&f.stderr, &args.join(" "));
        for text in [&f.stdout, &f.stderr] {
            assert!(
                !text.contains(&secret) && !text.contains(escaped),
                "{args:?} printed the secret"
            );
        }
        // Not vacuous: the dump that would quote it was logged, masked.
        assert!(
            lines.iter().any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.contains("client.rack") && m.contains("***"))),
            "no masked client.rack in the configuration dump of {args:?}"
        );
    }
}
