//! Restore: an archive (`crate::archive`) as a route's source. A reader whose source is an
//! archive has no consumer; this loop takes the place of the consumer's: it reads each
//! partition's committed segments in offset order and offers every record to the same
//! per-record path a consumed record takes (`State::offer`: end, filter, validate,
//! dead-letter, produce, ack tracker), so delivery reports, retries, checkpoints and
//! progress are the cluster-to-cluster ones. Positions are the archived (original source)
//! offsets, so a checkpoint resumes a restore exactly where it stood.
//!
//! An archive route is finite: it ends at what the archive held when the run started (the
//! plan's `high`, the last segment's `next_offset`). A segment whose size or hash differs
//! from its manifest halts its partition before any of its records is produced (the check
//! runs when the segment is opened), naming the file and the offset reached.
//!
//! Declared inside `source_partition` (it drives that module's `State`), kept in its own
//! file so the consumer path stays readable on its own.

use crate::archive::Root;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedHeaders, Message, OwnedHeaders, Timestamp};
use rdkafka_sys as rdsys;

use super::{State, TaskStatus};
use crate::archive::{self, ArchiveError, ArchivedRecord, PartitionReader, TsType};
use crate::rate_limit::Limiter;

/// What the plan needs of an archive's topic: each partition's (first offset, end), the
/// end being where the partition continues after its last committed segment.
pub fn layout(root: &Root) -> Result<BTreeMap<String, Vec<(i64, i64)>>, ArchiveError> {
    let mut out: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (topic, p) in archive::partitions(root)? {
        if p < 0 {
            continue;
        }
        let r = PartitionReader::open(root, &topic, p)?;
        let marks = match (r.manifests().first(), r.manifests().last()) {
            (Some(f), Some(l)) => (f.first_offset, l.next_offset),
            _ => (0, 0),
        };
        let parts = out.entry(topic).or_default();
        if parts.len() <= p as usize {
            parts.resize(p as usize + 1, (0, 0));
        }
        parts[p as usize] = marks;
    }
    // Partitions that held no record when dumped have no directory: the recorded count
    // brings them in (empty, so done at once), and a created target topic gets them all.
    for (topic, n) in archive::partition_counts(root)? {
        let parts = out.entry(topic).or_default();
        if parts.len() < n as usize {
            parts.resize(n as usize, (0, 0));
        }
    }
    Ok(out)
}

/// Where an archived partition ends: the offset after its last committed segment (0 when the
/// archive holds nothing of it). A restore's "log end".
pub fn end_of(root: &Root, topic: &str, partition: i32) -> Result<i64, ArchiveError> {
    if !archive::has_partition(root, topic, partition)? {
        return Ok(0);
    }
    let r = PartitionReader::open(root, topic, partition)?;
    Ok(r.manifests().last().map_or(0, |m| m.next_offset))
}

/// The first archived offset of the partition whose timestamp is at or after `ts` (the
/// end `high` if none), as ListOffsets answers a broker's `start = <timestamp>`.
pub fn offset_for_time(
    root: &Root,
    topic: &str,
    partition: i32,
    ts: i64,
    (low, high): (i64, i64),
) -> Result<i64, ArchiveError> {
    let r = PartitionReader::open(root, topic, partition)?;
    for rec in r.records(low) {
        let rec = rec?;
        if rec.timestamp >= ts {
            return Ok(rec.offset);
        }
    }
    Ok(high)
}

/// An archived record as the copy path reads a consumed one.
pub struct ArchiveMessage {
    topic: Arc<str>,
    partition: i32,
    rec: ArchivedRecord,
    headers: Option<OwnedHeaders>,
}

