//! What a connection and the app side share.
//!
//! ```text
//! connection (I/O thread) ──Job──▶ Dispatch (app threads)
//!        ▲                            │ Exchange::send / finish
//!        └── Link::take_finished ◀────┘ (records written straight to the socket)
//! ```
//!
//! - [`Job`]: a request ready to run — its PARAMS, its body (complete, in
//!   memory or a temporary file; or streamed as it arrives with
//!   `--stream-request-body`) and its [`Exchange`].
//! - [`Exchange`]: one request's output side, used by the app thread (and
//!   the watchdog): response records go straight to the connection's
//!   [`Writer`], END_REQUEST exactly once.
//! - [`Link`]: what a connection shares with every thread writing to it —
//!   the writer, and the ids of requests that ended, so the connection can
//!   forget them (it is woken only when it must act on an end).
//! - [`Limits`]: the connection's limits and advertised values.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

use super::proto::record::Role;
use super::writer::{Frames, Held, WriteError, Writer};
use crate::core::request::{MetaVariables, is_chunked, set_measured_length};
use crate::core::response::error_head;
use crate::core::wire;

/// Pages the connection answers itself, without the app (status, ping):
/// `(path, query)` → `(content type, body)`.
#[derive(Clone)]
pub struct PageHook(pub Arc<PageFn>);

/// `(path, query)` → `(content type, body)` of a page, if it is one.
pub type PageFn = dyn Fn(&[u8], &[u8]) -> Option<(&'static str, String)> + Send + Sync;

impl std::fmt::Debug for PageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageHook")
    }
}

/// Limits and advertised values of a connection.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest PARAMS stream accepted (bytes).
    pub max_params: usize,
    /// Largest request body (`CONTENT_LENGTH`) accepted; `None`: no limit.
    pub max_body: Option<u64>,
    /// `FCGI_MAX_CONNS` as advertised.
    pub max_conns: usize,
    /// Requests one connection may carry at once (more: FCGI_OVERLOADED).
    pub max_reqs: usize,
    /// What GET_VALUES answers for FCGI_MAX_REQS: `--max-reqs` when given,
    /// else the worker's app threads (more run no sooner: they queue).
    pub advertised_reqs: usize,
    /// Status and ping pages.
    pub page_hook: Option<PageHook>,
    /// Request bodies up to this size are held in memory before the app
    /// starts; larger ones go to an unlinked temporary file.
    pub body_buffer_size: usize,
    /// Where those temporary files go (`None`: `$TMPDIR`, else `/tmp`).
    pub body_temp_dir: Option<std::path::PathBuf>,
    /// Start the app as soon as PARAMS are complete and let it read the body
    /// as it arrives (an app thread then waits on a slow client).
    pub stream_request_body: bool,
    /// A connection that has not completed a request header (BEGIN_REQUEST
    /// and PARAMS) within this time, or whose body stalls this long, is closed.
    pub header_timeout: Duration,
    /// Kept-alive connections are served by the app threads
    /// ([`super::kept`]); off (`--kept-on-io-thread`): by the I/O thread.
    pub kept_inline: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_params: 1024 * 1024,
            max_body: None,
            max_conns: 1024,
            max_reqs: 1024,
            advertised_reqs: 1024,
            page_hook: None,
            body_buffer_size: 1024 * 1024,
            body_temp_dir: None,
            stream_request_body: false,
            header_timeout: Duration::from_secs(30),
            kept_inline: true,
        }
    }
}

/// A request body as the app reads it.
pub enum Body {
    /// Received completely, held in memory (the STDIN records' contents).
    Memory(std::collections::VecDeque<Bytes>),
    /// Received completely, in an unlinked temporary file (rewound).
    File(std::fs::File),
    /// Arriving as STDIN records (`--stream-request-body`); the channel
    /// closes at the end of the stream.
    Stream {
        /// The records' contents, as they arrive.
        rx: mpsc::Receiver<Bytes>,
        /// What is left of the last one.
        current: Bytes,
    },
}

