//! Verify with an archive on one side: the source of a restore (archive -> cluster) or the
//! target of a dump (cluster -> archive). The archive's side is read from its committed
//! segments (each checked against its manifest) instead of a consumer; each record is then
//! digested, filtered, validated or attributed exactly as a consumed one (`Src` reads like a
//! consumed message), so the verdicts are the cluster-to-cluster ones. A dump's archive
//! keeps each record at its source offset with its provenance header, so its "target
//! offsets" are source offsets and attribution is by provenance as on a cluster.

use std::path::Path;
use std::sync::Arc;

use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, Timestamp};

use super::blocks::Task;
use super::read::Reader;
use super::Bound;
use crate::archive::PartitionReader;
use crate::cluster::ClusterError;
use crate::config::ClusterConfig;
use crate::copy::source_partition::archive_source::{self, ArchiveMessage};

/// A source record: consumed from a cluster, or read from an archive.
pub(super) enum Src<'m, 'c> {
    Kafka(&'m BorrowedMessage<'c>),
    Archive(&'m ArchiveMessage),
}

impl Message for Src<'_, '_> {
    type Headers = BorrowedHeaders;

    fn key(&self) -> Option<&[u8]> {
        match self {
            Src::Kafka(m) => m.key(),
            Src::Archive(m) => m.key(),
        }
    }

    fn payload(&self) -> Option<&[u8]> {
        match self {
            Src::Kafka(m) => m.payload(),
            Src::Archive(m) => m.payload(),
        }
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        None // read only: verify never changes a record
    }

    fn topic(&self) -> &str {
        match self {
            Src::Kafka(m) => m.topic(),
            Src::Archive(m) => m.topic(),
        }
    }

    fn partition(&self) -> i32 {
        match self {
            Src::Kafka(m) => m.partition(),
            Src::Archive(m) => m.partition(),
        }
    }

    fn offset(&self) -> i64 {
        match self {
            Src::Kafka(m) => m.offset(),
            Src::Archive(m) => m.offset(),
        }
    }

    fn timestamp(&self) -> Timestamp {
        match self {
            Src::Kafka(m) => m.timestamp(),
            Src::Archive(m) => m.timestamp(),
        }
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        match self {
            Src::Kafka(m) => m.headers(),
            Src::Archive(m) => m.headers(),
        }
    }
}

fn archive_error(task: &Task<'_>, source: crate::archive::ArchiveError) -> ClusterError {
    ClusterError::Archive {
        cluster: task.src.name.clone(),
        source,
    }
}

/// Reads `[from, to)` of the task's source partition: from its archive when the source is
/// one, from the cluster otherwise.
pub(super) fn scan_source(
    reader: &mut Reader,
    task: &Task<'_>,
    from: i64,
    to: i64,
    mut f: impl FnMut(&Src<'_, '_>),
) -> Result<(), ClusterError> {
    let Some(root) = task.src_archive else {
        return reader.scan(task.src, &task.topic, task.partition, from, to, |m| {
            f(&Src::Kafka(m))
        });
    };
    if from >= to {
        return Ok(());
    }
    let r = PartitionReader::open(root, &task.topic, task.partition)
        .map_err(|e| archive_error(task, e))?;
    scan_archive(&r, &task.src.name, &task.topic, task.partition, from, to, f)
}

/// Reads `[from, to)` of a target partition: from its archive when the target is one (a
/// dump), from the cluster otherwise. An archived partition without a directory holds
/// nothing (every record the checkpoint says was written there is then missing).
#[allow(clippy::too_many_arguments)]
pub(super) fn scan_target(
    reader: &mut Reader,
    cluster: &ClusterConfig,
    archive: Option<&Path>,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut f: impl FnMut(&Src<'_, '_>),
) -> Result<(), ClusterError> {
    let Some(root) = archive else {
        return reader.scan(cluster, topic, partition, from, to, |m| f(&Src::Kafka(m)));
    };
    if from >= to || !crate::archive::partition_dir(root, topic, partition).is_dir() {
        return Ok(());
    }
    let err = |source| ClusterError::Archive {
        cluster: cluster.name.clone(),
        source,
    };
    let r = PartitionReader::open(root, topic, partition).map_err(err)?;
    scan_archive(&r, &cluster.name, topic, partition, from, to, f)
}

/// The archived records at offsets `[from, to)`, each as a `Src`.
fn scan_archive(
    r: &PartitionReader,
    cluster: &str,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut f: impl FnMut(&Src<'_, '_>),
) -> Result<(), ClusterError> {
    let name: Arc<str> = Arc::from(topic);
    for rec in r.records(from) {
        let rec = rec.map_err(|source| ClusterError::Archive {
            cluster: cluster.to_string(),
            source,
        })?;
        if rec.offset >= to {
            break;
        }
        let m = ArchiveMessage::new(name.clone(), partition, rec);
        f(&Src::Archive(&m));
    }
    Ok(())
}

/// The offset `bound` names on an archived partition, within `[lo, hi)` (see `resolve`).
pub(super) fn resolve(
    root: &Path,
    cluster: &str,
    topic: &str,
    partition: i32,
    bound: Bound,
    marks: (i64, i64),
    (lo, hi): (i64, i64),
) -> Result<i64, ClusterError> {
    match bound {
        Bound::Offset(o) => Ok(o),
        Bound::Timestamp(_) if lo >= hi => Ok(lo),
        Bound::Timestamp(ts) => archive_source::offset_for_time(root, topic, partition, ts, marks)
            .map(|o| o.clamp(lo, hi))
            .map_err(|source| ClusterError::Archive {
                cluster: cluster.to_string(),
                source,
            }),
    }
}
