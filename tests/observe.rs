//! Issue 10: the HTTP endpoint on a real copy between mock clusters. `/metrics` is scraped
//! over HTTP while a rate-limited copy is behind (lag > 0) and after it ended (lag 0, every
//! counter equal to the run summary), `/status` matches the summary's JSON, and `/readyz`
//! turns 503 when the target's brokers go down for longer than `stall_timeout` and 200
//! again once they are back. Timeouts here only catch hangs; nothing asserts a duration.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{Mirror, SOURCE, TARGET, TARGET_IDX, WAIT};
use kmirror::copy::RunOptions;
use kmirror::observe::{http, Observer};

const TS: i64 = 1_700_000_000_000;

/// These tests copy thousands of records on two shared cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A plain HTTP/1.1 GET: (status code, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// `/status` parsed and checked against `docs/status.schema.json`.
fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = get(addr, "/status");
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status.schema.json"),
        )
        .unwrap(),
    )
    .expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
    doc
}

/// One sample of `/metrics`: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("name and value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label=value");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (n.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            Sample {
                name,
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("value of {l}")),
            }
        })
        .collect()
}

fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    parse_metrics(&body)
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// The value of `name` for one source partition.
fn of(samples: &[Sample], name: &str, topic: &str, partition: i32) -> f64 {
    let p = partition.to_string();
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && s.labels.get("topic") == Some(&topic.to_string())
                && s.labels.get("partition") == Some(&p)
        })
        .map(|s| s.value)
        .collect();
    assert_eq!(
        v.len(),
        1,
        "one {name} series for {topic}/{partition}: {v:?}"
    );
    v[0]
}

/// The `expr`s of `helm/kmirror/files/alerts.yaml` (single-line, or `|` blocks).
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/kmirror/files/alerts.yaml"),
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest != "|" {
            exprs.push(rest.to_string());
            continue;
        }
        let indent = |l: &str| l.len() - l.trim_start().len();
        let base = indent(l);
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|b| b.trim().is_empty() || indent(b) > base)
            .map(|b| b.trim())
            .collect();
        exprs.push(block.join(" "));
    }
    exprs
}

/// Every shipped alert expression parses as PromQL and names only metrics `/metrics`
/// serves (`scraped`): a typo in either would be an alert that never fires.
fn check_alert_rules(scraped: &[Sample]) {
    let exprs = alert_exprs();
    assert!(exprs.len() >= 5, "{exprs:?}");
    let served: std::collections::BTreeSet<&str> =
        scraped.iter().map(|s| s.name.as_str()).collect();
    for e in &exprs {
        promql_parser::parser::parse(e).unwrap_or_else(|err| panic!("{e}: {err}"));
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("kmirror_"))
        {
            assert!(served.contains(name), "alert uses {name}, not served: {e}");
        }
    }
}

/// Every query of the shipped Grafana dashboard (`helm/kmirror/files/dashboard.json`) parses
/// as PromQL and names only metrics `/metrics` serves (`scraped`); its legends and template
/// variables name only labels they carry (plus `namespace` and `pod`, which Prometheus adds
/// from the Kubernetes target): a typo would be a panel that stays empty.
fn check_dashboard(scraped: &[Sample]) {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/kmirror/files/dashboard.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let served: std::collections::BTreeSet<&str> =
        scraped.iter().map(|s| s.name.as_str()).collect();
    let mut labels: std::collections::BTreeSet<&str> = scraped
        .iter()
        .flat_map(|s| s.labels.keys().map(String::as_str))
        .collect();
    labels.extend(["namespace", "pod"]);
    let metric_names = |q: &str| -> Vec<String> {
        q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("kmirror_"))
            .map(str::to_string)
            .collect()
    };
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            // Grafana fills in $__rate_interval; the $variables sit inside label matchers.
            let promql = expr.replace("$__rate_interval", "1m");
            promql_parser::parser::parse(&promql)
                .unwrap_or_else(|err| panic!("panel {title}: {expr}: {err}"));
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "panel {title}: {expr} names no kmirror metric"
            );
            for name in names {
                assert!(
                    served.contains(name.as_str()),
                    "panel {title} uses {name}, not served: {expr}"
                );
            }
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            for part in legend.split("{{").skip(1) {
                let label = part.split("}}").next().unwrap().trim();
                assert!(
                    labels.contains(label),
                    "panel {title}: legend label {label} not served"
                );
            }
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "{exprs} dashboard queries");
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let Some(def) = var["definition"].as_str() else {
            continue;
        };
        let args = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {def}"));
        let (series, label) = args.rsplit_once(',').expect("label_values(series, label)");
        for name in metric_names(series) {
            assert!(
                served.contains(name.as_str()),
                "variable {def}: {name} not served"
            );
        }
        assert!(
            labels.contains(label.trim()),
            "variable {def}: label not served"
        );
    }
}