impl Body {
    /// Its length, when it was received whole before the app runs.
    pub fn received_len(&self) -> Option<u64> {
        match self {
            Body::Memory(chunks) => Some(chunks.iter().map(|c| c.len() as u64).sum()),
            Body::File(file) => file.metadata().ok().map(|m| m.len()),
            Body::Stream { .. } => None,
        }
    }

    /// A body received whole without a `CONTENT_LENGTH` among `meta`
    /// gets its measured one ([`set_measured_length`]: behind Apache
    /// mod_proxy_fcgi a chunked body arrives without one, and bottle or
    /// pypiserver would de-chunk it again: 400).
    pub fn measure(&self, meta: &mut MetaVariables) {
        if meta
            .get(b"CONTENT_LENGTH")
            .is_some_and(|v| !v.trim_ascii().is_empty())
        {
            return;
        }
        if let Some(len) = self.received_len().filter(|&n| n > 0 || is_chunked(meta)) {
            set_measured_length(meta, len);
        }
    }

    /// A body read as it arrives on `rx`.
    pub fn stream(rx: mpsc::Receiver<Bytes>) -> Body {
        Body::Stream {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let current = match self {
            Body::File(file) => return file.read(buf),
            Body::Memory(chunks) => {
                while chunks.front().is_some_and(|c| c.is_empty()) {
                    chunks.pop_front();
                }
                match chunks.front_mut() {
                    Some(front) => front,
                    None => return Ok(0),
                }
            }
            Body::Stream { rx, current } => {
                while current.is_empty() {
                    match rx.blocking_recv() {
                        Some(data) => *current = data,
                        None => return Ok(0),
                    }
                }
                current
            }
        };
        let n = buf.len().min(current.len());
        buf[..n].copy_from_slice(&current[..n]);
        current.advance(n);
        Ok(n)
    }
}

/// A request ready to run, handed to the [`Dispatch`].
pub struct Job {
    /// RESPONDER or AUTHORIZER.
    pub role: Role,
    /// The PARAMS.
    pub meta: MetaVariables,
    /// The body.
    pub body: Body,
    /// Where the response goes.
    pub exchange: Arc<Exchange>,
}

/// Runs jobs (the Python thread pool in the worker; a plain function in tests).
pub trait Dispatch: Send + Sync + 'static {
    /// Queue a job; `Err` gives it back when overloaded.
    fn dispatch(&self, job: Job) -> Result<(), Box<Job>>;
}

/// What a connection shares with the threads that write to it.
pub struct Link {
    /// The socket's write side.
    pub writer: Writer,
    /// Requests whose END_REQUEST went out (or that were cut short).
    finished: Mutex<Vec<u16>>,
    /// Wakes the connection for an end it must act on.
    pub(super) wake: tokio::sync::Notify,
    /// The connection is gone: writers stop waiting for room.
    pub(super) gone: AtomicBool,
}

impl Link {
    /// The link of a connection on `socket` (`unix`: a unix-domain socket).
    pub fn new(socket: Arc<OwnedFd>, unix: bool) -> Arc<Link> {
        Arc::new(Link {
            writer: Writer::new(socket, unix),
            finished: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            gone: AtomicBool::new(false),
        })
    }

    /// The requests that ended since the last call.
    pub(super) fn take_finished(&self) -> Vec<u16> {
        std::mem::take(&mut *crate::core::lock(&self.finished))
    }

    fn finished(&self, id: u16, wake: bool) {
        crate::core::lock(&self.finished).push(id);
        if wake {
            self.wake.notify_one();
        }
    }
}

/// One request's output side.
pub struct Exchange {
    /// The request id on its connection.
    pub id: u16,
    link: Arc<Link>,
    aborted: AtomicBool,
    /// Our side gave up on the request (a timeout, a response cut short):
    /// nothing more of it goes out, not even its END_REQUEST.
    given_up: AtomicBool,
    head_sent: AtomicBool,
    ended: AtomicBool,
    /// The connection must hear of the end at once: it closes after it,
    /// still feeds the request's STDIN, or is stopping.
    pub(super) wake_on_end: AtomicBool,
}

