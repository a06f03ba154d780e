//! Saving checkpoints through failures. A failed save (a full disk, a mount gone read-only
//! for a moment) must neither kill the writer while copying goes on unrecorded, nor be
//! retried forever in silence: each episode of failures is logged once when it begins and
//! once when it ends, attempts back off, and an episode longer than
//! `[checkpoints] max_unwritten` is reported as overdue so the run stops reading.

use std::time::{Duration, Instant};

use super::{Checkpoint, CheckpointError, CheckpointStore};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An episode of failed saves.
#[derive(Debug)]
struct Episode {
    since: Instant,
    failures: u64,
    backoff: Duration,
    next_attempt: Instant,
    last_error: String,
}

/// Saves checkpoints to a store, retrying with backoff; see the module doc.
pub struct RetryingSaver<'a> {
    store: &'a dyn CheckpointStore,
    max_unwritten: Duration,
    failing: Option<Episode>,
}

impl<'a> RetryingSaver<'a> {
    pub fn new(store: &'a dyn CheckpointStore, max_unwritten: Duration) -> Self {
        RetryingSaver {
            store,
            max_unwritten,
            failing: None,
        }
    }

    /// Whether the last save failed (and the episode is still open).
    pub fn failing(&self) -> bool {
        self.failing.is_some()
    }

    /// In an episode: whether its backoff has passed, so another attempt is due.
    pub fn retry_due(&self) -> bool {
        self.failing
            .as_ref()
            .is_some_and(|e| Instant::now() >= e.next_attempt)
    }

    /// How long saves have been failing, if they are.
    pub fn failing_for(&self) -> Option<Duration> {
        self.failing.as_ref().map(|e| e.since.elapsed())
    }

    /// Saves have failed for longer than `max_unwritten`: the run must stop reading.
    pub fn overdue(&self) -> bool {
        self.failing_for().is_some_and(|d| d > self.max_unwritten)
    }

    /// The last error of the open episode, for messages.
    pub fn last_error(&self) -> Option<&str> {
        self.failing.as_ref().map(|e| e.last_error.as_str())
    }

    /// One attempt. A failure opens (or extends) an episode and is logged only when it
    /// opens one; a success closes it and says so.
    pub fn attempt(&mut self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        match self.store.save(cp) {
            Ok(()) => {
                if let Some(e) = self.failing.take() {
                    tracing::warn!(
                        path = %self.store.describe(),
                        "checkpoint written again after {} failed attempts over {:.1}s",
                        e.failures,
                        e.since.elapsed().as_secs_f64()
                    );
                }
                tracing::debug!(path = %self.store.describe(), "checkpoint written");
                Ok(())
            }
            // Not a failure to retry: the caller stops (another process holds the job).
            Err(err) if err.ends_run() => Err(err),
            Err(err) => {
                let now = Instant::now();
                match &mut self.failing {
                    Some(e) => {
                        e.failures += 1;
                        e.backoff = (e.backoff * 2).min(MAX_BACKOFF);
                        e.next_attempt = now + e.backoff;
                        e.last_error = err.to_string();
                    }
                    None => {
                        tracing::warn!(
                            "{err}; copying continues and the write is retried with backoff; \
                             reads stop if checkpoints stay unwritten for {}",
                            humantime::format_duration(self.max_unwritten)
                        );
                        self.failing = Some(Episode {
                            since: now,
                            failures: 1,
                            backoff: FIRST_BACKOFF,
                            next_attempt: now + FIRST_BACKOFF,
                            last_error: err.to_string(),
                        });
                    }
                }
                Err(err)
            }
        }
    }

    /// Retries `cp` (made afresh by `make` for each attempt) until it is written, or until
    /// it has failed for `max_unwritten` counted from now: for checkpoints that must land
    /// (the last one of a run). Returns the last error when it gives up.
    pub fn save_before_giving_up(
        &mut self,
        mut make: impl FnMut() -> Checkpoint,
    ) -> Result<(), CheckpointError> {
        let deadline = Instant::now() + self.max_unwritten;
        loop {
            let err = match self.attempt(&make()) {
                Ok(()) => return Ok(()),
                Err(e) if e.ends_run() => return Err(e),
                Err(e) => e,
            };
            let next = self
                .failing
                .as_ref()
                .map_or(Instant::now(), |e| e.next_attempt);
            if next > deadline {
                return Err(err);
            }
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails its first `fail` saves.
    struct Flaky {
        fail: u32,
        calls: AtomicU32,
    }

    impl CheckpointStore for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
            Ok(None)
        }
        fn save(&self, _: &Checkpoint) -> Result<(), CheckpointError> {
            if self.calls.fetch_add(1, Ordering::Relaxed) < self.fail {
                Err(CheckpointError::Write {
                    path: "flaky".into(),
                    source: std::io::Error::other("injected"),
                })
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn retries_until_written_and_gives_up_after_the_bound() {
        let store = Flaky {
            fail: 3,
            calls: AtomicU32::new(0),
        };
        let mut s = RetryingSaver::new(&store, Duration::from_secs(30));
        s.save_before_giving_up(|| Checkpoint::new("j")).unwrap();
        assert_eq!(store.calls.load(Ordering::Relaxed), 4);
        assert!(!s.failing());

        let never = Flaky {
            fail: u32::MAX,
            calls: AtomicU32::new(0),
        };
        let mut s = RetryingSaver::new(&never, Duration::from_millis(500));
        let e = s
            .save_before_giving_up(|| Checkpoint::new("j"))
            .unwrap_err();
        assert!(matches!(e, CheckpointError::Write { .. }), "{e}");
        let calls = never.calls.load(Ordering::Relaxed);
        assert!((2..10).contains(&calls), "backed off: {calls} attempts");
        assert!(s.failing());
    }
}
