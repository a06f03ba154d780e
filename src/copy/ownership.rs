//! Who owns which source partition when replicas share a job (`[group]`).
//!
//! The group. Each replica runs a group member: an rdkafka consumer on the source cluster,
//! subscribed to the routes' topics with the job's `group.id`, the cooperative-sticky
//! assignor and `group.instance.id` (static membership). It is used for assignment only:
//! it never commits offsets and its fetched records are never read (its partitions are
//! paused); the data path keeps its own manually assigned reader. The member polls on a
//! thread of its own that never waits on copying, so a slow target cannot get it removed
//! from the group; only a revocation waits, bounded, for the revoked partitions to drain.
//!
//! Assign: the engine re-reads the checkpoint topic (another member may have written since),
//! takes each partition at an ownership epoch above every generation recorded for it, writes
//! that claim, and starts the partition's tasks from the checkpoint. Revoke: the engine stops
//! reading the partitions, waits for their in-flight records (at most `[run]
//! shutdown_timeout`), writes their checkpoint, then lets them go; the rebalance callback
//! returns only then.
//!
//! Fencing. Every checkpoint record carries its writer's epoch and, read back, the highest
//! epoch wins, so a stale owner's late write never replaces the new owner's. Before each
//! write a member reads what others wrote: a higher epoch on a partition it believes it owns
//! means another member took it, and the partition stops here (`fenced`: logged at warn,
//! counted, shown as the task's state). And a stale owner copies nothing: the reader reads
//! only under a lease the member renews after each poll; a member that was not polling for
//! longer than the session timeout (a paused process, a long GC, a lost network) holds no
//! lease until the group has told it again what it owns.
//!
//! Exactly-once (`[delivery] guarantee = "exactly_once"`): see `GroupEngine`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A source partition, as the group assigns it.
pub type SourcePartition = (String, i32);

/// The ownership table one replica's engine, reader and checkpoint store share.
pub struct Ownership {
    session_timeout: Duration,
    /// Partition -> the epoch this member took it at.
    owned: Mutex<BTreeMap<SourcePartition, i64>>,
    /// Partitions the store found taken at a higher epoch, for the engine to stop.
    fenced: Mutex<Vec<(SourcePartition, i64, i64)>>,
    fenced_total: AtomicU64,
    lease: Mutex<Lease>,
    /// The group fenced this member itself: another replica joined with the same instance id.
    instance_fenced: AtomicBool,
    /// Exactly-once: partitions whose next checkpoint record hands them over (a revocation,
    /// or the final commit of a clean stop), so the next owner need not fence this member.
    releasing: Mutex<BTreeSet<SourcePartition>>,
    /// Exactly-once: partitions the group took without a handover; the open transaction
    /// must not commit (`KafkaStore::stage`).
    lost: Mutex<BTreeSet<SourcePartition>>,
}

struct Lease {
    /// When the member last confirmed its membership (a poll with nothing revoked).
    confirmed: Instant,
    /// Since when the member waits to be told again what it owns (it was not polling for
    /// longer than the session timeout); no lease meanwhile.
    suspended: Option<Instant>,
}

