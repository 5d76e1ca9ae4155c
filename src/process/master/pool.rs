//! One pool of a master: its workers (forked, ready, stopping), the
//! generation they belong to, how many to keep ([`super::pm`]), and what
//! each of their messages and exits means. The master
//! ([`super::Master`]) runs one loop for all its pools: signals, the
//! stop, reaping. What a worker's messages and exits mean:
//! [`events`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::{ForkResult, Pid, fork};

use super::pm::{Pm, Scaler};
use super::template::{Template, TemplateMain};
use super::{MasterOptions, WorkerMain};
use crate::core::exit::Exit;
use crate::process::Message;
use crate::process::ToMaster;
use crate::process::recycle::{Recycle, jitter};
use crate::process::scoreboard::Board;
use crate::process::signals::Intent;
use crate::{log_error, log_info, log_warn};

mod events;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Forked; importing the app.
    Booting,
    /// Accepting connections.
    Ready,
    /// Told to stop (TERM); finishing its requests.
    Stopping,
}

pub(super) struct Worker {
    pub(super) pid: Pid,
    pub(super) generation: u64,
    pub(super) state: State,
    /// Read end of the worker's message pipe (until it closes).
    pub(super) pipe: Option<OwnedFd>,
    pub(super) started: Instant,
    /// Set once it is to be replaced; it stops when the replacement is ready.
    pub(super) recycle: Option<Recycle>,
    /// When it was told to stop (SIGKILL after the graceful timeout).
    pub(super) stopping_since: Option<Instant>,
    /// Asked for its Python stacks; SIGKILL at this time.
    pub(super) kill_at: Option<Instant>,
    /// This worker's jittered limits.
    pub(super) lifetime: Option<Duration>,
    pub(super) rss: Option<u64>,
    /// Its requests served when last looked at, and when it last served
    /// one (dynamic and ondemand modes retire idle workers).
    pub(super) requests_seen: u64,
    pub(super) active_at: Instant,
}

impl Worker {
    /// Forked just now, booting, its messages on `pipe` (no limits yet).
    pub(super) fn booting(pid: Pid, generation: u64, pipe: Option<OwnedFd>) -> Worker {
        Worker {
            pid,
            generation,
            state: State::Booting,
            pipe,
            started: Instant::now(),
            recycle: None,
            stopping_since: None,
            kill_at: None,
            lifetime: None,
            rss: None,
            requests_seen: 0,
            active_at: Instant::now(),
        }
    }

    /// Tell it to stop with `signal` (TERM: finish your requests).
    pub(super) fn stop(&mut self, signal: Signal) {
        let _ = kill(self.pid, signal);
        self.mark_stopping();
    }

    /// It is stopping from now on (SIGKILL after the graceful timeout).
    pub(super) fn mark_stopping(&mut self) {
        self.state = State::Stopping;
        self.stopping_since = Some(Instant::now());
    }
}

/// One pool: an app, its sockets, its workers.
pub(super) struct Pool<'a> {
    /// "master: " or "pool NAME: ", before its log lines.
    pub(super) tag: String,
    pub(super) options: MasterOptions,
    worker_main: WorkerMain<'a>,
    /// Its scoreboard (each pool has its own; a worker installs its
    /// pool's as the process's board).
    pub(super) board: Option<&'static Board>,
    pub(super) target: usize,
    /// The generation new workers belong to (HUP starts a new one).
    pub(super) generation: u64,
    pub(super) workers: Vec<Worker>,
    pub(super) backoff: Duration,
    pub(super) next_spawn: Instant,
    pub(super) next_sample: Instant,
    /// The current generation is not all ready yet (at start and after
    /// each reload): READY=1 waits for it.
    pub(super) announce_ready: bool,
    /// `--pm dynamic | ondemand`: what decides `target`.
    pub(super) scaler: Option<Scaler>,
    /// After a reload: the new generation starts with as many workers as
    /// the old one had, before the scaler may retire any.
    pub(super) reload_floor: Option<usize>,
    /// Watch the listening sockets this turn: no app thread is free to
    /// take a connection, so one that arrives needs a new worker.
    pub(super) watch: bool,
    /// The master's only pool: a first worker that cannot boot stops the
    /// master (exit status 4) instead of being retried.
    standalone: bool,
    /// Its app does not import (retried with back-off); cleared once a
    /// worker is ready.
    pub(super) failed: bool,
    /// Its name (`None`: the master's only pool).
    name: Option<String>,
    /// No longer in the configuration: its workers finish and it goes.
    pub(super) removed: bool,
    /// `preload = true`: what its template runs (its workers are forked
    /// from the template, [`template`]); the template of the current
    /// generation, and the one it replaces until it is ready.
    pub(super) template_main: Option<TemplateMain<'a>>,
    pub(super) template: Option<Template>,
    pub(super) old_template: Option<Template>,
}

/// What a descriptor of [`Pool::poll_fds`] is.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source {
    /// The message pipe of `workers[i]`.
    Worker(usize),
    /// The link to its template, while the template imports the app.
    Template,
    /// A listening socket (watched, never read: a connection waits).
    Listener,
}

