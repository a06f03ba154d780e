//! `kmirror demo`: the whole job on an embedded default, no Kafka of your own needed. Two
//! in-process mock clusters, a seeded topic, the shipped `config/demo.toml`, progress, the
//! summary table and the verification table.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::FileStore;
use crate::config::{value, Config};
use crate::copy::{self, RunOptions};
use crate::dev_cluster::{produce_one, seed_orders, DevClusters};
use crate::verify;

/// The routing file the demo runs, shipped as `config/demo.toml`.
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo clusters: {0}")]
    Clusters(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Run(#[from] copy::RunError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error("demo work directory: {0}")]
    Io(#[from] std::io::Error),
}

struct WorkDir(std::path::PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo; returns whether the run completed and verification matched.
pub fn run(records: u64, out: &mut dyn std::io::Write) -> Result<bool, DemoError> {
    let partitions = 6;
    let _ = writeln!(out, "kmirror demo: tenant acme's orders went to the wrong cluster; move exactly those, prove it");
    let _ = writeln!(
        out,
        "starting two in-memory Kafka-protocol clusters (librdkafka mock, 3 brokers each)"
    );
    let clusters = DevClusters::start(2, 3, &[("orders".to_string(), partitions)])
        .map_err(DemoError::Clusters)?;
    let (source, target) = (
        clusters.bootstraps[0].clone(),
        clusters.bootstraps[1].clone(),
    );
    let _ = writeln!(
        out,
        "  wrong-cluster (source): {source}\n  right-cluster (target): {target}"
    );
    let _ = writeln!(
        out,
        "seeding {records} order records into wrong-cluster:orders ({partitions} partitions)"
    );
    seed_orders(
        &source,
        "orders",
        partitions,
        records,
        value::now_ms() - 3_600_000,
    )
    .map_err(DemoError::Clusters)?;
    // The incident: one producer wrote a truncated JSON document for acme.
    produce_one(
        &source,
        "orders",
        2,
        b"customer-42",
        br#"{"tenant_id":"acme","order_id":"#,
    )
    .map_err(DemoError::Clusters)?;
    let _ = writeln!(
        out,
        "  + 1 poison record (truncated JSON) at wrong-cluster:orders/2"
    );
    clusters
        .create_topic(1, "orders.dlq", 1)
        .map_err(DemoError::Clusters)?;

    // A fresh directory each time (never a stale checkpoint), removed however the demo ends.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let work =
        WorkDir(std::env::temp_dir().join(format!("kmirror-demo-{}-{nanos}", std::process::id())));
    let dir = work.0.clone();
    std::fs::create_dir_all(&dir)?;
    let dir_s = dir.display().to_string();
    let env = move |k: &str| match k {
        "KMIRROR_DEMO_SOURCE" => Some(source.clone()),
        "KMIRROR_DEMO_TARGET" => Some(target.clone()),
        "KMIRROR_DEMO_DIR" => Some(dir_s.clone()),
        other => std::env::var(other).ok(),
    };
    let config = Config::from_str(Path::new("config/demo.toml"), DEMO_TOML.to_string(), &env)?;
    let store = FileStore::new(config.checkpoint_file());
    let _ = writeln!(
        out,
        "running config/demo.toml (checkpoints in {})",
        store.path().display()
    );
    let report = copy::run(
        &config,
        &store,
        &RunOptions {
            once: false,
            progress_every: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        Arc::new(AtomicBool::new(false)),
    )?;
    let _ = writeln!(
        out,
        "\ncopy finished in {:.1}s ({:.0} records/s)\n{}",
        report.elapsed.as_secs_f64(),
        report.totals.acked as f64 / report.elapsed.as_secs_f64().max(0.001),
        report.table()
    );
    let _ = writeln!(out, "verifying: reading both sides record by record");
    let v = verify::verify(&config, &store, None, true)?;
    let _ = writeln!(out, "{}", v.table());
    let t = &report.totals;
    let _ = writeln!(
        out,
        "migration: read {} records on wrong-cluster:orders; copied {} of tenant acme to right-cluster:orders; left {} of other tenants alone (filtered); dead-lettered {} poison record(s) to right-cluster:orders.dlq; failed {}",
        t.read, t.acked, t.filtered, t.dead_lettered, t.failed
    );
    let ok = report.complete && v.ok() && t.dead_lettered == 1 && t.failed == 0;
    let _ = writeln!(
        out,
        "{}",
        if ok {
            "demo OK: every record copied and verified"
        } else {
            "demo FAILED"
        }
    );
    clusters.stop();
    Ok(ok)
}
