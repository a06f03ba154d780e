//! Micro-benchmarks of the per-record work kmirror itself owns on the copy path: the ack
//! tracker, filter evaluation, the provenance header value, and verification counts.
//! librdkafka's share of a record's cost (consume, produce, headers) is measured end to end
//! by `benches/e2e.sh`, not here.
//!
//! Run: `cargo bench --bench hot_path` (about a minute; settings below keep it short).
//! Add `-- ack_tracker` (or any name fragment) to run a subset.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::Value;

use kmirror::copy::ack_tracker::{AckTracker, Settled};
use kmirror::copy::filter::{Filter, JsonPath, RecordView};
use kmirror::copy::record::{fields_digest, parse_provenance, provenance_value, RawHeader};
use kmirror::counts::Counts;
use kmirror::observe::TaskObserved;

/// A 200-byte JSON order like the e2e workload's (same shape, padded to size).
fn payload(size: usize) -> Vec<u8> {
    let head =
        r#"{"tenant_id":"acme","order_id":123456,"amount":42.5,"meta":{"region":"eu"},"pad":""#;
    let mut v = head.as_bytes().to_vec();
    v.resize(size - 2, b'x');
    v.extend_from_slice(b"\"}");
    serde_json::from_slice::<Value>(&v).expect("valid JSON");
    v
}

fn ack_tracker(c: &mut Criterion) {
    let mut g = c.benchmark_group("ack_tracker");
    const N: i64 = 1000;
    g.throughput(Throughput::Elements(N as u64));
    // The common case: one target partition per source partition, acks in order, a window
    // of N records in flight (what a reader batch puts in flight before reports come back).
    g.bench_function("push_then_settle_in_order/1000", |b| {
        let mut t = AckTracker::new(0);
        let mut next = 0i64;
        b.iter(|| {
            for o in next..next + N {
                t.push(o, Settled::Pending, 240);
            }
            for o in next..next + N {
                black_box(t.settle(o, Settled::Acked));
            }
            next += N;
            black_box(t.position())
        })
    });
    // Key or round-robin partitioning: acks come back in a different order than offsets.
    // Here every other offset settles first (the position cannot move until the rest do).
    g.bench_function("push_then_settle_interleaved/1000", |b| {
        let mut t = AckTracker::new(0);
        let mut next = 0i64;
        b.iter(|| {
            for o in next..next + N {
                t.push(o, Settled::Pending, 240);
            }
            for o in (next + 1..next + N).step_by(2) {
                black_box(t.settle(o, Settled::Acked));
            }
            for o in (next..next + N).step_by(2) {
                black_box(t.settle(o, Settled::Acked));
            }
            next += N;
            black_box(t.position())
        })
    });
    // A deep window (100k pending: 24 MB of 240-byte records in flight on one partition):
    // each settle is a binary search over the deque.
    g.bench_function("settle_in_order_window_100k/1000", |b| {
        b.iter_batched_ref(
            || {
                let mut t = AckTracker::new(0);
                for o in 0..100_000 {
                    t.push(o, Settled::Pending, 240);
                }
                t
            },
            |t| {
                for o in 0..N {
                    black_box(t.settle(o, Settled::Acked));
                }
            },
            BatchSize::LargeInput,
        )
    });
    // Filtered records are pushed already settled.
    g.bench_function("push_settled_filtered/1000", |b| {
        let mut t = AckTracker::new(0);
        let mut next = 0i64;
        b.iter(|| {
            for o in next..next + N {
                t.push(o, Settled::Filtered, 0);
            }
            next += N;
            black_box(t.position())
        })
    });
    // A target outage holds one record while a selective filter settles the rest: the
    // filtered records join one run behind it instead of taking an entry each.
    g.bench_function("push_filtered_behind_pending/1000", |b| {
        let mut t = AckTracker::new(0);
        t.push(0, Settled::Pending, 240);
        let mut next = 1i64;
        b.iter(|| {
            for o in next..next + N {
                t.push(o, Settled::Filtered, 0);
            }
            next += N;
            black_box(t.entries_len())
        })
    });
    // One target partition down holds a record; the rest are acked out of order around
    // filtered ones, so settled entries are folded by compaction.
    g.bench_function("ack_and_filter_behind_stuck/1000", |b| {
        let mut t = AckTracker::new(0);
        t.push(0, Settled::Pending, 240);
        let mut next = 1i64;
        b.iter(|| {
            for o in next..next + N {
                if o % 3 == 0 {
                    t.push(o, Settled::Filtered, 0);
                } else {
                    t.push(o, Settled::Pending, 240);
                    black_box(t.settle(o, Settled::Acked));
                }
            }
            next += N;
            black_box(t.entries_len())
        })
    });
    g.finish();
}

