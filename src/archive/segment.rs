//! Segments: a partition's records in offset order, encoded below and compressed as one
//! zstd stream (with zstd's own content checksum), written by `PartitionWriter` and read
//! back by `PartitionReader`, which checks every segment against its manifest.
//!
//! Encoding, version 1 (all integers little-endian):
//!
//! ```text
//! segment  = "KMARSEG1" record*
//! record   = len:u32 (of the rest)  offset:i64  ts_type:u8  timestamp:i64
//!            key:bytes?  value:bytes?  header_count:u32  (name:bytes  value:bytes?)*
//! bytes?   = len:i32 (-1 = null) then len bytes        bytes = len:u32 then len bytes
//! ts_type  = 0 none, 1 create time, 2 log-append time
//! ```

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use xxhash_rust::xxh3::Xxh3;

use super::manifest::{Manifest, MANIFEST_FORMAT};
use super::storage::join;
use super::{partition_dir, ArchiveError, Root};

const MAGIC: &[u8; 8] = b"KMARSEG1";
const SEGMENT_SUFFIX: &str = ".seg.zst";
const MANIFEST_SUFFIX: &str = ".json";
/// A record larger than this is refused as corrupt when reading (Kafka's own limit is far
/// below it).
const MAX_RECORD_BYTES: u32 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsType {
    None,
    Create,
    LogAppend,
}

/// A record to archive, borrowed from wherever it was read.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub offset: i64,
    pub ts_type: TsType,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// A record read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRecord {
    pub offset: i64,
    pub ts_type: TsType,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// When a segment is sealed (committed) and the next one begins.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    /// Encoded bytes before compression.
    pub max_bytes: u64,
    pub max_records: u64,
}

impl Default for SegmentLimits {
    fn default() -> Self {
        SegmentLimits {
            max_bytes: 64 << 20,
            max_records: 1_000_000,
        }
    }
}

fn segment_stem(first_offset: i64) -> String {
    format!("{first_offset:020}")
}

/// Encodes `r` (without the leading length) into `out`.
fn encode(r: &RecordRef<'_>, out: &mut Vec<u8>) {
    fn opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            None => out.extend_from_slice(&(-1i32).to_le_bytes()),
            Some(b) => {
                out.extend_from_slice(&(b.len() as i32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out.extend_from_slice(&r.offset.to_le_bytes());
    out.push(match r.ts_type {
        TsType::None => 0,
        TsType::Create => 1,
        TsType::LogAppend => 2,
    });
    out.extend_from_slice(&r.timestamp.to_le_bytes());
    opt(out, r.key);
    opt(out, r.value);
    out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
    for (name, value) in r.headers {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        opt(out, *value);
    }
}

fn decode(b: &[u8]) -> Result<ArchivedRecord, String> {
    struct Cur<'a>(&'a [u8]);
    impl<'a> Cur<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("a record ends early".into());
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn u32(&mut self) -> Result<u32, String> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
        }
        fn i64(&mut self) -> Result<i64, String> {
            Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
        }
        fn opt(&mut self) -> Result<Option<Vec<u8>>, String> {
            let n = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
            match n {
                -1 => Ok(None),
                n if n < 0 => Err(format!("a length of {n}")),
                n => Ok(Some(self.take(n as usize)?.to_vec())),
            }
        }
    }
    let mut c = Cur(b);
    let offset = c.i64()?;
    let ts_type = match c.take(1)?[0] {
        0 => TsType::None,
        1 => TsType::Create,
        2 => TsType::LogAppend,
        t => return Err(format!("timestamp type {t}")),
    };
    let timestamp = c.i64()?;
    let key = c.opt()?;
    let value = c.opt()?;
    let n = c.u32()?;
    let mut headers = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        let len = c.u32()? as usize;
        let name = c.take(len)?.to_vec();
        headers.push((name, c.opt()?));
    }
    if !c.0.is_empty() {
        return Err(format!("{} bytes after a record", c.0.len()));
    }
    Ok(ArchivedRecord {
        offset,
        ts_type,
        timestamp,
        key,
        value,
        headers,
    })
}

