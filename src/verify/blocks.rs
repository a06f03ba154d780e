//! Pass 1 and pass 2 of verify, per task (a route's source partition with a copied range):
//! digests per block of source offsets from the source, the target partitions and the
//! dead-letter partitions (each read once for all tasks), and the record-by-record
//! drill-down into a block whose digests differ, with maps bounded by the block size.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rdkafka::message::Timestamp;

use super::digest::{self, Digest};
use super::read::Reader;
use super::record::Record;
use super::{compare, decide, provenance, Comparison, Fingerprint, FIRST_OFFSETS};
use crate::cluster::ClusterError;
use crate::config::{ClusterConfig, ErrorAction, RouteConfig};
use crate::copy::filter::Decision;
use crate::copy::record::{parse_provenance, Provenance, DLQ_ROUTE_HEADER, DLQ_SOURCE_HEADER};

/// How a task's copy is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// By provenance and content, block digests then record by record where they differ.
    Content,
    /// By count, per partition (`partitioning = "preserve"` without provenance).
    Count,
    /// By count, the route's whole selection against everything it wrote (`in_group`).
    Grouped,
}

/// One (route, source partition) with a copied range to verify.
pub(super) struct Task<'a> {
    pub(super) row: usize,
    pub(super) route: &'a RouteConfig,
    pub(super) ignore: Vec<&'a str>,
    pub(super) src: &'a ClusterConfig,
    /// The source's directory when it is an archive (a restore: `super::archive`).
    pub(super) src_archive: Option<&'a crate::archive::Root>,
    pub(super) dst: &'a ClusterConfig,
    /// The target's directory when it is an archive (a dump: `super::archive`).
    pub(super) dst_archive: Option<&'a crate::archive::Root>,
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The copied source range `[first, next)`.
    pub(super) first: i64,
    pub(super) next: i64,
    pub(super) target_topic: String,
    /// Target partition -> `[from, to)` this task wrote.
    pub(super) ranges: BTreeMap<i32, (i64, i64)>,
    pub(super) mode: Mode,
    /// The route's dead-letter topic.
    pub(super) dlq: Option<(&'a ClusterConfig, &'a str)>,
}

impl Task<'_> {
    /// Reads `[from, to)` of the task's source partition (its archive, or its cluster).
    fn scan_source(
        &self,
        reader: &mut Reader,
        from: i64,
        to: i64,
        f: impl FnMut(&Record<'_>),
    ) -> Result<(), ClusterError> {
        super::archive::scan_source(
            reader,
            self.src,
            self.src_archive,
            &self.topic,
            self.partition,
            from,
            to,
            f,
        )
    }

    /// Block numbers (offset / block size) the copied range spans.
    pub(super) fn blocks(&self, b: i64) -> std::ops::Range<i64> {
        if self.first >= self.next {
            return 0..0;
        }
        self.first.div_euclid(b)..(self.next - 1).div_euclid(b) + 1
    }

    /// The source offsets of block `k` within the copied range.
    pub(super) fn block_range(&self, k: i64, b: i64) -> (i64, i64) {
        ((k * b).max(self.first), ((k + 1) * b).min(self.next))
    }

    /// This task wrote the target record at `(partition, offset)` carrying `pv`: exactly the
    /// records today's per-task read of its own target ranges attributes to it.
    pub(super) fn owns(&self, pv: &Provenance<'_>, partition: i32, offset: i64) -> bool {
        // Another route's copy of the same source record (two routes with disjoint filters
        // into one topic) is that route's. Values written before routes were named are
        // attributed by range alone.
        pv.route.is_none_or(|n| n == self.route.name)
            && pv.cluster == self.route.source
            && pv.topic == self.topic
            && pv.partition == self.partition
            && (self.first..self.next).contains(&pv.offset)
            && self
                .ranges
                .get(&partition)
                .is_some_and(|(a, z)| (*a..*z).contains(&offset))
    }
}

/// What pass 1 keeps of a source block.
#[derive(Debug, Default, Clone)]
pub(super) struct SrcBlock {
    pub(super) records: u64,
    pub(super) filtered: u64,
    /// Records the route copies: (offset, content, timestamp). Count only in count modes.
    pub(super) copy: Digest,
    /// The same records by (offset, content).
    pub(super) copy_content: Digest,
    /// Poison records, by offset.
    pub(super) poison: Digest,
}

/// What pass 1 keeps of the target records attributed to one source block.
#[derive(Debug, Default, Clone)]
pub(super) struct TgtBlock {
    /// Every attributed record by (offset, content).
    pub(super) content: Digest,
    /// Records whose timestamp the target kept, by (offset, content, timestamp).
    pub(super) kept: Digest,
    /// Records the target stamped itself (LogAppendTime).
    pub(super) lat: u64,
    /// A header the route sets is wrong on some record.
    pub(super) bad_set: bool,
    /// Per target partition, the lowest and highest target offset seen: where to re-read.
    pub(super) ranges: Vec<(i32, i64, i64)>,
}

