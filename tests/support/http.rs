//! Helpers for the tests that go through real web servers (tests/webservers.rs,
//! tests/webservers_fcgi.rs): finding the servers and libpython, a free
//! loopback port, a minimal HTTP/1.1 client (`Connection: close`, chunked or
//! length-delimited bodies; [`request_streamed`] reads a body as it arrives
//! and hashes it instead of keeping it), a [`Server`] guard that starts a
//! server in its own process group, waits until its port (or unix socket)
//! answers and kills the whole group when dropped, request-body builders (pseudo-random bytes,
//! multipart/form-data), a streaming SHA-256, whether `www-data` can reach
//! a path, the connections established on a listening socket, and [`Site`]:
//! checks of the fixture apps behind a server (forms, uploads, redirects,
//! clean 500s, streamed responses, 100 MiB transfers).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::digest::{Sha256, sha256_hex};

pub use super::free_port;

/// `name` on `PATH` or in the usual sbin directories (web servers live there).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// True when running as root (Apache then runs CGI programs as `User`).
pub fn is_root() -> bool {
    // /proc/self belongs to the effective user of the process reading it.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The libpython `binary` loads, as `ldd` resolves it for the current user.
pub fn libpython(binary: &Path) -> Option<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("libpython"))?;
    let path = line.split("=>").nth(1)?.split(" (").next()?.trim();
    Some(PathBuf::from(path))
}

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON; panics (showing the body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// A connection to the loopback `port`, reads and writes timing out after
/// `timeout`.
fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// A request head (request line, Host, `Connection: close`, the given
/// headers; no blank line yet).
fn head(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head
}

/// `GET path` on a connection of its own to 127.0.0.1:`port`: the first
/// word of the body of a 200 (the load tests' apps answer "VERSION PID …"),
/// or the status line / error.
pub fn first_word(port: u16, path: &str) -> Result<String, String> {
    let wire = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let raw =
        exchange(port, wire.as_bytes(), Duration::from_secs(20)).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or(text.clone())?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.split(' ').next().unwrap_or_default().to_string())
}

/// Clients running a request in a loop, each on its own thread, until
/// [`Clients::finish`]: how many succeeded, and every failure with when it
/// happened.
pub struct Clients {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<(std::time::Instant, String)>>>,
}

impl Clients {
    /// `count` clients, each running `request` again and again.
    pub fn start<T>(
        count: usize,
        request: impl Fn() -> Result<T, String> + Clone + Send + 'static,
    ) -> Clients {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = (0..count)
            .map(|_| {
                let (stop, ok, request) = (stop.clone(), ok.clone(), request.clone());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match request() {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.push((std::time::Instant::now(), e)),
                        }
                    }
                    failures
                })
            })
            .collect();
        Clients { stop, ok, threads }
    }

    /// Stop them (each finishes its request): (succeeded, failures by time).
    pub fn finish(self) -> (usize, Vec<(std::time::Instant, String)>) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        let mut failures: Vec<_> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        failures.sort_by_key(|f| f.0);
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Send `wire`, a whole request as the test wrote it, to 127.0.0.1:`port`
/// and read until the server closes: the raw response, for checks a parser
/// would hide (a chunked body cut short). A read that fails (a reset, the
/// timeout) after some bytes arrived ends the response there: the bytes are
/// what the caller checks.
pub fn exchange(port: u16, wire: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut stream = connect(port, timeout)?;
    stream.write_all(wire)?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Err(e) if raw.is_empty() => Err(e),
        _ => Ok(raw),
    }
}

