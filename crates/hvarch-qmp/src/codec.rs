//! Line framing for QMP: newline-delimited JSON, LF or CRLF, with a maximum message size.
//!
//! [`LineDecoder`] is sans-IO: push bytes in as they arrive (split anywhere), pull complete lines
//! out. A line longer than the limit is an error that ends the session; it is never buffered
//! without bound.

/// The default maximum size of one inbound message: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// An inbound line exceeded the maximum message size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversize {
    /// The configured limit in bytes.
    pub limit: usize,
    /// How many bytes the line had reached when it was rejected (at least `limit + 1`).
    pub seen: usize,
}

impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inbound QMP message exceeds the maximum size of {} bytes ({} bytes without a newline)",
            self.limit, self.seen
        )
    }
}

/// Splits a byte stream into lines, tolerating LF and CRLF endings.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    start: usize,
    /// Bytes before this offset (from `start`) are known to hold no newline.
    scanned: usize,
    max: usize,
}

impl LineDecoder {
    /// A decoder that rejects lines longer than `max_message_size` bytes (terminator excluded).
    pub fn new(max_message_size: usize) -> Self {
        LineDecoder {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max: max_message_size.max(1),
        }
    }

    /// The configured maximum message size.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered that do not yet form a complete line.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete line without its terminator (`\n` or `\r\n`), `Ok(None)` if more bytes
    /// are needed, or [`Oversize`] if the current line is longer than the limit.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>, Oversize> {
        let from = self.scanned.max(self.start);
        let Some(rel) = self.buf.get(from..).and_then(|rest| memchr(b'\n', rest)) else {
            self.scanned = self.buf.len();
            let pending = self.buf.len() - self.start;
            if pending > self.max {
                return Err(Oversize {
                    limit: self.max,
                    seen: pending,
                });
            }
            return Ok(None);
        };
        let end = from + rel;
        let begin = self.start;
        self.start = end + 1;
        self.scanned = self.start;
        let mut line = self.buf.get(begin..end).unwrap_or_default();
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.len() > self.max {
            return Err(Oversize {
                limit: self.max,
                seen: line.len(),
            });
        }
        Ok(Some(line))
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Serialises one outbound JSON message as a line (compact JSON plus `\n`).
pub fn encode_line(message: &serde_json::Value) -> Vec<u8> {
    // Serialising a `Value` to a Vec cannot fail: keys are strings and there is no I/O.
    let mut out = serde_json::to_vec(message).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(dec: &mut LineDecoder) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(l) = dec.next_line().expect("no oversize") {
            out.push(l.to_vec());
        }
        out
    }

    #[test]
    fn lf_and_crlf() {
        let mut d = LineDecoder::new(100);
        d.push(b"{\"a\":1}\r\n{\"b\":2}\n{\"c\"");
        assert_eq!(
            lines(&mut d),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
        d.push(b":3}\r");
        assert!(lines(&mut d).is_empty());
        d.push(b"\n");
        assert_eq!(lines(&mut d), vec![b"{\"c\":3}".to_vec()]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversize_without_newline() {
        let mut d = LineDecoder::new(8);
        d.push(b"123456789");
        assert_eq!(d.next_line(), Err(Oversize { limit: 8, seen: 9 }));
    }

    #[test]
    fn oversize_complete_line() {
        let mut d = LineDecoder::new(4);
        d.push(b"12\n123456\n");
        assert_eq!(d.next_line(), Ok(Some(&b"12"[..])));
        assert!(d.next_line().is_err());
    }

    #[test]
    fn exact_limit_is_accepted() {
        let mut d = LineDecoder::new(4);
        d.push(b"1234\r\n");
        assert_eq!(d.next_line(), Ok(Some(&b"1234"[..])));
    }

    #[test]
    fn compaction_keeps_partial_line() {
        let mut d = LineDecoder::new(1000);
        for i in 0..100 {
            d.push(format!("line{i}\npart").as_bytes());
            assert_eq!(
                d.next_line().expect("ok").map(<[u8]>::to_vec),
                Some(if i == 0 {
                    b"line0".to_vec()
                } else {
                    format!("partline{i}").into_bytes()
                })
            );
            assert_eq!(d.next_line(), Ok(None));
        }
    }
}
