//! FastCGI test support: a raw-record client of our own and a guard that
//! runs the real `wsgi-fcgi` binary.
//!
//! The client ([`Conn`]) speaks bytes, not an abstraction: it writes any
//! record (any version, type, id, content and padding, malformed ones
//! included), BEGIN_REQUEST, PARAMS split over as many records as asked
//! (1- and 4-byte name-value lengths), STDIN in chunks, ABORT_REQUEST and
//! GET_VALUES; it reads records with a timeout, tells a closed connection
//! from a silent one, and collects one request's response (STDOUT, STDERR,
//! END_REQUEST's appStatus and protocolStatus).
//!
//! [`Responder`] starts the wsgi-fcgi the tests were built with, in its own
//! process group, on a unix socket in its own temporary directory (mode
//! 0755, so that a web server running as www-data reaches the socket) or on
//! a free loopback TCP port; sends its stderr to a log file the test can
//! read, waits until it serves, and on drop stops it (TERM, then KILL to
//! the group) and, if the test failed, prints the log. The FastCGI tests
//! talk to it with [`Conn`]; the web-server tests give [`Responder::address`]
//! to nginx, Apache or lighttpd.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use socket2::Socket;
use std::time::{Duration, Instant};

pub const BEGIN_REQUEST: u8 = 1;
pub const ABORT_REQUEST: u8 = 2;
pub const END_REQUEST: u8 = 3;
pub const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
pub const STDOUT: u8 = 6;
pub const STDERR: u8 = 7;
pub const GET_VALUES: u8 = 9;
pub const GET_VALUES_RESULT: u8 = 10;
pub const UNKNOWN_TYPE: u8 = 11;

pub const RESPONDER: u16 = 1;
pub const AUTHORIZER: u16 = 2;
pub const FILTER: u16 = 3;

pub const KEEP_CONN: u8 = 1;

pub const REQUEST_COMPLETE: u8 = 0;
pub const CANT_MPX_CONN: u8 = 1;
pub const UNKNOWN_ROLE: u8 = 3;

/// How long a test waits for anything from the server.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a single write to a responder may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Print why a test is skipped, or panic under `WSGI_TEST_STRICT=1` (as
/// `.ci/run` sets it: a missing prerequisite there is a failure).
pub fn skip(why: &str) {
    if std::env::var_os("WSGI_TEST_STRICT").is_some_and(|v| v == "1") {
        panic!("prerequisite missing (WSGI_TEST_STRICT=1): {why}");
    }
    eprintln!("skipped: {why}");
}

/// The `wsgi-fcgi` binary cargo built for this test run.
pub fn wsgi_fcgi() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wsgi-fcgi"))
}

/// A fixture under tests/apps ("" for the directory itself).
pub fn app(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/apps")
        .join(name)
}

// ---------------------------------------------------------------- encoding

/// One record, exactly as given: version, type, id, content, `padding`
/// bytes of padding (filled with 0xAA so that nothing relies on zeros).
pub fn encode_record(version: u8, kind: u8, id: u16, content: &[u8], padding: u8) -> Vec<u8> {
    assert!(content.len() <= 65535, "record content over 65535 bytes");
    let mut out = Vec::with_capacity(8 + content.len() + usize::from(padding));
    out.push(version);
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(content.len() as u16).to_be_bytes());
    out.push(padding);
    out.push(0);
    out.extend_from_slice(content);
    out.extend(std::iter::repeat_n(0xAA, usize::from(padding)));
    out
}

/// A well-formed record padded to a multiple of 8, as the spec recommends.
pub fn record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let padding = ((8 - content.len() % 8) % 8) as u8;
    encode_record(1, kind, id, content, padding)
}

/// The 8-byte body of BEGIN_REQUEST.
pub fn begin_body(role: u16, flags: u8) -> Vec<u8> {
    let mut body = role.to_be_bytes().to_vec();
    body.extend_from_slice(&[flags, 0, 0, 0, 0, 0]);
    body
}

fn put_length(out: &mut Vec<u8>, len: usize, four: bool) {
    if len < 128 && !four {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
    }
}

/// Append one name-value pair; lengths over 127 take 4 bytes.
pub fn encode_pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    encode_pair_with(out, name, value, false, false);
}

