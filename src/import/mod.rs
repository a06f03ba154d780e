//! `kmirror import`: replay a dump file (kcat -J output, JSONL values, or JSON records) into
//! a target cluster through a route, validated line by line. Owns the import loop; the line
//! formats are in `line.rs` (over the byte-exact reader in `json.rs`) and the resume position
//! in `state.rs`.
//!
//! A line that is not a record, or that the route's filter or validation refuses, is never
//! produced raw and never stops the import unless the route says `on_error = "stop"`: it goes
//! to the dead-letter topic (`on_error = "dead_letter"`) or to the rejects file with its line
//! number and the error. Every line is accounted for: read = produced + filtered + rejected.

mod json;
pub mod line;
mod report;
pub mod state;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde_json::json;

use crate::checkpoint::CheckpointError;
use crate::cluster::{self, ClusterError};
use crate::config::{Config, ErrorAction, FileSource, Partitioning, RouteConfig};
use crate::copy::filter::{Decision, RecordView};
use crate::copy::produce::producer_config;
use crate::copy::record::{
    RawHeader, DLQ_ERROR_HEADER, DLQ_ROUTE_HEADER, DLQ_SOURCE_HEADER, PROVENANCE_HEADER,
};
use crate::rate_limit::Limiter;

pub use report::{ImportReport, RouteImport};
pub use state::{Counts, ImportState};

/// How many rejected lines a report names (all of them are in the rejects file).
pub const FIRST_REJECTED: usize = 10;

/// Lines read ahead of the oldest unacknowledged one, at most (besides the byte bound).
const MAX_PENDING_LINES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("import \"{route}\": cannot read {path}: {source}")]
    Read {
        route: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("import \"{route}\": cannot write the rejects file {path}: {source}")]
    Rejects {
        route: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("import \"{route}\": {path} is not the file this import was reading (its first {checked} bytes changed since the state in {state} was written); refusing to resume in the middle of another file. Run again with --restart to import it from its first line")]
    FileChanged {
        route: String,
        path: String,
        checked: u64,
        state: String,
    },
    #[error(transparent)]
    State(#[from] CheckpointError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("no route reads a [files] source{0}")]
    NothingToImport(String),
}

#[derive(Debug, Default, Clone)]
pub struct ImportOptions {
    /// Only this route.
    pub route: Option<String>,
    /// Forget where earlier imports stopped (and their rejects file): start at line 1.
    pub restart: bool,
}

/// Imports every route that reads a file (or `opts.route`), one after another. The caller
/// holds the job lock.
pub fn run(
    cfg: &Config,
    opts: &ImportOptions,
    stop: &AtomicBool,
) -> Result<ImportReport, ImportError> {
    let routes: Vec<&RouteConfig> = cfg
        .imports
        .iter()
        .filter(|r| opts.route.as_ref().is_none_or(|n| *n == r.name))
        .collect();
    if routes.is_empty() {
        return Err(ImportError::NothingToImport(match &opts.route {
            Some(n) => format!(" under the name \"{n}\""),
            None => String::new(),
        }));
    }
    let mut out = Vec::new();
    for route in routes {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        out.push(import_route(cfg, route, opts, stop)?);
    }
    Ok(ImportReport { routes: out })
}

/// What became of one line, in file order, until it is settled.
enum Pending {
    Produced(Sent),
    DeadLettered(Sent, String),
    Filtered,
    Rejected(String),
    Blank,
}

/// A record handed to librdkafka, until its delivery is known.
enum Sent {
    Waiting(DeliveryFuture),
    Done(Result<(), KafkaError>),
}

struct Slot {
    line: u64,
    /// Byte offset just past the line.
    end: u64,
    bytes: u64,
    what: Pending,
}

struct Run<'a> {
    cfg: &'a Config,
    route: &'a RouteConfig,
    file: &'a FileSource,
    producer: FutureProducer,
    dlq_producer: Option<FutureProducer>,
    /// Partition counts of the target topics met so far.
    partitions: BTreeMap<String, i32>,
    round_robin: u64,
    pending: VecDeque<Slot>,
    pending_bytes: u64,
    st: ImportState,
    state_path: PathBuf,
    rejects_path: PathBuf,
    rejects: Option<BufWriter<File>>,
    report: RouteImport,
    prov: String,
}

