//! The write side of a connection, and the one place where response records
//! are framed.
//!
//! - [`Frames`]: outgoing records as segments — headers, padding and small
//!   payloads copied into one buffer, large payloads referenced (the app's
//!   own `bytes`) — for vectored writes. Every STDOUT/STDERR record and
//!   every END_REQUEST the responder sends is made by a `Frames` method.
//!   The response's header block and its first body bytes share one STDOUT
//!   record (Apache mod_authnz_fcgi keeps only the body bytes that arrive in
//!   the record that ends the headers).
//! - [`Writer`]: the socket's write side, shared by every thread that
//!   writes to the connection (app threads for their responses, the I/O
//!   thread for its own answers, the watchdog for a 504). One writer at a
//!   time: a batch of whole records is written under a lock, waiting for
//!   room (poll) without holding the GIL; records of concurrent requests
//!   interleave only at record boundaries.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

use super::proto::record::{self, MAX_CONTENT, ProtocolStatus, RecordType};

/// Slices in one vectored write at most (each up to a record's 64 KiB; the
/// array is made on the stack for every write).
const MAX_IOV: usize = 16;

/// Payloads larger than this are written from the app's own buffer.
pub(super) const COPY_LIMIT: usize = 8 * 1024;

/// Outgoing records, ready for vectored writes.
#[derive(Default)]
pub struct Frames {
    segments: std::collections::VecDeque<Bytes>,
    buffer: BytesMut,
    /// Some of these bytes were written (a record may be half out).
    started: bool,
}

impl Frames {
    /// Nothing framed yet, room for `bytes` of records in the buffer.
    pub fn with_capacity(bytes: usize) -> Frames {
        Frames {
            buffer: BytesMut::with_capacity(bytes),
            ..Frames::default()
        }
    }

