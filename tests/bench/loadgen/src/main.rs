//! fcgi-loadgen: a small closed-loop FastCGI load generator for
//! tests/bench/fcgi.sh.
//!
//! N connections, each one request at a time (BEGIN_REQUEST with
//! FCGI_KEEP_CONN, PARAMS like nginx's fastcgi_params, empty STDIN, all in one
//! write), reading records until END_REQUEST. A connection is reused while
//! the server keeps it open; a server that closes after END_REQUEST (uWSGI
//! does, whatever FCGI_KEEP_CONN says) is detected on the first reuse attempt
//! (EOF or EPIPE before any response byte): that request is retried on a new
//! connection — the failed attempt stays inside its latency — and from then
//! on that connection slot connects anew for every request. `connects` in the
//! output says how many connections the measured requests opened.
//!
//! Single-threaded (tokio current-thread) on purpose: on a 2-core box the
//! generator should take at most one core away from the server.
//!
//! Usage:
//!   fcgi-loadgen --connect unix:PATH|HOST:PORT [--path /p?q] [--connections 16]
//!                [--duration 5] [--warmup 1] [--expect-status 200]
//!                [--expect-len BYTES] [--keep-conn 1|0] [--once]
//! --once: one request; the CGI response (FCGI_STDOUT) goes to stdout,
//! FCGI_STDERR to stderr; exit 0 when END_REQUEST came with
//! FCGI_REQUEST_COMPLETE and the status is --expect-status.
//! Otherwise prints one JSON object: requests, errors, rps, latency
//! percentiles in microseconds, connects and stale (connections opened, and
//! reuse attempts the server had closed, for measured requests), `mbps`
//! (FCGI_STDOUT MiB per second) and `gen_cpu_s` (CPU seconds the generator
//! itself used, warm-up included).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

const FCGI_BEGIN_REQUEST: u8 = 1;
const FCGI_END_REQUEST: u8 = 3;
const FCGI_PARAMS: u8 = 4;
const FCGI_STDIN: u8 = 5;
const FCGI_STDOUT: u8 = 6;
const FCGI_STDERR: u8 = 7;
const REQUEST_ID: u16 = 1;

#[derive(Clone, Debug)]
enum Addr {
    Unix(PathBuf),
    Tcp(String),
}

struct Config {
    addr: Addr,
    path: String,
    connections: usize,
    duration: f64,
    warmup: f64,
    expect_status: u16,
    expect_len: Option<u64>,
    keep_conn: bool,
    once: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("fcgi-loadgen: {msg}");
    eprintln!(
        "usage: fcgi-loadgen --connect unix:PATH|HOST:PORT [--path /] [--connections N] \
         [--duration S] [--warmup S] [--expect-status 200] [--expect-len BYTES] \
         [--keep-conn 1|0] [--once]"
    );
    std::process::exit(2)
}

fn parse_args() -> Config {
    let mut cfg = Config {
        addr: Addr::Tcp(String::new()),
        path: "/".into(),
        connections: 16,
        duration: 5.0,
        warmup: 1.0,
        expect_status: 200,
        expect_len: None,
        keep_conn: true,
        once: false,
    };
    let mut have_addr = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--connect" => {
                let v = value();
                cfg.addr = match v.strip_prefix("unix:") {
                    Some(p) => Addr::Unix(p.into()),
                    None => Addr::Tcp(v),
                };
                have_addr = true;
            }
            "--path" => cfg.path = value(),
            "--connections" => cfg.connections = value().parse().unwrap_or_else(|_| usage("bad --connections")),
            "--duration" => cfg.duration = value().parse().unwrap_or_else(|_| usage("bad --duration")),
            "--warmup" => cfg.warmup = value().parse().unwrap_or_else(|_| usage("bad --warmup")),
            "--expect-status" => cfg.expect_status = value().parse().unwrap_or_else(|_| usage("bad --expect-status")),
            "--expect-len" => cfg.expect_len = Some(value().parse().unwrap_or_else(|_| usage("bad --expect-len"))),
            "--keep-conn" => cfg.keep_conn = value() != "0",
            "--once" => cfg.once = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if !have_addr {
        usage("--connect is required");
    }
    cfg.connections = cfg.connections.max(1);
    cfg
}

// ---------------------------------------------------------------- encoding

