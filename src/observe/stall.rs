//! Stall detection: a partition with records left to copy (lag > 0) whose position has not
//! moved for `[run] stall_timeout` is *stalled*. The episode is logged at error once, with
//! the reason known at that moment, counted (`kmirror_stalls_total`), shown in `/status`,
//! and fails `/readyz` (unless `[http] stalled_not_ready = false`). It ends, logged at info,
//! when the position moves again or nothing is left to copy.
//!
//! The detector only reads what the readers publish (`TaskProgress`); it never touches the
//! copy path, so a wedged reader thread is detected like any other lack of progress.

use std::time::{Duration, Instant};

use crate::copy::task::{TaskProgress, TaskStatus};
use crate::plan::TaskPlan;

/// One partition as the detector last saw it.
#[derive(Debug, Clone)]
pub struct PartitionWatch {
    position: i64,
    /// When `position` last moved, or lag last was zero.
    since: Instant,
    /// Set while stalled, with the reason given when the episode started.
    pub stalled: Option<String>,
    /// Stall episodes so far.
    pub episodes: u64,
    /// The last reason this partition gave for not copying (retrying or halted), kept after
    /// it recovered: `/status`'s `last_error`.
    pub last_error: Option<String>,
    /// Records acknowledged per second over the last rate window.
    pub acked_per_sec: f64,
    rate_from: (Instant, u64),
}

/// What the detector needs to know about one partition beyond its progress.
pub struct Seen<'a> {
    pub plan: &'a TaskPlan,
    pub progress: &'a TaskProgress,
    pub lag: i64,
    /// Its route's rate limit made a batch wait since the last tick.
    pub rate_limited: bool,
    /// Its target cluster's open outage episode, if any (`TargetHealth::trouble_reason`).
    pub target_trouble: Option<String>,
}

/// Per-partition stall state for one run.
#[derive(Debug)]
pub struct Detector {
    timeout: Duration,
    pub partitions: Vec<PartitionWatch>,
}

/// How often per-partition rates are recomputed.
const RATE_WINDOW: Duration = Duration::from_secs(2);

impl Detector {
    pub fn new(timeout: Duration, progress: &[TaskProgress], now: Instant) -> Detector {
        Detector {
            timeout,
            partitions: progress
                .iter()
                .map(|p| PartitionWatch {
                    position: p.position,
                    since: now,
                    stalled: None,
                    episodes: 0,
                    last_error: None,
                    acked_per_sec: 0.0,
                    rate_from: (now, p.counts.acked),
                })
                .collect(),
        }
    }

    /// Watches partitions started mid-run too.
    pub fn add(&mut self, progress: &[TaskProgress], now: Instant) {
        let more = Detector::new(self.timeout, progress, now).partitions;
        self.partitions.extend(more);
    }

    pub fn any_stalled(&self) -> bool {
        self.partitions.iter().any(|w| w.stalled.is_some())
    }

