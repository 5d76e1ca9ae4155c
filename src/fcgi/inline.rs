//! A connection served by the app thread that accepted it, without the I/O
//! thread: the model of uWSGI and PHP-FPM, for the common case of a web
//! server that opens a connection per request (nginx's plain `fastcgi_pass`,
//! Apache mod_proxy_fcgi, lighttpd, h2o) and sends the whole request at once.
//!
//! ```text
//! idle app thread ──accept──▶ read (≤ INLINE_WAIT) ──a whole simple request──▶ run ──▶ close
//!        ▲    (or take a kept one)  └──anything else──▶ hand-off (the I/O thread serves it)
//!        └──────────── park (FCGI_KEEP_CONN, see super::kept) ◀──────────────────┘
//! ```
//!
//! "Simple" is BEGIN_REQUEST (RESPONDER), PARAMS and STDIN of that one
//! request and nothing else, within `--max-params-size` and
//! `--body-buffer-size`. Without FCGI_KEEP_CONN nothing can follow it on
//! the connection but the close; with it, the web server waits for our
//! END_REQUEST before it sends the next request (nginx, Apache, HAProxy
//! without multiplexing), so nobody needs to read the socket while the app
//! runs, and the connection is parked for its next request. Everything
//! else — a multiplexed or pipelined connection, management records, a
//! slow client, a large body — goes to the I/O thread with the bytes read
//! so far, and [`super::connection`] serves it from there (reading on while
//! requests run: ABORT_REQUEST, pipelined and concurrent requests). No
//! Python here: the caller runs the [`Job`].

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::connection::own_answer;
use super::job::{Body, Exchange, Job, Limits, Link};
use super::proto::params;
use super::proto::record::{HEADER_LEN, RecordType, Role, VERSION_1};
use super::writer::Frames;

/// How long an accepting thread waits for a whole request before it hands
/// the connection to the I/O thread (a web server sends it right after
/// connecting; a client that is slower costs a thread no more than this).
pub const INLINE_WAIT: Duration = Duration::from_millis(10);

/// A connection accepted by an app thread.
pub struct Accepted {
    /// The socket (non-blocking; shared with the request's writer).
    pub socket: Arc<OwnedFd>,
    /// A unix-domain socket.
    pub unix: bool,
    /// Bytes read from it and not yet used.
    pub buf: BytesMut,
    /// Its `--max-conns` slot, when it comes from the kept connections.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Its token among the kept connections, while it is one (see
    /// [`super::kept`]).
    pub token: Option<u64>,
    /// The request running on it, handed to the I/O thread with it.
    pub in_flight: Option<InFlight>,
}

/// A request an app thread runs on a kept connection that the I/O thread
/// takes over: what the connection needs to know of it.
pub struct InFlight {
    /// The connection's write side, shared with the request.
    pub link: Arc<Link>,
    /// The request's output side.
    pub exchange: Arc<Exchange>,
}

impl Accepted {
    /// A connection just accepted.
    pub fn new(socket: OwnedFd, unix: bool) -> Accepted {
        Accepted::new_shared(Arc::new(socket), unix)
    }

    /// A connection on `socket`, with nothing read yet.
    pub fn new_shared(socket: Arc<OwnedFd>, unix: bool) -> Accepted {
        Accepted {
            socket,
            unix,
            buf: BytesMut::new(),
            permit: None,
            token: None,
            in_flight: None,
        }
    }
}

/// What to do with an accepted connection next.
pub enum Next {
    /// Run this request (its response goes through the job's exchange, on
    /// the same socket), then [`close`] the connection — or, with `keep`
    /// (FCGI_KEEP_CONN), park it for its next request ([`super::kept`]).
    Run {
        /// The request.
        job: Job,
        /// The connection.
        conn: Accepted,
        /// FCGI_KEEP_CONN.
        keep: bool,
    },
    /// Answered here (a status page, a 413): [`close`] it, or park it
    /// with `keep`.
    Answered(Accepted, bool),
    /// Give the connection to the I/O thread.
    HandOff(Accepted),
    /// The connection is over (closed by the peer, or failed).
    Done(Accepted),
}

