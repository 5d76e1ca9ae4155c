//! The protocol-neutral request: meta-variables as the server sent them (raw
//! bytes, RFC 3875 §4.1) and a body reader that never reads past
//! `CONTENT_LENGTH` and treats a body that ends early as the end (PEP 3333
//! "wsgi.input_terminated"). CGI takes them from the process environment
//! and stdin; FastCGI from PARAMS and STDIN records.

use std::io::{self, Read};

pub use crate::core::meta::MetaVariables;

/// Whether the request says its body came chunked (`HTTP_TRANSFER_ENCODING`).
pub fn is_chunked(meta: &MetaVariables) -> bool {
    meta.get(b"HTTP_TRANSFER_ENCODING").is_some_and(|te| {
        te.split(|&b| b == b',')
            .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    })
}

/// A body the gateway received whole without a `CONTENT_LENGTH` (a
/// chunked one: Apache mod_cgi, or mod_proxy_fcgi passing it on as it
/// arrives) is given its measured length, as nginx gives one before
/// FastCGI — and [`crate::core::environ::build`] then drops
/// `HTTP_TRANSFER_ENCODING`, so that the app does not de-chunk it again.
pub fn set_measured_length(meta: &mut MetaVariables, len: u64) {
    meta.retain(|k, _| k != b"CONTENT_LENGTH");
    meta.push(b"CONTENT_LENGTH", len.to_string().as_bytes());
}

/// A body reader with an optional length limit and a small read buffer, the
/// engine behind `wsgi.input` (`read`, `readline`).
pub struct BodyReader {
    source: Box<dyn Read + Send>,
    /// Bytes still allowed from `source`; `None` reads until EOF.
    remaining: Option<u64>,
    buffer: Vec<u8>,
    position: usize,
    eof: bool,
}

const CHUNK: usize = 64 * 1024;

impl BodyReader {
    /// Wrap `source`, reading at most `limit` bytes from it (`None`: until EOF).
    pub fn new(source: Box<dyn Read + Send>, limit: Option<u64>) -> Self {
        BodyReader {
            source,
            remaining: limit,
            buffer: Vec::new(),
            position: 0,
            eof: limit == Some(0),
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buffer[self.position..]
    }

    /// Refill the buffer with up to `want` more bytes; returns false at the end.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.position > 0 {
            self.buffer.drain(..self.position);
            self.position = 0;
        }
        let mut want = want.max(1);
        if let Some(remaining) = self.remaining {
            want = want.min(usize::try_from(remaining).unwrap_or(usize::MAX));
        }
        let start = self.buffer.len();
        self.buffer.resize(start + want, 0);
        let read = loop {
            match self.source.read(&mut self.buffer[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buffer.truncate(start);
                    return Err(e);
                }
            }
        };
        self.buffer.truncate(start + read);
        if read == 0 {
            // The body ended before CONTENT_LENGTH: that is the end, not a hang.
            self.eof = true;
            return Ok(false);
        }
        if let Some(remaining) = self.remaining.as_mut() {
            *remaining -= read as u64;
            if *remaining == 0 {
                self.eof = true;
            }
        }
        Ok(true)
    }

    /// How many bytes are left at most, when the limit is known.
    pub fn size_hint(&self) -> Option<u64> {
        let buffered = self.buffered().len() as u64;
        if self.eof {
            return Some(buffered);
        }
        self.remaining.map(|r| r + buffered)
    }

    /// Fill `buf` from the buffer, then straight from the source (no
    /// intermediate copy); fewer bytes only at the end of the body.
    pub fn read_into(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let from_buffer = buf.len().min(self.buffered().len());
        buf[..from_buffer].copy_from_slice(&self.buffered()[..from_buffer]);
        self.position += from_buffer;
        let mut filled = from_buffer;
        while filled < buf.len() && !self.eof {
            let mut want = buf.len() - filled;
            if let Some(remaining) = self.remaining {
                want = want.min(usize::try_from(remaining).unwrap_or(usize::MAX));
            }
            let n = match self.source.read(&mut buf[filled..filled + want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.eof = true;
                break;
            }
            filled += n;
            if let Some(remaining) = self.remaining.as_mut() {
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.eof = true;
                }
            }
        }
        Ok(filled)
    }

    /// Read up to `size` bytes (`None`: everything that is left).
    pub fn read(&mut self, size: Option<usize>) -> io::Result<Vec<u8>> {
        match size {
            Some(size) => {
                while self.buffered().len() < size {
                    let want = (size - self.buffered().len()).max(CHUNK);
                    if !self.fill(want)? {
                        break;
                    }
                }
                let take = size.min(self.buffered().len());
                let out = self.buffered()[..take].to_vec();
                self.position += take;
                Ok(out)
            }
            None => {
                while self.fill(CHUNK)? {}
                let mut out = std::mem::take(&mut self.buffer);
                out.drain(..self.position);
                self.position = 0;
                Ok(out)
            }
        }
    }

    /// Read one line including its `\n`, at most `limit` bytes.
    pub fn readline(&mut self, limit: Option<usize>) -> io::Result<Vec<u8>> {
        let mut searched = 0;
        loop {
            let data = self.buffered();
            let bound = limit.map_or(data.len(), |l| l.min(data.len()));
            if let Some(i) = memchr::memchr(b'\n', &data[searched..bound]) {
                let end = searched + i + 1;
                let out = data[..end].to_vec();
                self.position += end;
                return Ok(out);
            }
            searched = bound;
            if limit.is_some_and(|l| bound >= l) || !self.fill(CHUNK)? {
                let out = self.buffered()[..bound].to_vec();
                self.position += bound;
                return Ok(out);
            }
        }
    }
}

