//! A connection's socket as the I/O thread sees it: registered with tokio
//! for *reading only*, with write readiness asked for only while a write of
//! ours is actually waiting.
//!
//! Why: the app thread writes a streamed body to the socket itself (see
//! [`super::output::DirectWrite`]). A tokio stream registers for reading and
//! writing at once, edge-triggered, so every time the web server read some
//! of that body (making room in the socket) the I/O thread was woken for
//! nothing — once per chunk of a 10 MiB body. Here the write interest is a
//! second registration (on a duplicate descriptor) made when a write of the
//! I/O thread hits a full socket, and dropped when the connection next goes
//! idle.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use super::output::Transport;

/// A connected stream socket (TCP or unix), non-blocking.
pub struct Socket {
    read: AsyncFd<OwnedFd>,
    /// Write interest, registered only while a write waits for room.
    write: Option<AsyncFd<OwnedFd>>,
}

impl Socket {
    /// Take over a connected socket (made non-blocking here). `unix`: a
    /// unix-domain socket.
    pub fn new(fd: OwnedFd, unix: bool) -> io::Result<Socket> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        if unix {
            // poll(2) reports a unix socket writable only once 3/4 of its
            // send buffer has drained, so an app thread streaming a body
            // (and waiting for room) lets the web server run dry unless the
            // buffer is bigger than the default 208 KiB. The kernel caps the
            // request at net.core.wmem_max (and doubles it); memory is used
            // only while data is in flight. (TCP sockets keep autotuning.)
            // 10 MiB body, 1 thread: 370 → 560 req/s on this machine.
            let _ =
                nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBuf, &(1 << 20));
        }
        Ok(Socket {
            read: register(fd, Interest::READABLE)?,
            write: None,
        })
    }

    /// The write registration, made on first need.
    fn write_interest(&mut self) -> io::Result<&AsyncFd<OwnedFd>> {
        if self.write.is_none() {
            let dup = nix::unistd::dup(self.read.get_ref())?;
            self.write = Some(register(dup, Interest::WRITABLE)?);
        }
        Ok(self.write.as_ref().expect("registered just above"))
    }

    /// Poll one write attempt: straight away, then (socket full) with write
    /// readiness from tokio.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut attempt: impl FnMut(&OwnedFd) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        if self.write.is_none() {
            match attempt(self.read.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
        loop {
            let interest = self.write_interest()?;
            let mut guard = ready!(interest.poll_write_ready(cx))?;
            match guard.try_io(|fd| attempt(fd.get_ref())) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Register an owned descriptor with the runtime.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which keeps it open
    // (and its number unchanged) until the registration is dropped.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
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

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, |fd| nix::unistd::write(fd, data).map_err(errno))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_io(cx, |fd| nix::sys::uio::writev(fd, slices).map_err(errno))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result =
            nix::sys::socket::shutdown(self.read.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        Poll::Ready(match result {
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(e.into()),
        })
    }
}

impl Transport for Socket {
    async fn writable(&self) -> io::Result<()> {
        // Called by a writer that just hit a full socket: wait for room on
        // a registration of its own (dropped at the end of the wait).
        let dup = nix::unistd::dup(self.read.get_ref())?;
        let interest = register(dup, Interest::WRITABLE)?;
        let mut guard = interest.writable().await?;
        guard.retain_ready();
        Ok(())
    }

    fn try_sendfile(&self, file: &OwnedFd, offset: &mut i64, count: usize) -> io::Result<usize> {
        nix::sys::sendfile::sendfile(self.read.get_ref(), file, Some(offset), count)
            .map_err(io::Error::from)
    }

    fn idle(&mut self) {
        self.write = None;
    }
}
