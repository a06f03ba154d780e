//! What verify reads of a record, wherever it was read from: a record consumed from a cluster
//! (`batch.rs` makes these from librdkafka's messages, in place) or one held in memory (an
//! archived record, say). The comparison (`blocks.rs`, `compare.rs`) and the route's decisions
//! see only this view, so both sides go through the same digest code.

use std::marker::PhantomData;
use std::ptr::NonNull;

use rdkafka::message::{BorrowedHeaders, Timestamp};
use rdkafka_sys as rdsys;

use crate::copy::filter::RecordView;
use crate::copy::record::{fields_digest, headers_in, RawHeader, RawHeaders};

/// One record as verify compares it: borrowed, nothing copied.
pub struct Record<'a> {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<&'a [u8]>,
    pub(super) payload: Option<&'a [u8]>,
    pub(super) timestamp: Timestamp,
    pub(super) headers: Headers<'a>,
}

/// A record's headers, in order.
#[derive(Clone, Copy)]
pub(super) enum Headers<'a> {
    /// A consumed record's: librdkafka parses them on first use (most scans never look).
    Native(NativeHeaders<'a>),
    /// Headers already held as name and value bytes (a record read from elsewhere than a
    /// consumer, such as an archive).
    Slice(&'a [RawHeader<'a>]),
}

impl<'a> Record<'a> {
    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    pub fn payload(&self) -> Option<&'a [u8]> {
        self.payload
    }

    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The headers as raw bytes, in order, read in place.
    pub fn headers(&self) -> HeaderIter<'a> {
        match self.headers {
            Headers::Native(h) => HeaderIter::Native(h.iter()),
            Headers::Slice(s) => HeaderIter::Slice(s.iter()),
        }
    }

    /// Key + value + header names and values: what the copy path's in-flight bound charges
    /// for the record (`copy::record::record_bytes`), and what a size predicate sees.
    pub fn bytes(&self) -> u32 {
        let n = self.key.map_or(0, <[u8]>::len)
            + self.payload.map_or(0, <[u8]>::len)
            + self
                .headers()
                .map(|h| h.name.len() + h.value.map_or(0, <[u8]>::len))
                .sum::<usize>();
        n.min(u32::MAX as usize) as u32
    }

    /// `copy::record::content_digest` of this record.
    pub fn content_digest(&self, ignore: &[&str]) -> u64 {
        fields_digest(self.key, self.payload, self.headers(), ignore)
    }

    /// The view a route's filter and validation decide on.
    pub fn view(&self) -> RecordView<'a> {
        RecordView::new(
            self.key,
            self.payload,
            self.timestamp.to_millis(),
            self.headers().collect(),
        )
    }
}

/// Iterator over a [`Record`]'s headers.
pub enum HeaderIter<'a> {
    Native(RawHeaders<'a>),
    Slice(std::slice::Iter<'a, RawHeader<'a>>),
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = RawHeader<'a>;

    fn next(&mut self) -> Option<RawHeader<'a>> {
        match self {
            HeaderIter::Native(it) => it.next(),
            HeaderIter::Slice(it) => it.next().cloned(),
        }
    }
}

/// A consumed message's headers, parsed by librdkafka on first use.
#[derive(Clone, Copy)]
pub(super) struct NativeHeaders<'b> {
    msg: NonNull<rdsys::rd_kafka_message_t>,
    _msg: PhantomData<&'b rdsys::rd_kafka_message_t>,
}

impl<'b> NativeHeaders<'b> {
    /// The headers of `m`.
    ///
    /// # Safety
    /// `m` must stay a live message (not destroyed) for `'b`.
    pub(super) unsafe fn new(m: &'b rdsys::rd_kafka_message_t) -> Self {
        NativeHeaders {
            msg: NonNull::from(m),
            _msg: PhantomData,
        }
    }

    pub(super) fn iter(&self) -> RawHeaders<'b> {
        let mut list: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: `msg` is a live message borrowed for `'b` (see `new`); librdkafka parses
        // its headers into a list the message owns (kept until the message is destroyed),
        // and the cast to rust-rdkafka's opaque `BorrowedHeaders` is the one it makes itself.
        let headers: Option<&'b BorrowedHeaders> = unsafe {
            (rdsys::rd_kafka_message_headers(self.msg.as_ptr(), &mut list)
                == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                && !list.is_null())
            .then(|| &*(list as *const BorrowedHeaders))
        };
        headers_in(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::record::PROVENANCE_HEADER;

    /// A record held in memory digests like the same record consumed: the digest code does
    /// not care where a record was read from.
    #[test]
    fn a_record_held_in_memory_digests_and_measures_by_its_parts() {
        let headers = [
            RawHeader {
                name: b"trace-id",
                value: Some(b"t-1"),
            },
            RawHeader {
                name: PROVENANCE_HEADER.as_bytes(),
                value: Some(b"r@src/t/0/7"),
            },
            RawHeader {
                name: b"empty",
                value: None,
            },
        ];
        let r = Record {
            partition: 3,
            offset: 7,
            key: Some(b"k"),
            payload: Some(b"value"),
            timestamp: Timestamp::CreateTime(1_000),
            headers: Headers::Slice(&headers),
        };
        assert_eq!(r.headers().count(), 3);
        assert_eq!(r.bytes() as usize, 1 + 5 + (8 + 3) + (14 + 11) + 5);
        assert_eq!(
            r.content_digest(&[]),
            fields_digest(Some(b"k"), Some(b"value"), headers.iter().cloned(), &[])
        );
        // Provenance never counts; an ignored header does not either.
        let without: Vec<_> = headers
            .iter()
            .filter(|h| h.name != b"trace-id")
            .cloned()
            .collect();
        assert_eq!(
            r.content_digest(&["trace-id"]),
            fields_digest(Some(b"k"), Some(b"value"), without, &[])
        );
        assert_eq!(r.view().timestamp, Some(1_000));
    }
}
