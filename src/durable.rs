//! Writing a small file so that a crash leaves either the old one or the new one, whole:
//! state files (import positions, verified positions) and archive manifests.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file beside it (named for this process),
/// fsync and rename, then fsyncs the directory so the rename itself survives a crash.
/// Creates the directory when missing.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}
