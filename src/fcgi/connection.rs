//! One FastCGI connection as the I/O thread serves it (specification
//! §3–§6), generic over the transport and over a [`Dispatch`] that runs
//! requests (no Python here). The I/O thread only *reads*: responses are
//! written by the threads that make them, straight to the socket
//! ([`Exchange`]); the connection writes only its own answers (management
//! records, refusals, 413, status pages).
//!
//! Several requests may be in flight on one connection (`FCGI_MPXS_CONNS`
//! is 1, up to `FCGI_MAX_REQS`), each with its own END_REQUEST; a
//! BEGIN_REQUEST pipelined behind a request that is still finishing is
//! simply another request.
//!
//! This file is the connection's life: the read loop, its events, which
//! requests are over, idleness, timeouts, the close. What each record of a
//! request does (BEGIN_REQUEST, PARAMS, STDIN, ABORT_REQUEST, management
//! records, our own answers) is in [`requests`].
//!
//! ```text
//! a request:   Params ──empty PARAMS──▶ Body ──empty STDIN──▶ Running ──END_REQUEST──▶ (forgotten)
//!                 │                └─(--stream-request-body)─▶ Running (STDIN fed as it arrives)
//!                 └─ status page, 413, refusal: END_REQUEST now ──▶ Ended (its STDIN is ignored until it ends)
//!
//! a connection: Fresh ──BEGIN──▶ Busy (≥ 1 request not ended) ──all ended──▶ Idle ──BEGIN──▶ Busy …
//!   closes: a request without FCGI_KEEP_CONN ended · the peer closed · malformed input ·
//!   no complete header within --header-timeout (Fresh, or a request in Params) ·
//!   a body stalled as long (Body) · evicted when Idle and --max-conns is reached ·
//!   the worker stops and the connection is Idle
//! ```

mod requests;
pub(super) use requests::own_answer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::idle::{Evict, IdleList};
use super::inline::InFlight;
use super::job::{Dispatch, Exchange, Limits, Link};
use super::proto::codec::{CodecError, RecordDecoder};
use super::proto::record::Role;
use super::spool::Spool;
use super::writer::Frames;
use crate::core::request::MetaVariables;
use crate::{log_error, log_info};

/// How long a connection accepted just before a graceful stop may take to
/// send its first request (a web server sends it right after connecting).
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long trailing STDIN of ended requests is read before closing.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// Answers of ours (management records, refusals, pages) not yet written.
const MAX_PENDING_WRITES: usize = 64;

/// A readable socket (the write side is the [`Link`]'s duplicate).
pub trait Transport: AsyncRead + std::os::fd::AsRawFd + Unpin + Send {}
impl<T: AsyncRead + std::os::fd::AsRawFd + Unpin + Send> Transport for T {}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The web server closed it between requests, or keep-conn was clear.
    Normal,
    /// The peer closed it mid-request.
    PeerGone,
    /// Malformed input; the message names the fault.
    Protocol(String),
    /// `--header-timeout`: no complete request header, or a stalled body.
    Timeout(String),
    /// Idle while `--max-conns` was reached: closed to make room.
    Evicted,
}

/// What every connection of a worker shares.
#[derive(Clone)]
pub struct Context {
    /// Runs the requests.
    pub dispatch: Arc<dyn Dispatch>,
    /// Limits and settings.
    pub limits: Arc<Limits>,
    /// Turns true when the worker stops: close once idle.
    pub shutdown: watch::Receiver<bool>,
    /// Idle connections, for `--max-conns` eviction.
    pub idle: Arc<IdleList>,
}

/// A request on this connection.
enum Req {
    /// Collecting PARAMS.
    Params {
        role: Role,
        keep_conn: bool,
        params: BytesMut,
    },
    /// PARAMS done; receiving the body before the app starts.
    Body {
        role: Role,
        keep_conn: bool,
        meta: MetaVariables,
        spool: Spool,
    },
    /// Handed to the app.
    Running {
        exchange: Arc<Exchange>,
        keep_conn: bool,
        /// `--stream-request-body`: where STDIN goes (`None` once the app
        /// stopped reading or the request was aborted).
        stdin: Option<mpsc::Sender<Bytes>>,
        stdin_ended: bool,
    },
    /// END_REQUEST went out before its STDIN ended: the rest is ignored (§3.3).
    Ended,
}

impl Req {
    fn live(&self) -> bool {
        !matches!(self, Req::Ended)
    }
}

