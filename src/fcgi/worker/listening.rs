//! The listening sockets the app threads accept on (duplicates, open for
//! the worker's life), with what an accepted connection needs: the peer
//! checks (`FCGI_WEB_SERVER_ADDRS`, `--same-uid-only`), the limits, the
//! hand-off to the I/O thread, the kept connections and the `--max-conns`
//! slots; the stop (every thread lets go of the sockets) and, for a
//! process alone on its sockets, the backlog drained at the stop. Where a
//! thread waits to accept is [`super::parking`].

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::fcgi::idle::IdleList;
use crate::fcgi::inline::Accepted;
use crate::fcgi::job::Limits;
use crate::fcgi::kept::Kept;
use crate::log_error;

/// The listening sockets the app threads accept on, and what goes with them.
pub struct Listening {
    /// Duplicates of the listening sockets (open for the process's life),
    /// each with whether it is a unix socket.
    pub sockets: Vec<(OwnedFd, bool)>,
    /// TCP peers allowed (`FCGI_WEB_SERVER_ADDRS`); `None`: all.
    pub allowed_peers: Option<Vec<IpAddr>>,
    /// `--same-uid-only`: the only user a unix-socket peer may run as.
    pub allowed_uid: Option<nix::unistd::Uid>,
    /// The connection limits (what an inline request may be).
    pub limits: Arc<Limits>,
    /// Where connections go that the I/O thread must serve.
    pub handoff: tokio::sync::mpsc::UnboundedSender<Accepted>,
    /// Kept-alive connections parked between requests.
    pub kept: Arc<Kept>,
    /// The worker's idle connections (the I/O thread's and parked ones).
    pub idle: Arc<IdleList>,
    /// `--max-conns` slots: one per connection of the I/O thread or kept.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Readable once the worker stops accepting (never drained).
    pub(super) stop: EventFd,
    /// Set once the worker stops accepting.
    pub(super) stopped: std::sync::atomic::AtomicBool,
    /// Connections an app thread is accepting or serving right now,
    /// counted from before `accept4` (a stop waits for them: see
    /// [`super::parking::Waiter`]).
    pub inflight: AtomicUsize,
    /// Other processes accept on the same sockets (`--workers`, or sockets
    /// inherited from a spawner that runs several of us).
    pub(super) peers: bool,
}

impl Listening {
    /// Accept on duplicates of `sockets` (descriptor, unix?).
    pub fn new(
        sockets: &[(std::os::fd::RawFd, bool)],
        (allowed_peers, allowed_uid): (Option<Vec<IpAddr>>, Option<nix::unistd::Uid>),
        limits: Arc<Limits>,
        handoff: tokio::sync::mpsc::UnboundedSender<Accepted>,
        peers: bool,
    ) -> io::Result<Listening> {
        let mut dups = Vec::new();
        for &(fd, unix) in sockets {
            // SAFETY: the listening socket is open (the caller owns it);
            // the duplicate is ours.
            let dup = unsafe { nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `dup` is a fresh descriptor nobody else owns.
            dups.push((unsafe { OwnedFd::from_raw_fd(dup) }, unix));
        }
        let idle = Arc::new(IdleList::default());
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_conns.max(1)));
        Ok(Listening {
            sockets: dups,
            allowed_peers,
            allowed_uid,
            kept: Kept::new(idle.clone(), slots.clone(), handoff.clone())?,
            idle,
            slots,
            limits,
            handoff,
            stop: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            stopped: std::sync::atomic::AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            peers,
        })
    }

    /// Stop accepting: every thread lets go of the listening sockets, and
    /// the parked connections go to the I/O thread (which closes each once
    /// idle).
    pub fn stop_accepting(&self) {
        // (SeqCst, with `inflight`: see `Waiter::accept`.)
        self.stopped.store(true, Ordering::SeqCst);
        let _ = self.stop.write(1);
        self.kept.stop();
    }

    /// A process that alone accepts on its sockets (no `--workers`, none
    /// inherited from a spawner) and stops: every connection already in
    /// their backlogs, taken now to be served (the exit would reset them).
    /// Others accept on shared sockets: nothing is taken.
    pub fn drain_backlog(&self) -> Vec<Accepted> {
        let mut taken = Vec::new();
        if self.peers {
            return taken;
        }
        for index in 0..self.sockets.len() {
            loop {
                match self.take(index) {
                    Take::Connection(conn) => taken.push(conn),
                    Take::Refused | Take::Interrupted => {}
                    Take::Empty => break,
                }
            }
        }
        taken
    }

    /// One connection from socket `index`'s backlog, non-blocking, its
    /// peer checked (`FCGI_WEB_SERVER_ADDRS`, `--same-uid-only`).
    pub(super) fn take(&self, index: usize) -> Take {
        let Some((socket, unix)) = self.sockets.get(index) else {
            return Take::Empty;
        };
        let flags =
            nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC;
        let fd = match nix::sys::socket::accept4(socket.as_raw_fd(), flags) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EAGAIN) => return Take::Empty,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => {
                return Take::Interrupted;
            }
            Err(e) => {
                log_error!("accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                return Take::Empty;
            }
        };
        // SAFETY: accept4 returned a fresh descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let allowed = match unix {
            true => same_user(&fd, self.allowed_uid),
            false => peer_allowed(&fd, self.allowed_peers.as_deref()),
        };
        match allowed {
            true => Take::Connection(Accepted::new(fd, *unix)),
            false => Take::Refused,
        }
    }

    /// Requests being served inline.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }
}

/// What [`Listening::take`] got.
pub(super) enum Take {
    Connection(Accepted),
    /// A peer not allowed: closed.
    Refused,
    /// EINTR, ECONNABORTED: try again.
    Interrupted,
    /// Nothing waiting (or an error, logged).
    Empty,
}

/// A unix-socket peer runs as `allowed` (SO_PEERCRED), or any user may.
fn same_user(fd: &OwnedFd, allowed: Option<nix::unistd::Uid>) -> bool {
    use nix::sys::socket::{getsockopt, sockopt};
    let Some(allowed) = allowed else {
        return true;
    };
    match getsockopt(fd, sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == allowed.as_raw() => true,
        Ok(cred) => {
            log_error!(
                "refused a connection from uid {} (pid {}): --same-uid-only admits uid {allowed}",
                cred.uid(),
                cred.pid()
            );
            false
        }
        Err(e) => {
            log_error!("refused a connection: its peer's credentials: {e}");
            false
        }
    }
}

/// TCP: the peer is in `FCGI_WEB_SERVER_ADDRS` (or no list is set); also
/// turns Nagle off for the connection.
fn peer_allowed(fd: &OwnedFd, allowed: Option<&[IpAddr]>) -> bool {
    use nix::sys::socket::{SockaddrStorage, getpeername, setsockopt, sockopt};
    let _ = setsockopt(fd, sockopt::TcpNoDelay, &true);
    let Some(allowed) = allowed else {
        return true;
    };
    let peer = getpeername::<SockaddrStorage>(fd.as_fd().as_raw_fd()).ok();
    let ip = peer.as_ref().and_then(|p| {
        p.as_sockaddr_in()
            .map(|a| IpAddr::V4(a.ip()))
            .or_else(|| p.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip())))
    });
    match ip {
        Some(ip) if allowed.contains(&ip) => true,
        _ => {
            let shown = ip.map_or_else(|| "an unknown peer".to_string(), |ip| ip.to_string());
            log_error!("refused FastCGI connection from {shown}: not in FCGI_WEB_SERVER_ADDRS");
            false
        }
    }
}
