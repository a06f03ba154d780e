//! Source partitions: the reader loop. A `Reader` feeds the copy tasks (`super::task`) of
//! one source cluster, every topic of it, from the one consumer (one thread, one prefetch
//! queue) that reads them by manual assignment (no group, so no rebalance and no
//! broker-side offset expiry can touch the data path). Several routes on the same topic
//! share one read. Threads and prefetch memory are so bounded by the number of source
//! clusters and the configured in-flight bound, never by the number of topics.
//!
//! The loop: settle delivery reports -> pause partitions over their in-flight bound ->
//! take a batch -> rate-limit it -> offer each record to its tasks -> produce. A record's
//! offset is checkpointable only once the target acknowledged it (`AckTracker`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::BaseRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::ack_tracker::Settled;
use super::archive_sink::ArchiveSink;
use super::batch::{self, Event, SourceErrorKind};
use super::filter::{Decision, RecordView};
use super::partitions::Partitions;
use super::poll::{SourceQueue, SourceRecord};
use super::prefetch;
use super::produce::{
    classify, Backoff, DeliveryReport, FailureKind, InFlight, ProducerPool, TargetProducer,
    MISSING_TOPIC_ATTEMPTS,
};
use super::record::{
    provenance_value, raw_headers, record_bytes, remove_header, without_last_header,
    DLQ_ERROR_HEADER, DLQ_ROUTE_HEADER, DLQ_SOURCE_HEADER, PROVENANCE_HEADER,
};
use super::task::{CopyTask, TaskStatus};
use super::Shared;

#[path = "archive_source.rs"]
pub mod archive_source;
use crate::cluster::{self, QuietContext};
use crate::config::{ClusterConfig, ErrorAction, OutOfRangePolicy, Partitioning};
use crate::rate_limit::Limiter;

/// How long an end-of-partition must stand, with offsets below the end unread, before
/// they are taken for a gap.
const EOF_GAP_GRACE: Duration = Duration::from_secs(1);

/// A source error episode ends when no consumer error came for this long (librdkafka
/// reports a persisting fetch error again after each fetch backoff, well under a second),
/// or when the partitions deliver records or end-of-partition again.
const SOURCE_ERROR_QUIET: Duration = Duration::from_secs(5);

/// Consumer errors on one source topic (or, for errors naming no topic, on the reader's
/// cluster), from the first until the source delivers again. Logged once (at warn) when it
/// starts or its error changes, counted per partition always.
struct SourceEpisode {
    code: Option<RDKafkaErrorCode>,
    since: Instant,
    last: Instant,
    errors: u64,
    /// Partitions the errors named (of the episode's topic).
    partitions: BTreeSet<i32>,
}

/// What an end-of-partition below a task's end means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EofBelowEnd {
    /// The consumer read past every offset below the end: the rest is a gap (transaction
    /// markers, compaction) and the end is reached.
    Gap,
    /// Records exist past where the read_committed consumer stops: an open transaction at
    /// this offset holds it back. Wait, never skip them.
    OpenTransaction(i64),
    /// Nothing is readable past this offset yet: wait for records.
    Records(i64),
}

/// Decides an end-of-partition that stood with offsets below the end `e` unread: `next` is
/// the task's next offset, `read_to` the consumer's position (the offset after the last
/// record or control record it passed; -1 if none since the assignment), `high` the
/// partition's high watermark (read_uncommitted), if known. Only a consumer that read up to
/// the end proves a gap. A broker's ListOffsets answer cannot: some report the high
/// watermark whatever the isolation level (tansu answers 0 under read_committed while a
/// transaction is open), which is exactly when a gap would lose the transaction's records.
fn eof_below_end(next: i64, e: i64, read_to: i64, high: Option<i64>) -> EofBelowEnd {
    let at = read_to.max(next);
    if read_to >= e {
        EofBelowEnd::Gap
    } else if high.is_some_and(|h| h > at) {
        EofBelowEnd::OpenTransaction(at)
    } else {
        EofBelowEnd::Records(at)
    }
}

/// How often a partition waiting below its end looks again (one ListOffsets each time).
const EOF_WAIT_RECHECK: Duration = Duration::from_secs(5);

/// `send` gave up on a full producer queue because the run is stopping.
fn is_stopping(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

/// A record bound for a producer.
pub(super) struct Outgoing<'a> {
    pub(super) topic: String,
    partition: Option<i32>,
    pub(super) key: Option<&'a [u8]>,
    pub(super) payload: Option<&'a [u8]>,
    pub(super) headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
}

/// A poison record: still in the consumer's buffer (or read from an archive), or handed back
/// by the producer.
enum Poison<'m, M> {
    Borrowed(&'m M),
    /// The refused copy, its source offset and the source timestamp (a delivery report does
    /// not carry the timestamp the record was produced with).
    Owned(&'m OwnedMessage, i64, Option<i64>),
}

impl<M: Message<Headers = BorrowedHeaders>> Poison<'_, M> {
    fn offset(&self) -> i64 {
        match self {
            Poison::Borrowed(m) => m.offset(),
            Poison::Owned(_, o, _) => *o,
        }
    }
    fn key(&self) -> Option<&[u8]> {
        match self {
            Poison::Borrowed(m) => m.key(),
            Poison::Owned(m, _, _) => m.key(),
        }
    }
    fn payload(&self) -> Option<&[u8]> {
        match self {
            Poison::Borrowed(m) => m.payload(),
            Poison::Owned(m, _, _) => m.payload(),
        }
    }
    fn timestamp(&self) -> Option<i64> {
        match self {
            Poison::Borrowed(m) => m.timestamp().to_millis(),
            Poison::Owned(_, _, ts) => *ts,
        }
    }
    /// The original headers, copied without interpreting names (they may not be UTF-8).
    fn headers(&self) -> Option<OwnedHeaders> {
        match self {
            Poison::Borrowed(m) => m.headers().map(|h| h.detach()),
            Poison::Owned(m, _, _) => m.headers().cloned(),
        }
    }
}

/// Reads one source topic for every task on it.
pub struct Reader {
    pub id: u32,
    pub cluster: ClusterConfig,
    pub tasks: Vec<CopyTask>,
    pub deliveries: Receiver<DeliveryReport>,
    pub pool: Arc<ProducerPool>,
    pub shared: Arc<Shared>,
    /// Tasks for partitions found mid-run, and topics gone (`super::discovery`).
    pub layout: Option<Receiver<super::discovery::LayoutChange>>,
    /// Where routes into archives write (`super::archive_sink`).
    pub archive: ArchiveSink,
    /// The directory when the source is an archive (a restore: `archive_source`).
    pub source_archive: Option<crate::archive::Root>,
}

