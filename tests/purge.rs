//! `kmirror purge` against librdkafka's mock cluster, through the library (`purge::plan`,
//! `purge::execute`): each unsafe case is refused with its reason while the other partitions
//! proceed; a dry run changes nothing on the source; the mock's answer to DeleteRecords and
//! DeleteTopics (it has neither) is a clear per-partition failure with nothing deleted, read
//! back. The DeleteRecords request itself is checked against a protocol-level test double
//! (`common::kafka_double`), which records the offsets it is asked to delete: exactly the
//! verified end of each purgeable partition, and nothing for a refused one.

mod common;

use common::kafka_double::KafkaDouble;
use common::*;
use kmirror::config::Config;
use kmirror::error::exit;
use kmirror::purge::{self, PartitionPurge, PurgeOptions, PurgePlan};

const TOPIC: &str = "orders";
const TS: i64 = 1_700_000_000_000;

/// A route `name` reading TOPIC (from earliest) into `target_topic`, then `extra` lines.
fn route_named(name: &str, target_topic: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nsource = \"{SOURCE}\"\ntopics = [\"{TOPIC}\"]\ntarget = \"{TARGET}\"\ntarget_topic = \"{target_topic}\"\nstart = \"earliest\"\n{extra}\n\n"
    )
}

fn route(extra: &str) -> String {
    route_named("r", TOPIC, extra)
}

fn plan_with(m: &Mirror, config: &Config, opts: &PurgeOptions) -> PurgePlan {
    let p =
        purge::plan(config, &m.store(config), opts).unwrap_or_else(|e| panic!("purge plan: {e}"));
    eprintln!("{}", p.table());
    p
}

fn plan_of(m: &Mirror, config: &Config) -> PurgePlan {
    plan_with(m, config, &PurgeOptions::default())
}

fn part(p: &PurgePlan, partition: i32) -> &PartitionPurge {
    p.partitions
        .iter()
        .find(|x| x.topic == TOPIC && x.partition == partition)
        .unwrap_or_else(|| panic!("no partition {partition} in\n{}", p.table()))
}

/// Asserts partition `n` is refused, one reason containing `why`.
fn assert_refused(p: &PurgePlan, n: i32, why: &str) {
    let x = part(p, n);
    assert!(
        x.refused.iter().any(|r| r.contains(why)),
        "partition {n}: expected a refusal saying {why:?}, got {:?}\n{}",
        x.refused,
        p.table()
    );
    assert!(!x.deletable(), "{}", p.table());
    assert!(p.table().contains(&format!("{} refused: ", x.source())));
}

/// Asserts partition `n` would be deleted: `[0, end)`, `records` records.
fn assert_would_delete(p: &PurgePlan, n: i32, end: i64, records: u64) {
    let x = part(p, n);
    assert!(x.refused.is_empty(), "partition {n}: {:?}", x.refused);
    assert_eq!(
        (x.low, x.delete_before(), x.records),
        (0, end, records),
        "{}",
        p.table()
    );
    assert!(x.deletable());
}

/// Every partition of TOPIC on the source still starts at 0 and holds `count` records.
fn assert_source_intact(m: &Mirror, partitions: i32, count: usize) {
    for p in 0..partitions {
        assert_eq!(watermarks(m.source(), TOPIC, p).0, 0, "partition {p}");
        assert_eq!(
            read_partition(m.source(), TOPIC, p).len(),
            count,
            "partition {p}"
        );
    }
}

/// A fully copied, matching topic: every partition would lose exactly its verified range;
/// the dry run deletes nothing (the source still holds every record) and exits 0.
#[test]
fn dry_run_shows_the_verified_range_and_deletes_nothing() {
    let m = Mirror::start(&[(TOPIC, 3)]);
    produce_numbered(m.source(), TOPIC, 3, 0..100, TS);
    let c = m.config("dry", &route("end = \"snapshot\""));
    run_to_end(&c);
    let p = plan_of(&m, &c);
    for n in 0..3 {
        assert_would_delete(&p, n, 100, 100);
        assert_eq!(part(&p, n).unselected, 0);
    }
    assert_eq!(p.exit_code(), exit::OK);
    assert!(
        p.summary()
            .starts_with("dry run, nothing deleted: 3 of 3 partitions would lose 300 records"),
        "{}",
        p.summary()
    );
    assert!(p.table().contains("WOULD DELETE"));
    assert_source_intact(&m, 3, 100);
}