/// Send one request to 127.0.0.1:`port` and read the whole response.
/// `target` goes on the request line as is (percent-encode it yourself).
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut wire = head(port, method, target, headers);
    if !body.is_empty() || method == "POST" {
        wire.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    wire.push_str("\r\n");
    let wire = [wire.as_bytes(), body].concat();
    let raw = exchange(port, &wire, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{method} {target} to port {port}: {e}"));
    parse_response(&raw, method == "HEAD")
}

/// POST `body` to 127.0.0.1:`port` with `Transfer-Encoding: chunked` (in
/// chunks of `chunk` bytes) and no Content-Length.
pub fn post_chunked(
    port: u16,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    chunk: usize,
) -> Response {
    let mut wire = head(port, "POST", target, headers);
    wire.push_str("Transfer-Encoding: chunked\r\n\r\n");
    let mut wire = wire.into_bytes();
    for piece in body.chunks(chunk.max(1)) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let raw = exchange(port, &wire, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("chunked POST {target} to port {port}: {e}"));
    parse_response(&raw, false)
}

/// GET `target` from 127.0.0.1:`port`.
pub fn get(port: u16, target: &str) -> Response {
    request(port, "GET", target, &[], b"")
}

fn parse_response(raw: &[u8], head_only: bool) -> Response {
    let mut reader = raw;
    let (status, headers) = read_head(&mut reader, "");
    let framing = framing(status, &headers, head_only);
    let mut body = Vec::new();
    read_body(&mut reader, framing, &mut |piece| {
        body.extend_from_slice(piece)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(raw)));
    Response {
        status,
        headers,
        body,
    }
}

/// A response head, read line by line up to its blank line: the status
/// and the headers. `what` names the request in the panic message.
fn read_head(reader: &mut impl BufRead, what: &str) -> (u16, Vec<(String, String)>) {
    let mut raw = Vec::new();
    loop {
        let n = reader
            .read_until(b'\n', &mut raw)
            .unwrap_or_else(|e| panic!("read the response head of {what}: {e}"));
        if n == 0 || raw.ends_with(b"\r\n\r\n") || raw == b"\r\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    if !matches!(parsed.parse(&raw), Ok(httparse::Status::Complete(_))) {
        let raw = String::from_utf8_lossy(&raw);
        panic!("not an HTTP response to {what}: {raw:?}");
    }
    let headers = parsed.headers.iter().map(|h| {
        let value = String::from_utf8_lossy(h.value).into_owned();
        (h.name.to_string(), value)
    });
    (parsed.code.unwrap_or(0), headers.collect())
}

/// How a response body is delimited (RFC 9112 section 6.3).
enum Framing {
    /// No body: a response to HEAD, a 204 or a 304.
    Empty,
    Chunked,
    Length(u64),
    /// Up to the end of the connection.
    Close,
}

fn framing(status: u16, headers: &[(String, String)], head: bool) -> Framing {
    let header = |name: &str| {
        let found = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.trim())
    };
    if head || matches!(status, 204 | 304) {
        Framing::Empty
    } else if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        Framing::Chunked
    } else if let Some(length) = header("Content-Length").and_then(|v| v.parse().ok()) {
        Framing::Length(length)
    } else {
        Framing::Close
    }
}

/// Read a body framed as `framing`, handing each piece to `sink` as it
/// arrives (no trailers expected after a chunked one); returns its size.
/// A body cut short is an error saying where.
fn read_body(
    reader: &mut impl BufRead,
    framing: Framing,
    sink: &mut dyn FnMut(&[u8]),
) -> std::io::Result<u64> {
    use std::io::{Error, ErrorKind};
    let short = |what: String| Error::new(ErrorKind::UnexpectedEof, what);
    // Up to `limit` bytes of what the reader holds, or 0 at the end.
    let mut piece = |reader: &mut dyn BufRead, limit: u64| -> std::io::Result<u64> {
        let buf = reader.fill_buf()?;
        let n = buf.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
        if n > 0 {
            sink(&buf[..n]);
        }
        reader.consume(n);
        Ok(n as u64)
    };
    let mut size = 0;
    match framing {
        Framing::Empty => {}
        Framing::Chunked => loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let text = line.split(';').next().unwrap_or_default().trim();
            let Ok(mut left) = u64::from_str_radix(text, 16) else {
                return Err(short(format!(
                    "bad chunk size line {line:?} after {size} bytes"
                )));
            };
            if left == 0 {
                break;
            }
            while left > 0 {
                let n = piece(reader, left)?;
                if n == 0 {
                    return Err(short(format!(
                        "connection closed inside a chunk after {size} bytes"
                    )));
                }
                (left, size) = (left - n, size + n);
            }
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf)?;
        },
        Framing::Length(length) => {
            while size < length {
                let n = piece(reader, length - size)?;
                if n == 0 {
                    return Err(short(format!("short body: {size} of {length} bytes")));
                }
                size += n;
            }
        }
        Framing::Close => loop {
            let n = piece(reader, u64::MAX)?;
            if n == 0 {
                break;
            }
            size += n;
        },
    }
    Ok(size)
}

