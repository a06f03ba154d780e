//! Batch: what one turn of a reader takes from its consumer. librdkafka already fetches in
//! batches; taking its queue in bounded slices lets the reader pay for rate limiting, ack
//! draining and progress bookkeeping once per slice instead of once per record.

use std::time::Duration;

use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::poll::{Polled, SourceQueue, SourceRecord, MAX_TAKE};

/// One item taken from the consumer queue, in queue order.
pub enum Event<'c> {
    Record(SourceRecord<'c>),
    /// The fetch position of this (topic, partition) reached the end of what it may read:
    /// the last stable offset under read_committed (an open transaction holds it back),
    /// else the high watermark.
    Eof(String, i32),
    /// A consumer error, with the topic and partition librdkafka attached (see
    /// `poll`): per-partition fetch errors have both, topic-level errors a topic only,
    /// broker-level errors (transport, all brokers down) neither. The reader takes it for
    /// the partitions it names, else for every partition it reads.
    Error {
        error: KafkaError,
        topic: Option<String>,
        partition: Option<i32>,
    },
}

/// What a consumer (fetch) error means for the partitions it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// librdkafka retries the fetch itself: the partitions show "retrying" until records
    /// (or end-of-partition) arrive again.
    Retriable,
    /// Retriable for a while (a topic briefly unknown while metadata propagates), then
    /// permanent: the partitions halt once the episode lasts longer than this.
    RetriableFor(Duration),
    /// Retrying cannot help (authorization, unsupported, corrupt data): the partitions halt.
    Permanent,
}

/// How long a source topic or partition may stay unknown before its partitions halt.
pub const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(30);

/// How long an error on neither list may last (without records flowing in between) before
/// its partitions halt.
pub const UNCLASSIFIED_GRACE: Duration = Duration::from_secs(60);

/// The explicit list of source errors. Codes on neither list are retried for a bounded
/// time (`UNCLASSIFIED_GRACE`), surfaced and counted like the others: halting at once on an
/// error nobody classified could stop a healthy copy over a blip, and retrying it forever
/// is the endless retry kmirror never does.
pub fn classify_source_error(code: Option<RDKafkaErrorCode>) -> SourceErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        // Access and protocol problems, and data the consumer cannot decode or skip.
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::UnsupportedVersion
            | C::UnsupportedForMessageFormat
            | C::UnsupportedCompressionType
            | C::UnsupportedFeature
            | C::InvalidMessage
            | C::BadMessage
            | C::BadCompression
            | C::InvalidRecord
            | C::InvalidTopic
            | C::MessageSizeTooLarge
            | C::InvalidRequest
            | C::LogTruncation
            | C::Fatal,
        ) => SourceErrorKind::Permanent,
        Some(
            C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId,
        ) => SourceErrorKind::RetriableFor(UNKNOWN_TOPIC_GRACE),
        // Leadership moves, transport, timeouts, coordinators, storage hiccups, throttling:
        // librdkafka refreshes metadata, reconnects and fetches again.
        Some(
            C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::BrokerNotAvailable
            | C::ReplicaNotAvailable
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
            | C::KafkaStorageError
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::CoordinatorLoadInProgress
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::MessageTimedOut
            | C::NetworkException
            | C::NotEnoughReplicas
            | C::ThrottlingQuotaExceeded
            | C::FetchSessionIdNotFound
            | C::InvalidFetchSessionEpoch
            | C::Partial,
        ) => SourceErrorKind::Retriable,
        _ => SourceErrorKind::RetriableFor(UNCLASSIFIED_GRACE),
    }
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
/// waiting at most `wait` for the first event and not at all for the rest. Stops after an
/// error, so the reader handles it before reading on (what the same batch call returned
/// behind it is kept, in order).
///
/// The queue is taken a slice at a time (`SourceQueue::take`), and what a slice took is
/// in the batch whether or not it fits: a slice is as many records as fit the bytes left
/// if each were as large as the largest seen so far (one record before any was seen), so
/// with records of one size the charge passes `max_bytes` by at most one record, as it did
/// when records were taken one at a time.
pub fn collect<'c, C: ConsumerContext>(
    consumer: &SourceQueue<'c, C>,
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
    let mut largest = 0u64;
    let mut taken = Vec::new();
    while batch.records < max_records && batch.charge < max_bytes {
        let fit = match largest {
            0 => 1,
            l => ((max_bytes - batch.charge) / l).max(1),
        };
        let want = (max_records - batch.records)
            .min(usize::try_from(fit).unwrap_or(usize::MAX))
            .min(MAX_TAKE);
        let got = consumer.take(timeout, want, &mut taken);
        timeout = Duration::ZERO;
        let mut error = false;
        for p in taken.drain(..) {
            match p {
                Polled::Record(m) => {
                    let charge = super::record::record_bytes(&m) as u64;
                    largest = largest.max(charge);
                    batch.records += 1;
                    batch.bytes += (m.key_len() + m.payload_len()) as u64;
                    batch.charge += charge;
                    batch.events.push(Event::Record(m));
                }
                Polled::Eof(t, p) => batch.events.push(Event::Eof(t, p)),
                Polled::Error {
                    error: e,
                    topic,
                    partition,
                } => {
                    batch.events.push(Event::Error {
                        error: e,
                        topic,
                        partition,
                    });
                    error = true;
                }
            }
        }
        if error || got < want {
            break; // an error to handle first, or the queue is empty now
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_source_error_is_retried_forever_unless_listed() {
        use RDKafkaErrorCode as C;
        assert_eq!(
            classify_source_error(Some(C::TopicAuthorizationFailed)),
            SourceErrorKind::Permanent
        );
        assert_eq!(
            classify_source_error(Some(C::NotLeaderForPartition)),
            SourceErrorKind::Retriable
        );
        // Codes on neither list: bounded, then the partitions halt.
        for code in [
            C::PolicyViolation,
            C::InvalidTimestamp,
            C::DuplicateSequenceNumber,
        ] {
            assert_eq!(
                classify_source_error(Some(code)),
                SourceErrorKind::RetriableFor(UNCLASSIFIED_GRACE),
                "{code:?}"
            );
        }
        assert_eq!(
            classify_source_error(None),
            SourceErrorKind::RetriableFor(UNCLASSIFIED_GRACE)
        );
    }
}
