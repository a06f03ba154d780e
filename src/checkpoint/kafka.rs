//! `KafkaStore`: checkpoints kept as records in a compacted topic on a cluster the job
//! writes to (`[checkpoints] store = "kafka"`), so a process needs no local disk to resume.
//!
//! Layout. All records of a job go to one partition of the topic (chosen by a hash of the
//! job), so their order is total. One record per (job, route, source partition), keyed so
//! compaction keeps the latest; a tombstone forgets one (`checkpoints reset`). One "owner"
//! record per job names the process that holds the job. Each value is sealed with a
//! checksum like the file store's, and a record that is not ours, is damaged, or is keyed
//! under this job but says another one is refused with its cluster, topic, partition and
//! offset, never skipped (skipping would resume from an older position, or from `start`).
//!
//! Who holds the job. Writes go through a transactional producer whose `transactional.id`
//! is `kmirror-<job>`: taking the job (`claim`) calls InitProducerId, which on a broker with
//! transaction coordination fences the previous holder's producer (its next commit fails),
//! then commits an owner record, then reads the partition to the end. Because not every
//! Kafka-protocol broker fences (librdkafka's mock cluster hands out a fresh producer id
//! instead), the store also follows the partition: before each write it reads what was
//! appended since, and an owner record of another process means this one was fenced. Either
//! way a fenced process gets `CheckpointError::Fenced`, writes nothing more and stops.
//! Every write is one small transaction, so a save of many partitions lands whole or not at
//! all; the same producer can later carry copied records in the same transactions
//! (exactly-once, issue 12). Readers read committed records only.
//!
//! In group mode (`[group]`, see `crate::copy::ownership`) replicas share the job, so no one
//! holds it: each writes with its own `transactional.id` (`kmirror-<job>-<instance_id>`,
//! which fences only an earlier start of the same replica), writes only the partitions it
//! owns, never forgets (tombstones) the others', and stamps each record with the epoch it
//! owns the partition at. Read back, the record with the highest epoch wins, whatever its
//! place in the log; a record without one (written outside a group) counts as epoch 0.
//! With exactly_once the records go into the replica's data transaction instead (`stage`),
//! name its transactional.id and say when they hand a partition over (`Body::txn`,
//! `Body::released`), so the next owner knows whom to fence (`unreleased_writers`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use serde::{Deserialize, Serialize};

use super::{Checkpoint, CheckpointError, CheckpointStore, PartitionCheckpoint, RouteCheckpoint};
use crate::cluster::{self, QuietContext};
use crate::config::{value, ClusterConfig};
use crate::copy::ownership::Ownership;

/// The format of every key and value; a record of another format is refused.
pub const FORMAT: &str = "kmirror-checkpoint/1";

/// The process that holds a job, as its owner record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Unique per process start: host, pid and start time.
    pub instance: String,
    pub pid: u32,
    pub host: String,
    pub since: String,
}

impl Owner {
    fn me() -> Self {
        let pid = std::process::id();
        let host = super::lock::hostname();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Owner {
            instance: format!("{host}/{pid}/{nanos}"),
            pid,
            host,
            since: value::format_ms(value::now_ms()),
        }
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on host {} since {}",
            self.pid, self.host, self.since
        )
    }
}

/// One partition's checkpoint with what its route records about the offsets' meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartitionBody {
    route: String,
    topic: String,
    partition: i32,
    source_cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target_cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    topic_id: Option<String>,
    checkpoint: PartitionCheckpoint,
}

impl PartitionBody {
    /// The record body of `route`'s `topic`/`partition` in the route's checkpoint `rc`.
    fn new(
        route: &str,
        topic: &str,
        partition: i32,
        rc: &RouteCheckpoint,
        pc: &PartitionCheckpoint,
    ) -> Self {
        PartitionBody {
            route: route.to_string(),
            topic: topic.to_string(),
            partition,
            source_cluster: rc.source_cluster.clone(),
            source_cluster_id: rc.source_cluster_id.clone(),
            target_cluster_id: rc.target_cluster_id.clone(),
            topic_id: rc.topic_ids.get(topic).cloned(),
            checkpoint: pc.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    format: String,
    job: String,
    /// Who wrote the record.
    owner: Owner,
    written_at: String,
    /// The writer's ownership epoch for the partition (group mode); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
    /// Group mode with exactly_once: the writer's `transactional.id` (its data producer's),
    /// which the next owner fences when it takes the partition without a handover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    txn: Option<String>,
    /// Group mode with exactly_once: the writer handed the partition over with this record
    /// (a revocation, or a clean stop): its transactions hold nothing of the partition past
    /// it, so the next owner need not fence it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    released: bool,
    /// Absent in an owner record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partition: Option<PartitionBody>,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    checksum: String,
    body: Body,
}

fn seal(body: Body) -> Vec<u8> {
    let checksum = super::file::checksum_of(&body);
    serde_json::to_vec(&Sealed { checksum, body }).expect("checkpoint record serializes")
}

/// The record key: a JSON array, so no route or topic name can make two keys collide.
fn owner_key(job: &str) -> Vec<u8> {
    serde_json::to_vec(&(FORMAT, job, "owner")).expect("key serializes")
}

fn partition_record_key(job: &str, route: &str, topic: &str, partition: i32) -> Vec<u8> {
    serde_json::to_vec(&(FORMAT, job, "partition", route, topic, partition))
        .expect("key serializes")
}

/// The job a key belongs to, or why it is not one of ours.
fn key_job(key: &[u8]) -> Result<String, String> {
    let parts: Vec<serde_json::Value> = serde_json::from_slice(key)
        .map_err(|_| "its key is not a kmirror checkpoint key".to_string())?;
    match (parts.first().and_then(|v| v.as_str()), parts.get(1)) {
        (Some(FORMAT), Some(serde_json::Value::String(job))) => Ok(job.clone()),
        (Some(f), _) if f.starts_with("kmirror-checkpoint/") => {
            Err(format!("its key has format \"{f}\", not \"{FORMAT}\""))
        }
        _ => Err("its key is not a kmirror checkpoint key".into()),
    }
}

/// The topic partition a job's records go to.
fn partition_for(job: &str, partitions: usize) -> i32 {
    (super::file::fnv1a64(job.as_bytes()) % partitions.max(1) as u64) as i32
}

/// The checkpoint writer's context: librdkafka's logs as the other clients', and no
/// delivery callback (a failed record fails its transaction's commit, which is reported).
/// Also the context of the exactly-once fencing producer (`copy::transaction`).
pub(crate) struct WriterContext(pub(crate) QuietContext);

impl rdkafka::ClientContext for WriterContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, fac, log_message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason)
    }
}

