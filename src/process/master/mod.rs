//! The master of `wsgi-fcgi --workers N`: forks the workers, supervises
//! them, and turns signals into intents (gunicorn's arbiter, pingora's
//! shutdown intents). It holds the listening sockets for as long as it runs
//! — a worker only ever closes its own copies — so no connection is refused
//! while workers come and go.
//!
//! One loop, no threads: signals arrive on a `signalfd`, each worker's
//! message pipe ([`super::Message`]: ready, recycle me, a request timed
//! out) is polled, children are reaped and
//! limits checked every turn.
//!
//! | signal | intent |
//! |---|---|
//! | TERM | graceful stop: workers finish their requests (`--graceful-timeout`), then exit |
//! | INT, QUIT | fast stop |
//! | HUP | reload: a new generation of workers imports the app afresh; the old one is told to stop only once every new worker is ready |
//! | TTIN / TTOU | one worker more / fewer |
//! | USR1 | workers reopen the access log |
//!
//! Recycling (`--max-requests` with `--max-requests-jitter`,
//! `--max-lifetime`, `--max-rss`; each threshold jittered per worker so that
//! workers do not all recycle at once): the master starts the replacement
//! first and tells the old worker to stop (TERM: it finishes its requests
//! and kept-alive connections) only once the replacement is ready.
//!
//! How many workers: [`pm`] — `--workers` (static), or what the dynamic
//! and ondemand managers decide each turn from the scoreboard and the
//! listening sockets' queues ([`Master::scale`]).
//!
//! A worker that fails while booting (its app does not import, or it cannot
//! start) stops the master with the worker's exit status instead of being
//! respawned in a loop — or, during a reload, cancels the reload while the
//! old workers go on serving. A worker that dies later is replaced, with an
//! exponential back-off if it keeps dying young.

use crate::core::exit::Exit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::recycle::{Recycle, jitter};
use super::signals::{Intent, SIGNALS, intent};
use super::{Message, ToMaster, notify};
use crate::{log_error, log_info, log_warn};

mod limits;
pub mod pm;

use pm::{Decision, Pm, Scaler, Seen, View};

/// How the master runs.
#[derive(Clone, Debug)]
pub struct MasterOptions {
    /// Workers to keep running (`--pm static`).
    pub workers: usize,
    /// The process manager (`--pm`).
    pub pm: Pm,
    /// App threads per worker (how many connections one worker takes).
    pub threads: usize,
    /// The listening sockets (open for as long as the master runs), which
    /// dynamic and ondemand modes watch, without accepting, for
    /// connections that no worker is there to take.
    pub listeners: Vec<RawFd>,
    /// How long a graceful stop waits before SIGKILL (the workers' own
    /// graceful timeout, plus a margin).
    pub graceful_timeout: Duration,
    /// Recycle a worker after this long (plus up to 10% jitter).
    pub max_lifetime: Option<Duration>,
    /// Recycle a worker whose resident memory exceeds this (bytes; minus
    /// up to 5% jitter), sampled every second.
    pub max_rss: Option<u64>,
    /// `--request-timeout`: a worker whose request runs past it plus
    /// `graceful_timeout` without the worker acting (its watchdog asks for
    /// a replacement at the timeout) cannot act — a thread holds the GIL in
    /// C code, the worker is stopped or deadlocked — and is killed, after
    /// its Python stacks are dumped (seen on the scoreboard).
    pub request_timeout: Option<Duration>,
}

/// What a worker process runs after the fork; returns its exit status.
pub type WorkerMain<'a> = &'a dyn Fn(ToMaster) -> i32;

