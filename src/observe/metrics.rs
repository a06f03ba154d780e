//! `/metrics`: Prometheus text (format 0.0.4), rendered with `prometheus-client` from the
//! run's shared state at scrape time (a `Collector`), so every number is the one the
//! progress lines and the end-of-run summary print, never a second count kept beside them.
//!
//! Per-partition series carry `route`, `source_cluster`, `topic`, `partition` and
//! `target_cluster`: bounded by the plan, never by data. The latency histogram is per route.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Latency, Observer, PartitionNow};
use crate::copy::task::TaskStatus;

/// The states `kmirror_partition_state` reports, one series each (1 for the current one).
pub const STATES: [&str; 7] = [
    "copying",
    "retrying",
    "halted",
    "done",
    "source_gone",
    "removed",
    "released",
];

type Labels = Vec<(&'static str, String)>;

/// A per-partition metric: name, help, and how to read it from a partition.
type PerPartition<'f, T> = (&'f str, &'f str, &'f dyn Fn(&PartitionNow<'_>) -> T);

fn partition_labels(p: &PartitionNow<'_>) -> Labels {
    vec![
        ("route", p.plan.route_name.clone()),
        ("source_cluster", p.plan.source_cluster.clone()),
        ("topic", p.plan.topic.clone()),
        ("partition", p.plan.partition.to_string()),
        ("target_cluster", p.plan.target_cluster.clone()),
    ]
}

/// The state word of a partition (`STATES`).
pub(crate) fn state_word(p: &PartitionNow<'_>) -> &'static str {
    match (&p.progress.status, &p.progress.retrying) {
        (TaskStatus::Done, _) => "done",
        (TaskStatus::Halted(_), _) => "halted",
        (TaskStatus::SourceGone, _) => "source_gone",
        (TaskStatus::Removed, _) => "removed",
        (TaskStatus::Released(_), _) => "released",
        (_, Some(_)) => "retrying",
        _ => "copying",
    }
}

#[derive(Debug)]
struct RunCollector(Arc<Observer>);

/// One metric family: its descriptor, then one sample per label set.
fn family<T: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, T)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge_i(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

fn gauge_f(v: f64) -> ConstGauge<f64> {
    ConstGauge::new(v)
}

impl Collector for RunCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        family(
            &mut enc,
            "kmirror_build_info",
            "kmirror's version (always 1)",
            MetricType::Gauge,
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                gauge_i(1),
            )],
        )?;
        let (ready, _) = self.0.readiness();
        family(
            &mut enc,
            "kmirror_ready",
            "1 when /readyz answers 200 (plan built, no partition stalled)",
            MetricType::Gauge,
            [(Labels::new(), gauge_i(ready as i64))],
        )?;
        self.0.with_partitions(|phase, run| {
            family(
                &mut enc,
                "kmirror_run_phase",
                "1 for the run's current phase",
                MetricType::Gauge,
                ["starting", "running", "finished"]
                    .iter()
                    .map(|s| (vec![("phase", s.to_string())], gauge_i((phase.as_str() == *s) as i64))),
            )?;
            let Some((run, parts)) = run else {
                return Ok(());
            };
            let per = |f: &dyn Fn(&PartitionNow<'_>) -> u64| -> Vec<(Labels, ConstCounter<u64>)> {
                parts
                    .iter()
                    .map(|p| (partition_labels(p), counter(f(p))))
                    .collect()
            };
            let counters: [PerPartition<'_, u64>; 9] = [
                ("kmirror_records_read", "Records read from the source, each offset once", &|p| p.counter_counts.read),
                ("kmirror_records_copied", "Records the target acknowledged", &|p| p.counter_counts.acked),
                ("kmirror_records_filtered", "Records a route's filter left out", &|p| p.counter_counts.filtered),
                ("kmirror_records_dead_lettered", "Records written to the dead-letter topic", &|p| p.counter_counts.dead_lettered),
                ("kmirror_records_skipped", "Records skipped by on_error = \"skip\"", &|p| p.counter_counts.skipped),
                ("kmirror_records_failed", "Records that could not be copied (their partition halted on them)", &|p| p.counter_counts.failed),
                ("kmirror_records_produced", "Records handed to a producer, re-sends included", &|p| p.counter_counts.produced),
                ("kmirror_records_reread", "Records read again after a rewind (a retry)", &|p| p.counter_counts.retried),
                ("kmirror_bytes_copied", "Bytes (key, value, headers) of records the target acknowledged", &|p| p.progress.observed.bytes_acked),
            ];
            for (name, help, f) in counters {
                family(&mut enc, name, help, MetricType::Counter, per(f))?;
            }
            family(
                &mut enc,
                "kmirror_errors",
                "Errors taken per partition, by kind: source (consumer fetch errors), target (retriable delivery failures, each retried)",
                MetricType::Counter,
                parts.iter().flat_map(|p| {
                    let mut s = partition_labels(p);
                    let mut t = s.clone();
                    s.push(("kind", "source".into()));
                    t.push(("kind", "target".into()));
                    [
                        (s, counter(p.progress.source_errors)),
                        (t, counter(p.progress.observed.target_errors)),
                    ]
                }),
            )?;
            family(
                &mut enc,
                "kmirror_stalls",
                "Stall episodes: lag > 0 and the position unmoved for [run] stall_timeout",
                MetricType::Counter,
                parts.iter().map(|p| (partition_labels(p), counter(p.watch.episodes))),
            )?;
            let gauges: [PerPartition<'_, i64>; 6] = [
                ("kmirror_records_pending", "Records read and not yet settled", &|p| p.progress.counts.pending() as i64),
                ("kmirror_partition_lag_records", "Source end (log end, or the route's end if lower) minus the next offset to copy", &|p| p.lag),
                ("kmirror_partition_position", "Next source offset to copy (everything below it is settled)", &|p| p.progress.position),
                ("kmirror_partition_end_offset", "The source partition's end as the reader's last fetch saw it", &|p| p.progress.log_end),
                ("kmirror_partition_in_flight_bytes", "Bytes produced and not yet acknowledged", &|p| p.progress.in_flight_bytes as i64),
                ("kmirror_partition_stalled", "1 while the partition is stalled", &|p| p.watch.stalled.is_some() as i64),
            ];
            for (name, help, f) in gauges {
                family(
                    &mut enc,
                    name,
                    help,
                    MetricType::Gauge,
                    parts.iter().map(|p| (partition_labels(p), gauge_i(f(p)))),
                )?;
            }
            family(
                &mut enc,
                "kmirror_partition_lag_seconds",
                "Now minus the source timestamp of the newest record acknowledged, while records are left (0 when none); absent until one is acknowledged",
                MetricType::Gauge,
                parts.iter().filter_map(|p| p.lag_seconds.map(|s| (partition_labels(p), gauge_f(s)))),
            )?;
            family(
                &mut enc,
                "kmirror_checkpoint_position",
                "Next offset recorded in the last checkpoint written (where a restart resumes)",
                MetricType::Gauge,
                parts.iter().filter_map(|p| p.checkpointed.filter(|o| *o >= 0).map(|o| (partition_labels(p), gauge_i(o)))),
            )?;
            family(
                &mut enc,
                "kmirror_partition_state",
                "1 for the partition's current state (copying, retrying, halted, done)",
                MetricType::Gauge,
                parts.iter().flat_map(|p| {
                    let now = state_word(p);
                    STATES.iter().map(move |s| {
                        let mut l = partition_labels(p);
                        l.push(("state", s.to_string()));
                        (l, gauge_i((now == *s) as i64))
                    })
                }),
            )?;
            family(
                &mut enc,
                "kmirror_in_flight_bytes",
                "Bytes produced and not yet acknowledged, all partitions",
                MetricType::Gauge,
                [(Labels::new(), gauge_i(run.shared.in_flight() as i64))],
            )?;
            if let Some(g) = &run.shared.group {
                family(
                    &mut enc,
                    "kmirror_group_owned_partitions",
                    "[group]: source partitions this replica owns now",
                    MetricType::Gauge,
                    [(Labels::new(), gauge_i(g.owned().len() as i64))],
                )?;
                family(
                    &mut enc,
                    "kmirror_group_fenced",
                    "[group]: partitions this replica stopped because another member took them at a higher epoch",
                    MetricType::Counter,
                    [(Labels::new(), counter(g.fenced_total()))],
                )?;
                family(
                    &mut enc,
                    "kmirror_group_lease_valid",
                    "[group]: 1 while membership is confirmed within the session timeout (copying allowed)",
                    MetricType::Gauge,
                    [(Labels::new(), gauge_i(g.lease_valid() as i64))],
                )?;
            }
            family(
                &mut enc,
                "kmirror_checkpoint_write_errors",
                "Checkpoint writes that failed (each retried; past [checkpoints] max_unwritten the run stops reading)",
                MetricType::Counter,
                [(Labels::new(), counter(run.checkpoint_errors))],
            )?;
            if let Some(age) = Observer::checkpoint_age(run) {
                family(
                    &mut enc,
                    "kmirror_checkpoint_age_seconds",
                    "Seconds since the last checkpoint was written",
                    MetricType::Gauge,
                    [(Labels::new(), gauge_f(age))],
                )?;
            }
            let mut limiters: Vec<(Labels, (u64, f64))> = run
                .route_limiters
                .iter()
                .filter_map(|(name, l)| {
                    let (n, d) = l.as_ref()?.waited();
                    Some((vec![("scope", "route".into()), ("route", name.clone())], (n, d.as_secs_f64())))
                })
                .collect();
            if let Some(l) = &run.shared.limiter {
                let (n, d) = l.waited();
                limiters.push((vec![("scope", "global".into()), ("route", String::new())], (n, d.as_secs_f64())));
            }
            family(
                &mut enc,
                "kmirror_rate_limit_waits",
                "Batches that waited for a rate limit",
                MetricType::Counter,
                limiters.iter().map(|(l, (n, _))| (l.clone(), counter(*n))),
            )?;
            family(
                &mut enc,
                "kmirror_rate_limit_wait_seconds",
                "Time spent waiting for rate limits",
                MetricType::Counter,
                limiters.iter().map(|(l, (_, s))| (l.clone(), ConstCounter::new(*s))),
            )?;
            // Latency per route: the sum of its partitions' histograms.
            let mut by_route: Vec<(String, Latency)> = Vec::new();
            for p in &parts {
                match by_route.iter_mut().find(|(r, _)| *r == p.plan.route_name) {
                    Some((_, l)) => l.add(&p.progress.observed.latency),
                    None => by_route.push((p.plan.route_name.clone(), p.progress.observed.latency)),
                }
            }
            let mut m = enc.encode_descriptor(
                "kmirror_replication_latency_seconds",
                "Source record timestamp to target acknowledgement, for records copied",
                None,
                MetricType::Histogram,
            )?;
            for (route, l) in &by_route {
                let labels: Labels = vec![("route", route.clone())];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    l.sum_seconds,
                    l.count,
                    &l.cumulative(),
                    None,
                )?;
            }
            Ok(())
        })
    }
}

/// The `/metrics` document.
pub fn render(observer: &Arc<Observer>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RunCollector(observer.clone())));
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
        // Writing to a String cannot fail; an encoder error is a bug worth seeing.
        let _ = writeln!(out, "# encoding failed");
    }
    out
}
