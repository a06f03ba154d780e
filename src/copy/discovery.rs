//! Following the source layout while a run follows: every `[run] metadata_refresh` the
//! source clusters' metadata is read again, and
//!
//! - a topic that starts matching a following route's `topic_regex`, or partitions added to
//!   a topic a following route copies, become new copy tasks (planned here, created on the
//!   target when `create_target_topics` is on, grown on the target with CreatePartitions
//!   when partitioning is `preserve`) handed to the source cluster's reader;
//! - a topic gone from the source (absent from two metadata answers in a row) has its
//!   partitions marked `source gone`: logged once at warn, unassigned, never retried.
//!
//! A route follows when it has no `end` and the run is not `--once`.
//! Three roles: `Discovery` (its own thread: looks and plans), `Applier` (the run's
//! supervising loop: gives the new tasks ids, progress slots and observer rows, then sends
//! them) and the reader's side (`State::follow_layout`: takes them in, reassigns).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::RDKafkaErrorCode;

use super::batch::{self, SourceErrorKind};
use super::source_partition::State;
use super::task::{CopyTask, TaskStatus};
use super::Shared;
use crate::checkpoint::Checkpoint;
use crate::cluster::{self, ClusterError, QuietContext};
use crate::config::{
    value, Config, EndPosition, OutOfRangePolicy, Partitioning, RouteConfig, StartPosition,
};
use crate::copy::produce::ProducerPool;
use crate::observe::Observer;
use crate::plan::{StartFrom, TaskEnd, TaskPlan};
use crate::rate_limit::Limiter;

/// A topic is taken for deleted once this many metadata answers in a row lack it (one
/// answer could come from a broker that has not caught up with a creation yet).
const ABSENT_TO_GONE: u32 = 2;

/// What a reader is told mid-run.
pub enum LayoutChange {
    /// Start copying these (ids and progress slots already given).
    Add(Vec<CopyTask>),
    /// The topic was deleted on the source.
    Gone { topic: String },
    /// The route (by index) left the routing file at a reload (`super::reload`).
    StopRoute(usize),
    /// Group mode: partitions assigned again take the place of their released tasks (same
    /// ids), so a replica's task list does not grow with every rebalance
    /// (`super::ownership`).
    Replace(Vec<CopyTask>),
    /// Group mode: these source partitions are no longer this member's
    /// (`super::ownership`), with why.
    Release {
        partitions: std::collections::BTreeSet<(String, i32)>,
        why: String,
    },
}

/// The routes after a reload (`super::reload`), for `Discovery::reconfigure`.
pub struct Reconfigure {
    /// Every route by its index: the routing file's now, and those that left it.
    pub routes: Vec<RouteConfig>,
    pub removed: Vec<usize>,
    pub added: Vec<usize>,
    /// Where every partition stands now (the removed routes' tasks drained).
    pub checkpoint: Checkpoint,
}

/// What one look at the layout found.
#[derive(Debug)]
pub enum Change {
    /// New partitions to copy. `halted`: why one cannot be copied (the target topic is
    /// missing and may not be created, or could not be grown); it starts halted, so its
    /// state says so.
    Start(Vec<(TaskPlan, Option<String>)>),
    /// A topic deleted on the source.
    Gone { cluster: String, topic: String },
}

/// Whether a route keeps following its source (and so picks up new topics and partitions).
pub fn follows(route: &RouteConfig, once: bool) -> bool {
    !once && route.end == EndPosition::None
}

