//! What a person watching a run sees on stderr: the live display of a one-shot run at a
//! terminal (bars with records and bytes done of the planned total, rate, ETA, a line per
//! route), the periodic plain progress line otherwise, and the one path every stderr write
//! takes while a display is drawn (so log lines print above the bars instead of through
//! them).
//!
//! The text is a pure function of a [`ProgressState`] ([`render`], [`plain_line`]): the copy
//! engine fills the state, [`RateMeter`] turns samples into rates, and [`LiveDisplay`] only
//! hands the rendered lines to `indicatif`, which redraws them in place.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::counts::Counts;

/// One (route, source partition) task as the display sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartitionState {
    pub route: String,
    pub counts: Counts,
    /// Bytes the target acknowledged.
    pub bytes: u64,
    /// Where the task started and where it is (the next offset to settle).
    pub start: i64,
    pub position: i64,
    /// The offset the task stops before, when it has one.
    pub end: Option<i64>,
    /// The partition's end as the run knows it (for the lag of a task without a fixed end).
    pub log_end: i64,
    pub done: bool,
    /// Why the task halted, if it did.
    pub halted: Option<String>,
    /// Why the task is retrying right now, if it is.
    pub retrying: Option<String>,
}

impl PartitionState {
    /// Offsets settled so far.
    pub fn offsets_done(&self) -> u64 {
        (self.position - self.start).max(0) as u64
    }

    /// Offsets between the start and the fixed end, if there is one.
    pub fn offsets_planned(&self) -> Option<u64> {
        self.end.map(|e| (e - self.start).max(0) as u64)
    }

    /// Records between the position and the end: the fixed end, else the partition's end.
    pub fn lag(&self) -> u64 {
        (self.end.unwrap_or(self.log_end) - self.position).max(0) as u64
    }
}

/// Rates over the last few seconds (see [`RateMeter`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Records settled (acknowledged, filtered, dead-lettered, skipped or failed) per second.
    pub records: f64,
    /// Offsets the positions moved per second (what the ETA divides by: gaps in a compacted
    /// topic move the position without records).
    pub offsets: f64,
    /// Bytes acknowledged per second.
    pub bytes: f64,
}

/// Everything a progress line or the live display shows, at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressState {
    pub elapsed: Duration,
    pub partitions: Vec<PartitionState>,
    pub rates: Rates,
    pub in_flight_bytes: u64,
    /// Set while checkpoints fail to be written, for this long.
    pub checkpoints_failing_for: Option<Duration>,
}

impl ProgressState {
    pub fn totals(&self) -> Counts {
        let mut c = Counts::default();
        for p in &self.partitions {
            c.add(&p.counts);
        }
        c
    }

    pub fn bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.bytes).sum()
    }

    pub fn lag(&self) -> u64 {
        self.partitions.iter().map(PartitionState::lag).sum()
    }

    /// (offsets done, offsets planned) when every task has a fixed end.
    pub fn planned(&self) -> Option<(u64, u64)> {
        planned(self.partitions.iter())
    }

    /// Time left at the current rate, when there is a plan and a rate.
    pub fn eta(&self) -> Option<Duration> {
        let (done, planned) = self.planned()?;
        let left = planned.saturating_sub(done);
        if left == 0 {
            return Some(Duration::ZERO);
        }
        (self.rates.offsets > 0.0)
            .then(|| Duration::from_secs_f64(left as f64 / self.rates.offsets))
    }

    /// Route names in the order their first task appears.
    fn routes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for p in &self.partitions {
            if !names.contains(&p.route.as_str()) {
                names.push(&p.route);
            }
        }
        names
    }
}

fn planned<'a>(mut parts: impl Iterator<Item = &'a PartitionState>) -> Option<(u64, u64)> {
    parts.try_fold((0, 0), |(d, n), p| {
        let planned = p.offsets_planned()?;
        Some((d + p.offsets_done().min(planned), n + planned))
    })
}