impl ArchiveMessage {
    pub fn new(topic: Arc<str>, partition: i32, rec: ArchivedRecord) -> ArchiveMessage {
        let headers = (!rec.headers.is_empty()).then(|| {
            let h = OwnedHeaders::new_with_capacity(rec.headers.len());
            // SAFETY: `h` is ours alone; the cast is rust-rdkafka's own view of its native
            // list; header_add copies name (with its length: names need not be UTF-8) and
            // value (null stays null, empty stays empty).
            unsafe {
                let list =
                    h.as_borrowed() as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t;
                for (name, value) in &rec.headers {
                    let (v, n) = match value {
                        Some(v) => (v.as_ptr() as *const std::os::raw::c_void, v.len() as isize),
                        None => (std::ptr::null(), 0),
                    };
                    rdsys::rd_kafka_header_add(
                        list,
                        name.as_ptr() as *const std::os::raw::c_char,
                        name.len() as isize,
                        v,
                        n,
                    );
                }
            }
            h
        });
        ArchiveMessage {
            topic,
            partition,
            rec,
            headers,
        }
    }

    fn bytes(&self) -> u64 {
        let h: usize = self
            .rec
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        (self.rec.key.as_ref().map_or(0, Vec::len)
            + self.rec.value.as_ref().map_or(0, Vec::len)
            + h) as u64
    }
}

impl Message for ArchiveMessage {
    type Headers = BorrowedHeaders;

    fn key(&self) -> Option<&[u8]> {
        self.rec.key.as_deref()
    }

    fn payload(&self) -> Option<&[u8]> {
        self.rec.value.as_deref()
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        self.rec.value.as_deref_mut()
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.partition
    }

    fn offset(&self) -> i64 {
        self.rec.offset
    }

    fn timestamp(&self) -> Timestamp {
        match self.rec.ts_type {
            TsType::None => Timestamp::NotAvailable,
            TsType::Create => Timestamp::CreateTime(self.rec.timestamp),
            TsType::LogAppend => Timestamp::LogAppendTime(self.rec.timestamp),
        }
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        self.headers.as_ref().map(|h| h.as_borrowed())
    }
}

/// One archived partition being read: the records from its tasks' lowest position.
struct Cursor {
    ti: usize,
    partition: i32,
    topic: Arc<str>,
    /// `None`: nothing (more) to read until the next `reopen`.
    records: Option<archive::segment::Records<'static>>,
    /// Every record was given out: its tasks reach their end once what was taken is offered.
    ended: bool,
    /// The archive could not be read past here: its tasks halt once what was taken before
    /// is offered.
    failed: Option<ArchiveError>,
}

/// Runs the reader of an archive until every task is done or halted, or until stop.
pub(super) fn run(st: &mut State, root: &Root) {
    let mut cursors: Vec<Cursor> = st
        .parts
        .all
        .iter()
        .map(|&(ti, p)| Cursor {
            ti,
            partition: p,
            topic: Arc::from(st.parts.topics[ti].as_str()),
            records: None,
            ended: false,
            failed: None,
        })
        .collect();
    let mut turn = 0usize;
    loop {
        st.settle_reports(Duration::ZERO);
        st.check_producers();
        for t in &mut st.tasks {
            t.maybe_finish();
        }
        if st.last_publish.elapsed() >= Duration::from_millis(200) {
            st.publish();
        }
        if st.all_finished() || st.shared.stopping() {
            return;
        }
        if !st.backoff.is_zero() {
            let until = Instant::now() + st.backoff;
            while Instant::now() < until && !st.shared.stopping() {
                st.settle_reports(Duration::from_millis(50));
            }
            st.backoff = Duration::ZERO;
        }
        if st.needs_assign {
            reopen(st, root, &mut cursors);
        }
        if st.shared.in_flight() >= st.shared.limits.max_in_flight_bytes {
            st.settle_reports(Duration::from_millis(20));
            continue;
        }
        let batch = take_batch(st, &mut cursors, turn);
        turn = turn.wrapping_add(1);
        if batch.is_empty() && cursors.iter().all(|c| !c.ended && c.failed.is_none()) {
            // Over a bound, or nothing left to read: wait for acknowledgements.
            st.settle_reports(Duration::from_millis(20));
            continue;
        }
        if !batch.is_empty() && !rate_limit(st, &batch) {
            return; // stop raised while waiting: the batch is not offered
        }
        for (ti, m) in &batch {
            st.offer(*ti, m);
        }
        for c in &mut cursors {
            if std::mem::take(&mut c.ended) {
                reached_end(st, c);
            }
            if let Some(e) = c.failed.take() {
                halt(st, root, c, &e);
            }
        }
    }
}

