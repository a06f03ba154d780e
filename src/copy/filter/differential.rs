//! The scanning JSON evaluator against the one it replaced (a full serde_json parse, then
//! `JsonPath::lookup`, then `json_eq`): the same outcome, error text included, for every
//! predicate on a hand-written corpus and on thousands of generated and mutated documents.

use serde_json::Value;

use super::*;

/// Yesterday's evaluator, kept as the reference: parse everything, then look up.
fn old_eval(f: &Filter, payload: Option<&[u8]>) -> Outcome {
    fn parsed(payload: Option<&[u8]>) -> Result<Option<Value>, String> {
        match payload {
            None => Ok(None),
            Some(p) => serde_json::from_slice(p)
                .map(Some)
                .map_err(|e| format!("payload is not valid JSON: {e}")),
        }
    }
    fn field(payload: Option<&[u8]>, p: &JsonPath) -> Result<Option<Value>, String> {
        match parsed(payload) {
            Ok(Some(v)) => Ok(p.lookup(&v).cloned()),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("cannot evaluate {}: {e}", p.text)),
        }
    }
    fn eval(f: &Filter, payload: Option<&[u8]>) -> Result<bool, String> {
        Ok(match f {
            Filter::JsonEquals(p, v) => field(payload, p)?.is_some_and(|x| json_eq(&x, v)),
            Filter::JsonIn(p, vs) => {
                field(payload, p)?.is_some_and(|x| vs.iter().any(|v| json_eq(&x, v)))
            }
            Filter::JsonExists(p, want) => field(payload, p)?.is_some() == *want,
            Filter::All(fs) => {
                for f in fs {
                    if !eval(f, payload)? {
                        return Ok(false);
                    }
                }
                true
            }
            Filter::Any(fs) => {
                for f in fs {
                    if eval(f, payload)? {
                        return Ok(true);
                    }
                }
                false
            }
            Filter::Not(f) => !eval(f, payload)?,
            other => unreachable!("only JSON predicates are compared: {other:?}"),
        })
    }
    match eval(f, payload) {
        Ok(true) => Outcome::Pass,
        Ok(false) => Outcome::Drop,
        Err(e) => Outcome::Invalid(e),
    }
}

fn path(p: &str) -> JsonPath {
    JsonPath::parse(p).unwrap()
}

/// Predicates over the paths and values the corpus and the generator use.
fn filters() -> Vec<Filter> {
    let paths = [
        "tenant_id",
        "a",
        "b",
        "a.b",
        "a.a",
        "b.a.b",
        "a[0]",
        "a[1]",
        "a[1].b",
        "a[0][1]",
        "é",
        "k\"q",
        "😀",
        "x\\y",
        "a\u{0}b",
        "meta.region",
    ];
    let targets: Vec<Value> = vec![
        Value::from("acme"),
        Value::from("x"),
        Value::from(""),
        Value::from("é"),
        Value::from("😀"),
        Value::from("\"\\/"),
        Value::from("a\u{0}b"),
        Value::from(1),
        Value::from(1.0),
        Value::from(-1),
        Value::from(0),
        Value::from(0.5),
        Value::from(u64::MAX),
        Value::from(i64::MIN),
        Value::from(1e300),
        Value::from(true),
        Value::from(false),
        serde_json::json!([1, "x"]),
        serde_json::json!({"b": 1}),
        serde_json::json!({}),
        serde_json::json!([]),
    ];
    let mut fs = Vec::new();
    for p in paths {
        fs.push(Filter::JsonExists(path(p), true));
        fs.push(Filter::JsonExists(path(p), false));
        for t in &targets {
            fs.push(Filter::JsonEquals(path(p), t.clone()));
        }
        fs.push(Filter::JsonIn(path(p), targets.clone()));
        fs.push(Filter::JsonIn(path(p), vec![]));
    }
    // Combinations ask the same record several times (the first answer is cached or not).
    fs.push(Filter::All(vec![
        Filter::JsonExists(path("a"), true),
        Filter::Not(Box::new(Filter::JsonEquals(path("a.b"), Value::from(1)))),
    ]));
    fs.push(Filter::Any(vec![
        Filter::JsonEquals(path("b"), Value::from("x")),
        Filter::JsonIn(path("a[0]"), vec![Value::from(1.0), Value::from("x")]),
    ]));
    fs
}

