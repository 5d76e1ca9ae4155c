//! The master of `wsgi-fcgi --workers N`: forks the workers, supervises
//! them, and turns signals into intents (gunicorn's arbiter, pingora's
//! shutdown intents). It holds the listening sockets for as long as it runs
//! — a worker only ever closes its own copies — so no connection is refused
//! while workers come and go.
//!
//! One loop, no threads: signals arrive on a `signalfd`, each worker's
//! message pipe ([`super::Message`]: ready, recycle me, a request timed
//! out) is polled, children are reaped and
//! limits checked every turn. A master runs one pool (an app, its sockets,
//! its workers: `pool.rs`) or several (`[pool.NAME]` in `--config`): one
//! loop for all, each pool with its own workers, scoreboard and process
//! manager; a pool whose app does not import is retried with back-off
//! while the others serve.
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
use std::os::fd::{AsFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::scoreboard::Board;
use super::signals::{Intent, SIGNALS, intent};
use super::{ToMaster, notify};
use crate::{log_error, log_info};

mod limits;
pub mod pm;
mod pool;
mod scale;
pub mod template;

use pm::Pm;
use pool::Pool;

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
pub type WorkerMain<'a> = Box<dyn Fn(ToMaster) -> i32 + 'a>;

/// Several pools: HUP reads their configuration again.
pub trait Reconfigure<'a> {
    /// The pools as the configuration says now (sockets bound, those of
    /// pools still there reused), or why it cannot be used — then nothing
    /// changes.
    fn read(&self) -> Result<Vec<PoolSpec<'a>>, String>;
}

/// One pool to run: what [`run_pools`] takes per pool.
pub struct PoolSpec<'a> {
    /// Its name (the status page's `pool`, the log lines' `pool NAME:`).
    pub name: String,
    /// How it runs.
    pub options: MasterOptions,
    /// What its workers run.
    pub worker_main: WorkerMain<'a>,
    /// `preload = true`: what its template runs (it imports the app and
    /// forks the workers, which then run `worker_main`'s work).
    pub template_main: Option<template::TemplateMain<'a>>,
}

struct Stop {
    deadline: Instant,
    killed: bool,
}

struct Master<'a> {
    pools: Vec<Pool<'a>>,
    stop: Option<Stop>,
    exit_code: i32,
    /// Several pools: what HUP reads again.
    reconfigure: Option<&'a dyn Reconfigure<'a>>,
    /// READY=1 is due (at start, after a reload) once every pool's current
    /// generation is ready (or the pool failed, or is going).
    ready_due: bool,
}

/// Run the master of one pool until it is told to stop; returns the exit
/// status. `board`: the pool's scoreboard, if it has one; `template_main`:
/// `--preload` (the workers are forked from a template that imported the
/// app: [`template`]).
pub fn run<'a>(
    options: MasterOptions,
    worker_main: WorkerMain<'a>,
    template_main: Option<template::TemplateMain<'a>>,
    board: Option<&'static Board>,
) -> std::io::Result<i32> {
    let signals = block_signals()?;
    if template_main.is_some() {
        nix::sys::prctl::set_child_subreaper(true)?;
    }
    let pool = Pool::new(None, options, worker_main, board).with_template(template_main);
    Master::new(vec![pool], None).run(signals)
}

/// Run the master of several pools (`[pool.NAME]`) until it is told to
/// stop; returns the exit status. Each pool gets a scoreboard of its own;
/// HUP reads the pools again from `reconfigure`.
pub fn run_pools<'a>(
    pools: Vec<PoolSpec<'a>>,
    reconfigure: &'a dyn Reconfigure<'a>,
) -> std::io::Result<i32> {
    let signals = block_signals()?;
    log_info!("master: {} pool(s)", pools.len());
    // Workers forked by a pool's template (`preload`) are re-parented
    // here when the process that forked them exits.
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut running = Vec::new();
    for p in pools {
        let board = super::scoreboard::create()?;
        running.push(
            Pool::new(Some(&p.name), p.options, p.worker_main, Some(board))
                .with_template(p.template_main),
        );
    }
    Master::new(running, Some(reconfigure)).run(signals)
}

