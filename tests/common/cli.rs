//! Running the built `kmirror` binary as an operator does, and reading what it prints:
//! processes with time limits ([`km`], [`Running`]), signals, routing files, and the tables
//! (`check`, `run`, `verify`, `checkpoints show`) parsed by column name.
//! Used by tests/cli.rs (against `kmirror dev-cluster`) and tests/tansu.rs (against tansu).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kmirror");

/// A `kmirror` command with a predictable environment.
pub fn kmirror(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOPE")
        .stdin(Stdio::null());
    c
}

/// What a finished `kmirror` process did.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code, code,
            "{what}: expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Reads a pipe to a string on a thread of its own (so a chatty child never blocks).
pub fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// A running `kmirror` process; killed (SIGKILL) if dropped while still running.
pub struct Running {
    pub child: Child,
    pub started: Instant,
    pub stdout: Option<std::thread::JoinHandle<String>>,
    pub stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    pub fn spawn(args: &[&str]) -> Running {
        Self::spawn_env(args, &[])
    }

    /// As `spawn`, with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = kmirror(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kmirror");
        let stdout = drain(child.stdout.take().expect("stdout"));
        let stderr = drain(child.stderr.take().expect("stderr"));
        Running {
            child,
            started: Instant::now(),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit, at most `limit` (then kills it and panics with its output).
    pub fn wait(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        let stdout = self
            .stdout
            .take()
            .expect("stdout")
            .join()
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .expect("stderr")
            .join()
            .unwrap_or_default();
        let Some(status) = status else {
            panic!(
                "kmirror did not exit within {limit:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
        };
        Finished {
            // A signal death has no code; -1 never equals an expected code.
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
            elapsed,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `kmirror ARGS` to completion, bounded by `limit`.
pub fn km(args: &[&str], limit: Duration) -> Finished {
    km_env(args, &[], limit)
}

/// As `km`, with extra environment variables.
pub fn km_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Finished {
    let f = Running::spawn_env(args, env).wait(limit);
    // Shown when a test fails, or with --nocapture.
    eprintln!(
        "$ kmirror {} -> exit {} in {:.2}s\n{}{}",
        args.join(" "),
        f.code,
        f.elapsed.as_secs_f64(),
        f.stdout,
        f.stderr
    );
    f
}

/// Sends a signal by pid with the `kill` utility (no libc dependency in the tests).
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).expect("write routing file");
    p
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One row of a printed table, by column header.
pub type Row = BTreeMap<String, String>;

pub fn col<'a>(r: &'a Row, name: &str) -> &'a str {
    r.get(name)
        .unwrap_or_else(|| panic!("no column {name:?} in row {r:?}"))
}

pub fn num(r: &Row, name: &str) -> i64 {
    col(r, name)
        .parse()
        .unwrap_or_else(|_| panic!("column {name:?} is not a number in {r:?}"))
}

/// The rows of the table whose header line starts with `first_header`, keyed by header.
/// Columns are found from the `---` rule under the header (cells are aligned to it and
/// separated by two spaces), so empty cells, spaces inside cells and columns added later do
/// not shift anything. The table ends at the first line that does not fit the columns.
pub fn table(out: &str, first_header: &str) -> Vec<Row> {
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .windows(2)
        .position(|w| w[0].starts_with(first_header) && w[1].starts_with("---"))
        .unwrap_or_else(|| panic!("no table with header {first_header:?} in:\n{out}"));
    let (header, rule) = (lines[at], lines[at + 1]);
    let mut spans = Vec::new();
    let mut start = None;
    for (i, ch) in rule.char_indices().chain([(rule.len(), ' ')]) {
        match (ch == '-', start) {
            (true, None) => start = Some(i),
            (false, Some(s0)) => {
                spans.push((s0, i));
                start = None;
            }
            _ => {}
        }
    }
    let cut = |line: &str, (a, b): (usize, usize)| -> String {
        let b = b.min(line.len());
        if a >= b {
            String::new()
        } else {
            line[a..b].trim().to_string()
        }
    };
    let names: Vec<String> = spans.iter().map(|sp| cut(header, *sp)).collect();
    let fits = |line: &str| {
        !line.trim().is_empty()
            && spans.iter().skip(1).all(|(a, _)| {
                line.as_bytes()
                    .get(a - 2..*a)
                    .is_none_or(|sep| sep == b"  ")
            })
    };
    lines[at + 2..]
        .iter()
        .take_while(|l| fits(l))
        .map(|l| {
            names
                .iter()
                .cloned()
                .zip(spans.iter().map(|sp| cut(l, *sp)))
                .collect()
        })
        .collect()
}

/// The TOTAL row of a run summary, as numbers by column.
pub fn totals(out: &str) -> BTreeMap<String, i64> {
    let rows = table(out, "route");
    let total = rows
        .iter()
        .find(|r| col(r, "route") == "TOTAL")
        .unwrap_or_else(|| panic!("no TOTAL row in:\n{out}"));
    total
        .iter()
        .filter_map(|(k, v)| v.parse().ok().map(|n| (k.clone(), n)))
        .collect()
}

/// A verify row with nothing missing, duplicated or altered.
pub fn assert_clean(r: &Row) {
    for c in ["missing", "duplicates", "altered"] {
        assert_eq!(num(r, c), 0, "{c} in {r:?}");
    }
    assert_eq!(col(r, "result"), "OK", "{r:?}");
}

/// Sum of `next offset` over the rows of `kmirror checkpoints show`.
pub fn shown_next_offsets(cfg: &Path) -> (i64, Vec<Row>) {
    let f = km(
        &["checkpoints", "show", "-c", s(cfg)],
        Duration::from_secs(30),
    );
    f.expect_code(0, "checkpoints show");
    let rows = table(&f.stdout, "route");
    let sum = rows.iter().map(|r| num(r, "next offset")).sum();
    (sum, rows)
}

/// Sum of every `"next_offset": N` in a checkpoint file (0 if there is none yet). Read
/// directly so a test can watch progress without spawning processes.
pub fn checkpoint_file_sum(path: &Path) -> i64 {
    let Ok(text) = fs::read_to_string(path) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("\"next_offset\": "))
        .filter_map(|v| v.trim_end_matches(',').parse::<i64>().ok())
        .sum()
}

/// `stdout` parsed as JSON and checked against `docs/<schema>`; panics listing every
/// violation.
pub fn json_with_schema(stdout: &str, schema: &str) -> serde_json::Value {
    let schema: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("docs")
                .join(schema),
        )
        .unwrap(),
    )
    .expect("the schema is JSON");
    let report: serde_json::Value =
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let errors: Vec<String> = validator
        .iter_errors(&report)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{stdout}");
    report
}
