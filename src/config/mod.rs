//! The routing file: loading, the checked `Config` every other module reads, and the rules
//! that refuse a bad file before anything connects.
//!
//! Two stages, as in ripgrep: `raw` is what serde can parse (unknown keys refused); `check`
//! turns it into `Config` (regexes compiled, clusters resolved, rates non-zero, start before
//! end), collecting every problem with its `file:line:column`, key, value and rule.
//! `check` here holds the whole-file rules; `route` checks one `[[routes]]` entry.

mod delivery;
mod diag;
pub mod files;
pub mod filter;
mod group;
mod raw;
mod route;
mod schema;
pub mod value;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use toml::Spanned;

use crate::copy::filter::{Decision, Outcome, RecordView};

pub use delivery::{
    DeliverySettings, Guarantee, DEFAULT_COMMIT_INTERVAL, DEFAULT_MAX_RECORDS_PER_TRANSACTION,
};
use diag::Diagnostics;
pub use diag::{Diagnostic, Location, SourceText};
pub use files::{FieldNames, FileFormat, FileSource};
pub use filter::{DeadLetter, ErrorAction, HeaderTransform};
pub use group::{GroupSettings, DEFAULT_SESSION_TIMEOUT, INSTANCE_ID_ENV};
use raw::{RawCheckpoints, RawConfig};
use route::{check_route, RouteDefaults};

/// Librdkafka properties kmirror sets itself; setting them in `properties` is refused
/// because the copy path's guarantees depend on them.
const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use the cluster's `bootstrap` key"),
    ("metadata.broker.list", "use the cluster's `bootstrap` key"),
    (
        "enable.auto.commit",
        "kmirror never commits to consumer groups; progress is checkpointed",
    ),
    (
        "enable.auto.offset.store",
        "kmirror never commits to consumer groups; progress is checkpointed",
    ),
    (
        "auto.offset.reset",
        "use the route's `start` and `on_offset_out_of_range`",
    ),
    (
        "enable.idempotence",
        "the target producer is always idempotent",
    ),
    (
        "enable.partition.eof",
        "kmirror needs end-of-partition events to detect `end`",
    ),
    (
        "transactional.id",
        "transactions are not used by this version",
    ),
    (
        "group.id",
        "kmirror reads by manual assignment, never through a consumer group",
    ),
];

/// Errors loading the routing file. Every problem carries its position.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not a `#[source]`: the message already says it, and `{:#}` would print it twice.
    #[error("{path}: cannot read routing file: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(items: &[Diagnostic]) -> String {
    let mut s = String::new();
    for (i, d) in items.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&d.to_string());
    }
    if items.len() > 1 {
        s.push_str(&format!("\n{} problems in the routing file", items.len()));
    }
    s
}

impl ConfigError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            ConfigError::Read { .. } => &[],
        }
    }
}

