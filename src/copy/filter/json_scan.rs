//! A validating scan of a JSON payload that finds one field path without building a DOM.
//!
//! It owns the question "is this payload a JSON document serde_json would accept, and where
//! (which bytes) is the value at this path?", answered in one pass over the bytes. Values off
//! the path are skipped (still validated), strings are skipped eight bytes at a time.
//!
//! The scan must accept exactly what `serde_json::from_slice::<Value>` accepts, and find the
//! value `JsonPath::lookup` would find in the parsed document, because a filter's decision
//! may not depend on which evaluator ran. The rules that matter, all taken from serde_json:
//! - a duplicate key keeps its LAST value (a `Map::insert` per key), so an object is always
//!   scanned to its end and a later duplicate replaces an earlier match, even one whose value
//!   does not contain the rest of the path;
//! - at most 127 nested arrays/objects (serde_json's recursion limit of 128);
//! - strings: no raw control characters, valid UTF-8, only the JSON escapes, `\u` surrogates
//!   paired (a lone one is an error when parsing into a `String`);
//! - numbers: JSON grammar (no leading zeros, digits after `.` and `e`); a number too large
//!   for an f64 is an error. Exponents and long numbers are rare, so their range is checked
//!   by serde_json itself on the number's own bytes rather than re-implemented here;
//! - whitespace is space, tab, CR, LF; nothing but whitespace may follow the document.
//!
//! The whole document is validated even when the field came early: today a payload that is
//! not JSON makes every JSON predicate `Invalid` (the route's `on_error` decides), and a
//! lazy scan must not turn such a record into a silent copy or drop.

use std::ops::Range;

use super::PathStep;

/// serde_json's `remaining_depth` starts at 128 and a container that brings it to 0 fails.
const DEPTH_LIMIT: u32 = 128;

/// The payload is not a JSON document serde_json would accept. Why is left to serde_json
/// (the caller re-parses to report its exact message; invalid payloads are the rare case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

type Res<T> = Result<T, NotJson>;

/// Validates `doc` and returns the byte range of the value at `path` (the value's own
/// bytes, no surrounding whitespace), or `None` when the path leads nowhere.
pub fn find(doc: &[u8], path: &[PathStep]) -> Res<Option<Range<usize>>> {
    let mut s = Scanner {
        b: doc,
        i: 0,
        depth_left: DEPTH_LIMIT,
    };
    s.ws();
    let found = s.value(Some(path))?;
    s.ws();
    if s.i != s.b.len() {
        return Err(NotJson);
    }
    Ok(found)
}