/// Nothing copied yet: every partition refused, "not copied", exit 1.
#[test]
fn a_route_that_copied_nothing_is_refused() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..50, TS);
    let c = m.config("nothing", &route("end = \"snapshot\""));
    let p = plan_of(&m, &c);
    for n in 0..2 {
        assert_refused(&p, n, "route \"r\": not copied");
    }
    assert_eq!(p.exit_code(), exit::MISMATCH);
}

/// A partition halted on a poison record (on_error = "stop") is INCOMPLETE and refused with
/// where it stopped; the other partitions of the same route are still purgeable.
#[test]
fn a_halted_partition_is_refused_and_the_others_proceed() {
    let m = Mirror::start(&[(TOPIC, 3)]);
    produce_numbered(m.source(), TOPIC, 3, 0..40, TS);
    let mut big = numbered_record(1, 40, TS);
    big.value = Some(vec![b'x'; 2000]);
    produce(m.source(), TOPIC, &[big]);
    produce_numbered(m.source(), TOPIC, 3, 41..60, TS);
    let c = m.config(
        "halted",
        &route(
            "end = \"snapshot\"\nvalidate = { max_record_bytes = \"1KiB\" }\non_error = \"stop\"",
        ),
    );
    let report = run_to_end(&c);
    assert_eq!(report.halted.len(), 1, "{}", report.table());
    let p = plan_of(&m, &c);
    assert_refused(&p, 1, "INCOMPLETE: stopped at 40");
    // Partitions 0 and 2 hold 59 records (0..40 and 41..60), all copied.
    assert_would_delete(&p, 0, 59, 59);
    assert_would_delete(&p, 2, 59, 59);
    assert_eq!(p.exit_code(), exit::MISMATCH);
}

/// A copy that stopped short of its fixed end (a run to `end = 30`, the route now ending at
/// 60) is INCOMPLETE: refused.
#[test]
fn a_copy_short_of_its_end_is_refused() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..60, TS);
    run_to_end(&m.config("short", &route("end = 30")));
    let p = plan_of(&m, &m.config("short", &route("end = 60")));
    for n in 0..2 {
        assert_refused(&p, n, "INCOMPLETE: stopped at 30, 30 short of the end 60");
    }
}

/// A copy that began above the source's first offset (`start = 20`) matches its own range,
/// so verify says OK; but DeleteRecords would delete [0, 20) too, never copied: refused.
#[test]
fn a_copy_that_began_after_the_first_offset_is_refused() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..50, TS);
    let c = m.config(
        "late",
        &route("end = \"snapshot\"").replace("start = \"earliest\"", "start = 20"),
    );
    run_to_end(&c);
    let v = verify_clean(&c, true);
    assert!(v.ok(), "verify calls its own range OK:\n{}", v.table());
    let p = plan_of(&m, &c);
    for n in 0..2 {
        assert_refused(&p, n, "[0, 20) was never copied");
    }
}

/// A target that does not hold the copy (the routing file's target now points at a cluster
/// without it) is a MISMATCH: refused, and nothing deleted.
#[test]
fn a_mismatch_is_refused() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..50, TS);
    let mut c = m.config("mismatch", &route("end = \"snapshot\""));
    run_to_end(&c);
    // The target now names the source cluster, whose `orders` records carry no provenance:
    // none of the copies is there.
    c.clusters.get_mut(TARGET).unwrap().bootstrap = m.source().to_string();
    let p = plan_of(&m, &c);
    for n in 0..2 {
        assert_refused(&p, n, "MISMATCH: 50 missing");
    }
    assert_source_intact(&m, 2, 50);
}

/// Without provenance only counts were compared, which cannot prove which records arrived:
/// refused.
#[test]
fn a_copy_compared_by_count_only_is_refused() {
    let m = Mirror::start(&[(TOPIC, 1)]);
    produce_numbered(m.source(), TOPIC, 1, 0..20, TS);
    let c = m.config("count", &route("end = \"snapshot\"\nprovenance = false"));
    run_to_end(&c);
    let p = plan_of(&m, &c);
    assert_refused(&p, 0, "compared by count only (provenance = false)");
}

