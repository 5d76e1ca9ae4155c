//! The FastCGI worker's app threads: `--threads N` Python threads that take
//! [`Job`]s from the connections and run them through the shared core
//! (environ → app → response). Each thread stays attached to the
//! interpreter and releases the GIL whenever it waits: for a job, for body
//! bytes (`wsgi.input`), for room in the connection's output queue.

use crate::core::lock;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyo3::prelude::*;

use crate::core::environ::{self, Flavor};
use crate::core::exit::Exit;
use crate::core::request::BodyReader;
use crate::core::response::{Head, ResponseWriter, Sink};
use crate::core::wire;
use crate::fcgi::inline;
use crate::fcgi::job::{Body, Dispatch, Exchange, Job, Last};
use crate::fcgi::kept::{Kept, Ran, Watch};
use crate::fcgi::proto::record::Role;
use crate::fcgi::worker::accesslog::AccessLog;
use crate::fcgi::worker::listening::Listening;
use crate::fcgi::worker::parking::{Parked, Waiter, Woken};
pub use crate::fcgi::worker::watchdog::Timeouts;
use crate::fcgi::worker::watchdog::{Running, Slots, describe, describe_into, watchdog};
use crate::log_error;
use crate::python::app;
use crate::python::environ::StrCache;
use crate::python::input::Input;

/// Options of the pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    /// Number of app threads.
    pub threads: usize,
    /// Jobs that may wait for a thread before requests are refused (OVERLOADED).
    pub queue: usize,
    /// `wsgi.multiprocess`.
    pub multiprocess: bool,
    /// Copy `wsgi.errors` output to the web server as FCGI_STDERR.
    pub forward_stderr: bool,
}

/// The requests of this worker, counted as they run: `--max-requests`
/// (once `limit` are done, `reached` runs, once) and `--idle-exit` (how
/// long since the last one finished, none running).
pub struct RequestCount {
    limit: Option<(u64, Box<dyn Fn() + Send + Sync>)>,
    served: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicUsize,
    last_done: Mutex<Instant>,
}

impl RequestCount {
    /// A count; with `limit`, `(n, reached)`.
    pub fn new(limit: Option<(u64, Box<dyn Fn() + Send + Sync>)>) -> RequestCount {
        RequestCount {
            limit,
            served: std::sync::atomic::AtomicU64::new(0),
            running: std::sync::atomic::AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
        }
    }

    fn start(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) {
        *lock(&self.last_done) = Instant::now();
        self.running.fetch_sub(1, Ordering::SeqCst);
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some((limit, reached)) = &self.limit
            && served == *limit
        {
            reached();
        }
    }

    /// How long the worker has been idle: `None` while a request runs;
    /// else since the last one finished (or since the start).
    pub fn idle_for(&self) -> Option<Duration> {
        let since = lock(&self.last_done).elapsed();
        (self.running.load(Ordering::SeqCst) == 0).then_some(since)
    }
}

/// The pool: a bounded queue of jobs waiting for a thread, and the idle
/// threads, most recently idle first.
///
/// Scheduling is what keeps GIL hand-offs rare: a thread that finishes a
/// job takes the next queued one *without releasing the GIL*; only when the
/// queue is empty does it release the GIL and park. A new job goes to the
/// thread that parked last (its stack and caches are warm), so under light
/// load one thread does all the work and the others stay asleep, and under
/// full load the busy threads keep the GIL until the interpreter's switch
/// interval moves it — instead of a hand-off per request.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Jobs that may wait in the queue.
    capacity: usize,
    /// The kept connections' epoll, watched by one idle thread
    /// (`--kept-inline`).
    kept: Option<Arc<Kept>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    idle: Vec<Arc<Parked>>,
    /// The thread watching the kept connections (idle whenever any is).
    watcher: Option<Arc<Parked>>,
}

impl Shared {
    /// `me` went idle (it is in the idle list): it takes the watch of the
    /// kept connections unless an idle thread has it.
    fn take_watch(&self, state: &mut State, me: &Arc<Parked>) {
        let Some(kept) = &self.kept else { return };
        let watcher_idle = state
            .watcher
            .as_ref()
            .is_some_and(|w| state.idle.iter().any(|p| Arc::ptr_eq(p, w)));
        if !watcher_idle {
            if let Some(old) = state.watcher.take() {
                old.watch(kept, false);
            }
            me.watch(kept, true);
            state.watcher = Some(me.clone());
        }
    }