    /// True when nothing is framed.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.buffer.is_empty()
    }

    /// Response bytes of request `id`: the CGI header block `head` (may be
    /// empty) and `body`, as STDOUT records — the head and the first body
    /// bytes in the same record.
    pub fn stdout(&mut self, id: u16, head: &[u8], body: Bytes) {
        if head.is_empty() {
            self.stream(RecordType::Stdout, id, body);
            return;
        }
        let first = body.len().min(MAX_CONTENT.saturating_sub(head.len()));
        if head.len() + first > MAX_CONTENT || (first > COPY_LIMIT && head.len() > COPY_LIMIT) {
            // A head of ~64 KiB: it gets records of its own.
            self.stream(RecordType::Stdout, id, Bytes::copy_from_slice(head));
            self.stream(RecordType::Stdout, id, body);
            return;
        }
        let padding =
            record::encode_header(&mut self.buffer, RecordType::Stdout, id, head.len() + first);
        self.buffer.extend_from_slice(head);
        self.payload(body.slice(..first));
        self.buffer.extend_from_slice(&[0u8; 8][..padding]);
        self.stream(RecordType::Stdout, id, body.slice(first..));
    }

    /// Bytes for the web server's error log (FCGI_STDERR).
    pub fn stderr(&mut self, id: u16, data: Bytes) {
        self.stream(RecordType::Stderr, id, data);
    }

    /// The end of a response: the empty STDOUT record, then END_REQUEST.
    pub fn end_response(&mut self, id: u16, app_status: u32) {
        record::encode_stream_end(&mut self.buffer, RecordType::Stdout, id);
        self.end_request(id, app_status, ProtocolStatus::RequestComplete);
    }

    /// END_REQUEST alone (a refusal, or a request aborted before it ran).
    pub fn end_request(&mut self, id: u16, app_status: u32, status: ProtocolStatus) {
        record::encode_end_request(&mut self.buffer, id, app_status, status);
    }

    /// A whole response made without the app (413, status pages).
    pub fn whole_response(&mut self, id: u16, response: &[u8]) {
        self.stream(RecordType::Stdout, id, Bytes::copy_from_slice(response));
        self.end_response(id, 0);
    }

    /// A management record (GET_VALUES_RESULT, UNKNOWN_TYPE), already encoded.
    pub fn management(&mut self, encoded: &[u8]) {
        self.buffer.extend_from_slice(encoded);
    }

    /// The header of a STDOUT record whose `len` content bytes are sent
    /// with `sendfile`; returns the padding to send after them.
    fn file_record_header(&mut self, id: u16, len: usize) -> usize {
        record::encode_header(&mut self.buffer, RecordType::Stdout, id, len)
    }

    fn payload(&mut self, data: Bytes) {
        if data.len() <= COPY_LIMIT {
            self.buffer.extend_from_slice(&data);
        } else {
            self.seal();
            self.segments.push_back(data);
        }
    }

    fn stream(&mut self, kind: RecordType, id: u16, data: Bytes) {
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + MAX_CONTENT).min(data.len());
            let padding = record::encode_header(&mut self.buffer, kind, id, end - offset);
            self.payload(data.slice(offset..end));
            self.buffer.extend_from_slice(&[0u8; 8][..padding]);
            offset = end;
        }
    }

    fn seal(&mut self) {
        if !self.buffer.is_empty() {
            self.segments.push_back(self.buffer.split().freeze());
        }
    }

    /// The next bytes for one vectored write, gathered on the stack: the
    /// sealed segments, then the buffer (whose bytes follow them); how many.
    fn io_slices<'a>(&'a self, out: &mut [io::IoSlice<'a>; MAX_IOV]) -> usize {
        let mut n = 0;
        for segment in self.segments.iter().take(MAX_IOV) {
            out[n] = io::IoSlice::new(segment);
            n += 1;
        }
        if n < MAX_IOV && !self.buffer.is_empty() {
            out[n] = io::IoSlice::new(&self.buffer);
            n += 1;
        }
        n
    }

    /// Drop the first `written` bytes (a write took them).
    fn advance(&mut self, written: usize) {
        self.started |= written > 0;
        let mut left = written;
        while left > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.segments.pop_front();
            } else {
                bytes::Buf::advance(front, left);
                left = 0;
            }
        }
        bytes::Buf::advance(&mut self.buffer, left);
    }

    /// All framed bytes, copied (tests).
    #[cfg(test)]
    pub fn sealed_bytes(&mut self) -> Vec<u8> {
        self.seal();
        self.segments
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect()
    }
}

/// Why a write did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request was aborted (ABORT_REQUEST, a timeout) while its output
    /// waited for room.
    #[error("the web server aborted the request")]
    Aborted,
    /// The connection is gone (or was shut down after a record was cut).
    #[error("the web server closed the connection ({0})")]
    Closed(io::Error),
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> io::Error {
        match e {
            WriteError::Aborted => io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string()),
            WriteError::Closed(_) => io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()),
        }
    }
}

/// A connection's write side (its non-blocking socket, shared).
pub struct Writer {
    socket: Arc<OwnedFd>,
    lock: Mutex<()>,
    /// A record was cut short and the socket shut down: nothing more goes out.
    broken: AtomicBool,
    /// A write failed (the peer is gone).
    failed: AtomicBool,
    /// Nobody reads the socket (a kept connection whose request an app
    /// thread runs with no idle thread watching, see [`super::kept`]):
    /// called once if the peer sends something while a write waits.
    unread: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// A unix socket whose send buffer was not grown yet (see [`Writer::grow`]).
    small_buffer: AtomicBool,
}

/// The writer, held: nobody else writes until it is dropped.
pub struct Held<'a> {
    writer: &'a Writer,
    _guard: MutexGuard<'a, ()>,
}

