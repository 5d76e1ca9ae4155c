//! The process manager of a master (`--pm`, PHP-FPM's names and rules):
//! how many workers to keep, decided each turn from what the master sees
//! of them — without I/O, so that each rule is unit-tested here.
//!
//! - **static**: `--workers N`, always (TTIN/TTOU change N).
//! - **dynamic**: `--start-workers` at start; then, at most once a second,
//!   an idle worker is retired while more than `--max-spare` are idle, and
//!   workers are spawned while fewer than `--min-spare` are — 1, then 2,
//!   4 … up to 32 a second while the shortage lasts (PHP-FPM's
//!   `pm.max_spawn_rate`) — never more than `--max-workers` in all.
//! - **ondemand**: no worker until a connection waits on a listening
//!   socket with no app thread free to take it; a worker idle for
//!   `--idle-timeout` is retired, down to none.
//!
//! In both of the last two, connections queued while every app thread is
//! running a request (or none exists) spawn workers at once — as many as the queue needs
//! at `--threads` connections each, minus those already booting — so that
//! a load step is met in one boot time, not one per second.

use std::time::{Duration, Instant};

/// The most workers dynamic mode spawns in one second (PHP-FPM's default
/// `pm.max_spawn_rate`).
pub const MAX_SPAWN_RATE: usize = 32;

/// `--pm` and its settings.
#[derive(Clone, Debug, PartialEq)]
pub enum Pm {
    /// A fixed number of workers (`--workers`).
    Static,
    /// Between the spare bounds, up to `max`.
    Dynamic {
        /// `--max-workers`.
        max: usize,
        /// `--start-workers`.
        start: usize,
        /// `--min-spare`.
        min_spare: usize,
        /// `--max-spare`.
        max_spare: usize,
    },
    /// None until needed, up to `max`; idle ones retire.
    Ondemand {
        /// `--max-workers`.
        max: usize,
        /// `--idle-timeout`.
        idle_timeout: Duration,
    },
}

impl Pm {
    /// PHP-FPM's name of the mode (the status page's `process manager`).
    pub fn name(&self) -> &'static str {
        match self {
            Pm::Static => "static",
            Pm::Dynamic { .. } => "dynamic",
            Pm::Ondemand { .. } => "ondemand",
        }
    }

    /// The workers to start with (`static`: the caller's `--workers`).
    pub fn initial(&self, workers: usize) -> usize {
        match self {
            Pm::Static => workers,
            Pm::Dynamic { start, .. } => *start,
            Pm::Ondemand { .. } => 0,
        }
    }

    /// The status page's code for the mode (stored on the scoreboard).
    pub fn code(&self) -> u8 {
        match self {
            Pm::Static => 0,
            Pm::Dynamic { .. } => 1,
            Pm::Ondemand { .. } => 2,
        }
    }

    /// The name of a mode's [`Pm::code`].
    pub fn name_of(code: u8) -> &'static str {
        match code {
            1 => "dynamic",
            2 => "ondemand",
            _ => "static",
        }
    }
}

/// A ready worker of the current generation, as the master sees it.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    /// Its pid.
    pub pid: i32,
    /// How long it has served no request (`None`: a request runs).
    pub idle_for: Option<Duration>,
}

/// What the master sees this turn.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Workers of the current generation still importing their app.
    pub booting: usize,
    /// Those serving.
    pub ready: Vec<Seen>,
    /// App threads (of any worker accepting connections) not running a
    /// request: free to take a connection.
    pub free_threads: u64,
    /// Connections waiting in the listening sockets' queues (counted only
    /// when no app thread is free: 0 otherwise).
    pub queued: u64,
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep what there is.
    Keep,
    /// Start this many more.
    Spawn(usize),
    /// Tell this worker to finish its requests and exit.
    Retire(i32),
}

/// The state of a dynamic or ondemand manager between turns.
#[derive(Debug)]
pub struct Scaler {
    pm: Pm,
    threads: u64,
    /// Workers dynamic mode spawns at its next maintenance while short.
    spawn_rate: usize,
    next_maintenance: Instant,
    /// Idle workers seen at each turn since the last maintenance, summed,
    /// and the turns: dynamic mode decides on their mean, not on one look
    /// (a worker between two short requests looks idle for a moment).
    idle_sum: usize,
    looks: usize,
    /// Whether `--max-workers` stopped a spawn (logged once per episode).
    pub at_max: bool,
}

impl Scaler {
    /// A manager for `pm` whose workers run `threads` app threads each.
    pub fn new(pm: Pm, threads: usize, now: Instant) -> Scaler {
        Scaler {
            pm,
            threads: threads.max(1) as u64,
            spawn_rate: 1,
            idle_sum: 0,
            looks: 0,
            next_maintenance: now + Duration::from_secs(1),
            at_max: false,
        }
    }

    /// The mode.
    pub fn pm(&self) -> &Pm {
        &self.pm
    }

