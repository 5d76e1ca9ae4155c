//! Warm mode (`--warm`, `WSGI_WARM=1`, `warm = true`): the CGI process
//! does not start Python. It relays the request over FastCGI to a resident
//! `wsgi-fcgi` of the same app, which the first request starts and which
//! exits by itself after `warm-idle` seconds without a request.
//!
//! Per request: find the private directory ([`private_dir`]), derive the
//! responder's key from what defines the app ([`Place::key`]), connect to
//! its unix socket and check that the peer runs as our user, relay
//! ([`relay`]). No responder (or a dead one, or one older than the app's
//! code): under a lock in the directory, exactly one CGI process starts a
//! new one detached and waits for it, holding no Python; the others wait
//! for the lock, then connect. Whatever fails before the response begins
//! is served cold by the caller, with the reason logged once
//! ([`Relayed::Cold`]); a relay broken after the response began ends the
//! response truncated (exit status 7).
//!
//! New code: when the app file or `restart.txt` in the app's directory
//! (Passenger's convention) changed after the responder started (mtime or
//! ctime: FTP clients may keep an upload's old mtime), the next request
//! stops it (TERM: it finishes what it is serving) and starts a new one.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::cgi::body::Spill;
use crate::cgi::config::Settings;
use crate::core::exit::Exit;
use crate::core::request::meta_value;
use crate::core::response::ResponseWriter;
use crate::fcgi::proto::codec::RecordDecoder;
use crate::fcgi::proto::params::encode_pair;
use crate::fcgi::proto::record::{
    RecordType, Role, encode_begin_request, encode_stream, encode_stream_end,
};
use crate::python::appspec::{self, AppSpec, Source};
use crate::{log_error, log_info};

/// What the relay did.
pub enum Relayed {
    /// The responder answered (or its answer broke after it began: then
    /// the exit status says so).
    Done(Exit),
    /// Serve the request cold: why (logged by the caller), and the start
    /// of the request body that was read from stdin already (the rest is
    /// still there), which the cold path must read first.
    Cold {
        /// Why warm mode could not serve.
        why: String,
        /// The body read so far (`None`: stdin untouched).
        prefix: Option<Box<dyn Read + Send>>,
        /// The measured length of a chunked body read whole (it then has
        /// no CONTENT_LENGTH of its own).
        measured: Option<u64>,
    },
}

/// The launcher's warm path (bin/wsgi-cgi.rs): this request, from the
/// process environment and stdin, through the app's resident responder;
/// the response on stdout. No Python in this process.
pub fn handle(settings: &Settings) -> Relayed {
    let mut meta: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let mut sink = match crate::cgi::CgiSink::share_stdout() {
        Ok(sink) => sink,
        Err(e) => {
            log_error!("cannot set up stdout for the response: {e}");
            return Relayed::Done(Exit::ClientGone);
        }
    };
    let refuse = |sink: crate::cgi::CgiSink, status: u16, message: String, exit: Exit| {
        log_error!("rejecting request: {message}");
        let _ = ResponseWriter::new(Box::new(sink), false).fail(status);
        Relayed::Done(exit)
    };
    let chunked = crate::core::request::is_chunked(&meta)
        && meta_value(&meta, b"CONTENT_LENGTH").is_none_or(<[u8]>::is_empty);
    let body = match crate::cgi::body::receive(&mut meta, settings.max_body_size) {
        Ok(body) => body,
        Err(refusal) => return refuse(sink, refusal.status, refusal.message, Exit::BadRequest),
    };
    let length = match crate::core::environ::build(&meta) {
        Ok(environ) => environ.content_length.unwrap_or(0),
        Err(err) => return refuse(sink, 400, err.to_string(), Exit::BadRequest),
    };
    let measured = chunked.then_some(length);
    match serve(settings, &meta, body, length, sink.file()) {
        Relayed::Cold { why, prefix, .. } => Relayed::Cold {
            why,
            prefix,
            measured,
        },
        done => done,
    }
}

