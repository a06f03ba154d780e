//! Verification: for every (route, source partition) of the plan, read the source records
//! in the copied range and the target records in the written range, and compare them record
//! by record; and say how much of the route's range the copy has not reached
//! (`coverage.rs`), because a copy can match and still be incomplete. Counting is done by
//! reading, never by subtracting offsets: compaction, transaction markers and some brokers
//! leave gaps or misreport watermarks.
//!
//! With provenance headers (the default), each target record names its route and source
//! offset, so the comparison finds missing, duplicated and altered records (`compare.rs`:
//! content digest, and timestamps where the target keeps them), not just unequal counts.
//! Without them, counts are compared: per partition under `preserve`, per route as a whole
//! otherwise (any task may write any target partition). `report.rs` renders the JSON and
//! JUnit reports; this file reads and decides.
//!
//! The compared source range is the copied range less what retention removed: offsets below
//! the source's low watermark are reported as no longer on the source, and source offsets
//! whose copies the target's retention removed as aged out of the target (neither is a copy
//! failure; neither is proven). `--from/--to` and `--since-last` narrow it further; the
//! positions verified so far are remembered beside the checkpoint (`state.rs`).
//!
//! Memory does not grow with the record count: pass 1 reads every partition once (each
//! source range, each target partition for all the tasks that wrote it, each dead-letter
//! partition), `VerifyOptions::parallel` at a time, keeping per block of source offsets only
//! digests (`digest.rs`); pass 2 re-reads record by record only blocks whose digests differ,
//! so the counts and first offsets are those of a full record-by-record comparison.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

mod archive;
mod batch;
mod blocks;
mod compare;
mod coverage;
mod digest;
pub mod interval;
mod read;
mod record;
mod report;
mod state;

use blocks::{
    count_records, drill, extend_first, poison_settled, read_dlq, read_source, read_target,
    BlockMap, DlqBlock, DlqPart, Found, GroupPart, Job, Mode, SrcBlock, TargetPart, Task, TgtBlock,
};
pub use compare::{compare, Comparison, Fingerprint};
pub use coverage::Coverage;
pub use read::bound_malloc_arenas;
pub use read::scan;
use read::{run_jobs, Reader};
pub use record::Record;
pub use report::JSON_SCHEMA_VERSION;
pub use state::{path_for as verified_state_path, VerifiedRoute, VerifiedState};

use crate::checkpoint::{partition_key, CheckpointError, CheckpointStore};
use crate::cluster::{self, ClusterError};
use crate::config::{Config, Partitioning, RouteConfig};
use crate::copy::filter::Decision;
use crate::copy::record::{parse_provenance_full, Provenance, PROVENANCE_HEADER};
use crate::counts::render_table;
use crate::plan::{self, TaskEnd};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("nothing to verify: {0}")]
    Nothing(String),
}

/// How many offsets of each kind of difference a row lists.
pub const FIRST_OFFSETS: usize = 10;

#[derive(Debug, Clone, Default)]
pub struct VerifyRow {
    pub route: String,
    pub source: String,
    /// The source range compared, `[start, end)`: the copied range, less what retention has
    /// removed from the source (and copies the target's retention removed), narrowed by
    /// `--from/--to` and `--since-last`.
    pub source_range: (i64, i64),
    /// The range the copy wrote (the checkpoint's first and next offsets).
    pub copied_range: (i64, i64),
    /// Offsets of the copied range below the source's low watermark now: deleted by the
    /// source's retention, so not verified (and their copies on the target not counted).
    pub no_longer_on_source: u64,
    /// Offsets still on the source whose copies the target's retention has (or may have)
    /// removed: not verified; not a copy failure, but not proven either.
    pub aged_out_of_target: u64,
    pub source_records: u64,
    pub target: String,
    pub target_records: u64,
    /// Source records the route's filter leaves out (not expected on the target).
    pub filtered: u64,
    /// Source records found in the dead-letter topic instead of the target.
    pub dead_lettered: u64,
    /// Poison records a route with on_error = "skip" leaves out.
    pub skipped: u64,
    pub missing: u64,
    /// Target records naming a source offset in the range that the source does not hold,
    /// or that the route should not have copied (filtered or poison).
    pub unexpected: u64,
    pub duplicates: u64,
    pub altered: u64,
    /// Copies whose timestamp the target set itself (a topic with LogAppendTime): their
    /// timestamps could not be kept and were not compared (the rest of them was).
    pub timestamps_not_kept: u64,
    /// The first few ([`FIRST_OFFSETS`]) source offsets missing, altered, and unexpected on
    /// the target, in offset order: where to start looking.
    pub first_missing: Vec<i64>,
    pub first_altered: Vec<i64>,
    pub first_unexpected: Vec<i64>,
    /// Compared by content (provenance present) or only by count.
    pub by_content: bool,
    /// How much of the route's range the copy has reached.
    pub coverage: Coverage,
    /// Why this row cannot be verified (a failure), e.g. records that cannot be attributed.
    pub unverifiable: Option<String>,
    /// Count mode across partitions: the row counts the route's whole selection (from this
    /// many source partitions) against everything it wrote to the target topic.
    pub whole_route: Option<usize>,
    /// Count mode across partitions: this partition's copies are counted in the route's
    /// whole-route row, not here.
    pub in_group: bool,
    /// Digest blocks of the copied range compared, and how many of them differed and were
    /// re-read record by record (`verify` keeps a digest per block, not a record).
    pub blocks: u64,
    pub blocks_rechecked: u64,
}

