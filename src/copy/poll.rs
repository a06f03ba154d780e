//! Polling a source consumer's queue without losing which topic an event is about.
//!
//! A reader reads every topic of its source cluster with one consumer, so an
//! end-of-partition or a fetch error must say its topic as well as its partition.
//! librdkafka attaches both (`rko_rktp`) to the error event, but rust-rdkafka 0.39's
//! `BaseConsumer::poll` turns end-of-partition into `KafkaError::PartitionEOF(partition)`
//! and every other consumer error into `KafkaError::MessageConsumption(code)`, dropping the
//! topic (and the partition). Alternatives were weighed and refused:
//! - a split partition queue per partition: hundreds of queues, and split queues are
//!   deactivated by `assign()`, starve when dropped (rust-rdkafka #535) and can lose a
//!   wakeup (#665);
//! - `enable.partition.eof = false` and ends found by comparing positions with watermarks:
//!   a ListOffsets per partition per look, and under read_committed the end-of-partition
//!   (at the last stable offset) is exactly what the end logic needs in queue order.
//!
//! So this module polls the consumer queue itself, with librdkafka's event API, as
//! rust-rdkafka does internally: records come as `SourceRecord` (which implements
//! rdkafka's `Message`, so the copy path reads it like a `BorrowedMessage`), errors and
//! end-of-partition come with `rd_kafka_event_topic_partition` (topic and partition when
//! librdkafka has them), and log, statistics and error callbacks still reach the client's
//! context as they would through `poll`. Nothing else may poll that consumer meanwhile.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::c_char;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Message, Timestamp};
use rdkafka_sys as rdsys;
use rdsys::rd_kafka_resp_err_t as Err_;

/// One item from the consumer queue.
pub enum Polled<'c> {
    Record(SourceRecord<'c>),
    /// End of partition (`topic`, `partition`).
    Eof(String, i32),
    /// A consumer error, with the topic and partition librdkafka gave it, if any
    /// (broker-level errors have neither; some have a topic only).
    Error {
        error: KafkaError,
        topic: Option<String>,
        partition: Option<i32>,
    },
}

/// The consumer queue of a `BaseConsumer`, polled with the event API.
pub struct SourceQueue<'c, C: ConsumerContext> {
    queue: *mut rdsys::rd_kafka_queue_t,
    consumer: &'c BaseConsumer<C>,
}

impl<'c, C: ConsumerContext> SourceQueue<'c, C> {
    pub fn new(consumer: &'c BaseConsumer<C>) -> Option<Self> {
        // SAFETY: a new reference to the consumer queue of a live client; released in drop,
        // and `'c` keeps the consumer alive longer than this handle.
        let queue = unsafe { rdsys::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        (!queue.is_null()).then_some(SourceQueue { queue, consumer })
    }

    /// The next record or consumer event, waiting at most `timeout` (log and statistics
    /// events are handed to the context and waited past).
    pub fn poll(&self, timeout: Duration) -> Option<Polled<'c>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: the queue handle is valid (see `new`); the event is owned here and
            // destroyed below or by the `SourceRecord` that takes it.
            let ev = unsafe { rdsys::rd_kafka_queue_poll(self.queue, ms) };
            if ev.is_null() {
                return None;
            }
            if let Some(p) = unsafe { self.handle(ev) } {
                return Some(p);
            }
            if left.is_zero() {
                return None;
            }
        }
    }

    /// Turns an event into a `Polled`, or serves it (logs, statistics) and returns None.
    ///
    /// # Safety
    /// `ev` is a live event from this queue; ownership passes to this function.
    unsafe fn handle(&self, ev: *mut rdsys::rd_kafka_event_t) -> Option<Polled<'c>> {
        let context = self.consumer.context();
        match rdsys::rd_kafka_event_type(ev) {
            rdsys::RD_KAFKA_EVENT_FETCH => {
                let msg = rdsys::rd_kafka_event_message_next(ev);
                if msg.is_null() {
                    rdsys::rd_kafka_event_destroy(ev);
                    return None;
                }
                if (*msg).err == Err_::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return Some(Polled::Record(SourceRecord {
                        event: ev,
                        msg,
                        _consumer: PhantomData,
                    }));
                }
                // An error delivered as a message (the legacy form): rkt names the topic.
                let err = (*msg).err;
                let topic = topic_name((*msg).rkt);
                let partition = (*msg).partition;
                rdsys::rd_kafka_event_destroy(ev);
                Some(error_event(err, false, topic, partition))
            }
            rdsys::RD_KAFKA_EVENT_ERROR => {
                let err = rdsys::rd_kafka_event_error(ev);
                // As rust-rdkafka's poll does: the context hears every error event.
                let reason = cstr(rdsys::rd_kafka_event_error_string(ev)).unwrap_or_default();
                context.error(KafkaError::Global(err.into()), reason.trim());
                let fatal = rdsys::rd_kafka_event_error_is_fatal(ev) != 0;
                let tp = rdsys::rd_kafka_event_topic_partition(ev);
                let (topic, partition) = if tp.is_null() {
                    (None, -1)
                } else {
                    let t = cstr((*tp).topic);
                    let p = (*tp).partition;
                    rdsys::rd_kafka_topic_partition_destroy(tp);
                    (t, p)
                };
                rdsys::rd_kafka_event_destroy(ev);
                (err != Err_::RD_KAFKA_RESP_ERR_NO_ERROR)
                    .then(|| error_event(err, fatal, topic, partition))
            }
            rdsys::RD_KAFKA_EVENT_LOG => {
                let mut fac: *const c_char = std::ptr::null();
                let mut text: *const c_char = std::ptr::null();
                let mut level: i32 = 0;
                if rdsys::rd_kafka_event_log(ev, &mut fac, &mut text, &mut level) == 0 {
                    let fac = cstr(fac).unwrap_or_default();
                    let text = cstr(text).unwrap_or_default();
                    context.log(log_level(level), fac.trim(), text.trim());
                }
                rdsys::rd_kafka_event_destroy(ev);
                None
            }
            rdsys::RD_KAFKA_EVENT_STATS => {
                let json = rdsys::rd_kafka_event_stats(ev);
                if !json.is_null() {
                    context.stats_raw(CStr::from_ptr(json).to_bytes());
                }
                rdsys::rd_kafka_event_destroy(ev);
                None
            }
            // Manual assignment: no rebalance or commit events are expected; anything else
            // is released unseen, as rust-rdkafka's poll would.
            _ => {
                rdsys::rd_kafka_event_destroy(ev);
                None
            }
        }
    }
}

