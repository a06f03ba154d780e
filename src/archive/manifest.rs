//! A segment's manifest: which records its segment file holds (offset range, count), how to
//! check it (size and XXH3-64 of the compressed file), and where they came from. Written
//! after the segment, atomically: its presence is what commits the segment.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ArchiveError, Root};

pub const MANIFEST_FORMAT: &str = "kmirror-archive-segment/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub topic: String,
    pub partition: i32,
    /// The segment file's name, beside the manifest.
    pub segment: String,
    /// Offsets of the first and last record held.
    pub first_offset: i64,
    pub last_offset: i64,
    /// Where the partition continues after this segment (the source position past its last
    /// record: later than `last_offset + 1` when offsets were skipped, e.g. transaction
    /// markers). Resuming a dump starts here.
    pub next_offset: i64,
    pub records: u64,
    /// Bytes of the encoded records before compression.
    pub uncompressed_bytes: u64,
    pub compressed_bytes: u64,
    /// XXH3-64 of the segment file as written, hex.
    pub xxh3: String,
    /// Where the records came from, as the writer was told (e.g. `cluster/topic/partition`).
    #[serde(default)]
    pub source: String,
    pub created_at: String,
}

impl Manifest {
    /// The manifest `rel` of the archive `root`.
    pub fn load(root: &Root, rel: &str) -> Result<Manifest, ArchiveError> {
        let path = root.name_of(rel);
        let text = root.read(rel)?.ok_or_else(|| ArchiveError::Io {
            path: path.clone(),
            op: "read manifest",
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        Self::parse(&path, &text)
    }

    fn parse(path: &str, text: &[u8]) -> Result<Manifest, ArchiveError> {
        let m: Manifest = serde_json::from_slice(text).map_err(|e| ArchiveError::Corrupt {
            path: path.to_string(),
            detail: format!("manifest: {e}"),
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(ArchiveError::Corrupt {
                path: path.to_string(),
                detail: format!(
                    "manifest format {:?}, this build reads {MANIFEST_FORMAT:?}",
                    m.format
                ),
            });
        }
        if m.records == 0 || m.first_offset > m.last_offset || m.next_offset <= m.last_offset {
            return Err(ArchiveError::Corrupt {
                path: path.to_string(),
                detail: format!(
                    "manifest claims {} records in offsets [{}, {}] continuing at {}",
                    m.records, m.first_offset, m.last_offset, m.next_offset
                ),
            });
        }
        Ok(m)
    }

    /// Writes the manifest as `rel` of the archive `root`, atomically: this commits its
    /// segment.
    pub fn save(&self, root: &Root, rel: &str) -> Result<(), ArchiveError> {
        let mut text = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        text.push(b'\n');
        root.write_atomically(rel, &text)
    }
}

/// Fsyncs the directory holding `path`, so a rename in it is durable.
pub fn sync_dir(path: &Path) -> Result<(), ArchiveError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ArchiveError::io(dir, "fsync directory"))
}