/// What the record walk found in the bytes at hand.
enum Walk {
    /// One whole simple request: its id, FCGI_KEEP_CONN, where its PARAMS
    /// and STDIN contents are, and how many bytes it took.
    Whole {
        id: u16,
        keep: bool,
        params: Vec<std::ops::Range<usize>>,
        stdin: Vec<std::ops::Range<usize>>,
        used: usize,
    },
    /// A simple request so far; more bytes needed.
    Partial,
    /// Not a simple request: the I/O thread's business.
    Other,
}

/// Walk the records in `bytes` (FastCGI §3.3 framing; the full decoder is
/// [`super::proto::codec`]).
fn walk(bytes: &[u8], limits: &Limits) -> Walk {
    let mut at = 0;
    let mut request: Option<u16> = None;
    let mut keep = false;
    let (mut params, mut stdin) = (Vec::new(), Vec::new());
    let (mut params_len, mut stdin_len, mut params_done) = (0, 0, false);
    while bytes.len() >= at + HEADER_LEN {
        let h = &bytes[at..at + HEADER_LEN];
        let (kind, id) = (h[1], u16::from_be_bytes([h[2], h[3]]));
        let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
        let end = at + HEADER_LEN + len + usize::from(h[6]);
        if h[0] != VERSION_1 || id == 0 {
            return Walk::Other;
        }
        if bytes.len() < end {
            return Walk::Partial;
        }
        let content = at + HEADER_LEN..at + HEADER_LEN + len;
        match (request, kind) {
            (None, k) if k == RecordType::BeginRequest as u8 => {
                let body = &bytes[content];
                if body.len() != 8
                    || Role::from_u16(u16::from_be_bytes([body[0], body[1]])) != Role::Responder
                {
                    return Walk::Other;
                }
                keep = body[2] & super::proto::record::KEEP_CONN != 0;
                if keep && !limits.kept_inline {
                    return Walk::Other;
                }
                request = Some(id);
            }
            (Some(rid), k) if rid == id && k == RecordType::Params as u8 && !params_done => {
                params_len += len;
                if params_len > limits.max_params {
                    return Walk::Other;
                }
                params_done = len == 0;
                params.push(content);
            }
            (Some(rid), k) if rid == id && k == RecordType::Stdin as u8 && params_done => {
                if len == 0 {
                    // On a kept connection, anything after the request is
                    // another one sent before our answer (pipelined or
                    // multiplexed): the I/O thread's, which runs them
                    // side by side.
                    if keep && end != bytes.len() {
                        return Walk::Other;
                    }
                    return Walk::Whole {
                        id,
                        keep,
                        params,
                        stdin,
                        used: end,
                    };
                }
                stdin_len += len;
                if stdin_len > limits.body_buffer_size {
                    return Walk::Other;
                }
                stdin.push(content);
            }
            _ => return Walk::Other,
        }
        at = end;
    }
    Walk::Partial
}

/// Read until `conn` holds a whole simple request (waiting up to `wait`),
/// then make it a [`Job`] — or answer it here (status page, 413), or hand
/// the connection off.
pub fn next_request(mut conn: Accepted, limits: &Limits, wait: Duration) -> Next {
    let deadline = Instant::now() + wait;
    loop {
        match walk(&conn.buf, limits) {
            Walk::Other => return Next::HandOff(conn),
            Walk::Whole {
                id,
                keep,
                params,
                stdin,
                used,
            } => return take_request(conn, limits, (id, keep), &params, &stdin, used),
            Walk::Partial => {}
        }
        match read_some(&mut conn, deadline) {
            Ok(true) => {}
            // Nothing more within the wait; or the peer closed with part of
            // a request sent (the connection names the fault).
            Ok(false) | Err(true) => return Next::HandOff(conn),
            Err(false) => return Next::Done(conn), // closed between requests, or failed
        }
    }
}

