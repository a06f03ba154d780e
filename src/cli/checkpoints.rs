//! `kmirror checkpoints show` (text, and JSON with each partition's log end and lag) and
//! `checkpoints reset` (preview, then `--execute`; a reset also forgets the verified
//! positions of the partitions it resets).

use std::path::Path;

use anyhow::{Context, Result};
use kmirror::checkpoint::{partition_key, take_job, PartitionCheckpoint};
use kmirror::config::{value, StartPosition};
use kmirror::copy;
use kmirror::error::exit;
use kmirror::plan::{self, CreateTopics};
use kmirror::{counts, verify};

use super::{check_route, load, Usage};

/// `--topic TOPIC[:P,P...]` of `checkpoints reset`: a topic, and optionally partitions.
#[derive(Clone, Debug)]
pub(crate) struct TopicScope {
    pub(crate) topic: String,
    pub(crate) partitions: Option<Vec<i32>>,
}

pub(crate) fn parse_topic_scope(s: &str) -> Result<TopicScope, String> {
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

/// `checkpoints show --output json`: the checkpoint with each partition's log-end offset and
/// lag (as the source broker reports its high watermark; a failed lookup is given per
/// partition, never fatal).
pub(crate) fn show_checkpoints_json(path: &Path) -> Result<i32> {
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
            if let Some(root) = cfg.archives.get(&rc.source_cluster) {
                // A restore: the source's end is where the archive's last segment ends.
                let end =
                    kmirror::copy::source_partition::archive_source::end_of(root, topic, partition)
                        .map_err(|e| e.to_string());
                parts.push(partition_json(rc, key, topic, partition, p, end));
                continue;
            }
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
            parts.push(partition_json(rc, key, topic, partition, p, end));
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

/// One partition of `checkpoints show --output json`, with its source's end (or why not).
fn partition_json(
    rc: &kmirror::checkpoint::RouteCheckpoint,
    key: &str,
    topic: &str,
    partition: i32,
    p: &kmirror::checkpoint::PartitionCheckpoint,
    end: std::result::Result<i64, String>,
) -> serde_json::Value {
    serde_json::json!({
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
    })
}

pub(crate) fn show_checkpoints(path: &Path) -> Result<i32> {
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
    // An archive's id is recorded where a cluster's is: say which one it is.
    let kind = |cluster: Option<&str>| match cluster {
        Some(c) if cfg.archives.contains_key(c) => "archive",
        _ => "cluster",
    };
    for (route, rc) in &cp.routes {
        let mut parts = Vec::new();
        if let Some(id) = &rc.source_cluster_id {
            let k = kind(Some(rc.source_cluster.as_str()));
            parts.push(format!("source {k} id {id}"));
        }
        if let Some(id) = &rc.target_cluster_id {
            let target = cfg
                .routes
                .iter()
                .find(|r| r.name == *route)
                .map(|r| r.target.as_str());
            parts.push(format!("target {} id {id}", kind(target)));
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

pub(crate) fn reset_checkpoints(
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
    // Replicas hold partitions by epoch, not the job: a reset could neither fence them nor
    // write over their records.
    if execute && cfg.group.is_some() {
        return Err(Usage(format!(
            "checkpoints reset --execute is refused with [group] ({}): stop every replica, remove [group] from the routing file (keep store = \"kafka\"), reset, then put it back",
            path.display()
        ))
        .into());
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
pub(crate) fn forget_verified(
    cfg: &kmirror::config::Config,
    reset: &[(String, String)],
) -> Result<()> {
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