/// Turns (time, totals) samples into rates over a sliding window, so a display redrawn
/// several times a second shows a steady figure. Time is passed in, never read: a test
/// gives it the instants it wants.
#[derive(Debug, Clone)]
pub struct RateMeter {
    window: Duration,
    /// (elapsed, records settled, offsets done, bytes), oldest first.
    samples: VecDeque<(Duration, u64, u64, u64)>,
}

/// Samples kept at most (bounds memory whatever the redraw rate).
const MAX_SAMPLES: usize = 256;

/// The window rates are taken over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Default for RateMeter {
    fn default() -> Self {
        RateMeter::starting_at(Duration::ZERO)
    }
}

impl RateMeter {
    /// A meter for copying that starts `at` (time since the run started, after planning):
    /// its first sample is zero then, so the first rate is the average since, not nothing.
    pub fn starting_at(at: Duration) -> RateMeter {
        RateMeter::new(RATE_WINDOW, at)
    }

    pub fn new(window: Duration, at: Duration) -> RateMeter {
        RateMeter {
            window,
            samples: VecDeque::from([(at, 0, 0, 0)]),
        }
    }

    /// Records a sample of `state` taken `at` (time since the run started) and sets its
    /// `rates`: the change since the oldest sample in the window.
    pub fn sample(&mut self, at: Duration, state: &mut ProgressState) {
        let t = state.totals();
        let settled = t.read - t.pending();
        let offsets: u64 = state.partitions.iter().map(|p| p.offsets_done()).sum();
        self.samples
            .push_back((at, settled, offsets, state.bytes()));
        // Two samples stay whatever their age: a rate needs a span.
        while self.samples.len() > MAX_SAMPLES
            || (self.samples.len() > 2
                && self
                    .samples
                    .front()
                    .is_some_and(|(t0, ..)| at.saturating_sub(*t0) > self.window))
        {
            self.samples.pop_front();
        }
        let (t0, r0, o0, b0) = *self.samples.front().expect("just pushed");
        let secs = at.saturating_sub(t0).as_secs_f64();
        state.rates = if secs > 0.0 {
            Rates {
                records: settled.saturating_sub(r0) as f64 / secs,
                offsets: offsets.saturating_sub(o0) as f64 / secs,
                bytes: state.bytes().saturating_sub(b0) as f64 / secs,
            }
        } else {
            Rates::default()
        };
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A duration to the second, largest units first: `45s`, `3m 05s`, `2h 07m`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

fn percent(done: u64, planned: u64) -> u64 {
    (done.min(planned) * 100)
        .checked_div(planned)
        .unwrap_or(100)
}

/// A bar `width` cells wide for `done` of `planned`.
fn bar(done: u64, planned: u64, width: usize) -> String {
    let filled = if planned == 0 {
        width
    } else {
        ((done.min(planned) as u128 * width as u128) / planned as u128) as usize
    };
    let mut s = String::with_capacity(width + 2);
    s.push('[');
    s.push_str(&"#".repeat(filled));
    if filled < width {
        s.push('>');
        s.push_str(&"-".repeat(width - filled - 1));
    }
    s.push(']');
    s
}

/// `line` cut to `width` characters (a wrapped line would break the in-place redraw).
fn fit(line: String, width: usize) -> String {
    if line.chars().count() <= width {
        return line;
    }
    let mut s: String = line.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The live display's lines for `state` on a terminal `width` columns wide: the whole run
/// (a bar, records done of planned, bytes, rate, ETA), the counts (every record accounted
/// for, and the lag), then one line per route.
pub fn render(state: &ProgressState, width: usize) -> Vec<String> {
    let t = state.totals();
    let rate = format!(
        "{} records/s",
        thousands(state.rates.records.round() as u64)
    );
    let size = bytes(state.bytes());
    let head = match state.planned() {
        Some((done, planned)) => {
            let eta = match state.eta() {
                Some(d) => format!("ETA {}", duration(d)),
                None => "ETA -".into(),
            };
            format!(
                "{} {:>3}%  {}/{} records  {size}  {rate}  {eta}",
                bar(done, planned, 24),
                percent(done, planned),
                thousands(done),
                thousands(planned),
            )
        }
        // A task ends at a timestamp: no total to measure against.
        None => format!(
            "{} records  {size}  {rate}  (no fixed end: no ETA)",
            thousands(t.read - t.pending())
        ),
    };
    let mut counts = format!(
        "  read {} acked {} filtered {} dead-lettered {} skipped {} failed {}  lag {}  in flight {}  {} elapsed",
        thousands(t.read),
        thousands(t.acked),
        thousands(t.filtered),
        thousands(t.dead_lettered),
        thousands(t.skipped),
        thousands(t.failed),
        thousands(state.lag()),
        bytes(state.in_flight_bytes),
        duration(state.elapsed),
    );
    if let Some(d) = state.checkpoints_failing_for {
        counts.push_str(&format!("  CHECKPOINTS FAILING for {}", duration(d)));
    }
    let mut lines = vec![fit(head, width), fit(counts, width)];
    for route in state.routes() {
        let parts: Vec<&PartitionState> = state
            .partitions
            .iter()
            .filter(|p| p.route == route)
            .collect();
        let mut rt = Counts::default();
        for p in &parts {
            rt.add(&p.counts);
        }
        let done = parts.iter().filter(|p| p.done).count();
        let mut line = format!("  {route}: {done}/{} partitions done", parts.len());
        match planned(parts.iter().copied()) {
            Some((d, n)) => line.push_str(&format!(
                ", {}/{} ({}%)",
                thousands(d),
                thousands(n),
                percent(d, n)
            )),
            None => line.push_str(&format!(", {} records", thousands(rt.read - rt.pending()))),
        }
        for (n, what) in [
            (rt.dead_lettered, "dead-lettered"),
            (rt.skipped, "skipped"),
            (rt.failed, "failed"),
        ] {
            if n > 0 {
                line.push_str(&format!(", {} {what}", thousands(n)));
            }
        }
        let halted: Vec<&PartitionState> = parts
            .iter()
            .copied()
            .filter(|p| p.halted.is_some())
            .collect();
        if let Some(first) = halted.first() {
            line.push_str(&format!(
                "; {} HALTED ({})",
                halted.len(),
                first.halted.as_deref().unwrap_or_default()
            ));
        }
        let retrying: Vec<&PartitionState> = parts
            .iter()
            .copied()
            .filter(|p| p.halted.is_none() && !p.done && p.retrying.is_some())
            .collect();
        if let Some(first) = retrying.first() {
            line.push_str(&format!(
                "; {} retrying ({})",
                retrying.len(),
                first.retrying.as_deref().unwrap_or_default()
            ));
        }
        lines.push(fit(line, width));
    }
    lines
}

/// The periodic progress line logged when no live display is drawn (not a terminal, or a
/// run that follows): counts, lag, rate, in-flight bytes, an ETA where there is a plan, and
/// why partitions are stuck if they are.
pub fn plain_line(state: &ProgressState) -> String {
    let t = state.totals();
    let mut line = format!(
        "progress: read {} acked {} filtered {} dead-lettered {} skipped {} failed {} re-read {} lag {} ({:.0} records/s, {} KiB in flight",
        t.read,
        t.acked,
        t.filtered,
        t.dead_lettered,
        t.skipped,
        t.failed,
        t.retried,
        state.lag(),
        state.rates.records,
        state.in_flight_bytes / 1024
    );
    if let Some((done, planned)) = state.planned() {
        line.push_str(&format!(
            "; {}% of {planned} offsets",
            percent(done, planned)
        ));
        if let Some(eta) = state.eta() {
            line.push_str(&format!(", ETA {}", duration(eta)));
        }
    }
    if let Some(d) = state.checkpoints_failing_for {
        line.push_str(&format!(
            "; checkpoints failing for {:.0}s",
            d.as_secs_f64()
        ));
    }
    line.push(')');
    // A stalled copy says why in the same line (reasons: per partition in the warn lines
    // and the summary).
    let halted = state
        .partitions
        .iter()
        .filter(|p| p.halted.is_some())
        .count();
    let retrying: Vec<&str> = state
        .partitions
        .iter()
        .filter(|p| p.halted.is_none() && !p.done)
        .filter_map(|p| p.retrying.as_deref())
        .collect();
    match (retrying.first(), halted) {
        (None, 0) => {}
        (Some(why), h) => line.push_str(&format!(
            "; {} partitions retrying ({why}), {h} halted",
            retrying.len()
        )),
        (None, h) => line.push_str(&format!("; 0 partitions retrying, {h} halted")),
    }
    line
}

/// The display being drawn, if any: every stderr write goes above it (`write_stderr`).
static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Writes `bytes` to stderr; while a live display is drawn, its bars are cleared first and
/// redrawn after, so the text lands above them whole. Every log line takes this path
/// (`redact::RedactingStderr`).
pub fn write_stderr(bytes: &[u8]) {
    let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let write = || {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
    };
    match active {
        Some(mp) => mp.suspend(write),
        None => write(),
    }
}

/// How often the live display is redrawn.
pub const DRAW_EVERY: Duration = Duration::from_millis(200);

/// The live display on stderr: one line per [`render`] line, redrawn in place. Log lines
/// written meanwhile go above it. Cleared by [`LiveDisplay::finish`] (or when dropped),
/// before the summary prints.
pub struct LiveDisplay {
    mp: MultiProgress,
    lines: Mutex<Vec<ProgressBar>>,
}

impl std::fmt::Debug for LiveDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveDisplay")
    }
}

impl LiveDisplay {
    /// Starts drawing on stderr (hidden by indicatif if stderr is not a terminal).
    pub fn start() -> LiveDisplay {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(mp.clone());
        LiveDisplay {
            mp,
            lines: Mutex::new(Vec::new()),
        }
    }

