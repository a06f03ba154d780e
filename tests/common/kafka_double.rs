//! A protocol-level Kafka test double for the one request no broker here answers:
//! DeleteRecords (librdkafka's mock cluster lacks the API, tansu's storage refuses it).
//! It speaks just enough of the wire protocol over TCP for librdkafka's admin client:
//! ApiVersions (v0-v3), Metadata (v4 only, so librdkafka must pick it) and DeleteRecords
//! (v0-v1), advertises exactly those, and records every (topic, partition, offset) it is
//! asked to delete, answering each with that offset as the new low watermark.
//!
//! One broker (node 1) leads every partition of the topics it is given. Each connection is
//! served on its own thread; the listener thread ends when the double is dropped.
//!
//! [`Server`] (framing, request headers, ApiVersions) and [`metadata`] are shared with the
//! other protocol double, `txn_source`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const API_DELETE_RECORDS: i16 = 21;
pub(super) const API_METADATA: i16 = 3;
pub(super) const API_VERSIONS: i16 = 18;

/// (api key, min version, max version) this double answers.
const SUPPORTED: [(i16, i16, i16); 3] = [
    (API_DELETE_RECORDS, 0, 1),
    (API_METADATA, 4, 4),
    (API_VERSIONS, 0, 3),
];

pub struct KafkaDouble {
    pub bootstrap: String,
    /// Every DeleteRecords partition asked for, in arrival order: (topic, partition, offset).
    pub deletes: Arc<Mutex<Vec<(String, i32, i64)>>>,
    /// Every request seen: (api key, version).
    pub requests: Arc<Mutex<Vec<(i16, i16)>>>,
    _server: Server,
}

impl KafkaDouble {
    /// Serves `topics` (name -> partition count) on a free loopback port.
    pub fn start(topics: &[(&str, i32)]) -> KafkaDouble {
        let topics: BTreeMap<String, i32> =
            topics.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        let deletes = Arc::new(Mutex::new(Vec::new()));
        let d = deletes.clone();
        let server = Server::start(&SUPPORTED, move |api, _, port, r, w| {
            match api {
                API_METADATA => metadata(r, w, port, &topics),
                API_DELETE_RECORDS => delete_records(r, w, &d),
                _ => return false, // not advertised: librdkafka never sends it
            }
            true
        });
        KafkaDouble {
            bootstrap: server.bootstrap.clone(),
            deletes,
            requests: server.requests.clone(),
            _server: server,
        }
    }
}

fn delete_records(r: &mut Reader, w: &mut Writer, deletes: &Mutex<Vec<(String, i32, i64)>>) {
    let mut answer = Vec::new();
    for _ in 0..r.i32() {
        let topic = r.nullable_string().unwrap_or_default();
        let mut parts = Vec::new();
        for _ in 0..r.i32() {
            let (p, offset) = (r.i32(), r.i64());
            deletes.lock().unwrap().push((topic.clone(), p, offset));
            parts.push((p, offset));
        }
        answer.push((topic, parts));
    }
    w.i32(0); // throttle
    w.i32(answer.len() as i32);
    for (topic, parts) in answer {
        w.string(&topic);
        w.i32(parts.len() as i32);
        for (p, offset) in parts {
            w.i32(p);
            w.i64(offset); // the new low watermark
            w.i16(0);
        }
    }
}

/// What answers one request: (api key, version, the listener's port, the request body after
/// its header, the response body to write). `false`: not answered (the connection closes).
type Handler = dyn Fn(i16, i16, u16, &mut Reader, &mut Writer) -> bool + Send + Sync;

