//! Where an archive lives: a local directory, or an S3 bucket (any S3-compatible server)
//! through the `object_store` crate. Everything above this module names files by their
//! path relative to the archive's root (`orders/3/00000000000000000000.json`) and asks
//! [`Root`] to read, list, write atomically, commit a segment or remove; only this module
//! knows which kind of storage is behind it.
//!
//! Atomicity is the storage's own: a directory renames a fsynced temporary file into place;
//! an object store makes an object visible whole or not at all (a PUT, or a multipart upload
//! completed). A segment is always encoded into a local file first (a directory: beside its
//! final name; S3: in a spool directory under the system's temporary directory, one per
//! archive and partition), so memory stays bounded by the encoder's buffers whatever the
//! segment's size, and committing it is one rename or one upload.
//!
//! S3 credentials, region and endpoint come from the environment, as for every AWS tool
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT` for a server other than AWS, `AWS_ALLOW_HTTP=true` for plain http): never
//! from the routing file, so they never appear in it or in anything printed from it.

use std::fmt;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

use super::ArchiveError;

/// An archive's root. Cheap to clone; equal when it names the same place.
#[derive(Clone)]
pub struct Root(Arc<Kind>);

enum Kind {
    Dir(PathBuf),
    S3 {
        /// As written: `s3://bucket/prefix`, without a trailing '/'.
        url: String,
        prefix: String,
        store: Arc<dyn ObjectStore>,
    },
}

/// Entries directly under a directory of the archive.
#[derive(Debug, Default)]
pub struct Listing {
    /// Sub-directories (S3: common prefixes), by name.
    pub dirs: Vec<String>,
    /// Files (objects), by name, with their size in bytes.
    pub files: Vec<(String, u64)>,
}

/// A segment's bytes are uploaded in parts of this size once they exceed it.
const PART_BYTES: usize = 8 << 20;

impl Root {
    /// A local directory.
    pub fn dir(path: impl Into<PathBuf>) -> Root {
        Root(Arc::new(Kind::Dir(path.into())))
    }

