//! Verify's reads from librdkafka in batches: one partition's messages on a queue of their
//! own, taken a batch at a time (`rd_kafka_consume_batch_queue`) and offered as
//! [`Record`]s read in place. rust-rdkafka's `BaseConsumer::poll` returns one message per
//! call, each wrapped in an event and an `Arc`, with a queue lock and several clock reads
//! per message (a fifth of verify's CPU at 6M records, BENCHMARKS.md, issue 9). Every call
//! into librdkafka's C API for verify's reads is in this file.
//!
//! Ownership, as librdkafka defines it: every message a batch returns belongs to the caller
//! until `rd_kafka_message_destroy`. [`PartitionReader::next_batch`] lends each message to
//! its callback and destroys it as soon as the callback returns, the rest of the batch when
//! the callback stops early, and whatever is left when dropped (also while unwinding).
//! Errors for the partition (end of partition, offset out of range) arrive as messages with
//! `err` set. The partition's queue is split off the consumer's queue before the partition
//! is assigned, and forwarded back when the reader is dropped, so what was fetched ahead
//! and not read lands where the next scan's [`drain`] destroys it.

use std::ffi::CString;
use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Timestamp;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka_sys as rdsys;

use super::record::{Headers, NativeHeaders, Record};

/// What a batch holds for a partition.
pub(super) enum Entry<'b> {
    Record(Record<'b>),
    /// librdkafka's error for the partition (end of partition included), and its text.
    Error {
        code: RDKafkaErrorCode,
        offset: i64,
        text: String,
    },
}

/// One partition's messages, read a batch at a time from their own queue.
pub(super) struct PartitionReader<'c> {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// The consumer's queue: where the partition's messages go again once this is dropped.
    home: NonNull<rdsys::rd_kafka_queue_t>,
    /// The current batch: owned; those before `done` are destroyed already, the rest are
    /// destroyed before the next batch and on drop.
    msgs: Vec<*mut rdsys::rd_kafka_message_t>,
    done: usize,
    _consumer: PhantomData<&'c ()>,
}

impl<'c> PartitionReader<'c> {
    /// Splits `topic`/`partition`'s messages off `consumer`'s queue, to be read here in
    /// batches of up to `batch`. Call it before assigning the partition: what librdkafka
    /// fetched for it earlier stays on the consumer's queue (see [`drain`]). `None` for a
    /// topic name librdkafka cannot hold, or a consumer without a consumer queue.
    pub(super) fn split<C: ConsumerContext>(
        consumer: &'c BaseConsumer<C>,
        topic: &str,
        partition: i32,
        batch: usize,
    ) -> Option<PartitionReader<'c>> {
        let name = CString::new(topic).ok()?;
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is the live client `consumer` owns, and `'c` keeps it alive for as long
        // as these queue handles; each call returns a new reference (or null), released in
        // `drop` (or right here when the other one is missing).
        unsafe {
            let home = NonNull::new(rdsys::rd_kafka_queue_get_consumer(rk));
            let queue = NonNull::new(rdsys::rd_kafka_queue_get_partition(
                rk,
                name.as_ptr(),
                partition,
            ));
            match (queue, home) {
                (Some(queue), Some(home)) => {
                    // Stops forwarding: from now on the partition's messages stay on its own
                    // queue (librdkafka no longer re-forwards an application-set queue when
                    // the partition is assigned).
                    rdsys::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut());
                    Some(PartitionReader {
                        queue,
                        home,
                        msgs: Vec::with_capacity(batch.max(1)),
                        done: 0,
                        _consumer: PhantomData,
                    })
                }
                (q, h) => {
                    for p in [q, h].into_iter().flatten() {
                        rdsys::rd_kafka_queue_destroy(p.as_ptr());
                    }
                    None
                }
            }
        }
    }

    /// Takes the next batch, offering its entries to `f` in order and destroying each
    /// message as soon as `f` returns (parsed headers and all: freed where they were
    /// allocated, while the allocator's per-thread cache still has room), the rest of the
    /// batch when `f` breaks. A batch is what is queued now, or else the first message to
    /// arrive within `wait` and whatever is queued behind it. Returns how many entries were
    /// offered, or what `f` broke with.
    pub(super) fn next_batch<B>(
        &mut self,
        wait: Duration,
        mut f: impl FnMut(Entry<'_>) -> ControlFlow<B>,
    ) -> Result<usize, B> {
        self.release();
        if self.take(0, self.msgs.capacity()) == 0 && !wait.is_zero() {
            // Waiting for a whole batch would hold the first records back until it filled
            // or `wait` passed; wait for one, then take what followed it.
            let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
            if self.take(ms, 1) == 1 {
                self.take(0, self.msgs.capacity() - 1);
            }
        }
        while self.done < self.msgs.len() {
            let m = self.msgs[self.done];
            // SAFETY: `m` is a message this batch owns and has not destroyed (at or past
            // `done`); the entry borrows it only for this call of `f`.
            let flow = f(unsafe { entry(&*m) });
            // SAFETY: destroyed once: `done` moves past it at once, and only messages at or
            // past `done` are ever destroyed (here or in `release`, also on unwinding).
            unsafe { rdsys::rd_kafka_message_destroy(m) };
            self.done += 1;
            if let ControlFlow::Break(b) = flow {
                self.release();
                return Err(b);
            }
        }
        let n = self.msgs.len();
        self.release();
        Ok(n)
    }

    /// Appends up to `max` messages (waiting up to `timeout_ms` until `max` arrived);
    /// returns how many.
    fn take(&mut self, timeout_ms: i32, max: usize) -> usize {
        let len = self.msgs.len();
        let max = max.min(self.msgs.capacity() - len);
        if max == 0 {
            return 0;
        }
        // SAFETY: librdkafka writes at most `max` message pointers from `len` on, within the
        // Vec's capacity; `set_len` then covers exactly those it wrote (a negative count is
        // an argument error: none written).
        unsafe {
            let n = rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                self.msgs.as_mut_ptr().add(len),
                max,
            );
            let n = n.max(0) as usize;
            self.msgs.set_len(len + n);
            n
        }
    }

    /// Destroys what is left of the current batch.
    fn release(&mut self) {
        for &m in &self.msgs[self.done..] {
            // SAFETY: each message was returned by `rd_kafka_consume_batch_queue` to this
            // batch alone; those before `done` are destroyed already, these not yet, and
            // `msgs` is emptied right after, so each is destroyed exactly once. No entry
            // borrows them any more (`next_batch` lends them only during `f`).
            unsafe { rdsys::rd_kafka_message_destroy(m) };
        }
        self.msgs.clear();
        self.done = 0;
    }
}