/// The checked routing file.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// Identity of this routing job; checkpoints from another job are refused.
    pub job: String,
    pub clusters: BTreeMap<String, ClusterConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[files.NAME]`: dumps routes can import.
    pub files: BTreeMap<String, FileSource>,
    /// Routes whose source is a file (`kmirror import`); not in `routes`.
    pub imports: Vec<RouteConfig>,
    /// `[clusters.NAME] archive = "dir"` or `"s3://bucket/prefix"`: archives
    /// (`crate::archive`) routes dump into or restore from, by name, a directory resolved
    /// against the routing file's. Not in `clusters`,
    /// so nothing that connects to brokers ever sees them.
    pub archives: BTreeMap<String, crate::archive::Root>,
    pub limits: Limits,
    pub checkpoints: CheckpointSettings,
    pub run: RunSettings,
    pub http: HttpSettings,
    pub verify: VerifySettings,
    /// `[group]`: replicas sharing the source partitions (`crate::copy::ownership`).
    pub group: Option<GroupSettings>,
    /// `[delivery]`: at-least-once (the default) or exactly-once (`crate::copy::transaction`).
    pub delivery: DeliverySettings,
}

/// `[verify]`: verification inside a following `run`.
#[derive(Debug, Clone, Default)]
pub struct VerifySettings {
    /// Verify what was copied since the last verification (`verify --since-last`) this often
    /// while `run` follows; `None`: never.
    pub interval: Option<Duration>,
}

#[derive(Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub bootstrap: String,
    /// Passed to librdkafka as-is (after `${ENV}` expansion).
    pub properties: BTreeMap<String, String>,
}

impl ClusterConfig {
    /// Properties with secret values replaced, for printing and logging: secret-looking
    /// keys, and any value holding a registered secret (e.g. one from `${ENV}`).
    pub fn redacted_properties(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_key(k) || crate::redact::contains_secret(v) {
                    "******".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("bootstrap", &self.bootstrap)
            .field("properties", &self.redacted_properties())
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (password, key, token, JAAS config).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("token")
        || k.contains("jaas")
        || k.contains("credential")
        || k == "sasl.oauthbearer.config"
        || k.ends_with(".key")
        || k.ends_with(".pem")
        || k.contains("key.pem")
        || k == "ssl.key"
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// Source partition N goes to target partition N.
    Preserve,
    /// Java-compatible murmur2 hash of the key (null keys spread randomly).
    Key,
    RoundRobin,
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Partitioning::Preserve => "preserve",
            Partitioning::Key => "key",
            Partitioning::RoundRobin => "round_robin",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    Earliest,
    Latest,
    Offset(i64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    /// Resolved against the clock when the run starts.
    Ago(Duration),
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Earliest => f.write_str("earliest"),
            StartPosition::Latest => f.write_str("latest"),
            StartPosition::Offset(o) => write!(f, "offset {o}"),
            StartPosition::Timestamp(t) => write!(f, "{}", value::format_ms(*t)),
            StartPosition::Ago(d) => write!(f, "{} ago", humantime::format_duration(*d)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndPosition {
    /// Follow forever.
    None,
    /// The high watermarks seen when the run starts.
    Snapshot,
    /// Stop before this offset.
    Offset(i64),
    /// Stop at the first record whose timestamp is at or after this (ms since epoch).
    Timestamp(i64),
}

impl fmt::Display for EndPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndPosition::None => f.write_str("none"),
            EndPosition::Snapshot => f.write_str("snapshot"),
            EndPosition::Offset(o) => write!(f, "offset {o}"),
            EndPosition::Timestamp(t) => write!(f, "{}", value::format_ms(*t)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRangePolicy {
    /// Halt the partition and report the gap.
    Fail,
    /// Report the gap loudly, then continue from the earliest retained offset.
    Earliest,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub messages_per_sec: Option<NonZeroU32>,
    pub bytes_per_sec: Option<NonZeroU64>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub source: String,
    pub topics: Vec<String>,
    pub topic_regex: Option<Regex>,
    pub target: String,
    pub target_topic: TopicTemplate,
    pub partitioning: Partitioning,
    pub start: StartPosition,
    pub end: EndPosition,
    pub rate: RateLimits,
    pub on_offset_out_of_range: OutOfRangePolicy,
    pub create_target_topics: bool,
    /// Add the `kmirror.source` header naming the source record.
    pub provenance: bool,
    /// Which records to copy (None: all).
    pub filter: Option<crate::copy::filter::Filter>,
    pub validate: crate::copy::validate::Validation,
    pub headers: HeaderTransform,
    pub on_error: ErrorAction,
    pub dead_letter: Option<DeadLetter>,
}

impl RouteConfig {
    /// Whether this route reads `topic`.
    pub fn matches_topic(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| t == topic)
            || self.topic_regex.as_ref().is_some_and(|r| r.is_match(topic))
    }

    /// What this route does with a record, decided in one place for the copy path, `verify`,
    /// `purge` and `import`: the filter first (a record the route does not select is none of
    /// its business, however malformed), then validation of what it selected.
    pub fn decide(&self, r: &RecordView<'_>, size: u64) -> Decision {
        match self.filter.as_ref().map(|f| f.evaluate(r)) {
            Some(Outcome::Drop) => return Decision::Filtered,
            Some(Outcome::Invalid(why)) => return Decision::Poison(why),
            None | Some(Outcome::Pass) => {}
        }
        match self.validate.check(r, size) {
            Ok(()) => Decision::Copy,
            Err(why) => Decision::Poison(why),
        }
    }
}

/// A target topic name template: `{topic}`, `{source}` (source cluster) and `{route}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate(pub String);

