//! The terminal side of the binary: logging (text or JSON, `KMIRROR_LOG`), the few lines
//! main prints itself, errors rendered with their causes, a panic hook that redacts
//! secrets, and the signal threads (stop on SIGINT/SIGTERM, reload on SIGHUP).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kmirror::config::value;
use kmirror::redact::redact;

/// `--log-format json`: the few lines main prints itself (see `stderr_line`) are JSON too.
pub(crate) static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Whether the command line asks for JSON logs (read when clap refused the rest of it).
pub(crate) fn json_logs_asked(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.iter().any(|a| a == "--log-format=json")
        || args
            .windows(2)
            .any(|w| w[0] == "--log-format" && w[1] == "json")
}

/// The log filter: `KMIRROR_LOG`, else `RUST_LOG`, else what -q / -v ask for. An explicit
/// filter wins over the flags; one that does not parse is reported and the flags' used.
pub(crate) fn log_filter(
    verbose: u8,
    quiet: bool,
) -> (tracing_subscriber::EnvFilter, Option<String>) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "kmirror=debug,info",
        _ => "trace",
    };
    for var in ["KMIRROR_LOG", "RUST_LOG"] {
        let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        return match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (
                tracing_subscriber::EnvFilter::new(default),
                Some(format!(
                    "{var}={v:?} is not a log filter ({e}); using \"{default}\""
                )),
            ),
        };
    }
    (tracing_subscriber::EnvFilter::new(default), None)
}

pub(crate) fn init_logging(verbose: u8, quiet: bool, json: bool) {
    let (filter, bad) = log_filter(verbose, quiet);
    // Every log line (librdkafka's included, which may quote configuration values at -vv)
    // is masked before it reaches stderr, in both formats, and goes above a live progress
    // display rather than through it.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(kmirror::redact::RedactingStderr)
        .with_target(false);
    if json {
        JSON_LOGS.store(true, Ordering::Relaxed);
        // Fields at the top level beside timestamp, level and message: what log shippers
        // index without a nested path.
        fmt.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    if let Some(why) = bad {
        tracing::warn!("{why}");
    }
}

/// A line main prints on stderr outside the log macros (the final error, a panic, halted
/// partitions, dev-cluster's progress): masked, and under `--log-format json` a JSON
/// object like the log lines' (timestamp, level, message), so every stderr line parses.
pub(crate) fn stderr_line(level: &str, text: &str) {
    let text = redact(text);
    if JSON_LOGS.load(Ordering::Relaxed) {
        let line = serde_json::json!({
            "timestamp": value::format_ms(value::now_ms()),
            "level": level,
            "message": text,
        });
        kmirror::progress::write_stderr(format!("{line}\n").as_bytes());
    } else {
        kmirror::progress::write_stderr(format!("{text}\n").as_bytes());
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose text is already
/// there: many errors quote their source (an OS error) in their own message, and anyhow's
/// `{:#}` would print it twice.
pub(crate) fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Panic messages can quote anything (a property value in an `expect`): masked like logs.
pub(crate) fn install_redacting_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let mut text = format!("thread '{name}' {info}");
        // Backtraces as std's own hook gives them (RUST_BACKTRACE), masked too.
        let bt = std::backtrace::Backtrace::capture();
        if bt.status() == std::backtrace::BacktraceStatus::Captured {
            text.push('\n');
            text.push_str(&bt.to_string());
        }
        stderr_line("ERROR", &text);
    }));
}

/// Raises the flag on SIGINT or SIGTERM, logging `stopping` (what the command does now);
/// a second signal exits at once.
pub(crate) fn stop_on_signal(stopping: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Returns only once the handlers are installed: a signal that arrives earlier would take
    // the default action and kill the process without a final checkpoint or clean exit.
    let (installed_tx, installed) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("kmirror-signals".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                let _ = installed_tx.send(());
                for n in 0.. {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    if n > 0 {
                        stderr_line("ERROR", "second signal: exiting without waiting");
                        std::process::exit(130);
                    }
                    tracing::warn!("stopping: {stopping}");
                    flag.store(true, Ordering::Relaxed);
                }
            });
        })
        .expect("spawn signal thread");
    let _ = installed.recv();
    stop
}

/// Raises the flag on SIGHUP: `run` reloads the routing file's routes (`copy::reload`).
pub(crate) fn reload_on_sighup() -> Arc<AtomicBool> {
    let reload = Arc::new(AtomicBool::new(false));
    let flag = reload.clone();
    // As for stop: a SIGHUP before the handler is installed would kill the process.
    let (installed_tx, installed) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("kmirror-sighup".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
                let _ = installed_tx.send(());
                while hup.recv().await.is_some() {
                    flag.store(true, Ordering::Relaxed);
                }
            });
        })
        .expect("spawn signal thread");
    let _ = installed.recv();
    reload
}
