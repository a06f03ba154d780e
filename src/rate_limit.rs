//! Rate limits (governor): messages and bytes per second, globally and per route. A limited
//! route slows its reading by waiting here before a batch is produced; nothing is dropped.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::RateLimits;

/// One limiter on messages and/or bytes per second.
pub struct Limiter {
    messages: Option<(DefaultDirectRateLimiter, u32)>,
    bytes: Option<(DefaultDirectRateLimiter, u32)>,
    clock: DefaultClock,
    /// Batches that had to wait here, and the time they waited (microseconds): the
    /// `kmirror_rate_limit_waits_total` and `_wait_seconds_total` metrics.
    waits: AtomicU64,
    waited_us: AtomicU64,
}

fn limiter(rate: u64) -> (DefaultDirectRateLimiter, u32) {
    let rate = rate.min(u32::MAX as u64) as u32;
    // A tenth of a second of burst: smooth enough that a limit holds over short windows.
    let burst = (rate / 10).max(1);
    let quota = Quota::per_second(NonZeroU32::new(rate).expect("rates are checked non-zero"))
        .allow_burst(NonZeroU32::new(burst).expect("burst is at least one"));
    (RateLimiter::direct(quota), burst)
}

impl Limiter {
    pub fn new(r: RateLimits) -> Option<Limiter> {
        if r.messages_per_sec.is_none() && r.bytes_per_sec.is_none() {
            return None;
        }
        Some(Limiter {
            messages: r.messages_per_sec.map(|m| limiter(m.get() as u64)),
            bytes: r.bytes_per_sec.map(|b| limiter(b.get())),
            clock: DefaultClock::default(),
            waits: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
        })
    }

    /// The largest batch (in messages) worth asking for at once.
    pub fn max_batch(&self) -> usize {
        self.messages
            .as_ref()
            .map_or(usize::MAX, |(_, b)| *b as usize)
    }

    /// How many acquisitions had to wait, and for how long in total.
    pub fn waited(&self) -> (u64, Duration) {
        (
            self.waits.load(Ordering::Relaxed),
            Duration::from_micros(self.waited_us.load(Ordering::Relaxed)),
        )
    }

    /// Waits until `messages` and `bytes` may pass. Returns false if `stop` was raised
    /// while waiting (the caller then must not produce the batch).
    pub fn acquire(&self, messages: u64, bytes: u64, stop: &AtomicBool) -> bool {
        if let Some((l, burst)) = &self.messages {
            if !self.take(l, *burst, messages, stop) {
                return false;
            }
        }
        if let Some((l, burst)) = &self.bytes {
            if !self.take(l, *burst, bytes, stop) {
                return false;
            }
        }
        true
    }

    fn take(
        &self,
        l: &DefaultDirectRateLimiter,
        burst: u32,
        mut n: u64,
        stop: &AtomicBool,
    ) -> bool {
        let mut waited = Duration::ZERO;
        while n > 0 {
            let chunk = n.min(burst as u64) as u32;
            let chunk_nz = NonZeroU32::new(chunk).expect("chunk is non-zero");
            loop {
                match l.check_n(chunk_nz) {
                    Ok(Ok(())) => break,
                    Ok(Err(not_until)) => {
                        if stop.load(Ordering::Relaxed) {
                            return false;
                        }
                        let wait = not_until
                            .wait_time_from(self.clock.now())
                            .min(Duration::from_millis(100));
                        std::thread::sleep(wait);
                        waited += wait;
                    }
                    Err(_) => unreachable!("chunks never exceed the burst"),
                }
            }
            n -= chunk as u64;
        }
        if !waited.is_zero() {
            self.waits.fetch_add(1, Ordering::Relaxed);
            self.waited_us
                .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU64;

    #[test]
    fn waits_rather_than_drops() {
        let l = Limiter::new(RateLimits {
            messages_per_sec: NonZeroU32::new(1000),
            bytes_per_sec: NonZeroU64::new(1_000_000),
        })
        .unwrap();
        assert_eq!(l.max_batch(), 100);
        let stop = AtomicBool::new(false);
        let t = std::time::Instant::now();
        for _ in 0..5 {
            assert!(l.acquire(100, 10, &stop));
        }
        // 500 messages at 1000/s with a burst of 100 need at least 0.4s.
        assert!(
            t.elapsed() >= Duration::from_millis(350),
            "{:?}",
            t.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
        assert!(!l.acquire(100, 10, &stop), "a raised stop ends the wait");
    }
}