/// JSON records of two tenants, `per_tenant` each, in partition 0 (acme first, then globex
/// interleaved).
fn produce_tenants(m: &Mirror, per_tenant: usize) {
    let recs: Vec<TestRecord> = (0..per_tenant * 2)
        .map(|i| TestRecord {
            partition: 0,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(
                format!(
                    "{{\"tenant_id\":\"{}\",\"n\":{i}}}",
                    if i % 2 == 0 { "acme" } else { "globex" }
                )
                .into_bytes(),
            ),
            headers: vec![],
            timestamp: Some(TS + i as i64),
        })
        .collect();
    produce(m.source(), TOPIC, &recs);
}

/// A route that copies one tenant: the other tenant's records in the range would be lost.
/// Refused, saying how many; with `include_unselected` the plan goes ahead and still says
/// how many records no route selected.
#[test]
fn unselected_records_are_refused_unless_included() {
    let m = Mirror::start(&[(TOPIC, 1)]);
    produce_tenants(&m, 30);
    let c = m.config(
        "tenant",
        &route("end = \"snapshot\"\nfilter = { json = \"$.tenant_id\", equals = \"acme\" }"),
    );
    run_to_end(&c);
    let p = plan_of(&m, &c);
    assert_refused(
        &p,
        0,
        "30 records in the range were not selected by any route (filtered out or skipped) and would be lost; give --include-unselected",
    );
    assert_eq!(part(&p, 0).unselected, 30);
    assert!(part(&p, 0).unselected_exact);

    let p = plan_with(
        &m,
        &c,
        &PurgeOptions {
            include_unselected: true,
            ..Default::default()
        },
    );
    assert_would_delete(&p, 0, 60, 60);
    assert_eq!(part(&p, 0).unselected, 30);
    assert_eq!(p.exit_code(), exit::OK);
    assert!(
        p.summary()
            .contains("30 of them were NOT selected by any route and are lost"),
        "{}",
        p.summary()
    );
    assert_source_intact(&m, 1, 60);
}

/// Skipped poison records (on_error = "skip") are unselected too; dead-lettered ones are not
/// lost (the dead-letter topic holds them whole) and do not block, but are shown.
#[test]
fn skipped_records_count_as_unselected_and_dead_lettered_ones_do_not_block() {
    let m = Mirror::start(&[(TOPIC, 1), ("dlq", 1)]);
    produce_numbered(m.source(), TOPIC, 1, 0..20, TS);
    let mut big = numbered_record(0, 20, TS);
    big.value = Some(vec![b'x'; 2000]);
    produce(m.source(), TOPIC, &[big]);
    produce_numbered(m.source(), TOPIC, 1, 21..30, TS);
    let validate = "end = \"snapshot\"\nvalidate = { max_record_bytes = \"1KiB\" }\n";
    let skip = m.config("skip", &route(&format!("{validate}on_error = \"skip\"")));
    run_to_end(&skip);
    let p = plan_of(&m, &skip);
    assert_refused(&p, 0, "1 records in the range were not selected");

    m.create_target_topic("copy-d", 1);
    let dlq = m.config(
        "dlq",
        &route_named(
            "d",
            "copy-d",
            &format!("{validate}on_error = \"dead_letter\"\ndead_letter = {{ cluster = \"{SOURCE}\", topic = \"dlq\" }}"),
        ),
    );
    run_to_end(&dlq);
    let p = plan_of(&m, &dlq);
    assert_would_delete(&p, 0, 30, 30);
    assert_eq!(part(&p, 0).dead_lettered, 1, "{}", p.table());
    assert!(
        p.summary()
            .contains("1 of them were dead-lettered: kept on their dead-letter topics, not lost"),
        "{}",
        p.summary()
    );
}

