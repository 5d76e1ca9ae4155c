//! Signals to the master, turned into intents (what the operator asks
//! for), so the master's loop deals in intents, not signal numbers. The
//! table is the one in the README and in `--help`.

use nix::sys::signal::Signal;

/// What a signal asks of the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Intent {
    GracefulStop,
    FastStop,
    Reload,
    MoreWorkers,
    FewerWorkers,
    ReopenLogs,
    /// SIGCHLD: reaping happens every turn anyway.
    Reap,
}

pub(super) fn intent(signal: Signal) -> Option<Intent> {
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

pub(super) const SIGNALS: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGCHLD,
];
