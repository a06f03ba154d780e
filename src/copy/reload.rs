//! Reloading the routing file while a run follows (SIGHUP on `kmirror run`). The file is
//! read and checked first: a file with errors, or one that changes what a reload cannot
//! (clusters, the job, a route on a cluster no route of the run uses, a route with an
//! `end`), is refused with every reason logged, and the running configuration stays.
//! Otherwise, by route name: a route that left the file stops (its partitions drain their
//! in-flight records, then show `removed by reload`; their checkpoint entries stay), a new
//! route starts (as a run's start would start it, or from its checkpoint entries), and a
//! changed route is both: the new version starts once the old one drained, from where it
//! got to. Starting is `discovery`'s: a reload hands it the new routes.
//!
//! Routes keep their index for the whole run (tasks, limiters and the observer refer to
//! routes by index): a new or changed route gets a new index at the end, one that left
//! keeps its slot.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::discovery::{follows, Applier, LayoutChange, Reconfigure};
use super::task::TaskStatus;
use super::Shared;
use crate::checkpoint::Checkpoint;
use crate::config::{ClusterConfig, Config, RouteConfig};
use crate::observe::Observer;
use crate::plan::TaskPlan;
use crate::rate_limit::Limiter;

/// A reload whose stopped routes are still draining.
struct Pending {
    since: Instant,
    /// Task ids of the stopped routes.
    waiting: Vec<usize>,
    routes: Vec<RouteConfig>,
    removed: Vec<usize>,
    added: Vec<usize>,
}

/// The supervising loop's side of a reload.
pub struct Reloader {
    flag: Arc<AtomicBool>,
    running: Config,
    /// By route index: still in the routing file.
    live: Vec<bool>,
    /// Clusters the run has readers for, and producers for.
    sources: BTreeSet<String>,
    targets: BTreeSet<String>,
    pending: Option<Pending>,
    /// Bound on waiting for stopped routes to drain before their new versions start.
    drain_limit: Duration,
    /// A reload was applied since `take_applied` last looked.
    applied: bool,
}

impl Reloader {
    pub fn new(
        flag: Arc<AtomicBool>,
        config: &Config,
        sources: BTreeSet<String>,
        targets: BTreeSet<String>,
    ) -> Reloader {
        Reloader {
            flag,
            live: vec![true; config.routes.len()],
            running: config.clone(),
            sources,
            targets,
            pending: None,
            drain_limit: config.run.shutdown_timeout,
            applied: false,
        }
    }

    /// Whether a reload was applied since the last call.
    pub fn take_applied(&mut self) -> bool {
        std::mem::take(&mut self.applied)
    }

    /// Whether route `index` is still in the running configuration.
    pub fn is_live(&self, index: usize) -> bool {
        self.live.get(index).copied().unwrap_or(false)
    }

    /// The routes of the running configuration (those a reload removed left out).
    pub fn live_routes(&self) -> Vec<&RouteConfig> {
        self.running
            .routes
            .iter()
            .zip(&self.live)
            .filter(|(_, live)| **live)
            .map(|(r, _)| r)
            .collect()
    }

    /// Called on every turn of the supervising loop.
    pub fn tick(
        &mut self,
        tasks: &[TaskPlan],
        shared: &Shared,
        applier: &mut Applier,
        observer: &Observer,
        discovery: &Sender<Reconfigure>,
        checkpoint: impl FnOnce() -> Checkpoint,
    ) {
        if let Some(p) = &self.pending {
            let drained = p.waiting.iter().all(|&id| {
                let t = shared.progress_of(id);
                t.in_flight_bytes == 0 && !matches!(t.status, TaskStatus::Copying)
            });
            let late = p.since.elapsed() >= self.drain_limit;
            if !drained && !late {
                return;
            }
            if !drained {
                tracing::warn!(
                    "reload: the stopped routes did not drain within {}; starting their new versions from their checkpointed positions (records still in flight may be copied twice)",
                    humantime::format_duration(self.drain_limit)
                );
            }
            let p = self.pending.take().expect("pending");
            let cp = checkpoint();
            applier.checkpoint = Some(cp.clone());
            let _ = discovery.send(Reconfigure {
                routes: p.routes,
                removed: p.removed,
                added: p.added,
                checkpoint: cp,
            });
            self.applied = true;
            return;
        }
        if self.flag.swap(false, Ordering::Relaxed) {
            self.begin(tasks, applier, observer);
        }
    }