/// Two routes read the topic (fan-out to two targets). Purging one route deletes the records
/// for both, so the other must have copied them too: `--route a` is refused while route b
/// has copied nothing, and allowed (up to both verified ends) once it has.
#[test]
fn every_route_reading_a_partition_must_have_copied_it() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..40, TS);
    let routes = route_named("a", "copy-a", "end = \"snapshot\"")
        + &route_named("b", "copy-b", "end = \"snapshot\"");
    let a_only = m.config(
        "fanout",
        &(route_named("a", "copy-a", "end = \"snapshot\"")),
    );
    m.create_target_topic("copy-a", 2);
    m.create_target_topic("copy-b", 2);
    run_to_end(&a_only);
    let both = m.config("fanout", &routes);
    let opts = PurgeOptions {
        route: Some("a".into()),
        ..Default::default()
    };
    let p = plan_with(&m, &both, &opts);
    for n in 0..2 {
        assert_eq!(part(&p, n).routes, ["a", "b"]);
        assert_refused(&p, n, "route \"b\": not copied");
    }
    run_to_end(&both);
    let p = plan_with(&m, &both, &opts);
    for n in 0..2 {
        assert_would_delete(&p, n, 40, 40);
    }
}

/// A following route (no `end`) is purged only up to the position verified now: records
/// produced after the copy stopped are behind, not refused, and not deleted; and a topic with
/// records after the verified end is not deleted whole.
#[test]
fn a_following_route_is_purged_only_up_to_the_verified_position() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..50, TS);
    let c = m.config("follow", &route(""));
    let run = spawn_run(&c);
    wait_until("the copy reaches 100", WAIT, || {
        checkpoint_progress(&c) == 100
    });
    run.request_stop();
    run.join(WAIT);
    produce_numbered(m.source(), TOPIC, 2, 50..70, TS);
    let p = plan_with(
        &m,
        &c,
        &PurgeOptions {
            delete_topic: true,
            ..Default::default()
        },
    );
    for n in 0..2 {
        assert_would_delete(&p, n, 50, 50);
        assert!(part(&p, n).following);
    }
    assert!(
        p.table()
            .contains("a following route: only up to 50, the position verified now"),
        "{}",
        p.table()
    );
    assert_eq!(p.topics.len(), 1);
    assert_eq!(p.topics[0].records_after, 40, "{}", p.table());
    assert!(
        p.topics[0].refused[0].contains("40 records lie after the verified ends"),
        "{:?}",
        p.topics[0].refused
    );
}

/// The mock cluster has no DeleteRecords: each partition fails saying so, the first offset
/// read back is unchanged ("nothing was deleted"), exit 4, and every record is still there.
#[test]
fn mock_without_delete_records_fails_clearly_and_deletes_nothing() {
    let m = Mirror::start(&[(TOPIC, 2)]);
    produce_numbered(m.source(), TOPIC, 2, 0..30, TS);
    let c = m.config("mock-delete", &route("end = \"snapshot\""));
    run_to_end(&c);
    let mut p = plan_of(&m, &c);
    purge::execute(&c, &mut p);
    let table = p.table();
    eprintln!("{table}");
    for n in 0..2 {
        let x = part(&p, n);
        let Some(Err(e)) = &x.outcome else {
            panic!("partition {n}: {:?}\n{table}", x.outcome)
        };
        assert!(
            e.contains("the broker does not support DeleteRecords"),
            "{e}"
        );
        assert_eq!(x.low_after, Some(0));
        assert!(
            table.contains(&format!(
                "{} FAILED: the broker does not support DeleteRecords",
                x.source()
            )) && table.contains("first offset still 0: nothing was deleted"),
            "{table}"
        );
    }
    assert!(!table.contains("DELETED"), "{table}");
    assert_eq!(p.exit_code(), exit::CLUSTER);
    assert_source_intact(&m, 2, 30);
}

/// Nor DeleteTopics: `delete_topic` fails saying so and the topic is still there.
#[test]
fn mock_without_delete_topics_fails_clearly() {
    let m = Mirror::start(&[(TOPIC, 1)]);
    produce_numbered(m.source(), TOPIC, 1, 0..10, TS);
    let c = m.config("mock-topic", &route("end = \"snapshot\""));
    run_to_end(&c);
    let mut p = plan_with(
        &m,
        &c,
        &PurgeOptions {
            delete_topic: true,
            ..Default::default()
        },
    );
    assert!(p.topics[0].refused.is_empty(), "{}", p.table());
    purge::execute(&c, &mut p);
    let table = p.table();
    eprintln!("{table}");
    let Some(Err(e)) = &p.topics[0].outcome else {
        panic!("{table}")
    };
    assert!(
        e.contains("no answer to DeleteTopics") && e.contains("may not support it"),
        "{e}"
    );
    assert_eq!(p.exit_code(), exit::CLUSTER);
    assert_source_intact(&m, 1, 10);
}