    /// `--max-workers` (TTIN/TTOU change it).
    pub fn set_max(&mut self, new: usize) {
        if let Pm::Dynamic { max, .. } | Pm::Ondemand { max, .. } = &mut self.pm {
            *max = new.max(1);
        }
    }

    /// `--max-workers`.
    pub fn max(&self) -> usize {
        match self.pm {
            Pm::Dynamic { max, .. } | Pm::Ondemand { max, .. } => max,
            Pm::Static => usize::MAX,
        }
    }

    /// When the next turn is due at the latest.
    pub fn next_due(&self, view_has_workers: bool, now: Instant) -> Instant {
        // Saturation shows on the scoreboard only: look often while
        // workers exist. With none, the listening sockets wake the master.
        let look = if view_has_workers {
            now + Duration::from_millis(50)
        } else {
            now + Duration::from_secs(1)
        };
        match self.pm {
            Pm::Dynamic { .. } => look.min(self.next_maintenance),
            _ => look,
        }
    }

    /// This turn's decision.
    pub fn decide(&mut self, view: &View, now: Instant) -> Decision {
        let live = view.booting + view.ready.len();
        self.idle_sum += view.ready.iter().filter(|w| w.idle_for.is_some()).count();
        self.looks += 1;
        let max = self.max();
        if view.free_threads == 0 && view.queued > 0 {
            let wanted = view.queued.div_ceil(self.threads) as usize;
            let more = wanted.saturating_sub(view.booting);
            if more > 0 {
                if live >= max {
                    self.at_max = true;
                    return Decision::Keep;
                }
                return self.spawn(more.min(max - live));
            }
        }
        if live < max {
            self.at_max = false;
        }
        match self.pm {
            Pm::Static => Decision::Keep,
            Pm::Ondemand { idle_timeout, .. } => view
                .ready
                .iter()
                .filter(|w| w.idle_for.is_some_and(|idle| idle >= idle_timeout))
                .max_by_key(|w| w.idle_for)
                .map_or(Decision::Keep, |w| Decision::Retire(w.pid)),
            Pm::Dynamic {
                min_spare,
                max_spare,
                ..
            } => {
                if now < self.next_maintenance {
                    return Decision::Keep;
                }
                self.next_maintenance = now + Duration::from_secs(1);
                // Idle workers on the mean of the second's looks, rounded
                // to the nearest.
                let mean = (self.idle_sum * 2 + self.looks) / (self.looks * 2).max(1);
                (self.idle_sum, self.looks) = (0, 0);
                let idle: Vec<&Seen> = view.ready.iter().filter(|w| w.idle_for.is_some()).collect();
                if mean > max_spare && !idle.is_empty() {
                    self.spawn_rate = 1;
                    return idle
                        .iter()
                        .max_by_key(|w| w.idle_for)
                        .map_or(Decision::Keep, |w| Decision::Retire(w.pid));
                }
                let spare = mean + view.booting;
                if spare >= min_spare {
                    self.spawn_rate = 1;
                    return Decision::Keep;
                }
                if live >= max {
                    self.at_max = true;
                    return Decision::Keep;
                }
                let count = self.spawn_rate.min(min_spare - spare).min(max - live);
                self.spawn_rate = (self.spawn_rate * 2).min(MAX_SPAWN_RATE);
                self.spawn(count)
            }
        }
    }

