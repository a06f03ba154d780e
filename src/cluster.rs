//! Connections to clusters: librdkafka client settings, a quiet logging context, and the
//! bounded metadata and offset lookups `check`, `run` and `verify` share. Every error names
//! the cluster (and topic and partition where there is one).

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

use crate::config::ClusterConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster \"{cluster}\" ({bootstrap}): no Kafka broker answered within {timeout:?}: {cause} ({detail})")]
    Unreachable {
        cluster: String,
        bootstrap: String,
        timeout: Duration,
        /// What kmirror's own probe of the bootstrap addresses found (see `probe`).
        cause: String,
        /// librdkafka's word and the security settings in use.
        detail: String,
    },
    #[error("cluster \"{cluster}\": cannot create a client: {detail}")]
    Client { cluster: String, detail: String },
    #[error("cluster \"{cluster}\": topic \"{topic}\" does not exist{hint}")]
    TopicMissing {
        cluster: String,
        topic: String,
        hint: String,
    },
    #[error(
        "route \"{route}\": topic_regex \"{regex}\" matches no topic on cluster \"{cluster}\""
    )]
    RegexMatchesNothing {
        route: String,
        cluster: String,
        regex: String,
    },
    #[error("route \"{route}\": target topic \"{topic}\" on cluster \"{cluster}\" has {have} partitions but partitioning = \"preserve\" needs at least {need} (the source's count). Add partitions, or use partitioning = \"key\"")]
    TargetTooSmall {
        route: String,
        cluster: String,
        topic: String,
        have: usize,
        need: usize,
    },
    #[error(
        "cluster \"{cluster}\" topic \"{topic}\" partition {partition}: {what} failed: {detail}"
    )]
    Lookup {
        cluster: String,
        topic: String,
        partition: i32,
        what: String,
        detail: String,
    },
    #[error("cluster \"{cluster}\" topic \"{topic}\" partition {partition}: the broker cannot look up offsets by timestamp (it answered -1 for {ts} although the partition holds a record at offset {offset} with timestamp {record_ts}); refusing to guess the range. Use an offset or \"earliest\" for `start`/`end` on this cluster, and select by time with a `filter = {{ timestamp_from = ..., timestamp_to = ... }}`, which reads record timestamps and works on any broker")]
    TimestampUnsupported {
        cluster: String,
        topic: String,
        partition: i32,
        ts: String,
        offset: i64,
        record_ts: String,
    },
    #[error("route \"{route}\" cluster \"{cluster}\" topic \"{topic}\" partition {partition}: resume offset {offset} is below the earliest retained offset {low}: {gap} records were deleted by retention before they were copied. Set on_offset_out_of_range = \"earliest\" to accept the gap, or reset the checkpoint")]
    OffsetOutOfRange {
        route: String,
        cluster: String,
        topic: String,
        partition: i32,
        offset: i64,
        low: i64,
        gap: i64,
    },
    /// A route's archive (a restore's source, a dump's target) that cannot be read.
    #[error("cluster \"{cluster}\" (an archive): {source}")]
    Archive {
        cluster: String,
        #[source]
        source: crate::archive::ArchiveError,
    },
    #[error("cluster \"{cluster}\": cannot create topic \"{topic}\": {detail}")]
    CreateTopic {
        cluster: String,
        topic: String,
        detail: String,
    },
    #[error(
        "cluster \"{cluster}\": cannot add partitions to topic \"{topic}\" (to {count}): {detail}"
    )]
    CreatePartitions {
        cluster: String,
        topic: String,
        count: usize,
        detail: String,
    },
}

/// Routes librdkafka's own logs into `tracing` at debug level, so an unreachable broker
/// produces one clear kmirror error rather than a stack of librdkafka lines.
#[derive(Clone)]
pub struct QuietContext {
    pub cluster: String,
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                tracing::warn!(cluster = %self.cluster, facility = fac, "librdkafka: {log_message}")
            }
            _ => {
                tracing::debug!(cluster = %self.cluster, facility = fac, "librdkafka: {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(cluster = %self.cluster, "librdkafka error: {error}: {reason}");
    }
}

impl ConsumerContext for QuietContext {}