/// What tells [`Server::start_ready`] that a server is up.
#[derive(Clone, Copy, Debug)]
pub enum Ready<'a> {
    /// A TCP connection to 127.0.0.1:`port` succeeds.
    Port,
    /// A connection to the unix socket `dir/<name>` succeeds.
    Unix(&'a str),
}

/// A web server running in its own process group; dropping it stops the
/// server and everything it started (CGI processes included).
pub struct Server {
    pub name: String,
    pub port: u16,
    /// The server's private directory (configuration, logs, pid file),
    /// mode 0755 so that a server that drops privileges can read it.
    pub dir: PathBuf,
    logs: Vec<PathBuf>,
    child: Child,
    /// Removed after the server is stopped.
    tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Start a server in a new private directory: `setup(dir, port)` writes
    /// its configuration for `port` and returns the command, whose output
    /// goes to `dir/server.out`. `logs` are the files (in `dir`) that
    /// [`Server::log`] reads. Retries with a new port if the first one was
    /// taken meanwhile (tests run in parallel).
    pub fn start(name: &str, logs: &[&str], setup: impl FnMut(&Path, u16) -> Command) -> Server {
        Server::start_ready(name, logs, Ready::Port, setup)
    }

    /// [`Server::start`], waiting for `ready` instead of the port (a FastCGI
    /// responder on a unix socket, say).
    pub fn start_ready(
        name: &str,
        logs: &[&str],
        ready: Ready,
        mut setup: impl FnMut(&Path, u16) -> Command,
    ) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("wsgi-gateway-{name}-"))
            .tempdir()
            .expect("create the server's directory");
        let dir = tmp.path().to_path_buf();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut log_files: Vec<PathBuf> = logs.iter().map(|l| dir.join(l)).collect();
        log_files.push(dir.join("server.out"));
        let mut tmp = Some(tmp);
        for attempt in 1.. {
            let port = free_port();
            let out = File::create(dir.join("server.out")).expect("create server.out");
            let mut cmd = setup(&dir, port);
            cmd.process_group(0)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
            let mut server = Server {
                name: name.to_string(),
                port,
                dir: dir.clone(),
                logs: log_files.clone(),
                child,
                tmp: tmp.take(),
            };
            match server.wait_until_listening(ready) {
                Ok(()) => return server,
                Err(why) => {
                    let log = server.log();
                    let taken = log.contains("in use") || log.contains("could not bind");
                    if !(taken && attempt < 3) {
                        panic!("{name} did not start on port {port}: {why} (its logs follow)");
                    }
                    // Keep the directory for the next try; dropping stops the rest.
                    tmp = server.tmp.take();
                }
            }
        }
        unreachable!()
    }

    fn wait_until_listening(&mut self, ready: Ready) -> Result<(), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("it exited with {status}"));
            }
            let up = match ready {
                Ready::Port => {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                }
                Ready::Unix(name) => {
                    std::os::unix::net::UnixStream::connect(self.dir.join(name)).is_ok()
                }
            };
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{ready:?} did not answer within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send a request to this server.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.port, method, target, headers, body)
    }

    /// GET `target` from this server.
    pub fn get(&self, target: &str) -> Response {
        get(self.port, target)
    }

    /// Everything in the server's log files so far.
    pub fn log(&self) -> String {
        let mut all = String::new();
        for path in &self.logs {
            if let Ok(bytes) = std::fs::read(path) {
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        all
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("sh")
            .args(["-c", "kill -s \"$0\" -- \"-$1\" 2>/dev/null", signal])
            .arg(self.child.id().to_string())
            .status();
    }
}

/// Something whose log files a test reads: a web server (CGI stderr goes to
/// its error log) or a FastCGI responder.
pub trait Logged {
    /// The name failure messages use.
    fn name(&self) -> &str;
    /// Its log files (now: a warm-mode responder's log appears with it).
    fn log_files(&self) -> Vec<PathBuf>;

    /// The current length of each log file, to look only at what comes after.
    fn log_mark(&self) -> Vec<(PathBuf, u64)> {
        let files = self.log_files().into_iter();
        files
            .map(|p| {
                let len = std::fs::metadata(&p).map_or(0, |m| m.len());
                (p, len)
            })
            .collect()
    }

    /// Wait (up to 10 s: servers write CGI stderr asynchronously) until the
    /// logs written since `mark` contain every one of `needles`; returns them.
    /// (A log file that appeared since `mark` is read whole.)
    fn log_since(&self, mark: &[(PathBuf, u64)], needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut new = String::new();
            for path in self.log_files() {
                let marked = mark.iter().find(|(p, _)| *p == path);
                let from = marked.map_or(0, |&(_, len)| len);
                let bytes = std::fs::read(&path).unwrap_or_default();
                let from = usize::try_from(from).unwrap().min(bytes.len());
                new.push_str(&String::from_utf8_lossy(&bytes[from..]));
            }
            if needles.iter().all(|n| new.contains(n)) || Instant::now() > deadline {
                return new;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Logged for Server {
    fn name(&self) -> &str {
        &self.name
    }
    fn log_files(&self) -> Vec<PathBuf> {
        self.logs.clone()
    }
}

impl Logged for super::fcgi::Responder {
    fn name(&self) -> &str {
        "wsgi-fcgi"
    }
    fn log_files(&self) -> Vec<PathBuf> {
        vec![self.log_path.clone()]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- {} logs ({}) ---\n{}",
                self.name,
                self.dir.display(),
                self.log()
            );
        }
    }
}

impl Server {
    /// Stop the server and everything left in its process group.
    fn stop(&mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the group (a CGI process, mod_cgid's daemon).
        self.signal("KILL");
        let _ = self.child.wait();
    }
}

/// `len` reproducible pseudo-random bytes (xorshift64*).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A multipart/form-data body: `(content type, body)` for text `fields`
/// plus one file field `(name, filename, data)`.
pub fn multipart(fields: &[(&str, &str)], file: (&str, &str, &[u8])) -> (String, Vec<u8>) {
    let boundary = "wsgi-gateway-test-boundary-7d93a2";
    let (name, filename, data) = file;
    let mut all: Vec<(&str, &[u8], Option<&str>)> = fields
        .iter()
        .map(|(n, v)| (*n, v.as_bytes(), None))
        .collect();
    all.push((name, data, Some(filename)));
    (
        format!("multipart/form-data; boundary={boundary}"),
        super::multipart(boundary, &all),
    )
}

/// A response read as it arrived, its body hashed rather than kept.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    /// Shown in failure messages (`{:?}`), which dead-code analysis ignores.
    #[allow(dead_code)]
    pub headers: Vec<(String, String)>,
    /// Body bytes received.
    pub size: u64,
    /// SHA-256 of the body, in hex.
    pub sha256: String,
    /// The first 64 KiB of the body.
    pub head: Vec<u8>,
    /// When each piece of the body arrived, since the request was sent.
    pub arrivals: Vec<Duration>,
}

impl Streamed {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
}

/// Send one request to 127.0.0.1:`port` whose body of `body_len` bytes
/// `write_body` writes (in pieces, so that a large body is never held in
/// memory), then read the response as it arrives: chunked, length-delimited
/// or up to the end of the connection.
pub fn request_streamed(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body_len: u64,
    write_body: impl FnOnce(&mut dyn Write),
) -> Streamed {
    let mut stream = connect(port, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    let mut head = head(port, method, target, headers);
    if body_len > 0 || method == "POST" {
        head.push_str(&format!("Content-Length: {body_len}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .expect("send request head");
    write_body(&mut stream);
    let start = Instant::now();
    let mut reader = BufReader::with_capacity(256 * 1024, stream);

    let what = format!("{method} {target}");
    let (status, headers) = read_head(&mut reader, &what);
    let framing = framing(status, &headers, method == "HEAD");
    let mut response = Streamed {
        status,
        headers,
        size: 0,
        sha256: String::new(),
        head: Vec::new(),
        arrivals: Vec::new(),
    };
    let mut hasher = Sha256::new();
    let (head, arrivals) = (&mut response.head, &mut response.arrivals);
    let size = read_body(&mut reader, framing, &mut |piece| {
        arrivals.push(start.elapsed());
        hasher.update(piece);
        let keep = piece.len().min((64 * 1024usize).saturating_sub(head.len()));
        head.extend_from_slice(&piece[..keep]);
    });
    response.size = size.unwrap_or_else(|e| panic!("read the body of {what}: {e}"));
    response.sha256 = hasher.hex();
    response
}

/// Root's web servers run their workers (and the FastCGI programs mod_fcgid
/// starts) as `www-data`: check that this user passes `test FLAG PATH` for
/// each of `wanted` (e.g. `("-x", binary)`), else say which directories
/// lack `o+x`. Always fine when not running as root.
pub fn www_data_can(wanted: &[(&str, PathBuf)]) -> Result<(), String> {
    if !is_root() {
        return Ok(());
    }
    let can = |flag: &str, path: &Path| {
        Command::new("runuser")
            .args(["-u", "www-data", "--", "test", flag])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success())
    };
    let blocked: Vec<&PathBuf> = wanted
        .iter()
        .filter(|(flag, path)| !can(flag, path))
        .map(|(_, path)| path)
        .collect();
    if blocked.is_empty() {
        return Ok(());
    }
    let mut dirs: Vec<String> = blocked
        .iter()
        .flat_map(|p| p.ancestors().skip(1))
        .filter(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(|d| d.display().to_string())
        .collect();
    dirs.sort();
    dirs.dedup();
    Err(format!(
        "www-data cannot reach {blocked:?}; let it traverse the parent directories: \
         `chmod o+x {}` (.ci/run does this)",
        dirs.join(" ")
    ))
}

/// Connections established to a listening unix socket at `path` (the
/// accepted ends, which carry the socket's path), from /proc/net/unix.
pub fn established_unix(path: &Path) -> usize {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let path = path.to_string_lossy();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // Num RefCount Protocol Flags Type St Inode Path; St 03 = connected
        .filter(|f| f.len() >= 8 && f[5] == "03" && f[7] == path)
        .count()
}

/// Connections established to 127.0.0.1:`port` (the accepted ends), from
/// /proc/net/tcp.
pub fn established_tcp(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // sl local_address rem_address st ...; st 01 = ESTABLISHED
        .filter(|f| f.len() >= 4 && f[1] == local && f[3] == "01")
        .count()
}

/// An app mounted at `prefix` behind the web server `web`, and the process
/// whose log gets the app's stderr (the web server itself, or a FastCGI
/// responder the test started): the checks common to the web-server tests.
pub struct Site<'a> {
    pub web: &'a Server,
    pub log: &'a dyn Logged,
    pub prefix: &'a str,
}

impl Site<'_> {
    /// tests/apps/fcgi_site.py mounted at the root (as HAProxy's
    /// `path-info ^()(/.*)$` and h2o map it): Flask's page, its empty
    /// script_root and whole path, SCRIPT_NAME "" and the whole PATH_INFO,
    /// and a 100 000-byte body echoed.
    pub fn check_mounted_at_root(&self) {
        assert_eq!(self.get_ok("/").text(), "Hello from Flask\n");
        let j = self.get_ok("/json?x=1").json();
        assert_eq!(j["script_root"].as_str(), Some(""), "{j:?}");
        assert_eq!(j["path"].as_str(), Some("/json"), "{j:?}");
        let env = self.get_ok("/environ").json();
        assert_eq!(env["SCRIPT_NAME"].as_str(), Some(""), "{env:?}");
        assert_eq!(env["PATH_INFO"].as_str(), Some("/environ"), "{env:?}");
        let data = random_bytes(100_000, 11);
        let r = self.post("/echo", "application/octet-stream", &data);
        self.expect(&r, 200);
        assert!(
            r.body == data,
            "echoed {} bytes of {}",
            r.body.len(),
            data.len()
        );
    }
}

impl Site<'_> {
    /// GET `prefix` + `path`.
    pub fn get(&self, path: &str) -> Response {
        self.web.get(&format!("{}{path}", self.prefix))
    }

    /// POST `body` to `prefix` + `path`.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Response {
        let target = format!("{}{path}", self.prefix);
        let headers = [("Content-Type", content_type)];
        self.web.request("POST", &target, &headers, body)
    }

    /// Assert the status, showing the response if not (the server's logs
    /// are printed when it is dropped during the panic).
    pub fn expect(&self, r: &Response, status: u16) {
        let name = &self.web.name;
        assert_eq!(r.status, status, "{name}: {r:?}\nbody: {}", r.text());
    }

    /// GET `prefix` + `path`, expecting 200.
    pub fn get_ok(&self, path: &str) -> Response {
        let r = self.get(path);
        self.expect(&r, 200);
        r
    }

    /// `path` answers a clean 500 (no traceback, nothing marked SECRET) and
    /// the log gets every one of `needles`.
    pub fn check_500(&self, path: &str, needles: &[&str]) {
        let mark = self.log.log_mark();
        let r = self.get(path);
        self.expect(&r, 500);
        let body = r.text();
        assert!(
            !body.contains("SECRET") && !body.contains("Traceback"),
            "leaked: {body}"
        );
        let log = self.log.log_since(&mark, needles);
        let name = self.log.name();
        assert!(
            needles.iter().all(|n| log.contains(n)),
            "{needles:?} not in {name}'s log: {log}"
        );
    }

    /// `path` redirects to `to`, as a path or as an absolute URL.
    pub fn check_redirect(&self, path: &str, to: &str) {
        let r = self.get(path);
        let redirect = matches!(r.status, 301 | 302 | 303 | 307 | 308);
        assert!(redirect, "{}: {path}: {r:?}", self.web.name);
        let location = r.header("Location").expect("Location header");
        let absolute = format!("http://127.0.0.1:{}{to}", self.web.port);
        assert!(
            location == to || location == absolute,
            "{path} redirected to {location}"
        );
    }

    /// The fixture apps' form route echoes `name` and `city` as JSON.
    pub fn check_form(&self, path: &str) {
        let form = "application/x-www-form-urlencoded";
        let r = self.post(path, form, b"name=Zo%C3%A9&city=Paris");
        self.expect(&r, 200);
        let j = r.json();
        assert_eq!(
            (j["name"].as_str(), j["city"].as_str()),
            (Some("Zoé"), Some("Paris"))
        );
    }

    /// The fixture apps' upload route: a 1 MiB multipart file and a note
    /// come back as `{filename, size, sha256, note}`.
    pub fn check_upload(&self, path: &str) {
        let data = random_bytes(1 << 20, 0x5eed);
        let (content_type, body) = multipart(&[("note", "one MiB")], ("file", "r.bin", &data));
        let r = self.post(path, &content_type, &body);
        self.expect(&r, 200);
        let j = r.json();
        assert_eq!(j["size"].as_f64(), Some((1 << 20) as f64), "{j:?}");
        assert_eq!(j["sha256"].as_str(), Some(sha256_hex(&data).as_str()));
        assert_eq!(
            (j["filename"].as_str(), j["note"].as_str()),
            (Some("r.bin"), Some("one MiB"))
        );
    }
}

/// `name` as [`find_program`] finds it, or `None` after `skip`ping (or
/// failing, under WSGI_TEST_STRICT=1) with the Debian package to install.
pub fn require_program(name: &str, package: &str) -> Option<PathBuf> {
    let found = find_program(name);
    if found.is_none() {
        let why = format!("{name} is not installed (apt-get install {package})");
        if std::env::var_os("WSGI_TEST_STRICT").is_some_and(|v| v == "1") {
            panic!("prerequisite missing (WSGI_TEST_STRICT=1): {why}");
        }
        eprintln!("skipped: {why}");
    }
    found
}

impl Server {
    /// Start the web server `exe` with the main configuration
    /// `conf(dir, port)` written to `dir/<name>.conf`, run as
    /// `exe <args> <that file>` in a clean environment (nothing from the
    /// test run leaks into the apps).
    pub fn start_conf(
        name: &str,
        exe: &Path,
        logs: &[&str],
        args: impl Fn(&Path) -> Vec<std::ffi::OsString>,
        conf: impl Fn(&Path, u16) -> String,
    ) -> Server {
        Server::start(name, logs, |dir, port| {
            let file = dir.join(format!("{name}.conf"));
            std::fs::write(&file, conf(dir, port)).unwrap();
            let mut cmd = Command::new(exe);
            cmd.env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("LANG", "C.UTF-8");
            cmd.args(args(dir)).arg(&file);
            cmd
        })
    }
}

/// Size of the big transfers.
pub const BIG: u64 = 100 << 20;

/// A file of [`BIG`] random bytes in target/test-data (which www-data can
/// read under .ci/run) and its SHA-256, made once per test run; and the
/// SHA-256 of tests/apps/stream_app.py's /bytes pattern of that size.
pub fn big_file() -> &'static (PathBuf, String, String) {
    static BIG_FILE: std::sync::OnceLock<(PathBuf, String, String)> = std::sync::OnceLock::new();
    BIG_FILE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-data");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("random-100MiB.bin");
        let tmp = dir.join(format!("random-100MiB.{}.tmp", std::process::id()));
        let (mut file, mut sha) = (File::create(&tmp).unwrap(), Sha256::new());
        for i in 0..BIG >> 20 {
            let chunk = random_bytes(1 << 20, 0xb16 + i);
            sha.update(&chunk);
            file.write_all(&chunk).unwrap();
        }
        drop(file);
        std::fs::rename(&tmp, &path).unwrap();
        let mut pattern = Sha256::new();
        for i in 0..BIG / 65536 {
            pattern.update(&[(i % 251) as u8; 65536]);
        }
        (path, sha.hex(), pattern.hex())
    })
}