    fn spawn(&mut self, count: usize) -> Decision {
        if count == 0 {
            Decision::Keep
        } else {
            Decision::Spawn(count)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(pid: i32, secs: u64) -> Seen {
        Seen {
            pid,
            idle_for: Some(Duration::from_secs(secs)),
        }
    }

    fn busy(pid: i32) -> Seen {
        Seen {
            pid,
            idle_for: None,
        }
    }

    fn ondemand(max: usize) -> Pm {
        Pm::Ondemand {
            max,
            idle_timeout: Duration::from_secs(10),
        }
    }

    fn dynamic() -> Pm {
        Pm::Dynamic {
            max: 40,
            start: 2,
            min_spare: 2,
            max_spare: 4,
        }
    }

    #[test]
    fn ondemand_spawns_for_a_waiting_connection_and_no_more_while_it_boots() {
        let now = Instant::now();
        let mut s = Scaler::new(ondemand(5), 1, now);
        assert_eq!(s.decide(&View::default(), now), Decision::Keep);
        let queued = View {
            queued: 1,
            ..View::default()
        };
        assert_eq!(s.decide(&queued, now), Decision::Spawn(1));
        let booting = View {
            booting: 1,
            queued: 1,
            ..View::default()
        };
        assert_eq!(s.decide(&booting, now), Decision::Keep);
        // A free thread takes the connection: nothing to do.
        let waiting = View {
            ready: vec![idle(7, 0)],
            free_threads: 1,
            ..View::default()
        };
        assert_eq!(s.decide(&waiting, now), Decision::Keep);
    }

    #[test]
    fn a_queue_spawns_what_it_needs_at_threads_each_up_to_max() {
        let now = Instant::now();
        let mut s = Scaler::new(ondemand(5), 4, now);
        let view = View {
            ready: vec![busy(1)],
            queued: 9,
            ..View::default()
        };
        assert_eq!(s.decide(&view, now), Decision::Spawn(3));
        let view = View {
            ready: vec![busy(1), busy(2), busy(3)],
            queued: 100,
            ..View::default()
        };
        assert_eq!(s.decide(&view, now), Decision::Spawn(2));
        assert!(!s.at_max);
        let full = View {
            ready: (1..=5).map(busy).collect(),
            queued: 100,
            ..View::default()
        };
        assert_eq!(s.decide(&full, now), Decision::Keep);
        assert!(s.at_max);
    }

    #[test]
    fn ondemand_retires_the_longest_idle_after_the_timeout() {
        let now = Instant::now();
        let mut s = Scaler::new(ondemand(5), 1, now);
        let view = View {
            ready: vec![idle(1, 3), busy(2), idle(3, 9)],
            free_threads: 2,
            ..View::default()
        };
        assert_eq!(s.decide(&view, now), Decision::Keep);
        let view = View {
            ready: vec![idle(1, 11), busy(2), idle(3, 15)],
            free_threads: 2,
            ..View::default()
        };
        assert_eq!(s.decide(&view, now), Decision::Retire(3));
    }

    #[test]
    fn dynamic_spawns_at_a_doubling_rate_once_a_second_while_short() {
        let start = Instant::now();
        let mut s = Scaler::new(
            Pm::Dynamic {
                max: 100,
                start: 1,
                min_spare: 50,
                max_spare: 60,
            },
            1,
            start,
        );
        let view = View {
            ready: vec![busy(1)],
            free_threads: 1,
            ..View::default()
        };
        assert_eq!(s.decide(&view, start), Decision::Keep, "not a second yet");
        let mut spawned = vec![];
        for second in 1..=7 {
            let at = start + Duration::from_secs(second);
            if let Decision::Spawn(n) = s.decide(&view, at) {
                spawned.push(n);
            }
            assert_eq!(s.decide(&view, at), Decision::Keep, "twice in one second");
        }
        assert_eq!(spawned, [1, 2, 4, 8, 16, 32, 32]);
    }

    /// Eight workers busy but for a moment between requests: some look
    /// idle at each turn, more than --max-spare at a few; their mean over
    /// the second is below it, and none is retired.
    #[test]
    fn dynamic_retires_on_the_mean_of_its_looks_not_on_one() {
        let start = Instant::now();
        let mut s = Scaler::new(
            Pm::Dynamic {
                max: 8,
                start: 8,
                min_spare: 1,
                max_spare: 3,
            },
            1,
            start,
        );
        let look = |idle: usize| View {
            ready: (0..8)
                .map(|pid| {
                    if pid < idle {
                        idle_ms(pid as i32)
                    } else {
                        busy(pid as i32)
                    }
                })
                .collect(),
            ..View::default()
        };
        for (turn, idle) in [0, 5, 1, 0, 4, 2, 0, 1, 5, 0, 2, 1].into_iter().enumerate() {
            let at = start + Duration::from_millis(80 * turn as u64 + 50);
            assert_eq!(s.decide(&look(idle), at), Decision::Keep);
        }
        // The second is over: its mean (26 / 13 looks) is 2, within the spares.
        assert_eq!(
            s.decide(&look(5), start + Duration::from_secs(1)),
            Decision::Keep
        );
        // A second of 5 idle at every look: one goes.
        for turn in 0..10 {
            let at = start + Duration::from_millis(1000 + 90 * turn + 50);
            assert_eq!(s.decide(&look(5), at), Decision::Keep);
        }
        assert!(matches!(
            s.decide(&look(5), start + Duration::from_secs(2)),
            Decision::Retire(_)
        ));
    }

    fn idle_ms(pid: i32) -> Seen {
        Seen {
            pid,
            idle_for: Some(Duration::from_millis(1)),
        }
    }

    #[test]
    fn dynamic_keeps_its_spares_between_the_bounds() {
        let start = Instant::now();
        let mut s = Scaler::new(dynamic(), 1, start);
        let at = |n| start + Duration::from_secs(n);
        let short = View {
            ready: vec![busy(1), busy(2), idle(3, 1)],
            free_threads: 1,
            ..View::default()
        };
        assert_eq!(s.decide(&short, at(1)), Decision::Spawn(1));
        let booting = View {
            booting: 1,
            ..short.clone()
        };
        assert_eq!(s.decide(&booting, at(2)), Decision::Keep);
        let many = View {
            ready: vec![
                busy(1),
                idle(2, 5),
                idle(3, 9),
                idle(4, 1),
                idle(5, 2),
                idle(6, 3),
            ],
            free_threads: 5,
            ..View::default()
        };
        assert_eq!(s.decide(&many, at(3)), Decision::Retire(3));
        let fine = View {
            ready: vec![busy(1), idle(2, 5), idle(3, 9)],
            free_threads: 2,
            ..View::default()
        };
        assert_eq!(s.decide(&fine, at(4)), Decision::Keep);
    }
}
