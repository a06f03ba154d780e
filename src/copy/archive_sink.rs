//! The archive sink: where a reader writes the records of routes whose target is an archive
//! (`[clusters.NAME] archive = "dir"`) instead of handing them to a producer. One
//! `crate::archive::PartitionWriter` per (archive, target topic, partition), opened when
//! its first record comes, with one open segment (a zstd stream) each: records are never
//! buffered here, only the small `InFlight` note of each record in the open segment.
//!
//! Acknowledgement is a committed segment. A record appended to the open segment is in
//! flight; when the segment seals (its limits, the checkpoint interval, the partition's
//! in-flight bound, the task reaching its end, or stop) every record in it is acknowledged
//! through the same delivery reports a producer sends, so the checkpoint only ever covers
//! committed segments. A crash loses only the open segment (the writer removes it at the
//! next open) and a record the archive already holds is acknowledged without being written
//! again, so a dump resumed from a checkpoint behind the archive writes nothing twice.

use crate::archive::Root;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::archive::{ArchiveError, PartitionWriter, RecordRef, SegmentLimits};

use super::produce::{DeliveryReport, InFlight};
use super::source_partition::{Outgoing, State};
use super::task::TaskStatus;

struct Open {
    writer: PartitionWriter,
    /// The copy task (by index in its reader) writing this partition directory; another
    /// task mapping to the same directory is refused (their offsets would interleave).
    task: usize,
    /// When a record was last appended (the sink's append count): the least recent open
    /// segment is the one committed early when too many are open.
    last_append: u64,
    /// The records in the open segment, acknowledged when it seals (unboxed: about 48
    /// bytes a record, bounded by the segment's limits and the in-flight bound).
    pending: Vec<InFlight>,
}

/// What went wrong writing a task's records: the task halts with `why`; the records of
/// `released` were in flight and will never be acknowledged.
pub struct SinkFailure {
    pub task: usize,
    pub why: String,
    pub released: Vec<InFlight>,
}

pub struct ArchiveSink {
    /// Archive name -> its directory.
    roots: BTreeMap<String, Root>,
    limits: SegmentLimits,
    /// Seal every open segment this often, so the checkpoint advances on a slow partition.
    seal_every: Duration,
    last_seal: Instant,
    open: BTreeMap<(String, String, i32), Open>,
    /// At most this many segments are open at once (each holds a zstd stream of a few MiB):
    /// opening one more commits the least recently written first.
    max_open: usize,
    appends: u64,
    /// Acknowledgements waiting for the reader's next `settle_reports`: never handed over
    /// inside `append`, which runs before the record is in the task's tracker.
    ready: Vec<DeliveryReport>,
    failures: Vec<SinkFailure>,
}

impl ArchiveSink {
    /// `max_open`: how many segments may be open at once (see `max_open_segments`).
    pub fn new(roots: BTreeMap<String, Root>, seal_every: Duration, max_open: usize) -> Self {
        ArchiveSink {
            roots,
            limits: SegmentLimits::default(),
            seal_every,
            last_seal: Instant::now(),
            open: BTreeMap::new(),
            max_open: max_open.max(1),
            appends: 0,
            ready: Vec::new(),
            failures: Vec::new(),
        }
    }

    pub fn is_archive(&self, cluster: &str) -> bool {
        self.roots.contains_key(cluster)
    }

