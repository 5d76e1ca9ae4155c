//! One FastCGI worker process: the tokio runtime (current-thread: sockets
//! only), signal handling, the interpreter and the app, the Python thread
//! pool, and the accept loop. Python is initialized after the runtime has
//! registered its SIGINT handler, so an app importing `signal` cannot take
//! Ctrl-C away (research/deps.md §1.7).

pub(crate) mod accesslog;
pub(crate) mod linger;
pub(crate) mod listener;
pub(crate) mod listening;
pub(crate) mod parking;
pub(crate) mod pool;
pub(crate) mod sched;
pub(crate) mod server;
pub(crate) mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::signal::unix::{SignalKind, signal};

use self::listener::{Bind, Listener, UnixSocketOptions};
pub use self::sched::Sched;
use crate::fcgi::job::{Limits, PageHook};
use crate::fcgi::worker::accesslog::AccessLog;
use crate::fcgi::worker::pool::{Pool, PoolOptions, RequestCount};
use crate::process::master::template::ForkHooks;
use crate::process::scoreboard;
use crate::process::status::Pages;
use crate::process::{Message, ToMaster};
use crate::python::interpreter;
use crate::python::startup::Startup;
use crate::{log_error, log_info, log_warn};

/// Everything a worker needs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The app spec (`None`: the demo app).
    pub app: Option<String>,
    /// Addresses to bind (empty: inherited sockets).
    pub binds: Vec<Bind>,
    /// Unix socket mode and owner.
    pub unix: UnixSocketOptions,
    /// Listen backlog.
    pub backlog: i32,
    /// App threads.
    pub threads: usize,
    /// Virtualenv.
    pub venv: Option<PathBuf>,
    /// Working directory.
    pub chdir: Option<PathBuf>,
    /// Extra `sys.path` entries.
    pub pythonpath: Vec<PathBuf>,
    /// Connection limits.
    pub limits: Limits,
    /// Forward `wsgi.errors` as FCGI_STDERR.
    pub forward_stderr: bool,
    /// How long TERM waits for requests in flight.
    pub graceful_timeout: Duration,
    /// Worker processes under a master (0: a single process, no master).
    pub workers: usize,
    /// Ask the master for a replacement after this many requests (plus up
    /// to `max_requests_jitter`).
    pub max_requests: Option<u64>,
    /// Random extra requests per worker, so workers do not recycle together.
    pub max_requests_jitter: u64,
    /// `--request-timeout`, `--slow-request-log`.
    pub timeouts: crate::fcgi::worker::pool::Timeouts,
    /// `--status-path`.
    pub status_path: Option<String>,
    /// `--ping-path`.
    pub ping_path: Option<String>,
    /// `--access-log` (a path, or `-` for stderr).
    pub access_log: Option<String>,
    /// `--access-log-format`.
    pub access_log_format: String,
    /// Run as this user (after the sockets are bound).
    pub user: Option<String>,
    /// Run as this group (default: the user's primary group).
    pub group: Option<String>,
    /// `--idle-exit`: stop after this long without a request.
    pub idle_exit: Option<Duration>,
    /// `--same-uid-only`: unix-socket peers must run as our own user.
    pub same_uid_only: bool,
    /// `--lean-site`: start Python as `wsgi-cgi` does.
    pub lean_site: bool,
    /// The pool's name (`[pool.NAME]` in `--config`): the status page's
    /// `pool` (else the app).
    pub pool: Option<String>,
    /// `--sched`: the scheduling policy of the process serving requests
    /// (`None`: batch, unless the process was started with a policy of the
    /// operator's choosing).
    pub sched: Option<Sched>,
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Binding or adopting sockets failed.
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    /// Interpreter or settings.
    #[error("{0}")]
    Setup(String),
    /// The app failed to import (the traceback was logged).
    #[error("the application failed to load")]
    AppLoad,
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Bind (or adopt) the listening sockets.
pub fn listeners(options: &WorkerOptions) -> Result<Vec<Listener>, WorkerError> {
    if options.binds.is_empty() {
        let inherited = listener::inherited()?;
        if inherited.is_empty() {
            return Err(listener::ListenError::Nothing.into());
        }
        return Ok(inherited);
    }
    options
        .binds
        .iter()
        .map(|b| listener::bind(b, &options.unix, options.backlog).map_err(WorkerError::from))
        .collect()
}