/// Counts and hashes what passes through to the file.
struct Hashing<W> {
    inner: W,
    hash: Xxh3,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

struct OpenSegment {
    tmp: PathBuf,
    first_offset: i64,
    last_offset: i64,
    records: u64,
    uncompressed: u64,
    enc: zstd::stream::write::Encoder<'static, Hashing<BufWriter<File>>>,
}

/// Appends one partition's records to its archive directory, sealing segments as they
/// fill. Records at offsets the archive already holds are skipped (counted), so a dump
/// resumed from a checkpoint behind the archive writes nothing twice.
pub struct PartitionWriter {
    root: Root,
    /// The partition's directory, relative to the root.
    dir: String,
    /// Where segments are encoded before they are committed (`Root::staging_dir`).
    staging: PathBuf,
    topic: String,
    partition: i32,
    source: String,
    limits: SegmentLimits,
    /// Where the committed segments end.
    next_offset: Option<i64>,
    open: Option<OpenSegment>,
    buf: Vec<u8>,
    /// Records skipped because the archive already held their offset.
    pub already_archived: u64,
}

impl PartitionWriter {
    /// Opens the partition's directory (creating it), checks its committed segments, and
    /// removes what a crash left uncommitted.
    pub fn open(
        root: &Root,
        topic: &str,
        partition: i32,
        source: &str,
        limits: SegmentLimits,
    ) -> Result<PartitionWriter, ArchiveError> {
        super::init(root)?;
        let dir = partition_dir(topic, partition);
        let staging = root.staging_dir(&dir)?;
        let manifests = committed(root, &dir, true)?;
        if root.local_dir().is_none() {
            // A crash's half-encoded segments in the spool: never uploaded, so never
            // committed.
            for e in fs::read_dir(&staging).map_err(ArchiveError::io(&staging, "list"))? {
                let path = e.map_err(ArchiveError::io(&staging, "list"))?.path();
                tracing::warn!(file = %path.display(), "removing an uncommitted archive file (left by an interrupted dump)");
                fs::remove_file(&path).map_err(ArchiveError::io(&path, "remove"))?;
            }
        }
        Ok(PartitionWriter {
            root: root.clone(),
            dir,
            staging,
            topic: topic.into(),
            partition,
            source: source.into(),
            limits,
            next_offset: manifests.last().map(|m| m.next_offset),
            open: None,
            buf: Vec::with_capacity(4096),
            already_archived: 0,
        })
    }

    /// Where the committed segments end: a resumed dump starts reading here.
    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    /// Records appended but not yet in a committed segment.
    pub fn uncommitted(&self) -> u64 {
        self.open.as_ref().map_or(0, |o| o.records)
    }

    /// Appends a record; returns the manifest of a segment this sealed (limits reached).
    pub fn append(&mut self, r: &RecordRef<'_>) -> Result<Option<Manifest>, ArchiveError> {
        let floor = self
            .open
            .as_ref()
            .map(|o| o.last_offset + 1)
            .or(self.next_offset);
        if floor.is_some_and(|f| r.offset < f) {
            self.already_archived += 1;
            return Ok(None);
        }
        if self.open.is_none() {
            self.open = Some(self.start(r.offset)?);
        }
        self.buf.clear();
        encode(r, &mut self.buf);
        let o = self.open.as_mut().expect("a segment is open");
        let err = ArchiveError::io(&o.tmp, "write");
        o.enc
            .write_all(&(self.buf.len() as u32).to_le_bytes())
            .and_then(|_| o.enc.write_all(&self.buf))
            .map_err(err)?;
        o.last_offset = r.offset;
        o.records += 1;
        o.uncompressed += 4 + self.buf.len() as u64;
        if o.records >= self.limits.max_records || o.uncompressed >= self.limits.max_bytes {
            return self.seal(None);
        }
        Ok(None)
    }