    /// Redraws with `state`.
    pub fn draw(&self, state: &ProgressState) {
        let width = console::Term::stderr()
            .size_checked()
            .map(|(_, w)| w as usize)
            .unwrap_or(100);
        let text = render(state, width.max(20));
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        while lines.len() < text.len() {
            let style = ProgressStyle::with_template("{msg}").expect("a fixed template");
            lines.push(self.mp.add(ProgressBar::new_spinner().with_style(style)));
        }
        for (bar, line) in lines.iter().zip(text) {
            bar.set_message(line);
        }
    }

    /// Clears the display; stderr is written directly again.
    pub fn finish(&self) {
        let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
        for bar in self
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            bar.finish_and_clear();
        }
        let _ = self.mp.clear();
        *active = None;
    }
}

impl Drop for LiveDisplay {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(
        route: &str,
        start: i64,
        position: i64,
        end: Option<i64>,
        acked: u64,
    ) -> PartitionState {
        PartitionState {
            route: route.into(),
            counts: Counts {
                read: acked,
                produced: acked,
                acked,
                ..Default::default()
            },
            bytes: acked * 100,
            start,
            position,
            end,
            log_end: end.unwrap_or(position),
            done: end == Some(position),
            halted: None,
            retrying: None,
        }
    }

    /// Two routes, one done, one behind with a skipped record and a retrying partition.
    fn state() -> ProgressState {
        let mut behind = part("audit", 0, 1_000, Some(10_000), 999);
        behind.counts.read = 1_200;
        behind.counts.skipped = 1;
        behind.retrying = Some("delivery to dst failed: broker down".into());
        ProgressState {
            elapsed: Duration::from_secs(75),
            partitions: vec![
                part("orders", 0, 20_000, Some(20_000), 20_000),
                part("orders", 500, 20_500, Some(20_500), 20_000),
                behind,
            ],
            rates: Rates {
                records: 1_500.4,
                offsets: 1_800.0,
                bytes: 150_000.0,
            },
            in_flight_bytes: 200 * 1024,
            checkpoints_failing_for: None,
        }
    }

