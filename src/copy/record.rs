//! Byte-exact access to a source record: key, value, timestamp and headers as raw bytes.
//!
//! rust-rdkafka's `Headers::get` turns header names into `&str` with an `unwrap`, which
//! panics on a non-UTF-8 name; a mirror must copy such records, not crash on them. So the
//! copy path only ever duplicates headers wholesale (`detach`, a C-level copy), and the few
//! places that look inside headers use librdkafka's raw accessor here.

use std::ffi::CStr;

use rdkafka::message::{BorrowedHeaders, Message, OwnedHeaders};
use rdkafka_sys as rdsys;

/// The header name kmirror adds to every copied record (unless `provenance = false`):
/// `<route>@<source cluster>/<topic>/<partition>/<offset>`. The route is named so that two
/// routes writing one target topic can each find their own records; values without it
/// (`<source cluster>/<topic>/<partition>/<offset>`, written before) are still understood.
pub const PROVENANCE_HEADER: &str = "kmirror.source";

/// One header as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader<'a> {
    pub name: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// The headers of a consumed message, name and value as bytes, in order, read in place
/// (no allocation: verify calls this several times per record).
pub fn headers_of<'a, M: Message<Headers = BorrowedHeaders>>(msg: &'a M) -> RawHeaders<'a> {
    headers_in(msg.headers())
}

/// A header list (of a message borrowed for `'a`) as raw bytes, in order, read in place.
pub fn headers_in(headers: Option<&BorrowedHeaders>) -> RawHeaders<'_> {
    RawHeaders {
        // SAFETY (of the cast): `headers` is the native list behind a message, cast as
        // rust-rdkafka does; it lives as long as that message, which `'a` borrows.
        list: headers.map_or(std::ptr::null_mut(), |h| {
            h as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t
        }),
        idx: 0,
        _msg: std::marker::PhantomData,
    }
}

/// Iterator over a message's headers as raw bytes; see [`headers_of`].
pub struct RawHeaders<'a> {
    list: *mut rdsys::rd_kafka_headers_t,
    idx: usize,
    _msg: std::marker::PhantomData<&'a BorrowedHeaders>,
}

impl<'a> Iterator for RawHeaders<'a> {
    type Item = RawHeader<'a>;

    fn next(&mut self) -> Option<RawHeader<'a>> {
        if self.list.is_null() {
            return None;
        }
        let mut name: *const std::os::raw::c_char = std::ptr::null();
        let mut value: *const std::os::raw::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `list` is the native header list of a message borrowed for `'a` (see
        // `headers_of`), only read here; the slices borrow from that message.
        unsafe {
            let err = rdsys::rd_kafka_header_get_all(
                self.list, self.idx, &mut name, &mut value, &mut size,
            );
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                self.list = std::ptr::null_mut();
                return None;
            }
            self.idx += 1;
            let name = CStr::from_ptr(name).to_bytes();
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value as *const u8, size));
            Some(RawHeader { name, value })
        }
    }
}

/// The headers of a consumed message, name and value as bytes, in order.
pub fn raw_headers<'a, M: Message<Headers = BorrowedHeaders>>(msg: &'a M) -> Vec<RawHeader<'a>> {
    headers_of(msg).collect()
}

/// Header names of a dead-lettered record: why, which route, and the source position.
pub const DLQ_ERROR_HEADER: &str = "kmirror.dlq.error";
pub const DLQ_ROUTE_HEADER: &str = "kmirror.dlq.route";
pub const DLQ_SOURCE_HEADER: &str = "kmirror.dlq.source";

/// Removes every header called `name`.
pub fn remove_header(headers: &mut OwnedHeaders, name: &str) {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return;
    };
    // SAFETY: `as_borrowed` is a view of the same native header list (rust-rdkafka casts
    // the pointer the same way); we own it exclusively through `&mut`, and librdkafka's
    // remove only edits that list.
    unsafe {
        let ptr = headers.as_borrowed() as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t;
        rdsys::rd_kafka_header_remove(ptr, cname.as_ptr());
    }
}

/// A copy of `headers` without its last entry (names copied as bytes: they need not be
/// UTF-8). A copy the target refused ends with the provenance header kmirror appended;
/// this gives back the headers it was read with, for its dead-letter copy.
pub fn without_last_header(headers: &OwnedHeaders) -> OwnedHeaders {
    let out = OwnedHeaders::new();
    // SAFETY: both pointers are native header lists (cast as in `remove_header`); `headers`
    // is only read, `out` is ours alone, and header_add copies name and value.
    unsafe {
        let src = headers.as_borrowed() as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t;
        let dst = out.as_borrowed() as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t;
        let n = rdsys::rd_kafka_header_cnt(src);
        for idx in 0..n.saturating_sub(1) {
            let mut name: *const std::os::raw::c_char = std::ptr::null();
            let mut value: *const std::os::raw::c_void = std::ptr::null();
            let mut size: usize = 0;
            if rdsys::rd_kafka_header_get_all(src, idx, &mut name, &mut value, &mut size)
                != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                break;
            }
            let size = if value.is_null() { 0 } else { size as isize };
            rdsys::rd_kafka_header_add(dst, name, -1, value, size);
        }
    }
    out
}