    fn start(&self, first_offset: i64) -> Result<OpenSegment, ArchiveError> {
        let tmp = self.staging.join(format!(
            "{}{SEGMENT_SUFFIX}.tmp.{}",
            segment_stem(first_offset),
            std::process::id()
        ));
        let f = File::create(&tmp).map_err(ArchiveError::io(&tmp, "create"))?;
        let w = Hashing {
            inner: BufWriter::with_capacity(256 * 1024, f),
            hash: Xxh3::new(),
            bytes: 0,
        };
        let mut enc =
            zstd::stream::write::Encoder::new(w, 3).map_err(ArchiveError::io(&tmp, "compress"))?;
        enc.include_checksum(true)
            .and_then(|_| enc.write_all(MAGIC))
            .map_err(ArchiveError::io(&tmp, "compress"))?;
        Ok(OpenSegment {
            tmp,
            first_offset,
            last_offset: first_offset,
            records: 0,
            uncompressed: MAGIC.len() as u64,
            enc,
        })
    }

    /// Commits the open segment, if any: the records appended so far become readable and
    /// durable. `next_offset`: where the partition continues (default: last offset + 1).
    pub fn seal(&mut self, next_offset: Option<i64>) -> Result<Option<Manifest>, ArchiveError> {
        let Some(o) = self.open.take() else {
            return Ok(None);
        };
        let mut w = o
            .enc
            .finish()
            .map_err(ArchiveError::io(&o.tmp, "compress"))?;
        w.flush().map_err(ArchiveError::io(&o.tmp, "write"))?;
        let (hash, bytes) = (w.hash.digest(), w.bytes);
        let f = w
            .inner
            .into_inner()
            .map_err(|e| ArchiveError::io(&o.tmp, "write")(e.into_error()))?;
        f.sync_all().map_err(ArchiveError::io(&o.tmp, "fsync"))?;
        drop(f);
        let stem = segment_stem(o.first_offset);
        let seg_name = format!("{stem}{SEGMENT_SUFFIX}");
        self.root.commit_file(&o.tmp, &join(&self.dir, &seg_name))?;
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            topic: self.topic.clone(),
            partition: self.partition,
            segment: seg_name,
            first_offset: o.first_offset,
            last_offset: o.last_offset,
            next_offset: next_offset
                .filter(|n| *n > o.last_offset)
                .unwrap_or(o.last_offset + 1),
            records: o.records,
            uncompressed_bytes: o.uncompressed,
            compressed_bytes: bytes,
            xxh3: format!("{hash:016x}"),
            source: self.source.clone(),
            created_at: crate::config::value::format_ms(crate::config::value::now_ms()),
        };
        m.save(
            &self.root,
            &join(&self.dir, &format!("{stem}{MANIFEST_SUFFIX}")),
        )?;
        self.next_offset = Some(m.next_offset);
        Ok(Some(m))
    }
}

/// The committed segments of a partition directory in offset order, checked for overlaps
/// and for segment files of the size their manifest records. With `clean`, uncommitted
/// files (a crash's leftovers) are removed.
fn committed(root: &Root, dir: &str, clean: bool) -> Result<Vec<Manifest>, ArchiveError> {
    let mut manifests = Vec::new();
    let mut others = Vec::new();
    let listing = root.list(dir)?;
    for (name, _) in &listing.files {
        if name.ends_with(MANIFEST_SUFFIX) && !name.contains(".tmp.") {
            manifests.push(Manifest::load(root, &join(dir, name))?);
        } else {
            others.push(name.clone());
        }
    }
    manifests.sort_by_key(|m| m.first_offset);
    for w in manifests.windows(2) {
        if w[1].first_offset < w[0].next_offset {
            return Err(ArchiveError::Corrupt {
                path: root.name_of(dir),
                detail: format!(
                    "segments {} and {} overlap (the first continues at {}, the second begins at {})",
                    w[0].segment, w[1].segment, w[0].next_offset, w[1].first_offset
                ),
            });
        }
    }
    for m in &manifests {
        let seg = join(dir, &m.segment);
        let Some(&(_, len)) = listing.files.iter().find(|(n, _)| *n == m.segment) else {
            return Err(ArchiveError::Corrupt {
                path: root.name_of(&seg),
                detail: "its manifest is there, the segment is not".into(),
            });
        };
        if len != m.compressed_bytes {
            return Err(ArchiveError::Corrupt {
                path: root.name_of(&seg),
                detail: format!("{len} bytes, its manifest says {}", m.compressed_bytes),
            });
        }
    }
    if clean {
        for name in others {
            let is_committed = manifests.iter().any(|m| m.segment == name);
            if !is_committed {
                let rel = join(dir, &name);
                tracing::warn!(file = %root.name_of(&rel), "removing an uncommitted archive file (left by an interrupted dump)");
                root.remove(&rel)?;
            }
        }
    }
    Ok(manifests)
}

