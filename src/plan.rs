//! The plan: every (route, source partition) copy task with its target topic and partition,
//! resolved start and end offsets and a record estimate. Built by connecting to the clusters
//! (bounded by `run.connect_timeout`); `check` prints it and `run` executes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rdkafka::consumer::BaseConsumer;

use crate::checkpoint::Checkpoint;
use crate::cluster::{self, ClusterError, QuietContext};
use crate::config::{
    value, Config, EndPosition, OutOfRangePolicy, Partitioning, RouteConfig, StartPosition,
};
use crate::copy::source_partition::archive_source;

/// Where a task starts, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    Checkpoint,
    Config,
}

/// Where a task stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    None,
    /// Stop before this offset. `snapshot` is the high watermark seen at plan time.
    Offset(i64),
    /// Stop at the first record with a timestamp at or after this (ms since epoch).
    Timestamp(i64),
    /// `--once` with a timestamp end: stop at the first record with a timestamp at or after
    /// the first value, or before the offset (the snapshot), whichever comes first.
    TimestampOrOffset(i64, i64),
}

impl TaskEnd {
    /// The offset the task stops before, if it has one.
    pub fn offset(&self) -> Option<i64> {
        match self {
            TaskEnd::Offset(e) | TaskEnd::TimestampOrOffset(_, e) => Some(*e),
            TaskEnd::None | TaskEnd::Timestamp(_) => None,
        }
    }

    /// The record timestamp the task stops at, if it has one.
    pub fn timestamp(&self) -> Option<i64> {
        match self {
            TaskEnd::Timestamp(ts) | TaskEnd::TimestampOrOffset(ts, _) => Some(*ts),
            TaskEnd::None | TaskEnd::Offset(_) => None,
        }
    }

