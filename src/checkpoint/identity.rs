//! What a checkpoint's offsets refer to. An offset means something only on the log it was
//! read from: the same cluster name pointed at another bootstrap, or a topic deleted and
//! recreated under the same name, must be refused, never resumed (that would skip or
//! re-copy records). So each route's checkpoint records the cluster id of its source and
//! target (`rd_kafka_clusterid`, from Metadata) and the topic id of each source topic (the
//! Metadata v10+ topic UUID, through librdkafka's DescribeTopics), and a run compares them
//! with what the clusters say now.
//!
//! An archive (`[clusters.NAME] archive = "dir"`) has no cluster id; its id is the one
//! written in its `FORMAT` file when it was created (`archive::id`), recorded and compared
//! in the same place, so pointing the name at another directory is refused too.
//!
//! Where a broker gives no id (old brokers; a topic id of all zeros), nothing is compared
//! for it; a recreated topic is then caught only when the checkpoint lies beyond the new
//! log's end (`plan`). Checkpoints written before ids were recorded are accepted and
//! filled in.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka_sys as rdsys;

use super::{Checkpoint, CheckpointError, CheckpointStore};
use crate::cluster::{self, ClusterError};
use crate::config::Config;
use crate::plan::Plan;

/// Ids the clusters report now. `None` where a broker gives none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    /// Cluster name -> cluster id.
    pub clusters: BTreeMap<String, Option<String>>,
    /// (source cluster name, topic) -> topic id.
    pub topics: BTreeMap<(String, String), Option<String>>,
    /// Archive cluster name -> archive id (`None`: no archive in its directory yet).
    pub archives: BTreeMap<String, Option<String>>,
}

impl Ids {
    /// The cluster id of a Kafka cluster, or the archive id of an archive.
    pub fn cluster(&self, name: &str) -> Option<&str> {
        match self.clusters.get(name) {
            Some(id) => id.as_deref(),
            None => self.archives.get(name)?.as_deref(),
        }
    }

    pub fn topic(&self, cluster: &str, topic: &str) -> Option<&str> {
        self.topics
            .get(&(cluster.to_string(), topic.to_string()))?
            .as_deref()
    }
}

