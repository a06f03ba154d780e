//! A validating scan of a JSON payload that finds one field path without building a DOM.
//!
//! It owns the question "is this payload a JSON document serde_json would accept, and where
//! (which bytes) is the value at this path?", answered in one pass over the bytes. Values off
//! the path are skipped (still validated), strings are skipped sixteen bytes at a time.
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
        found: None,
    };
    s.ws();
    s.value(path)?;
    s.ws();
    if s.i != s.b.len() {
        return Err(NotJson);
    }
    Ok(s.found)
}

/// A top-level object's members in order: each key's raw range (between its quotes),
/// whether the key holds an escape, and its value's range. Validates `doc` like `find`.
/// `None` when the document is not an object (nothing worth indexing).
pub type Members = Vec<(Range<usize>, bool, Range<usize>)>;

/// `Members` of `doc`, for a record that many JSON predicates ask about: one more scan, then
/// each path costs a look-up among the top-level keys and a scan of one value.
pub fn members(doc: &[u8]) -> Res<Option<Members>> {
    let mut s = Scanner {
        b: doc,
        i: 0,
        depth_left: DEPTH_LIMIT,
        found: None,
    };
    s.ws();
    if s.peek() != Some(b'{') {
        return Ok(None);
    }
    let mut out = Vec::new();
    s.enter()?;
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            let (key, escaped) = s.key()?;
            let start = s.i;
            s.skip()?;
            out.push((key, escaped, start..s.i));
            if s.next_or_end(b'}')? {
                break;
            }
        }
    }
    s.ws();
    if s.i != s.b.len() {
        return Err(NotJson);
    }
    Ok(Some(out))
}

