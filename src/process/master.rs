//! The master of `wsgi-fcgi --workers N`: forks the workers, supervises
//! them, and turns signals into intents (gunicorn's arbiter, pingora's
//! shutdown intents). It holds the listening sockets for as long as it runs
//! — a worker only ever closes its own copies — so no connection is refused
//! while workers come and go.
//!
//! One loop, no threads: signals arrive on a `signalfd`, each worker's
//! "ready" pipe is polled while it boots, children are reaped every turn.
//!
//! | signal | intent |
//! |---|---|
//! | TERM | graceful stop: workers finish their requests (`--graceful-timeout`), then exit |
//! | INT, QUIT | fast stop |
//! | HUP | reload: a new generation of workers imports the app afresh; the old one is told to stop only once every new worker is ready |
//! | TTIN / TTOU | one worker more / fewer |
//!
//! A worker that fails while booting (its app does not import, or it cannot
//! start) stops the master with the worker's exit status instead of being
//! respawned in a loop — or, during a reload, cancels the reload while the
//! old workers go on serving. A worker that dies later is replaced, with an
//! exponential back-off if it keeps dying young.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::Ready;
use crate::{log_error, log_info, log_warn};

/// How the master runs.
#[derive(Clone, Debug)]
pub struct MasterOptions {
    /// Workers to keep running.
    pub workers: usize,
    /// How long a graceful stop waits before SIGKILL (the workers' own
    /// graceful timeout, plus a margin).
    pub graceful_timeout: Duration,
}

/// Exit statuses shared by workers and the master.
pub mod exit {
    /// Stopped normally.
    pub const OK: i32 = 0;
    /// Could not start (options, sockets, interpreter).
    pub const SETUP: i32 = 1;
    /// The application failed to import.
    pub const APP_LOAD: i32 = 4;
}

/// What a worker process runs after the fork; returns its exit status.
pub type WorkerMain<'a> = &'a dyn Fn(Ready) -> i32;

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
    /// Read end of the ready pipe, while booting.
    ready: Option<OwnedFd>,
    started: Instant,
}

/// What a signal asks of the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Intent {
    GracefulStop,
    FastStop,
    Reload,
    MoreWorkers,
    FewerWorkers,
    ReopenLogs,
    /// SIGCHLD: reaping happens every turn anyway.
    Reap,
}

fn intent(signal: Signal) -> Option<Intent> {
    Some(match signal {
        Signal::SIGTERM => Intent::GracefulStop,
        Signal::SIGINT | Signal::SIGQUIT => Intent::FastStop,
        Signal::SIGHUP => Intent::Reload,
        Signal::SIGTTIN => Intent::MoreWorkers,
        Signal::SIGTTOU => Intent::FewerWorkers,
        Signal::SIGUSR1 => Intent::ReopenLogs,
        Signal::SIGCHLD => Intent::Reap,
        _ => return None,
    })
}

const SIGNALS: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGCHLD,
];

struct Stop {
    deadline: Instant,
    killed: bool,
}

struct Master<'a> {
    options: MasterOptions,
    worker_main: WorkerMain<'a>,
    target: usize,
    /// The generation new workers belong to (HUP starts a new one).
    generation: u64,
    workers: Vec<Worker>,
    stop: Option<Stop>,
    exit_code: i32,
    backoff: Duration,
    next_spawn: Instant,
}