/// Why a request cannot be served before the application runs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// `CONTENT_LENGTH` is present but not a non-negative decimal integer.
    #[error("invalid CONTENT_LENGTH {0:?}")]
    BadContentLength(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(data: &'static [u8], limit: Option<u64>) -> BodyReader {
        BodyReader::new(Box::new(data), limit)
    }

    #[test]
    fn never_reads_past_the_limit() {
        let mut r = reader(b"hello world", Some(5));
        assert_eq!(r.read(None).unwrap(), b"hello");
        assert_eq!(r.read(Some(10)).unwrap(), b"");
    }

    #[test]
    fn short_body_ends_reads() {
        let mut r = reader(b"abc", Some(100));
        assert_eq!(r.read(Some(10)).unwrap(), b"abc");
        assert_eq!(r.read(None).unwrap(), b"");
    }

    #[test]
    fn lines_with_and_without_limits() {
        let mut r = reader(b"one\ntwo\nthree", None);
        assert_eq!(r.readline(None).unwrap(), b"one\n");
        assert_eq!(r.readline(Some(2)).unwrap(), b"tw");
        assert_eq!(r.readline(None).unwrap(), b"o\n");
        assert_eq!(r.readline(None).unwrap(), b"three");
        assert_eq!(r.readline(None).unwrap(), b"");
    }

    #[test]
    fn read_into_uses_the_buffer_then_the_source() {
        let mut r = reader(b"line\nrest of the body", Some(12));
        assert_eq!(r.readline(None).unwrap(), b"line\n");
        assert_eq!(r.size_hint(), Some(7));
        let mut buf = [0u8; 20];
        assert_eq!(r.read_into(&mut buf).unwrap(), 7);
        assert_eq!(&buf[..7], b"rest of");
        assert_eq!(r.size_hint(), Some(0));
        let mut short = reader(b"abc", Some(10));
        assert_eq!(short.size_hint(), Some(10));
        assert_eq!(short.read_into(&mut buf).unwrap(), 3);
    }

    #[test]
    fn read_n_across_chunks() {
        let data: &'static [u8] = Box::leak(vec![7u8; 200_000].into_boxed_slice());
        let mut r = reader(data, Some(150_000));
        assert_eq!(r.read(Some(100_000)).unwrap().len(), 100_000);
        assert_eq!(r.read(Some(100_000)).unwrap().len(), 50_000);
    }
}