    /// `me` is busy (not in the idle list): if it watches, the watch goes
    /// to the most recently idle thread (none idle: it keeps it).
    fn pass_watch(&self, state: &mut State, me: &Arc<Parked>) {
        let Some(kept) = &self.kept else { return };
        if !state.watcher.as_ref().is_some_and(|w| Arc::ptr_eq(w, me)) {
            return;
        }
        if let Some(next) = state.idle.last().cloned() {
            me.watch(kept, false);
            next.watch(kept, true);
            state.watcher = Some(next);
        }
    }

    /// `me` is about to run something.
    fn busy(&self, me: &Arc<Parked>) {
        let mut state = lock(&self.state);
        state.idle.retain(|p| !Arc::ptr_eq(p, me));
        self.pass_watch(&mut state, me);
    }
}

impl Dispatch for Pool {
    fn dispatch(&self, job: Job) -> Result<(), Box<Job>> {
        let mut state = lock(&self.shared.state);
        if let Some(thread) = state.idle.pop() {
            drop(state);
            thread.give(job);
            return Ok(());
        }
        if state.queue.len() >= self.shared.capacity {
            return Err(Box::new(job));
        }
        state.queue.push_back(job);
        Ok(())
    }
}

impl Pool {
    /// Start the threads; `app` is the loaded application callable. With
    /// `listening`, idle threads also accept connections and serve them
    /// themselves (see [`crate::fcgi::worker::parking`]).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        app: Py<PyAny>,
        options: PoolOptions,
        count: Arc<RequestCount>,
        timeouts: Timeouts,
        on_timeout: Box<dyn Fn() + Send>,
        access_log: Option<Arc<AccessLog>>,
        listening: Option<Arc<Listening>>,
    ) -> io::Result<Pool> {
        let threads = options.threads.max(1);
        let slots: Option<Slots> = (timeouts.request.is_some() || timeouts.slow.is_some())
            .then(|| Arc::new((0..threads).map(|_| Mutex::new(None)).collect()));
        if let Some(slots) = &slots {
            let slots = slots.clone();
            std::thread::Builder::new()
                .name("wsgi-watchdog".into())
                .spawn(move || watchdog(slots, timeouts, on_timeout))?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            capacity: options.queue.max(1),
            // (Watched only with --kept-inline: otherwise nothing is parked.)
            kept: listening
                .as_ref()
                .filter(|l| l.limits.kept_inline)
                .map(|l| l.kept.clone()),
        });
        let app = Arc::new(app);
        for index in 0..threads {
            let shared = shared.clone();
            let app = app.clone();
            let count = count.clone();
            let slot = slots.clone().map(|s| (s, index));
            let access_log = access_log.clone();
            let waiter = Waiter::new(Arc::new(Parked::new()?), listening.clone())?;
            std::thread::Builder::new()
                .name(format!("wsgi-app-{index}"))
                .spawn(move || {
                    let thread = ThreadState::new(options, (slot, index), access_log);
                    app_thread(&app, &shared, thread, waiter, &count)
                })?;
        }
        Ok(Pool { shared })
    }
}

/// An app thread: jobs queued first (without letting go of the GIL),
/// else wait — for a job, or for a connection to accept and serve inline.
fn app_thread(
    app: &Py<PyAny>,
    shared: &Shared,
    mut thread: ThreadState,
    mut waiter: Waiter,
    count: &RequestCount,
) {
    let me = waiter.parked();
    Python::attach(|py| {
        let app = app.bind(py);
        loop {
            // A thread is in the idle list exactly while it waits with an
            // empty mailbox (a job given while it served a connection it
            // had accepted is taken first).
            let queued = {
                let mut state = lock(&shared.state);
                let job = me.take().or_else(|| state.queue.pop_front());
                if job.is_none() {
                    if !state.idle.iter().any(|p| Arc::ptr_eq(p, &me)) {
                        state.idle.push(me.clone());
                    }
                    shared.take_watch(&mut state, &me);
                }
                job
            };
            let woken = match queued {
                // Under load the queue never empties: a connection waiting
                // to be accepted gets its turn between jobs, or it would
                // starve in the backlog.
                Some(job) => match waiter.try_accept() {
                    Some(conn) => {
                        lock(&shared.state).queue.push_front(job);
                        Woken::Connection(conn)
                    }
                    None => Woken::Job(job),
                },
                None => py.detach(|| waiter.wait()),
            };
            // Busy now: no job for this thread until it is done, and the
            // watch of the kept connections goes to an idle thread. (A job
            // came through the idle list, which the dispatch left: without
            // kept connections there is nothing to do, and no lock to take.)
            match woken {
                Woken::Job(job) => {
                    if shared.kept.is_some() {
                        shared.busy(&me);
                    }
                    thread.run(py, app, job, count)
                }
                Woken::Connection(conn) => {
                    shared.busy(&me);
                    serve_inline(py, app, conn, &mut thread, &mut waiter, count);
                }
            }
        }
    });
}

