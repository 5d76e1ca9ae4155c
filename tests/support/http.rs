//! Helpers for the tests that go through real web servers (tests/webservers.rs):
//! finding the servers and libpython, a free loopback port, a minimal HTTP/1.1
//! client (`Connection: close`, chunked or length-delimited bodies), a
//! [`Server`] guard that starts a server in its own process group, waits
//! until its port answers and kills the whole group when dropped, a small
//! JSON reader for the apps' replies, and request-body builders
//! (pseudo-random bytes, multipart/form-data).
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

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
    pub fn json(&self) -> Json {
        Json::parse(&self.text()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
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
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .expect("send request head");
    stream.write_all(body).expect("send request body");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read response to {method} {target}: {e}"));
    parse_response(&raw, method == "HEAD")
}

/// GET `target` from 127.0.0.1:`port`.
pub fn get(port: u16, target: &str) -> Response {
    request(port, "GET", target, &[], b"")
}

fn parse_response(raw: &[u8], head_only: bool) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let end = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(end)) => end,
        other => panic!(
            "not an HTTP response ({other:?}): {:?}",
            String::from_utf8_lossy(raw)
        ),
    };
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut response = Response {
        status: parsed.code.unwrap_or(0),
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end..];
    response.body = if head_only {
        Vec::new()
    } else if response
        .header("Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else if let Some(len) = response
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok())
    {
        assert!(
            rest.len() >= len,
            "short body: {} of {len} bytes",
            rest.len()
        );
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    response
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_text, 16).expect("chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
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
    pub fn start(
        name: &str,
        logs: &[&str],
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
            match server.wait_until_listening() {
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

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("it exited with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the port did not answer within 30 s".into());
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

    /// The current length of each log file, to look only at what comes after.
    pub fn log_mark(&self) -> Vec<u64> {
        self.logs
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .collect()
    }

    /// Wait (up to 10 s: servers write CGI stderr asynchronously) until the
    /// logs written since `mark` contain every one of `needles`; returns them.
    pub fn log_since(&self, mark: &[u64], needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut new = String::new();
            for (path, &from) in self.logs.iter().zip(mark) {
                let bytes = std::fs::read(path).unwrap_or_default();
                let from = usize::try_from(from).unwrap().min(bytes.len());
                new.push_str(&String::from_utf8_lossy(&bytes[from..]));
            }
            if needles.iter().all(|n| new.contains(n)) || Instant::now() > deadline {
                return new;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("sh")
            .args(["-c", "kill -s \"$0\" -- \"-$1\" 2>/dev/null", signal])
            .arg(self.child.id().to_string())
            .status();
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

/// A JSON value, enough to check the apps' replies.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// Parse a complete JSON text.
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let value = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at {}", p.i));
        }
        Ok(value)
    }
    /// The member `key` of an object (`Null` if absent or not an object).
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(members) => members
                .iter()
                .find(|(k, _)| k == key)
                .map_or(&Json::Null, |(_, v)| v),
            _ => &Json::Null,
        }
    }
    /// True if this is an object with a member `key` (even `null`).
    pub fn has(&self, key: &str) -> bool {
        matches!(self, Json::Obj(members) if members.iter().any(|(k, _)| k == key))
    }
    pub fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }
    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(value)
        } else {
            Err(format!("bad literal at {}", self.i))
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.eat(b':')?;
                    members.push((key, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(members));
                        }
                        _ => return Err(format!("bad object at {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return Err(format!("bad array at {}", self.i)),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => {
                let start = self.i;
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|c| b"+-.eE0123456789".contains(c))
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                text.parse()
                    .map(Json::Num)
                    .map_err(|_| format!("bad number at {start}"))
            }
            None => Err("unexpected end".into()),
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(digits).map_err(|e| e.to_string())?, 16)
            .map_err(|e| e.to_string())
    }
    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("bad escape")?;
                    self.i += 1;
                    let ch = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let mut code = self.hex4()?;
                            if (0xD800..0xDC00).contains(&code)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                code = 0x10000 + ((code - 0xD800) << 10) + (self.hex4()? - 0xDC00);
                            }
                            char::from_u32(code).ok_or("bad \\u escape")?
                        }
                        other => other as char,
                    };
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                _ => out.push(c),
            }
        }
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

/// SHA-256 of `data` in hex, by coreutils' `sha256sum`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("sha256sum output");
    writer.join().unwrap().expect("feed sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A multipart/form-data body: `(content type, body)` for text `fields`
/// plus one file field `(name, filename, data)`.
pub fn multipart(fields: &[(&str, &str)], file: (&str, &str, &[u8])) -> (String, Vec<u8>) {
    let boundary = "wsgi-gateway-test-boundary-7d93a2";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    let (name, filename, data) = file;
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