/// The whole request is in `conn.buf[..used]`.
fn take_request(
    mut conn: Accepted,
    limits: &Limits,
    (id, keep): (u16, bool),
    params: &[std::ops::Range<usize>],
    stdin: &[std::ops::Range<usize>],
    used: usize,
) -> Next {
    // (Web servers send the PARAMS in one record, then the empty one: no
    // need to join them.)
    let mut pieces = params.iter().filter(|r| !r.is_empty());
    let decoded = match (pieces.next(), pieces.next()) {
        (None, _) => params::decode(&[]),
        (Some(one), None) => params::decode(&conn.buf[one.clone()]),
        _ => params::decode(
            &params
                .iter()
                .flat_map(|r| conn.buf[r.clone()].iter().copied())
                .collect::<Vec<u8>>(),
        ),
    };
    let Ok(meta) = decoded else {
        return Next::HandOff(conn); // malformed: the connection names the fault
    };
    // The request writes on the same socket (shared, not duplicated).
    let link = Link::new(conn.socket.clone(), conn.unix);
    let request = conn.buf.split_to(used).freeze();
    if let Some(response) = own_answer(limits, id, &meta) {
        let mut frames = Frames::default();
        frames.whole_response(id, &response);
        let _ = link.writer.write(frames, &|| false);
        drop(link);
        return Next::Answered(conn, keep);
    }
    let body: std::collections::VecDeque<Bytes> =
        stdin.iter().map(|r| request.slice(r.clone())).collect();
    let job = Job {
        role: Role::Responder,
        meta,
        body: Body::Memory(body),
        exchange: Exchange::new(id, link, false),
    };
    Next::Run { job, conn, keep }
}

/// Close after our response. A unix-domain socket with nothing unread is
/// simply closed: what we wrote stays readable by the peer after our close
/// (no reset on unix sockets), and a web server sends nothing after the end
/// of a request it did not ask to keep — one syscall instead of four
/// (shutdown, the linger epoll's add, the read of the peer's close, close).
/// Otherwise half-close (the peer sees the end at once) and give the socket
/// back to linger on: the peer may still send a last record (some clients
/// send a second empty STDIN), which must meet an open socket, not a reset
/// (TCP discards our unread response on a reset). `None` when nothing is
/// left to linger on — closed here, or something of the request is still
/// alive (the app kept it: the descriptor closes when that goes).
pub fn close(conn: Accepted) -> Option<OwnedFd> {
    let mut socket = conn.socket;
    if conn.unix && conn.buf.is_empty() && !unread(&socket) {
        match Arc::try_unwrap(socket) {
            Ok(alone) => {
                drop(alone);
                return None;
            }
            Err(shared) => socket = shared,
        }
    }
    let _ = nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    Arc::try_unwrap(socket).ok()
}

