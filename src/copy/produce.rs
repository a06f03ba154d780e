//! Produce: one idempotent producer per target cluster, shared by every copy task writing
//! there. Each record carries a boxed `InFlight` (reader, task, generation, source offset,
//! size) as its delivery opaque; the delivery callback sends it back to the reader that owns
//! the task, which settles it in the ack tracker. (`ThreadedProducer` with a callback rather
//! than `FutureProducer`: no oneshot per record, about 2.5x cheaper.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::Message;

use crate::cluster::{ClusterError, QuietContext};
use crate::config::{ClusterConfig, Limits};

/// What travels with a record through the producer.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub reader: u32,
    pub task: u32,
    /// The task's generation when produced; reports from before a rewind are stale.
    pub generation: u32,
    pub offset: i64,
    pub bytes: u32,
    /// A write to the route's dead-letter topic rather than the copy itself.
    pub dead_letter: bool,
    /// The source record's timestamp: a refused record's delivery report does not carry it,
    /// and its dead-letter copy must keep it.
    pub timestamp: Option<i64>,
}

/// A delivery outcome on its way back to the reader.
#[derive(Debug)]
pub struct DeliveryReport {
    pub inflight: Box<InFlight>,
    /// Target (partition, offset), or the error.
    pub result: Result<(i32, i64), KafkaError>,
    /// The refused record itself, so it can be dead-lettered without reading it again.
    pub failed: Option<OwnedMessage>,
}

/// How a failed delivery is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The target will never accept this record (too large, invalid, refused by policy, not
    /// authorized, or any error not known to be transient): the route's `on_error` decides.
    Permanent,
    /// The producer instance is unusable (e.g. idempotence fenced): recreate it.
    Fatal,
    /// Worth retrying (timeouts, transport errors, leader changes): see [`RETRIABLE`].
    Retriable,
    /// The target topic or partition is not known to the target. Transient right after the
    /// topic was created (metadata not yet propagated), permanent if it is gone: retried at
    /// most [`MISSING_TOPIC_ATTEMPTS`] times in a row without progress, then permanent.
    Missing,
}

/// Errors worth retrying from the acknowledged position. Everything not listed here (and not
/// fatal) is permanent for the record, so a refusal can never be retried forever (the
/// explicit-list approach of Vector's Kafka sink). Each entry says why it is transient:
///
/// - `MessageTimedOut`: librdkafka gave up after `message.timeout.ms` (target unreachable or
///   too slow); the record itself is fine.
/// - `BrokerTransportFailure`, `AllBrokersDown`, `Resolve`, `NetworkException`: the
///   connection, not the record; brokers come back.
/// - `QueueFull`: the local producer queue is full; it drains.
/// - `RequestTimedOut`, `OperationTimedOut`, `TimedOutQueue`: a slow broker or client.
/// - `NotLeaderForPartition` (NOT_LEADER_OR_FOLLOWER), `LeaderNotAvailable`,
///   `BrokerNotAvailable`, `ReplicaNotAvailable`, `PreferredLeaderNotAvailable`,
///   `FencedLeaderEpoch`, `UnknownLeaderEpoch`, `NotController`: leadership moves settle.
/// - `NotEnoughReplicas`, `NotEnoughReplicasAfterAppend`: the ISR shrank below
///   `min.insync.replicas` for a while; the broker refuses until replicas catch up.
/// - `KafkaStorageError`: a log directory went offline; leadership moves to another replica.
/// - `ThrottlingQuotaExceeded`: a quota; it refills.
/// - `CoordinatorLoadInProgress`, `CoordinatorNotAvailable`, `NotCoordinator`: a coordinator
///   moving or loading (idempotent producer id lookups).
/// - `PurgeQueue`, `PurgeInflight`: kmirror's own producer was purged (being recreated or
///   dropped); nothing is wrong with the record.
/// - `Retry`: librdkafka's own "retry this" marker.
pub const RETRIABLE: &[RDKafkaErrorCode] = {
    use RDKafkaErrorCode::*;
    &[
        MessageTimedOut,
        BrokerTransportFailure,
        AllBrokersDown,
        Resolve,
        NetworkException,
        QueueFull,
        RequestTimedOut,
        OperationTimedOut,
        TimedOutQueue,
        NotLeaderForPartition,
        LeaderNotAvailable,
        BrokerNotAvailable,
        ReplicaNotAvailable,
        PreferredLeaderNotAvailable,
        FencedLeaderEpoch,
        UnknownLeaderEpoch,
        NotController,
        NotEnoughReplicas,
        NotEnoughReplicasAfterAppend,
        KafkaStorageError,
        ThrottlingQuotaExceeded,
        CoordinatorLoadInProgress,
        CoordinatorNotAvailable,
        NotCoordinator,
        PurgeQueue,
        PurgeInflight,
        Retry,
    ]
};

