//! What a copy task records for observation beyond its verification counts: bytes copied,
//! target delivery errors, the newest acknowledged source timestamp (for lag in seconds) and
//! the replication latency histogram. The copy task owns it and updates it in the place that
//! settles a delivery; readers publish it with `TaskProgress` and `/metrics` reads it at
//! scrape time, so nothing is counted twice.

/// Upper bounds (seconds) of the replication latency buckets. Latency is measured from the
/// source record's timestamp, so a copy of old data lands in the top buckets by design.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    3600.0,
];

/// A fixed-bucket histogram (counts per bucket, not cumulative; the last slot is `+Inf`).
/// Copy-able and lock-free: it lives in the task that observes it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Latency {
    pub fn observe(&mut self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    pub fn add(&mut self, o: &Latency) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.sum_seconds += o.sum_seconds;
        self.count += o.count;
    }

    /// `(upper bound, cumulative count)` pairs as Prometheus wants them, `+Inf` last.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter())
            .map(|(b, n)| {
                acc += n;
                (b, acc)
            })
            .collect()
    }
}

/// Per task: what `/metrics` and `/status` show beyond `Counts`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskObserved {
    /// Bytes (key, value and headers, as charged in flight) of records the target
    /// acknowledged (dead-letter copies excluded).
    pub bytes_acked: u64,
    /// Retriable delivery failures taken (each one rewinds the task and retries).
    pub target_errors: u64,
    /// The newest source timestamp (ms) among records acknowledged by the target.
    pub newest_acked_ms: Option<i64>,
    /// Source record timestamp to target acknowledgement, for acknowledged records.
    pub latency: Latency,
}

impl TaskObserved {
    /// A record the target acknowledged: `ts_ms` is its source timestamp, if it has one.
    pub fn acked(&mut self, bytes: u32, ts_ms: Option<i64>, now_ms: i64) {
        self.bytes_acked += bytes as u64;
        if let Some(ts) = ts_ms.filter(|t| *t >= 0) {
            self.latency.observe((now_ms - ts) as f64 / 1000.0);
            self.newest_acked_ms = Some(self.newest_acked_ms.map_or(ts, |n| n.max(ts)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_with_inf_last() {
        let mut l = Latency::default();
        l.observe(0.001);
        l.observe(0.3);
        l.observe(-2.0); // a source clock ahead of ours counts as no latency
        l.observe(99_999.0);
        let c = l.cumulative();
        assert_eq!(c.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(c[0], (0.005, 2));
        assert_eq!(c.iter().find(|(b, _)| *b == 0.5).unwrap().1, 3);
        assert_eq!(c.last().unwrap(), &(f64::INFINITY, 4));
        assert_eq!(l.count, 4);
    }
}