/// Default `warm-threads`.
const DEFAULT_THREADS: u32 = 4;
/// Default `warm-idle`, seconds (mod_fcgid's `FcgidIdleTimeout`).
const DEFAULT_IDLE: u64 = 300;
/// How long a request waits for a responder to start when no start has
/// been timed yet (later: twice the last start, plus half a second).
const FIRST_START_WAIT: Duration = Duration::from_secs(20);

/// Serve the request through the app's resident responder. `meta` are the
/// request's meta-variables, `body` a body read already (chunked) or
/// `None` for stdin, `length` the body's length, `out` the response channel.
pub fn serve(
    settings: &Settings,
    meta: &[(Vec<u8>, Vec<u8>)],
    body: Option<Box<dyn Read + Send>>,
    length: u64,
    out: &mut File,
) -> Relayed {
    let cold = |why: String, prefix| Relayed::Cold {
        why,
        prefix,
        measured: None,
    };
    let place = match Place::new(settings) {
        Ok(place) => place,
        Err(why) => return cold(why, body),
    };
    let conn = match place.responder() {
        Ok(conn) => conn,
        Err(why) => return cold(why, body),
    };
    let from_stdin = body.is_none();
    let mut source = body.unwrap_or_else(|| Box::new(io::stdin()));
    let idempotent = matches!(
        meta_value(meta, b"REQUEST_METHOD"),
        Some(b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
    );
    match relay(conn, meta, &mut *source, length, out) {
        Ok(()) => Relayed::Done(Exit::Success),
        Err(Broke::Output(e)) => {
            log_info!("warm mode: the client went away: {e}");
            Relayed::Done(Exit::ClientGone)
        }
        Err(Broke::AfterResponse(why)) => {
            log_error!("warm mode: the responder's answer broke off: {why}; response truncated");
            Relayed::Done(Exit::ClientGone)
        }
        Err(Broke::BeforeResponse { why, kept, sent }) => {
            if sent && !idempotent {
                // The app may have run: a second run (cold) could do twice
                // what a POST does. nginx does not retry those either.
                log_error!(
                    "warm mode: the responder failed after the whole request was sent, \
                     before answering ({why}); not repeating a non-idempotent request"
                );
                let _ = out.write_all(
                    b"Status: 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\nBad Gateway\n",
                );
                return Relayed::Done(Exit::AppError);
            }
            // What was read, then (a chunked body read whole) the rest of it.
            let prefix = match from_stdin {
                true => kept.then(Box::new(io::empty())),
                false => kept.then(source),
            };
            let why = format!("the relay failed before the response: {why}");
            cold(why, Some(prefix))
        }
    }
}

/// Where the app's responder lives, and how to start it.
struct Place {
    socket: PathBuf,
    lock: PathBuf,
    log: PathBuf,
    /// Written just before a start: its mtime is the start; its content
    /// how long the last start took, in milliseconds.
    started: PathBuf,
    /// Files whose change means new code.
    code: Vec<PathBuf>,
    command: Command,
}

impl Place {
    fn new(settings: &Settings) -> Result<Place, String> {
        let Some(text) = settings.app.as_deref() else {
            return Err("no application configured".into());
        };
        let cwd = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
        let base = settings.base_dir.clone().unwrap_or_else(|| cwd.clone());
        let workdir = settings.chdir.clone().unwrap_or_else(|| cwd.clone());
        let workdir = if workdir.is_relative() {
            cwd.join(workdir)
        } else {
            workdir
        };
        let spec = match appspec::choose(Some(text), &base, true)? {
            Some(spec) => spec,
            None => return Err("warm mode does not serve the demo app".into()),
        };
        let uid = nix::unistd::geteuid();
        let dir = match &settings.warm.dir {
            Some(dir) => dir.clone(),
            None => default_dir(uid)?,
        };
        private_dir(&dir, uid)?;
        let fcgi = std::env::current_exe()
            .map_err(|e| format!("cannot find this binary: {e}"))?
            .with_file_name("wsgi-fcgi");
        let fcgi_meta = std::fs::metadata(&fcgi)
            .map_err(|e| format!("cannot find wsgi-fcgi at {}: {e}", fcgi.display()))?;
        let threads = settings.warm.threads.unwrap_or(DEFAULT_THREADS).max(1);
        let idle = settings.warm.idle.unwrap_or(DEFAULT_IDLE).max(1);
        let env = responder_env(uid);

        let mut args: Vec<std::ffi::OsString> = vec!["--app".into(), spec_text(&spec).into()];
        if let Some(venv) = &settings.venv {
            args.extend(["--venv".into(), absolute(&cwd, venv).into()]);
        }
        args.extend(["--chdir".into(), workdir.clone().into()]);
        for dir in &settings.pythonpath {
            args.extend(["--pythonpath".into(), absolute(&cwd, dir).into()]);
        }
        if let Some(max) = settings.max_body_size {
            args.extend(["--max-body-size".into(), max.to_string().into()]);
        }
        args.extend([
            "--threads".into(),
            threads.to_string().into(),
            "--idle-exit".into(),
            idle.to_string().into(),
        ]);

        // Everything that defines the responder names it.
        let mut key = format!(
            "uid={uid}\nversion={}\nfcgi={}:{}:{}:{}\n",
            env!("CARGO_PKG_VERSION"),
            fcgi.display(),
            fcgi_meta.ino(),
            fcgi_meta.len(),
            fcgi_meta.mtime_nsec() + fcgi_meta.mtime() * 1_000_000_000,
        );
        for arg in &args {
            key.push_str(&arg.to_string_lossy());
            key.push('\n');
        }
        for (name, value) in &env {
            key.push_str(&format!("{name}={}\n", value.to_string_lossy()));
        }
        let name = format!("{:016x}", fnv1a(key.as_bytes()));

        let socket = dir.join(format!("{name}.sock"));
        let mut code = Vec::new();
        let app_dir = match &spec.source {
            Source::File(path) => {
                code.push(path.clone());
                path.parent().map_or(workdir.clone(), Path::to_path_buf)
            }
            Source::Module(_) => workdir.clone(),
        };
        code.push(app_dir.join("restart.txt"));

        let mut command = Command::new(&fcgi);
        command
            .args(&args)
            .arg("--bind")
            .arg(format!("unix:{}", socket.display()))
            .args([
                "--socket-mode",
                "600",
                "--same-uid-only",
                "--forward-stderr",
                "--lean-site",
            ])
            .current_dir(&workdir)
            .env_clear()
            .envs(env);
        Ok(Place {
            lock: dir.join(format!("{name}.lock")),
            log: dir.join(format!("{name}.log")),
            started: dir.join(format!("{name}.started")),
            socket,
            code,
            command,
        })
    }

    /// A connection to a current responder: the running one, or one this
    /// process (or another, under the lock) starts now.
    fn responder(mut self) -> Result<UnixStream, String> {
        if !self.stale()
            && let Ok(conn) = connect(&self.socket)
        {
            return Ok(conn);
        }
        let budget = self.start_budget();
        let deadline = Instant::now() + budget;
        let _lock = lock(&self.lock, deadline).map_err(|e| {
            format!(
                "waited {budget:?} for another request starting the responder ({}): {e}",
                self.lock.display()
            )
        })?;
        // Someone else may have started it meanwhile.
        let stale = self.stale();
        let old = match connect(&self.socket) {
            Ok(conn) if !stale => return Ok(conn),
            Ok(conn) => Some(conn),
            Err(_) => None,
        };
        // The path first, then the old responder: no request reaches it
        // any more, and it serves those already waiting before it exits.
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", self.socket.display())),
        }
        if let Some(conn) = old {
            stop(&conn);
        }
        self.start(deadline)
    }

    /// Whether the app's code changed after the responder started.
    fn stale(&self) -> bool {
        let Some(started) = modified(&self.started) else {
            return false;
        };
        self.code
            .iter()
            .filter_map(|path| changed(path))
            .any(|at| at > started)
    }

    /// How long a request waits for a start: twice the last one, plus
    /// half a second; [`FIRST_START_WAIT`] before any was timed.
    fn start_budget(&self) -> Duration {
        let last = std::fs::read_to_string(&self.started)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        match last {
            Some(ms) => Duration::from_millis(ms * 2 + 500).min(FIRST_START_WAIT * 3),
            None => FIRST_START_WAIT,
        }
    }

    /// Start the responder (detached: its own session, stdio to the log)
    /// and wait until it accepts, up to `deadline`.
    fn start(&mut self, deadline: Instant) -> Result<UnixStream, String> {
        let begun = Instant::now();
        rotate(&self.log);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let before = log.metadata().map_or(0, |m| m.len());
        let log_err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        // The start time first: code changed from here on is newer.
        let previous = std::fs::read_to_string(&self.started).unwrap_or_default();
        std::fs::write(&self.started, previous.trim())
            .map_err(|e| format!("cannot write {}: {e}", self.started.display()))?;
        self.command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: setsid() is async-signal-safe and touches no memory of
        // the parent; it detaches the responder from the web server's
        // session and process group (which may be killed with the request).
        unsafe {
            self.command.pre_exec(|| {
                nix::unistd::setsid().map_err(io::Error::from)?;
                Ok(())
            });
        }
        let mut child = self
            .command
            .spawn()
            .map_err(|e| format!("cannot start wsgi-fcgi: {e}"))?;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Ok(conn) = connect(&self.socket) {
                let took = begun.elapsed().as_millis();
                let _ = std::fs::write(&self.started, took.to_string());
                log_info!(
                    "warm mode: started responder {} in {took} ms ({})",
                    child.id(),
                    self.socket.display()
                );
                return Ok(conn);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the responder exited ({status}) before serving; its log ({}) says: {}",
                    self.log.display(),
                    log_since(&self.log, before)
                ));
            }
            if Instant::now() >= deadline {
                // It keeps starting; the next request will find it.
                return Err(format!(
                    "the responder was not ready within {:?} (still starting; see {})",
                    begun.elapsed(),
                    self.log.display()
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// `~/.wsgi-gateway`, the home taken from the password database (under
/// suEXEC and mod_fcgid there is no `HOME`).
fn default_dir(uid: nix::unistd::Uid) -> Result<PathBuf, String> {
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.dir.join(".wsgi-gateway")),
        Ok(None) => Err(format!(
            "uid {uid} has no entry in the password database (no home for the warm directory; set warm-dir)"
        )),
        Err(e) => Err(format!("the password database: {e}")),
    }
}

/// Create `dir` mode 0700, or check that it is a directory (not a
/// symlink) owned by `uid` that neither group nor others may enter.
fn private_dir(dir: &Path, uid: nix::unistd::Uid) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => Ok(()),
                // Another request made it meanwhile: check that one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => private_dir(dir, uid),
                Err(e) => Err(format!("cannot create the warm directory {shown}: {e}")),
            }
        }
        Err(e) => Err(format!("the warm directory {shown}: {e}")),
        Ok(meta) if !meta.is_dir() => Err(format!("the warm directory {shown} is not a directory")),
        Ok(meta) if meta.uid() != uid.as_raw() => Err(format!(
            "the warm directory {shown} is owned by uid {}, not by this process's uid {uid}",
            meta.uid()
        )),
        Ok(meta) if meta.mode() & 0o077 != 0 => Err(format!(
            "the warm directory {shown} has mode {:o}: group and others may enter it (chmod 700 {shown})",
            meta.mode() & 0o7777
        )),
        Ok(_) => Ok(()),
    }
}

