//! `FileStore`: one JSON file per routing job, written atomically (temporary file, fsync,
//! rename, fsync of the directory) and sealed with a checksum, so a torn or edited file is
//! refused rather than taken for "start from scratch".

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Checkpoint, CheckpointError, CheckpointStore};

const FORMAT: &str = "kmirror-checkpoint/1";

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    checksum: String,
    checkpoint: Checkpoint,
}

pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn checksum(cp: &Checkpoint) -> String {
    checksum_of(cp)
}

/// The seal of a checkpoint (or of a record of the kafka store).
pub(super) fn checksum_of<T: Serialize>(value: &T) -> String {
    // Structs and BTreeMaps serialize deterministically, so the compact form is canonical.
    let body = serde_json::to_vec(value).expect("checkpoint serializes");
    format!("fnv1a64:{:016x}", fnv1a64(&body))
}

/// A JSON file per routing job.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, detail: impl Into<String>) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.display().to_string(),
            detail: detail.into(),
        }
    }
}

impl CheckpointStore for FileStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.display().to_string(),
                    source,
                })
            }
        };
        if bytes.is_empty() {
            return Err(self.corrupt("the file is empty (truncated?)"));
        }
        let env: Envelope = serde_json::from_slice(&bytes).map_err(|e| {
            if e.is_eof() {
                self.corrupt(format!(
                    "it ends early at line {} column {} (truncated?)",
                    e.line(),
                    e.column()
                ))
            } else {
                self.corrupt(format!("not a kmirror checkpoint: {e}"))
            }
        })?;
        if env.format != FORMAT {
            return Err(self.corrupt(format!("format \"{}\" is not \"{FORMAT}\"", env.format)));
        }
        let actual = checksum(&env.checkpoint);
        if actual != env.checksum {
            return Err(self.corrupt(format!(
                "checksum {} does not match its contents ({actual}): edited or damaged",
                env.checksum
            )));
        }
        Ok(Some(env.checkpoint))
    }

    fn save(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let werr = |source| CheckpointError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(werr)?;
        let env = Envelope {
            format: FORMAT.to_string(),
            checksum: checksum(cp),
            checkpoint: cp.clone(),
        };
        let mut text = serde_json::to_vec_pretty(&env).expect("checkpoint serializes");
        text.push(b'\n');
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let mut f = File::create(&tmp).map_err(werr)?;
        f.write_all(&text).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(werr)?;
        // The rename is durable only once the directory entry is.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{partition_key, PartitionCheckpoint, RouteCheckpoint};

    fn sample() -> Checkpoint {
        let mut cp = Checkpoint::new("job1");
        let mut rc = RouteCheckpoint {
            source_cluster: "a".into(),
            ..Default::default()
        };
        rc.partitions.insert(
            partition_key("orders", 3),
            PartitionCheckpoint {
                next_offset: 42,
                first_offset: 0,
                target_cluster: "b".into(),
                target_topic: "orders".into(),
                target: [(3, [0, 41])].into_iter().collect(),
                target_start: [(3, 0)].into_iter().collect(),
                end: None,
                updated_at: "now".into(),
            },
        );
        cp.routes.insert("r".into(), rc);
        cp
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("j.checkpoint.json"));
        assert!(store.load().unwrap().is_none());
        store.save(&sample()).unwrap();
        assert_eq!(store.load().unwrap().unwrap(), sample());

        let text = fs::read_to_string(store.path()).unwrap();
        fs::write(store.path(), &text[..text.len() / 2]).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");

        fs::write(
            store.path(),
            text.replace("\"next_offset\": 42", "\"next_offset\": 43"),
        )
        .unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");

        fs::write(store.path(), "").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("empty"));
    }
}
