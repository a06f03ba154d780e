//! `[verify] interval`: verification inside a following `run`. Every interval it verifies
//! what was copied since the last matching verification (`verify --since-last`, positions
//! remembered beside the checkpoint), so a long-running mirror proves its copy as it goes at
//! the cost of reading each record once more. A difference or a failed verification is
//! logged at warn once per episode (and again only after a verification matched), and counted
//! for the run's closing lines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{verify_with, VerifyError, VerifyOptions};
use crate::config::Config;

/// What the verifications inside one run found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    /// Verifications that ran to a verdict.
    pub done: u64,
    /// Of those, how many found a difference (some partition not OK).
    pub mismatched: u64,
    /// Verifications that could not complete (a cluster error, say).
    pub failed: u64,
}

/// Verifies every `every` until `stop` is raised; returns what the rounds found.
pub fn run_every(config: &Config, every: Duration, stop: &AtomicBool) -> Rounds {
    let mut rounds = Rounds::default();
    let mut failing = false;
    loop {
        let due = Instant::now() + every;
        while Instant::now() < due {
            if stop.load(Ordering::Relaxed) {
                return rounds;
            }
            std::thread::sleep(Duration::from_millis(100).min(every));
        }
        round(config, &mut rounds, &mut failing);
    }
}

/// One verification of what was copied since the last matching one. `failing` carries the
/// episode across rounds: warn on entering it, info on leaving it.
pub fn round(config: &Config, rounds: &mut Rounds, failing: &mut bool) {
    let store = crate::checkpoint::open(config);
    let opts = VerifyOptions {
        since_last: true,
        remember: true,
        ..Default::default()
    };
    // Exactly-once promises no duplicates: in-run verification counts one as a difference.
    let fail_on_duplicates = config.delivery.exactly_once();
    match verify_with(config, &store, None, fail_on_duplicates, &opts) {
        Ok(report) if report.ok() => {
            rounds.done += 1;
            if std::mem::take(failing) {
                tracing::info!("verify (in run): matches again: {}", report.summary());
            } else {
                tracing::info!("verify (in run): {}", report.summary());
            }
        }
        Ok(report) => {
            rounds.done += 1;
            rounds.mismatched += 1;
            if !std::mem::replace(failing, true) {
                tracing::warn!(
                    "verify (in run) found differences; `kmirror verify --since-last` shows them: {}",
                    report.summary()
                );
            }
        }
        // Nothing copied yet: nothing to prove.
        Err(VerifyError::Nothing(_)) => {}
        Err(e) => {
            rounds.failed += 1;
            if !std::mem::replace(failing, true) {
                tracing::warn!("verify (in run) failed: {e}");
            }
        }
    }
}