fn filter(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(1));
    let key = b"customer-42".as_slice();
    let hdr_name = b"trace-id".as_slice();
    let hdr_value = b"trace-123456".as_slice();
    let tenant = Filter::JsonEquals(JsonPath::parse("$.tenant_id").unwrap(), Value::from("acme"));
    let region_in = Filter::JsonIn(
        JsonPath::parse("$.meta.region").unwrap(),
        vec![Value::from("eu"), Value::from("us")],
    );
    let key_prefix = Filter::KeyPrefix(b"customer-".to_vec());
    let header_eq = Filter::HeaderEquals(hdr_name.to_vec(), hdr_value.to_vec());
    let combined = Filter::All(vec![
        key_prefix.clone(),
        header_eq.clone(),
        tenant.clone(),
        region_in.clone(),
    ]);
    let other_tenant = Filter::JsonEquals(
        JsonPath::parse("$.tenant_id").unwrap(),
        Value::from("globex"),
    );
    let region_exists = Filter::JsonExists(JsonPath::parse("$.meta.region").unwrap(), true);
    // Eight routes on one topic, one tenant each, none of them this record's: every route
    // asks the same record (one view), as a tenant fan-out does.
    let fan_out = Filter::Any(
        (0..8)
            .map(|t| {
                Filter::JsonEquals(
                    JsonPath::parse("$.tenant_id").unwrap(),
                    Value::from(format!("tenant-{t}")),
                )
            })
            .collect(),
    );
    for size in [200usize, 4096] {
        let p = payload(size);
        // What a JSON predicate cost before the scan (issue 13): a full serde_json parse into
        // a DOM, then the path lookup and the comparison. Kept to show both in one run.
        let path = JsonPath::parse("$.tenant_id").unwrap();
        let acme = Value::from("acme");
        g.bench_function(format!("json_equals_tenant_full_parse/{size}B"), |b| {
            b.iter(|| {
                let doc: Value = serde_json::from_slice(black_box(p.as_slice())).unwrap();
                black_box(path.lookup(&doc) == Some(&acme))
            })
        });
        // A fresh RecordView per record, as the reader makes one: JSON is scanned once per
        // record, on the first JSON predicate.
        let cases: [(&str, &Filter); 8] = [
            ("key_prefix", &key_prefix),
            ("json_fan_out_8_tenants", &fan_out),
            ("header_equals", &header_eq),
            ("json_equals_tenant", &tenant),
            // The tenant-migration route's common case: another tenant's record, dropped.
            ("json_equals_other_tenant", &other_tenant),
            ("json_exists_nested", &region_exists),
            ("json_in_nested", &region_in),
            ("all_of_4", &combined),
        ];
        for (name, f) in cases {
            if size != 200 && !name.starts_with("json_equals") && name != "all_of_4" {
                continue; // payload size only matters to JSON predicates
            }
            g.bench_function(format!("{name}/{size}B"), |b| {
                b.iter(|| {
                    let v = RecordView::new(
                        Some(black_box(key)),
                        Some(black_box(p.as_slice())),
                        Some(1_700_000_000_000),
                        vec![RawHeader {
                            name: hdr_name,
                            value: Some(hdr_value),
                        }],
                    );
                    black_box(f.evaluate(&v))
                })
            });
        }
    }
    g.finish();
}

fn provenance(c: &mut Criterion) {
    let mut g = c.benchmark_group("provenance");
    g.throughput(Throughput::Elements(1));
    g.bench_function("provenance_value", |b| {
        let mut off = 1_234_567i64;
        b.iter(|| {
            off += 1;
            black_box(provenance_value(
                black_box("src-cluster"),
                black_box("orders.v2"),
                black_box(17),
                off,
            ))
        })
    });
    // Not kmirror code: the same value written into a buffer reused across records, as a
    // yardstick for what the per-record `format!` allocation costs.
    g.bench_function("yardstick_write_into_reused_buffer", |b| {
        use std::fmt::Write;
        let mut buf = String::with_capacity(64);
        let mut off = 1_234_567i64;
        b.iter(|| {
            off += 1;
            buf.clear();
            let _ = write!(
                buf,
                "{}/{}/{}/{}",
                black_box("src-cluster"),
                black_box("orders.v2"),
                black_box(17),
                off
            );
            black_box(buf.len())
        })
    });
    let v = provenance_value("src-cluster", "orders.v2", 17, 1_234_567);
    g.bench_function("parse_provenance", |b| {
        b.iter(|| black_box(parse_provenance(black_box(v.as_bytes()))))
    });
    g.finish();
}