impl Writer {
    /// A writer on `socket` (a non-blocking stream socket; `unix`: a
    /// unix-domain one).
    pub fn new(socket: Arc<OwnedFd>, unix: bool) -> Writer {
        Writer {
            socket,
            lock: Mutex::new(()),
            broken: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            unread: Mutex::new(None),
            small_buffer: AtomicBool::new(unix),
        }
    }

    /// The socket is full for the first time: a unix socket gets a bigger
    /// send buffer (true: try again at once). poll(2) reports a unix socket
    /// writable only once 3/4 of its send buffer has drained, so a thread
    /// streaming a body (and waiting for room) lets the web server run dry
    /// unless the buffer is bigger than the default 208 KiB. The kernel caps
    /// the request at net.core.wmem_max (and doubles it); memory is used
    /// only while data is in flight. (TCP sockets keep autotuning.) 10 MiB
    /// body, 1 thread: 370 → 560 req/s on this machine. Done on first need,
    /// not per connection: most responses never fill the socket.
    fn grow(&self) -> bool {
        if !self.small_buffer.swap(false, Ordering::AcqRel) {
            return false;
        }
        let size = 1 << 20;
        nix::sys::socket::setsockopt(&*self.socket, nix::sys::socket::sockopt::SndBuf, &size)
            .is_ok()
    }

