//! Reading a source consumer's queue in batches without losing which topic an event is
//! about.
//!
//! A reader reads every topic of its source cluster with one consumer, so an
//! end-of-partition or a fetch error must say its topic as well as its partition.
//! rust-rdkafka 0.39's `BaseConsumer::poll` turns end-of-partition into
//! `KafkaError::PartitionEOF(partition)` and every other consumer error into
//! `KafkaError::MessageConsumption(code)`, dropping the topic (and the partition), so this
//! module reads the queue itself. Alternatives were weighed and refused:
//! - a split partition queue per partition: hundreds of queues, and split queues are
//!   deactivated by `assign()`, starve when dropped (rust-rdkafka #535) and can lose a
//!   wakeup (#665);
//! - `enable.partition.eof = false` and ends found by comparing positions with watermarks:
//!   a ListOffsets per partition per look, and under read_committed the end-of-partition
//!   (at the last stable offset) is exactly what the end logic needs in queue order.
//!
//! Records, ends of partition and fetch errors are taken from the consumer queue a batch
//! at a time (`rd_kafka_consume_batch_queue`): one call hands over everything queued (up
//! to a bound), where polling one event per record paid a call, a wake-up check and
//! several clock reads per record (issue 13). In a batch, ends of partition and fetch
//! errors are messages with `err` set whose `rkt`/`partition` name the topic and
//! partition. What librdkafka serves there instead of returning is the one thing to watch:
//! a batch call hands every other operation it meets to the client's C callbacks, which
//! rust-rdkafka never sets (it reads events). So
//! - the main queue (logs, statistics, client-level errors), which rust-rdkafka forwards
//!   into the consumer queue, is taken back for as long as a [`SourceQueue`] lives and
//!   polled with the event API as rust-rdkafka does: log, statistics and error events
//!   reach the client's context, client-level errors come back with the topic and
//!   partition librdkafka attached (`rd_kafka_event_topic_partition`);
//! - the errors librdkafka puts on a partition's own queue as plain errors (a topic or
//!   partition that stopped existing: `rd_kafka_toppar_enq_error`) meet the client's
//!   error callback, set here for the queue's life: it tells the context, and the error
//!   is returned with the topic and partition its text names (the callback is given only
//!   a code and a text).
//!
//! Nothing else may read that consumer's queues meanwhile.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int, c_void};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Message, Timestamp};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
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

/// The consumer queue of a `BaseConsumer`, read in batches (see the module comment).
pub struct SourceQueue<'c, C: ConsumerContext> {
    queue: *mut rdsys::rd_kafka_queue_t,
    /// The client's main queue, not forwarded into `queue` while this lives.
    main: *mut rdsys::rd_kafka_queue_t,
    consumer: &'c BaseConsumer<C>,
    /// What the main queue and the consumer queue held when this was made (before any
    /// assignment: errors only), handed out by the first `take`.
    early: RefCell<Vec<Polled<'c>>>,
    /// The offset of the last error (end of partition included) a batch returned for each
    /// (topic, partition): see `position`.
    error_offsets: RefCell<HashMap<(String, i32), i64>>,
}

thread_local! {
    /// Errors the error callback saw during this thread's current batch call: (code, text).
    static CALLBACK_ERRORS: RefCell<Vec<(Err_, String)>> = const { RefCell::new(Vec::new()) };
}

/// The client's error callback while a `SourceQueue` lives: during a batch call, for the
/// plain error operations librdkafka queues for a partition. Tells the context (as the
/// event path does) and keeps the error for `take`, which runs on this thread right after.
unsafe extern "C" fn on_error<C: ConsumerContext>(
    _rk: *mut rdsys::rd_kafka_t,
    err: c_int,
    reason: *const c_char,
    opaque: *mut c_void,
) {
    let code = Err_::try_from(err).unwrap_or(Err_::RD_KAFKA_RESP_ERR__FAIL);
    let reason = cstr(reason).unwrap_or_default();
    // SAFETY: rust-rdkafka sets the client's opaque to its context (`Arc::as_ptr`), which
    // lives as long as the client, which outlives the `SourceQueue` that set this callback.
    if let Some(context) = (opaque as *const C).as_ref() {
        context.error(KafkaError::Global(code.into()), reason.trim());
    }
    CALLBACK_ERRORS.with(|e| e.borrow_mut().push((code, reason)));
}

/// Sets (or with `None` clears) the live client's error callback.
///
/// # Safety
/// `rk` is a live client. librdkafka reads the callback only on threads that serve the
/// client's queues with callbacks, which are this reader's alone (see the module comment).
unsafe fn set_error_cb(
    rk: *mut rdsys::rd_kafka_t,
    cb: Option<unsafe extern "C" fn(*mut rdsys::rd_kafka_t, c_int, *const c_char, *mut c_void)>,
) {
    // `rd_kafka_conf` returns the client's own configuration (not a copy); librdkafka has
    // no setter on a live client, and the callback field is an ordinary pointer it reads
    // at the moment it serves an error.
    let conf = rdsys::rd_kafka_conf(rk) as *mut rdsys::rd_kafka_conf_t;
    rdsys::rd_kafka_conf_set_error_cb(conf, cb);
}