/// Count mode across partitions: a route's selection and the target range it wrote.
#[derive(Debug, Default)]
struct CountGroup {
    expected: u64,
    /// Records on the target without provenance, in `ranges`.
    target: u64,
    tasks: usize,
    topics: BTreeSet<String>,
    /// Target partition -> `[from, to)` written by any of the route's tasks.
    ranges: BTreeMap<i32, (i64, i64)>,
}

impl VerifyRow {
    pub fn matches(&self, fail_on_duplicates: bool) -> bool {
        self.unverifiable.is_none()
            && self.missing == 0
            && self.unexpected == 0
            && self.altered == 0
            && (!fail_on_duplicates || self.duplicates == 0)
    }

    /// The copied range matches and, for a route with a fixed end, covers the whole range.
    /// (A following route that is behind is not a failure: it is reported as lag.)
    pub fn ok(&self, fail_on_duplicates: bool) -> bool {
        self.matches(fail_on_duplicates) && (self.coverage.complete() || !self.coverage.fixed_end())
    }

    /// One word for the row: OK, MISMATCH, INCOMPLETE (fixed end not reached) or BEHIND.
    pub fn verdict(&self, fail_on_duplicates: bool) -> &'static str {
        if self.unverifiable.is_some() {
            "UNVERIFIABLE"
        } else if !self.matches(fail_on_duplicates) {
            "MISMATCH"
        } else if self.coverage.complete() {
            "OK"
        } else if self.coverage.fixed_end() {
            "INCOMPLETE"
        } else {
            "BEHIND"
        }
    }
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub rows: Vec<VerifyRow>,
    pub fail_on_duplicates: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.ok(self.fail_on_duplicates))
    }

    pub fn table(&self) -> String {
        let headers = [
            "route",
            "source",
            "route range",
            "range",
            "source records",
            "filtered",
            "dead-lettered",
            "skipped",
            "no longer on source",
            "target",
            "target records",
            "missing",
            "unexpected",
            "duplicates",
            "altered",
            "not copied",
            "result",
        ];
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.route.clone(),
                    r.source.clone(),
                    match r.whole_route {
                        Some(_) => "-".into(),
                        None => r.coverage.route_range(),
                    },
                    match r.whole_route {
                        Some(n) => format!("{n} partitions"),
                        None => format!("[{}, {})", r.source_range.0, r.source_range.1),
                    },
                    r.source_records.to_string(),
                    r.filtered.to_string(),
                    r.dead_lettered.to_string(),
                    r.skipped.to_string(),
                    if r.whole_route.is_some() {
                        "-".into()
                    } else {
                        r.no_longer_on_source.to_string()
                    },
                    r.target.clone(),
                    if r.in_group {
                        "in /* row".into()
                    } else {
                        r.target_records.to_string()
                    },
                    r.missing.to_string(),
                    r.unexpected.to_string(),
                    r.duplicates.to_string(),
                    if r.by_content {
                        r.altered.to_string()
                    } else {
                        "n/a".into()
                    },
                    match r.coverage.gaps() {
                        g if g.is_empty() => "-".into(),
                        g => g,
                    },
                    r.verdict(self.fail_on_duplicates).into(),
                ]
            })
            .collect();
        let mut out = render_table(&headers, &rows);
        for r in &self.rows {
            if let Some(why) = &r.unverifiable {
                out.push_str(&format!("{} {}: cannot verify: {why}\n", r.route, r.source));
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The closing line: exactly what was proven, and what was not.
    pub fn summary(&self) -> String {
        let n = self.rows.iter().filter(|r| r.whole_route.is_none()).count();
        let fod = self.fail_on_duplicates;
        let bad = self.rows.iter().filter(|r| !r.matches(fod)).count();
        let incomplete: Vec<&VerifyRow> = self
            .rows
            .iter()
            .filter(|r| r.coverage.fixed_end() && !r.coverage.complete())
            .collect();
        let behind: Vec<&VerifyRow> = self
            .rows
            .iter()
            .filter(|r| !r.coverage.fixed_end() && !r.coverage.complete())
            .collect();
        let copies: u64 = self
            .rows
            .iter()
            .filter(|r| r.whole_route.is_none())
            .map(|r| {
                r.source_records
                    .saturating_sub(r.filtered + r.skipped + r.dead_lettered + r.missing)
            })
            .sum();
        let offsets = |rows: &[&VerifyRow]| -> u64 {
            rows.iter()
                .map(|r| r.coverage.not_copied_before + r.coverage.behind)
                .sum()
        };
        let gone: u64 = self.rows.iter().map(|r| r.no_longer_on_source).sum();
        let aged: u64 = self.rows.iter().map(|r| r.aged_out_of_target).sum();
        let narrowed = self
            .rows
            .iter()
            .filter(|r| {
                r.whole_route.is_none()
                    && r.coverage.started
                    && r.source_range.1 - r.source_range.0
                        < r.copied_range.1
                            - r.copied_range.0
                            - (r.no_longer_on_source + r.aged_out_of_target) as i64
            })
            .count();
        let mut out = if bad > 0 {
            let unverifiable = self
                .rows
                .iter()
                .filter(|r| r.unverifiable.is_some())
                .count();
            // Whole-route count rows are rows, not partitions.
            let what = if self.rows.len() == n {
                "partitions"
            } else {
                "rows"
            };
            let mut m = format!("{bad} of {} {what} do NOT match", self.rows.len());
            if unverifiable > 0 {
                m.push_str(&format!(" ({unverifiable} cannot be verified, see above)"));
            }
            m
        } else if narrowed > 0 || gone + aged > 0 {
            format!("verified {n} partitions: the compared ranges match ({copies} selected records on the target), but not every copied record was compared")
        } else if incomplete.is_empty() && behind.is_empty() {
            format!("verified {n} partitions: every source record is on the target ({copies} selected records in the routes' whole ranges, each copied and matching)")
        } else {
            format!("verified {n} partitions: the copied ranges match ({copies} selected records on the target), but the copy is NOT complete")
        };
        if !incomplete.is_empty() {
            out.push_str(&format!(
                "; {} partitions of routes with a fixed end are INCOMPLETE ({} offsets not copied)",
                incomplete.len(),
                offsets(&incomplete)
            ));
        }
        if !behind.is_empty() {
            out.push_str(&format!(
                "; {} partitions of following routes are behind by {} offsets (lag, not a mismatch)",
                behind.len(),
                offsets(&behind)
            ));
        }
        if gone > 0 {
            out.push_str(&format!(
                "; NOT proven: {gone} copied offsets no longer on the source (deleted by its retention; not a copy failure)"
            ));
        }
        if aged > 0 {
            out.push_str(&format!(
                "; NOT proven: {aged} offsets still on the source whose copies the target's retention removed"
            ));
        }
        if narrowed > 0 {
            out.push_str(&format!(
                "; {narrowed} partitions verified only the range asked for (--from/--to/--since-last), see the range column"
            ));
        }
        let not_kept: u64 = self.rows.iter().map(|r| r.timestamps_not_kept).sum();
        if not_kept > 0 {
            out.push_str(&format!(
                "; timestamps NOT compared for {not_kept} copies: the target set its own (LogAppendTime), so only key, value and headers were"
            ));
        }
        let dups: u64 = self.rows.iter().map(|r| r.duplicates).sum();
        if dups > 0 {
            out.push_str(&format!(
                "; {dups} duplicate deliveries (at-least-once retries or restarts){}",
                if fod { ", counted as failures" } else { "" }
            ));
        }
        out
    }
}

/// What the route does with a source record: the same decision as the copy path.
fn decide(r: &RouteConfig, m: &Record<'_>) -> Decision {
    if r.validate.is_empty() && r.filter.is_none() {
        return Decision::Copy;
    }
    r.decide(&m.view(), m.bytes() as u64)
}

fn provenance<'m>(m: &Record<'m>) -> Option<Provenance<'m>> {
    // The last one: a record copied twice through kmirror carries both, the copy's own last.
    let prov = m
        .headers()
        .filter(|h| h.name == PROVENANCE_HEADER.as_bytes())
        .last()?;
    parse_provenance_full(prov.value?)
}

