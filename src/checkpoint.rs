//! Checkpoints: the contiguous source position of every (route, source partition) copy task,
//! and the target offsets it wrote. Behind the `CheckpointStore` trait so a store kept in a
//! compacted topic can follow; the embedded default is `FileStore`.
//!
//! The file is human-readable JSON, one per routing job, written atomically (temporary file,
//! fsync, rename, fsync of the directory) and sealed with a checksum. A file that is
//! truncated, corrupted or belongs to another job is refused: never silently treated as
//! "start from scratch", which would re-copy (or skip) everything.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FORMAT: &str = "kmirror-checkpoint/1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: cannot write: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path} is corrupt ({detail}); refusing to guess where to resume. Inspect it, restore it from a copy, or move it away deliberately (the next run then starts at each route's `start`)")]
    Corrupt { path: String, detail: String },
    #[error("checkpoint {path} belongs to job \"{found}\", not \"{expected}\" (another routing file?); refusing to use it. Point [checkpoints] dir or job elsewhere, or move the file away")]
    WrongJob {
        path: String,
        found: String,
        expected: String,
    },
    #[error("checkpoint {path}: route \"{route}\" was recorded for source cluster \"{found}\" but the routing file now reads it from \"{expected}\"; offsets from one cluster are meaningless on another. Reset the route with `kmirror checkpoints reset --route {route}`")]
    WrongSource {
        path: String,
        route: String,
        found: String,
        expected: String,
    },
}

/// Progress of one (route, source partition) copy task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    /// Every source record below this offset is settled on the target (or accounted for).
    pub next_offset: i64,
    /// Where this job's copy of the partition began; `verify` checks `[first_offset, next_offset)`.
    pub first_offset: i64,
    pub target_cluster: String,
    pub target_topic: String,
    /// Target partition -> [first, last] offset written and acknowledged.
    #[serde(default)]
    pub target: BTreeMap<i32, [i64; 2]>,
    /// Target partition -> its high watermark before this job first wrote to it. Copies
    /// written by a run that died before its first checkpoint lie between this and `target`'s
    /// first offset; `verify` reads from here so it counts them as duplicates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_start: BTreeMap<i32, i64>,
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCheckpoint {
    pub source_cluster: String,
    /// Keyed by `topic/partition`.
    pub partitions: BTreeMap<String, PartitionCheckpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub job: String,
    pub written_at: String,
    pub routes: BTreeMap<String, RouteCheckpoint>,
}

pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

pub fn parse_partition_key(key: &str) -> Option<(&str, i32)> {
    let (t, p) = key.rsplit_once('/')?;
    Some((t, p.parse().ok()?))
}

impl Checkpoint {
    pub fn new(job: &str) -> Self {
        Checkpoint {
            job: job.to_string(),
            ..Default::default()
        }
    }

    pub fn get(&self, route: &str, topic: &str, partition: i32) -> Option<&PartitionCheckpoint> {
        self.routes
            .get(route)?
            .partitions
            .get(&partition_key(topic, partition))
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    checksum: String,
    checkpoint: Checkpoint,
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn checksum(cp: &Checkpoint) -> String {
    // Structs and BTreeMaps serialize deterministically, so the compact form is canonical.
    let body = serde_json::to_vec(cp).expect("checkpoint serializes");
    format!("fnv1a64:{:016x}", fnv1a64(&body))
}

/// Where checkpoints live.
pub trait CheckpointStore: Send + Sync {
    /// Human-readable location, for messages.
    fn describe(&self) -> String;
    /// The stored checkpoint, `None` if there is none yet.
    fn load(&self) -> Result<Option<Checkpoint>, CheckpointError>;
    /// Replaces the stored checkpoint atomically.
    fn save(&self, cp: &Checkpoint) -> Result<(), CheckpointError>;
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

/// Checks a loaded checkpoint belongs to this job and its routes' sources.
pub fn check_ownership(
    cp: &Checkpoint,
    store: &dyn CheckpointStore,
    config: &crate::config::Config,
) -> Result<(), CheckpointError> {
    if cp.job != config.job {
        return Err(CheckpointError::WrongJob {
            path: store.describe(),
            found: cp.job.clone(),
            expected: config.job.clone(),
        });
    }
    for route in &config.routes {
        if let Some(rc) = cp.routes.get(&route.name) {
            if rc.source_cluster != route.source && !rc.partitions.is_empty() {
                return Err(CheckpointError::WrongSource {
                    path: store.describe(),
                    route: route.name.clone(),
                    found: rc.source_cluster.clone(),
                    expected: route.source.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