impl Exchange {
    /// A request `id` on the connection behind `link`.
    pub fn new(id: u16, link: Arc<Link>, wake_on_end: bool) -> Arc<Exchange> {
        Arc::new(Exchange {
            id,
            link,
            aborted: AtomicBool::new(false),
            given_up: AtomicBool::new(false),
            head_sent: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            wake_on_end: AtomicBool::new(wake_on_end),
        })
    }

    /// Stop the request's output (ABORT_REQUEST, the connection went away,
    /// a timeout).
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
    }

    /// Whether the request was aborted.
    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire) || self.link.gone.load(Ordering::Acquire)
    }

    /// Whether the writing of the request's end must stop waiting for
    /// room: the connection is gone, or our side gave up on the request.
    /// Not after an ABORT_REQUEST alone: that stops the response, while
    /// the web server reads on for the END_REQUEST it is owed (§5.4).
    fn end_cancelled(&self) -> bool {
        self.given_up.load(Ordering::Acquire) || self.link.gone.load(Ordering::Acquire)
    }

    /// The connection's link.
    pub(super) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The request ended with its END_REQUEST written whole, nothing cut
    /// short and nothing failed: its connection may carry another request.
    pub fn ended_cleanly(&self) -> bool {
        self.ended.load(Ordering::Acquire) && !self.aborted() && self.link.writer.intact()
    }

    /// Whether the request is over on our side: its END_REQUEST is out or
    /// going out (set before it is written), or it was ended early.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Whether any of the response (its header block) went out.
    pub fn head_sent(&self) -> bool {
        self.head_sent.load(Ordering::Acquire)
    }

    fn aborted_error() -> io::Error {
        WriteError::Aborted.into()
    }

    /// Response bytes (`head`: the CGI header block, or empty), written
    /// now, waiting while the socket is full (call without the GIL).
    pub fn send(&self, head: &[u8], body: Bytes) -> io::Result<()> {
        if self.aborted() {
            return Err(Self::aborted_error());
        }
        let mut frames = Frames::default();
        frames.stdout(self.id, head, body);
        let held = self.link.writer.hold();
        if self.ended.load(Ordering::Acquire) {
            return Err(Self::aborted_error());
        }
        if !head.is_empty() {
            self.head_sent.store(true, Ordering::Release);
        }
        held.write(frames, &|| self.aborted())
            .map_err(io::Error::from)
    }

    /// Bytes for the web server's error log (FCGI_STDERR).
    pub fn send_stderr(&self, data: Bytes) {
        if self.aborted() || self.ended.load(Ordering::Acquire) {
            return;
        }
        let mut frames = Frames::default();
        frames.stderr(self.id, data);
        let _ = self.link.writer.write(frames, &|| self.aborted());
    }

    /// `len` bytes of `file` from `offset` with `sendfile(2)`.
    pub fn send_file(&self, file: &OwnedFd, offset: u64, len: u64) -> io::Result<()> {
        if self.aborted() {
            return Err(Self::aborted_error());
        }
        let held = self.link.writer.hold();
        if self.ended.load(Ordering::Acquire) {
            return Err(Self::aborted_error());
        }
        held.send_file(self.id, file, offset, len, &|| self.aborted())
            .map_err(io::Error::from)
    }

    /// Take the writer to end the request, waiting for it (see [`Ending`]);
    /// `None` when the request already ended (the watchdog answered it):
    /// nothing more may be sent.
    pub fn ending(&self) -> Option<Ending<'_>> {
        self.end_with(self.link.writer.hold())
    }

    /// [`Exchange::ending`] if no other request of the connection is
    /// writing (`Err(Busy)`: the caller releases the GIL, then waits).
    pub fn try_ending(&self) -> Result<Option<Ending<'_>>, Busy> {
        let held = self.link.writer.try_hold().ok_or(Busy)?;
        Ok(self.end_with(held))
    }

    fn end_with<'a>(&'a self, held: Held<'a>) -> Option<Ending<'a>> {
        if self.ended.swap(true, Ordering::AcqRel) {
            return None;
        }
        // Told before END_REQUEST goes out: the web server may reuse the id
        // as soon as it reads it, and the connection must know it is free.
        self.link.finished(self.id, false);
        Some(Ending {
            exchange: self,
            held,
        })
    }

    /// The app failed after its response began: end the request without
    /// END_REQUEST — the connection is shut down, so the web server sees
    /// the response cut short (nginx: "upstream prematurely closed") and
    /// ends the client's response broken, never as a whole one. False when
    /// the request had already ended.
    pub fn cut_short(&self) -> bool {
        self.end_early(|_| self.link.writer.shut_down())
    }

    /// `--request-timeout`: answer 504 if nothing of the response went out,
    /// else cut it short (see [`Exchange::cut_short`]). False when the
    /// request had already ended.
    pub fn time_out(&self) -> bool {
        self.end_early(|held| {
            if self.head_sent() {
                self.link.writer.shut_down();
                return;
            }
            let (head, body) = error_head(504);
            let mut frames = Frames::default();
            frames.stdout(
                self.id,
                wire::head_block(Some(&head)),
                Bytes::from_static(body),
            );
            frames.end_response(self.id, crate::core::exit::Exit::AppError as u32);
            let _ = held.write(frames, &|| self.link.gone.load(Ordering::Acquire));
        })
    }

    /// End the request now, on our side: stop its output, then `answer`
    /// with the writer held; the connection hears of the end.
    fn end_early(&self, answer: impl FnOnce(&Held<'_>)) -> bool {
        self.given_up.store(true, Ordering::Release);
        self.abort();
        let held = self.link.writer.hold();
        if self.ended.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.link.finished(self.id, false);
        answer(&held);
        drop(held);
        self.link.wake.notify_one();
        true
    }
}