/// The dead-letter entries naming one source block.
#[derive(Debug, Default, Clone)]
pub(super) struct DlqBlock {
    pub(super) offsets: Digest,
    /// Per dead-letter partition, the lowest and highest offset seen.
    pub(super) ranges: Vec<(i32, i64, i64)>,
}

pub(super) fn widen(ranges: &mut Vec<(i32, i64, i64)>, partition: i32, offset: i64) {
    match ranges.iter_mut().find(|r| r.0 == partition) {
        Some(r) => {
            r.1 = r.1.min(offset);
            r.2 = r.2.max(offset);
        }
        None => ranges.push((partition, offset, offset)),
    }
}

/// A target partition read once for every task that wrote it.
pub(super) struct TargetPart<'a> {
    pub(super) cluster: &'a ClusterConfig,
    /// The target's directory when it is an archive (a dump).
    pub(super) archive: Option<&'a crate::archive::Root>,
    pub(super) topic: String,
    pub(super) partition: i32,
    /// Disjoint `[from, to)` ranges: the union of the tasks' ranges.
    pub(super) spans: Vec<(i64, i64)>,
    pub(super) tasks: Vec<usize>,
}

/// A dead-letter partition read once for every task whose route writes it.
pub(super) struct DlqPart<'a> {
    pub(super) cluster: &'a ClusterConfig,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) tasks: Vec<usize>,
}

/// Count mode across partitions: a route's target partition, counted once.
pub(super) struct GroupPart<'a> {
    pub(super) group: usize,
    pub(super) cluster: &'a ClusterConfig,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) from: i64,
    pub(super) to: i64,
}

