//! Exactly-once (`[delivery] guarantee = "exactly_once"`): the copied records and the
//! checkpoint records for the source positions they cover commit in one Kafka transaction on
//! the target cluster (the KIP-618 pattern), so a crash at any instant rolls both back and
//! the next run resumes from the last committed checkpoint.
//!
//! Who does what. The target cluster's producer (`produce::ProducerPool`) is transactional,
//! with `transactional.id` [`transactional_id`]; creating it (InitProducerId) fences every
//! earlier producer with that id and aborts its open transaction, and [`fence`] does the
//! same before the job is claimed (`checkpoint::take_job`) and before the run loads its
//! checkpoint: a killed holder's open transaction may hold checkpoint records, and until it
//! is aborted a read_committed read of the checkpoint topic stops before it (the claim would
//! never see its own owner record); and a paused old process can then neither commit after
//! the checkpoint was read nor later. Readers produce into the open transaction
//! between [`TxnGate::enter`] and the guard's drop. The checkpoint thread commits
//! ([`Committer::commit`]): it closes the gate (readers finish the batch they hold, then
//! wait), asks every reader to settle every delivery report and publish its positions (every
//! record produced in the transaction is then acknowledged, so a position is exactly the end
//! of what the transaction holds), stages the checkpoint records for those positions
//! (`CheckpointStore::stage`), produces them with the same producer, commits, opens the next
//! transaction and reopens the gate.
//!
//! Failures. A delivery that fails inside a transaction dooms it (librdkafka makes the
//! transaction abortable, and the reader has already moved on). Rather than rewind every
//! task to the committed positions in-process, the transaction is aborted and the run ends
//! with [`TxnError`]: the next run resumes from the committed checkpoint, which is what a
//! crash does too. A fenced producer (a newer process took the job) ends the run the same way.
//!
//! Replicas (`[group]`). Each replica's producer has its own id ([`transactional_id`] with
//! its `instance_id`), and the group engine (`super::ownership::GroupEngine`) commits
//! through the [`Committer`] too: the claims of partitions just assigned and the final
//! positions of partitions handed over are commits of the data transaction. The store's
//! `stage` writes only the partitions this replica owns and refuses (the transaction is
//! aborted, the run ends with exit 6) once the replica may have lost one: its lease lapsed,
//! the group took partitions without a handover, or another replica's claim at a higher
//! epoch was read; `CheckpointStore::may_commit` asks once more just before the commit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer};

use super::produce::{InFlight, TargetProducer};
use crate::checkpoint::kafka::WriterContext;
use crate::checkpoint::{Checkpoint, CheckpointError, CheckpointStore};
use crate::cluster;
use crate::config::ClusterConfig;

/// Why an exactly-once run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error("exactly-once: the transaction on cluster \"{cluster}\" was aborted: {why}. Nothing of it is visible to read_committed readers; the next run resumes from the last committed checkpoint")]
    Aborted { cluster: String, why: String },
    #[error("exactly-once: transactional.id \"{id}\" on cluster \"{cluster}\" was fenced by a newer producer with the same id (another process runs this job; in a group, another member took this replica's partitions without a handover); this process stops without committing")]
    Fenced { cluster: String, id: String },
    #[error("exactly-once: {0}")]
    Checkpoint(#[from] CheckpointError),
}

/// The `transactional.id` of a job's exactly-once producer, distinct from the checkpoint
/// store's own (`kmirror-<job>`, or `kmirror-<job>-<instance_id>` in a group). Without
/// `[group]` one per job (the job has one owner at a time): `kmirror-<job>-eos`. With
/// `[group]` (`instance`: the replica's `instance_id`) one per replica,
/// `kmirror-<job>-eos-<instance_id>`: stable across restarts of that replica, so a restart
/// fences its predecessor, and distinct from every other replica's, so replicas copying
/// side by side never fence each other (a member that takes a partition without a handover
/// fences the previous owner's id explicitly, `ownership::GroupEngine`).
pub fn transactional_id(job: &str, instance: Option<&str>) -> String {
    match instance {
        Some(i) => format!("kmirror-{job}-eos-{i}"),
        None => format!("kmirror-{job}-eos"),
    }
}

