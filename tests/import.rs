//! `kmirror import`: dumps replayed into a cluster, validated line by line. A `kcat -J`
//! dump made by the real kcat from a real (mock) topic, JSONL values checked against a JSON
//! Schema, records with configurable fields, the rejects file and the dead-letter topic,
//! `on_error = "stop"`, and resuming after `kill -9`. Clusters are mock clusters hosted by
//! this test process; `kmirror` runs as a subprocess.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cli::{json_with_schema, km, s, write, Running};
use common::{headers_without_provenance, produce, read_partition, read_topic, Mirror, TestRecord};
use rdkafka::Timestamp;

const T: Duration = Duration::from_secs(120);

/// A routing file importing `file` (a `[files.dump]` of `format`) into `topic` on the
/// target cluster, with `extra` route keys and `file_extra` file keys.
fn routing(m: &Mirror, file: &Path, format: &str, file_extra: &str, extra: &str) -> PathBuf {
    write(
        m.dir.path(),
        "job.toml",
        &format!(
            r#"
[checkpoints]
dir = "{dir}/checkpoints"
job = "job"

[clusters.dst]
bootstrap = "{dst}"

[files.dump]
path = "{file}"
format = "{format}"
{file_extra}

[[routes]]
name = "replay"
source = "dump"
target = "dst"
topics = ["t"]
{extra}
"#,
            dir = m.dir.path().display(),
            dst = m.target(),
            file = file.display(),
        ),
    )
}

