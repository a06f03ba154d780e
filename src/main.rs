//! The `kmirror` binary: flags, logging, signals and exit codes around the library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use kmirror::checkpoint::{partition_key, CheckpointStore, FileStore, PartitionCheckpoint};
use kmirror::config::{value, Config, StartPosition};
use kmirror::copy::{self, RunOptions};
use kmirror::error::{exit, exit_code};
use kmirror::plan::{self, CreateTopics};
use kmirror::{counts, demo, dev_cluster, verify};

#[derive(Parser)]
#[command(
    name = "kmirror",
    version,
    about = "Mirror Kafka topics between clusters, with checkpoints, rate limits and verification",
    after_help = "Exit codes: 0 success; 1 verify mismatch, or halted partitions / failed records; \
2 usage; 3 invalid routing file; 4 cluster, topic or offset error; 5 unusable checkpoint; \
70 other; 130 second signal while stopping."
)]
struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the routing file, connect, and print the plan (one line per source partition).
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Validate the file only; do not connect.
        #[arg(long)]
        offline: bool,
    },
    /// Copy until every route reaches its `end` (none = forever), or SIGINT/SIGTERM.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Treat every route as end = "snapshot": copy what is there now, then exit.
        #[arg(long)]
        once: bool,
        /// Seconds between progress lines (0 = none).
        #[arg(long, default_value_t = 5)]
        progress: u64,
    },
    /// Read the copied ranges on both sides and compare them record by record.
    Verify {
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Count duplicate deliveries (normal after a crash under at-least-once) as a mismatch.
        #[arg(long)]
        fail_on_duplicates: bool,
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
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Move checkpoints: forget them (next run starts at `start`), or set them --to a position.
    Reset {
        #[arg(short, long)]
        config: PathBuf,
        /// Only this route (default: all routes).
        #[arg(long)]
        route: Option<String>,
        /// earliest | latest | OFFSET | RFC 3339 TIMESTAMP (default: forget).
        #[arg(long)]
        to: Option<String>,
    },
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
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let code = match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    };
    std::process::exit(code);
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "kmirror=debug,info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Raises the flag on SIGINT or SIGTERM; a second signal exits at once.
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
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
                for n in 0.. {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    if n > 0 {
                        eprintln!("second signal: exiting without waiting");
                        std::process::exit(130);
                    }
                    tracing::warn!("stopping: no new reads; waiting for in-flight deliveries, then writing the final checkpoint");
                    flag.store(true, Ordering::Relaxed);
                }
            });
        })
        .expect("spawn signal thread");
    stop
}

fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Check { config, offline } => check(&config, offline),
        Command::Run {
            config,
            once,
            progress,
        } => run(&config, once, progress),
        Command::Verify {
            config,
            route,
            fail_on_duplicates,
        } => {
            let cfg = load(&config)?;
            if let Some(r) = &route {
                if cfg.route(r).is_none() {
                    bail!("route \"{r}\" is not in {}", config.display());
                }
            }
            let store = FileStore::new(cfg.checkpoint_file());
            let report = verify::verify(&cfg, &store, route.as_deref(), fail_on_duplicates)?;
            print!("{}", report.table());
            Ok(if report.ok() {
                exit::OK
            } else {
                exit::MISMATCH
            })
        }
        Command::Checkpoints {
            action: CheckpointAction::Show { config },
        } => show_checkpoints(&config),
        Command::Checkpoints {
            action: CheckpointAction::Reset { config, route, to },
        } => reset_checkpoints(&config, route.as_deref(), to.as_deref()),
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
            let stop = stop_on_signal();
            let topics: Vec<(String, i32)> = topics.into_iter().flat_map(|t| t.0).collect();
            let started = std::time::Instant::now();
            let mut shown = started;
            let dc =
                dev_cluster::DevClusters::start_with_progress(clusters, brokers, &topics, |p| {
                    // Many topics take a moment: say how far along, about once a second.
                    if shown.elapsed() >= Duration::from_secs(1) || p.created == p.total {
                        shown = std::time::Instant::now();
                        if p.total >= 100 || started.elapsed() >= Duration::from_secs(1) {
                            eprintln!(
                                "creating topics: cluster{} {}/{}",
                                p.cluster + 1,
                                p.created,
                                p.total
                            );
                        }
                    }
                })
                .map_err(anyhow::Error::msg)?;
            if !topics.is_empty() {
                eprintln!(
                    "created {} topics on each of {clusters} clusters in {:.1?}",
                    topics.len(),
                    started.elapsed()
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

fn check(path: &Path, offline: bool) -> Result<i32> {
    let cfg = load(path)?;
    println!(
        "{}: routing file OK ({} routes, {} clusters; job \"{}\", checkpoints in {})",
        path.display(),
        cfg.routes.len(),
        cfg.clusters.len(),
        cfg.job,
        cfg.checkpoint_file().display()
    );
    for c in cfg.clusters.values() {
        let props = c.redacted_properties();
        if props.is_empty() {
            println!("  cluster {}: {}", c.name, c.bootstrap);
        } else {
            let p: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("  cluster {}: {} ({})", c.name, c.bootstrap, p.join(", "));
        }
    }
    if offline {
        return Ok(exit::OK);
    }
    let store = FileStore::new(cfg.checkpoint_file());
    let cp = copy::load_checkpoint(&cfg, &store)?;
    let plan = plan::build(&cfg, cp.as_ref(), CreateTopics::AsConfigured)?;
    print!("{}", plan.render());
    Ok(exit::OK)
}

fn run(path: &Path, once: bool, progress: u64) -> Result<i32> {
    let cfg = load(path)?;
    let stop = stop_on_signal();
    let store = FileStore::new(cfg.checkpoint_file());
    let opts = RunOptions {
        once,
        progress_every: (progress > 0).then(|| Duration::from_secs(progress)),
    };
    let report = copy::run(&cfg, &store, &opts, stop)?;
    print!("{}", report.table());
    println!(
        "{} in {:.1}s; checkpoint {}",
        if report.complete {
            "complete"
        } else if report.stopped {
            "stopped"
        } else {
            "ended"
        },
        report.elapsed.as_secs_f64(),
        report.checkpoint
    );
    if report.gaps > 0 {
        println!(
            "GAP: {} records were deleted by retention before they could be copied",
            report.gaps
        );
    }
    for (src, why) in &report.halted {
        eprintln!("halted {src}: {why}");
    }
    Ok(if report.halted.is_empty() && report.totals.failed == 0 {
        exit::OK
    } else {
        exit::MISMATCH
    })
}

fn show_checkpoints(path: &Path) -> Result<i32> {
    let cfg = load(path)?;
    let store = FileStore::new(cfg.checkpoint_file());
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
    Ok(exit::OK)
}

fn reset_checkpoints(path: &Path, route: Option<&str>, to: Option<&str>) -> Result<i32> {
    let cfg = load(path)?;
    if let Some(r) = route {
        if cfg.route(r).is_none() {
            bail!("route \"{r}\" is not in {}", path.display());
        }
    }
    let store = FileStore::new(cfg.checkpoint_file());
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
    match to {
        None => {
            for r in &selected {
                cp.routes.remove(r);
            }
            println!(
                "forgot checkpoints of {}: the next run starts at each route's `start`",
                selected.join(", ")
            );
        }
        Some(to) => {
            let start = match to {
                "earliest" => StartPosition::Earliest,
                "latest" => StartPosition::Latest,
                t if t.parse::<i64>().is_ok_and(|o| o >= 0) => StartPosition::Offset(t.parse()?),
                t => StartPosition::Timestamp(value::parse_timestamp_ms(t).map_err(|m| {
                    anyhow::anyhow!("--to {m} (or use earliest, latest or an offset)")
                })?),
            };
            let mut c = cfg.clone();
            c.routes.retain(|r| selected.contains(&r.name));
            for r in &mut c.routes {
                r.start = start.clone();
            }
            let plan = plan::build(&c, None, CreateTopics::Never)?;
            let now = value::format_ms(value::now_ms());
            for r in &selected {
                cp.routes.remove(r);
            }
            for t in &plan.tasks {
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
                        updated_at: now.clone(),
                    },
                );
                println!("{} {} -> {}", t.route_name, t.source_label(), t.start);
            }
        }
    }
    cp.job = cfg.job.clone();
    cp.written_at = value::format_ms(value::now_ms());
    store.save(&cp)?;
    println!("checkpoint written: {}", store.describe());
    Ok(exit::OK)
}
