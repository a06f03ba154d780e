//! The `kmirror` binary: flags, logging, signals and exit codes around the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use kmirror::checkpoint::{partition_key, take_job, PartitionCheckpoint};
use kmirror::config::{value, Config, EndPosition, StartPosition};
use kmirror::copy::{self, RunOptions};
use kmirror::error::{exit, exit_code};
use kmirror::plan::{self, CreateTopics};
use kmirror::redact::redact;
use kmirror::{counts, demo, dev_cluster, purge, report, verify};

#[derive(Parser)]
#[command(
    name = "kmirror",
    version,
    about = "Mirror Kafka topics between clusters, with checkpoints, rate limits and verification",
    after_help = "Exit codes: 0 success; 1 verify mismatch, or halted partitions / failed records, or \
purge refused a partition; 2 usage; 3 invalid routing file; 4 cluster, topic or offset error, or \
a purge deletion failed; 5 unusable checkpoint \
(corrupt, another job, cluster or topic); 6 job locked by another process (kafka store: taken \
over by another process); 70 I/O (checkpoint \
cannot be read or written) or other; 130 second signal while stopping."
)]
struct Cli {
    /// More logging (-v debug, -vv trace). KMIRROR_LOG (or else RUST_LOG) overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log lines on stderr as `text`, or `json` (one JSON object per line: timestamp,
    /// level, message and the event's fields such as route, cluster, topic, partition).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the routing file, connect, and print the plan (one line per source partition).
    Check {
        /// The routing file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Validate the file only; do not connect. Unset `${ENV}` variables are warnings.
        #[arg(long)]
        offline: bool,
        /// Also create missing target topics (routes with create_target_topics). Without
        /// it `check` changes nothing; `run` creates them.
        #[arg(long, conflicts_with = "offline")]
        create_topics: bool,
        /// `text`, or `json` (schema: docs/check-plan.schema.json): the routing file and,
        /// unless --offline, the plan.
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Copy until every route reaches its `end` (none = forever), or SIGINT/SIGTERM.
    Run {
        /// The routing file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Copy what is there now, then exit: each route ends at its own `end` or at the
        /// snapshot (the end of each partition when the run starts), whichever comes first.
        #[arg(long)]
        once: bool,
        /// Seconds between progress lines (0 = no progress output at all). A run that ends
        /// by itself (--once, or every route has an `end`) draws a live display instead
        /// when stderr is a terminal and logs are text.
        #[arg(long, default_value_t = 5)]
        progress: u64,
        /// No live display and no progress lines (the same as --progress 0).
        #[arg(long)]
        no_progress: bool,
        /// `text` (a table and a verdict line), or `json` (schema:
        /// docs/run-summary.schema.json). Either way only the summary goes to stdout; logs
        /// go to stderr.
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// Serve /metrics, /healthz, /readyz and /status on this address (e.g.
        /// 0.0.0.0:9644); overrides the routing file's `[http] listen`.
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
    },
    /// Read the copied ranges on both sides and compare them record by record.
    Verify {
        /// The routing file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Count duplicate deliveries (normal after a crash under at-least-once) as a mismatch.
        #[arg(long)]
        fail_on_duplicates: bool,
        /// `text` (a table), or `json` (schema: docs/verify-report.schema.json).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// Also write a JUnit XML report here (one testcase per route partition).
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Partitions read at once (threads, each with its own consumers). Memory is bounded
        /// by this and the number of partitions, not by the number of records.
        #[arg(long, value_name = "N", default_value_t = verify::DEFAULT_PARALLEL as u64, value_parser = clap::value_parser!(u64).range(1..=256))]
        parallel: u64,
        /// Compare only source offsets from here on: an offset, or a timestamp (RFC 3339 in
        /// UTC, or milliseconds since the epoch: bare numbers from 1000000000000 on), meaning
        /// the first record at or after it, per partition.
        #[arg(long, value_name = "OFFSET|TIME")]
        from: Option<verify::Bound>,
        /// Compare only source offsets before this (an offset or a timestamp, as --from).
        #[arg(long, value_name = "OFFSET|TIME")]
        to: Option<verify::Bound>,
        /// Start each partition where the last verification that found it matching ended
        /// (remembered beside the checkpoint, in `<checkpoint>.verified`).
        #[arg(long)]
        since_last: bool,
    },
    /// Delete from the source what verify proves is on the target (the last step of a migration).
    ///
    /// Re-verifies each partition now, then deletes (DeleteRecords) the records below the
    /// verified end: `[source's first offset, verified end)`. A partition not fully copied
    /// and matching is refused with the reason. Without --execute it only shows what would
    /// be deleted.
    Purge {
        /// The routing file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route's source partitions (other routes reading them must pass too).
        #[arg(long)]
        route: Option<String>,
        /// Delete; without it nothing is deleted and the plan is shown.
        #[arg(long)]
        execute: bool,
        /// Also delete ranges holding records no route selected (filtered out, skipped):
        /// those records are lost.
        #[arg(long)]
        include_unselected: bool,
        /// Delete each source topic whose every partition is verified with nothing
        /// unselected and nothing after the verified end (DeleteTopics). With --execute it
        /// takes the job lock: a run of the job must be stopped first (exit 6 otherwise).
        #[arg(long)]
        delete_topic: bool,
        /// `text` (a table), or `json` (schema: docs/purge-plan.schema.json).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Replay a dump file into a cluster through the routes that read it ([files.NAME]).
    ///
    /// Every line is validated before anything is produced: a line that is not a record
    /// (invalid JSON, not the format's shape) or that the route's filter or validation
    /// refuses goes to the route's on_error (the dead-letter topic, or the rejects file with
    /// its line number and the error; "stop" stops there). Resumes where the last import
    /// stopped; a finished import produces nothing new.
    Import {
        /// The routing file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Forget where earlier imports stopped (and their rejects file): start at line 1.
        #[arg(long)]
        restart: bool,
        /// `text`, or `json` (one document: per route its counts and rejected lines).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Show or reset checkpoints.
    Checkpoints {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Run the whole job on two in-memory clusters it starts itself; no Kafka needed.
    Demo {
        /// Records to seed.
        #[arg(long, default_value_t = 60_000)]
        records: u64,
    },
    /// Host in-memory Kafka-protocol TEST clusters and print their bootstrap addresses.
    ///
    /// The clusters are librdkafka's mock cluster, hosted in the foreground until Ctrl-C.
    /// Everything is in memory and each partition keeps at most 5 MB or 100,000 messages
    /// (older ones are deleted): for tests, demos and benchmarks, never for data you need.
    DevCluster {
        /// Number of clusters.
        #[arg(long, default_value_t = 2)]
        clusters: usize,
        /// Brokers per cluster.
        #[arg(long, default_value_t = 3)]
        brokers: i32,
        /// Topic to create on every cluster, as NAME:PARTITIONS, or PREFIX:COUNT:PARTITIONS
        /// for COUNT topics PREFIX1..PREFIXCOUNT (e.g. `t:300:1`). Repeatable.
        #[arg(long = "topic", visible_alias = "topics", value_parser = parse_topic_spec)]
        topics: Vec<TopicSpec>,
        /// Seed sample records into the first cluster, as TOPIC:COUNT (repeatable).
        #[arg(long = "seed", value_parser = parse_topic_count)]
        seeds: Vec<(String, u64)>,
    },
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// Print the checkpoint of the routing file's job.
    Show {
        /// The routing file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// `text` (a table, read from the file alone), or `json` (schema:
        /// docs/checkpoints-show.schema.json; also asks each source cluster for its log-end
        /// offsets to give the lag per partition).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Move checkpoints: forget them (next run starts at `start`), or set them --to a position.
    ///
    /// Shows what would change (old -> new per partition) and writes nothing unless
    /// --execute is given, like kafka-consumer-groups --reset-offsets.
    Reset {
        /// The routing file (TOML).
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route (default: all routes).
        #[arg(long)]
        route: Option<String>,
        /// Only this topic, or these partitions of it: TOPIC or TOPIC:0,1 (repeatable).
        #[arg(long = "topic", value_parser = parse_topic_scope)]
        topics: Vec<TopicScope>,
        /// earliest | latest | OFFSET | RFC 3339 TIMESTAMP (default: forget).
        #[arg(long, value_parser = parse_reset_to, allow_hyphen_values = true)]
        to: Option<StartPosition>,
        /// Write the new checkpoint; without it the reset is only shown.
        #[arg(long)]
        execute: bool,
    },
}

/// `--topic TOPIC[:P,P...]` of `checkpoints reset`: a topic, and optionally partitions.
#[derive(Clone, Debug)]
struct TopicScope {
    topic: String,
    partitions: Option<Vec<i32>>,
}

fn parse_topic_scope(s: &str) -> Result<TopicScope, String> {
    let (topic, parts) = match s.rsplit_once(':') {
        Some((t, p)) => (t, Some(p)),
        None => (s, None),
    };
    if !kmirror::config::valid_topic(topic) {
        return Err(format!(
            "\"{topic}\" is not a topic name (expected TOPIC or TOPIC:0,1)"
        ));
    }
    let partitions = match parts {
        None => None,
        Some(p) => Some(
            p.split(',')
                .map(|n| {
                    n.trim()
                        .parse::<i32>()
                        .ok()
                        .filter(|n| *n >= 0)
                        .ok_or_else(|| {
                            format!(
                                "\"{n}\" is not a partition number (expected TOPIC or TOPIC:0,1)"
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(TopicScope {
        topic: topic.to_string(),
        partitions,
    })
}

fn parse_reset_to(s: &str) -> Result<StartPosition, String> {
    match s {
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        t if t.parse::<i64>().is_ok() => match t.parse::<i64>() {
            Ok(o) if o >= 0 => Ok(StartPosition::Offset(o)),
            _ => Err(format!("offset {t} is negative")),
        },
        t => value::parse_timestamp_ms(t)
            .map(StartPosition::Timestamp)
            .map_err(|m| format!("{m}; or use earliest, latest or an offset")),
    }
}

/// A usage error found after parsing (an unknown route): exit 2 like clap's own.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// One `--topic` value: the (name, partitions) it stands for.
#[derive(Debug, Clone)]
struct TopicSpec(Vec<(String, i32)>);

/// Most topics one `--topic PREFIX:COUNT:PARTITIONS` may ask for.
const MAX_TOPIC_COUNT: u32 = 100_000;

fn parse_topic_spec(s: &str) -> Result<TopicSpec, String> {
    const USAGE: &str =
        "expected NAME:PARTITIONS (e.g. orders:12) or PREFIX:COUNT:PARTITIONS (e.g. t:300:1)";
    let parts: Vec<&str> = s.split(':').collect();
    let (name, count, p) = match parts[..] {
        [name, p] => (name, None, p),
        [prefix, count, p] => (prefix, Some(count), p),
        _ => return Err(USAGE.into()),
    };
    let p: i32 = p
        .parse()
        .map_err(|_| format!("\"{p}\" is not a partition count ({USAGE})"))?;
    if p < 1 {
        return Err(format!("at least 1 partition is needed ({USAGE})"));
    }
    let names: Vec<String> = match count {
        None => vec![name.to_string()],
        Some(c) => {
            let c: u32 = c
                .parse()
                .ok()
                .filter(|c| (1..=MAX_TOPIC_COUNT).contains(c))
                .ok_or_else(|| {
                    format!("\"{c}\" is not a topic count from 1 to {MAX_TOPIC_COUNT}")
                })?;
            (1..=c).map(|i| format!("{name}{i}")).collect()
        }
    };
    if let Some(bad) = names.iter().find(|t| !kmirror::config::valid_topic(t)) {
        return Err(format!("\"{bad}\" is not a valid topic name ({USAGE})"));
    }
    Ok(TopicSpec(names.into_iter().map(|t| (t, p)).collect()))
}

fn parse_topic_count(s: &str) -> Result<(String, u64), String> {
    let (t, n) = s
        .split_once(':')
        .ok_or("expected TOPIC:COUNT, e.g. orders:10000")?;
    Ok((
        t.to_string(),
        n.parse().map_err(|_| format!("\"{n}\" is not a count"))?,
    ))
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            // Asked for JSON logs: a usage error is a JSON line too (help goes to stdout).
            if e.use_stderr() && json_logs_asked(std::env::args()) {
                JSON_LOGS.store(true, Ordering::Relaxed);
                stderr_line("ERROR", e.to_string().trim_end());
            } else {
                let _ = e.print();
            }
            std::process::exit(code);
        }
    };
    init_logging(cli.verbose, cli.quiet, cli.log_format == "json");
    install_redacting_panic_hook();
    let code = match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            stderr_line("ERROR", &format!("error: {}", render_error(&e)));
            if e.is::<Usage>() {
                exit::USAGE
            } else {
                exit_code(&e)
            }
        }
    };
    std::process::exit(code);
}

/// `--log-format json`: the few lines main prints itself (see `stderr_line`) are JSON too.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Whether the command line asks for JSON logs (read when clap refused the rest of it).
fn json_logs_asked(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().any(|a| a == "--log-format=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--log-format" && w[1] == "json")
}

/// The log filter: `KMIRROR_LOG`, else `RUST_LOG`, else what -q / -v ask for. An explicit
/// filter wins over the flags; one that does not parse is reported and the flags' used.
fn log_filter(verbose: u8, quiet: bool) -> (tracing_subscriber::EnvFilter, Option<String>) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "kmirror=debug,info",
        _ => "trace",
    };
    for var in ["KMIRROR_LOG", "RUST_LOG"] {
        let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        return match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (
                tracing_subscriber::EnvFilter::new(default),
                Some(format!(
                    "{var}={v:?} is not a log filter ({e}); using \"{default}\""
                )),
            ),
        };
    }
    (tracing_subscriber::EnvFilter::new(default), None)
}

fn init_logging(verbose: u8, quiet: bool, json: bool) {
    let (filter, bad) = log_filter(verbose, quiet);
    // Every log line (librdkafka's included, which may quote configuration values at -vv)
    // is masked before it reaches stderr, in both formats, and goes above a live progress
    // display rather than through it.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(kmirror::redact::RedactingStderr)
        .with_target(false);
    if json {
        JSON_LOGS.store(true, Ordering::Relaxed);
        // Fields at the top level beside timestamp, level and message: what log shippers
        // index without a nested path.
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if let Some(why) = bad {
        tracing::warn!("{why}");
    }
}

/// A line main prints on stderr outside the log macros (the final error, a panic, halted
/// partitions, dev-cluster's progress): masked, and under `--log-format json` a JSON
/// object like the log lines' (timestamp, level, message), so every stderr line parses.
fn stderr_line(level: &str, text: &str) {
    let text = redact(text);
    if JSON_LOGS.load(Ordering::Relaxed) {
        let line = serde_json::json!({
            "timestamp": value::format_ms(value::now_ms()),
            "level": level,
            "message": text,
        });
        kmirror::progress::write_stderr(format!("{line}\n").as_bytes());
    } else {
        kmirror::progress::write_stderr(format!("{text}\n").as_bytes());
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose text is already
/// there: many errors quote their source (an OS error) in their own message, and anyhow's
/// `{:#}` would print it twice.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Panic messages can quote anything (a property value in an `expect`): masked like logs.
fn install_redacting_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let mut text = format!("thread '{name}' {info}");
        // Backtraces as std's own hook gives them (RUST_BACKTRACE), masked too.
        let bt = std::backtrace::Backtrace::capture();
        if bt.status() == std::backtrace::BacktraceStatus::Captured {
            text.push('\n');
            text.push_str(&bt.to_string());
        }
        stderr_line("ERROR", &text);
    }));
}

/// Raises the flag on SIGINT or SIGTERM, logging `stopping` (what the command does now);
/// a second signal exits at once.
fn stop_on_signal(stopping: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Returns only once the handlers are installed: a signal that arrives earlier would take
    // the default action and kill the process without a final checkpoint or clean exit.
    let (installed_tx, installed) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("kmirror-signals".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                let _ = installed_tx.send(());
                for n in 0.. {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    if n > 0 {
                        stderr_line("ERROR", "second signal: exiting without waiting");
                        std::process::exit(130);
                    }
                    tracing::warn!("stopping: {stopping}");
                    flag.store(true, Ordering::Relaxed);
                }
            });
        })
        .expect("spawn signal thread");
    let _ = installed.recv();
    stop
}

/// Raises the flag on SIGHUP: `run` reloads the routing file's routes (`copy::reload`).
fn reload_on_sighup() -> Arc<AtomicBool> {
    let reload = Arc::new(AtomicBool::new(false));
    let flag = reload.clone();
    // As for stop: a SIGHUP before the handler is installed would kill the process.
    let (installed_tx, installed) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("kmirror-sighup".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
                let _ = installed_tx.send(());
                while hup.recv().await.is_some() {
                    flag.store(true, Ordering::Relaxed);
                }
            });
        })
        .expect("spawn signal thread");
    let _ = installed.recv();
    reload
}

fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Check {
            config,
            offline,
            create_topics,
            output,
        } => check(&config, offline, create_topics, output == "json"),
        Command::Run {
            config,
            once,
            progress,
            no_progress,
            output,
            http,
        } => run(
            &config,
            once,
            if no_progress { 0 } else { progress },
            output == "json",
            http,
        ),
        Command::Verify {
            config,
            route,
            fail_on_duplicates,
            output,
            junit,
            parallel,
            from,
            to,
            since_last,
        } => {
            verify::bound_malloc_arenas(parallel as usize);
            let cfg = load(&config)?;
            cluster_routes_only(&cfg, "verify")?;
            if let Some(r) = &route {
                check_route(&cfg, r)?;
            }
            let store = kmirror::checkpoint::open(&cfg);
            let opts = verify::VerifyOptions {
                parallel: parallel as usize,
                from,
                to,
                since_last,
                remember: true,
                ..Default::default()
            };
            let report =
                verify::verify_with(&cfg, &store, route.as_deref(), fail_on_duplicates, &opts)?;
            if let Some(path) = &junit {
                std::fs::write(path, report.junit())
                    .with_context(|| format!("writing the JUnit report {}", path.display()))?;
            }
            if output == "json" {
                println!("{:#}", report.json());
            } else {
                print!("{}", report.table());
            }
            Ok(if report.ok() {
                exit::OK
            } else {
                exit::MISMATCH
            })
        }
        Command::Purge {
            config,
            route,
            execute,
            include_unselected,
            delete_topic,
            output,
        } => {
            // Purge re-verifies with verify's readers: the same bound on malloc arenas.
            verify::bound_malloc_arenas(verify::DEFAULT_PARALLEL);
            let cfg = load(&config)?;
            if let Some(r) = &route {
                check_route(&cfg, r)?;
            }
            // Deleting a topic under a live run of the job would leave that run failing on
            // a topic that is gone: the run must be stopped first. DeleteRecords needs no
            // lock: it deletes only below the position verified now, which a running copy
            // has passed and never reads again.
            let store = kmirror::checkpoint::open(&cfg);
            let _lock = if execute && delete_topic {
                Some(take_job(&cfg, &*store)?)
            } else {
                None
            };
            let opts = purge::PurgeOptions {
                route,
                include_unselected,
                delete_topic,
            };
            let mut plan = purge::plan(&cfg, &store, &opts)?;
            if execute {
                purge::execute(&cfg, &mut plan);
            }
            if output == "json" {
                println!("{:#}", plan.json());
            } else {
                print!("{}", redact(&plan.table()));
            }
            Ok(plan.exit_code())
        }
        Command::Import {
            config,
            route,
            restart,
            output,
        } => {
            let cfg = load(&config)?;
            // One import at a time per job: two imports of one file would both produce it.
            // Its own lock (not the job's): a `run` of the job's cluster routes may go on.
            let _lock = kmirror::checkpoint::JobLock::acquire(
                &cfg.checkpoints.dir.join(format!("{}.import.lock", cfg.job)),
            )?;
            let stop = stop_on_signal("stopping the import at the next line");
            let report = kmirror::import::run(
                &cfg,
                &kmirror::import::ImportOptions { route, restart },
                &stop,
            )?;
            if output == "json" {
                println!("{:#}", report.json());
            } else {
                print!("{}", redact(&report.render()));
            }
            Ok(report.exit_code())
        }
        Command::Checkpoints {
            action: CheckpointAction::Show { config, output },
        } => {
            if output == "json" {
                show_checkpoints_json(&config)
            } else {
                show_checkpoints(&config)
            }
        }
        Command::Checkpoints {
            action:
                CheckpointAction::Reset {
                    config,
                    route,
                    topics,
                    to,
                    execute,
                },
        } => reset_checkpoints(&config, route.as_deref(), &topics, to, execute),
        Command::Demo { records } => {
            let ok = demo::run(records, &mut std::io::stdout())?;
            Ok(if ok { exit::OK } else { exit::MISMATCH })
        }
        Command::DevCluster {
            clusters,
            brokers,
            topics,
            seeds,
        } => {
            let stop = stop_on_signal("shutting the in-memory clusters down");
            let topics: Vec<(String, i32)> = topics.into_iter().flat_map(|t| t.0).collect();
            let started = std::time::Instant::now();
            let mut shown = started;
            let dc =
                dev_cluster::DevClusters::start_with_progress(clusters, brokers, &topics, |p| {
                    // Many topics take a moment: say how far along, about once a second.
                    if shown.elapsed() >= Duration::from_secs(1) || p.created == p.total {
                        shown = std::time::Instant::now();
                        if p.total >= 100 || started.elapsed() >= Duration::from_secs(1) {
                            stderr_line(
                                "INFO",
                                &format!(
                                    "creating topics: cluster{} {}/{}",
                                    p.cluster + 1,
                                    p.created,
                                    p.total
                                ),
                            );
                        }
                    }
                })
                .map_err(anyhow::Error::msg)?;
            if !topics.is_empty() {
                stderr_line(
                    "INFO",
                    &format!(
                        "created {} topics on each of {clusters} clusters in {:.1?}",
                        topics.len(),
                        started.elapsed()
                    ),
                );
            }
            for (topic, count) in &seeds {
                let partitions = topics
                    .iter()
                    .find(|(t, _)| t == topic)
                    .map(|(_, p)| *p)
                    .unwrap_or(1);
                dev_cluster::seed_orders(
                    &dc.bootstraps[0],
                    topic,
                    partitions,
                    *count,
                    value::now_ms() - 3_600_000,
                )
                .map_err(anyhow::Error::msg)?;
            }
            let mut out = std::io::stdout();
            let _ = writeln!(
                out,
                "# kmirror dev-cluster: in-memory Kafka-protocol TEST clusters (librdkafka mock)."
            );
            let _ = writeln!(out, "# Each partition keeps at most 5 MB or 100,000 messages; everything is lost on exit.");
            for (i, b) in dc.bootstraps.iter().enumerate() {
                let _ = writeln!(out, "cluster{} bootstrap={b}", i + 1);
            }
            let _ = writeln!(out, "ready (Ctrl-C to stop)");
            let _ = out.flush();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            dc.stop();
            Ok(exit::OK)
        }
    }
}