fn hand_written() -> Vec<Vec<u8>> {
    let mut docs: Vec<Vec<u8>> = [
        // Plain, whitespace, scalars at the top.
        r#"{"tenant_id":"acme","a":1}"#,
        " \t\r\n{ \"a\" : { \"b\" : 1 } } \n",
        r#"{}"#,
        r#"[]"#,
        r#""acme""#,
        r#"1"#,
        r#"null"#,
        r#"true"#,
        r#"[1,"x",{"b":1}]"#,
        r#"{"a":[1,{"b":"x"}],"b":"x"}"#,
        r#"{"a":[[0,1],{"b":1.0}]}"#,
        // Escapes: in values, in keys that equal the path once decoded, surrogate pairs.
        r#"{"a":"\"\\\/"}"#,
        r#"{"\u0061":"x"}"#,
        r#"{"\u0061":{"\u0062":1}}"#,
        r#"{"k\"q":"x"}"#,
        r#"{"x\\y":"x"}"#,
        r#"{"a\u0000b":"a\u0000b"}"#,
        r#"{"\u00e9":"\u00e9"}"#,
        r#"{"é":"é"}"#,
        r#"{"😀":"\ud83d\ude00"}"#,
        r#"{"\ud83d\ude00":"😀"}"#,
        r#"{"a":"\u0078"}"#,
        r#"{"a":"\ud83d"}"#,
        r#"{"a":"\ude00"}"#,
        r#"{"a":"\ud83d\u0041"}"#,
        r#"{"a":"\ud83dx"}"#,
        r#"{"a":"\u12"}"#,
        r#"{"a":"\u12g4"}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\"#,
        r#"{"\a":1}"#,
        // Duplicate keys: the last one counts, at every level.
        r#"{"a":1,"a":"x"}"#,
        r#"{"a":"x","a":1}"#,
        r#"{"a":{"b":1},"a":{"c":1}}"#,
        r#"{"a":{"c":1},"a":{"b":1}}"#,
        r#"{"a":{"b":1,"b":2}}"#,
        r#"{"\u0061":"x","a":1}"#,
        r#"{"a":1,"\u0061":"x"}"#,
        r#"{"a":{"b":1},"a":5}"#,
        // Numbers: equality is f64 equality.
        r#"{"a":1.0}"#,
        r#"{"a":1e0}"#,
        r#"{"a":10E-1}"#,
        r#"{"a":1E+0}"#,
        r#"{"a":-0}"#,
        r#"{"a":-0.0}"#,
        r#"{"a":0.50}"#,
        r#"{"a":18446744073709551615}"#,
        r#"{"a":18446744073709551616}"#,
        r#"{"a":-9223372036854775808}"#,
        r#"{"a":-9223372036854775809}"#,
        r#"{"a":1e300}"#,
        r#"{"a":1e308}"#,
        r#"{"a":1.7976931348623157e308}"#,
        r#"{"a":1.7976931348623159e308}"#,
        r#"{"a":1e309}"#,
        r#"{"a":1e400,"b":"x"}"#,
        r#"{"a":-1e400}"#,
        r#"{"a":1e-400}"#,
        r#"{"a":0e99999999999999999999}"#,
        r#"{"a":1e99999999999999999999}"#,
        r#"{"a":0.000000000000000000000000000000000000000001e42}"#,
        r#"{"a":01}"#,
        r#"{"a":00}"#,
        r#"{"a":1.}"#,
        r#"{"a":.5}"#,
        r#"{"a":-}"#,
        r#"{"a":1e}"#,
        r#"{"a":1e+}"#,
        r#"{"a":+1}"#,
        r#"{"a":1.5.3}"#,
        r#"{"a":NaN}"#,
        r#"{"a":Infinity}"#,
        // Invalid documents, the field before the damage.
        r#"{"tenant_id":"acme""#,
        r#"{"tenant_id":"acme","#,
        r#"{"tenant_id":"acme"} x"#,
        r#"{"tenant_id":"acme"}}"#,
        r#"{"tenant_id":"acme",}"#,
        r#"{"tenant_id":"acme","a":[1,]}"#,
        r#"{"tenant_id":"acme","a":tru}"#,
        r#"{"tenant_id":"acme","a":truex}"#,
        r#"{"tenant_id":"acme","a":nul}"#,
        r#"{"tenant_id":"acme" "a":1}"#,
        r#"{"tenant_id":"acme","a"1}"#,
        r#"{"tenant_id":"acme",1:1}"#,
        r#"{'a':1}"#,
        r#"{"tenant_id":"acme"}{}"#,
        "",
        " ",
        "\u{feff}{\"a\":1}",
        "{\"tenant_id\":\"acme\",\"a\":\"\u{1}\"}",
        "{\"tenant_id\":\"acme\",\"a\":\"\t\"}",
        "{\"tenant_id\":\"acme\",\"a\":\"\u{7f}\"}",
        "{\"a\":1}\u{0}",
        "{\"a\":1}\u{a0}",
        "{\"a\":1}\u{c}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Invalid UTF-8, in a value after the field, in a key, outside strings.
    for bad in [
        &b"\xff"[..],
        b"\xc3",
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
    ] {
        for (pre, post) in [
            (&b"{\"tenant_id\":\"acme\",\"b\":\""[..], &b"\"}"[..]),
            (b"{\"tenant_id\":\"acme\",\"", b"\":1}"),
            (b"{\"tenant_id\":\"acme\",\"b\":", b"}"),
            (
                b"{\"tenant_id\":\"acme\",\"b\":\"xxxxxxxxxxxxxxxxxxxxxx",
                b"xxxxxxxxxxx\"}",
            ),
        ] {
            docs.push([pre, bad, post].concat());
        }
    }
    // Deep nesting around serde_json's recursion limit, the field before and inside it.
    for depth in [1usize, 126, 127, 128, 129, 200] {
        let open = "[".repeat(depth);
        let close = "]".repeat(depth);
        docs.push(format!(r#"{{"tenant_id":"acme","b":{open}{close}}}"#).into_bytes());
        docs.push(format!("{open}{close}").into_bytes());
        let objs = "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth);
        docs.push(objs.into_bytes());
        docs.push(format!(r#"{{"a":{open}1{close}}}"#).into_bytes());
    }
    // A long string (the eight-bytes-at-a-time path) with specials at every offset.
    for i in 0..24 {
        for special in ["\\\"", "\\u00e9", "é", "\u{1}", "\"", "😀"] {
            let mut s = "x".repeat(i);
            s.push_str(special);
            s.push_str(&"y".repeat(24 - i));
            docs.push(format!(r#"{{"b":"{s}","a":"x"}}"#).into_bytes());
            docs.push(format!(r#"{{"{s}":1,"a":"x"}}"#).into_bytes());
        }
    }
    docs
}

/// xorshift64*: a seeded generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

fn ws(rng: &mut Rng, out: &mut String) {
    if rng.below(4) == 0 {
        out.push_str(rng.pick(&[" ", "\n", "\t", "\r\n ", "  "]));
    }
}

/// A JSON string literal for `s`, each character written plainly or as an escape.
fn string(rng: &mut Rng, s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let plain = !matches!(c, '"' | '\\' | '\u{0}'..='\u{1f}');
        if plain && rng.below(5) != 0 {
            out.push(c);
            continue;
        }
        match (c, rng.below(2)) {
            ('"', 0) => out.push_str("\\\""),
            ('\\', 0) => out.push_str("\\\\"),
            ('/', 0) => out.push_str("\\/"),
            ('\n', 0) => out.push_str("\\n"),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

const KEYS: &[&str] = &[
    "a",
    "b",
    "tenant_id",
    "é",
    "k\"q",
    "😀",
    "x\\y",
    "a\u{0}b",
    "c",
];
const STRINGS: &[&str] = &["acme", "x", "", "é", "😀", "\"\\/", "a\u{0}b", "y/z\n"];
const NUMBERS: &[&str] = &[
    "1",
    "1.0",
    "1e0",
    "10E-1",
    "-1",
    "-0",
    "0",
    "0.5",
    "5e-1",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e300",
    "1E+300",
    "123456789.123456789",
];

fn value(rng: &mut Rng, depth: usize, out: &mut String) {
    let kind = if depth > 4 {
        rng.below(4)
    } else {
        rng.below(7)
    };
    match kind {
        0 => {
            let s = rng.pick(STRINGS);
            string(rng, s, out)
        }
        1 => out.push_str(rng.pick(NUMBERS)),
        2 => out.push_str(rng.pick(&["true", "false", "null"])),
        3 => {
            let s = "x".repeat(rng.below(40));
            string(rng, &s, out)
        }
        4 | 5 => {
            out.push('{');
            let n = rng.below(5);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                let k = rng.pick(KEYS);
                string(rng, k, out);
                ws(rng, out);
                out.push(':');
                ws(rng, out);
                value(rng, depth + 1, out);
                ws(rng, out);
            }
            out.push('}');
        }
        _ => {
            out.push('[');
            let n = rng.below(4);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                value(rng, depth + 1, out);
                ws(rng, out);
            }
            out.push(']');
        }
    }
}

/// Damage a document the ways payloads get damaged.
fn mutate(rng: &mut Rng, doc: &mut Vec<u8>) {
    const TAILS: &[&[u8]] = &[b" x", b"{}", b"1", b",", b"\xff"];
    const PIECES: &[&[u8]] = &[b"\\u", b"\\ud800", b"\\udc00", b"\\q", b"1e999"];
    const BYTES: &[u8] = b"\"\\{}[],:0123456789-+.eEtfnu \t\n\x00\x01\x7f\x80\xc3\xed\xff";
    for _ in 0..1 + rng.below(2) {
        let at = if doc.is_empty() {
            0
        } else {
            rng.below(doc.len())
        };
        match rng.below(6) {
            0 => doc.truncate(at),
            1 => doc.insert(at, rng.pick(BYTES)),
            2 if !doc.is_empty() => {
                doc.remove(at);
            }
            3 if !doc.is_empty() => doc[at] = rng.pick(BYTES),
            4 => {
                let tail: &[u8] = rng.pick(TAILS);
                doc.extend_from_slice(tail);
            }
            _ => {
                let piece: &[u8] = rng.pick(PIECES);
                doc.splice(at..at, piece.iter().copied());
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    pass: usize,
    drop: usize,
    invalid: usize,
}

fn compare(doc: &[u8], filters: &[Filter], tally: &mut Tally) {
    // Every predicate on a fresh view, as the reader makes one per record...
    for f in filters {
        let new = f.evaluate(&RecordView::new(None, Some(doc), None, vec![]));
        let old = old_eval(f, Some(doc));
        assert_eq!(
            new,
            old,
            "filter {f:?} on {:?}",
            String::from_utf8_lossy(doc)
        );
        match new {
            Outcome::Pass => tally.pass += 1,
            Outcome::Drop => tally.drop += 1,
            Outcome::Invalid(_) => tally.invalid += 1,
        }
    }
    // ...and all of them on one view, as several routes ask about the same record.
    let shared = RecordView::new(None, Some(doc), None, vec![]);
    for f in filters.iter().step_by(7) {
        assert_eq!(
            f.evaluate(&shared),
            old_eval(f, Some(doc)),
            "shared view, {f:?}"
        );
    }
}

#[test]
fn scan_decides_as_the_full_parse_did_on_the_hand_written_corpus() {
    let filters = filters();
    let mut tally = Tally::default();
    for doc in hand_written() {
        compare(&doc, &filters, &mut tally);
    }
    let tomb = Filter::JsonExists(path("a"), false);
    assert_eq!(
        tomb.evaluate(&RecordView::new(None, None, None, vec![])),
        old_eval(&tomb, None)
    );
    // The corpus exercises every outcome (a corpus that only ever drops proves nothing).
    assert!(tally.pass > 500 && tally.drop > 500 && tally.invalid > 500);
}

#[test]
fn scan_decides_as_the_full_parse_did_on_generated_and_mutated_documents() {
    // A longer hunt: KMIRROR_JSON_DIFF_DOCS=200000 KMIRROR_JSON_DIFF_SEED=7 cargo test ...
    let env = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .map_or(default, |v| v.parse().unwrap())
    };
    let docs = env("KMIRROR_JSON_DIFF_DOCS", 4000);
    let filters = filters();
    let mut rng = Rng(env("KMIRROR_JSON_DIFF_SEED", 0x6b6d_6972_726f_7221).max(1));
    let mut tally = Tally::default();
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..docs {
        let mut doc = String::new();
        ws(&mut rng, &mut doc);
        value(&mut rng, 0, &mut doc);
        ws(&mut rng, &mut doc);
        let mut doc = doc.into_bytes();
        if rng.below(2) == 0 {
            mutate(&mut rng, &mut doc);
        }
        match serde_json::from_slice::<Value>(&doc) {
            Ok(_) => valid += 1,
            Err(_) => invalid += 1,
        }
        compare(&doc, &filters, &mut tally);
    }
    assert!(
        valid > 1000 && invalid > 1000,
        "{valid} valid, {invalid} invalid"
    );
    assert!(tally.pass > 1000, "{} passed", tally.pass);
}
