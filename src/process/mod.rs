//! Process management for `wsgi-fcgi --workers N`: a master that holds the
//! listening sockets and supervises pre-forked worker processes
//! ([`master`]), and a worker's end of its message pipe to the master
//! ([`Ready`]: "ready" once its app is imported, "recycle me" once it has
//! served `--max-requests`), and systemd's `Type=notify` protocol
//! ([`notify`]).
//!
//! Layering: nothing here imports pyo3 or tokio. The master never runs
//! Python or a runtime; what a worker runs after the fork is handed in as a
//! function by the binary.

pub mod listenq;
pub mod master;
pub mod notify;
pub mod recycle;
pub mod scoreboard;
pub mod signals;
pub mod status;

use std::io;
use std::os::fd::OwnedFd;

/// The worker's end of its message pipe to the master.
#[derive(Debug)]
pub struct Ready(pub(crate) OwnedFd);

impl Ready {
    /// Tell the master this worker imported its app and is about to accept.
    pub fn notify(&self) -> io::Result<()> {
        nix::unistd::write(&self.0, b"R")?;
        Ok(())
    }

    /// Ask the master for a replacement: a request of this worker overran
    /// `--request-timeout` (its thread is stuck). The worker goes on serving
    /// its other requests until the master sends TERM.
    pub fn timed_out(&self) -> io::Result<()> {
        nix::unistd::write(&self.0, b"T")?;
        Ok(())
    }

    /// Ask the master for a replacement: this worker served its
    /// `--max-requests`. It goes on serving until the master sends TERM.
    pub fn recycle(&self) -> io::Result<()> {
        nix::unistd::write(&self.0, b"X")?;
        Ok(())
    }
}
