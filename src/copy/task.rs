//! The copy task: one (route, source partition), with its position (`AckTracker`), counts,
//! in-flight bytes, status and end. It owns the task's state and its transitions
//! (`read_done` -> `maybe_finish`, `halt`); the reader loop that feeds it records and
//! delivery reports is `super::source_partition`. `TaskProgress` is what the checkpoint
//! writer, the progress display and `/metrics` see of a task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::ack_tracker::AckTracker;
use super::record::provenance_prefix;
use crate::config::RouteConfig;
use crate::counts::Counts;
use crate::observe::TaskObserved;
use crate::plan::TaskPlan;
use crate::rate_limit::Limiter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    Copying,
    /// Everything up to `end` was read; waiting for the last acknowledgements.
    ReadDone,
    Done,
    /// Stopped on a record that cannot be copied, or an unrecoverable source position.
    Halted(String),
    /// The topic was deleted on the source (`super::discovery`): nothing more to read.
    SourceGone,
    /// Its route left the routing file at a reload (`super::reload`); the checkpoint keeps
    /// its position for when the route comes back.
    Removed,
    /// Group mode (`super::ownership`): another member owns the partition (not assigned
    /// here, revoked, or fenced), with why. Its checkpoint is the owner's to write.
    Released(String),
}

impl TaskStatus {
    /// As shown in the end-of-run summary (a task still copying there was stopped).
    pub fn label(&self) -> String {
        match self {
            TaskStatus::Copying => "stopped (resumes here)".into(),
            TaskStatus::ReadDone => "stopped at end (acks pending)".into(),
            TaskStatus::Done => "done".into(),
            TaskStatus::Halted(why) => format!("HALTED: {why}"),
            TaskStatus::SourceGone => "source gone".into(),
            TaskStatus::Removed => "removed by reload".into(),
            TaskStatus::Released(why) => format!("released: {why}"),
        }
    }
}

/// What the checkpoint writer and progress display see of a task.
#[derive(Debug, Clone)]
pub struct TaskProgress {
    pub position: i64,
    pub counts: Counts,
    pub target_ranges: BTreeMap<i32, [i64; 2]>,
    pub status: TaskStatus,
    /// Why the task is retrying right now (source or target errors), if it is.
    pub retrying: Option<String>,
    pub in_flight_bytes: u64,
    /// The source partition's end as last seen (`CopyTask::log_end`).
    pub log_end: i64,
    /// `CopyTask::passed_to`.
    pub passed_to: i64,
    pub source_errors: u64,
    pub observed: TaskObserved,
}

impl TaskProgress {
    /// The partition's visible state: done, halted: reason, retrying: reason, or copying.
    pub fn state(&self) -> String {
        match (&self.status, &self.retrying) {
            (TaskStatus::Copying | TaskStatus::ReadDone, Some(why)) => format!("retrying: {why}"),
            (TaskStatus::Copying, None) => "copying".into(),
            (TaskStatus::ReadDone, None) => "copying (acks pending)".into(),
            (TaskStatus::Done, _) => "done".into(),
            (TaskStatus::Halted(why), _) => format!("halted: {why}"),
            (TaskStatus::SourceGone, _) => "source gone".into(),
            (TaskStatus::Removed, _) => "removed by reload".into(),
            (TaskStatus::Released(why), _) => format!("released: {why}"),
        }
    }
}