/// The responder's environment: the locale, `PATH`, the time zone and the
/// user's identity (from the password database) — never the request's
/// meta-variables, which would stay in `os.environ` for every later
/// request, nor `WSGI_*` (the responder would take them for its flags).
fn responder_env(uid: nix::unistd::Uid) -> Vec<(String, std::ffi::OsString)> {
    let mut env: Vec<(String, std::ffi::OsString)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
        .filter(|(k, _)| {
            matches!(k.as_str(), "PATH" | "LANG" | "LANGUAGE" | "TZ" | "TMPDIR")
                || k.starts_with("LC_")
        })
        .collect();
    if let Ok(Some(user)) = nix::unistd::User::from_uid(uid) {
        env.push(("HOME".into(), user.dir.into()));
        env.push(("USER".into(), user.name.clone().into()));
        env.push(("LOGNAME".into(), user.name.into()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env.sort();
    env
}

/// The spec as the responder's `--app` takes it (files absolute).
fn spec_text(spec: &AppSpec) -> String {
    let target = match &spec.source {
        Source::Module(module) => module.clone(),
        Source::File(path) => path.display().to_string(),
    };
    match spec.factory {
        true => format!("{target}:{}({})", spec.callable, spec.args),
        false => format!("{target}:{}", spec.callable),
    }
}

fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    if path.is_relative() {
        cwd.join(path)
    } else {
        path.to_path_buf()
    }
}

/// FNV-1a, 64 bits: a name, not a secret (the directory is private).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The later of a file's mtime and ctime.
fn changed(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let ctime = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).ok()?,
            u32::try_from(meta.ctime_nsec()).ok()?,
        );
    Some(meta.modified().ok()?.max(ctime))
}