/// Why a client could not be created, never quoting a property value: rdkafka's own
/// Display of a configuration error ends with the value, which may be a password (a
/// mistyped `sasl.pasword` too). What is left still passes through `redact`, because
/// librdkafka's description may quote the value as well.
pub fn client_error_detail(e: &KafkaError) -> String {
    let text = match e {
        KafkaError::ClientConfig(_, desc, key, _value) => {
            format!(
                "librdkafka refused property \"{key}\": {}",
                withhold_quoted_value(desc.trim())
            )
        }
        other => other.to_string(),
    };
    crate::redact::redact(&text).into_owned()
}

/// `Invalid value "X" for configuration property "P"` -> the same without X: the value
/// is the user's own and may be a secret the registry does not know (a literal in the file).
fn withhold_quoted_value(desc: &str) -> String {
    match desc.split_once("Invalid value \"") {
        Some((before, rest)) => match rest.rfind("\" for configuration property") {
            Some(end) => format!("{before}invalid value (withheld){}", &rest[end + 1..]),
            None => format!("{before}invalid value (withheld)"),
        },
        None => desc.to_string(),
    }
}

/// The librdkafka settings every client for `cluster` starts from.
pub fn base_config(cluster: &ClusterConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cluster.bootstrap)
        .set("client.id", format!("kmirror-{}", cluster.name))
        .set("log.connection.close", "false");
    for (k, v) in &cluster.properties {
        c.set(k, v);
    }
    c
}

fn security(cluster: &ClusterConfig) -> String {
    format!(
        "security.protocol={}",
        cluster
            .redacted_properties()
            .get("security.protocol")
            .map(String::as_str)
            .unwrap_or("plaintext")
    )
}

/// A consumer for lookups and reads by manual assignment (no consumer group).
pub fn consumer(
    cluster: &ClusterConfig,
    extra: &[(&str, &str)],
) -> Result<BaseConsumer<QuietContext>, ClusterError> {
    let mut c = base_config(cluster);
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // An out-of-range position is an error for kmirror to report, never a silent reset.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "true")
        // librdkafka's consumer needs a group id even to assign() partitions by hand. kmirror
        // never subscribes or commits, so the group is never joined and never holds offsets.
        .set("group.id", format!("kmirror-assign-only-{}", cluster.name));
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create_with_context(QuietContext {
        cluster: cluster.name.clone(),
    })
    .map_err(|e| ClusterError::Client {
        cluster: cluster.name.clone(),
        detail: client_error_detail(&e),
    })
}

/// Destroys librdkafka clients (or anything holding them) on a thread of its own: a
/// client's destruction waits for its threads and its consumer group handle to wind down
/// (~100 ms each on the mock), time a start or an exit does not need to spend waiting. The
/// thread ends when they are gone; a process that exits first loses nothing by it.
pub fn drop_in_background<T: Send + 'static>(clients: T) {
    let spawned = std::thread::Builder::new()
        .name("kmirror-drop".into())
        .spawn(move || drop(clients));
    if let Err(e) = spawned {
        tracing::debug!("no thread to close clients on ({e}); they were closed in place");
    }
}

/// Fetches metadata (all topics, or one), bounded by `timeout`.
pub fn metadata<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cluster: &ClusterConfig,
    topic: Option<&str>,
    timeout: Duration,
) -> Result<Metadata, ClusterError> {
    consumer
        .fetch_metadata(topic, timeout)
        .map_err(|e| ClusterError::Unreachable {
            cluster: cluster.name.clone(),
            bootstrap: cluster.bootstrap.clone(),
            timeout,
            cause: probe(cluster, timeout),
            detail: format!(
                "librdkafka: {}; security settings: {}",
                crate::redact::redact(&e.to_string()),
                security(cluster)
            ),
        })
        .and_then(|m| {
            if m.brokers().is_empty() {
                Err(ClusterError::Unreachable {
                    cluster: cluster.name.clone(),
                    bootstrap: cluster.bootstrap.clone(),
                    timeout,
                    cause: "the broker answered with metadata that lists no brokers".into(),
                    detail: format!("security settings: {}", security(cluster)),
                })
            } else {
                Ok(m)
            }
        })
}