    fn begin(&mut self, tasks: &[TaskPlan], applier: &mut Applier, observer: &Observer) {
        let path = self.running.path.clone();
        tracing::info!("SIGHUP: reloading {}", path.display());
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!("reload refused: {line}");
                }
                tracing::error!("reload refused: keeping the running configuration");
                return;
            }
        };
        let mut refused = Vec::new();
        if new.job != self.running.job {
            refused.push(format!(
                "the job changed (\"{}\" -> \"{}\"): run the new job on its own",
                self.running.job, new.job
            ));
        }
        if !same_clusters(&self.running, &new) {
            refused.push("[clusters] changed: cluster settings take effect at a restart".into());
        }
        let live_by_name = |name: &str| {
            (0..self.running.routes.len())
                .find(|&i| self.live[i] && self.running.routes[i].name == name)
        };
        let mut added: Vec<RouteConfig> = Vec::new();
        let mut stopped: Vec<usize> = Vec::new();
        let mut unchanged = BTreeSet::new();
        for r in &new.routes {
            match live_by_name(&r.name) {
                // Compared as their checked form prints: any setting that differs.
                Some(i) if format!("{:?}", self.running.routes[i]) == format!("{r:?}") => {
                    unchanged.insert(i);
                }
                Some(i) => {
                    stopped.push(i);
                    added.push(r.clone());
                }
                None => added.push(r.clone()),
            }
        }
        for i in 0..self.running.routes.len() {
            if self.live[i] && !unchanged.contains(&i) && !stopped.contains(&i) {
                stopped.push(i);
            }
        }
        for r in &added {
            if !follows(r, false) {
                refused.push(format!(
                    "route \"{}\" has an end: a reload only starts routes that follow",
                    r.name
                ));
            }
            if !self.sources.contains(&r.source) {
                refused.push(format!(
                    "route \"{}\" reads cluster \"{}\", which no route of this run reads: restart to add it",
                    r.name, r.source
                ));
            }
            let writes =
                std::iter::once(&r.target).chain(r.dead_letter.as_ref().map(|d| &d.cluster));
            for c in writes {
                if !self.targets.contains(c) {
                    refused.push(format!(
                        "route \"{}\" writes to cluster \"{c}\", which no route of this run writes to: restart to add it",
                        r.name
                    ));
                }
            }
        }
        if !refused.is_empty() {
            for why in &refused {
                tracing::error!("reload refused: {why}");
            }
            tracing::error!("reload refused: keeping the running configuration");
            return;
        }
        if settings(&self.running) != settings(&new) {
            tracing::warn!(
                "reload: settings outside [[routes]] changed; they take effect at the next start"
            );
        }
        if added.is_empty() && stopped.is_empty() {
            tracing::info!("reload: no route changed");
            return;
        }
        let name = |i: &usize| self.running.routes[*i].name.clone();
        tracing::info!(
            "reload: stopping routes [{}], starting [{}]",
            stopped.iter().map(name).collect::<Vec<_>>().join(", "),
            added
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for &i in &stopped {
            self.live[i] = false;
            for reader in applier.readers.values() {
                let _ = reader.send(LayoutChange::StopRoute(i));
            }
        }
        let mut added_idx = Vec::new();
        for r in added {
            added_idx.push(self.running.routes.len());
            let limiter = Limiter::new(r.rate).map(Arc::new);
            observer.add_route(r.name.clone(), limiter.clone());
            applier.limiters.push(limiter);
            applier.routes.push(Arc::new(r.clone()));
            self.running.routes.push(r);
            self.live.push(true);
        }
        let waiting = tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| stopped.contains(&t.route))
            .map(|(id, _)| id)
            .collect();
        self.pending = Some(Pending {
            since: Instant::now(),
            waiting,
            routes: self.running.routes.clone(),
            removed: stopped,
            added: added_idx,
        });
    }
}

fn same_clusters(a: &Config, b: &Config) -> bool {
    let key = |c: &ClusterConfig| (c.name.clone(), c.bootstrap.clone(), c.properties.clone());
    // An archive's directory is a cluster setting too (each reader's sink holds them).
    a.archives == b.archives
        && a.clusters.len() == b.clusters.len()
        && a.clusters
            .values()
            .zip(b.clusters.values())
            .all(|(x, y)| key(x) == key(y))
}

/// Everything outside `[clusters]` and `[[routes]]`, as its checked form prints.
fn settings(c: &Config) -> String {
    format!(
        "{:?}",
        (&c.limits, &c.checkpoints, &c.run, &c.http, &c.verify)
    )
}
