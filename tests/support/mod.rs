//! Test support shared by the integration tests: run the real `wsgi-cgi`
//! binary with a CGI environment and stdin, parse what it printed, find the
//! test virtualenv, and skip (printing why) when something is missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub mod digest;
pub mod fcgi;
#[macro_use]
pub mod http;

/// A loopback TCP port that was free a moment ago (the caller retries if
/// something takes it first).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A multipart/form-data body with `boundary`: `(name, value, filename)`
/// for each field (a filename makes it a file field).
pub fn multipart(boundary: &str, fields: &[(&str, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value, filename) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let disposition = match filename {
            Some(f) => format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            ),
            None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
        };
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture app under tests/apps.
pub fn app(name: &str) -> PathBuf {
    root().join("tests/apps").join(name)
}

/// The `wsgi-cgi` binary cargo built for this test run.
pub fn wsgi_cgi() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wsgi-cgi"))
}

/// True when missing prerequisites must fail rather than skip (CI).
pub fn strict() -> bool {
    std::env::var_os("WSGI_TEST_STRICT").is_some_and(|v| v == "1")
}

/// Print why a test is skipped, or panic under `WSGI_TEST_STRICT=1`.
pub fn skip(why: &str) {
    if strict() {
        panic!("prerequisite missing (WSGI_TEST_STRICT=1): {why}");
    }
    eprintln!("skipped: {why}");
}

/// The test virtualenv with Flask and Django (tests/setup-venv.sh).
pub fn venv() -> Option<PathBuf> {
    let path = std::env::var_os("WSGI_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-venv"));
    if path.join("pyvenv.cfg").is_file() {
        Some(path)
    } else {
        skip(&format!(
            "no test virtualenv at {} (run tests/setup-venv.sh or tests/run)",
            path.display()
        ));
        None
    }
}

/// What one CGI run printed.
#[derive(Debug)]
pub struct CgiOutput {
    pub exit: i32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw: Vec<u8>,
    pub stderr: String,
}

impl CgiOutput {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Header `(name, value)` pairs, in order.
pub type Headers = Vec<(String, String)>;

/// Parse a CGI response: headers (latin-1 decoded, `Status` included),
/// blank line, body. The status is RFC 3875's, from the library's one
/// reading (`Status:`; 302 for a bare `Location:`; otherwise 200). `None`
/// when the header block is not complete and well formed.
pub fn parse_cgi(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let Ok(httparse::Status::Complete((end, parsed))) = httparse::parse_headers(raw, &mut headers)
    else {
        return None;
    };
    let headers = parsed
        .iter()
        .map(|h| {
            let value = h.value.iter().map(|&b| char::from(b)).collect();
            (h.name.to_string(), value)
        })
        .collect();
    Some((wsgi_gateway::fcgi::client::cgi_status(raw), headers, end))
}

/// Poll `done` until it holds or `timeout` passes; its last answer.
pub fn wait_until(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    done()
}

/// A CGI request to run against the binary.
pub struct Cgi {
    args: Vec<String>,
    env: BTreeMap<String, Vec<u8>>,
    stdin: Vec<u8>,
    user: Option<(u32, u32)>,
}

impl Cgi {
    /// A GET for `path` with the usual meta-variables.
    pub fn get(path: &str) -> Cgi {
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", ""),
            ("QUERY_STRING", ""),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("PATH", "/usr/bin:/bin"),
        ] {
            env.insert(k.to_string(), v.as_bytes().to_vec());
        }
        env.insert("PATH_INFO".into(), path.as_bytes().to_vec());
        Cgi {
            args: vec![],
            env,
            stdin: vec![],
            user: None,
        }
    }

    pub fn method(self, method: &str) -> Cgi {
        self.env("REQUEST_METHOD", method)
    }
    pub fn env(mut self, key: &str, value: &str) -> Cgi {
        self.env.insert(key.into(), value.as_bytes().to_vec());
        self
    }
    pub fn env_bytes(mut self, key: &str, value: &[u8]) -> Cgi {
        self.env.insert(key.into(), value.to_vec());
        self
    }
    pub fn unset(mut self, key: &str) -> Cgi {
        self.env.remove(key);
        self
    }
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Cgi {
        self.args.push(arg.as_ref().to_string_lossy().into_owned());
        self
    }
    pub fn app(self, spec: impl AsRef<Path>) -> Cgi {
        self.arg("--app").arg(spec.as_ref())
    }
    /// Attach a body and its CONTENT_LENGTH.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Cgi {
        self.env
            .insert("CONTENT_TYPE".into(), content_type.as_bytes().to_vec());
        self.env
            .insert("CONTENT_LENGTH".into(), body.len().to_string().into_bytes());
        self.stdin = body.to_vec();
        self
    }
    /// Raw stdin, leaving CONTENT_LENGTH alone.
    pub fn stdin(mut self, data: &[u8]) -> Cgi {
        self.stdin = data.to_vec();
        self
    }

    /// Run as this uid and gid (the test runs as root).
    pub fn user(mut self, uid: u32, gid: u32) -> Cgi {
        self.user = Some((uid, gid));
        self
    }

    /// Run the real binary.
    pub fn run(self) -> CgiOutput {
        self.run_program(&wsgi_cgi())
    }

    /// Run `program` (the binary, or a script whose shebang names it).
    pub fn run_program(self, program: &Path) -> CgiOutput {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = Command::new(program);
        cmd.env_clear().args(&self.args);
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        for (k, v) in &self.env {
            cmd.env(k, std::ffi::OsStr::from_bytes(v));
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wsgi-cgi");
        let mut stdin = child.stdin.take().unwrap();
        let data = self.stdin.clone();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait for wsgi-cgi");
        let _ = writer.join();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let (status, headers, body) = if out.stdout.is_empty() {
            (0, vec![], vec![])
        } else {
            let (status, headers, end) = parse_cgi(&out.stdout).unwrap_or_else(|| {
                panic!(
                    "not a CGI response: {:?}\nstderr: {stderr}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
            let headers = headers.into_iter().filter(|(k, _)| k != "Status").collect();
            (status, headers, out.stdout[end..].to_vec())
        };
        CgiOutput {
            exit: out.status.code().unwrap_or(-1),
            status,
            headers,
            body,
            raw: out.stdout,
            stderr,
        }
    }
}