fn check(path: &Path, offline: bool, create_topics: bool, json: bool) -> Result<i32> {
    let cfg = if offline {
        // Offline validation runs where the secrets are not (a CI job, a laptop): an unset
        // variable is a warning, and a placeholder stands in for it.
        let unset = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let cfg = Config::load_with_env(path, &|k| {
            std::env::var(k).ok().or_else(|| {
                unset.borrow_mut().insert(k.to_string());
                Some(format!("unset-{k}:0"))
            })
        })?;
        for k in unset.borrow().iter() {
            tracing::warn!("environment variable `{k}` is not set; checked with a placeholder (`run` and online `check` refuse it)");
        }
        cfg
    } else {
        load(path)?
    };
    // Text prints the file summary before connecting (it shows even if a cluster fails);
    // JSON is one document, printed once it is whole.
    if !json {
        print_routing_file(path, &cfg);
    }
    if offline {
        if json {
            println!("{:#}", report::check_json(&cfg, None));
        }
        return Ok(exit::OK);
    }
    let store = kmirror::checkpoint::open(&cfg);
    let cp = copy::load_checkpoint(&cfg, &store)?;
    // `check` changes nothing unless asked: missing target topics are reported in the plan,
    // and created by `run` (or `check --create-topics`).
    let create = if create_topics {
        CreateTopics::AsConfigured
    } else {
        CreateTopics::Never
    };
    let plan = plan::build(&cfg, cp.as_ref(), create)?;
    if json {
        println!("{:#}", report::check_json(&cfg, Some(&plan)));
    } else {
        print!("{}", plan.render());
    }
    Ok(exit::OK)
}