    /// Where `--once` stops a task whose route ends at `end`, given the partition's
    /// snapshot (its end when the run started): whichever comes first. `--once` must never
    /// widen a route's window (a replay window would otherwise become the whole topic).
    pub fn once(end: &EndPosition, snapshot: i64) -> TaskEnd {
        match end {
            EndPosition::None | EndPosition::Snapshot => TaskEnd::Offset(snapshot),
            EndPosition::Offset(o) => TaskEnd::Offset((*o).min(snapshot)),
            EndPosition::Timestamp(ts) => TaskEnd::TimestampOrOffset(*ts, snapshot),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TaskPlan {
    pub route: usize,
    pub route_name: String,
    pub source_cluster: String,
    pub topic: String,
    pub partition: i32,
    pub target_cluster: String,
    pub target_topic: String,
    /// Partition count of the target topic.
    pub target_partitions: usize,
    /// Target partition -> high watermark before this job first wrote there (kept from the
    /// checkpoint when it has one). Only the partitions the task can write to.
    pub target_start: BTreeMap<i32, i64>,
    pub partitioning: Partitioning,
    /// Watermarks at plan time.
    pub low: i64,
    pub high: i64,
    pub start: i64,
    pub start_from: StartFrom,
    /// Where this job's copy of the partition began (kept across runs for `verify`).
    pub first_offset: i64,
    pub end: TaskEnd,
    /// Records deleted by retention between the checkpoint and the earliest retained offset
    /// (only with on_offset_out_of_range = "earliest").
    pub gap: i64,
    pub on_offset_out_of_range: OutOfRangePolicy,
    /// Add the provenance header to copied records.
    pub provenance: bool,
}

impl TaskPlan {
    /// The target partition for `preserve`.
    pub fn preserved_partition(&self) -> Option<i32> {
        (self.partitioning == Partitioning::Preserve).then_some(self.partition)
    }

    /// Offsets to copy, when known: an upper bound on records (gaps make it smaller).
    pub fn estimate(&self) -> Option<i64> {
        self.end.offset().map(|e| (e - self.start).max(0))
    }

    pub fn source_label(&self) -> String {
        format!("{}:{}/{}", self.source_cluster, self.topic, self.partition)
    }

    pub fn target_label(&self) -> String {
        match self.preserved_partition() {
            Some(p) => format!("{}:{}/{}", self.target_cluster, self.target_topic, p),
            None => format!(
                "{}:{}/{}",
                self.target_cluster, self.target_topic, self.partitioning
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub tasks: Vec<TaskPlan>,
    /// Target topics created by this plan (create_target_topics).
    pub created_topics: Vec<(String, String)>,
    /// Target topics missing that `run` would create (planned with `CreateTopics::Never`).
    pub topics_to_create: Vec<(String, String)>,
}

/// How planning treats missing target topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateTopics {
    /// Create them where `create_target_topics` says so.
    AsConfigured,
    /// Only report what would be created (`check`, `checkpoints reset`: they change nothing).
    Never,
}

/// Where tasks end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// Each route's `end`.
    AsConfigured,
    /// `--once`: each route's `end` or the snapshot, whichever comes first.
    Once,
}

/// Connects and resolves the plan, with each route's own `end`.
pub fn build(
    config: &Config,
    checkpoint: Option<&Checkpoint>,
    create: CreateTopics,
) -> Result<Plan, ClusterError> {
    build_with(config, checkpoint, create, Ends::AsConfigured)
}

/// Connects and resolves the plan.
pub fn build_with(
    config: &Config,
    checkpoint: Option<&Checkpoint>,
    create: CreateTopics,
    ends: Ends,
) -> Result<Plan, ClusterError> {
    build_inner(config, checkpoint, create, ends, false)
}

/// The plan as configured, for looking at a copy rather than continuing it (`verify`): a
/// checkpoint that retention has passed is left as it is (the copy's coverage shows what it
/// can no longer reach), instead of refused or moved to the low watermark with a GAP error.
pub fn build_to_inspect(
    config: &Config,
    checkpoint: Option<&Checkpoint>,
) -> Result<Plan, ClusterError> {
    build_inner(
        config,
        checkpoint,
        CreateTopics::Never,
        Ends::AsConfigured,
        true,
    )
}

fn build_inner(
    config: &Config,
    checkpoint: Option<&Checkpoint>,
    create: CreateTopics,
    ends: Ends,
    inspect: bool,
) -> Result<Plan, ClusterError> {
    let timeout = config.run.connect_timeout;
    let mut consumers: BTreeMap<String, BaseConsumer<QuietContext>> = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    let needed: BTreeSet<&str> = config
        .routes
        .iter()
        .flat_map(|r| {
            [r.source.as_str(), r.target.as_str()]
                .into_iter()
                .chain(r.dead_letter.as_ref().map(|d| d.cluster.as_str()))
        })
        // An archive is a directory: nothing to connect to (see `crate::copy::archive_sink`).
        .filter(|name| !config.archives.contains_key(*name))
        .collect();
    // A dump's archive in an object store: reachable before anything is read for it.
    let dumps: BTreeSet<&str> = config
        .routes
        .iter()
        .map(|r| r.target.as_str())
        .filter(|t| config.archives.contains_key(*t))
        .collect();
    for name in dumps {
        config.archives[name]
            .probe()
            .map_err(|source| ClusterError::Archive {
                cluster: name.to_string(),
                source,
            })?;
    }
    // A restore's source: topics and their ends from the archive's manifests.
    let mut archive_marks: BTreeMap<String, BTreeMap<String, Vec<(i64, i64)>>> = BTreeMap::new();
    for r in &config.routes {
        if let Some(root) = config.archives.get(&r.source) {
            if archive_marks.contains_key(&r.source) {
                continue;
            }
            let layout = archive_source::layout(root).map_err(|source| ClusterError::Archive {
                cluster: r.source.clone(),
                source,
            })?;
            metadata.insert(
                r.source.clone(),
                layout.iter().map(|(t, p)| (t.clone(), p.len())).collect(),
            );
            archive_marks.insert(r.source.clone(), layout);
        }
    }
    for name in needed {
        let c = &config.clusters[name];
        let consumer = cluster::consumer(c, &[])?;
        let md = cluster::metadata(&consumer, c, None, timeout)?;
        let topics: BTreeMap<String, usize> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| (t.name().to_string(), t.partitions().len()))
            .collect();
        metadata.insert(name.to_string(), topics);
        consumers.insert(name.to_string(), consumer);
    }

    let mut tasks = Vec::new();
    let mut target_highs_cache: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    let mut created = Vec::new();
    let mut to_create = Vec::new();
    let now = value::now_ms();
    for (ri, route) in config.routes.iter().enumerate() {
        if let Some(dl) = &route.dead_letter {
            if !metadata[&dl.cluster].contains_key(&dl.topic) {
                if route.create_target_topics && create == CreateTopics::AsConfigured {
                    cluster::create_topic(&config.clusters[&dl.cluster], &dl.topic, 1, timeout)?;
                    created.push((dl.cluster.clone(), dl.topic.clone()));
                    metadata
                        .get_mut(&dl.cluster)
                        .expect("fetched")
                        .insert(dl.topic.clone(), 1);
                } else if route.create_target_topics {
                    to_create.push((dl.cluster.clone(), dl.topic.clone()));
                    metadata
                        .get_mut(&dl.cluster)
                        .expect("fetched")
                        .insert(dl.topic.clone(), 1);
                } else {
                    return Err(ClusterError::TopicMissing {
                        cluster: dl.cluster.clone(),
                        topic: dl.topic.clone(),
                        hint: format!(" (route \"{}\" dead-letters to it; create it, or set create_target_topics = true)", route.name),
                    });
                }
            }
        }
        let archive = config.archives.contains_key(&route.target);
        let src_topics = metadata[&route.source].clone();
        let mut topics: Vec<String> = Vec::new();
        for t in &route.topics {
            if !src_topics.contains_key(t) {
                return Err(ClusterError::TopicMissing {
                    cluster: route.source.clone(),
                    topic: t.clone(),
                    hint: format!(" (route \"{}\" reads it)", route.name),
                });
            }
            topics.push(t.clone());
        }
        if let Some(re) = &route.topic_regex {
            let matched: Vec<&String> = src_topics
                .keys()
                .filter(|t| !t.starts_with("__") && re.is_match(t))
                .collect();
            if matched.is_empty() {
                let shown = re
                    .as_str()
                    .trim_start_matches("^(?:")
                    .trim_end_matches(")$");
                return Err(ClusterError::RegexMatchesNothing {
                    route: route.name.clone(),
                    cluster: route.source.clone(),
                    regex: shown.to_string(),
                });
            }
            for t in matched {
                if !topics.contains(t) {
                    topics.push(t.clone());
                }
            }
        }
        for topic in topics {
            let partitions = src_topics[&topic];
            let target_topic = route
                .target_topic
                .render(&topic, &route.source, &route.name);
            if !crate::config::valid_topic(&target_topic) {
                return Err(ClusterError::TopicMissing {
                    cluster: route.target.clone(),
                    topic: target_topic,
                    hint: format!(
                        " and is not a valid topic name (route \"{}\" target_topic)",
                        route.name
                    ),
                });
            }
            let target_partitions = match metadata
                .get(&route.target)
                .and_then(|m| m.get(&target_topic))
            {
                // An archive keeps each source partition in its own directory (partitioning
                // is always "preserve" into one); it holds no offsets of its own to start at.
                None if archive => {
                    target_highs_cache.insert(
                        (route.target.clone(), target_topic.clone()),
                        vec![0; partitions],
                    );
                    partitions
                }
                Some(n) => *n,
                None if route.create_target_topics && create == CreateTopics::AsConfigured => {
                    cluster::create_topic(
                        &config.clusters[&route.target],
                        &target_topic,
                        partitions as i32,
                        timeout,
                    )?;
                    created.push((route.target.clone(), target_topic.clone()));
                    metadata
                        .get_mut(&route.target)
                        .expect("target metadata fetched")
                        .insert(target_topic.clone(), partitions);
                    partitions
                }
                None if route.create_target_topics => {
                    to_create.push((route.target.clone(), target_topic.clone()));
                    // Not there yet: nothing written, and nothing to look up.
                    target_highs_cache.insert(
                        (route.target.clone(), target_topic.clone()),
                        vec![0; partitions],
                    );
                    metadata
                        .get_mut(&route.target)
                        .expect("target metadata fetched")
                        .insert(target_topic.clone(), partitions);
                    partitions
                }
                None => {
                    return Err(ClusterError::TopicMissing {
                        cluster: route.target.clone(),
                        topic: target_topic,
                        hint: format!(
                            " (route \"{}\" writes to it; create it with {} partitions, or set create_target_topics = true)",
                            route.name, partitions
                        ),
                    })
                }
            };
            if route.partitioning == Partitioning::Preserve && target_partitions < partitions {
                return Err(ClusterError::TargetTooSmall {
                    route: route.name.clone(),
                    cluster: route.target.clone(),
                    topic: target_topic,
                    have: target_partitions,
                    need: partitions,
                });
            }
            // Where the target partitions stood before this run wrote anything (see
            // `PartitionCheckpoint::target_start`), once per target topic.
            let target_highs =
                match target_highs_cache.get(&(route.target.clone(), target_topic.clone())) {
                    Some(h) => h.clone(),
                    None => {
                        let mut h = Vec::with_capacity(target_partitions);
                        for tp in 0..target_partitions as i32 {
                            h.push(
                                cluster::watermarks(
                                    &consumers[&route.target],
                                    &route.target,
                                    &target_topic,
                                    tp,
                                    timeout,
                                )?
                                .1,
                            );
                        }
                        target_highs_cache
                            .insert((route.target.clone(), target_topic.clone()), h.clone());
                        h
                    }
                };
            let restore = archive_marks
                .get(&route.source)
                .map(|m| (&config.archives[&route.source], m));
            let mut marks = Vec::with_capacity(partitions);
            if let Some((_, m)) = restore {
                marks = m[&topic].clone();
            }
            for p in 0..partitions as i32 {
                let Some(consumer) = consumers.get(&route.source) else {
                    break; // an archive: its marks are the manifests'
                };
                marks.push(cluster::watermarks(
                    consumer,
                    &route.source,
                    &topic,
                    p,
                    timeout,
                )?);
            }
            // A watermark is a broker's word (tansu's runs behind its data); the ends used for
            // `latest`, offset checks, estimates and snapshots are what is really there.
            let highs: Vec<i64> = marks.iter().map(|m| m.1).collect();
            match restore.map_or_else(
                || cluster::confirm_ends(&config.clusters[&route.source], &topic, &highs, timeout),
                |_| Ok(highs.clone()),
            ) {
                Ok(ends) => {
                    for (m, e) in marks.iter_mut().zip(ends) {
                        m.1 = e;
                    }
                }
                // A snapshot must not stop short, so it needs the confirmed end; for the rest
                // the reported watermark is the best answer a very busy topic allows.
                Err(e) if route.end == EndPosition::Snapshot || ends == Ends::Once => {
                    return Err(e)
                }
                Err(e) => tracing::warn!("{e}; using the reported high watermarks"),
            }
            for p in 0..partitions as i32 {
                let (low, high) = marks[p as usize];
                let cp = checkpoint.and_then(|c| c.get(&route.name, &topic, p));
                let (mut start, start_from) = match cp {
                    Some(cp) => (cp.next_offset, StartFrom::Checkpoint),
                    None => {
                        let s = match &route.start {
                            StartPosition::Earliest => low,
                            StartPosition::Latest => high,
                            StartPosition::Offset(o) => *o,
                            StartPosition::Timestamp(ts) => offset_for_time(
                                config,
                                route,
                                &consumers,
                                &topic,
                                p,
                                *ts,
                                (low, high),
                            )?,
                            StartPosition::Ago(d) => {
                                let ts = now - d.as_millis() as i64;
                                offset_for_time(
                                    config,
                                    route,
                                    &consumers,
                                    &topic,
                                    p,
                                    ts,
                                    (low, high),
                                )?
                            }
                        };
                        (s, StartFrom::Config)
                    }
                };
                let mut gap = 0;
                // A route whose fixed end the copy already reached has nothing left to read:
                // retention passing its checkpoint afterwards is no gap.
                let finished =
                    cp.is_some() && matches!(route.end, EndPosition::Offset(o) if start >= o);
                if start < low && !finished && !inspect {
                    match route.on_offset_out_of_range {
                        OutOfRangePolicy::Fail => {
                            return Err(ClusterError::OffsetOutOfRange {
                                route: route.name.clone(),
                                cluster: route.source.clone(),
                                topic: topic.clone(),
                                partition: p,
                                offset: start,
                                low,
                                gap: low - start,
                            })
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
                    // Beyond the log: an explicit offset that does not exist yet, or a checkpoint
                    // from a log that was truncated or recreated (a broker restarted on memory
                    // storage). Some brokers answer such a fetch with silence, not an error, so
                    // refuse here rather than wait forever.
                    let detail = match start_from {
                        StartFrom::Config => format!("it is beyond the end of the partition ({high})"),
                        StartFrom::Checkpoint => format!(
                            "the checkpoint is beyond the end of the partition ({high}): the source log was truncated or recreated; reset the checkpoint (`kmirror checkpoints reset`, then again with `--execute`) after checking what happened"
                        ),
                    };
                    return Err(ClusterError::Lookup {
                        cluster: route.source.clone(),
                        topic: topic.clone(),
                        partition: p,
                        what: format!("start offset {start}"),
                        detail,
                    });
                }
                let end = match (ends, &route.end) {
                    // An archive route ends at what the archive held when the run started.
                    (_, e) if restore.is_some() => TaskEnd::once(e, high),
                    (Ends::Once, e) => TaskEnd::once(e, high),
                    (_, EndPosition::None) => TaskEnd::None,
                    (_, EndPosition::Snapshot) => TaskEnd::Offset(high),
                    (_, EndPosition::Offset(o)) => TaskEnd::Offset(*o),
                    (_, EndPosition::Timestamp(t)) => TaskEnd::Timestamp(*t),
                };
                let first_offset = cp.map(|c| c.first_offset).unwrap_or(start);
                let writable: Vec<i32> = match route.partitioning {
                    Partitioning::Preserve => vec![p],
                    _ => (0..target_partitions as i32).collect(),
                };
                let mut target_start: BTreeMap<i32, i64> = writable
                    .iter()
                    .map(|tp| (*tp, target_highs[*tp as usize]))
                    .collect();
                if let Some(cp) = cp
                    .filter(|c| c.target_topic == target_topic && c.target_cluster == route.target)
                {
                    for (tp, s) in &cp.target_start {
                        target_start.insert(*tp, *s);
                    }
                }
                tasks.push(TaskPlan {
                    route: ri,
                    route_name: route.name.clone(),
                    source_cluster: route.source.clone(),
                    topic: topic.clone(),
                    partition: p,
                    target_cluster: route.target.clone(),
                    target_topic: target_topic.clone(),
                    target_partitions,
                    target_start,
                    partitioning: route.partitioning,
                    low,
                    high,
                    start,
                    start_from,
                    first_offset,
                    end,
                    gap,
                    on_offset_out_of_range: route.on_offset_out_of_range,
                    provenance: route.provenance,
                });
            }
        }
    }
    // The lookups are done: their clients close off the way to the copy.
    cluster::drop_in_background(consumers);
    Ok(Plan {
        tasks,
        created_topics: created,
        topics_to_create: to_create,
    })
}

/// The first offset at or after `ts` in a route's source partition: ListOffsets on a
/// cluster, a scan of the archive on an archive (a restore).
fn offset_for_time(
    config: &Config,
    route: &RouteConfig,
    consumers: &BTreeMap<String, BaseConsumer<QuietContext>>,
    topic: &str,
    p: i32,
    ts: i64,
    marks: (i64, i64),
) -> Result<i64, ClusterError> {
    match config.archives.get(&route.source) {
        Some(root) => {
            archive_source::offset_for_time(root, topic, p, ts, marks).map_err(|source| {
                ClusterError::Archive {
                    cluster: route.source.clone(),
                    source,
                }
            })
        }
        None => cluster::offset_for_time(
            &consumers[&route.source],
            &config.clusters[&route.source],
            topic,
            p,
            ts,
            marks,
            config.run.connect_timeout,
        ),
    }
}

impl Plan {
    /// The line under the plan table: how many records the tasks with a fixed end copy at
    /// most, and how many tasks follow (or end at a timestamp) instead, with what is there
    /// now. A plan of follow routes has no total to copy: it says so rather than "at most 0".
    pub fn summary_line(&self) -> String {
        let n = self.tasks.len();
        let fixed: Vec<i64> = self.tasks.iter().filter_map(|t| t.estimate()).collect();
        let total: i64 = fixed.iter().sum();
        if fixed.len() == n {
            return format!(
                "{n} partition tasks; at most {total} records to copy to a fixed end (offsets, so gaps make it fewer)"
            );
        }
        // Records there now in the tasks of one kind of open end.
        let now = |open: fn(&TaskEnd) -> bool| -> (usize, i64) {
            self.tasks
                .iter()
                .filter(|t| open(&t.end))
                .fold((0, 0), |(k, r), t| (k + 1, r + (t.high - t.start).max(0)))
        };
        let (follow, follow_now) = now(|e| matches!(e, TaskEnd::None));
        let (until, until_now) = now(|e| matches!(e, TaskEnd::Timestamp(_)));
        if follow == n {
            return format!(
                "{n} partition tasks; all follow (no fixed end): {follow_now} records there now, then live"
            );
        }
        let mut parts = Vec::new();
        if follow > 0 {
            parts.push(format!(
                "{follow} follow (no fixed end; {follow_now} records there now, then live)"
            ));
        }
        if until > 0 {
            parts.push(format!(
                "{until} end at a timestamp ({until_now} records there now)"
            ));
        }
        if !fixed.is_empty() {
            parts.push(format!(
                "at most {total} records to copy for the {} with a fixed end (offsets, so gaps make it fewer)",
                fixed.len()
            ));
        }
        format!("{n} partition tasks; {}", parts.join("; "))
    }

    /// The table `kmirror check` prints.
    pub fn render(&self) -> String {
        let headers = ["route", "source", "target", "start", "end", "estimate"];
        let rows: Vec<Vec<String>> = self
            .tasks
            .iter()
            .map(|t| {
                vec![
                    t.route_name.clone(),
                    t.source_label(),
                    t.target_label(),
                    format!(
                        "{}{}",
                        t.start,
                        if t.start_from == StartFrom::Checkpoint {
                            " (checkpoint)"
                        } else {
                            ""
                        }
                    ),
                    match t.end {
                        TaskEnd::None => "follow".into(),
                        TaskEnd::Offset(o) => o.to_string(),
                        TaskEnd::Timestamp(ts) => value::format_ms(ts),
                        TaskEnd::TimestampOrOffset(ts, o) => {
                            format!("{} or {o}", value::format_ms(ts))
                        }
                    },
                    match t.estimate() {
                        Some(n) => format!("<= {n}"),
                        None => format!("{} now, then live", (t.high - t.start).max(0)),
                    },
                ]
            })
            .collect();
        let mut out = crate::counts::render_table(&headers, &rows);
        let _ = writeln!(out, "{}", self.summary_line());
        for (c, t) in &self.created_topics {
            let _ = writeln!(out, "created target topic {c}:{t}");
        }
        for (c, t) in &self.topics_to_create {
            let _ = writeln!(
                out,
                "target topic {c}:{t} does not exist: `run` will create it (create_target_topics)"
            );
        }
        out
    }
}