/// (Re)opens every partition that still has reading to do at the lowest position of its
/// copying tasks (after a rewind, or at the start), as `State::assign` does for a consumer.
fn reopen(st: &mut State, root: &Root, cursors: &mut [Cursor]) {
    for c in cursors.iter_mut() {
        c.records = None;
        c.ended = false;
        c.failed = None;
        let from = st
            .parts
            .get(c.ti, c.partition)
            .iter()
            .map(|&i| &st.tasks[i])
            .filter(|t| t.status == TaskStatus::Copying)
            .map(|t| t.tracker.next_offset())
            .min();
        let Some(from) = from else {
            continue;
        };
        match archive::has_partition(root, &c.topic, c.partition) {
            Ok(true) => {}
            Ok(false) => {
                // A partition the archive holds nothing of (fewer partitions were dumped).
                c.ended = true;
                continue;
            }
            Err(e) => {
                c.failed = Some(e);
                continue;
            }
        }
        match PartitionReader::open(root, &c.topic, c.partition) {
            Ok(r) => c.records = Some(r.into_checked_records(from)),
            Err(e) => c.failed = Some(e),
        }
    }
    st.needs_assign = false;
    for t in &mut st.tasks {
        t.stale_until_assign = false;
    }
}

/// Takes up to one batch of records across the partitions that may read (a copying task,
/// under the partition's in-flight bound), bounded like a consumer batch: at most 2000
/// records, the rate limiters' batch, and the in-flight budget left.
fn take_batch(st: &State, cursors: &mut [Cursor], turn: usize) -> Vec<(usize, ArchiveMessage)> {
    let max_records = st
        .tasks
        .iter()
        .filter_map(|t| t.limiter.as_ref().map(|l| l.max_batch()))
        .chain(st.shared.limiter.as_ref().map(|l| l.max_batch()))
        .min()
        .unwrap_or(usize::MAX)
        .min(2000);
    let limits = &st.shared.limits;
    // Each route sharing a partition produces (and charges) every record again.
    let fan_out = st
        .parts
        .all
        .iter()
        .map(|&(ti, p)| st.parts.get(ti, p).len())
        .max()
        .unwrap_or(1)
        .max(1) as u64;
    let budget = (limits
        .max_in_flight_bytes
        .saturating_sub(st.shared.in_flight())
        / fan_out)
        .clamp(1, 4 << 20);
    let per_partition = limits.max_in_flight_bytes_per_partition;
    // An open segment holds a zstd decoder (its window, a few MiB): as many are open at once
    // as a dump keeps open segments, whatever the number of partitions. A partition whose
    // segment is open reads on until it ends; the others wait for a free one.
    let max_open = crate::copy::archive_sink::max_open_segments(limits.max_in_flight_bytes);
    let mut open = cursors
        .iter()
        .filter(|c| c.records.as_ref().is_some_and(|r| r.in_segment()))
        .count();
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let n = cursors.len();
    // Partitions take turns at the head of the batch, so none starves the others.
    for k in 0..n {
        if out.len() >= max_records || bytes >= budget {
            break;
        }
        let c = &mut cursors[(turn + k) % n];
        let Some(records) = c.records.as_mut() else {
            continue;
        };
        let was_open = records.in_segment();
        if !was_open && open >= max_open {
            continue;
        }
        let tasks = st.parts.get(c.ti, c.partition);
        if !tasks
            .iter()
            .any(|&i| st.tasks[i].status == TaskStatus::Copying)
        {
            // Done or halted: nothing more to read here (a rewind reopens it), and its
            // open segment must not hold one of the `max_open` for good.
            if was_open {
                open -= 1;
            }
            c.records = None;
            continue;
        }
        let copying = tasks
            .iter()
            .any(|&i| st.tasks[i].status == TaskStatus::Copying && !st.tasks[i].stale_until_assign);
        let in_flight: u64 = tasks.iter().map(|&i| st.tasks[i].in_flight_bytes).sum();
        if !copying || in_flight >= per_partition {
            continue;
        }
        let mut taken = 0u64;
        while out.len() < max_records && bytes < budget && in_flight + taken < per_partition {
            match records.next() {
                Some(Ok(rec)) => {
                    let m = ArchiveMessage::new(c.topic.clone(), c.partition, rec);
                    let b = m.bytes().max(1);
                    bytes += b;
                    taken += b;
                    out.push((c.ti, m));
                }
                Some(Err(e)) => {
                    c.failed = Some(e);
                    c.records = None;
                    break;
                }
                None => {
                    c.ended = true;
                    c.records = None;
                    break;
                }
            }
        }
        let now_open = c.records.as_ref().is_some_and(|r| r.in_segment());
        match (was_open, now_open) {
            (false, true) => open += 1,
            (true, false) => open -= 1,
            _ => {}
        }
    }
    out
}