pub(super) struct State {
    id: u32,
    cluster: ClusterConfig,
    pub(super) tasks: Vec<CopyTask>,
    pub(super) parts: Partitions,
    /// (topic index, partition) paused in the consumer.
    paused: BTreeSet<(usize, i32)>,
    deliveries: Receiver<DeliveryReport>,
    pub(super) pool: Arc<ProducerPool>,
    pub(super) producers: BTreeMap<String, (u64, Arc<TargetProducer>)>,
    pub(super) shared: Arc<Shared>,
    pub(super) needs_assign: bool,
    pub(super) layout: Option<Receiver<super::discovery::LayoutChange>>,
    /// Wait this long before reading again (set by a retry; zero: no wait).
    backoff: Duration,
    /// How `backoff` grows across retries of target errors; reset by progress.
    retry: Backoff,
    last_publish: Instant,
    prov_buf: String,
    /// By topic index; `None`: errors naming no topic this reader reads.
    source_episodes: BTreeMap<Option<usize>, SourceEpisode>,
    /// A read_uncommitted client for high watermarks (see `high_watermark`).
    uncommitted: Option<BaseConsumer<QuietContext>>,
    /// The clock (ms) when the current batch of delivery reports was taken: one read per
    /// batch, not per record, for replication latency (44 ns vs 6 ns a record, measured).
    pub(super) reports_at_ms: i64,
    pub(super) archive: ArchiveSink,
    /// Records handed to a producer whose delivery report has not been settled yet (a
    /// record of 0 bytes counts too, unlike `in_flight_bytes`): exactly-once answers a
    /// commit only at 0 (`txn_answer`).
    unsettled: u64,
}

impl Reader {
    /// Runs until every task is done or halted, or until stop; returns the tasks.
    pub fn run(self) -> Vec<CopyTask> {
        let (id, txn) = (self.id, self.shared.txn.clone());
        let tasks = self.run_tasks();
        // Exactly-once: a reader that ended produces nothing more; commits stop waiting
        // for it (its final positions were published above).
        if let Some(gate) = txn {
            gate.reader_done(id);
        }
        tasks
    }

    fn run_tasks(self) -> Vec<CopyTask> {
        let parts = Partitions::new(&self.tasks);
        // Targets and dead-letter destinations (`send` and `on_report` use both).
        let producers = self
            .tasks
            .iter()
            .flat_map(|t| {
                let dead_letter = t.route.dead_letter.as_ref().map(|d| d.cluster.clone());
                std::iter::once(t.plan.target_cluster.clone()).chain(dead_letter)
            })
            .filter(|c| !self.archive.is_archive(c))
            .map(|c| {
                let p = self.pool.get(&c);
                (c, p)
            })
            .collect();
        let mut st = State {
            id: self.id,
            cluster: self.cluster,
            tasks: self.tasks,
            parts,
            paused: BTreeSet::new(),
            deliveries: self.deliveries,
            pool: self.pool,
            producers,
            shared: self.shared,
            needs_assign: true,
            backoff: Duration::ZERO,
            retry: Backoff::default(),
            last_publish: Instant::now(),
            prov_buf: String::with_capacity(128),
            source_episodes: BTreeMap::new(),
            uncommitted: None,
            reports_at_ms: 0,
            layout: self.layout,
            archive: self.archive,
            unsettled: 0,
        };
        if let Some(root) = &self.source_archive {
            archive_source::run(&mut st, root);
            st.drain();
            st.publish();
            return st.tasks;
        }
        // The consumer's one queue (every topic of the cluster) holds at most the prefetch
        // budget, whatever the number of topics, partitions or records (see `prefetch`).
        let prefetch =
            prefetch::properties(st.shared.limits.max_in_flight_bytes, &st.cluster.properties);
        let mut extra: Vec<(&str, &str)> = prefetch.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if !st.cluster.properties.contains_key("fetch.wait.max.ms") {
            extra.push(("fetch.wait.max.ms", "100"));
        }
        // Pausing a partition (its in-flight bound reached) makes librdkafka drop what it had
        // prefetched, and its default 1 s backoff once the queue is full stalled small
        // bounds; the cluster's properties may still say otherwise.
        if !st.cluster.properties.contains_key("fetch.queue.backoff.ms") {
            extra.push(("fetch.queue.backoff.ms", "20"));
        }
        let consumer = match cluster::consumer(&st.cluster, &extra) {
            Ok(c) => c,
            Err(e) => {
                for t in &mut st.tasks {
                    if !t.finished() {
                        t.halt(e.to_string());
                    }
                }
                return st.tasks;
            }
        };
        let Some(queue) = SourceQueue::new(&consumer) else {
            for t in &mut st.tasks {
                if !t.finished() {
                    t.halt("librdkafka gave the consumer no queue".into());
                }
            }
            return st.tasks;
        };
        st.main_loop(&consumer, &queue);
        drop(queue);
        st.drain();
        st.publish();
        st.tasks
    }
}

impl State {
    fn main_loop(
        &mut self,
        consumer: &BaseConsumer<QuietContext>,
        queue: &SourceQueue<'_, QuietContext>,
    ) {
        loop {
            self.settle_reports(Duration::ZERO);
            self.txn_answer();
            self.check_producers();
            for i in 0..self.tasks.len() {
                let t = &self.tasks[i];
                if let (Some(since), Some(e)) = (t.eof_gap_since, t.plan.end.offset()) {
                    if since.elapsed() >= EOF_GAP_GRACE && t.status == TaskStatus::Copying {
                        self.end_below_end(queue, i, e);
                    }
                }
                self.tasks[i].maybe_finish();
            }
            let quiet: Vec<Option<usize>> = self
                .source_episodes
                .iter()
                .filter(|(_, ep)| ep.last.elapsed() >= SOURCE_ERROR_QUIET)
                .map(|(k, _)| *k)
                .collect();
            for scope in quiet {
                self.end_source_episode(scope, None);
            }
            if self.last_publish.elapsed() >= Duration::from_millis(200) {
                self.refresh_log_ends(consumer, queue);
                self.publish();
            }
            self.follow_layout();
            if self.all_finished() || self.shared.stopping() {
                return;
            }
            if !self.backoff.is_zero() {
                let until = Instant::now() + self.backoff;
                while Instant::now() < until && !self.shared.stopping() {
                    self.settle_reports(Duration::from_millis(50));
                    self.txn_answer();
                }
                self.backoff = Duration::ZERO;
            }
            if self.needs_assign {
                self.assign(consumer);
            }
            self.update_pauses(consumer);
            let reading = self.parts.all.iter().any(|tp| !self.paused.contains(tp));
            // Group mode: no lease, no copying (`super::ownership`).
            let leased = self.shared.group.as_ref().is_none_or(|o| o.lease_valid());
            // Exactly-once: a full transaction waits for its commit.
            let txn_full = self.shared.txn.as_ref().is_some_and(|g| g.full());
            if !reading
                || !leased
                || txn_full
                || self.shared.in_flight() >= self.shared.limits.max_in_flight_bytes
            {
                // Over a bound or nothing to read: wait for acknowledgements instead.
                self.settle_reports(Duration::from_millis(20));
                continue;
            }
            let max_records = self
                .tasks
                .iter()
                .filter_map(|t| t.limiter.as_ref().map(|l| l.max_batch()))
                .chain(self.shared.limiter.as_ref().map(|l| l.max_batch()))
                .min()
                .unwrap_or(usize::MAX)
                .min(2000);
            // A batch never takes more than the in-flight budget left (at least one record), so
            // the bound is overshot by at most one batch per reader. Each route sharing a
            // partition produces (and charges) every record again: divide by that fan-out.
            let fan_out = self
                .parts
                .all
                .iter()
                .map(|&(ti, p)| self.parts.get(ti, p).len())
                .max()
                .unwrap_or(1)
                .max(1) as u64;
            let budget = (self
                .shared
                .limits
                .max_in_flight_bytes
                .saturating_sub(self.shared.in_flight())
                / fan_out)
                .clamp(1, 4 << 20);
            let b = batch::collect(queue, max_records, budget, Duration::from_millis(50));
            if b.records > 0 && !self.rate_limit(&b) {
                return; // stop raised while waiting: the batch is not read
            }
            // The lease is looked at again now: the process may have been paused inside
            // `collect` (SIGSTOP, a VM freeze) past the session timeout, and what librdkafka
            // fetched on waking belongs to whoever owns the partitions now. Nothing of the
            // batch was offered, so assigning again re-reads it from the tasks' positions
            // once (if ever) the group confirms the partitions are still ours.
            if b.records > 0 && !self.shared.group.as_ref().is_none_or(|o| o.lease_valid()) {
                drop(b);
                self.needs_assign = true;
                continue;
            }
            // Exactly-once: produce only inside the open transaction; while a commit is under
            // way, settle and answer it (`super::transaction`).
            let gate = self.shared.txn.clone();
            let _open = match &gate {
                Some(g) => loop {
                    if let Some(open) = g.enter() {
                        break Some(open);
                    }
                    if self.shared.stopping() {
                        return;
                    }
                    self.settle_reports(Duration::from_millis(5));
                    self.txn_answer();
                },
                None => None,
            };
            for ev in b.events {
                match ev {
                    Event::Record(m) => {
                        let Some(ti) = self.parts.topic_index(m.topic()) else {
                            continue; // not assigned by this reader
                        };
                        self.source_delivers(ti, m.partition());
                        self.offer(ti, &m)
                    }
                    Event::Eof(topic, p) => {
                        let Some(ti) = self.parts.topic_index(&topic) else {
                            continue;
                        };
                        self.source_delivers(ti, p);
                        self.on_eof(ti, p)
                    }
                    Event::Error {
                        error,
                        topic,
                        partition,
                    } => self.on_consume_error(consumer, error, topic.as_deref(), partition),
                }
            }
        }
    }