/// Looks at the source layout and plans what changed.
pub struct Discovery {
    config: Config,
    checkpoint: Option<Checkpoint>,
    /// Route indexes that follow.
    following: BTreeSet<usize>,
    /// Routes added by a reload whose partitions are not planned yet: they start as at a
    /// run's start (`latest` is the end), not as data that appeared mid-run.
    as_configured: BTreeSet<usize>,
    /// (route index, topic) -> partitions that have tasks.
    known: BTreeMap<(usize, String), usize>,
    /// (source cluster, topic) of every task, with how many answers in a row lacked it.
    absent: BTreeMap<(String, String), u32>,
    gone: BTreeSet<(String, String)>,
    consumers: BTreeMap<String, BaseConsumer<QuietContext>>,
    /// Clusters whose metadata could not be read (warned once per episode).
    failing: BTreeSet<String>,
    /// Topics whose planning failed, warned once per episode.
    deferred: BTreeSet<(usize, String)>,
    /// The run's stop flag: a stopping run plans nothing more (each lookup may take up to
    /// `connect_timeout`, and the run's end waits for this thread).
    stop: Arc<AtomicBool>,
}

impl Discovery {
    /// `None` when no route follows (nothing to discover).
    pub fn new(
        config: &Config,
        tasks: &[TaskPlan],
        checkpoint: Option<Checkpoint>,
        once: bool,
        stop: Arc<AtomicBool>,
    ) -> Option<Discovery> {
        if !config.routes.iter().any(|r| follows(r, once)) {
            return None;
        }
        let mut known = BTreeMap::new();
        let mut absent = BTreeMap::new();
        for t in tasks {
            let k = known.entry((t.route, t.topic.clone())).or_insert(0);
            *k = (*k).max(t.partition as usize + 1);
            absent.insert((t.source_cluster.clone(), t.topic.clone()), 0);
        }
        // Fixed-end routes keep their plan; only their deleted topics are noticed.
        let known = known
            .into_iter()
            .filter(|((r, _), _)| follows(&config.routes[*r], once))
            .collect();
        Some(Discovery {
            following: (0..config.routes.len())
                .filter(|r| follows(&config.routes[*r], once))
                .collect(),
            as_configured: BTreeSet::new(),
            config: config.clone(),
            checkpoint,
            known,
            absent,
            gone: BTreeSet::new(),
            consumers: BTreeMap::new(),
            failing: BTreeSet::new(),
            deferred: BTreeSet::new(),
            stop,
        })
    }

    /// Takes the routes of a reloaded routing file (`super::reload`).
    pub fn reconfigure(&mut self, r: Reconfigure) {
        self.config.routes = r.routes;
        for ri in r.removed {
            self.following.remove(&ri);
            self.as_configured.remove(&ri);
            self.known.retain(|(k, _), _| *k != ri);
        }
        for ri in r.added {
            self.following.insert(ri);
            self.as_configured.insert(ri);
        }
        self.checkpoint = Some(r.checkpoint);
    }

    /// How long a source topic may stay unknown to a reader before its partitions halt:
    /// long enough for two refreshes to tell a deleted topic first.
    pub fn gone_after(config: &Config) -> Duration {
        config.run.metadata_refresh * (ABSENT_TO_GONE + 1) + config.run.connect_timeout
    }

    fn consumer(&mut self, cluster: &str) -> Result<&BaseConsumer<QuietContext>, ClusterError> {
        if !self.consumers.contains_key(cluster) {
            let c = cluster::consumer(&self.config.clusters[cluster], &[])?;
            self.consumers.insert(cluster.to_string(), c);
        }
        Ok(&self.consumers[cluster])
    }

    /// Topic -> partition count on `cluster`, or `None` (warned once per episode).
    fn topics(&mut self, name: &str) -> Option<BTreeMap<String, usize>> {
        let timeout = self.config.run.connect_timeout;
        let c = self.config.clusters[name].clone();
        let md = self
            .consumer(name)
            .and_then(|consumer| cluster::metadata(consumer, &c, None, timeout));
        match md {
            Ok(md) => {
                if self.failing.remove(name) {
                    tracing::info!(cluster = %name, "source metadata readable again: following the layout");
                }
                Some(
                    md.topics()
                        .iter()
                        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                        .map(|t| (t.name().to_string(), t.partitions().len()))
                        .collect(),
                )
            }
            Err(e) => {
                if self.failing.insert(name.to_string()) {
                    tracing::warn!(cluster = %name, "cannot read metadata to follow new topics and partitions (tried again every {}): {e}", humantime::format_duration(self.config.run.metadata_refresh));
                }
                None
            }
        }
    }