/// Run a worker until TERM (graceful), INT or QUIT (fast). `ready`: the
/// master's pipe (a worker of `--workers N`), told once the app is loaded;
/// such a worker leaves the sockets (and unix socket files) to the master.
pub fn run(
    options: WorkerOptions,
    listeners: Vec<Listener>,
    ready: Option<ToMaster>,
    preloaded: Option<&Py<PyAny>>,
) -> Result<(), WorkerError> {
    // Opened before the privileges go (log directories are usually root's).
    let access_log = open_access_log(&options)?;
    run_with_log(options, listeners, ready, preloaded, access_log)
}

/// `--access-log`, opened.
pub fn open_access_log(options: &WorkerOptions) -> Result<Option<Arc<AccessLog>>, WorkerError> {
    Ok(match &options.access_log {
        Some(path) => Some(Arc::new(
            AccessLog::open(path, &options.access_log_format).map_err(WorkerError::Setup)?,
        )),
        None => None,
    })
}

/// [`run`] with the access log open already (a pool's template opens it
/// before its privileges go, for every worker it forks).
pub fn run_with_log(
    mut options: WorkerOptions,
    listeners: Vec<Listener>,
    ready: Option<ToMaster>,
    preloaded: Option<&Py<PyAny>>,
    access_log: Option<Arc<AccessLog>>,
) -> Result<(), WorkerError> {
    // Before any thread starts: they all inherit it.
    Sched::apply_or_default(options.sched);
    options.limits.page_hook = status_pages(&options, &listeners, ready.is_none())?;
    drop_privileges(options.user.as_deref(), options.group.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _guard = runtime.enter();
    let stop = stop_signals(
        &runtime,
        options.graceful_timeout,
        ready.is_some(),
        access_log.clone(),
    )?;

    // print() and C code writing to fd 1 go to the log, like everything else.
    nix::unistd::dup2_stdout(std::io::stderr()).map_err(std::io::Error::from)?;
    let application = match preloaded {
        Some(app) => Python::attach(|py| app.clone_ref(py)),
        None => load(&options)?,
    };
    // USR2: the Python stacks of every thread to the log, even while one
    // holds the GIL in C code (the watchdog and the master ask for them).
    if let Err(e) = Python::attach(interpreter::dump_stacks_on_signal) {
        log_warn!("USR2 will not dump the Python stacks: faulthandler: {e}");
    }
    let ready = ready.map(Arc::new);
    // Idle app threads accept on the listening sockets themselves; what
    // they hand over, the I/O thread serves.
    let (handoff, handoffs) = tokio::sync::mpsc::unbounded_channel();
    let listening = Arc::new(accept_on(&listeners, &options, handoff)?);
    let count = request_count(ready.as_ref(), &options);
    // (A single process that bound its unix sockets removes their files.)
    let own_files = (ready.is_none()).then(|| options.clone());
    let stop = stopping(stop, count.clone(), &options, own_files);
    let pool = Pool::start(
        application,
        PoolOptions {
            threads: options.threads,
            queue: options.limits.max_conns,
            // Inherited sockets (spawn-fcgi -F, mod_fcgid, lighttpd max-procs)
            // are usually shared by several processes of the same app.
            multiprocess: options.binds.is_empty() || options.workers > 1,
            forward_stderr: options.forward_stderr,
        },
        count,
        options.timeouts,
        on_request_timeout(ready.as_ref()),
        access_log,
        Some(listening.clone()),
    )?;
    log_info!(
        "serving {} with {} app threads on {} socket(s)",
        options.app.as_deref().unwrap_or("the demo app"),
        options.threads,
        listeners.len()
    );
    match &ready {
        Some(ready) => ready.send(Message::Ready)?,
        // A single process tells systemd itself (Type=notify).
        None => crate::process::notify::notify("READY=1"),
    }
    let pool = Arc::new(pool);
    let finished = runtime.block_on(server::serve(handoffs, listening, pool, stop))?;
    // (The socket files go when the binary's `SocketFiles` guard does.)
    if finished {
        Python::attach(interpreter::run_exit_hooks);
    } else {
        exit_hooks_within(EXIT_HOOKS_WAIT);
    }
    log_info!("stopped");
    Ok(())
}

/// The stop: a signal (or `--idle-exit` without requests), giving the
/// grace period. A single process that bound its unix sockets removes
/// their files as the stop begins (`own_files`): no client connects any
/// more (it would be reset at the exit), and those already waiting are
/// served (see `Listening::drain_backlog`).
fn stopping(
    stop: impl std::future::Future<Output = Duration>,
    count: Arc<RequestCount>,
    options: &WorkerOptions,
    own_files: Option<WorkerOptions>,
) -> impl std::future::Future<Output = Duration> {
    let (idle, graceful) = (options.idle_exit, options.graceful_timeout);
    async move {
        let grace = match idle {
            None => stop.await,
            Some(after) => tokio::select! {
                grace = stop => grace,
                () = idle_exit(count, after) => {
                    log_info!("no request for {after:?} (--idle-exit): stopping");
                    graceful
                }
            },
        };
        if let Some(options) = own_files {
            remove_socket_files(&options);
        }
        grace
    }
}

/// After the grace period ran out, how long the exit hooks may wait for
/// the GIL (a thread stuck in C code may hold it for good).
const EXIT_HOOKS_WAIT: Duration = Duration::from_millis(250);

/// Run the exit hooks (atexit) if the GIL frees up within `wait`;
/// otherwise the process exits without them, saying so.
fn exit_hooks_within(wait: Duration) {
    if interpreter::attach_within("wsgi-exit-hooks", wait, interpreter::run_exit_hooks).is_none() {
        log_warn!(
            "exiting without the exit hooks (atexit): an app thread still holds the GIL \
             after the graceful timeout (stuck in C code?)"
        );
    }
}

/// `--status-path` / `--ping-path`: the pages, answered from the shared
/// scoreboard (created here; a single process is its own only worker).
fn status_pages(
    options: &WorkerOptions,
    listeners: &[Listener],
    single: bool,
) -> Result<Option<PageHook>, WorkerError> {
    if options.status_path.is_none() && options.ping_path.is_none() {
        return Ok(None);
    }
    // A worker's board is its pool's, installed at the fork; a single
    // process makes its own.
    let board = match scoreboard::board() {
        Some(board) => board,
        None => {
            let board = scoreboard::create()?;
            scoreboard::install(board);
            board
        }
    };
    if single && let Some(index) = board.claim(std::process::id()) {
        scoreboard::adopt(index);
    }
    let pages = Pages {
        status: options.status_path.clone(),
        ping: options.ping_path.clone(),
        pool: options
            .pool
            .clone()
            .or_else(|| options.app.clone())
            .unwrap_or_else(|| "demo".into()),
        listeners: listeners.iter().map(|l| l.raw().0).collect(),
    };
    Ok(Some(PageHook(Arc::new(move |path, query| {
        pages.answer(path, query)
    }))))
}

/// A listening socket's descriptor, and whether it is a unix socket.
/// The listening sockets as the app threads accept on them (non-blocking:
/// they wait in epoll and accept4 without blocking).
fn accept_on(
    listeners: &[Listener],
    options: &WorkerOptions,
    handoff: tokio::sync::mpsc::UnboundedSender<crate::fcgi::inline::Accepted>,
) -> Result<crate::fcgi::worker::listening::Listening, WorkerError> {
    for listener in listeners {
        let _ = match listener {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l) => l.set_nonblocking(true),
        };
    }
    let sockets: Vec<_> = listeners.iter().map(Listener::raw).collect();
    let limits = Arc::new(options.limits.clone());
    // Other processes accept on these sockets too: our workers, or those
    // of the spawner that handed us the socket (spawn-fcgi -F, mod_fcgid).
    let peers = options.workers > 1 || options.binds.is_empty();
    Ok(crate::fcgi::worker::listening::Listening::new(
        &sockets,
        (
            listener::web_server_addrs(),
            options.same_uid_only.then(nix::unistd::geteuid),
        ),
        limits,
        handoff,
        peers,
    )?)
}