/// The producer instance cannot be used any more; recreate it and resume from the
/// acknowledged positions (what it held is lost with it).
const FATAL: &[RDKafkaErrorCode] = {
    use RDKafkaErrorCode::*;
    &[
        Fatal,
        ProducerFenced,
        InvalidProducerEpoch,
        OutOfOrderSequenceNumber,
        UnknownProducerId,
        InvalidProducerIdMapping,
    ]
};

/// How many times in a row (without progress) a record whose target topic or partition is
/// unknown is retried before it counts as refused for good.
pub const MISSING_TOPIC_ATTEMPTS: u32 = 8;

pub fn classify(err: &KafkaError, producer_fatal: bool) -> FailureKind {
    use RDKafkaErrorCode::*;
    if producer_fatal {
        return FailureKind::Fatal;
    }
    let code = match err {
        KafkaError::MessageProduction(c) => *c,
        // No error code at all: nothing says it would succeed next time.
        other => match other.rdkafka_error_code() {
            Some(c) => c,
            None => return FailureKind::Permanent,
        },
    };
    if FATAL.contains(&code) {
        FailureKind::Fatal
    } else if RETRIABLE.contains(&code) {
        FailureKind::Retriable
    } else if matches!(code, UnknownTopicOrPartition | UnknownTopic) {
        FailureKind::Missing
    } else {
        FailureKind::Permanent
    }
}

