//! Lingering closes: a connection we half-closed whose peer may still send
//! a last record (some clients send a second empty STDIN) is read, and what
//! it sends dropped, until the peer closes or [`LINGER`] passes — so that
//! its last writes meet an open socket, not a reset (on TCP a reset can
//! discard our response before the peer has read it). Each app thread
//! keeps its own, in an epoll of their own that it looks at when it wakes
//! anyway, in batches: a peer's close never wakes a thread by itself. (A
//! unix socket with nothing unread is closed at once instead:
//! `fcgi::inline::close`.)

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// How long a closed connection is read for its peer's last bytes.
const LINGER: Duration = Duration::from_secs(2);
/// Lingering connections per thread, at most (the oldest is dropped).
const MAX_LINGERING: usize = 256;
/// Lingering connections gathered before they are looked at.
const LINGER_BATCH: usize = 16;

/// One thread's lingering connections, oldest first.
pub struct Lingering {
    sockets: Vec<(OwnedFd, Instant)>,
    epoll: Epoll,
    /// Reap when this many linger.
    reap_at: usize,
}

impl Lingering {
    /// None yet.
    pub fn new() -> io::Result<Lingering> {
        Ok(Lingering {
            sockets: Vec::new(),
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            reap_at: LINGER_BATCH,
        })
    }

    /// Linger on `socket` (half-closed by us) for at most [`LINGER`].
    pub fn add(&mut self, socket: OwnedFd) {
        if self.sockets.len() >= MAX_LINGERING {
            self.sockets.remove(0); // (closing it leaves the epoll too)
        }
        let token = socket.as_raw_fd() as u64;
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if self
            .epoll
            .add(&socket, EpollEvent::new(interest, token))
            .is_ok()
        {
            self.sockets.push((socket, Instant::now() + LINGER));
        }
    }

    /// When the oldest one's time is up, if any linger.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.sockets.first().map(|(_, until)| *until)
    }

    /// Close the ones whose peer closed, or whose time is up — in batches,
    /// once enough have gathered (a syscall saved per wake).
    pub fn reap(&mut self) {
        let due = self
            .next_expiry()
            .is_some_and(|until| until <= Instant::now());
        if self.sockets.len() < self.reap_at && !due {
            return;
        }
        let mut events = [EpollEvent::empty(); 32];
        let ready = self
            .epoll
            .wait(&mut events, EpollTimeout::ZERO)
            .unwrap_or(0);
        let mut sink = [0u8; 4096];
        for event in &events[..ready] {
            let fd = event.data() as std::os::fd::RawFd;
            let Some(at) = self.sockets.iter().position(|(s, _)| s.as_raw_fd() == fd) else {
                continue;
            };
            let closed = loop {
                match nix::unistd::read(&self.sockets[at].0, &mut sink) {
                    Ok(0) => break true,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(nix::errno::Errno::EAGAIN) => break false,
                    Err(_) => break true,
                }
            };
            if closed {
                // Closing the last descriptor also leaves the epoll. (The
                // list stays in time order.)
                self.sockets.remove(at);
            }
        }
        let now = Instant::now();
        self.sockets.retain(|(_, until)| *until > now);
        self.reap_at = self.sockets.len() + LINGER_BATCH;
    }
}