/// A connection this thread accepted (or a kept one with a request
/// waiting): a whole request runs here, then the connection is closed, or
/// parked with FCGI_KEEP_CONN; anything else goes to the I/O thread (see
/// [`crate::fcgi::inline`], [`crate::fcgi::kept`]).
fn serve_inline(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    conn: inline::Accepted,
    thread: &mut ThreadState,
    waiter: &mut Waiter,
    count: &RequestCount,
) {
    let Some(listening) = waiter.listening().cloned() else {
        return;
    };
    // (Counted in `inflight` since it was accepted or taken: parking.rs.)
    let limits = &listening.limits;
    let kept = &listening.kept;
    let mut conn = conn;
    let to_close = loop {
        let ran = match py.detach(|| inline::next_request(conn, limits, inline::INLINE_WAIT)) {
            inline::Next::Run {
                job,
                mut conn,
                keep,
            } => {
                let exchange = job.exchange.clone();
                if keep && conn.token.is_none() {
                    waiter.handed_off(); // a newly kept connection stays with this worker
                }
                let watched = if keep {
                    matches!(kept.running(&mut conn, &exchange), Watch::Watched)
                } else {
                    kept.release(&mut conn);
                    false
                };
                thread.run(py, app, job, count);
                match (keep, watched) {
                    // Parked for its next request if its answer went out whole.
                    (true, true) => kept.ran(conn, exchange.ended_cleanly()),
                    (true, false) => Ran::Left, // the I/O thread has it
                    (false, _) => Ran::Close(conn),
                }
            }
            // A page (status, ping) answered here: a kept connection is parked.
            inline::Next::Answered(mut conn, keep) => {
                if keep && conn.token.is_none() && kept.keep(&mut conn).is_none() {
                    waiter.hand_off(conn); // no slot free: the I/O thread makes room
                    Ran::Left
                } else if keep {
                    kept.ran(conn, true)
                } else {
                    kept.release(&mut conn);
                    Ran::Close(conn)
                }
            }
            inline::Next::HandOff(mut conn) => {
                let fresh = conn.token.is_none();
                kept.release(&mut conn);
                waiter.hand_off(conn);
                if fresh {
                    waiter.handed_off(); // it stays with this worker
                }
                Ran::Left
            }
            inline::Next::Done(mut conn) => {
                kept.release(&mut conn);
                Ran::Left
            }
        };
        match ran {
            Ran::Left => break None,
            Ran::Close(conn) => break Some(conn),
            // Its next request came before it was parked.
            Ran::Again(next) => conn = next,
        }
    };
    // (A half-close never blocks: no reason to let go of the GIL for it.)
    if let Some(socket) = to_close.and_then(inline::close) {
        waiter.linger(socket);
    }
    listening.inflight.fetch_sub(1, Ordering::SeqCst);
}

/// What an app thread keeps from job to job.
struct ThreadState {
    flavor: Flavor,
    forward_stderr: bool,
    strings: StrCache,
    /// Where the watchdog sees what this thread runs (with timeouts).
    slot: Option<(Slots, usize)>,
    /// Which app thread of the worker this is (its scoreboard row).
    index: usize,
    /// `--access-log`.
    access_log: Option<Arc<AccessLog>>,
    /// `wsgi.errors` when it goes to the log only (not forwarded): one
    /// object for all of this thread's requests.
    errors: Option<Py<ErrorStream>>,
    /// The request line ("METHOD URI") of the scoreboard and the
    /// watchdog, a buffer kept from request to request.
    line: Vec<u8>,
}

