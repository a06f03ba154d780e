//! One dump line to one record, per `[files.NAME] format`. A line that cannot be a record
//! (not JSON, not the envelope's shape) is an error saying why; it is never produced raw.

use std::borrow::Cow;

use crate::config::{FieldNames, FileFormat, FileSource};

use super::json::{self, Spanned, Val};

/// A header's name and value (`None`: a null value), borrowed from the line where possible.
pub type LineHeader<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);

/// A record read from a dump line, borrowing from the line where it can.
#[derive(Debug, Clone, PartialEq)]
pub struct LineRecord<'a> {
    pub topic: Cow<'a, str>,
    /// The partition the dump names (kcat, or the `partition` field), if any.
    pub partition: Option<i32>,
    /// The source offset the dump names (kcat).
    pub offset: Option<i64>,
    pub key: Option<Cow<'a, [u8]>>,
    pub value: Option<Cow<'a, [u8]>>,
    pub headers: Vec<LineHeader<'a>>,
    pub timestamp: Option<i64>,
}

pub fn parse<'a>(line: &'a [u8], file: &'a FileSource) -> Result<LineRecord<'a>, String> {
    match file.format {
        FileFormat::Jsonl => {
            serde_json::from_slice::<serde::de::IgnoredAny>(line)
                .map_err(|e| format!("not valid JSON: {e}"))?;
            Ok(LineRecord {
                topic: Cow::Borrowed(file.topic.as_deref().unwrap_or_default()),
                partition: None,
                offset: None,
                key: None,
                value: Some(Cow::Borrowed(line)),
                headers: Vec::new(),
                timestamp: None,
            })
        }
        FileFormat::Kcat => kcat(line),
        FileFormat::Records => records(
            line,
            file.topic.as_deref().unwrap_or_default(),
            &file.fields,
        ),
    }
}

fn bytes<'a>(v: &Spanned<'a>, what: &str) -> Result<Option<Cow<'a, [u8]>>, String> {
    match &v.val {
        Val::Null => Ok(None),
        Val::Str(s) => Ok(Some(s.clone())),
        _ => Err(format!(
            "\"{what}\" is {}, expected a string or null",
            v.kind()
        )),
    }
}

fn int(v: &Spanned<'_>, what: &str) -> Result<i64, String> {
    match &v.val {
        Val::Num(n) => std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(|| {
                format!(
                    "\"{what}\" is {}, expected an integer",
                    String::from_utf8_lossy(n)
                )
            }),
        _ => Err(format!("\"{what}\" is {}, expected an integer", v.kind())),
    }
}

fn partition(v: &Spanned<'_>, what: &str) -> Result<i32, String> {
    let p = int(v, what)?;
    i32::try_from(p)
        .ok()
        .filter(|p| *p >= 0)
        .ok_or_else(|| format!("\"{what}\" is {p}, not a partition number"))
}

/// `kcat -C -J`: `{"topic","partition","offset","tstype","ts","broker","headers":[name,
/// value, ...],"key","payload"}`; key and payload are strings (raw bytes) or null.
fn kcat(line: &[u8]) -> Result<LineRecord<'_>, String> {
    let doc = json::parse(line).map_err(|e| format!("not valid JSON: {e}"))?;
    if !matches!(doc.val, Val::Obj(_)) {
        return Err(format!(
            "a kcat -J line is an object, this is {}",
            doc.kind()
        ));
    }
    let field = |name: &str| {
        doc.get(name)
            .ok_or_else(|| format!("the kcat envelope has no \"{name}\""))
    };
    let topic = match &field("topic")?.val {
        Val::Str(s) => match s {
            Cow::Borrowed(b) => Cow::Borrowed(
                std::str::from_utf8(b).map_err(|_| "\"topic\" is not UTF-8".to_string())?,
            ),
            Cow::Owned(b) => Cow::Owned(
                String::from_utf8(b.clone()).map_err(|_| "\"topic\" is not UTF-8".to_string())?,
            ),
        },
        _ => return Err("\"topic\" is not a string".into()),
    };
    let partition = partition(field("partition")?, "partition")?;
    let offset = int(field("offset")?, "offset")?;
    let key = bytes(field("key")?, "key")?;
    let value = bytes(field("payload")?, "payload")?;
    let timestamp = match doc.get("ts") {
        Some(ts) => Some(int(ts, "ts")?),
        None => None,
    };
    let mut headers = Vec::new();
    if let Some(h) = doc.get("headers") {
        let Val::Arr(items) = &h.val else {
            return Err(format!("\"headers\" is {}, expected an array", h.kind()));
        };
        if items.len() % 2 != 0 {
            return Err("\"headers\" holds an odd number of items (name, value pairs)".into());
        }
        for pair in items.chunks(2) {
            let name =
                bytes(&pair[0], "headers")?.ok_or_else(|| "a header name is null".to_string())?;
            headers.push((name, bytes(&pair[1], "headers")?));
        }
    }
    Ok(LineRecord {
        topic,
        partition: Some(partition),
        offset: Some(offset),
        key,
        value,
        headers,
        timestamp,
    })
}