/// How verify runs. Its memory depends on these, the number of partitions and the number of
/// blocks, never on the number of records.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Partitions read at once: one thread each, each with its own consumers.
    pub parallel: usize,
    /// Source offsets per digest block. Matching blocks cost a few dozen bytes each; a block
    /// that differs is re-read record by record, holding at most this many records.
    pub block: i64,
    /// Compare only source offsets at or after this (an offset, or the first record at or
    /// after a timestamp), within the copied range.
    pub from: Option<Bound>,
    /// Compare only source offsets before this.
    pub to: Option<Bound>,
    /// Start each partition where the last matching verification of it ended (the
    /// positions beside the checkpoint, see `state.rs`).
    pub since_last: bool,
    /// Record, beside the checkpoint, where each matching partition's verification ended.
    pub remember: bool,
}

/// One end of `--from/--to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Offset(i64),
    /// Milliseconds since the epoch: the first record at or after it.
    Timestamp(i64),
}

/// Bare numbers from this on are timestamps in milliseconds (2001-09-09), not offsets: no
/// partition holds a trillion records, and a millisecond timestamp is never smaller.
pub const MS_THRESHOLD: i64 = 1_000_000_000_000;

impl std::str::FromStr for Bound {
    type Err = String;
    fn from_str(s: &str) -> Result<Bound, String> {
        match s.trim().parse::<i64>() {
            Ok(n) if n < 0 => Err(format!("\"{s}\": offsets and timestamps are not negative")),
            Ok(n) if n >= MS_THRESHOLD => Ok(Bound::Timestamp(n)),
            Ok(n) => Ok(Bound::Offset(n)),
            Err(_) => crate::config::value::parse_timestamp_ms(s)
                .map(Bound::Timestamp)
                .map_err(|e| format!("{e} (or an offset, or milliseconds since the epoch)")),
        }
    }
}

/// Default block size: ~100 bytes of digest per 65,536 records.
pub const DEFAULT_BLOCK: i64 = 65_536;
/// Default number of partitions read at once.
pub const DEFAULT_PARALLEL: usize = 4;