/// Reads one partition's committed segments, checking each against its manifest.
#[derive(Debug, Clone)]
pub struct PartitionReader {
    root: Root,
    dir: String,
    manifests: Vec<Manifest>,
}

impl PartitionReader {
    pub fn open(root: &Root, topic: &str, partition: i32) -> Result<PartitionReader, ArchiveError> {
        let dir = partition_dir(topic, partition);
        Ok(PartitionReader {
            manifests: committed(root, &dir, false)?,
            root: root.clone(),
            dir,
        })
    }

    pub fn manifests(&self) -> &[Manifest] {
        &self.manifests
    }

    /// The records at offsets `>= from`, in order. Each segment is verified as it ends (its
    /// record count, last offset, size and hash); an error ends the iteration.
    pub fn records(&self, from: i64) -> Records<'_> {
        let start = self
            .manifests
            .iter()
            .position(|m| m.last_offset >= from)
            .unwrap_or(self.manifests.len());
        Records {
            reader: std::borrow::Cow::Borrowed(self),
            next_segment: start,
            from,
            cur: None,
            failed: false,
            check_first: false,
        }
    }

    /// As `records`, owning the reader (a restore keeps one cursor per partition across
    /// many turns of its loop), and checking each segment's size and hash against its
    /// manifest before the segment's first record is given out: records produced from a
    /// segment found corrupt at its end could not be taken back.
    pub fn into_checked_records(self, from: i64) -> Records<'static> {
        let r = self.records(from);
        let next_segment = r.next_segment;
        Records {
            reader: std::borrow::Cow::Owned(self),
            next_segment,
            from,
            cur: None,
            failed: false,
            check_first: true,
        }
    }
}

/// Size and XXH3 of a whole file.
fn hash_file(root: &Root, rel: &str) -> io::Result<(u64, u64)> {
    let mut h = Hashing {
        inner: root.open(rel)?,
        hash: Xxh3::new(),
        bytes: 0,
    };
    io::copy(&mut h, &mut io::sink())?;
    Ok((h.hash.digest(), h.bytes))
}

struct ReadingSegment {
    /// For messages.
    path: String,
    manifest_index: usize,
    dec: zstd::stream::read::Decoder<'static, BufReader<Hashing<Box<dyn Read + Send>>>>,
    records: u64,
    last_offset: Option<i64>,
}

pub struct Records<'a> {
    reader: std::borrow::Cow<'a, PartitionReader>,
    next_segment: usize,
    from: i64,
    cur: Option<ReadingSegment>,
    failed: bool,
    /// Check each segment's hash before reading it (`into_checked_records`).
    check_first: bool,
}

impl Records<'_> {
    /// A segment is open (its decoder holds memory until the segment's last record is read).
    pub fn in_segment(&self) -> bool {
        self.cur.is_some()
    }

    fn corrupt(
        &mut self,
        path: &str,
        detail: String,
    ) -> Option<Result<ArchivedRecord, ArchiveError>> {
        self.failed = true;
        Some(Err(ArchiveError::Corrupt {
            path: path.to_string(),
            detail,
        }))
    }
}