/// Connect to the responder's socket; its peer must run as our user.
fn connect(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{getsockopt, sockopt};
    let conn = UnixStream::connect(path)?;
    let cred = getsockopt(&conn, sockopt::PeerCredentials)?;
    if cred.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} is served by uid {}, not ours",
            path.display(),
            cred.uid()
        )));
    }
    Ok(conn)
}

/// Stop the responder on the other end of `conn` (TERM: it finishes the
/// requests it is serving, then exits).
fn stop(conn: &UnixStream) {
    use nix::sys::socket::{getsockopt, sockopt};
    if let Ok(cred) = getsockopt(conn, sockopt::PeerCredentials)
        && cred.pid() > 0
    {
        let pid = nix::unistd::Pid::from_raw(cred.pid());
        log_info!("warm mode: the app's code changed: stopping responder {pid}");
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

/// An exclusive lock on `path`, waited for up to `deadline`.
fn lock(path: &Path, deadline: Instant) -> io::Result<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}

/// Keep the responder's log under 8 MiB: the older half goes to `.1`.
fn rotate(log: &Path) {
    if std::fs::metadata(log).is_ok_and(|m| m.len() > 8 << 20) {
        let _ = std::fs::rename(log, log.with_extension("log.1"));
    }
}

/// The last lines a log got since `offset` (a failed start's reason).
fn log_since(path: &Path, offset: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let new = &text[usize::try_from(offset).unwrap_or(0).min(text.len())..];
    let new = String::from_utf8_lossy(new);
    let lines: Vec<&str> = new.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// How a relay ended early.
enum Broke {
    /// Before any response byte was written: `kept` is what was read of
    /// the request body; `sent`: the whole request had reached the
    /// responder.
    BeforeResponse {
        why: String,
        kept: Spill,
        sent: bool,
    },
    /// After the response began.
    AfterResponse(String),
    /// Writing the response failed (the client or server went away).
    Output(io::Error),
}

/// One request over `conn`: BEGIN_REQUEST and PARAMS, then STDIN as it is
/// read; then STDOUT to `out` as it arrives and STDERR to our stderr, up
/// to END_REQUEST.
fn relay(
    mut conn: UnixStream,
    meta: &[(Vec<u8>, Vec<u8>)],
    source: &mut dyn Read,
    length: u64,
    out: &mut File,
) -> Result<(), Broke> {
    let mut replay = Spill::default();
    let mut wire = BytesMut::with_capacity(16 * 1024);
    encode_begin_request(&mut wire, 1, Role::Responder, false);
    let mut params = BytesMut::new();
    for (name, value) in meta {
        encode_pair(&mut params, name, value);
    }
    encode_stream(&mut wire, RecordType::Params, 1, &params);
    encode_stream_end(&mut wire, RecordType::Params, 1);

    // The request, body as it is read (the responder receives it whole
    // before the app runs: nothing to read back meanwhile).
    let mut left = length;
    let mut chunk = vec![0u8; 64 * 1024];
    let sending: io::Result<()> = (|| {
        loop {
            if left == 0 {
                encode_stream_end(&mut wire, RecordType::Stdin, 1);
                return conn.write_all(&wire);
            }
            let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match source.read(&mut chunk[..want]) {
                Ok(0) => {
                    // A body shorter than its CONTENT_LENGTH: the cold path
                    // would see the same short body.
                    left = 0;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::other(format!("reading the request body: {e}"))),
            };
            replay.keep(&chunk[..n])?;
            left -= n as u64;
            encode_stream(&mut wire, RecordType::Stdin, 1, &chunk[..n]);
            if wire.len() >= 64 * 1024 {
                conn.write_all(&wire)?;
                wire.clear();
            }
        }
    })();
    if let Err(e) = sending {
        return Err(Broke::BeforeResponse {
            why: format!("sending the request: {e}"),
            kept: replay,
            sent: false,
        });
    }

    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut began = false;
    let mut decoder = RecordDecoder;
    let fail = |why: String, began: bool, replay: Spill| match began {
        true => Broke::AfterResponse(why),
        false => Broke::BeforeResponse {
            why,
            kept: replay,
            sent: true,
        },
    };
    loop {
        let record = match decoder.decode(&mut input) {
            Ok(Some(record)) => record,
            Ok(None) => {
                input.reserve(64 * 1024);
                let spare = input.spare_capacity_mut();
                // SAFETY: read() only writes into the spare capacity, and
                // only the `n` bytes it reports are marked initialized.
                let buf = unsafe {
                    std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), spare.len())
                };
                match conn.read(buf) {
                    Ok(0) => {
                        return Err(fail(
                            "the responder closed the connection before END_REQUEST".into(),
                            began,
                            replay,
                        ));
                    }
                    // SAFETY: read() initialized `n` bytes of the spare capacity.
                    Ok(n) => unsafe { input.set_len(input.len() + n) },
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(fail(format!("reading: {e}"), began, replay)),
                }
                continue;
            }
            Err(e) => return Err(fail(e.to_string(), began, replay)),
        };
        match RecordType::from_u8(record.kind) {
            Some(RecordType::Stdout) if !record.content.is_empty() => {
                began = true;
                out.write_all(&record.content).map_err(Broke::Output)?;
            }
            Some(RecordType::Stderr) if !record.content.is_empty() => {
                let _ = io::stderr().write_all(&record.content);
            }
            Some(RecordType::EndRequest) => {
                if !began {
                    return Err(fail("END_REQUEST without a response".into(), began, replay));
                }
                return Ok(());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_passed_on_absolute() {
        let base = Path::new("/srv/app");
        let spec = AppSpec::parse("app.py", base).unwrap();
        assert_eq!(spec_text(&spec), "/srv/app/app.py:application");
        let spec = AppSpec::parse("pkg.wsgi:make(debug=True)", base).unwrap();
        assert_eq!(spec_text(&spec), "pkg.wsgi:make(debug=True)");
    }

    #[test]
    fn a_private_dir_is_made_or_checked() {
        let uid = nix::unistd::geteuid();
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("warm");
        private_dir(&dir, uid).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        private_dir(&dir, uid).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = private_dir(&dir, uid).unwrap_err();
        assert!(
            err.contains("mode 750") && err.contains("chmod 700"),
            "{err}"
        );
        let link = top.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(
            private_dir(&link, uid)
                .unwrap_err()
                .contains("not a directory")
        );
        let other = nix::unistd::Uid::from_raw(uid.as_raw() + 1);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(
            private_dir(&dir, other)
                .unwrap_err()
                .contains("owned by uid")
        );
    }

    #[test]
    fn requests_making_the_directory_at_once_all_accept_it() {
        let uid = nix::unistd::geteuid();
        for round in 0..20 {
            let top = tempfile::tempdir().unwrap();
            let dir = top.path().join(format!("warm-{round}"));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let dir = dir.clone();
                    std::thread::spawn(move || private_dir(&dir, uid))
                })
                .collect();
            for t in threads {
                t.join().unwrap().unwrap();
            }
        }
    }
}