    /// Appends a record to `<archive>/<topic>/<partition>`. `source`: where the records
    /// come from, for the manifest.
    pub fn append(
        &mut self,
        archive: &str,
        topic: &str,
        partition: i32,
        source: &str,
        record: &RecordRef<'_>,
        inflight: InFlight,
    ) {
        let task = inflight.task as usize;
        let key = (archive.to_string(), topic.to_string(), partition);
        if !self.open.contains_key(&key) {
            let root = &self.roots[archive];
            // A partition found mid-run (added to the source) raises the recorded count.
            let opened = PartitionWriter::open(root, topic, partition, source, self.limits)
                .and_then(|w| {
                    crate::archive::record_partition_count(root, topic, partition + 1).map(|_| w)
                });
            match opened {
                Ok(writer) => {
                    self.open.insert(
                        key.clone(),
                        Open {
                            writer,
                            task,
                            last_append: 0,
                            pending: Vec::new(),
                        },
                    );
                }
                Err(e) => {
                    self.fail(
                        task,
                        format!("cannot write to archive \"{archive}\": {e}"),
                        vec![inflight],
                    );
                    return;
                }
            }
        }
        let o = self.open.get_mut(&key).expect("opened above");
        if o.task != task {
            self.fail(
                task,
                format!("archive \"{archive}\" directory {topic}/{partition} is written by another route or topic of this run: give each a target_topic of its own"),
                vec![inflight],
            );
            return;
        }
        if o.writer.next_offset().is_some_and(|n| record.offset < n) {
            // Committed by an earlier run (resumed behind the archive): already safe.
            o.writer.already_archived += 1;
            self.ready.push(acked(inflight, partition));
            return;
        }
        if o.writer.uncommitted() == 0 {
            self.make_room(&key);
        }
        self.appends += 1;
        let o = self.open.get_mut(&key).expect("opened above");
        o.last_append = self.appends;
        // Below the open segment's end (read again after a rewind), the writer skips the
        // record; it is acknowledged with the segment that holds it.
        match o.writer.append(record) {
            Ok(sealed) => {
                o.pending.push(inflight);
                if sealed.is_some() {
                    let done = std::mem::take(&mut o.pending);
                    self.ready
                        .extend(done.into_iter().map(|i| acked(i, partition)));
                }
            }
            Err(e) => {
                let o = self.open.remove(&key).expect("present");
                let mut released = o.pending;
                released.push(inflight);
                self.fail(task, write_failed(archive, &e), released);
            }
        }
    }

    /// A segment is about to open for `key`: if as many as `max_open` are open, commit
    /// the least recently written one first, so memory stays bounded whatever the number
    /// of partitions.
    fn make_room(&mut self, key: &(String, String, i32)) {
        let open: Vec<_> = self
            .open
            .iter()
            .filter(|(k, o)| *k != key && o.writer.uncommitted() > 0)
            .map(|(k, o)| (o.last_append, k.clone()))
            .collect();
        if open.len() < self.max_open {
            return;
        }
        let (_, oldest) = open.into_iter().min().expect("at least one open");
        self.seal_one(&oldest);
    }

    fn seal_one(&mut self, key: &(String, String, i32)) {
        let o = self.open.get_mut(key).expect("listed");
        match o.writer.seal(None) {
            Ok(_) => {
                let done = std::mem::take(&mut o.pending);
                self.ready.extend(done.into_iter().map(|i| acked(i, key.2)));
            }
            Err(e) => {
                let o = self.open.remove(key).expect("listed");
                self.fail(o.task, write_failed(&key.0, &e), o.pending);
            }
        }
    }

    fn fail(&mut self, task: usize, why: String, released: Vec<InFlight>) {
        self.failures.push(SinkFailure {
            task,
            why,
            released,
        });
    }