fn counts(c: &mut Criterion) {
    let mut g = c.benchmark_group("counts");
    const N: u64 = 1000;
    g.throughput(Throughput::Elements(N));
    // Per record on the copy path: read, produced, then one settlement.
    g.bench_function("read_produce_settle/1000", |b| {
        let mut k = Counts::default();
        b.iter(|| {
            for i in 0..N {
                k.read += 1;
                k.produced += 1;
                k.settled(if i % 50 == 0 {
                    Settled::Filtered
                } else {
                    Settled::Acked
                });
            }
            black_box(k.invariant_holds())
        })
    });
    // What the progress display and the checkpoint writer do per task, every tick.
    g.throughput(Throughput::Elements(64));
    g.bench_function("sum_64_tasks", |b| {
        let tasks: Vec<Counts> = (0..64)
            .map(|i| Counts {
                read: 1000 + i,
                acked: 990 + i,
                filtered: 10,
                produced: 990 + i,
                ..Default::default()
            })
            .collect();
        b.iter(|| {
            let mut total = Counts::default();
            for t in &tasks {
                total.add(black_box(t));
            }
            black_box((total.pending(), total.invariant_holds()))
        })
    });
    g.throughput(Throughput::Elements(N));
    g.bench_function("unread_after_rewind/1000", |b| {
        b.iter_batched_ref(
            || Counts {
                read: N,
                produced: N,
                acked: N / 2,
                ..Default::default()
            },
            |k| {
                for i in 0..N {
                    k.unread(if i < N / 2 {
                        Settled::Acked
                    } else {
                        Settled::Pending
                    });
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// What `/metrics` costs each acknowledged record: bytes, newest timestamp, one latency
/// histogram observation; with the clock read per record, and once per batch of reports.
fn observe(c: &mut Criterion) {
    let mut g = c.benchmark_group("observe");
    const N: u64 = 1000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("acked_clock_per_record/1000", |b| {
        let mut o = TaskObserved::default();
        b.iter(|| {
            for i in 0..N as i64 {
                let now = kmirror::config::value::now_ms();
                o.acked(200, Some(now - 40 - (i % 7)), now);
            }
            black_box(o.latency.count)
        })
    });
    g.bench_function("acked_clock_per_batch/1000", |b| {
        let mut o = TaskObserved::default();
        b.iter(|| {
            let now = kmirror::config::value::now_ms();
            for i in 0..N as i64 {
                o.acked(200, Some(now - 40 - (i % 7)), now);
            }
            black_box(o.latency.count)
        })
    });
    g.finish();
}

/// Verify's per-record content digest (both sides, every record): key, value and headers.
fn content_digest(c: &mut Criterion) {
    let mut g = c.benchmark_group("content_digest");
    g.throughput(Throughput::Elements(1));
    let key = b"customer-123".to_vec();
    for size in [64usize, 1024] {
        let value = vec![b'x'; size];
        let prov = provenance_value("src-cluster", "orders.v2", 17, 1_234_567);
        let headers = [
            RawHeader {
                name: b"trace-id",
                value: Some(b"4bf92f3577b34da6a3ce929d0e0e4736"),
            },
            RawHeader {
                name: b"kmirror.source",
                value: Some(prov.as_bytes()),
            },
        ];
        g.bench_function(format!("fields_digest/{size}B"), |b| {
            b.iter(|| {
                black_box(fields_digest(
                    Some(black_box(&key[..])),
                    Some(black_box(&value[..])),
                    black_box(&headers).iter().cloned(),
                    &[],
                ))
            })
        });
        // Not kmirror code any more: the byte-at-a-time FNV-1a the digest used before
        // (length-prefixed fields, the same bytes), as a yardstick.
        g.bench_function(format!("yardstick_fnv1a_bytewise/{size}B"), |b| {
            fn fnv(h: &mut u64, bytes: &[u8]) {
                for x in bytes {
                    *h ^= *x as u64;
                    *h = h.wrapping_mul(0x100000001b3);
                }
            }
            b.iter(|| {
                let mut h = 0xcbf29ce484222325u64;
                let mut field = |v: &[u8]| {
                    fnv(&mut h, &(v.len() as u64).to_le_bytes());
                    fnv(&mut h, v);
                };
                field(black_box(&key[..]));
                field(black_box(&value[..]));
                for hd in black_box(&headers)
                    .iter()
                    .filter(|h| h.name != b"kmirror.source")
                {
                    field(hd.name);
                    field(hd.value.unwrap_or_default());
                }
                black_box(h)
            })
        });
    }
    g.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = quick();
    targets = ack_tracker, filter, provenance, content_digest, counts, observe
}
criterion_main!(benches);