/// Why nothing answered, found by kmirror itself: librdkafka says only
/// "BrokerTransportFailure" whether the name does not resolve, the port is closed, nothing
/// answers, or a server that is not Kafka (an HTTP server, say) answered. Each bootstrap
/// address is resolved and connected to (bounded), and on a plaintext listener sent a
/// Kafka ApiVersions request whose reply framing is checked.
pub fn probe(cluster: &ClusterConfig, timeout: Duration) -> String {
    let protocol = cluster
        .properties
        .get("security.protocol")
        .map(|p| p.to_ascii_lowercase())
        .unwrap_or_else(|| "plaintext".into());
    let tls = protocol.contains("ssl");
    let step = timeout.clamp(Duration::from_millis(200), Duration::from_secs(2));
    let servers: Vec<&str> = cluster
        .bootstrap
        .split(',')
        .map(str::trim)
        .take(3)
        .collect();
    let mut found = Vec::new();
    for server in &servers {
        let addr = server.rsplit("://").next().unwrap_or(server);
        if servers.len() == 1 {
            found.push(probe_one(addr, tls, step));
        } else {
            found.push(format!("{addr}: {}", probe_one(addr, tls, step)));
        }
    }
    found.join("; ")
}

fn probe_one(addr: &str, tls: bool, step: Duration) -> String {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs: Vec<_> = match addr.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return format!("the name does not resolve ({e})"),
    };
    let Some(first) = addrs.first() else {
        return "the name resolves to no address".into();
    };
    let mut stream = match TcpStream::connect_timeout(first, step) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            return format!("connection refused at {first} (nothing listens on that port)")
        }
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            return format!(
                "no answer from {first} within {step:?} (a firewall dropping packets, or a host that is down?)"
            )
        }
        Err(e) => return format!("cannot connect to {first}: {e}"),
    };
    if tls {
        return format!(
            "a TCP connection to {first} opens; the failure is after it (TLS or SASL settings, or the broker's advertised listeners)"
        );
    }
    // ApiVersions v0: size, api_key 18, api_version 0, correlation id, client id.
    let client = b"kmirror-probe";
    let mut req = Vec::new();
    let body_len = 2 + 2 + 4 + 2 + client.len();
    req.extend_from_slice(&(body_len as i32).to_be_bytes());
    req.extend_from_slice(&18i16.to_be_bytes());
    req.extend_from_slice(&0i16.to_be_bytes());
    req.extend_from_slice(&0x6b6d_6972i32.to_be_bytes());
    req.extend_from_slice(&(client.len() as i16).to_be_bytes());
    req.extend_from_slice(client);
    let _ = stream.set_read_timeout(Some(step));
    let _ = stream.set_write_timeout(Some(step));
    if let Err(e) = stream.write_all(&req) {
        return format!("{first} accepted the connection, then failed a write: {e}");
    }
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => break,
        }
    }
    if got == 0 {
        return format!(
            "{first} accepted the connection but sent nothing back to a Kafka request (not a Kafka listener, or one that expects TLS/SASL?)"
        );
    }
    let size = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if got == head.len() && (6..=1 << 20).contains(&size) && correlation == 0x6b6d_6972 {
        return format!(
            "a Kafka broker answers at {first}; the failure is after the first request (the broker's advertised listeners, or security settings)"
        );
    }
    let text: String = String::from_utf8_lossy(&head[..got])
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '.'
            }
        })
        .collect();
    if text.starts_with("HTTP") {
        format!("an HTTP server answered at {first}, not Kafka (it replied \"{text}...\")")
    } else {
        format!("a server that is not Kafka answered at {first} (its reply begins \"{text}\")")
    }
}

/// Partition count of `topic`, or None if it does not exist.
pub fn partition_count(md: &Metadata, topic: &str) -> Option<usize> {
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len())
}

