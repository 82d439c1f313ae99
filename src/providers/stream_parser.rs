//! Incremental parsers for the streamed answers of vendors (the client
//! side): Server-Sent Events (OpenAI, Anthropic, Gemini) and
//! newline-delimited JSON (Ollama). Bytes arrive in arbitrary pieces; both
//! keep the unfinished tail.

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Largest unfinished line kept (a vendor that never sends a newline must not
/// grow memory without bound).
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// A vendor sent a line longer than `MAX_PENDING` without ending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream line exceeds 4 MiB")]
pub struct LineTooLong;

/// Splits a byte stream into complete lines.
#[derive(Debug, Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, LineTooLong> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push(String::from_utf8_lossy(&line).into_owned());
        }
        if self.pending.len() > MAX_PENDING {
            return Err(LineTooLong);
        }
        Ok(out)
    }

    fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty())
            .then(|| String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned())
    }
}

/// Server-Sent Events parser.
#[derive(Debug, Default)]
pub struct SseParser {
    lines: Lines,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, LineTooLong> {
        let mut out = Vec::new();
        for line in self.lines.feed(bytes)? {
            self.line(&line, &mut out);
        }
        Ok(out)
    }

    /// Ends the stream; returns a last event not followed by a blank line.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if let Some(line) = self.lines.finish() {
            self.line(&line, &mut out);
        }
        self.line("", &mut out);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return; // comment / keep-alive
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => self.data.push(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// Newline-delimited JSON parser (Ollama's streaming format).
#[derive(Debug, Default)]
pub struct NdjsonParser {
    lines: Lines,
}

impl NdjsonParser {
    /// Feeds bytes; returns the complete non-empty lines.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, LineTooLong> {
        Ok(self
            .lines
            .feed(bytes)?
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect())
    }

    /// Ends the stream; returns an unterminated last line.
    pub fn finish(&mut self) -> Option<String> {
        self.lines.finish().filter(|l| !l.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sse_events_across_arbitrary_splits() {
        let stream = b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: line1\ndata: line2\n\ndata: [DONE]";
        for split in 0..stream.len() {
            let mut p = SseParser::default();
            let mut got = p.feed(&stream[..split]).expect("feed");
            got.extend(p.feed(&stream[split..]).expect("feed"));
            got.extend(p.finish());
            assert_eq!(
                got,
                vec![
                    SseEvent {
                        event: Some("message_start".into()),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        event: None,
                        data: "line1\nline2".into()
                    },
                    SseEvent {
                        event: None,
                        data: "[DONE]".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn ndjson_lines() {
        let mut p = NdjsonParser::default();
        let mut got = p.feed(b"{\"a\":1}\n\n{\"b\"").expect("feed");
        got.extend(p.feed(b":2}\n{\"c\":3}").expect("feed"));
        got.extend(p.finish());
        assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
    }

    #[test]
    fn endless_lines_are_refused() {
        let mut p = NdjsonParser::default();
        assert!(p.feed(&vec![b'x'; MAX_PENDING + 1]).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut s = SseParser::default();
            let mut n = NdjsonParser::default();
            for c in &chunks {
                let _ = s.feed(c);
                let _ = n.feed(c);
            }
            let _ = s.finish();
            let _ = n.finish();
        }
    }
}
