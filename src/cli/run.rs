//! `kmirror check` (the routing file, then the plan) and `kmirror run` (the copy, its
//! live display or progress lines, the HTTP endpoint, interval verification and the
//! summary).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use kmirror::checkpoint::take_job;
use kmirror::config::{Config, EndPosition};
use kmirror::copy::{self, RunOptions};
use kmirror::error::exit;
use kmirror::plan::{self, CreateTopics};
use kmirror::{report, verify};

use super::terminal::{reload_on_sighup, stderr_line, stop_on_signal, JSON_LOGS};
use super::{cluster_routes_only, load};

pub(crate) fn check(path: &Path, offline: bool, create_topics: bool, json: bool) -> Result<i32> {
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
pub(crate) fn print_routing_file(path: &Path, cfg: &Config) {
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
    if cfg.delivery.exactly_once() {
        if let kmirror::config::StoreSettings::Kafka { cluster, .. } = &cfg.checkpoints.store {
            println!(
                "  delivery: exactly_once (transactional.id \"{}\"{} on cluster {cluster}; a commit every {} or {} records; target readers must use isolation.level=read_committed)",
                kmirror::copy::transaction::transactional_id_for(cfg),
                if cfg.group.is_some() {
                    ", this replica's"
                } else {
                    ""
                },
                humantime::format_duration(cfg.delivery.commit_interval),
                cfg.delivery.max_records_per_transaction
            );
        }
    }
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
    for (name, dir) in &cfg.archives {
        println!(
            "  archive {name}: {} (routes dump into it or restore from it)",
            dir.display()
        );
    }
}

pub(crate) fn run(
    path: &Path,
    once: bool,
    progress: u64,
    json: bool,
    http: Option<std::net::SocketAddr>,
) -> Result<i32> {
    let cfg = load(path)?;
    cluster_routes_only(&cfg, "run")?;
    if once && cfg.group.is_some() {
        return Err(super::Usage(format!(
            "--once is refused with [group] ({}): replicas share routes that follow; run a bounded copy without [group]",
            path.display()
        ))
        .into());
    }
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
pub(crate) fn print_run_summary(report: &copy::RunReport) {
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