/// Size the in-flight bound charges for a record: key + value + headers.
pub fn record_bytes<M: Message<Headers = BorrowedHeaders>>(msg: &M) -> u32 {
    let n = msg.key().map_or(0, <[u8]>::len)
        + msg.payload().map_or(0, <[u8]>::len)
        + msg.headers().map_or(0, headers_bytes);
    n.min(u32::MAX as usize) as u32
}

/// Name + value bytes of a header list, read in place (no allocation: this is per record).
pub fn headers_bytes(headers: &BorrowedHeaders) -> usize {
    let mut n = 0;
    // SAFETY: the pointer is the native list behind `headers` (cast as rust-rdkafka does),
    // only read here, and valid while `headers` is borrowed.
    unsafe {
        let ptr = headers as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t;
        for idx in 0..rdsys::rd_kafka_header_cnt(ptr) {
            let mut name: *const std::os::raw::c_char = std::ptr::null();
            let mut value: *const std::os::raw::c_void = std::ptr::null();
            let mut size: usize = 0;
            if rdsys::rd_kafka_header_get_all(ptr, idx, &mut name, &mut value, &mut size)
                != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                break;
            }
            n += CStr::from_ptr(name).to_bytes().len() + if value.is_null() { 0 } else { size };
        }
    }
    n
}

/// The provenance header value for a source record.
pub fn provenance_value(cluster: &str, topic: &str, partition: i32, offset: i64) -> String {
    format!("{cluster}/{topic}/{partition}/{offset}")
}

/// The fixed part of a copy task's provenance values, `<route>@<cluster>/<topic>/<partition>/`:
/// made once per task, so the copy path only appends each record's offset.
pub fn provenance_prefix(route: &str, cluster: &str, topic: &str, partition: i32) -> String {
    format!("{route}@{cluster}/{topic}/{partition}/")
}

/// A parsed provenance value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provenance<'a> {
    /// The route that wrote the copy; `None` in values written before routes were named.
    pub route: Option<&'a str>,
    pub cluster: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Parses a provenance value, with or without its `<route>@` (route and cluster names
/// cannot hold `@` or `/`, topic names cannot hold `/`).
pub fn parse_provenance_full(value: &[u8]) -> Option<Provenance<'_>> {
    // Byte searches rather than `rsplitn`/`split_once` on chars: verify parses one of these
    // per target record.
    let s = std::str::from_utf8(value).ok()?;
    let find = |s: &str, c: u8| s.bytes().position(|b| b == c);
    let last = s.bytes().rposition(|b| b == b'/')?;
    let mid = s[..last].bytes().rposition(|b| b == b'/')?;
    let offset = s[last + 1..].parse().ok()?;
    let partition = s[mid + 1..last].parse().ok()?;
    let head = &s[..mid];
    let slash = find(head, b'/')?;
    let (who, topic) = (&head[..slash], &head[slash + 1..]);
    let (route, cluster) = match find(who, b'@') {
        Some(at) => (Some(&who[..at]), &who[at + 1..]),
        None => (None, who),
    };
    Some(Provenance {
        route,
        cluster,
        topic,
        partition,
        offset,
    })
}

/// Parses a provenance value back into (cluster, topic, partition, offset).
pub fn parse_provenance(value: &[u8]) -> Option<(&str, &str, i32, i64)> {
    let p = parse_provenance_full(value)?;
    Some((p.cluster, p.topic, p.partition, p.offset))
}

/// A 64-bit digest of what a copy must preserve besides its timestamp: key, value and
/// headers other than provenance and those named in `ignore` (headers a route sets or
/// drops). `verify` compares source and target digests, so an altered record is found, not
/// just a missing one; it compares timestamps apart, because a target topic with
/// `LogAppendTime` cannot keep them.
///
/// Verify computes it for both sides within one run and never stores it (block digests,
/// `.verified` positions and checkpoints hold none), so its function may change between
/// versions without a format version.
pub fn content_digest<M: Message<Headers = BorrowedHeaders>>(msg: &M, ignore: &[&str]) -> u64 {
    fields_digest(msg.key(), msg.payload(), headers_of(msg), ignore)
}

/// [`content_digest`] of a record given as its parts.
pub fn fields_digest<'a>(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl IntoIterator<Item = RawHeader<'a>>,
    ignore: &[&str],
) -> u64 {
    let mut h = WordHash::new();
    h.field(key);
    h.field(value);
    for hd in headers {
        if hd.name == PROVENANCE_HEADER.as_bytes() || ignore.iter().any(|n| n.as_bytes() == hd.name)
        {
            continue;
        }
        h.field(Some(hd.name));
        h.field(hd.value);
    }
    h.finish()
}

/// A hash over 8-byte words (it replaced a byte-at-a-time FNV-1a, a seventh of verify's CPU).
/// Each field is its length (or a marker for "absent") then its bytes, the last word padded
/// with zeros, so field boundaries count. Every step (xor a word in, multiply by an odd
/// constant, xor-shift) is a bijection of the state, so two inputs of equal length that differ
/// in a single word always digest differently; other differences collide only by accident.
/// Not cryptographic: verify guards against accidents, not an adversary (see `verify::digest`).
struct WordHash(u64);

