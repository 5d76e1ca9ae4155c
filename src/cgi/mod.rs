//! The CGI front end (RFC 3875): meta-variables from the process
//! environment, the body from stdin, the response on stdout. Before anything
//! else, stdout is moved to a private descriptor and fd 1 is pointed at
//! stderr, so that `print()` or a C extension writing to fd 1 can never
//! corrupt the response; and `HTTP_PROXY` is removed from the process
//! environment (httpoxy, CVE-2016-5385).

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
use crate::{log_error, log_info, log_warn};

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
    let mut meta: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
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
    let body = match body::receive(&mut meta, settings.max_body_size) {
        Ok(body) => body,
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
    let (mut sink, mut body) = (sink, body);
    if settings.warm.enabled {
        let length = environ.content_length.unwrap_or(0);
        match warm::serve(settings, &meta, body.take(), length, &mut sink.out) {
            warm::Relayed::Done(exit) => return exit,
            warm::Relayed::Cold { why, body: rest } => {
                log_warn!("warm mode: serving this request cold: {why}");
                body = rest;
            }
        }
    }
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

/// What the settings say about the app and its interpreter.
fn startup(settings: &Settings) -> Startup<'_> {
    Startup {
        app: settings.app.as_deref(),
        venv: settings.venv.as_deref(),
        chdir: settings.chdir.as_deref(),
        pythonpath: &settings.pythonpath,
        one_shot: true,
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

/// The request body before the app runs: a declared length checked
/// against `--max-body-size`; a chunked one (no CONTENT_LENGTH) read whole.
mod body {
    use std::io::{self, Read, Seek, Write};

    use crate::core::request::{is_chunked, meta_value, set_measured_length};

    /// Bodies up to this size stay in memory; larger ones go to an
    /// unlinked temporary file in `$TMPDIR`.
    const IN_MEMORY: usize = 1024 * 1024;

    /// Why a request is refused before the app runs.
    pub struct Refusal {
        pub status: u16,
        pub message: String,
    }

    /// `Some(body)`: a chunked body, read whole (its CONTENT_LENGTH added
    /// to `meta`); `None`: the app reads stdin as the CONTENT_LENGTH says.
    pub fn receive(
        meta: &mut Vec<(Vec<u8>, Vec<u8>)>,
        max: Option<u64>,
    ) -> Result<Option<Box<dyn Read + Send>>, Refusal> {
        let too_large = |what: String| Refusal {
            status: 413,
            message: format!(
                "{what} is over --max-body-size ({} bytes)",
                max.unwrap_or(0)
            ),
        };
        if let Some(length) = meta_value(meta, b"CONTENT_LENGTH").filter(|v| !v.is_empty()) {
            // (An invalid one is the environ's to refuse, with 400.)
            let declared = std::str::from_utf8(length)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let (Some(declared), Some(max)) = (declared, max)
                && declared > max
            {
                return Err(too_large(format!("the request body ({declared} bytes)")));
            }
            return Ok(None);
        }
        if !is_chunked(meta) {
            return Ok(None);
        }
        let (body, len) = read_all(&mut io::stdin().lock(), max).map_err(|e| match e {
            Stop::TooLarge => too_large("the chunked request body".into()),
            Stop::Io(e) => Refusal {
                status: 400,
                message: format!("cannot read the chunked request body: {e}"),
            },
        })?;
        set_measured_length(meta, len);
        Ok(Some(body))
    }

    enum Stop {
        TooLarge,
        Io(io::Error),
    }

    /// Everything `input` holds, in memory or (beyond [`IN_MEMORY`]) in a
    /// temporary file; more than `max` bytes: [`Stop::TooLarge`].
    fn read_all(
        input: &mut dyn Read,
        max: Option<u64>,
    ) -> Result<(Box<dyn Read + Send>, u64), Stop> {
        let mut memory = Vec::new();
        let mut file: Option<std::fs::File> = None;
        let mut len = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Stop::Io(e)),
            };
            len += n as u64;
            if max.is_some_and(|max| len > max) {
                return Err(Stop::TooLarge);
            }
            match &mut file {
                Some(file) => file.write_all(&chunk[..n]).map_err(Stop::Io)?,
                None if memory.len() + n <= IN_MEMORY => memory.extend_from_slice(&chunk[..n]),
                None => {
                    let mut spill = crate::fcgi::spool::temp_file(None).map_err(Stop::Io)?;
                    spill.write_all(&memory).map_err(Stop::Io)?;
                    spill.write_all(&chunk[..n]).map_err(Stop::Io)?;
                    memory = Vec::new();
                    file = Some(spill);
                }
            }
        }
        Ok(match file {
            Some(mut file) => {
                file.rewind().map_err(Stop::Io)?;
                (Box::new(file), len)
            }
            None => (Box::new(io::Cursor::new(memory)), len),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bodies_are_read_whole_in_memory_or_spilled_and_bounded() {
            for size in [0usize, 10, IN_MEMORY + 1] {
                let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
                let (mut body, len) = match read_all(&mut data.as_slice(), None) {
                    Ok(got) => got,
                    Err(_) => panic!("{size}: refused"),
                };
                assert_eq!(len, size as u64);
                let mut back = Vec::new();
                body.read_to_end(&mut back).unwrap();
                assert!(back == data, "{size}: not the same bytes");
            }
            assert!(matches!(
                read_all(&mut [0u8; 11].as_slice(), Some(10)),
                Err(Stop::TooLarge)
            ));
            assert!(read_all(&mut [0u8; 10].as_slice(), Some(10)).is_ok());
        }
    }
}