/// The routing file summary `check` prints before the plan.
fn print_routing_file(path: &Path, cfg: &Config) {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    println!(
        "{}: routing file OK ({}, {}; job \"{}\", checkpoints in {})",
        path.display(),
        plural(cfg.routes.len(), "route", "routes"),
        plural(cfg.clusters.len(), "cluster", "clusters"),
        cfg.job,
        cfg.checkpoint_location()
    );
    for r in &cfg.imports {
        let f = &cfg.files[&r.source];
        println!(
            "  import route {}: file {} ({}) -> cluster {}: replayed by `kmirror import`, not by run",
            r.name,
            f.path.display(),
            f.format.name(),
            r.target
        );
    }
    for c in cfg.clusters.values() {
        let props = c.redacted_properties();
        if props.is_empty() {
            println!("  cluster {}: {}", c.name, c.bootstrap);
        } else {
            let p: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("  cluster {}: {} ({})", c.name, c.bootstrap, p.join(", "));
        }
    }
}

fn run(
    path: &Path,
    once: bool,
    progress: u64,
    json: bool,
    http: Option<std::net::SocketAddr>,
) -> Result<i32> {
    let cfg = load(path)?;
    cluster_routes_only(&cfg, "run")?;
    // Before taking the job, which can take a moment with the kafka store (a claim reads the
    // checkpoint topic): a signal meanwhile stops the run before it reads anything, cleanly.
    let stop = stop_on_signal(
        "no new reads; waiting for in-flight deliveries, then writing the final checkpoint",
    );
    let store = kmirror::checkpoint::open(&cfg);
    // Held until this function returns: one process per job, for the whole run (the
    // kafka store's claim fences an earlier holder, which then stops).
    let _lock = take_job(&cfg, &*store)?;
    let observer = kmirror::observe::Observer::for_config(&cfg);
    // Serves until this function returns (through the summary), so a last scrape sees the
    // final numbers while the process lives.
    let _http = match http.or(cfg.http.listen) {
        Some(addr) => Some(kmirror::observe::http::serve(addr, observer.clone())?),
        None => None,
    };
    // A person at a terminal watching a run that ends by itself gets bars with an ETA;
    // anything else (a pipe, a log shipper, JSON logs, a run that follows) gets lines.
    let ends = once || cfg.routes.iter().all(|r| r.end != EndPosition::None);
    let live = progress > 0
        && ends
        && !JSON_LOGS.load(Ordering::Relaxed)
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let display = live.then(|| Arc::new(kmirror::progress::LiveDisplay::start()));
    let opts = RunOptions {
        once,
        progress_every: (progress > 0).then(|| Duration::from_secs(progress)),
        display: display.clone(),
        observer: Some(observer),
        reload: Some(reload_on_sighup()),
    };
    // `[verify] interval`: verification beside a following run, on its own thread.
    let verifier = cfg.verify.interval.filter(|_| !once).map(|every| {
        let (cfg, done) = (cfg.clone(), Arc::new(AtomicBool::new(false)));
        let flag = done.clone();
        let handle = std::thread::Builder::new()
            .name("verify-interval".into())
            .spawn(move || verify::interval::run_every(&cfg, every, &flag))
            .expect("spawn the verify thread");
        (done, handle)
    });
    let result = copy::run(&cfg, &store, &opts, stop);
    // Cleared before anything else prints (the summary, or the error).
    if let Some(d) = &display {
        d.finish();
    }
    let rounds = verifier.map(|(done, handle)| {
        done.store(true, Ordering::Relaxed);
        handle.join().unwrap_or_default()
    });
    let report = result?;
    if let Some(r) = rounds {
        eprintln!(
            "verified during the run: {} times, {} found differences, {} could not complete",
            r.done, r.mismatched, r.failed
        );
    }
    let verdict = report.verdict();
    if json {
        println!("{:#}", report.json());
    } else {
        print_run_summary(&report);
    }
    // On stderr in both formats: they say why the exit code is not 0.
    for (src, why) in &report.halted {
        stderr_line("ERROR", &format!("halted {src}: {why}"));
    }
    if report.stopped {
        for (src, why) in &report.failing {
            stderr_line("ERROR", &format!("failing when stopped {src}: {why}"));
        }
    }
    Ok(verdict.code)
}

