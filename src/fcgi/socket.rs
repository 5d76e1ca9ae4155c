//! A connection's socket as the I/O thread sees it: registered with tokio
//! for *reading only*.
//!
//! Why: responses are written by the app threads straight to the socket
//! (see [`super::writer::Writer`]), never by the I/O thread. A tokio stream
//! registers for reading and writing at once, edge-triggered, so every time
//! the web server read some of a streamed body (making room in the socket)
//! the I/O thread would be woken for nothing — once per chunk of a 10 MiB
//! body.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};

/// A connected stream socket (TCP or unix), non-blocking.
pub struct Socket {
    read: AsyncFd<OwnedFd>,
}

impl Socket {
    /// Take over a connected socket (made non-blocking here).
    pub fn new(fd: OwnedFd) -> io::Result<Socket> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Socket {
            read: register(fd, Interest::READABLE)?,
        })
    }
}

/// Register an owned descriptor with the runtime.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which keeps it open
    // (and its number unchanged) until the registration is dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.read.poll_read_ready(cx))?;
            // SAFETY: read(2) only writes into the unfilled part, at most its
            // length; exactly the `n` bytes it reports are then initialized.
            let unfilled = unsafe { buf.unfilled_mut() };
            let result = guard.try_io(|fd| {
                // SAFETY: `unfilled` is valid for writes of its length (see
                // above); the descriptor is open for the guard's life.
                let n = unsafe {
                    nix::libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match result {
                Ok(Ok(n)) => {
                    // SAFETY: see above.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}