impl Default for VerifyOptions {
    /// `KMIRROR_VERIFY_BLOCK` overrides the block size (tests use small blocks to reach the
    /// record-by-record drill-down with little data).
    fn default() -> Self {
        VerifyOptions {
            parallel: DEFAULT_PARALLEL,
            block: std::env::var("KMIRROR_VERIFY_BLOCK")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|b: &i64| *b > 0)
                .unwrap_or(DEFAULT_BLOCK),
            from: None,
            to: None,
            since_last: false,
            remember: false,
        }
    }
}

/// Compares source and target for every task of the selected routes: the copied range
/// record by record, and how much of the route's range the copy has not reached.
pub fn verify(
    config: &Config,
    store: &dyn CheckpointStore,
    route: Option<&str>,
    fail_on_duplicates: bool,
) -> Result<VerifyReport, VerifyError> {
    verify_with(
        config,
        store,
        route,
        fail_on_duplicates,
        &VerifyOptions::default(),
    )
}

/// [`verify`] with explicit [`VerifyOptions`].
///
/// Pass 1 reads every source partition's copied range once, every target partition once
/// for all the tasks that wrote it, and every dead-letter partition once, `parallel`
/// partitions at a time, keeping only per-block digests. Pass 2 re-reads, record by record,
/// only the blocks whose digests differ, so the report's counts and first offsets are those
/// of a full record-by-record comparison.
pub fn verify_with(
    config: &Config,
    store: &dyn CheckpointStore,
    route: Option<&str>,
    fail_on_duplicates: bool,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let cp = crate::copy::load_checkpoint(config, store)?.ok_or_else(|| {
        VerifyError::Nothing(format!("no checkpoint at {} (run first)", store.describe()))
    })?;
    let copied_any = config
        .routes
        .iter()
        .filter(|r| route.is_none_or(|n| n == r.name))
        .any(|r| {
            cp.routes
                .get(&r.name)
                .is_some_and(|rc| !rc.partitions.is_empty())
        });
    if !copied_any {
        return Err(VerifyError::Nothing(
            "the checkpoint records no copied partitions for these routes".into(),
        ));
    }
    let timeout = config.run.connect_timeout.max(Duration::from_secs(10));
    let b = opts.block.max(1);
    // The plan gives every partition of the routes' topics, the source's end now and each
    // route's end, so partitions the copy never reached are reported too.
    let plan = plan::build_to_inspect(config, Some(&cp))?;
    let mut reader = Reader::new(timeout);
    let state_path = state::path_for(&config.checkpoint_file());
    let mut verified = if opts.since_last || opts.remember {
        VerifiedState::load(&state_path)?
    } else {
        VerifiedState::default()
    };
    let mut positions: Vec<Position> = Vec::new();
    // Target partitions' low watermarks, looked up once (key partitioning: every task writes
    // every target partition).
    let mut target_lows: HashMap<(String, String, i32), i64> = HashMap::new();
    let mut rows = Vec::new();
    // Archives restored from or dumped into (`archive.rs`): a name for their tasks' `src`
    // or `dst`.
    let archive_clusters: BTreeMap<String, crate::config::ClusterConfig> = config
        .archives
        .keys()
        .map(|name| {
            let c = crate::config::ClusterConfig {
                name: name.clone(),
                bootstrap: String::new(),
                properties: Default::default(),
            };
            (name.clone(), c)
        })
        .collect();
    let mut tasks: Vec<Task<'_>> = Vec::new();
    // Count mode across partitions: (row of the whole-route line, the group).
    let mut groups: Vec<(usize, String, String, CountGroup)> = Vec::new();
    let mut group_tasks: BTreeMap<usize, usize> = BTreeMap::new();
    for (ri, r) in config.routes.iter().enumerate() {
        if route.is_some_and(|n| n != r.name) {
            continue;
        }
        let rc = cp.routes.get(&r.name);
        // Headers the route sets or drops are compared separately (set) or not at all (drop).
        let ignore: Vec<&str> = r
            .headers
            .set
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(r.headers.drop.iter().map(String::as_str))
            .collect();
        let grouped = !r.provenance && r.partitioning != Partitioning::Preserve;
        let mut route_groups: BTreeMap<(String, String), CountGroup> = BTreeMap::new();
        // Count mode cannot tell this route's records from another's without provenance.
        let shared_without_provenance = (!r.provenance)
            .then(|| {
                plan.tasks.iter().find(|t| {
                    t.route != ri
                        && !config.routes[t.route].provenance
                        && plan.tasks.iter().any(|o| {
                            o.route == ri
                                && o.target_cluster == t.target_cluster
                                && o.target_topic == t.target_topic
                        })
                })
            })
            .flatten()
            .map(|t| {
                format!(
                    "route \"{}\" also writes {}:{} without provenance, so records cannot be attributed; set provenance = true on both",
                    t.route_name, t.target_cluster, t.target_topic
                )
            });
        for task in plan.tasks.iter().filter(|t| t.route == ri) {
            let (topic, partition) = (task.topic.as_str(), task.partition);
            let pc = rc.and_then(|rc| rc.partitions.get(&partition_key(topic, partition)));
            // A restore reads its source side from the archive (`archive.rs`).
            let src_archive = config.archives.get(&r.source);
            if src_archive.is_some() && !r.provenance {
                // Never "OK" for what was not compared.
                rows.push(VerifyRow {
                    route: r.name.clone(),
                    source: format!("{}:{}/{}", r.source, topic, partition),
                    target: format!("{}:{}", task.target_cluster, task.target_topic),
                    unverifiable: Some(format!(
                        "the source \"{}\" is an archive: a restore is verified by its provenance headers (provenance = false)",
                        r.source
                    )),
                    ..Default::default()
                });
                continue;
            }
            let src = match src_archive {
                Some(_) => &archive_clusters[&r.source],
                None => &config.clusters[&r.source],
            };
            // A timestamp end is where the copy path stops: the first record at or after it
            // (read, not looked up: not every broker answers lookups by time).
            let end_offset = match task.end {
                TaskEnd::Timestamp(ts) => {
                    let from = pc.map_or(task.start, |pc| pc.next_offset).max(task.low);
                    let mut at = None;
                    reader.scan(src, topic, partition, from, task.high, |m| {
                        if at.is_none() && m.timestamp().to_millis().is_some_and(|t| t >= ts) {
                            at = Some(m.offset());
                        }
                    })?;
                    Some(at.unwrap_or(task.high))
                }
                _ => None,
            };
            let coverage = Coverage::new(
                r,
                task,
                pc.map(|pc| (pc.first_offset, pc.next_offset)),
                pc.and_then(|pc| pc.end),
                end_offset,
            );
            let mut row = VerifyRow {
                route: r.name.clone(),
                source: format!("{}:{}/{}", r.source, topic, partition),
                source_range: (coverage.copied_to, coverage.copied_to),
                copied_range: (coverage.copied_to, coverage.copied_to),
                target: format!("{}:{}", task.target_cluster, task.target_topic),
                by_content: r.provenance,
                coverage,
                ..Default::default()
            };
            // A dump's target side is read from the archive (`archive.rs`).
            let dst_archive = config.archives.get(&r.target);
            if dst_archive.is_some() && !r.provenance {
                // Never "OK" for what was not compared.
                row.unverifiable = Some(format!(
                    "the target \"{}\" is an archive: a dump is verified by its provenance headers (provenance = false)",
                    r.target
                ));
                rows.push(row);
                continue;
            }
            let Some(pc) = pc else {
                rows.push(row);
                continue;
            };
            let dst = config.clusters.get(&pc.target_cluster);
            let Some(dst) = dst.or_else(|| archive_clusters.get(&pc.target_cluster)) else {
                rows.push(row);
                continue;
            };
            row.copied_range = (pc.first_offset, pc.next_offset);
            row.target = format!("{}:{}", pc.target_cluster, pc.target_topic);
            if let Some(why) = &shared_without_provenance {
                row.unverifiable = Some(why.clone());
            }
            // From before the first write: copies by a run that died before it could
            // checkpoint are duplicates to count, and lie below the first recorded offset.
            let mut ranges: BTreeMap<i32, (i64, i64)> = pc
                .target
                .iter()
                .map(|(tp, [a, z])| {
                    let from = pc.target_start.get(tp).map_or(*a, |s| (*s).min(*a));
                    (*tp, (from, z + 1))
                })
                .collect();
            // What can still be verified. Retention may have removed the start of the copied
            // range from the source: those offsets are reported, not compared, and their
            // copies on the target are not counted (`Task::owns` looks only at [first, next)).
            let (first, next) = (pc.first_offset, pc.next_offset);
            let mut start = first.max(task.low).min(next);
            row.no_longer_on_source = (start - first) as u64;
            let mut end = next;
            let marks = (task.low, task.high);
            let mut resolve = |bound, within| match src_archive {
                Some(root) => {
                    archive::resolve(root, &r.source, topic, partition, bound, marks, within)
                }
                None => resolve(&mut reader, src, topic, partition, bound, marks, within),
            };
            if let Some(bound) = opts.from {
                start = start.max(resolve(bound, (start, end))?);
            }
            if let Some(bound) = opts.to {
                end = end.min(resolve(bound, (start, end))?);
            }
            let key = partition_key(topic, partition);
            let source_id = rc.and_then(|rc| rc.source_cluster_id.as_deref());
            let remembered = verified.position(&r.name, &r.source, source_id, &key);
            // Without provenance only whole ranges can be counted: such a route is counted
            // whole every time (its rows say so by their range).
            if opts.since_last && r.provenance {
                if let Some(p) = remembered {
                    start = start.max(p);
                }
            }
            start = start.min(end);
            // The target's retention may have removed copies too: a target partition whose
            // low watermark passed the range the task wrote is read from that watermark, and
            // source offsets below the first of this task's copies left there are not proven
            // (copies are written in source order, so the removed ones are those below it).
            let mut trimmed = false;
            let mut floor = start;
            for (tp, span) in ranges.iter_mut() {
                if dst_archive.is_some() {
                    break; // an archive has no retention
                }
                let tkey = (dst.name.clone(), pc.target_topic.clone(), *tp);
                let tlow = match target_lows.get(&tkey) {
                    Some(l) => *l,
                    None => {
                        let (l, _) = reader.watermarks(dst, &pc.target_topic, *tp)?;
                        *target_lows.entry(tkey).or_insert(l)
                    }
                };
                if tlow <= span.0 {
                    continue;
                }
                trimmed = true;
                span.0 = tlow.min(span.1);
                let mut at = None;
                let window = (span.0, span.1.min(span.0 + TRIMMED_WINDOW));
                reader.scan(dst, &pc.target_topic, *tp, window.0, window.1, |m| {
                    if at.is_some() {
                        return;
                    }
                    if let Some(pv) = provenance(m) {
                        if pv.route.is_none_or(|n| n == r.name)
                            && pv.cluster == r.source
                            && pv.topic == topic
                            && pv.partition == partition
                        {
                            at = Some(pv.offset);
                        }
                    }
                })?;
                // None left in the window: nothing can be said of what was removed.
                floor = floor.max(at.unwrap_or(end));
            }
            let floor = floor.min(end);
            row.aged_out_of_target = (floor - start).max(0) as u64;
            start = start.max(floor);
            row.source_range = (start, end);
            if !r.provenance && (start != first || end != next || trimmed) {
                row.unverifiable = Some(format!(
                    "without provenance only the whole copied range [{first}, {next}) can be counted, and {}",
                    if trimmed {
                        "the target's retention has removed part of it".to_string()
                    } else if start != first && row.no_longer_on_source > 0 {
                        format!("the source's retention has removed [{first}, {start})")
                    } else {
                        format!("only [{start}, {end}) was asked for")
                    }
                ));
                rows.push(row);
                continue;
            }
            positions.push(Position {
                row: rows.len(),
                route: r.name.clone(),
                source_cluster: r.source.clone(),
                source_cluster_id: source_id.map(str::to_string),
                key,
                natural_start: floor.max(first.max(task.low)).min(next),
                remembered,
            });
            let mode = if r.provenance {
                Mode::Content
            } else if grouped {
                Mode::Grouped
            } else {
                Mode::Count
            };
            if grouped {
                // Without provenance, a record cannot be traced to the task that wrote it
                // and every task may write every target partition: only the route's whole
                // selection against the whole range it wrote can be counted soundly.
                let g = route_groups
                    .entry((pc.target_cluster.clone(), pc.target_topic.clone()))
                    .or_default();
                g.topics.insert(topic.to_string());
                g.tasks += 1;
                for (tp, (from, to)) in &ranges {
                    let e = g.ranges.entry(*tp).or_insert((*from, *to));
                    e.0 = e.0.min(*from);
                    e.1 = e.1.max(*to);
                }
                row.in_group = true;
            }
            tasks.push(Task {
                row: rows.len(),
                route: r,
                ignore: ignore.clone(),
                src,
                src_archive,
                dst,
                dst_archive,
                topic: topic.to_string(),
                partition,
                first: start,
                next: end,
                target_topic: pc.target_topic.clone(),
                ranges,
                mode,
                dlq: r
                    .dead_letter
                    .as_ref()
                    .map(|dl| (&config.clusters[&dl.cluster], dl.topic.as_str())),
            });
            rows.push(row);
        }
        for ((tc, tt), g) in route_groups {
            if !config.clusters.contains_key(&tc) {
                continue;
            }
            let topics: Vec<&str> = g.topics.iter().map(String::as_str).collect();
            for ti in tasks.iter().enumerate().filter_map(|(ti, t)| {
                (t.mode == Mode::Grouped
                    && std::ptr::eq(t.route, r)
                    && t.dst.name == tc
                    && t.target_topic == tt)
                    .then_some(ti)
            }) {
                group_tasks.insert(ti, groups.len());
            }
            rows.push(VerifyRow {
                route: r.name.clone(),
                source: format!("{}:{}/*", r.source, topics.join(",")),
                target: format!("{tc}:{tt}"),
                whole_route: Some(g.tasks),
                unverifiable: shared_without_provenance.clone(),
                ..Default::default()
            });
            groups.push((rows.len() - 1, tc, tt, g));
        }
    }

    crate::cluster::drop_in_background(reader);
    // Pass 1: every partition once, sources and targets side by side.
    let mut sources = Vec::new();
    let mut others = Vec::new();
    let mut targets: BTreeMap<(String, String, i32), TargetPart<'_>> = BTreeMap::new();
    for (ti, t) in tasks.iter().enumerate() {
        sources.push(Job::Source(ti));
        match t.mode {
            Mode::Content => {
                for (tp, span) in &t.ranges {
                    let part = targets
                        .entry((t.dst.name.clone(), t.target_topic.clone(), *tp))
                        .or_insert_with(|| TargetPart {
                            cluster: t.dst,
                            archive: t.dst_archive,
                            topic: t.target_topic.clone(),
                            partition: *tp,
                            spans: Vec::new(),
                            tasks: Vec::new(),
                        });
                    part.spans.push(*span);
                    part.tasks.push(ti);
                }
            }
            Mode::Count => others.push(Job::Count(ti)),
            Mode::Grouped => {}
        }
    }
    for mut part in targets.into_values() {
        // Tasks sharing a target partition (key or round-robin partitioning) wrote
        // overlapping ranges: read their union once.
        part.spans.sort_unstable();
        let mut spans: Vec<(i64, i64)> = Vec::new();
        for (a, z) in part.spans.drain(..) {
            match spans.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(z),
                _ => spans.push((a, z)),
            }
        }
        part.spans = spans;
        others.push(Job::Target(part));
    }
    for (gi, (_, tc, tt, g)) in groups.iter().enumerate() {
        let Some(cluster) = config.clusters.get(tc) else {
            continue;
        };
        for (tp, (from, to)) in &g.ranges {
            others.push(Job::Group(GroupPart {
                group: gi,
                cluster,
                topic: tt.to_string(),
                partition: *tp,
                from: *from,
                to: *to,
            }));
        }
    }
    // Each dead-letter topic once, for every route writing it.
    let mut dlqs: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (ti, t) in tasks.iter().enumerate() {
        if let Some((c, topic)) = t.dlq {
            dlqs.entry((c.name.clone(), topic.to_string()))
                .or_default()
                .push(ti);
        }
    }
    for ((c, topic), ts) in dlqs {
        let cluster = &config.clusters[&c];
        let consumer = cluster::consumer(cluster, &[])?;
        let md = cluster::metadata(&consumer, cluster, Some(&topic), timeout)?;
        for p in 0..cluster::partition_count(&md, &topic).unwrap_or(0) as i32 {
            others.push(Job::Dlq(DlqPart {
                cluster,
                topic: topic.clone(),
                partition: p,
                tasks: ts.clone(),
            }));
        }
    }
    // Interleaved, so sources and targets are read at the same time.
    let mut jobs = Vec::with_capacity(sources.len() + others.len());
    let (mut s, mut o) = (sources.into_iter(), others.into_iter());
    loop {
        match (s.next(), o.next()) {
            (None, None) => break,
            (a, c) => jobs.extend(a.into_iter().chain(c)),
        }
    }
    let found = run_jobs(opts.parallel, timeout, &jobs, |reader, job| {
        Ok(match job {
            Job::Source(ti) => Found::Source(read_source(reader, &tasks[*ti], b)?),
            Job::Target(part) => Found::Target(read_target(reader, &tasks, part, b)?),
            Job::Dlq(part) => Found::Dlq(read_dlq(reader, &tasks, part, b)?),
            Job::Count(ti) => {
                let t = &tasks[*ti];
                let ranges = t.ranges.iter().map(|(p, (a, z))| (*p, *a, *z));
                Found::Count(count_records(
                    reader,
                    t.dst,
                    &t.target_topic,
                    ranges,
                    |_| true,
                )?)
            }
            Job::Group(g) => {
                let ranges = [(g.partition, g.from, g.to)];
                // Another route's copy names its route; this route's records carry none.
                Found::Count(count_records(reader, g.cluster, &g.topic, ranges, |m| {
                    provenance(m).is_none()
                })?)
            }
        })
    })?;
    let mut src: Vec<Vec<SrcBlock>> = vec![Vec::new(); tasks.len()];
    let mut tgt: BlockMap<TgtBlock> = BlockMap::default();
    let mut dlq: BlockMap<DlqBlock> = BlockMap::default();
    let mut counted: BTreeMap<usize, u64> = BTreeMap::new();
    for (job, f) in jobs.iter().zip(found) {
        match (job, f) {
            (Job::Source(ti), Found::Source(v)) => src[*ti] = v,
            (Job::Target(_), Found::Target(m)) => {
                for (k, t) in m {
                    let e = tgt.entry(k).or_default();
                    e.content.merge(&t.content);
                    e.kept.merge(&t.kept);
                    e.lat += t.lat;
                    e.bad_set |= t.bad_set;
                    e.ranges.extend(t.ranges);
                }
            }
            (Job::Dlq(_), Found::Dlq(m)) => {
                for (k, d) in m {
                    let e = dlq.entry(k).or_default();
                    e.offsets.merge(&d.offsets);
                    e.ranges.extend(d.ranges);
                }
            }
            (Job::Count(ti), Found::Count(n)) => {
                counted.insert(*ti, n);
            }
            (Job::Group(g), Found::Count(n)) => groups[g.group].3.target += n,
            _ => unreachable!("a job's result is of its kind"),
        }
    }
    // Settle every block whose digests agree; the rest go to pass 2.
    let mut drills: Vec<(usize, i64)> = Vec::new();
    for (ti, t) in tasks.iter().enumerate() {
        let row = &mut rows[t.row];
        let mut copies = 0u64;
        for (i, k) in t.blocks(b).enumerate() {
            let s = &src[ti][i];
            row.blocks += 1;
            row.source_records += s.records;
            row.filtered += s.filtered;
            copies += s.copy.count;
            let d = dlq.get(&(ti, k));
            let poison = poison_settled(s, d, &t.route.on_error);
            let clean = match t.mode {
                Mode::Content => {
                    let tb = tgt.get(&(ti, k)).cloned().unwrap_or_default();
                    row.target_records += tb.content.count;
                    let target_ok = tb.content == s.copy_content
                        && !tb.bad_set
                        && if tb.lat == 0 {
                            tb.kept == s.copy
                        } else {
                            tb.lat == tb.content.count
                        };
                    if target_ok && poison.is_some() {
                        row.timestamps_not_kept += tb.lat;
                    }
                    target_ok
                }
                Mode::Count | Mode::Grouped => true,
            };
            match poison {
                Some((dead, skipped)) if clean => {
                    row.dead_lettered += dead;
                    row.skipped += skipped;
                }
                _ => drills.push((ti, k)),
            }
        }
        match t.mode {
            Mode::Content => {}
            Mode::Count => {
                row.target_records = counted.get(&ti).copied().unwrap_or(0);
                row.missing += copies.saturating_sub(row.target_records);
                row.duplicates = row.target_records.saturating_sub(copies);
            }
            Mode::Grouped => {
                if let Some(gi) = group_tasks.get(&ti) {
                    groups[*gi].3.expected += copies;
                }
            }
        }
    }

    // Pass 2: the blocks that differ, record by record.
    let exact = run_jobs(opts.parallel, timeout, &drills, |reader, (ti, k)| {
        drill(
            reader,
            &tasks[*ti],
            *k,
            b,
            tgt.get(&(*ti, *k)),
            dlq.get(&(*ti, *k)),
        )
    })?;
    for ((ti, _), ex) in drills.iter().zip(exact) {
        let row = &mut rows[tasks[*ti].row];
        row.blocks_rechecked += 1;
        row.dead_lettered += ex.dead_lettered;
        row.skipped += ex.skipped;
        row.missing += ex.missing;
        row.unexpected += ex.unexpected;
        row.duplicates += ex.duplicates;
        row.altered += ex.altered;
        row.timestamps_not_kept += ex.timestamps_not_kept;
        extend_first(&mut row.first_missing, &ex.first_missing);
        extend_first(&mut row.first_altered, &ex.first_altered);
        extend_first(&mut row.first_unexpected, &ex.first_unexpected);
    }
    for (row, _, _, g) in &groups {
        let row = &mut rows[*row];
        row.source_records = g.expected;
        row.target_records = g.target;
        row.missing = g.expected.saturating_sub(g.target);
        row.duplicates = g.target.saturating_sub(g.expected);
    }
    if opts.remember {
        let mut changed = false;
        for p in &positions {
            let row = &rows[p.row];
            // Only a matching row proves its range; a mismatch keeps the old position so the
            // next `--since-last` verifies it again. A range that leaves a hole below it
            // (`--from` past what was verified) proves nothing contiguous and is not recorded.
            if !row.matches(fail_on_duplicates) || row.in_group {
                continue;
            }
            let (a, z) = row.source_range;
            if a > p.remembered.unwrap_or(p.natural_start).max(p.natural_start) {
                continue;
            }
            if p.remembered.is_some_and(|old| old >= z) {
                continue;
            }
            let e = verified.routes.entry(p.route.clone()).or_default();
            let other_id = matches!(
                (&e.source_cluster_id, &p.source_cluster_id),
                (Some(a), Some(b)) if a != b
            );
            if e.source_cluster != p.source_cluster || other_id {
                *e = VerifiedRoute {
                    source_cluster: p.source_cluster.clone(),
                    source_cluster_id: p.source_cluster_id.clone(),
                    partitions: BTreeMap::new(),
                };
            }
            if e.source_cluster_id.is_none() {
                e.source_cluster_id = p.source_cluster_id.clone();
            }
            e.partitions.insert(p.key.clone(), z);
            changed = true;
        }
        if changed {
            verified.save(&state_path)?;
        }
    }
    Ok(VerifyReport {
        rows,
        fail_on_duplicates,
    })
}