impl Drop for PartitionReader<'_> {
    fn drop(&mut self) {
        self.release();
        // SAFETY: both handles are ours (see `split`), each released once, while the client
        // is still alive (`'c`). Forwarding moves what is still queued for the partition to
        // the consumer's queue, as librdkafka does for a partition nobody split off.
        unsafe {
            rdsys::rd_kafka_queue_forward(self.queue.as_ptr(), self.home.as_ptr());
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
            rdsys::rd_kafka_queue_destroy(self.home.as_ptr());
        }
    }
}

/// Destroys what is waiting on `consumer`'s own queue (records of partitions read before,
/// fetched ahead and not read; logs and errors, which its context handles), at most `max`
/// events, without waiting. Returns the records destroyed.
pub(super) fn drain<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    max: usize,
) -> (u64, Vec<rdkafka::error::KafkaError>) {
    let (mut records, mut errors) = (0u64, Vec::new());
    for _ in 0..max {
        match consumer.poll(Duration::ZERO) {
            None => break,
            Some(Ok(_)) => records += 1,
            Some(Err(e)) => errors.push(e),
        }
    }
    (records, errors)
}

/// A consumed message as an [`Entry`], borrowing it.
///
/// # Safety
/// `m` must be a message returned by librdkafka's consume calls and not yet destroyed.
unsafe fn entry(m: &rdsys::rd_kafka_message_t) -> Entry<'_> {
    let bytes = |p: *mut std::os::raw::c_void, len: usize| {
        // SAFETY (caller's): librdkafka's key and payload pointers are valid for their
        // lengths while the message lives; null means absent.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
    };
    if m.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // An error's payload is its text (not NUL-terminated within `len`).
        let text = bytes(m.payload, m.len)
            .map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned());
        return Entry::Error {
            code: m.err.into(),
            offset: m.offset,
            text,
        };
    }
    let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY (caller's): a live message, only read.
    let ms = unsafe { rdsys::rd_kafka_message_timestamp(m, &mut kind) };
    let timestamp = match kind {
        _ if ms == -1 => Timestamp::NotAvailable,
        rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => {
            Timestamp::NotAvailable
        }
        rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
            Timestamp::CreateTime(ms)
        }
        rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
            Timestamp::LogAppendTime(ms)
        }
    };
    Entry::Record(Record {
        partition: m.partition,
        offset: m.offset,
        key: bytes(m.key, m.key_len),
        payload: bytes(m.payload, m.len),
        timestamp,
        // SAFETY (caller's): `m` is live for the record's lifetime.
        headers: Headers::Native(unsafe { NativeHeaders::new(m) }),
    })
}
