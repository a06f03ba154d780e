//! The job lock: an exclusive OS advisory lock (`flock`) on `<checkpoint dir>/<job>.lock`,
//! held for the whole of `run` and of `checkpoints reset`, so two processes never copy the
//! same job twice or overwrite each other's checkpoint. The kernel drops the lock when its
//! holder exits, however it exits (`kill -9` included), so a crashed holder never blocks
//! the next run. The file's text (pid, host, since) is only there to name the holder when a
//! second process is refused; it is never what decides who holds the lock.
//!
//! Readers (`check`, `verify`, `checkpoints show`) take no lock: the store replaces the
//! checkpoint by an atomic rename, so a reader always sees one whole checkpoint, at worst
//! one interval old.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::CheckpointError;
use crate::config::{value, Config};

/// Who holds a job lock, as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: Option<u32>,
    pub host: Option<String>,
    pub since: Option<String>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pid, &self.host, &self.since) {
            (None, None, None) => {
                write!(f, "another process (it has not written its pid yet)")
            }
            (pid, host, since) => {
                let or = |o: Option<String>| o.unwrap_or_else(|| "?".into());
                write!(
                    f,
                    "pid {} on host {} since {}",
                    or(pid.map(|p| p.to_string())),
                    or(host.clone()),
                    or(since.clone())
                )
            }
        }
    }
}

impl LockHolder {
    fn me() -> Self {
        LockHolder {
            pid: Some(std::process::id()),
            host: Some(hostname()),
            since: Some(value::format_ms(value::now_ms())),
        }
    }

    fn parse(text: &str) -> Self {
        let field = |k: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(key, _)| key.trim() == k)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        LockHolder {
            pid: field("pid").and_then(|p| p.parse().ok()),
            host: field("host"),
            since: field("since"),
        }
    }

    fn render(&self) -> String {
        format!(
            "pid={}\nhost={}\nsince={}\n",
            self.pid.map(|p| p.to_string()).unwrap_or_default(),
            self.host.clone().unwrap_or_default(),
            self.since.clone().unwrap_or_default()
        )
    }
}

pub(super) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // when the name fits, and we stop at the first NUL or the end either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// An exclusive lock on one job; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct JobLock {
    file: File,
    path: PathBuf,
}

impl JobLock {
    /// The lock file of the routing file's job: beside its checkpoint.
    pub fn path_for(config: &Config) -> PathBuf {
        config.checkpoints.dir.join(format!("{}.lock", config.job))
    }

    /// Takes the lock at once, or refuses with `CheckpointError::Locked` naming the holder.
    pub fn acquire(path: &Path) -> Result<JobLock, CheckpointError> {
        let werr = |source| CheckpointError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(werr)?;
        }
        // Never truncate on open: the holder's text must survive a refused contender.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(werr)?;
        loop {
            // SAFETY: flock on a file descriptor we own for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(CheckpointError::Locked {
                        path: path.display().to_string(),
                        holder: LockHolder::parse(&text).to_string(),
                    });
                }
                _ => return Err(werr(err)),
            }
        }
        let me = LockHolder::me();
        file.set_len(0).map_err(werr)?;
        file.seek(SeekFrom::Start(0)).map_err(werr)?;
        file.write_all(me.render().as_bytes()).map_err(werr)?;
        file.flush().map_err(werr)?;
        tracing::debug!(path = %path.display(), "job lock taken");
        Ok(JobLock {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        // Still held here, so nobody else is writing: leave no stale holder behind. The
        // lock itself goes with the descriptor.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_holder_named_and_can_take_it_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("job.lock");
        let first = JobLock::acquire(&path).unwrap();
        let e = JobLock::acquire(&path).unwrap_err();
        assert!(matches!(e, CheckpointError::Locked { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&hostname()), "{msg}");
        drop(first);
        let again = JobLock::acquire(&path).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn holder_text_round_trips() {
        let me = LockHolder::me();
        assert_eq!(LockHolder::parse(&me.render()), me);
        assert_eq!(
            LockHolder::parse("").to_string(),
            "another process (it has not written its pid yet)"
        );
    }
}