impl TopicTemplate {
    pub fn render(&self, topic: &str, source_cluster: &str, route: &str) -> String {
        self.0
            .replace("{topic}", topic)
            .replace("{source}", source_cluster)
            .replace("{route}", route)
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub rate: RateLimits,
    /// Bytes produced but not yet acknowledged, across all partitions.
    pub max_in_flight_bytes: u64,
    /// Bytes produced but not yet acknowledged, per source partition.
    pub max_in_flight_bytes_per_partition: u64,
}

#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub dir: PathBuf,
    pub interval: Duration,
    /// How long checkpoints may fail to be written before the run stops reading (and how
    /// long the final checkpoint is retried): bounds the progress a crash could replay.
    pub max_unwritten: Duration,
    /// Where checkpoints are kept: `[checkpoints] store`.
    pub store: StoreSettings,
}

/// `[checkpoints] store`: a local file (the default), or a compacted topic on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// `<dir>/<job>.checkpoint.json`, with the job lock beside it.
    File,
    /// Records in `topic` on `cluster` (`[checkpoints] topic` and `cluster`, the latter
    /// resolved to the routes' one target cluster when not given).
    Kafka { cluster: String, topic: String },
}

/// Default of `[checkpoints] topic`.
pub const DEFAULT_CHECKPOINT_TOPIC: &str = "kmirror-checkpoints";

/// Default of `[checkpoints] max_unwritten`.
pub const DEFAULT_MAX_UNWRITTEN: Duration = Duration::from_secs(60);

/// Environment variable naming the default checkpoint directory (when `[checkpoints] dir`
/// is not set). The container image sets it to its state volume, so a routing file on a
/// read-only mount never gets its checkpoints put beside it.
pub const CHECKPOINT_DIR_ENV: &str = "KMIRROR_CHECKPOINT_DIR";

impl CheckpointSettings {
    pub fn file_for(&self, job: &str) -> PathBuf {
        self.dir.join(format!("{job}.checkpoint.json"))
    }
}

#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Bound on connecting and on each metadata or offset lookup.
    pub connect_timeout: Duration,
    /// Bound on waiting for in-flight deliveries at shutdown.
    pub shutdown_timeout: Duration,
    /// A partition with records left to copy whose position has not moved for this long is
    /// stalled (logged at error, counted, shown in `/status`; see `crate::observe`).
    pub stall_timeout: Duration,
    /// How often a following run re-reads the source clusters' metadata to pick up topics
    /// that start matching a route and partitions added to a source topic, and to notice a
    /// topic deleted on the source (`crate::copy::discovery`).
    pub metadata_refresh: Duration,
}

/// Default `[run] metadata_refresh`: a new topic or partition starts copying within this.
pub const DEFAULT_METADATA_REFRESH: Duration = Duration::from_secs(30);

/// Default `[run] stall_timeout`: long enough that a broker restart or a leader election
/// does not page anyone, short enough that a stuck mirror is noticed within minutes.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// `[http]`: the observability endpoint (`/metrics`, `/healthz`, `/readyz`, `/status`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address to listen on; `None` (the default): no endpoint.
    pub listen: Option<std::net::SocketAddr>,
    /// `/readyz` answers 503 while any partition is stalled (default true).
    pub stalled_not_ready: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: None,
            stalled_not_ready: true,
        }
    }
}

pub const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 256 << 20;
pub const DEFAULT_MAX_IN_FLIGHT_BYTES_PER_PARTITION: u64 = 16 << 20;