/// The summary table and the verdict line `run` prints.
fn print_run_summary(report: &copy::RunReport) {
    print!("{}", report.table());
    println!(
        "{} in {:.1}s; checkpoint {}",
        report.verdict().summary,
        report.elapsed.as_secs_f64(),
        report.checkpoint
    );
    if report.gaps > 0 {
        println!(
            "GAP: {} records were deleted by retention before they could be copied",
            report.gaps
        );
    }
}

/// `checkpoints show --output json`: the checkpoint with each partition's log-end offset and
/// lag (as the source broker reports its high watermark; a failed lookup is given per
/// partition, never fatal).
fn show_checkpoints_json(path: &Path) -> Result<i32> {
    let cfg = load(path)?;
    let store = kmirror::checkpoint::open(&cfg);
    let cp = copy::load_checkpoint(&cfg, &store)?;
    let timeout = cfg.run.connect_timeout;
    let mut consumers = std::collections::BTreeMap::new();
    let mut routes = Vec::new();
    for (route, rc) in cp.iter().flat_map(|c| &c.routes) {
        let mut parts = Vec::new();
        for (key, p) in &rc.partitions {
            let Some((topic, partition)) = kmirror::checkpoint::parse_partition_key(key) else {
                continue;
            };
            let consumer = consumers
                .entry(rc.source_cluster.clone())
                .or_insert_with(|| match cfg.clusters.get(&rc.source_cluster) {
                    Some(c) => kmirror::cluster::consumer(c, &[]).map_err(|e| e.to_string()),
                    None => Err(format!(
                        "cluster \"{}\" is not in the routing file",
                        rc.source_cluster
                    )),
                });
            let end = match consumer {
                Ok(c) => {
                    kmirror::cluster::watermarks(c, &rc.source_cluster, topic, partition, timeout)
                        .map(|(_, high)| high)
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.clone()),
            };
            parts.push(serde_json::json!({
                "source": format!("{}:{key}", rc.source_cluster),
                "topic": topic,
                "partition": partition,
                "next_offset": p.next_offset,
                "first_offset": p.first_offset,
                "end": p.end,
                "target": format!("{}:{}", p.target_cluster, p.target_topic),
                "target_written": p.target.iter().map(|(tp, [a, b])| serde_json::json!({"partition": tp, "first": a, "last": b})).collect::<Vec<_>>(),
                "updated_at": p.updated_at,
                "log_end_offset": end.as_ref().ok(),
                "lag": end.as_ref().ok().map(|e| (e - p.next_offset).max(0)),
                "lookup_error": end.as_ref().err(),
            }));
        }
        routes.push(serde_json::json!({
            "route": route,
            "source_cluster": rc.source_cluster,
            "partitions": parts,
        }));
    }
    let out = serde_json::json!({
        "kind": "kmirror-checkpoints",
        "version": 1,
        "checkpoint": store.describe(),
        "job": cp.as_ref().map(|c| c.job.clone()),
        "written_at": cp.as_ref().map(|c| c.written_at.clone()),
        "routes": routes,
    });
    println!("{out:#}");
    Ok(exit::OK)
}

