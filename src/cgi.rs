//! The CGI front end (RFC 3875): meta-variables from the process
//! environment, the body from stdin, the response on stdout. Before anything
//! else, stdout is moved to a private descriptor and fd 1 is pointed at
//! stderr, so that `print()` or a C extension writing to fd 1 can never
//! corrupt the response; and `HTTP_PROXY` is removed from the process
//! environment (httpoxy, CVE-2016-5385).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use bytes::Bytes;
use pyo3::prelude::*;

use crate::appspec::{self, AppSpec};
use crate::config::Settings;
use crate::environ::{self, Environ};
use crate::input::Input;
use crate::request::BodyReader;
use crate::response::{Head, ResponseWriter, Sink};
use crate::{app, log_error, log_info, python, site, wire};

/// Exit statuses of `wsgi-cgi`; each says what happened to the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The response was sent completely (whatever its HTTP status).
    Served = 0,
    /// Invalid command line (clap's usage error).
    Usage = 2,
    /// Configuration, virtualenv or interpreter start-up failed; 500 sent.
    Config = 3,
    /// The application failed to import; 500 sent.
    AppLoad = 4,
    /// The application failed before sending headers; 500 sent.
    AppError = 5,
    /// The application failed after headers were sent; response truncated.
    Truncated = 6,
    /// The web server or client closed the output early.
    ClientGone = 7,
    /// The request was malformed (invalid CONTENT_LENGTH); 400 sent.
    BadRequest = 8,
}

impl From<app::Outcome> for Exit {
    fn from(outcome: app::Outcome) -> Exit {
        match outcome {
            app::Outcome::Complete => Exit::Served,
            app::Outcome::AppFailed => Exit::AppError,
            app::Outcome::Truncated => Exit::Truncated,
            app::Outcome::ClientGone => Exit::ClientGone,
        }
    }
}

/// The exit status table for `--help` and the README.
pub const EXIT_TABLE: &str = "Exit status:
  0  the response was sent completely (whatever its HTTP status)
  2  invalid command line
  3  configuration, virtualenv or interpreter start-up failed (500 sent)
  4  the application failed to import (500 sent)
  5  the application failed before sending headers (500 sent)
  6  the application failed after headers were sent (response truncated)
  7  the web server or client closed the output early
  8  malformed request, e.g. an invalid CONTENT_LENGTH (400 sent)";

/// The response channel: the original stdout, moved off fd 1.
struct CgiSink {
    out: File,
}

impl CgiSink {
    /// Take stdout for the response and point fd 1 at stderr.
    fn take_stdout() -> io::Result<CgiSink> {
        let stdout = io::stdout();
        let raw = nix::fcntl::fcntl(stdout.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) returned a new descriptor we own.
        let out = unsafe { OwnedFd::from_raw_fd(raw) };
        nix::unistd::dup2_stdout(io::stderr().as_fd())?;
        Ok(CgiSink {
            out: File::from(out),
        })
    }
}

impl Sink for CgiSink {
    fn send(&mut self, head: Option<&Head>, body: Bytes, _last: bool) -> io::Result<()> {
        let mut buf = wire::head_block(head);
        if buf.len() + body.len() <= 64 * 1024 {
            buf.extend_from_slice(&body);
            self.out.write_all(&buf)
        } else {
            self.out.write_all(&buf)?;
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
        self.out.write_all(&wire::head_block(head))?;
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
    let meta: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
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
        let exit = serve(py, settings, spec.as_ref(), &environ, writer, &phases);
        python::run_exit_hooks(py);
        exit
    });
    phases.mark("done");
    exit
}

/// Validate settings, change directory, start the interpreter.
fn prepare(settings: &Settings) -> Result<Option<AppSpec>, String> {
    let base = match &settings.base_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir()
            .map_err(|e| format!("cannot read the current directory: {e}"))?,
    };
    // (A web server sets GATEWAY_INTERFACE; a terminal does not.)
    let by_server = std::env::var_os("GATEWAY_INTERFACE").is_some();
    let spec = appspec::choose(settings.app.as_deref(), &base, by_server)?;
    if let Some(dir) = &settings.chdir {
        std::env::set_current_dir(dir)
            .map_err(|e| format!("cannot chdir to {}: {e}", dir.display()))?;
    }
    let program_name = match &settings.venv {
        Some(venv) => python::venv_program_name(venv).map_err(|e| e.to_string())?,
        None => python::BUILD_PYTHON.into(),
    };
    // The interpreter must be reachable by the web server's user; otherwise
    // the loader may silently take another libpython of the same soname.
    std::fs::metadata(&program_name).map_err(|e| {
        format!(
            "cannot access the Python interpreter {}: {e} (the web server's user needs search permission on every directory above it)",
            program_name.display()
        )
    })?;
    python::initialize(&program_name, true).map_err(|e| e.to_string())?;
    Ok(spec)
}

/// Run `f` with the cyclic garbage collector paused: importing a framework
/// triggers dozens of collections that find nothing worth freeing in a
/// process that lives for one request (Flask: ~10 ms of ~100 ms).
fn without_gc<'py, T>(py: Python<'py>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    let gc = py.import("gc")?;
    let was_enabled = gc.call_method0("isenabled")?.is_truthy()?;
    gc.call_method0("disable")?;
    let result = f();
    if was_enabled {
        gc.call_method0("enable")?;
    }
    result
}

fn serve(
    py: Python<'_>,
    settings: &Settings,
    spec: Option<&AppSpec>,
    environ: &Environ<'_>,
    mut writer: ResponseWriter,
    phases: &Phases,
) -> Exit {
    let mut path = settings.pythonpath.clone();
    if let Ok(cwd) = std::env::current_dir() {
        path.push(cwd);
    }
    let loaded = site::install(py, settings.venv.as_deref())
        .and_then(|()| python::prepend_sys_path(py, &path))
        .and_then(|()| without_gc(py, || app::load(py, spec)));
    phases.mark("app imported");
    let application = match loaded {
        Ok(application) => application,
        Err(err) => {
            let name = settings.app.as_deref().unwrap_or("<demo>");
            log_error!("failed to load the application {name}; traceback follows");
            err.display(py);
            let _ = writer.fail(500);
            return Exit::AppLoad;
        }
    };
    let limit = match environ.content_length {
        Some(length) => Some(length),
        // RFC 3875 §4.1.2: no CONTENT_LENGTH means no body.
        None => Some(0),
    };
    let input = Input::new(BodyReader::new(Box::new(io::stdin()), limit));
    let errors = py.import("sys").and_then(|sys| sys.getattr("stderr"));
    let dict = match errors.and_then(|errors| {
        app::environ_dict(
            py,
            environ,
            environ::CGI,
            input,
            errors,
            &mut app::StrCache::none(),
        )
    }) {
        Ok(dict) => dict,
        Err(err) => {
            err.display(py);
            let _ = writer.fail(500);
            return Exit::AppError;
        }
    };
    let (outcome, writer) = app::serve(py, &application, dict, writer);
    // Close the response before atexit handlers run: the server can finish.
    drop(writer);
    Exit::from(outcome)
}