/// `--preload`: the master holds an interpreter with the app imported, so
/// every fork is bracketed (CPython's `PyOS_BeforeFork`/`AfterFork_*`), and
/// a reload re-executes the master (same pid, sockets handed on, workers
/// adopted) so that the new code is imported — forking the old master again
/// would serve the old code (gunicorn#2449).
pub trait ForkHooks {
    /// In the master, right before `fork()`.
    fn before_fork(&self);
    /// In the master, right after.
    fn after_fork_parent(&self);
    /// In the new worker, right after.
    fn after_fork_child(&self);
    /// HUP: replace this process's image by a fresh one that adopts the
    /// running `workers` (pids); returns only if that failed.
    fn reexec(&self, workers: &[i32]) -> std::io::Error;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Forked; importing the app.
    Booting,
    /// Accepting connections.
    Ready,
    /// Told to stop (TERM); finishing its requests.
    Stopping,
}

struct Worker {
    pid: Pid,
    generation: u64,
    state: State,
    /// Read end of the worker's message pipe (until it closes).
    pipe: Option<OwnedFd>,
    started: Instant,
    /// Set once it is to be replaced; it stops when the replacement is ready.
    recycle: Option<Recycle>,
    /// When it was told to stop (SIGKILL after the graceful timeout).
    stopping_since: Option<Instant>,
    /// Asked for its Python stacks; SIGKILL at this time.
    kill_at: Option<Instant>,
    /// This worker's jittered limits.
    lifetime: Option<Duration>,
    rss: Option<u64>,
    /// Its requests served when last looked at, and when it last served
    /// one (dynamic and ondemand modes retire idle workers).
    requests_seen: u64,
    active_at: Instant,
}

impl Worker {
    /// Tell it to stop with `signal` (TERM: finish your requests).
    fn stop(&mut self, signal: Signal) {
        let _ = kill(self.pid, signal);
        self.mark_stopping();
    }

    /// It is stopping from now on (SIGKILL after the graceful timeout).
    fn mark_stopping(&mut self) {
        self.state = State::Stopping;
        self.stopping_since = Some(Instant::now());
    }
}

struct Stop {
    deadline: Instant,
    killed: bool,
}

struct Master<'a> {
    options: MasterOptions,
    worker_main: WorkerMain<'a>,
    hooks: Option<&'a dyn ForkHooks>,
    target: usize,
    /// The generation new workers belong to (HUP starts a new one).
    generation: u64,
    workers: Vec<Worker>,
    stop: Option<Stop>,
    exit_code: i32,
    backoff: Duration,
    next_spawn: Instant,
    next_sample: Instant,
    /// READY=1 is due (at start and after each reload) once the current
    /// generation is all ready.
    announce_ready: bool,
    /// `--pm dynamic | ondemand`: what decides `target`.
    scaler: Option<Scaler>,
    /// After a reload: the new generation starts with as many workers as
    /// the old one had, before the scaler may retire any.
    reload_floor: Option<usize>,
    /// Watch the listening sockets this turn: no app thread is free to
    /// take a connection, so one that arrives needs a new worker.
    watch: bool,
}