    /// Take the socket for a sequence of writes.
    pub fn hold(&self) -> Held<'_> {
        Held {
            writer: self,
            _guard: crate::core::lock(&self.lock),
        }
    }

    /// Take the socket if nobody else is writing.
    pub fn try_hold(&self) -> Option<Held<'_>> {
        let guard = match self.lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Held {
            writer: self,
            _guard: guard,
        })
    }

    /// Write `frames` whole (see [`Held::write`]).
    pub fn write(&self, frames: Frames, cancelled: &dyn Fn() -> bool) -> Result<(), WriteError> {
        self.hold().write(frames, cancelled)
    }

    /// Nothing went wrong on this socket: no write failed, no record was
    /// cut short (a kept connection may carry the next request).
    pub fn intact(&self) -> bool {
        !self.broken.load(Ordering::Acquire) && !self.failed.load(Ordering::Acquire)
    }

    /// The socket's descriptor.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// Shut the connection down both ways (its stream can no longer be
    /// trusted, or a response must end without END_REQUEST).
    pub fn shut_down(&self) {
        self.broken.store(true, Ordering::Release);
        let _ =
            nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }

    /// While nobody reads the socket: `hook` runs (once) when the peer
    /// sends something while a write waits for room; `None`: somebody
    /// reads it again.
    pub fn when_peer_speaks(&self, hook: Option<Box<dyn FnOnce() + Send>>) {
        *crate::core::lock(&self.unread) = hook;
    }

    /// Wait (up to 100 ms) for room in the socket — or, while nobody reads
    /// it, for the peer to send something (an ABORT_REQUEST to a client
    /// that stopped reading): then the hook runs.
    fn wait_writable(&self) -> io::Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let hooked = || crate::core::lock(&self.unread);
        let mut flags = PollFlags::POLLOUT;
        if hooked().is_some() {
            flags |= PollFlags::POLLIN;
        }
        let mut fds = [PollFd::new(self.socket.as_fd(), flags)];
        let result = poll(&mut fds, PollTimeout::from(100u16));
        let spoke = flags.contains(PollFlags::POLLIN)
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP));
        if spoke {
            // (Run without the lock: the hook takes the kept connections'.)
            let hook = hooked().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        match result {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Held<'_> {
    /// One write attempt that never waits: `Ok(None)` when everything went
    /// out, `Ok(Some(rest))` when the socket filled up (the rest must follow
    /// before anyone else writes: keep holding).
    pub fn try_write(&self, mut frames: Frames) -> Result<Option<Frames>, WriteError> {
        let writer = self.writer;
        if writer.broken.load(Ordering::Acquire) {
            return Err(WriteError::Closed(io::ErrorKind::BrokenPipe.into()));
        }
        // (The buffer is written where it is: a response small enough to be
        // copied whole, as most are, is one slice — nothing sealed, queued
        // or gathered on the heap.)
        while !frames.is_empty() {
            let written = {
                let mut slices = [io::IoSlice::new(&[]); MAX_IOV];
                let n = frames.io_slices(&mut slices);
                nix::sys::uio::writev(&*writer.socket, &slices[..n])
            };
            match written {
                Ok(n) => frames.advance(n),
                Err(nix::errno::Errno::EAGAIN) => return Ok(Some(frames)),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    writer.failed.store(true, Ordering::Release);
                    return Err(WriteError::Closed(e.into()));
                }
            }
        }
        Ok(None)
    }

    /// Write `frames` whole, waiting for room whenever the socket is full.
    /// `cancelled` is asked while waiting (ABORT_REQUEST, a timeout): then
    /// the write stops — and if a record was left half written, the
    /// connection is shut down (the web server sees it close, never a
    /// corrupt record).
    pub fn write(&self, frames: Frames, cancelled: &dyn Fn() -> bool) -> Result<(), WriteError> {
        let writer = self.writer;
        let mut rest = frames;
        loop {
            rest = match self.try_write(rest)? {
                None => return Ok(()),
                Some(rest) => rest,
            };
            if writer.grow() {
                continue;
            }
            if cancelled() {
                if rest.started {
                    writer.shut_down();
                }
                return Err(WriteError::Aborted);
            }
            writer.wait_writable().map_err(WriteError::Closed)?;
        }
    }

    /// `len` bytes of `file` from `offset` as STDOUT records of request
    /// `id`: header, `sendfile` of the content, padding — the bytes never
    /// pass through userspace.
    pub fn send_file(
        &self,
        id: u16,
        file: &OwnedFd,
        offset: u64,
        len: u64,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), WriteError> {
        let mut position =
            i64::try_from(offset).map_err(|e| WriteError::Closed(io::Error::other(e)))?;
        let mut left = len;
        while left > 0 {
            let chunk = left.min(MAX_CONTENT as u64) as usize;
            let mut header = Frames::default();
            let padding = header.file_record_header(id, chunk);
            self.write(header, cancelled)?;
            let mut sent = 0;
            while sent < chunk {
                let result = nix::sys::sendfile::sendfile(
                    &*self.writer.socket,
                    file,
                    Some(&mut position),
                    chunk - sent,
                );
                match result {
                    Ok(0) => {
                        // The file shrank: fill the announced record with zeros.
                        let mut zeros = Frames::default();
                        zeros.buffer.extend_from_slice(&vec![0u8; chunk - sent]);
                        self.write(zeros, &|| false)?;
                        sent = chunk;
                    }
                    Ok(n) => sent += n,
                    Err(nix::errno::Errno::EAGAIN) if self.writer.grow() => {}
                    Err(nix::errno::Errno::EAGAIN) => {
                        // Mid-record: only the end of the connection stops us.
                        if cancelled() {
                            self.writer.shut_down();
                            return Err(WriteError::Aborted);
                        }
                        self.writer.wait_writable().map_err(WriteError::Closed)?;
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(WriteError::Closed(e.into())),
                }
            }
            let mut pad = Frames::default();
            pad.buffer.extend_from_slice(&[0u8; 8][..padding]);
            self.write(pad, &|| false)?;
            left -= chunk as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fcgi::proto::codec::RecordDecoder;
    use tokio_util::codec::Decoder;

    fn records(frames: &mut Frames) -> Vec<(u8, u16, Vec<u8>)> {
        let mut wire = BytesMut::from(&frames.sealed_bytes()[..]);
        let mut out = Vec::new();
        while let Some(r) = RecordDecoder.decode(&mut wire).unwrap() {
            out.push((r.kind, r.request_id, r.content.to_vec()));
        }
        assert!(wire.is_empty());
        out
    }

    #[test]
    fn head_and_first_body_bytes_share_a_record() {
        let mut frames = Frames::default();
        frames.stdout(
            3,
            b"Status: 403 Forbidden\r\n\r\n",
            Bytes::from_static(b"denied"),
        );
        frames.end_response(3, 0);
        let got = records(&mut frames);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].2, b"Status: 403 Forbidden\r\n\r\ndenied");
        assert_eq!((got[1].0, got[1].2.len()), (RecordType::Stdout as u8, 0));
        assert_eq!(got[2].0, RecordType::EndRequest as u8);
    }

    #[test]
    fn large_bodies_split_at_the_record_limit_and_stay_whole() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut frames = Frames::default();
        frames.stdout(1, b"Status: 200 OK\r\n\r\n", Bytes::from(body.clone()));
        let got = records(&mut frames);
        let joined: Vec<u8> = got.iter().flat_map(|r| r.2.clone()).collect();
        assert_eq!(&joined[..18], b"Status: 200 OK\r\n\r\n");
        assert_eq!(&joined[18..], &body[..]);
        assert!(got.iter().all(|r| r.2.len() <= MAX_CONTENT));
    }

    /// Small responses go out of the one buffer with write(2): a socket
    /// that fills mid-response leaves the rest (from the exact byte) for
    /// the next attempt, and the peer reads every record whole.
    #[test]
    fn small_responses_resume_where_a_full_socket_cut_them() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let writer = Writer::new(Arc::new(OwnedFd::from(a)), false);
        let held = writer.hold();
        let mut sent = 0usize;
        let rest = loop {
            let mut frames = Frames::with_capacity(64);
            frames.stdout(1, b"Status: 200 OK\r\n\r\n", Bytes::from(vec![b'x'; 3000]));
            frames.end_response(1, 0);
            assert!(frames.segments.is_empty(), "all in the buffer");
            let len = frames.buffer.len();
            match held.try_write(frames).unwrap() {
                None => sent += len,
                Some(rest) => {
                    assert!(!rest.buffer.is_empty() && rest.buffer.len() <= len);
                    assert_eq!(rest.started, rest.buffer.len() < len);
                    sent += len;
                    break rest;
                }
            }
        };
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut &b, &mut all).unwrap();
            all
        });
        held.write(rest, &|| false).unwrap();
        drop(held);
        drop(writer);
        let all = reader.join().unwrap();
        assert_eq!(all.len(), sent);
        let mut wire = BytesMut::from(&all[..]);
        let mut ends = 0;
        while let Some(r) = RecordDecoder.decode(&mut wire).unwrap() {
            assert!(r.kind == RecordType::Stdout as u8 || r.kind == RecordType::EndRequest as u8);
            ends += usize::from(r.kind == RecordType::EndRequest as u8);
        }
        assert!(wire.is_empty());
        // (STDOUT: 8 + 18 + 3000 + 6 padding; the empty STDOUT; END_REQUEST.)
        assert_eq!(ends * (8 + 3018 + 6 + 8 + 16), sent);
    }

    #[test]
    fn writes_wait_for_room_and_cancel_cleanly() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let writer = Writer::new(Arc::new(OwnedFd::from(a)), true);
        // Nobody reads: the socket fills, a cancelled write stops and, having
        // written part of a record, shuts the connection down.
        let mut frames = Frames::default();
        frames.stdout(1, b"", Bytes::from(vec![7u8; 8 << 20]));
        let started = std::time::Instant::now();
        let cancel_after = move || started.elapsed() > std::time::Duration::from_millis(150);
        assert!(matches!(
            writer.write(frames, &cancel_after),
            Err(WriteError::Aborted)
        ));
        let mut again = Frames::default();
        again.end_response(1, 0);
        assert!(matches!(
            writer.write(again, &|| false),
            Err(WriteError::Closed(_))
        ));
        drop(b);
    }
}
