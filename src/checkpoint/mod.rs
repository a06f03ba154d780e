//! Checkpoints: the contiguous source position of every (route, source partition) copy task,
//! and the target offsets it wrote; and who may move them. Behind the `CheckpointStore`
//! trait so a store kept in a compacted topic can follow; the embedded default is
//! `FileStore` (`file.rs`); `KafkaStore` (`kafka.rs`) keeps them in a compacted topic.
//! `lock.rs` owns the file store's job lock: one process at a time runs or resets a job
//! (the kafka store's claim fences the previous holder instead).
//!
//! A checkpoint that is truncated, corrupted or belongs to another job, another cluster or
//! another incarnation of a topic is refused: never silently treated as "start from
//! scratch", which would re-copy (or skip) everything.

mod file;
pub mod identity;
pub mod kafka;
pub mod lock;
mod retry;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use file::FileStore;
pub use kafka::{KafkaStore, Staged};
pub use lock::{JobLock, LockHolder};
pub use retry::RetryingSaver;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: cannot write: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt ({detail}); refusing to guess where to resume. Inspect it, restore it from a copy, or move it away deliberately (the next run then starts at each route's `start`)")]
    Corrupt { path: String, detail: String },
    #[error("checkpoint {path} belongs to job \"{found}\", not \"{expected}\" (another routing file?); refusing to use it. Point [checkpoints] dir or job elsewhere, or move the file away")]
    WrongJob {
        path: String,
        found: String,
        expected: String,
    },
    #[error("checkpoint {path}: route \"{route}\": {detail}; its offsets do not apply here, refusing to resume. Check what happened, then preview a reset of the route with `kmirror checkpoints reset -c {config} --route {route}`, then add `--execute`")]
    IdentityChanged {
        path: String,
        route: String,
        detail: String,
        config: String,
    },
    #[error("job lock {path} is held by {holder}; one process at a time may run or reset a job. Wait for it to end, or stop it")]
    Locked { path: String, holder: String },
    #[error("checkpoints in {location}: {source}")]
    Cluster {
        location: String,
        #[source]
        source: Box<crate::cluster::ClusterError>,
    },
    #[error("checkpoints in {location}: cannot {what}: {detail}")]
    Store {
        location: String,
        what: String,
        detail: String,
    },
    #[error("checkpoint topic \"{topic}\" does not exist on cluster \"{cluster}\" and kmirror could not create it ({detail}). Create it compacted, with one partition, e.g. `kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {topic} --partitions 1 --config cleanup.policy=compact`, or name another with [checkpoints] topic")]
    TopicMissing {
        cluster: String,
        bootstrap: String,
        topic: String,
        detail: String,
    },
    #[error("checkpoints in {location}: job \"{job}\" was taken over by {by}; this process stops without writing another checkpoint (one process at a time per job)")]
    Fenced {
        location: String,
        job: String,
        by: String,
    },
    /// Exactly-once in a group: this member may have lost a partition whose records its open
    /// transaction holds, so the transaction must not commit (`copy::ownership`).
    #[error("checkpoints in {location}: {what}; this member aborts its open transaction and stops (exactly-once: the transaction holds records of a partition another member may be copying now from the last committed checkpoint). Restart it and it rejoins the group")]
    Taken { location: String, what: String },
    #[error("checkpoint {path}: route \"{route}\" was recorded for source cluster \"{found}\" but the routing file now reads it from \"{expected}\"; offsets from one cluster are meaningless on another. Reset the route with `kmirror checkpoints reset --route {route} --execute` (without `--execute` it previews)")]
    WrongSource {
        path: String,
        route: String,
        found: String,
        expected: String,
    },
}

