//! The response side of PEP 3333 without Python: status and header validation
//! (RFC 9110 tokens, latin-1, no CR/LF — header injection refused), the lazy
//! header rule (headers go out with the first non-empty body chunk, or at the
//! end of an empty body), `Content-Length` enforcement, `HEAD`, and the
//! [`Sink`] a front end implements to put bytes on its wire.

use std::io;
use std::os::fd::BorrowedFd;

use bytes::Bytes;

use crate::core::wire;
use crate::{log_error, log_warn};

/// A response status and header list that passed validation, kept as the
/// CGI header block it becomes on the wire (RFC 3875 §6: a `Status:` line,
/// the application's headers in its order, a blank line) — written once,
/// as `start_response` validates, and never copied header by header again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The numeric status code.
    pub code: u16,
    /// The declared `Content-Length`, if any.
    pub content_length: Option<u64>,
    /// The header block's bytes (latin-1).
    block: Vec<u8>,
}

impl Head {
    /// The CGI header block.
    pub fn block(&self) -> &[u8] {
        &self.block
    }
}

/// A [`Head`] being validated and written, header by header.
pub struct HeadBuilder {
    head: Head,
}

impl HeadBuilder {
    /// Start with the status (`"404 Not Found"`), validated.
    pub fn new(status: &str) -> Result<HeadBuilder, ResponseError> {
        let code = parse_status(status)?;
        let mut block = Vec::with_capacity(128);
        wire::push_status(&mut block, status);
        Ok(HeadBuilder {
            head: Head {
                code,
                content_length: None,
                block,
            },
        })
    }

    /// Add a header: a name of RFC 9110 token characters, a value of
    /// latin-1 text without control characters (no CR, LF: no header
    /// injection); hop-by-hop headers are dropped with a warning.
    pub fn header(&mut self, name: &str, value: &str) -> Result<(), ResponseError> {
        if !is_token(name) {
            return Err(ResponseError::BadHeaderName(name.to_string()));
        }
        if !is_clean_text(value) {
            return Err(ResponseError::BadHeaderValue(name.to_string()));
        }
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            log_warn!("dropped hop-by-hop header {name:?} (PEP 3333 forbids it)");
            return Ok(());
        }
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = value
                .trim()
                .parse::<u64>()
                .map_err(|_| ResponseError::BadContentLength(value.to_string()))?;
            self.head.content_length = Some(parsed);
        }
        wire::push_header(&mut self.head.block, name, value);
        Ok(())
    }

    /// The head, its block closed by the blank line.
    pub fn finish(mut self) -> Head {
        wire::push_end(&mut self.head.block);
        self.head
    }
}

/// Why a status or header was refused.
// (Each names what was bad: `BadStatus`, `BadHeaderName`, ...)
#[allow(clippy::enum_variant_names)]
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    /// The status is not `NNN reason` with a three-digit code.
    #[error("malformed status {0:?}: expected a three-digit code, a space and a reason phrase")]
    BadStatus(String),
    /// A header name is empty or contains characters outside RFC 9110 `token`.
    #[error("invalid header name {0:?}")]
    BadHeaderName(String),
    /// A header value contains CR, LF, NUL or another control character, or
    /// characters outside latin-1.
    #[error("invalid value for header {0:?}: control characters or non-latin-1 text")]
    BadHeaderValue(String),
    /// A `Content-Length` header is not a decimal integer.
    #[error("invalid Content-Length header {0:?}")]
    BadContentLength(String),
}

/// RFC 9110 `tchar`, as a table (one load a byte).
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| TCHAR[usize::from(b)])
}

/// Latin-1 text without control characters but tab (C0, DEL and C1 are
/// controls).
fn is_clean_text(s: &str) -> bool {
    // (Printable ASCII and tab — nearly every value — in one byte pass.)
    s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        || s.chars()
            .all(|c| (c as u32) <= 0xff && (c == '\t' || !(c.is_control())))
}