/// The wire protocol's frame and header handling, and ApiVersions, shared by the doubles:
/// a listener on a free loopback port, each connection served on its own thread, until
/// dropped.
pub(super) struct Server {
    pub(super) bootstrap: String,
    pub(super) requests: Arc<Mutex<Vec<(i16, i16)>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub(super) fn start(
        supported: &'static [(i16, i16, i16)],
        handler: impl Fn(i16, i16, u16, &mut Reader, &mut Writer) -> bool + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (h, r, s) = (handler.clone(), r.clone(), s.clone());
                        std::thread::spawn(move || serve(conn, port, supported, &*h, &r, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            bootstrap: format!("127.0.0.1:{port}"),
            requests,
            stop,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut conn: TcpStream,
    port: u16,
    supported: &[(i16, i16, i16)],
    handler: &Handler,
    requests: &Mutex<Vec<(i16, i16)>>,
    stop: &AtomicBool,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    while !stop.load(Ordering::Relaxed) {
        let mut len = [0u8; 4];
        match conn.read_exact(&mut len) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        if conn.read_exact(&mut buf).is_err() {
            return;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let mut r = Reader { b: &buf, at: 0 };
        let (api, version, correlation) = (r.i16(), r.i16(), r.i32());
        requests.lock().unwrap().push((api, version));
        r.nullable_string(); // client id (a classic string in every header version)
        let mut w = Writer::default();
        w.i32(correlation); // response header v0 (ApiVersions' is v0 even when flexible)
        if api == API_VERSIONS {
            w.i16(0);
            if version >= 3 {
                w.uvarint(supported.len() as u64 + 1);
            } else {
                w.i32(supported.len() as i32);
            }
            for &(k, min, max) in supported {
                w.i16(k);
                w.i16(min);
                w.i16(max);
                if version >= 3 {
                    w.uvarint(0);
                }
            }
            if version >= 1 {
                w.i32(0); // throttle
            }
            if version >= 3 {
                w.uvarint(0);
            }
        } else if !handler(api, version, port, &mut r, &mut w) {
            return;
        }
        let mut out = (w.0.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&w.0);
        if conn.write_all(&out).is_err() {
            return;
        }
    }
}

/// A Metadata v4 answer: one broker (node 1 on `port`) leading every partition of `topics`;
/// a topic asked for that is not there is UNKNOWN_TOPIC_OR_PARTITION.
pub(super) fn metadata(r: &mut Reader, w: &mut Writer, port: u16, topics: &BTreeMap<String, i32>) {
    // v4 request: topics (nullable array of strings), allow_auto_topic_creation.
    let asked: Vec<String> = match r.i32() {
        -1 => topics.keys().cloned().collect(),
        n => (0..n)
            .map(|_| r.nullable_string().unwrap_or_default())
            .collect(),
    };
    w.i32(0); // throttle
    w.i32(1); // brokers
    w.i32(1);
    w.string("127.0.0.1");
    w.i32(port as i32);
    w.i16(-1); // rack: null
    w.string("kafka-double"); // cluster id
    w.i32(1); // controller
    w.i32(asked.len() as i32);
    for t in &asked {
        let parts = topics.get(t).copied();
        w.i16(if parts.is_some() { 0 } else { 3 }); // UNKNOWN_TOPIC_OR_PARTITION
        w.string(t);
        w.i8(0); // is_internal
        let parts = parts.unwrap_or(0);
        w.i32(parts);
        for p in 0..parts {
            w.i16(0);
            w.i32(p);
            w.i32(1); // leader
            w.i32(1); // replicas
            w.i32(1);
            w.i32(1); // isr
            w.i32(1);
        }
    }
}

pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
    pub(super) at: usize,
}

impl Reader<'_> {
    pub(super) fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        out
    }
    pub(super) fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take())
    }
    pub(super) fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take())
    }
    pub(super) fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take())
    }
    pub(super) fn nullable_string(&mut self) -> Option<String> {
        let n = self.i16();
        if n < 0 {
            return None;
        }
        let s = String::from_utf8_lossy(&self.b[self.at..self.at + n as usize]).into_owned();
        self.at += n as usize;
        Some(s)
    }
}

#[derive(Default)]
pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn i8(&mut self, v: i8) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(super) fn string(&mut self, s: &str) {
        self.i16(s.len() as i16);
        self.0.extend_from_slice(s.as_bytes());
    }
    pub(super) fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
}