#[test]
fn metrics_show_lag_while_behind_and_equal_the_summary_at_the_end() {
    let _serial = serial();
    const P: i32 = 2;
    const N: u64 = 3_000;
    let m = Mirror::start(&[("watched", P)]);
    common::produce_numbered(m.source(), "watched", P, 0..N, TS);
    // 2,000 records/s for 6,000 records: the copy stays behind for a few seconds.
    let cfg = m.config(
        "watched",
        &format!(
            "[[routes]]\nname = \"watched\"\nsource = \"{SOURCE}\"\ntopics = [\"watched\"]\ntarget = \"{TARGET}\"\nmax_messages_per_sec = 2000\n"
        ),
    );
    let observer = Observer::for_config(&cfg);
    let server = http::serve("127.0.0.1:0".parse().unwrap(), observer.clone()).unwrap();
    let addr = server.addr();
    let run = common::spawn_run_with(
        &cfg,
        RunOptions {
            once: true,
            observer: Some(observer.clone()),
            ..Default::default()
        },
    );

    // While it runs: some records copied, and records left (lag > 0) on the rate limit.
    let mut behind = None;
    common::wait_until(
        "a scrape showing the copy under way and behind",
        WAIT,
        || {
            let s = scrape(addr);
            let (copied, lag) = (
                sum(&s, "kmirror_records_copied_total"),
                sum(&s, "kmirror_partition_lag_records"),
            );
            if copied > 0.0 && lag > 0.0 {
                behind = Some(s);
            }
            behind.is_some() || run.is_finished()
        },
    );
    let behind = behind.expect("the run ended before any scrape saw it behind");
    assert!(
        sum(&behind, "kmirror_rate_limit_waits_total") > 0.0,
        "the route's rate limit made batches wait"
    );
    assert_eq!(
        sum(&behind, "kmirror_partition_state") as i32,
        P,
        "one state per partition"
    );
    let (code, body) = get(addr, "/readyz");
    assert_eq!(code, 200, "ready while copying: {body}");
    let live = status(addr);
    assert_eq!(live["phase"], "running");

    let report = run.join(WAIT);
    assert!(report.complete, "{}", report.table());
    common::assert_report_invariant(&report);

    // After the run: nothing left, and every counter is the summary's.
    let s = scrape(addr);
    assert_eq!(sum(&s, "kmirror_partition_lag_records"), 0.0);
    assert_eq!(sum(&s, "kmirror_partition_lag_seconds"), 0.0);
    for row in &report.rows {
        let p: i32 = row.source.rsplit_once('/').unwrap().1.parse().unwrap();
        let c = &row.counts;
        for (name, want) in [
            ("kmirror_records_read_total", c.read),
            ("kmirror_records_copied_total", c.acked),
            ("kmirror_records_filtered_total", c.filtered),
            ("kmirror_records_dead_lettered_total", c.dead_lettered),
            ("kmirror_records_skipped_total", c.skipped),
            ("kmirror_records_failed_total", c.failed),
            ("kmirror_records_produced_total", c.produced),
            ("kmirror_records_reread_total", c.retried),
            ("kmirror_records_pending", c.pending()),
        ] {
            assert_eq!(
                of(&s, name, "watched", p) as u64,
                want,
                "{name} for partition {p} vs the summary:\n{}",
                report.table()
            );
        }
        assert_eq!(
            of(&s, "kmirror_partition_position", "watched", p) as i64,
            row.range.1
        );
        assert_eq!(
            of(&s, "kmirror_checkpoint_position", "watched", p) as i64,
            row.range.1,
            "the last checkpoint holds the final position"
        );
        assert_eq!(
            of(&s, "kmirror_records_copied_total", "watched", p) as u64,
            N
        );
    }
    assert!(sum(&s, "kmirror_bytes_copied_total") > 0.0);
    let latency_count = s
        .iter()
        .find(|x| x.name == "kmirror_replication_latency_seconds_count")
        .expect("a latency histogram")
        .value;
    assert_eq!(
        latency_count as u64, report.totals.acked,
        "one observation per record copied"
    );
    assert_eq!(sum(&s, "kmirror_build_info"), 1.0);
    check_alert_rules(&s);
    check_dashboard(&s);

    // /status: the summary's partitions, plus the live fields.
    let status = status(addr);
    let summary = report.json();
    assert_eq!(status["kind"], "kmirror-status");
    assert_eq!(status["phase"], "finished");
    assert_eq!(status["totals"], summary["totals"]);
    let parts = status["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), report.rows.len());
    for (live, done) in parts.iter().zip(summary["partitions"].as_array().unwrap()) {
        for key in [
            "route",
            "source",
            "source_partition",
            "range",
            "counts",
            "target_written",
            "state",
        ] {
            assert_eq!(live[key], done[key], "/status {key} vs the run summary");
        }
        assert_eq!(live["live"]["lag"], 0);
        assert_eq!(live["live"]["stalled"], false);
    }
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/readyz").0, 200);
    assert_eq!(get(addr, "/nope").0, 404);
}

#[test]
fn readyz_fails_while_the_target_is_down_past_stall_timeout_and_recovers() {
    let _serial = serial();
    const P: i32 = 2;
    let m = Mirror::start(&[("stall", P)]);
    common::produce_numbered(m.source(), "stall", P, 0..200, TS);
    let cfg = m.config(
        "stall",
        &format!(
            "[run]\nstall_timeout = \"2s\"\n\n[clusters.{TARGET}.properties]\n\"message.timeout.ms\" = \"2000\"\n\n[[routes]]\nname = \"stall\"\nsource = \"{SOURCE}\"\ntopics = [\"stall\"]\ntarget = \"{TARGET}\"\n"
        ),
    );
    let observer = Observer::for_config(&cfg);
    let server = http::serve("127.0.0.1:0".parse().unwrap(), observer.clone()).unwrap();
    let addr = server.addr();
    let run = common::spawn_run_with(
        &cfg,
        RunOptions {
            observer: Some(observer.clone()),
            ..Default::default()
        },
    );
    let caught_up = |want: f64| {
        move || {
            let s = scrape(addr);
            sum(&s, "kmirror_records_copied_total") >= want
                && sum(&s, "kmirror_partition_lag_records") == 0.0
        }
    };
    common::wait_until("the first records copied", WAIT, caught_up(400.0));
    assert_eq!(get(addr, "/readyz").0, 200);

    // Target down, more records at the source: the copy cannot move.
    m.all_brokers(TARGET_IDX, false);
    common::produce_numbered(m.source(), "stall", P, 200..400, TS);
    common::wait_until("/readyz to answer 503", WAIT, || {
        get(addr, "/readyz").0 == 503
    });
    let (_, why) = get(addr, "/readyz");
    assert!(why.contains("stalled"), "{why}");
    let s = scrape(addr);
    assert!(sum(&s, "kmirror_partition_stalled") >= 1.0);
    assert!(sum(&s, "kmirror_stalls_total") >= 1.0);
    assert!(sum(&s, "kmirror_partition_lag_records") > 0.0);
    assert_eq!(sum(&s, "kmirror_ready"), 0.0);
    let status = status(addr);
    assert_eq!(status["ready"], false);
    let stalled: Vec<&serde_json::Value> = status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["live"]["stalled"] == true)
        .collect();
    assert!(!stalled.is_empty(), "{status:#}");
    assert!(
        stalled.iter().all(|p| p["live"]["stall_reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("{TARGET} fail")))),
        "each stalled partition names the failing target as the reason: {status:#}"
    );
    assert_eq!(get(addr, "/healthz").0, 200, "stalled is not dead");

    // Target back: it copies again and is ready again.
    m.all_brokers(TARGET_IDX, true);
    common::wait_until("/readyz to answer 200 again", WAIT, || {
        get(addr, "/readyz").0 == 200
    });
    common::wait_until("everything copied", WAIT, caught_up(800.0));
    let s = scrape(addr);
    assert_eq!(sum(&s, "kmirror_partition_stalled"), 0.0);
    run.request_stop();
    let report = run.join(WAIT);
    common::assert_report_invariant(&report);
    let copied: f64 = sum(&scrape(addr), "kmirror_records_copied_total");
    assert_eq!(
        copied as u64, report.totals.acked,
        "/metrics equals the summary"
    );
    drop(Arc::clone(&observer));
}

/// A free loopback port (bound, then released for the process under test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A routing file on disk for the mirror's clusters (for the binary), plus `extra`.
fn routing_file(m: &Mirror, job: &str, extra: &str) -> std::path::PathBuf {
    common::cli::write(
        m.dir.path(),
        &format!("{job}.toml"),
        &format!(
            "{extra}\n[checkpoints]\ndir = \"{}\"\ninterval = \"200ms\"\njob = \"{job}\"\n\n[clusters.{SOURCE}]\nbootstrap = \"{}\"\n\n[clusters.{TARGET}]\nbootstrap = \"{}\"\n\n[[routes]]\nname = \"{job}\"\nsource = \"{SOURCE}\"\ntopics = [\"{job}\"]\ntarget = \"{TARGET}\"\n",
            m.dir.path().display(),
            m.source(),
            m.target()
        ),
    )
}

/// The binary: `run --http` serves while following; after SIGTERM its printed summary
/// equals the last scrape.
#[test]
fn run_with_http_flag_serves_metrics_equal_to_its_printed_summary() {
    let _serial = serial();
    const P: i32 = 3;
    const N: u64 = 500;
    let m = Mirror::start(&[("cliwatch", P)]);
    common::produce_numbered(m.source(), "cliwatch", P, 0..N, TS);
    let file = routing_file(&m, "cliwatch", "");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let run = common::cli::Running::spawn(&[
        "run",
        "-c",
        common::cli::s(&file),
        "--http",
        &addr.to_string(),
        "--progress",
        "1",
    ]);
    let mut last = Vec::new();
    common::wait_until("the binary to serve everything copied", WAIT, || {
        let Ok(_) = TcpStream::connect(addr) else {
            return false; // not listening yet
        };
        last = scrape(addr);
        sum(&last, "kmirror_records_copied_total") == (N * P as u64) as f64
            && sum(&last, "kmirror_partition_lag_records") == 0.0
    });
    assert_eq!(get(addr, "/readyz").0, 200);
    assert_eq!(get(addr, "/healthz").0, 200);
    // Long enough for a progress line (every second) after everything was copied.
    std::thread::sleep(Duration::from_millis(1500));
    common::cli::signal(run.pid(), "-TERM");
    let f = run.wait(WAIT);
    f.expect_code(0, "run --http stopped by SIGTERM");
    let totals = common::cli::totals(&f.stdout);
    for (column, metric) in [
        ("read", "kmirror_records_read_total"),
        ("acked", "kmirror_records_copied_total"),
        ("filtered", "kmirror_records_filtered_total"),
        ("dlq", "kmirror_records_dead_lettered_total"),
        ("skipped", "kmirror_records_skipped_total"),
        ("failed", "kmirror_records_failed_total"),
        ("pending", "kmirror_records_pending"),
    ] {
        assert_eq!(
            totals[column] as f64,
            sum(&last, metric),
            "{metric} vs the printed {column}:\n{}",
            f.stdout
        );
    }
    assert!(
        f.stderr
            .contains(&format!("HTTP endpoint on http://{addr}")),
        "{}",
        f.stderr
    );
    // The plain progress lines carry dead-lettered, skipped and lag too.
    let last = f
        .stderr
        .lines()
        .rfind(|l| l.contains("progress: read "))
        .unwrap_or_else(|| panic!("no progress line:\n{}", f.stderr));
    assert!(
        last.contains(&format!("acked {} ", N * P as u64))
            && last.contains(" dead-lettered 0 skipped 0 failed 0 ")
            && last.contains(" lag 0 "),
        "{last}"
    );
}

/// `[http] listen` on a port another process holds: refused before anything is copied.
#[test]
fn http_listen_on_a_taken_port_is_an_error_before_the_run() {
    let _serial = serial();
    let m = Mirror::start(&[("taken", 1)]);
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let file = routing_file(&m, "taken", &format!("[http]\nlisten = \"{addr}\"\n"));
    let f = common::cli::km(&["run", "-c", common::cli::s(&file)], WAIT);
    f.expect_code(70, "run with a taken HTTP port");
    assert!(
        f.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        f.stderr
    );
    assert!(
        !m.dir.path().join("taken.checkpoint.json").exists(),
        "nothing ran, so no checkpoint was written"
    );
}

/// A malformed `[http] listen` or `[run] stall_timeout` is a routing-file error (exit 3),
/// named by key, before anything connects.
#[test]
fn bad_http_listen_and_stall_timeout_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = common::cli::write(
        dir.path(),
        "bad.toml",
        "[run]\nstall_timeout = \"0s\"\n\n[http]\nlisten = \"localhost\"\nstalled_not_ready = \"yes\"\n\n[clusters.a]\nbootstrap = \"127.0.0.1:1\"\n\n[clusters.b]\nbootstrap = \"127.0.0.1:1\"\n\n[[routes]]\nname = \"r\"\nsource = \"a\"\ntopics = [\"t\"]\ntarget = \"b\"\n",
    );
    let f = common::cli::km(&["check", "-c", common::cli::s(&file), "--offline"], WAIT);
    f.expect_code(3, "check of a bad [http] table");
    assert!(f.stderr.contains("http.stalled_not_ready"), "{}", f.stderr);
    // Shape errors come first; fix the type and the rules are checked.
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("stalled_not_ready = \"yes\"", "stalled_not_ready = false");
    std::fs::write(&file, text).unwrap();
    let f = common::cli::km(&["check", "-c", common::cli::s(&file), "--offline"], WAIT);
    f.expect_code(3, "check of a bad listen address and stall_timeout");
    assert!(f.stderr.contains("http.listen"), "{}", f.stderr);
    assert!(f.stderr.contains("run.stall_timeout"), "{}", f.stderr);
}

/// While the clusters do not answer (the plan cannot be built), the process is alive but
/// not ready; the run then fails as it always did (exit 4).
#[test]
fn readyz_is_503_until_the_plan_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let file = common::cli::write(
        dir.path(),
        "unreachable.toml",
        &format!(
            "[run]\nconnect_timeout = \"5s\"\n\n[checkpoints]\ndir = \"{}\"\n\n[clusters.a]\nbootstrap = \"{dead}\"\n\n[clusters.b]\nbootstrap = \"{dead}\"\n\n[[routes]]\nname = \"r\"\nsource = \"a\"\ntopics = [\"t\"]\ntarget = \"b\"\n",
            dir.path().display()
        ),
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let run = common::cli::Running::spawn(&[
        "run",
        "-c",
        common::cli::s(&file),
        "--http",
        &addr.to_string(),
    ]);
    let mut seen = None;
    common::wait_until("the endpoint to answer while connecting", WAIT, || {
        if TcpStream::connect(addr).is_err() {
            return false;
        }
        seen = Some((get(addr, "/readyz"), get(addr, "/healthz").0));
        true
    });
    let ((ready, why), healthy) = seen.unwrap();
    assert_eq!(ready, 503, "{why}");
    assert!(why.contains("building the plan"), "{why}");
    assert_eq!(healthy, 200, "alive while connecting");
    let f = run.wait(WAIT);
    f.expect_code(4, "run against unreachable clusters");
}

/// Failed checkpoint writes are counted and the checkpoint's age grows while they fail
/// (what `KmirrorCheckpointStale` alerts on); both recover once writes land again. The
/// directory is swapped for a plain file, which stops root too (as tests/checkpoint_state.rs).
#[test]
fn failing_checkpoint_writes_are_counted_and_age_the_checkpoint() {
    let _serial = serial();
    let m = Mirror::start(&[("cpwatch", 1)]);
    common::produce_numbered(m.source(), "cpwatch", 1, 0..200, TS);
    let mut cfg = m.config(
        "cpwatch",
        &format!(
            "[[routes]]\nname = \"cpwatch\"\nsource = \"{SOURCE}\"\ntopics = [\"cpwatch\"]\ntarget = \"{TARGET}\"\n"
        ),
    );
    let dir = m.dir.path().join("cp");
    cfg.checkpoints.dir = dir.clone();
    let observer = Observer::for_config(&cfg);
    let server = http::serve("127.0.0.1:0".parse().unwrap(), observer.clone()).unwrap();
    let addr = server.addr();
    let run = common::spawn_run_with(
        &cfg,
        RunOptions {
            observer: Some(observer.clone()),
            ..Default::default()
        },
    );
    let age = |s: &[Sample]| sum(s, "kmirror_checkpoint_age_seconds");
    common::wait_until("records copied and checkpointed", WAIT, || {
        let s = scrape(addr);
        sum(&s, "kmirror_checkpoint_position") >= 200.0
    });
    assert_eq!(
        sum(&scrape(addr), "kmirror_checkpoint_write_errors_total"),
        0.0
    );

    let away = dir.with_extension("away");
    std::fs::rename(&dir, &away).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    // Checkpoints are due every 200ms: an age past a second means they are not landing.
    common::wait_until(
        "failed writes counted and the checkpoint aging",
        WAIT,
        || {
            let s = scrape(addr);
            sum(&s, "kmirror_checkpoint_write_errors_total") > 0.0 && age(&s) > 1.0
        },
    );
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&away, &dir).unwrap();
    common::wait_until("a fresh checkpoint again", WAIT, || {
        age(&scrape(addr)) < 1.0
    });
    run.request_stop();
    let report = run.join(WAIT);
    common::assert_report_invariant(&report);
}

/// A client that connects and never sends a request is disconnected (the endpoint serves a
/// bounded number of connections, so an idle one must not hold a slot forever), and the
/// endpoint keeps answering others meanwhile.
#[test]
fn an_idle_http_client_is_disconnected() {
    let observer = Observer::new(Duration::from_secs(300), true);
    let server = http::serve("127.0.0.1:0".parse().unwrap(), observer).unwrap();
    let addr = server.addr();
    let mut idle = TcpStream::connect(addr).unwrap();
    assert_eq!(get(addr, "/healthz").0, 200, "others are served meanwhile");
    idle.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    match idle.read_to_end(&mut buf) {
        Ok(_) => {} // closed by the server (possibly after a 408)
        Err(e) => panic!("the idle connection was still open after {WAIT:?}: {e}"),
    }
    assert_eq!(get(addr, "/readyz").0, 503, "no plan: not ready");
}