/// An object per line with the record's fields. A value or key that is a string is its
/// bytes; any other JSON (an object, a number) is produced as written on the line.
fn records<'a>(line: &'a [u8], topic: &'a str, f: &FieldNames) -> Result<LineRecord<'a>, String> {
    let doc = json::parse(line).map_err(|e| format!("not valid JSON: {e}"))?;
    if !matches!(doc.val, Val::Obj(_)) {
        return Err(format!(
            "a line is an object holding the record's fields, this is {}",
            doc.kind()
        ));
    }
    let as_bytes = |v: &Spanned<'a>| -> Option<Cow<'a, [u8]>> {
        match &v.val {
            Val::Null => None,
            Val::Str(s) => Some(s.clone()),
            _ => Some(Cow::Borrowed(v.raw)),
        }
    };
    let value = doc
        .get(&f.value)
        .ok_or_else(|| format!("the line has no \"{}\" (the value field)", f.value))?;
    let value = as_bytes(value);
    let key = doc.get(&f.key).and_then(as_bytes);
    let mut headers = Vec::new();
    if let Some(h) = doc.get(&f.headers) {
        match &h.val {
            Val::Null => {}
            Val::Obj(members) => {
                for (name, v) in members {
                    headers.push((name.clone(), bytes(v, &f.headers)?));
                }
            }
            Val::Arr(items) => {
                for item in items {
                    match &item.val {
                        Val::Arr(pair) if pair.len() == 2 => {
                            let name = bytes(&pair[0], &f.headers)?
                                .ok_or_else(|| "a header name is null".to_string())?;
                            headers.push((name, bytes(&pair[1], &f.headers)?));
                        }
                        _ => {
                            return Err(format!("\"{}\" items are [name, value] pairs", f.headers))
                        }
                    }
                }
            }
            _ => {
                return Err(format!(
                    "\"{}\" is {}, expected an object or an array of [name, value] pairs",
                    f.headers,
                    h.kind()
                ))
            }
        }
    }
    let timestamp = match doc.get(&f.timestamp) {
        None => None,
        Some(t) => match &t.val {
            Val::Null => None,
            Val::Num(_) => Some(int(t, &f.timestamp)?),
            Val::Str(s) => Some(
                std::str::from_utf8(s)
                    .map_err(|e| e.to_string())
                    .and_then(crate::config::value::parse_timestamp_ms)
                    .map_err(|e| format!("\"{}\": {e}", f.timestamp))?,
            ),
            _ => {
                return Err(format!(
                    "\"{}\" is {}, expected milliseconds or an RFC 3339 time",
                    f.timestamp,
                    t.kind()
                ))
            }
        },
    };
    let partition = match doc.get(&f.partition) {
        None => None,
        Some(p) if p.val == Val::Null => None,
        Some(p) => Some(partition(p, &f.partition)?),
    };
    Ok(LineRecord {
        topic: Cow::Borrowed(topic),
        partition,
        offset: None,
        key,
        value,
        headers,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(format: FileFormat) -> FileSource {
        FileSource {
            name: "dump".into(),
            path: "dump.jsonl".into(),
            format,
            topic: (format != FileFormat::Kcat).then(|| "t".to_string()),
            rejects: None,
            fields: FieldNames::default(),
        }
    }

    #[test]
    fn a_kcat_envelope_keeps_nulls_duplicates_and_bytes() {
        let f = file(FileFormat::Kcat);
        let line = b"{\"topic\":\"t\",\"partition\":2,\"offset\":7,\"tstype\":\"create\",\"ts\":1700000000000,\"broker\":1,\"headers\":[\"a\",\"1\",\"a\",\"2\",\"n\",null],\"key\":null,\"payload\":\"\xff\"}";
        let r = parse(line, &f).unwrap();
        assert_eq!(
            (r.topic.as_ref(), r.partition, r.offset),
            ("t", Some(2), Some(7))
        );
        assert_eq!(r.key, None);
        assert_eq!(r.value.as_deref(), Some(&[0xffu8][..]));
        assert_eq!(r.timestamp, Some(1_700_000_000_000));
        let h: Vec<_> = r
            .headers
            .iter()
            .map(|(n, v)| (n.to_vec(), v.as_ref().map(|v| v.to_vec())))
            .collect();
        assert_eq!(
            h,
            vec![
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"a".to_vec(), Some(b"2".to_vec())),
                (b"n".to_vec(), None)
            ]
        );
        let e = parse(br#"{"topic":"t","partition":0,"offset":1,"key":null}"#, &f).unwrap_err();
        assert!(e.contains("\"payload\""), "{e}");
        let e = parse(br#"{"topic":"t","partition":0,"off"#, &f).unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn record_lines_take_nested_values_as_written() {
        let f = file(FileFormat::Records);
        let r = parse(
            br#"{"key": "k", "value": {"a": 1}, "headers": {"x": "1", "y": null}, "timestamp": "2023-11-14T22:13:20Z", "partition": 3}"#,
            &f,
        )
        .unwrap();
        assert_eq!(r.value.as_deref(), Some(&br#"{"a": 1}"#[..]));
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.timestamp, Some(1_700_000_000_000));
        assert_eq!(r.partition, Some(3));
        assert_eq!(r.headers.len(), 2);
        assert!(parse(br#"{"key": "k"}"#, &f)
            .unwrap_err()
            .contains("value field"));
    }

    #[test]
    fn jsonl_lines_must_be_json() {
        let f = file(FileFormat::Jsonl);
        assert_eq!(
            parse(br#"{"a": 1}"#, &f).unwrap().value.as_deref(),
            Some(&br#"{"a": 1}"#[..])
        );
        assert!(parse(br#"{"a": 1"#, &f)
            .unwrap_err()
            .contains("not valid JSON"));
    }
}