    /// One look at every source cluster a following route reads.
    pub fn refresh(&mut self) -> Vec<Change> {
        let clusters: BTreeSet<String> = self
            .config
            .routes
            .iter()
            // An archive (a restore) has a fixed layout: nothing to look at.
            .filter(|r| !self.config.archives.contains_key(&r.source))
            .map(|r| r.source.clone())
            .collect();
        let mut changes = Vec::new();
        for name in clusters {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(topics) = self.topics(&name) else {
                continue;
            };
            // Deleted topics first: a topic that is gone is not planned again.
            let gone = absent_now(&mut self.absent, &name, &topics);
            for topic in gone {
                self.gone.insert((name.clone(), topic.clone()));
                changes.push(Change::Gone {
                    cluster: name.clone(),
                    topic,
                });
            }
            let mut start = Vec::new();
            let following: Vec<usize> = self.following.iter().copied().collect();
            for ri in following {
                let route = &self.config.routes[ri];
                if route.source != name {
                    continue;
                }
                let as_configured = self.as_configured.contains(&ri);
                let mut all_planned = true;
                let wanted: Vec<(String, usize)> = topics
                    .iter()
                    .filter(|(t, _)| !self.gone.contains(&(name.clone(), (*t).clone())))
                    .filter(|(t, _)| {
                        route.topics.contains(t)
                            || (!t.starts_with("__")
                                && route.topic_regex.as_ref().is_some_and(|re| re.is_match(t)))
                    })
                    .map(|(t, n)| (t.clone(), *n))
                    .collect();
                for (topic, n) in wanted {
                    if self.stop.load(Ordering::Relaxed) {
                        all_planned = false;
                        break;
                    }
                    let have = self.known.get(&(ri, topic.clone())).copied().unwrap_or(0);
                    if n <= have {
                        continue;
                    }
                    match self.plan(ri, &topic, have, n, as_configured) {
                        Ok(found) => {
                            self.deferred.remove(&(ri, topic.clone()));
                            tracing::info!(
                                route = %self.config.routes[ri].name, cluster = %name, topic = %topic,
                                "{} {name}:{topic}: copying partitions {have}..{} from here on",
                                if as_configured {
                                    "route added by reload reads"
                                } else if have == 0 {
                                    "new topic"
                                } else {
                                    "partitions added to"
                                },
                                n - 1
                            );
                            self.known.insert((ri, topic.clone()), n);
                            self.absent.insert((name.clone(), topic.clone()), 0);
                            start.extend(found);
                        }
                        Err(e) => {
                            all_planned = false;
                            if self.deferred.insert((ri, topic.clone())) {
                                tracing::warn!(
                                    route = %self.config.routes[ri].name, cluster = %name, topic = %topic,
                                    "cannot start copying {name}:{topic} partitions {have}..{} yet (tried again every {}): {e}",
                                    n - 1, humantime::format_duration(self.config.run.metadata_refresh)
                                );
                            }
                        }
                    }
                }
                if all_planned {
                    self.as_configured.remove(&ri);
                }
            }
            if !start.is_empty() {
                changes.push(Change::Start(start));
            }
        }
        changes
    }