/// Asks every cluster the plan reads from or writes to for its id, and every source
/// cluster for the ids of the plan's topics.
pub fn lookup(config: &Config, plan: &Plan) -> Result<Ids, ClusterError> {
    let started = std::time::Instant::now();
    let timeout = config.run.connect_timeout;
    let mut ids = Ids::default();
    let mut topics: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // A topic the plan uses on each cluster, to ask for metadata about.
    let mut probe: BTreeMap<&str, &str> = BTreeMap::new();
    for t in &plan.tasks {
        for name in [&t.source_cluster, &t.target_cluster] {
            if let Some(dir) = config.archives.get(name) {
                if !ids.archives.contains_key(name) {
                    match crate::archive::id(dir) {
                        Ok(id) => {
                            ids.archives.insert(name.clone(), id);
                        }
                        // An archive restored from read-only storage, written before ids
                        // existed, cannot be given one: restore it, comparing nothing (as
                        // for a broker that gives no cluster id).
                        Err(e @ crate::archive::ArchiveError::Io { .. })
                            if *name != t.target_cluster =>
                        {
                            tracing::warn!(archive = %name, "{e}: the archive has no id and cannot be given one, so a checkpoint cannot tell it from another archive behind the same name");
                        }
                        Err(source) => {
                            return Err(ClusterError::Archive {
                                cluster: name.clone(),
                                source,
                            })
                        }
                    }
                }
            }
        }
        // An archive (a restore's source) has no topic ids: its offsets are its manifests'.
        if config.archives.contains_key(&t.source_cluster) {
            continue;
        }
        ids.clusters.entry(t.source_cluster.clone()).or_default();
        probe.insert(&t.source_cluster, &t.topic);
        // An archive has no cluster id to look up.
        if !config.archives.contains_key(&t.target_cluster) {
            ids.clusters.entry(t.target_cluster.clone()).or_default();
            probe.entry(&t.target_cluster).or_insert(&t.target_topic);
        }
        let list = topics.entry(t.source_cluster.as_str()).or_default();
        if !list.contains(&t.topic) {
            list.push(t.topic.clone());
        }
    }
    // Each cluster on a thread of its own: every lookup waits on the network (a connection,
    // metadata, the cluster id, DescribeTopics), and a run's start waits for all of them.
    let looked_up: Vec<LookedUp> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .clusters
            .keys()
            .map(|name| {
                let (probe, list) = (probe.get(name.as_str()).copied(), topics.get(name.as_str()));
                s.spawn(move || lookup_cluster(config, name, probe, list, timeout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an id lookup thread panicked"))
            .collect::<Result<_, _>>()
    })?;
    for (name, id, found) in looked_up {
        ids.clusters.insert(name.clone(), id);
        for (t, topic_id) in found {
            ids.topics.insert((name.clone(), t), topic_id);
        }
    }
    tracing::debug!(
        "cluster and topic ids looked up in {:.0}ms: {ids:?}",
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(ids)
}

/// One cluster's ids: (cluster, its id, each listed topic's id).
type LookedUp = (String, Option<String>, Vec<(String, Option<String>)>);

fn lookup_cluster(
    config: &Config,
    name: &str,
    probe: Option<&str>,
    list: Option<&Vec<String>>,
    timeout: std::time::Duration,
) -> Result<LookedUp, ClusterError> {
    let consumer = cluster::consumer(&config.clusters[name], &[])?;
    // Fills librdkafka's metadata cache first, so the cluster and controller ids below
    // answer from it instead of waiting for the client's own first refresh.
    let md = consumer.fetch_metadata(probe, timeout).ok();
    let id = consumer.client().fetch_cluster_id(timeout);
    let mut topic_ids = Vec::new();
    if let Some(list) = list {
        let found = if md.is_some_and(|md| has_controller(&consumer, &md, timeout)) {
            describe_topic_ids(consumer.client().native_ptr(), list, timeout)
        } else {
            BTreeMap::new()
        };
        if found.is_empty() {
            tracing::debug!(
                cluster = %name,
                "no topic ids from DescribeTopics; a recreated topic is caught only by a checkpoint beyond its end"
            );
        }
        for t in list {
            topic_ids.push((t.clone(), found.get(t).cloned()));
        }
    }
    cluster::drop_in_background(consumer);
    Ok((name.to_string(), id, topic_ids))
}

/// Creates the archives the plan dumps into that do not exist yet, and records their new
/// ids, so the first checkpoint of a dump already names its archive. Called after `check`:
/// a checkpoint made on another archive is refused before anything is created.
pub fn create_target_archives(
    config: &Config,
    plan: &Plan,
    ids: &mut Ids,
) -> Result<(), ClusterError> {
    for t in &plan.tasks {
        let Some(dir) = config.archives.get(&t.target_cluster) else {
            continue;
        };
        if ids
            .archives
            .get(&t.target_cluster)
            .is_some_and(Option::is_some)
        {
            continue;
        }
        let id = crate::archive::init(dir).map_err(|source| ClusterError::Archive {
            cluster: t.target_cluster.clone(),
            source,
        })?;
        ids.archives.insert(t.target_cluster.clone(), Some(id));
    }
    Ok(())
}

/// DescribeTopics goes to the controller and waits until it is reachable; a cluster whose
/// metadata names no live controller (librdkafka's mock cluster answers ControllerId 0,
/// which is none of its brokers) would hold every run for the whole timeout.
fn has_controller<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    md: &rdkafka::metadata::Metadata,
    timeout: Duration,
) -> bool {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: a live client handle; the call only reads cached metadata (waiting for it).
    let controller = unsafe { rdsys::rd_kafka_controllerid(consumer.client().native_ptr(), ms) };
    md.brokers().iter().any(|b| b.id() == controller)
}

/// Topic name -> topic id (base64, as Kafka tools print it) for the topics that have one.
/// Empty when the request fails or times out: ids are then simply not compared.
fn describe_topic_ids(
    rk: *mut rdsys::rd_kafka_t,
    topics: &[String],
    timeout: Duration,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let names: Vec<CString> = topics
        .iter()
        .filter_map(|t| CString::new(t.as_str()).ok())
        .collect();
    let mut ptrs: Vec<*const c_char> = names.iter().map(|c| c.as_ptr()).collect();
    // SAFETY: every pointer passed is live for the call that takes it (`names` outlives the
    // collection, which librdkafka copies); every object created here is destroyed here,
    // results are read before their event is destroyed, and `rk` is a live client handle.
    unsafe {
        let coll = rdsys::rd_kafka_TopicCollection_of_topic_names(ptrs.as_mut_ptr(), ptrs.len());
        let opts = rdsys::rd_kafka_AdminOptions_new(
            rk,
            rdsys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        let queue = rdsys::rd_kafka_queue_new(rk);
        rdsys::rd_kafka_DescribeTopics(rk, coll, opts, queue);
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let ev = rdsys::rd_kafka_queue_poll(queue, ms);
        if !ev.is_null() {
            let res = rdsys::rd_kafka_event_DescribeTopics_result(ev);
            if rdsys::rd_kafka_event_error(ev)
                == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                && !res.is_null()
            {
                let mut n = 0usize;
                let arr = rdsys::rd_kafka_DescribeTopics_result_topics(res, &mut n);
                for i in 0..n {
                    let d = *arr.add(i);
                    let err = rdsys::rd_kafka_TopicDescription_error(d);
                    if !err.is_null()
                        && rdsys::rd_kafka_error_code(err)
                            != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    {
                        continue;
                    }
                    let id = rdsys::rd_kafka_TopicDescription_topic_id(d);
                    if id.is_null()
                        || (rdsys::rd_kafka_Uuid_most_significant_bits(id) == 0
                            && rdsys::rd_kafka_Uuid_least_significant_bits(id) == 0)
                    {
                        continue;
                    }
                    let name = CStr::from_ptr(rdsys::rd_kafka_TopicDescription_name(d));
                    let b64 = CStr::from_ptr(rdsys::rd_kafka_Uuid_base64str(id));
                    out.insert(
                        name.to_string_lossy().into_owned(),
                        b64.to_string_lossy().into_owned(),
                    );
                }
            }
            rdsys::rd_kafka_event_destroy(ev);
        }
        rdsys::rd_kafka_queue_destroy(queue);
        rdsys::rd_kafka_AdminOptions_destroy(opts);
        rdsys::rd_kafka_TopicCollection_destroy(coll);
    }
    out
}

/// Refuses a checkpoint whose routes were recorded on other clusters or other
/// incarnations of their topics than the ones the routing file reaches now.
pub fn check(
    cp: &Checkpoint,
    store: &dyn CheckpointStore,
    config: &Config,
    ids: &Ids,
) -> Result<(), CheckpointError> {
    let refuse = |route: &str, detail: String| CheckpointError::IdentityChanged {
        path: store.describe(),
        route: route.to_string(),
        detail,
        config: config.path.display().to_string(),
    };
    for route in &config.routes {
        let Some(rc) = cp.routes.get(&route.name) else {
            continue;
        };
        if rc.partitions.is_empty() {
            continue;
        }
        for (side, name, recorded) in [
            ("source", &route.source, &rc.source_cluster_id),
            ("target", &route.target, &rc.target_cluster_id),
        ] {
            if let (Some(dir), Some(old)) = (config.archives.get(name), recorded) {
                let dir = dir.display();
                match ids.archives.get(name) {
                    Some(Some(now)) if now != old => return Err(refuse(
                        &route.name,
                        format!("its {side} archive \"{name}\" ({dir}) has archive id {now}, but the checkpoint was made on archive id {old} (another archive behind the same name)"),
                    )),
                    Some(None) => return Err(refuse(
                        &route.name,
                        format!("its {side} archive \"{name}\" ({dir}) holds no archive, but the checkpoint was made on archive id {old} (the name points at another directory, or the archive was moved or deleted)"),
                    )),
                    _ => {}
                }
                continue;
            }
            if let (Some(old), Some(now)) = (recorded, ids.cluster(name)) {
                if old != now {
                    return Err(refuse(
                        &route.name,
                        format!("its {side} cluster \"{name}\" now has cluster id {now}, but the checkpoint was made on cluster id {old} (another cluster behind the same name)"),
                    ));
                }
            }
        }
        for (topic, old) in &rc.topic_ids {
            if let Some(now) = ids.topic(&route.source, topic) {
                if now != old {
                    return Err(refuse(
                        &route.name,
                        format!("topic \"{topic}\" on cluster \"{}\" now has topic id {now}, but the checkpoint was made for topic id {old} (deleted and recreated?)", route.source),
                    ));
                }
            }
        }
    }
    Ok(())
}