fn show_checkpoints(path: &Path) -> Result<i32> {
    let cfg = load(path)?;
    let store = kmirror::checkpoint::open(&cfg);
    let Some(cp) = copy::load_checkpoint(&cfg, &store)? else {
        println!(
            "no checkpoint at {} (the next run starts at each route's `start`)",
            store.describe()
        );
        return Ok(exit::OK);
    };
    println!(
        "checkpoint {} (job \"{}\", written {})",
        store.describe(),
        cp.job,
        cp.written_at
    );
    let mut rows = Vec::new();
    for (route, rc) in &cp.routes {
        for (key, p) in &rc.partitions {
            let targets: Vec<String> = p
                .target
                .iter()
                .map(|(tp, [a, b])| format!("{tp}:[{a}..={b}]"))
                .collect();
            rows.push(vec![
                route.clone(),
                format!("{}:{key}", rc.source_cluster),
                p.next_offset.to_string(),
                p.first_offset.to_string(),
                format!(
                    "{}:{} {}",
                    p.target_cluster,
                    p.target_topic,
                    targets.join(" ")
                ),
                p.updated_at.clone(),
            ]);
        }
    }
    print!(
        "{}",
        counts::render_table(
            &[
                "route",
                "source",
                "next offset",
                "first offset",
                "target written",
                "updated"
            ],
            &rows
        )
    );
    // What the offsets refer to: a run refuses them on a cluster or topic with other ids.
    let mut ids = Vec::new();
    for (route, rc) in &cp.routes {
        let mut parts = Vec::new();
        if let Some(id) = &rc.source_cluster_id {
            parts.push(format!("source cluster id {id}"));
        }
        if let Some(id) = &rc.target_cluster_id {
            parts.push(format!("target cluster id {id}"));
        }
        for (topic, id) in &rc.topic_ids {
            parts.push(format!("topic {topic} id {id}"));
        }
        if !parts.is_empty() {
            ids.push(format!("  {route}: {}", parts.join(", ")));
        }
    }
    if !ids.is_empty() {
        println!("\nrecorded ids:\n{}", ids.join("\n"));
    }
    Ok(exit::OK)
}