/// `find` over a document already validated by `members`: the last member whose key is the
/// path's first step (a later duplicate wins), then the rest of the path within its value.
pub fn find_in_members(
    doc: &[u8],
    members: &Members,
    path: &[PathStep],
) -> Res<Option<Range<usize>>> {
    let Some((PathStep::Field(name), rest)) = path.split_first() else {
        return Ok(None); // an index into an object finds nothing, as in serde_json
    };
    let Some((_, _, value)) = members
        .iter()
        .rev()
        .find(|(key, escaped, _)| key_equals(&doc[key.clone()], *escaped, name.as_bytes()))
    else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(Some(value.clone()));
    }
    Ok(find(&doc[value.clone()], rest)?.map(|r| r.start + value.start..r.end + value.start))
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
    /// The value at the path so far (a later duplicate key replaces it).
    found: Option<Range<usize>>,
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

    /// A value on the path: `path` holds the steps still to take from here (none: this is
    /// the value sought, and it replaces whatever an earlier duplicate key found).
    fn value(&mut self, path: &[PathStep]) -> Res<()> {
        match (path, self.peek()) {
            ([], _) => {
                let start = self.i;
                self.skip_value()?;
                self.found = Some(start..self.i);
                Ok(())
            }
            ([PathStep::Field(name), rest @ ..], Some(b'{')) => {
                self.object_on(name.as_bytes(), rest)
            }
            ([PathStep::Index(n), rest @ ..], Some(b'[')) => self.array_on(*n, rest),
            _ => self.skip_value(),
        }
    }

    /// A value off the path: only validated.
    fn skip_value(&mut self) -> Res<()> {
        self.skip()
    }

    /// `skip_value` inlined into the container loops: scalars (most values) are scanned in
    /// place, only nested containers cost a call.
    #[inline(always)]
    fn skip(&mut self) -> Res<()> {
        match self.peek().ok_or(NotJson)? {
            b'"' => self.string().map(drop),
            b'{' => self.object_skip(),
            b'[' => self.array_skip(),
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

    /// Past the `{` or `[` of a container, within serde_json's nesting limit.
    #[inline(always)]
    fn enter(&mut self) -> Res<()> {
        self.depth_left -= 1;
        if self.depth_left == 0 {
            return Err(NotJson);
        }
        self.i += 1;
        self.ws();
        Ok(())
    }

    /// After a member or element: `true` at the container's end (consumed), `false` after a
    /// comma (consumed, with the whitespace after it).
    #[inline(always)]
    fn next_or_end(&mut self, close: u8) -> Res<bool> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                self.depth_left += 1;
                Ok(true)
            }
            _ => Err(NotJson),
        }
    }

    /// A key and its colon (and the whitespace after it); the key's raw range and whether it
    /// holds an escape.
    #[inline(always)]
    fn key(&mut self) -> Res<(Range<usize>, bool)> {
        if self.peek() != Some(b'"') {
            return Err(NotJson);
        }
        let key = self.string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(NotJson);
        }
        self.i += 1;
        self.ws();
        Ok(key)
    }

    /// An object on the path, where field `name` is sought. Every occurrence of a duplicate
    /// key is followed: the last one's answer stands, as in serde_json's map.
    fn object_on(&mut self, name: &[u8], rest: &[PathStep]) -> Res<()> {
        self.enter()?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth_left += 1;
            return Ok(());
        }
        loop {
            let (key, escaped) = self.key()?;
            if key_equals(&self.b[key], escaped, name) {
                self.found = None;
                self.value(rest)?;
            } else {
                self.skip()?;
            }
            if self.next_or_end(b'}')? {
                return Ok(());
            }
        }
    }

    fn object_skip(&mut self) -> Res<()> {
        self.enter()?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth_left += 1;
            return Ok(());
        }
        loop {
            self.key()?;
            self.skip()?;
            if self.next_or_end(b'}')? {
                return Ok(());
            }
        }
    }

    /// An array on the path, where element `want` is sought.
    fn array_on(&mut self, want: usize, rest: &[PathStep]) -> Res<()> {
        self.enter()?;
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth_left += 1;
            return Ok(());
        }
        let mut n = 0usize;
        loop {
            if n == want {
                self.value(rest)?;
            } else {
                self.skip()?;
            }
            n += 1;
            if self.next_or_end(b']')? {
                return Ok(());
            }
        }
    }

    fn array_skip(&mut self) -> Res<()> {
        self.enter()?;
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth_left += 1;
            return Ok(());
        }
        loop {
            self.skip()?;
            if self.next_or_end(b']')? {
                return Ok(());
            }
        }
    }

    /// A string starting at the opening quote; returns the range of its raw content (between
    /// the quotes, escapes not decoded) and whether it holds an escape.
    #[inline(always)]
    fn string(&mut self) -> Res<(Range<usize>, bool)> {
        self.i += 1;
        let start = self.i;
        let mut non_ascii = false;
        let mut escaped = false;
        loop {
            self.i = next_special(self.b, self.i, &mut non_ascii);
            match self.peek() {
                Some(b'"') => {
                    let content = start..self.i;
                    self.i += 1;
                    if non_ascii {
                        std::str::from_utf8(&self.b[content.clone()]).map_err(|_| NotJson)?;
                    }
                    return Ok((content, escaped));
                }
                Some(b'\\') => {
                    self.i += 1;
                    escaped = true;
                    self.escape()?;
                }
                // A control character, or the end of the payload inside a string.
                _ => return Err(NotJson),
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

/// The index of the first `"`, `\\` or control character (< 0x20) at or after `i`, or
/// `b.len()`; sets `non_ascii` if a byte >= 0x80 was passed (or is near). Sixteen bytes at a
/// time: string contents are most of a payload's bytes.
#[inline(always)]
fn next_special(b: &[u8], mut i: usize, non_ascii: &mut bool) -> usize {
    loop {
        let (special, high) = match b.get(i..i + 16) {
            Some(chunk) => classify16(chunk.try_into().expect("16 bytes")),
            None => classify_tail(&b[i..]),
        };
        *non_ascii |= high != 0;
        if special != 0 {
            return (i + special.trailing_zeros() as usize).min(b.len());
        }
        i += 16;
    }
}

/// `classify16` of the last (< 16) bytes, padded with NULs: a control character, so the
/// padding stops the scan at the end of the payload if nothing before it does.
#[cold]
#[inline(never)]
fn classify_tail(tail: &[u8]) -> (u32, u32) {
    let mut padded = [0u8; 16];
    padded[..tail.len()].copy_from_slice(tail);
    classify16(&padded)
}

/// Bit i of the first mask: byte i is `"`, `\\` or a control character (< 0x20); of the
/// second: byte i is not ASCII.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify16(chunk: &[u8; 16]) -> (u32, u32) {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline, and the unaligned load reads exactly the
    // 16 bytes `chunk` borrows.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned v <= 0x1f exactly when max(v, 0x1f) == 0x1f.
        let low = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
        let special = _mm_or_si128(_mm_or_si128(quote, backslash), control);
        (
            _mm_movemask_epi8(special) as u32,
            _mm_movemask_epi8(v) as u32,
        )
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn classify16(chunk: &[u8; 16]) -> (u32, u32) {
    let (mut special, mut high) = (0u32, 0u32);
    for (n, &c) in chunk.iter().enumerate() {
        special |= u32::from(c == b'"' || c == b'\\' || c < 0x20) << n;
        high |= u32::from(c >= 0x80) << n;
    }
    (special, high)
}

/// A raw key (between the quotes) equals `name` once its escapes are decoded.
fn key_equals(raw: &[u8], escaped: bool, name: &[u8]) -> bool {
    if !escaped {
        return raw == name;
    }
    // Rare: decode it as serde_json would (the scan has validated it already).
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k.as_bytes() == name)
}