impl Site<'_> {
    /// stream_app.py's /stream: a generator's 5 chunks, 250 ms apart, reach
    /// the client as they are yielded (not all at once at the end).
    pub fn check_stream(&self) {
        let target = format!("{}/stream?n=5&delay=0.25", self.prefix);
        let r = request_streamed(self.web.port, "GET", &target, &[], 0, |_| {});
        assert_eq!(r.status, 200, "{}: {r:?}", self.web.name);
        let want: String = (0..5).map(|i| format!("chunk {i}\n")).collect();
        assert_eq!(r.text(), want);
        let spread = *r.arrivals.last().unwrap() - r.arrivals[0];
        assert!(
            spread >= Duration::from_millis(600),
            "{}: the 1 s stream arrived within {spread:?} (reads at {:?}): buffered, not streamed",
            self.web.name,
            r.arrivals
        );
    }

    /// [`BIG`] bytes up to stream_app.py's /sha256 (hashed by the app as it
    /// reads), and down from gateway.py's /file (`wsgi.file_wrapper`) and
    /// stream_app.py's /bytes (a generator), hashed as they arrive.
    pub fn check_big(&self) {
        let (name, (path, sha, pattern_sha)) = (&self.web.name, big_file());
        let binary = [("Content-Type", "application/octet-stream")];
        let target = format!("{}/sha256", self.prefix);
        let r = request_streamed(self.web.port, "POST", &target, &binary, BIG, |out| {
            let mut file = File::open(path).unwrap();
            std::io::copy(&mut file, out).expect("send the upload");
        });
        assert_eq!(r.status, 200, "{name}: upload: {r:?}");
        let j: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(j["size"].as_f64(), Some(BIG as f64), "{name}: {j:?}");
        assert_eq!(j["sha256"].as_str(), Some(sha.as_str()), "{name}: upload");
        for (what, query, want) in [
            ("file", format!("/file?path={}", path.display()), sha),
            ("generator", format!("/bytes?size={BIG}"), pattern_sha),
        ] {
            let target = format!("{}{query}", self.prefix);
            let r = request_streamed(self.web.port, "GET", &target, &[], 0, |_| {});
            assert_eq!(r.status, 200, "{name}: {what} download: {r:?}");
            assert_eq!((r.size, &r.sha256), (BIG, want), "{name}: {what} download");
        }
    }
}

