//! The copy engine. The copy path, in the order a record travels it:
//!
//! - `source_partition`: a reader per source cluster, feeding its copy tasks;
//! - `task`: one copy task per (route, partition): position, counts, status, end;
//! - `poll`: the reader's consumer queue, every event with its topic;
//! - `batch`: what one turn of the reader takes from the consumer;
//! - (rate limits in `crate::rate_limit`, applied per batch);
//! - `record`: byte-exact headers, provenance, content digests;
//! - `produce`: idempotent target producers and delivery reports;
//! - `ack_tracker`: the contiguous settled position per task;
//! - checkpoints (`crate::checkpoint`), written here on a timer and at the end.
//!
//! Beside it, while a run follows: `discovery` (new topics and partitions start, deleted
//! topics are "source gone") and `reload` (SIGHUP: routes added, removed, changed).
//!
//! Guarantee: at-least-once. A position is checkpointed only when every record below it is
//! acknowledged by the target (or counted as filtered or failed), so a crash at any instant
//! loses nothing; it can duplicate at most what was in flight (bounded by
//! `limits.max_in_flight_bytes`) plus what was acknowledged since the last checkpoint.

pub mod ack_tracker;
mod archive_sink;
pub mod batch;
pub mod discovery;
pub mod filter;
pub mod ownership;
mod partitions;
pub mod poll;
pub mod prefetch;
pub mod produce;
pub mod record;
pub mod reload;
pub mod source_partition;
pub mod task;
pub mod transaction;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::checkpoint::identity::{self, Ids};
use crate::checkpoint::{
    check_ownership, partition_key, Checkpoint, CheckpointError, CheckpointStore,
    PartitionCheckpoint, RetryingSaver, RouteCheckpoint,
};
use crate::cluster::ClusterError;
use crate::config::{value, Config, Limits};
use crate::counts::{Counts, SummaryRow};
use crate::plan::{self, CreateTopics, Plan};
use crate::rate_limit::Limiter;
use source_partition::Reader;
use task::{CopyTask, TaskProgress, TaskStatus};

/// State every reader shares.
pub struct Shared {
    pub stop: Arc<AtomicBool>,
    pub in_flight_bytes: AtomicU64,
    /// The most bytes ever in flight at once (for the memory bound's evidence).
    pub peak_in_flight_bytes: AtomicU64,
    pub limits: Limits,
    pub limiter: Option<Limiter>,
    pub shutdown_timeout: Duration,
    /// By task id; grows when partitions found mid-run start (`discovery`).
    pub progress: RwLock<Vec<Mutex<TaskProgress>>>,
    /// Following the layout: how long a source topic may stay unknown before its partitions
    /// halt, long enough for `discovery` to tell a deleted topic ("source gone") first.
    /// Zero otherwise (the reader's own bound applies).
    pub gone_after: Duration,
    /// Group mode: what this replica owns, and its lease (`ownership`).
    pub group: Option<Arc<ownership::Ownership>>,
    /// Exactly-once: when readers may produce into the open transaction (`transaction`).
    pub txn: Option<Arc<transaction::TxnGate>>,
}

