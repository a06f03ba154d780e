//! Observability: what a running mirror shows an operator. `Observer` is the state the copy
//! run shares with the HTTP endpoint (`http`): the run's `Shared` progress (read at scrape
//! time, so `/metrics` and `/status` show the numbers the progress lines and the summary
//! print), checkpoint ages, and stall detection (`stall`). `metrics` renders Prometheus
//! text; `task` is what each copy task records beyond its verification counts.

pub mod http;
pub mod metrics;
pub mod stall;
pub mod task;

pub use task::{Latency, TaskObserved};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::{partition_key, Checkpoint};
use crate::config::{value, Config};
use crate::copy::produce::TargetHealth;
use crate::copy::task::{TaskProgress, TaskStatus};
use crate::copy::Shared;
use crate::counts::Counts;
use crate::plan::TaskPlan;
use crate::rate_limit::Limiter;

/// The supervising loop of a run ticks the observer every 50ms; past this without a tick,
/// `/healthz` fails (the loop is wedged).
pub const HEARTBEAT_LIMIT: Duration = Duration::from_secs(30);

/// How often stall detection looks at the partitions (at most; a short `stall_timeout`
/// is looked at more often).
const STALL_TICK: Duration = Duration::from_secs(1);

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading the checkpoint, connecting, building the plan.
    Starting,
    Running,
    /// Every reader ended; the numbers are final.
    Finished,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Finished => "finished",
        }
    }
}

/// What a run shares with the HTTP endpoint. Cheap to keep when no endpoint is configured:
/// stall detection runs either way.
pub struct Observer {
    stall_timeout: Duration,
    stalled_not_ready: bool,
    started: Instant,
    /// Milliseconds after `started` of the supervising loop's last tick.
    heartbeat_ms: AtomicU64,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("stall_timeout", &self.stall_timeout)
            .finish_non_exhaustive()
    }
}

struct Inner {
    phase: Phase,
    run: Option<RunView>,
}

/// A run as the observer sees it: the shared progress plus what it keeps itself.
pub(crate) struct RunView {
    pub shared: Arc<Shared>,
    pub tasks: Vec<TaskPlan>,
    /// Per task: its target cluster's health (outage episodes, with their error).
    pub targets: Vec<Arc<TargetHealth>>,
    /// Per route (by route index): its name and limiter, if it has one.
    pub route_limiters: Vec<(String, Option<Arc<Limiter>>)>,
    pub stalls: stall::Detector,
    last_stall_tick: Instant,
    /// Rate-limit waits per route at the last stall tick.
    waits_seen: Vec<u64>,
    /// The last checkpoint written: when, and each task's position in it.
    pub checkpoint: Option<(Instant, Vec<i64>)>,
    /// Checkpoint writes that failed (each retried; `RetryingSaver` logs the episode).
    pub checkpoint_errors: u64,
    /// Per task, the highest counts `/metrics` has shown (see `PartitionNow::counter_counts`).
    shown: Mutex<Vec<Counts>>,
}

/// One partition at one instant: its plan, published progress and derived figures.
pub(crate) struct PartitionNow<'a> {
    pub plan: &'a TaskPlan,
    pub progress: TaskProgress,
    /// Records between the position and the end (see [`lag`]).
    pub lag: i64,
    /// See [`lag_seconds`].
    pub lag_seconds: Option<f64>,
    pub watch: &'a stall::PartitionWatch,
    pub checkpointed: Option<i64>,
    /// `progress.counts` as Prometheus counters must show them: never lower than shown
    /// before. A rewind takes settlements back (`Counts::unread`) until the records are
    /// copied again; a counter that went down would read as a reset and make `rate()`
    /// spike. Equal to `progress.counts` whenever nothing was taken back (at the end of a
    /// clean run, always).
    pub counter_counts: Counts,
}