/// Append one pair, forcing 4-byte name and/or value lengths.
pub fn encode_pair_with(out: &mut Vec<u8>, name: &[u8], value: &[u8], four_n: bool, four_v: bool) {
    put_length(out, name.len(), four_n);
    put_length(out, value.len(), four_v);
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// Encode name-value pairs.
pub fn encode_pairs<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in pairs {
        encode_pair(&mut out, n.as_ref(), v.as_ref());
    }
    out
}

/// Decode name-value pairs (GET_VALUES_RESULT); panics on malformed data.
pub fn decode_pairs(data: &[u8]) -> Vec<(String, String)> {
    fn len(data: &[u8], at: &mut usize) -> usize {
        if data[*at] & 0x80 == 0 {
            *at += 1;
            usize::from(data[*at - 1])
        } else {
            let b = &data[*at..*at + 4];
            *at += 4;
            (u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]])) as usize
        }
    }
    let mut at = 0;
    let mut out = Vec::new();
    while at < data.len() {
        let n = len(data, &mut at);
        let v = len(data, &mut at);
        let name = String::from_utf8_lossy(&data[at..at + n]).into_owned();
        let value = String::from_utf8_lossy(&data[at + n..at + n + v]).into_owned();
        at += n + v;
        out.push((name, value));
    }
    out
}

/// A whole stream: `data` in records of at most `chunk` bytes, then the
/// empty record that ends it.
pub fn stream(kind: u8, id: u16, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / chunk.max(1) * 16 + 16);
    for piece in data.chunks(chunk.clamp(1, 65535)) {
        out.extend(record(kind, id, piece));
    }
    out.extend(record(kind, id, b""));
    out
}

// ---------------------------------------------------------------- requests

/// A request to send: PARAMS (CGI meta-variables), body, role, flags, and
/// how finely PARAMS and STDIN are cut into records.
#[derive(Clone, Debug)]
pub struct Req {
    pub params: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub role: u16,
    pub flags: u8,
    pub params_chunk: usize,
    pub stdin_chunk: usize,
}

impl Req {
    /// A GET for `target` ("/path?query") with the usual meta-variables.
    pub fn get(target: &str) -> Req {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut req = Req {
            params: Vec::new(),
            body: Vec::new(),
            role: RESPONDER,
            flags: 0,
            params_chunk: 65535,
            stdin_chunk: 65535,
        };
        for (k, v) in [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", path),
            ("QUERY_STRING", query),
            ("REQUEST_URI", target),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
        ] {
            req = req.param(k, v);
        }
        req
    }
    /// A POST of `body` with its CONTENT_TYPE and CONTENT_LENGTH.
    pub fn post(target: &str, content_type: &str, body: &[u8]) -> Req {
        Req::get(target).method("POST").body(content_type, body)
    }
    pub fn method(self, method: &str) -> Req {
        self.param("REQUEST_METHOD", method)
    }
    pub fn param(self, name: &str, value: &str) -> Req {
        self.param_bytes(name, value.as_bytes())
    }
    /// Set (replace) a meta-variable.
    pub fn param_bytes(mut self, name: &str, value: &[u8]) -> Req {
        self.params.retain(|(k, _)| k != name.as_bytes());
        self.params.push((name.as_bytes().to_vec(), value.to_vec()));
        self
    }
    pub fn unset(mut self, name: &str) -> Req {
        self.params.retain(|(k, _)| k != name.as_bytes());
        self
    }
    /// Attach a body with its CONTENT_TYPE and CONTENT_LENGTH.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Req {
        self = self
            .param("CONTENT_TYPE", content_type)
            .param("CONTENT_LENGTH", &body.len().to_string());
        self.body = body.to_vec();
        self
    }
    /// Raw STDIN content, CONTENT_LENGTH left alone.
    pub fn stdin(mut self, data: &[u8]) -> Req {
        self.body = data.to_vec();
        self
    }
    pub fn keep_conn(mut self) -> Req {
        self.flags |= KEEP_CONN;
        self
    }
    pub fn role(mut self, role: u16) -> Req {
        self.role = role;
        self
    }
    pub fn params_chunk(mut self, chunk: usize) -> Req {
        self.params_chunk = chunk;
        self
    }
    pub fn stdin_chunk(mut self, chunk: usize) -> Req {
        self.stdin_chunk = chunk;
        self
    }
    pub fn encoded_params(&self) -> Vec<u8> {
        encode_pairs(&self.params)
    }
    /// BEGIN_REQUEST and the PARAMS stream.
    pub fn head_wire(&self, id: u16) -> Vec<u8> {
        let mut out = record(BEGIN_REQUEST, id, &begin_body(self.role, self.flags));
        out.extend(stream(
            PARAMS,
            id,
            &self.encoded_params(),
            self.params_chunk,
        ));
        out
    }
    /// The whole request: BEGIN_REQUEST, PARAMS, STDIN.
    pub fn wire(&self, id: u16) -> Vec<u8> {
        let mut out = self.head_wire(id);
        out.extend(stream(STDIN, id, &self.body, self.stdin_chunk));
        out
    }
}