/// Validate a status string (`"404 Not Found"`).
pub fn parse_status(status: &str) -> Result<u16, ResponseError> {
    let bad = || ResponseError::BadStatus(status.to_string());
    let bytes = status.as_bytes();
    if bytes.len() < 4 || bytes[3] != b' ' || !bytes[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    if !is_clean_text(status) || status[4..].trim().is_empty() {
        return Err(bad());
    }
    let code: u16 = status[..3].parse().map_err(|_| bad())?;
    if !(100..=999).contains(&code) {
        return Err(bad());
    }
    Ok(code)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that PEP 3333 forbids applications to
/// send; they are dropped with a warning, as gunicorn does.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
];

/// Validate a status and header list into a [`Head`].
pub fn make_head(status: &str, headers: Vec<(String, String)>) -> Result<Head, ResponseError> {
    let mut head = HeadBuilder::new(status)?;
    for (name, value) in &headers {
        head.header(name, value)?;
    }
    Ok(head.finish())
}

/// Where a front end puts the response. `head` is `Some` exactly once, with
/// the first call that sends anything. Bodies are [`Bytes`]: the Python layer
/// hands over the app's `bytes` objects without copying them.
pub trait Sink: Send {
    /// Send the head (if given) and then `body`, without delaying it —
    /// except that when `last` is true nothing else follows, so a sink may
    /// hold it to go out together with the end of the response.
    fn send(&mut self, head: Option<&Head>, body: Bytes, last: bool) -> io::Result<()>;

    /// Send the head (if given) and then `len` bytes of `file` from `offset`
    /// without copying through userspace. `Ok(None)`: not supported here, the
    /// caller falls back to reading the file.
    fn send_file(
        &mut self,
        head: Option<&Head>,
        file: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> io::Result<Option<u64>>;

    /// True when a `send` with `last` set never blocks (the sink holds it
    /// for the end of the response): the caller may keep the GIL for it.
    fn holds_last(&self) -> bool {
        false
    }
}

/// The state of one response: the head set by `start_response`, whether it
/// was sent, how much body went out.
pub struct ResponseWriter {
    head: Option<Head>,
    sent: bool,
    body_bytes: u64,
    discard_body: bool,
    overflow_logged: bool,
    sink: Box<dyn Sink>,
}

/// The generic page for a failure before headers were sent. Never a traceback.
pub fn error_head(code: u16) -> (Head, &'static [u8]) {
    let (status, body): (&str, &'static [u8]) = match code {
        400 => ("400 Bad Request", b"<html><head><title>400 Bad Request</title></head><body><h1>Bad Request</h1><p>The request could not be understood.</p></body></html>\n"),
        413 => ("413 Content Too Large", b"<html><head><title>413 Content Too Large</title></head><body><h1>Content Too Large</h1></body></html>\n"),
        504 => ("504 Gateway Timeout", b"<html><head><title>504 Gateway Timeout</title></head><body><h1>Gateway Timeout</h1><p>The application did not answer in time.</p></body></html>\n"),
        _ => ("500 Internal Server Error", b"<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1><p>The server encountered an internal error and was unable to complete your request.</p></body></html>\n"),
    };
    let head = make_head(
        status,
        vec![
            ("Content-Type".into(), "text/html; charset=utf-8".into()),
            ("Content-Length".into(), body.len().to_string()),
        ],
    )
    .unwrap_or_else(|_| unreachable!("the error pages' heads are valid"));
    (head, body)
}

impl ResponseWriter {
    /// A writer for one response; `discard_body` for `HEAD` requests.
    pub fn new(sink: Box<dyn Sink>, discard_body: bool) -> Self {
        ResponseWriter {
            head: None,
            sent: false,
            body_bytes: 0,
            discard_body,
            overflow_logged: false,
            sink,
        }
    }

    /// True once `start_response` has set a head.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// True once the head is on the wire.
    pub fn headers_sent(&self) -> bool {
        self.sent
    }

    /// Body bytes sent so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Set (or, before sending, replace) the head.
    pub fn set_head(&mut self, head: Head) {
        self.head = Some(head);
    }

    /// How many of `len` body bytes may still go out under `Content-Length`.
    fn allowed(&mut self, len: u64) -> u64 {
        let Some(declared) = self.head.as_ref().and_then(|h| h.content_length) else {
            return len;
        };
        let left = declared.saturating_sub(self.body_bytes);
        if len > left && !self.overflow_logged {
            self.overflow_logged = true;
            log_warn!(
                "application sent more than its Content-Length of {declared} bytes; the excess was dropped"
            );
        }
        len.min(left)
    }

    /// Send a body chunk (the head goes first if it has not yet).
    /// Empty chunks send nothing: headers wait for real body bytes.
    /// `last`: the application has no more body (e.g. the final item of a
    /// list), so the sink may send it together with the end of the response.
    pub fn write(&mut self, data: Bytes, last: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let take = if self.discard_body {
            0
        } else {
            self.allowed(data.len() as u64) as usize
        };
        if take == 0 && self.sent {
            return Ok(());
        }
        let head = self.head.as_ref().filter(|_| !self.sent);
        self.sent = true;
        self.sink.send(head, data.slice(..take), last)?;
        self.body_bytes += take as u64;
        Ok(())
    }

    /// Send `len` bytes of a file from `offset` with the sink's zero-copy path.
    /// `Ok(false)` when the sink has none (nothing was sent).
    pub fn write_file(&mut self, file: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<bool> {
        let len = if self.discard_body {
            0
        } else {
            self.allowed(len)
        };
        let head = self.head.as_ref().filter(|_| !self.sent);
        match self.sink.send_file(head, file, offset, len)? {
            None => Ok(false),
            Some(sent) => {
                self.sent = true;
                self.body_bytes += sent;
                Ok(true)
            }
        }
    }

    /// The status code sent (0: none yet).
    pub fn status_code(&self) -> u16 {
        self.head
            .as_ref()
            .filter(|_| self.sent)
            .map_or(0, |h| h.code)
    }

    /// True when a chunk of `len` bytes completes the declared
    /// `Content-Length` (or no body is sent at all, for `HEAD`): nothing can
    /// follow it, so it may be treated as the last chunk and leave together
    /// with the end of the response — a Flask or Django response (an
    /// iterable without a length) then goes out in one write, like a list.
    pub fn completes(&self, len: usize) -> bool {
        if self.discard_body {
            return self.head.is_some();
        }
        self.head
            .as_ref()
            .and_then(|h| h.content_length)
            .is_some_and(|declared| self.body_bytes + len as u64 >= declared)
    }

    /// True when `write(_, last)` (or `finish()` when `last`) may wait on
    /// I/O, so the caller should release the GIL around it.
    pub fn may_block(&self, last: bool) -> bool {
        !(last && self.sink.holds_last())
    }

    /// End of the body: send the head now if the body was empty, and log a
    /// body shorter than its `Content-Length`.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.sent {
            self.sent = true;
            self.sink.send(self.head.as_ref(), Bytes::new(), true)?;
        }
        if let Some(declared) = self.head.as_ref().and_then(|h| h.content_length)
            && !self.discard_body
            && self.body_bytes < declared
        {
            log_error!(
                "application sent {} bytes, less than its Content-Length of {declared}",
                self.body_bytes
            );
        }
        Ok(())
    }

    /// Answer with a generic error page if nothing was sent yet; returns
    /// false when headers were already out (the response is truncated).
    pub fn fail(&mut self, code: u16) -> io::Result<bool> {
        if self.sent {
            return Ok(false);
        }
        let (head, body) = error_head(code);
        self.head = Some(head);
        self.sent = true;
        let body = if self.discard_body {
            Bytes::new()
        } else {
            Bytes::from_static(body)
        };
        self.sink.send(self.head.as_ref(), body, true)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn status_table() {
        let ok = [
            "200 OK",
            "404 Not Found",
            "599 Custom reason",
            "200 caf\u{e9}",
        ];
        for status in ok {
            assert!(parse_status(status).is_ok(), "{status}");
        }
        let bad = [
            "",
            "200",
            "200 ",
            "2000 OK",
            "20 OK",
            "OK 200",
            "200\tOK",
            "200 OK\r\nX: y",
            "200 OK\n",
            "200 \u{2603}",
            "abc def",
            "099 Low",
        ];
        for status in bad {
            assert!(parse_status(status).is_err(), "{status:?}");
        }
    }

    #[test]
    fn header_table() {
        let h = |n: &str, v: &str| make_head("200 OK", vec![(n.to_string(), v.to_string())]);
        assert!(h("Content-Type", "text/plain").is_ok());
        assert!(h("X-Tab", "a\tb").is_ok());
        assert!(h("X-Latin", "caf\u{e9}").is_ok());
        assert_eq!(
            h("X-Bad", "a\r\nSet-Cookie: x").unwrap_err(),
            ResponseError::BadHeaderValue("X-Bad".into())
        );
        assert!(h("X-Bad", "a\nb").is_err());
        assert!(h("X-Bad", "a\0b").is_err());
        assert!(h("X-Snow", "\u{2603}").is_err());
        assert!(h("X-Del", "a\x7fb").is_err());
        assert!(h("X-C1", "a\u{85}b").is_err());
        assert!(h("Bad Name", "v").is_err());
        assert!(h("Bad:Name", "v").is_err());
        assert!(h("", "v").is_err());
        assert!(h("Content-Length", "abc").is_err());
        assert_eq!(h("content-length", " 12").unwrap().content_length, Some(12));
        let nothing = b"Status: 200 OK\r\n\r\n";
        assert_eq!(h("Connection", "close").unwrap().block(), nothing);
        assert_eq!(h("transfer-encoding", "chunked").unwrap().block(), nothing);
        assert_eq!(
            h("X-Latin", "caf\u{e9}").unwrap().block(),
            b"Status: 200 OK\r\nX-Latin: caf\xe9\r\n\r\n"
        );
        assert_eq!(h("X-Tab", "a\tb").unwrap().code, 200);
    }

    type Sent = Vec<(Option<String>, Vec<u8>)>;

    /// The status line of a head's block, without `Status: `.
    fn status_of(head: &Head) -> String {
        let line = head.block().split(|&b| b == b'\r').next().unwrap();
        String::from_utf8(line[b"Status: ".len()..].to_vec()).unwrap()
    }

    #[derive(Default, Clone)]
    struct Recorder(Arc<Mutex<Sent>>);

    impl Sink for Recorder {
        fn send(&mut self, head: Option<&Head>, body: Bytes, _: bool) -> io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push((head.map(status_of), body.to_vec()));
            Ok(())
        }
        fn send_file(
            &mut self,
            _: Option<&Head>,
            _: BorrowedFd<'_>,
            _: u64,
            _: u64,
        ) -> io::Result<Option<u64>> {
            Ok(None)
        }
    }

    #[test]
    fn headers_wait_for_the_first_non_empty_chunk() {
        let rec = Recorder::default();
        let mut w = ResponseWriter::new(Box::new(rec.clone()), false);
        w.set_head(make_head("200 OK", vec![]).unwrap());
        w.write(Bytes::new(), false).unwrap();
        assert!(rec.0.lock().unwrap().is_empty());
        w.write(Bytes::from_static(b"abc"), false).unwrap();
        w.write(Bytes::from_static(b"def"), false).unwrap();
        w.finish().unwrap();
        let sent = rec.0.lock().unwrap().clone();
        assert_eq!(
            sent,
            vec![
                (Some("200 OK".into()), b"abc".to_vec()),
                (None, b"def".to_vec())
            ]
        );
    }

    #[test]
    fn empty_body_sends_head_at_finish_and_excess_is_cut() {
        let rec = Recorder::default();
        let mut w = ResponseWriter::new(Box::new(rec.clone()), false);
        w.set_head(make_head("204 No Content", vec![]).unwrap());
        w.finish().unwrap();
        assert_eq!(
            rec.0.lock().unwrap().clone(),
            vec![(Some("204 No Content".into()), vec![])]
        );

        let rec = Recorder::default();
        let mut w = ResponseWriter::new(Box::new(rec.clone()), false);
        w.set_head(make_head("200 OK", vec![("Content-Length".into(), "4".into())]).unwrap());
        w.write(Bytes::from_static(b"abc"), false).unwrap();
        w.write(Bytes::from_static(b"defg"), false).unwrap();
        assert_eq!(w.body_bytes(), 4);
    }

    #[test]
    fn a_chunk_that_completes_the_content_length_is_the_last() {
        let rec = Recorder::default();
        let mut w = ResponseWriter::new(Box::new(rec.clone()), false);
        assert!(!w.completes(3), "no head yet");
        w.set_head(make_head("200 OK", vec![("Content-Length".into(), "6".into())]).unwrap());
        assert!(!w.completes(3));
        w.write(Bytes::from_static(b"abc"), false).unwrap();
        assert!(w.completes(3));
        assert!(!w.completes(2));
        let mut unknown = ResponseWriter::new(Box::new(rec.clone()), false);
        unknown.set_head(make_head("200 OK", vec![]).unwrap());
        assert!(!unknown.completes(1_000_000));
        let mut head = ResponseWriter::new(Box::new(rec), true);
        head.set_head(make_head("200 OK", vec![]).unwrap());
        assert!(head.completes(1));
    }

    #[test]
    fn head_requests_send_no_body_and_fail_only_before_sending() {
        let rec = Recorder::default();
        let mut w = ResponseWriter::new(Box::new(rec.clone()), true);
        w.set_head(make_head("200 OK", vec![]).unwrap());
        w.write(Bytes::from_static(b"abc"), false).unwrap();
        assert!(!w.fail(500).unwrap());
        assert_eq!(
            rec.0.lock().unwrap().clone(),
            vec![(Some("200 OK".into()), vec![])]
        );
    }
}