/// The exactly-once `transactional.id` of this process under `config` (`transactional_id`).
pub fn transactional_id_for(config: &crate::config::Config) -> String {
    transactional_id(
        &config.job,
        config.group.as_ref().map(|g| g.instance_id.as_str()),
    )
}

/// InitProducerId with the job's transactional id, then nothing: fences every earlier
/// producer with that id and has the broker abort its open transaction, before the run
/// reads the checkpoint (a zombie could otherwise commit past what was read).
pub fn fence(cluster: &ClusterConfig, id: &str, timeout: Duration) -> Result<(), TxnError> {
    let p: rdkafka::producer::BaseProducer<WriterContext> = cluster::base_config(cluster)
        .set("transactional.id", id)
        .create_with_context(WriterContext(cluster::QuietContext {
            cluster: cluster.name.clone(),
        }))
        .map_err(|e| TxnError::Aborted {
            cluster: cluster.name.clone(),
            why: format!(
                "cannot create a producer to fence earlier ones: {}",
                cluster::client_error_detail(&e)
            ),
        })?;
    p.init_transactions(timeout).map_err(|e| TxnError::Aborted {
        cluster: cluster.name.clone(),
        why: format!("InitProducerId (fencing earlier producers) failed: {e}"),
    })
}

/// Shared by the readers and the committer; see the module doc.
pub struct TxnGate {
    gate: RwLock<()>,
    /// The commit round the committer waits for; readers answer in `settled`.
    wanted: AtomicU64,
    /// Per reader: the last round it settled for (`u64::MAX` once it ended).
    settled: Vec<AtomicU64>,
    /// Records produced into the open transaction.
    records: AtomicU64,
    max_records: u64,
    /// Whether the committer is waiting (readers then stop producing).
    closing: AtomicBool,
    /// The first delivery failure in the open transaction.
    failed: Mutex<Option<String>>,
}

impl TxnGate {
    pub fn new(readers: usize, max_records: u64) -> Self {
        TxnGate {
            gate: RwLock::new(()),
            wanted: AtomicU64::new(0),
            settled: (0..readers).map(|_| AtomicU64::new(0)).collect(),
            records: AtomicU64::new(0),
            max_records,
            closing: AtomicBool::new(false),
            failed: Mutex::new(None),
        }
    }

    /// A reader may produce while it holds the guard; `None`: a commit is under way, settle
    /// reports (and `answer`) and try again.
    pub fn enter(&self) -> Option<RwLockReadGuard<'_, ()>> {
        if self.closing.load(Ordering::Acquire) {
            return None;
        }
        self.gate.try_read().ok()
    }

    /// The open transaction holds `max_records_per_transaction`: readers wait for a commit.
    pub fn full(&self) -> bool {
        self.records.load(Ordering::Relaxed) >= self.max_records
    }

    pub fn produced(&self, n: u64) {
        self.records.fetch_add(n, Ordering::Relaxed);
    }

    /// The round a reader must settle for, if it has not yet.
    pub fn pending_round(&self, reader: u32) -> Option<u64> {
        let want = self.wanted.load(Ordering::Acquire);
        (self.settled[reader as usize].load(Ordering::Acquire) < want).then_some(want)
    }

    /// Reader `reader` has nothing in flight and published its positions for `round`.
    pub fn answer(&self, reader: u32, round: u64) {
        self.settled[reader as usize].fetch_max(round, Ordering::AcqRel);
    }

    /// Reader `reader` ended: it never produces again.
    pub fn reader_done(&self, reader: u32) {
        self.settled[reader as usize].store(u64::MAX, Ordering::Release);
    }

    /// A delivery inside the open transaction failed: it cannot commit.
    pub fn fail(&self, why: String) {
        let mut f = self.failed.lock().expect("txn failed lock");
        if f.is_none() {
            *f = Some(why);
        }
    }
}