/// Another request of the connection is writing right now.
#[derive(Debug)]
pub struct Busy;

/// The end of a request, with the writer held: the last output and
/// END_REQUEST leave in one write.
pub struct Ending<'a> {
    exchange: &'a Exchange,
    held: Held<'a>,
}

/// A request's last output, framed as STDOUT records as soon as the app
/// gives it and held until END_REQUEST can follow it in the same write.
pub struct Last {
    frames: Frames,
    /// It carries the response's header block (not out yet).
    head: bool,
}

impl Last {
    /// The header block `head` (may be empty) and `body` of request `id`.
    pub fn new(id: u16, head: &[u8], body: Bytes) -> Last {
        // (Record headers and padding: 8 + 7 for each of at most three
        // records, plus the end's 8 and 16; a larger body is not copied.)
        let copied = head.len() + body.len().min(super::writer::COPY_LIMIT);
        let mut frames = Frames::with_capacity(copied + 64);
        frames.stdout(id, head, body);
        Last {
            frames,
            head: !head.is_empty(),
        }
    }
}

impl Ending<'_> {
    /// The last response bytes (may be empty), the end of STDOUT and
    /// END_REQUEST with `app_status`, framed.
    pub fn frames(&self, head: &[u8], body: Bytes, app_status: u32) -> Frames {
        self.frames_after(Some(Last::new(self.exchange.id, head, body)), app_status)
    }

    /// The held last output, if any, then the end of STDOUT and
    /// END_REQUEST with `app_status`.
    pub fn frames_after(&self, last: Option<Last>, app_status: u32) -> Frames {
        let mut frames = match last {
            Some(last) => {
                if last.head {
                    self.exchange.head_sent.store(true, Ordering::Release);
                }
                last.frames
            }
            None => Frames::with_capacity(32),
        };
        frames.end_response(self.exchange.id, app_status);
        frames
    }

    /// One write attempt that never waits: `Some(rest)` when the socket filled up.
    pub fn try_write(&self, frames: Frames) -> Option<Frames> {
        // (An error: the connection is gone, nothing left to tell.)
        self.held.try_write(frames).unwrap_or_default()
    }

    /// Write what is left, waiting for room (call without the GIL) — after
    /// an ABORT_REQUEST too (see [`Exchange::end_cancelled`]). An end that
    /// cannot go out shuts the connection down: the web server sees it
    /// close instead of waiting for an END_REQUEST that never comes.
    pub fn write(&self, frames: Frames) {
        let exchange = self.exchange;
        let written = self.held.write(frames, &|| exchange.end_cancelled());
        if written.is_err() {
            exchange.link.writer.shut_down();
        }
    }
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        // END_REQUEST is out: wake the connection if it must act on it.
        if self.exchange.wake_on_end.load(Ordering::Acquire) {
            self.exchange.link.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc::{Receiver, Sender, channel};

    use bytes::BytesMut;

    use super::*;
    use crate::fcgi::proto::codec::RecordDecoder;
    use crate::fcgi::proto::record::RecordType;
    use tokio_util::codec::Decoder;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A request on a connection whose send buffer is full (the web server
    /// has a response's last bytes still to read): its exchange, the web
    /// server's end and how many bytes wait there. (A link told it is not
    /// on a unix socket: a unix one's buffer grows at its first full write.)
    fn full_connection() -> (Arc<Exchange>, UnixStream, usize) {
        let (ours, peer) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut queued = 0;
        loop {
            match (&ours).write(&[0u8; 4096]) {
                Ok(n) => queued += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let link = Link::new(Arc::new(OwnedFd::from(ours)), false);
        (Exchange::new(1, link, false), peer, queued)
    }

    /// End the request on another thread, as the app thread does; `events`
    /// hears "waits" once the write waits for room (the web server spoke
    /// meanwhile: see [`Writer::when_peer_speaks`]), then "returned".
    fn end_elsewhere<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        exchange: &'s Exchange,
        peer: &mut UnixStream,
        events: Sender<&'static str>,
    ) {
        let waits = events.clone();
        let hook = move || {
            let _ = waits.send("waits");
        };
        exchange.link.writer.when_peer_speaks(Some(Box::new(hook)));
        scope.spawn(move || {
            if let Some(ending) = exchange.ending() {
                ending.write(ending.frames(b"", Bytes::new(), 0));
            }
            let _ = events.send("returned");
        });
        peer.write_all(&[0]).unwrap();
    }

    fn next(events: &Receiver<&'static str>) -> &'static str {
        events.recv_timeout(PATIENCE).unwrap()
    }

    #[test]
    fn an_aborted_request_gets_its_end_request_once_the_web_server_reads_on() {
        // ABORT_REQUEST, and the app returns while the socket is still full.
        let (exchange, mut peer, queued) = full_connection();
        exchange.abort();
        let (events, heard) = channel();
        std::thread::scope(|s| {
            end_elsewhere(s, &exchange, &mut peer, events);
            // The end waits for room (it is not dropped: the abort stopped
            // the response, not its END_REQUEST)...
            assert_eq!(next(&heard), "waits");
            // ...and follows what was queued once the web server reads.
            let mut wire = vec![0u8; queued + 24];
            peer.read_exact(&mut wire).unwrap();
            let mut end = BytesMut::from(&wire[queued..]);
            let stdout_end = RecordDecoder.decode(&mut end).unwrap().unwrap();
            let end_request = RecordDecoder.decode(&mut end).unwrap().unwrap();
            assert_eq!(
                (stdout_end.kind, stdout_end.content.len()),
                (RecordType::Stdout as u8, 0)
            );
            assert_eq!(
                (end_request.kind, end_request.request_id),
                (RecordType::EndRequest as u8, 1)
            );
            assert_eq!(next(&heard), "returned");
        });
        assert!(exchange.link.writer.intact());
    }

    #[test]
    fn a_timeout_stops_a_waiting_end_and_closes_the_connection() {
        // The web server reads nothing while the end waits: --request-timeout
        // (the watchdog) gets the writer back, and the connection closes.
        let (exchange, mut peer, queued) = full_connection();
        let (events, heard) = channel();
        std::thread::scope(|s| {
            end_elsewhere(s, &exchange, &mut peer, events);
            assert_eq!(next(&heard), "waits");
            assert!(!exchange.time_out(), "the request had ended");
            assert_eq!(next(&heard), "returned");
        });
        let mut wire = Vec::new();
        peer.read_to_end(&mut wire).unwrap();
        assert_eq!(wire.len(), queued, "no END_REQUEST, then the close");
    }
}