impl rdkafka::producer::ProducerContext for WriterContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// What the store knows of its partition: read so far, and written by this process.
struct State {
    /// Set once the topic was found (or made) and its partition chosen.
    partition: Option<i32>,
    /// Follows the partition after a load, to see owner records of other processes.
    follower: Option<BaseConsumer<QuietContext>>,
    /// The offset after the last record read.
    read_to: i64,
    /// The transactional producer, once this process claimed the job.
    producer: Option<BaseProducer<WriterContext>>,
    /// The latest owner record read.
    owner: Option<Owner>,
    /// Whether this process took the job (`claim`).
    claimed: bool,
    /// Key -> partition body as stored now (read or written), to write only what changed
    /// and to forget (tombstone) what a saved checkpoint no longer holds.
    stored: BTreeMap<Vec<u8>, PartitionBody>,
    /// Keys whose latest record is a stale writer's (see `apply`): written at the next save.
    dirty: std::collections::BTreeSet<Vec<u8>>,
    /// The latest `written_at` read, for the assembled checkpoint.
    written_at: String,
    /// Group mode: key -> the epoch of the record that stands (the highest read or written).
    key_epoch: BTreeMap<Vec<u8>, i64>,
    /// Group mode: source partition -> the highest epoch read or written for it.
    epochs: BTreeMap<(String, i32), i64>,
    /// Group mode: key -> the standing record's writer (`Body::txn`) and `Body::released`.
    writers: BTreeMap<Vec<u8>, (Option<String>, bool)>,
}

/// Checkpoint records to be written in someone else's transaction (exactly-once: the copy's
/// transactional producer writes them beside the records they cover, `crate::copy::transaction`).
/// Once that transaction commits, `CheckpointStore::staged_committed` makes them the stored state.
pub struct Staged {
    /// Where they go: the checkpoint topic and the job's partition of it.
    pub topic: String,
    pub partition: i32,
    /// Key and value (or tombstone) of each record.
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Without a group: the whole stored state once committed.
    wanted: BTreeMap<Vec<u8>, PartitionBody>,
    /// Group mode: the owned partitions' records written, for the bookkeeping `save_owned`
    /// does after its own write.
    owned: Option<Vec<OwnedWrite>>,
}

/// Group mode: one owned partition's record, and what the store holds once it is written.
struct OwnedWrite {
    key: Vec<u8>,
    body: PartitionBody,
    tp: (String, i32),
    epoch: i64,
    released: bool,
}

/// Checkpoints in a compacted topic; see the module doc.
pub struct KafkaStore {
    cluster: ClusterConfig,
    topic: String,
    job: String,
    timeout: Duration,
    me: Owner,
    state: Mutex<State>,
    /// Group mode: this replica's instance id and what it owns.
    group: Option<(String, std::sync::Arc<Ownership>)>,
    /// Group mode with exactly_once: the data producer's `transactional.id`, recorded in
    /// each record (`Body::txn`).
    eos_txn: Option<String>,
}

impl KafkaStore {
    /// A store of `job`'s checkpoints in `topic` on `cluster`. Connects on first use;
    /// `timeout` bounds each lookup, read to the end and commit.
    pub fn new(cluster: ClusterConfig, topic: &str, job: &str, timeout: Duration) -> Self {
        KafkaStore {
            cluster,
            topic: topic.to_string(),
            job: job.to_string(),
            timeout,
            me: Owner::me(),
            state: Mutex::new(State {
                partition: None,
                follower: None,
                read_to: 0,
                producer: None,
                owner: None,
                claimed: false,
                stored: BTreeMap::new(),
                dirty: Default::default(),
                written_at: String::new(),
                key_epoch: BTreeMap::new(),
                epochs: BTreeMap::new(),
                writers: BTreeMap::new(),
            }),
            group: None,
            eos_txn: None,
        }
    }

    /// A replica's store in group mode (see the module doc).
    pub fn for_group(
        cluster: ClusterConfig,
        topic: &str,
        job: &str,
        timeout: Duration,
        instance_id: &str,
        ownership: std::sync::Arc<Ownership>,
    ) -> Self {
        let mut s = Self::new(cluster, topic, job, timeout);
        s.group = Some((instance_id.to_string(), ownership));
        s
    }

    /// Group mode with exactly_once: the records go into the data transaction of the
    /// producer `transactional.id` `id` (`CheckpointStore::stage`), and name it.
    pub fn with_exactly_once(mut self, id: String) -> Self {
        self.eos_txn = Some(id);
        self
    }