    fn rate_limit(&self, b: &batch::Batch<'_>) -> bool {
        let mut per_route: BTreeMap<usize, (u64, Arc<Limiter>)> = BTreeMap::new();
        for t in &self.tasks {
            if let (Some(l), TaskStatus::Copying) = (&t.limiter, &t.status) {
                per_route.entry(t.plan.route).or_insert((0, l.clone()));
            }
        }
        if per_route.is_empty() && self.shared.limiter.is_none() {
            return true;
        }
        for (route, (_, l)) in &per_route {
            let (n, bytes) =
                b.events.iter().fold((0u64, 0u64), |(n, by), e| match e {
                    Event::Record(m)
                        if self.parts.lookup(m.topic(), m.partition()).is_some_and(
                            |(_, ts)| ts.iter().any(|&i| self.tasks[i].plan.route == *route),
                        ) =>
                    {
                        (n + 1, by + (m.key_len() + m.payload_len()) as u64)
                    }
                    _ => (n, by),
                });
            if n > 0 && !l.acquire(n, bytes, &self.shared.stop) {
                return false;
            }
        }
        match &self.shared.limiter {
            Some(l) => l.acquire(b.records as u64, b.bytes, &self.shared.stop),
            None => true,
        }
    }

    /// (Re)assigns every partition that still has reading to do, at the lowest position of
    /// its tasks. Tasks further ahead skip what they already have.
    fn assign(&mut self, consumer: &BaseConsumer<QuietContext>) {
        let mut tpl = TopicPartitionList::new();
        for &(ti, p) in &self.parts.all {
            let from = self
                .parts
                .get(ti, p)
                .iter()
                .map(|&i| &self.tasks[i])
                .filter(|t| t.status == TaskStatus::Copying)
                .map(|t| t.tracker.next_offset())
                .min();
            if let Some(from) = from {
                tpl.add_partition_offset(&self.parts.topics[ti], p, Offset::Offset(from))
                    .expect("valid partition offset");
            }
        }
        if let Err(e) = consumer.assign(&tpl) {
            tracing::warn!(cluster = %self.cluster.name, "assign failed, retrying: {e}");
            self.backoff = Duration::from_millis(500);
            return;
        }
        // librdkafka keeps an application pause across assign(): resume what was just
        // assigned, or a partition paused before a rewind is never fetched again.
        let _ = consumer.resume(&tpl);
        self.paused.clear();
        self.needs_assign = false;
        // librdkafka drops what it fetched for the old assignment; from here on every
        // record and EOF comes from the positions just assigned.
        for t in &mut self.tasks {
            t.stale_until_assign = false;
        }
    }

    fn update_pauses(&mut self, consumer: &BaseConsumer<QuietContext>) {
        let per_partition = self.shared.limits.max_in_flight_bytes_per_partition;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for &(ti, p) in &self.parts.all {
            let tasks = self.parts.get(ti, p).iter().map(|&i| &self.tasks[i]);
            let any_copying = tasks.clone().any(|t| t.status == TaskStatus::Copying);
            let in_flight: u64 = tasks.map(|t| t.in_flight_bytes).sum();
            let want = !any_copying || in_flight >= per_partition;
            let is = self.paused.contains(&(ti, p));
            if want && !is {
                pause.add_partition(&self.parts.topics[ti], p);
                self.paused.insert((ti, p));
            } else if !want && is {
                resume.add_partition(&self.parts.topics[ti], p);
                self.paused.remove(&(ti, p));
            }
        }
        if pause.count() > 0 {
            let _ = consumer.pause(&pause);
        }
        if resume.count() > 0 {
            let _ = consumer.resume(&resume);
        }
    }

    /// Offers one source record (from the consumer, or from an archive: `archive_source`)
    /// to every task of its partition: end, filter, validate, then produce or `on_error`.
    fn offer<M: Message<Headers = BorrowedHeaders>>(&mut self, ti: usize, m: &M) {
        let p = m.partition();
        let offset = m.offset();
        let mut size = None;
        // Parsed (headers, JSON) at most once per record, however many routes look.
        let mut view: Option<RecordView<'_>> = None;
        // By position, not by a clone of the task list: no allocation per record.
        for k in 0..self.parts.get(ti, p).len() {
            let i = self.parts.get(ti, p)[k];
            let t = &mut self.tasks[i];
            if t.status != TaskStatus::Copying
                || t.stale_until_assign
                || offset < t.tracker.next_offset()
            {
                continue; // finished, rewound, or already read before a re-assign
            }
            t.eof_gap_since = None;
            if let Some(e) = t.plan.end.offset().filter(|e| offset >= *e) {
                t.read_done(e);
                continue;
            }
            if let Some(ts) = t.plan.end.timestamp() {
                if m.timestamp().to_millis().is_some_and(|x| x >= ts) {
                    t.read_done(offset);
                    continue;
                }
            }
            if let Some(e) = t.plan.end.offset() {
                if offset + 1 >= e {
                    // The last record before the end: no need to wait for one past it, or
                    // for end-of-partition.
                    t.read_done(e);
                }
            }
            let size = *size.get_or_insert_with(|| record_bytes(m));
            if offset < t.read_below {
                t.counts.retried += 1;
            } else {
                t.counts.read += 1;
                t.read_below = offset + 1;
            }
            let route = t.route.clone();
            if !route.validate.is_empty() || route.filter.is_some() {
                let v = view.get_or_insert_with(|| {
                    RecordView::new(
                        m.key(),
                        m.payload(),
                        m.timestamp().to_millis(),
                        raw_headers(m),
                    )
                });
                match route.decide(v, size as u64) {
                    Decision::Copy => {}
                    Decision::Filtered => {
                        let t = &mut self.tasks[i];
                        t.tracker.push(offset, Settled::Filtered, 0);
                        t.counts.filtered += 1;
                        continue;
                    }
                    Decision::Poison(why) => {
                        self.poison(i, &Poison::Borrowed(m), why, size, false);
                        continue;
                    }
                }
            }
            self.produce(i, m, size);
        }
    }