impl Ownership {
    pub fn new(session_timeout: Duration) -> Self {
        Ownership {
            session_timeout,
            owned: Mutex::new(BTreeMap::new()),
            fenced: Mutex::new(Vec::new()),
            fenced_total: AtomicU64::new(0),
            lease: Mutex::new(Lease {
                confirmed: Instant::now(),
                suspended: None,
            }),
            instance_fenced: AtomicBool::new(false),
            releasing: Mutex::new(BTreeSet::new()),
            lost: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn session_timeout(&self) -> Duration {
        self.session_timeout
    }

    /// The epoch this member holds `topic`/`partition` at, if it owns it.
    pub fn epoch(&self, topic: &str, partition: i32) -> Option<i64> {
        self.owned
            .lock()
            .expect("ownership lock")
            .get(&(topic.to_string(), partition))
            .copied()
    }

    pub fn owned(&self) -> Vec<(SourcePartition, i64)> {
        let owned = self.owned.lock().expect("ownership lock");
        owned.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub(crate) fn own(&self, tp: SourcePartition, epoch: i64) {
        self.owned.lock().expect("ownership lock").insert(tp, epoch);
    }

    pub(crate) fn release(&self, tp: &SourcePartition) {
        self.owned.lock().expect("ownership lock").remove(tp);
        self.releasing.lock().expect("ownership lock").remove(tp);
        self.lost.lock().expect("ownership lock").remove(tp);
    }

    /// Exactly-once: the next checkpoint records of `tps` hand them over (`Body::released`).
    pub(crate) fn hand_over(&self, tps: impl IntoIterator<Item = SourcePartition>) {
        self.releasing.lock().expect("ownership lock").extend(tps);
    }

    /// Exactly-once: every partition this member owns is handed over by the next commit
    /// (the last of a clean stop).
    pub fn hand_over_all(&self) {
        let owned: Vec<SourcePartition> = self.owned().into_iter().map(|(tp, _)| tp).collect();
        self.hand_over(owned);
    }

    pub(crate) fn is_releasing(&self, tp: &SourcePartition) -> bool {
        self.releasing.lock().expect("ownership lock").contains(tp)
    }

    /// Exactly-once: the group took `tps` without a handover.
    pub(crate) fn mark_lost(&self, tps: impl IntoIterator<Item = SourcePartition>) {
        self.lost.lock().expect("ownership lock").extend(tps);
    }

    /// Partitions the group took without a handover (exactly-once only; see `mark_lost`).
    pub(crate) fn lost(&self) -> Vec<SourcePartition> {
        self.lost
            .lock()
            .expect("ownership lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The store read `seen`, above this member's epoch: another member took the partition.
    /// It stops being ours at once (no further checkpoint write for it); the engine stops
    /// its tasks at its next turn.
    pub fn fence(&self, tp: SourcePartition, seen: i64) {
        let Some(ours) = self.owned.lock().expect("ownership lock").remove(&tp) else {
            return;
        };
        self.fenced_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            topic = %tp.0, partition = tp.1,
            "fenced: partition {}/{} was taken by another member at epoch {seen} (ours: {ours}); this member stops copying it and writes no checkpoint for it",
            tp.0, tp.1
        );
        self.fenced
            .lock()
            .expect("ownership lock")
            .push((tp, ours, seen));
    }

    /// Partitions fenced since the last call: (partition, our epoch, the epoch seen).
    pub(crate) fn take_fenced(&self) -> Vec<(SourcePartition, i64, i64)> {
        std::mem::take(&mut *self.fenced.lock().expect("ownership lock"))
    }

    /// Partitions fenced over the run.
    pub fn fenced_total(&self) -> u64 {
        self.fenced_total.load(Ordering::Relaxed)
    }

    /// Whether the reader may copy now: membership confirmed within the session timeout.
    pub fn lease_valid(&self) -> bool {
        if self.instance_fenced.load(Ordering::Relaxed) {
            return false;
        }
        let l = self.lease.lock().expect("lease lock");
        l.suspended.is_none() && l.confirmed.elapsed() < self.session_timeout
    }

    /// The member polled and nothing was revoked. After a silence longer than the session
    /// timeout the group has likely given our partitions away: no lease until it says what
    /// we own (`reassured`), or until a whole session timeout of polling passed without the
    /// group taking anything (then we are still a member and kept everything).
    pub(crate) fn polled(&self, silent_for: Duration) {
        let mut l = self.lease.lock().expect("lease lock");
        let now = Instant::now();
        if silent_for >= self.session_timeout && l.suspended.is_none() {
            tracing::warn!(
                "the group member was not heard for {} (session timeout {}): copying waits until the group confirms what this member owns",
                humantime::format_duration(round(silent_for)),
                humantime::format_duration(self.session_timeout)
            );
            l.suspended = Some(now);
        }
        match l.suspended {
            Some(since) if since.elapsed() < self.session_timeout => {}
            _ => {
                l.suspended = None;
                l.confirmed = now;
            }
        }
    }

    /// The group told this member what it owns (an assignment): the lease is renewed.
    pub(crate) fn reassured(&self) {
        let mut l = self.lease.lock().expect("lease lock");
        l.suspended = None;
        l.confirmed = Instant::now();
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// The state of a partition no member assigned to this one yet.
pub const NOT_ASSIGNED: &str = "not assigned to this member";

/// What the group member tells the engine.
pub enum GroupEvent {
    /// These partitions are ours now.
    Assigned(Vec<SourcePartition>),
    /// These are no longer ours (`lost`: taken without a handover, e.g. after a session
    /// timeout). The member waits for `done` before librdkafka lets them go.
    Revoked {
        partitions: Vec<SourcePartition>,
        lost: bool,
        done: Sender<()>,
    },
}

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientContext;

use super::discovery::{Applier, LayoutChange};
use super::task::{CopyTask, TaskStatus};
use super::transaction::{self, TxnError};
use super::Shared;
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::cluster::{self, ClusterError, QuietContext};
use crate::config::{ClusterConfig, Config, GroupSettings, RouteConfig, StoreSettings};
use crate::observe::Observer;
use crate::plan::{Plan, StartFrom, TaskPlan};

fn partitions_of(tpl: &TopicPartitionList) -> Vec<SourcePartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// The member's rdkafka context: rebalances become `GroupEvent`s.
struct MemberContext {
    quiet: QuietContext,
    events: Sender<GroupEvent>,
    ownership: Arc<Ownership>,
    /// Bound on waiting for the engine to hand revoked partitions over.
    handover: Duration,
    /// Time spent in rebalance callbacks during the current poll (not silence).
    in_callbacks: Mutex<Duration>,
}

impl ClientContext for MemberContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.quiet.log(level, fac, log_message)
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Another replica joined with our group.instance.id: the group fenced us for good
        // (librdkafka's consumer is unusable after it). Copying stops at once.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::FencedInstanceId)
            && !self.ownership.instance_fenced.swap(true, Ordering::Relaxed)
        {
            tracing::error!(cluster = %self.quiet.cluster, "the group fenced this replica: another one joined with the same instance_id ({reason}); this one stops copying and ends");
        }
        self.quiet.error(error, reason)
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = partitions_of(tpl);
                if partitions.is_empty() {
                    return;
                }
                let started = Instant::now();
                let (done, wait) = crossbeam_channel::bounded(1);
                let lost = consumer.assignment_lost();
                // A handover is the group talking to a member in good standing: the lease
                // starts again here, so the engine's drain and write (exactly-once: its
                // commit, which refuses a lapsed lease) get a whole session timeout.
                if !lost {
                    self.ownership.reassured();
                }
                // Waits (bounded) until the engine stopped them, drained what was in flight
                // and wrote their checkpoint: only then does librdkafka let them go. With
                // the cooperative protocol only the partitions that move are revoked, and
                // the rest keep copying meanwhile.
                if self
                    .events
                    .send(GroupEvent::Revoked {
                        partitions,
                        lost,
                        done,
                    })
                    .is_ok()
                {
                    let _ = wait.recv_timeout(self.handover);
                }
                *self.in_callbacks.lock().expect("callback clock") += started.elapsed();
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(cluster = %self.quiet.cluster, "group rebalance error: {e}")
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // The member never reads its partitions (the data path does): keep librdkafka
            // from fetching them.
            if tpl.count() > 0 {
                let _ = consumer.pause(tpl);
            }
            self.ownership.reassured();
            let _ = self.events.send(GroupEvent::Assigned(partitions_of(tpl)));
        }
    }
}

/// What the member subscribes to: the topics `routes` name, and the topics the run copies
/// (`copied`: a `topic_regex`'s matches as discovery found them). Always names, never a
/// regex: librdkafka reads a subscription regex as POSIX, which a route's (Rust) regex is
/// not; discovery finds the matches and the subscription follows them.
pub fn subscription<'a>(
    routes: impl Iterator<Item = &'a RouteConfig>,
    copied: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut topics: Vec<String> = routes.flat_map(|r| r.topics.iter().cloned()).collect();
    topics.extend(copied.map(str::to_string));
    topics.sort();
    topics.dedup();
    topics
}

/// The group member: its consumer lives on its own thread (see the module doc).
pub struct Member {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A reload's new subscription, taken by the member's thread.
    resubscribe: Sender<Vec<String>>,
}

impl Member {
    /// Joins the group on `g.cluster`, subscribed to `topics` (`subscription`).
    pub fn start(
        config: &Config,
        g: &GroupSettings,
        topics: Vec<String>,
        ownership: Arc<Ownership>,
        events: Sender<GroupEvent>,
    ) -> Result<Member, ClusterError> {
        let cluster = &config.clusters[&g.cluster];
        let session_ms = g.session_timeout.as_millis().max(1).to_string();
        let heartbeat_ms = (g.session_timeout.as_millis() / 3).max(100).to_string();
        let handover = config.run.shutdown_timeout + config.run.connect_timeout;
        // A revocation may wait for the handover inside poll: the poll interval bound must
        // exceed it, or librdkafka leaves the group itself.
        let max_poll_ms = (handover.as_millis() as u64 * 2 + 60_000).to_string();
        let mut c = cluster::base_config(cluster);
        c.set("group.id", &g.id)
            .set("group.instance.id", &g.instance_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", &session_ms)
            .set("heartbeat.interval.ms", &heartbeat_ms)
            .set("max.poll.interval.ms", &max_poll_ms)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("queued.max.messages.kbytes", "64")
            .set("enable.partition.eof", "false")
            // New partitions of subscribed topics (and topics matching a route's regex) are
            // assigned once the member's metadata shows them: as often as discovery looks.
            .set(
                "topic.metadata.refresh.interval.ms",
                config
                    .run
                    .metadata_refresh
                    .as_millis()
                    .max(1000)
                    .to_string(),
            );
        let consumer: BaseConsumer<MemberContext> = c
            .create_with_context(MemberContext {
                quiet: QuietContext {
                    cluster: cluster.name.clone(),
                },
                events,
                ownership: ownership.clone(),
                handover,
                in_callbacks: Mutex::new(Duration::ZERO),
            })
            .map_err(|e| ClusterError::Client {
                cluster: cluster.name.clone(),
                detail: cluster::client_error_detail(&e),
            })?;
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| ClusterError::Client {
                cluster: cluster.name.clone(),
                detail: format!("cannot join group \"{}\": {e}", g.id),
            })?;
        tracing::info!(
            cluster = %cluster.name,
            "joining group \"{}\" as instance \"{}\" (session timeout {}), topics [{}]",
            g.id,
            g.instance_id,
            humantime::format_duration(g.session_timeout),
            topics.join(", ")
        );
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (resubscribe, subscriptions) = crossbeam_channel::unbounded::<Vec<String>>();
        let mut subscribed = topics.clone();
        let group = g.id.clone();
        let thread = std::thread::Builder::new()
            .name("kmirror-group".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    // A reload changed the routes, or discovery found (or lost) a topic: the
                    // group rebalances on the new topics (cooperative: only the partitions
                    // that come or go move).
                    if let Some(topics) = subscriptions.try_iter().last() {
                        if topics != subscribed {
                            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                            match consumer.subscribe(&refs) {
                                Ok(()) => {
                                    tracing::info!(
                                        "group \"{group}\": subscribed now to [{}]",
                                        topics.join(", ")
                                    );
                                    subscribed = topics;
                                }
                                Err(e) => tracing::warn!(
                                    "group \"{group}\": cannot subscribe to [{}] ({e}); the member stays on [{}] until the next reload or restart",
                                    topics.join(", "),
                                    subscribed.join(", ")
                                ),
                            }
                        }
                    }
                    // Records never come (every partition is paused); poll serves the
                    // rebalance callbacks and errors.
                    let _ = consumer.poll(Duration::from_millis(100));
                    let spent = std::mem::take(
                        &mut *consumer
                            .context()
                            .in_callbacks
                            .lock()
                            .expect("callback clock"),
                    );
                    ownership.polled(last.elapsed().saturating_sub(spent));
                    last = Instant::now();
                }
                // Closing revokes locally; with static membership the group keeps our
                // partitions for us until the session timeout (a restart moves nothing).
                drop(consumer);
            })
            .expect("spawn the group member thread");
        Ok(Member {
            stop,
            thread: Some(thread),
            resubscribe,
        })
    }