/// Field by field, the higher of two counts.
fn at_least(shown: &Counts, now: &Counts) -> Counts {
    Counts {
        read: shown.read.max(now.read),
        filtered: shown.filtered.max(now.filtered),
        produced: shown.produced.max(now.produced),
        acked: shown.acked.max(now.acked),
        dead_lettered: shown.dead_lettered.max(now.dead_lettered),
        skipped: shown.skipped.max(now.skipped),
        failed: shown.failed.max(now.failed),
        retried: shown.retried.max(now.retried),
    }
}

/// Records left to copy: the partition's end (the route's fixed end, or the source's log
/// end as the reader's last fetch saw it, whichever is lower) minus the next offset to copy
/// (or, with nothing pending, the offset the consumer passed: transaction markers at the
/// end of a transactional topic are not records left). A finished partition has none.
pub fn lag(plan: &TaskPlan, p: &TaskProgress) -> i64 {
    // A deleted source topic, or a route no longer in the routing file, has nothing left
    // to copy in this run.
    if matches!(
        p.status,
        TaskStatus::Done | TaskStatus::SourceGone | TaskStatus::Removed | TaskStatus::Released(_)
    ) {
        return 0;
    }
    let end = plan.end.offset().map_or(p.log_end, |e| e.min(p.log_end));
    (end - p.position.max(p.passed_to)).max(0)
}

/// Lag in seconds: with records left, now minus the source timestamp of the newest record
/// the target acknowledged (with timestamps that rise along the partition, the age of the
/// oldest record not yet copied, to within the spacing of two records); 0 with none left;
/// unknown (`None`) while nothing was acknowledged in this run.
pub fn lag_seconds(lag: i64, p: &TaskProgress, now_ms: i64) -> Option<f64> {
    if lag <= 0 {
        return Some(0.0);
    }
    p.observed
        .newest_acked_ms
        .map(|ts| ((now_ms - ts) as f64 / 1000.0).max(0.0))
}