fn import_route(
    cfg: &Config,
    route: &RouteConfig,
    opts: &ImportOptions,
    stop: &AtomicBool,
) -> Result<RouteImport, ImportError> {
    let started = Instant::now();
    let file = &cfg.files[&route.source];
    let state_path = ImportState::path_for(&cfg.checkpoints.dir, &cfg.job, &route.name);
    let rejects_path = file.rejects.clone().unwrap_or_else(|| {
        cfg.checkpoints
            .dir
            .join(format!("{}.{}.rejects.jsonl", cfg.job, route.name))
    });
    let read_err = |source| ImportError::Read {
        route: route.name.clone(),
        path: file.path.display().to_string(),
        source,
    };
    let mut input = File::open(&file.path).map_err(read_err)?;
    let st = if opts.restart {
        None
    } else {
        ImportState::load(&state_path, &cfg.job, &route.name)?
    };
    let st = match st {
        Some(st) => {
            let fp = state::fingerprint_file(&mut input, st.position).map_err(read_err)?;
            let len = input.metadata().map_err(read_err)?.len();
            if fp != st.fingerprint || len < st.position {
                return Err(ImportError::FileChanged {
                    route: route.name.clone(),
                    path: file.path.display().to_string(),
                    checked: st.position.min(1 << 20),
                    state: state_path.display().to_string(),
                });
            }
            st
        }
        None => {
            // A fresh start: the rejects of earlier runs describe lines read again now.
            if rejects_path.exists() {
                std::fs::remove_file(&rejects_path).map_err(|source| ImportError::Rejects {
                    route: route.name.clone(),
                    path: rejects_path.display().to_string(),
                    source,
                })?;
            }
            ImportState::new(&cfg.job, &route.name, &file.path)
        }
    };
    let target = &cfg.clusters[&route.target];
    let mk = |c: &crate::config::ClusterConfig| {
        producer_config(c, &cfg.limits)
            .create::<FutureProducer>()
            .map_err(|e| ClusterError::Client {
                cluster: c.name.clone(),
                detail: e.to_string(),
            })
    };
    let producer = mk(target)?;
    let dlq_producer = match (&route.on_error, &route.dead_letter) {
        (ErrorAction::DeadLetter, Some(dl)) => Some(mk(&cfg.clusters[&dl.cluster])?),
        _ => None,
    };
    let report = RouteImport {
        route: route.name.clone(),
        file: file.path.clone(),
        format: file.format.name(),
        target: route.target.clone(),
        counts: st.counts,
        resumed_at_line: st.line,
        already_done: false,
        first_rejected: Vec::new(),
        rejects_file: None,
        stopped_at: None,
        failed: None,
        interrupted: false,
        elapsed: Duration::ZERO,
    };
    let mut run = Run {
        cfg,
        route,
        file,
        producer,
        dlq_producer,
        partitions: BTreeMap::new(),
        round_robin: 0,
        pending: VecDeque::new(),
        pending_bytes: 0,
        st,
        state_path,
        rejects_path,
        rejects: None,
        report,
        prov: String::new(),
    };
    let len = input.metadata().map_err(read_err)?.len();
    if run.st.done && run.st.position >= len {
        run.report.already_done = true;
        run.report.elapsed = started.elapsed();
        tracing::info!(route = %route.name, file = %file.path.display(), "already imported to its end: nothing new");
        return Ok(run.report);
    }
    run.st.done = false;
    run.open_rejects()?;
    input
        .seek(SeekFrom::Start(run.st.position))
        .map_err(read_err)?;
    let result = run.read_all(input, stop);
    // Whatever happened, settle what was sent and save where that leaves the import.
    let settled = run.settle_all();
    if let Some(w) = run.rejects.as_mut() {
        let _ = w.flush();
    }
    let saved = run.save();
    result?;
    settled?;
    saved?;
    if run.report.complete() {
        run.st.done = true;
        run.save()?;
    }
    run.report.counts = run.st.counts;
    if run.st.counts.rejected > 0 && run.dlq_producer.is_none() {
        run.report.rejects_file = Some(run.rejects_path.clone());
    }
    run.report.elapsed = started.elapsed();
    Ok(run.report)
}

