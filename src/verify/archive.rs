//! Verify with an archive on one side: the source of a restore (archive -> cluster) or the
//! target of a dump (cluster -> archive). The archive's side is read from its committed
//! segments (each checked against its manifest) instead of a consumer; each record is then
//! digested, filtered, validated or attributed exactly as a consumed one (an archived record
//! is offered as the same `Record` view), so the verdicts are the cluster-to-cluster ones. A
//! dump's archive keeps each record at its source offset with its provenance header, so its
//! "target offsets" are source offsets and attribution is by provenance as on a cluster.

use rdkafka::message::Timestamp;

use super::read::Reader;
use super::record::{Headers, Record};
use super::Bound;
use crate::archive::{ArchivedRecord, PartitionReader, Root, TsType};
use crate::cluster::ClusterError;
use crate::config::ClusterConfig;
use crate::copy::record::RawHeader;
use crate::copy::source_partition::archive_source;

/// An archived record as verify reads a consumed one: borrowed, its headers as they were
/// archived (name and value bytes, in order, null kept null).
fn with_record(partition: i32, rec: &ArchivedRecord, f: &mut impl FnMut(&Record<'_>)) {
    let headers: Vec<RawHeader<'_>> = rec
        .headers
        .iter()
        .map(|(name, value)| RawHeader {
            name,
            value: value.as_deref(),
        })
        .collect();
    f(&Record {
        partition,
        offset: rec.offset,
        key: rec.key.as_deref(),
        payload: rec.value.as_deref(),
        timestamp: match rec.ts_type {
            TsType::None => Timestamp::NotAvailable,
            TsType::Create => Timestamp::CreateTime(rec.timestamp),
            TsType::LogAppend => Timestamp::LogAppendTime(rec.timestamp),
        },
        headers: Headers::Slice(&headers),
    });
}

/// Reads `[from, to)` of the source partition `topic`/`partition` of `src`: from its
/// archive when the source is one (`archive`), from the cluster otherwise.
#[allow(clippy::too_many_arguments)]
pub(super) fn scan_source(
    reader: &mut Reader,
    src: &ClusterConfig,
    archive: Option<&Root>,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut f: impl FnMut(&Record<'_>),
) -> Result<(), ClusterError> {
    let Some(root) = archive else {
        return reader.scan(src, topic, partition, from, to, f);
    };
    if from >= to {
        return Ok(());
    }
    let r =
        PartitionReader::open(root, topic, partition).map_err(|source| ClusterError::Archive {
            cluster: src.name.clone(),
            source,
        })?;
    scan_archive(&r, &src.name, partition, from, to, &mut f)
}

/// Reads `[from, to)` of a target partition: from its archive when the target is one (a
/// dump), from the cluster otherwise. An archived partition without a directory holds
/// nothing (every record the checkpoint says was written there is then missing).
#[allow(clippy::too_many_arguments)]
pub(super) fn scan_target(
    reader: &mut Reader,
    cluster: &ClusterConfig,
    archive: Option<&Root>,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut f: impl FnMut(&Record<'_>),
) -> Result<(), ClusterError> {
    let Some(root) = archive else {
        return reader.scan(cluster, topic, partition, from, to, f);
    };
    let archive_err = |source| ClusterError::Archive {
        cluster: cluster.name.clone(),
        source,
    };
    if from >= to || !crate::archive::has_partition(root, topic, partition).map_err(archive_err)? {
        return Ok(());
    }
    let r =
        PartitionReader::open(root, topic, partition).map_err(|source| ClusterError::Archive {
            cluster: cluster.name.clone(),
            source,
        })?;
    scan_archive(&r, &cluster.name, partition, from, to, &mut f)
}

/// The archived records at offsets `[from, to)`, each as a `Record`.
fn scan_archive(
    r: &PartitionReader,
    cluster: &str,
    partition: i32,
    from: i64,
    to: i64,
    f: &mut impl FnMut(&Record<'_>),
) -> Result<(), ClusterError> {
    for rec in r.records(from) {
        let rec = rec.map_err(|source| ClusterError::Archive {
            cluster: cluster.to_string(),
            source,
        })?;
        if rec.offset >= to {
            break;
        }
        with_record(partition, &rec, f);
    }
    Ok(())
}

/// The offset `bound` names on an archived partition, within `[lo, hi)` (see `resolve`).
pub(super) fn resolve(
    root: &Root,
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