fn record(out: &mut Vec<u8>, kind: u8, content: &[u8]) {
    let len = content.len();
    assert!(len <= 0xffff);
    let padding = (8 - len % 8) % 8;
    out.extend_from_slice(&[1, kind]);
    out.extend_from_slice(&REQUEST_ID.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[padding as u8, 0]);
    out.extend_from_slice(content);
    out.extend_from_slice(&[0u8; 8][..padding]);
}

fn nv_len(out: &mut Vec<u8>, len: usize) {
    if len < 128 {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// BEGIN_REQUEST + PARAMS (what nginx's fastcgi_params sends for a GET) +
/// empty PARAMS + empty STDIN.
fn build_request(path: &str, keep_conn: bool) -> Vec<u8> {
    let (uri_path, query) = path.split_once('?').unwrap_or((path, ""));
    let pairs: &[(&str, &str)] = &[
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", "GET"),
        ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", ""),
        ("SCRIPT_NAME", ""),
        ("PATH_INFO", uri_path),
        ("REQUEST_URI", path),
        ("DOCUMENT_URI", uri_path),
        ("DOCUMENT_ROOT", "/var/www"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "fcgi-loadgen"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
        ("HTTP_HOST", "localhost"),
        ("HTTP_USER_AGENT", "fcgi-loadgen"),
        ("HTTP_ACCEPT", "*/*"),
    ];
    let mut params = Vec::new();
    for (name, value) in pairs {
        nv_len(&mut params, name.len());
        nv_len(&mut params, value.len());
        params.extend_from_slice(name.as_bytes());
        params.extend_from_slice(value.as_bytes());
    }
    let mut out = Vec::new();
    // role RESPONDER (1), flags
    record(&mut out, FCGI_BEGIN_REQUEST, &[0, 1, keep_conn as u8, 0, 0, 0, 0, 0]);
    for chunk in params.chunks(0xffff) {
        record(&mut out, FCGI_PARAMS, chunk);
    }
    record(&mut out, FCGI_PARAMS, &[]);
    record(&mut out, FCGI_STDIN, &[]);
    out
}

// ---------------------------------------------------------------- decoding

/// Streaming response parser: counts FCGI_STDOUT bytes, keeps the CGI header
/// block (and, with `keep_all`, everything) and stops at END_REQUEST.
#[derive(Default)]
struct Response {
    hdr: [u8; 8],
    hdr_len: usize,
    kind: u8,
    content_left: usize,
    pad_left: usize,
    end_content: Vec<u8>,
    head: Vec<u8>,
    head_len: Option<usize>,
    stdout_bytes: u64,
    stderr: Vec<u8>,
    all: Vec<u8>,
    keep_all: bool,
    ended: bool,
    any_byte: bool,
}

impl Response {
    fn new(keep_all: bool) -> Self {
        Response {
            keep_all,
            ..Default::default()
        }
    }

    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        if !data.is_empty() {
            self.any_byte = true;
        }
        while !data.is_empty() {
            if self.ended {
                return Err(format!("{} bytes after END_REQUEST", data.len()));
            }
            if self.hdr_len < 8 {
                let n = (8 - self.hdr_len).min(data.len());
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
                self.hdr_len += n;
                data = &data[n..];
                if self.hdr_len == 8 {
                    let h = self.hdr;
                    if h[0] != 1 {
                        return Err(format!("record version {}", h[0]));
                    }
                    let id = u16::from_be_bytes([h[2], h[3]]);
                    if id != REQUEST_ID {
                        return Err(format!("record for request id {id}"));
                    }
                    self.kind = h[1];
                    self.content_left = u16::from_be_bytes([h[4], h[5]]) as usize;
                    self.pad_left = h[6] as usize;
                    self.maybe_finish();
                }
                continue;
            }
            if self.content_left > 0 {
                let n = self.content_left.min(data.len());
                let chunk = &data[..n];
                match self.kind {
                    FCGI_STDOUT => self.on_stdout(chunk),
                    FCGI_STDERR => {
                        if self.stderr.len() < 64 * 1024 {
                            self.stderr.extend_from_slice(chunk);
                        }
                    }
                    FCGI_END_REQUEST => self.end_content.extend_from_slice(chunk),
                    _ => {}
                }
                self.content_left -= n;
                data = &data[n..];
                self.maybe_finish();
                continue;
            }
            let n = self.pad_left.min(data.len());
            self.pad_left -= n;
            data = &data[n..];
            self.maybe_finish();
        }
        Ok(())
    }

    fn maybe_finish(&mut self) {
        if self.hdr_len == 8 && self.content_left == 0 && self.pad_left == 0 {
            if self.kind == FCGI_END_REQUEST {
                self.ended = true;
            }
            self.hdr_len = 0;
        }
    }

    fn on_stdout(&mut self, chunk: &[u8]) {
        if self.keep_all {
            self.all.extend_from_slice(chunk);
        }
        if self.head_len.is_none() && self.head.len() < 64 * 1024 {
            let before = self.head.len();
            self.head.extend_from_slice(chunk);
            let from = before.saturating_sub(3);
            if let Some(i) = self.head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                self.head_len = Some(from + i + 4);
                self.head.truncate(from + i + 4);
            }
        }
        self.stdout_bytes += chunk.len() as u64;
    }

    /// `Status:` of the CGI header block (200 when absent).
    fn status(&self) -> u16 {
        let head = &self.head[..self.head_len.unwrap_or(self.head.len())];
        for line in head.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() >= 10 && line[..7].eq_ignore_ascii_case(b"status:") {
                let v = std::str::from_utf8(&line[7..]).unwrap_or("").trim();
                return v.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            }
        }
        200
    }

    fn body_len(&self) -> Option<u64> {
        self.head_len.map(|h| self.stdout_bytes - h as u64)
    }

    fn protocol_status(&self) -> Option<u8> {
        self.end_content.get(4).copied()
    }
}

