//! The archive: records kept in files, out of retention's reach, in a format that holds
//! everything a record has and can be restored byte for byte. Owns the on-disk layout
//! (format version 1, described in README "Archive format"), the segment encoding
//! (`segment.rs`) and the manifests that commit segments (`manifest.rs`).
//!
//! ```text
//! <root>/FORMAT                                   "kmirror-archive 1"
//! <root>/<topic>/<partition>/<first offset>.seg.zst   records, one zstd stream
//! <root>/<topic>/<partition>/<first offset>.json      its manifest: the commit point
//! ```
//!
//! A segment exists for a reader only once its manifest does. The writer writes the
//! segment under a temporary name, fsyncs it, renames it, then writes the manifest the same
//! way; a crash at any point leaves at most an uncommitted segment file, which the next
//! writer of the partition removes. So no segment ever claims records it does not hold.

pub mod manifest;
pub mod segment;

use std::path::{Path, PathBuf};

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
    pub(crate) fn io(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let path = path.display().to_string();
        move |source| ArchiveError::Io { path, op, source }
    }
}

/// Makes `root` an archive (writes `FORMAT`), or checks that it is one.
pub fn init(root: &Path) -> Result<(), ArchiveError> {
    if check_format(root)? {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(ArchiveError::io(root, "create directory"))?;
    manifest::write_atomically(&root.join("FORMAT"), format!("{FORMAT_LINE}\n").as_bytes())
}

/// Whether `root` is an archive this build reads (false: it has no `FORMAT` file).
fn check_format(root: &Path) -> Result<bool, ArchiveError> {
    let f = root.join("FORMAT");
    match std::fs::read_to_string(&f) {
        Ok(t) if t.lines().next() == Some(FORMAT_LINE) => Ok(true),
        Ok(t) => Err(ArchiveError::NotAnArchive {
            path: root.display().to_string(),
            detail: format!(
                "FORMAT says {:?}, this build reads {FORMAT_LINE:?}",
                t.lines().next().unwrap_or("")
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ArchiveError::io(&f, "read")(e)),
    }
}

/// The directory of one partition.
pub fn partition_dir(root: &Path, topic: &str, partition: i32) -> PathBuf {
    root.join(topic).join(partition.to_string())
}

/// Every (topic, partition) the archive holds a directory for, sorted.
pub fn partitions(root: &Path) -> Result<Vec<(String, i32)>, ArchiveError> {
    if !check_format(root)? {
        return Err(ArchiveError::NotAnArchive {
            path: root.display().to_string(),
            detail: "it has no FORMAT file".into(),
        });
    }
    let mut out = Vec::new();
    for t in std::fs::read_dir(root).map_err(ArchiveError::io(root, "list"))? {
        let t = t.map_err(ArchiveError::io(root, "list"))?;
        if !t.file_type().is_ok_and(|f| f.is_dir()) {
            continue;
        }
        let topic = t.file_name().to_string_lossy().to_string();
        for p in std::fs::read_dir(t.path()).map_err(ArchiveError::io(&t.path(), "list"))? {
            let p = p.map_err(ArchiveError::io(&t.path(), "list"))?;
            if let Ok(n) = p.file_name().to_string_lossy().parse::<i32>() {
                out.push((topic.clone(), n));
            }
        }
    }
    out.sort();
    Ok(out)
}