    /// The highest epoch recorded for a source partition as last read (0: none).
    pub fn epoch_of(&self, topic: &str, partition: i32) -> i64 {
        let st = self.state.lock().expect("store lock");
        st.epochs
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    fn txn_id(&self) -> String {
        match &self.group {
            Some((instance, _)) => format!("kmirror-{}-{instance}", self.job),
            None => Self::transactional_id(&self.job),
        }
    }

    /// The `transactional.id` of a job's checkpoint writer.
    pub fn transactional_id(job: &str) -> String {
        format!("kmirror-{job}")
    }

    fn at(&self, partition: Option<i32>, offset: Option<i64>) -> String {
        let mut s = format!("cluster \"{}\" topic \"{}\"", self.cluster.name, self.topic);
        if let Some(p) = partition {
            s.push_str(&format!(" partition {p}"));
        }
        if let Some(o) = offset {
            s.push_str(&format!(" offset {o}"));
        }
        s
    }

    fn store_err(&self, what: &str, detail: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Store {
            location: self.describe(),
            what: what.to_string(),
            detail: crate::redact::redact(&detail.to_string()).into_owned(),
        }
    }

    /// The cluster keeping the store cannot be reached or answered an error: exit 4, as for
    /// any cluster.
    fn cluster_err(&self, source: crate::cluster::ClusterError) -> CheckpointError {
        CheckpointError::Cluster {
            location: self.describe(),
            source: Box::new(source),
        }
    }

    /// Finds the topic (creating it, compacted, where the broker supports CreateTopics)
    /// and the job's partition in it.
    fn partition(&self, st: &mut State, create: bool) -> Result<Option<i32>, CheckpointError> {
        if let Some(p) = st.partition {
            return Ok(Some(p));
        }
        let consumer = cluster::consumer(&self.cluster, &[("allow.auto.create.topics", "false")])
            .map_err(|e| self.cluster_err(e))?;
        let count =
            |consumer: &BaseConsumer<QuietContext>| -> Result<Option<usize>, CheckpointError> {
                let md =
                    cluster::metadata(consumer, &self.cluster, Some(&self.topic), self.timeout)
                        .map_err(|e| self.cluster_err(e))?;
                Ok(cluster::partition_count(&md, &self.topic))
            };
        let n = match count(&consumer)? {
            Some(n) => n,
            None if !create => return Ok(None),
            None => {
                self.create_topic()?;
                // CreateTopics answers before every broker's metadata has the topic.
                let deadline = Instant::now() + self.timeout;
                loop {
                    if let Some(n) = count(&consumer)? {
                        break n;
                    }
                    if Instant::now() >= deadline {
                        return Err(self.missing("it was created but does not show in metadata"));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let p = partition_for(&self.job, n);
        st.partition = Some(p);
        Ok(Some(p))
    }

    fn missing(&self, detail: impl Into<String>) -> CheckpointError {
        CheckpointError::TopicMissing {
            cluster: self.cluster.name.clone(),
            bootstrap: self.cluster.bootstrap.clone(),
            topic: self.topic.clone(),
            detail: detail.into(),
        }
    }

    fn create_topic(&self) -> Result<(), CheckpointError> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<QuietContext> = cluster::base_config(&self.cluster)
            .create_with_context(QuietContext {
                cluster: self.cluster.name.clone(),
            })
            .map_err(|e| self.missing(cluster::client_error_detail(&e)))?;
        // One partition keeps every job's records in one total order; -1: the broker's
        // default replication factor (KIP-464).
        let new = NewTopic::new(&self.topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let opts = AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout));
        let res = futures::executor::block_on(admin.create_topics([&new], &opts))
            .map_err(|e| self.missing(format!("CreateTopics failed: {e}")))?;
        for r in res {
            match r {
                Ok(_) => tracing::info!(
                    cluster = %self.cluster.name,
                    topic = %self.topic,
                    "created the checkpoint topic (1 partition, cleanup.policy=compact)"
                ),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(self.missing(format!("CreateTopics failed: {code}")));
                }
            }
        }
        Ok(())
    }

    /// A checkpoint topic that is not compacted loses checkpoints to retention: said once
    /// per claim, from a thread of its own, because a broker without DescribeConfigs (the
    /// mock) answers only when the request times out, and the run need not wait for advice.
    fn warn_unless_compacted(&self) {
        let (cluster, topic, timeout) = (self.cluster.clone(), self.topic.clone(), self.timeout);
        let describe = self.describe();
        let spawned = std::thread::Builder::new()
            .name("kmirror-cp-topic-check".into())
            .spawn(move || warn_unless_compacted(&cluster, &topic, &describe, timeout));
        if let Err(e) = spawned {
            tracing::debug!("cannot check the checkpoint topic's cleanup.policy: {e}");
        }
    }

    /// Reads the job's partition from `from` to its end into `st`, leaving the consumer
    /// in `st.follower`. A fresh assignment always ends with an end-of-partition event.
    fn read(&self, st: &mut State, partition: i32) -> Result<(), CheckpointError> {
        // A short fetch wait: before each write the store reads what was appended since
        // (`check_still_owner`), and with librdkafka's 500 ms default each exactly-once
        // commit waited that long for a fetch the broker held open (measured: 230-400 ms of
        // every commit on the mock).
        let consumer = cluster::consumer(
            &self.cluster,
            &[
                ("isolation.level", "read_committed"),
                ("fetch.wait.max.ms", "20"),
            ],
        )
        .map_err(|e| self.cluster_err(e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Beginning)
            .and_then(|_| consumer.assign(&tpl))
            .map_err(|e| self.store_err("assign", e))?;
        st.stored.clear();
        st.dirty.clear();
        st.key_epoch.clear();
        st.epochs.clear();
        st.writers.clear();
        st.owner = None;
        st.read_to = 0;
        self.drain(st, &consumer, partition, true)?;
        st.follower = Some(consumer);
        Ok(())
    }

    /// Applies records from `consumer` until the end: an end-of-partition event when
    /// `until_eof`, else the high watermark now (a follower gets no second EOF when
    /// nothing new arrived).
    fn drain(
        &self,
        st: &mut State,
        consumer: &BaseConsumer<QuietContext>,
        partition: i32,
        until_eof: bool,
    ) -> Result<(), CheckpointError> {
        let high = if until_eof {
            None
        } else {
            Some(
                cluster::watermarks(
                    consumer,
                    &self.cluster.name,
                    &self.topic,
                    partition,
                    self.timeout,
                )
                .map_err(|e| self.cluster_err(e))?
                .1,
            )
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            if high.is_some_and(|h| st.read_to >= h) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.store_err(
                    "read to the end",
                    format!(
                        "partition {partition}: still short of the end after {:?} (at offset {})",
                        self.timeout, st.read_to
                    ),
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_)))
                    if until_eof || high.is_some_and(|h| st.read_to >= h) =>
                {
                    return Ok(());
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    return Err(self.store_err("read", format!("partition {partition}: {e}")))
                }
                Some(Ok(m)) => {
                    let offset = m.offset();
                    self.apply(st, partition, offset, m.key(), m.payload())?;
                    st.read_to = offset + 1;
                }
            }
            // Transaction markers take offsets but reach no poll: the consumer's position
            // moves past them, the offsets of records read do not.
            if let Some(Offset::Offset(pos)) = consumer.position().ok().and_then(|tpl| {
                tpl.find_partition(&self.topic, partition)
                    .map(|e| e.offset())
            }) {
                st.read_to = st.read_to.max(pos);
            }
        }
    }