impl Observer {
    pub fn new(stall_timeout: Duration, stalled_not_ready: bool) -> Arc<Observer> {
        Arc::new(Observer {
            stall_timeout,
            stalled_not_ready,
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                phase: Phase::Starting,
                run: None,
            }),
        })
    }

    /// With the routing file's `[run] stall_timeout` and `[http] stalled_not_ready`.
    pub fn for_config(config: &Config) -> Arc<Observer> {
        Observer::new(config.run.stall_timeout, config.http.stalled_not_ready)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves plain data: keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// The plan is built and the readers are about to start.
    pub(crate) fn attach(
        &self,
        shared: Arc<Shared>,
        tasks: Vec<TaskPlan>,
        targets: Vec<Arc<TargetHealth>>,
        route_limiters: Vec<(String, Option<Arc<Limiter>>)>,
    ) {
        let now = Instant::now();
        let progress: Vec<TaskProgress> = shared.all_progress();
        let waits_seen = route_limiters
            .iter()
            .map(|(_, l)| l.as_ref().map_or(0, |l| l.waited().0))
            .collect();
        let shown = Mutex::new(vec![Counts::default(); tasks.len()]);
        let mut g = self.lock();
        g.run = Some(RunView {
            shared,
            tasks,
            targets,
            route_limiters,
            stalls: stall::Detector::new(self.stall_timeout, &progress, now),
            last_stall_tick: now,
            waits_seen,
            checkpoint: None,
            checkpoint_errors: 0,
            shown,
        });
        g.phase = Phase::Running;
        self.beat();
    }

    /// Partitions found mid-run (`crate::copy::discovery`) started: their rows join
    /// `/status` and `/metrics`. Their progress slots are already in `Shared`.
    pub(crate) fn add_tasks(&self, tasks: &[TaskPlan], targets: Vec<Arc<TargetHealth>>) {
        let mut g = self.lock();
        let Some(run) = g.run.as_mut() else { return };
        let now = Instant::now();
        let from = run.tasks.len();
        let progress: Vec<TaskProgress> = (from..from + tasks.len())
            .map(|i| run.shared.progress_of(i))
            .collect();
        run.tasks.extend(tasks.iter().cloned());
        run.targets.extend(targets);
        run.stalls.add(&progress, now);
        run.shown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resize(run.tasks.len(), Counts::default());
    }

    /// A route added by a reload (`crate::copy::reload`), at the next route index: its
    /// limiter joins the rate-limit metrics and stall detection.
    pub(crate) fn add_route(&self, name: String, limiter: Option<Arc<Limiter>>) {
        let mut g = self.lock();
        let Some(run) = g.run.as_mut() else { return };
        run.waits_seen
            .push(limiter.as_ref().map_or(0, |l| l.waited().0));
        run.route_limiters.push((name, limiter));
    }

    fn beat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Called by the run's supervising loop on every turn: the heartbeat `/healthz` checks,
    /// and stall detection (at most every second).
    pub(crate) fn tick(&self) {
        self.beat();
        let mut g = self.lock();
        let Some(run) = g.run.as_mut() else { return };
        let now = Instant::now();
        let every = STALL_TICK.min(self.stall_timeout / 4);
        if now.duration_since(run.last_stall_tick) < every {
            return;
        }
        run.last_stall_tick = now;
        let limited: Vec<bool> = run
            .route_limiters
            .iter()
            .zip(run.waits_seen.iter_mut())
            .map(|((_, l), seen)| {
                let w = l.as_ref().map_or(0, |l| l.waited().0);
                let waited = w > *seen;
                *seen = w;
                waited
            })
            .collect();
        let progress: Vec<TaskProgress> = run.shared.all_progress();
        let seen: Vec<stall::Seen<'_>> = run
            .tasks
            .iter()
            .zip(&progress)
            .zip(&run.targets)
            .map(|((plan, p), target)| stall::Seen {
                plan,
                progress: p,
                lag: lag(plan, p),
                rate_limited: limited.get(plan.route).copied().unwrap_or(false),
                target_trouble: target.trouble_reason(),
            })
            .collect();
        run.stalls.tick(now, &seen);
    }

    /// A checkpoint was written: its positions are what a restart would resume from.
    pub(crate) fn checkpointed(&self, cp: &Checkpoint) {
        let mut g = self.lock();
        let Some(run) = g.run.as_mut() else { return };
        let positions = run
            .tasks
            .iter()
            .map(|t| {
                cp.routes
                    .get(&t.route_name)
                    .and_then(|r| r.partitions.get(&partition_key(&t.topic, t.partition)))
                    .map_or(-1, |p| p.next_offset)
            })
            .collect();
        run.checkpoint = Some((Instant::now(), positions));
    }

    /// A checkpoint write failed (it is retried; the saver logs the episode once).
    pub(crate) fn checkpoint_failed(&self) {
        if let Some(run) = self.lock().run.as_mut() {
            run.checkpoint_errors += 1;
        }
    }

    /// Every reader ended; the shared progress holds the final numbers.
    pub(crate) fn finish(&self) {
        let mut g = self.lock();
        g.phase = Phase::Finished;
        if let Some(run) = g.run.as_mut() {
            // Nothing moves any more: what is left is final, not stalled.
            for w in &mut run.stalls.partitions {
                w.stalled = None;
            }
        }
    }

    /// `/healthz`: the process's loops are alive.
    pub fn health(&self) -> (bool, String) {
        let phase = self.phase();
        if phase != Phase::Running {
            return (true, format!("ok ({})", phase.as_str()));
        }
        let now = self.started.elapsed().as_millis() as u64;
        let since =
            Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)));
        if since > HEARTBEAT_LIMIT {
            (
                false,
                format!(
                    "the run's supervising loop has not ticked for {}s",
                    since.as_secs()
                ),
            )
        } else {
            (true, "ok (running)".into())
        }
    }

    /// `/readyz`: the plan is built (so both clusters answered) and, unless configured
    /// otherwise, no partition is stalled.
    pub fn readiness(&self) -> (bool, String) {
        let g = self.lock();
        match (g.phase, &g.run) {
            (Phase::Starting, _) | (_, None) => {
                (false, "not ready: connecting and building the plan".into())
            }
            (phase, Some(run)) => {
                let stalled: Vec<String> = run
                    .tasks
                    .iter()
                    .zip(&run.stalls.partitions)
                    .filter_map(|(t, w)| {
                        w.stalled
                            .as_ref()
                            .map(|why| format!("{} ({}): {why}", t.source_label(), t.route_name))
                    })
                    .collect();
                if stalled.is_empty() || !self.stalled_not_ready {
                    (true, format!("ready ({})", phase.as_str()))
                } else {
                    (
                        false,
                        format!(
                            "not ready: {} partitions stalled: {}",
                            stalled.len(),
                            crate::redact::redact(&stalled.join("; "))
                        ),
                    )
                }
            }
        }
    }

    /// Runs `f` on every partition as it is now (nothing if no run is attached).
    pub(crate) fn with_partitions<R>(
        &self,
        f: impl FnOnce(Phase, Option<(&RunView, Vec<PartitionNow<'_>>)>) -> R,
    ) -> R {
        let g = self.lock();
        let Some(run) = g.run.as_ref() else {
            return f(g.phase, None);
        };
        let now_ms = value::now_ms();
        let mut shown = run.shown.lock().unwrap_or_else(|e| e.into_inner());
        let parts = run
            .tasks
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let progress = run.shared.progress_of(i);
                let lag = lag(plan, &progress);
                shown[i] = at_least(&shown[i], &progress.counts);
                PartitionNow {
                    counter_counts: shown[i],
                    plan,
                    lag_seconds: lag_seconds(lag, &progress, now_ms),
                    lag,
                    progress,
                    watch: &run.stalls.partitions[i],
                    checkpointed: run.checkpoint.as_ref().and_then(|(_, p)| p.get(i).copied()),
                }
            })
            .collect();
        drop(shown);
        f(g.phase, Some((run, parts)))
    }

    /// Seconds since the last checkpoint was written, if one was.
    pub(crate) fn checkpoint_age(run: &RunView) -> Option<f64> {
        run.checkpoint
            .as_ref()
            .map(|(at, _)| at.elapsed().as_secs_f64())
    }
}

