//! What the dynamic and ondemand process managers see each turn — the
//! pool's workers on its scoreboard (booting, free threads, idle since
//! when) and the listening sockets' queues — handed to the scaler
//! ([`super::pm`]), whose decision sets the pool's target or retires a
//! worker.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use super::pm::{Decision, Seen, View};
use super::pool::{Pool, State};
use crate::{log_info, log_warn};

impl Pool<'_> {
    /// `--pm dynamic | ondemand`: look at the workers and the listening
    /// sockets, let the scaler decide, and set `target` (or retire one).
    pub(super) fn scale(&mut self, now: Instant) {
        let Some(scaler) = self.scaler.as_mut() else {
            return;
        };
        let board = self.board;
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
                "{}connections wait and all {} worker(s) (--max-workers) are busy; consider raising it",
                self.tag,
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
                        "{}worker {pid} idle for {:.1} s: retiring it (pm {})",
                        self.tag,
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
        // (A template importing the app is a worker on its way.)
        let template_booting = self.template.as_ref().is_some_and(|t| !t.ready);
        self.watch = view.free_threads == 0
            && view.booting == 0
            && !template_booting
            && live < scaler.max()
            && now >= self.next_spawn;
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
        .map(|(&fd, _)| crate::process::listenq::queue(fd).map_or(1, |(waiting, _)| waiting.max(1)))
        .sum()
}