impl Config {
    /// Reads and checks a routing file. Nothing connects.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// As `load`, with `env` resolving `${NAME}` (e.g. placeholders for offline checks).
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.display().to_string(),
            err,
        })?;
        Self::from_str(path, text, env)
    }

    /// Checks routing-file text; `env` resolves `${NAME}` (injectable for tests).
    pub fn from_str(
        path: &Path,
        text: String,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let source = SourceText::new(path, text);
        // Every shape problem at once, with key paths; serde would stop at the first.
        let mut shape = Diagnostics::new(&source);
        schema::check(&source.text, &mut shape);
        if !shape.items.is_empty() {
            return Err(ConfigError::Invalid(shape.items));
        }
        let raw: RawConfig = toml::from_str(&source.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigError::Invalid(vec![Diagnostic {
                location: source.location(&span),
                key: String::new(),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut diags = Diagnostics::new(&source);
        let config = check(path, raw, &mut diags, env);
        if diags.items.is_empty() {
            Ok(config.expect("check returns a config when it reports nothing"))
        } else {
            Err(ConfigError::Invalid(diags.items))
        }
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }

    pub fn checkpoint_file(&self) -> PathBuf {
        self.checkpoints.file_for(&self.job)
    }

    /// Where the job's checkpoints are, for messages: the file, or the topic and cluster.
    pub fn checkpoint_location(&self) -> String {
        match &self.checkpoints.store {
            StoreSettings::File => self.checkpoint_file().display().to_string(),
            StoreSettings::Kafka { cluster, topic } => {
                format!("kafka topic \"{topic}\" on cluster \"{cluster}\"")
            }
        }
    }
}

fn valid_name(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

fn positive_u32(v: &Spanned<i64>, key: &str, d: &mut Diagnostics<'_>) -> Option<NonZeroU32> {
    let n = *v.get_ref();
    if n <= 0 {
        d.push(
            &v.span(),
            key,
            format!("{n} is refused: must be greater than zero"),
        );
        None
    } else if n > u32::MAX as i64 {
        d.push(
            &v.span(),
            key,
            format!("{n} is too large (at most {})", u32::MAX),
        );
        None
    } else {
        NonZeroU32::new(n as u32)
    }
}

fn size(v: &Spanned<toml::Value>, key: &str, d: &mut Diagnostics<'_>) -> Option<u64> {
    match value::parse_size(v.get_ref()) {
        Ok(n) => Some(n),
        Err(m) => {
            d.push(
                &v.span(),
                key,
                format!("{m}: must be a size greater than zero"),
            );
            None
        }
    }
}

fn duration(v: &Spanned<String>, key: &str, d: &mut Diagnostics<'_>) -> Option<Duration> {
    match value::parse_duration(v.get_ref()) {
        Ok(x) if x.is_zero() => {
            d.push(
                &v.span(),
                key,
                format!("\"{}\" is refused: must be longer than zero", v.get_ref()),
            );
            None
        }
        Ok(x) => Some(x),
        Err(m) => {
            d.push(&v.span(), key, m);
            None
        }
    }
}

fn rate_limits(
    messages: &Option<Spanned<i64>>,
    bytes: &Option<Spanned<toml::Value>>,
    prefix: &str,
    d: &mut Diagnostics<'_>,
) -> RateLimits {
    RateLimits {
        messages_per_sec: messages
            .as_ref()
            .and_then(|v| positive_u32(v, &format!("{prefix}max_messages_per_sec"), d)),
        bytes_per_sec: bytes.as_ref().and_then(|v| {
            if let toml::Value::Integer(n) = v.get_ref() {
                if *n <= 0 {
                    d.push(
                        &v.span(),
                        format!("{prefix}max_bytes_per_sec"),
                        format!("{n} is refused: must be greater than zero"),
                    );
                    return None;
                }
            }
            size(v, &format!("{prefix}max_bytes_per_sec"), d).and_then(NonZeroU64::new)
        }),
    }
}

fn check(
    path: &Path,
    raw: RawConfig,
    d: &mut Diagnostics<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Config> {
    let whole: Range<usize> = 0..0;

    // [checkpoints]
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "kmirror".into());
    let mut job = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>();
    let default_dir = match env(CHECKPOINT_DIR_ENV).filter(|d| !d.trim().is_empty()) {
        Some(d) => base_dir.join(d),
        None => base_dir.join("checkpoints"),
    };
    let mut cp = CheckpointSettings {
        dir: default_dir,
        interval: Duration::from_secs(5),
        max_unwritten: DEFAULT_MAX_UNWRITTEN,
        store: StoreSettings::File,
    };
    if let Some(c) = &raw.checkpoints {
        if let Some(dir) = &c.dir {
            match value::interpolate_env(dir.get_ref(), env) {
                Ok(s) if s.trim().is_empty() => {
                    d.push(&dir.span(), "checkpoints.dir", "must not be empty")
                }
                Ok(s) => {
                    let p = PathBuf::from(s);
                    cp.dir = if p.is_absolute() { p } else { base_dir.join(p) };
                }
                Err(m) => d.push(&dir.span(), "checkpoints.dir", m),
            }
        }
        if let Some(i) = &c.interval {
            if let Some(x) = duration(i, "checkpoints.interval", d) {
                cp.interval = x;
            }
        }
        if let Some(m) = &c.max_unwritten {
            if let Some(x) = duration(m, "checkpoints.max_unwritten", d) {
                cp.max_unwritten = x;
            }
        }
        if let Some(j) = &c.job {
            if valid_name(j.get_ref(), &['.']) {
                job = j.get_ref().clone();
            } else {
                d.push(
                    &j.span(),
                    "checkpoints.job",
                    format!(
                        "\"{}\" is refused: use letters, digits, '.', '_' and '-'",
                        j.get_ref()
                    ),
                );
            }
        }
    }

    // [limits]
    let mut limits = Limits {
        rate: RateLimits::default(),
        max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
        max_in_flight_bytes_per_partition: DEFAULT_MAX_IN_FLIGHT_BYTES_PER_PARTITION,
    };
    if let Some(l) = &raw.limits {
        limits.rate = rate_limits(&l.max_messages_per_sec, &l.max_bytes_per_sec, "limits.", d);
        if let Some(v) = &l.max_in_flight_bytes {
            if let Some(n) = size(v, "limits.max_in_flight_bytes", d) {
                limits.max_in_flight_bytes = n;
            }
        }
        if let Some(v) = &l.max_in_flight_bytes_per_partition {
            if let Some(n) = size(v, "limits.max_in_flight_bytes_per_partition", d) {
                limits.max_in_flight_bytes_per_partition = n;
            }
        }
        if limits.max_in_flight_bytes_per_partition > limits.max_in_flight_bytes {
            let span = l
                .max_in_flight_bytes_per_partition
                .as_ref()
                .or(l.max_in_flight_bytes.as_ref())
                .map(|v| v.span())
                .unwrap_or(whole.clone());
            d.push(
                &span,
                "limits.max_in_flight_bytes_per_partition",
                format!(
                    "{} is larger than limits.max_in_flight_bytes = {}: the per-partition bound must not exceed the overall bound",
                    limits.max_in_flight_bytes_per_partition, limits.max_in_flight_bytes
                ),
            );
        }
    }

    // [run]
    let mut run = RunSettings {
        connect_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(30),
        stall_timeout: DEFAULT_STALL_TIMEOUT,
        metadata_refresh: DEFAULT_METADATA_REFRESH,
    };
    if let Some(r) = &raw.run {
        if let Some(v) = &r.connect_timeout {
            if let Some(x) = duration(v, "run.connect_timeout", d) {
                run.connect_timeout = x;
            }
        }
        if let Some(v) = &r.shutdown_timeout {
            if let Some(x) = duration(v, "run.shutdown_timeout", d) {
                run.shutdown_timeout = x;
            }
        }
        if let Some(v) = &r.stall_timeout {
            if let Some(x) = duration(v, "run.stall_timeout", d) {
                run.stall_timeout = x;
            }
        }
        if let Some(v) = &r.metadata_refresh {
            if let Some(x) = duration(v, "run.metadata_refresh", d) {
                run.metadata_refresh = x;
            }
        }
    }

    // [http]
    let mut http = HttpSettings::default();
    if let Some(h) = &raw.http {
        if let Some(v) = &h.listen {
            match v.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) => http.listen = Some(a),
                Err(_) => d.push(
                    &v.span(),
                    "http.listen",
                    format!(
                        "\"{}\" is refused: give an address and port, e.g. \"0.0.0.0:9644\" or \"127.0.0.1:9644\"",
                        v.get_ref()
                    ),
                ),
            }
        }
        if let Some(v) = &h.stalled_not_ready {
            http.stalled_not_ready = *v.get_ref();
        }
    }

    // [verify]
    let mut verify = VerifySettings::default();
    if let Some(v) = raw.verify.as_ref().and_then(|v| v.interval.as_ref()) {
        verify.interval = duration(v, "verify.interval", d);
    }

    // [clusters.NAME]
    let mut clusters = BTreeMap::new();
    let mut archives = BTreeMap::new();
    for (name, c) in &raw.clusters {
        let key = format!("clusters.{}", name.get_ref());
        if !valid_name(name.get_ref(), &[]) {
            d.push(
                &name.span(),
                &key,
                format!(
                    "cluster name \"{}\" is refused: use letters, digits, '_' and '-'",
                    name.get_ref()
                ),
            );
        }
        let c = c.get_ref();
        let cluster_span = name.span();
        let bootstrap = match (&c.bootstrap, &c.archive) {
            (Some(b), Some(a)) => {
                d.push(
                    &a.span(),
                    format!("{key}.archive"),
                    format!("a cluster is either brokers (`bootstrap`, line {}) or an archive directory (`archive`), not both", d.source.line_col(b.span().start).0),
                );
                // Known still, so routes naming it are not also "not defined".
                archives.insert(
                    name.get_ref().clone(),
                    crate::archive::Root::dir(PathBuf::new()),
                );
                continue;
            }
            (None, None) => {
                d.push(
                    &cluster_span,
                    &key,
                    "needs `bootstrap = \"host:port\"` (brokers) or `archive = \"dir\"` (an archive directory)",
                );
                archives.insert(
                    name.get_ref().clone(),
                    crate::archive::Root::dir(PathBuf::new()),
                );
                continue;
            }
            (None, Some(a)) => {
                if let Some((pk, _)) = c.properties.iter().next() {
                    d.push(
                        &pk.span(),
                        format!("{key}.properties"),
                        "an archive cluster takes no librdkafka properties: remove them",
                    );
                }
                let placeholder = || crate::archive::Root::dir(PathBuf::new());
                match value::interpolate_env(a.get_ref(), env) {
                    Ok(dir) if dir.trim().is_empty() => {
                        d.push(
                            &a.span(),
                            format!("{key}.archive"),
                            "must name a directory or an s3://BUCKET/PREFIX",
                        );
                        archives.insert(name.get_ref().clone(), placeholder());
                    }
                    Ok(dir) => match crate::archive::Root::parse(&dir, &base_dir) {
                        Ok(root) => {
                            archives.insert(name.get_ref().clone(), root);
                        }
                        Err(m) => {
                            d.push(&a.span(), format!("{key}.archive"), m);
                            archives.insert(name.get_ref().clone(), placeholder());
                        }
                    },
                    Err(m) => {
                        d.push(&a.span(), format!("{key}.archive"), m);
                        archives.insert(name.get_ref().clone(), placeholder());
                    }
                }
                continue;
            }
            (Some(b), None) => b,
        };
        let span = bootstrap.span();
        let bootstrap = match value::interpolate_env(bootstrap.get_ref(), env) {
            Ok(b) if b.trim().is_empty() => {
                d.push(
                    &span,
                    format!("{key}.bootstrap"),
                    "must name at least one host:port",
                );
                String::new()
            }
            Ok(b) => {
                for server in b.split(',') {
                    let s = server.trim();
                    let s = s.rsplit("://").next().unwrap_or(s);
                    let ok = s
                        .rsplit_once(':')
                        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                    if !ok {
                        d.push(
                            &span,
                            format!("{key}.bootstrap"),
                            format!("\"{}\" is not a host:port address", server.trim()),
                        );
                    }
                }
                b
            }
            Err(m) => {
                d.push(&span, format!("{key}.bootstrap"), m);
                String::new()
            }
        };
        let mut properties = BTreeMap::new();
        for (pk, pv) in &c.properties {
            let pkey = format!("{key}.properties.\"{}\"", pk.get_ref());
            if let Some((_, why)) = MANAGED_PROPERTIES.iter().find(|(m, _)| m == pk.get_ref()) {
                d.push(
                    &pk.span(),
                    &pkey,
                    format!("is managed by kmirror and may not be set here: {why}"),
                );
                continue;
            }
            let text = match pv.get_ref() {
                toml::Value::String(s) => match value::interpolate_env_parts(s, env) {
                    Ok((s, from_env)) => {
                        // See crate::redact for what counts as a secret.
                        if !from_env.is_empty() || is_secret_key(pk.get_ref()) {
                            crate::redact::register(&s);
                        }
                        for v in &from_env {
                            crate::redact::register(v);
                        }
                        s
                    }
                    Err(m) => {
                        d.push(&pv.span(), &pkey, m);
                        continue;
                    }
                },
                toml::Value::Integer(i) => {
                    if is_secret_key(pk.get_ref()) {
                        crate::redact::register(&i.to_string());
                    }
                    i.to_string()
                }
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    d.push(
                        &pv.span(),
                        &pkey,
                        format!(
                            "a value of type {} cannot be passed to librdkafka: use a string, integer or boolean",
                            other.type_str()
                        ),
                    );
                    continue;
                }
            };
            properties.insert(pk.get_ref().clone(), text);
        }
        clusters.insert(
            name.get_ref().clone(),
            ClusterConfig {
                name: name.get_ref().clone(),
                bootstrap,
                properties,
            },
        );
    }

    // [[routes]]
    if raw.routes.is_empty() {
        d.push(
            &whole,
            "routes",
            "the routing file defines no [[routes]]: nothing to copy",
        );
    }
    let default_create = raw
        .create_target_topics
        .as_ref()
        .map(|b| *b.get_ref())
        .unwrap_or(false);
    let default_dlq = raw
        .dead_letter
        .as_ref()
        .and_then(|dl| check_dead_letter(dl, "dead_letter", &clusters, d));
    let files = files::check_files(&raw.files, &clusters, &base_dir, d);
    let mut routes = Vec::new();
    let mut imports = Vec::new();
    let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if let Some(route) = check_route(
            i,
            r,
            &clusters,
            &files,
            &archives,
            &RouteDefaults {
                create: default_create,
                dead_letter: &default_dlq,
                base_dir: &base_dir,
            },
            d,
        ) {
            let name_span = r.get_ref().name.span();
            if let Some(first) = seen.get(&route.name) {
                let (line, _) = d.source.line_col(first.start);
                d.push(&name_span, format!("routes[{i}].name"), format!("\"{}\" is already the name of the route on line {line}: route names must be unique", route.name));
            } else {
                seen.insert(route.name.clone(), name_span);
            }
            if let Some(f) = files.get(&route.source) {
                files::check_file_route(r, &format!("routes[{i}]."), f, &route.topics, d);
                imports.push(route);
            } else {
                routes.push(route);
            }
        }
    }

    if let Some(store) = check_store(raw.checkpoints.as_ref(), &clusters, &routes, d) {
        if let StoreSettings::Kafka { cluster, .. } = &store {
            if archives.contains_key(cluster) {
                let span = raw
                    .checkpoints
                    .as_ref()
                    .and_then(|c| c.store.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0);
                d.push(&span, "checkpoints.cluster", format!("\"{cluster}\" is an archive: Kafka checkpoints need a cluster of brokers; name one with [checkpoints] cluster = \"NAME\", or use store = \"file\""));
            }
        }
        cp.store = store;
    }
    let group = group::check_group(raw.group.as_ref(), &cp.store, &routes, &archives, env, d);
    let delivery = delivery::check_delivery(&raw, &cp.store, &routes, &clusters, &archives, d);

    Some(Config {
        path: path.to_path_buf(),
        job,
        clusters,
        routes,
        files,
        imports,
        archives,
        limits,
        checkpoints: cp,
        run,
        http,
        verify,
        group,
        delivery,
    })
}

