//! What the master enforces on running workers, every turn of its loop:
//! `--max-lifetime` and `--max-rss` (recycling: a replacement first), and
//! the workers overdue — told to stop and still there after the graceful
//! timeout, or with a request past `--request-timeout` + the grace that
//! the worker did not act on — which get their Python stacks dumped, then
//! SIGKILL.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::pool::{Pool, State, Worker};
use crate::process::recycle::{Recycle, resident_bytes};
use crate::{log_error, log_info, log_warn};

/// How long a worker gets to write its Python stacks (faulthandler, on
/// SIGUSR2) before the SIGKILL.
const DUMP_TIME: Duration = Duration::from_secs(1);

impl Pool<'_> {
    /// A worker told to stop that is still there after the graceful
    /// timeout (a request stuck for good) is killed; so is one whose
    /// request overran `--request-timeout` + `--graceful-timeout` without
    /// the worker acting on it. Each first dumps its Python stacks.
    pub(super) fn kill_overdue(&mut self) {
        let now = Instant::now();
        let board = self.board;
        let (grace, timeout) = (self.options.graceful_timeout, self.options.request_timeout);
        let tag = self.tag.as_str();
        for worker in &mut self.workers {
            if let Some(at) = worker.kill_at {
                if now >= at {
                    let _ = kill(worker.pid, Signal::SIGKILL);
                    worker.kill_at = None;
                    // (Killed: nothing more to ask of it until it is reaped.)
                    worker.stopping_since = None;
                }
                continue;
            }
            let slot = board.and_then(|b| b.slot_of(worker.pid.as_raw() as u32));
            let longest = slot.and_then(|s| s.longest_running());
            let running = match (slot, longest) {
                (Some(slot), Some((thread, ran))) => format!(
                    "; its longest request, {} on app thread {thread}, has run {:.1} s",
                    slot.threads[thread].line(),
                    ran as f64 / 1e6
                ),
                _ => String::new(),
            };
            if let (State::Stopping, Some(since)) = (worker.state, worker.stopping_since) {
                if since.elapsed() > grace + Duration::from_secs(5) {
                    log_warn!(
                        "{tag}worker {} did not stop within the graceful timeout{running}",
                        worker.pid
                    );
                    dump_then_kill(worker, now, tag);
                }
                continue;
            }
            // Its watchdog asks for a replacement at the timeout (and the
            // replacement's TERM gives it the graceful timeout): a worker
            // that did not is past acting.
            let (Some(timeout), Some((_, ran))) = (timeout, longest) else {
                continue;
            };
            if worker.state == State::Ready
                && worker.recycle.is_none()
                && Duration::from_micros(ran) > timeout + grace
            {
                log_error!(
                    "{tag}worker {} does not act on a request past --request-timeout ({:.1} s) \
                     + --graceful-timeout ({:.1} s){running} (a thread holding the GIL in C code, \
                     a stopped or deadlocked worker): replacing it",
                    worker.pid,
                    timeout.as_secs_f64(),
                    grace.as_secs_f64()
                );
                worker.mark_stopping();
                if let Some(board) = board {
                    board
                        .timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                dump_then_kill(worker, now, tag);
            }
        }
    }

    /// `--max-lifetime` and `--max-rss` (sampled once a second).
    pub(super) fn check_limits(&mut self, now: Instant) {
        let sample = now >= self.next_sample;
        if sample {
            self.next_sample = now + Duration::from_secs(1);
        }
        let tag = self.tag.as_str();
        for worker in &mut self.workers {
            if worker.state != State::Ready || worker.recycle.is_some() {
                continue;
            }
            if worker
                .lifetime
                .is_some_and(|l| worker.started.elapsed() >= l)
            {
                worker.recycle = Some(Recycle::MaxLifetime);
                log_info!(
                    "{tag}worker {} reached max-lifetime: starting its replacement",
                    worker.pid
                );
            } else if let (true, Some(limit)) = (sample, worker.rss) {
                let rss = resident_bytes(worker.pid).unwrap_or(0);
                if rss > limit {
                    worker.recycle = Some(Recycle::MaxRss);
                    log_info!(
                        "{tag}worker {} uses {} MiB (max-rss {} MiB): starting its replacement",
                        worker.pid,
                        rss >> 20,
                        limit >> 20
                    );
                }
            }
        }
    }
}

/// Ask `worker` for its Python stacks (SIGUSR2: every worker registers
/// faulthandler for it, which writes them to the log without the GIL) and
/// kill it [`DUMP_TIME`] later — at once if it is stopped (SIGSTOP: it
/// cannot run a handler).
fn dump_then_kill(worker: &mut Worker, now: Instant, tag: &str) {
    if process_stopped(worker.pid) {
        log_warn!(
            "{tag}worker {} is stopped (SIGSTOP or a debugger): no Python stacks; SIGKILL",
            worker.pid
        );
        let _ = kill(worker.pid, Signal::SIGKILL);
        worker.stopping_since = None;
        return;
    }
    log_warn!(
        "{tag}worker {}: its Python stacks follow (faulthandler), then SIGKILL",
        worker.pid
    );
    let _ = kill(worker.pid, Signal::SIGUSR2);
    worker.kill_at = Some(now + DUMP_TIME);
}

/// Whether the process is stopped (state T or t in `/proc/PID/stat`).
fn process_stopped(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // (The command name, in parentheses, may hold anything.)
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}
