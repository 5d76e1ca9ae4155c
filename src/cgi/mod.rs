//! The CGI front end (RFC 3875). `wsgi-cgi` (no Python) parses its settings
//! ([`cli`]) and relays warm-mode requests ([`warm`]); the cold path,
//! [`run`], serves in-process in `wsgi-fcgi __cgi`: meta-variables from the
//! process environment, the body from stdin, the response on stdout. Before anything
//! else, stdout is moved to a private descriptor and fd 1 is pointed at
//! stderr, so that `print()` or a C extension writing to fd 1 can never
//! corrupt the response; and `HTTP_PROXY` is removed from the process
//! environment (httpoxy, CVE-2016-5385).

pub mod body;
pub mod cli;
pub mod config;
pub mod warm;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use bytes::Bytes;
use pyo3::prelude::*;

use crate::cgi::config::Settings;
use crate::core::environ::{self, Environ};
use crate::core::request::BodyReader;
use crate::core::response::{Head, ResponseWriter, Sink};
use crate::core::wire;
use crate::python::appspec::AppSpec;
use crate::python::environ::StrCache;
use crate::python::input::Input;
use crate::python::startup::Startup;
use crate::python::{app, interpreter};
use crate::{log_error, log_info};

pub use crate::core::exit::Exit;

/// The exit status table for `--help` and the README.
pub const EXIT_TABLE: &str = "Exit status:
  0  the response was sent completely (whatever its HTTP status)
  2  invalid command line
  3  configuration, virtualenv or interpreter start-up failed (500 sent)
  4  the application failed to import (500 sent)
  5  the application failed before sending headers (500 sent)
  6  the application failed after headers were sent (response truncated)
  7  the web server or client closed the output early
  8  malformed request, e.g. an invalid CONTENT_LENGTH (400 sent), or a body
     over --max-body-size (413 sent)";

/// The response channel: the original stdout, moved off fd 1.
pub struct CgiSink {
    out: File,
}

impl CgiSink {
    /// Take stdout for the response and point fd 1 at stderr.
    fn take_stdout() -> io::Result<CgiSink> {
        let sink = CgiSink::share_stdout()?;
        nix::unistd::dup2_stdout(io::stderr().as_fd())?;
        Ok(sink)
    }

    /// A duplicate of stdout (close-on-exec), fd 1 left as it is: the
    /// launcher's, which may still exec the cold path.
    pub fn share_stdout() -> io::Result<CgiSink> {
        let stdout = io::stdout();
        let raw = nix::fcntl::fcntl(stdout.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) returned a new descriptor we own.
        let out = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(CgiSink {
            out: File::from(out),
        })
    }

    /// The response channel itself.
    pub fn file(&mut self) -> &mut File {
        &mut self.out
    }
}

impl Sink for CgiSink {
    fn send(&mut self, head: Option<&Head>, body: Bytes, _last: bool) -> io::Result<()> {
        let head = wire::head_block(head);
        if head.len() + body.len() <= 64 * 1024 {
            let mut buf = Vec::with_capacity(head.len() + body.len());
            buf.extend_from_slice(head);
            buf.extend_from_slice(&body);
            self.out.write_all(&buf)
        } else {
            self.out.write_all(head)?;
            self.out.write_all(&body)
        }
    }

