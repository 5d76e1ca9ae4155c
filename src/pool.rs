//! The FastCGI worker's app threads: `--threads N` Python threads that take
//! [`Job`]s from the connections and run them through the shared core
//! (environ → app → response). Each thread stays attached to the
//! interpreter and releases the GIL whenever it waits: for a job, for body
//! bytes (`wsgi.input`), for room in the connection's output queue.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use pyo3::prelude::*;
use tokio::sync::mpsc;

use crate::accesslog::AccessLog;
use crate::app::{self, StrCache};
use crate::cgi::Exit;
use crate::environ::{self, Flavor};
use crate::fcgi::job::{Dispatch, Job, Out};
use crate::fcgi::output::DirectWrite;
use crate::fcgi::record::Role;
use crate::fcgi::record::{self, ProtocolStatus, RecordType};
use crate::input::Input;
use crate::request::BodyReader;
use crate::response::{Head, ResponseWriter, Sink};
pub use crate::watchdog::Timeouts;
use crate::watchdog::{Running, Slots, describe, watchdog};
use crate::{log_error, wire};

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

/// `--max-requests`: once `limit` requests are done, `reached` runs (once).
pub struct RequestLimit {
    limit: u64,
    served: std::sync::atomic::AtomicU64,
    reached: Box<dyn Fn() + Send + Sync>,
}

impl RequestLimit {
    /// A limit of `limit` requests.
    pub fn new(limit: u64, reached: Box<dyn Fn() + Send + Sync>) -> RequestLimit {
        RequestLimit {
            limit,
            served: std::sync::atomic::AtomicU64::new(0),
            reached,
        }
    }