pub(super) enum Job<'a> {
    Source(usize),
    Target(TargetPart<'a>),
    Dlq(DlqPart<'a>),
    /// Count mode: every record in the task's target ranges.
    Count(usize),
    Group(GroupPart<'a>),
}

pub(super) enum Found {
    Source(Vec<SrcBlock>),
    Target(BlockMap<TgtBlock>),
    Dlq(BlockMap<DlqBlock>),
    Count(u64),
}

/// A block's exact differences, from the record-by-record drill-down.
#[derive(Debug, Default)]
pub(super) struct Exact {
    pub(super) dead_lettered: u64,
    pub(super) skipped: u64,
    pub(super) missing: u64,
    pub(super) unexpected: u64,
    pub(super) duplicates: u64,
    pub(super) altered: u64,
    pub(super) timestamps_not_kept: u64,
    pub(super) first_missing: BTreeSet<i64>,
    pub(super) first_altered: BTreeSet<i64>,
    pub(super) first_unexpected: BTreeSet<i64>,
}

/// Keeps the [`FIRST_OFFSETS`] lowest offsets.
pub(super) fn keep_first(set: &mut BTreeSet<i64>, offset: i64) {
    set.insert(offset);
    if set.len() > FIRST_OFFSETS {
        set.pop_last();
    }
}

pub(super) fn extend_first(row: &mut Vec<i64>, block: &BTreeSet<i64>) {
    row.extend(block.iter().take(FIRST_OFFSETS.saturating_sub(row.len())));
}

/// A lookup key for (cluster or route, topic, partition) without allocating per record;
/// candidates are checked in full afterwards.
pub(super) fn key(a: &str, topic: &str, partition: i32) -> u64 {
    use std::hash::BuildHasher;
    Fast.hash_one((a, topic, partition))
}

/// Per-block maps, looked up once per target record.
pub(super) type BlockMap<V> = HashMap<(usize, i64), V, Fast>;

/// The hasher of verify's per-record lookups: FxHash's step (a rotate, xor and multiply per
/// word), where the default SipHash was 2.5% of verify's instructions (callgrind). The keys
/// are names and offsets read from the clusters verify compares: a crafted collision could
/// only slow verify down, never change a verdict (candidates are checked in full).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Fast;

impl std::hash::BuildHasher for Fast {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

pub(super) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Headers the route sets carry exactly the set value.
pub(super) fn set_ok(r: &RouteConfig, m: &Record<'_>) -> bool {
    r.headers.set.iter().all(|(k, v)| {
        m.headers()
            .filter(|h| h.name == k.as_bytes())
            .map(|h| h.value)
            .eq([Some(v.as_bytes())])
    })
}

/// A dead-letter record's (route, source topic, source partition, source offset).
pub(super) fn dead_letter_entry<'m>(m: &Record<'m>) -> Option<(&'m [u8], &'m str, i32, i64)> {
    let get = |name: &str| {
        m.headers()
            .find(|h| h.name == name.as_bytes())
            .and_then(|h| h.value)
    };
    let route = get(DLQ_ROUTE_HEADER)?;
    let (_, t, sp, o) = get(DLQ_SOURCE_HEADER).and_then(parse_provenance)?;
    Some((route, t, sp, o))
}

/// Pass 1, source side: per block, what the route does with each record, as digests.
pub(super) fn read_source(
    reader: &mut Reader,
    task: &Task<'_>,
    b: i64,
) -> Result<Vec<SrcBlock>, ClusterError> {
    let ks = task.blocks(b);
    let mut blocks = vec![SrcBlock::default(); (ks.end - ks.start) as usize];
    task.scan_source(reader, task.first, task.next, |m| {
        let o = m.offset();
        let blk = &mut blocks[(o.div_euclid(b) - ks.start) as usize];
        blk.records += 1;
        match decide(task.route, m) {
            Decision::Copy if task.mode == Mode::Content => {
                let fp = Fingerprint::of(m, &task.ignore);
                blk.copy
                    .add(digest::record(o, fp.content, fp.timestamp.to_millis()));
                blk.copy_content.add(digest::content(o, fp.content));
            }
            Decision::Copy => blk.copy.count += 1,
            Decision::Filtered => blk.filtered += 1,
            Decision::Poison(_) => blk.poison.add(digest::offset(o)),
        }
    })?;
    Ok(blocks)
}

/// Pass 1, target side: one target partition, each record attributed by its provenance to
/// the task (and block) that wrote it.
pub(super) fn read_target(
    reader: &mut Reader,
    tasks: &[Task<'_>],
    part: &TargetPart<'_>,
    b: i64,
) -> Result<BlockMap<TgtBlock>, ClusterError> {
    let mut index: HashMap<u64, Vec<usize>, Fast> = HashMap::default();
    for &ti in &part.tasks {
        let t = &tasks[ti];
        index
            .entry(key(&t.route.source, &t.topic, t.partition))
            .or_default()
            .push(ti);
    }
    let mut out: BlockMap<TgtBlock> = BlockMap::default();
    for &(from, to) in &part.spans {
        let (cluster, archive) = (part.cluster, part.archive);
        let (topic, partition) = (&part.topic, part.partition);
        super::archive::scan_target(reader, cluster, archive, topic, partition, from, to, |m| {
            let Some(pv) = provenance(m) else { return };
            let Some(cands) = index.get(&key(pv.cluster, pv.topic, pv.partition)) else {
                return;
            };
            for &ti in cands {
                let t = &tasks[ti];
                if !t.owns(&pv, part.partition, m.offset()) {
                    continue;
                }
                let o = pv.offset;
                let blk = out.entry((ti, o.div_euclid(b))).or_default();
                let fp = Fingerprint::of(m, &t.ignore);
                blk.content.add(digest::content(o, fp.content));
                if matches!(fp.timestamp, Timestamp::LogAppendTime(_)) {
                    blk.lat += 1;
                } else {
                    blk.kept
                        .add(digest::record(o, fp.content, fp.timestamp.to_millis()));
                }
                if !set_ok(t.route, m) {
                    blk.bad_set = true;
                }
                widen(&mut blk.ranges, part.partition, m.offset());
            }
        })?;
    }
    Ok(out)
}

/// Pass 1, dead letters: one dead-letter partition, entries attributed to (task, block).
pub(super) fn read_dlq(
    reader: &mut Reader,
    tasks: &[Task<'_>],
    part: &DlqPart<'_>,
    b: i64,
) -> Result<BlockMap<DlqBlock>, ClusterError> {
    let mut index: HashMap<u64, Vec<usize>, Fast> = HashMap::default();
    for &ti in &part.tasks {
        let t = &tasks[ti];
        index
            .entry(key(&t.route.name, &t.topic, t.partition))
            .or_default()
            .push(ti);
    }
    let (low, _) = reader.watermarks(part.cluster, &part.topic, part.partition)?;
    let mut out: BlockMap<DlqBlock> = BlockMap::default();
    reader.scan(
        part.cluster,
        &part.topic,
        part.partition,
        low,
        i64::MAX,
        |m| {
            let Some((route, t, sp, o)) = dead_letter_entry(m) else {
                return;
            };
            let Ok(route) = std::str::from_utf8(route) else {
                return;
            };
            let Some(cands) = index.get(&key(route, t, sp)) else {
                return;
            };
            for &ti in cands {
                let task = &tasks[ti];
                if task.route.name != route
                    || task.topic != t
                    || task.partition != sp
                    || !(task.first..task.next).contains(&o)
                {
                    continue;
                }
                let blk = out.entry((ti, o.div_euclid(b))).or_default();
                blk.offsets.add(digest::offset(o));
                widen(&mut blk.ranges, part.partition, m.offset());
            }
        },
    )?;
    Ok(out)
}

/// Every record in `ranges` of `topic` (count mode), or only those `keep` accepts.
pub(super) fn count_records(
    reader: &mut Reader,
    cluster: &ClusterConfig,
    topic: &str,
    ranges: impl IntoIterator<Item = (i32, i64, i64)>,
    keep: impl Fn(&Record<'_>) -> bool,
) -> Result<u64, ClusterError> {
    let mut n = 0u64;
    for (p, from, to) in ranges {
        reader.scan(cluster, topic, p, from, to, |m| {
            if keep(m) {
                n += 1;
            }
        })?;
    }
    Ok(n)
}

/// Pass 2: one block whose digests differ, record by record, with maps bounded by the block
/// size. Gives exactly what comparing the whole range record by record gives for its offsets.
pub(super) fn drill(
    reader: &mut Reader,
    task: &Task<'_>,
    k: i64,
    b: i64,
    tgt: Option<&TgtBlock>,
    dlq: Option<&DlqBlock>,
) -> Result<Exact, ClusterError> {
    let (lo, hi) = task.block_range(k, b);
    let content = task.mode == Mode::Content;
    let mut expected: BTreeMap<i64, Option<Fingerprint>> = BTreeMap::new();
    let mut poison: Vec<i64> = Vec::new();
    task.scan_source(reader, lo, hi, |m| match decide(task.route, m) {
        Decision::Copy if content => {
            expected.insert(m.offset(), Some(Fingerprint::of(m, &task.ignore)));
        }
        Decision::Copy | Decision::Filtered => {}
        Decision::Poison(_) => poison.push(m.offset()),
    })?;
    let mut dead: BTreeSet<i64> = BTreeSet::new();
    if let (Some((cluster, topic)), Some(d)) = (task.dlq, dlq) {
        for &(p, a, z) in &d.ranges {
            reader.scan(cluster, topic, p, a, z + 1, |m| {
                if let Some((route, t, sp, o)) = dead_letter_entry(m) {
                    if route == task.route.name.as_bytes()
                        && t == task.topic
                        && sp == task.partition
                        && (lo..hi).contains(&o)
                    {
                        dead.insert(o);
                    }
                }
            })?;
        }
    }
    let mut ex = Exact::default();
    for o in &poison {
        if dead.contains(o) {
            ex.dead_lettered += 1;
        } else if task.route.on_error == ErrorAction::Skip {
            ex.skipped += 1;
        } else {
            ex.missing += 1;
            keep_first(&mut ex.first_missing, *o);
        }
    }
    if !content {
        return Ok(ex);
    }
    let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
    for &(tp, a, z) in tgt.map_or(&[][..], |t| &t.ranges) {
        let (dst, archive) = (task.dst, task.dst_archive);
        super::archive::scan_target(
            reader,
            dst,
            archive,
            &task.target_topic,
            tp,
            a,
            z + 1,
            |m| {
                let Some(pv) = provenance(m) else { return };
                if !task.owns(&pv, tp, m.offset()) || !(lo..hi).contains(&pv.offset) {
                    return;
                }
                let o = pv.offset;
                *seen.entry(o).or_default() += 1;
                let verdict = match expected.get(&o) {
                    Some(Some(want)) => compare(want, &Fingerprint::of(m, &task.ignore)),
                    _ => Comparison::Same,
                };
                if verdict == Comparison::SameTimestampNotKept {
                    ex.timestamps_not_kept += 1;
                }
                if !set_ok(task.route, m) || verdict == Comparison::Altered {
                    ex.altered += 1;
                    keep_first(&mut ex.first_altered, o);
                }
            },
        )?;
    }
    for o in expected.keys() {
        if seen.contains_key(o) {
            continue;
        }
        // Refused by the target and dead-lettered from there.
        if dead.contains(o) {
            ex.dead_lettered += 1;
        } else {
            ex.missing += 1;
            keep_first(&mut ex.first_missing, *o);
        }
    }
    for (o, n) in &seen {
        if !expected.contains_key(o) {
            ex.unexpected += 1;
            keep_first(&mut ex.first_unexpected, *o);
        }
        ex.duplicates += (*n as u64).saturating_sub(1);
    }
    Ok(ex)
}

/// Poison records of a block whose digests settle their fate: (dead-lettered, skipped), or
/// `None` when only reading them one by one can tell.
pub(super) fn poison_settled(
    s: &SrcBlock,
    d: Option<&DlqBlock>,
    on_error: &ErrorAction,
) -> Option<(u64, u64)> {
    let n = s.poison.count;
    let dead = d.map(|d| d.offsets).unwrap_or_default();
    if n == 0 {
        Some((0, 0))
    } else if dead == s.poison {
        Some((n, 0))
    } else if dead.count == 0 && *on_error == ErrorAction::Skip {
        Some((0, n))
    } else {
        None
    }
}
