//! Process management for `wsgi-fcgi --workers N`: a master that holds the
//! listening sockets and supervises pre-forked worker processes
//! ([`master`]), and the one-byte "ready" message a worker sends it once
//! its app is imported ([`Ready`]).
//!
//! Layering: nothing here imports pyo3 or tokio. The master never runs
//! Python or a runtime; what a worker runs after the fork is handed in as a
//! function by the binary.

pub mod master;

use std::io;
use std::os::fd::OwnedFd;

/// The worker's end of its "ready" pipe.
#[derive(Debug)]
pub struct Ready(OwnedFd);

impl Ready {
    /// Tell the master this worker imported its app and is about to accept.
    pub fn notify(&self) -> io::Result<()> {
        nix::unistd::write(&self.0, b"R")?;
        Ok(())
    }
}
