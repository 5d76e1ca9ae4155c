//! What a worker's messages and exits mean to its pool: "ready" and
//! "recycle me" on its pipe, the master's intents (reload, scale, stop), an
//! exit (replaced, retried with back-off, or the master's stop), a boot
//! that failed.

use super::*;

impl Pool<'_> {
    /// A worker's message: "R" ready, "X" recycle me (max-requests).
    pub(super) fn on_pipe(&mut self, index: usize) {
        let tag = &self.tag;
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
                        "{}worker {} ready ({:.1} s to boot)",
                        tag,
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
                        "{}worker {} reached {}: starting its replacement",
                        tag,
                        worker.pid,
                        cause.name()
                    );
                }
                _ => {}
            }
        }
    }

    /// An intent of the operator's, as it applies to this pool (the
    /// master handles the stops).
    pub(in crate::process::master) fn on_intent(&mut self, intent: Intent) {
        match intent {
            Intent::Reload => {
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
                    "{}HUP: starting generation {} ({} worker(s)); the old ones stop once it is ready",
                    self.tag,
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
                    scaler.set_max(max.min(crate::process::scoreboard::SLOTS));
                    log_info!("{}at most {} worker(s)", self.tag, scaler.max());
                }
            }
            Intent::MoreWorkers => {
                self.target = (self.target + 1).min(crate::process::scoreboard::SLOTS);
                log_info!("{}TTIN: {} worker(s)", self.tag, self.target);
            }
            Intent::FewerWorkers => {
                self.target = self.target.saturating_sub(1).max(1);
                log_info!("{}TTOU: {} worker(s)", self.tag, self.target);
            }
            Intent::ReopenLogs => {
                for worker in &self.workers {
                    if worker.state == State::Ready {
                        let _ = kill(worker.pid, Signal::SIGUSR1);
                    }
                }
            }
            Intent::GracefulStop | Intent::FastStop | Intent::Reap => {}
        }
    }

    /// Worker `pid` of this pool exited (`code`, `how`): decide what that
    /// means. `Some(status)`: the master is to stop with it.
    pub(in crate::process::master) fn exited(
        &mut self,
        pid: Pid,
        code: i32,
        how: &str,
        stopping: bool,
    ) -> Option<i32> {
        if let Some(board) = self.board {
            board.release(pid.as_raw() as u32);
        }
        let index = self.workers.iter().position(|w| w.pid == pid)?;
        let worker = self.workers.swap_remove(index);
        if stopping || worker.state == State::Stopping {
            log_info!("{}worker {pid} exited ({how})", self.tag);
            return None;
        }
        if worker.state == State::Booting
            && (code == Exit::AppLoad.code() || code == Exit::Setup.code())
        {
            return self.boot_failed(&worker, "worker", code, how);
        }
        let young = worker.started.elapsed() < Duration::from_secs(1);
        self.backoff = if young {
            (self.backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(10))
        } else {
            Duration::ZERO
        };
        self.next_spawn = Instant::now() + self.backoff;
        log_warn!(
            "{}worker {pid} died ({how}); replacing it{}",
            self.tag,
            if young {
                format!(" in {:.1} s", self.backoff.as_secs_f64())
            } else {
                String::new()
            }
        );
        None
    }

    /// A worker could not boot. During a reload, the reload is cancelled
    /// (the old generation keeps serving); a replacement in a generation
    /// that is serving is retried with back-off; with nobody serving, the
    /// master stops with the worker's status (no respawn storm) — unless
    /// it runs other pools too: then this pool is retried with back-off
    /// (and shown as failed) while the others serve.
    /// `who`: "worker", or "template" (the worker its pool would have
    /// forked).
    pub(in crate::process::master) fn boot_failed(
        &mut self,
        worker: &Worker,
        who: &str,
        code: i32,
        how: &str,
    ) -> Option<i32> {
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
                    "{}reload cancelled: new {who} {} failed ({how}: {what}); generation {old} goes on serving",
                    self.tag,
                    worker.pid
                );
                for other in &mut self.workers {
                    if other.generation > old && other.state != State::Stopping {
                        other.stop(Signal::SIGTERM);
                    }
                }
                self.generation = old;
                self.announce_ready = true;
                None
            }
            None if !self.standalone => {
                self.failed = true;
                self.back_off_boot();
                log_error!(
                    "{}failed: {who} {} ({how}: {what}); the other pools go on serving; retrying in {:.0} s",
                    self.tag,
                    worker.pid,
                    self.backoff.as_secs_f64()
                );
                None
            }
            Some(_) => {
                self.back_off_boot();
                log_error!(
                    "{}replacement {who} {} failed ({how}: {what}); retrying in {:.0} s",
                    self.tag,
                    worker.pid,
                    self.backoff.as_secs_f64()
                );
                None
            }
            None => {
                log_error!(
                    "{}{who} {} failed to boot ({how}: {what}); stopping instead of respawning",
                    self.tag,
                    worker.pid
                );
                Some(code)
            }
        }
    }

    /// A boot failed: the next try waits twice as long as the last (1 s to
    /// 30 s).
    fn back_off_boot(&mut self) {
        self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        self.next_spawn = Instant::now() + self.backoff;
    }
}