/// Commits the open transaction with the checkpoint for what it holds; see the module doc.
pub struct Committer {
    pub cluster: String,
    pub id: String,
    pub producer: std::sync::Arc<TargetProducer>,
    /// Bound on settling, commit and abort.
    pub timeout: Duration,
    pub commits: u64,
}

impl Committer {
    /// Closes the gate, waits until every reader settled, writes `snapshot()`'s checkpoint
    /// records into the transaction and commits it; then opens the next one. On error the
    /// transaction is aborted (where the producer still can) and the error returned: the
    /// run must end (`open_next` false: the last commit of a run).
    pub fn commit(
        &mut self,
        gate: &TxnGate,
        store: &dyn CheckpointStore,
        snapshot: impl FnOnce() -> Checkpoint,
        open_next: bool,
    ) -> Result<Checkpoint, TxnError> {
        gate.closing.store(true, Ordering::Release);
        let result = {
            let _closed = gate.gate.write().unwrap_or_else(|e| e.into_inner());
            let r = self.commit_closed(gate, store, snapshot);
            if r.is_ok() && open_next {
                self.producer
                    .begin_transaction()
                    .map_err(|e| self.txn_err("BeginTransaction", e))
                    .map(|()| r.expect("checked ok"))
            } else {
                r
            }
        };
        if result.is_ok() {
            gate.records.store(0, Ordering::Relaxed);
            gate.closing.store(false, Ordering::Release);
        }
        result
    }

