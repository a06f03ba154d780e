//! What `verify` remembers between runs: per (route, source partition) the source offset up to
//! which the last matching verification reached, so `verify --since-last` checks only what
//! was copied since. A small JSON file beside the checkpoint (`<checkpoint>.verified`),
//! written like the checkpoint (temporary file, fsync, rename), keyed like the checkpoint's
//! partitions, and tied to the route's source cluster (and its id when the checkpoint has
//! one): positions recorded against another cluster are ignored, never trusted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointError;

const FORMAT: &str = "kmirror-verified/1";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct VerifiedState {
    #[serde(default)]
    pub format: String,
    #[serde(default)]
    pub routes: BTreeMap<String, VerifiedRoute>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifiedRoute {
    pub source_cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cluster_id: Option<String>,
    /// `topic/partition` (as in the checkpoint) -> every source offset below this was
    /// verified as matching by some verification since the copy began.
    pub partitions: BTreeMap<String, i64>,
}

/// Where the state of the checkpoint file `checkpoint` lives.
pub fn path_for(checkpoint: &Path) -> PathBuf {
    let mut s = checkpoint.as_os_str().to_owned();
    s.push(".verified");
    PathBuf::from(s)
}

impl VerifiedState {
    /// The state at `path`; an absent file is an empty state. A file that cannot be read or
    /// parsed is an error (`--since-last` must not silently verify everything or nothing).
    pub fn load(path: &Path) -> Result<VerifiedState, CheckpointError> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(CheckpointError::Corrupt {
                    path: path.display().to_string(),
                    detail: format!("cannot read the verified positions: {e}"),
                })
            }
        };
        let st: VerifiedState =
            serde_json::from_slice(&text).map_err(|e| CheckpointError::Corrupt {
                path: path.display().to_string(),
                detail: format!("verified positions: {e}"),
            })?;
        if st.format != FORMAT {
            return Err(CheckpointError::Corrupt {
                path: path.display().to_string(),
                detail: format!(
                    "verified positions in format {:?}, expected {FORMAT:?}",
                    st.format
                ),
            });
        }
        Ok(st)
    }

    /// The remembered position of (route, partition key), if it was recorded against the
    /// same source cluster (and id, when both are known).
    pub fn position(
        &self,
        route: &str,
        source_cluster: &str,
        source_cluster_id: Option<&str>,
        key: &str,
    ) -> Option<i64> {
        let r = self.routes.get(route)?;
        let same_id = match (&r.source_cluster_id, source_cluster_id) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        (r.source_cluster == source_cluster && same_id)
            .then(|| r.partitions.get(key).copied())
            .flatten()
    }

    /// Durably replaces the file at `path` with this state.
    pub fn save(&mut self, path: &Path) -> Result<(), CheckpointError> {
        self.format = FORMAT.to_string();
        let mut text = serde_json::to_vec_pretty(self).expect("verified state serializes");
        text.push(b'\n');
        crate::durable::write_atomically(path, &text).map_err(|source| CheckpointError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_positions_of_another_cluster_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("job.checkpoint.json"));
        assert!(VerifiedState::load(&path).unwrap().routes.is_empty());
        let mut st = VerifiedState::default();
        st.routes.insert(
            "r".into(),
            VerifiedRoute {
                source_cluster: "src".into(),
                source_cluster_id: Some("id-1".into()),
                partitions: [("t/0".to_string(), 42)].into(),
            },
        );
        st.save(&path).unwrap();
        let back = VerifiedState::load(&path).unwrap();
        assert_eq!(back.position("r", "src", Some("id-1"), "t/0"), Some(42));
        assert_eq!(back.position("r", "src", None, "t/0"), Some(42));
        assert_eq!(back.position("r", "src", Some("id-2"), "t/0"), None);
        assert_eq!(back.position("r", "other", Some("id-1"), "t/0"), None);
        assert_eq!(back.position("r", "src", Some("id-1"), "t/1"), None);
        std::fs::write(&path, "{\"format\":\"nope\"}").unwrap();
        assert!(
            VerifiedState::load(&path).is_err(),
            "a foreign file is refused"
        );
    }
}
