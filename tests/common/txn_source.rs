//! A source cluster holding what neither broker here can show a reader: a partition with an
//! aborted transaction. librdkafka's mock cluster writes no commit or abort markers, and
//! tansu writes them but never lists the aborted transactions in its Fetch answers, so on
//! both a stock read_committed consumer sees aborted records (shared/BROKERS.md). This
//! double speaks just enough of the wire protocol for librdkafka's consumer: ApiVersions,
//! Metadata v4, ListOffsets v1-v2 and Fetch v4 (the first version with an isolation level
//! and the aborted-transaction list), over one topic of one partition whose log is fixed:
//!
//! | offsets | what |
//! |---|---|
//! | 0-2 | plain records `committed-0` .. `committed-2` |
//! | 3-5 | producer 7's transactional records `aborted-3` .. `aborted-5` |
//! | 6 | producer 7's ABORT marker |
//! | 7-9 | producer 8's transactional records `committed-7` .. `committed-9` |
//! | 10 | producer 8's COMMIT marker |
//! | 11-12 | plain records `committed-11`, `committed-12` |
//!
//! The high watermark and the last stable offset are 13. A read_committed Fetch lists
//! producer 7's transaction (first offset 3) as aborted, as a Kafka broker does; a
//! read_uncommitted one lists nothing. Record batches are encoded as Kafka's v2 format
//! (magic 2, CRC-32C), one batch per row of the table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::kafka_double::{metadata, Reader, Server, Writer, API_METADATA, API_VERSIONS};

const API_PRODUCE: i16 = 0;
const API_FETCH: i16 = 1;
const API_LIST_OFFSETS: i16 = 2;

/// Produce is advertised (never answered): librdkafka turns on the v2 record format
/// (MsgVer2), and with it Fetch v4, only for a broker that has both Produce v3 and Fetch v4.
const SUPPORTED: [(i16, i16, i16); 5] = [
    (API_PRODUCE, 3, 3),
    (API_FETCH, 4, 4),
    (API_LIST_OFFSETS, 1, 2),
    (API_METADATA, 4, 4),
    (API_VERSIONS, 0, 3),
];

/// The offset after the log's last record (high watermark and last stable offset).
pub const END: i64 = 13;
/// The offsets of the aborted transaction's records.
pub const ABORTED: std::ops::Range<i64> = 3..6;
/// The offsets that hold a commit or abort marker (no record a reader sees).
pub const MARKERS: [i64; 2] = [6, 10];

pub struct TxnSource {
    pub bootstrap: String,
    /// Every request seen: (api key, version).
    pub requests: Arc<Mutex<Vec<(i16, i16)>>>,
    /// The isolation level of every Fetch (0 read_uncommitted, 1 read_committed).
    pub fetch_isolation: Arc<Mutex<Vec<i8>>>,
    _server: Server,
}

impl TxnSource {
    /// Serves `topic` (one partition, the log above) on a free loopback port.
    pub fn start(topic: &str) -> TxnSource {
        let topics: BTreeMap<String, i32> = [(topic.to_string(), 1)].into();
        let log = Arc::new(log());
        let isolation = Arc::new(Mutex::new(Vec::new()));
        let iso = isolation.clone();
        let server = Server::start(&SUPPORTED, move |api, version, port, r, w| {
            match api {
                API_METADATA => metadata(r, w, port, &topics),
                API_LIST_OFFSETS => list_offsets(r, w, version),
                API_FETCH => fetch(r, w, &log, &iso),
                _ => return false,
            }
            true
        });
        TxnSource {
            bootstrap: server.bootstrap.clone(),
            requests: server.requests.clone(),
            fetch_isolation: isolation,
            _server: server,
        }
    }
}

/// One record batch: its base offset, its last offset and its encoding.
struct Batch {
    base: i64,
    last: i64,
    bytes: Vec<u8>,
}

const TS: i64 = 1_700_000_000_000;

fn log() -> Vec<Batch> {
    let values = |r: std::ops::Range<i64>, what: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        r.map(|o| {
            (
                format!("k{o}").into_bytes(),
                format!("{what}-{o}").into_bytes(),
            )
        })
        .collect()
    };
    // A control record: key (version 0, type 0 abort / 1 commit), value (version 0,
    // coordinator epoch 0).
    let marker = |commit: bool| vec![(vec![0, 0, 0, commit as u8], vec![0, 0, 0, 0, 0, 0])];
    let plain = (-1, 0);
    let txn = |pid| (pid, 0x10);
    let control = |pid| (pid, 0x30);
    [
        (0, plain, values(0..3, "committed")),
        (3, txn(7), values(3..6, "aborted")),
        (6, control(7), marker(false)),
        (7, txn(8), values(7..10, "committed")),
        (10, control(8), marker(true)),
        (11, plain, values(11..13, "committed")),
    ]
    .into_iter()
    .map(|(base, (pid, attributes), records)| Batch {
        base,
        last: base + records.len() as i64 - 1,
        bytes: batch(base, pid, attributes, &records),
    })
    .collect()
}

