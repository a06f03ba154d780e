//! Verify with an archive as the source side (a restore: archive -> cluster). The source
//! range is read from the archive's committed segments (each checked against its manifest)
//! instead of a consumer; each record is then digested, filtered and validated exactly as a
//! consumed one (`Src` reads like a consumed message), so the verdicts are the
//! cluster-to-cluster ones. The target side is read as always.

use std::path::Path;
use std::sync::Arc;

use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, Timestamp};

use super::blocks::Task;
use super::read::Reader;
use super::Bound;
use crate::archive::PartitionReader;
use crate::cluster::ClusterError;
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
    let topic: Arc<str> = Arc::from(task.topic.as_str());
    for rec in r.records(from) {
        let rec = rec.map_err(|e| archive_error(task, e))?;
        if rec.offset >= to {
            break;
        }
        let m = ArchiveMessage::new(topic.clone(), task.partition, rec);
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