/// The worker's request count, with `--max-requests` (+ jitter) for a
/// worker under a master: once reached, it asks for its replacement.
fn request_count(ready: Option<&Arc<ToMaster>>, options: &WorkerOptions) -> Arc<RequestCount> {
    let limit = ready.zip(options.max_requests).map(|(ready, max)| {
        let ready = ready.clone();
        let limit = max.max(1) + crate::process::recycle::jitter(options.max_requests_jitter);
        let reached: Box<dyn Fn() + Send + Sync> = Box::new(move || {
            let _ = ready.send(Message::Recycle);
        });
        (limit, reached)
    });
    Arc::new(RequestCount::new(limit))
}

/// `--idle-exit`: resolves once no request has run for `after` (checked
/// a few times per period, at least once a second).
async fn idle_exit(count: Arc<RequestCount>, after: Duration) {
    let tick = (after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if count.idle_for().is_some_and(|idle| idle >= after) {
            return;
        }
    }
}

/// What the watchdog does after a request overran `--request-timeout`.
fn on_request_timeout(ready: Option<&Arc<ToMaster>>) -> Box<dyn Fn() + Send> {
    match ready {
        Some(ready) => {
            let ready = ready.clone();
            Box::new(move || {
                log_info!(
                    "a request overran --request-timeout: asking the master for a replacement"
                );
                let _ = ready.send(Message::TimedOut);
            })
        }
        None => Box::new(|| {
            log_error!(
                "a request overran --request-timeout; its thread stays busy until it returns \
                 (run with --workers to have this process replaced)"
            )
        }),
    }
}