// ---------------------------------------------------------------- responses

/// A record as read from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u8,
    pub kind: u8,
    pub id: u16,
    pub content: Vec<u8>,
    pub padding: u8,
}

impl Record {
    /// `(appStatus, protocolStatus)` of an END_REQUEST record.
    pub fn end_request(&self) -> Option<(u32, u8)> {
        (self.kind == END_REQUEST && self.content.len() == 8).then(|| {
            let c = &self.content;
            (u32::from_be_bytes([c[0], c[1], c[2], c[3]]), c[4])
        })
    }
}

/// What came back for one request.
#[derive(Debug, Default)]
pub struct Response {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// `(appStatus, protocolStatus)`; `None` if the connection closed first.
    pub end: Option<(u32, u8)>,
    /// The empty STDOUT record arrived.
    pub stdout_ended: bool,
    /// Non-empty STDOUT records.
    pub stdout_records: usize,
    /// Records for other request ids or management records seen meanwhile.
    pub other: Vec<Record>,
    /// The connection closed before END_REQUEST.
    pub closed: bool,
}

impl Response {
    pub fn app_status(&self) -> u32 {
        self.end.expect("no END_REQUEST").0
    }
    pub fn protocol_status(&self) -> u8 {
        self.end.expect("no END_REQUEST").1
    }
    /// The CGI response in STDOUT: (status, headers, body).
    pub fn cgi(&self) -> (u16, Vec<(String, String)>, &[u8]) {
        match super::parse_cgi(&self.stdout) {
            Some((status, headers, end)) => (status, headers, &self.stdout[end..]),
            None => panic!(
                "STDOUT is not a CGI response: {:?} (end: {:?}, closed: {}, other records: {:?})",
                String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(500)]),
                self.end,
                self.closed,
                self.other
            ),
        }
    }
    pub fn status(&self) -> u16 {
        self.cgi().0
    }
    /// A response header (latin-1 decoded), `Status` included.
    pub fn header(&self, name: &str) -> Option<String> {
        self.cgi()
            .1
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    pub fn body(&self) -> &[u8] {
        self.cgi().2
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.body()).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.body())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

// ---------------------------------------------------------------- connection

/// Where a responder listens.
#[derive(Clone, Debug)]
pub enum Addr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Addr {
    /// `GET path` on a connection of its own: the body of a 200, else
    /// what went wrong (the load and process tests' probe).
    pub fn get_text(&self, path: &str) -> Result<String, String> {
        let mut c = self.connect().map_err(|e| format!("connect: {e}"))?;
        c.send_request(1, &Req::get(path))
            .map_err(|e| format!("send: {e}"))?;
        let out = c.response_with_result(1, Duration::from_secs(10))?;
        if out.status() != 200 {
            return Err(format!("status {}", out.status()));
        }
        Ok(out.text())
    }

    /// As `--bind` and `wsgi-fcgi request` spell it.
    pub fn arg(&self) -> String {
        match self {
            Addr::Unix(p) => format!("unix:{}", p.display()),
            Addr::Tcp(a) => a.to_string(),
        }
    }
    pub fn connect(&self) -> io::Result<Conn> {
        let sock = match self {
            Addr::Unix(p) => Socket::from(UnixStream::connect(p)?),
            Addr::Tcp(a) => Socket::from(TcpStream::connect_timeout(a, TIMEOUT)?),
        };
        // A responder that stops reading (a deadlock) fails the test
        // instead of hanging it.
        sock.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Conn {
            sock,
            buf: Vec::new(),
            start: 0,
        })
    }
}

/// What the next read found.
#[derive(Debug)]
pub enum Next {
    Record(Record),
    /// The server closed the connection (EOF or reset) at a record boundary.
    Closed,
    /// Nothing arrived within the timeout.
    TimedOut,
}

/// One client connection speaking raw FastCGI records.
pub struct Conn {
    sock: Socket,
    buf: Vec<u8>,
    start: usize,
}