/// `--route R` must name a route of the file: a usage error (exit 2) otherwise.
/// `command` works on routes between clusters; a file whose routes all read dumps has
/// none, and saying so beats an empty plan.
fn cluster_routes_only(cfg: &Config, command: &str) -> Result<()> {
    if cfg.routes.is_empty() && !cfg.imports.is_empty() {
        return Err(Usage(format!(
            "every route of {} reads a [files] dump: `{command}` copies between clusters; replay the dumps with `kmirror import -c {}`",
            cfg.path.display(),
            cfg.path.display()
        ))
        .into());
    }
    Ok(())
}

fn check_route(cfg: &Config, route: &str) -> Result<()> {
    if cfg.route(route).is_none() {
        let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        return Err(Usage(format!(
            "--route: route \"{route}\" is not in {} (its routes: {})",
            cfg.path.display(),
            names.join(", ")
        ))
        .into());
    }
    Ok(())
}

fn reset_checkpoints(
    path: &Path,
    route: Option<&str>,
    topics: &[TopicScope],
    to: Option<StartPosition>,
    execute: bool,
) -> Result<i32> {
    let cfg = load(path)?;
    if let Some(r) = route {
        check_route(&cfg, r)?;
    }
    // A reset under a live run would be overwritten by its next checkpoint; a preview only
    // reads (the checkpoint is replaced atomically) and needs no lock.
    let store = kmirror::checkpoint::open(&cfg);
    let _lock = if execute {
        Some(take_job(&cfg, &*store)?)
    } else {
        None
    };
    let in_scope = |topic: &str, partition: i32| {
        topics.is_empty()
            || topics.iter().any(|s| {
                s.topic == topic
                    && s.partitions
                        .as_ref()
                        .is_none_or(|ps| ps.contains(&partition))
            })
    };
    let selected: Vec<String> = cfg
        .routes
        .iter()
        .filter(|r| route.is_none_or(|n| n == r.name))
        .map(|r| r.name.clone())
        .collect();
    let mut cp = match store.load().with_context(|| {
        "refusing to reset over a checkpoint that cannot be read; move it away first"
    })? {
        Some(cp) => {
            // A route recorded for another source cluster is what a reset is for (the
            // WrongSource error says so): only the job and the routes kept must still match.
            let mut kept = cp.clone();
            kept.routes.retain(|r, _| !selected.contains(r));
            kmirror::checkpoint::check_ownership(&kept, &store, &cfg)
                .context("refusing to reset")?;
            cp
        }
        None => kmirror::checkpoint::Checkpoint::new(&cfg.job),
    };
    let old = cp.clone();
    let was = |r: &str, topic: &str, p: i32| {
        old.get(r, topic, p)
            .map(|c| c.next_offset.to_string())
            .unwrap_or_else(|| "-".into())
    };
    // (route, source partition, checkpoint now, after the reset)
    let mut rows: Vec<Vec<String>> = Vec::new();
    // (route, checkpoint partition key) of every partition reset.
    let mut reset: Vec<(String, String)> = Vec::new();
    match &to {
        None => {
            for r in &selected {
                let Some(rc) = cp.routes.get_mut(r) else {
                    continue;
                };
                let source = rc.source_cluster.clone();
                rc.partitions.retain(|key, p| {
                    let Some((topic, partition)) = kmirror::checkpoint::parse_partition_key(key)
                    else {
                        return true;
                    };
                    if !in_scope(topic, partition) {
                        return true;
                    }
                    rows.push(vec![
                        r.clone(),
                        format!("{source}:{key}"),
                        p.next_offset.to_string(),
                        "forgotten (starts at `start`)".into(),
                    ]);
                    reset.push((r.clone(), key.clone()));
                    false
                });
                if rc.partitions.is_empty() {
                    cp.routes.remove(r);
                }
            }
        }
        Some(start) => {
            let mut c = cfg.clone();
            c.routes.retain(|r| selected.contains(&r.name));
            for r in &mut c.routes {
                r.start = start.clone();
            }
            let plan = plan::build(&c, None, CreateTopics::Never)
                .context("resolving --to on the source partitions")?;
            let now = value::format_ms(value::now_ms());
            if topics.is_empty() {
                // The whole route is reset: partitions it no longer reads go too.
                for r in &selected {
                    cp.routes.remove(r);
                }
            }
            for t in plan
                .tasks
                .iter()
                .filter(|t| in_scope(&t.topic, t.partition))
            {
                rows.push(vec![
                    t.route_name.clone(),
                    t.source_label(),
                    was(&t.route_name, &t.topic, t.partition),
                    t.start.to_string(),
                ]);
                reset.push((t.route_name.clone(), partition_key(&t.topic, t.partition)));
                let rc = cp.routes.entry(t.route_name.clone()).or_default();
                rc.source_cluster = t.source_cluster.clone();
                rc.partitions.insert(
                    partition_key(&t.topic, t.partition),
                    PartitionCheckpoint {
                        next_offset: t.start,
                        first_offset: t.start,
                        target_cluster: t.target_cluster.clone(),
                        target_topic: t.target_topic.clone(),
                        target: Default::default(),
                        target_start: Default::default(),
                        end: None,
                        updated_at: now.clone(),
                    },
                );
            }
        }
    }
    if rows.is_empty() && !topics.is_empty() {
        let asked: Vec<String> = topics
            .iter()
            .map(|s| match &s.partitions {
                Some(p) => format!(
                    "{}:{}",
                    s.topic,
                    p.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                None => s.topic.clone(),
            })
            .collect();
        return Err(Usage(format!(
            "--topic {}: no {} of the selected routes matches",
            asked.join(" --topic "),
            if to.is_some() {
                "source partition"
            } else {
                "checkpointed partition"
            }
        ))
        .into());
    }
    if rows.is_empty() {
        println!(
            "nothing checkpointed for {}: nothing to forget",
            selected.join(", ")
        );
    } else {
        print!(
            "{}",
            counts::render_table(
                &["route", "source", "next offset now", "after reset"],
                &rows
            )
        );
    }
    if !execute {
        println!(
            "preview only: nothing written to {}. Run again with --execute to apply",
            store.describe()
        );
        return Ok(exit::OK);
    }
    cp.job = cfg.job.clone();
    cp.written_at = value::format_ms(value::now_ms());
    store.save(&cp)?;
    println!("checkpoint written: {}", store.describe());
    forget_verified(&cfg, &reset)?;
    Ok(exit::OK)
}

/// A reset partition is copied again from its new position (into what may be another
/// target): what verify proved about the old copy says nothing about the new one, so
/// `verify --since-last` must start the partition over.
fn forget_verified(cfg: &kmirror::config::Config, reset: &[(String, String)]) -> Result<()> {
    let path = verify::verified_state_path(&cfg.checkpoint_file());
    let mut state = verify::VerifiedState::load(&path)
        .context("the checkpoint was reset, but the verified positions beside it cannot be read; move that file away before `verify --since-last`")?;
    let mut changed = false;
    for (route, key) in reset {
        if let Some(r) = state.routes.get_mut(route) {
            changed |= r.partitions.remove(key).is_some();
            if r.partitions.is_empty() {
                state.routes.remove(route);
            }
        }
    }
    if changed {
        state.save(&path)?;
        println!(
            "verified positions forgotten for the reset partitions: {}",
            path.display()
        );
    }
    Ok(())
}