    /// One record read: refused unless it is a sealed kmirror record; another job's
    /// records (a topic shared by jobs) are left alone.
    fn apply(
        &self,
        st: &mut State,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<(), CheckpointError> {
        let corrupt = |detail: String| CheckpointError::Corrupt {
            path: self.at(Some(partition), Some(offset)),
            detail,
        };
        let key = key.ok_or_else(|| {
            corrupt("a record without a key: not a kmirror checkpoint record".into())
        })?;
        let job = key_job(key).map_err(corrupt)?;
        if job != self.job {
            return Ok(());
        }
        let Some(payload) = payload else {
            st.stored.remove(key);
            // Forgotten (a reset): whatever is written next stands, whatever its epoch.
            st.key_epoch.remove(key);
            st.writers.remove(key);
            return Ok(());
        };
        let sealed: Sealed = serde_json::from_slice(payload)
            .map_err(|e| corrupt(format!("not a kmirror checkpoint record: {e}")))?;
        let body = sealed.body;
        if body.format != FORMAT {
            return Err(corrupt(format!(
                "format \"{}\" is not \"{FORMAT}\"",
                body.format
            )));
        }
        let actual = super::file::checksum_of(&body);
        if actual != sealed.checksum {
            return Err(corrupt(format!(
                "checksum {} does not match its contents ({actual}): edited or damaged",
                sealed.checksum
            )));
        }
        if body.job != self.job {
            return Err(CheckpointError::WrongJob {
                path: self.at(Some(partition), Some(offset)),
                found: body.job,
                expected: self.job.clone(),
            });
        }
        if body.written_at > st.written_at {
            st.written_at = body.written_at.clone();
        }
        match body.partition {
            None => {
                if key != owner_key(&self.job).as_slice() {
                    return Err(corrupt("an owner record under a partition's key".into()));
                }
                // Replicas of a group share the job: no one holds it.
                if self.group.is_none() {
                    st.owner = Some(body.owner);
                }
            }
            Some(pb) if self.group.is_some() || body.generation.is_some() => {
                if key
                    != partition_record_key(&self.job, &pb.route, &pb.topic, pb.partition)
                        .as_slice()
                {
                    return Err(corrupt(format!(
                        "its key does not name route \"{}\" {}/{} it holds",
                        pb.route, pb.topic, pb.partition
                    )));
                }
                // The highest epoch wins wherever it lies in the log: a stale owner's late
                // write stays ignored, and is written over by the owner's next save so that
                // compaction (which keeps the last record) keeps the owner's.
                let epoch = body.generation.unwrap_or(0);
                let standing = st.key_epoch.get(key).copied();
                if standing.is_some_and(|e| e > epoch) {
                    tracing::warn!(
                        at = %self.at(Some(partition), Some(offset)),
                        "ignoring a checkpoint record of route \"{}\" {}/{} at epoch {epoch} written by {}: epoch {} stands",
                        pb.route, pb.topic, pb.partition, body.owner, standing.unwrap_or(0)
                    );
                    st.dirty.insert(key.to_vec());
                    return Ok(());
                }
                st.key_epoch.insert(key.to_vec(), epoch);
                st.writers
                    .insert(key.to_vec(), (body.txn.clone(), body.released));
                let e = st
                    .epochs
                    .entry((pb.topic.clone(), pb.partition))
                    .or_insert(0);
                *e = (*e).max(epoch);
                st.stored.insert(key.to_vec(), pb);
            }
            Some(pb) => {
                // Written by a process after another one took the job: the writer had not
                // seen it yet (a broker that does not fence lets one such write through).
                // The holder's own record stands, and is written again at its next save so
                // compaction keeps it rather than this one. With no record before it, the
                // position still only covers records that were copied: it is taken.
                let stale = st
                    .owner
                    .as_ref()
                    .is_some_and(|o| o.instance != body.owner.instance);
                if stale && st.stored.contains_key(key) {
                    tracing::warn!(
                        at = %self.at(Some(partition), Some(offset)),
                        "ignoring a checkpoint record of route \"{}\" {}/{} written by {} after {} took the job",
                        pb.route,
                        pb.topic,
                        pb.partition,
                        body.owner,
                        st.owner.as_ref().map(|o| o.to_string()).unwrap_or_default()
                    );
                    st.dirty.insert(key.to_vec());
                    return Ok(());
                }
                if key
                    != partition_record_key(&self.job, &pb.route, &pb.topic, pb.partition)
                        .as_slice()
                {
                    return Err(corrupt(format!(
                        "its key does not name route \"{}\" {}/{} it holds",
                        pb.route, pb.topic, pb.partition
                    )));
                }
                st.stored.insert(key.to_vec(), pb);
            }
        }
        Ok(())
    }

    /// Reads what was appended since the last read; an owner record of another process
    /// there means this one no longer holds the job.
    fn check_still_owner(&self, st: &mut State, partition: i32) -> Result<(), CheckpointError> {
        match st.follower.take() {
            Some(c) => {
                let r = self.drain(st, &c, partition, false);
                st.follower = Some(c);
                r?
            }
            None => self.read(st, partition)?,
        }
        match &st.owner {
            Some(o) if o.instance != self.me.instance => Err(CheckpointError::Fenced {
                location: self.describe(),
                job: self.job.clone(),
                by: o.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn producer(&self) -> Result<BaseProducer<WriterContext>, CheckpointError> {
        let p: BaseProducer<WriterContext> = cluster::base_config(&self.cluster)
            .set("transactional.id", self.txn_id())
            .set("transaction.timeout.ms", "60000")
            .create_with_context(WriterContext(QuietContext {
                cluster: self.cluster.name.clone(),
            }))
            .map_err(|e| self.store_err("create the producer", cluster::client_error_detail(&e)))?;
        p.init_transactions(self.timeout)
            .map_err(|e| self.txn_err("InitProducerId", e))?;
        Ok(p)
    }

    /// A transaction error: fenced (another process took the job), or a write failure.
    fn txn_err(&self, what: &str, e: KafkaError) -> CheckpointError {
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::InvalidProducerIdMapping
            )
        );
        if fenced {
            CheckpointError::Fenced {
                location: self.describe(),
                job: self.job.clone(),
                by: "a newer process with the same transactional.id".into(),
            }
        } else {
            self.store_err(what, e)
        }
    }

    /// Writes `records` (key, value or tombstone) in one transaction.
    fn write(
        &self,
        st: &mut State,
        partition: i32,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), CheckpointError> {
        if st.producer.is_none() {
            st.producer = Some(self.producer()?);
        }
        let p = st.producer.as_ref().expect("producer made above");
        let result = (|| {
            p.begin_transaction()
                .map_err(|e| self.txn_err("begin a transaction", e))?;
            for (k, v) in records {
                let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic)
                    .partition(partition)
                    .key(k.as_slice());
                if let Some(v) = v {
                    r = r.payload(v.as_slice());
                }
                p.send(r).map_err(|(e, _)| self.txn_err("produce", e))?;
            }
            p.commit_transaction(self.timeout)
                .map_err(|e| self.txn_err("commit", e))
        })();
        if let Err(e) = &result {
            // A producer in an unknown transaction state is not reused: the next write
            // makes a new one (after checking this process still holds the job).
            let _ = p.abort_transaction(self.timeout);
            if !matches!(e, CheckpointError::Fenced { .. }) {
                st.producer = None;
            }
        }
        result
    }

    fn body(&self, partition: Option<PartitionBody>) -> Body {
        Body {
            format: FORMAT.into(),
            job: self.job.clone(),
            owner: self.me.clone(),
            written_at: value::format_ms(value::now_ms()),
            generation: None,
            txn: None,
            released: false,
            partition,
        }
    }

    /// The records (key, value or tombstone) that make the stored state `cp`, and that state.
    #[allow(clippy::type_complexity)]
    fn wanted(
        &self,
        st: &State,
        cp: &Checkpoint,
    ) -> (
        BTreeMap<Vec<u8>, PartitionBody>,
        Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) {
        let mut wanted: BTreeMap<Vec<u8>, PartitionBody> = BTreeMap::new();
        for (route, rc) in &cp.routes {
            for (key, pc) in &rc.partitions {
                let Some((topic, p)) = super::parse_partition_key(key) else {
                    continue;
                };
                wanted.insert(
                    partition_record_key(&self.job, route, topic, p),
                    PartitionBody::new(route, topic, p, rc, pc),
                );
            }
        }
        let mut records = Vec::new();
        for (k, pb) in &wanted {
            if st.stored.get(k) != Some(pb) || st.dirty.contains(k) {
                records.push((k.clone(), Some(seal(self.body(Some(pb.clone()))))));
            }
        }
        for k in st.stored.keys() {
            if !wanted.contains_key(k) {
                records.push((k.clone(), None));
            }
        }
        (wanted, records)
    }

    /// Group mode: the records of the partitions this member owns in `cp`, each at the epoch
    /// it owns it at, where they differ from what stands (or must be written again: a stale
    /// writer's record came after ours, or the partition is being handed over). A partition
    /// recorded at a higher epoch than ours was taken by another member: at-least-once it is
    /// fenced and nothing is written for it; exactly-once (`strict`) the whole write is
    /// refused, because the open transaction it would join holds records of that partition
    /// already, which must not commit (the new owner resumes from the last committed
    /// checkpoint).
    #[allow(clippy::type_complexity)]
    fn owned_records(
        &self,
        st: &State,
        cp: &Checkpoint,
        ownership: &Ownership,
        strict: bool,
    ) -> Result<(Vec<(Vec<u8>, Option<Vec<u8>>)>, Vec<OwnedWrite>), CheckpointError> {
        let mut records = Vec::new();
        let mut wrote = Vec::new();
        for (route, rc) in &cp.routes {
            for (key, pc) in &rc.partitions {
                let Some((topic, p)) = super::parse_partition_key(key) else {
                    continue;
                };
                let Some(epoch) = ownership.epoch(topic, p) else {
                    continue;
                };
                let tp = (topic.to_string(), p);
                let seen = st.epochs.get(&tp).copied().unwrap_or(0);
                if seen > epoch {
                    if strict {
                        return Err(self.taken(format!(
                            "partition {topic}/{p} was taken by another member at epoch {seen} (this member holds it at epoch {epoch})"
                        )));
                    }
                    ownership.fence(tp, seen);
                    continue;
                }
                let released = ownership.is_releasing(&tp);
                let k = partition_record_key(&self.job, route, topic, p);
                let pb = PartitionBody::new(route, topic, p, rc, pc);
                if st.stored.get(&k) == Some(&pb)
                    && st.key_epoch.get(&k) == Some(&epoch)
                    && st.writers.get(&k).is_some_and(|w| w.1 == released)
                    && !st.dirty.contains(&k)
                {
                    continue;
                }
                let mut body = self.body(Some(pb.clone()));
                body.generation = Some(epoch);
                body.txn = self.eos_txn.clone();
                body.released = released;
                records.push((k.clone(), Some(seal(body))));
                wrote.push(OwnedWrite {
                    key: k,
                    body: pb,
                    tp,
                    epoch,
                    released,
                });
            }
        }
        Ok((records, wrote))
    }

    /// Exactly-once in a group: this member must not commit (`CheckpointError::Taken`).
    fn taken(&self, what: String) -> CheckpointError {
        CheckpointError::Taken {
            location: self.describe(),
            what,
        }
    }

    /// What `owned_records` wrote is what stands now.
    fn owned_written(&self, st: &mut State, wrote: Vec<OwnedWrite>) {
        for w in wrote {
            st.dirty.remove(&w.key);
            st.key_epoch.insert(w.key.clone(), w.epoch);
            st.writers
                .insert(w.key.clone(), (self.eos_txn.clone(), w.released));
            st.stored.insert(w.key, w.body);
            let e = st.epochs.entry(w.tp).or_insert(0);
            *e = (*e).max(w.epoch);
        }
    }

    /// Group mode's save: only owned partitions, at their epoch; a partition recorded at a
    /// higher epoch than ours is fenced instead of written.
    fn save_owned(&self, cp: &Checkpoint, ownership: &Ownership) -> Result<(), CheckpointError> {
        let mut st = self.state.lock().expect("store lock");
        let partition = st.partition.expect("claimed");
        // What the others wrote since: an epoch above ours is seen here.
        self.check_still_owner(&mut st, partition)?;
        let (records, wrote) = self.owned_records(&st, cp, ownership, false)?;
        if records.is_empty() {
            return Ok(());
        }
        // Exactly-once: a position committed apart from its records (which may still be in
        // the open data transaction) is lost with them in a crash; only `stage` writes.
        if self.eos_txn.is_some() {
            return Err(self.store_err(
                "write checkpoint records outside the data transaction",
                "with exactly_once a group member's checkpoint records commit only with its data (a bug if seen)",
            ));
        }
        self.write(&mut st, partition, &records)?;
        self.owned_written(&mut st, wrote);
        Ok(())
    }

    /// Group mode's `stage` (exactly-once): as `save_owned`, but the records go into the
    /// data transaction, which must not commit when this member may have lost a partition
    /// whose records it holds: the lease lapsed, the group took partitions without a
    /// handover, or the checkpoint topic shows a partition taken at a higher epoch.
    fn stage_owned(
        &self,
        cp: &Checkpoint,
        ownership: &Ownership,
    ) -> Result<Option<Staged>, CheckpointError> {
        let mut st = self.state.lock().expect("store lock");
        let partition = st.partition.expect("claimed");
        self.check_still_owner(&mut st, partition)?;
        self.still_member(ownership)?;
        let (records, wrote) = self.owned_records(&st, cp, ownership, true)?;
        Ok(Some(Staged {
            topic: self.topic.clone(),
            partition,
            records,
            wanted: BTreeMap::new(),
            owned: Some(wrote),
        }))
    }

    /// Exactly-once in a group: refuses a commit when this member may have lost partitions
    /// without knowing which: the group took some without a handover, or its lease lapsed
    /// (it was not heard within the session timeout, e.g. paused).
    fn still_member(&self, ownership: &Ownership) -> Result<(), CheckpointError> {
        let lost = ownership.lost();
        if !lost.is_empty() {
            return Err(self.taken(format!(
                "the group took partitions [{}] from this member without a handover (lost: it was not heard within the session timeout)",
                lost.iter()
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !ownership.lease_valid() {
            return Err(self.taken(format!(
                "this member's group lease lapsed (it was not heard by the group within the session timeout, {}): the group may have given its partitions to another member",
                humantime::format_duration(ownership.session_timeout())
            )));
        }
        Ok(())
    }

    /// Group mode: the `transactional.id`s of the exactly-once writers of the records that
    /// stand for `partitions`, other than this member's, that did not hand them over
    /// (`Body::released`): a killed or paused previous owner whose open transaction may
    /// still hold records of them.
    pub fn unreleased_writers(&self, partitions: &[(String, i32)]) -> Vec<String> {
        let st = self.state.lock().expect("store lock");
        let mut ids = std::collections::BTreeSet::new();
        for (k, pb) in &st.stored {
            if !partitions
                .iter()
                .any(|(t, p)| *t == pb.topic && *p == pb.partition)
            {
                continue;
            }
            if let Some((Some(id), false)) = st.writers.get(k) {
                if self.eos_txn.as_ref() != Some(id) {
                    ids.insert(id.clone());
                }
            }
        }
        ids.into_iter().collect()
    }
}

impl CheckpointStore for KafkaStore {
    fn ownership(&self) -> Option<std::sync::Arc<Ownership>> {
        self.group.as_ref().map(|(_, o)| o.clone())
    }

    fn epoch_of(&self, topic: &str, partition: i32) -> i64 {
        KafkaStore::epoch_of(self, topic, partition)
    }

    fn describe(&self) -> String {
        format!(
            "kafka topic \"{}\" on cluster \"{}\"",
            self.topic, self.cluster.name
        )
    }

    fn claim(&self) -> Result<(), CheckpointError> {
        let mut st = self.state.lock().expect("store lock");
        let partition = self
            .partition(&mut st, true)?
            .expect("created when missing");
        self.warn_unless_compacted();
        // InitProducerId first: on a broker that fences, no older holder writes after it.
        st.producer = Some(self.producer()?);
        if self.group.is_some() {
            // No one holds a group's job: the producer fenced this replica's earlier start
            // (same instance id); ownership is per partition, by epoch.
            self.read(&mut st, partition)?;
            st.claimed = true;
            return Ok(());
        }
        let owner = (owner_key(&self.job), Some(seal(self.body(None))));
        self.write(&mut st, partition, &[owner])?;
        self.read(&mut st, partition)?;
        match &st.owner {
            Some(o) if o.instance == self.me.instance => {
                st.claimed = true;
                tracing::debug!(store = %self.describe(), partition, "job claimed");
                Ok(())
            }
            other => Err(CheckpointError::Fenced {
                location: self.describe(),
                job: self.job.clone(),
                by: other
                    .as_ref()
                    .map_or("another process".into(), |o| o.to_string()),
            }),
        }
    }

    fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut st = self.state.lock().expect("store lock");
        let Some(partition) = self.partition(&mut st, false)? else {
            return Ok(None);
        };
        // After a claim the follower is at the end already; catch up from there.
        match st.follower.take() {
            Some(c) => {
                let r = self.drain(&mut st, &c, partition, false);
                st.follower = Some(c);
                r?
            }
            None => self.read(&mut st, partition)?,
        }
        if st.stored.is_empty() {
            return Ok(None);
        }
        let mut cp = Checkpoint::new(&self.job);
        cp.written_at = st.written_at.clone();
        for pb in st.stored.values() {
            let rc = cp
                .routes
                .entry(pb.route.clone())
                .or_insert_with(|| RouteCheckpoint {
                    source_cluster: pb.source_cluster.clone(),
                    ..Default::default()
                });
            rc.source_cluster = pb.source_cluster.clone();
            if pb.source_cluster_id.is_some() {
                rc.source_cluster_id = pb.source_cluster_id.clone();
            }
            if pb.target_cluster_id.is_some() {
                rc.target_cluster_id = pb.target_cluster_id.clone();
            }
            if let Some(id) = &pb.topic_id {
                rc.topic_ids.insert(pb.topic.clone(), id.clone());
            }
            rc.partitions.insert(
                super::partition_key(&pb.topic, pb.partition),
                pb.checkpoint.clone(),
            );
        }
        Ok(Some(cp))
    }

    fn stage(&self, cp: &Checkpoint) -> Result<Option<Staged>, CheckpointError> {
        if !self.state.lock().expect("store lock").claimed {
            self.claim()?;
        }
        if let Some((_, ownership)) = &self.group {
            return self.stage_owned(cp, ownership);
        }
        let mut st = self.state.lock().expect("store lock");
        let partition = st.partition.expect("claimed");
        // Another process's owner record since the last save: fenced, write nothing.
        self.check_still_owner(&mut st, partition)?;
        let (wanted, records) = self.wanted(&st, cp);
        Ok(Some(Staged {
            topic: self.topic.clone(),
            partition,
            records,
            wanted,
            owned: None,
        }))
    }

    fn staged_committed(&self, staged: Staged) {
        let mut st = self.state.lock().expect("store lock");
        match staged.owned {
            Some(wrote) => self.owned_written(&mut st, wrote),
            None => {
                st.stored = staged.wanted;
                st.dirty.clear();
            }
        }
    }

    fn unreleased_writers(&self, partitions: &[(String, i32)]) -> Vec<String> {
        KafkaStore::unreleased_writers(self, partitions)
    }

    fn may_commit(&self) -> Result<(), CheckpointError> {
        match &self.group {
            Some((_, ownership)) => self.still_member(ownership),
            // Another process's owner record since the records were staged (it claimed the
            // job meanwhile): commit nothing. On a broker that fences by transactional.id
            // the commit would fail anyway; on one that does not (librdkafka's mock) this
            // read is what stops it. Asked after the staged records were delivered, so a
            // claim that landed before them in the log is seen (a read_committed read stops
            // at our own open transaction, never waits for it).
            None => {
                let mut st = self.state.lock().expect("store lock");
                match st.partition {
                    Some(partition) if st.claimed => self.check_still_owner(&mut st, partition),
                    _ => Ok(()),
                }
            }
        }
    }

    fn save(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        // Claimed once per process: a producer dropped after a failed write is made again
        // by `write`, after `check_still_owner`, never by claiming the job back.
        if !self.state.lock().expect("store lock").claimed {
            self.claim()?;
        }
        if let Some((_, ownership)) = &self.group {
            return self.save_owned(cp, ownership);
        }
        let mut st = self.state.lock().expect("store lock");
        let partition = st.partition.expect("claimed");
        self.check_still_owner(&mut st, partition)?;
        let (wanted, records) = self.wanted(&st, cp);
        if records.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write(&mut st, partition, &records) {
            if e.ends_run() {
                // Fenced by the broker: name the new holder if its owner record is there.
                self.check_still_owner(&mut st, partition)?;
            }
            return Err(e);
        }
        st.stored = wanted;
        st.dirty.clear();
        Ok(())
    }
}

/// See `KafkaStore::warn_unless_compacted`.
fn warn_unless_compacted(cluster: &ClusterConfig, topic: &str, describe: &str, timeout: Duration) {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let Ok(admin) = cluster::base_config(cluster)
        .create_with_context::<_, AdminClient<QuietContext>>(QuietContext {
            cluster: cluster.name.clone(),
        })
    else {
        return;
    };
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let res = futures::executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts),
    );
    let policy = match res.as_deref() {
        Ok([Ok(r)]) => r.get("cleanup.policy").and_then(|e| e.value.clone()),
        other => {
            tracing::debug!(
                store = %describe,
                "cannot read the checkpoint topic's cleanup.policy: {other:?}"
            );
            return;
        }
    };
    if !policy.as_deref().unwrap_or("").contains("compact") {
        tracing::warn!(
                "checkpoint topic \"{}\" on cluster \"{}\" is not compacted (cleanup.policy {}): retention will delete checkpoints a job has not rewritten lately (a paused route's, say). Make it compacted: `kafka-configs.sh --bootstrap-server {} --alter --entity-type topics --entity-name {} --add-config cleanup.policy=compact`",
                topic,
                cluster.name,
                policy.map_or("not set".into(), |p| format!("= {p}")),
                cluster.bootstrap,
                topic
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{partition_key, PartitionCheckpoint, RouteCheckpoint};

    fn checkpoint(next: i64) -> Checkpoint {
        let mut cp = Checkpoint::new("j");
        let mut rc = RouteCheckpoint {
            source_cluster: "src".into(),
            ..Default::default()
        };
        rc.partitions.insert(
            partition_key("orders", 0),
            PartitionCheckpoint {
                next_offset: next,
                first_offset: 0,
                target_cluster: "dst".into(),
                target_topic: "orders".into(),
                target: Default::default(),
                target_start: Default::default(),
                end: None,
                updated_at: format!("t{next}"),
            },
        );
        cp.routes.insert("r".into(), rc);
        cp
    }

    fn store(bootstrap: &str) -> KafkaStore {
        let cluster = ClusterConfig {
            name: "dst".into(),
            bootstrap: bootstrap.into(),
            properties: Default::default(),
        };
        KafkaStore::new(cluster, "cps", "j", Duration::from_secs(10))
    }

    /// On a broker that does not fence transactional producers (the mock), the older holder
    /// can land one write after the newer one claimed. The newer one keeps its own record,
    /// rewrites it at its next save (so compaction keeps it), and the older one is refused
    /// at its next save. The race is forced here by writing as the older holder without its
    /// check, which the CLI test only hits by chance.
    #[test]
    fn a_write_landing_after_a_newer_claim_is_ignored_and_overwritten() {
        let dc = crate::dev_cluster::DevClusters::start(1, 1, &[("cps".to_string(), 1)])
            .expect("mock cluster");
        let bootstrap = dc.bootstraps[0].clone();
        let a = store(&bootstrap);
        a.claim().unwrap();
        a.save(&checkpoint(10)).unwrap();
        let b = store(&bootstrap);
        b.claim().unwrap();
        assert_eq!(
            b.load()
                .unwrap()
                .unwrap()
                .get("r", "orders", 0)
                .unwrap()
                .next_offset,
            10
        );

        // A's write in flight when B claimed: it lands after B's owner record.
        {
            let mut st = a.state.lock().unwrap();
            let key = partition_record_key("j", "r", "orders", 0);
            let stale = st.stored.get(&key).cloned().map(|mut pb| {
                pb.checkpoint.next_offset = 20;
                pb
            });
            let value = seal(a.body(stale));
            a.write(&mut st, 0, &[(key, Some(value))]).unwrap();
        }
        // Every reader (B, and a fresh one) keeps the holder's record. Compaction would
        // drop that earlier record in favour of A's later one, so B writes it again.
        assert_eq!(
            b.load()
                .unwrap()
                .unwrap()
                .get("r", "orders", 0)
                .unwrap()
                .next_offset,
            10
        );
        let fresh = || store(&bootstrap).load().unwrap().unwrap();
        assert_eq!(fresh().get("r", "orders", 0).unwrap().next_offset, 10);
        let before = b.state.lock().unwrap().read_to;
        b.save(&checkpoint(10)).unwrap();
        let last = crate::cluster::consumer(&a.cluster, &[])
            .and_then(|c| crate::cluster::watermarks(&c, "dst", "cps", 0, Duration::from_secs(10)))
            .unwrap()
            .1;
        assert!(
            last > before,
            "B's unchanged position was written again, after A's ({before} -> {last})"
        );
        assert_eq!(fresh().get("r", "orders", 0).unwrap().next_offset, 10);

        // A's next save is refused, naming B.
        let e = a.save(&checkpoint(30)).unwrap_err();
        assert!(matches!(e, CheckpointError::Fenced { .. }), "{e}");
        assert!(e.to_string().contains("was taken over by pid"), "{e}");
        assert_eq!(fresh().get("r", "orders", 0).unwrap().next_offset, 10);
    }

    fn group_store(bootstrap: &str, instance: &str) -> (KafkaStore, std::sync::Arc<Ownership>) {
        group_store_with(bootstrap, instance, Duration::from_secs(10))
    }

    /// A group member's store whose ownership has session timeout `session`.
    fn group_store_with(
        bootstrap: &str,
        instance: &str,
        session: Duration,
    ) -> (KafkaStore, std::sync::Arc<Ownership>) {
        let own = std::sync::Arc::new(Ownership::new(session));
        let cluster = ClusterConfig {
            name: "dst".into(),
            bootstrap: bootstrap.into(),
            properties: Default::default(),
        };
        let s = KafkaStore::for_group(
            cluster,
            "cps",
            "j",
            Duration::from_secs(10),
            instance,
            own.clone(),
        );
        (s, own)
    }

    /// Group mode: the record with the highest epoch stands wherever it lies in the log. A
    /// stale owner's write landing after the new owner's claim is ignored by every reader,
    /// and the stale owner's next save finds the higher epoch, fences the partition and
    /// writes nothing for it.
    #[test]
    fn in_a_group_the_highest_epoch_wins_and_a_stale_owner_is_fenced() {
        let dc = crate::dev_cluster::DevClusters::start(1, 1, &[("cps".to_string(), 1)])
            .expect("mock cluster");
        let bootstrap = dc.bootstraps[0].clone();
        let (a, a_own) = group_store(&bootstrap, "a");
        a.claim().unwrap();
        a_own.own(("orders".into(), 0), 1);
        a.save(&checkpoint(10)).unwrap();

        // b takes the partition above what it read.
        let (b, b_own) = group_store(&bootstrap, "b");
        b.claim().unwrap();
        assert_eq!(b.epoch_of("orders", 0), 1);
        b_own.own(("orders".into(), 0), b.epoch_of("orders", 0) + 1);
        b.save(&checkpoint(10)).unwrap();

        // a's write in flight when b took over lands after b's, at a's (lower) epoch.
        {
            let mut st = a.state.lock().unwrap();
            let key = partition_record_key("j", "r", "orders", 0);
            let mut pb = st.stored.get(&key).cloned().unwrap();
            pb.checkpoint.next_offset = 20;
            let mut body = a.body(Some(pb));
            body.generation = Some(1);
            a.write(&mut st, 0, &[(key, Some(seal(body)))]).unwrap();
        }
        let (fresh, _) = group_store(&bootstrap, "reader");
        let next = |s: &KafkaStore| {
            s.load()
                .unwrap()
                .unwrap()
                .get("r", "orders", 0)
                .unwrap()
                .next_offset
        };
        assert_eq!(next(&fresh), 10, "the stale write does not stand");
        assert_eq!(fresh.epoch_of("orders", 0), 2);

        // a's next save reads b's epoch: fenced, nothing written.
        let high = || {
            crate::cluster::consumer(&a.cluster, &[])
                .and_then(|c| {
                    crate::cluster::watermarks(&c, "dst", "cps", 0, Duration::from_secs(10))
                })
                .unwrap()
                .1
        };
        let before = high();
        a.save(&checkpoint(30)).unwrap();
        assert_eq!(a_own.epoch("orders", 0), None, "no longer a's");
        assert_eq!(a_own.fenced_total(), 1);
        assert_eq!(a_own.take_fenced().len(), 1);
        let after = high();
        assert_eq!(before, after, "a wrote nothing after it was fenced");
        assert_eq!(next(&fresh), 10);

        // b's next save writes its record again, so compaction keeps it over a's stale one.
        b.save(&checkpoint(10)).unwrap();
        let (fresh, _) = group_store(&bootstrap, "reader2");
        assert_eq!(next(&fresh), 10);
    }

    /// Exactly-once in a group: what `stage` writes names the writer's transactional.id and
    /// says when a partition is handed over, so the next owner fences a previous owner only
    /// when it did not hand over; and a member that may have lost a partition is refused a
    /// commit (a higher epoch read, partitions lost, its lease lapsed).
    #[test]
    fn in_a_group_exactly_once_stages_name_the_writer_and_refuse_a_member_that_lost_a_partition() {
        let dc = crate::dev_cluster::DevClusters::start(1, 1, &[("cps".to_string(), 1)])
            .expect("mock cluster");
        let bootstrap = dc.bootstraps[0].clone();
        let eos = |instance: &str| {
            let (s, own) = group_store(&bootstrap, instance);
            (s.with_exactly_once(format!("txn-{instance}")), own)
        };
        // What the data transaction's committer does with staged records.
        let commit = |s: &KafkaStore, cp: &Checkpoint| -> Result<usize, CheckpointError> {
            let staged = s.stage(cp)?.expect("a kafka store stages");
            let n = staged.records.len();
            s.write(
                &mut s.state.lock().unwrap(),
                staged.partition,
                &staged.records,
            )?;
            s.staged_committed(staged);
            Ok(n)
        };
        let tp = ("orders".to_string(), 0);
        let (a, a_own) = eos("a");
        a.claim().unwrap();
        a_own.own(tp.clone(), 1);
        assert_eq!(commit(&a, &checkpoint(10)).unwrap(), 1);
        assert_eq!(
            commit(&a, &checkpoint(10)).unwrap(),
            0,
            "unchanged: nothing staged"
        );

        // b reads a's record: a did not hand the partition over, so b would fence a.
        let (b, b_own) = eos("b");
        b.claim().unwrap();
        assert_eq!(b.unreleased_writers(std::slice::from_ref(&tp)), ["txn-a"]);
        assert!(b.unreleased_writers(&[("orders".into(), 1)]).is_empty());
        assert!(
            a.unreleased_writers(std::slice::from_ref(&tp)).is_empty(),
            "never its own"
        );

        // a hands it over: the same position is written again, released.
        a_own.hand_over([tp.clone()]);
        assert_eq!(commit(&a, &checkpoint(10)).unwrap(), 1);
        b.load().unwrap();
        assert!(b.unreleased_writers(std::slice::from_ref(&tp)).is_empty());

        // b takes it at a higher epoch; a, still believing it owns it at 1, is refused.
        b_own.own(tp.clone(), b.epoch_of("orders", 0) + 1);
        assert_eq!(commit(&b, &checkpoint(10)).unwrap(), 1);
        a_own.own(tp.clone(), 1);
        let e = commit(&a, &checkpoint(30)).unwrap_err();
        assert!(matches!(e, CheckpointError::Taken { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("partition orders/0 was taken by another member at epoch 2"),
            "{e}"
        );
        assert!(e.ends_run());

        // Partitions lost without a handover: refused, whatever was read.
        b_own.mark_lost([tp.clone()]);
        let e = b.stage(&checkpoint(20)).err().expect("refused");
        assert!(e.to_string().contains("without a handover"), "{e}");
        assert!(b.may_commit().is_err());

        // A lapsed lease: refused, at staging and just before the commit.
        let (c, c_own) = {
            let (s, own) = group_store_with(&bootstrap, "c", Duration::from_secs(2));
            (s.with_exactly_once("txn-c".into()), own)
        };
        c.claim().unwrap();
        assert!(c.may_commit().is_ok(), "confirmed at start");
        // No member polls here: nothing confirms the lease after the session timeout.
        std::thread::sleep(c_own.session_timeout() + Duration::from_millis(100));
        let e = c.stage(&checkpoint(20)).err().expect("refused");
        assert!(e.to_string().contains("lease lapsed"), "{e}");
        assert!(c.may_commit().is_err());
    }

    #[test]
    fn keys_name_their_job_and_refuse_what_is_not_ours() {
        assert_eq!(key_job(&owner_key("j")).unwrap(), "j");
        assert_eq!(
            key_job(&partition_record_key("j.2", "r", "t/x", 3)).unwrap(),
            "j.2"
        );
        assert!(key_job(b"hello").is_err());
        assert!(key_job(br#"["kmirror-checkpoint/9","j"]"#)
            .unwrap_err()
            .contains("format"));
        // Names with separators cannot make two keys collide.
        assert_ne!(
            partition_record_key("j", "a/b", "c", 1),
            partition_record_key("j", "a", "b/c", 1)
        );
    }
}