impl ThreadState {
    fn new(
        options: PoolOptions,
        (slot, index): (Option<(Slots, usize)>, usize),
        access_log: Option<Arc<AccessLog>>,
    ) -> ThreadState {
        ThreadState {
            flavor: Flavor {
                multithread: options.threads > 1,
                multiprocess: options.multiprocess,
                run_once: false,
            },
            forward_stderr: options.forward_stderr,
            strings: StrCache::new(),
            errors: None,
            slot,
            index,
            access_log,
            line: Vec::with_capacity(256),
        }
    }

    /// Run one job, then count it.
    fn run(&mut self, py: Python<'_>, app: &Bound<'_, PyAny>, job: Job, count: &RequestCount) {
        count.start();
        run_job(py, app, job, self);
        self.watch(None);
        count.done();
    }

    fn watch(&self, running: Option<Running>) {
        if let Some((slots, index)) = &self.slot {
            *lock(&slots[*index]) = running;
        }
    }
}

fn run_job(py: Python<'_>, app: &Bound<'_, PyAny>, job: Job, thread: &mut ThreadState) {
    let Job {
        role,
        mut meta,
        body,
        exchange,
    } = job;
    body.measure(&mut meta);
    let slot = crate::process::scoreboard::my_slot();
    // "METHOD URI", for the watchdog and the status page (made once, in
    // the thread's buffer).
    let mut line = std::mem::take(&mut thread.line);
    if thread.slot.is_some() || slot.is_some() {
        describe_into(&meta, &mut line);
    }
    if thread.slot.is_some() {
        thread.watch(Some(Running {
            started: Instant::now(),
            what: String::from_utf8_lossy(&line).into_owned(),
            // SAFETY: pthread_self() has no preconditions. CPython's thread
            // idents (sys._current_frames() keys) are this value.
            thread: unsafe { nix::libc::pthread_self() } as u64,
            thread_name: std::thread::current().name().unwrap_or("?").to_string(),
            exchange: exchange.clone(),
            slow_logged: false,
            timed_out: false,
        }));
    }
    let held = Arc::new(Mutex::new(None));
    let sink = FcgiSink {
        exchange: exchange.clone(),
        held: held.clone(),
    };
    let started = Instant::now();
    if let Some(slot) = slot {
        slot.begin(thread.index, &line);
        if let Some(board) = crate::process::scoreboard::board() {
            let busy = board
                .used()
                .iter()
                .filter(|s| s.running.load(Ordering::Relaxed) > 0)
                .count();
            board.max_active.fetch_max(busy as u64, Ordering::Relaxed);
        }
    }
    thread.line = line;
    let (status, sent) = respond(py, app, role, &meta, body, sink, thread, &exchange);
    if let Some(log) = &thread.access_log {
        log.log(&crate::fcgi::worker::accesslog::Entry {
            meta: &meta,
            status: sent.0,
            bytes: sent.1,
            duration: started.elapsed(),
        });
    }
    if let Some(slot) = slot {
        slot.end(thread.index);
    }
    if status == Exit::Truncated && exchange.head_sent() && exchange.cut_short() {
        log_error!(
            "{}: the app failed after its response began: the connection is closed \
             without END_REQUEST, so the web server sees the response cut short",
            describe(&meta)
        );
        return;
    }
    // The last output, held back by the sink, leaves with END_REQUEST.
    let last = held.lock().ok().and_then(|mut h| h.take());
    finish(py, &exchange, last, status as u32);
}