/// `[checkpoints] store`, `topic` and `cluster`. The kafka store's cluster defaults to the
/// one cluster the routes write to; with several, which one must be said.
fn check_store(
    raw: Option<&RawCheckpoints>,
    clusters: &BTreeMap<String, ClusterConfig>,
    routes: &[RouteConfig],
    d: &mut Diagnostics<'_>,
) -> Option<StoreSettings> {
    let raw = raw?;
    let kafka = match &raw.store {
        None => false,
        Some(s) => match s.get_ref().as_str() {
            "file" => false,
            "kafka" => true,
            other => {
                d.push(
                    &s.span(),
                    "checkpoints.store",
                    format!("\"{other}\" is refused: use \"file\" (the default) or \"kafka\""),
                );
                return None;
            }
        },
    };
    if !kafka {
        for (key, v) in [("topic", &raw.topic), ("cluster", &raw.cluster)] {
            if let Some(v) = v {
                d.push(
                    &v.span(),
                    format!("checkpoints.{key}"),
                    "applies only to store = \"kafka\"; set `store = \"kafka\"` or remove it",
                );
            }
        }
        return Some(StoreSettings::File);
    }
    let topic = match &raw.topic {
        None => DEFAULT_CHECKPOINT_TOPIC.to_string(),
        Some(t) => {
            let name = t.get_ref();
            if name.is_empty()
                || name.len() > 249
                || name == "."
                || name == ".."
                || !valid_name(name, &['.'])
            {
                d.push(
                    &t.span(),
                    "checkpoints.topic",
                    format!("\"{name}\" is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"),
                );
                return None;
            }
            name.clone()
        }
    };
    let cluster = match &raw.cluster {
        Some(c) => {
            if !clusters.contains_key(c.get_ref()) {
                let known: Vec<&str> = clusters.keys().map(String::as_str).collect();
                d.push(
                    &c.span(),
                    "checkpoints.cluster",
                    format!(
                        "\"{}\" is not a cluster of this file (clusters: {})",
                        c.get_ref(),
                        known.join(", ")
                    ),
                );
                return None;
            }
            c.get_ref().clone()
        }
        None => {
            let targets: BTreeSet<&str> = routes.iter().map(|r| r.target.as_str()).collect();
            let span = raw.store.as_ref().map(|s| s.span()).unwrap_or(0..0);
            match targets.len() {
                1 => targets.into_iter().next().expect("one").to_string(),
                0 => return None,
                _ => {
                    let names: Vec<&str> = targets.into_iter().collect();
                    d.push(
                        &span,
                        "checkpoints.store",
                        format!(
                            "the routes write to several target clusters ({}): say which one keeps the checkpoints with [checkpoints] cluster = \"NAME\"",
                            names.join(", ")
                        ),
                    );
                    return None;
                }
            }
        }
    };
    Some(StoreSettings::Kafka { cluster, topic })
}

