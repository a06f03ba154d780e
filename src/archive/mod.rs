//! The archive: records kept in files, out of retention's reach, in a format that holds
//! everything a record has and can be restored byte for byte. Owns the on-disk layout
//! (format version 1, described in README "Archive format"), the segment encoding
//! (`segment.rs`) and the manifests that commit segments (`manifest.rs`).
//!
//! ```text
//! <root>/FORMAT                                   "kmirror-archive 1\nid <archive id>"
//! <root>/<topic>/topic.json                       the source topic's partition count
//! <root>/<topic>/<partition>/<first offset>.seg.zst   records, one zstd stream
//! <root>/<topic>/<partition>/<first offset>.json      its manifest: the commit point
//! ```
//!
//! A segment exists for a reader only once its manifest does. The writer writes the
//! segment under a temporary name, fsyncs it, renames it (S3: uploads it), then writes the
//! manifest the same way; a crash at any point leaves at most an uncommitted segment file,
//! which the next writer of the partition removes. So no segment ever claims records it
//! does not hold. The root is a directory or an `s3://` bucket and prefix (`storage.rs`).

pub mod manifest;
pub mod segment;
pub mod storage;

pub use storage::Root;

pub use manifest::Manifest;
pub use segment::{
    ArchivedRecord, PartitionReader, PartitionWriter, RecordRef, SegmentLimits, TsType,
};

/// The first line of `<root>/FORMAT`.
pub const FORMAT_LINE: &str = "kmirror-archive 1";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("archive {path} is corrupt: {detail}; refusing to read past it. Restore the file from a copy, or move the partition's directory away deliberately")]
    Corrupt { path: String, detail: String },
    #[error("{path} is not a kmirror archive of a version this build reads ({detail})")]
    NotAnArchive { path: String, detail: String },
}

impl ArchiveError {
    pub(crate) fn io(
        path: &std::path::Path,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let path = path.display().to_string();
        move |source| ArchiveError::Io { path, op, source }
    }
}

/// Makes `root` an archive (writes `FORMAT` with a new id), or checks that it is one.
/// Returns the archive's id.
pub fn init(root: &Root) -> Result<String, ArchiveError> {
    if let Some(id) = id(root)? {
        return Ok(id);
    }
    write_format(root, &new_id(root))
}

/// The archive's id: written once, when the archive is created, so a checkpoint can tell
/// this archive from another directory behind the same cluster name (`checkpoint::identity`).
/// An archive written before ids existed gets one now (its `FORMAT` rewritten atomically,
/// still version 1). `None`: `root` is no archive (it has no `FORMAT` file).
pub fn id(root: &Root) -> Result<Option<String>, ArchiveError> {
    let Some(text) = read_format(root)? else {
        return Ok(None);
    };
    let found = text
        .lines()
        .skip(1)
        .find_map(|l| l.strip_prefix("id "))
        .map(str::trim)
        .filter(|id| !id.is_empty());
    match found {
        Some(id) => Ok(Some(id.to_string())),
        None => {
            let id = write_format(root, &new_id(root))?;
            tracing::info!(archive = %root.display(), id = %id, "the archive had no id (written by an earlier kmirror); gave it one");
            Ok(Some(id))
        }
    }
}

fn write_format(root: &Root, id: &str) -> Result<String, ArchiveError> {
    root.write_atomically("FORMAT", format!("{FORMAT_LINE}\nid {id}\n").as_bytes())?;
    Ok(id.to_string())
}

/// 128 random bits as hex, from the OS; where it has no `/dev/urandom`, a hash of the
/// time, process and path (ids need to differ between archives, not to be secret).
fn new_id(root: &Root) -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        let seed = format!(
            "{:?} {} {}",
            std::time::SystemTime::now(),
            std::process::id(),
            root.display()
        );
        b = xxhash_rust::xxh3::xxh3_128(seed.as_bytes()).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `root` is an archive this build reads (false: it has no `FORMAT` file).
fn check_format(root: &Root) -> Result<bool, ArchiveError> {
    Ok(read_format(root)?.is_some())
}

/// `FORMAT`'s text, if `root` is an archive this build reads (`None`: it has no `FORMAT`).
fn read_format(root: &Root) -> Result<Option<String>, ArchiveError> {
    let Some(bytes) = root.read("FORMAT")? else {
        return Ok(None);
    };
    let t = String::from_utf8_lossy(&bytes).into_owned();
    if t.lines().next() == Some(FORMAT_LINE) {
        return Ok(Some(t));
    }
    Err(ArchiveError::NotAnArchive {
        path: root.to_string(),
        detail: format!(
            "FORMAT says {:?}, this build reads {FORMAT_LINE:?}",
            t.lines().next().unwrap_or("")
        ),
    })
}

