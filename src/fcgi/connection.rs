//! One FastCGI connection's state machine (specification §3–§6), generic over
//! the transport and over a [`Dispatch`] that runs requests (no Python here):
//! management records (GET_VALUES, UNKNOWN_TYPE), BEGIN_REQUEST → PARAMS →
//! dispatch → STDIN streamed with back-pressure, output from the request
//! framed into STDOUT/STDERR records (files with `sendfile`), exactly one
//! END_REQUEST, `FCGI_KEEP_CONN`, ABORT_REQUEST, and malformed input closing
//! only this connection with a log line naming the fault.
//!
//! One request at a time per connection: `FCGI_MPXS_CONNS` is advertised as 0
//! and a second BEGIN_REQUEST while one is active is refused with
//! `FCGI_CANT_MPX_CONN`. (No web server multiplexes; without it, STDIN
//! back-pressure is exact.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

use super::codec::{CodecError, RecordDecoder};
use super::job::{Dispatch, Job, Limits, Out, PageHook};
pub use super::output::{DirectWrite, Transport};
use super::output::{Frames, linger, send_file, write_frames};
use super::params;
use super::record::{
    self, BeginRequest, NULL_REQUEST_ID, ProtocolStatus, Record, RecordType, Role,
};
use crate::response::error_head;
use crate::{log_error, log_info, wire};

/// STDIN records waiting for the app: past this, the socket is not read.
const STDIN_QUEUE: usize = 4;
/// Output messages waiting for the socket: past this, the app thread waits.
/// Only running requests have one (at most `--threads`), and the messages
/// reference the app's own `bytes`, so this bounds what is held, not copied;
/// 32 lets a 64 KiB-chunk stream run without a context switch per chunk.
const OUT_QUEUE: usize = 32;

enum Phase {
    /// Collecting PARAMS.
    Params { role: Role, params: BytesMut },
    /// Dispatched; STDIN goes to the job until its empty record.
    Running {
        /// `None` once the app stopped reading, the stream ended or the request was aborted.
        stdin: Option<mpsc::Sender<Bytes>>,
        /// The empty STDIN record arrived.
        stdin_ended: bool,
        out: mpsc::Receiver<Out>,
        aborted: Arc<AtomicBool>,
        /// The job's count of messages not yet written (see `Job::pending`).
        pending: Arc<AtomicUsize>,
        /// Whether the response's header block went out (`Job::head_sent`).
        head_sent: Arc<AtomicBool>,
    },
    /// END_REQUEST was sent before the STDIN stream ended: discard the rest.
    Draining,
}

struct Active {
    id: u16,
    keep_conn: bool,
    phase: Phase,
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// The web server closed it between requests, or keep-conn was clear.
    Normal,
    /// The peer closed it mid-request.
    PeerGone,
    /// Malformed input; the message names the fault.
    Protocol(String),
}

/// A whole response made here (413, status pages): its STDOUT, the end of
/// the stream and END_REQUEST, in one write.
async fn write_response<T: Transport>(
    stream: &mut T,
    id: u16,
    response: &[u8],
) -> Result<(), Closed> {
    let mut out = BytesMut::new();
    record::encode_stream(&mut out, RecordType::Stdout, id, response);
    record::encode_stream_end(&mut out, RecordType::Stdout, id);
    record::encode_end_request(&mut out, id, 0, ProtocolStatus::RequestComplete);
    stream.write_all(&out).await.map_err(|_| Closed::PeerGone)
}

