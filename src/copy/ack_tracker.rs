//! Ack tracking: which source offsets of one partition are settled, and the contiguous
//! position below which every record is. Only that position is ever checkpointed, so a
//! crash at any instant loses nothing: everything at or above it is read again.
//!
//! Offsets arrive in increasing order (one source partition), but acknowledgements can come
//! back out of order (with key or round-robin partitioning one source partition feeds many
//! target partitions), so entries are kept in a deque ordered by offset and popped from the
//! front once settled.
//!
//! Memory is bounded by the records in flight, not by the records read: a record that is
//! already settled when pushed (filtered, skipped) joins the run of settled records behind
//! it, and records settled out of order are folded into runs by an occasional compaction.
//! Between two pending records only how many records settled in each way matters (for a
//! rewind to undo their counts), not in which order, so a stretch between two pending
//! records compacts to at most one run per settled state. A selective filter behind one
//! record stuck on a target outage therefore costs one entry, not one per record read.

use std::collections::VecDeque;

/// How a record was settled, kept so a rewind can undo its counts exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Pending,
    Acked,
    Filtered,
    Failed,
    DeadLettered,
    Skipped,
}

impl Settled {
    const ALL: [Settled; 6] = [
        Settled::Pending,
        Settled::Acked,
        Settled::Filtered,
        Settled::Failed,
        Settled::DeadLettered,
        Settled::Skipped,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// How many records a rewind dropped, per state (to undo their counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally([u64; 6]);

impl Tally {
    pub fn get(&self, s: Settled) -> u64 {
        self.0[s.index()]
    }

    fn add(&mut self, s: Settled, n: u64) {
        self.0[s.index()] += n;
    }

    /// Every state with a non-zero count.
    pub fn iter(&self) -> impl Iterator<Item = (Settled, u64)> + '_ {
        Settled::ALL
            .iter()
            .map(|&s| (s, self.get(s)))
            .filter(|&(_, n)| n > 0)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A pending record (`n` = its byte size), or a run of `n` settled records whose first
/// offset is `offset` (a record settled in place starts as a run of one). 16 bytes.
#[derive(Debug, Clone)]
struct Entry {
    offset: i64,
    n: u32,
    state: Settled,
}

/// Below this many entries compaction is not worth its pass.
const MIN_COMPACT: usize = 64;

/// Tracks one (route, source partition) copy task.
#[derive(Debug, Clone)]
pub struct AckTracker {
    /// Ordered by offset; empty, or its front is a pending record.
    entries: VecDeque<Entry>,
    /// One past the last offset handed to `push`, or the start position.
    next: i64,
    /// Everything below this is settled (kept when `entries` is empty).
    committed: i64,
    pending: usize,
    /// Compact when `entries` grows to this length (twice its length after the last
    /// compaction, so each compaction pass is paid for by as many pushes).
    compact_at: usize,
}

impl AckTracker {
    pub fn new(start: i64) -> Self {
        AckTracker {
            entries: VecDeque::new(),
            next: start,
            committed: start,
            pending: 0,
            compact_at: MIN_COMPACT,
        }
    }

    /// Registers a record read at `offset`, already settled or still pending.
    /// Offsets must increase; gaps (compaction, transaction markers) are fine.
    pub fn push(&mut self, offset: i64, state: Settled, bytes: u32) {
        debug_assert!(
            offset >= self.next,
            "offsets must increase: {offset} < {}",
            self.next
        );
        self.next = offset + 1;
        if state == Settled::Pending {
            if self.entries.is_empty() {
                // Offsets between the old position and this one do not exist (a gap).
                self.committed = offset;
            }
            self.pending += 1;
            self.entries.push_back(Entry {
                offset,
                n: bytes,
                state,
            });
        } else if self.entries.is_empty() {
            self.committed = self.next;
            return;
        } else if let Some(back) = self
            .entries
            .back_mut()
            .filter(|b| b.state == state && b.n < u32::MAX)
        {
            back.n += 1;
            return;
        } else {
            self.entries.push_back(Entry {
                offset,
                n: 1,
                state,
            });
        }
        if self.entries.len() >= self.compact_at {
            self.compact();
        }
    }

    /// Marks a pending offset settled. Returns the record's byte size, or None if the
    /// offset is unknown or already settled (a stale report after a rewind).
    pub fn settle(&mut self, offset: i64, state: Settled) -> Option<u32> {
        debug_assert!(state != Settled::Pending);
        let idx = self
            .entries
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()?;
        let e = &mut self.entries[idx];
        if e.state != Settled::Pending {
            return None;
        }
        e.state = state;
        let bytes = std::mem::replace(&mut e.n, 1);
        self.pending -= 1;
        while self
            .entries
            .front()
            .is_some_and(|e| e.state != Settled::Pending)
        {
            self.entries.pop_front();
        }
        self.committed = self.entries.front().map(|e| e.offset).unwrap_or(self.next);
        Some(bytes)
    }

    /// Folds every stretch of settled entries between two pending records into at most one
    /// run per state. Offsets of the runs stay between their pending neighbours, so the
    /// deque stays ordered for `settle`'s binary search.
    fn compact(&mut self) {
        let mut out: VecDeque<Entry> = VecDeque::with_capacity(self.entries.len() / 2 + 1);
        let mut stretch = Tally::default();
        let mut first: Option<i64> = None;
        fn flush(out: &mut VecDeque<Entry>, stretch: &mut Tally, first: &mut Option<i64>) {
            if let Some(offset) = first.take() {
                for (state, mut n) in stretch.iter() {
                    while n > 0 {
                        let chunk = n.min(u32::MAX as u64);
                        out.push_back(Entry {
                            offset,
                            n: chunk as u32,
                            state,
                        });
                        n -= chunk;
                    }
                }
                *stretch = Tally::default();
            }
        }
        for e in self.entries.drain(..) {
            if e.state == Settled::Pending {
                flush(&mut out, &mut stretch, &mut first);
                out.push_back(e);
            } else {
                stretch.add(e.state, e.n as u64);
                first.get_or_insert(e.offset);
            }
        }
        flush(&mut out, &mut stretch, &mut first);
        self.entries = out;
        self.compact_at = (2 * self.entries.len()).max(MIN_COMPACT);
    }

    /// The checkpointable position: every record below it is settled.
    pub fn position(&self) -> i64 {
        self.committed
    }

    /// One past the last offset pushed.
    pub fn next_offset(&self) -> i64 {
        self.next
    }

    /// Skips ahead to `offset` (end reached through a gap, or offsets deleted by
    /// retention). Pending records below it still hold the position back.
    pub fn advance_to(&mut self, offset: i64) {
        if offset > self.next {
            self.next = offset;
            if self.entries.is_empty() {
                self.committed = offset;
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Entries held (pending records and settled runs): what the tracker's memory is
    /// proportional to, at 16 bytes each.
    pub fn entries_len(&self) -> usize {
        self.entries.len()
    }

    /// Drops everything at or above the position, so the task can read it again.
    /// Returns how many records were dropped in each state (for undoing counts) and the
    /// pending bytes released.
    pub fn rewind(&mut self) -> (Tally, u64) {
        let mut tally = Tally::default();
        let mut bytes = 0u64;
        for e in self.entries.drain(..) {
            if e.state == Settled::Pending {
                bytes += e.n as u64;
                tally.add(Settled::Pending, 1);
            } else {
                tally.add(e.state, e.n as u64);
            }
        }
        self.pending = 0;
        self.next = self.committed;
        self.compact_at = MIN_COMPACT;
        (tally, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_is_contiguous_prefix() {
        let mut t = AckTracker::new(10);
        for o in 10..15 {
            t.push(o, Settled::Pending, 1);
        }
        assert_eq!(t.position(), 10);
        assert_eq!(t.settle(12, Settled::Acked), Some(1));
        assert_eq!(t.position(), 10, "12 acked but 10 is not");
        t.settle(10, Settled::Acked);
        assert_eq!(t.position(), 11);
        t.settle(11, Settled::Acked);
        assert_eq!(t.position(), 13, "10..=12 settled");
        assert_eq!(t.settle(12, Settled::Acked), None, "double ack ignored");
        t.settle(14, Settled::Acked);
        t.settle(13, Settled::Failed);
        assert_eq!(t.position(), 15);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn gaps_and_settled_pushes() {
        let mut t = AckTracker::new(0);
        t.push(0, Settled::Filtered, 1);
        assert_eq!(t.position(), 1);
        t.push(5, Settled::Pending, 1); // offsets 1..5 compacted away
        t.push(7, Settled::Filtered, 1);
        assert_eq!(t.position(), 5);
        t.settle(5, Settled::Acked);
        assert_eq!(t.position(), 8);
    }

    #[test]
    fn rewind_returns_what_to_undo() {
        let mut t = AckTracker::new(0);
        for o in 0..4 {
            t.push(o, Settled::Pending, 10);
        }
        t.settle(0, Settled::Acked);
        t.settle(2, Settled::Acked);
        let (tally, bytes) = t.rewind();
        assert_eq!(
            tally.iter().collect::<Vec<_>>(),
            vec![(Settled::Pending, 2), (Settled::Acked, 1)]
        );
        assert_eq!(bytes, 20);
        assert_eq!(t.position(), 1);
        assert_eq!(t.next_offset(), 1);
        assert_eq!(
            t.settle(3, Settled::Acked),
            None,
            "stale report after rewind"
        );
    }

    #[test]
    fn settled_runs_behind_a_pending_record_take_constant_entries() {
        // A target outage holds offset 0; a selective filter settles the next million.
        let mut t = AckTracker::new(0);
        t.push(0, Settled::Pending, 1024);
        for o in 1..=1_000_000 {
            t.push(o, Settled::Filtered, 0);
        }
        assert!(t.entries_len() <= 2, "{} entries", t.entries_len());
        // Skips and filters interleaved: still one run per state.
        for o in 1_000_001..=1_100_000 {
            let s = if o % 2 == 0 {
                Settled::Skipped
            } else {
                Settled::Filtered
            };
            t.push(o, s, 0);
        }
        assert!(
            t.entries_len() <= MIN_COMPACT,
            "{} entries",
            t.entries_len()
        );
        assert_eq!(t.position(), 0);
        let (tally, bytes) = t.rewind();
        assert_eq!(tally.get(Settled::Pending), 1);
        assert_eq!(tally.get(Settled::Filtered), 1_050_000);
        assert_eq!(tally.get(Settled::Skipped), 50_000);
        assert_eq!(bytes, 1024);
    }

    #[test]
    fn records_acked_out_of_order_behind_a_stuck_one_are_folded() {
        // One target partition down holds offset 0; records to the others are acked and
        // interleaved with filtered ones. Entries stay bounded by what is pending.
        let mut t = AckTracker::new(0);
        t.push(0, Settled::Pending, 10);
        for o in 1..200_000 {
            if o % 3 == 0 {
                t.push(o, Settled::Filtered, 0);
            } else {
                t.push(o, Settled::Pending, 10);
                assert_eq!(t.settle(o, Settled::Acked), Some(10));
            }
        }
        assert_eq!(t.pending(), 1);
        assert!(
            t.entries_len() <= 2 * MIN_COMPACT,
            "{} entries",
            t.entries_len()
        );
        assert_eq!(t.settle(0, Settled::Acked), Some(10));
        assert_eq!(t.position(), 200_000);
        assert_eq!(t.entries_len(), 0);
    }

    /// A small deterministic generator, so the randomized test needs no dependency.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The tracker before runs: one state per offset read. Compared against the real one.
    struct Model {
        states: std::collections::BTreeMap<i64, (Settled, u32)>,
        next: i64,
    }
    impl Model {
        fn position(&self) -> i64 {
            self.states
                .iter()
                .find(|(_, (s, _))| *s == Settled::Pending)
                .map(|(o, _)| *o)
                .unwrap_or(self.next)
        }
    }

    #[test]
    fn randomized_against_per_offset_model() {
        let settled = [
            Settled::Acked,
            Settled::Filtered,
            Settled::Failed,
            Settled::DeadLettered,
            Settled::Skipped,
        ];
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let start = rng.below(1000) as i64;
            let stuck = seed % 2 == 1;
            let mut t = AckTracker::new(start);
            let mut m = Model {
                states: Default::default(),
                next: start,
            };
            for step in 0..20_000 {
                match rng.below(100) {
                    0..=44 => {
                        let offset = m.next + if rng.below(10) == 0 { 3 } else { 0 };
                        let state = if rng.below(3) == 0 {
                            Settled::Pending
                        } else {
                            // Mostly filtered or skipped (what callers push), sometimes any.
                            let k = if rng.below(4) == 0 { 5 } else { 2 };
                            [
                                Settled::Filtered,
                                Settled::Skipped,
                                Settled::Acked,
                                Settled::Failed,
                                Settled::DeadLettered,
                            ][rng.below(k) as usize]
                        };
                        let bytes = rng.below(500) as u32 + 1;
                        t.push(offset, state, bytes);
                        m.states.insert(offset, (state, bytes));
                        m.next = offset + 1;
                    }
                    45..=94 => {
                        // Settle a pending offset (or a random one, maybe stale).
                        let pend: Vec<i64> = m
                            .states
                            .iter()
                            .filter(|(_, (s, _))| *s == Settled::Pending)
                            .map(|(o, _)| *o)
                            .collect();
                        // Odd seeds hold the oldest pending record back (a target
                        // partition down) so settled entries pile up behind it.
                        let first = usize::from(stuck && rng.below(1000) != 0);
                        let offset = if pend.len() > first && rng.below(5) != 0 {
                            pend[first + rng.below((pend.len() - first) as u64) as usize]
                        } else {
                            m.next - 1 - rng.below(20) as i64
                        };
                        let state = settled[rng.below(5) as usize];
                        let want = match m.states.get_mut(&offset) {
                            Some((s, b)) if *s == Settled::Pending => {
                                *s = state;
                                Some(*b)
                            }
                            _ => None,
                        };
                        assert_eq!(t.settle(offset, state), want, "seed {seed} step {step}");
                    }
                    95..=97 => {
                        let to = m.next + rng.below(5) as i64;
                        t.advance_to(to);
                        if to > m.next {
                            m.next = to;
                        }
                    }
                    _ if rng.below(4) != 0 => {}
                    _ => {
                        let pos = m.position();
                        let mut want = Tally::default();
                        let mut want_bytes = 0;
                        for (s, b) in m.states.range(pos..).map(|(_, v)| *v) {
                            want.add(s, 1);
                            if s == Settled::Pending {
                                want_bytes += b as u64;
                            }
                        }
                        assert_eq!(t.rewind(), (want, want_bytes), "seed {seed} step {step}");
                        m.states.clear();
                        m.next = pos;
                    }
                }
                // Forget what the position has passed, as the tracker does.
                let pos = m.position();
                m.states = m.states.split_off(&pos);
                assert_eq!(t.position(), pos, "seed {seed} step {step}");
                assert_eq!(t.next_offset(), m.next, "seed {seed} step {step}");
                let pending = m
                    .states
                    .values()
                    .filter(|(s, _)| *s == Settled::Pending)
                    .count();
                assert_eq!(t.pending(), pending, "seed {seed} step {step}");
                assert!(
                    t.entries_len() <= (6 * (pending + 1)).max(MIN_COMPACT) * 2,
                    "seed {seed} step {step}: {} entries for {pending} pending",
                    t.entries_len()
                );
            }
        }
    }
}
