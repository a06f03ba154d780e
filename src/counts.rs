//! Verification counts: per copy task, what happened to every record read, and the summary
//! table printed at the end of a run. The invariant
//! `read = filtered + acked + dead_lettered + skipped + failed + pending` holds at all times;
//! at the end of a clean run `pending` is zero.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::copy::ack_tracker::Settled;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Records read from the source, each offset once: it never goes backwards, even when a
    /// retry reads records again (those are counted in `retried`).
    pub read: u64,
    pub filtered: u64,
    /// Records handed to a producer (target or dead-letter), each send counted, re-sends
    /// after a retry included (informational, not part of the invariant).
    pub produced: u64,
    pub acked: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Records read again after a rewind (a retriable delivery failure or a recreated
    /// producer): not part of the invariant, since `read` counts each offset once.
    pub retried: u64,
}

impl Counts {
    /// Read but not yet settled.
    pub fn pending(&self) -> u64 {
        self.read.saturating_sub(
            self.filtered + self.acked + self.dead_lettered + self.skipped + self.failed,
        )
    }

    pub fn add(&mut self, o: &Counts) {
        self.read += o.read;
        self.filtered += o.filtered;
        self.produced += o.produced;
        self.acked += o.acked;
        self.dead_lettered += o.dead_lettered;
        self.skipped += o.skipped;
        self.failed += o.failed;
        self.retried += o.retried;
    }

    /// Records the settlement of one record.
    pub fn settled(&mut self, s: Settled) {
        match s {
            Settled::Acked => self.acked += 1,
            Settled::Filtered => self.filtered += 1,
            Settled::Failed => self.failed += 1,
            Settled::DeadLettered => self.dead_lettered += 1,
            Settled::Skipped => self.skipped += 1,
            Settled::Pending => {}
        }
    }

    /// A record dropped by a rewind: it stays read (`read` never goes backwards) and becomes
    /// pending again until its re-read copy settles; a settlement it already had is taken
    /// back so it is not counted twice. Re-reads are counted in `retried` when they happen.
    pub fn unread(&mut self, s: Settled) {
        self.unread_n(s, 1)
    }

    /// `unread` for `n` records that had the same settlement (a rewind drops counted runs).
    pub fn unread_n(&mut self, s: Settled, n: u64) {
        match s {
            Settled::Pending => {}
            Settled::Acked => self.acked -= n,
            Settled::Filtered => self.filtered -= n,
            Settled::Failed => self.failed -= n,
            Settled::DeadLettered => self.dead_lettered -= n,
            Settled::Skipped => self.skipped -= n,
        }
    }

    pub fn invariant_holds(&self) -> bool {
        self.read
            == self.filtered
                + self.acked
                + self.dead_lettered
                + self.skipped
                + self.failed
                + self.pending()
    }
}

/// One row of the end-of-run summary.
#[derive(Debug, Clone)]
pub struct SummaryRow {
    pub route: String,
    pub source: String,
    pub range: (i64, i64),
    pub counts: Counts,
    pub target: String,
    /// Target partition -> first and last offset written there, as the checkpoint keeps them
    /// (`target` unabridged, for the JSON summary).
    pub target_written: std::collections::BTreeMap<i32, [i64; 2]>,
    pub status: String,
    /// Consumer (fetch) errors taken for this partition.
    pub source_errors: u64,
}

/// Renders rows as an aligned text table with a totals line.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (i, c) in cells.iter().enumerate() {
            let numeric =
                c.chars().next().is_some_and(|ch| ch.is_ascii_digit()) && !c.contains('/');
            if i > 0 {
                out.push_str("  ");
            }
            if numeric {
                let _ = write!(out, "{:>w$}", c, w = widths[i]);
            } else {
                let _ = write!(out, "{:<w$}", c, w = widths[i]);
            }
        }
        while out.ends_with(' ') {
            out.pop();
        }
        out.push('\n');
    };
    line(
        &mut out,
        &headers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    line(
        &mut out,
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    );
    for r in rows {
        line(&mut out, r);
    }
    out
}

/// The end-of-run table: source range, every count, target offsets written, status.
pub fn summary_table(rows: &[SummaryRow]) -> String {
    let headers = [
        "route",
        "source",
        "range",
        "read",
        "filtered",
        "acked",
        "dlq",
        "skipped",
        "failed",
        "pending",
        "src_errors",
        "target",
        "status",
    ];
    let mut total = Counts::default();
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            total.add(&r.counts);
            let c = &r.counts;
            vec![
                r.route.clone(),
                r.source.clone(),
                format!("[{}, {})", r.range.0, r.range.1),
                c.read.to_string(),
                c.filtered.to_string(),
                c.acked.to_string(),
                c.dead_lettered.to_string(),
                c.skipped.to_string(),
                c.failed.to_string(),
                c.pending().to_string(),
                r.source_errors.to_string(),
                r.target.clone(),
                r.status.clone(),
            ]
        })
        .collect();
    cells.push(vec![
        "TOTAL".into(),
        String::new(),
        String::new(),
        total.read.to_string(),
        total.filtered.to_string(),
        total.acked.to_string(),
        total.dead_lettered.to_string(),
        total.skipped.to_string(),
        total.failed.to_string(),
        total.pending().to_string(),
        rows.iter()
            .map(|r| r.source_errors)
            .sum::<u64>()
            .to_string(),
        String::new(),
        if total.invariant_holds() && total.pending() == 0 {
            "read = filtered + acked + dlq + skipped + failed".into()
        } else {
            format!("{} records not settled", total.pending())
        },
    ]);
    render_table(&headers, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_keeps_read_and_returns_records_to_pending() {
        let mut c = Counts {
            read: 3,
            produced: 2,
            ..Default::default()
        };
        c.settled(Settled::Acked);
        c.settled(Settled::Filtered);
        assert_eq!(c.pending(), 1);
        c.unread(Settled::Acked);
        c.unread(Settled::Pending);
        assert_eq!(
            (c.read, c.produced, c.acked, c.filtered, c.pending()),
            (3, 2, 0, 1, 2),
            "read and produced never go backwards; the dropped records are pending again"
        );
        assert!(c.invariant_holds());
        // The re-read copies settle: the invariant holds and nothing is counted twice.
        c.retried += 2;
        c.settled(Settled::Acked);
        c.settled(Settled::Acked);
        assert_eq!((c.read, c.acked, c.pending()), (3, 2, 0));
        assert!(c.invariant_holds());
    }
}
