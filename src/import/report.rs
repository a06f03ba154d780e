//! What an import reports: per route, what became of every line (the counts, the first
//! rejected lines, where it stopped or failed), as the text summary, its closing line and
//! exit code, and `--output json` (docs/import-report.schema.json).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::Counts;

/// How one route's import ended.
#[derive(Debug, Clone)]
pub struct RouteImport {
    pub route: String,
    pub file: PathBuf,
    pub format: &'static str,
    pub target: String,
    /// Counts since the first line (resumed imports include earlier runs').
    pub counts: Counts,
    /// Lines this run started after.
    pub resumed_at_line: u64,
    /// The file was already imported to its end: nothing new was read.
    pub already_done: bool,
    /// The first few rejected lines of this run: (line number, error).
    pub first_rejected: Vec<(u64, String)>,
    pub rejects_file: Option<PathBuf>,
    /// `on_error = "stop"` stopped at this line: (line number, error).
    pub stopped_at: Option<(u64, String)>,
    /// The target failed: the import stopped; the state is at the last acknowledged line.
    pub failed: Option<String>,
    /// Stopped by a signal before the end of the file.
    pub interrupted: bool,
    pub elapsed: Duration,
}

impl RouteImport {
    pub fn complete(&self) -> bool {
        self.stopped_at.is_none() && self.failed.is_none() && !self.interrupted
    }
}

pub struct ImportReport {
    pub routes: Vec<RouteImport>,
}

impl ImportReport {
    /// 0: every line produced or filtered; 1: lines rejected, or stopped at a bad line;
    /// 4: the target failed.
    pub fn exit_code(&self) -> i32 {
        if self.routes.iter().any(|r| r.failed.is_some()) {
            crate::exit::CLUSTER
        } else if self
            .routes
            .iter()
            .any(|r| r.counts.rejected > 0 || r.stopped_at.is_some() || r.interrupted)
        {
            crate::exit::MISMATCH
        } else {
            crate::exit::OK
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.routes {
            let c = &r.counts;
            out.push_str(&format!(
                "import \"{}\": {} ({}) -> {}\n",
                r.route,
                r.file.display(),
                r.format,
                r.target
            ));
            if r.already_done {
                out.push_str(&format!(
                    "  already imported to its end ({} lines): nothing new to produce\n",
                    r.resumed_at_line
                ));
            } else if r.resumed_at_line > 0 {
                out.push_str(&format!(
                    "  resumed after line {} (counts include the earlier runs)\n",
                    r.resumed_at_line
                ));
            }
            out.push_str(&format!(
                "  read {}: produced {}, filtered {}, rejected {}{}{}\n",
                c.read,
                c.produced,
                c.filtered,
                c.rejected,
                if c.dead_lettered > 0 {
                    format!(" ({} to the dead-letter topic)", c.dead_lettered)
                } else {
                    String::new()
                },
                if c.blank > 0 {
                    format!("; {} blank lines", c.blank)
                } else {
                    String::new()
                },
            ));
            for (line, why) in &r.first_rejected {
                out.push_str(&format!("  rejected line {line}: {why}\n"));
            }
            if c.rejected > r.first_rejected.len() as u64 {
                if let Some(p) = &r.rejects_file {
                    out.push_str(&format!(
                        "  every rejected line, with its number and error: {}\n",
                        p.display()
                    ));
                }
            } else if let (Some(p), true) = (&r.rejects_file, c.rejected > 0) {
                out.push_str(&format!("  rejected lines kept in {}\n", p.display()));
            }
            if let Some((line, why)) = &r.stopped_at {
                out.push_str(&format!(
                    "  STOPPED at line {line} (on_error = \"stop\"): {why}. Lines before it are imported; fix or remove the line and run again to go on\n"
                ));
            }
            if let Some(why) = &r.failed {
                out.push_str(&format!(
                    "  FAILED: {why}; every line before the last saved position is acknowledged, run again to resume\n"
                ));
            }
            if r.interrupted {
                out.push_str("  interrupted: run again to resume\n");
            }
        }
        out.push_str(self.summary());
        out.push('\n');
        out
    }

    /// The closing line.
    pub fn summary(&self) -> &'static str {
        match self.exit_code() {
            0 => "every line read was produced or filtered out",
            1 => "NOT every line was produced: see the rejected lines above",
            _ => "the import failed: see above",
        }
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "kind": "kmirror-import",
            "version": 1,
            "exit_code": self.exit_code(),
            "ok": self.exit_code() == 0,
            "summary": self.summary(),
            "routes": self.routes.iter().map(|r| json!({
                "route": r.route,
                "file": r.file.display().to_string(),
                "format": r.format,
                "target": r.target,
                "counts": {
                    "read": r.counts.read,
                    "produced": r.counts.produced,
                    "filtered": r.counts.filtered,
                    "rejected": r.counts.rejected,
                    "dead_lettered": r.counts.dead_lettered,
                    "blank": r.counts.blank,
                },
                "resumed_at_line": r.resumed_at_line,
                "already_done": r.already_done,
                "first_rejected": r.first_rejected.iter().map(|(l, e)| json!({"line": l, "error": e})).collect::<Vec<_>>(),
                "rejects_file": r.rejects_file.as_ref().map(|p| p.display().to_string()),
                "stopped_at": r.stopped_at.as_ref().map(|(l, e)| json!({"line": l, "error": e})),
                "failed": r.failed,
                "interrupted": r.interrupted,
                "elapsed_seconds": r.elapsed.as_secs_f64(),
            })).collect::<Vec<_>>(),
        })
    }
}