/// If `raw` (a value's bytes as `find` returned them) is a string without escapes, its
/// content: the common case a filter compares without parsing.
pub fn plain_str(raw: &[u8]) -> Option<&[u8]> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    (!inner.contains(&b'\\')).then_some(inner)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    depth_left: u32,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `x` that is zero (exact for the lowest such byte, which is
/// all the string scan uses).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

impl<'a> Scanner<'a> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(c) = self.peek() {
            if matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// One value. `path`: `None` when the value is off the path (only validated), else the
    /// steps still to take from here (empty: this value is the one sought).
    fn value(&mut self, path: Option<&[PathStep]>) -> Res<Option<Range<usize>>> {
        let start = self.i;
        let Some(c) = self.peek() else {
            return Err(NotJson);
        };
        match path {
            Some([]) => {
                self.skip_value(c)?;
                Ok(Some(start..self.i))
            }
            Some([PathStep::Field(name), rest @ ..]) if c == b'{' => {
                self.object(Some((name.as_bytes(), rest)))
            }
            Some([PathStep::Index(n), rest @ ..]) if c == b'[' => self.array(Some((*n, rest))),
            _ => {
                self.skip_value(c)?;
                Ok(None)
            }
        }
    }

    fn skip_value(&mut self, c: u8) -> Res<()> {
        match c {
            b'{' => self.object(None).map(drop),
            b'[' => self.array(None).map(drop),
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(NotJson),
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Res<()> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(NotJson)
        }
    }

    fn enter(&mut self) -> Res<()> {
        self.depth_left -= 1;
        if self.depth_left == 0 {
            return Err(NotJson);
        }
        self.i += 1;
        Ok(())
    }

    /// An object; with `want`, the field sought here and the steps after it. The last
    /// occurrence of a duplicate key decides, as in serde_json's map.
    fn object(&mut self, want: Option<(&[u8], &[PathStep])>) -> Res<Option<Range<usize>>> {
        self.enter()?;
        let mut found = None;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth_left += 1;
            return Ok(None);
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(NotJson);
            }
            let key = self.string()?;
            let on_path = match want {
                Some((name, rest)) if key_equals(&self.b[key], name) => Some(rest),
                _ => None,
            };
            self.ws();
            if self.peek() != Some(b':') {
                return Err(NotJson);
            }
            self.i += 1;
            self.ws();
            let v = self.value(on_path)?;
            if on_path.is_some() {
                found = v;
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    self.depth_left += 1;
                    return Ok(found);
                }
                _ => return Err(NotJson),
            }
        }
    }

    fn array(&mut self, want: Option<(usize, &[PathStep])>) -> Res<Option<Range<usize>>> {
        self.enter()?;
        let mut found = None;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth_left += 1;
            return Ok(None);
        }
        let mut n = 0usize;
        loop {
            let on_path = match want {
                Some((idx, rest)) if idx == n => Some(rest),
                _ => None,
            };
            let v = self.value(on_path)?;
            if on_path.is_some() {
                found = v;
            }
            n += 1;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.i += 1;
                    self.depth_left += 1;
                    return Ok(found);
                }
                _ => return Err(NotJson),
            }
        }
    }

    /// A string starting at the opening quote; returns the range of its raw content (between
    /// the quotes, escapes not decoded).
    fn string(&mut self) -> Res<Range<usize>> {
        self.i += 1;
        let start = self.i;
        let mut non_ascii = 0u64;
        loop {
            // Eight bytes at a time to the next quote, backslash or control character.
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                non_ascii |= x;
                let special = zero_bytes(x ^ (ONES * b'"' as u64))
                    | zero_bytes(x ^ (ONES * b'\\' as u64))
                    | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS);
                if special != 0 {
                    self.i += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            let Some(c) = self.peek() else {
                return Err(NotJson);
            };
            match c {
                b'"' => {
                    let content = start..self.i;
                    self.i += 1;
                    if non_ascii & HIGHS != 0 {
                        std::str::from_utf8(&self.b[content.clone()]).map_err(|_| NotJson)?;
                    }
                    return Ok(content);
                }
                b'\\' => {
                    self.i += 1;
                    self.escape()?;
                }
                0..=0x1f => return Err(NotJson),
                _ => {
                    non_ascii |= c as u64;
                    self.i += 1;
                }
            }
        }
    }

    /// After a backslash: one escape, validated as serde_json does for a `String`.
    fn escape(&mut self) -> Res<()> {
        let c = self.peek().ok_or(NotJson)?;
        self.i += 1;
        match c {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let n = self.hex4()?;
                match n {
                    0xDC00..=0xDFFF => Err(NotJson),
                    0xD800..=0xDBFF => {
                        if self.b[self.i..].starts_with(b"\\u") {
                            self.i += 2;
                            match self.hex4()? {
                                0xDC00..=0xDFFF => Ok(()),
                                _ => Err(NotJson),
                            }
                        } else {
                            Err(NotJson)
                        }
                    }
                    _ => Ok(()),
                }
            }
            _ => Err(NotJson),
        }
    }

    fn hex4(&mut self) -> Res<u16> {
        let h = self.b.get(self.i..self.i + 4).ok_or(NotJson)?;
        let mut n = 0u16;
        for &c in h {
            let d = (c as char).to_digit(16).ok_or(NotJson)?;
            n = n << 4 | d as u16;
        }
        self.i += 4;
        Ok(n)
    }

    fn digits(&mut self) -> usize {
        let from = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - from
    }

    fn number(&mut self) -> Res<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                // serde_json: a leading zero followed by a digit is an invalid number.
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(NotJson);
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(NotJson),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(NotJson);
            }
        }
        let mut exponent = false;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            exponent = true;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(NotJson);
            }
        }
        // Without an exponent, fewer than 300 characters cannot exceed f64::MAX (~1.8e308);
        // anything else is range-checked by serde_json itself.
        if exponent || self.i - start >= 300 {
            serde_json::from_slice::<serde_json::Number>(&self.b[start..self.i])
                .map_err(|_| NotJson)?;
        }
        Ok(())
    }
}

/// A raw key (between the quotes) equals `name` once its escapes are decoded.
fn key_equals(raw: &[u8], name: &[u8]) -> bool {
    if !raw.contains(&b'\\') {
        return raw == name;
    }
    // Rare: decode it as serde_json would (the scan has validated it already).
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k.as_bytes() == name)
}