/// Copies looked at past a target partition's low watermark for the first of a task's own,
/// when the target's retention removed part of what the task wrote.
const TRIMMED_WINDOW: i64 = 10_000;

/// A partition whose verified position may be remembered.
struct Position {
    row: usize,
    route: String,
    source_cluster: String,
    source_cluster_id: Option<String>,
    key: String,
    /// Where the verifiable range starts without --from/--since-last.
    natural_start: i64,
    remembered: Option<i64>,
}

/// The offset `bound` names on a source partition, within `[lo, hi)`: an offset as given, or
/// the first record at or after a timestamp (looked up where the broker answers, read
/// otherwise, like the copy path's timestamp starts).
fn resolve(
    reader: &mut Reader,
    src: &crate::config::ClusterConfig,
    topic: &str,
    partition: i32,
    bound: Bound,
    marks: (i64, i64),
    (lo, hi): (i64, i64),
) -> Result<i64, ClusterError> {
    let ts = match bound {
        Bound::Offset(o) => return Ok(o),
        Bound::Timestamp(ts) => ts,
    };
    if lo >= hi {
        return Ok(lo);
    }
    let timeout = reader.timeout;
    let consumer = reader.consumer(src)?;
    match cluster::offset_for_time(consumer, src, topic, partition, ts, marks, timeout) {
        Ok(o) => return Ok(o.clamp(lo, hi)),
        Err(ClusterError::TimestampUnsupported { .. }) => {}
        Err(e) => return Err(e),
    }
    let mut at = None;
    reader.scan(src, topic, partition, lo, hi, |m| {
        if at.is_none() && m.timestamp().to_millis().is_some_and(|t| t >= ts) {
            at = Some(m.offset());
        }
    })?;
    Ok(at.unwrap_or(hi))
}