/// (low, high) watermarks of a partition. Errors a broker answers while leadership moves or
/// a connection drops (not leader, transport, timeouts) are retried until `timeout`.
pub fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cluster: &str,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), ClusterError> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let deadline = std::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = match consumer.fetch_watermarks(topic, partition, left) {
            Ok(w) => return Ok(w),
            Err(e) => e,
        };
        let retriable = matches!(
            e.rdkafka_error_code(),
            Some(
                Code::NotLeaderForPartition
                    | Code::LeaderNotAvailable
                    | Code::BrokerTransportFailure
                    | Code::AllBrokersDown
                    | Code::RequestTimedOut
                    | Code::NetworkException
                    | Code::FencedLeaderEpoch
                    | Code::UnknownLeaderEpoch
                    | Code::OffsetNotAvailable
                    | Code::KafkaStorageError
            )
        );
        if !retriable || std::time::Instant::now() + backoff >= deadline {
            return Err(ClusterError::Lookup {
                cluster: cluster.into(),
                topic: topic.into(),
                partition,
                what: "ListOffsets (watermarks)".into(),
                detail: e.to_string(),
            });
        }
        tracing::debug!(
            cluster,
            topic,
            partition,
            "ListOffsets failed, retrying: {e}"
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Reads the single record at `offset` (or the next one after a gap), bounded by `timeout`.
/// Returns its offset and timestamp.
pub fn read_one(
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<Option<(i64, Option<i64>)>, ClusterError> {
    let c = consumer(cluster, &[])?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| lookup_err(cluster, topic, partition, "assign", e))?;
    c.assign(&tpl)
        .map_err(|e| lookup_err(cluster, topic, partition, "assign", e))?;
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => return Ok(Some((m.offset(), m.timestamp().to_millis()))),
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
            Some(Err(e)) => return Err(lookup_err(cluster, topic, partition, "fetch", e)),
            None => {}
        }
    }
    Err(ClusterError::Lookup {
        cluster: cluster.name.clone(),
        topic: topic.into(),
        partition,
        what: format!("fetch at offset {offset}"),
        detail: format!("no answer within {timeout:?}"),
    })
}

fn lookup_err(
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    what: &str,
    e: KafkaError,
) -> ClusterError {
    ClusterError::Lookup {
        cluster: cluster.name.clone(),
        topic: topic.into(),
        partition,
        what: what.into(),
        detail: e.to_string(),
    }
}

