//! A fast first pass over a streamed JSON document: finds where each value
//! of the top-level object begins and ends, without building it.
//!
//! serde_json reading from an `io::Read` looks at every byte through its
//! line/column-tracking reader, and a feed file is gigabytes of bytes: in
//! a profile of a 100 000-CVE import the reading thread spent three
//! quarters of its time there (the rest was gunzip). Here the bytes arrive
//! in large blocks and the scan only follows strings and brackets
//! (`memchr` through the long strings), so the parsing proper happens on
//! the mapping threads with serde_json's fast in-memory reader. Brackets
//! that do not match, bad literals or bad escapes are found there, and a
//! record with broken syntax still fails the whole document, at its line.

use std::io::{self, Read};

/// Block size of the reads.
const BLOCK: usize = 256 * 1024;

/// Where something is in the document: 1-based line and column, and the
/// byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
    pub offset: u64,
}

impl Pos {
    /// Only the byte offset is known (line 0, as serde_json says "unknown").
    pub fn unknown_line(offset: u64) -> Pos {
        Pos {
            line: 0,
            column: 0,
            offset,
        }
    }

    /// The position of `(line, column)` of serde_json inside a value that
    /// starts at `self` (serde counts from 1, and line 0 means unknown).
    pub fn inner(&self, line: usize, column: usize) -> Pos {
        match line {
            0 => *self,
            1 => Pos {
                column: self.column + column.saturating_sub(1),
                ..*self
            },
            _ => Pos {
                line: self.line + line - 1,
                column,
                ..*self
            },
        }
    }
}

/// Why the scan stopped.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The stream could not be read (a broken gzip stream, a disk error).
    Io(io::Error, Pos),
    /// Not JSON where the structure was expected, or the end came too early.
    Syntax(String, Pos),
}

/// The reading side: a growing window over the stream.
pub(crate) struct Scanner<R> {
    reader: R,
    buf: Vec<u8>,
    /// Next byte to look at.
    pos: usize,
    /// Start of the value being captured; compaction keeps it.
    mark: Option<usize>,
    /// Bytes dropped from the front of `buf` so far.
    dropped: u64,
    /// Newlines before `counted` (an index into `buf`).
    lines: usize,
    counted: usize,
    /// Absolute offset just past the last newline before `counted`.
    line_start: u64,
    eof: bool,
}

impl<R: Read> Scanner<R> {
    pub fn new(reader: R) -> Self {
        Scanner {
            reader,
            buf: Vec::with_capacity(BLOCK * 2),
            pos: 0,
            mark: None,
            dropped: 0,
            lines: 0,
            counted: 0,
            line_start: 0,
            eof: false,
        }
    }

    /// The position of the next byte.
    pub fn pos(&mut self) -> Pos {
        self.count_to(self.pos);
        let offset = self.dropped + self.pos as u64;
        Pos {
            line: self.lines + 1,
            column: (offset - self.line_start) as usize + 1,
            offset,
        }
    }

    /// Counts the newlines of `buf` up to `upto`, once each.
    fn count_to(&mut self, upto: usize) {
        if upto <= self.counted {
            return;
        }
        let mut last = None;
        for i in memchr::memchr_iter(b'\n', &self.buf[self.counted..upto]) {
            self.lines += 1;
            last = Some(i);
        }
        if let Some(i) = last {
            self.line_start = self.dropped + (self.counted + i + 1) as u64;
        }
        self.counted = upto;
    }

