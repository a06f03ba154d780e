//! In-memory Kafka-protocol test clusters (librdkafka's mock cluster) hosted on a thread of
//! their own, for `kmirror demo`, `kmirror dev-cluster`, tests and benchmarks.
//!
//! They listen on real loopback TCP ports, so any client in any process can use them while
//! the host lives. They are for tests only: everything is in memory and each partition
//! keeps at most 5 MB or 100,000 messages (older ones are deleted). `MockCluster` is not
//! `Send`, so the clusters live on one thread and faults are injected by message.
//!
//! Topic creation nudges the mock's thread (see [`create_topics`]): librdkafka's mock can
//! lose the wake-up of a control request and serve it only at its next 1 s poll timeout,
//! which made hundreds of topics take minutes.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka_sys::types::{RDKafkaApiKey, RDKafkaRespErr};

/// Fault injection and topic management on a hosted cluster (by index).
#[derive(Debug, Clone)]
pub enum Control {
    CreateTopic {
        cluster: usize,
        topic: String,
        partitions: i32,
    },
    BrokerDown {
        cluster: usize,
        broker: i32,
    },
    BrokerUp {
        cluster: usize,
        broker: i32,
    },
    /// Fail the next `count` requests of `api` with `error`.
    RequestErrors {
        cluster: usize,
        api: RDKafkaApiKey,
        error: RDKafkaRespErr,
        count: usize,
    },
    ClearRequestErrors {
        cluster: usize,
        api: RDKafkaApiKey,
    },
    PartitionLeader {
        cluster: usize,
        topic: String,
        partition: i32,
        broker: i32,
    },
    RoundTripTime {
        cluster: usize,
        broker: i32,
        delay: Duration,
    },
    /// Metadata answers `error` for `topic` (e.g. unknown topic: how a deleted topic looks).
    TopicError {
        cluster: usize,
        topic: String,
        error: RDKafkaRespErr,
    },
}

enum Msg {
    Control(Control, mpsc::Sender<Result<(), String>>),
    Stop,
}

/// Topics created so far on one cluster while the clusters start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicProgress {
    /// Index of the cluster (0-based).
    pub cluster: usize,
    pub created: usize,
    pub total: usize,
}

enum Startup {
    Progress(TopicProgress),
    Ready(Vec<String>),
    Failed(String),
}