/// Progress of one (route, source partition) copy task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    /// Every source record below this offset is settled on the target (or accounted for).
    pub next_offset: i64,
    /// Where this job's copy of the partition began; `verify` checks `[first_offset, next_offset)`.
    pub first_offset: i64,
    pub target_cluster: String,
    pub target_topic: String,
    /// Target partition -> [first, last] offset written and acknowledged.
    #[serde(default)]
    pub target: BTreeMap<i32, [i64; 2]>,
    /// Target partition -> its high watermark before this job first wrote to it. Copies
    /// written by a run that died before its first checkpoint lie between this and `target`'s
    /// first offset; `verify` reads from here so it counts them as duplicates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_start: BTreeMap<i32, i64>,
    /// The offset the run that wrote this checkpoint was to stop before (its route's `end`
    /// resolved then: a snapshot is the partition's end when that run started). `verify`
    /// measures completeness against it; absent when the run followed or ended by timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCheckpoint {
    pub source_cluster: String,
    /// The source cluster's id when this route was checkpointed (absent in checkpoints
    /// written before ids were recorded, or when the broker gives none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cluster_id: Option<String>,
    /// The target cluster's id, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster_id: Option<String>,
    /// Source topic -> its topic id (Kafka's topic UUID), where the broker gives one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topic_ids: BTreeMap<String, String>,
    /// Keyed by `topic/partition`.
    pub partitions: BTreeMap<String, PartitionCheckpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub job: String,
    pub written_at: String,
    pub routes: BTreeMap<String, RouteCheckpoint>,
}

pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

pub fn parse_partition_key(key: &str) -> Option<(&str, i32)> {
    let (t, p) = key.rsplit_once('/')?;
    Some((t, p.parse().ok()?))
}

impl Checkpoint {
    pub fn new(job: &str) -> Self {
        Checkpoint {
            job: job.to_string(),
            ..Default::default()
        }
    }

    pub fn get(&self, route: &str, topic: &str, partition: i32) -> Option<&PartitionCheckpoint> {
        self.routes
            .get(route)?
            .partitions
            .get(&partition_key(topic, partition))
    }
}

/// Where checkpoints live.
pub trait CheckpointStore: Send + Sync {
    /// Human-readable location, for messages.
    fn describe(&self) -> String;
    /// The stored checkpoint, `None` if there is none yet.
    fn load(&self) -> Result<Option<Checkpoint>, CheckpointError>;
    /// Replaces the stored checkpoint atomically.
    fn save(&self, cp: &Checkpoint) -> Result<(), CheckpointError>;
    /// Takes the job for this process before it loads and saves: the kafka store fences
    /// earlier holders here (the file store's lock is the separate `JobLock`).
    fn claim(&self) -> Result<(), CheckpointError> {
        Ok(())
    }
    /// Group mode (`[group]`): the ownership table this store writes by.
    fn ownership(&self) -> Option<std::sync::Arc<crate::copy::ownership::Ownership>> {
        None
    }
    /// Group mode: the highest ownership epoch recorded for a source partition at the last
    /// load (0: none).
    fn epoch_of(&self, _topic: &str, _partition: i32) -> i64 {
        0
    }
    /// Exactly-once (`crate::copy::transaction`): the records that would save `cp`, for the
    /// caller to write inside its own transaction; `None` from a store that cannot join one.
    fn stage(&self, _cp: &Checkpoint) -> Result<Option<Staged>, CheckpointError> {
        Ok(None)
    }
    /// The transaction holding `staged` committed: it is now what the store holds.
    fn staged_committed(&self, _staged: Staged) {}
    /// Exactly-once: the last check before the transaction holding staged records commits
    /// (in a group: this member still holds its partitions; a process paused inside the
    /// commit past the session timeout wakes here).
    fn may_commit(&self) -> Result<(), CheckpointError> {
        Ok(())
    }
    /// Group mode with exactly_once: the `transactional.id`s of other members that wrote
    /// the standing records of `partitions` and did not hand them over (as last read).
    fn unreleased_writers(&self, _partitions: &[(String, i32)]) -> Vec<String> {
        Vec::new()
    }
}

/// A boxed store (what `open` returns) is a store.
impl<T: CheckpointStore + ?Sized> CheckpointStore for Box<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        (**self).load()
    }
    fn save(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        (**self).save(cp)
    }
    fn claim(&self) -> Result<(), CheckpointError> {
        (**self).claim()
    }
    fn ownership(&self) -> Option<std::sync::Arc<crate::copy::ownership::Ownership>> {
        (**self).ownership()
    }
    fn epoch_of(&self, topic: &str, partition: i32) -> i64 {
        (**self).epoch_of(topic, partition)
    }
    fn stage(&self, cp: &Checkpoint) -> Result<Option<Staged>, CheckpointError> {
        (**self).stage(cp)
    }
    fn staged_committed(&self, staged: Staged) {
        (**self).staged_committed(staged)
    }
    fn unreleased_writers(&self, partitions: &[(String, i32)]) -> Vec<String> {
        (**self).unreleased_writers(partitions)
    }
    fn may_commit(&self) -> Result<(), CheckpointError> {
        (**self).may_commit()
    }
}