impl Shared {
    /// A task's last published progress.
    pub fn progress_of(&self, id: usize) -> TaskProgress {
        let table = self.progress.read().unwrap_or_else(|e| e.into_inner());
        let p = table[id].lock().expect("progress lock").clone();
        p
    }
    /// Every task's last published progress, by task id.
    pub fn all_progress(&self) -> Vec<TaskProgress> {
        let table = self.progress.read().unwrap_or_else(|e| e.into_inner());
        table
            .iter()
            .map(|p| p.lock().expect("progress lock").clone())
            .collect()
    }
    /// Publishes task `id`'s progress.
    pub fn publish(&self, id: usize, p: TaskProgress) {
        let table = self.progress.read().unwrap_or_else(|e| e.into_inner());
        *table[id].lock().expect("progress lock") = p;
    }
    /// Adds the progress of a task started mid-run; returns its id.
    pub(crate) fn add_progress(&self, p: TaskProgress) -> usize {
        let mut table = self.progress.write().unwrap_or_else(|e| e.into_inner());
        table.push(Mutex::new(p));
        table.len() - 1
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    pub fn in_flight(&self) -> u64 {
        self.in_flight_bytes.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Checkpoints could not be written for longer than `[checkpoints] max_unwritten`, so
    /// the run stopped reading; its final checkpoint was written.
    #[error("{0}; the run stopped reading and wrote its final checkpoint once the store took it: fix the store and run again")]
    CheckpointsStalled(String),
    /// Exactly-once: a transaction could not commit (aborted) or the producer was fenced.
    #[error(transparent)]
    Transaction(#[from] transaction::TxnError),
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// End every route at its own `end` or at the snapshot (the ends seen when the run
    /// starts), whichever comes first.
    pub once: bool,
    /// Log a progress line this often.
    pub progress_every: Option<Duration>,
    /// Draw this live display (`crate::progress`) instead of logging progress lines.
    pub display: Option<Arc<crate::progress::LiveDisplay>>,
    /// Shares the run's progress with the HTTP endpoint (`crate::observe`). Without one the
    /// run keeps its own: stall detection runs either way.
    pub observer: Option<Arc<crate::observe::Observer>>,
    /// Raised (by SIGHUP) to reload the routing file's routes while the run follows
    /// (`reload`); lowered once taken.
    pub reload: Option<Arc<AtomicBool>>,
}

/// What a run did, per task and in total.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub rows: Vec<SummaryRow>,
    pub totals: Counts,
    /// Tasks that stopped on an error, with the reason.
    pub halted: Vec<(String, String)>,
    /// Tasks that were retrying (a failing source or target) when the run ended, with the
    /// reason. A run stopped while any was failing is not a success.
    pub failing: Vec<(String, String)>,
    /// Consumer (fetch) errors taken, over all tasks.
    pub source_errors: u64,
    /// Whether every task reached its end (false when stopped or following forever).
    pub complete: bool,
    pub stopped: bool,
    pub gaps: i64,
    /// Peak bytes produced but not yet acknowledged, across all partitions.
    pub peak_in_flight_bytes: u64,
    pub checkpoint: String,
    pub elapsed: Duration,
}

impl RunReport {
    pub fn table(&self) -> String {
        crate::counts::summary_table(&self.rows)
    }

    /// How the run ended, in a word or a sentence, and the exit code that means.
    pub fn verdict(&self) -> Verdict {
        use crate::exit;
        let n = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let mut problems = Vec::new();
        if !self.halted.is_empty() {
            problems.push(format!("{} halted", n(self.halted.len(), "partition")));
        }
        if self.totals.failed > 0 {
            problems.push(format!(
                "{} failed",
                n(self.totals.failed as usize, "record")
            ));
        }
        if self.stopped && !self.failing.is_empty() {
            let were = if self.failing.len() == 1 {
                "was"
            } else {
                "were"
            };
            problems.push(format!(
                "stopped while {} {were} failing",
                n(self.failing.len(), "partition")
            ));
        }
        if !problems.is_empty() {
            return Verdict {
                summary: format!("FAILED: {}", problems.join("; ")),
                code: exit::MISMATCH,
            };
        }
        let summary = if self.complete {
            "complete"
        } else if self.stopped {
            "stopped"
        } else {
            "ended"
        };
        Verdict {
            summary: summary.into(),
            code: exit::OK,
        }
    }
}

/// The end of a run, as `kmirror run` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// "complete", "stopped", "ended", or "FAILED: " and what failed.
    pub summary: String,
    /// 0 (`exit::OK`), or 1 (`exit::MISMATCH`) when any partition halted, any record failed,
    /// or the run was stopped while partitions were failing (retrying).
    pub code: i32,
}

/// Loads the checkpoint and checks it belongs to this routing file.
pub fn load_checkpoint(
    config: &Config,
    store: &dyn CheckpointStore,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let cp = store.load()?;
    if let Some(cp) = &cp {
        check_ownership(cp, store, config)?;
    }
    Ok(cp)
}

/// Runs the routing file until every route reaches its end, or `stop` is raised.
pub fn run(
    config: &Config,
    store: &dyn CheckpointStore,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let observer = opts
        .observer
        .clone()
        .unwrap_or_else(|| crate::observe::Observer::for_config(config));
    // Exactly-once: no earlier producer of this job may commit after the checkpoint is read.
    if let Some(t) = transactional(config) {
        transaction::fence(&config.clusters[&t.cluster], &t.id, t.init_timeout)?;
    }
    let previous = load_checkpoint(config, store)?;
    // `--once` ends each task at its route's `end` or the snapshot, whichever comes first.
    let ends = if opts.once {
        plan::Ends::Once
    } else {
        plan::Ends::AsConfigured
    };
    let plan = plan::build_with(config, previous.as_ref(), CreateTopics::AsConfigured, ends)?;
    let mut ids = identity::lookup(config, &plan)?;
    if let Some(cp) = &previous {
        identity::check(cp, store, config, &ids)?;
    }
    identity::create_target_archives(config, &plan, &mut ids)?;
    archive_sink::record_partition_counts(config, &plan)?;
    let report = execute(
        config, plan, previous, &ids, store, opts, stop, started, &observer,
    );
    observer.finish();
    report
}

#[allow(clippy::too_many_arguments)]
fn execute(
    config: &Config,
    plan: Plan,
    previous: Option<Checkpoint>,
    ids: &Ids,
    store: &dyn CheckpointStore,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    started: Instant,
    observer: &Arc<crate::observe::Observer>,
) -> Result<RunReport, RunError> {
    // Group tasks into readers: one per source cluster (one consumer, one thread, one
    // prefetch queue), however many topics it reads, so threads and prefetch memory are
    // bounded by configuration, not by what a `topic_regex` matches.
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, t) in plan.tasks.iter().enumerate() {
        groups.entry(t.source_cluster.clone()).or_default().push(i);
    }
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in &groups {
        let (tx, rx) = crossbeam_channel::unbounded();
        senders.push(tx);
        receivers.push(rx);
    }
    // A producer for every cluster a route writes to: its target and its dead-letter
    // destination (which may be a cluster no route targets); partitions found mid-run
    // (`discovery`) use them too.
    let targets: BTreeMap<String, _> = config
        .routes
        .iter()
        .flat_map(|r| std::iter::once(&r.target).chain(r.dead_letter.as_ref().map(|d| &d.cluster)))
        .filter(|c| !config.archives.contains_key(*c))
        .map(|c| (c.clone(), config.clusters[c].clone()))
        .collect();
    let target_clusters: std::collections::BTreeSet<String> = targets.keys().cloned().collect();
    let source_clusters: std::collections::BTreeSet<String> = groups.keys().cloned().collect();
    let readers_n = senders.len();
    let mut pool = produce::ProducerPool::new(
        targets,
        config.limits.clone(),
        senders,
        transactional(config),
    )?;
    for name in config.archives.keys() {
        pool.add_health(name);
    }
    let pool = Arc::new(pool);