    /// Plans partitions `from..to` of `topic` for route `ri`. A lookup that fails is an
    /// error (tried again at the next refresh); a target that cannot take the partitions
    /// is a halted task (its state says why).
    fn plan(
        &mut self,
        ri: usize,
        topic: &str,
        from: usize,
        to: usize,
        as_configured: bool,
    ) -> Result<Vec<(TaskPlan, Option<String>)>, ClusterError> {
        let route = self.config.routes[ri].clone();
        let timeout = self.config.run.connect_timeout;
        let src = self.config.clusters[&route.source].clone();
        // An archive target (`super::archive_sink`) takes any partition, in its own
        // directory: nothing to look up or create.
        let archive = self.config.archives.contains_key(&route.target);
        let dst = match archive {
            true => crate::config::ClusterConfig {
                name: route.target.clone(),
                bootstrap: String::new(),
                properties: Default::default(),
            },
            false => self.config.clusters[&route.target].clone(),
        };
        let target_topic = route.target_topic.render(topic, &route.source, &route.name);
        self.consumer(&route.source)?;
        if !archive {
            self.consumer(&route.target)?;
        }
        let (consumers, checkpoint) = (&self.consumers, self.checkpoint.as_ref());
        let mut refused: Option<String> = None;
        let mut target_count = 0;
        if !crate::config::valid_topic(&target_topic) {
            refused = Some(format!(
                "target topic \"{target_topic}\" is not a valid topic name (route \"{}\" target_topic)",
                route.name
            ));
        } else if archive {
            target_count = to;
        } else {
            let md = cluster::metadata(&consumers[&route.target], &dst, None, timeout)?;
            match cluster::partition_count(&md, &target_topic) {
                Some(n) => target_count = n,
                None if route.create_target_topics => {
                    match cluster::create_topic(&dst, &target_topic, to as i32, timeout) {
                        Ok(()) => {
                            tracing::info!(cluster = %route.target, topic = %target_topic, "created target topic {}:{target_topic} with {to} partitions (create_target_topics)", route.target);
                            target_count = to;
                        }
                        Err(e) => refused = Some(e.to_string()),
                    }
                }
                None => {
                    refused = Some(format!(
                        "target topic {}:{target_topic} does not exist: create it with {to} partitions, or set create_target_topics = true",
                        route.target
                    ))
                }
            }
        }
        // `preserve` writes partition p to partition p: the target must have them all.
        let mut too_small: Option<String> = None;
        if refused.is_none() && route.partitioning == Partitioning::Preserve && target_count < to {
            match cluster::create_partitions(&dst, &target_topic, to, timeout) {
                Ok(()) => {
                    tracing::info!(cluster = %route.target, topic = %target_topic, "added partitions to {}:{target_topic}: {target_count} -> {to} (partitioning = \"preserve\")", route.target);
                    target_count = to;
                }
                Err(e) => {
                    too_small = Some(format!(
                        "target {}:{target_topic} has {target_count} partitions and partitioning = \"preserve\" needs {to}: {e}",
                        route.target
                    ))
                }
            }
        }
        // Where each target partition stood before this job wrote there (for `verify`).
        let mut target_highs = vec![0; target_count];
        if refused.is_none() && !archive {
            let consumer = &consumers[&route.target];
            for (tp, h) in target_highs.iter_mut().enumerate() {
                *h = cluster::watermarks(
                    consumer,
                    &route.target,
                    &target_topic,
                    tp as i32,
                    timeout,
                )?
                .1;
            }
        }
        let now = value::now_ms();
        let mut out = Vec::new();
        for p in from as i32..to as i32 {
            let consumer = &consumers[&route.source];
            let (low, high) = cluster::watermarks(consumer, &route.source, topic, p, timeout)?;
            let cp = checkpoint.and_then(|c| c.get(&route.name, topic, p));
            // Found mid-run, a partition (or a whole topic) holds only records produced
            // after the run began: `earliest` and `latest` both mean its beginning. A route
            // added by a reload starts as it would at a run's start.
            let (mut start, start_from) = match cp {
                Some(cp) => (cp.next_offset, StartFrom::Checkpoint),
                None => {
                    let s = match &route.start {
                        StartPosition::Latest if as_configured => high,
                        StartPosition::Offset(o) if as_configured => *o,
                        StartPosition::Earliest | StartPosition::Latest => low,
                        StartPosition::Offset(o) => (*o).clamp(low, high),
                        StartPosition::Timestamp(ts) => cluster::offset_for_time(
                            consumer,
                            &src,
                            topic,
                            p,
                            *ts,
                            (low, high),
                            timeout,
                        )?,
                        StartPosition::Ago(d) => cluster::offset_for_time(
                            consumer,
                            &src,
                            topic,
                            p,
                            now - d.as_millis() as i64,
                            (low, high),
                            timeout,
                        )?,
                    };
                    (s, StartFrom::Config)
                }
            };
            let mut why = refused.clone();
            if why.is_none()
                && route.partitioning == Partitioning::Preserve
                && p as usize >= target_count
            {
                why = too_small.clone();
            }
            let mut gap = 0;
            if start < low {
                match route.on_offset_out_of_range {
                    OutOfRangePolicy::Fail => {
                        why = why.or(Some(format!(
                            "resume offset {start} is below the earliest retained offset {low}: {} records were deleted by retention before they were copied (on_offset_out_of_range = \"fail\")",
                            low - start
                        )))
                    }
                    OutOfRangePolicy::Earliest => {
                        gap = low - start;
                        tracing::error!(
                            route = %route.name, cluster = %route.source, topic = %topic, partition = p,
                            "GAP: resume offset {start} is below the earliest retained offset {low}; {gap} records were deleted by retention before they were copied; continuing from {low} (on_offset_out_of_range = \"earliest\")"
                        );
                        start = low;
                    }
                }
            }
            if start > high {
                why = why.or(Some(format!(
                    "the checkpoint ({start}) is beyond the end of the partition ({high}): the source log was truncated or recreated; reset the checkpoint after checking what happened"
                )));
                start = high;
            }
            let writable: Vec<i32> = match route.partitioning {
                Partitioning::Preserve => vec![p],
                _ => (0..target_count as i32).collect(),
            };
            let mut target_start: BTreeMap<i32, i64> = writable
                .iter()
                .filter_map(|tp| target_highs.get(*tp as usize).map(|h| (*tp, *h)))
                .collect();
            if let Some(cp) =
                cp.filter(|c| c.target_topic == target_topic && c.target_cluster == route.target)
            {
                target_start.extend(cp.target_start.iter().map(|(k, v)| (*k, *v)));
            }
            out.push((
                TaskPlan {
                    route: ri,
                    route_name: route.name.clone(),
                    source_cluster: route.source.clone(),
                    topic: topic.to_string(),
                    partition: p,
                    target_cluster: route.target.clone(),
                    target_topic: target_topic.clone(),
                    target_partitions: target_count.max(1),
                    target_start,
                    partitioning: route.partitioning,
                    low,
                    high,
                    start,
                    start_from,
                    first_offset: cp.map(|c| c.first_offset).unwrap_or(start),
                    end: TaskEnd::None,
                    gap,
                    on_offset_out_of_range: route.on_offset_out_of_range,
                    provenance: route.provenance,
                },
                why,
            ));
        }
        Ok(out)
    }
}