impl Run<'_> {
    fn open_rejects(&mut self) -> Result<(), ImportError> {
        let err = |source| ImportError::Rejects {
            route: self.route.name.clone(),
            path: self.rejects_path.display().to_string(),
            source,
        };
        if let Some(dir) = self.rejects_path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.rejects_path)
            .map_err(err)?;
        // Lines rejected after the saved position are rejected again on this run.
        f.set_len(self.st.rejects_len).map_err(err)?;
        let mut f = f;
        f.seek(SeekFrom::End(0)).map_err(err)?;
        self.rejects = Some(BufWriter::new(f));
        Ok(())
    }

    fn read_all(&mut self, input: File, stop: &AtomicBool) -> Result<(), ImportError> {
        let limiter = Limiter::new(self.route.rate);
        let global = Limiter::new(self.cfg.limits.rate);
        let mut reader = BufReader::with_capacity(1 << 20, input);
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut pos = self.st.position;
        let mut line_no = self.st.line;
        let mut last_save = Instant::now();
        let max_bytes = self.cfg.limits.max_in_flight_bytes;
        loop {
            if stop.load(Ordering::Relaxed) {
                self.report.interrupted = true;
                return Ok(());
            }
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|source| ImportError::Read {
                    route: self.route.name.clone(),
                    path: self.file.path.display().to_string(),
                    source,
                })?;
            if n == 0 {
                return Ok(());
            }
            line_no += 1;
            pos += n as u64;
            let mut line: &[u8] = &buf;
            if let Some(l) = line.strip_suffix(b"\n") {
                line = l.strip_suffix(b"\r").unwrap_or(l);
            }
            for l in [&limiter, &global].into_iter().flatten() {
                if !l.acquire(1, line.len() as u64, stop) {
                    self.report.interrupted = true;
                    return Ok(());
                }
            }
            let what = self.one_line(line, line_no)?;
            let stopping =
                matches!(what, Pending::Rejected(_)) && self.route.on_error == ErrorAction::Stop;
            self.pending_bytes += line.len() as u64;
            self.pending.push_back(Slot {
                line: line_no,
                end: pos,
                bytes: line.len() as u64,
                what,
            });
            while self.pending.len() > MAX_PENDING_LINES || self.pending_bytes > max_bytes {
                self.settle_front(true)?;
            }
            if self.report.failed.is_some() || stopping {
                return Ok(());
            }
            if last_save.elapsed() >= self.cfg.checkpoints.interval {
                self.settle_ready()?;
                self.save()?;
                last_save = Instant::now();
            }
        }
    }

    /// Decides one line and sends it on (produce or dead-letter) without waiting.
    fn one_line(&mut self, line: &[u8], line_no: u64) -> Result<Pending, ImportError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(Pending::Blank);
        }
        let rec = match line::parse(line, self.file) {
            Ok(r) => r,
            Err(why) => return self.reject(line, line_no, why),
        };
        if !self.route.matches_topic(&rec.topic) {
            return Ok(Pending::Filtered);
        }
        let headers: Vec<RawHeader<'_>> = rec
            .headers
            .iter()
            .map(|(n, v)| RawHeader {
                name: n,
                value: v.as_deref(),
            })
            .collect();
        let size = rec.key.as_ref().map_or(0, |k| k.len())
            + rec.value.as_ref().map_or(0, |v| v.len())
            + headers
                .iter()
                .map(|h| h.name.len() + h.value.map_or(0, <[u8]>::len))
                .sum::<usize>();
        let view = RecordView::new(
            rec.key.as_deref(),
            rec.value.as_deref(),
            rec.timestamp,
            headers,
        );
        match self.route.decide(&view, size as u64) {
            Decision::Filtered => return Ok(Pending::Filtered),
            Decision::Poison(why) => return self.reject(line, line_no, why),
            Decision::Copy => {}
        }
        let topic = self
            .route
            .target_topic
            .render(&rec.topic, &self.file.name, &self.route.name);
        let partitions = self.target_partitions(&topic, &rec)?;
        let partition = match self.route.partitioning {
            Partitioning::Preserve => match rec.partition {
                Some(p) if p >= partitions => {
                    return self.reject(
                        line,
                        line_no,
                        format!(
                            "partition {p}: target topic \"{topic}\" has {partitions} partitions (partitioning = \"preserve\")"
                        ),
                    )
                }
                p => p,
            },
            Partitioning::Key => None,
            Partitioning::RoundRobin => {
                self.round_robin += 1;
                Some((self.round_robin % partitions.max(1) as u64) as i32)
            }
        };
        let mut h = OwnedHeaders::new_with_capacity(rec.headers.len() + 1);
        let transform = &self.route.headers;
        for (n, v) in &rec.headers {
            let name = String::from_utf8_lossy(n);
            if transform.drop.iter().any(|d| *d == name)
                || transform.set.iter().any(|(k, _)| *k == name)
            {
                continue;
            }
            h = h.insert(Header {
                key: &name,
                value: v.as_deref(),
            });
        }
        for (k, v) in &transform.set {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        if self.route.provenance {
            self.prov = format!(
                "{}@{}/{}/{}/{}",
                self.route.name,
                self.file.name,
                rec.topic,
                rec.partition.unwrap_or(0),
                rec.offset.unwrap_or(line_no as i64)
            );
            h = h.insert(Header {
                key: PROVENANCE_HEADER,
                value: Some(self.prov.as_bytes()),
            });
        }
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(h);
        if let Some(k) = rec.key.as_deref() {
            fr = fr.key(k);
        }
        if let Some(v) = rec.value.as_deref() {
            fr = fr.payload(v);
        }
        if let Some(ts) = rec.timestamp {
            fr = fr.timestamp(ts);
        }
        if let Some(p) = partition {
            fr = fr.partition(p);
        }
        let fut = send(&self.producer, fr);
        Ok(Pending::Produced(fut))
    }

    fn reject(&mut self, line: &[u8], line_no: u64, why: String) -> Result<Pending, ImportError> {
        match (
            &self.route.on_error,
            &self.route.dead_letter,
            &self.dlq_producer,
        ) {
            (ErrorAction::DeadLetter, Some(dl), Some(p)) => {
                let source = format!("file:{}:{line_no}", self.file.path.display());
                let h = OwnedHeaders::new_with_capacity(3)
                    .insert(Header {
                        key: DLQ_ERROR_HEADER,
                        value: Some(why.as_bytes()),
                    })
                    .insert(Header {
                        key: DLQ_ROUTE_HEADER,
                        value: Some(self.route.name.as_bytes()),
                    })
                    .insert(Header {
                        key: DLQ_SOURCE_HEADER,
                        value: Some(source.as_bytes()),
                    });
                let fr: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&dl.topic).payload(line).headers(h);
                Ok(Pending::DeadLettered(send(p, fr), why))
            }
            (ErrorAction::Stop, ..) => Ok(Pending::Rejected(why)),
            _ => {
                let mut entry = json!({ "line": line_no, "error": why });
                match std::str::from_utf8(line) {
                    Ok(t) => entry["text"] = json!(t),
                    Err(_) => {
                        entry["text_hex"] =
                            json!(line.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    }
                }
                let w = self.rejects.as_mut().expect("the rejects file is open");
                serde_json::to_writer(&mut *w, &entry)
                    .map_err(std::io::Error::from)
                    .and_then(|_| w.write_all(b"\n"))
                    .map_err(|source| ImportError::Rejects {
                        route: self.route.name.clone(),
                        path: self.rejects_path.display().to_string(),
                        source,
                    })?;
                Ok(Pending::Rejected(why))
            }
        }
    }

    /// The partition count of a target topic, creating the topic first when the route
    /// says so.
    fn target_partitions(
        &mut self,
        topic: &str,
        rec: &line::LineRecord<'_>,
    ) -> Result<i32, ImportError> {
        if let Some(n) = self.partitions.get(topic) {
            return Ok(*n);
        }
        let cluster = &self.cfg.clusters[&self.route.target];
        let timeout = self.cfg.run.connect_timeout;
        let count = |p: &FutureProducer| -> Result<Option<i32>, ClusterError> {
            let md = p
                .client()
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| ClusterError::Client {
                    cluster: cluster.name.clone(),
                    detail: format!("metadata of topic \"{topic}\": {e}"),
                })?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len() as i32)
                .filter(|n| *n > 0))
        };
        let n = match count(&self.producer)? {
            Some(n) => n,
            None if self.route.create_target_topics => {
                let want = match self.route.partitioning {
                    Partitioning::Preserve => {
                        max_partition(self.file, topic, self.route)
                            .max(rec.partition.unwrap_or(0))
                            + 1
                    }
                    _ => 1,
                };
                cluster::create_topic(cluster, topic, want, timeout)?;
                want
            }
            None => {
                return Err(ClusterError::TopicMissing {
                    cluster: cluster.name.clone(),
                    topic: topic.into(),
                    hint: format!(
                        " (route \"{}\" imports into it; create it, or set create_target_topics = true)",
                        self.route.name
                    ),
                }
                .into())
            }
        };
        self.partitions.insert(topic.to_string(), n);
        Ok(n)
    }

    /// Settles the oldest line: with `block`, waits for its delivery if it was sent;
    /// without, settles it only if nothing is left to wait for. Whether it was settled.
    fn settle_front(&mut self, block: bool) -> Result<bool, ImportError> {
        let Some(front) = self.pending.front_mut() else {
            return Ok(false);
        };
        if let Pending::Produced(sent) | Pending::DeadLettered(sent, _) = &mut front.what {
            if let Sent::Waiting(f) = sent {
                let r = if block {
                    futures::executor::block_on(f)
                } else {
                    let waker = futures::task::noop_waker();
                    let mut cx = std::task::Context::from_waker(&waker);
                    match std::pin::Pin::new(f).poll(&mut cx) {
                        std::task::Poll::Ready(r) => r,
                        std::task::Poll::Pending => return Ok(false),
                    }
                };
                *sent = Sent::Done(match r {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                });
            }
        }
        let slot = self.pending.pop_front().expect("a front slot");
        self.pending_bytes -= slot.bytes;
        let c = &mut self.st.counts;
        match slot.what {
            Pending::Blank => c.blank += 1,
            Pending::Filtered => {
                c.read += 1;
                c.filtered += 1;
            }
            Pending::Rejected(why) if self.route.on_error == ErrorAction::Stop => {
                // Not accounted for and not passed: the next run stops here again until
                // the line is fixed or removed.
                tracing::error!(route = %self.route.name, file = %self.file.path.display(), line = slot.line, "stopped at a rejected line (on_error = \"stop\"): {why}");
                self.report.stopped_at = Some((slot.line, why));
                self.pending.clear();
                self.pending_bytes = 0;
                return Ok(true);
            }
            Pending::Rejected(why) => {
                c.read += 1;
                c.rejected += 1;
                self.note_rejected(slot.line, why);
            }
            Pending::Produced(Sent::Done(Err(e)))
            | Pending::DeadLettered(Sent::Done(Err(e)), _) => {
                self.delivery_failed(slot.line, e);
                return Ok(true);
            }
            Pending::Produced(_) => {
                c.read += 1;
                c.produced += 1;
            }
            Pending::DeadLettered(_, why) => {
                c.read += 1;
                c.rejected += 1;
                c.dead_lettered += 1;
                self.note_rejected(slot.line, why);
            }
        }
        self.st.position = slot.end;
        self.st.line = slot.line;
        Ok(true)
    }

    fn note_rejected(&mut self, line: u64, why: String) {
        if self.report.first_rejected.len() < FIRST_REJECTED {
            tracing::warn!(route = %self.route.name, file = %self.file.path.display(), line, "line rejected: {why}");
            self.report.first_rejected.push((line, why));
        } else if self.report.first_rejected.len() == FIRST_REJECTED {
            tracing::warn!(route = %self.route.name, "more lines rejected: every one is in {}", self.rejects_path.display());
        }
    }

    /// The target refused or lost a line: stop; nothing after it counts (a rerun resumes
    /// at it).
    fn delivery_failed(&mut self, line: u64, e: KafkaError) {
        let why = format!(
            "line {line} could not be delivered to cluster \"{}\": {e}",
            self.route.target
        );
        tracing::error!(route = %self.route.name, "{why}");
        self.report.failed = Some(why);
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Settles the lines at the front that need no waiting.
    fn settle_ready(&mut self) -> Result<(), ImportError> {
        while self.report.failed.is_none() && self.settle_front(false)? {}
        Ok(())
    }

    fn settle_all(&mut self) -> Result<(), ImportError> {
        while self.settle_front(true)? {}
        Ok(())
    }

    fn save(&mut self) -> Result<(), ImportError> {
        if let Some(w) = self.rejects.as_mut() {
            w.flush().map_err(|source| ImportError::Rejects {
                route: self.route.name.clone(),
                path: self.rejects_path.display().to_string(),
                source,
            })?;
            let _ = w.get_ref().sync_data();
            // Only the rejects of settled lines count; later ones are written again on resume.
            self.st.rejects_len =
                rejects_len_at(&self.rejects_path, &self.pending).unwrap_or(self.st.rejects_len);
        }
        let mut f = File::open(&self.file.path).map_err(|source| ImportError::Read {
            route: self.route.name.clone(),
            path: self.file.path.display().to_string(),
            source,
        })?;
        self.st.fingerprint =
            state::fingerprint_file(&mut f, self.st.position).map_err(|source| {
                ImportError::Read {
                    route: self.route.name.clone(),
                    path: self.file.path.display().to_string(),
                    source,
                }
            })?;
        self.st.updated_at = crate::config::value::format_ms(crate::config::value::now_ms());
        self.st.save(&self.state_path)?;
        Ok(())
    }
}

