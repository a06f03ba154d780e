//! Batch: what one turn of a reader takes from its consumer. librdkafka already fetches in
//! batches; taking its queue in bounded slices lets the reader pay for rate limiting, ack
//! draining and progress bookkeeping once per slice instead of once per record.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;

/// One item taken from the consumer queue, in queue order.
pub enum Event<'c> {
    Record(BorrowedMessage<'c>),
    /// The fetch position of this partition reached the high watermark.
    Eof(i32),
    Error(KafkaError),
}

pub struct Batch<'c> {
    pub events: Vec<Event<'c>>,
    pub records: usize,
    /// Key + value bytes (what byte rate limits count).
    pub bytes: u64,
    /// Key + value + header bytes: what the records will charge against the in-flight
    /// bounds (`record::record_bytes`), and what `max_bytes` caps.
    pub charge: u64,
}

/// Takes up to `max_records` records or until their in-flight charge reaches `max_bytes`,
/// waiting at most `wait` for the first event and not at all for the rest.
pub fn collect<'c, C: ConsumerContext>(
    consumer: &'c BaseConsumer<C>,
    max_records: usize,
    max_bytes: u64,
    wait: Duration,
) -> Batch<'c> {
    let mut batch = Batch {
        events: Vec::new(),
        records: 0,
        bytes: 0,
        charge: 0,
    };
    let mut timeout = wait;
    while batch.records < max_records && batch.charge < max_bytes {
        match consumer.poll(timeout) {
            None => break,
            Some(Ok(m)) => {
                batch.records += 1;
                batch.bytes += (m.key_len() + m.payload_len()) as u64;
                batch.charge += super::record::record_bytes(&m) as u64;
                batch.events.push(Event::Record(m));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => batch.events.push(Event::Eof(p)),
            Some(Err(e)) => {
                batch.events.push(Event::Error(e));
                break;
            }
        }
        timeout = Duration::ZERO;
    }
    batch
}
