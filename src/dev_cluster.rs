//! In-memory Kafka-protocol test clusters (librdkafka's mock cluster) hosted on a thread of
//! their own, for `kmirror demo`, `kmirror dev-cluster`, tests and benchmarks.
//!
//! They listen on real loopback TCP ports, so any client in any process can use them while
//! the host lives. They are for tests only: everything is in memory and each partition
//! keeps at most 5 MB or 100,000 messages (older ones are deleted). `MockCluster` is not
//! `Send`, so the clusters live on one thread and faults are injected by message.

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
}

enum Msg {
    Control(Control, mpsc::Sender<Result<(), String>>),
    Stop,
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
        let (tx, rx) = mpsc::channel::<Msg>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Vec<String>, String>>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("kmirror-dev-cluster".into())
            .spawn(move || {
                let mut hosted: Vec<MockCluster<'static, DefaultProducerContext>> = Vec::new();
                for _ in 0..clusters {
                    match MockCluster::new(brokers) {
                        Ok(c) => hosted.push(c),
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot start a mock cluster: {e}")));
                            return;
                        }
                    }
                }
                for c in &hosted {
                    for (t, p) in &topics {
                        if let Err(e) = c.create_topic(t, *p, brokers.min(3)) {
                            let _ = ready_tx.send(Err(format!("cannot create topic {t}: {e}")));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(hosted.iter().map(|c| c.bootstrap_servers()).collect()));
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
        let bootstraps = ready_rx
            .recv()
            .map_err(|_| "the dev-cluster thread ended before it was ready".to_string())??;
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
        } => get(cluster)?
            .create_topic(&topic, partitions, 1)
            .map_err(|e| e.to_string()),
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
    }
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