// ---------------------------------------------------------------- transport

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    async fn connect(addr: &Addr) -> std::io::Result<Conn> {
        Ok(match addr {
            Addr::Unix(p) => Conn::Unix(UnixStream::connect(p).await?),
            Addr::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).await?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
        })
    }
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.write_all(data).await,
            Conn::Tcp(s) => s.write_all(data).await,
        }
    }
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf).await,
            Conn::Tcp(s) => s.read(buf).await,
        }
    }
}

enum Failure {
    /// The server had closed the connection: nothing of the response arrived.
    Stale(String),
    Other(String),
}

async fn exchange(conn: &mut Conn, request: &[u8], buf: &mut [u8], keep_all: bool) -> Result<Response, Failure> {
    let mut resp = Response::new(keep_all);
    if let Err(e) = conn.write_all(request).await {
        return Err(Failure::Stale(format!("write: {e}")));
    }
    while !resp.ended {
        match conn.read(buf).await {
            Ok(0) if !resp.any_byte => return Err(Failure::Stale("EOF before any response byte".into())),
            Ok(0) => return Err(Failure::Other("EOF inside the response".into())),
            Ok(n) => resp.feed(&buf[..n]).map_err(Failure::Other)?,
            Err(e) if !resp.any_byte => return Err(Failure::Stale(format!("read: {e}"))),
            Err(e) => return Err(Failure::Other(format!("read: {e}"))),
        }
    }
    Ok(resp)
}

fn check(cfg: &Config, resp: &Response) -> Result<(), String> {
    match resp.protocol_status() {
        Some(0) => {}
        other => return Err(format!("END_REQUEST protocolStatus {other:?}")),
    }
    let status = resp.status();
    if status != cfg.expect_status {
        return Err(format!("status {status}, expected {}", cfg.expect_status));
    }
    if let Some(want) = cfg.expect_len {
        match resp.body_len() {
            Some(got) if got == want => {}
            got => return Err(format!("body length {got:?}, expected {want}")),
        }
    }
    Ok(())
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    connects: u64,
    stale: u64,
    stdout_bytes: u64,
}