/// Run the master until it is told to stop; returns the exit status.
/// `adopted`: workers of the image this one replaced (a `--preload`
/// reload); they serve until the first generation of this one is ready.
pub fn run<'a>(
    options: MasterOptions,
    worker_main: WorkerMain<'a>,
    hooks: Option<&'a dyn ForkHooks>,
    adopted: &[i32],
) -> std::io::Result<i32> {
    let mut mask = SigSet::empty();
    for signal in SIGNALS {
        mask.add(signal);
    }
    mask.thread_block()?;
    let mut signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let scaler = (options.pm != Pm::Static)
        .then(|| Scaler::new(options.pm.clone(), options.threads, Instant::now()));
    if let Some(board) = super::scoreboard::board() {
        board
            .pm
            .store(options.pm.code(), std::sync::atomic::Ordering::Relaxed);
    }
    let watch = scaler.is_some();
    let mut master = Master {
        target: match options.pm {
            Pm::Static => options.workers.max(1),
            ref pm => pm.initial(options.workers),
        },
        scaler,
        reload_floor: (!adopted.is_empty()).then_some(adopted.len()),
        // (Until the first turn decides: a connection may come first.)
        watch,
        options,
        worker_main,
        hooks,
        generation: u64::from(!adopted.is_empty()),
        workers: adopted
            .iter()
            .map(|&pid| Worker {
                pid: Pid::from_raw(pid),
                generation: 0,
                state: State::Ready,
                pipe: None,
                started: Instant::now(),
                recycle: None,
                stopping_since: None,
                kill_at: None,
                lifetime: None,
                rss: None,
                requests_seen: 0,
                active_at: Instant::now(),
            })
            .collect(),
        stop: None,
        exit_code: Exit::Success.code(),
        backoff: Duration::ZERO,
        next_spawn: Instant::now(),
        next_sample: Instant::now(),
        announce_ready: true,
    };
    match &master.options.pm {
        Pm::Static => log_info!("master: starting {} worker process(es)", master.target),
        pm => log_info!(
            "master: pm {} on {} socket(s): starting {} worker process(es), at most {}",
            pm.name(),
            master.options.listeners.len(),
            master.target,
            master.scaler.as_ref().map_or(0, Scaler::max)
        ),
    }
    loop {
        master.wait(&mut signals)?;
        master.reap();
        if let Some(code) = master.advance()? {
            log_info!("master: stopped");
            return Ok(code);
        }
    }
}

