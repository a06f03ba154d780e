//! Coverage: how much of a route's range the copy has reached, apart from whether what was
//! copied matches. A copy can match perfectly and still be incomplete (a partition halted on
//! a poison record, a checkpoint reset past records, a run that has not reached the end), so
//! `verify` reports both and only a matching, complete copy of a fixed-end route is "OK".

use crate::config::{EndPosition, RouteConfig, StartPosition};
use crate::plan::TaskPlan;

/// What of a (route, source partition) the copy has not reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Where the route's range starts on this partition, when the routing file fixes it
    /// (`start = "earliest"` or an offset); otherwise where this job's copy began.
    pub route_start: i64,
    /// Where the route's range ends: its `end` (an offset, the source's end now for
    /// `"snapshot"`, or the first offset at the `end` timestamp). `None`: the route follows.
    pub route_end: Option<i64>,
    /// The source partition's end now (its high watermark).
    pub source_end: i64,
    /// The copy has a checkpoint for this partition.
    pub started: bool,
    /// Where the copy stands: every offset below it is settled (the checkpoint's next offset).
    pub copied_to: i64,
    /// Offsets of the route's range before the copied range (a checkpoint reset past them,
    /// or a job that began later than the route's `start`): never copied.
    pub not_copied_before: u64,
    /// Offsets after the copied range up to the route's end (or, following, the source's
    /// end now): not copied yet (a halted partition, a run still under way or stopped).
    pub behind: u64,
    /// Offsets of the route's range the source does not hold yet (its `end` lies beyond the
    /// source's end now): nothing to copy yet, so not a failure.
    pub not_yet_on_source: u64,
}

impl Coverage {
    /// Works out coverage from the plan's view of the partition and the checkpoint's
    /// `[first, next)` (`None`: never started). `recorded_end` is the end the last run
    /// stopped before (from the checkpoint); `end_offset` resolves a timestamp end.
    pub fn new(
        route: &RouteConfig,
        task: &TaskPlan,
        copied: Option<(i64, i64)>,
        recorded_end: Option<i64>,
        end_offset: Option<i64>,
    ) -> Coverage {
        let (first, next) = copied.unwrap_or((task.start, task.start));
        let route_start = match &route.start {
            StartPosition::Earliest => task.low,
            StartPosition::Offset(o) => (*o).max(task.low),
            // `latest`, timestamps and durations name a position that moves (or needs a
            // lookup the copy made at its start): the copy's own start is taken as given.
            _ => first,
        };
        let route_end = match &route.end {
            EndPosition::None => None,
            // The snapshot the last run took (the source's end now if it recorded none):
            // records appended since are not part of the route's range.
            EndPosition::Snapshot => Some(recorded_end.unwrap_or(task.high)),
            EndPosition::Offset(o) => Some(*o),
            EndPosition::Timestamp(_) => Some(end_offset.unwrap_or(task.high)),
        };
        let end = route_end.map_or(task.high, |e| e.min(task.high));
        Coverage {
            route_start,
            route_end,
            source_end: task.high,
            started: copied.is_some(),
            copied_to: next,
            not_copied_before: (first - route_start).max(0) as u64,
            behind: (end - next).max(0) as u64,
            not_yet_on_source: route_end.map_or(0, |e| (e - task.high).max(0) as u64),
        }
    }

    /// The route's whole range (to its end, or to the source's end for a following route) is
    /// copied.
    pub fn complete(&self) -> bool {
        self.not_copied_before == 0 && self.behind == 0
    }

    /// The route has a fixed end, so an incomplete copy is a failure, not a lag.
    pub fn fixed_end(&self) -> bool {
        self.route_end.is_some()
    }

    /// The route's range as shown: `[start, end)`, or `[start, ...)` when following.
    pub fn route_range(&self) -> String {
        match self.route_end {
            Some(e) => format!("[{}, {e})", self.route_start),
            None => format!("[{}, follow)", self.route_start),
        }
    }

    /// What is not copied, in words; empty when complete.
    pub fn gaps(&self) -> String {
        let mut parts = Vec::new();
        if self.not_yet_on_source > 0 {
            parts.push(format!(
                "source ends at {}, before the route's end",
                self.source_end
            ));
        }
        if self.complete() {
            return parts.join("; ");
        }
        if !self.started {
            parts.push("not started".to_string());
        }
        if self.not_copied_before > 0 {
            parts.push(format!(
                "{} before the copied range never copied",
                self.not_copied_before
            ));
        }
        if self.behind > 0 {
            parts.push(match self.route_end {
                Some(e) => format!(
                    "stopped at {}, {} short of the end {}",
                    self.copied_to,
                    self.behind,
                    e.min(self.source_end)
                ),
                None => format!(
                    "at {}, {} behind the source end {}",
                    self.copied_to, self.behind, self.source_end
                ),
            });
        }
        parts.join("; ")
    }
}