fn rejects(m: &Mirror) -> Vec<serde_json::Value> {
    let p = m.dir.path().join("checkpoints/job.replay.rejects.jsonl");
    std::fs::read_to_string(&p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn import_json(cfg: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["import", "-c", s(cfg), "--output", "json"];
    args.extend_from_slice(extra);
    let f = km(&args, T);
    let v = json_with_schema(&f.stdout, "import-report.schema.json");
    assert_eq!(v["exit_code"], f.code, "{v:#}");
    (f.code, v["routes"][0].clone(), f.stderr)
}

fn counts(route: &serde_json::Value) -> [u64; 4] {
    let c = &route["counts"];
    ["read", "produced", "filtered", "rejected"].map(|k| c[k].as_u64().unwrap())
}

/// The kcat the tests use (scripts/test.sh installs it).
fn kcat() -> Command {
    let k = std::env::var("KMIRROR_KCAT").unwrap_or_else(|_| "kcat".into());
    Command::new(k)
}

/// A topic with everything a record can hold is dumped by the real `kcat -C -J`; one line
/// of the dump is cut in the middle (as an interrupted copy leaves it). The import produces
/// every other record in order, byte for byte (key, value, null vs empty, headers with
/// duplicate names and null values, timestamps), rejects the cut line naming its number,
/// keeps the original line in the rejects file, and exits 1 saying so.
#[test]
fn a_kcat_dump_with_a_truncated_line_imports_every_other_record_in_order() {
    let m = Mirror::start(&[("t", 1)]);
    let mut records = Vec::new();
    for i in 0..40u8 {
        records.push(TestRecord {
            partition: 0,
            key: match i % 4 {
                0 => None,
                1 => Some(vec![0, 1, 0xff, b'\n', b'"', b'\\', i]),
                2 => Some(Vec::new()),
                _ => Some(format!("key-{i}").into_bytes()),
            },
            value: match i % 5 {
                0 => None,
                1 => Some(Vec::new()),
                2 => {
                    Some(format!("{{\"tenant\":\"a\",\"n\":{i},\"s\":\"é\\u0001\"}}").into_bytes())
                }
                3 => Some(vec![0xfe, 0, i, 0x80, b'\t']),
                _ => Some(format!("plain {i}").into_bytes()),
            },
            headers: if i % 3 == 0 {
                vec![
                    ("h".into(), Some(b"1".to_vec())),
                    ("h".into(), Some(b"2".to_vec())),
                    ("nothing".into(), None),
                    ("empty".into(), Some(Vec::new())),
                ]
            } else {
                vec![]
            },
            timestamp: Some(1_600_000_000_000 + i as i64 * 1000),
        });
    }
    produce(m.source(), "t", &records);
    let out = kcat()
        .args([
            "-C",
            "-J",
            "-e",
            "-q",
            "-b",
            m.source(),
            "-t",
            "t",
            "-o",
            "beginning",
        ])
        .output()
        .expect("kcat must be installed (scripts/test.sh installs it; KMIRROR_KCAT names another)");
    assert!(
        out.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<Vec<u8>> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(lines.len(), 40, "kcat dumped every record");
    // Line 17 (source offset 16) is cut in the middle of its payload.
    let cut = lines[16].len() / 2;
    lines[16].truncate(cut);
    let cut_line = lines[16].clone();
    let dump = m.dir.path().join("dump.kcat.jsonl");
    let mut text = lines.join(&b"\n"[..]);
    text.push(b'\n');
    std::fs::write(&dump, text).unwrap();

    let cfg = routing(&m, &dump, "kcat", "", "on_error = \"skip\"");
    let f = km(&["import", "-c", s(&cfg)], T);
    f.expect_code(1, "an import with a rejected line");
    assert!(
        f.stdout
            .contains("read 40: produced 39, filtered 0, rejected 1"),
        "{}",
        f.stdout
    );
    assert!(
        f.stdout.contains("rejected line 17: not valid JSON"),
        "{}",
        f.stdout
    );
    let rej = rejects(&m);
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0]["line"], 17);
    let kept = match rej[0].get("text") {
        Some(t) => t.as_str().unwrap().as_bytes().to_vec(),
        None => hex(rej[0]["text_hex"].as_str().unwrap()),
    };
    assert_eq!(kept, cut_line, "the rejects file keeps the original line");

    let got = read_partition(m.target(), "t", 0);
    let want: Vec<&TestRecord> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 16)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.key, w.key, "key of {g:?}");
        assert_eq!(g.value, w.value, "value of {g:?}");
        let wh: Vec<(Vec<u8>, Option<Vec<u8>>)> = w
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.clone()))
            .collect();
        assert_eq!(headers_without_provenance(g), wh, "headers of {g:?}");
        assert_eq!(g.timestamp, Timestamp::CreateTime(w.timestamp.unwrap()));
    }
    // Provenance names the dump and the source offset kcat recorded.
    let prov = |r: &common::ReadRecord| {
        r.headers
            .iter()
            .find(|(n, _)| n == b"kmirror.source")
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8(v).unwrap())
    };
    assert_eq!(prov(&got[16]).as_deref(), Some("replay@dump/t/0/17"));

    // Finished: running it again reads nothing and produces nothing.
    let again = km(&["import", "-c", s(&cfg)], T);
    assert!(
        again.stdout.contains("already imported to its end"),
        "{}",
        again.stdout
    );
    assert_eq!(read_partition(m.target(), "t", 0).len(), 39);
    assert_eq!(
        rejects(&m).len(),
        1,
        "the rejects file is not written twice"
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// 100,000 JSONL values with 3 that are not JSON, checked against a JSON Schema: exactly
/// those 3 are rejected (with their line numbers), every other line is produced, in order
/// within each partition. (Four partitions: the mock keeps 5 MB per partition.)
#[test]
fn a_jsonl_file_with_three_invalid_values_and_a_schema_rejects_exactly_three() {
    let m = Mirror::start(&[("t", 4)]);
    let bad = [1_234usize, 50_000, 99_999];
    let mut text = String::new();
    for i in 1..=100_000usize {
        if bad.contains(&i) {
            text.push_str(&format!("{{\"id\": {i}, \"tenant\": \"a\"\n"));
        } else {
            text.push_str(&format!("{{\"id\": {i}, \"tenant\": \"a\"}}\n"));
        }
    }
    let dump = m.dir.path().join("values.jsonl");
    std::fs::write(&dump, text).unwrap();
    let schema = write(
        m.dir.path(),
        "schema.json",
        r#"{"type": "object", "required": ["id", "tenant"], "properties": {"id": {"type": "integer"}}}"#,
    );
    let cfg = routing(
        &m,
        &dump,
        "jsonl",
        "topic = \"t\"",
        &format!(
            "on_error = \"skip\"\npartitioning = \"round_robin\"\nprovenance = false\nvalidate = {{ json = true, schema = \"{}\" }}",
            schema.display()
        ),
    );
    let (code, route, stderr) = import_json(&cfg, &[]);
    assert_eq!(code, 1, "{route:#}\n{stderr}");
    assert_eq!(counts(&route), [100_000, 99_997, 0, 3], "{route:#}");
    let lines: Vec<u64> = rejects(&m)
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![1_234, 50_000, 99_999]);
    let mut all = Vec::new();
    for p in 0..4 {
        let ids: Vec<u64> = read_partition(m.target(), "t", p)
            .iter()
            .map(|r| {
                let v: serde_json::Value =
                    serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
                v["id"].as_u64().unwrap()
            })
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "partition {p} in line order"
        );
        all.extend(ids);
    }
    all.sort_unstable();
    let want: Vec<u64> = (1..=100_000u64)
        .filter(|i| !bad.contains(&(*i as usize)))
        .collect();
    assert_eq!(all, want, "every other line");
}

