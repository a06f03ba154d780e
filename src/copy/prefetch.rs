//! How much a reader's source consumer may prefetch: the librdkafka properties that bound
//! the memory of records fetched but not yet polled, derived from `[limits]` so that it is
//! the configuration, not the backlog or the number of topics, that bounds it.
//!
//! A heap profile of a copy of 300 topics x 1,000 small records (BENCHMARKS.md, "Threads and
//! memory over many topics") showed what grows: librdkafka holds each prefetched record as
//! an op of ~280 bytes (`rd_kafka_op_new_fetch_msg`), which pins the fetch response buffer
//! that holds the record. Its byte bound, `queued.max.messages.kbytes`, counts record
//! *values* only, so with ~100-byte records a 16 MiB bound let the whole 30 MB backlog in
//! (80 MB of ops, 32 MB of buffers). The consumer queue is one for all partitions (every
//! partition's fetch queue forwards to it and librdkafka checks the forwarded queue), so the
//! partition count itself does not multiply it; the per-record cost does, and one fetch
//! response per broker can arrive beyond the queue's bounds.
//!
//! So the budget (a quarter of `max_in_flight_bytes`, 16 to 64 MiB) is split: half for
//! queued values (`queued.max.messages.kbytes`), half for per-record overhead
//! (`queued.min.messages`, at [`RECORD_OVERHEAD`] bytes a record), and a fetch response is
//! at most a sixteenth of it (`fetch.max.bytes`) unless the cluster's properties say
//! otherwise: librdkafka can take one response per broker beyond the queue's bounds, and
//! turns each of its records into an op as well (measured: 3 brokers with 2 MiB responses
//! held 18 MB of ops for ~100-byte records).

use std::collections::BTreeMap;

/// The smallest and largest prefetch budget (bytes) of one reader.
pub const MIN_BUDGET: u64 = 16 << 20;
pub const MAX_BUDGET: u64 = 64 << 20;

/// What librdkafka holds per prefetched record beyond its value: the op (~280 bytes measured)
/// and the record's framing, key and headers in the fetch buffer it pins.
pub const RECORD_OVERHEAD: u64 = 512;

/// librdkafka's default `message.max.bytes`; `fetch.max.bytes` may not be smaller.
const DEFAULT_MESSAGE_MAX_BYTES: u64 = 1_000_000;

/// The prefetch budget of one reader (one source cluster): a quarter of the overall in-flight
/// bound, clamped to 16-64 MiB, whatever the number of topics or partitions it reads.
pub fn budget(max_in_flight_bytes: u64) -> u64 {
    (max_in_flight_bytes / 4).clamp(MIN_BUDGET, MAX_BUDGET)
}

/// The consumer properties that hold a reader's prefetch to `budget(max_in_flight_bytes)`
/// (plus one fetch response per broker). `properties` are the source cluster's own: a
/// `fetch.max.bytes` set there is the user's choice and kept; `fetch.max.bytes` never goes
/// below `message.max.bytes` (librdkafka refuses that).
pub fn properties(
    max_in_flight_bytes: u64,
    properties: &BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    let budget = budget(max_in_flight_bytes);
    let half = budget / 2;
    let message_max = properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
    [
        ("queued.max.messages.kbytes", half / 1024),
        ("queued.min.messages", half / RECORD_OVERHEAD),
        ("fetch.max.bytes", (budget / 16).max(message_max)),
    ]
    .into_iter()
    .filter(|(k, _)| !properties.contains_key(*k))
    .map(|(k, v)| (k, v.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(props: &[(&'static str, String)], key: &str) -> Option<u64> {
        props
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.parse().expect("a number"))
    }

    /// What the consumer may hold, at most: queued values, per-record overhead of the queued
    /// records, and one fetch response (per broker).
    fn bound(props: &[(&'static str, String)]) -> u64 {
        get(props, "queued.max.messages.kbytes").unwrap() * 1024
            + get(props, "queued.min.messages").unwrap() * RECORD_OVERHEAD
            + get(props, "fetch.max.bytes").unwrap()
    }

    #[test]
    fn the_prefetch_bound_follows_max_in_flight_bytes_within_16_to_64_mib() {
        let none = BTreeMap::new();
        for (in_flight, budget) in [
            (8u64 << 20, 16u64 << 20),
            (128 << 20, 32 << 20),
            (256 << 20, 64 << 20),
            (4 << 30, 64 << 20),
        ] {
            let p = properties(in_flight, &none);
            assert!(
                bound(&p) <= budget + budget / 16,
                "{in_flight}: {p:?} allows {} bytes",
                bound(&p)
            );
            // Enough to keep reading: the count bound is not below a few thousand records.
            assert!(
                get(&p, "queued.min.messages").unwrap() >= 16 * 1024,
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_cluster_s_own_fetch_max_bytes_is_kept_and_message_max_bytes_is_respected() {
        let own: BTreeMap<String, String> =
            [("fetch.max.bytes".to_string(), "8388608".to_string())].into();
        assert_eq!(get(&properties(8 << 20, &own), "fetch.max.bytes"), None);
        let big: BTreeMap<String, String> =
            [("message.max.bytes".to_string(), "10000000".to_string())].into();
        assert_eq!(
            get(&properties(8 << 20, &big), "fetch.max.bytes"),
            Some(10_000_000)
        );
    }
}
