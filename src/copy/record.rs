//! Byte-exact access to a source record: key, value, timestamp and headers as raw bytes.
//!
//! rust-rdkafka's `Headers::get` turns header names into `&str` with an `unwrap`, which
//! panics on a non-UTF-8 name; a mirror must copy such records, not crash on them. So the
//! copy path only ever duplicates headers wholesale (`detach`, a C-level copy), and the few
//! places that look inside headers use librdkafka's raw accessor here.

use std::ffi::CStr;

use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedHeaders};
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

/// The headers of a consumed message, name and value as bytes, in order.
pub fn raw_headers<'a, M: Message<Headers = BorrowedHeaders>>(msg: &'a M) -> Vec<RawHeader<'a>> {
    let mut out = Vec::new();
    let Some(headers) = msg.headers() else {
        return out;
    };
    // SAFETY: `headers` is the native list behind the message (cast as rust-rdkafka does),
    // kept alive by librdkafka with the message; the slices borrow from `msg`.
    unsafe {
        let hdrs = headers as *const BorrowedHeaders as *mut rdsys::rd_kafka_headers_t;
        let mut idx = 0;
        loop {
            let mut name: *const std::os::raw::c_char = std::ptr::null();
            let mut value: *const std::os::raw::c_void = std::ptr::null();
            let mut size: usize = 0;
            let err = rdsys::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size);
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            let name = CStr::from_ptr(name).to_bytes();
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value as *const u8, size));
            out.push(RawHeader { name, value });
            idx += 1;
        }
    }
    out
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
    let s = std::str::from_utf8(value).ok()?;
    let mut it = s.rsplitn(3, '/');
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let (who, topic) = it.next()?.split_once('/')?;
    let (route, cluster) = match who.split_once('@') {
        Some((r, c)) => (Some(r), c),
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
/// `LogAppendTime` cannot keep them. (FNV-1a with length prefixes, so field boundaries count.)
pub fn content_digest(msg: &BorrowedMessage<'_>, ignore: &[&str]) -> u64 {
    let mut h = Fnv::new();
    h.field(msg.key());
    h.field(msg.payload());
    for hd in raw_headers(msg) {
        if hd.name == PROVENANCE_HEADER.as_bytes() || ignore.iter().any(|n| n.as_bytes() == hd.name)
        {
            continue;
        }
        h.field(Some(hd.name));
        h.field(hd.value);
    }
    h.0
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
    fn field(&mut self, v: Option<&[u8]>) {
        match v {
            None => self.write(&u64::MAX.to_le_bytes()),
            Some(b) => {
                self.write(&(b.len() as u64).to_le_bytes());
                self.write(b);
            }
        }
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
}