/// Run the master until it is told to stop; returns the exit status.
pub fn run(options: MasterOptions, worker_main: WorkerMain<'_>) -> std::io::Result<i32> {
    let mut mask = SigSet::empty();
    for signal in SIGNALS {
        mask.add(signal);
    }
    mask.thread_block()?;
    let mut signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let mut master = Master {
        target: options.workers.max(1),
        options,
        worker_main,
        generation: 0,
        workers: Vec::new(),
        stop: None,
        exit_code: exit::OK,
        backoff: Duration::ZERO,
        next_spawn: Instant::now(),
    };
    log_info!("master: starting {} worker process(es)", master.target);
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
        let booting: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].ready.is_some())
            .collect();
        let mut revents = Vec::new();
        {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            for &i in &booting {
                if let Some(fd) = &self.workers[i].ready {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            let timeout = PollTimeout::try_from(self.next_wakeup()).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            revents.extend(fds.iter().skip(1).map(|f| f.any().unwrap_or(false)));
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let signal = Signal::try_from(info.ssi_signo as i32).ok();
            if let Some(intent) = signal.and_then(intent) {
                self.on_intent(intent);
            }
        }
        for (&i, &readable) in booting.iter().zip(&revents) {
            if readable {
                self.on_ready_pipe(i);
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
        } else if self.next_spawn > now {
            due = due.min(self.next_spawn);
        }
        due.saturating_duration_since(now).as_millis() as u32 + 1
    }

    fn on_ready_pipe(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        let Some(fd) = worker.ready.take() else {
            return;
        };
        let mut byte = [0u8; 1];
        // EOF instead: it died while booting; reaping tells why.
        if let Ok(1) = nix::unistd::read(&fd, &mut byte) {
            if worker.state == State::Booting {
                worker.state = State::Ready;
            }
            log_info!(
                "master: worker {} ready ({:.1} s to boot)",
                worker.pid,
                worker.started.elapsed().as_secs_f64()
            );
        }
    }

    fn on_intent(&mut self, intent: Intent) {
        if self.stop.is_some() && intent != Intent::FastStop && intent != Intent::Reap {
            return;
        }
        match intent {
            Intent::GracefulStop => {
                log_info!("master: TERM: stopping gracefully");
                self.stop_all(
                    Signal::SIGTERM,
                    self.options.graceful_timeout + Duration::from_secs(5),
                );
            }
            Intent::FastStop => {
                log_info!("master: stopping now");
                self.stop_all(Signal::SIGINT, Duration::from_secs(2));
            }
            Intent::Reload => {
                self.generation += 1;
                self.backoff = Duration::ZERO;
                self.next_spawn = Instant::now();
                log_info!(
                    "master: HUP: starting generation {} ({} worker(s)); the old ones stop once it is ready",
                    self.generation,
                    self.target
                );
            }
            Intent::MoreWorkers => {
                self.target += 1;
                log_info!("master: TTIN: {} worker(s)", self.target);
            }
            Intent::FewerWorkers => {
                self.target = self.target.saturating_sub(1).max(1);
                log_info!("master: TTOU: {} worker(s)", self.target);
            }
            Intent::ReopenLogs => log_info!("master: USR1: no log files to reopen"),
            Intent::Reap => {}
        }
    }

    fn stop_all(&mut self, signal: Signal, grace: Duration) {
        for worker in &mut self.workers {
            let _ = kill(worker.pid, signal);
            worker.state = State::Stopping;
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
            let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let worker = self.workers.swap_remove(index);
            if self.stop.is_some() || worker.state == State::Stopping {
                log_info!("master: worker {pid} exited ({how})");
                continue;
            }
            if worker.state == State::Booting && (code == exit::APP_LOAD || code == exit::SETUP) {
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
        let what = if code == exit::APP_LOAD {
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
                        let _ = kill(other.pid, Signal::SIGTERM);
                        other.state = State::Stopping;
                    }
                }
                self.generation = old;
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
        if let Some(stop) = &mut self.stop {
            if self.workers.is_empty() {
                return Ok(Some(self.exit_code));
            }
            if now >= stop.deadline && !stop.killed {
                stop.killed = true;
                for worker in &self.workers {
                    log_warn!("master: worker {} still running: SIGKILL", worker.pid);
                    let _ = kill(worker.pid, Signal::SIGKILL);
                }
            }
            return Ok(None);
        }
        let current = |w: &&Worker, g: u64| w.generation == g && w.state != State::Stopping;
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
        // Reload: the old generation stops once the new one is all ready.
        if ready >= self.target {
            let mut retired = 0;
            for worker in &mut self.workers {
                if worker.generation < self.generation && worker.state != State::Stopping {
                    let _ = kill(worker.pid, Signal::SIGTERM);
                    worker.state = State::Stopping;
                    retired += 1;
                }
            }
            if retired > 0 {
                log_info!(
                    "master: generation {} ready; {retired} old worker(s) finishing their requests",
                    self.generation
                );
            }
        }
        if live < self.target && now >= self.next_spawn {
            for _ in live..self.target {
                self.spawn()?;
            }
        } else if live > self.target {
            // TTOU: the newest extra worker finishes and leaves.
            if let Some(worker) = self
                .workers
                .iter_mut()
                .filter(|w| w.generation == self.generation && w.state != State::Stopping)
                .max_by_key(|w| w.started)
            {
                let _ = kill(worker.pid, Signal::SIGTERM);
                worker.state = State::Stopping;
            }
        }
        Ok(None)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let master = nix::unistd::getpid();
        // SAFETY: the master is single-threaded (no runtime, no Python), so
        // the child may run arbitrary code after fork.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(read);
                // Workers do not outlive their master (even a SIGKILLed one).
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
                if nix::unistd::getppid() != master {
                    std::process::exit(exit::OK);
                }
                // The worker handles its own signals.
                let _ = SigSet::empty().thread_set_mask();
                let code = (self.worker_main)(Ready(write));
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(write);
                self.workers.push(Worker {
                    pid: child,
                    generation: self.generation,
                    state: State::Booting,
                    ready: Some(read),
                    started: Instant::now(),
                });
                Ok(())
            }
        }
    }
}