    fn commit_closed(
        &mut self,
        gate: &TxnGate,
        store: &dyn CheckpointStore,
        snapshot: impl FnOnce() -> Checkpoint,
    ) -> Result<Checkpoint, TxnError> {
        // A commit the store refuses anyway is not worth waiting for the readers (in a
        // group: a member that may have lost a partition; its in-flight deliveries may
        // never settle once another member fenced its producer).
        if let Err(e) = store.may_commit() {
            self.abort(e.to_string());
            return Err(e.into());
        }
        // No reader is producing now: ask each to settle what it produced and publish.
        let round = gate.wanted.fetch_add(1, Ordering::AcqRel) + 1;
        // No flush here: a reader answers only once every record it produced has its
        // delivery report settled, which is a flush, without librdkafka's flush sleeping in
        // 100 ms steps while the producer's own thread takes the reports (see below).
        let started = Instant::now();
        let deadline = started + self.timeout;
        while gate
            .settled
            .iter()
            .any(|s| s.load(Ordering::Acquire) < round)
        {
            if Instant::now() >= deadline {
                return Err(self.abort(format!(
                    "the readers did not settle their deliveries within {:?}",
                    self.timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(why) = gate.failed.lock().expect("txn failed lock").clone() {
            return Err(self.abort(why));
        }
        let settled_in = started.elapsed();
        let cp = snapshot();
        let staging = Instant::now();
        let staged = match store.stage(&cp) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(self.abort(format!(
                    "checkpoint store {} cannot join a transaction",
                    store.describe()
                )))
            }
            Err(e) => {
                self.abort(e.to_string());
                return Err(e.into());
            }
        };
        for (k, v) in &staged.records {
            // No reader: the delivery callback drops its report; a failed record fails
            // the commit below.
            let mut r = BaseRecord::with_opaque_to(
                &staged.topic,
                Box::new(InFlight {
                    reader: u32::MAX,
                    task: 0,
                    generation: 0,
                    offset: -1,
                    bytes: 0,
                    dead_letter: false,
                    timestamp: None,
                }),
            )
            .partition(staged.partition)
            .key(k.as_slice());
            if let Some(v) = v {
                r = r.payload(v.as_slice());
            }
            if let Err((e, _)) = self.producer.send(r) {
                return Err(self.abort(format!("producing a checkpoint record failed: {e}")));
            }
        }
        let staged_in = staging.elapsed();
        let committing = Instant::now();
        // Let the producer's own polling thread deliver what is queued before committing:
        // CommitTransaction flushes first, and librdkafka's flush, polling for delivery
        // reports that thread takes, then sleeps a full 100 ms before it looks again
        // (measured: every commit took 100 ms on a local broker; with this, a few ms).
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The store's last word: in a group, a process paused since it staged, past the
        // session timeout, wakes here with its lease lapsed and must not commit.
        if let Err(e) = store.may_commit() {
            self.abort(e.to_string());
            return Err(e.into());
        }
        if let Err(e) = self.producer.commit_transaction(self.timeout) {
            return Err(match self.txn_err("CommitTransaction", e) {
                e @ TxnError::Fenced { .. } => e,
                TxnError::Aborted { why, .. } => self.abort(why),
                other => other,
            });
        }
        tracing::debug!(
            cluster = %self.cluster,
            "exactly-once: transaction {} committed with {} checkpoint records (settled in {:?}, staged in {:?}, committed in {:?})",
            self.commits + 1,
            staged.records.len(),
            settled_in,
            staged_in,
            committing.elapsed()
        );
        store.staged_committed(staged);
        self.commits += 1;
        Ok(cp)
    }

    fn txn_err(&self, what: &str, e: KafkaError) -> TxnError {
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::InvalidProducerIdMapping
            )
        ) || self
            .producer
            .client()
            .fatal_error()
            .is_some_and(|(c, _)| c == RDKafkaErrorCode::ProducerFenced);
        if fenced {
            TxnError::Fenced {
                cluster: self.cluster.clone(),
                id: self.id.clone(),
            }
        } else {
            TxnError::Aborted {
                cluster: self.cluster.clone(),
                why: format!("{what} failed: {e}"),
            }
        }
    }

    /// Aborts the open transaction because the run ends for `why` outside a commit (in a
    /// group: a previous owner could not be fenced, or the checkpoints not read).
    pub fn abort_open(&self, why: String) {
        self.abort(why);
    }

    /// Aborts the open transaction (bounded); the reason, as the run's error.
    fn abort(&self, why: String) -> TxnError {
        if let Err(e) = self.producer.abort_transaction(self.timeout) {
            tracing::warn!(cluster = %self.cluster, "exactly-once: aborting the transaction failed too ({e}); the broker aborts it after transaction.timeout.ms");
        }
        tracing::error!(cluster = %self.cluster, "exactly-once: transaction aborted: {why}");
        TxnError::Aborted {
            cluster: self.cluster.clone(),
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_waits_for_every_live_reader_and_a_full_transaction_is_seen() {
        let g = TxnGate::new(2, 3);
        assert!(g.enter().is_some(), "open between commits");
        assert_eq!(g.pending_round(0), None, "nothing asked yet");
        g.produced(2);
        assert!(!g.full());
        g.produced(1);
        assert!(g.full(), "max_records_per_transaction reached");
        // The committer's side of a round, as `commit` does it.
        g.closing.store(true, Ordering::Release);
        assert!(g.enter().is_none(), "closed while a commit is under way");
        let round = g.wanted.fetch_add(1, Ordering::AcqRel) + 1;
        assert_eq!(g.pending_round(0), Some(round));
        g.answer(0, round);
        assert_eq!(g.pending_round(0), None, "reader 0 answered");
        assert_eq!(g.pending_round(1), Some(round), "reader 1 still owes it");
        g.reader_done(1);
        assert_eq!(
            g.pending_round(1),
            None,
            "an ended reader never holds a round up"
        );
        assert!(g.settled.iter().all(|s| s.load(Ordering::Acquire) >= round));
    }

    #[test]
    fn the_first_failure_of_a_transaction_is_kept() {
        let g = TxnGate::new(1, 10);
        g.fail("first".into());
        g.fail("second".into());
        assert_eq!(g.failed.lock().unwrap().as_deref(), Some("first"));
    }

    #[test]
    fn the_transactional_id_names_the_job_and_in_a_group_the_replica() {
        assert_eq!(transactional_id("orders-dr", None), "kmirror-orders-dr-eos");
        assert_eq!(
            transactional_id("orders-dr", Some("pod-1")),
            "kmirror-orders-dr-eos-pod-1"
        );
    }
}