/// First delay after a retriable target error.
pub const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(200);
/// The longest delay between two retries.
pub const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Retry delays after retriable target errors: exponential (doubling from
/// [`RETRY_BACKOFF_INITIAL`] up to [`RETRY_BACKOFF_CAP`]) with jitter (each delay is drawn
/// from the upper half, `[d/2, d]`, so readers retrying the same target spread out). Only
/// progress (an acknowledgement that moves a position) resets it, so an outage backs off
/// to the cap instead of hammering the target every 200 ms.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay for retry number `attempt` (0-based), `unit` in `[0, 1]` picking where in
    /// the jitter range it falls.
    pub fn delay(attempt: u32, unit: f64) -> Duration {
        let full = RETRY_BACKOFF_INITIAL
            .saturating_mul(1u32 << attempt.min(16))
            .min(RETRY_BACKOFF_CAP);
        full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// The delay before the next retry; each call without a `reset` grows it.
    pub fn next_delay(&mut self) -> Duration {
        let d = Self::delay(self.attempt, jitter_unit());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Progress was made: the next error starts again from the initial delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A number in `[0, 1)` that differs between calls and processes (no RNG dependency: the
/// std hasher is randomly keyed per process, and the clock differs per call).
fn jitter_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// One target cluster's health, shared by every reader writing there and by its producer's
/// error callback: the first delivery failure or broker error of an episode is logged once
/// (warn, with the reason and where it was seen), the recovery once, with how long it took
/// and how many records were sent again.
pub struct TargetHealth {
    cluster: String,
    /// Fast path for `ok`, called on every acknowledgement.
    troubled: AtomicBool,
    episode: Mutex<Option<Episode>>,
}

struct Episode {
    since: Instant,
    resent: u64,
    /// The error that started it (for stall reasons and `/status`).
    reason: String,
}

impl TargetHealth {
    pub fn new(cluster: &str) -> Self {
        TargetHealth {
            cluster: cluster.to_string(),
            troubled: AtomicBool::new(false),
            episode: Mutex::new(None),
        }
    }

    /// Something failed on the way to this target; `context` says where (may be empty).
    pub fn trouble(&self, reason: &str, context: &str) {
        let mut ep = self.episode.lock().expect("target health lock");
        if ep.is_none() {
            *ep = Some(Episode {
                since: Instant::now(),
                resent: 0,
                reason: reason.to_string(),
            });
            self.troubled.store(true, Ordering::Relaxed);
            let at = if context.is_empty() {
                String::new()
            } else {
                format!(" ({context})")
            };
            tracing::warn!(
                cluster = %self.cluster,
                "target {} is failing{at}: {reason}; retrying with backoff from the acknowledged positions (logged once until it recovers)",
                self.cluster
            );
        }
    }

    /// `n` records are being sent again because of this episode.
    pub fn resent(&self, n: u64) {
        if let Some(ep) = self.episode.lock().expect("target health lock").as_mut() {
            ep.resent += n;
        }
    }

    /// A record was acknowledged: an open episode is over.
    pub fn ok(&self) {
        if !self.troubled.load(Ordering::Relaxed) {
            return;
        }
        let ep = self.episode.lock().expect("target health lock").take();
        self.troubled.store(false, Ordering::Relaxed);
        if let Some(ep) = ep {
            tracing::warn!(
                cluster = %self.cluster,
                "target {} recovered after {:.1} s, {} records re-sent",
                self.cluster,
                ep.since.elapsed().as_secs_f64(),
                ep.resent
            );
        }
    }

    pub fn troubled(&self) -> bool {
        self.troubled.load(Ordering::Relaxed)
    }

    /// While an episode is open: what failed and for how long, in a sentence.
    pub fn trouble_reason(&self) -> Option<String> {
        if !self.troubled() {
            return None;
        }
        let ep = self.episode.lock().expect("target health lock");
        ep.as_ref().map(|ep| {
            format!(
                "target {} failing for {:.0}s: {}",
                self.cluster,
                ep.since.elapsed().as_secs_f64(),
                ep.reason
            )
        })
    }
}

/// Routes delivery reports back to their readers; logs quietly like `QuietContext`.
pub struct DeliveryContext {
    quiet: QuietContext,
    readers: Arc<Vec<Sender<DeliveryReport>>>,
    health: Arc<TargetHealth>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.quiet.log(level, fac, log_message)
    }

    /// librdkafka reports broker disconnects, "all brokers down" and resolve failures here,
    /// long before any delivery times out: the start of an episode for this target.
    fn error(&self, error: KafkaError, reason: &str) {
        use RDKafkaErrorCode::*;
        if matches!(
            error.rdkafka_error_code(),
            Some(AllBrokersDown | BrokerTransportFailure | Resolve)
        ) {
            self.health.trouble(&format!("{error}: {reason}"), "");
        }
        self.quiet.error(error, reason)
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, inflight: Box<InFlight>) {
        let (result, failed) = match result {
            Ok(m) => (Ok((m.partition(), m.offset())), None),
            Err((e, m)) => (Err(e.clone()), Some(m.detach())),
        };
        let reader = inflight.reader as usize;
        // No reader: a checkpoint record of an exactly-once transaction, whose failure
        // fails the commit (`super::transaction`). A closed channel means the reader
        // finished; its records are no longer tracked.
        let Some(tx) = self.readers.get(reader) else {
            return;
        };
        let _ = tx.send(DeliveryReport {
            inflight,
            result,
            failed,
        });
    }
}

pub type TargetProducer = ThreadedProducer<DeliveryContext>;

/// The librdkafka settings of a target producer: kmirror's defaults, then the cluster's
/// properties, then what the guarantees require.
pub fn producer_config(cluster: &ClusterConfig, limits: &Limits) -> ClientConfig {
    let mut c = ClientConfig::new();
    // The producer's own queue must hold everything kmirror lets be in flight, so the
    // in-flight bound (not QueueFull) is what slows reading.
    let queue_kb = (limits.max_in_flight_bytes / 1024 * 2).clamp(16 * 1024, 2_097_151);
    c.set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.kbytes", queue_kb.to_string())
        .set("queue.buffering.max.messages", "2000000")
        // Java-compatible placement for partitioning = "key".
        .set("partitioner", "murmur2_random");
    let user = crate::cluster::base_config(cluster);
    for (k, v) in user.config_map() {
        c.set(k, v);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    c
}

struct Slot {
    generation: u64,
    producer: Arc<TargetProducer>,
}

/// Exactly-once: the one target cluster whose producer is transactional, and its id.
#[derive(Debug, Clone)]
pub struct Transactional {
    pub cluster: String,
    pub id: String,
    /// `transaction.timeout.ms`: the broker aborts a transaction left open this long.
    pub timeout: Duration,
    /// Bound on InitProducerId and the first BeginTransaction.
    pub init_timeout: Duration,
}

/// Producers by target cluster, recreated on a fatal error (never the transactional one:
/// a fatal error there ends the run, `super::transaction`).
pub struct ProducerPool {
    clusters: BTreeMap<String, ClusterConfig>,
    transactional: Option<Transactional>,
    limits: Limits,
    readers: Arc<Vec<Sender<DeliveryReport>>>,
    slots: BTreeMap<String, Mutex<Slot>>,
    /// By cluster; kept across producer recreation.
    health: BTreeMap<String, Arc<TargetHealth>>,
}

impl ProducerPool {
    pub fn new(
        clusters: BTreeMap<String, ClusterConfig>,
        limits: Limits,
        readers: Vec<Sender<DeliveryReport>>,
        transactional: Option<Transactional>,
    ) -> Result<Self, ClusterError> {
        let mut pool = ProducerPool {
            clusters,
            transactional,
            limits,
            readers: Arc::new(readers),
            slots: BTreeMap::new(),
            health: BTreeMap::new(),
        };
        let names: Vec<String> = pool.clusters.keys().cloned().collect();
        for name in &names {
            pool.health
                .insert(name.clone(), Arc::new(TargetHealth::new(name)));
        }
        for name in names {
            let producer = Arc::new(pool.create(&name)?);
            pool.slots.insert(
                name,
                Mutex::new(Slot {
                    generation: 0,
                    producer,
                }),
            );
        }
        Ok(pool)
    }

    fn create(&self, name: &str) -> Result<TargetProducer, ClusterError> {
        let cluster = &self.clusters[name];
        let mut config = producer_config(cluster, &self.limits);
        let txn = self.transactional.as_ref().filter(|t| t.cluster == name);
        if let Some(t) = txn {
            config
                .set("transactional.id", &t.id)
                .set("transaction.timeout.ms", t.timeout.as_millis().to_string());
        }
        let producer: TargetProducer = config
            .create_with_context(DeliveryContext {
                quiet: QuietContext {
                    cluster: name.to_string(),
                },
                readers: self.readers.clone(),
                health: self.health[name].clone(),
            })
            .map_err(|e| ClusterError::Client {
                cluster: name.to_string(),
                detail: crate::cluster::client_error_detail(&e),
            })?;
        if let Some(t) = txn {
            // InitProducerId fences every earlier producer with this id (a crashed or
            // paused previous run) and aborts its open transaction; then the first
            // transaction opens, so every record the readers produce is inside one.
            let fail = |what: &str, e: KafkaError| ClusterError::Client {
                cluster: name.to_string(),
                detail: format!("transactional.id \"{}\": {what} failed: {e}", t.id),
            };
            producer
                .init_transactions(t.init_timeout)
                .map_err(|e| fail("InitProducerId", e))?;
            producer
                .begin_transaction()
                .map_err(|e| fail("BeginTransaction", e))?;
        }
        Ok(producer)
    }

    /// Exactly-once: the transactional producer and its settings.
    pub fn transactional(&self) -> Option<(&Transactional, Arc<TargetProducer>)> {
        let t = self.transactional.as_ref()?;
        Some((t, self.get(&t.cluster).1))
    }

    /// The current producer for `cluster` and its generation.
    pub fn get(&self, cluster: &str) -> (u64, Arc<TargetProducer>) {
        let slot = self.slots[cluster].lock().expect("producer slot lock");
        (slot.generation, slot.producer.clone())
    }

    pub fn generation(&self, cluster: &str) -> u64 {
        self.slots[cluster]
            .lock()
            .expect("producer slot lock")
            .generation
    }

    /// Replaces the producer for `cluster` unless someone already did since `seen`.
    pub fn recreate(
        &self,
        cluster: &str,
        seen: u64,
    ) -> Result<(u64, Arc<TargetProducer>), ClusterError> {
        let mut slot = self.slots[cluster].lock().expect("producer slot lock");
        if self
            .transactional
            .as_ref()
            .is_some_and(|t| t.cluster == cluster)
        {
            // A new instance would fence this one mid-transaction; the commit fails and the
            // run ends instead (`super::transaction`).
            return Ok((slot.generation, slot.producer.clone()));
        }
        if slot.generation == seen {
            tracing::warn!(
                cluster,
                "recreating the target producer after a fatal error"
            );
            slot.producer = Arc::new(self.create(cluster)?);
            slot.generation += 1;
        }
        Ok((slot.generation, slot.producer.clone()))
    }

    /// Waits (bounded) until every producer has delivered what it holds.
    pub fn flush(&self, timeout: Duration) {
        for slot in self.slots.values() {
            let p = slot.lock().expect("producer slot lock").producer.clone();
            let _ = p.flush(timeout);
        }
    }

    /// The health (outage episodes) of target `cluster`.
    /// A health entry for a target that has no producer (an archive), so everything that
    /// shows targets' health shows it too.
    pub fn add_health(&mut self, cluster: &str) {
        self.health
            .insert(cluster.to_string(), Arc::new(TargetHealth::new(cluster)));
    }

    pub fn health(&self, cluster: &str) -> &Arc<TargetHealth> {
        &self.health[cluster]
    }

    pub fn is_fatal(&self, cluster: &str) -> bool {
        let (_, p) = self.get(cluster);
        p.client().fatal_error().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets_only_on_reset() {
        let full = |a| Backoff::delay(a, 1.0);
        assert_eq!(full(0), RETRY_BACKOFF_INITIAL);
        assert_eq!(full(1), RETRY_BACKOFF_INITIAL * 2);
        assert_eq!(full(3), RETRY_BACKOFF_INITIAL * 8);
        assert_eq!(full(20), RETRY_BACKOFF_CAP);
        assert_eq!(full(u32::MAX), RETRY_BACKOFF_CAP);
        assert_eq!(
            Backoff::delay(2, 0.0),
            RETRY_BACKOFF_INITIAL * 2,
            "half of 800 ms"
        );
        let mut b = Backoff::default();
        let mut last = Duration::ZERO;
        for n in 0..12 {
            let d = b.next_delay();
            let top = Backoff::delay(n, 1.0);
            assert!(
                d >= top / 2 && d <= top,
                "attempt {n}: {d:?} not in [{:?}, {top:?}]",
                top / 2
            );
            assert!(d <= RETRY_BACKOFF_CAP);
            last = d;
        }
        assert!(last >= RETRY_BACKOFF_CAP / 2, "grew to the cap: {last:?}");
        b.reset();
        assert!(b.next_delay() <= RETRY_BACKOFF_INITIAL);
    }

    #[test]
    fn only_listed_errors_are_retried() {
        use RDKafkaErrorCode::*;
        let kind = |c| classify(&KafkaError::MessageProduction(c), false);
        for c in [
            MessageTimedOut,
            AllBrokersDown,
            BrokerTransportFailure,
            NotLeaderForPartition,
            NotEnoughReplicas,
            RequestTimedOut,
        ] {
            assert_eq!(kind(c), FailureKind::Retriable, "{c:?}");
        }
        for c in [
            InvalidTimestamp,
            PolicyViolation,
            UnsupportedCompressionType,
            InvalidRecord,
            MessageSizeTooLarge,
            TopicAuthorizationFailed,
            Unknown,
            Fail,
        ] {
            assert_eq!(kind(c), FailureKind::Permanent, "{c:?}");
        }
        assert_eq!(kind(UnknownTopicOrPartition), FailureKind::Missing);
        assert_eq!(kind(OutOfOrderSequenceNumber), FailureKind::Fatal);
        assert_eq!(
            classify(&KafkaError::MessageProduction(MessageTimedOut), true),
            FailureKind::Fatal
        );
    }
}