    fn produce<M: Message<Headers = BorrowedHeaders>>(&mut self, i: usize, m: &M, size: u32) {
        let t = &self.tasks[i];
        let offset = m.offset();
        let partition = match t.plan.partitioning {
            Partitioning::Preserve => Some(t.plan.partition),
            Partitioning::Key => None, // librdkafka's murmur2_random, as Java clients place keys
            Partitioning::RoundRobin => {
                let n = t.plan.target_partitions.max(1);
                Some((t.round_robin % n) as i32)
            }
        };
        let mut headers: Option<OwnedHeaders> = m.headers().map(|h| h.detach());
        let transform = &t.route.headers;
        if !transform.is_empty() {
            let mut h = headers.unwrap_or_default();
            for name in &transform.drop {
                remove_header(&mut h, name);
            }
            for (k, v) in &transform.set {
                remove_header(&mut h, k);
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            headers = Some(h);
        }
        if t.route.provenance {
            // `<cluster>/<topic>/<partition>/` is fixed per task; only the offset is written
            // per record, into a reused buffer (this is the hot path).
            self.prov_buf.clear();
            self.prov_buf.push_str(&t.provenance_prefix);
            let _ = write!(self.prov_buf, "{offset}");
            headers = Some(
                headers
                    .unwrap_or_else(|| OwnedHeaders::new_with_capacity(1))
                    .insert(Header {
                        key: PROVENANCE_HEADER,
                        value: Some(self.prov_buf.as_bytes()),
                    }),
            );
        }
        let out = Outgoing {
            topic: t.plan.target_topic.clone(),
            partition,
            key: m.key(),
            payload: m.payload(),
            headers,
            timestamp: m.timestamp().to_millis(),
        };
        let cluster = t.plan.target_cluster.clone();
        let inflight = self.inflight(i, offset, size, false, out.timestamp);
        let generation = self.tasks[i].generation;
        let sent = if self.archive.is_archive(&cluster) {
            self.write_archive(i, m, &out, *inflight);
            Ok(())
        } else {
            self.send(&cluster, out, inflight)
        };
        if self.tasks[i].generation != generation {
            // Rewound while waiting for room in the producer queue: this record will be
            // read again (it stays counted as read, pending), and its delivery report is
            // stale.
            if sent.is_ok() {
                self.charge(i, size);
            }
            return;
        }
        match sent {
            Ok(()) => {
                let t = &mut self.tasks[i];
                t.tracker.push(offset, Settled::Pending, size);
                t.counts.produced += 1;
                t.round_robin = t.round_robin.wrapping_add(1);
                self.charge(i, size);
            }
            Err(e) if is_stopping(&e) => self.abandon(i),
            Err(e) => {
                let t = &self.tasks[i];
                let why = format!(
                    "cannot be produced to {}:{}: {e}",
                    t.plan.target_cluster, t.plan.target_topic
                );
                match classify(&e, self.pool.is_fatal(&cluster)) {
                    FailureKind::Permanent => {
                        self.poison(i, &Poison::Borrowed(m), why, size, false)
                    }
                    // The producer became unusable (an idempotence fence) between two sends:
                    // as for a fatal delivery report, recreate it and copy again from the
                    // acknowledged positions (this record is read again).
                    FailureKind::Fatal => self.recreate_producer(&cluster),
                    FailureKind::Retriable | FailureKind::Missing => {
                        let t = &mut self.tasks[i];
                        t.counts.failed += 1;
                        t.halt(format!("record at offset {offset} {why}"));
                    }
                }
            }
        }
    }

    fn inflight(
        &self,
        i: usize,
        offset: i64,
        bytes: u32,
        dead_letter: bool,
        timestamp: Option<i64>,
    ) -> Box<InFlight> {
        Box::new(InFlight {
            reader: self.id,
            task: i as u32,
            generation: self.tasks[i].generation,
            offset,
            bytes,
            dead_letter,
            timestamp,
        })
    }

    fn charge(&mut self, i: usize, size: u32) {
        self.tasks[i].in_flight_bytes += size as u64;
        let now = self
            .shared
            .in_flight_bytes
            .fetch_add(size as u64, Ordering::Relaxed)
            + size as u64;
        self.shared
            .peak_in_flight_bytes
            .fetch_max(now, Ordering::Relaxed);
    }

    /// Hands a record to the producer for `cluster`, waiting out a full producer queue.
    fn send(
        &mut self,
        cluster: &str,
        out: Outgoing<'_>,
        inflight: Box<InFlight>,
    ) -> Result<(), KafkaError> {
        let producer = self.producers[cluster].1.clone();
        let mut record = BaseRecord::with_opaque_to(&out.topic, inflight);
        if let Some(p) = out.partition {
            record = record.partition(p);
        }
        if let Some(k) = out.key {
            record = record.key(k);
        }
        if let Some(v) = out.payload {
            record = record.payload(v);
        }
        if let Some(h) = out.headers {
            record = record.headers(h);
        }
        if let Some(ts) = out.timestamp {
            record = record.timestamp(ts);
        }
        loop {
            match producer.send(record) {
                Ok(()) => {
                    self.unsettled += 1;
                    if let Some(g) = &self.shared.txn {
                        g.produced(1);
                    }
                    return Ok(());
                }
                // A full queue on a target that is down would keep this loop (and so the
                // whole reader) here until `message.timeout.ms` (forever if 0): give up on
                // stop. The caller sees QueueFull only then (`is_stopping`).
                Err((e @ KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if self.shared.stopping() {
                        return Err(e);
                    }
                    record = r;
                    self.settle_reports(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// A record was not handed to the producer because the run is stopping (`send` gave
    /// up on a full queue). It stays read and pending; nothing after it may be produced
    /// for this task, or the tracker would see a gap and the checkpoint would pass it.
    fn abandon(&mut self, i: usize) {
        let t = &mut self.tasks[i];
        t.stale_until_assign = true;
        self.needs_assign = true;
    }

    /// A record that fails validation, cannot be filtered, or that the target refuses for
    /// good: the route's `on_error` decides. `pending` says whether the tracker already
    /// holds its offset (a refusal reported by the producer) or not (found before producing).
    fn poison<M: Message<Headers = BorrowedHeaders>>(
        &mut self,
        i: usize,
        rec: &Poison<'_, M>,
        why: String,
        size: u32,
        pending: bool,
    ) {
        let offset = rec.offset();
        let t = &mut self.tasks[i];
        match t.route.on_error {
            ErrorAction::Skip => {
                if pending {
                    t.tracker.settle(offset, Settled::Skipped);
                } else {
                    t.tracker.push(offset, Settled::Skipped, 0);
                }
                t.counts.skipped += 1;
                if !t.skip_logged {
                    t.skip_logged = true;
                    tracing::warn!(
                        route = %t.plan.route_name, source = %t.plan.source_label(),
                        cluster = %t.plan.source_cluster, topic = %t.plan.topic, partition = t.plan.partition,
                        "skipping record at offset {offset}: {why} (on_error = \"skip\"; further skips on this partition are counted, not logged)"
                    );
                } else {
                    tracing::debug!(source = %t.plan.source_label(), "skipping record at offset {offset}: {why}");
                }
            }
            ErrorAction::Stop => {
                t.counts.failed += 1;
                t.halt(format!(
                    "record at offset {offset}: {why} (on_error = \"stop\")"
                ));
            }
            ErrorAction::DeadLetter => {
                let dl = t
                    .route
                    .dead_letter
                    .clone()
                    .expect("checked: dead_letter action has a destination");
                let source = provenance_value(
                    &t.plan.source_cluster,
                    &t.plan.topic,
                    t.plan.partition,
                    offset,
                );
                let mut headers = match rec {
                    // A refused copy ends with the provenance header kmirror appended.
                    Poison::Owned(..) if t.route.provenance => rec
                        .headers()
                        .map(|h| without_last_header(&h))
                        .unwrap_or_default(),
                    _ => rec.headers().unwrap_or_default(),
                };
                for (k, v) in [
                    (DLQ_ROUTE_HEADER, t.plan.route_name.as_str()),
                    (DLQ_ERROR_HEADER, why.as_str()),
                    (DLQ_SOURCE_HEADER, source.as_str()),
                ] {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                let out = Outgoing {
                    topic: dl.topic.clone(),
                    partition: None,
                    key: rec.key(),
                    payload: rec.payload(),
                    headers: Some(headers),
                    timestamp: rec.timestamp(),
                };
                let inflight = self.inflight(i, offset, size, true, rec.timestamp());
                let generation = self.tasks[i].generation;
                let sent = self.send(&dl.cluster, out, inflight);
                if self.tasks[i].generation != generation {
                    // Rewound meanwhile (see `produce`): the record will be read again.
                    if sent.is_ok() {
                        self.charge(i, size);
                    }
                    return;
                }
                match sent {
                    Ok(()) => {
                        let t = &mut self.tasks[i];
                        if !pending {
                            t.tracker.push(offset, Settled::Pending, size);
                            t.counts.produced += 1;
                        }
                        self.charge(i, size);
                    }
                    // Stopping: a refused copy stays pending in the tracker (the position
                    // holds); a record found before producing is abandoned.
                    Err(e) if is_stopping(&e) => {
                        if !pending {
                            self.abandon(i);
                        }
                    }
                    Err(e)
                        if classify(&e, self.pool.is_fatal(&dl.cluster)) == FailureKind::Fatal =>
                    {
                        // See `produce`: recreate, and read the record again.
                        self.recreate_producer(&dl.cluster);
                    }
                    Err(e) => {
                        let t = &mut self.tasks[i];
                        t.counts.failed += 1;
                        t.halt(format!(
                            "record at offset {offset} ({why}) could not be dead-lettered to {}:{}: {e}",
                            dl.cluster, dl.topic
                        ));
                    }
                }
            }
        }
    }

    fn on_eof(&mut self, ti: usize, p: i32) {
        let now = crate::config::value::now_ms();
        for &i in self.parts.get(ti, p) {
            let t = &mut self.tasks[i];
            if t.stale_until_assign {
                continue;
            }
            match (t.plan.end.offset(), t.plan.end.timestamp()) {
                // At EOF the fetch position is the last stable offset (read_committed). If
                // everything below `e` was read, the end is reached; if not, wait a little
                // for records, then decide (`end_below_end`).
                (Some(e), _) => {
                    if t.tracker.next_offset() >= e {
                        t.read_done(e);
                    } else if t.eof_gap_since.is_none() {
                        t.eof_gap_since = Some(Instant::now());
                    }
                }
                (None, Some(ts)) if now >= ts => {
                    let at = t.tracker.next_offset();
                    t.read_done(at)
                }
                _ => {}
            }
        }
    }

    fn on_consume_error(
        &mut self,
        consumer: &BaseConsumer<QuietContext>,
        e: KafkaError,
        topic: Option<&str>,
        partition: Option<i32>,
    ) {
        let code = e.rdkafka_error_code();
        if !matches!(
            code,
            Some(RDKafkaErrorCode::AutoOffsetReset) | Some(RDKafkaErrorCode::OffsetOutOfRange)
        ) {
            self.on_source_error(code, &e, topic, partition);
            return;
        }
        // Look at the partition librdkafka named, or (none named) at every partition read:
        // the ones outside the retained range are the ones concerned.
        let timeout = Duration::from_secs(10);
        let named = topic.and_then(|t| self.parts.topic_index(t));
        let candidates: Vec<(usize, i32)> = self
            .parts
            .all
            .iter()
            .copied()
            .filter(|&(ti, p)| {
                named.is_none_or(|n| n == ti)
                    && (named.is_none() || partition.is_none_or(|x| x == p))
            })
            .collect();
        for (ti, p) in candidates {
            let topic = self.parts.topics[ti].clone();
            let Ok((low, high)) =
                cluster::watermarks(consumer, &self.cluster.name, &topic, p, timeout)
            else {
                continue;
            };
            for k in 0..self.parts.get(ti, p).len() {
                let i = self.parts.get(ti, p)[k];
                let t = &mut self.tasks[i];
                let next = t.tracker.next_offset();
                if t.status != TaskStatus::Copying || (next >= low && next <= high) {
                    continue;
                }
                if next > high {
                    t.halt(format!(
                        "source position {next} is beyond the high watermark {high} (the log was truncated?)"
                    ));
                    continue;
                }
                let gap = low - next;
                match t.plan.on_offset_out_of_range {
                    OutOfRangePolicy::Fail => t.halt(format!(
                        "offset {next} is out of range: retention deleted {gap} records (offsets {next}..{low}) before they were copied; set on_offset_out_of_range = \"earliest\" to accept the gap"
                    )),
                    OutOfRangePolicy::Earliest => {
                        tracing::error!(
                            route = %t.plan.route_name, source = %t.plan.source_label(),
                            cluster = %t.plan.source_cluster, topic = %t.plan.topic, partition = t.plan.partition,
                            "GAP: retention deleted {gap} records (offsets {next}..{low}) before they were copied; continuing from {low}"
                        );
                        t.plan.gap += gap;
                        t.tracker.advance_to(low);
                        self.needs_assign = true;
                    }
                }
            }
        }
        self.needs_assign = true;
    }

    /// End-of-partition stood for `EOF_GAP_GRACE` with offsets below the task's end `e` not
    /// read. Under read_committed librdkafka reports end-of-partition at the last stable
    /// offset, so an open transaction looks just like a trailing gap (markers, compaction);
    /// calling it a gap would move the checkpoint over records still to be committed. It is
    /// a gap only if the consumer read (control records included) up to the end.
    fn end_below_end(&mut self, queue: &SourceQueue<'_, QuietContext>, i: usize, e: i64) {
        let (topic, p) = (
            self.tasks[i].plan.topic.clone(),
            self.tasks[i].plan.partition,
        );
        // The consumer's position counts control records (transaction markers) too, and
        // every record it passed has been offered by now (this runs between batches).
        let read_to = queue
            .position()
            .and_then(|tpl| tpl.find_partition(&topic, p).map(|el| el.offset()))
            .and_then(|o| o.to_raw())
            .unwrap_or(-1);
        let next = self.tasks[i].tracker.next_offset();
        let high = if read_to >= e {
            None
        } else {
            self.high_watermark(&topic, p)
        };
        let (why, warn) = match eof_below_end(next, e, read_to, high) {
            EofBelowEnd::Gap => {
                let t = &mut self.tasks[i];
                tracing::debug!(
                    source = %t.plan.source_label(),
                    "no records between offset {next} and the end {e} (read to {read_to}): a gap"
                );
                t.eof_gap_since = None;
                t.wait_warned = None;
                t.read_done(e);
                return;
            }
            EofBelowEnd::OpenTransaction(at) => (
                Some(format!("waiting for an open transaction at offset {at} (the end is {e}; read_committed reads stop at the last stable offset)")),
                at,
            ),
            // The plan saw the partition reach the end, yet nothing is readable past `at`.
            EofBelowEnd::Records(at) if e <= self.tasks[i].plan.high => (
                Some(format!("waiting for offsets {at}..{e}: the partition ended at {} when the run started but ends at {at} now", self.tasks[i].plan.high)),
                at,
            ),
            // Waiting for records beyond what the partition held: normal.
            EofBelowEnd::Records(at) => (None, at),
        };
        let t = &mut self.tasks[i];
        // Records arriving end the wait; otherwise look again later.
        t.eof_gap_since = Some(Instant::now() + EOF_WAIT_RECHECK - EOF_GAP_GRACE);
        match why {
            Some(why) => {
                if t.wait_warned != Some(warn) {
                    t.wait_warned = Some(warn);
                    tracing::warn!(
                        route = %t.plan.route_name, source = %t.plan.source_label(),
                        cluster = %t.plan.source_cluster, topic = %t.plan.topic, partition = t.plan.partition,
                        "{why}; offsets {warn}..{e} are not readable yet, so the end is not reached (never skipped)"
                    );
                }
                if t.retrying.is_none() || t.source_retrying {
                    t.retrying = Some(why);
                    t.source_retrying = true;
                }
            }
            None if t.source_retrying && t.wait_warned.is_some() => {
                t.retrying = None;
                t.source_retrying = false;
                t.wait_warned = None;
            }
            None => {}
        }
    }

    /// The high watermark of partition `p` as a read_uncommitted client sees it (records
    /// in open transactions included), from a client made the first time it is needed.
    fn high_watermark(&mut self, topic: &str, p: i32) -> Option<i64> {
        if self.uncommitted.is_none() {
            self.uncommitted =
                cluster::consumer(&self.cluster, &[("isolation.level", "read_uncommitted")])
                    .map_err(|e| tracing::debug!("{e}"))
                    .ok();
        }
        let c = self.uncommitted.as_ref()?;
        cluster::watermarks(c, &self.cluster.name, topic, p, Duration::from_secs(5))
            .map_err(|e| tracing::debug!("{e}"))
            .ok()
            .map(|(_, high)| high)
    }

    /// A consumer error other than an out-of-range position, taken for the partitions it
    /// names: one partition (per-partition fetch errors), one topic, or (an error naming
    /// no topic this reader reads: transport, all brokers down) every partition this reader
    /// reads. Counted on each, logged once per episode (per topic), and either shown as the
    /// partitions' `retrying` reason (librdkafka fetches again) or halting them (see
    /// `batch::classify_source_error`).
    fn on_source_error(
        &mut self,
        code: Option<RDKafkaErrorCode>,
        e: &KafkaError,
        topic: Option<&str>,
        partition: Option<i32>,
    ) {
        let scope = topic.and_then(|t| self.parts.topic_index(t));
        let affected: Vec<usize> = match scope {
            Some(ti) => self
                .parts
                .all
                .iter()
                .filter(|&&(t, p)| t == ti && partition.is_none_or(|x| x == p))
                .flat_map(|&(t, p)| self.parts.get(t, p).iter().copied())
                .filter(|&i| self.tasks[i].status == TaskStatus::Copying)
                .collect(),
            None => (0..self.tasks.len())
                .filter(|&i| self.tasks[i].status == TaskStatus::Copying)
                .collect(),
        };
        for &i in &affected {
            self.tasks[i].source_errors += 1;
        }
        let now = Instant::now();
        let new_episode = self
            .source_episodes
            .get(&scope)
            .is_none_or(|ep| ep.code != code);
        if new_episode {
            self.source_episodes.insert(
                scope,
                SourceEpisode {
                    code,
                    since: now,
                    last: now,
                    errors: 0,
                    partitions: BTreeSet::new(),
                },
            );
        }
        let ep = self
            .source_episodes
            .get_mut(&scope)
            .expect("episode just set");
        ep.last = now;
        ep.errors += 1;
        let lasted = now - ep.since;
        let named: BTreeSet<i32> = affected
            .iter()
            .map(|&i| self.tasks[i].plan.partition)
            .collect();
        ep.partitions.extend(&named);
        let partitions = named
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let cluster = &self.cluster.name;
        let topic = match scope {
            Some(ti) => self.parts.topics[ti].clone(),
            None => format!("{} topics", self.parts.topics.len()),
        };
        let halt = match self.source_error_kind(code) {
            SourceErrorKind::Permanent => Some(format!(
                "source {cluster}:{topic}: {e} (not retriable{})",
                if code == Some(RDKafkaErrorCode::TopicAuthorizationFailed) {
                    "; grant the source principal Read on the topic, then run again"
                } else {
                    ""
                }
            )),
            SourceErrorKind::RetriableFor(bound) if lasted >= bound => Some(format!(
                "source {cluster}:{topic}: {e} for {}s (longer than {}s)",
                lasted.as_secs(),
                bound.as_secs()
            )),
            SourceErrorKind::Retriable | SourceErrorKind::RetriableFor(_) => None,
        };
        if let Some(why) = halt {
            // `halt` logs one error line per partition (cluster:topic/partition).
            for &i in &affected {
                self.tasks[i].halt(why.clone());
            }
            // Other partitions of the topic may still be in the episode (their own errors).
            if !affected.is_empty() && partition.is_none() {
                self.source_episodes.remove(&scope);
            }
            return;
        }
        let why = format!("source fetch error: {e}");
        if new_episode && !affected.is_empty() {
            tracing::warn!(
                cluster = %cluster, topic = %topic, partitions = %partitions,
                "consumer error on {cluster}:{topic} partitions [{partitions}]: {e}; librdkafka fetches again (further errors on {cluster}:{topic} in this episode are counted, not logged)"
            );
        } else {
            tracing::debug!(cluster = %cluster, topic = %topic, partitions = %partitions, "consumer error (counted): {e}");
        }
        for &i in &affected {
            let t = &mut self.tasks[i];
            if t.retrying.is_none() || t.source_retrying {
                t.retrying = Some(why.clone());
                t.source_retrying = true;
            }
        }
    }

    /// Partition `p` of topic `ti` delivered a record or end-of-partition: its source
    /// works again.
    fn source_delivers(&mut self, ti: usize, p: i32) {
        let mut cleared = false;
        for &i in self.parts.get(ti, p) {
            let t = &mut self.tasks[i];
            if t.source_retrying {
                t.source_retrying = false;
                t.retrying = None;
                cleared = true;
            }
        }
        if !cleared {
            return;
        }
        let topic = &self.parts.topics[ti];
        if !self
            .tasks
            .iter()
            .any(|t| t.source_retrying && &t.plan.topic == topic)
        {
            self.end_source_episode(Some(ti), Some(p));
        }
        if !self.tasks.iter().any(|t| t.source_retrying) {
            self.end_source_episode(None, Some(p));
        }
    }

    /// The source works again for `scope` (a topic index, or `None`: errors naming no
    /// topic): records flow, or no error came for `SOURCE_ERROR_QUIET`.
    fn end_source_episode(&mut self, scope: Option<usize>, delivering: Option<i32>) {
        for t in &mut self.tasks {
            let in_scope = scope.is_none_or(|ti| t.plan.topic == self.parts.topics[ti]);
            if t.source_retrying && in_scope {
                t.source_retrying = false;
                t.retrying = None;
            }
        }
        if let Some(ep) = self.source_episodes.remove(&scope) {
            let topic = match scope {
                Some(ti) => self.parts.topics[ti].clone(),
                None => format!("{} topics", self.parts.topics.len()),
            };
            let how = match delivering {
                Some(p) => format!("partition {p} delivers again"),
                None => format!("no error for {}s", SOURCE_ERROR_QUIET.as_secs()),
            };
            let partitions = ep
                .partitions
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            tracing::info!(
                cluster = %self.cluster.name, topic = %topic,
                "consumer errors on {}:{topic} partitions [{partitions}] over: {} errors in {:.1}s ({how})",
                self.cluster.name, ep.errors, ep.since.elapsed().as_secs_f64()
            );
        }
    }

    /// Settles delivery reports; waits up to `wait` for the first one.
    fn settle_reports(&mut self, wait: Duration) {
        self.settle_archive();
        let first = if wait.is_zero() {
            self.deliveries.try_recv().ok()
        } else {
            self.deliveries.recv_timeout(wait).ok()
        };
        let Some(first) = first else { return };
        self.reports_at_ms = crate::config::value::now_ms();
        self.on_report(first);
        while let Ok(r) = self.deliveries.try_recv() {
            self.on_report(r);
        }
    }

    pub(super) fn on_report(&mut self, r: DeliveryReport) {
        self.unsettled = self.unsettled.saturating_sub(1);
        let inf = r.inflight;
        let i = inf.task as usize;
        let t = &mut self.tasks[i];
        t.in_flight_bytes -= inf.bytes as u64;
        self.shared
            .in_flight_bytes
            .fetch_sub(inf.bytes as u64, Ordering::Relaxed);
        if inf.generation != t.generation {
            // From before a rewind: the record is being copied again. If this copy landed
            // too, it is a duplicate on the target, inside the range verify must read.
            if let (Ok((tp, toff)), false) = (&r.result, inf.dead_letter) {
                let range = t.target_ranges.entry(*tp).or_insert([*toff, *toff]);
                range[0] = range[0].min(*toff);
                range[1] = range[1].max(*toff);
            }
            return;
        }
        let target = if inf.dead_letter {
            t.route
                .dead_letter
                .as_ref()
                .map(|d| d.cluster.clone())
                .unwrap_or_default()
        } else {
            t.plan.target_cluster.clone()
        };
        match r.result {
            Ok((tp, toff)) => {
                self.pool.health(&target).ok();
                let before = t.tracker.position();
                if inf.dead_letter {
                    if t.tracker
                        .settle(inf.offset, Settled::DeadLettered)
                        .is_some()
                    {
                        t.counts.dead_lettered += 1;
                    }
                } else if t.tracker.settle(inf.offset, Settled::Acked).is_some() {
                    t.counts.acked += 1;
                    t.observed
                        .acked(inf.bytes, inf.timestamp, self.reports_at_ms);
                    let range = t.target_ranges.entry(tp).or_insert([toff, toff]);
                    range[0] = range[0].min(toff);
                    range[1] = range[1].max(toff);
                }
                if t.tracker.position() > before {
                    // Progress: the next error starts a new episode of retries.
                    t.retrying = None;
                    t.missing_attempts = 0;
                    self.retry.reset();
                }
            }
            Err(e) => {
                if let Some(g) = &self.shared.txn {
                    // Whatever happens to the record now, the transaction it was in
                    // cannot commit (`super::transaction`).
                    g.fail(format!(
                        "delivery of {} offset {} to {target} failed: {e}",
                        t.plan.source_label(),
                        inf.offset
                    ));
                }
                let mut kind = classify(&e, self.pool.is_fatal(&target));
                if kind == FailureKind::Missing {
                    // Transient right after the topic was created; permanent if it is gone.
                    t.missing_attempts += 1;
                    kind = if t.missing_attempts > MISSING_TOPIC_ATTEMPTS {
                        FailureKind::Permanent
                    } else {
                        FailureKind::Retriable
                    };
                }
                match kind {
                    FailureKind::Permanent => self.refused(i, &r.failed, &inf, &target, &e),
                    FailureKind::Retriable | FailureKind::Missing => {
                        self.retry_target(i, &inf, &target, &e)
                    }
                    FailureKind::Fatal => self.recreate_producer(&target),
                }
            }
        }
    }

    /// The target refused a record for good: the route's `on_error` decides.
    fn refused(
        &mut self,
        i: usize,
        failed: &Option<OwnedMessage>,
        inf: &InFlight,
        target: &str,
        e: &KafkaError,
    ) {
        let t = &mut self.tasks[i];
        if !matches!(t.status, TaskStatus::Copying | TaskStatus::ReadDone) {
            // Refused after the task halted (e.g. the rest of a refused batch):
            // counted, so every record read is accounted for, but not settled:
            // the position must stay where the task halted.
            t.counts.failed += 1;
            return;
        }
        let why = format!("refused by {target}: {e}");
        match (failed, inf.dead_letter) {
            (Some(msg), false) => {
                let poison: Poison<'_, SourceRecord<'_>> =
                    Poison::Owned(msg, inf.offset, inf.timestamp);
                self.poison(i, &poison, why, inf.bytes, true);
            }
            _ => {
                t.counts.failed += 1;
                let what = if inf.dead_letter {
                    "its dead-letter copy was"
                } else {
                    "it was"
                };
                t.halt(format!("record at offset {}: {what} {why}", inf.offset));
            }
        }
    }

    /// A retriable delivery failure: the target's episode is logged (once), the task shows
    /// why it is retrying, and it copies again from its acknowledged position after a
    /// backoff that grows until progress is made.
    fn retry_target(&mut self, i: usize, inf: &InFlight, target: &str, e: &KafkaError) {
        let t = &mut self.tasks[i];
        let position = t.tracker.position();
        let context = format!(
            "route {}, {} -> {}:{}, offset {}",
            t.plan.route_name,
            t.plan.source_label(),
            t.plan.target_cluster,
            t.plan.target_topic,
            inf.offset
        );
        t.retrying = Some(format!("delivery to {target} failed: {e}"));
        t.observed.target_errors += 1;
        let health = self.pool.health(target).clone();
        health.trouble(&e.to_string(), &context);
        tracing::debug!(
            "{context}: delivery failed ({e}); retrying from offset {position} (attempt {})",
            self.retry.attempts() + 1
        );
        health.resent(self.rewind(i));
        if self.backoff.is_zero() {
            // Once per wait: every task failing in the same outage must not grow it faster.
            self.backoff = self.retry.next_delay();
        }
    }

    /// The producer for `target` is unusable (fatal error): replace it (unless another
    /// reader already did) and rewind every task that writes there, since what was in
    /// flight on the old instance is lost with it.
    fn recreate_producer(&mut self, target: &str) {
        let seen = self.producers[target].0;
        match self.pool.recreate(target, seen) {
            Ok(p) => {
                self.producers.insert(target.to_string(), p);
            }
            Err(e) => tracing::error!("{e}"),
        }
        self.rewind_target(target);
    }

    /// The producer for a target was recreated (by any reader): everything this reader had
    /// in flight there is lost with the old instance, so resume from the positions.
    fn check_producers(&mut self) {
        let targets: Vec<String> = self.producers.keys().cloned().collect();
        for target in targets {
            let gen = self.pool.generation(&target);
            if gen != self.producers[&target].0 {
                self.producers
                    .insert(target.clone(), self.pool.get(&target));
                self.rewind_target(&target);
            }
        }
    }

    fn rewind_target(&mut self, target: &str) {
        for i in 0..self.tasks.len() {
            let t = &self.tasks[i];
            let uses = t.plan.target_cluster == target
                || t.route
                    .dead_letter
                    .as_ref()
                    .is_some_and(|d| d.cluster == target);
            if uses {
                let again = self.rewind(i);
                self.pool.health(target).resent(again);
            }
        }
    }

    /// Forgets everything at or above the task's position so it is read and produced again.
    /// Returns how many records will be read again.
    fn rewind(&mut self, i: usize) -> u64 {
        let t = &mut self.tasks[i];
        if matches!(t.status, TaskStatus::Done | TaskStatus::Halted(_)) {
            return 0;
        }
        t.generation = t.generation.wrapping_add(1);
        let (dropped, _) = t.tracker.rewind();
        for (s, n) in dropped.iter() {
            t.counts.unread_n(s, n);
        }
        let again = dropped.total();
        t.status = TaskStatus::Copying;
        t.end_at = None;
        t.stale_until_assign = true;
        t.eof_gap_since = None;
        self.needs_assign = true;
        again
    }

    /// Exactly-once: a commit waits for this reader; once nothing it produced is unsettled,
    /// publish the positions (the end of what the transaction holds) and answer.
    fn txn_answer(&mut self) {
        let Some(gate) = self.shared.txn.clone() else {
            return;
        };
        let Some(round) = gate.pending_round(self.id) else {
            return;
        };
        if self.unsettled > 0 || self.tasks.iter().any(|t| t.in_flight_bytes > 0) {
            return;
        }
        self.publish();
        gate.answer(self.id, round);
    }

    /// After stop: wait (bounded) for what is in flight, so it can be checkpointed.
    fn drain(&mut self) {
        self.archive.seal_all();
        let deadline = Instant::now() + self.shared.shutdown_timeout;
        while self.tasks.iter().any(|t| t.in_flight_bytes > 0) && Instant::now() < deadline {
            self.settle_reports(Duration::from_millis(50));
            for t in &mut self.tasks {
                t.maybe_finish();
            }
        }
        for t in &mut self.tasks {
            t.maybe_finish();
        }
    }

    /// Takes each partition's end from what the consumer's fetches last reported (no
    /// request to the broker), and how far the consumer passed, for the lag `/metrics`
    /// shows. Runs between batches, so every record the consumer passed was offered.
    fn refresh_log_ends(
        &mut self,
        consumer: &BaseConsumer<QuietContext>,
        queue: &SourceQueue<'_, QuietContext>,
    ) {
        // The consumer's position counts control records (transaction markers) too: on a
        // transactional topic at rest it is past the last record, where a task's is not.
        let positions = queue.position();
        for &(ti, p) in &self.parts.all {
            let read_to = positions
                .as_ref()
                .and_then(|tpl| tpl.find_partition(&self.parts.topics[ti], p))
                .and_then(|el| el.offset().to_raw())
                .unwrap_or(-1);
            for &i in self.parts.get(ti, p) {
                let t = &mut self.tasks[i];
                let position = t.tracker.position();
                let clear = t.status == TaskStatus::Copying
                    && !t.stale_until_assign
                    && t.tracker.pending() == 0;
                t.passed_to = if clear {
                    read_to.max(position)
                } else {
                    position
                };
            }
            let Ok(topic) = std::ffi::CString::new(self.parts.topics[ti].as_str()) else {
                continue;
            };
            let (mut low, mut high) = (-1i64, -1i64);
            // SAFETY: the client pointer lives as long as `consumer`; the topic is a valid C
            // string and the out-pointers are valid for writes. librdkafka only reads its
            // cached watermarks here.
            let err = unsafe {
                rdkafka_sys::rd_kafka_get_watermark_offsets(
                    consumer.client().native_ptr(),
                    topic.as_ptr(),
                    p,
                    &mut low,
                    &mut high,
                )
            };
            if err != rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
                continue;
            }
            for &i in self.parts.get(ti, p) {
                let t = &mut self.tasks[i];
                t.log_end = t.log_end.max(high);
            }
        }
    }

    fn publish(&mut self) {
        self.last_publish = Instant::now();
        for t in &self.tasks {
            self.shared.publish(t.id, t.progress());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8 item 4: an end-of-partition below the end is a gap only when the consumer
    /// read (control records included) up to the end; an open transaction holding the
    /// read_committed consumer at its first offset is waited for, whatever the grace.
    #[test]
    fn end_of_partition_below_the_end_is_a_gap_only_when_read_to_the_end() {
        // Trailing commit marker at 99: the consumer passed it.
        assert_eq!(eof_below_end(99, 100, 100, None), EofBelowEnd::Gap);
        // A transaction opened at 10 holds the reader there; records 10..18 exist.
        assert_eq!(
            eof_below_end(10, 18, 10, Some(18)),
            EofBelowEnd::OpenTransaction(10)
        );
        // The same, on a broker whose ListOffsets says nothing useful: still no gap.
        assert_eq!(eof_below_end(10, 18, 10, None), EofBelowEnd::Records(10));
        assert_eq!(eof_below_end(10, 18, -1, Some(0)), EofBelowEnd::Records(10));
    }
}