/// A v2 record batch (KIP-98's format): `attributes` 0x10 transactional, 0x20 control.
fn batch(base: i64, pid: i64, attributes: i16, records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut recs = Vec::new();
    for (i, (k, v)) in records.iter().enumerate() {
        let mut r = vec![0u8]; // record attributes
        zigzag(&mut r, 0); // timestamp delta
        zigzag(&mut r, i as i64); // offset delta
        zigzag(&mut r, k.len() as i64);
        r.extend_from_slice(k);
        zigzag(&mut r, v.len() as i64);
        r.extend_from_slice(v);
        zigzag(&mut r, 0); // headers
        zigzag(&mut recs, r.len() as i64);
        recs.extend_from_slice(&r);
    }
    let transactional = pid >= 0;
    let mut body = Writer::default();
    body.i16(attributes);
    body.i32(records.len() as i32 - 1); // last offset delta
    body.i64(TS + base); // first timestamp
    body.i64(TS + base); // max timestamp
    body.i64(pid);
    body.i16(if transactional { 0 } else { -1 }); // producer epoch
    body.i32(if transactional && attributes & 0x20 == 0 {
        0
    } else {
        -1
    }); // base sequence
    body.i32(records.len() as i32);
    body.0.extend_from_slice(&recs);
    let mut w = Writer::default();
    w.i64(base);
    w.i32(4 + 1 + 4 + body.0.len() as i32); // batch length: from the leader epoch on
    w.i32(0); // partition leader epoch
    w.i8(2); // magic
    w.i32(crc32c(&body.0) as i32);
    w.0.extend_from_slice(&body.0);
    w.0
}

fn zigzag(out: &mut Vec<u8>, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        out.push((u as u8) | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

/// CRC-32C (Castagnoli), as record batch v2 checksums its contents.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn list_offsets(r: &mut Reader, w: &mut Writer, version: i16) {
    r.i32(); // replica id
    if version >= 2 {
        r.take::<1>(); // isolation level: the log is stable to its end either way
        w.i32(0); // throttle
    }
    let topics = r.i32();
    w.i32(topics);
    for _ in 0..topics {
        let topic = r.nullable_string().unwrap_or_default();
        w.string(&topic);
        let parts = r.i32();
        w.i32(parts);
        for _ in 0..parts {
            let (p, ts) = (r.i32(), r.i64());
            w.i32(p);
            w.i16(0);
            let offset = match ts {
                -2 => 0,
                -1 => END,
                _ => -1, // no timestamp lookup
            };
            w.i64(-1);
            w.i64(offset);
        }
    }
}

fn fetch(r: &mut Reader, w: &mut Writer, log: &[Batch], isolation: &Mutex<Vec<i8>>) {
    r.i32(); // replica id
    let max_wait = r.i32();
    r.i32(); // min bytes
    r.i32(); // max bytes
    let iso = r.take::<1>()[0] as i8;
    isolation.lock().unwrap().push(iso);
    let mut answer = Vec::new();
    for _ in 0..r.i32() {
        let topic = r.nullable_string().unwrap_or_default();
        let mut parts = Vec::new();
        for _ in 0..r.i32() {
            let (p, offset) = (r.i32(), r.i64());
            r.i32(); // partition max bytes
            parts.push((p, offset));
        }
        answer.push((topic, parts));
    }
    if answer.iter().flat_map(|(_, ps)| ps).all(|(_, o)| *o >= END) {
        // Nothing new: wait as a broker would (bounded), so the consumer does not spin.
        std::thread::sleep(Duration::from_millis(max_wait.clamp(0, 100) as u64));
    }
    w.i32(0); // throttle
    w.i32(answer.len() as i32);
    for (topic, parts) in answer {
        w.string(&topic);
        w.i32(parts.len() as i32);
        for (p, offset) in parts {
            w.i32(p);
            w.i16(if (0..=END).contains(&offset) { 0 } else { 1 }); // 1: OFFSET_OUT_OF_RANGE
            w.i64(END); // high watermark
            w.i64(END); // last stable offset
            if iso == 1 {
                w.i32(1); // aborted transactions: producer 7's, from offset 3
                w.i64(7);
                w.i64(ABORTED.start);
            } else {
                w.i32(-1);
            }
            let mut records = Vec::new();
            for b in log.iter().filter(|b| b.last >= offset && offset <= END) {
                records.extend_from_slice(&b.bytes);
            }
            w.i32(records.len() as i32);
            w.0.extend_from_slice(&records);
        }
    }
}