/// The signals: TERM (graceful: resolves to `graceful_timeout`), INT and
/// QUIT (fast: zero); USR1 reopens the access log meanwhile.
fn stop_signals(
    runtime: &tokio::runtime::Runtime,
    graceful_timeout: Duration,
    managed: bool,
    access_log: Option<Arc<AccessLog>>,
) -> Result<impl Future<Output = Duration> + use<>, WorkerError> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    if let Some(log) = access_log {
        runtime.spawn(async move {
            while usr1.recv().await.is_some() {
                match log.reopen() {
                    Ok(()) => log_info!("USR1: access log reopened"),
                    Err(e) => log_error!("USR1: {e}"),
                }
            }
        });
    }
    Ok(async move {
        let grace = tokio::select! {
            _ = term.recv() => graceful_timeout,
            _ = int.recv() => Duration::ZERO,
            _ = quit.recv() => Duration::ZERO,
        };
        if !managed {
            crate::process::notify::notify("STOPPING=1");
        }
        grace
    })
}

/// Started by root without `--user`, the app would run as root: say so,
/// once per start (PHP-FPM refuses to, uWSGI warns).
pub fn warn_if_root(options: &WorkerOptions) {
    if options.user.is_none() && nix::unistd::geteuid().is_root() {
        crate::log_warn!(
            "the app runs as root: started by root without --user; pass --user \
             (and --group) to run it as an unprivileged user"
        );
    }
}

/// `--user` / `--group`: become that user and group (supplementary groups:
/// the user's, from the group database), before Python or any thread starts.
pub fn drop_privileges(user: Option<&str>, group: Option<&str>) -> Result<(), WorkerError> {
    use nix::unistd::{Gid, Group, User};
    let setup = |m: String| WorkerError::Setup(m);
    if user.is_none() && group.is_none() {
        return Ok(());
    }
    let user = match user {
        Some(name) => Some(
            User::from_name(name)
                .map_err(|e| setup(format!("--user {name}: {e}")))?
                .ok_or_else(|| setup(format!("--user {name}: no such user")))?,
        ),
        None => None,
    };
    let gid: Gid = match (group, &user) {
        (Some(name), _) => {
            Group::from_name(name)
                .map_err(|e| setup(format!("--group {name}: {e}")))?
                .ok_or_else(|| setup(format!("--group {name}: no such group")))?
                .gid
        }
        (None, Some(user)) => user.gid,
        (None, None) => unreachable!("checked above"),
    };
    let fail = |what: &str, e: nix::Error| {
        setup(format!(
            "cannot {what}: {e} (run as root to use --user/--group)"
        ))
    };
    match &user {
        Some(user) => {
            let name = std::ffi::CString::new(user.name.as_str())
                .map_err(|_| setup("--user: a NUL in the name".into()))?;
            nix::unistd::initgroups(&name, gid).map_err(|e| fail("set the groups", e))?;
        }
        None => nix::unistd::setgroups(&[gid]).map_err(|e| fail("set the groups", e))?,
    }
    nix::unistd::setgid(gid).map_err(|e| fail("change group", e))?;
    if let Some(user) = &user {
        nix::unistd::setuid(user.uid).map_err(|e| fail("change user", e))?;
    }
    Ok(())
}