/// The DeleteRecords request: planned against the mock (verify proves what was copied),
/// executed against the protocol double standing in for the source cluster. It is asked to
/// delete below exactly each purgeable partition's verified end (different per partition),
/// never a refused partition, and its answer becomes each partition's new first offset.
#[test]
fn delete_records_asks_for_exactly_the_verified_ends() {
    let m = Mirror::start(&[(TOPIC, 3)]);
    // 30, 45 and 60 records, and a poison record at 20 in partition 1 (halted there).
    for (n, count) in [(0, 30u64), (1, 45), (2, 60)] {
        let recs: Vec<TestRecord> = (0..count)
            .map(|i| {
                let mut r = numbered_record(n, i, TS);
                if n == 1 && i == 20 {
                    r.value = Some(vec![b'x'; 2000]);
                }
                r
            })
            .collect();
        produce(m.source(), TOPIC, &recs);
    }
    let c = m.config(
        "double",
        &route(
            "end = \"snapshot\"\nvalidate = { max_record_bytes = \"1KiB\" }\non_error = \"stop\"",
        ),
    );
    run_to_end(&c);
    let mut p = plan_of(&m, &c);
    assert_refused(&p, 1, "INCOMPLETE: stopped at 20");

    let double = KafkaDouble::start(&[(TOPIC, 3)]);
    let mut at_double = c.clone();
    at_double.clusters.get_mut(SOURCE).unwrap().bootstrap = double.bootstrap.clone();
    purge::execute(&at_double, &mut p);
    eprintln!("{}", p.table());
    let mut asked = double.deletes.lock().unwrap().clone();
    asked.sort();
    assert_eq!(
        asked,
        [(TOPIC.to_string(), 0, 30), (TOPIC.to_string(), 2, 60)],
        "requests: {:?}",
        double.requests.lock().unwrap()
    );
    let requests = double.requests.lock().unwrap().clone();
    assert_eq!(
        requests
            .iter()
            .filter(|(api, _)| *api == 21)
            .collect::<Vec<_>>(),
        [&(21, 1)],
        "one DeleteRecords request, at v1 (the highest both sides have): {requests:?}"
    );
    assert_eq!(part(&p, 0).outcome, Some(Ok(30)));
    assert_eq!(part(&p, 2).outcome, Some(Ok(60)));
    assert_eq!(part(&p, 1).outcome, None, "a refused partition is not sent");
    assert!(p.table().contains("DELETED"));
    assert_eq!(p.exit_code(), exit::MISMATCH, "one partition refused");
    assert!(
        p.summary()
            .starts_with("deleted the verified records of 2 of 3 partitions"),
        "{}",
        p.summary()
    );
}

/// One route per tenant from one topic: neither route selects every record, but together
/// they do, so nothing would be lost: purgeable (also with `--route a`, which brings route b
/// in), the count exact from deciding every record for both routes. When both routes select
/// the same tenant, the other tenant's records are counted exactly and refused.
#[test]
fn routes_that_together_select_every_record_lose_nothing() {
    let m = Mirror::start(&[(TOPIC, 1)]);
    m.create_target_topic("copy-a", 1);
    m.create_target_topic("copy-b", 1);
    produce_tenants(&m, 30);
    let tenant = |name: &str, t: &str| {
        route_named(
            name,
            &format!("copy-{name}"),
            &format!("end = \"snapshot\"\nfilter = {{ json = \"$.tenant_id\", equals = \"{t}\" }}"),
        )
    };
    let split = m.config("split", &(tenant("a", "acme") + &tenant("b", "globex")));
    run_to_end(&split);
    for route in [None, Some("a".to_string())] {
        let p = plan_with(
            &m,
            &split,
            &PurgeOptions {
                route,
                ..Default::default()
            },
        );
        assert_would_delete(&p, 0, 60, 60);
        let x = part(&p, 0);
        assert_eq!(
            (x.unselected, x.unselected_exact),
            (0, true),
            "{}",
            p.table()
        );
    }

    let same = m.config("same", &(tenant("a", "acme") + &tenant("b", "acme")));
    run_to_end(&same);
    let p = plan_of(&m, &same);
    assert_refused(
        &p,
        0,
        "30 records in the range were not selected by any route",
    );
    assert!(part(&p, 0).unselected_exact);
}