/// Serve one connection until it closes. `buf`: bytes already read from
/// it (by the app thread that accepted it); `kept`: it carried requests
/// already (a kept connection the app threads served, see [`super::kept`]);
/// `in_flight`: the request an app thread runs on it, which shares its link.
pub async fn serve<T: Transport>(
    mut stream: T,
    context: Context,
    buf: BytesMut,
    (kept, in_flight): (bool, Option<InFlight>),
) -> Closed {
    // SAFETY: the descriptor belongs to `stream`, alive for this call.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let unix =
        nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(stream.as_raw_fd()).is_ok();
    let link = match (&in_flight, nix::unistd::dup(socket)) {
        (Some(in_flight), _) => in_flight.link.clone(),
        (None, Ok(fd)) => Link::new(Arc::new(fd), unix),
        (None, Err(e)) => {
            log_error!("cannot serve a connection: {e}");
            return Closed::PeerGone;
        }
    };
    let stopping = *context.shutdown.borrow();
    let mut conn = Connection {
        link: link.clone(),
        requests: HashMap::new(),
        stopping,
        context,
        stdin_waiting: None,
        close_when_idle: false,
        begun: false,
        header_since: None,
        last_read: Instant::now(),
        drain_until: None,
        idle_key: None,
        evict: Arc::new(Notify::new()),
        writes: Vec::new(),
    };
    if let Some(InFlight { exchange, .. }) = in_flight {
        // Its end must wake us (told before its id is looked at: an end
        // before that is in the link's list already).
        exchange.wake_on_end.store(true, Ordering::Release);
        conn.begun = true;
        conn.requests.insert(
            exchange.id,
            Req::Running {
                exchange,
                keep_conn: true,
                stdin: None,
                stdin_ended: true,
            },
        );
    }
    // (A kept connection handed over because the worker stops comes with
    // what the web server had sent on it: served, or closed at once if idle.)
    conn.begun |= kept;
    let closed = conn.run(&mut stream, buf).await;
    conn.leave_idle();
    // Our last answers (a 413, say) go out before the close.
    let writes = std::mem::take(&mut conn.writes);
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        for write in writes {
            let _ = write.await;
        }
    })
    .await;
    for request in conn.requests.values() {
        if let Req::Running { exchange, .. } = request {
            exchange.abort();
        }
    }
    link.gone.store(true, Ordering::Release);
    log_closed(&closed);
    close_write_side(&link).await;
    if closed == Closed::Normal {
        linger(&mut stream).await;
    }
    closed
}

/// Why the connection ended, for the log (a normal close says nothing).
fn log_closed(closed: &Closed) {
    match closed {
        Closed::Protocol(fault) => log_error!("closing FastCGI connection: {fault}"),
        Closed::Timeout(why) => log_error!("closing FastCGI connection: {why}"),
        Closed::PeerGone => log_info!("web server closed the connection during a request"),
        Closed::Evicted => {
            log_info!("closed an idle connection: --max-conns reached and a new one arrived")
        }
        Closed::Normal => {}
    }
}

/// Shut our side down once no writer is in the middle of a response.
async fn close_write_side(link: &Arc<Link>) {
    let shut = |link: &Link| {
        let fd = link.writer.raw_fd();
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
    };
    if let Some(held) = link.writer.try_hold() {
        shut(link);
        drop(held);
        return;
    }
    let link = link.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let _held = link.writer.hold();
        shut(&link);
    })
    .await;
}

/// A lingering close: after our half-close, read and discard what the peer
/// still sends until it closes, for at most two seconds, so its last
/// writes do not fail with EPIPE/RST before it has read the response.
async fn linger<T: Transport>(stream: &mut T) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

struct Connection {
    link: Arc<Link>,
    requests: HashMap<u16, Req>,
    context: Context,
    stopping: bool,
    /// `--stream-request-body`: STDIN content waiting for room in a
    /// request's queue (the socket is not read meanwhile).
    stdin_waiting: Option<(u16, Bytes)>,
    /// A request without FCGI_KEEP_CONN ended: close once idle.
    close_when_idle: bool,
    /// A request was begun on this connection.
    begun: bool,
    /// Since when a request header is awaited (`--header-timeout`).
    header_since: Option<Instant>,
    /// The last time the peer sent anything (a stalled body).
    last_read: Instant,
    /// Reading the trailing STDIN of ended requests (or a first request
    /// during a stop) until this deadline, then closing.
    drain_until: Option<Instant>,
    /// In the worker's idle list under this key.
    idle_key: Option<u64>,
    /// Notified when evicted from the idle list.
    evict: Arc<Notify>,
    /// Our own answers still being written (see [`Connection::send`]).
    writes: Vec<tokio::task::JoinHandle<()>>,
}

enum Event {
    Read(std::io::Result<usize>),
    StdinRoom(Result<mpsc::OwnedPermit<Bytes>, mpsc::error::SendError<()>>),
    Ended,
    Shutdown,
    Deadline,
    Evicted,
}

