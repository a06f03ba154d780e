//! The `kmirror` binary: its flags, `main` and the dispatch of each command; the commands
//! themselves are in `src/cli/` (run and check, checkpoints, the terminal and signals),
//! over the library.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use kmirror::checkpoint::take_job;
use kmirror::config::{value, StartPosition};
use kmirror::error::{exit, exit_code};
use kmirror::redact::redact;
use kmirror::{demo, dev_cluster, purge, verify};

mod cli;

use cli::checkpoints::{
    parse_topic_scope, reset_checkpoints, show_checkpoints, show_checkpoints_json, TopicScope,
};
use cli::run::{check, run};
use cli::terminal::*;
use cli::{check_route, cluster_routes_only, load, Usage};

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
cannot be read or written), an aborted exactly-once transaction, or other; 130 second signal \
while stopping."
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
        /// The default with `[delivery] guarantee = "exactly_once"`.
        #[arg(long)]
        fail_on_duplicates: bool,
        /// With `guarantee = "exactly_once"`: do not count duplicates as a mismatch (e.g.
        /// for copies an at-least-once run of the job wrote before).
        #[arg(long, conflicts_with = "fail_on_duplicates")]
        allow_duplicates: bool,
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
            allow_duplicates,
            output,
            junit,
            parallel,
            from,
            to,
            since_last,
        } => {
            verify::bound_malloc_arenas(parallel as usize);
            let cfg = load(&config)?;
            // Exactly-once promises no duplicates: one is a mismatch unless asked otherwise.
            let fail_on_duplicates =
                fail_on_duplicates || (cfg.delivery.exactly_once() && !allow_duplicates);
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