impl Master<'_> {
    /// Sleep until a signal, a worker's ready message, or the next deadline.
    fn wait(&mut self, signals: &mut SignalFd) -> std::io::Result<()> {
        let open: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].pipe.is_some())
            .collect();
        let mut revents = Vec::new();
        {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            for &i in &open {
                if let Some(fd) = &self.workers[i].pipe {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            if self.watch {
                for &fd in &self.options.listeners {
                    // SAFETY: the listening sockets stay open for as long
                    // as the master runs (the caller holds them).
                    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
            }
            let timeout = PollTimeout::try_from(self.next_wakeup()).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            revents.extend(
                fds.iter()
                    .skip(1)
                    .take(open.len())
                    .map(|f| f.any().unwrap_or(false)),
            );
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let signal = Signal::try_from(info.ssi_signo as i32).ok();
            if let Some(intent) = signal.and_then(intent) {
                self.on_intent(intent);
            }
        }
        for (&i, &readable) in open.iter().zip(&revents) {
            if readable {
                self.on_pipe(i);
            }
        }
        Ok(())
    }

    /// Milliseconds until something is due (at most a second).
    fn next_wakeup(&self) -> u32 {
        let now = Instant::now();
        let mut due = now + Duration::from_secs(1);
        if let Some(stop) = &self.stop {
            due = due.min(stop.deadline);
        } else {
            if self.next_spawn > now {
                due = due.min(self.next_spawn);
            }
            if let Some(scaler) = &self.scaler {
                let workers = self.workers.iter().any(|w| w.state != State::Stopping);
                due = due.min(scaler.next_due(workers, now));
            }
        }
        due.saturating_duration_since(now).as_millis() as u32 + 1
    }

    /// A worker's message: "R" ready, "X" recycle me (max-requests).
    fn on_pipe(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        let Some(fd) = &worker.pipe else {
            return;
        };
        let mut bytes = [0u8; 16];
        let n = match nix::unistd::read(fd, &mut bytes) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            Err(_) => 0,
        };
        if n == 0 {
            // EOF: it exited (or is exiting); reaping tells why.
            worker.pipe = None;
            return;
        }
        for &byte in &bytes[..n] {
            match Message::from_byte(byte) {
                Some(Message::Ready) if worker.state == State::Booting => {
                    worker.state = State::Ready;
                    log_info!(
                        "master: worker {} ready ({:.1} s to boot)",
                        worker.pid,
                        worker.started.elapsed().as_secs_f64()
                    );
                }
                Some(message @ (Message::Recycle | Message::TimedOut))
                    if worker.recycle.is_none() && worker.state != State::Stopping =>
                {
                    let cause = if message == Message::Recycle {
                        Recycle::MaxRequests
                    } else {
                        Recycle::RequestTimeout
                    };
                    worker.recycle = Some(cause);
                    log_info!(
                        "master: worker {} reached {}: starting its replacement",
                        worker.pid,
                        cause.name()
                    );
                }
                _ => {}
            }
        }
    }

    fn on_intent(&mut self, intent: Intent) {
        if self.stop.is_some() && intent != Intent::FastStop && intent != Intent::Reap {
            return;
        }
        match intent {
            Intent::GracefulStop => {
                notify::notify("STOPPING=1");
                log_info!("master: TERM: stopping gracefully");
                self.stop_all(
                    Signal::SIGTERM,
                    self.options.graceful_timeout + Duration::from_secs(5),
                );
            }
            Intent::FastStop => {
                notify::notify("STOPPING=1");
                log_info!("master: stopping now");
                self.stop_all(Signal::SIGINT, Duration::from_secs(2));
            }
            Intent::Reload if self.hooks.is_some() => {
                notify::reloading();
                let pids: Vec<i32> = self
                    .workers
                    .iter()
                    .filter(|w| w.state != State::Stopping)
                    .map(|w| w.pid.as_raw())
                    .collect();
                log_info!("master: HUP: re-executing to import the new code (--preload)");
                if let Some(hooks) = self.hooks {
                    let err = hooks.reexec(&pids);
                    log_error!(
                        "master: reload failed: cannot re-execute: {err}; still serving the old code"
                    );
                }
                notify::notify("READY=1");
            }
            Intent::Reload => {
                notify::reloading();
                self.announce_ready = true;
                if self.scaler.is_some() {
                    let live = self
                        .workers
                        .iter()
                        .filter(|w| w.generation == self.generation && w.state != State::Stopping)
                        .count();
                    self.target = live;
                    self.reload_floor = Some(live);
                }
                self.generation += 1;
                self.backoff = Duration::ZERO;
                self.next_spawn = Instant::now();
                log_info!(
                    "master: HUP: starting generation {} ({} worker(s)); the old ones stop once it is ready",
                    self.generation,
                    self.target
                );
            }
            Intent::MoreWorkers | Intent::FewerWorkers if self.scaler.is_some() => {
                if let Some(scaler) = &mut self.scaler {
                    let max = match intent {
                        Intent::MoreWorkers => scaler.max() + 1,
                        _ => scaler.max().saturating_sub(1),
                    };
                    scaler.set_max(max.min(super::scoreboard::SLOTS));
                    log_info!("master: at most {} worker(s)", scaler.max());
                }
            }
            Intent::MoreWorkers => {
                self.target = (self.target + 1).min(super::scoreboard::SLOTS);
                log_info!("master: TTIN: {} worker(s)", self.target);
            }
            Intent::FewerWorkers => {
                self.target = self.target.saturating_sub(1).max(1);
                log_info!("master: TTOU: {} worker(s)", self.target);
            }
            Intent::ReopenLogs => {
                log_info!("master: USR1: workers reopen their log files");
                for worker in &self.workers {
                    if worker.state == State::Ready {
                        let _ = kill(worker.pid, Signal::SIGUSR1);
                    }
                }
            }
            Intent::Reap => {}
        }
    }

    fn stop_all(&mut self, signal: Signal, grace: Duration) {
        for worker in &mut self.workers {
            worker.stop(signal);
        }
        let deadline = Instant::now() + grace;
        match &mut self.stop {
            Some(stop) => stop.deadline = stop.deadline.min(deadline),
            None => {
                self.stop = Some(Stop {
                    deadline,
                    killed: false,
                })
            }
        }
    }

    /// Collect exited workers and decide what each exit means.
    fn reap(&mut self) {
        loop {
            let (pid, code, how) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code, format!("exit status {code}")),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, -1, format!("signal {signal}")),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(board) = super::scoreboard::board() {
                board.release(pid.as_raw() as u32);
            }
            let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let worker = self.workers.swap_remove(index);
            if self.stop.is_some() || worker.state == State::Stopping {
                log_info!("master: worker {pid} exited ({how})");
                continue;
            }
            if worker.state == State::Booting
                && (code == Exit::AppLoad.code() || code == Exit::Setup.code())
            {
                self.boot_failed(&worker, code, &how);
                continue;
            }
            let young = worker.started.elapsed() < Duration::from_secs(1);
            self.backoff = if young {
                (self.backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(10))
            } else {
                Duration::ZERO
            };
            self.next_spawn = Instant::now() + self.backoff;
            log_warn!(
                "master: worker {pid} died ({how}); replacing it{}",
                if young {
                    format!(" in {:.1} s", self.backoff.as_secs_f64())
                } else {
                    String::new()
                }
            );
        }
    }

    /// A worker could not boot. During a reload, the reload is cancelled
    /// (the old generation keeps serving); a replacement in a generation
    /// that is serving is retried with back-off; with nobody serving, the
    /// master stops with the worker's status (no respawn storm).
    fn boot_failed(&mut self, worker: &Worker, code: i32, how: &str) {
        let serving = self
            .workers
            .iter()
            .filter(|w| w.state == State::Ready)
            .map(|w| w.generation)
            .max();
        let what = if code == Exit::AppLoad.code() {
            "the application failed to import"
        } else {
            "it could not start"
        };
        match serving {
            Some(old) if old < worker.generation => {
                log_error!(
                    "master: reload cancelled: new worker {} failed ({how}: {what}); generation {old} goes on serving",
                    worker.pid
                );
                for other in &mut self.workers {
                    if other.generation > old && other.state != State::Stopping {
                        other.stop(Signal::SIGTERM);
                    }
                }
                self.generation = old;
                self.announce_ready = true;
            }
            Some(_) => {
                self.backoff =
                    (self.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
                self.next_spawn = Instant::now() + self.backoff;
                log_error!(
                    "master: replacement worker {} failed ({how}: {what}); retrying in {:.0} s",
                    worker.pid,
                    self.backoff.as_secs_f64()
                );
            }
            None => {
                log_error!(
                    "master: worker {} failed to boot ({how}: {what}); stopping instead of respawning",
                    worker.pid
                );
                self.exit_code = code;
                self.stop_all(Signal::SIGTERM, Duration::from_secs(5));
            }
        }
    }

    /// Do what is due: finish a stop, complete a reload, keep the count.
    fn advance(&mut self) -> std::io::Result<Option<i32>> {
        let now = Instant::now();
        if self.stop.is_some() {
            return Ok(self.stopping(now));
        }
        self.check_limits(now);
        self.kill_overdue();
        self.scale(now);
        let current = |w: &&Worker, g: u64| {
            w.generation == g && w.state != State::Stopping && w.recycle.is_none()
        };
        let live = self
            .workers
            .iter()
            .filter(|w| current(w, self.generation))
            .count();
        let ready = self
            .workers
            .iter()
            .filter(|w| current(w, self.generation) && w.state == State::Ready)
            .count();
        if ready >= self.target {
            self.all_ready(ready);
        }
        if live < self.target && now >= self.next_spawn {
            for _ in live..self.target {
                self.spawn()?;
            }
        } else if live > self.target {
            self.retire_newest();
        }
        Ok(None)
    }

    /// Stopping: the exit status once every worker is gone; past the
    /// deadline, SIGKILL for those still there.
    fn stopping(&mut self, now: Instant) -> Option<i32> {
        let stop = self.stop.as_mut()?;
        if self.workers.is_empty() {
            return Some(self.exit_code);
        }
        if now >= stop.deadline && !stop.killed {
            stop.killed = true;
            for worker in &self.workers {
                log_warn!("master: worker {} still running: SIGKILL", worker.pid);
                let _ = kill(worker.pid, Signal::SIGKILL);
            }
        }
        None
    }

    /// The current generation has its `ready` workers: tell systemd (once),
    /// and let go of what they replace — the old generation (a reload) and
    /// the workers being recycled.
    fn all_ready(&mut self, ready: usize) {
        self.reload_floor = None;
        if self.announce_ready {
            self.announce_ready = false;
            notify::notify(&format!(
                "READY=1\nMAINPID={}\nSTATUS=serving with {ready} worker(s), generation {}",
                std::process::id(),
                self.generation
            ));
        }
        let mut retired = 0;
        for worker in &mut self.workers {
            if worker.generation < self.generation && worker.state != State::Stopping {
                worker.stop(Signal::SIGTERM);
                retired += 1;
            }
        }
        if retired > 0 {
            log_info!(
                "master: generation {} ready; {retired} old worker(s) finishing their requests",
                self.generation
            );
        }
        for worker in &mut self.workers {
            if let (Some(cause), State::Ready | State::Booting) = (worker.recycle, worker.state) {
                worker.stop(Signal::SIGTERM);
                log_info!(
                    "master: worker {} recycled ({}): finishing its requests",
                    worker.pid,
                    cause.name()
                );
                if let Some(board) = super::scoreboard::board() {
                    board.recycles[cause as usize]
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// `--pm dynamic | ondemand`: look at the workers and the listening
    /// sockets, let the scaler decide, and set `target` (or retire one).
    fn scale(&mut self, now: Instant) {
        let Some(scaler) = self.scaler.as_mut() else {
            return;
        };
        let board = super::scoreboard::board();
        let threads = self.options.threads.max(1) as u64;
        let mut view = View::default();
        for worker in &mut self.workers {
            if worker.state == State::Stopping {
                continue;
            }
            let slot = board.and_then(|b| b.slot_of(worker.pid.as_raw() as u32));
            let load = |a: &std::sync::atomic::AtomicU32| {
                u64::from(a.load(std::sync::atomic::Ordering::Acquire))
            };
            // (Ready once imported, accepting a moment later: until then
            // a connection waiting is its, not one for a new worker.)
            let accepting =
                slot.is_some_and(|s| s.accepting.load(std::sync::atomic::Ordering::Acquire) != 0);
            let (running, requests) = slot.map_or((0, 0), |s| {
                (
                    load(&s.running),
                    s.requests.load(std::sync::atomic::Ordering::Relaxed),
                )
            });
            if worker.state == State::Ready && accepting {
                view.free_threads += threads.saturating_sub(running);
            }
            if worker.generation != self.generation || worker.recycle.is_some() {
                continue;
            }
            if worker.state == State::Booting || !accepting {
                view.booting += 1;
                continue;
            }
            if running > 0 || requests != worker.requests_seen {
                worker.requests_seen = requests;
                worker.active_at = now;
            }
            view.ready.push(Seen {
                pid: worker.pid.as_raw(),
                idle_for: (running == 0).then(|| now.saturating_duration_since(worker.active_at)),
            });
        }
        if view.free_threads == 0 {
            view.queued = queued(&self.options.listeners);
        }
        let live = view.booting + view.ready.len();
        let was_at_max = scaler.at_max;
        let mut decision = scaler.decide(&view, now);
        if scaler.at_max && !was_at_max {
            log_warn!(
                "master: connections wait and all {} worker(s) (--max-workers) are busy; consider raising it",
                scaler.max()
            );
            if let Some(board) = board {
                board
                    .max_children_reached
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if self.reload_floor.is_some() && matches!(decision, Decision::Retire(_)) {
            decision = Decision::Keep;
        }
        // (Keep: a recycled worker's replacement and one that died are
        // started as with --pm static; the scaler trims later.)
        let floor = self.reload_floor.unwrap_or(0);
        self.target = match decision {
            Decision::Keep => self.target.min(scaler.max()),
            Decision::Spawn(n) => self.target.max(live + n).min(scaler.max()),
            Decision::Retire(pid) => {
                if let Some(worker) = self.workers.iter_mut().find(|w| w.pid.as_raw() == pid) {
                    log_info!(
                        "master: worker {pid} idle for {:.1} s: retiring it (pm {})",
                        now.saturating_duration_since(worker.active_at)
                            .as_secs_f64(),
                        scaler.pm().name()
                    );
                    worker.stop(Signal::SIGTERM);
                }
                live - 1
            }
        }
        .max(floor);
        self.watch = view.free_threads == 0
            && view.booting == 0
            && live < scaler.max()
            && now >= self.next_spawn;
    }

    /// TTOU: the newest extra worker finishes and leaves.
    fn retire_newest(&mut self) {
        if let Some(worker) = self
            .workers
            .iter_mut()
            .filter(|w| {
                w.generation == self.generation && w.state != State::Stopping && w.recycle.is_none()
            })
            .max_by_key(|w| w.started)
        {
            worker.stop(Signal::SIGTERM);
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        // (A worker holds no other worker's pipe: the child drops them.)
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let master = nix::unistd::getpid();
        if let Some(hooks) = self.hooks {
            hooks.before_fork();
        }
        // SAFETY: the master is single-threaded (no runtime; with --preload
        // an interpreter whose fork hooks bracket this call), so the child
        // may run arbitrary code after fork.
        let forked = unsafe { fork() };
        if let (Some(hooks), Ok(ForkResult::Parent { .. }) | Err(_)) = (self.hooks, &forked) {
            hooks.after_fork_parent();
        }
        match forked? {
            ForkResult::Child => {
                if let Some(hooks) = self.hooks {
                    hooks.after_fork_child();
                }
                drop(read);
                for worker in &mut self.workers {
                    worker.pipe = None;
                }
                // Workers do not outlive their master (even a SIGKILLed one).
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
                if nix::unistd::getppid() != master {
                    std::process::exit(Exit::Success.code());
                }
                // The worker handles its own signals.
                let _ = SigSet::empty().thread_set_mask();
                if let Some(board) = super::scoreboard::board()
                    && let Some(index) = board.claim(std::process::id())
                {
                    super::scoreboard::adopt(index);
                }
                let code = (self.worker_main)(ToMaster(write));
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(write);
                self.workers.push(Worker {
                    pid: child,
                    generation: self.generation,
                    state: State::Booting,
                    pipe: Some(read),
                    started: Instant::now(),
                    recycle: None,
                    stopping_since: None,
                    kill_at: None,
                    lifetime: self
                        .options
                        .max_lifetime
                        .map(|l| l + Duration::from_millis(jitter(l.as_millis() as u64 / 10))),
                    rss: self.options.max_rss.map(|r| r - jitter(r / 20)),
                    requests_seen: 0,
                    active_at: Instant::now(),
                });
                Ok(())
            }
        }
    }
}

/// Connections waiting in the queues of `listeners` (a readable socket
/// whose queue cannot be read counts one).
fn queued(listeners: &[RawFd]) -> u64 {
    let mut fds: Vec<PollFd> = listeners
        .iter()
        // SAFETY: as in `Master::wait`: open for the master's lifetime.
        .map(|&fd| PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN))
        .collect();
    if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
        return 0;
    }
    listeners
        .iter()
        .zip(&fds)
        .filter(|(_, f)| f.any().unwrap_or(false))
        .map(|(&fd, _)| super::listenq::queue(fd).map_or(1, |(waiting, _)| waiting.max(1)))
        .sum()
}