/// Most messages one `rd_kafka_consume_batch_queue` call takes.
pub const MAX_TAKE: usize = 256;

impl<'c, C: ConsumerContext> SourceQueue<'c, C> {
    pub fn new(consumer: &'c BaseConsumer<C>) -> Option<Self> {
        let rk = consumer.client().native_ptr();
        // SAFETY: new references to the consumer and main queues of a live client;
        // released in drop (or here when one is missing), and `'c` keeps the consumer
        // alive longer than this handle.
        let (queue, main) = unsafe {
            (
                rdsys::rd_kafka_queue_get_consumer(rk),
                rdsys::rd_kafka_queue_get_main(rk),
            )
        };
        if queue.is_null() || main.is_null() {
            for q in [queue, main] {
                if !q.is_null() {
                    // SAFETY: taken just above, released once.
                    unsafe { rdsys::rd_kafka_queue_destroy(q) };
                }
            }
            return None;
        }
        let q = SourceQueue {
            queue,
            main,
            consumer,
            early: RefCell::new(Vec::new()),
            error_offsets: RefCell::new(HashMap::new()),
        };
        // SAFETY: both handles are live (above); the callback's `C` is this consumer's
        // context type.
        unsafe {
            rdsys::rd_kafka_queue_forward(main, std::ptr::null_mut());
            set_error_cb(rk, Some(on_error::<C>));
        }
        // What was forwarded before (logs of the client's creation) is served the way the
        // main queue is from now on, not by a batch call (which would print logs to
        // stderr and turn errors into logs). Nothing is assigned yet: no records.
        let mut early = Vec::new();
        q.serve_events(q.queue, &mut early);
        q.serve_events(q.main, &mut early);
        *q.early.borrow_mut() = early;
        Some(q)
    }

    /// Appends to `out` what is queued now (at most `max` messages, `max` at most
    /// [`MAX_TAKE`]), or else the first message to arrive within `timeout` and what is queued
    /// behind it; before them, the main queue's errors (its logs and statistics go to the
    /// context as they are served). Returns how many messages the consumer queue gave
    /// (records, ends of partition, fetch errors): fewer than `max` means it is empty now.
    pub fn take(&self, timeout: Duration, max: usize, out: &mut Vec<Polled<'c>>) -> usize {
        out.append(&mut self.early.borrow_mut());
        self.serve_events(self.main, out);
        let max = max.clamp(1, MAX_TAKE);
        let mut got = self.batch(0, max, out);
        if got == 0 && !timeout.is_zero() {
            // Waiting for a whole batch would hold the first records back until it filled
            // or `timeout` passed (a batch call waits for `max`): wait for one, then take
            // what followed it.
            let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
            got = self.batch(ms, 1, out);
            if got == 1 && max > 1 {
                got += self.batch(0, max - 1, out);
            }
        }
        got
    }

