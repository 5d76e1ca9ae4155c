//! `--sched`: the scheduling policy a serving process gives itself (and so
//! all its threads) before it starts any thread.

use crate::{log_info, log_warn};

/// `--sched`: the Linux scheduling policy of a serving process (its every
/// thread; the master keeps the default). Without the flag, batch — unless
/// the process was started under another policy than SCHED_OTHER (`chrt`,
/// systemd's `CPUSchedulingPolicy=`), which is the operator's and stays.
///
/// `batch` (SCHED_BATCH, the default): a worker woken by a new connection
/// does not preempt what runs on that CPU — typically the web server that
/// just sent it. The web server goes on sending, so the worker finds
/// several connections waiting when it runs and serves them one after the
/// other instead of sleeping and waking for each (on a box where the web
/// server and the workers share the CPUs: a fifth of the context switches
/// and some 1.4× the requests a second through nginx's default
/// `fastcgi_pass`, `tests/bench/workers.sh`). The CPU share is the same as
/// SCHED_OTHER's (same nice level, same weight); where a CPU is idle a
/// woken worker runs at once either way. `other`: Linux's default policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sched {
    /// SCHED_BATCH.
    #[default]
    Batch,
    /// SCHED_OTHER (`chrt -o`).
    Other,
}

impl Sched {
    /// `--sched` given (`Some`), or the default: batch over an inherited
    /// SCHED_OTHER, any other inherited policy kept.
    pub fn apply_or_default(sched: Option<Sched>) {
        match sched {
            Some(sched) => sched.apply(),
            // SAFETY: pid 0: the calling thread; no memory is passed.
            None => match unsafe { nix::libc::sched_getscheduler(0) } {
                nix::libc::SCHED_OTHER => Sched::Batch.apply(),
                policy => {
                    log_info!("scheduling policy {policy} as started (not --sched batch)")
                }
            },
        }
    }

    /// Apply to the calling thread; the threads it starts afterwards
    /// inherit the policy. A refusal (a sandbox) is logged, not fatal.
    pub fn apply(self) {
        let policy = match self {
            Sched::Batch => nix::libc::SCHED_BATCH,
            Sched::Other => nix::libc::SCHED_OTHER,
        };
        let param = nix::libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid struct
        // that outlives the call.
        if unsafe { nix::libc::sched_setscheduler(0, policy, &param) } != 0 {
            log_warn!(
                "--sched {self:?}: sched_setscheduler failed: {}; the default policy stays",
                std::io::Error::last_os_error()
            );
        }
    }
}