/// Mock clusters alive until this is dropped (or `stop`ped).
pub struct DevClusters {
    pub bootstraps: Vec<String>,
    pub brokers: i32,
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl DevClusters {
    /// Starts `clusters` mock clusters of `brokers` brokers each, with `topics`
    /// (name, partitions) created on every one.
    pub fn start(
        clusters: usize,
        brokers: i32,
        topics: &[(String, i32)],
    ) -> Result<DevClusters, String> {
        Self::start_with_progress(clusters, brokers, topics, |_| {})
    }

    /// Like [`start`](Self::start), calling `progress` (on the caller's thread) after each
    /// topic created.
    pub fn start_with_progress(
        clusters: usize,
        brokers: i32,
        topics: &[(String, i32)],
        mut progress: impl FnMut(TopicProgress),
    ) -> Result<DevClusters, String> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let (ready_tx, ready_rx) = mpsc::channel::<Startup>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("kmirror-dev-cluster".into())
            .spawn(move || {
                let mut hosted: Vec<MockCluster<'static, DefaultProducerContext>> = Vec::new();
                for _ in 0..clusters {
                    match MockCluster::new(brokers) {
                        Ok(c) => hosted.push(c),
                        Err(e) => {
                            let _ = ready_tx
                                .send(Startup::Failed(format!("cannot start a mock cluster: {e}")));
                            return;
                        }
                    }
                }
                for (cluster, c) in hosted.iter().enumerate() {
                    let total = topics.len();
                    let created = create_topics(c, &topics, brokers.min(3), |created| {
                        let _ = ready_tx.send(Startup::Progress(TopicProgress {
                            cluster,
                            created,
                            total,
                        }));
                    });
                    if let Err(e) = created {
                        let _ = ready_tx.send(Startup::Failed(e));
                        return;
                    }
                }
                let _ = ready_tx.send(Startup::Ready(
                    hosted.iter().map(|c| c.bootstrap_servers()).collect(),
                ));
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Msg::Stop => break,
                        Msg::Control(c, reply) => {
                            let _ = reply.send(apply(&hosted, c));
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let bootstraps = loop {
            match ready_rx.recv() {
                Ok(Startup::Progress(p)) => progress(p),
                Ok(Startup::Ready(b)) => break b,
                Ok(Startup::Failed(e)) => return Err(e),
                Err(_) => return Err("the dev-cluster thread ended before it was ready".into()),
            }
        };
        Ok(DevClusters {
            bootstraps,
            brokers,
            tx,
            thread: Some(thread),
        })
    }

    pub fn control(&self, c: Control) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Msg::Control(c, tx))
            .map_err(|_| "dev clusters are stopped".to_string())?;
        rx.recv()
            .map_err(|_| "dev clusters are stopped".to_string())?
    }

    pub fn create_topic(&self, cluster: usize, topic: &str, partitions: i32) -> Result<(), String> {
        self.control(Control::CreateTopic {
            cluster,
            topic: topic.into(),
            partitions,
        })
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DevClusters {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn apply(
    hosted: &[MockCluster<'static, DefaultProducerContext>],
    c: Control,
) -> Result<(), String> {
    let get = |i: usize| hosted.get(i).ok_or_else(|| format!("no cluster {i}"));
    match c {
        Control::CreateTopic {
            cluster,
            topic,
            partitions,
        } => create_topics(get(cluster)?, &[(topic, partitions)], 1, |_| {}),
        Control::BrokerDown { cluster, broker } => {
            get(cluster)?.broker_down(broker).map_err(|e| e.to_string())
        }
        Control::BrokerUp { cluster, broker } => {
            get(cluster)?.broker_up(broker).map_err(|e| e.to_string())
        }
        Control::RequestErrors {
            cluster,
            api,
            error,
            count,
        } => {
            get(cluster)?.request_errors(api, &vec![error; count]);
            Ok(())
        }
        Control::ClearRequestErrors { cluster, api } => {
            get(cluster)?.clear_request_errors(api);
            Ok(())
        }
        Control::PartitionLeader {
            cluster,
            topic,
            partition,
            broker,
        } => get(cluster)?
            .partition_leader(&topic, partition, Some(broker))
            .map_err(|e| e.to_string()),
        Control::RoundTripTime {
            cluster,
            broker,
            delay,
        } => get(cluster)?
            .broker_round_trip_time(broker, delay)
            .map_err(|e| e.to_string()),
        Control::TopicError {
            cluster,
            topic,
            error,
        } => get(cluster)?
            .topic_error(&topic, error)
            .map_err(|e| e.to_string()),
    }
}

/// How long a control request may wait before the mock's thread is nudged.
const NUDGE_AFTER: Duration = Duration::from_millis(2);

/// Creates `topics` (name, partitions) on `cluster`, calling `progress(created)` after each.
///
/// Why this does not simply call `create_topic` in a loop: librdkafka's mock
/// (`rdkafka_mock.c`) hands each control request to its own thread as an op on a queue and
/// waits for the reply (`rd_kafka_op_req`, no timeout). The enqueue wakes that thread by
/// writing a byte to a pipe, at most once per "serving period" (the queue's io-event
/// `sent` flag, reset when the queue is served). The thread's loop
/// (`rd_kafka_mock_cluster_io_poll`) polls its sockets and the pipe with a timeout of up to
/// 1 s, then serves the queue, and only then drains the pipe. A request enqueued between
/// those two steps (the next `create_topic`, issued the moment the previous reply arrives)
/// has its wake-up byte drained unseen; the thread sleeps in poll until the timeout, so
/// that topic takes up to a second. On a busy machine most requests hit that window:
/// hundreds of topics took minutes with the CPU idle.
///
/// The fix from outside: while a request is outstanding for longer than [`NUDGE_AFTER`], a
/// helper thread opens (and at once closes) a TCP connection to one of the cluster's
/// brokers. The new connection makes the mock's poll return, and it serves the queue
/// first. A lost wake-up then costs milliseconds, not a second.
fn create_topics(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    topics: &[(String, i32)],
    replication: i32,
    mut progress: impl FnMut(usize),
) -> Result<(), String> {
    // Every broker, so a broker taken down (its listener closed) does not stop the nudges.
    let brokers: Vec<SocketAddr> = cluster
        .bootstrap_servers()
        .split(',')
        .filter_map(|a| a.to_socket_addrs().ok()?.next())
        .collect();
    let created = AtomicUsize::new(0);
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (created, finished, brokers) = (&created, &finished, &brokers);
        scope.spawn(move || {
            let mut seen = usize::MAX;
            while !finished.load(Ordering::Acquire) {
                std::thread::sleep(NUDGE_AFTER);
                let now = created.load(Ordering::Acquire);
                if now == seen {
                    // The same request is still waiting: wake the mock's poll.
                    let timeout = Duration::from_millis(100);
                    let _ = brokers
                        .iter()
                        .any(|a| TcpStream::connect_timeout(a, timeout).is_ok());
                }
                seen = now;
            }
        });
        let result = topics.iter().try_for_each(|(t, p)| {
            cluster
                .create_topic(t, *p, replication)
                .map_err(|e| format!("cannot create topic {t}: {e}"))?;
            let n = created.fetch_add(1, Ordering::AcqRel) + 1;
            progress(n);
            Ok(())
        });
        finished.store(true, Ordering::Release);
        result
    })
}

/// Produces `count` sample order records to `topic` (spread over `partitions` by index):
/// keyed, JSON payloads naming one of four tenants, a header, increasing timestamps, and a
/// tombstone every 500th record. Returns once all are acknowledged.
pub fn seed_orders(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: u64,
    first_ts: i64,
) -> Result<(), String> {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(|e| e.to_string())?;
    for i in 0..count {
        let key = format!("customer-{}", i % 997);
        // Interleaved pseudo-randomly, so every partition holds every tenant.
        let tenant = TENANTS[((i.wrapping_mul(2_654_435_761) >> 7) % 4) as usize];
        let payload = format!(
            "{{\"tenant_id\":\"{tenant}\",\"order_id\":{i},\"amount\":{}.{:02},\"meta\":{{\"region\":\"{}\"}}}}",
            (i * 7) % 500,
            i % 100,
            if i % 3 == 0 { "eu" } else { "us" }
        );
        let trace = format!("trace-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace-id",
            value: Some(trace.as_bytes()),
        });
        let mut rec = BaseRecord::to(topic)
            .partition((i % partitions as u64) as i32)
            .key(&key)
            .headers(headers)
            .timestamp(first_ts + i as i64);
        if i % 500 != 499 {
            rec = rec.payload(&payload);
        }
        let mut rec = rec;
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("seeding {topic}: {e}"))
}

/// Produces one record (e.g. a poison payload) to `topic`/`partition` and waits for the ack.
pub fn produce_one(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    key: &[u8],
    payload: &[u8],
) -> Result<(), String> {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    producer
        .send(
            BaseRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload),
        )
        .map_err(|(e, _)| e.to_string())?;
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| e.to_string())
}