    /// What `[clusters.NAME] archive` says: `s3://bucket[/prefix]`, or a directory
    /// (relative to `base_dir`). `Err`: why it cannot be used, for the config's report.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Root, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("s3://") {
            let rest = rest.trim_end_matches('/');
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("names no bucket: write `s3://BUCKET` or `s3://BUCKET/PREFIX`".into());
            }
            if bucket.contains('@') || bucket.contains(':') {
                return Err(
                    "an s3:// URL takes no credentials or port: credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the endpoint from AWS_ENDPOINT".into(),
                );
            }
            // Retries are bounded (object_store's default waits up to 3 minutes): a server
            // that stays unreachable halts the partition, named, within about half a minute.
            let retry = object_store::RetryConfig {
                max_retries: 5,
                retry_timeout: std::time::Duration::from_secs(30),
                ..Default::default()
            };
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .build()
                .map_err(|e| format!("cannot use {text}: {e}"))?;
            return Ok(Root(Arc::new(Kind::S3 {
                url: format!("s3://{rest}"),
                prefix: prefix.to_string(),
                store: Arc::new(store),
            })));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!(
                "`{scheme}://` is not an archive kind this build knows: use a directory or s3://BUCKET/PREFIX"
            ));
        }
        let dir = PathBuf::from(text);
        Ok(Root::dir(if dir.is_absolute() {
            dir
        } else {
            base_dir.join(dir)
        }))
    }

    /// Whether the archive can be reached now, before anything is written to it: an S3
    /// bucket is listed (a missing bucket, refused credentials or an unreachable endpoint
    /// answer here, with the URL); a directory needs nothing (it is made when missing, and a
    /// write that fails halts its partition naming it).
    pub fn probe(&self) -> Result<(), ArchiveError> {
        match &*self.0 {
            Kind::Dir(_) => Ok(()),
            Kind::S3 { .. } => self.list("").map(|_| ()),
        }
    }

    /// The local directory, if this archive is one.
    pub fn local_dir(&self) -> Option<&Path> {
        match &*self.0 {
            Kind::Dir(d) => Some(d),
            Kind::S3 { .. } => None,
        }
    }

    /// For messages: the directory, or the `s3://` URL.
    pub fn display(&self) -> impl fmt::Display + '_ {
        self
    }

    /// How `rel` is named in messages.
    pub fn name_of(&self, rel: &str) -> String {
        match &*self.0 {
            Kind::Dir(d) => d.join(rel).display().to_string(),
            Kind::S3 { url, .. } if rel.is_empty() => url.clone(),
            Kind::S3 { url, .. } => format!("{url}/{rel}"),
        }
    }

    fn io(&self, rel: &str, op: &'static str) -> impl FnOnce(io::Error) -> ArchiveError {
        let path = self.name_of(rel);
        move |source| ArchiveError::Io { path, op, source }
    }

    fn key(prefix: &str, rel: &str) -> ObjectPath {
        let rel = rel.trim_matches('/');
        match (prefix.is_empty(), rel.is_empty()) {
            (true, _) => ObjectPath::from(rel),
            (false, true) => ObjectPath::from(prefix),
            (false, false) => ObjectPath::from(format!("{prefix}/{rel}")),
        }
    }

    /// The whole of `rel`; `None` when there is no such file.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        match &*self.0 {
            Kind::Dir(d) => match std::fs::read(d.join(rel)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.io(rel, "read")(e)),
            },
            Kind::S3 { prefix, store, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, rel));
                match block(async move { store.get(&key).await?.bytes().await }) {
                    Ok(b) => Ok(Some(b.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.io(rel, "read")(tidy(e))),
                }
            }
        }
    }

    /// Writes `rel` whole or not at all.
    pub fn write_atomically(&self, rel: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        match &*self.0 {
            Kind::Dir(d) => {
                let path = d.join(rel);
                crate::durable::write_atomically(&path, bytes).map_err(self.io(rel, "write"))
            }
            Kind::S3 { prefix, store, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, rel));
                let payload = PutPayload::from(bytes.to_vec());
                block(async move { store.put(&key, payload).await.map(|_| ()) })
                    .map_err(|e| self.io(rel, "write")(tidy(e)))
            }
        }
    }

    /// What is directly under `rel` (empty when nothing is).
    pub fn list(&self, rel: &str) -> Result<Listing, ArchiveError> {
        let mut out = Listing::default();
        match &*self.0 {
            Kind::Dir(d) => {
                let dir = d.join(rel);
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(self.io(rel, "list")(e)),
                };
                for e in entries {
                    let e = e.map_err(self.io(rel, "list"))?;
                    let name = e.file_name().to_string_lossy().to_string();
                    let meta = e.metadata().map_err(self.io(rel, "list"))?;
                    if meta.is_dir() {
                        out.dirs.push(name);
                    } else {
                        out.files.push((name, meta.len()));
                    }
                }
            }
            Kind::S3 { prefix, store, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, rel));
                let at = if key.as_ref().is_empty() {
                    None
                } else {
                    Some(key)
                };
                let listed = block(async move { store.list_with_delimiter(at.as_ref()).await })
                    .map_err(|e| self.io(rel, "list")(tidy(e)))?;
                for p in listed.common_prefixes {
                    if let Some(name) = p.filename() {
                        out.dirs.push(name.to_string());
                    }
                }
                for o in listed.objects {
                    if let Some(name) = o.location.filename() {
                        out.files.push((name.to_string(), o.size));
                    }
                }
            }
        }
        out.dirs.sort();
        out.files.sort();
        Ok(out)
    }

    /// Whether anything is stored under the directory `rel`.
    pub fn has_dir(&self, rel: &str) -> Result<bool, ArchiveError> {
        match &*self.0 {
            Kind::Dir(d) => Ok(d.join(rel).is_dir()),
            Kind::S3 { .. } => {
                let l = self.list(rel)?;
                Ok(!l.dirs.is_empty() || !l.files.is_empty())
            }
        }
    }

    /// Removes the file `rel` (nothing when it is not there).
    pub fn remove(&self, rel: &str) -> Result<(), ArchiveError> {
        match &*self.0 {
            Kind::Dir(d) => match std::fs::remove_file(d.join(rel)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io(rel, "remove")(e)),
                _ => Ok(()),
            },
            Kind::S3 { prefix, store, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, rel));
                match block(async move { store.delete(&key).await }) {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.io(rel, "remove")(tidy(e))),
                }
            }
        }
    }

    /// The local directory a segment of the directory `rel` is encoded in before it is
    /// committed (created). A directory archive: that directory itself. S3: a spool
    /// directory of this archive and partition under the system's temporary directory.
    pub fn staging_dir(&self, rel: &str) -> Result<PathBuf, ArchiveError> {
        let dir = match &*self.0 {
            Kind::Dir(d) => d.join(rel),
            Kind::S3 { url, .. } => std::env::temp_dir()
                .join("kmirror-archive-spool")
                .join(format!(
                    "{:016x}",
                    xxhash_rust::xxh3::xxh3_64(url.as_bytes())
                ))
                .join(rel),
        };
        std::fs::create_dir_all(&dir).map_err(self.io(rel, "create directory"))?;
        Ok(dir)
    }

    /// Makes the local, fsynced file `tmp` (in `staging_dir`) the archive's file `rel`:
    /// a rename for a directory, an upload (then `tmp` is removed) for S3.
    pub fn commit_file(&self, tmp: &Path, rel: &str) -> Result<(), ArchiveError> {
        match &*self.0 {
            Kind::Dir(d) => {
                let path = d.join(rel);
                std::fs::rename(tmp, &path).map_err(self.io(rel, "rename"))?;
                super::manifest::sync_dir(&path)
            }
            Kind::S3 { prefix, store, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, rel));
                let mut f = std::fs::File::open(tmp).map_err(self.io(rel, "upload"))?;
                let len = f.metadata().map_err(self.io(rel, "upload"))?.len();
                if len as usize <= PART_BYTES {
                    let mut bytes = Vec::with_capacity(len as usize);
                    f.read_to_end(&mut bytes).map_err(self.io(rel, "upload"))?;
                    block(async move { store.put(&key, PutPayload::from(bytes)).await })
                        .map_err(|e| self.io(rel, "upload")(tidy(e)))?;
                } else {
                    // Part by part: memory stays at one part whatever the segment's size.
                    let upload = block({
                        let store = store.clone();
                        async move { store.put_multipart(&key).await }
                    })
                    .map_err(|e| self.io(rel, "upload")(tidy(e)))?;
                    // `WriteMultipart` spawns each part's upload: on the archive runtime.
                    let _in_runtime = runtime().enter();
                    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    let mut buf = vec![0u8; PART_BYTES];
                    let sent: Result<(), io::Error> = (|| loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        w.write(&buf[..n]);
                        // At most a couple of parts in flight.
                        let waited = block_local(w.wait_for_capacity(2));
                        waited.map_err(tidy)?;
                    })();
                    match sent {
                        Ok(()) => block_local(w.finish())
                            .map(|_| ())
                            .map_err(|e| self.io(rel, "upload")(tidy(e)))?,
                        Err(e) => {
                            let _ = block_local(w.abort());
                            return Err(self.io(rel, "upload")(e));
                        }
                    }
                }
                let _ = std::fs::remove_file(tmp);
                Ok(())
            }
        }
    }

    /// Reads the file `rel` from its start. A directory: the file itself; S3: the object,
    /// fetched whole (a segment's size is bounded by `SegmentLimits`).
    pub fn open(&self, rel: &str) -> io::Result<Box<dyn Read + Send>> {
        match &*self.0 {
            Kind::Dir(d) => Ok(Box::new(std::fs::File::open(d.join(rel))?)),
            Kind::S3 { prefix, store, .. } => {
                let (store, key) = (store.clone(), Self::key(prefix, rel));
                let bytes =
                    block(async move { store.get(&key).await?.bytes().await }).map_err(tidy)?;
                Ok(Box::new(io::Cursor::new(bytes)))
            }
        }
    }
}