/// One (route, source partition) copy task.
pub struct CopyTask {
    pub id: usize,
    pub plan: TaskPlan,
    pub route: Arc<RouteConfig>,
    pub tracker: AckTracker,
    pub counts: Counts,
    pub status: TaskStatus,
    /// Set while the task is retrying (a retriable source or target error), with the reason;
    /// cleared when it makes progress again. Shown as the partition's state.
    pub retrying: Option<String>,
    /// Consumer (fetch) errors taken for this partition.
    pub source_errors: u64,
    /// `retrying` was set by a source error (cleared when the source delivers again).
    pub(super) source_retrying: bool,
    pub in_flight_bytes: u64,
    pub generation: u32,
    pub target_ranges: BTreeMap<i32, [i64; 2]>,
    /// The source partition's end (high watermark, or last stable offset for a
    /// read_committed reader) as the consumer's last fetch saw it; the plan's at first.
    pub log_end: i64,
    /// The consumer passed every offset below this with nothing left pending for this task:
    /// offsets past `position` up to here held no record for it (transaction markers,
    /// aborted records), so they are not lag. Equal to the position otherwise.
    pub passed_to: i64,
    /// Bytes copied, delivery errors, latency: what `/metrics` shows beyond `counts`.
    pub observed: TaskObserved,
    /// Offset the position jumps to once everything read is settled (end through a gap).
    pub end_at: Option<i64>,
    /// Set by a rewind: records and end-of-partition events already taken from the
    /// consumer are stale until the partition is assigned again at the rewound position.
    /// Acting on them would skip (and so lose) the records in between.
    pub(super) stale_until_assign: bool,
    /// End-of-partition seen while offsets below `end` are still unread: a trailing gap
    /// (transaction markers, compaction), an open transaction holding the read_committed
    /// consumer at the last stable offset, or records not written yet. Decided by
    /// `end_below_end` once no record arrived for `EOF_GAP_GRACE` (then every
    /// `EOF_WAIT_RECHECK` while it waits).
    pub(super) eof_gap_since: Option<Instant>,
    pub limiter: Option<Arc<Limiter>>,
    pub(super) round_robin: usize,
    pub(super) skip_logged: bool,
    /// Where the task waits below its end (an open source transaction), warned once.
    pub(super) wait_warned: Option<i64>,
    /// One past the highest offset counted in `counts.read`: below it a record is a re-read
    /// (after a rewind) and counted in `counts.retried`, so `read` never goes backwards.
    pub(super) read_below: i64,
    /// Delivery failures in a row, without progress, because the target topic or partition
    /// is unknown (see `FailureKind::Missing`).
    pub(super) missing_attempts: u32,
    /// `<source cluster>/<topic>/<partition>/`: the provenance value without the offset.
    pub(super) provenance_prefix: String,
}

impl CopyTask {
    pub fn new(
        id: usize,
        plan: TaskPlan,
        route: Arc<RouteConfig>,
        target_ranges: BTreeMap<i32, [i64; 2]>,
        limiter: Option<Arc<Limiter>>,
    ) -> Self {
        let mut t = CopyTask {
            id,
            tracker: AckTracker::new(plan.start),
            route,
            counts: Counts::default(),
            status: TaskStatus::Copying,
            retrying: None,
            source_errors: 0,
            source_retrying: false,
            in_flight_bytes: 0,
            generation: 0,
            target_ranges,
            log_end: plan.high,
            passed_to: plan.start,
            observed: TaskObserved::default(),
            end_at: None,
            limiter,
            round_robin: plan.partition as usize,
            skip_logged: false,
            read_below: plan.start,
            missing_attempts: 0,
            provenance_prefix: provenance_prefix(
                &plan.route_name,
                &plan.source_cluster,
                &plan.topic,
                plan.partition,
            ),
            stale_until_assign: false,
            eof_gap_since: None,
            wait_warned: None,
            plan,
        };
        if let Some(e) = t.plan.end.offset() {
            if t.plan.start >= e {
                t.status = TaskStatus::Done;
            }
        }
        t
    }

    pub fn progress(&self) -> TaskProgress {
        TaskProgress {
            position: self.tracker.position(),
            counts: self.counts,
            target_ranges: self.target_ranges.clone(),
            status: self.status.clone(),
            retrying: self.retrying.clone(),
            in_flight_bytes: self.in_flight_bytes,
            log_end: self.log_end,
            passed_to: self.passed_to,
            source_errors: self.source_errors,
            observed: self.observed,
        }
    }

    pub(super) fn read_done(&mut self, end_at: i64) {
        if self.status == TaskStatus::Copying {
            self.status = TaskStatus::ReadDone;
            self.end_at = Some(end_at);
        }
    }

    /// ReadDone and nothing pending -> Done, with the position at the end.
    pub(super) fn maybe_finish(&mut self) {
        if self.status == TaskStatus::ReadDone && self.tracker.pending() == 0 {
            if let Some(e) = self.end_at {
                self.tracker.advance_to(e);
            }
            self.status = TaskStatus::Done;
        }
    }

    /// No more work and no more reports to wait for.
    pub(super) fn finished(&self) -> bool {
        match self.status {
            TaskStatus::Done => true,
            TaskStatus::Halted(_)
            | TaskStatus::SourceGone
            | TaskStatus::Removed
            | TaskStatus::Released(_) => self.in_flight_bytes == 0,
            _ => false,
        }
    }

    pub(super) fn halt(&mut self, why: String) {
        tracing::error!(
            route = %self.plan.route_name, source = %self.plan.source_label(),
            cluster = %self.plan.source_cluster, topic = %self.plan.topic, partition = self.plan.partition,
            "partition halted: {why}; its checkpoint will not move past this record (now at offset {})",
            self.tracker.position()
        );
        self.status = TaskStatus::Halted(why);
    }
}
