//! The JSON field filter end to end on a mock cluster, on the payloads where a lazy scan
//! could part ways with a full parse: escaped keys and values, duplicate keys, numbers
//! written differently, invalid JSON after the field, nesting beyond serde_json's limit.
//! Each record's fate (copied, filtered, skipped as poison) is decided here independently,
//! by serde_json on the test's side, and checked against what reached the target, the run
//! report and `verify`.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

/// What a route with `filter = { json = "$.tenant_id", equals = "acme" }` and
/// `on_error = "skip"` does with `payload`, by the full parse the filter has always meant.
fn expected_fate(payload: Option<&[u8]>) -> &'static str {
    let Some(p) = payload else {
        return "filtered"; // a tombstone has no fields
    };
    match serde_json::from_slice::<Value>(p) {
        Err(_) => "skipped",
        Ok(v) if v.get("tenant_id") == Some(&Value::from("acme")) => "copied",
        Ok(_) => "filtered",
    }
}

#[test]
fn json_filter_decides_tricky_payloads_as_a_full_parse_would() {
    let deep = format!(
        r#"{{"tenant_id":"acme","n":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let pad = "x".repeat(150);
    let payloads: Vec<Option<Vec<u8>>> = [
        // (payload, the fate this test expects; checked against serde_json below)
        (br#"{"tenant_id":"acme"}"#.to_vec(), "copied"),
        (br#"{"tenant_id":"globex"}"#.to_vec(), "filtered"),
        (br#"{"tenant\u005fid":"acme"}"#.to_vec(), "copied"),
        (br#"{"tenant_id":"\u0061cme"}"#.to_vec(), "copied"),
        (
            br#"{"tenant_id":"acme","tenant_id":"globex"}"#.to_vec(),
            "filtered",
        ),
        (
            br#"{"tenant_id":"globex","tenant_id":"acme"}"#.to_vec(),
            "copied",
        ),
        (br#"{"meta":{"tenant_id":"acme"}}"#.to_vec(), "filtered"),
        (br#"{"tenant_id":"acme ","n":1.0}"#.to_vec(), "filtered"),
        (
            format!(r#" {{ "tenant_id" : "acme" , "pad" : "{pad}" }} "#).into_bytes(),
            "copied",
        ),
        (
            r#"{"tenant_id":"acme","name":"Zoë 😀"}"#.as_bytes().to_vec(),
            "copied",
        ),
        // Invalid after the field: the whole payload is still not JSON.
        (br#"{"tenant_id":"acme","n":[1,2"#.to_vec(), "skipped"),
        (br#"{"tenant_id":"acme"} trailing"#.to_vec(), "skipped"),
        (
            b"{\"tenant_id\":\"acme\",\"x\":\"\xff\"}".to_vec(),
            "skipped",
        ),
        (br#"{"tenant_id":"acme","x":"\ud800"}"#.to_vec(), "skipped"),
        (br#"{"tenant_id":"acme","big":1e400}"#.to_vec(), "skipped"),
        (deep.into_bytes(), "skipped"),
        (br#"{"tenant_id":"globex","n":[1,2"#.to_vec(), "skipped"),
    ]
    .into_iter()
    .map(|(p, fate)| {
        assert_eq!(
            expected_fate(Some(&p)),
            fate,
            "{}",
            String::from_utf8_lossy(&p)
        );
        Some(p)
    })
    .chain([None]) // a tombstone
    .collect();

    let m = Mirror::start(&[("orders", 1)]);
    let records: Vec<TestRecord> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| TestRecord {
            key: Some(format!("k{i}").into_bytes()),
            value: p.clone(),
            ..Default::default()
        })
        .collect();
    produce(m.source(), "orders", &records);
    // Four routes on the one topic ask each record in turn (one view of it): the later ones
    // are answered from the record's indexed top-level members rather than a full scan.
    let routes: Vec<String> = (1..=4).map(|n| format!("acme{n}")).collect();
    let mut text = String::new();
    for r in &routes {
        m.create_target_topic(r, 1);
        text.push_str(&format!(
            "[[routes]]\nname = \"{r}\"\nsource = \"src\"\ntarget = \"dst\"\ntopics = [\"orders\"]\n\
             target_topic = \"{r}\"\nend = \"snapshot\"\n\
             filter = {{ json = \"$.tenant_id\", equals = \"acme\" }}\non_error = \"skip\"\n\n"
        ));
    }
    let config = m.config("jsonf", &text);
    let report = run_to_end(&config);
    assert!(report.complete, "{}", report.table());
    assert_report_invariant(&report);

    let want = |fate: &str| -> BTreeSet<i64> {
        (0..payloads.len() as i64)
            .filter(|&o| expected_fate(payloads[o as usize].as_deref()) == fate)
            .collect()
    };
    assert_eq!(report.rows.len(), routes.len(), "{}", report.table());
    for r in &routes {
        let copied: BTreeSet<i64> = census(&read_topic(m.target(), r), SOURCE, "orders")
            .into_iter()
            .map(|((_, o), n)| {
                assert_eq!(n, 1, "{r}: offset {o} copied {n} times");
                o
            })
            .collect();
        assert_eq!(
            copied,
            want("copied"),
            "{r}: source offsets that reached the target"
        );
        let row = report
            .rows
            .iter()
            .find(|x| &x.route == r)
            .expect("a row per route");
        let c = row.counts;
        assert_eq!(
            (c.read, c.acked, c.filtered, c.skipped, c.failed),
            (
                payloads.len() as u64,
                want("copied").len() as u64,
                want("filtered").len() as u64,
                want("skipped").len() as u64,
                0
            ),
            "{r}: (read, acked, filtered, skipped, failed)\n{}",
            report.table()
        );
    }
    // verify applies the same filter to the source: nothing missing, nothing extra.
    verify_clean(&config, true);
}