/// Environ → app → response; returns the exit status and, for the access
/// log, the status code and body bytes sent.
#[allow(clippy::too_many_arguments)]
fn respond(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    role: Role,
    meta: &crate::core::request::MetaVariables,
    body: Body,
    sink: FcgiSink,
    thread: &mut ThreadState,
    exchange: &Arc<Exchange>,
) -> (Exit, (u16, u64)) {
    let error_page = |code: u16| (code, crate::core::response::error_head(code).1.len() as u64);
    let mut environ = match environ::build(meta) {
        Ok(environ) => environ,
        Err(err) => {
            log_error!("rejecting request: {err}");
            let _ = py.detach(|| ResponseWriter::new(Box::new(sink), false).fail(400));
            return (Exit::BadRequest, error_page(400));
        }
    };
    let role_name: &[u8] = if role == Role::Authorizer {
        b"AUTHORIZER"
    } else {
        b"RESPONDER"
    };
    environ.vars.push((b"FCGI_ROLE", Cow::Borrowed(role_name)));
    let limit = if role == Role::Authorizer {
        Some(0)
    } else {
        environ.content_length
    };
    let input = Input::new(BodyReader::new(Box::new(body), limit));
    let errors = if thread.forward_stderr {
        Bound::new(
            py,
            ErrorStream {
                exchange: Some(exchange.clone()),
            },
        )
    } else {
        match &thread.errors {
            Some(errors) => Ok(errors.bind(py).clone()),
            None => Bound::new(py, ErrorStream { exchange: None }).inspect(|errors| {
                thread.errors = Some(errors.clone().unbind());
            }),
        }
    };
    let writer = ResponseWriter::new(Box::new(sink), environ.is_head);
    let (outcome, writer) = app::run(
        py,
        app,
        &environ,
        thread.flavor,
        input,
        errors.map(Bound::into_any),
        &mut thread.strings,
        writer,
    );
    (
        Exit::from(outcome),
        (writer.status_code(), writer.body_bytes()),
    )
}

/// The last output and END_REQUEST, in one write. Tried without letting go
/// of the GIL (a small response into a socket with room never blocks);
/// the GIL is released only to wait for the writer or for room.
fn finish(py: Python<'_>, exchange: &Exchange, last: Option<Last>, status: u32) {
    let ending = match exchange.try_ending() {
        Ok(Some(ending)) => ending,
        Ok(None) => return, // the watchdog answered it
        Err(_busy) => {
            // Another request of this connection is writing: wait for it
            // without the GIL.
            py.detach(|| {
                if let Some(ending) = exchange.ending() {
                    let frames = ending.frames_after(last, status);
                    ending.write(frames);
                }
            });
            return;
        }
    };
    let frames = ending.frames_after(last, status);
    if let Some(rest) = ending.try_write(frames) {
        py.detach(|| ending.write(rest));
    }
}

/// The response side: CGI header block and body as STDOUT records,
/// written by this thread straight to the connection.
struct FcgiSink {
    exchange: Arc<Exchange>,
    /// The final output (a list's last item, an error page), framed and
    /// sent with END_REQUEST by the job instead of on its own.
    held: Arc<Mutex<Option<Last>>>,
}

impl Sink for FcgiSink {
    fn send(&mut self, head: Option<&Head>, body: Bytes, last: bool) -> io::Result<()> {
        let head = wire::head_block(head);
        if last
            && !self.exchange.aborted()
            && let Ok(mut held) = self.held.lock()
        {
            *held = Some(Last::new(self.exchange.id, head, body));
            return Ok(());
        }
        self.exchange.send(head, body)
    }

    fn send_file(
        &mut self,
        head: Option<&Head>,
        file: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> io::Result<Option<u64>> {
        if head.is_some() {
            self.exchange.send(wire::head_block(head), Bytes::new())?;
        }
        if len > 0 {
            let file = file.try_clone_to_owned()?;
            self.exchange.send_file(&file, offset, len)?;
        }
        Ok(Some(len))
    }

    fn holds_last(&self) -> bool {
        true
    }
}

/// `wsgi.errors`: to the worker's log (stderr), and to the web server as
/// FCGI_STDERR when forwarding is on (like `fcgiwrap -f`).
#[pyclass(module = "wsgi_gateway", name = "ErrorStream", frozen)]
struct ErrorStream {
    exchange: Option<Arc<Exchange>>,
}

#[pymethods]
impl ErrorStream {
    fn write(&self, py: Python<'_>, text: &str) -> usize {
        let bytes = text.as_bytes().to_vec();
        let len = text.chars().count();
        py.detach(|| {
            use std::io::Write;
            let _ = io::stderr().write_all(&bytes);
            if let Some(exchange) = &self.exchange {
                exchange.send_stderr(Bytes::from(bytes));
            }
        });
        len
    }

    fn writelines(&self, py: Python<'_>, lines: Vec<String>) {
        for line in lines {
            self.write(py, &line);
        }
    }

    fn flush(&self) {}
}