/// The first offset whose timestamp is at or after `ts_ms`; `high` when none is. Refuses
/// (rather than guessing) when the broker cannot answer timestamp lookups.
pub fn offset_for_time<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    ts_ms: i64,
    (low, high): (i64, i64),
    timeout: Duration,
) -> Result<i64, ClusterError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(ts_ms))
        .map_err(|e| lookup_err(cluster, topic, partition, "ListOffsets by timestamp", e))?;
    let res = consumer
        .offsets_for_times(tpl, timeout)
        .map_err(|e| lookup_err(cluster, topic, partition, "ListOffsets by timestamp", e))?;
    let elem = res
        .find_partition(topic, partition)
        .ok_or_else(|| ClusterError::Lookup {
            cluster: cluster.name.clone(),
            topic: topic.into(),
            partition,
            what: "ListOffsets by timestamp".into(),
            detail: "partition missing from the answer".into(),
        })?;
    if let Some(e) = elem.error().err() {
        return Err(lookup_err(
            cluster,
            topic,
            partition,
            "ListOffsets by timestamp",
            e,
        ));
    }
    match elem.offset() {
        Offset::Offset(o) => Ok(o),
        Offset::End | Offset::Invalid if high > low => {
            // -1 means "no record at or after ts", but some brokers (librdkafka's mock) answer
            // -1 to every timestamp lookup. Read the last record to tell the two apart.
            match read_one(cluster, topic, partition, high - 1, timeout)? {
                Some((offset, Some(record_ts))) if record_ts >= ts_ms => {
                    Err(ClusterError::TimestampUnsupported {
                        cluster: cluster.name.clone(),
                        topic: topic.into(),
                        partition,
                        ts: crate::config::value::format_ms(ts_ms),
                        offset,
                        record_ts: crate::config::value::format_ms(record_ts),
                    })
                }
                _ => Ok(high),
            }
        }
        Offset::End | Offset::Invalid => Ok(high),
        other => Err(ClusterError::Lookup {
            cluster: cluster.name.clone(),
            topic: topic.into(),
            partition,
            what: "ListOffsets by timestamp".into(),
            detail: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Creates `topic` with `partitions` partitions through the admin API, bounded by `timeout`.
pub fn create_topic(
    cluster: &ClusterConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), ClusterError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let err = |detail: String| ClusterError::CreateTopic {
        cluster: cluster.name.clone(),
        topic: topic.into(),
        detail,
    };
    let admin: AdminClient<QuietContext> = base_config(cluster)
        .create_with_context(QuietContext {
            cluster: cluster.name.clone(),
        })
        .map_err(|e| err(client_error_detail(&e)))?;
    // -1: the broker's default replication factor (KIP-464).
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let res = futures::executor::block_on(admin.create_topics([&new], &opts)).map_err(|e| {
        err(format!(
            "{e} (does the broker support CreateTopics? librdkafka's mock cluster does not)"
        ))
    })?;
    for r in res {
        if let Err((_, code)) = r {
            if code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                continue;
            }
            return Err(err(format!("{code}")));
        }
    }
    Ok(())
}

/// Grows `topic` to `count` partitions (CreatePartitions): for `partitioning = "preserve"`
/// when partitions are added to its source topic mid-run.
pub fn create_partitions(
    cluster: &ClusterConfig,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<(), ClusterError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    let err = |detail: String| ClusterError::CreatePartitions {
        cluster: cluster.name.clone(),
        topic: topic.into(),
        count,
        detail,
    };
    let admin: AdminClient<QuietContext> = base_config(cluster)
        .create_with_context(QuietContext {
            cluster: cluster.name.clone(),
        })
        .map_err(|e| err(client_error_detail(&e)))?;
    let new = NewPartitions::new(topic, count);
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let res = futures::executor::block_on(admin.create_partitions([&new], &opts)).map_err(|e| {
        err(format!(
            "{e} (does the broker support CreatePartitions? librdkafka's mock cluster and tansu do not)"
        ))
    })?;
    for r in res {
        if let Err((_, code)) = r {
            return Err(err(format!("{code}")));
        }
    }
    Ok(())
}

/// The end of each partition found by reading: from the reported high watermark to the
/// first end-of-partition. Some brokers (tansu) under-report the high watermark in
/// ListOffsets when batches hold several records; the snapshot end must not stop short.
pub fn confirm_ends(
    cluster: &ClusterConfig,
    topic: &str,
    highs: &[i64],
    timeout: Duration,
) -> Result<Vec<i64>, ClusterError> {
    // The mock holds an empty fetch for the whole wait; end-of-partition should come fast.
    let c = consumer(cluster, &[("fetch.wait.max.ms", "10")])?;
    let mut tpl = TopicPartitionList::new();
    for (p, high) in highs.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(*high))
            .map_err(|e| lookup_err(cluster, topic, p as i32, "assign", e))?;
    }
    c.assign(&tpl)
        .map_err(|e| lookup_err(cluster, topic, 0, "assign", e))?;
    let mut ends = highs.to_vec();
    // Sticky: records after a partition's first end-of-partition were written after the
    // snapshot and are not part of it.
    let mut eof = vec![false; highs.len()];
    let deadline = std::time::Instant::now() + timeout;
    while eof.iter().any(|e| !e) {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                if p < ends.len() && !eof[p] {
                    ends[p] = ends[p].max(m.offset() + 1);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(e) = eof.get_mut(p as usize) {
                    *e = true;
                }
            }
            Some(Err(e)) => tracing::debug!(cluster = %cluster.name, topic, "confirming ends: {e}"),
            None => {}
        }
        if std::time::Instant::now() > deadline {
            let p = eof.iter().position(|e| !e).unwrap_or(0) as i32;
            return Err(ClusterError::Lookup {
                cluster: cluster.name.clone(),
                topic: topic.into(),
                partition: p,
                what: "reading to the end of the partition (snapshot)".into(),
                detail: format!("no end-of-partition within {timeout:?}"),
            });
        }
    }
    let behind = highs.iter().zip(&ends).filter(|(r, e)| e > r).count();
    if behind > 0 {
        tracing::info!(
            cluster = %cluster.name, topic,
            "the broker under-reports the high watermark of {behind} of {} partitions; using the ends found by reading",
            highs.len()
        );
    }
    for (p, (reported, real)) in highs.iter().zip(&ends).enumerate() {
        if real > reported {
            tracing::debug!(
                cluster = %cluster.name, topic, partition = p,
                "the broker reported high watermark {reported} but records exist up to {}; the snapshot ends at {real}",
                real - 1
            );
        }
    }
    drop_in_background(c);
    Ok(ends)
}
