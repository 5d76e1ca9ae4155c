//! Test support shared by the integration tests: run the real `wsgi-cgi`
//! binary with a CGI environment and stdin, parse what it printed, find the
//! test virtualenv, and skip (printing why) when something is missing.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    pub status_line: String,
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

/// Parse a CGI response (`Status:` + headers + blank line + body).
pub fn parse_cgi(raw: &[u8]) -> (u16, String, Vec<(String, String)>, Vec<u8>) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    match httparse::parse_headers(raw, &mut headers) {
        Ok(httparse::Status::Complete((end, parsed))) => {
            let headers: Vec<(String, String)> = parsed
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let status_line = headers
                .iter()
                .find(|(k, _)| k == "Status")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let status = status_line
                .get(..3)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let rest: Vec<_> = headers.into_iter().filter(|(k, _)| k != "Status").collect();
            (status, status_line, rest, raw[end..].to_vec())
        }
        other => panic!(
            "not a CGI response ({other:?}): {:?}",
            String::from_utf8_lossy(raw)
        ),
    }
}

/// A CGI request to run against the binary.
pub struct Cgi {
    args: Vec<String>,
    env: BTreeMap<String, Vec<u8>>,
    stdin: Vec<u8>,
    cwd: Option<PathBuf>,
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
            cwd: None,
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
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Cgi {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
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

    /// Run the real binary.
    pub fn run(self) -> CgiOutput {
        self.run_program(&wsgi_cgi())
    }

    /// Run `program` (the binary, or a script whose shebang names it).
    pub fn run_program(self, program: &Path) -> CgiOutput {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = Command::new(program);
        cmd.env_clear().args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, std::ffi::OsStr::from_bytes(v));
        }
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
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
        let (status, status_line, headers, body) = if out.stdout.is_empty() {
            (0, String::new(), vec![], vec![])
        } else {
            parse_cgi(&out.stdout)
        };
        CgiOutput {
            exit: out.status.code().unwrap_or(-1),
            status,
            status_line,
            headers,
            body,
            raw: out.stdout,
            stderr,
        }
    }
}