/// The length of the rejects file without the entries of lines still pending (rejected
/// but not yet settled): those are after the saved position and are rejected again on
/// resume. Entries are one line each, in line order.
fn rejects_len_at(path: &Path, pending: &VecDeque<Slot>) -> std::io::Result<u64> {
    let unsettled = pending
        .iter()
        .filter(|s| matches!(s.what, Pending::Rejected(_)))
        .count();
    let text = std::fs::read(path)?;
    if unsettled == 0 {
        return Ok(text.len() as u64);
    }
    // Drop the last `unsettled` entries.
    let mut end = text.len();
    for _ in 0..unsettled {
        let body = &text[..end.saturating_sub(1)];
        end = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    }
    Ok(end as u64)
}

/// The highest partition number the dump names for lines the route sends to `topic`
/// (to create it big enough for partitioning = "preserve"); 0 when it names none.
fn max_partition(file: &FileSource, topic: &str, route: &RouteConfig) -> i32 {
    let Ok(f) = File::open(&file.path) else {
        return 0;
    };
    let mut max = 0;
    let mut buf = Vec::new();
    let mut r = BufReader::with_capacity(1 << 20, f);
    while let Ok(n) = r.read_until(b'\n', &mut buf) {
        if n == 0 {
            break;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if let Ok(rec) = line::parse(line, file) {
            if route
                .target_topic
                .render(&rec.topic, &file.name, &route.name)
                == topic
            {
                max = max.max(rec.partition.unwrap_or(0));
            }
        }
        buf.clear();
    }
    max
}

/// Sends a record, waiting while the producer's queue is full (the in-flight bound keeps
/// that rare). Any other error is settled, in line order, as a failed delivery.
fn send(p: &FutureProducer, mut fr: FutureRecord<'_, [u8], [u8]>) -> Sent {
    loop {
        match p.send_result(fr) {
            Ok(f) => return Sent::Waiting(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                fr = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Sent::Done(Err(e)),
        }
    }
}