    fn send_file(
        &mut self,
        head: Option<&Head>,
        file: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> io::Result<Option<u64>> {
        self.out.write_all(wire::head_block(head))?;
        let mut position = i64::try_from(offset).map_err(io::Error::other)?;
        let mut sent = 0u64;
        while sent < len {
            let want = usize::try_from(len - sent)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match nix::sys::sendfile::sendfile(&self.out, file, Some(&mut position), want) {
                Ok(0) => break, // the file shrank
                Ok(n) => sent += n as u64,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                    return copy_file(&mut self.out, file, position, len - sent)
                        .map(|n| Some(sent + n));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(sent))
    }
}

/// Copy without sendfile (an output that does not support it).
fn copy_file(out: &mut File, file: BorrowedFd<'_>, mut position: i64, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0;
    while copied < len {
        let want = buf
            .len()
            .min(usize::try_from(len - copied).unwrap_or(usize::MAX));
        let n = nix::sys::uio::pread(file, &mut buf[..want], position)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        copied += n as u64;
        position += n as i64;
    }
    Ok(copied)
}

/// Optional phase timing (`WSGI_CGI_TIMING=1`), to see where start-up goes.
struct Phases {
    start: Instant,
    enabled: bool,
}

impl Phases {
    fn mark(&self, phase: &str) {
        if self.enabled {
            log_info!(
                "{phase} at {:.2} ms",
                self.start.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}

/// Refuse the request before any settings are usable: log `message`, answer
/// a generic 500 (the web server's client never sees the message).
pub fn refuse(message: &str) -> Exit {
    log_error!("{message}");
    if let Ok(sink) = CgiSink::take_stdout() {
        let _ = ResponseWriter::new(Box::new(sink), false).fail(500);
    }
    Exit::Config
}

/// Serve one CGI request with `settings`; returns the exit status.
pub fn run(settings: &Settings) -> Exit {
    let phases = Phases {
        start: Instant::now(),
        enabled: std::env::var_os("WSGI_CGI_TIMING").is_some_and(|v| v == "1"),
    };
    let mut meta: crate::core::meta::MetaVariables = std::env::vars_os()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let sink = match CgiSink::take_stdout() {
        Ok(sink) => sink,
        Err(err) => {
            log_error!("cannot set up stdout for the response: {err}");
            return Exit::ClientGone;
        }
    };
    // SAFETY: still single-threaded: no other thread can read the environment.
    unsafe { std::env::remove_var("HTTP_PROXY") };

    // A chunked body (Apache mod_cgi/mod_cgid: no CONTENT_LENGTH, the
    // decoded body on stdin) is read whole first and measured, as nginx does
    // before FastCGI: the app sees a CONTENT_LENGTH.
    // What a warm-mode relay had read of the body before it fell back to
    // this cold path (bin/wsgi-cgi.rs), then the rest of stdin.
    let prefix = take_body_fd(&mut meta);
    let body = match body::receive(&mut meta, settings.max_body_size) {
        Ok(body) => body.or(prefix),
        Err(refusal) => {
            log_error!("rejecting request: {}", refusal.message);
            let _ = ResponseWriter::new(Box::new(sink), false).fail(refusal.status);
            return Exit::BadRequest;
        }
    };
    let environ = match environ::build(&meta) {
        Ok(environ) => environ,
        Err(err) => {
            log_error!("rejecting request: {err}");
            let _ = ResponseWriter::new(Box::new(sink), false).fail(400);
            return Exit::BadRequest;
        }
    };
    let mut writer = ResponseWriter::new(Box::new(sink), environ.is_head);
    let prepared = prepare(settings);
    phases.mark("interpreter ready");
    let spec = match prepared {
        Ok(spec) => spec,
        Err(message) => {
            log_error!("{message}");
            let _ = writer.fail(500);
            return Exit::Config;
        }
    };
    let exit = Python::attach(|py| {
        let exit = serve(
            py,
            (settings, spec.as_ref()),
            &environ,
            body,
            writer,
            &phases,
        );
        interpreter::run_exit_hooks(py);
        exit
    });
    phases.mark("done");
    exit
}

/// The environment variable naming a descriptor that holds the start of
/// the request body (a warm-mode relay's fallback), read before stdin.
pub const BODY_FD_ENV: &str = "WSGI_CGI_BODY_FD";

/// [`BODY_FD_ENV`]'s descriptor, chained with stdin; the variable is
/// removed from `meta` and the process environment.
fn take_body_fd(meta: &mut crate::core::meta::MetaVariables) -> Option<Box<dyn io::Read + Send>> {
    let value = std::env::var(BODY_FD_ENV).ok()?;
    meta.retain(|k, _| k != BODY_FD_ENV.as_bytes());
    // SAFETY: still single-threaded: no other thread reads the environment.
    unsafe { std::env::remove_var(BODY_FD_ENV) };
    let fd: std::os::fd::RawFd = value.parse().ok().filter(|&fd| fd > 2)?;
    // The descriptor must be open (fcntl F_GETFD), else it is not ours.
    nix::fcntl::fcntl(
        // SAFETY: only probed here; owned below once known to be open.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .ok()?;
    // SAFETY: the launcher passed this descriptor to us for this purpose,
    // and nothing else in this process uses it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Some(Box::new(io::Read::chain(file, io::stdin())))
}

/// What the settings say about the app and its interpreter.
fn startup(settings: &Settings) -> Startup<'_> {
    Startup {
        app: settings.app.as_deref(),
        venv: settings.venv.as_deref(),
        chdir: settings.chdir.as_deref(),
        pythonpath: &settings.pythonpath,
        lean: true,
    }
}

/// Change directory, start the interpreter.
fn prepare(settings: &Settings) -> Result<Option<AppSpec>, String> {
    let base = match &settings.base_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))?,
    };
    // (A web server sets GATEWAY_INTERFACE; a terminal does not.)
    let by_server = std::env::var_os("GATEWAY_INTERFACE").is_some();
    startup(settings).interpreter(&base, by_server)
}

fn serve(
    py: Python<'_>,
    (settings, spec): (&Settings, Option<&AppSpec>),
    environ: &Environ<'_>,
    body: Option<Box<dyn io::Read + Send>>,
    mut writer: ResponseWriter,
    phases: &Phases,
) -> Exit {
    let loaded = startup(settings).import(py, spec);
    phases.mark("app imported");
    let Some(application) = loaded else {
        let _ = writer.fail(500);
        return Exit::AppLoad;
    };
    let limit = match environ.content_length {
        Some(length) => Some(length),
        // RFC 3875 §4.1.2: no CONTENT_LENGTH means no body.
        None => Some(0),
    };
    let source = body.unwrap_or_else(|| Box::new(io::stdin()));
    let input = Input::new(BodyReader::new(source, limit));
    let errors = py.import("sys").and_then(|sys| sys.getattr("stderr"));
    let (outcome, writer) = app::run(
        py,
        &application,
        environ,
        environ::CGI,
        input,
        errors,
        &mut StrCache::none(),
        writer,
    );
    // Close the response before atexit handlers run: the server can finish.
    drop(writer);
    Exit::from(outcome)
}