impl Connection {
    async fn run<T: Transport>(&mut self, stream: &mut T, mut buf: BytesMut) -> Closed {
        let mut decoder = RecordDecoder;
        loop {
            self.reap();
            while self.stdin_waiting.is_none() {
                match decoder.decode(&mut buf) {
                    Ok(Some(record)) => {
                        if let Err(closed) = self.on_record(record).await {
                            return closed;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Closed::Protocol(e.to_string()),
                }
            }
            if let Some(closed) = self.settle(buf.is_empty()) {
                return closed;
            }
            match self.next_event(stream, &mut buf).await {
                Event::Read(Ok(0)) => {
                    // (Ends that went out just before the peer closed.)
                    self.reap();
                    return match decoder.decode_eof(&mut buf) {
                        Err(CodecError::Truncated(n)) => Closed::Protocol(format!(
                            "connection closed inside a record ({n} bytes of it received)"
                        )),
                        _ if self.live() => Closed::PeerGone,
                        _ => Closed::Normal,
                    };
                }
                Event::Read(Ok(_)) => self.last_read = Instant::now(),
                Event::Read(Err(e)) => {
                    // (Ends that went out just before the peer reset it.)
                    self.reap();
                    return if self.live() {
                        Closed::PeerGone
                    } else if e.kind() == std::io::ErrorKind::ConnectionReset {
                        // An idle kept-alive connection reset by its peer
                        // (HAProxy and h2o close idle ones that way): normal.
                        Closed::Normal
                    } else {
                        Closed::Protocol(format!("read error: {e}"))
                    };
                }
                Event::StdinRoom(room) => self.feed_stdin(room),
                Event::Ended => {}
                Event::Shutdown => self.on_shutdown(),
                Event::Deadline => {
                    if let Some(closed) = self.deadline_passed() {
                        return closed;
                    }
                }
                Event::Evicted => {
                    if let Some(closed) = self.on_evicted() {
                        return closed;
                    }
                }
            }
        }
    }

    /// Some request has not ended yet.
    fn live(&self) -> bool {
        self.requests.values().any(Req::live)
    }

    /// Forget the requests whose END_REQUEST went out.
    fn reap(&mut self) {
        for id in self.link.take_finished() {
            let Some(Req::Running {
                keep_conn,
                stdin_ended,
                ..
            }) = self.requests.get(&id)
            else {
                continue;
            };
            self.close_when_idle |= !keep_conn;
            if self.stdin_waiting.as_ref().is_some_and(|(w, _)| *w == id) {
                self.stdin_waiting = None;
            }
            if *stdin_ended {
                self.requests.remove(&id);
            } else {
                self.requests.insert(id, Req::Ended);
            }
        }
    }

    /// After the input at hand was handled: close now, or note what to
    /// wait for (idle list, timeouts).
    fn settle(&mut self, nothing_buffered: bool) -> Option<Closed> {
        let live = self.live();
        let idle = !live && nothing_buffered;
        if idle && (self.close_when_idle || (self.stopping && self.begun)) {
            if !self.requests.is_empty() && self.drain_until.is_none() {
                // Read the rest of the bodies first: a web server still
                // writing STDIN would see EPIPE instead of the response.
                self.drain_until = Some(Instant::now() + DRAIN_TIME);
            }
            if self.requests.is_empty() {
                return Some(Closed::Normal);
            }
        }
        if idle && self.stopping && !self.begun && self.drain_until.is_none() {
            // Accepted just before the stop: its first request is on its way.
            self.drain_until = Some(Instant::now() + FIRST_REQUEST_GRACE);
        }
        let awaiting_header = (!self.begun && !self.stopping)
            || self
                .requests
                .values()
                .any(|r| matches!(r, Req::Params { .. }));
        if !awaiting_header {
            self.header_since = None;
        } else if self.header_since.is_none() {
            self.header_since = Some(Instant::now());
        }
        if self.quiescent(nothing_buffered) {
            self.enter_idle();
        } else {
            self.leave_idle();
        }
        None
    }

    /// Nothing is expected from the peer but a new request: every request
    /// has its input and runs (whether it ended is learnt lazily; see
    /// [`Link::take_finished`]). Such a connection may be evicted.
    fn quiescent(&self, nothing_buffered: bool) -> bool {
        nothing_buffered
            && self.begun
            && !self.stopping
            && self.requests.values().all(|r| {
                matches!(
                    r,
                    Req::Running {
                        stdin_ended: true,
                        ..
                    }
                )
            })
    }

    /// Evicted from the idle list: close if idle after all, else go back
    /// to the end of the list (a request is still running).
    fn on_evicted(&mut self) -> Option<Closed> {
        self.idle_key = None;
        self.reap();
        if self.live() {
            return None;
        }
        Some(Closed::Evicted)
    }

    fn enter_idle(&mut self) {
        if self.idle_key.is_none() {
            self.idle_key = Some(self.context.idle.enter(Evict::Notify(self.evict.clone())));
        }
    }

    fn leave_idle(&mut self) {
        if let Some(key) = self.idle_key.take() {
            self.context.idle.leave(key);
        }
    }

    /// The earliest deadline: header, stalled body, draining.
    fn deadline(&self) -> Option<Instant> {
        let timeout = self.context.limits.header_timeout;
        let header = self.header_since.map(|t| t + timeout);
        let receiving = self.stdin_waiting.is_none()
            && self.requests.values().any(|r| {
                matches!(r, Req::Body { .. })
                    || matches!(
                        r,
                        Req::Running {
                            stdin: Some(_),
                            stdin_ended: false,
                            ..
                        }
                    )
            });
        let body = receiving.then(|| self.last_read + timeout);
        [header, body, self.drain_until].into_iter().flatten().min()
    }

    fn deadline_passed(&mut self) -> Option<Closed> {
        let now = Instant::now();
        let timeout = self.context.limits.header_timeout;
        if self.drain_until.is_some_and(|t| t <= now) {
            return Some(Closed::Normal);
        }
        if self.header_since.is_some_and(|t| t + timeout <= now) {
            return Some(Closed::Timeout(format!(
                "no complete request header (BEGIN_REQUEST and PARAMS) within {timeout:?} \
                 (--header-timeout)"
            )));
        }
        if self.deadline().is_some_and(|t| t <= now) {
            return Some(Closed::Timeout(format!(
                "the request body stalled for {timeout:?} (--header-timeout)"
            )));
        }
        None
    }

    async fn next_event<T: Transport>(&mut self, stream: &mut T, buf: &mut BytesMut) -> Event {
        let stdin_tx = match &self.stdin_waiting {
            Some((id, _)) => match self.requests.get(id) {
                Some(Req::Running {
                    stdin: Some(tx), ..
                }) => Some(tx.clone()),
                _ => None,
            },
            None => None,
        };
        let reading = self.stdin_waiting.is_none();
        let deadline = self.deadline();
        let idle = self.idle_key.is_some();
        let link = self.link.clone();
        let evict = self.evict.clone();
        let stopping = self.stopping;
        tokio::select! {
            r = stream.read_buf(buf), if reading => Event::Read(r),
            p = async { stdin_tx.unwrap().reserve_owned().await }, if stdin_tx.is_some() => Event::StdinRoom(p),
            _ = link.wake.notified() => Event::Ended,
            _ = self.context.shutdown.changed(), if !stopping => Event::Shutdown,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Event::Deadline,
            _ = evict.notified(), if idle => Event::Evicted,
        }
    }

    fn on_shutdown(&mut self) {
        self.stopping = true;
        for request in self.requests.values() {
            if let Req::Running { exchange, .. } = request {
                exchange.wake_on_end.store(true, Ordering::Release);
            }
        }
    }

    /// `--stream-request-body`: room in the app's STDIN queue (or the app
    /// stopped reading: the rest is dropped).
    fn feed_stdin(&mut self, room: Result<mpsc::OwnedPermit<Bytes>, mpsc::error::SendError<()>>) {
        let Some((id, data)) = self.stdin_waiting.take() else {
            return;
        };
        match room {
            Ok(permit) => {
                permit.send(data);
            }
            Err(_) => {
                if let Some(Req::Running { stdin, .. }) = self.requests.get_mut(&id) {
                    *stdin = None;
                }
            }
        }
    }

    /// Write an answer of our own — never on the I/O thread itself, and
    /// without waiting for it: the socket may be full, or an app thread may
    /// be writing and waiting for the peer, which may in turn be waiting
    /// for us to read. The writes are awaited before the connection closes.
    async fn send(&mut self, frames: Frames) -> Result<(), Closed> {
        self.writes.retain(|w| !w.is_finished());
        if self.writes.len() >= MAX_PENDING_WRITES {
            return Err(Closed::Protocol(format!(
                "{MAX_PENDING_WRITES} answers of ours unread by the web server"
            )));
        }
        let link = self.link.clone();
        let patience = self.context.limits.header_timeout;
        self.writes.push(tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let give_up = || link.gone.load(Ordering::Acquire) || started.elapsed() > patience;
            let _ = link.writer.write(frames, &give_up);
        }));
        Ok(())
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