impl WordHash {
    const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new() -> Self {
        WordHash(0xcbf2_9ce4_8422_2325)
    }

    #[inline(always)]
    fn word(&mut self, w: u64) {
        let x = (self.0 ^ w).wrapping_mul(Self::MUL);
        self.0 = x ^ (x >> 29);
    }

    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last));
        }
    }

    fn field(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.word(u64::MAX),
            Some(b) => {
                self.word(b.len() as u64);
                self.bytes(b);
            }
        }
    }

    /// murmur3's finaliser, so every input bit reaches every output bit.
    fn finish(&self) -> u64 {
        let mut k = self.0;
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_round_trip() {
        let v = provenance_value("src-a", "orders.v2", 11, 123456789);
        assert_eq!(
            parse_provenance(v.as_bytes()),
            Some(("src-a", "orders.v2", 11, 123456789))
        );
        assert_eq!(parse_provenance(b"garbage"), None);
    }

    #[test]
    fn provenance_names_the_route_and_old_values_still_parse() {
        let v = format!(
            "{}42",
            provenance_prefix("acme.eu", "src-a", "orders.v2", 3)
        );
        assert_eq!(v, "acme.eu@src-a/orders.v2/3/42");
        let p = parse_provenance_full(v.as_bytes()).unwrap();
        assert_eq!(
            (p.route, p.cluster, p.topic, p.partition, p.offset),
            (Some("acme.eu"), "src-a", "orders.v2", 3, 42)
        );
        assert_eq!(
            parse_provenance(v.as_bytes()),
            Some(("src-a", "orders.v2", 3, 42))
        );
        let old = parse_provenance_full(b"src-a/orders.v2/3/42").unwrap();
        assert_eq!((old.route, old.cluster), (None, "src-a"));
    }

    fn h<'a>(k: Option<&[u8]>, v: Option<&[u8]>, hd: &[(&'a [u8], Option<&'a [u8]>)]) -> u64 {
        let hs = hd.iter().map(|(name, value)| RawHeader {
            name,
            value: *value,
        });
        fields_digest(k, v, hs, &["x-set"])
    }

    #[test]
    fn content_digest_sees_every_compared_byte_and_field_boundary() {
        let base = h(Some(b"key-1"), Some(&[7u8; 64]), &[(b"a", Some(b"1"))]);
        // The same record digests the same; provenance and ignored headers do not count.
        assert_eq!(
            base,
            h(Some(b"key-1"), Some(&[7u8; 64]), &[(b"a", Some(b"1"))])
        );
        assert_eq!(
            base,
            h(
                Some(b"key-1"),
                Some(&[7u8; 64]),
                &[
                    (PROVENANCE_HEADER.as_bytes(), Some(b"r@c/t/0/1")),
                    (b"a", Some(b"1")),
                    (b"x-set", Some(b"v")),
                ]
            )
        );
        // Any single bit of key or value, wherever it is (whole words and the padded tail).
        for len in [0usize, 1, 7, 8, 9, 64, 67] {
            let v = vec![0u8; len];
            let d = h(None, Some(&v), &[]);
            for i in 0..len {
                for bit in 0..8 {
                    let mut w = v.clone();
                    w[i] ^= 1 << bit;
                    assert_ne!(d, h(None, Some(&w), &[]), "len {len} byte {i} bit {bit}");
                }
            }
        }
        // Trailing zero bytes, absent against empty, and where one field ends and the next
        // begins all count.
        for (what, other) in [
            (
                "value + zero byte",
                h(Some(b"key-1"), Some(&[7u8; 65]), &[(b"a", Some(b"1"))]),
            ),
            ("no key", h(None, Some(&[7u8; 64]), &[(b"a", Some(b"1"))])),
            (
                "empty header value",
                h(Some(b"key-1"), Some(&[7u8; 64]), &[(b"a", Some(b""))]),
            ),
            (
                "no header value",
                h(Some(b"key-1"), Some(&[7u8; 64]), &[(b"a", None)]),
            ),
            ("no headers", h(Some(b"key-1"), Some(&[7u8; 64]), &[])),
            (
                "header twice",
                h(
                    Some(b"key-1"),
                    Some(&[7u8; 64]),
                    &[(b"a", Some(b"1")), (b"a", Some(b"1"))],
                ),
            ),
        ] {
            assert_ne!(base, other, "{what}");
        }
        assert_ne!(
            h(Some(b"ab"), Some(b"c"), &[]),
            h(Some(b"a"), Some(b"bc"), &[])
        );
        assert_ne!(
            h(None, None, &[(b"ab", Some(b"c"))]),
            h(None, None, &[(b"a", Some(b"bc"))])
        );
        assert_ne!(h(None, Some(b""), &[]), h(None, None, &[]));
        assert_ne!(h(Some(b""), None, &[]), h(None, Some(b""), &[]));
    }
}