    /// Looks at every partition once; logs the start and end of stall episodes.
    pub fn tick(&mut self, now: Instant, seen: &[Seen<'_>]) {
        for (w, s) in self.partitions.iter_mut().zip(seen) {
            let p = s.progress;
            let rate_dt = now.duration_since(w.rate_from.0);
            if rate_dt >= RATE_WINDOW {
                let acked = p.counts.acked;
                w.acked_per_sec =
                    acked.saturating_sub(w.rate_from.1) as f64 / rate_dt.as_secs_f64();
                w.rate_from = (now, acked);
            }
            if let Some(why) = reason_now(p).or_else(|| s.target_trouble.clone()) {
                w.last_error = Some(why);
            }
            let done = p.status == TaskStatus::Done;
            if p.position != w.position || s.lag <= 0 || done {
                w.position = p.position;
                w.since = now;
                if let Some(why) = w.stalled.take() {
                    tracing::info!(
                        route = %s.plan.route_name, source = %s.plan.source_label(),
                        "partition no longer stalled (was: {why}); position {}, {} records left",
                        p.position, s.lag.max(0)
                    );
                }
                continue;
            }
            if w.stalled.is_none() && now.duration_since(w.since) >= self.timeout {
                let why = stall_reason(p, s);
                tracing::error!(
                    route = %s.plan.route_name, source = %s.plan.source_label(),
                    "partition stalled: position {} has not moved for {} with {} records left to copy: {why}",
                    p.position,
                    humantime::format_duration(Duration::from_secs(self.timeout.as_secs().max(1))),
                    s.lag
                );
                w.episodes += 1;
                w.stalled = Some(why);
            }
        }
    }
}

/// Why a partition is not copying right now, if it says (retrying or halted).
fn reason_now(p: &TaskProgress) -> Option<String> {
    match (&p.status, &p.retrying) {
        (TaskStatus::Halted(why), _) => Some(format!("halted: {why}")),
        (TaskStatus::Copying | TaskStatus::ReadDone, Some(why)) => Some(why.clone()),
        _ => None,
    }
}

/// The best explanation known for a partition that does not move.
fn stall_reason(p: &TaskProgress, s: &Seen<'_>) -> String {
    if let Some(why) = reason_now(p) {
        return why;
    }
    if let Some(why) = &s.target_trouble {
        return why.clone();
    }
    if p.in_flight_bytes > 0 {
        return format!(
            "waiting for the target to acknowledge {} bytes in flight",
            p.in_flight_bytes
        );
    }
    if s.rate_limited {
        return "held back by the rate limit".into();
    }
    "no records delivered by the source (source unreachable, or the reader is not fetching)".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counts::Counts;
    use crate::observe::tests::plan;
    use crate::observe::TaskObserved;
    use crate::plan::TaskEnd;

    fn progress(position: i64, retrying: Option<&str>) -> TaskProgress {
        TaskProgress {
            position,
            counts: Counts::default(),
            target_ranges: Default::default(),
            status: TaskStatus::Copying,
            retrying: retrying.map(str::to_string),
            in_flight_bytes: 0,
            log_end: 100,
            passed_to: position,
            source_errors: 0,
            observed: TaskObserved::default(),
        }
    }

    /// One episode per stall, however many ticks it lasts; it ends when the position moves
    /// or nothing is left; the reason is the one known when it began.
    #[test]
    fn a_stall_is_one_episode_with_its_reason_until_the_position_moves() {
        let timeout = Duration::from_secs(60);
        let t0 = Instant::now();
        let plan = plan(100, TaskEnd::None);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut d = Detector::new(timeout, &[progress(10, None)], t0);
        let tick = |d: &mut Detector, now: Instant, p: &TaskProgress, lag: i64| {
            d.tick(
                now,
                &[Seen {
                    plan: &plan,
                    progress: p,
                    lag,
                    rate_limited: false,
                    target_trouble: Some("target dst failing for 3s: down".into()),
                }],
            )
        };
        let stuck = progress(10, None);
        tick(&mut d, at(59), &stuck, 90);
        assert!(!d.any_stalled(), "not before stall_timeout");
        tick(&mut d, at(60), &stuck, 90);
        tick(&mut d, at(120), &stuck, 90);
        assert_eq!(d.partitions[0].episodes, 1, "one episode, however long");
        assert_eq!(
            d.partitions[0].stalled.as_deref(),
            Some("target dst failing for 3s: down")
        );
        // It moves: over. Stuck again with a known retry reason: a second episode.
        tick(&mut d, at(121), &progress(11, None), 89);
        assert!(!d.any_stalled());
        let retrying = progress(11, Some("delivery to dst failed: timed out"));
        tick(&mut d, at(181), &retrying, 89);
        assert_eq!(d.partitions[0].episodes, 2);
        assert_eq!(
            d.partitions[0].stalled.as_deref(),
            Some("delivery to dst failed: timed out"),
            "the partition's own reason comes first"
        );
        assert_eq!(
            d.partitions[0].last_error.as_deref(),
            Some("delivery to dst failed: timed out")
        );
        // Nothing left to copy: not stalled, whatever the position did.
        tick(&mut d, at(182), &retrying, 0);
        assert!(!d.any_stalled());
        tick(&mut d, at(400), &retrying, 0);
        assert!(
            !d.any_stalled(),
            "an idle, caught-up partition never stalls"
        );
    }
}