impl Iterator for Records<'_> {
    type Item = Result<ArchivedRecord, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if self.cur.is_none() {
                let i = self.next_segment;
                let m = self.reader.manifests.get(i)?;
                self.next_segment += 1;
                let rel = join(&self.reader.dir, &m.segment);
                let path = self.reader.root.name_of(&rel);
                if self.check_first {
                    let (xxh3, bytes) = (m.xxh3.clone(), m.compressed_bytes);
                    match hash_file(&self.reader.root, &rel) {
                        Ok((hash, n)) if format!("{hash:016x}") == xxh3 && n == bytes => {}
                        Ok((hash, n)) => {
                            return self.corrupt(&path, format!("checksum {hash:016x} over {n} bytes, its manifest says {xxh3} over {bytes}"))
                        }
                        Err(e) => return self.corrupt(&path, format!("cannot read: {e}")),
                    }
                }
                let f = match self.reader.root.open(&rel) {
                    Ok(f) => f,
                    Err(e) => return self.corrupt(&path, format!("cannot open: {e}")),
                };
                let h = Hashing {
                    inner: f,
                    hash: Xxh3::new(),
                    bytes: 0,
                };
                let mut dec = match zstd::stream::read::Decoder::with_buffer(BufReader::new(h)) {
                    Ok(d) => d,
                    Err(e) => return self.corrupt(&path, format!("not zstd: {e}")),
                };
                let mut magic = [0u8; 8];
                if let Err(e) = dec.read_exact(&mut magic) {
                    return self.corrupt(&path, format!("cannot read its header: {e}"));
                }
                if &magic != MAGIC {
                    return self.corrupt(&path, "not a kmirror segment (bad header)".into());
                }
                self.cur = Some(ReadingSegment {
                    path,
                    manifest_index: i,
                    dec,
                    records: 0,
                    last_offset: None,
                });
            }
            let cur = self.cur.as_mut().expect("a segment is being read");
            let mut len = [0u8; 4];
            match read_full(&mut cur.dec, &mut len) {
                Ok(0) => {
                    // The end of the segment: it must be exactly what its manifest says.
                    let cur = self.cur.take().expect("a segment is being read");
                    let m = &self.reader.manifests[cur.manifest_index];
                    let mut inner = cur.dec.finish().into_inner();
                    // Hash whatever the decoder did not need (there should be nothing).
                    let _ = io::copy(&mut inner, &mut io::sink());
                    let (hash, bytes) = (inner.hash.digest(), inner.bytes);
                    let problem = if cur.records != m.records {
                        Some(format!(
                            "{} records, its manifest says {}",
                            cur.records, m.records
                        ))
                    } else if cur.last_offset != Some(m.last_offset) {
                        Some(format!(
                            "last offset {:?}, its manifest says {}",
                            cur.last_offset, m.last_offset
                        ))
                    } else if format!("{hash:016x}") != m.xxh3 || bytes != m.compressed_bytes {
                        Some(format!(
                            "checksum {hash:016x} over {bytes} bytes, its manifest says {} over {}",
                            m.xxh3, m.compressed_bytes
                        ))
                    } else {
                        None
                    };
                    if let Some(p) = problem {
                        return self.corrupt(&cur.path, p);
                    }
                    continue;
                }
                Ok(4) => {}
                Ok(_) => {
                    let path = cur.path.clone();
                    return self.corrupt(&path, "ends inside a record".into());
                }
                Err(e) => {
                    let path = cur.path.clone();
                    return self.corrupt(&path, format!("cannot decompress: {e}"));
                }
            }
            let n = u32::from_le_bytes(len);
            if n > MAX_RECORD_BYTES {
                let path = cur.path.clone();
                return self.corrupt(&path, format!("a record of {n} bytes"));
            }
            let mut body = vec![0u8; n as usize];
            if let Err(e) = cur.dec.read_exact(&mut body) {
                let path = cur.path.clone();
                return self.corrupt(&path, format!("ends inside a record: {e}"));
            }
            let rec = match decode(&body) {
                Ok(r) => r,
                Err(e) => {
                    let path = cur.path.clone();
                    return self.corrupt(&path, e);
                }
            };
            if let Some(l) = cur.last_offset.filter(|l| rec.offset <= *l) {
                let path = cur.path.clone();
                return self.corrupt(&path, format!("offset {} after {l}", rec.offset));
            }
            cur.records += 1;
            cur.last_offset = Some(rec.offset);
            if rec.offset >= self.from {
                return Some(Ok(rec));
            }
        }
    }
}