/// `--preload`: initialize Python and import the app in the template, then
/// `gc.freeze()` (the imported objects are never collected, so their pages
/// stay shared copy-on-write with the workers).
pub fn preload(options: &WorkerOptions) -> Result<Py<PyAny>, WorkerError> {
    let app = load(options)?;
    Python::attach(|py| {
        if let Err(err) = py.import("gc").and_then(|gc| gc.call_method0("freeze")) {
            err.display(py);
        }
    });
    Ok(app)
}

/// The fork hooks of a `--preload` template (see [`ForkHooks`]).
#[derive(Default)]
pub struct PreloadFork {
    gil: std::cell::Cell<Option<pyo3::ffi::PyGILState_STATE>>,
}

impl ForkHooks for PreloadFork {
    fn before_fork(&self) {
        // SAFETY: the documented protocol around fork(): the GIL is taken
        // by this thread, then PyOS_BeforeFork (as os.fork() does).
        unsafe {
            self.gil.set(Some(pyo3::ffi::PyGILState_Ensure()));
            pyo3::ffi::PyOS_BeforeFork();
        }
    }

    fn after_fork_parent(&self) {
        // SAFETY: pairs with before_fork in the same thread.
        unsafe {
            pyo3::ffi::PyOS_AfterFork_Parent();
            if let Some(state) = self.gil.take() {
                pyo3::ffi::PyGILState_Release(state);
            }
        }
    }

    fn after_fork_child(&self) {
        // SAFETY: the forking thread is the child's only thread and holds
        // the GIL (from before_fork); PyOS_AfterFork_Child resets the
        // interpreter's thread and lock state for it.
        unsafe { pyo3::ffi::PyOS_AfterFork_Child() };
        // Children must not share the parent's random sequence.
        Python::attach(|py| {
            let reseed = py
                .import("sys")
                .and_then(|sys| sys.getattr("modules"))
                .and_then(|m| m.get_item("random"))
                .and_then(|random| random.call_method0("seed"));
            if let Err(err) = reseed
                && !err.is_instance_of::<pyo3::exceptions::PyKeyError>(py)
            {
                err.display(py);
            }
        });
        if let Some(state) = self.gil.take() {
            // SAFETY: releases the GIL taken in before_fork (this thread).
            unsafe { pyo3::ffi::PyGILState_Release(state) };
        }
    }
}

/// `--check`, in a child process: become `--user`, initialize Python and
/// import the app, as a worker would, then stop.
pub fn check_import(options: &WorkerOptions) -> Result<(), WorkerError> {
    if let Some(path) = &options.access_log {
        crate::fcgi::worker::accesslog::check(path, &options.access_log_format)
            .map_err(WorkerError::Setup)?;
    }
    drop_privileges(options.user.as_deref(), options.group.as_deref())?;
    load(options).map(drop)
}

/// Remove the unix socket files this process bound (at the final stop).
pub fn remove_socket_files(options: &WorkerOptions) {
    for bind in &options.binds {
        if let Bind::Unix(path) = bind {
            match listener::remove_socket_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log_warn!(
                    "cannot remove the socket file {}: {e}{}",
                    path.display(),
                    match &options.user {
                        Some(user) => format!(
                            " (running as {user} now: put the socket in a directory {user} may \
                             write, e.g. systemd's RuntimeDirectory=, or run with --workers, whose \
                             master keeps the privileges to remove it; the next start replaces it)"
                        ),
                        None => String::new(),
                    }
                ),
            }
        }
    }
}

/// The unix socket files this process bound, removed when it is dropped —
/// on every way out of the process that bound them, a failed start included
/// (forked workers and templates leave without dropping it).
pub struct SocketFiles<'a>(pub &'a WorkerOptions);

impl Drop for SocketFiles<'_> {
    fn drop(&mut self) {
        remove_socket_files(self.0);
    }
}

fn load(options: &WorkerOptions) -> Result<Py<PyAny>, WorkerError> {
    let startup = Startup {
        app: options.app.as_deref(),
        venv: options.venv.as_deref(),
        chdir: options.chdir.as_deref(),
        pythonpath: &options.pythonpath,
        lean: options.lean_site,
    };
    // (Without --bind, a web server or spawner started us, the socket on fd 0.)
    let spec = startup
        .interpreter(&std::env::current_dir()?, options.binds.is_empty())
        .map_err(WorkerError::Setup)?;
    Python::attach(|py| {
        let app = startup
            .import(py, spec.as_ref())
            .ok_or(WorkerError::AppLoad)?;
        Ok(app.unbind())
    })
}