/// The format of `<root>/<topic>/topic.json`.
pub const TOPIC_FORMAT: &str = "kmirror-archive-topic/1";

/// Records that the dumped topic has (at least) `partitions` partitions, so a restore
/// creates its target topic with all of them, those that held no record included (they
/// have no directory). Only ever raised: a topic's partitions can be added, not removed.
pub fn record_partition_count(
    root: &Root,
    topic: &str,
    partitions: i32,
) -> Result<(), ArchiveError> {
    if partition_count(root, topic)?.is_some_and(|n| n >= partitions) {
        return Ok(());
    }
    let text = serde_json::json!({
        "format": TOPIC_FORMAT,
        "topic": topic,
        "partitions": partitions,
    });
    let mut bytes = serde_json::to_vec_pretty(&text).expect("json serializes");
    bytes.push(b'\n');
    root.write_atomically(&format!("{topic}/topic.json"), &bytes)
}

/// The partition count recorded for `topic` (`None`: none recorded, e.g. an archive written
/// before counts were; then only its partition directories say what it holds).
pub fn partition_count(root: &Root, topic: &str) -> Result<Option<i32>, ArchiveError> {
    let f = format!("{topic}/topic.json");
    let Some(text) = root.read(&f)? else {
        return Ok(None);
    };
    let corrupt = |detail: String| ArchiveError::Corrupt {
        path: root.name_of(&f),
        detail,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    if v["format"] != TOPIC_FORMAT {
        return Err(corrupt(format!(
            "format {}, expected {TOPIC_FORMAT:?}",
            v["format"]
        )));
    }
    v["partitions"]
        .as_i64()
        .and_then(|n| i32::try_from(n).ok())
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| corrupt(format!("partitions {}", v["partitions"])))
}

/// Every topic with a recorded partition count, and the count.
pub fn partition_counts(root: &Root) -> Result<Vec<(String, i32)>, ArchiveError> {
    let mut out = Vec::new();
    for topic in root.list("")?.dirs {
        if let Some(n) = partition_count(root, &topic)? {
            out.push((topic, n));
        }
    }
    out.sort();
    Ok(out)
}

/// The directory of one partition, relative to the archive's root.
pub fn partition_dir(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Whether the archive holds anything of `topic`/`partition`.
pub fn has_partition(root: &Root, topic: &str, partition: i32) -> Result<bool, ArchiveError> {
    root.has_dir(&partition_dir(topic, partition))
}

/// Every (topic, partition) the archive holds a directory for, sorted.
pub fn partitions(root: &Root) -> Result<Vec<(String, i32)>, ArchiveError> {
    if !check_format(root)? {
        return Err(ArchiveError::NotAnArchive {
            path: root.to_string(),
            detail: "it has no FORMAT file".into(),
        });
    }
    let mut out = Vec::new();
    for topic in root.list("")?.dirs {
        for p in root.list(&topic)?.dirs {
            if let Ok(n) = p.parse::<i32>() {
                out.push((topic.clone(), n));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive written before ids existed (FORMAT with the version line only) is still
    /// read, and gets an id on first open that stays; a new archive's id is its own.
    #[test]
    fn an_archive_without_an_id_gets_one_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let old_dir = dir.path().join("old");
        std::fs::create_dir_all(&old_dir).unwrap();
        std::fs::write(old_dir.join("FORMAT"), format!("{FORMAT_LINE}\n")).unwrap();
        let old = Root::dir(&old_dir);
        assert_eq!(partitions(&old).unwrap(), vec![]);
        let first = id(&old).unwrap().expect("an id");
        assert_eq!(first.len(), 32);
        let text = std::fs::read_to_string(old_dir.join("FORMAT")).unwrap();
        assert_eq!(text, format!("{FORMAT_LINE}\nid {first}\n"));
        assert_eq!(id(&old).unwrap().as_deref(), Some(first.as_str()));
        assert_eq!(init(&old).unwrap(), first);

        let fresh = Root::dir(dir.path().join("fresh"));
        assert_eq!(id(&fresh).unwrap(), None);
        let other = init(&fresh).unwrap();
        assert_ne!(other, first);
        assert_eq!(id(&fresh).unwrap().as_deref(), Some(other.as_str()));
    }
}