    fn count(&self) {
        if self.served.fetch_add(1, Ordering::Relaxed) + 1 == self.limit {
            (self.reached)();
        }
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
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    idle: Vec<Arc<Parked>>,
}

/// An idle thread's mailbox: `dispatch` puts its next job here.
#[derive(Default)]
struct Parked {
    job: Mutex<Option<Job>>,
    ready: Condvar,
}

impl Parked {
    fn wait(&self) -> Job {
        let mut slot = lock(&self.job);
        loop {
            if let Some(job) = slot.take() {
                return job;
            }
            slot = self.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the data is still valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dispatch for Pool {
    fn dispatch(&self, job: Job) -> Result<(), Box<Job>> {
        let mut state = lock(&self.shared.state);
        if let Some(thread) = state.idle.pop() {
            drop(state);
            *lock(&thread.job) = Some(job);
            thread.ready.notify_one();
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
    /// Start the threads; `app` is the loaded application callable.
    pub fn start(
        app: Py<PyAny>,
        options: PoolOptions,
        limit: Option<Arc<RequestLimit>>,
        timeouts: Timeouts,
        on_timeout: Box<dyn Fn() + Send>,
        access_log: Option<Arc<AccessLog>>,
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
        });
        let app = Arc::new(app);
        for index in 0..threads {
            let shared = shared.clone();
            let app = app.clone();
            let limit = limit.clone();
            let slot = slots.clone().map(|s| (s, index));
            let access_log = access_log.clone();
            std::thread::Builder::new()
                .name(format!("wsgi-app-{index}"))
                .spawn(move || {
                    app_thread(&app, &shared, options, limit.as_deref(), slot, access_log)
                })?;
        }
        Ok(Pool { shared })
    }
}

fn app_thread(
    app: &Py<PyAny>,
    shared: &Shared,
    options: PoolOptions,
    limit: Option<&RequestLimit>,
    slot: Option<(Slots, usize)>,
    access_log: Option<Arc<AccessLog>>,
) {
    let me = Arc::new(Parked::default());
    Python::attach(|py| {
        let mut thread = ThreadState {
            flavor: Flavor {
                multithread: options.threads > 1,
                multiprocess: options.multiprocess,
                run_once: false,
            },
            forward_stderr: options.forward_stderr,
            strings: StrCache::new(),
            slot,
            access_log,
        };
        loop {
            let queued = {
                let mut state = lock(&shared.state);
                let job = state.queue.pop_front();
                if job.is_none() {
                    state.idle.push(me.clone());
                }
                job
            };
            let job = match queued {
                Some(job) => job,
                None => py.detach(|| me.wait()),
            };
            run_job(py, app.bind(py), job, &mut thread);
            thread.watch(None);
            if let Some(limit) = limit {
                limit.count();
            }
        }
    });
}

/// What an app thread keeps from job to job.
struct ThreadState {
    flavor: Flavor,
    forward_stderr: bool,
    strings: StrCache,
    /// Where the watchdog sees what this thread runs (with timeouts).
    slot: Option<(Slots, usize)>,
    /// `--access-log`.
    access_log: Option<Arc<AccessLog>>,
}

impl ThreadState {
    fn watch(&self, running: Option<Running>) {
        if let Some((slots, index)) = &self.slot {
            *lock(&slots[*index]) = running;
        }
    }
}

fn run_job(py: Python<'_>, app: &Bound<'_, PyAny>, job: Job, thread: &mut ThreadState) {
    let forward_stderr = thread.forward_stderr;
    let Job {
        request_id,
        role,
        meta,
        stdin,
        out,
        aborted,
        pending,
        direct,
        direct_final,
        head_sent,
    } = job;
    // Forwarded stderr goes through the queue, so the response must too.
    let direct = direct.filter(|_| !forward_stderr);
    let slot = crate::process::scoreboard::my_slot();
    // "METHOD URI", for the watchdog and the status page (made once).
    let line = (thread.slot.is_some() || slot.is_some()).then(|| describe(&meta));
    if thread.slot.is_some() {
        thread.watch(Some(Running {
            started: Instant::now(),
            what: line.clone().unwrap_or_default(),
            // SAFETY: pthread_self() has no preconditions. CPython's thread
            // idents (sys._current_frames() keys) are this value.
            thread: unsafe { nix::libc::pthread_self() } as u64,
            thread_name: std::thread::current().name().unwrap_or("?").to_string(),
            out: out.clone(),
            aborted: aborted.clone(),
            slow_logged: false,
            timed_out: false,
        }));
    }
    let held = Arc::new(Mutex::new(None));
    let sink = FcgiSink {
        id: request_id,
        out: out.clone(),
        aborted: aborted.clone(),
        pending: pending.clone(),
        direct: direct.clone(),
        head_sent: head_sent.clone(),
        held: held.clone(),
    };
    let started = Instant::now();
    if let Some(slot) = slot {
        slot.begin(line.as_deref().unwrap_or_default().as_bytes());
        if let Some(board) = crate::process::scoreboard::board() {
            let busy = board
                .slots
                .iter()
                .filter(|s| s.running.load(Ordering::Relaxed) > 0)
                .count();
            board.max_active.fetch_max(busy as u64, Ordering::Relaxed);
        }
    }
    // For the access log: status code and body bytes sent.
    let sent;
    let error_page = |code: u16| (code, crate::response::error_head(code).1.len() as u64);
    let status = match environ::build(&meta) {
        Err(err) => {
            log_error!("rejecting request: {err}");
            let _ = py.detach(|| ResponseWriter::new(Box::new(sink), false).fail(400));
            sent = error_page(400);
            Exit::BadRequest
        }
        Ok(mut environ) => {
            let role_name = if role == Role::Authorizer {
                "AUTHORIZER"
            } else {
                "RESPONDER"
            };
            environ
                .vars
                .push((b"FCGI_ROLE", Cow::Borrowed(role_name.as_bytes())));
            let limit = if role == Role::Authorizer {
                Some(0)
            } else {
                environ.content_length
            };
            let input = Input::new(BodyReader::new(
                Box::new(ChannelReader {
                    rx: stdin,
                    current: Bytes::new(),
                }),
                limit,
            ));
            let errors = Bound::new(
                py,
                ErrorStream {
                    out: forward_stderr.then(|| out.clone()),
                },
            );
            let writer = ResponseWriter::new(Box::new(sink), environ.is_head);
            match errors.and_then(|errors| {
                app::environ_dict(
                    py,
                    &environ,
                    thread.flavor,
                    input,
                    errors.into_any(),
                    &mut thread.strings,
                )
            }) {
                Err(err) => {
                    err.display(py);
                    let _ = py.detach(|| {
                        let mut w = writer;
                        w.fail(500)
                    });
                    sent = error_page(500);
                    Exit::AppError
                }
                Ok(dict) => {
                    let (outcome, writer) = app::serve(py, app, dict, writer);
                    sent = (writer.status_code(), writer.body_bytes());
                    drop(writer);
                    Exit::from(outcome)
                }
            }
        }
    };
    if let Some(log) = &thread.access_log {
        log.log(&crate::accesslog::Entry {
            meta: &meta,
            status: sent.0,
            bytes: sent.1,
            duration: started.elapsed(),
        });
    }
    if let Some(slot) = slot {
        slot.end();
    }
    // The last output, held back by the sink, leaves with END_REQUEST.
    let (head, body) = held
        .lock()
        .ok()
        .and_then(|mut h| h.take())
        .unwrap_or_default();
    // The whole response is here and nothing went through the queue: write
    // it ourselves, without waking the I/O thread (see `DirectWrite`).
    let direct = direct.filter(|_| {
        direct_final
            && pending.load(Ordering::Acquire) == 0
            && !aborted.load(Ordering::Relaxed)
            && head.len() + body.len() <= DIRECT_LIMIT
    });
    if let Some(direct) = direct {
        let mut records = BytesMut::with_capacity(head.len() + body.len() + 64);
        record::encode_stream(&mut records, RecordType::Stdout, request_id, &head);
        record::encode_stream(&mut records, RecordType::Stdout, request_id, &body);
        record::encode_stream_end(&mut records, RecordType::Stdout, request_id);
        record::encode_end_request(
            &mut records,
            request_id,
            status as u32,
            ProtocolStatus::RequestComplete,
        );
        // A non-blocking write: no reason to hand the GIL to anyone.
        if direct.write_final(request_id, status as u32, &records, out.clone()) {
            return;
        }
    }
    let end = Out::End {
        status: status as u32,
        head,
        body,
    };
    // The connection is gone if this fails: nothing left to tell.
    match out.try_send(end) {
        Err(mpsc::error::TrySendError::Full(end)) => {
            let _ = py.detach(|| send_batched(&out, end));
        }
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// Queue `message` for the connection. When the queue is full, wait until
/// half of it is free again, not merely one slot: the I/O thread then
/// writes in batches and this thread wakes once per batch instead of once
/// per message (the hysteresis the kernel gives a blocking socket write,
/// which wakes the writer only when much of the buffer is free). `Err`:
/// the connection is gone.
fn send_batched(out: &mpsc::Sender<Out>, message: Out) -> Result<(), ()> {
    match out.try_send(message) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        Err(mpsc::error::TrySendError::Full(message)) => {
            let room = (out.max_capacity() / 2).max(1);
            let mut permits = block_on(out.reserve_many(room)).map_err(|_| ())?;
            // The other permits go back to the queue as they drop.
            permits.next().ok_or(())?.send(message);
            Ok(())
        }
    }
}

/// Run a future to completion on this (non-runtime) thread, parked while
/// it is pending.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// `wsgi.input`'s source: STDIN records as they arrive.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(data) => self.current = data,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// The response side: CGI header block and body as STDOUT data.
struct FcgiSink {
    id: u16,
    out: mpsc::Sender<Out>,
    aborted: Arc<AtomicBool>,
    /// The final output (a list's last item, an error page), sent with
    /// END_REQUEST by the job instead of on its own.
    held: Arc<Mutex<Option<(Bytes, Bytes)>>>,
    /// Messages queued and not yet written by the connection: while any
    /// are, everything else must follow them through the queue (order).
    pending: Arc<AtomicUsize>,
    /// The app thread's own path to the socket.
    direct: Option<Arc<DirectWrite>>,
    /// Set when the header block reaches the socket (see `Job::head_sent`).
    head_sent: Arc<AtomicBool>,
}

/// Largest final response the app thread writes to the socket itself.
const DIRECT_LIMIT: usize = 32 * 1024;

impl FcgiSink {
    fn push(&self, message: Out) -> io::Result<()> {
        if self.aborted.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the web server aborted the request",
            ));
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        send_batched(&self.out, message).map_err(|()| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the web server closed the connection",
            )
        })
    }
}

impl Sink for FcgiSink {
    fn send(&mut self, head: Option<&Head>, body: Bytes, last: bool) -> io::Result<()> {
        let head = Bytes::from(wire::head_block(head));
        if last && !self.aborted.load(Ordering::Relaxed) {
            if let Ok(mut held) = self.held.lock() {
                *held = Some((head, body));
                return Ok(());
            }
        }
        if let Some(direct) = &self.direct {
            if self.pending.load(Ordering::Acquire) == 0 && !self.aborted.load(Ordering::Relaxed) {
                let (id, aborted, head_sent) = (self.id, &self.aborted, &self.head_sent);
                match direct.write_stream(id, head.clone(), body.clone(), aborted, head_sent) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {} // the connection has the socket: queue it
                    Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {
                        return Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "the web server aborted the request",
                        ));
                    }
                    Err(err) => {
                        return Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            format!("the web server closed the connection ({err})"),
                        ));
                    }
                }
            }
        }
        self.push(Out::Stdout { head, body })
    }

    fn send_file(
        &mut self,
        head: Option<&Head>,
        file: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> io::Result<Option<u64>> {
        if head.is_some() {
            self.push(Out::Stdout {
                head: Bytes::from(wire::head_block(head)),
                body: Bytes::new(),
            })?;
        }
        if len > 0 {
            let file = file.try_clone_to_owned()?;
            self.push(Out::File { file, offset, len })?;
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
    out: Option<mpsc::Sender<Out>>,
}

#[pymethods]
impl ErrorStream {
    fn write(&self, py: Python<'_>, text: &str) -> usize {
        let bytes = text.as_bytes().to_vec();
        let len = text.chars().count();
        py.detach(|| {
            use std::io::Write;
            let _ = io::stderr().write_all(&bytes);
            if let Some(out) = &self.out {
                let _ = out.blocking_send(Out::Stderr(Bytes::from(bytes)));
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