    /// Reads the next block; `false` at the end of the stream.
    fn fill(&mut self) -> Result<bool, ScanError> {
        if self.eof {
            return Ok(false);
        }
        // Keep the value being captured, drop what was read before it
        // (its newlines counted first).
        let keep = self.mark.unwrap_or(self.pos);
        self.count_to(keep);
        if keep > 0 {
            self.buf.drain(..keep);
            self.dropped += keep as u64;
            self.pos -= keep;
            self.counted -= keep;
            self.mark = self.mark.map(|m| m - keep);
        }
        let len = self.buf.len();
        self.buf.resize(len + BLOCK, 0);
        let n = loop {
            match self.reader.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(len);
                    let at = self.pos();
                    return Err(ScanError::Io(e, at));
                }
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// The next byte that is not whitespace, not consumed; `None` at the end.
    pub fn peek(&mut self) -> Result<Option<u8>, ScanError> {
        loop {
            while let Some(&b) = self.buf.get(self.pos) {
                if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                    return Ok(Some(b));
                }
                self.pos += 1;
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Consumes the byte `peek` returned.
    pub fn bump(&mut self) {
        self.pos += 1;
    }

    /// Consumes `expected` (after whitespace) or says what was found.
    pub fn expect(&mut self, expected: u8, what: &str) -> Result<(), ScanError> {
        match self.peek()? {
            Some(b) if b == expected => {
                self.bump();
                Ok(())
            }
            found => Err(self.unexpected(found, what)),
        }
    }

    /// A syntax error at the next byte.
    pub fn unexpected(&mut self, found: Option<u8>, what: &str) -> ScanError {
        let at = self.pos();
        let found = match found {
            Some(b) if b.is_ascii_graphic() => format!("`{}`", b as char),
            Some(b) => format!("byte 0x{b:02x}"),
            None => "the end of the document".to_string(),
        };
        ScanError::Syntax(format!("expected {what}, found {found}"), at)
    }

    /// Captures the next value (after whitespace) as raw bytes, with where
    /// it starts. Only strings and brackets are followed: the bytes are
    /// checked as JSON when they are parsed.
    pub fn value(&mut self) -> Result<(Vec<u8>, Pos), ScanError> {
        let Some(first) = self.peek()? else {
            return Err(self.unexpected(None, "a value"));
        };
        let start = self.pos();
        self.mark = Some(self.pos);
        let result = self.scan_value(first);
        let mark = self.mark.take().unwrap_or(self.pos);
        result?;
        Ok((self.buf[mark..self.pos].to_vec(), start))
    }

    fn scan_value(&mut self, first: u8) -> Result<(), ScanError> {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        if !matches!(first, b'"' | b'{' | b'[') {
            // A number or a literal: up to the next delimiter.
            loop {
                while let Some(&b) = self.buf.get(self.pos) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        return Ok(());
                    }
                    self.pos += 1;
                }
                if !self.fill()? {
                    return Ok(());
                }
            }
        }
        loop {
            if self.pos >= self.buf.len() {
                if !self.fill()? {
                    let at = self.pos();
                    return Err(ScanError::Syntax(
                        "EOF while parsing a value (the document is cut short)".into(),
                        at,
                    ));
                }
                continue;
            }
            if escaped {
                escaped = false;
                self.pos += 1;
                continue;
            }
            if in_string {
                match memchr::memchr2(b'"', b'\\', &self.buf[self.pos..]) {
                    None => self.pos = self.buf.len(),
                    Some(i) => {
                        self.pos += i + 1;
                        if self.buf[self.pos - 1] == b'\\' {
                            escaped = true;
                        } else {
                            in_string = false;
                            if depth == 0 {
                                return Ok(());
                            }
                        }
                    }
                }
                continue;
            }
            // Outside strings: on to the next quote or bracket in one tight
            // loop (whitespace, `:`, `,`, numbers and literals are most of
            // the bytes here: NVD indents its files).
            let rest = &self.buf[self.pos..];
            let Some(i) = rest.iter().position(|&b| STRUCTURE[usize::from(b)] != 0) else {
                self.pos = self.buf.len();
                continue;
            };
            self.pos += i + 1;
            match STRUCTURE[usize::from(rest[i])] {
                QUOTE => in_string = true,
                OPEN => depth += 1,
                _ => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Classes of the bytes [`Scanner::scan_value`] stops at outside strings;
/// 0 for every other byte.
const QUOTE: u8 = 1;
const OPEN: u8 = 2;
const CLOSE: u8 = 3;
static STRUCTURE: [u8; 256] = {
    let mut class = [0u8; 256];
    class[b'"' as usize] = QUOTE;
    class[b'{' as usize] = OPEN;
    class[b'[' as usize] = OPEN;
    class[b'}' as usize] = CLOSE;
    class[b']' as usize] = CLOSE;
    class
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `n` bytes per call, so every value
    /// straddles block boundaries somewhere.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Every value of a top-level array, with where it starts.
    fn values(doc: &[u8], step: usize) -> Result<Vec<(String, Pos)>, ScanError> {
        let mut s = Scanner::new(Trickle(doc, step));
        s.expect(b'[', "`[`")?;
        let mut out = Vec::new();
        loop {
            let (bytes, at) = s.value()?;
            out.push((String::from_utf8(bytes).unwrap(), at));
            match s.peek()? {
                Some(b',') => s.bump(),
                Some(b']') => {
                    s.bump();
                    return Ok(out);
                }
                found => return Err(s.unexpected(found, "`,` or `]`")),
            }
        }
    }

    #[test]
    fn values_end_where_json_says_whatever_the_reads() {
        // Brackets, quotes and backslashes inside strings, escapes at the
        // end of a read, numbers and literals up to their delimiter.
        let doc = br#"[ {"a": "x } ] \" { [", "b": [1, {"c": "\\"}]},
  "tail \\\\ \" ]",
  -12.5e3 ,true,null,
  [[], {}, ""]
]"#;
        let expected = [
            r#"{"a": "x } ] \" { [", "b": [1, {"c": "\\"}]}"#,
            r#""tail \\\\ \" ]""#,
            "-12.5e3",
            "true",
            "null",
            r#"[[], {}, ""]"#,
        ];
        for step in [1, 2, 3, 7, 64, BLOCK] {
            let got = values(doc, step).unwrap_or_else(|e| panic!("step {step}: {e:?}"));
            let texts: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
            assert_eq!(texts, expected, "step {step}");
            for (text, _) in &got {
                serde_json::from_str::<serde_json::Value>(text).unwrap();
            }
            // Positions: line and column of each value's first byte.
            let at: Vec<(usize, usize)> = got.iter().map(|(_, p)| (p.line, p.column)).collect();
            assert_eq!(
                at,
                [(1, 3), (2, 3), (3, 3), (3, 12), (3, 17), (4, 3)],
                "step {step}"
            );
            assert_eq!(
                got[1].1.offset as usize,
                doc.iter().position(|&b| b == b'\n').unwrap() + 3
            );
        }
    }

    #[test]
    fn a_cut_document_is_an_error_at_its_end() {
        let doc = b"[\n {\"a\": \"open string";
        for step in [1, 5, BLOCK] {
            match values(doc, step) {
                Err(ScanError::Syntax(message, at)) => {
                    assert!(message.contains("cut short"), "{message}");
                    assert_eq!((at.line, at.offset), (2, doc.len() as u64));
                }
                other => panic!("step {step}: {other:?}"),
            }
        }
        // Something that is not a value separator where one must be.
        match values(b"[1 2]", 1) {
            Err(ScanError::Syntax(message, at)) => {
                assert!(message.contains("found `2`"), "{message}");
                assert_eq!((at.line, at.column), (1, 4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn read_errors_say_how_far_the_stream_got() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "gzip cut"));
                }
                let n = self.0.min(buf.len());
                buf[..n].fill(b' ');
                self.0 -= n;
                Ok(n)
            }
        }
        let mut s = Scanner::new(Broken(1000));
        match s.peek() {
            Err(ScanError::Io(e, at)) => {
                assert_eq!(e.to_string(), "gzip cut");
                assert_eq!(at.offset, 1000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn positions_inside_a_value() {
        let start = Pos {
            line: 10,
            column: 5,
            offset: 500,
        };
        assert_eq!((start.inner(1, 3).line, start.inner(1, 3).column), (10, 7));
        assert_eq!((start.inner(4, 2).line, start.inner(4, 2).column), (13, 2));
        assert_eq!(start.inner(0, 0), start);
    }
}