    #[test]
    fn renders_bars_counts_and_a_line_per_route() {
        let lines = render(&state(), 200);
        assert_eq!(
            lines,
            vec![
                "[###################>----]  82%  41,000/50,000 records  3.9 MiB  1,500 records/s  ETA 5s",
                "  read 41,200 acked 40,999 filtered 0 dead-lettered 0 skipped 1 failed 0  lag 9,000  in flight 200.0 KiB  1m 15s elapsed",
                "  orders: 2/2 partitions done, 40,000/40,000 (100%)",
                "  audit: 0/1 partitions done, 1,000/10,000 (10%), 1 skipped; 1 retrying (delivery to dst failed: broker down)",
            ]
        );
    }

    #[test]
    fn lines_fit_the_terminal_and_open_ends_have_no_eta() {
        let mut s = state();
        s.partitions[2].end = None;
        s.partitions[2].log_end = 4_000;
        s.partitions[1].halted = Some("record too large".into());
        s.partitions[1].done = false;
        s.partitions[1].position = 10_500;
        s.checkpoints_failing_for = Some(Duration::from_secs(3_700));
        let lines = render(&s, 60);
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{lines:#?}");
        assert_eq!(
            lines[0],
            "41,000 records  3.9 MiB  1,500 records/s  (no fixed end: no…"
        );
        let wide = render(&s, 400);
        assert!(
            wide[1].ends_with(
                "lag 13,000  in flight 200.0 KiB  1m 15s elapsed  CHECKPOINTS FAILING for 1h 01m"
            ),
            "{}",
            wide[1]
        );
        assert_eq!(
            wide[2],
            "  orders: 1/2 partitions done, 30,000/40,000 (75%); 1 HALTED (record too large)"
        );
        assert_eq!(wide[3], "  audit: 0/1 partitions done, 1,000 records, 1 skipped; 1 retrying (delivery to dst failed: broker down)");
    }

    #[test]
    fn plain_line_has_every_count_lag_and_eta() {
        assert_eq!(
            plain_line(&state()),
            "progress: read 41200 acked 40999 filtered 0 dead-lettered 0 skipped 1 failed 0 re-read 0 lag 9000 (1500 records/s, 200 KiB in flight; 82% of 50000 offsets, ETA 5s); 1 partitions retrying (delivery to dst failed: broker down), 0 halted"
        );
        let mut s = state();
        s.partitions[2].end = None;
        s.partitions[2].log_end = 1_000;
        s.partitions[2].retrying = None;
        s.checkpoints_failing_for = Some(Duration::from_secs(12));
        assert_eq!(
            plain_line(&s),
            "progress: read 41200 acked 40999 filtered 0 dead-lettered 0 skipped 1 failed 0 re-read 0 lag 0 (1500 records/s, 200 KiB in flight; checkpoints failing for 12s)"
        );
    }

    #[test]
    fn rates_come_from_the_window_of_samples() {
        let mut m = RateMeter::new(Duration::from_secs(10), Duration::ZERO);
        let mut s = ProgressState {
            partitions: vec![part("r", 0, 0, Some(10_000), 0)],
            ..Default::default()
        };
        m.sample(Duration::from_secs(0), &mut s);
        assert_eq!(s.rates, Rates::default());
        s.partitions[0] = part("r", 0, 2_000, Some(10_000), 1_000);
        m.sample(Duration::from_secs(2), &mut s);
        assert_eq!(
            s.rates,
            Rates {
                records: 500.0,
                offsets: 1_000.0,
                bytes: 50_000.0
            }
        );
        assert_eq!(s.eta(), Some(Duration::from_secs(8)));
        // Twenty seconds later the first samples have left the window.
        s.partitions[0] = part("r", 0, 8_000, Some(10_000), 7_000);
        m.sample(Duration::from_secs(22), &mut s);
        s.partitions[0] = part("r", 0, 9_000, Some(10_000), 8_000);
        m.sample(Duration::from_secs(24), &mut s);
        assert_eq!(s.rates.records, 500.0);
        assert_eq!(s.rates.offsets, 500.0);
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(185)), "3m 05s");
        assert_eq!(duration(Duration::from_secs(7_620)), "2h 07m");
        assert_eq!(bar(1, 4, 8), "[##>-----]");
        assert_eq!(bar(4, 4, 8), "[########]");
        assert_eq!(bar(0, 0, 4), "[####]");
    }
}