/// Counts, for every known topic of `cluster`, the answers in a row that lacked it; returns
/// those that reach `ABSENT_TO_GONE` now (each once: they leave the table).
fn absent_now(
    absent: &mut BTreeMap<(String, String), u32>,
    cluster: &str,
    topics: &BTreeMap<String, usize>,
) -> Vec<String> {
    let mut gone = Vec::new();
    absent.retain(|(c, t), n| {
        if c != cluster {
            return true;
        }
        if topics.contains_key(t) {
            *n = 0;
            return true;
        }
        *n += 1;
        if *n >= ABSENT_TO_GONE {
            gone.push(t.clone());
            return false;
        }
        true
    });
    gone
}

/// The run's side: turns planned partitions into running tasks.
pub struct Applier {
    pub routes: Vec<Arc<RouteConfig>>,
    pub limiters: Vec<Option<Arc<Limiter>>>,
    pub checkpoint: Option<Checkpoint>,
    /// The reader of each source cluster.
    pub readers: BTreeMap<String, Sender<LayoutChange>>,
    pub pool: Arc<ProducerPool>,
    /// Group mode: partitions found mid-run start released; the group assigns them
    /// (`super::ownership`).
    pub group: bool,
}

impl Applier {
    /// Starts what `changes` found: each new task gets the next id, a progress slot and its
    /// rows in `/status` and `/metrics` before its reader sees it.
    pub fn apply(
        &self,
        changes: Vec<Change>,
        tasks: &mut Vec<TaskPlan>,
        shared: &Shared,
        observer: &Observer,
    ) {
        for change in changes {
            match change {
                Change::Gone { cluster, topic } => {
                    let partitions: Vec<String> = tasks
                        .iter()
                        .filter(|t| t.source_cluster == cluster && t.topic == topic)
                        .map(|t| format!("{}/{}", t.route_name, t.partition))
                        .collect();
                    tracing::warn!(
                        cluster = %cluster, topic = %topic,
                        "source topic {cluster}:{topic} was deleted: its partitions [{}] are \"source gone\" (not read again in this run; records not copied before the deletion are not on the target)",
                        partitions.join(",")
                    );
                    if let Some(r) = self.readers.get(&cluster) {
                        let _ = r.send(LayoutChange::Gone { topic });
                    }
                }
                Change::Start(found) if self.group => {
                    // Group mode: a partition this replica owns already (a reload's new or
                    // changed route on a topic it copies) starts here at once; the group
                    // assigns the others.
                    let (owned, not): (Vec<_>, Vec<_>) = found.into_iter().partition(|(p, _)| {
                        shared
                            .group
                            .as_ref()
                            .is_some_and(|o| o.epoch(&p.topic, p.partition).is_some())
                    });
                    self.start(owned, tasks, shared, observer, true);
                    self.start(not, tasks, shared, observer, false);
                }
                Change::Start(found) => self.start(found, tasks, shared, observer, true),
            }
        }
    }

