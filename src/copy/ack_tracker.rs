//! Ack tracking: which source offsets of one partition are settled, and the contiguous
//! position below which every record is. Only that position is ever checkpointed, so a
//! crash at any instant loses nothing: everything at or above it is read again.
//!
//! Offsets arrive in increasing order (one source partition), but acknowledgements can come
//! back out of order (with key or round-robin partitioning one source partition feeds many
//! target partitions), so entries are kept in a deque ordered by offset and popped from the
//! front once settled.

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

#[derive(Debug, Clone)]
struct Entry {
    offset: i64,
    state: Settled,
    bytes: u32,
}

/// Tracks one (route, source partition) copy task.
#[derive(Debug, Clone)]
pub struct AckTracker {
    entries: VecDeque<Entry>,
    /// One past the last offset handed to `push`, or the start position.
    next: i64,
    /// Everything below this is settled (kept when `entries` is empty).
    committed: i64,
    pending: usize,
}

impl AckTracker {
    pub fn new(start: i64) -> Self {
        AckTracker {
            entries: VecDeque::new(),
            next: start,
            committed: start,
            pending: 0,
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
                state,
                bytes,
            });
        } else if self.entries.is_empty() {
            self.committed = self.next;
        } else {
            self.entries.push_back(Entry {
                offset,
                state,
                bytes,
            });
        }
    }

    /// Marks a pending offset settled. Returns the record's byte size, or None if the
    /// offset is unknown or already settled (a stale report after a rewind).
    pub fn settle(&mut self, offset: i64, state: Settled) -> Option<u32> {
        let idx = self
            .entries
            .binary_search_by_key(&offset, |e| e.offset)
            .ok()?;
        let e = &mut self.entries[idx];
        if e.state != Settled::Pending {
            return None;
        }
        e.state = state;
        let bytes = e.bytes;
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

    /// Drops everything at or above the position, so the task can read it again.
    /// Returns the states dropped (for undoing counts) and the pending bytes released.
    pub fn rewind(&mut self) -> (Vec<Settled>, u64) {
        let mut states = Vec::with_capacity(self.entries.len());
        let mut bytes = 0u64;
        for e in self.entries.drain(..) {
            if e.state == Settled::Pending {
                bytes += e.bytes as u64;
            }
            states.push(e.state);
        }
        self.pending = 0;
        self.next = self.committed;
        (states, bytes)
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
        let (states, bytes) = t.rewind();
        assert_eq!(
            states,
            vec![Settled::Pending, Settled::Acked, Settled::Pending]
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
}