    /// Seals the open segments of the tasks `due` picks (every one when the timer is due),
    /// turning their records into acknowledgements.
    pub fn seal_some(&mut self, mut due: impl FnMut(usize) -> bool) {
        if self.open.is_empty() {
            return;
        }
        let all = self.last_seal.elapsed() >= self.seal_every;
        if all {
            self.last_seal = Instant::now();
        }
        let keys: Vec<_> = self
            .open
            .iter()
            .filter(|(_, o)| !o.pending.is_empty() && (all || due(o.task)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.seal_one(&key);
        }
    }

    /// Seals everything open (at stop and at the end of a run).
    pub fn seal_all(&mut self) {
        self.last_seal = Instant::now() - self.seal_every;
        self.seal_some(|_| true);
    }

    /// Acknowledgements ready for the reader.
    pub fn take_ready(&mut self) -> Vec<DeliveryReport> {
        std::mem::take(&mut self.ready)
    }

    pub fn take_failures(&mut self) -> Vec<SinkFailure> {
        std::mem::take(&mut self.failures)
    }

    /// Whether anything waits for the reader.
    pub fn has_news(&self) -> bool {
        !self.ready.is_empty() || !self.failures.is_empty()
    }
}

/// How many archive segments a reader keeps open at once: one per 4 MiB of
/// `max_in_flight_bytes` (64 by default), so a dump's memory follows that bound.
pub fn max_open_segments(max_in_flight_bytes: u64) -> usize {
    (max_in_flight_bytes / (4 << 20)).max(1) as usize
}

fn acked(inflight: InFlight, partition: i32) -> DeliveryReport {
    let offset = inflight.offset;
    DeliveryReport {
        inflight: Box::new(inflight),
        result: Ok((partition, offset)),
        failed: None,
    }
}

fn write_failed(archive: &str, e: &ArchiveError) -> String {
    format!("writing to archive \"{archive}\" failed: {e} (the open segment is not committed; records in it will be read again by the next run)")
}

/// The two places the reader's copy path meets the sink: where a record is handed over
/// (instead of `send`) and where acknowledgements are settled (beside delivery reports).
impl State {
    /// Writes a record of a route into an archive (`super::archive_sink`); its
    /// acknowledgement comes when its segment is committed.
    pub(super) fn write_archive(
        &mut self,
        i: usize,
        m: &impl rdkafka::message::Message,
        out: &Outgoing<'_>,
        inf: InFlight,
    ) {
        use crate::archive::{RecordRef, TsType};
        use rdkafka::message::{Headers, Timestamp};
        let headers: Vec<(&[u8], Option<&[u8]>)> = out
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key.as_bytes(), h.value))
            .collect();
        let (ts_type, timestamp) = match m.timestamp() {
            Timestamp::NotAvailable => (TsType::None, -1),
            Timestamp::CreateTime(t) => (TsType::Create, t),
            Timestamp::LogAppendTime(t) => (TsType::LogAppend, t),
        };
        let record = RecordRef {
            offset: m.offset(),
            ts_type,
            timestamp,
            key: out.key,
            value: out.payload,
            headers: &headers,
        };
        let t = &self.tasks[i];
        self.archive.append(
            &t.plan.target_cluster,
            &out.topic,
            t.plan.partition,
            &t.provenance_prefix,
            &record,
            inf,
        );
    }

    /// Seals the archive segments that are due (see `super::archive_sink`) and takes their
    /// acknowledgements, and halts the tasks whose archive writes failed.
    pub(super) fn settle_archive(&mut self) {
        let limits = &self.shared.limits;
        let over =
            self.shared.in_flight() >= limits.max_in_flight_bytes / 2 || self.shared.stopping();
        let tasks = &self.tasks;
        self.archive.seal_some(|i| {
            over || tasks[i].status != TaskStatus::Copying
                || tasks[i].in_flight_bytes >= limits.max_in_flight_bytes_per_partition / 2
        });
        if !self.archive.has_news() {
            return;
        }
        for f in self.archive.take_failures() {
            for inf in f.released {
                let t = &mut self.tasks[inf.task as usize];
                t.in_flight_bytes -= inf.bytes as u64;
                self.shared
                    .in_flight_bytes
                    .fetch_sub(inf.bytes as u64, Ordering::Relaxed);
            }
            let t = &mut self.tasks[f.task];
            if matches!(t.status, TaskStatus::Copying | TaskStatus::ReadDone) {
                t.counts.failed += 1;
                t.halt(f.why);
            }
        }
        let ready = self.archive.take_ready();
        if !ready.is_empty() {
            self.reports_at_ms = crate::config::value::now_ms();
        }
        for r in ready {
            self.on_report(r);
        }
    }
}

/// Records in each archive the partition count of every topic the plan dumps into it
/// (`archive::record_partition_count`), so partitions without records are restored too.
pub(super) fn record_partition_counts(
    config: &crate::config::Config,
    plan: &crate::plan::Plan,
) -> Result<(), crate::cluster::ClusterError> {
    let mut counts: BTreeMap<(&str, &str), i32> = BTreeMap::new();
    for t in &plan.tasks {
        if config.archives.contains_key(&t.target_cluster) {
            let n = counts
                .entry((&t.target_cluster, &t.target_topic))
                .or_default();
            *n = (*n).max(t.partition + 1);
        }
    }
    for ((archive, topic), n) in counts {
        crate::archive::record_partition_count(&config.archives[archive], topic, n).map_err(
            |source| crate::cluster::ClusterError::Archive {
                cluster: archive.to_string(),
                source,
            },
        )?;
    }
    Ok(())
}