    /// One `rd_kafka_consume_batch_queue` call: its messages, then the errors the error
    /// callback saw during it, appended to `out`. Returns how many messages it gave.
    fn batch(&self, timeout_ms: i32, max: usize, out: &mut Vec<Polled<'c>>) -> usize {
        let mut raw: Vec<*mut rdsys::rd_kafka_message_t> = Vec::with_capacity(max);
        // SAFETY: the queue handle is valid (see `new`); librdkafka writes at most `max`
        // message pointers into the buffer, and `set_len` covers exactly those (a negative
        // count is an argument error: none written).
        let n = unsafe {
            let n =
                rdsys::rd_kafka_consume_batch_queue(self.queue, timeout_ms, raw.as_mut_ptr(), max);
            let n = n.max(0) as usize;
            raw.set_len(n);
            n
        };
        // Each message is owned by its `SourceRecord` from here on (destroyed once, when
        // that is dropped: handled, discarded with its batch, or unwound).
        let owned: Vec<SourceRecord<'c>> = raw
            .into_iter()
            .map(|msg| SourceRecord {
                msg,
                _consumer: PhantomData,
            })
            .collect();
        out.reserve(owned.len());
        for m in owned {
            // SAFETY: `m` owns a live message.
            let err = unsafe { (*m.msg).err };
            if err == Err_::RD_KAFKA_RESP_ERR_NO_ERROR {
                out.push(Polled::Record(m));
                continue;
            }
            // SAFETY: as above; `rkt` is null or the message's live topic handle, and an
            // error's payload is its text (`len` bytes, not NUL-terminated).
            let (topic, partition, offset, reason) = unsafe {
                let msg = &*m.msg;
                let text = slice(msg.payload, msg.len)
                    .map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned());
                (topic_name(msg.rkt), msg.partition, msg.offset, text)
            };
            drop(m);
            if let (Some(t), true) = (&topic, offset >= 0) {
                self.error_offsets
                    .borrow_mut()
                    .insert((t.clone(), partition), offset);
            }
            // As through the event path, where these are error events: the context hears
            // every one.
            self.consumer
                .context()
                .error(KafkaError::Global(err.into()), reason.trim());
            // A fatal error comes to a consumer as this code (`rd_kafka_set_fatal_error`).
            let fatal = err == Err_::RD_KAFKA_RESP_ERR__FATAL;
            out.push(error_event(err, fatal, topic, partition));
        }
        CALLBACK_ERRORS.with(|e| {
            for (err, reason) in e.borrow_mut().drain(..) {
                let (topic, partition) = match named_partition(&reason) {
                    Some((t, p)) => (Some(t.to_string()), p),
                    None => (None, -1),
                };
                out.push(error_event(err, false, topic, partition));
            }
        });
        n
    }

    /// The consumer's positions (`rd_kafka_position`, which counts control records though
    /// they are never returned), as reading one event at a time left them. A batch call also
    /// moves a
    /// partition's position past an error it returns (to the error's offset + 1: librdkafka
    /// 2.12's `rd_kafka_q_serve_rkmessages` does not skip error messages there), so after
    /// an end of partition at X it says X + 1 where the consumer is at X, and the end
    /// logic would take an open transaction's first offset for read. Where the position is
    /// exactly one past the partition's last returned error, that error's offset is
    /// reported instead: if a record at X was read since (position truly X + 1), this says
    /// one less until the next end of partition, which is the cautious side.
    pub fn position(&self) -> Option<TopicPartitionList> {
        let mut tpl = self.consumer.position().ok()?;
        for ((topic, partition), &at) in self.error_offsets.borrow().iter() {
            let past = tpl
                .find_partition(topic, *partition)
                .and_then(|el| el.offset().to_raw());
            if past == Some(at + 1) {
                let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(at));
            }
        }
        Some(tpl)
    }

    /// Serves what `queue` holds now, without waiting, with the event API: logs and
    /// statistics to the context, errors (and any record, which the main queue should
    /// never hold) appended to `out`.
    fn serve_events(&self, queue: *mut rdsys::rd_kafka_queue_t, out: &mut Vec<Polled<'c>>) {
        loop {
            // SAFETY: `queue` is one of this handle's live queues (see `new`); the event is
            // owned here and handed to `handle`.
            let ev = unsafe { rdsys::rd_kafka_queue_poll(queue, 0) };
            if ev.is_null() {
                return;
            }
            if let Some(p) = unsafe { self.handle(ev) } {
                out.push(p);
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
                let msg = rdsys::rd_kafka_event_message_next(ev) as *mut rdsys::rd_kafka_message_t;
                if msg.is_null() {
                    rdsys::rd_kafka_event_destroy(ev);
                    return None;
                }
                if (*msg).err == Err_::RD_KAFKA_RESP_ERR_NO_ERROR {
                    // The message is the event's own: destroying it destroys the event.
                    return Some(Polled::Record(SourceRecord {
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
        // SAFETY: the client is alive (`'c`); the references taken in `new` are released
        // once, after the main queue is forwarded into the consumer queue again (where
        // rust-rdkafka's `poll` reads it) and the error callback is cleared (events again).
        unsafe {
            set_error_cb(self.consumer.client().native_ptr(), None);
            rdsys::rd_kafka_queue_forward(self.main, self.queue);
            rdsys::rd_kafka_queue_destroy(self.main);
            rdsys::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// The topic and partition a partition's error text starts with: librdkafka writes them
/// as `TOPIC [PARTITION]: ...` (`rd_kafka_toppar_enq_error`); a topic name holds no space.
fn named_partition(reason: &str) -> Option<(&str, i32)> {
    let (topic, rest) = reason.split_once(" [")?;
    let (p, _) = rest.split_once("]: ")?;
    if topic.is_empty() || topic.contains(' ') {
        return None;
    }
    Some((topic, p.parse().ok()?))
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
    /// Owned: from a batch, or the message of a fetch event (whose destruction destroys
    /// the event).
    msg: *mut rdsys::rd_kafka_message_t,
    _consumer: PhantomData<&'c ()>,
}

impl SourceRecord<'_> {
    pub fn key_len(&self) -> usize {
        // SAFETY: `msg` is owned by this record and lives as long as it.
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
        // SAFETY: the record owns its message (see the field), destroyed only here.
        unsafe { rdsys::rd_kafka_message_destroy(self.msg) }
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

#[cfg(test)]
mod tests {
    use super::named_partition;

    #[test]
    fn a_partition_error_text_names_its_topic_and_partition() {
        // As `rd_kafka_toppar_enq_error` writes them.
        assert_eq!(
            named_partition(
                "t-drop [1]: topic does not exist (Broker: Unknown topic or partition)"
            ),
            Some(("t-drop", 1))
        );
        assert_eq!(
            named_partition("a.b_c [12]: desired partition is no longer available (x [3]: y)"),
            Some(("a.b_c", 12))
        );
        // Client-level texts name no partition.
        for text in [
            "rdkafka#consumer-1: 1/1 brokers are down",
            "localhost:9092/1: Connect to ipv4#127.0.0.1:9092 failed [x]: refused",
            " [1]: no topic",
            "t [x]: not a partition",
        ] {
            assert_eq!(named_partition(text), None, "{text}");
        }
    }
}
