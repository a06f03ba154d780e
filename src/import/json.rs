//! A small JSON reader over bytes for dump lines. Unlike serde_json it keeps what a dump
//! holds byte for byte: kcat writes a binary key or payload into its JSON string as the raw
//! bytes (not valid UTF-8), so strings here are bytes with their escapes decoded, and every
//! value keeps its span so a nested document can be produced exactly as written.
//! Structure is strict (a truncated or garbled line is an error naming the column).

use std::borrow::Cow;

/// Nesting deeper than this is refused (a dump line is not a place for 10,000 brackets).
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Null,
    Bool(bool),
    /// The number as written.
    Num(&'a [u8]),
    Str(Cow<'a, [u8]>),
    Arr(Vec<Spanned<'a>>),
    /// Members in order, duplicates kept.
    Obj(Vec<(Cow<'a, [u8]>, Spanned<'a>)>),
}

/// A value and the bytes it was written as.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<'a> {
    pub val: Val<'a>,
    pub raw: &'a [u8],
}

impl<'a> Spanned<'a> {
    /// The first member named `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Spanned<'a>> {
        match &self.val {
            Val::Obj(m) => m
                .iter()
                .find(|(k, _)| k.as_ref() == name.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.val {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Num(_) => "a number",
            Val::Str(_) => "a string",
            Val::Arr(_) => "an array",
            Val::Obj(_) => "an object",
        }
    }
}

/// Parses one whole line (surrounding whitespace allowed). The error names the 1-based
/// column (byte) where the line stops making sense.
pub fn parse(line: &[u8]) -> Result<Spanned<'_>, String> {
    let mut p = Parser { s: line, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.err("unexpected data after the JSON value"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, what: &str) -> String {
        if self.i >= self.s.len() {
            format!("{what} (the line ends at column {})", self.s.len() + 1)
        } else {
            format!("{what} at column {}", self.i + 1)
        }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Spanned<'a>, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested deeper than 128 levels"));
        }
        let start = self.i;
        let val = match self.peek() {
            None => return Err(self.err("a value is missing")),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Val::Str(self.string()?),
            Some(b't') => self.literal(b"true", Val::Bool(true))?,
            Some(b'f') => self.literal(b"false", Val::Bool(false))?,
            Some(b'n') => self.literal(b"null", Val::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(self.err("expected a JSON value")),
        };
        Ok(Spanned {
            val,
            raw: &self.s[start..self.i],
        })
    }

    fn literal(&mut self, word: &[u8], v: Val<'a>) -> Result<Val<'a>, String> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("expected true, false or null"))
        }
    }

    fn number(&mut self) -> Result<Val<'a>, String> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let s = p.i;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.i += 1;
            }
            p.i > s
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        if self.peek() == Some(b'0') {
            self.i += 1;
        } else if !digits(self) {
            return Err(self.err("a number needs digits"));
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !digits(self) {
                return Err(self.err("a number needs digits after '.'"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return Err(self.err("a number needs digits in its exponent"));
            }
        }
        Ok(Val::Num(&self.s[start..self.i]))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("\\u needs four hex digits"))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<Cow<'a, [u8]>, String> {
        self.i += 1; // the opening quote
        let start = self.i;
        // Borrowed while there is nothing to decode.
        while let Some(c) = self.peek() {
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(Cow::Borrowed(&self.s[start..self.i - 1]));
                }
                b'\\' => break,
                0..=0x1f => return Err(self.err("a control character inside a string")),
                _ => self.i += 1,
            }
        }
        let mut out = self.s[start..self.i].to_vec();
        loop {
            match self.peek() {
                None => return Err(self.err("the string is not closed")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(0..=0x1f) => return Err(self.err("a control character inside a string")),
                Some(b'\\') => {
                    self.i += 1;
                    let e = self
                        .peek()
                        .ok_or_else(|| self.err("the string is not closed"))?;
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("an unpaired surrogate in \\u escapes"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("an unpaired surrogate in \\u escapes"));
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return Err(self.err("an unpaired surrogate in \\u escapes"));
                            }
                            let ch = char::from_u32(cp)
                                .ok_or_else(|| self.err("an invalid \\u escape"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => {
                            self.i -= 1;
                            return Err(self.err("an invalid escape"));
                        }
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Val<'a>, String> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Val::Arr(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Val::Arr(items));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Val<'a>, String> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Val::Obj(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a member name in double quotes"));
            }
            let name = self.string()?;
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth + 1)?;
            members.push((name, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Val::Obj(members));
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &Spanned<'_>) -> Vec<u8> {
        match &v.val {
            Val::Str(b) => b.to_vec(),
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn strings_keep_raw_bytes_and_decode_escapes() {
        let line = b"{\"k\":\"a\\\"b\\\\c\\u00e9\\ud83d\\ude00\xff\xfe\",\"n\":null}";
        let v = parse(line).unwrap();
        let mut want = b"a\"b\\c".to_vec();
        want.extend_from_slice("é😀".as_bytes());
        want.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(s(v.get("k").unwrap()), want);
        assert_eq!(v.get("n").unwrap().val, Val::Null);
    }

    #[test]
    fn nested_values_keep_their_text_and_duplicates_their_order() {
        let v = parse(br#" {"v": {"a": [1, 2.5e3, true]}, "d": 1, "d": 2} "#).unwrap();
        assert_eq!(v.get("v").unwrap().raw, br#"{"a": [1, 2.5e3, true]}"#);
        let Val::Obj(m) = &v.val else { panic!() };
        assert_eq!(m.len(), 3);
        assert_eq!(v.get("d").unwrap().raw, b"1");
    }

    #[test]
    fn broken_lines_are_refused_with_a_column() {
        for (line, col) in [
            (&br#"{"a": "unterminated"#[..], 20),
            (br#"{"a": 1,}"#, 9),
            (br#"{"a": 01}"#, 8),
            (br#"{"a": "\x"}"#, 9),
            (br#"{"a": "\ud800"}"#, 14),
            (br#"{"a": 1} x"#, 10),
            (br#"[1 2]"#, 4),
            (b"", 1),
        ] {
            let e = parse(line).unwrap_err();
            assert!(
                e.contains(&format!("column {col}")),
                "{}: {e}",
                String::from_utf8_lossy(line)
            );
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(deep.as_bytes()).unwrap_err().contains("deeper"));
    }
}