async fn worker(cfg: Arc<Config>, request: Arc<Vec<u8>>, measure_from: Instant, end: Instant) -> Stats {
    let mut stats = Stats::default();
    let mut conn: Option<Conn> = None;
    let mut reused = false;
    let mut server_closes = false;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let mut result = Err("unset".to_string());
        let mut connects = 0;
        let mut stale = 0;
        for _attempt in 0..3 {
            if conn.is_none() {
                match Conn::connect(&cfg.addr).await {
                    Ok(c) => {
                        conn = Some(c);
                        connects += 1;
                        reused = false;
                    }
                    Err(e) => {
                        result = Err(format!("connect: {e}"));
                        break;
                    }
                }
            }
            match exchange(conn.as_mut().unwrap(), &request, &mut buf, false).await {
                Ok(resp) => {
                    result = Ok(resp);
                    break;
                }
                Err(Failure::Stale(e)) if reused => {
                    // The server closed the idle connection after the previous response.
                    stale += 1;
                    server_closes = true;
                    conn = None;
                    result = Err(e);
                }
                Err(Failure::Stale(e) | Failure::Other(e)) => {
                    conn = None;
                    result = Err(e);
                    break;
                }
            }
        }
        let t1 = Instant::now();
        let counted = t0 >= measure_from && t1 <= end;
        if counted {
            stats.connects += connects;
            stats.stale += stale;
        }
        match result.and_then(|resp| check(&cfg, &resp).map(|()| resp)) {
            Ok(resp) => {
                if counted {
                    stats.latencies_us.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                    stats.stdout_bytes += resp.stdout_bytes;
                }
                if !cfg.keep_conn || server_closes {
                    conn = None;
                } else {
                    reused = true;
                }
            }
            Err(e) => {
                conn = None;
                if counted {
                    stats.errors += 1;
                    stats.first_error.get_or_insert(e);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    stats
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn once(cfg: &Config) -> i32 {
    let request = build_request(&cfg.path, false);
    let mut conn = match Conn::connect(&cfg.addr).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fcgi-loadgen: connect: {e}");
            return 2;
        }
    };
    let mut buf = vec![0u8; 256 * 1024];
    match exchange(&mut conn, &request, &mut buf, true).await {
        Ok(resp) => {
            let _ = std::io::stdout().write_all(&resp.all);
            let _ = std::io::stderr().write_all(&resp.stderr);
            match check(cfg, &resp) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("fcgi-loadgen: {e}");
                    1
                }
            }
        }
        Err(Failure::Stale(e) | Failure::Other(e)) => {
            eprintln!("fcgi-loadgen: {e}");
            2
        }
    }
}

/// CPU seconds (user + system) this process used so far, from /proc/self/stat.
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After "(comm)": state is field 3, utime 14 and stime 15 (1-based).
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / 100.0 // USER_HZ is 100 on Linux
}

fn main() {
    let cfg = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if cfg.once {
        let code = rt.block_on(once(&cfg));
        std::process::exit(code);
    }
    let cfg = Arc::new(cfg);
    let request = Arc::new(build_request(&cfg.path, cfg.keep_conn));
    let stats = rt.block_on(async {
        let measure_from = Instant::now() + Duration::from_secs_f64(cfg.warmup);
        let end = measure_from + Duration::from_secs_f64(cfg.duration);
        let tasks: Vec<_> = (0..cfg.connections)
            .map(|_| tokio::spawn(worker(cfg.clone(), request.clone(), measure_from, end)))
            .collect();
        let mut all = Stats::default();
        for t in tasks {
            let s = t.await.expect("worker task");
            all.latencies_us.extend(s.latencies_us);
            all.errors += s.errors;
            all.connects += s.connects;
            all.stale += s.stale;
            all.stdout_bytes += s.stdout_bytes;
            if all.first_error.is_none() {
                all.first_error = s.first_error;
            }
        }
        all
    });
    let mut lat = stats.latencies_us;
    lat.sort_unstable();
    let n = lat.len();
    let mean = if n > 0 { lat.iter().map(|&v| v as f64).sum::<f64>() / n as f64 } else { 0.0 };
    println!(
        "{{\"requests\":{n},\"errors\":{},\"rps\":{:.1},\"mbps\":{:.1},\"mean_us\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{},\"connects\":{},\"stale\":{},\"connections\":{},\"duration\":{},\"gen_cpu_s\":{:.2},\"first_error\":{}}}",
        stats.errors,
        n as f64 / cfg.duration,
        stats.stdout_bytes as f64 / cfg.duration / (1024.0 * 1024.0),
        mean,
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
        stats.connects,
        stats.stale,
        cfg.connections,
        cfg.duration,
        own_cpu_seconds(),
        stats.first_error.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
    );
}