impl CheckpointError {
    /// An error after which this process must write nothing more: another one holds the job
    /// (or, exactly-once in a group, may hold a partition of this member's transaction).
    pub fn ends_run(&self) -> bool {
        matches!(
            self,
            CheckpointError::Fenced { .. } | CheckpointError::Taken { .. }
        )
    }
}

/// The store `[checkpoints] store` names (connecting on first use).
pub fn open(config: &crate::config::Config) -> Box<dyn CheckpointStore> {
    match &config.checkpoints.store {
        crate::config::StoreSettings::File => Box::new(FileStore::new(config.checkpoint_file())),
        crate::config::StoreSettings::Kafka { cluster, topic } => match &config.group {
            Some(g) => {
                let store = KafkaStore::for_group(
                    config.clusters[cluster].clone(),
                    topic,
                    &config.job,
                    config.run.connect_timeout,
                    &g.instance_id,
                    std::sync::Arc::new(crate::copy::ownership::Ownership::new(g.session_timeout)),
                );
                Box::new(if config.delivery.exactly_once() {
                    store.with_exactly_once(crate::copy::transaction::transactional_id_for(config))
                } else {
                    store
                })
            }
            None => Box::new(KafkaStore::new(
                config.clusters[cluster].clone(),
                topic,
                &config.job,
                config.run.connect_timeout,
            )),
        },
    }
}

/// What keeps one process at a time on a job: the file store's lock, or the kafka store's
/// claim (which fences the previous holder instead of waiting for it).
#[derive(Debug)]
pub enum JobGuard {
    File(JobLock),
    Claimed,
}

/// Takes the job for this process with the store's means (see `JobGuard`).
pub fn take_job(
    config: &crate::config::Config,
    store: &dyn CheckpointStore,
) -> Result<JobGuard, CheckpointError> {
    match &config.checkpoints.store {
        crate::config::StoreSettings::File => Ok(JobGuard::File(JobLock::acquire(
            &JobLock::path_for(config),
        )?)),
        crate::config::StoreSettings::Kafka { cluster, .. } => {
            // Exactly-once: a killed holder may have left a transaction open that holds
            // checkpoint records; until it is aborted, a read_committed read of the
            // checkpoint topic stops before it (and before this claim's owner record).
            // InitProducerId with the data producer's id aborts it (and fences a live one).
            // In a group that id is this replica's: its own earlier start is fenced, never
            // another replica (`copy::ownership` fences a partition's previous owner when it
            // takes the partition without a handover).
            if config.delivery.exactly_once() {
                crate::copy::transaction::fence(
                    &config.clusters[cluster],
                    &crate::copy::transaction::transactional_id_for(config),
                    config
                        .run
                        .connect_timeout
                        .max(std::time::Duration::from_secs(10)),
                )
                .map_err(|e| CheckpointError::Store {
                    location: store.describe(),
                    what: "fence the previous holder's transactional producer".into(),
                    detail: e.to_string(),
                })?;
            }
            store.claim()?;
            Ok(JobGuard::Claimed)
        }
    }
}

/// Checks a loaded checkpoint belongs to this job and its routes' sources.
pub fn check_ownership(
    cp: &Checkpoint,
    store: &dyn CheckpointStore,
    config: &crate::config::Config,
) -> Result<(), CheckpointError> {
    if cp.job != config.job {
        return Err(CheckpointError::WrongJob {
            path: store.describe(),
            found: cp.job.clone(),
            expected: config.job.clone(),
        });
    }
    for route in &config.routes {
        if let Some(rc) = cp.routes.get(&route.name) {
            if rc.source_cluster != route.source && !rc.partitions.is_empty() {
                return Err(CheckpointError::WrongSource {
                    path: store.describe(),
                    route: route.name.clone(),
                    found: rc.source_cluster.clone(),
                    expected: route.source.clone(),
                });
            }
        }
    }
    Ok(())
}