enum Fill {
    Ok,
    Eof,
    TimedOut,
}

impl Conn {
    /// Write raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes)
    }
    /// Write one well-formed record.
    pub fn send_record(&mut self, kind: u8, id: u16, content: &[u8]) -> io::Result<()> {
        self.send(&record(kind, id, content))
    }
    pub fn begin(&mut self, id: u16, role: u16, flags: u8) -> io::Result<()> {
        self.send_record(BEGIN_REQUEST, id, &begin_body(role, flags))
    }
    pub fn abort(&mut self, id: u16) -> io::Result<()> {
        self.send_record(ABORT_REQUEST, id, b"")
    }
    pub fn get_values(&mut self, names: &[&str]) -> io::Result<()> {
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, "")).collect();
        self.send_record(GET_VALUES, 0, &encode_pairs(&pairs))
    }
    /// A second handle on the same connection (for a writer thread); it
    /// has its own, empty, read buffer.
    pub fn try_clone(&self) -> Conn {
        Conn {
            sock: self.sock.try_clone().expect("clone the socket"),
            buf: Vec::new(),
            start: 0,
        }
    }
    /// Half-close: the server reads EOF.
    /// Close with a reset (TCP: SO_LINGER 0), as HAProxy and h2o close idle
    /// connections.
    pub fn reset(self) {
        let _ = self.sock.set_linger(Some(Duration::ZERO));
        drop(self);
    }
    pub fn shutdown_write(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Write);
    }

    fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn fill(&mut self, need: usize, deadline: Instant) -> Fill {
        while self.buffered() < need {
            if self.start > 0 && self.start >= self.buf.len() / 2 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Fill::TimedOut;
            }
            self.sock
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            let len = self.buf.len();
            self.buf.resize(len + 256 * 1024, 0);
            let read = self.sock.read(&mut self.buf[len..]);
            self.buf.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Fill::Eof,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Fill::TimedOut;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Fill::Eof;
                }
                Err(e) => panic!("reading from the responder: {e}"),
            }
        }
        Fill::Ok
    }

    /// The next record, or why there is none. A record cut short by EOF is
    /// a server bug and panics.
    pub fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        match self.fill(8, deadline) {
            Fill::Ok => {}
            Fill::Eof if self.buffered() == 0 => return Next::Closed,
            Fill::TimedOut if self.buffered() == 0 => return Next::TimedOut,
            _ => panic!(
                "the responder stopped inside a record header: {:?}",
                &self.buf[self.start..]
            ),
        }
        let h = &self.buf[self.start..self.start + 8];
        let (version, kind, id) = (h[0], h[1], u16::from_be_bytes([h[2], h[3]]));
        let content_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
        let padding = h[6];
        let total = 8 + content_len + usize::from(padding);
        match self.fill(total, deadline.max(Instant::now() + TIMEOUT)) {
            Fill::Ok => {}
            _ => panic!(
                "the responder stopped inside a record: type {kind} id {id}, {} of {total} bytes",
                self.buffered()
            ),
        }
        let content = self.buf[self.start + 8..self.start + 8 + content_len].to_vec();
        self.start += total;
        Next::Record(Record {
            version,
            kind,
            id,
            content,
            padding,
        })
    }

    /// The next record; panics if the connection closed or stayed silent.
    pub fn read_record(&mut self) -> Record {
        match self.next(TIMEOUT) {
            Next::Record(r) => r,
            other => panic!("expected a record from the responder, got {other:?}"),
        }
    }

    /// Collect request `id`'s response up to its END_REQUEST.
    pub fn response(&mut self, id: u16) -> Response {
        let mut stdout = Vec::new();
        let mut response = self.response_with(id, TIMEOUT, |chunk| stdout.extend_from_slice(chunk));
        response.stdout = stdout;
        response
    }

    /// Like [`Conn::response`], handing STDOUT content to `on_stdout` as it
    /// arrives instead of keeping it. `timeout` applies to each record.
    pub fn response_with(
        &mut self,
        id: u16,
        timeout: Duration,
        mut on_stdout: impl FnMut(&[u8]),
    ) -> Response {
        let mut response = Response::default();
        loop {
            match self.next(timeout) {
                Next::Closed => {
                    response.closed = true;
                    return response;
                }
                Next::TimedOut => panic!(
                    "no END_REQUEST for request {id} within {timeout:?} (got {} STDOUT records)",
                    response.stdout_records
                ),
                Next::Record(r) if r.id != id => response.other.push(r),
                Next::Record(r) => match r.kind {
                    STDOUT if r.content.is_empty() => response.stdout_ended = true,
                    STDOUT => {
                        assert!(
                            !response.stdout_ended,
                            "STDOUT data after the end of the STDOUT stream"
                        );
                        response.stdout_records += 1;
                        on_stdout(&r.content);
                    }
                    STDERR => response.stderr.extend_from_slice(&r.content),
                    END_REQUEST => {
                        response.end = Some(r.end_request().expect("END_REQUEST of 8 bytes"));
                        return response;
                    }
                    other => panic!("unexpected record type {other} for request {id}: {r:?}"),
                },
            }
        }
    }

    /// Like [`Conn::response`] for load loops: a connection that closes or
    /// breaks before END_REQUEST, or a timeout, is an `Err`, not a panic.
    pub fn response_with_result(&mut self, id: u16, timeout: Duration) -> Result<Response, String> {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut stdout = Vec::new();
            let mut response =
                self.response_with(id, timeout, |chunk| stdout.extend_from_slice(chunk));
            response.stdout = stdout;
            response
        }));
        match caught {
            Ok(response) if response.end.is_some() => Ok(response),
            Ok(_) => Err("connection closed before END_REQUEST".into()),
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "broken response".into())),
        }
    }

    /// Send a whole request in one write.
    pub fn send_request(&mut self, id: u16, req: &Req) -> io::Result<()> {
        self.send(&req.wire(id))
    }

    /// Send a request and collect its response.
    pub fn request(&mut self, id: u16, req: &Req) -> Response {
        self.send_request(id, req).expect("sending the request");
        self.response(id)
    }

    /// Read until the server closes the connection; returns what arrived
    /// meanwhile. Panics if it stays open for `timeout`.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left.max(Duration::from_millis(1))) {
                Next::Closed => return seen,
                Next::Record(r) => seen.push(r),
                Next::TimedOut => panic!(
                    "the responder kept the connection open for {timeout:?} (records meanwhile: {seen:?})"
                ),
            }
        }
    }

    /// Assert that nothing arrives for `wait` and the connection stays open.
    pub fn expect_silence(&mut self, wait: Duration) {
        match self.next(wait) {
            Next::TimedOut => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- responder

/// A running `wsgi-fcgi`, stopped on drop.
pub struct Responder {
    child: Child,
    pub pid: u32,
    pub addr: Addr,
    pub log_path: PathBuf,
    /// The temporary directory holding the socket and the log; tests put
    /// their marker files here too.
    pub dir: tempfile::TempDir,
    exit: Option<ExitStatus>,
}

/// Where a [`Responder`] listens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Listen {
    /// The unix socket `DIR/fcgi.sock`.
    Unix,
    /// 127.0.0.1 on a free port.
    Tcp,
}

/// A new directory for a responder's socket, log and marker files, mode
/// 0755 (a web server's www-data workers must reach the socket).
pub fn responder_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wsgi-gateway-responder-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A loopback address with a port free a moment ago (see
/// [`super::free_port`]).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::free_port()))
}

impl Responder {
    /// Serve tests/apps/fcgi_fixtures.py (which includes gateway.py's
    /// routes) on a unix socket, with `args` added.
    pub fn fixtures(args: &[&str]) -> Responder {
        let app = app("fcgi_fixtures.py");
        let mut all: Vec<OsString> = vec!["--app".into(), app.into()];
        all.extend(args.iter().map(OsString::from));
        Responder::start(&all, &[])
    }

    /// `wsgi-fcgi ARGS --bind unix:DIR/fcgi.sock` with extra environment.
    pub fn start<A: AsRef<OsStr>>(args: &[A], env: &[(&str, &str)]) -> Responder {
        Responder::launch(Listen::Unix, |bind| {
            let mut cmd = Command::new(wsgi_fcgi());
            cmd.args(args).arg("--bind").arg(bind);
            cmd.envs(env.iter().copied());
            cmd
        })
    }

    /// The same on a free loopback TCP port.
    pub fn start_tcp<A: AsRef<OsStr>>(args: &[A], env: &[(&str, &str)]) -> Responder {
        Responder::launch(Listen::Tcp, |bind| {
            let mut cmd = Command::new(wsgi_fcgi());
            cmd.args(args).arg("--bind").arg(bind);
            cmd.envs(env.iter().copied());
            cmd
        })
    }

    /// Spawn `command(bind)`, `bind` being `unix:DIR/fcgi.sock` or
    /// `127.0.0.1:PORT` (another port, if something took that one before
    /// the responder could bind it), and wait until it serves there.
    pub fn launch(listen: Listen, command: impl Fn(&str) -> Command) -> Responder {
        for _ in 0..4 {
            let dir = responder_dir();
            let addr = match listen {
                Listen::Unix => Addr::Unix(dir.path().join("fcgi.sock")),
                Listen::Tcp => Addr::Tcp(free_addr()),
            };
            let cmd = command(&addr.arg());
            let log = dir.path().join("stderr.log");
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Responder::spawn(cmd, addr, dir)
            }));
            match started {
                Ok(responder) => return responder,
                Err(_)
                    if listen == Listen::Tcp
                        && std::fs::read_to_string(&log)
                            .is_ok_and(|l| l.contains("Address already in use")) => {}
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        panic!("no free loopback port in 4 tries");
    }

    /// Spawn a prepared command in its own process group (stdin is left as
    /// the caller set it, null by default), its stderr going to
    /// `dir`/stderr.log, and wait until it serves on `addr`.
    pub fn spawn(mut cmd: Command, addr: Addr, dir: tempfile::TempDir) -> Responder {
        let log_path = dir.path().join("stderr.log");
        let log = std::fs::File::create(&log_path).expect("create the log file");
        cmd.stdout(Stdio::null()).stderr(log).process_group(0);
        let child = cmd.spawn().expect("spawn wsgi-fcgi");
        let mut responder = Responder {
            pid: child.id(),
            child,
            addr,
            log_path,
            dir,
            exit: None,
        };
        responder.wait_ready();
        responder
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                panic!(
                    "wsgi-fcgi exited ({status}) before serving; log:\n{}",
                    self.log()
                );
            }
            if self.log().contains(" socket(s)") && self.addr.connect().is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "wsgi-fcgi did not start serving within 30 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> Conn {
        self.addr
            .connect()
            .unwrap_or_else(|e| panic!("connect to {}: {e}\nlog:\n{}", self.addr.arg(), self.log()))
    }

    /// Everything the responder logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.log().contains(needle)
    }

    /// The unix socket it listens on (with [`Listen::Unix`]).
    pub fn socket(&self) -> PathBuf {
        match &self.addr {
            Addr::Unix(path) => path.clone(),
            Addr::Tcp(a) => panic!("listening on {a}, not a unix socket"),
        }
    }

    /// The TCP port it listens on (with [`Listen::Tcp`]).
    pub fn port(&self) -> u16 {
        match &self.addr {
            Addr::Tcp(a) => a.port(),
            Addr::Unix(path) => panic!("listening on {}, not TCP", path.display()),
        }
    }

    /// The address as `--bind` and nginx's `server` write it.
    pub fn address(&self) -> String {
        self.addr.arg()
    }

    /// Connections established to it now.
    pub fn connections(&self) -> usize {
        match &self.addr {
            Addr::Unix(path) => super::http::established_unix(path),
            Addr::Tcp(a) => super::http::established_tcp(a.port()),
        }
    }

    /// A path in the responder's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    /// Send a signal by name (TERM, INT, QUIT, KILL).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args(["-s", name, &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok || self.exit.is_some(),
            "kill -s {name} {} failed",
            self.pid
        );
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit {
                return Some(status);
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// TERM, then wait for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(timeout)
            .unwrap_or_else(|| panic!("no exit {timeout:?} after TERM; log:\n{}", self.log()))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- responder log ({}) ---\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
        if self.wait_exit(Duration::ZERO).is_none() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &self.pid.to_string()])
                .status();
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // Whatever is left of its group (workers of a master killed hard).
        let _ = Command::new("sh")
            .args(["-c", "kill -s KILL -- \"-$0\" 2>/dev/null"])
            .arg(self.pid.to_string())
            .status();
    }
}

/// Run `wsgi-fcgi request ARGS`: (exit code, stdout, stderr).
pub fn probe<A: AsRef<OsStr>>(args: &[A]) -> (i32, Vec<u8>, String) {
    let out = Command::new(wsgi_fcgi())
        .arg("request")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wsgi-fcgi request");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Poll until `path` holds `expected` (marker files written by the app).
pub fn wait_file(path: &Path, expected: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|s| s == expected) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