impl<C: ConsumerContext> Drop for SourceQueue<'_, C> {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `new`, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) }
    }
}

fn error_event<'c>(err: Err_, fatal: bool, topic: Option<String>, partition: i32) -> Polled<'c> {
    if err == Err_::RD_KAFKA_RESP_ERR__PARTITION_EOF {
        if let Some(t) = topic {
            return Polled::Eof(t, partition);
        }
    }
    let error = if fatal {
        KafkaError::MessageConsumptionFatal(err.into())
    } else {
        KafkaError::MessageConsumption(err.into())
    };
    Polled::Error {
        error,
        topic,
        partition: (partition >= 0).then_some(partition),
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
}

/// # Safety
/// `rkt` is null or a live topic handle.
unsafe fn topic_name(rkt: *mut rdsys::rd_kafka_topic_t) -> Option<String> {
    if rkt.is_null() {
        None
    } else {
        cstr(rdsys::rd_kafka_topic_name(rkt))
    }
}

fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        i32::MIN..=0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

/// A record from the consumer queue, living in the consumer's memory (like rdkafka's
/// `BorrowedMessage`, which cannot be built outside rust-rdkafka).
pub struct SourceRecord<'c> {
    event: *mut rdsys::rd_kafka_event_t,
    msg: *const rdsys::rd_kafka_message_t,
    _consumer: PhantomData<&'c ()>,
}

impl SourceRecord<'_> {
    pub fn key_len(&self) -> usize {
        // SAFETY: `msg` lives as long as `event`, which this record owns.
        unsafe { (*self.msg).key_len }
    }
    pub fn payload_len(&self) -> usize {
        // SAFETY: as in `key_len`.
        unsafe { (*self.msg).len }
    }
    /// The topic handle's address: the same for every record of a topic while its
    /// partitions are assigned (a cheap key for "same topic as the last record").
    pub fn topic_handle(&self) -> usize {
        // SAFETY: as in `key_len`.
        unsafe { (*self.msg).rkt as usize }
    }
}

impl Drop for SourceRecord<'_> {
    fn drop(&mut self) {
        // SAFETY: the record owns its event (taken in `SourceQueue::handle`).
        unsafe { rdsys::rd_kafka_event_destroy(self.event) }
    }
}

/// # Safety
/// `p` is null or points to `len` readable bytes that outlive `'a`.
unsafe fn slice<'a>(p: *const std::os::raw::c_void, len: usize) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        Some(std::slice::from_raw_parts(p as *const u8, len))
    }
}

impl Message for SourceRecord<'_> {
    type Headers = BorrowedHeaders;

    fn key(&self) -> Option<&[u8]> {
        // SAFETY: key bytes live with the message, which lives as long as `self`.
        unsafe { slice((*self.msg).key, (*self.msg).key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: as in `key`.
        unsafe { slice((*self.msg).payload, (*self.msg).len) }
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let m = self.msg as *mut rdsys::rd_kafka_message_t;
        if (*m).payload.is_null() {
            None
        } else {
            Some(std::slice::from_raw_parts_mut(
                (*m).payload as *mut u8,
                (*m).len,
            ))
        }
    }

    fn topic(&self) -> &str {
        // SAFETY: the topic handle is kept alive by the message; its name by the handle.
        unsafe {
            CStr::from_ptr(rdsys::rd_kafka_topic_name((*self.msg).rkt))
                .to_str()
                .unwrap_or("")
        }
    }

    fn partition(&self) -> i32 {
        // SAFETY: as in `key`.
        unsafe { (*self.msg).partition }
    }

    fn offset(&self) -> i64 {
        // SAFETY: as in `key`.
        unsafe { (*self.msg).offset }
    }

    fn timestamp(&self) -> Timestamp {
        use rdsys::rd_kafka_timestamp_type_t as T;
        let mut kind = T::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: as in `key`; librdkafka only reads the message.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.msg, &mut kind) };
        match (ts, kind) {
            (-1, _) | (_, T::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE) => Timestamp::NotAvailable,
            (ts, T::RD_KAFKA_TIMESTAMP_CREATE_TIME) => Timestamp::CreateTime(ts),
            (ts, T::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME) => Timestamp::LogAppendTime(ts),
        }
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: librdkafka parses the headers into the message (which it owns and keeps
        // alive with it); `BorrowedHeaders` is rust-rdkafka's view of that native list,
        // made from the pointer the way rust-rdkafka makes it.
        unsafe {
            let m = self.msg as *mut rdsys::rd_kafka_message_t;
            if rdsys::rd_kafka_message_headers(m, &mut hdrs) != Err_::RD_KAFKA_RESP_ERR_NO_ERROR
                || hdrs.is_null()
            {
                return None;
            }
            Some(&*(hdrs as *const BorrowedHeaders))
        }
    }
}