impl<'a> Pool<'a> {
    /// A pool of `options`, its workers running `worker_main`.
    pub(super) fn new(
        name: Option<&str>,
        options: MasterOptions,
        worker_main: WorkerMain<'a>,
        board: Option<&'static Board>,
    ) -> Pool<'a> {
        let scaler = (options.pm != Pm::Static)
            .then(|| Scaler::new(options.pm.clone(), options.threads, Instant::now()));
        if let Some(board) = board {
            board
                .pm
                .store(options.pm.code(), std::sync::atomic::Ordering::Relaxed);
        }
        let pool = Pool {
            tag: name.map_or("master: ".into(), |n| format!("pool {n}: ")),
            target: match options.pm {
                Pm::Static => options.workers.max(1),
                ref pm => pm.initial(options.workers),
            },
            // (Until the first turn decides: a connection may come first.)
            watch: scaler.is_some(),
            scaler,
            reload_floor: None,
            options,
            worker_main,
            board,
            generation: 0,
            workers: Vec::new(),
            backoff: Duration::ZERO,
            next_spawn: Instant::now(),
            next_sample: Instant::now(),
            announce_ready: true,
            standalone: name.is_none(),
            failed: false,
            name: name.map(str::to_string),
            removed: false,
            template_main: None,
            template: None,
            old_template: None,
        };
        match &pool.options.pm {
            Pm::Static => log_info!("{}starting {} worker process(es)", pool.tag, pool.target),
            pm => log_info!(
                "{}pm {} on {} socket(s): starting {} worker process(es), at most {}",
                pool.tag,
                pm.name(),
                pool.options.listeners.len(),
                pool.target,
                pool.scaler.as_ref().map_or(0, Scaler::max)
            ),
        }
        pool
    }

    /// The descriptors the master polls for this pool: its workers'
    /// pipes, its template's link while it boots and, while
    /// [`Pool::watch`], its listening sockets.
    pub(super) fn poll_fds(&self) -> Vec<(Source, BorrowedFd<'_>)> {
        let mut fds: Vec<(Source, BorrowedFd<'_>)> = self
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| Some((Source::Worker(i), w.pipe.as_ref()?.as_fd())))
            .collect();
        if let Some(t) = self.template.as_ref().filter(|t| !t.ready) {
            fds.push((Source::Template, t.fd()));
        }
        if self.watch {
            for &fd in &self.options.listeners {
                // SAFETY: the listening sockets stay open for as long as
                // the master runs (the caller holds them).
                fds.push((Source::Listener, unsafe { BorrowedFd::borrow_raw(fd) }));
            }
        }
        fds
    }

    /// `source` is readable. (A listener needs nothing here: the turn's
    /// [`Pool::scale`] sees the connection waiting.)
    pub(super) fn on_readable(&mut self, source: Source) {
        match source {
            Source::Worker(i) => self.on_pipe(i),
            Source::Template => self.on_template(),
            Source::Listener => {}
        }
    }

    /// The descriptors of this pool a worker of another pool must not
    /// keep: the workers' pipes and the listening sockets.
    pub(super) fn own_fds(&self) -> Vec<RawFd> {
        use std::os::fd::AsRawFd;
        let pipes = self
            .workers
            .iter()
            .filter_map(|w| Some(w.pipe.as_ref()?.as_raw_fd()));
        let templates = [&self.template, &self.old_template]
            .into_iter()
            .flatten()
            .map(|t| t.fd().as_raw_fd());
        pipes
            .chain(templates)
            .chain(self.options.listeners.iter().copied())
            .collect()
    }

    /// When this pool next needs a turn (at the latest).
    pub(super) fn next_due(&self, now: Instant) -> Instant {
        let mut due = now + Duration::from_secs(1);
        if self.next_spawn > now {
            due = due.min(self.next_spawn);
        }
        if let Some(scaler) = &self.scaler {
            let workers = self.workers.iter().any(|w| w.state != State::Stopping);
            due = due.min(scaler.next_due(workers, now));
        }
        due
    }

    /// Workers of the current generation that are ready.
    pub(super) fn ready_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.generation == self.generation && w.state == State::Ready)
            .count()
    }

    /// The current generation.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Its name (`None`: the master's only pool).
    pub(super) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// No longer configured: every worker finishes its requests and exits;
    /// then the master drops the pool (and with it its sockets).
    pub(super) fn remove(&mut self) {
        log_info!(
            "{}HUP: no longer configured: its {} worker(s) finish their requests",
            self.tag,
            self.workers.len()
        );
        self.removed = true;
        self.watch = false;
        self.stop_all(Signal::SIGTERM);
    }

    /// HUP with new settings: the next generation runs `worker_main` as
    /// `options` say (the workers running go on as forked, until the new
    /// generation is ready).
    pub(super) fn replace(
        &mut self,
        options: MasterOptions,
        worker_main: WorkerMain<'a>,
        template_main: Option<TemplateMain<'a>>,
    ) {
        if options.pm != self.options.pm {
            log_info!(
                "{}HUP: pm {} → {}",
                self.tag,
                self.options.pm.name(),
                options.pm.name()
            );
        }
        self.scaler = (options.pm != Pm::Static)
            .then(|| Scaler::new(options.pm.clone(), options.threads, Instant::now()));
        if let Some(board) = self.board {
            board
                .pm
                .store(options.pm.code(), std::sync::atomic::Ordering::Relaxed);
        }
        if options.pm == Pm::Static {
            self.target = options.workers.max(1);
        }
        self.options = options;
        self.worker_main = worker_main;
        if template_main.is_none() {
            self.stop_templates();
        }
        self.template_main = template_main;
        self.failed = false;
        self.on_intent(Intent::Reload);
    }

    /// Tell every worker to stop with `signal`.
    pub(super) fn stop_all(&mut self, signal: Signal) {
        for worker in &mut self.workers {
            worker.stop(signal);
        }
        self.stop_templates();
    }

    /// Do what is due: complete a reload, keep the count. `others`: the
    /// descriptors a new worker closes (other pools' pipes and sockets).
    pub(super) fn advance(&mut self, others: &[RawFd]) -> std::io::Result<()> {
        let now = Instant::now();
        if self.removed {
            self.kill_overdue();
            return Ok(());
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
            if ready > 0 {
                self.failed = false;
            }
            self.all_ready();
        }
        let stale = |t: &Template| t.generation != self.generation;
        if self.template_main.is_some()
            && now >= self.next_spawn
            && self.template.as_ref().is_none_or(stale)
        {
            self.start_template(others)?;
        }
        if live < self.target && now >= self.next_spawn {
            for _ in live..self.target {
                self.spawn(others)?;
            }
        } else if live > self.target {
            self.retire_newest();
        }
        Ok(())
    }

    /// The current generation has its workers ready: let go of what they replace — the old generation (a reload) and
    /// the workers being recycled.
    fn all_ready(&mut self) {
        if let Some(old) = self.old_template.take() {
            let _ = kill(old.pid, Signal::SIGTERM);
        }
        self.reload_floor = None;
        self.announce_ready = false;
        let mut retired = 0;
        for worker in &mut self.workers {
            if worker.generation < self.generation && worker.state != State::Stopping {
                worker.stop(Signal::SIGTERM);
                retired += 1;
            }
        }
        if retired > 0 {
            log_info!(
                "{}generation {} ready; {retired} old worker(s) finishing their requests",
                self.tag,
                self.generation
            );
        }
        for worker in &mut self.workers {
            if let (Some(cause), State::Ready | State::Booting) = (worker.recycle, worker.state) {
                worker.stop(Signal::SIGTERM);
                log_info!(
                    "{}worker {} recycled ({}): finishing its requests",
                    self.tag,
                    worker.pid,
                    cause.name()
                );
                if let Some(board) = self.board {
                    board.recycles[cause as usize]
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
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

    /// A worker forked just now, booting, its messages on `pipe`, with
    /// its jittered limits.
    pub(super) fn add_worker(&mut self, pid: Pid, pipe: OwnedFd) {
        self.workers.push(Worker {
            lifetime: self
                .options
                .max_lifetime
                .map(|l| l + Duration::from_millis(jitter(l.as_millis() as u64 / 10))),
            rss: self.options.max_rss.map(|r| r - jitter(r / 20)),
            ..Worker::booting(pid, self.generation, Some(pipe))
        });
    }

    fn spawn(&mut self, others: &[RawFd]) -> std::io::Result<()> {
        if self.template_main.is_some() {
            return self.spawn_from_template();
        }
        // (A worker holds no other worker's pipe: the child drops them.)
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let master = nix::unistd::getpid();
        // SAFETY: the master is single-threaded (no runtime, no Python),
        // so the child may run arbitrary code after fork.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(read);
                for worker in &mut self.workers {
                    worker.pipe = None;
                }
                for &fd in others {
                    let _ = nix::unistd::close(fd);
                }
                become_worker(master, self.board, write, &*self.worker_main)
            }
            ForkResult::Parent { child } => {
                drop(write);
                self.add_worker(child, read);
                Ok(())
            }
        }
    }
}

/// In a new worker, the master's child (forked by it, or by a template and
/// re-parented): tie its life to the master's, take its own signals and its
/// scoreboard row, run `worker` and exit with its status.
pub(super) fn become_worker(
    master: Pid,
    board: Option<&'static Board>,
    pipe: OwnedFd,
    worker: &dyn Fn(ToMaster) -> i32,
) -> ! {
    // Workers do not outlive their master (even a SIGKILLed one).
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    if nix::unistd::getppid() != master {
        std::process::exit(Exit::Success.code());
    }
    // The worker handles its own signals.
    let _ = SigSet::empty().thread_set_mask();
    if let Some(board) = board {
        crate::process::scoreboard::install(board);
        if let Some(index) = board.claim(std::process::id()) {
            crate::process::scoreboard::adopt(index);
        }
    }
    std::process::exit(worker(ToMaster(pipe)))
}