    /// Starts `found`; not `owned` (group mode, not assigned here): they start released.
    pub(super) fn start(
        &self,
        found: Vec<(TaskPlan, Option<String>)>,
        tasks: &mut Vec<TaskPlan>,
        shared: &Shared,
        observer: &Observer,
        owned: bool,
    ) {
        let Some(cluster) = found.first().map(|(p, _)| p.source_cluster.clone()) else {
            return;
        };
        let Some(reader) = self.readers.get(&cluster) else {
            return;
        };
        let mut new = Vec::new();
        for (plan, why) in found {
            let ranges = self
                .checkpoint
                .as_ref()
                .and_then(|c| c.get(&plan.route_name, &plan.topic, plan.partition))
                .filter(|c| {
                    c.target_topic == plan.target_topic && c.target_cluster == plan.target_cluster
                })
                .map(|c| c.target.clone())
                .unwrap_or_default();
            let route = plan.route;
            let mut t = CopyTask::new(
                0,
                plan.clone(),
                self.routes[route].clone(),
                ranges,
                self.limiters[route].clone(),
            );
            if let Some(why) = why {
                t.halt(why);
            } else if !owned {
                t.status = TaskStatus::Released(super::ownership::NOT_ASSIGNED.into());
            }
            t.id = shared.add_progress(t.progress());
            debug_assert_eq!(t.id, tasks.len());
            tasks.push(plan);
            new.push(t);
        }
        observer.add_tasks(
            &tasks[tasks.len() - new.len()..],
            new.iter()
                .map(|t| self.pool.health(&t.plan.target_cluster).clone())
                .collect(),
        );
        if reader.send(LayoutChange::Add(new)).is_err() {
            // Its reader ended (every partition it read halted): say so, once per batch.
            tracing::warn!(cluster = %cluster, "new partitions on {cluster} were found after its reader ended (every partition it read had halted); they are copied at the next start");
        }
    }
}

