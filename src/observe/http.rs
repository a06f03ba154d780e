//! The HTTP endpoint (`[http] listen` or `run --http`): `/metrics`, `/healthz`, `/readyz`,
//! `/status`. hyper (HTTP/1.1 only) on a current-thread tokio runtime of its own thread,
//! so a slow scraper never competes with the copy threads, and the copy path never waits
//! on it. The address is bound before the run starts, so a taken port is an error at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Observer;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} for the HTTP endpoint: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Connections served at once; more wait to be accepted. Scrapers and probes need a few.
const MAX_CONNECTIONS: usize = 32;

/// A client must send its request head within this, and a connection ends after
/// `CONNECTION_LIMIT` whatever it does: a slow or idle client cannot hold a slot forever.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const CONNECTION_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A running endpoint; dropping it stops the server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// The address actually bound (port 0 picks a free one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` and serves `observer` until the returned `Server` is dropped.
pub fn serve(addr: SocketAddr, observer: Arc<Observer>) -> Result<Server, HttpError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| HttpError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| HttpError::Bind { addr, source })?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kmirror-http".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("HTTP runtime");
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("HTTP endpoint on {bound} failed: {e}");
                        return;
                    }
                };
                let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
                loop {
                    let slot = tokio::select! {
                        _ = &mut stopped => return,
                        s = slots.clone().acquire_owned() => s.expect("semaphore never closed"),
                    };
                    let conn = tokio::select! {
                        _ = &mut stopped => return,
                        c = listener.accept() => c,
                    };
                    let stream = match conn {
                        Ok((s, _)) => s,
                        Err(e) => {
                            // Out of file descriptors and the like: the copy goes on.
                            tracing::debug!("HTTP accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let observer = observer.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let observer = observer.clone();
                            async move { Ok::<_, Infallible>(handle(&observer, &req)) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), svc);
                        let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
                        drop(slot);
                    });
                }
            });
        })
        .expect("spawn HTTP thread");
    tracing::info!("HTTP endpoint on http://{bound} (/metrics, /healthz, /readyz, /status)");
    Ok(Server {
        addr: bound,
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn reply(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn handle(observer: &Arc<Observer>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    let ok = |good: bool| {
        if good {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            super::metrics::render(observer),
        ),
        "/healthz" => {
            let (good, why) = observer.health();
            reply(ok(good), TEXT, format!("{why}\n"))
        }
        "/readyz" => {
            let (good, why) = observer.readiness();
            reply(ok(good), TEXT, format!("{why}\n"))
        }
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            format!("{:#}\n", observer.status_json()),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz, /readyz or /status\n".into(),
        ),
    }
}