    let routes: Vec<Arc<crate::config::RouteConfig>> =
        config.routes.iter().cloned().map(Arc::new).collect();
    let route_limiters: Vec<Option<Arc<Limiter>>> = config
        .routes
        .iter()
        .map(|r| Limiter::new(r.rate).map(Arc::new))
        .collect();
    // Following the layout: new topics and partitions, deleted topics (`discovery`).
    let following = config
        .routes
        .iter()
        .any(|r| discovery::follows(r, opts.once));
    let mut layout: BTreeMap<String, crossbeam_channel::Receiver<discovery::LayoutChange>> =
        BTreeMap::new();
    let mut readers = BTreeMap::new();
    if following {
        for cluster in groups.keys() {
            let (tx, rx) = crossbeam_channel::unbounded();
            readers.insert(cluster.clone(), tx);
            layout.insert(cluster.clone(), rx);
        }
    }
    let mut applier = discovery::Applier {
        routes: routes.clone(),
        limiters: route_limiters.clone(),
        checkpoint: previous.clone(),
        readers,
        pool: pool.clone(),
        group: config.group.is_some(),
    };
    let mut tasks: Vec<Option<CopyTask>> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let ranges = previous
                .as_ref()
                .and_then(|c| c.get(&t.route_name, &t.topic, t.partition))
                .filter(|c| {
                    c.target_topic == t.target_topic && c.target_cluster == t.target_cluster
                })
                .map(|c| c.target.clone())
                .unwrap_or_default();
            let mut task = CopyTask::new(
                id,
                t.clone(),
                routes[t.route].clone(),
                ranges,
                route_limiters[t.route].clone(),
            );
            // Group mode: nothing is ours until the group says so (`ownership`).
            if config.group.is_some() {
                task.status = TaskStatus::Released(ownership::NOT_ASSIGNED.into());
            }
            Some(task)
        })
        .collect();
    let shared = Arc::new(Shared {
        stop: stop.clone(),
        in_flight_bytes: AtomicU64::new(0),
        peak_in_flight_bytes: AtomicU64::new(0),
        limits: config.limits.clone(),
        limiter: Limiter::new(config.limits.rate),
        shutdown_timeout: config.run.shutdown_timeout,
        progress: RwLock::new(
            tasks
                .iter()
                .map(|t| Mutex::new(t.as_ref().expect("task present").progress()))
                .collect(),
        ),
        gone_after: if following {
            discovery::Discovery::gone_after(config)
        } else {
            Duration::ZERO
        },
        group: store.ownership(),
        txn: pool.transactional().map(|_| {
            Arc::new(transaction::TxnGate::new(
                readers_n,
                config.delivery.max_records_per_transaction,
            ))
        }),
    });
    let mut committer = pool
        .transactional()
        .map(|(t, producer)| transaction::Committer {
            cluster: t.cluster.clone(),
            id: t.id.clone(),
            producer,
            // Bounds waiting for the readers (one may be in a metadata lookup, bounded by
            // connect_timeout) and each transaction call; below the transaction timeout
            // (at least 60 s), so the broker never aborts a transaction being committed.
            timeout: config
                .run
                .shutdown_timeout
                .max(config.run.connect_timeout * 2)
                .clamp(Duration::from_secs(10), Duration::from_secs(50)),
            commits: 0,
        });

    // Checkpoint on a timer while the readers work; the last one is written after they end.
    let base = previous.unwrap_or_else(|| Checkpoint::new(&config.job));
    // Written before any reader starts, so a crash at any instant leaves the target
    // positions `verify` needs (`target_start`) on disk, and a store that cannot be written
    // at all is refused (exit 70) before anything is copied.
    let first = snapshot(config, &plan, &base, ids, &shared);
    store.save(&first)?;
    observer.attach(
        shared.clone(),
        plan.tasks.clone(),
        plan.tasks
            .iter()
            .map(|t| pool.health(&t.target_cluster).clone())
            .collect(),
        config
            .routes
            .iter()
            .zip(&route_limiters)
            .map(|(r, l)| (r.name.clone(), l.clone()))
            .collect(),
    );
    observer.checkpointed(&first);
    // Group mode: the member joins now; what it is assigned starts on the supervising loop.
    let (mut group_engine, member) = match (&config.group, store.ownership()) {
        (Some(g), Some(own)) => {
            let (tx, rx) = crossbeam_channel::unbounded();
            let topics = ownership::subscription(
                config.routes.iter(),
                plan.tasks.iter().map(|t| t.topic.as_str()),
            );
            let member = ownership::Member::start(config, g, topics, own.clone(), tx)?;
            (
                Some(ownership::GroupEngine::new(rx, own, config)),
                Some(member),
            )
        }
        _ => (None, None),
    };

    let mut handles = Vec::new();
    for (rid, ((cluster, idx), rx)) in groups.into_iter().zip(receivers).enumerate() {
        let reader = Reader {
            id: rid as u32,
            // An archive (a restore) has no brokers: its name is all a reader shows of it.
            cluster: config.clusters.get(&cluster).cloned().unwrap_or_else(|| {
                crate::config::ClusterConfig {
                    name: cluster.clone(),
                    bootstrap: String::new(),
                    properties: Default::default(),
                }
            }),
            tasks: idx
                .iter()
                .map(|&i| tasks[i].take().expect("each task in one reader"))
                .collect(),
            deliveries: rx,
            pool: pool.clone(),
            shared: shared.clone(),
            layout: layout.remove(&cluster),
            archive: archive_sink::ArchiveSink::new(
                config.archives.clone(),
                config.checkpoints.interval,
                archive_sink::max_open_segments(config.limits.max_in_flight_bytes),
            ),
            source_archive: config.archives.get(&cluster).cloned(),
        };
        let h = std::thread::Builder::new()
            .name(format!("kmirror-{cluster}"))
            .spawn(move || reader.run())
            .expect("spawn reader thread");
        handles.push(h);
    }

    let done = Arc::new(AtomicBool::new(false));
    // Group mode: a reload's routes change what the member subscribes to.
    let resubscribe = member.as_ref().map(ownership::Member::resubscriber);
    let writer = {
        let shared = shared.clone();
        let done_w = done.clone();
        let done_d = done.clone();
        let mut plan = plan.clone();
        let discovery = discovery::Discovery::new(
            config,
            &plan.tasks,
            Some(base.clone()),
            opts.once,
            stop.clone(),
        );
        let refresh = config.run.metadata_refresh;
        let (found_tx, found_rx) = crossbeam_channel::unbounded();
        let (routes_tx, routes_rx) = crossbeam_channel::unbounded::<discovery::Reconfigure>();
        let reload_flag = opts.reload.clone();
        let mut reloader = match (&opts.reload, &discovery) {
            (Some(flag), Some(_)) => Some(reload::Reloader::new(
                flag.clone(),
                config,
                source_clusters,
                target_clusters,
            )),
            _ => None,
        };
        let base = base.clone();
        let interval = config.checkpoints.interval;
        let commit_interval = config.delivery.commit_interval;
        let max_unwritten = config.checkpoints.max_unwritten;
        let progress_every = opts.progress_every;
        let display = opts.display.clone();
        let config = config.clone();
        let ids = ids.clone();
        let observer = observer.clone();
        std::thread::scope(|s| {
            // Looks at the source layout every `metadata_refresh` (lookups block, so not on
            // the supervising loop, which must keep ticking).
            if let Some(mut d) = discovery {
                s.spawn(move || {
                    let mut last = Instant::now();
                    while !done_d.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        // A reload's routes are looked at at once.
                        let reloaded = routes_rx.try_iter().fold(false, |_, r| {
                            d.reconfigure(r);
                            true
                        });
                        if reloaded || last.elapsed() >= refresh {
                            let changes = d.refresh();
                            last = Instant::now();
                            if !changes.is_empty() && found_tx.send(changes).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
            // A failed write never ends this thread: copying goes on while the saver retries,
            // up to `max_unwritten`; past that, reads stop (the run ends with an error) rather
            // than pile up progress a crash would replay.
            let w = s.spawn(move || {
                let mut saver = RetryingSaver::new(store, max_unwritten);
                let mut stalled: Option<String> = None;
                let mut fenced: Option<CheckpointError> = None;
                let mut txn_failed: Option<transaction::TxnError> = None;
                let mut last_cp = Instant::now();
                let mut last_progress = Instant::now();
                let mut rates = crate::progress::RateMeter::starting_at(started.elapsed());
                // Source topics deleted mid-run (left out of a group member's subscription).
                let mut gone: std::collections::BTreeSet<String> = Default::default();
                while !done_w.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    // Group mode: the member's subscription follows the topics copied.
                    let mut resubscribe_now = false;
                    for changes in found_rx.try_iter() {
                        resubscribe_now = true;
                        for c in &changes {
                            match c {
                                discovery::Change::Gone { topic, .. } => {
                                    gone.insert(topic.clone());
                                }
                                discovery::Change::Start(found) => {
                                    for (t, _) in found {
                                        gone.remove(&t.topic);
                                    }
                                }
                            }
                        }
                        applier.apply(changes, &mut plan.tasks, &shared, &observer);
                    }
                    if let Some(g) = group_engine.as_mut() {
                        // Claims and handovers are written at once: exactly-once, as a
                        // commit of the open transaction (`ownership::CheckpointNow`).
                        let mut now = |p: &Plan| match (committer.as_mut(), shared.txn.as_ref()) {
                            (Some(c), Some(gate)) => c
                                .commit(gate, store, || snapshot(&config, p, &base, &ids, &shared), true)
                                .map(|cp| observer.checkpointed(&cp))
                                .map_err(ownership::CheckpointNowError::Ended),
                            _ => store
                                .save(&snapshot(&config, p, &base, &ids, &shared))
                                .map_err(ownership::CheckpointNowError::Failed),
                        };
                        g.tick(&mut plan, &shared, &mut applier, &observer, store, &mut now);
                        if let Some((e, abort)) = g.take_ended() {
                            if let (true, Some(c)) = (abort, committer.as_ref()) {
                                c.abort_open(e.to_string());
                            }
                            shared.stop.store(true, Ordering::Relaxed);
                            txn_failed = Some(e);
                            break;
                        }
                    }
                    match reloader.as_mut() {
                        Some(r) => {
                            r.tick(&plan.tasks, &shared, &mut applier, &observer, &routes_tx, || {
                                snapshot(&config, &plan, &base, &ids, &shared)
                            });
                            resubscribe_now |= r.take_applied();
                        }
                        None => {
                            if reload_flag.as_ref().is_some_and(|f| f.swap(false, Ordering::Relaxed)) {
                                tracing::warn!("SIGHUP: ignored; a reload applies to a run that follows (a route without `end`, not --once)");
                            }
                        }
                    }
                    if let (true, Some(tx)) = (resubscribe_now, &resubscribe) {
                        let routes: Vec<&crate::config::RouteConfig> = match &reloader {
                            Some(r) => r.live_routes(),
                            None => config.routes.iter().collect(),
                        };
                        // Topics still copied: not those of routes a reload removed, nor
                        // deleted ones.
                        let live = |route| reloader.as_ref().is_none_or(|r| r.is_live(route));
                        let copied = plan
                            .tasks
                            .iter()
                            .filter(|t| live(t.route) && !gone.contains(&t.topic));
                        let _ = tx.send(ownership::subscription(
                            routes.into_iter(),
                            copied.map(|t| t.topic.as_str()),
                        ));
                    }
                    observer.tick();
                    // Exactly-once: the checkpoint goes in the data's transaction, on the
                    // commit interval or once the transaction is full; any failure ends
                    // the run (the next resumes from the last commit).
                    let due = if let (Some(c), Some(gate)) = (committer.as_mut(), shared.txn.as_ref()) {
                        if last_cp.elapsed() >= commit_interval || gate.full() {
                            last_cp = Instant::now();
                            match c.commit(gate, store, || snapshot(&config, &plan, &base, &ids, &shared), true) {
                                Ok(cp) => observer.checkpointed(&cp),
                                Err(e) => {
                                    shared.stop.store(true, Ordering::Relaxed);
                                    txn_failed = Some(e);
                                    break;
                                }
                            }
                        }
                        false
                    } else if saver.failing() {
                        saver.retry_due()
                    } else {
                        last_cp.elapsed() >= interval
                    };
                    if due {
                        last_cp = Instant::now();
                        // A failure is logged (once per episode) by the saver.
                        let cp = snapshot(&config, &plan, &base, &ids, &shared);
                        match saver.attempt(&cp) {
                            Ok(()) => observer.checkpointed(&cp),
                            // Another process holds the job now: write nothing more. The
                            // error is the run's, printed once when it returns.
                            Err(e) if e.ends_run() => {
                                shared.stop.store(true, Ordering::Relaxed);
                                fenced = Some(e);
                                break;
                            }
                            Err(_) => observer.checkpoint_failed(),
                        }
                    }
                    if stalled.is_none() && saver.overdue() {
                        let why = format!(
                            "checkpoints could not be written to {} for {} ({})",
                            store.describe(),
                            humantime::format_duration(max_unwritten),
                            saver.last_error().unwrap_or("?")
                        );
                        tracing::error!(
                            "{why}: stopping reads so no more progress goes unrecorded"
                        );
                        shared.stop.store(true, Ordering::Relaxed);
                        stalled = Some(why);
                    }
                    // The live display is redrawn often; without one, a line now and then.
                    let show = match (&display, progress_every) {
                        (Some(_), _) => last_progress.elapsed() >= crate::progress::DRAW_EVERY,
                        (None, Some(every)) => last_progress.elapsed() >= every,
                        (None, None) => false,
                    };
                    if show {
                        last_progress = Instant::now();
                        let mut state = progress_state(&plan, &shared, started.elapsed());
                        state.checkpoints_failing_for = saver.failing_for();
                        rates.sample(state.elapsed, &mut state);
                        match &display {
                            Some(d) => d.draw(&state),
                            None => tracing::info!("{}", crate::progress::plain_line(&state)),
                        }
                    }
                }
                (saver, stalled, fenced, plan, committer, txn_failed)
            });
            let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            // Stop the checkpoint writer before propagating a reader's panic: the scope
            // waits for it, so a panic first would hang the run forever.
            done.store(true, Ordering::Relaxed);
            let writer_state = w.join().expect("checkpoint thread panicked");
            let finished: Vec<Vec<CopyTask>> = joined
                .into_iter()
                .map(|r| r.expect("reader thread panicked"))
                .collect();
            (finished, writer_state)
        })
    };
    let (finished, (mut saver, stalled, fenced, plan, mut committer, txn_failed)) = writer;
    if let Some(e) = fenced {
        pool.flush(Duration::from_secs(1));
        return Err(RunError::Checkpoint(e));
    }
    if let Some(e) = txn_failed {
        return Err(RunError::Transaction(e));
    }
    let mut all: Vec<CopyTask> = finished.into_iter().flatten().collect();
    all.sort_by_key(|t| t.id);
    for t in &all {
        shared.publish(t.id, t.progress());
    }
    // The last checkpoint must land: retried for up to `max_unwritten` before giving up
    // (an I/O error, exit 70).
    let last = match (committer.as_mut(), shared.txn.as_ref()) {
        // Exactly-once: the last transaction commits with the final positions (in a group,
        // handing every partition over: no later owner need fence this replica).
        (Some(c), Some(gate)) => {
            if let Some(own) = &shared.group {
                own.hand_over_all();
            }
            c.commit(
                gate,
                store,
                || snapshot(config, &plan, &base, ids, &shared),
                false,
            )?;
            Ok(())
        }
        _ => saver.save_before_giving_up(|| snapshot(config, &plan, &base, ids, &shared)),
    };
    // The group's partitions stay ours until the final checkpoint is written.
    if let Some(m) = member {
        m.stop();
    }
    last?;
    observer.checkpointed(&snapshot(config, &plan, &base, ids, &shared));
    // Deliveries the readers no longer wait for are not checkpointed; flushing just lets
    // the producers exit cleanly.
    pool.flush(Duration::from_secs(1));
    // Everything it sent is flushed: its clients wind down off the way to the summary.
    crate::cluster::drop_in_background(pool);
    if let Some(why) = stalled {
        return Err(RunError::CheckpointsStalled(why));
    }

    let mut rows = Vec::new();
    let mut totals = Counts::default();
    let mut halted = Vec::new();
    let mut failing = Vec::new();
    let mut source_errors = 0;
    let mut gaps = 0;
    for t in &all {
        totals.add(&t.counts);
        gaps += t.plan.gap;
        source_errors += t.source_errors;
        match (&t.status, &t.retrying) {
            (TaskStatus::Halted(why), _) => halted.push((t.plan.source_label(), why.clone())),
            (TaskStatus::Copying | TaskStatus::ReadDone, Some(why)) => {
                failing.push((t.plan.source_label(), why.clone()))
            }
            _ => {}
        }
        rows.push(SummaryRow {
            route: t.plan.route_name.clone(),
            source: t.plan.source_label(),
            range: (t.plan.start, t.tracker.position()),
            counts: t.counts,
            target: target_written(
                &t.plan.target_cluster,
                &t.plan.target_topic,
                &t.target_ranges,
            ),
            target_written: t.target_ranges.clone(),
            status: summary_status(t),
            source_errors: t.source_errors,
        });
    }
    Ok(RunReport {
        complete: all.iter().all(|t| t.status == TaskStatus::Done),
        stopped: stop.load(Ordering::Relaxed),
        rows,
        totals,
        halted,
        failing,
        source_errors,
        gaps,
        peak_in_flight_bytes: shared.peak_in_flight_bytes.load(Ordering::Relaxed),
        checkpoint: store.describe(),
        elapsed: started.elapsed(),
    })
}

/// A task's status in the end-of-run summary: its state (`TaskProgress::state`), where a
/// task still copying was stopped.
fn summary_status(t: &CopyTask) -> String {
    match (&t.status, &t.retrying) {
        (TaskStatus::Copying | TaskStatus::ReadDone, Some(why)) => {
            format!("stopped while retrying: {why}")
        }
        (TaskStatus::Copying | TaskStatus::ReadDone, None) => t.status.label(),
        _ => t.progress().state(),
    }
}

pub(crate) fn target_written(
    cluster: &str,
    topic: &str,
    ranges: &BTreeMap<i32, [i64; 2]>,
) -> String {
    if ranges.is_empty() {
        return format!("{cluster}:{topic} (nothing yet)");
    }
    if ranges.len() == 1 {
        let (p, [a, b]) = ranges.iter().next().expect("one range");
        return format!("{cluster}:{topic}/{p} [{a}..={b}]");
    }
    format!("{cluster}:{topic} ({} partitions)", ranges.len())
}

/// The checkpoint for the current progress, on top of what was loaded (routes and
/// partitions outside this plan are kept as they were).
fn snapshot(
    config: &Config,
    plan: &Plan,
    base: &Checkpoint,
    ids: &Ids,
    shared: &Shared,
) -> Checkpoint {
    let mut cp = base.clone();
    cp.job = config.job.clone();
    let now = value::format_ms(value::now_ms());
    cp.written_at = now.clone();
    let progress = shared.all_progress();
    for (t, p) in plan.tasks.iter().zip(progress) {
        let rc = cp
            .routes
            .entry(t.route_name.clone())
            .or_insert_with(|| RouteCheckpoint {
                source_cluster: t.source_cluster.clone(),
                ..Default::default()
            });
        rc.source_cluster = t.source_cluster.clone();
        // What the offsets refer to (checked on load); kept as recorded where the
        // broker gives no id now.
        if let Some(id) = ids.cluster(&t.source_cluster) {
            rc.source_cluster_id = Some(id.to_string());
        }
        if let Some(id) = ids.cluster(&t.target_cluster) {
            rc.target_cluster_id = Some(id.to_string());
        }
        if let Some(id) = ids.topic(&t.source_cluster, &t.topic) {
            rc.topic_ids.insert(t.topic.clone(), id.to_string());
        }
        let key = partition_key(&t.topic, t.partition);
        let unchanged = rc.partitions.get(&key).is_some_and(|old| {
            old.next_offset == p.position
                && old.target == p.target_ranges
                && old.end == t.end.offset()
        });
        if unchanged {
            continue;
        }
        rc.partitions.insert(
            key,
            PartitionCheckpoint {
                next_offset: p.position,
                first_offset: t.first_offset,
                target_cluster: t.target_cluster.clone(),
                target_topic: t.target_topic.clone(),
                target: p.target_ranges,
                target_start: t.target_start.clone(),
                end: t.end.offset(),
                updated_at: now.clone(),
            },
        );
    }
    cp
}

/// What the progress display shows now, from each task's published progress.
fn progress_state(
    plan: &Plan,
    shared: &Shared,
    elapsed: Duration,
) -> crate::progress::ProgressState {
    let partitions = plan
        .tasks
        .iter()
        .zip(shared.all_progress())
        .map(|(t, p)| {
            crate::progress::PartitionState {
                route: t.route_name.clone(),
                counts: p.counts,
                bytes: p.observed.bytes_acked,
                start: t.start,
                // Offsets passed with nothing for this task (transaction markers) are done
                // too: the same position `/metrics` measures lag from.
                position: p.position.max(p.passed_to),
                end: t.end.offset(),
                // The end as the reader last saw it (refreshed from the consumer).
                log_end: p.log_end.max(p.position),
                done: matches!(
                    p.status,
                    TaskStatus::Done
                        | TaskStatus::SourceGone
                        | TaskStatus::Removed
                        | TaskStatus::Released(_)
                ),
                halted: match &p.status {
                    TaskStatus::Halted(why) => Some(why.clone()),
                    _ => None,
                },
                retrying: p.retrying.clone(),
            }
        })
        .collect();
    crate::progress::ProgressState {
        elapsed,
        partitions,
        in_flight_bytes: shared.in_flight(),
        ..Default::default()
    }
}

/// Exactly-once: the transactional producer's cluster and id; `None` at-least-once.
fn transactional(config: &Config) -> Option<produce::Transactional> {
    if !config.delivery.exactly_once() {
        return None;
    }
    let crate::config::StoreSettings::Kafka { cluster, .. } = &config.checkpoints.store else {
        return None; // refused by the config check
    };
    Some(produce::Transactional {
        cluster: cluster.clone(),
        // In a group, this replica's own id (`transaction::transactional_id`).
        id: transaction::transactional_id_for(config),
        // Long enough for several commit intervals, so only a dead process's transaction
        // times out; at most 15 minutes, the brokers' default `transaction.max.timeout.ms`
        // (InitProducerId refuses more).
        timeout: (config.delivery.commit_interval * 3)
            .clamp(Duration::from_secs(60), Duration::from_secs(900)),
        init_timeout: config.run.connect_timeout.max(Duration::from_secs(10)),
    })
}