/// An object store's error as an I/O error whose text a person can read: S3 answers with an
/// XML document, of which its `Code` and `Message` are what matter.
fn tidy(e: object_store::Error) -> io::Error {
    let text = e.to_string();
    let between = |a: &str, b: &str| {
        let i = text.find(a)? + a.len();
        let j = text[i..].find(b)? + i;
        Some(text[i..j].to_string())
    };
    match (text.find("<?xml"), between("<Code>", "</Code>")) {
        (Some(at), Some(code)) => {
            let message = between("<Message>", "</Message>").unwrap_or_default();
            io::Error::other(format!(
                "{}{code}: {message}",
                text[..at].trim_end().trim_end_matches(':').to_string() + ": "
            ))
        }
        _ if text.contains("169.254.169.254") => io::Error::other(format!(
            "{text} (no credentials in the environment, so the instance's were asked for: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where the instance has a role)"
        )),
        _ => io::Error::other(text),
    }
}

/// `dir/name`, for relative archive paths.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Kind::Dir(d) => write!(f, "{}", d.display()),
            Kind::S3 { url, .. } => f.write_str(url),
        }
    }
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Root({self})")
    }
}

impl PartialEq for Root {
    fn eq(&self, other: &Root) -> bool {
        match (&*self.0, &*other.0) {
            (Kind::Dir(a), Kind::Dir(b)) => a == b,
            (Kind::S3 { url: a, .. }, Kind::S3 { url: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Root {}

/// The runtime S3 requests run on: one worker, made on first use (a run without an S3
/// archive never starts it).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kmirror-archive-io")
            .enable_all()
            .build()
            .expect("start the archive's I/O runtime")
    })
}

/// Runs `f` on the archive runtime and waits for it, from any thread (a reader thread, or
/// a tokio worker of the CLI's own runtime: waiting there blocks only that worker).
fn block<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    match futures::executor::block_on(runtime().spawn(f)) {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Waits for a future that borrows (the multipart writer's); the caller has entered the
/// archive runtime's context, so what it spawns lands there.
fn block_local<T>(f: impl Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_setting_is_a_directory_or_an_s3_url() {
        let base = Path::new("/etc/kmirror");
        assert_eq!(
            Root::parse("dumps", base).unwrap().local_dir(),
            Some(Path::new("/etc/kmirror/dumps"))
        );
        assert_eq!(
            Root::parse("/var/dumps", base).unwrap().local_dir(),
            Some(Path::new("/var/dumps"))
        );
        let s3 = Root::parse("s3://bucket/some/prefix/", base).unwrap();
        assert_eq!(s3.local_dir(), None);
        assert_eq!(s3.to_string(), "s3://bucket/some/prefix");
        assert_eq!(
            s3.name_of("t/0/x.json"),
            "s3://bucket/some/prefix/t/0/x.json"
        );
        assert!(Root::parse("s3://", base)
            .unwrap_err()
            .contains("names no bucket"));
        assert!(Root::parse("s3://key:secret@bucket/p", base)
            .unwrap_err()
            .contains("from the environment"));
        assert!(Root::parse("gs://bucket", base)
            .unwrap_err()
            .contains("`gs://` is not an archive kind"));
        assert_eq!(Root::key("", "a/b"), ObjectPath::from("a/b"));
        assert_eq!(Root::key("p/q", "a/b"), ObjectPath::from("p/q/a/b"));
        assert_eq!(Root::key("p", ""), ObjectPath::from("p"));
    }
}