/// The head of a generated Apache main configuration in `dir` for `port`:
/// paths, logs (`log_format` for the access log), everything denied by
/// default, `User www-data` when run as root, and `modules` loaded.
pub fn apache_main_conf(dir: &Path, port: u16, log_format: &str, modules: &[&str]) -> String {
    let d = dir.display();
    let mut conf = format!(
        r#"# Generated by the tests (tests/support/http.rs)
ServerRoot "{d}"
DefaultRuntimeDir "{d}"
PidFile "{d}/httpd.pid"
ErrorLog "{d}/error.log"
LogLevel warn
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
LogFormat "{log_format}" test
CustomLog "{d}/access.log" test
<Directory />
    Require all denied
</Directory>
"#
    );
    if is_root() {
        conf.push_str("User www-data\nGroup www-data\n");
    }
    for m in modules {
        let so = format!("/usr/lib/apache2/modules/mod_{m}.so");
        conf.push_str(&format!(
            "<IfModule !{m}_module>\n    LoadModule {m}_module {so}\n</IfModule>\n"
        ));
    }
    conf
}

/// One test per case; a case returns `None` when it was skipped (a missing
/// prerequisite, reported by `support::skip`).
#[allow(unused_macros)]
macro_rules! cases {
    ($($test:ident => $case:expr;)*) => {$(
        #[test]
        fn $test() {
            let _: Option<()> = $case;
        }
    )*};
}
