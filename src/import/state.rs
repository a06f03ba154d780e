//! Where an import stands: per route, the byte position in its dump up to which every line
//! is accounted for (produced and acknowledged, filtered, or rejected), with the counts at
//! that position. A JSON file beside the checkpoint (`<job>.import.<route>.json`), written
//! like the checkpoint (temporary file, fsync, rename), so a `kill -9` resumes at the last
//! saved line and the lines after it are read again (at least once, as the copy path).
//!
//! It also pins the dump: a hash of its bytes before the position. A different file at the
//! same path is refused, never resumed somewhere in its middle.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointError;

const FORMAT: &str = "kmirror-import/1";

/// How much of the dump, at most, the fingerprint covers.
const FINGERPRINT_BYTES: u64 = 1 << 20;

/// Every line read is one of these (blank lines are not records).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Non-blank lines read: produced + filtered + rejected.
    pub read: u64,
    pub produced: u64,
    /// Lines the route does not select (its filter, or another topic than its topics).
    pub filtered: u64,
    /// Lines not produced: not a record, or failing the route's filter or validation.
    pub rejected: u64,
    /// Of the rejected, written to the dead-letter topic.
    pub dead_lettered: u64,
    pub blank: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportState {
    pub format: String,
    pub job: String,
    pub route: String,
    pub file: String,
    /// Byte offset of the first line not yet accounted for.
    pub position: u64,
    /// Lines before `position`.
    pub line: u64,
    pub counts: Counts,
    /// Length of the rejects file at `position`: lines rejected after it are written again
    /// on resume, so the file is cut back to this first.
    #[serde(default)]
    pub rejects_len: u64,
    /// XXH3-64 of the dump's first min(position, 1 MiB) bytes.
    pub fingerprint: u64,
    /// The import reached the end of the file with every line accounted for.
    pub done: bool,
    pub updated_at: String,
}

impl ImportState {
    pub fn new(job: &str, route: &str, file: &Path) -> Self {
        ImportState {
            format: FORMAT.into(),
            job: job.into(),
            route: route.into(),
            file: file.display().to_string(),
            position: 0,
            line: 0,
            counts: Counts::default(),
            rejects_len: 0,
            fingerprint: fingerprint_of(&mut std::io::empty(), 0).unwrap_or(0),
            done: false,
            updated_at: String::new(),
        }
    }

    pub fn path_for(checkpoint_dir: &Path, job: &str, route: &str) -> PathBuf {
        checkpoint_dir.join(format!("{job}.import.{route}.json"))
    }

    /// The state at `path`, or `None` when there is none. A file that cannot be read, is
    /// corrupt, or belongs to another job or route is an error.
    pub fn load(
        path: &Path,
        job: &str,
        route: &str,
    ) -> Result<Option<ImportState>, CheckpointError> {
        let corrupt = |detail: String| CheckpointError::Corrupt {
            path: path.display().to_string(),
            detail,
        };
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let st: ImportState =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("import state: {e}")))?;
        if st.format != FORMAT {
            return Err(corrupt(format!(
                "import state in format {:?}, expected {FORMAT:?}",
                st.format
            )));
        }
        if st.job != job || st.route != route {
            return Err(CheckpointError::WrongJob {
                path: path.display().to_string(),
                found: format!("{} (route {})", st.job, st.route),
                expected: format!("{job} (route {route})"),
            });
        }
        Ok(Some(st))
    }

    /// Durably replaces the file at `path` with this state.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let mut text = serde_json::to_vec_pretty(self).expect("import state serializes");
        text.push(b'\n');
        crate::durable::write_atomically(path, &text).map_err(|source| CheckpointError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

/// XXH3-64 of the first min(`upto`, 1 MiB) bytes of `r` (read from its start).
pub fn fingerprint_of<R: Read>(r: &mut R, upto: u64) -> std::io::Result<u64> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut left = upto.min(FINGERPRINT_BYTES);
    let mut buf = [0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.digest())
}

/// The fingerprint of the file at `path` up to `upto`; the file is left at its start.
pub fn fingerprint_file(f: &mut File, upto: u64) -> std::io::Result<u64> {
    f.seek(SeekFrom::Start(0))?;
    let h = fingerprint_of(f, upto)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(h)
}