/// `format = "records"` with renamed fields: a schema violation and a line without the value
/// field go to the dead-letter topic with the reason and the line; a filter drops lines of
/// another tenant, counted as filtered.
#[test]
fn record_lines_with_renamed_fields_dead_letter_bad_lines_and_count_filtered_ones() {
    let m = Mirror::start(&[("t", 2), ("dlq", 1)]);
    let lines = [
        r#"{"k": "a-1", "body": {"tenant": "a", "n": 1}, "meta": [["x", "1"], ["x", "2"]], "at": 1700000000000, "p": 1}"#,
        r#"{"k": "b-1", "body": {"tenant": "b", "n": 2}, "at": "2023-11-14T22:13:21Z", "p": 0}"#,
        r#"{"k": "a-2", "nobody": 1}"#,
        r#"{"k": "a-3", "body": {"tenant": "a", "n": "three"}, "p": 0}"#,
        r#"{"k": "a-4", "body": {"tenant": "a", "n": 4}, "meta": {"y": null}, "p": 0}"#,
    ];
    let dump = m.dir.path().join("records.jsonl");
    std::fs::write(&dump, lines.join("\n") + "\n").unwrap();
    let schema = write(
        m.dir.path(),
        "schema.json",
        r#"{"type": "object", "properties": {"n": {"type": "integer"}}}"#,
    );
    let cfg = routing(
        &m,
        &dump,
        "records",
        "topic = \"t\"\nfields = { key = \"k\", value = \"body\", headers = \"meta\", timestamp = \"at\", partition = \"p\" }",
        &format!(
            "on_error = \"dead_letter\"\ndead_letter = {{ cluster = \"dst\", topic = \"dlq\" }}\nvalidate = {{ schema = \"{}\" }}\nfilter = {{ json = \"$.tenant\", equals = \"a\" }}",
            schema.display()
        ),
    );
    let (code, route, stderr) = import_json(&cfg, &[]);
    assert_eq!(code, 1, "{route:#}\n{stderr}");
    assert_eq!(counts(&route), [5, 2, 1, 2], "{route:#}");
    assert_eq!(route["counts"]["dead_lettered"], 2);
    let p1 = read_partition(m.target(), "t", 1);
    assert_eq!(p1.len(), 1);
    assert_eq!(
        p1[0].value.as_deref(),
        Some(&br#"{"tenant": "a", "n": 1}"#[..])
    );
    assert_eq!(
        headers_without_provenance(&p1[0]),
        vec![
            (b"x".to_vec(), Some(b"1".to_vec())),
            (b"x".to_vec(), Some(b"2".to_vec()))
        ]
    );
    assert_eq!(p1[0].timestamp, Timestamp::CreateTime(1_700_000_000_000));
    let p0 = read_partition(m.target(), "t", 0);
    assert_eq!(p0.len(), 1);
    assert_eq!(p0[0].key.as_deref(), Some(&b"a-4"[..]));
    assert_eq!(
        headers_without_provenance(&p0[0]),
        vec![(b"y".to_vec(), None)]
    );
    let dlq = read_topic(m.target(), "dlq");
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].value.as_deref(), Some(lines[2].as_bytes()));
    assert_eq!(dlq[1].value.as_deref(), Some(lines[3].as_bytes()));
    let header = |r: &common::ReadRecord, name: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .and_then(|(_, v)| v.clone())
            .map(|v| String::from_utf8(v).unwrap())
            .unwrap_or_default()
    };
    assert!(
        header(&dlq[0], "kmirror.dlq.error").contains("value field"),
        "{:?}",
        dlq[0]
    );
    assert!(
        header(&dlq[0], "kmirror.dlq.source").ends_with(":3"),
        "{:?}",
        dlq[0]
    );
    assert!(
        header(&dlq[1], "kmirror.dlq.error").contains("schema"),
        "{:?}",
        dlq[1]
    );
}

/// `on_error = "stop"`: the import stops at the first bad line with lines before it
/// produced; running again stops at the same line (nothing produced twice); once the line
/// is fixed it goes on from there.
#[test]
fn on_error_stop_stops_at_the_bad_line_until_it_is_fixed() {
    let m = Mirror::start(&[("t", 1)]);
    let dump = m.dir.path().join("v.jsonl");
    let mut lines: Vec<String> = (1..=10).map(|i| format!("{{\"id\": {i}}}")).collect();
    lines[5] = "{\"id\": 6".into();
    std::fs::write(&dump, lines.join("\n") + "\n").unwrap();
    let cfg = routing(&m, &dump, "jsonl", "topic = \"t\"", "on_error = \"stop\"");
    for _ in 0..2 {
        let f = km(&["import", "-c", s(&cfg)], T);
        f.expect_code(1, "stopped at a bad line");
        assert!(f.stdout.contains("STOPPED at line 6"), "{}", f.stdout);
        assert_eq!(read_partition(m.target(), "t", 0).len(), 5);
    }
    lines[5] = "{\"id\": 6}".into();
    std::fs::write(&dump, lines.join("\n") + "\n").unwrap();
    let (code, route, _) = import_json(&cfg, &[]);
    assert_eq!((code, counts(&route)), (0, [10, 10, 0, 0]), "{route:#}");
    let ids: Vec<Vec<u8>> = read_partition(m.target(), "t", 0)
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    let want: Vec<Vec<u8>> = (1..=10)
        .map(|i| format!("{{\"id\": {i}}}").into_bytes())
        .collect();
    assert_eq!(ids, want);
}

