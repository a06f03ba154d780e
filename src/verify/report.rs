//! Machine-readable verify reports: JSON (`verify --output json`, schema
//! `docs/verify-report.schema.json`, versioned by `JSON_SCHEMA_VERSION`) and JUnit XML
//! (`verify --junit FILE`: one testcase per route partition, so a CI server shows which
//! partition failed and where).

use serde_json::{json, Value};

use super::{VerifyReport, VerifyRow};

/// The `version` of the JSON report. Bump it when a field changes meaning or goes away;
/// adding a field does not.
pub const JSON_SCHEMA_VERSION: u32 = 1;

impl VerifyRow {
    /// How the row was compared: by provenance and content, or by counting.
    fn compared(&self) -> &'static str {
        if self.whole_route.is_some() {
            "count_whole_route"
        } else if self.in_group {
            "counted_in_whole_route"
        } else if self.by_content {
            "content"
        } else {
            "count"
        }
    }

    fn json(&self, fail_on_duplicates: bool) -> Value {
        let c = &self.coverage;
        let whole = self.whole_route.is_some();
        json!({
            "source": self.source,
            "target": self.target,
            "compared": self.compared(),
            "source_partitions": self.whole_route,
            "route_range": (!whole).then(|| json!({ "start": c.route_start, "end": c.route_end })),
            "copied_range": (!whole).then(|| json!({ "start": self.copied_range.0, "end": self.copied_range.1 })),
            "verified_range": (!whole).then(|| json!({ "start": self.source_range.0, "end": self.source_range.1 })),
            "source_end": (!whole).then_some(c.source_end),
            "not_copied": (!whole).then(|| json!({
                "started": c.started,
                "before": c.not_copied_before,
                "behind": c.behind,
                "not_yet_on_source": c.not_yet_on_source,
            })),
            "counts": {
                "source_records": self.source_records,
                "filtered": self.filtered,
                "dead_lettered": self.dead_lettered,
                "skipped": self.skipped,
                "no_longer_on_source": self.no_longer_on_source,
                "aged_out_of_target": self.aged_out_of_target,
                "target_records": (!self.in_group).then_some(self.target_records),
                "missing": self.missing,
                "unexpected": self.unexpected,
                "duplicates": self.duplicates,
                "altered": self.by_content.then_some(self.altered),
                "timestamps_not_kept": self.timestamps_not_kept,
            },
            "first_missing": self.first_missing,
            "first_altered": self.first_altered,
            "first_unexpected": self.first_unexpected,
            "verdict": self.verdict(fail_on_duplicates),
            "ok": self.ok(fail_on_duplicates),
            "reason": self.unverifiable,
        })
    }

    /// Why the row fails, in one line; `None` when it passes.
    fn failure(&self, fail_on_duplicates: bool) -> Option<String> {
        if self.ok(fail_on_duplicates) {
            return None;
        }
        if let Some(why) = &self.unverifiable {
            return Some(format!("cannot verify: {why}"));
        }
        let mut parts = Vec::new();
        for (n, what) in [
            (self.missing, "missing"),
            (self.unexpected, "unexpected"),
            (self.altered, "altered"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if fail_on_duplicates && self.duplicates > 0 {
            parts.push(format!("{} duplicates", self.duplicates));
        }
        let gaps = self.coverage.gaps();
        if !self.coverage.complete() && !gaps.is_empty() {
            parts.push(format!("not copied: {gaps}"));
        }
        Some(parts.join(", "))
    }
}

impl VerifyReport {
    /// The JSON report (see `docs/verify-report.schema.json`).
    pub fn json(&self) -> Value {
        let mut routes: Vec<(String, Vec<Value>)> = Vec::new();
        for r in &self.rows {
            let row = r.json(self.fail_on_duplicates);
            match routes.iter_mut().find(|(n, _)| *n == r.route) {
                Some((_, rows)) => rows.push(row),
                None => routes.push((r.route.clone(), vec![row])),
            }
        }
        json!({
            "kind": "kmirror-verify-report",
            "version": JSON_SCHEMA_VERSION,
            "ok": self.ok(),
            "fail_on_duplicates": self.fail_on_duplicates,
            "summary": self.summary(),
            "routes": routes
                .into_iter()
                .map(|(route, partitions)| json!({
                    "route": route,
                    "ok": partitions.iter().all(|p| p["ok"] == true),
                    "partitions": partitions,
                }))
                .collect::<Vec<_>>(),
        })
    }

    /// The JUnit XML report: a testsuite per route, a testcase per route partition.
    pub fn junit(&self) -> String {
        let fod = self.fail_on_duplicates;
        let failures = self.rows.iter().filter(|r| !r.ok(fod)).count();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str(&format!(
            "<testsuites name=\"kmirror verify\" tests=\"{}\" failures=\"{failures}\">\n",
            self.rows.len()
        ));
        let mut names: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !names.contains(&r.route.as_str()) {
                names.push(&r.route);
            }
        }
        for name in names {
            let rows: Vec<&VerifyRow> = self.rows.iter().filter(|r| r.route == name).collect();
            out.push_str(&format!(
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">\n",
                xml(name),
                rows.len(),
                rows.iter().filter(|r| !r.ok(fod)).count()
            ));
            for r in rows {
                out.push_str(&format!(
                    "    <testcase classname=\"kmirror.verify.{}\" name=\"{} -&gt; {}\"",
                    xml(&r.route),
                    xml(&r.source),
                    xml(&r.target)
                ));
                let verdict = r.verdict(fod);
                match r.failure(fod) {
                    None => {
                        out.push_str(">\n");
                        out.push_str(&format!(
                            "      <system-out>{verdict}{}</system-out>\n",
                            match r.coverage.gaps() {
                                g if g.is_empty() => String::new(),
                                g => xml(&format!(": {g}")),
                            }
                        ));
                    }
                    Some(why) => {
                        out.push_str(">\n");
                        let mut body = Vec::new();
                        for (what, offsets) in [
                            ("missing", &r.first_missing),
                            ("altered", &r.first_altered),
                            ("unexpected", &r.first_unexpected),
                        ] {
                            if !offsets.is_empty() {
                                let list: Vec<String> =
                                    offsets.iter().map(i64::to_string).collect();
                                body.push(format!(
                                    "first {what} source offsets: {}",
                                    list.join(", ")
                                ));
                            }
                        }
                        out.push_str(&format!(
                            "      <failure type=\"{verdict}\" message=\"{}\">{}</failure>\n",
                            xml(&why),
                            xml(&body.join("\n"))
                        ));
                    }
                }
                out.push_str("    </testcase>\n");
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

/// Escapes text for an XML attribute or element.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}