fn check_dead_letter(
    dl: &Spanned<filter::RawDeadLetter>,
    key: &str,
    clusters: &BTreeMap<String, ClusterConfig>,
    d: &mut Diagnostics<'_>,
) -> Option<DeadLetter> {
    let r = dl.get_ref();
    let mut ok = true;
    if !clusters.contains_key(r.cluster.get_ref()) {
        d.push(
            &r.cluster.span(),
            format!("{key}.cluster"),
            format!("cluster \"{}\" is not defined", r.cluster.get_ref()),
        );
        ok = false;
    }
    if !valid_topic(r.topic.get_ref()) {
        d.push(
            &r.topic.span(),
            format!("{key}.topic"),
            format!("\"{}\" is not a valid Kafka topic name", r.topic.get_ref()),
        );
        ok = false;
    }
    ok.then(|| DeadLetter {
        cluster: r.cluster.get_ref().clone(),
        topic: r.topic.get_ref().clone(),
    })
}

/// The part of a regex error worth showing: its last line, without the "error: " prefix.
pub(crate) fn regex_problem(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default().trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

pub fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_decides_before_validation() {
        let toml = r#"
            [clusters.a]
            bootstrap = "127.0.0.1:9092"
            [clusters.b]
            bootstrap = "127.0.0.1:9093"
            [[routes]]
            name = "acme"
            source = "a"
            topics = ["orders"]
            target = "b"
            filter = { json = "$.tenant_id", equals = "acme" }
            validate = { json = true, max_record_bytes = 40 }
            on_error = "skip"
        "#;
        let cfg = Config::from_str(Path::new("t.toml"), toml.into(), &|_| None).unwrap();
        let route = &cfg.routes[0];
        let big_globex = br#"{"tenant_id":"globex","padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        let big_acme = br#"{"tenant_id":"acme","padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        let small_acme = br#"{"tenant_id":"acme"}"#;
        let v = |p: &'static [u8]| RecordView::new(None, Some(p), None, vec![]);
        // Another tenant's oversized record is not this route's poison: it is filtered out.
        assert_eq!(
            route.decide(&v(big_globex), big_globex.len() as u64),
            Decision::Filtered
        );
        assert!(
            matches!(route.decide(&v(big_acme), big_acme.len() as u64), Decision::Poison(m) if m.contains("max_record_bytes"))
        );
        assert_eq!(
            route.decide(&v(small_acme), small_acme.len() as u64),
            Decision::Copy
        );
        assert!(
            matches!(route.decide(&v(b"{broken"), 7), Decision::Poison(m) if m.contains("not valid JSON"))
        );
    }
}