/// Everything archived of the partition was offered: its tasks reach their end (offsets
/// past the last record up to it hold none, e.g. transaction markers the dump passed).
fn reached_end(st: &mut State, c: &Cursor) {
    for k in 0..st.parts.get(c.ti, c.partition).len() {
        let i = st.parts.get(c.ti, c.partition)[k];
        let t = &mut st.tasks[i];
        if t.status == TaskStatus::Copying && !t.stale_until_assign {
            let next = t.tracker.next_offset();
            let end = t.plan.end.offset().unwrap_or(next).max(next);
            t.read_done(end);
        }
    }
}

/// The archive cannot be read further (a corrupt segment, an unreadable file): the
/// partition's tasks halt where they are, never skipping past it.
fn halt(st: &mut State, root: &Root, c: &Cursor, e: &ArchiveError) {
    for k in 0..st.parts.get(c.ti, c.partition).len() {
        let i = st.parts.get(c.ti, c.partition)[k];
        let t = &mut st.tasks[i];
        if matches!(t.status, TaskStatus::Copying | TaskStatus::ReadDone) {
            let at = t.tracker.next_offset();
            t.halt(format!(
                "archive {} topic {} partition {}: {e} (restored up to offset {at}; no record of that segment was produced)",
                root.display(),
                c.topic,
                c.partition
            ));
        }
    }
}

/// The route and global rate limits for a batch, as `State::rate_limit` charges a consumer
/// batch. False when stop was raised while waiting.
fn rate_limit(st: &State, batch: &[(usize, ArchiveMessage)]) -> bool {
    let mut per_route: BTreeMap<usize, (u64, u64, Arc<Limiter>)> = BTreeMap::new();
    for (ti, m) in batch {
        for &i in st.parts.get(*ti, m.partition) {
            let t = &st.tasks[i];
            if let (Some(l), TaskStatus::Copying) = (&t.limiter, &t.status) {
                let e = per_route.entry(t.plan.route).or_insert((0, 0, l.clone()));
                e.0 += 1;
                e.1 += m.bytes();
            }
        }
    }
    for (n, bytes, l) in per_route.values() {
        if !l.acquire(*n, *bytes, &st.shared.stop) {
            return false;
        }
    }
    match &st.shared.limiter {
        Some(l) => {
            let bytes = batch.iter().map(|(_, m)| m.bytes()).sum();
            l.acquire(batch.len() as u64, bytes, &st.shared.stop)
        }
        None => true,
    }
}