/// Serve one connection until it closes.
///
/// Once `shutdown` turns true the connection closes as soon as it has no
/// request in flight (after END_REQUEST), never in the middle of one.
pub async fn serve<T: Transport>(
    mut stream: T,
    dispatch: Arc<dyn Dispatch>,
    limits: Arc<Limits>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Closed {
    // SAFETY: the descriptor belongs to `stream`, alive for this call; dup()
    // fails only on descriptor exhaustion, and then the direct path is off.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let direct = nix::unistd::dup(socket).ok().map(DirectWrite::new);
    let mut conn = Connection {
        direct,
        active: None,
        dispatch,
        limits,
        pending_stdin: None,
        ended_keep_conn: None,
        last_ended: None,
        refused: Vec::new(),
        close_after_drain: None,
        begun: false,
        shutdown,
    };
    let closed = conn.run(&mut stream).await;
    if let Some(active) = &conn.active {
        if let Phase::Running { aborted, .. } = &active.phase {
            aborted.store(true, Ordering::Relaxed);
        }
    }
    match &closed {
        Closed::Protocol(fault) => log_error!("closing FastCGI connection: {fault}"),
        Closed::PeerGone => log_info!("web server closed the connection during a request"),
        Closed::Normal => {}
    }
    let _ = stream.shutdown().await;
    if closed == Closed::Normal {
        linger(&mut stream).await;
    }
    closed
}

struct Connection {
    active: Option<Active>,
    dispatch: Arc<dyn Dispatch>,
    limits: Arc<Limits>,
    /// STDIN content waiting for room in the job's queue (back-pressure:
    /// the socket is not read meanwhile).
    pending_stdin: Option<Bytes>,
    /// Set after END_REQUEST: whether the connection stays open.
    ended_keep_conn: Option<bool>,
    /// The worker is stopping: close when idle.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The app thread's direct path to the socket (held busy while we work).
    direct: Option<Arc<DirectWrite>>,
    /// The last request that got END_REQUEST (a repeated empty STDIN for it is tolerated).
    last_ended: Option<u16>,
    /// Requests refused at BEGIN_REQUEST (CANT_MPX_CONN, UNKNOWN_ROLE,
    /// OVERLOADED): their records are ignored until their STDIN ends (§3.3).
    refused: Vec<u16>,
    /// END_REQUEST went out without FCGI_KEEP_CONN while STDIN was still
    /// coming: close once it has ended, or at this deadline. (Also: the
    /// worker is stopping and this connection has not sent its first
    /// request yet.)
    close_after_drain: Option<tokio::time::Instant>,
    /// A request was begun on this connection.
    begun: bool,
}

/// How long a connection accepted just before a graceful stop may take to
/// send its first request (a web server sends it right after connecting).
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

enum Event {
    Read(std::io::Result<usize>),
    Output(Option<Out>),
    StdinRoom(Result<mpsc::OwnedPermit<Bytes>, mpsc::error::SendError<()>>),
    Shutdown,
    DrainTimeout,
}

impl Connection {
    async fn run<T: Transport>(&mut self, stream: &mut T) -> Closed {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut decoder = RecordDecoder;
        loop {
            // (The direct-write lock is held here: only this task writes.)
            self.finalize_direct();
            // Handle every complete record already buffered.
            if self.pending_stdin.is_none() {
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(record)) => {
                            if let Err(fault) = self.on_record(stream, record).await {
                                return fault;
                            }
                            if self.pending_stdin.is_some() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return Closed::Protocol(e.to_string()),
                    }
                }
            }
            if let Some(keep) = self.ended_keep_conn.take() {
                let draining = matches!(
                    &self.active,
                    Some(Active {
                        phase: Phase::Draining,
                        ..
                    })
                );
                if !keep && !draining {
                    return Closed::Normal;
                }
                if !keep {
                    // Read the rest of the body before closing: a web server
                    // still writing STDIN would otherwise see EPIPE, not the
                    // response it was sent.
                    self.close_after_drain =
                        Some(tokio::time::Instant::now() + std::time::Duration::from_secs(5));
                }
            }
            let idle = self.active.is_none() && buf.is_empty();
            if idle && *self.shutdown.borrow() {
                if self.begun {
                    return Closed::Normal;
                }
                // Accepted just before the stop: its first request is on
                // its way; closing now would lose it.
                self.close_after_drain
                    .get_or_insert_with(|| tokio::time::Instant::now() + FIRST_REQUEST_GRACE);
            }
            if let Some(direct) = &self.direct {
                direct.unlock();
            }
            stream.idle();
            let event = {
                let stopping = *self.shutdown.borrow();
                let reading = self.pending_stdin.is_none();
                let stdin_tx = match (&self.pending_stdin, &self.active) {
                    (
                        Some(_),
                        Some(Active {
                            phase:
                                Phase::Running {
                                    stdin: Some(tx), ..
                                },
                            ..
                        }),
                    ) => Some(tx.clone()),
                    _ => None,
                };
                let out_rx = match &mut self.active {
                    Some(Active {
                        phase: Phase::Running { out, .. },
                        ..
                    }) => Some(out),
                    _ => None,
                };
                tokio::select! {
                    r = stream.read_buf(&mut buf), if reading => Event::Read(r),
                    o = async { out_rx.unwrap().recv().await }, if out_rx.is_some() => Event::Output(o),
                    p = async { stdin_tx.unwrap().reserve_owned().await }, if stdin_tx.is_some() => Event::StdinRoom(p),
                    _ = self.shutdown.changed(), if !stopping => Event::Shutdown,
                    _ = tokio::time::sleep_until(self.close_after_drain.unwrap_or_else(tokio::time::Instant::now)), if self.close_after_drain.is_some() => Event::DrainTimeout,
                }
            };
            if let Some(direct) = self.direct.clone() {
                direct.lock().await;
            }
            match event {
                Event::Read(Ok(0)) => {
                    self.finalize_direct();
                    return match decoder.decode_eof(&mut buf) {
                        Err(CodecError::Truncated(n)) => Closed::Protocol(format!(
                            "connection closed inside a record ({n} bytes of it received)"
                        )),
                        _ if self
                            .active
                            .as_ref()
                            .is_some_and(|a| !matches!(a.phase, Phase::Draining)) =>
                        {
                            Closed::PeerGone
                        }
                        _ => Closed::Normal,
                    };
                }
                Event::Read(Ok(_)) => {}
                Event::Read(Err(e)) => {
                    return if self.active.is_some() {
                        Closed::PeerGone
                    } else {
                        Closed::Protocol(format!("read error: {e}"))
                    };
                }
                Event::StdinRoom(Ok(permit)) => {
                    if let Some(data) = self.pending_stdin.take() {
                        permit.send(data);
                    }
                }
                Event::StdinRoom(Err(_)) => {
                    // The app stopped reading (it finished): drop the rest.
                    self.pending_stdin = None;
                    if let Some(Active {
                        phase: Phase::Running { stdin, .. },
                        ..
                    }) = &mut self.active
                    {
                        *stdin = None;
                    }
                }
                Event::Shutdown => {
                    if let Some(direct) = &self.direct {
                        direct.stopping.store(true, Ordering::Relaxed);
                    }
                }
                Event::DrainTimeout => return Closed::Normal,
                Event::Output(message) => {
                    if let Err(e) = self.on_output(stream, message).await {
                        return e;
                    }
                }
            }
        }
    }

    /// The active request is over (END_REQUEST sent): keep the connection,
    /// or drain the rest of its STDIN first.
    fn end_active(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let stdin_done = matches!(
            &active.phase,
            Phase::Running {
                stdin_ended: true,
                ..
            }
        );
        self.ended_keep_conn = Some(active.keep_conn);
        self.pending_stdin = None;
        self.last_ended = Some(active.id);
        if stdin_done {
            self.active = None;
        } else {
            active.phase = Phase::Draining;
        }
    }

    /// A request the app thread finished with a direct write: end it here too.
    fn finalize_direct(&mut self) {
        let Some(direct) = &self.direct else {
            return;
        };
        let finished = direct.finished.lock().ok().and_then(|mut f| f.take());
        if let Some((id, _status, sender)) = finished {
            if self.active.as_ref().is_some_and(|a| a.id == id) {
                self.end_active();
            }
            drop(sender);
        }
    }

    /// Output of the running request: this message plus whatever else is
    /// already queued, framed into one buffer and written with one call
    /// (a small response and its END_REQUEST leave in a single write).
    async fn on_output<T: Transport>(
        &mut self,
        stream: &mut T,
        first: Option<Out>,
    ) -> Result<(), Closed> {
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        let id = active.id;
        let mut frames = Frames::default();
        let mut next = Some(first);
        let mut app_status = None;
        let mut taken = 0;
        let pending = match &active.phase {
            Phase::Running { pending, .. } => Some(pending.clone()),
            _ => None,
        };
        while let Some(message) = next.take() {
            let Phase::Running {
                aborted,
                out: rx,
                head_sent,
                ..
            } = &mut active.phase
            else {
                break;
            };
            taken += usize::from(message.is_some());
            let dropped = aborted.load(Ordering::Relaxed);
            match message {
                Some(Out::Stdout { head, body }) if !dropped => {
                    if !head.is_empty() {
                        head_sent.store(true, Ordering::Release);
                    }
                    frames.stream(RecordType::Stdout, id, head);
                    frames.stream(RecordType::Stdout, id, body);
                }
                Some(Out::Stderr(data)) if !dropped => {
                    frames.stream(RecordType::Stderr, id, data);
                }
                Some(Out::File { file, offset, len }) if !dropped => {
                    write_frames(stream, &mut frames)
                        .await
                        .map_err(|_| Closed::PeerGone)?;
                    send_file(stream, id, &file, offset, len)
                        .await
                        .map_err(|_| Closed::PeerGone)?;
                }
                Some(Out::End { status, head, body }) => {
                    if !dropped {
                        if !head.is_empty() {
                            head_sent.store(true, Ordering::Release);
                        }
                        frames.stream(RecordType::Stdout, id, head);
                        frames.stream(RecordType::Stdout, id, body);
                    }
                    app_status = Some((status, true));
                }
                Some(Out::Raw(bytes)) => frames.small().extend_from_slice(&bytes),
                Some(Out::Finalize(status)) => app_status = Some((status, false)),
                Some(Out::Timeout) => {
                    // (The app thread cannot be writing now: we hold the socket.)
                    if !head_sent.swap(true, Ordering::AcqRel) {
                        let (head, body) = error_head(504);
                        frames.stream(
                            RecordType::Stdout,
                            id,
                            Bytes::from(wire::head_block(Some(&head))),
                        );
                        frames.stream(RecordType::Stdout, id, Bytes::from_static(body));
                    }
                    app_status = Some((crate::cgi::Exit::AppError as u32, true));
                }
                // The job vanished without End (it panicked): still end the request.
                None => app_status = Some((crate::cgi::Exit::AppError as u32, true)),
                Some(_) => {} // aborted: output is dropped
            }
            if app_status.is_none() && frames.len < 256 * 1024 {
                next = rx.try_recv().ok().map(Some);
            }
        }
        if let Some((status, write_end)) = app_status {
            if write_end {
                let end = frames.small();
                record::encode_stream_end(end, RecordType::Stdout, id);
                record::encode_end_request(end, id, status, ProtocolStatus::RequestComplete);
            }
            self.end_active();
        }
        let written = write_frames(stream, &mut frames).await;
        // Only now may the app thread write past these messages.
        if let Some(pending) = pending {
            pending.fetch_sub(taken, Ordering::Release);
        }
        written.map_err(|_| Closed::PeerGone)
    }

    /// A record of a request (id ≠ 0): dispatch on its type. Records of
    /// refused requests are ignored until their STDIN ends (§3.3).
    async fn on_record<T: Transport>(
        &mut self,
        stream: &mut T,
        record: Record,
    ) -> Result<(), Closed> {
        if record.request_id == NULL_REQUEST_ID {
            return self.on_management(stream, record).await;
        }
        let kind = RecordType::from_u8(record.kind);
        let id = record.request_id;
        if kind == Some(RecordType::BeginRequest) {
            self.refused.retain(|&r| r != id);
        } else if let Some(i) = self.refused.iter().position(|&r| r == id) {
            if kind == Some(RecordType::Stdin) && record.content.is_empty() {
                self.refused.swap_remove(i);
            }
            return Ok(());
        }
        match kind {
            Some(RecordType::BeginRequest) => self.on_begin(stream, id, &record.content).await,
            Some(RecordType::AbortRequest) => self.on_abort(stream, id).await,
            Some(RecordType::Params) => self.on_params(stream, id, &record.content).await,
            Some(kind @ (RecordType::Stdin | RecordType::Data)) => {
                self.on_stdin(kind, id, record.content)
            }
            _ => Err(Closed::Protocol(format!(
                "unexpected record type {} for request {id}",
                record.kind
            ))),
        }
    }

    /// BEGIN_REQUEST: a new request, or a refusal (one at a time; roles).
    async fn on_begin<T: Transport>(
        &mut self,
        stream: &mut T,
        id: u16,
        content: &[u8],
    ) -> Result<(), Closed> {
        if !self.begun {
            self.begun = true;
            self.close_after_drain = None;
        }
        let fault = |m: String| Err(Closed::Protocol(m));
        let Some(begin) = BeginRequest::parse(content) else {
            return fault(format!(
                "BEGIN_REQUEST for request {id} is {} bytes, expected 8",
                content.len()
            ));
        };
        if let Some(active) = &self.active {
            if active.id == id && !matches!(active.phase, Phase::Draining) {
                return fault(format!(
                    "BEGIN_REQUEST for request {id}, which is already active"
                ));
            }
            if !matches!(active.phase, Phase::Draining) {
                return self.refuse(stream, id, ProtocolStatus::CantMpxConn).await;
            }
        }
        if let Some(Active {
            id: old,
            phase: Phase::Draining,
            ..
        }) = &self.active
        {
            // The previous request's STDIN may still trail in: ignore it.
            if *old != id {
                self.refused.push(*old);
            }
            self.active = None;
        }
        if !matches!(begin.role, Role::Responder | Role::Authorizer) {
            return self.refuse(stream, id, ProtocolStatus::UnknownRole).await;
        }
        self.active = Some(Active {
            id,
            keep_conn: begin.keep_conn,
            phase: Phase::Params {
                role: begin.role,
                params: BytesMut::new(),
            },
        });
        Ok(())
    }

    /// ABORT_REQUEST (§5.4): stop the request's output; its END_REQUEST
    /// follows when the app returns.
    async fn on_abort<T: Transport>(&mut self, stream: &mut T, id: u16) -> Result<(), Closed> {
        match &mut self.active {
            Some(Active {
                id: active_id,
                phase,
                ..
            }) if *active_id == id => match phase {
                Phase::Running { stdin, aborted, .. } => {
                    log_info!("web server aborted request {id}");
                    aborted.store(true, Ordering::Relaxed);
                    *stdin = None;
                    self.pending_stdin = None;
                }
                Phase::Params { .. } => {
                    let keep = self.active.as_ref().is_some_and(|a| a.keep_conn);
                    self.active = None;
                    let mut out = BytesMut::new();
                    record::encode_end_request(&mut out, id, 0, ProtocolStatus::RequestComplete);
                    stream.write_all(&out).await.map_err(|_| Closed::PeerGone)?;
                    self.ended_keep_conn = Some(keep);
                }
                Phase::Draining => {}
            },
            _ => {} // a request that already ended: nothing to do (§5.4)
        }
        Ok(())
    }

    /// PARAMS: collect up to the limit; the empty record starts the request.
    async fn on_params<T: Transport>(
        &mut self,
        stream: &mut T,
        id: u16,
        content: &[u8],
    ) -> Result<(), Closed> {
        let fault = |m: String| Err(Closed::Protocol(m));
        let Some(Active {
            phase: Phase::Params { params, .. },
            ..
        }) = self.active.as_mut().filter(|a| a.id == id)
        else {
            return fault(format!(
                "PARAMS for request {id}, which is not expecting params"
            ));
        };
        if content.is_empty() {
            return self.start(stream).await;
        }
        if params.len() + content.len() > self.limits.max_params {
            return fault(format!(
                "PARAMS of request {id} exceed the limit of {} bytes",
                self.limits.max_params
            ));
        }
        params.extend_from_slice(content);
        Ok(())
    }

    /// STDIN (and FILTER's DATA): to the app, with back-pressure.
    fn on_stdin(&mut self, kind: RecordType, id: u16, content: Bytes) -> Result<(), Closed> {
        let fault = |m: String| Err(Closed::Protocol(m));
        if content.is_empty() && self.last_ended == Some(id) && self.active.is_none() {
            return Ok(()); // a repeated end-of-stream after END_REQUEST
        }
        let Some(active) = self.active.as_mut().filter(|a| a.id == id) else {
            return fault(format!(
                "{:?} for request {id}, which was never begun",
                kind
            ));
        };
        match &mut active.phase {
            Phase::Params { .. } => {
                fault(format!("STDIN for request {id} before its PARAMS ended"))
            }
            Phase::Draining => {
                if content.is_empty() {
                    self.active = None;
                    if self.close_after_drain.take().is_some() {
                        self.ended_keep_conn = Some(false);
                    }
                }
                Ok(())
            }
            Phase::Running {
                stdin, stdin_ended, ..
            } => {
                if *stdin_ended {
                    if content.is_empty() {
                        return Ok(()); // a second end-of-stream (fastcgi-client sends one)
                    }
                    return fault(format!("STDIN for request {id} after its stream ended"));
                }
                if kind == RecordType::Data {
                    return Ok(()); // FILTER data: not used by RESPONDER/AUTHORIZER
                }
                if content.is_empty() {
                    *stdin = None; // end of stream: the reader sees EOF
                    *stdin_ended = true;
                } else if stdin.is_some() {
                    self.pending_stdin = Some(content);
                }
                Ok(())
            }
        }
    }

    /// PARAMS are complete: check limits and hand the request to the pool.
    async fn start<T: Transport>(&mut self, stream: &mut T) -> Result<(), Closed> {
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        let id = active.id;
        let Phase::Params { role, params } = &mut active.phase else {
            return Ok(());
        };
        let role = *role;
        let meta = match params::decode(params) {
            Ok(meta) => meta,
            Err(e) => return Err(Closed::Protocol(format!("PARAMS of request {id}: {e}"))),
        };
        if let Some(PageHook(pages)) = &self.limits.pages {
            let get = |key: &[u8]| {
                meta.iter()
                    .find(|(k, _)| k == key)
                    .map_or(&[][..], |(_, v)| v.as_slice())
            };
            let (script, info) = (get(b"SCRIPT_NAME"), get(b"PATH_INFO"));
            let full = [script, info].concat();
            let answer =
                pages(&full, get(b"QUERY_STRING")).or_else(|| pages(info, get(b"QUERY_STRING")));
            if let Some((content_type, body)) = answer {
                let response = format!(
                    "Status: 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                     Cache-Control: no-store\r\n\r\n{body}",
                    body.len()
                );
                write_response(stream, id, response.as_bytes()).await?;
                active.phase = Phase::Draining;
                self.ended_keep_conn = Some(active.keep_conn);
                return Ok(());
            }
        }
        let content_length = meta
            .iter()
            .find(|(k, _)| k == b"CONTENT_LENGTH")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
        if let (Some(limit), Some(length)) = (self.limits.max_body, content_length) {
            if length > limit {
                log_error!(
                    "request {id}: body of {length} bytes exceeds the limit of {limit}: 413"
                );
                let (head, body) = error_head(413);
                let mut response = wire::head_block(Some(&head));
                response.extend_from_slice(body);
                write_response(stream, id, &response).await?;
                active.phase = Phase::Draining;
                self.ended_keep_conn = Some(active.keep_conn);
                return Ok(());
            }
        }
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let aborted = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(0));
        let head_sent = Arc::new(AtomicBool::new(false));
        let job = Job {
            head_sent: head_sent.clone(),
            request_id: id,
            role,
            meta,
            stdin: stdin_rx,
            out: out_tx,
            aborted: aborted.clone(),
            pending: pending.clone(),
            direct: self.direct.clone(),
            direct_final: active.keep_conn && !*self.shutdown.borrow(),
        };
        active.phase = Phase::Running {
            stdin: Some(stdin_tx),
            stdin_ended: false,
            out: out_rx,
            aborted,
            pending,
            head_sent,
        };
        if self.dispatch.dispatch(job).is_err() {
            log_error!("request {id}: all app threads busy and the queue is full: FCGI_OVERLOADED");
            active.phase = Phase::Draining;
            self.ended_keep_conn = Some(active.keep_conn);
            let mut out = BytesMut::new();
            record::encode_end_request(&mut out, id, 0, ProtocolStatus::Overloaded);
            stream.write_all(&out).await.map_err(|_| Closed::PeerGone)?;
        }
        Ok(())
    }

    /// Refuse a request at BEGIN_REQUEST and ignore its later records.
    async fn refuse<T: Transport>(
        &mut self,
        stream: &mut T,
        id: u16,
        status: ProtocolStatus,
    ) -> Result<(), Closed> {
        if self.refused.len() >= 64 {
            return Err(Closed::Protocol(
                "more than 64 refused requests with unfinished streams".into(),
            ));
        }
        self.refused.push(id);
        self.end_now(stream, id, 0, status).await
    }

    async fn end_now<T: Transport>(
        &mut self,
        stream: &mut T,
        id: u16,
        app_status: u32,
        status: ProtocolStatus,
    ) -> Result<(), Closed> {
        let mut out = BytesMut::new();
        record::encode_end_request(&mut out, id, app_status, status);
        stream.write_all(&out).await.map_err(|_| Closed::PeerGone)
    }

    async fn on_management<T: Transport>(
        &mut self,
        stream: &mut T,
        record: Record,
    ) -> Result<(), Closed> {
        let mut out = BytesMut::new();
        if record.kind == RecordType::GetValues as u8 {
            let asked = params::decode(&record.content)
                .map_err(|e| Closed::Protocol(format!("GET_VALUES: {e}")))?;
            let mut answer = BytesMut::new();
            for (name, _) in asked {
                let value = match name.as_slice() {
                    b"FCGI_MAX_CONNS" => self.limits.max_conns.to_string(),
                    b"FCGI_MAX_REQS" => self.limits.max_reqs.to_string(),
                    b"FCGI_MPXS_CONNS" => "0".to_string(),
                    _ => continue, // unknown names are omitted (§4.1)
                };
                params::encode_pair(&mut answer, &name, value.as_bytes());
            }
            record::encode_management(&mut out, RecordType::GetValuesResult, &answer);
        } else {
            record::encode_unknown_type(&mut out, record.kind);
        }
        stream.write_all(&out).await.map_err(|_| Closed::PeerGone)
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