impl State {
    /// Takes in what `Discovery` found since the last turn (reader thread).
    pub(super) fn follow_layout(&mut self) {
        let Some(rx) = &self.layout else { return };
        let changes: Vec<LayoutChange> = rx.try_iter().collect();
        for change in changes {
            match change {
                LayoutChange::Add(tasks) => {
                    let from = self.tasks.len();
                    for t in tasks {
                        for c in std::iter::once(t.plan.target_cluster.clone())
                            .chain(t.route.dead_letter.as_ref().map(|d| d.cluster.clone()))
                        {
                            if !self.producers.contains_key(&c) && !self.archive.is_archive(&c) {
                                let p = self.pool.get(&c);
                                self.producers.insert(c, p);
                            }
                        }
                        self.tasks.push(t);
                    }
                    self.parts.add(&self.tasks, from);
                }
                LayoutChange::StopRoute(ri) => {
                    for t in &mut self.tasks {
                        if t.plan.route == ri
                            && matches!(t.status, TaskStatus::Copying | TaskStatus::ReadDone)
                        {
                            t.status = TaskStatus::Removed;
                            t.retrying = None;
                            t.source_retrying = false;
                        }
                    }
                }
                LayoutChange::Replace(tasks) => {
                    for mut t in tasks {
                        if let Some(old) = self.tasks.iter_mut().find(|o| o.id == t.id) {
                            // The run's tallies and counters go on; a late report of the
                            // earlier incarnation is stale (its generation).
                            t.counts = old.counts;
                            t.observed = old.observed;
                            t.source_errors = old.source_errors;
                            t.generation = old.generation.wrapping_add(1);
                            *old = t;
                        }
                    }
                }
                LayoutChange::Release { partitions, why } => {
                    for t in &mut self.tasks {
                        if partitions.contains(&(t.plan.topic.clone(), t.plan.partition))
                            && matches!(t.status, TaskStatus::Copying | TaskStatus::ReadDone)
                        {
                            t.status = TaskStatus::Released(why.clone());
                            t.retrying = None;
                            t.source_retrying = false;
                        }
                    }
                }
                LayoutChange::Gone { topic } => {
                    for t in &mut self.tasks {
                        if t.plan.topic == topic && t.status == TaskStatus::Copying {
                            t.status = TaskStatus::SourceGone;
                            t.retrying = None;
                            t.source_retrying = false;
                        }
                    }
                }
            }
            self.needs_assign = true;
        }
    }

    /// How the reader takes a consumer error. Following the layout, an unknown topic is
    /// retried for `Shared::gone_after`, so a deleted topic is "source gone" (told by
    /// `Discovery`) rather than halted.
    pub(super) fn source_error_kind(&self, code: Option<RDKafkaErrorCode>) -> SourceErrorKind {
        match batch::classify_source_error(code) {
            SourceErrorKind::RetriableFor(b) => {
                SourceErrorKind::RetriableFor(b.max(self.shared.gone_after))
            }
            kind => kind,
        }
    }

    /// Nothing left for this reader. A following route's partitions end only by halting
    /// or by their topic's deletion; after a deletion the reader stays up for topics still
    /// to be found (the route still follows), after halts it ends as it always did.
    pub(super) fn all_finished(&self) -> bool {
        self.tasks.iter().all(CopyTask::finished)
            && !(self.layout.is_some()
                && self.tasks.iter().any(|t| {
                    matches!(
                        t.status,
                        TaskStatus::SourceGone | TaskStatus::Removed | TaskStatus::Released(_)
                    )
                }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_gone_after_two_answers_without_it_and_reported_once() {
        let mut absent = BTreeMap::new();
        absent.insert(("src".to_string(), "a".to_string()), 0);
        absent.insert(("src".to_string(), "b".to_string()), 0);
        absent.insert(("other".to_string(), "a".to_string()), 0);
        let only_b: BTreeMap<String, usize> = [("b".to_string(), 1)].into();
        let with_a: BTreeMap<String, usize> = [("a".to_string(), 1), ("b".to_string(), 1)].into();
        assert!(absent_now(&mut absent, "src", &only_b).is_empty());
        // Back again: the count starts over.
        assert!(absent_now(&mut absent, "src", &with_a).is_empty());
        assert!(absent_now(&mut absent, "src", &only_b).is_empty());
        assert_eq!(
            absent_now(&mut absent, "src", &only_b),
            vec!["a".to_string()]
        );
        assert!(absent_now(&mut absent, "src", &only_b).is_empty());
        // Another cluster's topic of the same name is untouched.
        assert_eq!(absent[&("other".to_string(), "a".to_string())], 0);
    }
}