    /// Where a reload sends the member its new subscription (`subscription`).
    pub fn resubscriber(&self) -> Sender<Vec<String>> {
        self.resubscribe.clone()
    }

    /// Leaves: after the final checkpoint (the partitions are still ours while it is
    /// written).
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a checkpoint the engine writes at once (its claims, a revocation's handover) failed.
#[derive(Debug)]
pub enum CheckpointNowError {
    /// At-least-once: the store's write failed; logged, and the next save writes it.
    Failed(CheckpointError),
    /// Exactly-once: the commit failed and its transaction was aborted: the run ends.
    Ended(TxnError),
}

/// Writes the checkpoint of the plan at once: the store's own save at-least-once; exactly-
/// once, a commit of the open data transaction with it (`super::transaction::Committer`),
/// because the positions of partitions handed over must commit together with their
/// records (the store's producer would commit them while the records are still in the
/// open transaction, which a crash then loses).
pub type CheckpointNow<'a> = dyn FnMut(&Plan) -> Result<(), CheckpointNowError> + 'a;

/// The engine's side: turns the member's events into started and released tasks. Runs on
/// the supervising loop, which owns the task list.
///
/// Exactly-once (`[delivery] guarantee = "exactly_once"`): every checkpoint it writes is a
/// commit of the data transaction (`CheckpointNow`); a revocation's commit marks the
/// partitions handed over, and a partition lost without a handover stops the run (the open
/// transaction holds its records: `KafkaStore::stage` refuses to commit it). Taking a
/// partition whose standing record a previous owner wrote without handing it over, the
/// engine first fences that owner's transactional producer (on a broker that fences, its
/// open transaction is aborted and it can never commit again), then reads the checkpoints.
pub struct GroupEngine {
    events: Receiver<GroupEvent>,
    ownership: Arc<Ownership>,
    /// Bound on a revoked partition's drain.
    drain_limit: Duration,
    /// Assigned partitions not in the task list yet (a topic `discovery` has not found).
    waiting: Vec<SourcePartition>,
    /// Exactly-once: the checkpoint cluster (the data producer's) and the bound to fence a
    /// previous owner's transactional producer there.
    fence: Option<(ClusterConfig, Duration)>,
    /// Exactly-once: why the run must end (a failed commit, fence or read), for the run to
    /// return, and whether the open transaction is still to be aborted (a failed commit
    /// aborted it already).
    ended: Option<(TxnError, bool)>,
}

impl GroupEngine {
    pub fn new(events: Receiver<GroupEvent>, ownership: Arc<Ownership>, config: &Config) -> Self {
        let fence = match &config.checkpoints.store {
            StoreSettings::Kafka { cluster, .. } if config.delivery.exactly_once() => Some((
                config.clusters[cluster].clone(),
                config.run.connect_timeout.max(Duration::from_secs(10)),
            )),
            _ => None,
        };
        GroupEngine {
            events,
            ownership,
            drain_limit: config.run.shutdown_timeout,
            waiting: Vec::new(),
            fence,
            ended: None,
        }
    }

    /// Exactly-once: the error that ended the run, once, and whether the open transaction
    /// is still to be aborted.
    pub fn take_ended(&mut self) -> Option<(TxnError, bool)> {
        self.ended.take()
    }

    fn end(&mut self, shared: &Shared, e: TxnError, abort: bool) {
        shared.stop.store(true, Ordering::Relaxed);
        if self.ended.is_none() {
            self.ended = Some((e, abort));
        }
    }

    /// Writes a checkpoint at once (`what`: why, for the log); false when the run ends.
    fn checkpoint_now(
        &mut self,
        plan: &Plan,
        shared: &Shared,
        save: &mut CheckpointNow<'_>,
        what: &str,
    ) -> bool {
        match save(plan) {
            Ok(()) => true,
            Err(CheckpointNowError::Failed(e)) => {
                tracing::warn!("group: cannot write {what}: {e}");
                true
            }
            Err(CheckpointNowError::Ended(e)) => {
                // The committer aborted the transaction already.
                self.end(shared, e, false);
                false
            }
        }
    }

    /// One turn of the supervising loop.
    pub fn tick(
        &mut self,
        plan: &mut Plan,
        shared: &Shared,
        applier: &mut Applier,
        observer: &Observer,
        store: &dyn CheckpointStore,
        save: &mut CheckpointNow<'_>,
    ) {
        if self.ended.is_some() {
            // The run is ending: nothing is started or written; a revocation is let go.
            while let Ok(ev) = self.events.try_recv() {
                if let GroupEvent::Revoked { done, .. } = ev {
                    let _ = done.send(());
                }
            }
            return;
        }
        if self.ownership.instance_fenced.load(Ordering::Relaxed) && !shared.stopping() {
            // Nothing is ours any more: no checkpoint write for anything, and the run ends.
            let all: std::collections::BTreeSet<SourcePartition> = self
                .ownership
                .owned()
                .into_iter()
                .map(|(tp, _)| tp)
                .collect();
            for tp in &all {
                self.ownership.release(tp);
            }
            release(
                applier,
                all,
                "fenced: another replica has this instance_id".into(),
            );
            shared.stop.store(true, Ordering::Relaxed);
            return;
        }
        for (tp, ours, seen) in self.ownership.take_fenced() {
            release(
                applier,
                [tp].into(),
                format!("fenced: another member took it at epoch {seen} (ours was {ours})"),
            );
        }
        if !self.waiting.is_empty() {
            let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|tp| {
                    plan.tasks
                        .iter()
                        .any(|t| t.topic == tp.0 && t.partition == tp.1)
                });
            self.waiting = still;
            if !ready.is_empty() {
                // Exactly-once: read (and fence) again, as at an assignment: the read made
                // then may be older than the last commit of a previous owner since.
                let fresh = self.fence.is_some();
                self.start(ready, plan, shared, applier, observer, store, save, fresh);
            }
        }
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                GroupEvent::Assigned(_) if self.ended.is_some() => {}
                GroupEvent::Assigned(parts) if !parts.is_empty() => {
                    self.start(parts, plan, shared, applier, observer, store, save, true)
                }
                GroupEvent::Assigned(_) => {}
                GroupEvent::Revoked { done, .. } if self.ended.is_some() => {
                    let _ = done.send(());
                }
                GroupEvent::Revoked {
                    partitions,
                    lost,
                    done,
                } => {
                    self.revoke(partitions, lost, plan, shared, applier, save);
                    let _ = done.send(());
                }
            }
        }
    }

    /// Exactly-once: re-reads the checkpoints of just assigned `parts` after fencing the
    /// transactional producers of previous owners that did not hand them over (see the type
    /// doc). The fresh read says who they are; when the read fails (on a broker with
    /// markers, a killed writer's open transaction holding checkpoint records stops
    /// read_committed reads before it), those known from the last read are fenced (which
    /// aborts such a transaction) and the read tried again.
    fn fence_and_load(
        &self,
        parts: &[SourcePartition],
        store: &dyn CheckpointStore,
    ) -> Result<Option<Checkpoint>, TxnError> {
        let Some((cluster, timeout)) = &self.fence else {
            return Ok(store.load()?);
        };
        let first = store.load();
        let ids = store.unreleased_writers(parts);
        if ids.is_empty() {
            if let Ok(cp) = first {
                return Ok(cp);
            }
        }
        for id in &ids {
            tracing::info!(
                cluster = %cluster.name,
                "group: fencing transactional.id \"{id}\" (it wrote the checkpoint of partitions just assigned [{}] and did not hand them over) before reading their checkpoints: its open transaction is aborted where the broker fences",
                parts
                    .iter()
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            transaction::fence(cluster, id, *timeout)?;
        }
        Ok(store.load()?)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        parts: Vec<SourcePartition>,
        plan: &mut Plan,
        shared: &Shared,
        applier: &mut Applier,
        observer: &Observer,
        store: &dyn CheckpointStore,
        save: &mut CheckpointNow<'_>,
        fresh: bool,
    ) {
        // Another member may have written these partitions' checkpoints since we read.
        let cp = if fresh && self.fence.is_some() {
            // Exactly-once: never from an older checkpoint than the last committed one (the
            // records past it would be committed twice), so a failed read ends the run.
            match self.fence_and_load(&parts, store) {
                Ok(cp) => cp,
                Err(e) => {
                    self.end(shared, e, true);
                    return;
                }
            }
        } else if fresh {
            match store.load() {
                Ok(cp) => cp,
                Err(e) => {
                    tracing::warn!("group: cannot re-read the checkpoints ({e}); the partitions just assigned start from what was read before");
                    applier.checkpoint.clone()
                }
            }
        } else {
            applier.checkpoint.clone()
        };
        let mut found = Vec::new();
        let mut replaced: BTreeMap<String, Vec<CopyTask>> = BTreeMap::new();
        let mut replaced_plans: Vec<(usize, TaskPlan)> = Vec::new();
        let mut taken = Vec::new();
        for tp in parts {
            // The latest task of each route for this partition.
            let mut latest: BTreeMap<usize, (usize, &TaskPlan)> = BTreeMap::new();
            for (id, t) in plan.tasks.iter().enumerate() {
                if t.topic == tp.0 && t.partition == tp.1 {
                    latest.insert(t.route, (id, t));
                }
            }
            if latest.is_empty() {
                self.waiting.push(tp);
                continue;
            }
            // A route a reload removed (or replaced by a new version) is not started again.
            latest.retain(|_, (id, _)| shared.progress_of(*id).status != TaskStatus::Removed);
            if latest.is_empty() {
                continue;
            }
            let epoch = store.epoch_of(&tp.0, tp.1) + 1;
            self.ownership.own(tp.clone(), epoch);
            for (id, t) in latest.values() {
                let resumed = resume_plan(t, cp.as_ref());
                let before = shared.progress_of(*id);
                // A released task with nothing in flight is started again in its place;
                // otherwise (first assignment, or a drain that ran out) a new task.
                if matches!(before.status, TaskStatus::Released(_)) && before.in_flight_bytes == 0 {
                    let ranges = cp
                        .as_ref()
                        .and_then(|c| c.get(&t.route_name, &t.topic, t.partition))
                        .filter(|c| {
                            c.target_topic == t.target_topic && c.target_cluster == t.target_cluster
                        })
                        .map(|c| c.target.clone())
                        .unwrap_or_default();
                    let mut task = CopyTask::new(
                        *id,
                        resumed.clone(),
                        applier.routes[t.route].clone(),
                        ranges,
                        applier.limiters[t.route].clone(),
                    );
                    task.counts = before.counts;
                    task.observed = before.observed;
                    task.source_errors = before.source_errors;
                    shared.publish(*id, task.progress());
                    replaced
                        .entry(t.source_cluster.clone())
                        .or_default()
                        .push(task);
                    replaced_plans.push((*id, resumed));
                } else {
                    found.push((resumed, None));
                }
            }
            taken.push(format!("{}/{}@{epoch}", tp.0, tp.1));
        }
        if found.is_empty() && replaced.is_empty() {
            return;
        }
        for (id, p) in replaced_plans {
            plan.tasks[id] = p;
        }
        for (cluster, tasks) in replaced {
            if let Some(r) = applier.readers.get(&cluster) {
                let _ = r.send(LayoutChange::Replace(tasks));
            }
        }
        applier.checkpoint = cp;
        if !found.is_empty() {
            applier.start(found, &mut plan.tasks, shared, observer, true);
        }
        // The claims: each partition's checkpoint at our epoch (exactly-once: committed with
        // the open transaction, which holds nothing of these partitions' yet, or only what
        // was copied from the checkpoint just read).
        if !self.checkpoint_now(
            plan,
            shared,
            save,
            "the claims of the partitions just assigned",
        ) {
            return;
        }
        tracing::info!(
            "group: assigned {} partitions [{}] (partition@epoch); copying from their checkpoints",
            taken.len(),
            taken.join(", ")
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn revoke(
        &mut self,
        parts: Vec<SourcePartition>,
        lost: bool,
        plan: &Plan,
        shared: &Shared,
        applier: &Applier,
        save: &mut CheckpointNow<'_>,
    ) {
        let set: std::collections::BTreeSet<SourcePartition> = parts.iter().cloned().collect();
        self.waiting.retain(|tp| !set.contains(tp));
        let why = if lost {
            "lost: the group gave it to another member (this one was not heard within the session timeout)"
        } else {
            "revoked by the group (moved to another member)"
        };
        release(applier, set.clone(), why.into());
        let ids: Vec<usize> = plan
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| set.contains(&(t.topic.clone(), t.partition)))
            .map(|(id, _)| id)
            .collect();
        let since = Instant::now();
        // Exactly-once: partitions lost are not drained (their records must not commit: the
        // commit below refuses), so the run ends at once.
        let exactly_once_lost = lost && self.fence.is_some();
        let drained = exactly_once_lost
            || loop {
                let all = ids.iter().all(|&id| {
                    let p = shared.progress_of(id);
                    p.in_flight_bytes == 0
                        && !matches!(p.status, TaskStatus::Copying | TaskStatus::ReadDone)
                });
                if all || shared.stopping() {
                    break all;
                }
                if since.elapsed() >= self.drain_limit {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
        if !drained {
            tracing::warn!(
                "group: revoked partitions did not drain within {}; their checkpoint covers what was acknowledged (the next owner may copy what was in flight again)",
                humantime::format_duration(self.drain_limit)
            );
        }
        // Still ours while this is written (a lost partition's write is fenced by epoch if
        // the new owner wrote already). Exactly-once: a handover's records say so, and the
        // commit holds the partitions' last records with them; a lost partition's records
        // in the open transaction must not commit (the new owner may be copying from the
        // last committed checkpoint already): the commit refuses and the run ends.
        if self.fence.is_some() {
            let owned = set
                .iter()
                .filter(|tp| self.ownership.epoch(&tp.0, tp.1).is_some())
                .cloned();
            if lost {
                self.ownership.mark_lost(owned);
            } else {
                self.ownership.hand_over(owned);
            }
        }
        self.checkpoint_now(
            plan,
            shared,
            save,
            "the checkpoint of the revoked partitions (the next owner resumes from the previous one)",
        );
        for tp in &set {
            self.ownership.release(tp);
        }
        tracing::info!(
            "group: released {} partitions [{}] ({}) after {:.1}s",
            set.len(),
            set.iter()
                .map(|(t, p)| format!("{t}/{p}"))
                .collect::<Vec<_>>()
                .join(", "),
            if lost { "lost" } else { "revoked" },
            since.elapsed().as_secs_f64()
        );
    }
}

fn release(
    applier: &Applier,
    partitions: std::collections::BTreeSet<SourcePartition>,
    why: String,
) {
    for r in applier.readers.values() {
        let _ = r.send(LayoutChange::Release {
            partitions: partitions.clone(),
            why: why.clone(),
        });
    }
}

/// A partition's task as it resumes here: from its checkpoint as just read, else from where
/// the plan started it.
fn resume_plan(t: &TaskPlan, cp: Option<&Checkpoint>) -> TaskPlan {
    let mut n = t.clone();
    n.gap = 0;
    if let Some(c) = cp.and_then(|c| c.get(&t.route_name, &t.topic, t.partition)) {
        n.start = c.next_offset;
        n.start_from = StartFrom::Checkpoint;
        n.first_offset = c.first_offset;
        if c.target_topic == n.target_topic && c.target_cluster == n.target_cluster {
            n.target_start
                .extend(c.target_start.iter().map(|(k, v)| (*k, *v)));
        }
    }
    n
}