/// The master's signals, blocked and read from a `signalfd`.
fn block_signals() -> std::io::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for signal in SIGNALS {
        mask.add(signal);
    }
    mask.thread_block()?;
    Ok(SignalFd::with_flags(
        &mask,
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    )?)
}

impl<'a> Master<'a> {
    fn new(pools: Vec<Pool<'a>>, reconfigure: Option<&'a dyn Reconfigure<'a>>) -> Master<'a> {
        Master {
            pools,
            stop: None,
            exit_code: Exit::Success.code(),
            reconfigure,
            ready_due: true,
        }
    }

    fn run(mut self, mut signals: SignalFd) -> std::io::Result<i32> {
        loop {
            self.wait(&mut signals)?;
            self.reap();
            if let Some(code) = self.advance()? {
                log_info!("master: stopped");
                return Ok(code);
            }
        }
    }

    /// Sleep until a signal, a worker's message, a connection no worker is
    /// free to take, or the next deadline.
    fn wait(&mut self, signals: &mut SignalFd) -> std::io::Result<()> {
        let timeout = PollTimeout::try_from(self.next_wakeup()).unwrap_or(PollTimeout::MAX);
        let mut readable: Vec<(usize, pool::Source)> = Vec::new();
        {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            let mut owners = Vec::new();
            for (p, pool) in self.pools.iter().enumerate() {
                for (source, fd) in pool.poll_fds() {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    owners.push((p, source));
                }
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            for (fd, &(p, source)) in fds.iter().skip(1).zip(&owners) {
                if fd.any().unwrap_or(false) {
                    readable.push((p, source));
                }
            }
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let signal = Signal::try_from(info.ssi_signo as i32).ok();
            if let Some(intent) = signal.and_then(intent) {
                self.on_intent(intent);
            }
        }
        for (p, source) in readable {
            self.pools[p].on_readable(source);
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
            for pool in &self.pools {
                due = due.min(pool.next_due(now));
            }
        }
        due.saturating_duration_since(now).as_millis() as u32 + 1
    }

    fn on_intent(&mut self, intent: Intent) {
        if self.stop.is_some() && intent != Intent::FastStop && intent != Intent::Reap {
            return;
        }
        match intent {
            Intent::GracefulStop => {
                notify::notify("STOPPING=1");
                log_info!("master: TERM: stopping gracefully");
                let grace = self
                    .pools
                    .iter()
                    .map(|p| p.options.graceful_timeout)
                    .max()
                    .unwrap_or_default();
                self.stop_all(Signal::SIGTERM, grace + Duration::from_secs(5));
            }
            Intent::FastStop => {
                notify::notify("STOPPING=1");
                log_info!("master: stopping now");
                self.stop_all(Signal::SIGINT, Duration::from_secs(2));
            }
            Intent::Reload => match self.reconfigure.map(|r| r.read()) {
                None => {
                    notify::reloading();
                    self.ready_due = true;
                    for pool in &mut self.pools {
                        pool.on_intent(intent);
                    }
                }
                Some(Err(why)) => {
                    log_error!("master: HUP: {why}; nothing changed: the pools go on as they were")
                }
                Some(Ok(specs)) => {
                    notify::reloading();
                    self.ready_due = true;
                    self.apply(specs);
                }
            },
            Intent::ReopenLogs => {
                log_info!("master: USR1: workers reopen their log files");
                for pool in &mut self.pools {
                    pool.on_intent(intent);
                }
            }
            _ => {
                for pool in &mut self.pools {
                    pool.on_intent(intent);
                }
            }
        }
    }

    /// HUP with several pools: `specs` is the configuration now. A pool
    /// no longer in it finishes its requests and goes; every other one
    /// starts a new generation with its settings of now (the old one stops
    /// once it is ready, as on any reload); a new one starts.
    fn apply(&mut self, specs: Vec<PoolSpec<'a>>) {
        for pool in &mut self.pools {
            if !pool.removed && !specs.iter().any(|s| Some(s.name.as_str()) == pool.name()) {
                pool.remove();
            }
        }
        for spec in specs {
            let running = self
                .pools
                .iter_mut()
                .find(|p| !p.removed && p.name() == Some(spec.name.as_str()));
            match running {
                Some(pool) => pool.replace(spec.options, spec.worker_main, spec.template_main),
                None => match super::scoreboard::create() {
                    Ok(board) => {
                        log_info!("master: HUP: pool {} added", spec.name);
                        let pool = Pool::new(
                            Some(&spec.name),
                            spec.options,
                            spec.worker_main,
                            Some(board),
                        )
                        .with_template(spec.template_main);
                        self.pools.push(pool);
                    }
                    Err(e) => log_error!(
                        "master: HUP: pool {} not started: no scoreboard: {e}",
                        spec.name
                    ),
                },
            }
        }
    }

    fn stop_all(&mut self, signal: Signal, grace: Duration) {
        for pool in &mut self.pools {
            pool.stop_all(signal);
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

    /// Collect exited workers; their pool decides what each exit means.
    fn reap(&mut self) {
        loop {
            let (pid, code, how) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code, format!("exit status {code}")),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, -1, format!("signal {signal}")),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let stopping = self.stop.is_some();
            if let Some(pool) = self.pools.iter_mut().find(|p| p.has_template(pid)) {
                if stopping {
                    continue;
                }
                if let Some(code) = pool.template_exited(pid, code, &how) {
                    self.exit_code = code;
                    self.stop_all(Signal::SIGTERM, Duration::from_secs(5));
                }
                continue;
            }
            let Some(pool) = self
                .pools
                .iter_mut()
                .find(|p| p.workers.iter().any(|w| w.pid == pid))
            else {
                continue;
            };
            if let Some(code) = pool.exited(pid, code, &how, stopping) {
                self.exit_code = code;
                self.stop_all(Signal::SIGTERM, Duration::from_secs(5));
            }
        }
    }

    /// Do what is due: finish a stop, or each pool's turn; READY=1 once
    /// every pool's current generation is ready.
    fn advance(&mut self) -> std::io::Result<Option<i32>> {
        if self.stop.is_some() {
            return Ok(self.stopping(Instant::now()));
        }
        self.pools.retain(|p| {
            let gone = p.removed && p.workers.is_empty();
            if gone {
                log_info!("{}removed", p.tag);
            }
            !gone
        });
        for p in 0..self.pools.len() {
            let others: Vec<RawFd> = (0..self.pools.len())
                .filter(|&q| q != p)
                .flat_map(|q| self.pools[q].own_fds())
                .collect();
            self.pools[p].advance(&others)?;
        }
        if self.ready_due
            && self
                .pools
                .iter()
                .all(|p| !p.announce_ready || p.failed || p.removed)
        {
            self.ready_due = false;
            let ready: usize = self.pools.iter().map(Pool::ready_count).sum();
            let status = match &self.pools[..] {
                [pool] => format!(
                    "serving with {ready} worker(s), generation {}",
                    pool.generation()
                ),
                pools => format!(
                    "serving {} pool(s) with {ready} worker(s){}",
                    pools.len(),
                    failed_pools(pools)
                ),
            };
            notify::notify(&format!(
                "READY=1\nMAINPID={}\nSTATUS={status}",
                std::process::id()
            ));
        }
        Ok(None)
    }

    /// Stopping: the exit status once every worker is gone; past the
    /// deadline, SIGKILL for those still there.
    fn stopping(&mut self, now: Instant) -> Option<i32> {
        let stop = self.stop.as_mut()?;
        if self.pools.iter().all(|p| p.workers.is_empty()) {
            return Some(self.exit_code);
        }
        if now >= stop.deadline && !stop.killed {
            stop.killed = true;
            for worker in self.pools.iter().flat_map(|p| &p.workers) {
                crate::log_warn!("master: worker {} still running: SIGKILL", worker.pid);
                let _ = nix::sys::signal::kill(worker.pid, Signal::SIGKILL);
            }
        }
        None
    }
}

/// "; failed: a, b" for the pools whose app does not import.
fn failed_pools(pools: &[Pool<'_>]) -> String {
    let failed: Vec<&str> = pools
        .iter()
        .filter(|p| p.failed)
        .map(|p| p.tag.trim_start_matches("pool ").trim_end_matches(": "))
        .collect();
    if failed.is_empty() {
        String::new()
    } else {
        format!("; failed: {}", failed.join(", "))
    }
}
