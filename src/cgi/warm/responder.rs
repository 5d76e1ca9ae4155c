//! Where an app's resident responder lives and how it starts: the private
//! directory, the key naming the responder, the lock under which exactly
//! one request starts it, the check for new code, and the stop of an old
//! one.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::cgi::config::Settings;
use crate::log_info;
use crate::python::appspec::{self, AppSpec, Source};

/// Default `warm-threads`.
const DEFAULT_THREADS: u32 = 4;
/// Default `warm-idle`, seconds (mod_fcgid's `FcgidIdleTimeout`).
const DEFAULT_IDLE: u64 = 300;
/// How long a request waits for a responder to start when no start has
/// been timed yet (later: twice the last start, plus half a second).
const FIRST_START_WAIT: Duration = Duration::from_secs(20);
/// After a responder exited before serving (its app does not import, say),
/// requests are served cold without trying again for this long, doubled
/// for each failure in a row up to [`MAX_BACKOFF`] — or until the app's
/// code changes.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// The longest back-off (mod_fcgid's `FcgidMinProcessLifeTime` scale).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where the app's responder lives, and how to start it.
pub(super) struct Place {
    socket: PathBuf,
    lock: PathBuf,
    log: PathBuf,
    /// Written just before a start: its mtime is the start; its content
    /// how long the last start took, in milliseconds.
    started: PathBuf,
    /// Written when a responder exited before serving: its mtime is the
    /// failure; its content how many starts in a row failed.
    failed: PathBuf,
    /// Files whose change means new code.
    code: Vec<PathBuf>,
    command: Command,
}

impl Place {
    pub(super) fn new(settings: &Settings) -> Result<Place, String> {
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
            failed: dir.join(format!("{name}.failed")),
            socket,
            code,
            command,
        })
    }

    /// A connection to a current responder: the running one, or one this
    /// process (or another, under the lock) starts now — then `.1` is
    /// true, and the caller tells [`Place::outcome`] whether it answered.
    pub(super) fn responder(&mut self) -> Result<(UnixStream, bool), String> {
        if !self.stale()
            && let Ok(conn) = connect(&self.socket)
        {
            return Ok((conn, false));
        }
        self.backing_off()?;
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
            Ok(conn) if !stale => return Ok((conn, false)),
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
        // Another request's start may just have failed.
        self.backing_off()?;
        match self.start(deadline) {
            Ok(conn) => Ok((conn, true)),
            Err(Failed::Exited(why)) => {
                self.outcome(false);
                Err(why)
            }
            Err(Failed::NotYet(why)) => Err(why),
        }
    }

    /// Whether a responder started by this request answered it: a
    /// responder that cannot answer its first request (its app does not
    /// import, it crashed) is not started again for a while
    /// ([`Place::backing_off`]).
    pub(super) fn outcome(&self, answered: bool) {
        if answered {
            let _ = std::fs::remove_file(&self.failed);
        } else {
            let count = self.failures().map_or(0, |(n, _)| n) + 1;
            let _ = std::fs::write(&self.failed, count.to_string());
        }
    }

    /// The responder's log file.
    pub(super) fn log(&self) -> &Path {
        &self.log
    }

    /// How many starts in a row failed, and when the last one did.
    fn failures(&self) -> Option<(u32, SystemTime)> {
        let at = modified(&self.failed)?;
        let count = std::fs::read_to_string(&self.failed).ok()?;
        Some((count.trim().parse().unwrap_or(1), at))
    }

    /// `Err` while a failed start is too recent to try again (and the
    /// app's code has not changed since).
    fn backing_off(&self) -> Result<(), String> {
        let Some((count, at)) = self.failures() else {
            return Ok(());
        };
        if self.code.iter().filter_map(|p| changed(p)).any(|c| c > at) {
            return Ok(());
        }
        let wait = FIRST_BACKOFF
            .saturating_mul(1 << count.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        let ago = at.elapsed().unwrap_or_default();
        match wait.checked_sub(ago) {
            Some(left) if !left.is_zero() => Err(format!(
                "the responder failed to start {:.0} s ago ({count} time(s) in a row; see {}); \
                 not trying again for {:.0} s, or until the app's code changes",
                ago.as_secs_f64(),
                self.log.display(),
                left.as_secs_f64()
            )),
            _ => Ok(()),
        }
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
    fn start(&mut self, deadline: Instant) -> Result<UnixStream, Failed> {
        let begun = Instant::now();
        rotate(&self.log);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log)
            .map_err(|e| Failed::NotYet(format!("cannot open {}: {e}", self.log.display())))?;
        let before = log.metadata().map_or(0, |m| m.len());
        let log_err = log
            .try_clone()
            .map_err(|e| Failed::NotYet(format!("{}: {e}", self.log.display())))?;
        // The start time first: code changed from here on is newer.
        let previous = std::fs::read_to_string(&self.started).unwrap_or_default();
        std::fs::write(&self.started, previous.trim())
            .map_err(|e| Failed::NotYet(format!("cannot write {}: {e}", self.started.display())))?;
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
            .map_err(|e| Failed::NotYet(format!("cannot start wsgi-fcgi: {e}")))?;
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
                return Err(Failed::Exited(format!(
                    "the responder exited ({status}) before serving; its log ({}) says: {}",
                    self.log.display(),
                    log_since(&self.log, before)
                )));
            }
            if Instant::now() >= deadline {
                // It keeps starting; the next request will find it.
                return Err(Failed::NotYet(format!(
                    "the responder was not ready within {:?} (still starting; see {})",
                    begun.elapsed(),
                    self.log.display()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Why a start gave no responder.
enum Failed {
    /// It exited before serving: back off.
    Exited(String),
    /// It could not be started here, or is still starting.
    NotYet(String),
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