/// An import killed with SIGKILL mid-file resumes where its state says: 0 lines missing
/// (lines in flight at the kill may be produced twice: at least once), the rejects file
/// holds each bad line once, and the counts add up to the file.
#[test]
fn an_import_killed_mid_file_resumes_without_gaps() {
    let m = Mirror::start(&[("t", 1)]);
    let n = 60_000u64;
    let bad = [10_000u64, 45_000];
    let mut text = String::new();
    for i in 1..=n {
        if bad.contains(&i) {
            text.push_str("not json\n");
        } else {
            text.push_str(&format!("{{\"id\": {i}}}\n"));
        }
    }
    let dump = m.dir.path().join("big.jsonl");
    std::fs::write(&dump, text).unwrap();
    // Slow enough to be killed in the middle; checkpoints often.
    let cfg = routing(
        &m,
        &dump,
        "jsonl",
        "topic = \"t\"",
        "on_error = \"skip\"\nmax_messages_per_sec = 15000",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("job = \"job\"", "job = \"job\"\ninterval = \"200ms\"");
    std::fs::write(&cfg, text).unwrap();
    let state = m.dir.path().join("checkpoints/job.import.replay.json");
    let mut kills = 0;
    for _ in 0..3 {
        let mut r = Running::spawn(&["import", "-c", s(&cfg)]);
        common::wait_until("the import saves progress", T, || {
            std::fs::read_to_string(&state)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["line"].as_u64().unwrap_or(0) > 0 && v["done"] == false)
        });
        std::thread::sleep(Duration::from_millis(700));
        if r.child.try_wait().unwrap().is_none() {
            r.child.kill().unwrap();
            let _ = r.child.wait();
            kills += 1;
        }
    }
    assert!(kills >= 1, "the import was never killed mid-file");
    let (code, route, stderr) = import_json(&cfg, &[]);
    assert_eq!(code, 1, "{route:#}\n{stderr}");
    let [read, produced, filtered, rejected] = counts(&route);
    assert_eq!((read, produced + filtered + rejected), (n, n), "{route:#}");
    assert_eq!(rejected, 2, "{route:#}");
    let lines: Vec<u64> = rejects(&m)
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(
        lines,
        bad.to_vec(),
        "each bad line once in the rejects file"
    );
    let mut seen = std::collections::BTreeSet::new();
    for r in read_partition(m.target(), "t", 0) {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        seen.insert(v["id"].as_u64().unwrap());
    }
    let missing: Vec<u64> = (1..=n)
        .filter(|i| !bad.contains(i) && !seen.contains(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "missing ids after {kills} kills: {missing:?}"
    );
}

/// `check` shows routes that read dumps (text and JSON, apart from the plan); `run` and
/// `verify`, which copy and compare between clusters, refuse a file whose routes all read
/// dumps, saying to use `import`, rather than doing nothing successfully.
#[test]
fn check_lists_import_routes_and_run_and_verify_point_to_import() {
    let m = Mirror::start(&[("t", 1)]);
    let dump = m.dir.path().join("d.jsonl");
    std::fs::write(&dump, "{}\n").unwrap();
    let cfg = routing(&m, &dump, "jsonl", "topic = \"t\"", "");
    let text = km(&["check", "--offline", "-c", s(&cfg)], T);
    text.expect_code(0, "check --offline");
    assert!(
        text.stdout.contains("import route replay: file") && text.stdout.contains("(jsonl)"),
        "{}",
        text.stdout
    );
    let j = km(
        &["check", "--offline", "--output", "json", "-c", s(&cfg)],
        T,
    );
    let v = json_with_schema(&j.stdout, "check-plan.schema.json");
    assert_eq!(v["routing_file"]["imports"][0]["name"], "replay", "{v:#}");
    assert_eq!(v["routing_file"]["imports"][0]["format"], "jsonl", "{v:#}");
    assert_eq!(v["routing_file"]["routes"], serde_json::json!([]), "{v:#}");
    for cmd in ["run", "verify"] {
        let f = km(&[cmd, "-c", s(&cfg)], T);
        f.expect_code(2, cmd);
        assert!(
            f.stderr.contains("kmirror import -c"),
            "{cmd}: {}",
            f.stderr
        );
    }
}
