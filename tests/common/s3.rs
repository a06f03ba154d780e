//! An S3-compatible server for the tests of `s3://` archives: `moto_server` (PyPI
//! `moto[server]`, installed by `scripts/moto.sh`; `KMIRROR_MOTO` names it) on a free
//! loopback port, one per test, with one bucket. The tests look at the bucket with a client
//! of their own (explicit endpoint and credentials), not through kmirror's archive code.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

pub const BUCKET: &str = "kmirror-test";

pub struct S3Server {
    child: Child,
    pub port: u16,
}

fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("KMIRROR_MOTO") {
        return PathBuf::from(p);
    }
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto.sh"))
        .arg("install")
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/moto.sh install");
    assert!(out.status.success(), "scripts/moto.sh install failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

impl S3Server {
    /// Starts a server and creates the bucket.
    pub fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = s.http("PUT", &format!("/{BUCKET}")) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The environment kmirror reads the server's address and credentials from.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), "kmirror-test-key".into()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                "kmirror-test-secret-DO-NOT-PRINT".into(),
            ),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
        ]
    }

    /// A client of the bucket, made independently of kmirror's (explicit endpoint and
    /// credentials rather than the environment).
    fn client(&self) -> (tokio::runtime::Runtime, impl ObjectStore) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{}", self.port))
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("kmirror-test-key")
            .with_secret_access_key("kmirror-test-secret-DO-NOT-PRINT")
            .build()
            .unwrap();
        (rt, store)
    }

    /// Every object's key under `prefix`, with its size.
    pub fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let (rt, store) = self.client();
        let prefix = ObjectPath::from(prefix);
        rt.block_on(async {
            let mut out = Vec::new();
            let mut s = store.list(Some(&prefix));
            while let Some(o) = s.next().await {
                let o = o.expect("list the bucket");
                out.push((o.location.to_string(), o.size));
            }
            out.sort();
            out
        })
    }

    /// Overwrites the object `key` with `bytes`.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let (rt, store) = self.client();
        rt.block_on(store.put(&ObjectPath::from(key), PutPayload::from(bytes.to_vec())))
            .expect("put an object");
    }

    /// The object `key`.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let (rt, store) = self.client();
        rt.block_on(async { store.get(&ObjectPath::from(key)).await?.bytes().await })
            .expect("get an object")
            .to_vec()
    }

    fn http(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        self.request(method, path, b"")
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )?;
        s.write_all(body)?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let code = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((code, body))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