impl Observer {
    /// `/status`: every partition as the run summary's `--output json` gives it
    /// (`report::partition_json`), with the live fields added: position, end, lag, lag in
    /// seconds, stall state and reason, last error, rate, in-flight bytes, checkpointed
    /// position.
    pub fn status_json(&self) -> serde_json::Value {
        use serde_json::json;
        let (ready, ready_reason) = self.readiness();
        let (healthy, _) = self.health();
        self.with_partitions(|phase, run| {
            let mut doc = json!({
                "kind": "kmirror-status",
                "version": crate::report::JSON_SCHEMA_VERSION,
                "phase": phase.as_str(),
                "healthy": healthy,
                "ready": ready,
                "ready_reason": ready_reason,
            });
            let Some((run, parts)) = run else {
                doc["partitions"] = json!([]);
                return doc;
            };
            let mut totals = crate::counts::Counts::default();
            let rows: Vec<serde_json::Value> = parts
                .iter()
                .map(|p| {
                    totals.add(&p.progress.counts);
                    let row = crate::counts::SummaryRow {
                        route: p.plan.route_name.clone(),
                        source: p.plan.source_label(),
                        range: (p.plan.start, p.progress.position),
                        counts: p.progress.counts,
                        target: crate::copy::target_written(
                            &p.plan.target_cluster,
                            &p.plan.target_topic,
                            &p.progress.target_ranges,
                        ),
                        target_written: p.progress.target_ranges.clone(),
                        status: p.progress.state(),
                        source_errors: p.progress.source_errors,
                    };
                    let mut v = crate::report::partition_json(&row);
                    let redact = |s: &Option<String>| {
                        s.as_deref().map(|x| crate::redact::redact(x).to_string())
                    };
                    v["live"] = json!({
                        "position": p.progress.position,
                        "end": p.progress.log_end,
                        "lag": p.lag,
                        "lag_seconds": p.lag_seconds,
                        "stalled": p.watch.stalled.is_some(),
                        "stall_reason": redact(&p.watch.stalled),
                        "stall_episodes": p.watch.episodes,
                        "last_error": redact(&p.watch.last_error),
                        "acked_per_second": p.watch.acked_per_sec,
                        "bytes_copied": p.progress.observed.bytes_acked,
                        "in_flight_bytes": p.progress.in_flight_bytes,
                        "checkpointed_position": p.checkpointed,
                        "target_errors": p.progress.observed.target_errors,
                    });
                    v
                })
                .collect();
            doc["partitions"] = json!(rows);
            doc["totals"] = crate::report::counts_json(&totals);
            doc["stalled"] = json!(parts.iter().filter(|p| p.watch.stalled.is_some()).count());
            doc["in_flight_bytes"] = json!(run.shared.in_flight());
            doc["checkpoint_age_seconds"] = json!(Observer::checkpoint_age(run));
            doc
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Limits, OutOfRangePolicy, Partitioning, RateLimits};
    use crate::plan::{StartFrom, TaskEnd};
    use std::sync::atomic::{AtomicBool, AtomicU64};

    /// A task on `src:t/0` -> `dst:t` of route `r`, planned at watermarks [0, high).
    pub(crate) fn plan(high: i64, end: TaskEnd) -> TaskPlan {
        TaskPlan {
            route: 0,
            route_name: "r".into(),
            source_cluster: "src".into(),
            topic: "t".into(),
            partition: 0,
            target_cluster: "dst".into(),
            target_topic: "t".into(),
            target_partitions: 1,
            target_start: Default::default(),
            partitioning: Partitioning::Preserve,
            low: 0,
            high,
            start: 0,
            start_from: StartFrom::Config,
            first_offset: 0,
            end,
            gap: 0,
            on_offset_out_of_range: OutOfRangePolicy::Fail,
            provenance: true,
        }
    }

    fn progress(position: i64, log_end: i64, status: TaskStatus) -> TaskProgress {
        TaskProgress {
            position,
            counts: Counts::default(),
            target_ranges: Default::default(),
            status,
            retrying: None,
            in_flight_bytes: 0,
            log_end,
            passed_to: position,
            source_errors: 0,
            observed: TaskObserved::default(),
        }
    }

    #[test]
    fn lag_is_the_end_minus_the_position_and_none_once_done() {
        let follow = plan(100, TaskEnd::None);
        assert_eq!(lag(&follow, &progress(40, 150, TaskStatus::Copying)), 110);
        // A fixed end below the log end bounds what is left.
        let fixed = plan(100, TaskEnd::Offset(100));
        assert_eq!(lag(&fixed, &progress(40, 150, TaskStatus::Copying)), 60);
        assert_eq!(lag(&fixed, &progress(100, 150, TaskStatus::Done)), 0);
        // Done through a trailing gap: nothing left even if the position is below the end.
        assert_eq!(lag(&fixed, &progress(97, 150, TaskStatus::Done)), 0);
        let mut p = progress(40, 150, TaskStatus::Copying);
        assert_eq!(lag_seconds(110, &p, 10_000), None, "nothing copied yet");
        p.observed.newest_acked_ms = Some(7_500);
        assert_eq!(lag_seconds(110, &p, 10_000), Some(2.5));
        assert_eq!(lag_seconds(0, &p, 10_000), Some(0.0));
    }

    /// A rewind takes settlements back (`Counts::unread`); `/metrics` counters must not go
    /// down (Prometheus would read a reset), while `/status` shows the summary's numbers.
    #[test]
    fn metrics_counters_never_go_down_across_a_rewind() {
        let shared = Arc::new(Shared {
            stop: Arc::new(AtomicBool::new(false)),
            in_flight_bytes: AtomicU64::new(0),
            peak_in_flight_bytes: AtomicU64::new(0),
            limits: Limits {
                rate: RateLimits {
                    messages_per_sec: None,
                    bytes_per_sec: None,
                },
                max_in_flight_bytes: 1 << 20,
                max_in_flight_bytes_per_partition: 1 << 20,
            },
            limiter: None,
            shutdown_timeout: Duration::from_secs(1),
            gone_after: Duration::ZERO,
            group: None,
            txn: None,
            progress: std::sync::RwLock::new(vec![Mutex::new(progress(
                0,
                100,
                TaskStatus::Copying,
            ))]),
        });
        let observer = Observer::new(Duration::from_secs(60), true);
        observer.attach(
            shared.clone(),
            vec![plan(100, TaskEnd::None)],
            vec![Arc::new(TargetHealth::new("dst"))],
            vec![("r".into(), None)],
        );
        let set_acked = |n: u64| {
            let table = shared.progress.read().unwrap();
            let mut p = table[0].lock().unwrap();
            p.counts.read = 12;
            p.counts.acked = n;
        };
        let copied = || {
            let text = metrics::render(&observer);
            let line = text
                .lines()
                .find(|l| l.starts_with("kmirror_records_copied_total{"))
                .expect("a copied series")
                .to_string();
            line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap()
        };
        set_acked(10);
        assert_eq!(copied(), 10);
        set_acked(7); // three settlements taken back by a rewind
        assert_eq!(copied(), 10, "held, not decreased");
        assert_eq!(
            observer.status_json()["totals"]["acked"],
            7,
            "/status is the truth now"
        );
        set_acked(12);
        assert_eq!(copied(), 12);
    }

    /// `[http] stalled_not_ready`: a stalled partition fails readiness unless it is false.
    #[test]
    fn stalled_partitions_fail_readiness_unless_configured_not_to() {
        for stalled_not_ready in [true, false] {
            let shared = Arc::new(Shared {
                stop: Arc::new(AtomicBool::new(false)),
                in_flight_bytes: AtomicU64::new(0),
                peak_in_flight_bytes: AtomicU64::new(0),
                limits: Limits {
                    rate: RateLimits {
                        messages_per_sec: None,
                        bytes_per_sec: None,
                    },
                    max_in_flight_bytes: 1 << 20,
                    max_in_flight_bytes_per_partition: 1 << 20,
                },
                limiter: None,
                shutdown_timeout: Duration::from_secs(1),
                // 60 records left, and the position never moves.
                gone_after: Duration::ZERO,
                group: None,
                txn: None,
                progress: std::sync::RwLock::new(vec![Mutex::new(progress(
                    40,
                    100,
                    TaskStatus::Copying,
                ))]),
            });
            let timeout = Duration::from_millis(20);
            let observer = Observer::new(timeout, stalled_not_ready);
            assert!(!observer.readiness().0, "not ready before the plan");
            observer.attach(
                shared,
                vec![plan(100, TaskEnd::None)],
                vec![Arc::new(TargetHealth::new("dst"))],
                vec![("r".into(), None)],
            );
            assert!(observer.readiness().0, "ready once the plan is built");
            for _ in 0..3 {
                std::thread::sleep(timeout * 2);
                observer.tick();
            }
            let (ready, why) = observer.readiness();
            assert_eq!(ready, !stalled_not_ready, "{why}");
            assert_eq!(observer.status_json()["stalled"], 1);
            observer.finish();
            assert!(observer.readiness().0, "a finished run is not stalled");
        }
    }
}