/// Reads until `buf` is full or the stream ends; the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64) -> ArchivedRecord {
        ArchivedRecord {
            offset,
            ts_type: if offset % 2 == 0 {
                TsType::Create
            } else {
                TsType::LogAppend
            },
            timestamp: 1_700_000_000_000 + offset,
            key: match offset % 3 {
                0 => None,
                1 => Some(Vec::new()),
                _ => Some(vec![0, 0xff, offset as u8]),
            },
            value: match offset % 4 {
                0 => None,
                1 => Some(Vec::new()),
                _ => Some(format!("value {offset}").into_bytes()),
            },
            headers: (0..offset % 3)
                .map(|i| (b"h".to_vec(), (i % 2 == 0).then(|| vec![i as u8])))
                .collect(),
        }
    }

    fn append(w: &mut PartitionWriter, r: &ArchivedRecord) -> Option<Manifest> {
        let headers: Vec<(&[u8], Option<&[u8]>)> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_deref()))
            .collect();
        w.append(&RecordRef {
            offset: r.offset,
            ts_type: r.ts_type,
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: &headers,
        })
        .unwrap()
    }

    fn limits(n: u64) -> SegmentLimits {
        SegmentLimits {
            max_bytes: u64::MAX,
            max_records: n,
        }
    }

    fn read_all(root: &std::path::Path, from: i64) -> Vec<ArchivedRecord> {
        PartitionReader::open(&Root::dir(root), "t", 0)
            .unwrap()
            .records(from)
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn records_round_trip_byte_for_byte_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            PartitionWriter::open(&Root::dir(dir.path()), "t", 0, "src/t/0", limits(7)).unwrap();
        let want: Vec<ArchivedRecord> = (0..50).map(|i| rec(i * 2)).collect();
        let mut sealed = 0;
        for r in &want {
            sealed += append(&mut w, r).is_some() as usize;
        }
        let last = w.seal(Some(1000)).unwrap().unwrap();
        assert_eq!((sealed, last.records, last.next_offset), (7, 1, 1000));
        assert_eq!(read_all(dir.path(), 0), want);
        assert_eq!(read_all(dir.path(), 51), want[26..].to_vec());
        assert_eq!(
            super::super::partitions(&Root::dir(dir.path())).unwrap(),
            vec![("t".to_string(), 0)]
        );
        // Reopened: continues where the committed segments end, skipping what they hold.
        let mut w =
            PartitionWriter::open(&Root::dir(dir.path()), "t", 0, "src/t/0", limits(7)).unwrap();
        assert_eq!(w.next_offset(), Some(1000));
        assert!(append(&mut w, &rec(98)).is_none());
        assert_eq!(w.already_archived, 1);
    }

    #[test]
    fn a_crash_before_the_manifest_leaves_nothing_claimed_and_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartitionWriter::open(&Root::dir(dir.path()), "t", 0, "", limits(100)).unwrap();
        for i in 0..10 {
            append(&mut w, &rec(i));
        }
        w.seal(None).unwrap();
        for i in 10..20 {
            append(&mut w, &rec(i));
        }
        // "Crash": the open segment is never sealed; a renamed segment without manifest too.
        std::mem::forget(w);
        let pdir = dir.path().join(partition_dir("t", 0));
        fs::write(pdir.join("00000000000000000030.seg.zst"), b"half written").unwrap();
        assert_eq!(
            read_all(dir.path(), 0).len(),
            10,
            "only committed records are read"
        );
        let w = PartitionWriter::open(&Root::dir(dir.path()), "t", 0, "", limits(100)).unwrap();
        assert_eq!(w.next_offset(), Some(10));
        let left: Vec<String> = fs::read_dir(&pdir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left.len(), 2, "uncommitted files removed: {left:?}");
    }

    #[test]
    fn a_damaged_segment_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            PartitionWriter::open(&Root::dir(dir.path()), "t", 0, "", limits(1000)).unwrap();
        for i in 0..200 {
            append(&mut w, &rec(i));
        }
        let m = w.seal(None).unwrap().unwrap();
        let seg = dir.path().join(partition_dir("t", 0)).join(&m.segment);
        let mut bytes = fs::read(&seg).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&seg, &bytes).unwrap();
        let r = PartitionReader::open(&Root::dir(dir.path()), "t", 0).unwrap();
        let err = r.records(0).find_map(Result::err).expect("an error");
        assert!(err.to_string().contains(&m.segment), "{err}");
        // A truncated segment no longer matches its manifest's size.
        fs::write(&seg, &bytes[..mid]).unwrap();
        let err = PartitionReader::open(&Root::dir(dir.path()), "t", 0).expect_err("refused");
        assert!(err.to_string().contains("its manifest says"), "{err}");
    }
}