/// Whether the peer has sent bytes we have not read (or the look failed).
fn unread(socket: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
    !matches!(
        nix::sys::socket::recv(socket.as_raw_fd(), &mut byte, flags),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// Read what is there, waiting until `deadline` for something. `Ok(false)`:
/// nothing came in time; `Err(partial)`: the peer closed (or the read
/// failed), `partial` if it left part of a request behind.
fn read_some(conn: &mut Accepted, deadline: Instant) -> Result<bool, bool> {
    let partial = !conn.buf.is_empty();
    let fd = conn.socket.as_raw_fd();
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        conn.buf.reserve(16 * 1024);
        let spare = conn.buf.spare_capacity_mut();
        // SAFETY: read(2) writes at most `spare.len()` bytes into the spare
        // capacity; exactly the `n` it reports are then initialized.
        let n = unsafe { nix::libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
        if n > 0 {
            // SAFETY: see above.
            unsafe { conn.buf.set_len(conn.buf.len() + n as usize) };
            return Ok(true);
        }
        if n == 0 {
            return Err(partial);
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::EINTR => continue,
            nix::errno::Errno::EAGAIN => {}
            _ => return Err(false),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let millis = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(conn.socket.as_ref().as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => return Ok(false),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return Err(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fcgi::proto::record::{encode_stream, encode_stream_end};

    fn request(out: &mut BytesMut, id: u16, role: u16, keep: bool, body: &[u8]) {
        let mut begin = [0u8; 8];
        begin[..2].copy_from_slice(&role.to_be_bytes());
        begin[2] = u8::from(keep);
        encode_stream(out, RecordType::BeginRequest, id, &begin);
        let mut params = BytesMut::new();
        params::encode_pair(&mut params, b"REQUEST_METHOD", b"POST");
        encode_stream(out, RecordType::Params, id, &params);
        encode_stream_end(out, RecordType::Params, id);
        encode_stream(out, RecordType::Stdin, id, body);
        encode_stream_end(out, RecordType::Stdin, id);
    }

    #[test]
    fn a_whole_simple_request_is_found_and_anything_else_is_not_ours() {
        let limits = Limits::default();
        let mut wire = BytesMut::new();
        request(&mut wire, 1, 1, false, b"body");
        let whole = wire.len();
        match walk(&wire, &limits) {
            Walk::Whole {
                id, stdin, used, ..
            } => {
                assert_eq!((id, used), (1, whole));
                assert_eq!(&wire[stdin[0].clone()], b"body");
            }
            _ => panic!("not found"),
        }
        // Cut anywhere: more bytes needed.
        for cut in 1..whole {
            assert!(
                matches!(walk(&wire[..cut], &limits), Walk::Partial),
                "{cut}"
            );
        }
        // Kept alive: ours too, unless another request follows it before
        // our answer (pipelined: the I/O thread's); all the I/O thread's
        // with --kept-on-io-thread.
        let mut kept = BytesMut::new();
        request(&mut kept, 1, 1, true, b"body");
        let on_io_thread = Limits {
            kept_inline: false,
            ..Limits::default()
        };
        assert!(matches!(walk(&kept, &on_io_thread), Walk::Other));
        let inline = Limits::default();
        assert!(matches!(
            walk(&kept, &inline),
            Walk::Whole { keep: true, .. }
        ));
        let mut pipelined = kept.clone();
        encode_stream(
            &mut pipelined,
            RecordType::BeginRequest,
            2,
            &[0, 1, 1, 0, 0, 0, 0, 0],
        );
        assert!(matches!(walk(&pipelined, &inline), Walk::Other));
        let mut closing = wire.clone();
        encode_stream(
            &mut closing,
            RecordType::BeginRequest,
            2,
            &[0, 1, 0, 0, 0, 0, 0, 0],
        );
        assert!(matches!(
            walk(&closing, &limits),
            Walk::Whole { keep: false, .. }
        ));
        // An authorizer, a management record, a body over the buffer: not ours.
        let mut authorizer = BytesMut::new();
        request(&mut authorizer, 1, 2, false, b"");
        assert!(matches!(walk(&authorizer, &limits), Walk::Other));
        let mut management = BytesMut::new();
        crate::fcgi::proto::record::encode_management(&mut management, RecordType::GetValues, b"");
        assert!(matches!(walk(&management, &limits), Walk::Other));
        let small = Limits {
            body_buffer_size: 3,
            ..Limits::default()
        };
        assert!(matches!(walk(&wire, &small), Walk::Other));
        // A second request's record before the first is whole: not ours.
        let mut two = BytesMut::new();
        request(&mut two, 1, 1, false, b"x");
        let mut interleaved = BytesMut::from(&two[..two.len() - 24]);
        encode_stream_end(&mut interleaved, RecordType::AbortRequest, 2);
        assert!(matches!(walk(&interleaved, &limits), Walk::Other));
    }
}
