//! Writing records to a connection: the [`Transport`] (a tokio socket that
//! can also `sendfile`), outgoing records as [`Frames`] (small parts copied,
//! large payloads referenced and written vectored), `sendfile` of file
//! bodies into STDOUT records, and the lingering close.

use std::os::fd::{AsRawFd, OwnedFd};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::job::Out;
use super::record::{self, RecordType};

/// A transport that can also send file contents with `sendfile(2)`.
pub trait Transport: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send {
    /// Wait until the socket is writable.
    fn writable(&self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Try one `sendfile`; `WouldBlock` when the socket is full.
    fn try_sendfile(
        &self,
        file: &OwnedFd,
        offset: &mut i64,
        count: usize,
    ) -> std::io::Result<usize>;
    /// The connection goes idle (nothing of ours left to write): a chance
    /// to drop interest in write readiness.
    fn idle(&mut self) {}
}

macro_rules! transport {
    ($ty:ty) => {
        impl Transport for $ty {
            async fn writable(&self) -> std::io::Result<()> {
                <$ty>::writable(self).await
            }
            fn try_sendfile(
                &self,
                file: &OwnedFd,
                offset: &mut i64,
                count: usize,
            ) -> std::io::Result<usize> {
                self.try_io(tokio::io::Interest::WRITABLE, || {
                    nix::sys::sendfile::sendfile(self, file, Some(offset), count)
                        .map_err(std::io::Error::from)
                })
            }
        }
    };
}
transport!(tokio::net::TcpStream);
transport!(tokio::net::UnixStream);

/// The app thread's own path to the socket, on a duplicate of it.
///
/// - A response that is complete when the app returns (hello world, an
///   error page) is written by the app thread in one non-blocking write of
///   its records and END_REQUEST ([`DirectWrite::write_final`]); the I/O
///   thread is not woken for it and learns that the request ended when it
///   next wakes (the web server's next request on this kept-alive connection).
/// - A streamed body is written chunk by chunk by the app thread, waiting
///   for the socket like a blocking write ([`DirectWrite::write_stream`]),
///   as long as nothing of the request is still queued for the I/O thread
///   (order is kept); so a large body moves socket-ward with one thread and
///   no hand-off per chunk.
///
/// `busy` makes the two writers exclusive: the I/O thread holds it whenever
/// it is not idle, the app thread only takes it when free.
pub struct DirectWrite {
    socket: OwnedFd,
    busy: AtomicBool,
    /// Signalled when the app thread lets go of `busy`.
    released: tokio::sync::Notify,
    pub(super) stopping: AtomicBool,
    /// Set by the app thread (while holding `busy`): the request id, its
    /// `appStatus`, and the output sender (kept, so that dropping it does
    /// not wake the I/O thread).
    pub(super) finished: std::sync::Mutex<Option<(u16, u32, mpsc::Sender<Out>)>>,
}

impl DirectWrite {
    fn try_lock(&self) -> bool {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// I/O thread: take the socket (waiting while the app thread writes).
    pub(super) async fn lock(&self) {
        loop {
            let released = self.released.notified();
            if self.try_lock() {
                return;
            }
            released.await;
        }
    }

    /// I/O thread: let the app thread write.
    pub(super) fn unlock(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// App thread: take the socket if the I/O thread lets go of it within a
    /// moment (it holds it only while handling an event).
    fn lock_app(&self) -> bool {
        for _ in 0..64 {
            if self.try_lock() {
                return true;
            }
            std::thread::yield_now();
        }
        false
    }

    fn unlock_app(&self) {
        self.busy.store(false, Ordering::Release);
        self.released.notify_one();
    }

    /// App thread: write `head` and `body` as STDOUT records of request
    /// `id`, waiting (without the GIL: the caller released it) whenever the
    /// socket is full. `Ok(false)`: the I/O thread has the socket; nothing
    /// was written and the caller queues the chunk instead.
    pub fn write_stream(
        &self,
        id: u16,
        head: Bytes,
        body: Bytes,
        aborted: &AtomicBool,
        head_sent: &AtomicBool,
    ) -> std::io::Result<bool> {
        if !self.lock_app() {
            return Ok(false);
        }
        if aborted.load(Ordering::Relaxed) {
            self.unlock_app();
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        }
        if !head.is_empty() {
            head_sent.store(true, Ordering::Release);
        }
        let mut frames = Frames::default();
        frames.stream(RecordType::Stdout, id, head);
        frames.stream(RecordType::Stdout, id, body);
        frames.seal();
        let result = self.write_blocking(&mut frames, aborted);
        self.unlock_app();
        result.map(|()| true)
    }

    fn write_blocking(&self, frames: &mut Frames, aborted: &AtomicBool) -> std::io::Result<()> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut wrote = false;
        while !frames.segments.is_empty() {
            let written = nix::sys::uio::writev(&self.socket, &frames.io_slices());
            match written {
                Ok(n) => {
                    wrote |= n > 0;
                    frames.advance(n);
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    // A record may be half written: nobody else may write
                    // until it is complete, so wait holding the socket. The
                    // wait is cut short by an ABORT, a timeout or a closed
                    // connection; a record left half written then makes the
                    // stream unusable, so the connection is shut down (the
                    // web server sees it close, not a corrupt record).
                    if aborted.load(Ordering::Relaxed) {
                        if wrote {
                            let _ = nix::sys::socket::shutdown(
                                std::os::fd::AsRawFd::as_raw_fd(&self.socket),
                                nix::sys::socket::Shutdown::Both,
                            );
                        }
                        return Err(std::io::ErrorKind::ConnectionAborted.into());
                    }
                    let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLOUT)];
                    match poll(&mut fds, PollTimeout::from(100u16)) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// App thread: write `records` (STDOUT records and END_REQUEST of
    /// request `id`) now if the socket is free and takes them; on a short
    /// write the rest goes through `out`. Returns false when nothing was
    /// written (the caller uses `out` as usual).
    pub fn write_final(
        &self,
        id: u16,
        status: u32,
        records: &[u8],
        out: mpsc::Sender<Out>,
    ) -> bool {
        if self.stopping.load(Ordering::Relaxed) || !self.try_lock() {
            return false;
        }
        let done = self.write_final_locked(id, status, records, out);
        self.unlock_app();
        done
    }

    fn write_final_locked(
        &self,
        id: u16,
        status: u32,
        records: &[u8],
        out: mpsc::Sender<Out>,
    ) -> bool {
        let written = match nix::unistd::write(&self.socket, records) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => 0,
            Err(_) => {
                // The connection is gone; nothing more to tell anyone.
                return true;
            }
        };
        if written == records.len() {
            if let Ok(mut finished) = self.finished.lock() {
                *finished = Some((id, status, out));
            }
            return true;
        }
        if written > 0 {
            // Frames are in order: the rest, then the end, through the queue.
            let _ = out.try_send(Out::Raw(Bytes::copy_from_slice(&records[written..])));
            let _ = out.try_send(Out::Finalize(status));
            return true;
        }
        false
    }
}

impl DirectWrite {
    /// A direct path on a duplicate of the connection's socket, held busy
    /// by the connection until it first waits.
    pub(super) fn new(socket: OwnedFd) -> Arc<DirectWrite> {
        Arc::new(DirectWrite {
            socket,
            busy: AtomicBool::new(true),
            released: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            finished: std::sync::Mutex::new(None),
        })
    }
}

/// Outgoing records as segments: headers, padding and small payloads are
/// copied into one buffer; large payloads are referenced, not copied, and
/// everything leaves with vectored writes.
#[derive(Default)]
pub struct Frames {
    segments: std::collections::VecDeque<Bytes>,
    buffer: BytesMut,
    /// Payload bytes framed since the last write.
    pub len: usize,
}

/// Payloads larger than this are written from the app's own buffer.
const COPY_LIMIT: usize = 8 * 1024;

impl Frames {
    pub fn small(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    fn seal(&mut self) {
        if !self.buffer.is_empty() {
            self.segments.push_back(self.buffer.split().freeze());
        }
    }

    /// The next segments for one vectored write.
    fn io_slices(&self) -> Vec<std::io::IoSlice<'_>> {
        self.segments
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect()
    }

    /// Drop the first `written` bytes (a write took them).
    fn advance(&mut self, written: usize) {
        let mut left = written;
        while left > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.segments.pop_front();
            } else {
                bytes::Buf::advance(front, left);
                left = 0;
            }
        }
    }

    /// Frame `data` as records of `kind` (nothing for empty data).
    pub fn stream(&mut self, kind: RecordType, id: u16, data: Bytes) {
        self.len += data.len();
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + record::MAX_CONTENT).min(data.len());
            let padding = record::encode_header(&mut self.buffer, kind, id, end - offset);
            if end - offset <= COPY_LIMIT {
                self.buffer.extend_from_slice(&data[offset..end]);
            } else {
                self.seal();
                self.segments.push_back(data.slice(offset..end));
            }
            self.buffer.extend_from_slice(&[0u8; 8][..padding]);
            offset = end;
        }
    }
}

/// Write all frames (vectored; partial writes resume where they stopped).
pub async fn write_frames<T: Transport>(
    stream: &mut T,
    frames: &mut Frames,
) -> std::io::Result<()> {
    frames.seal();
    frames.len = 0;
    while !frames.segments.is_empty() {
        let written = stream.write_vectored(&frames.io_slices()).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        frames.advance(written);
    }
    Ok(())
}

/// A lingering close: after our half-close, read and discard what the peer
/// still sends (e.g. a trailing empty STDIN record) until it closes, for at
/// most two seconds, so its last writes do not fail with EPIPE/RST before it
/// has read the response.
pub async fn linger<T: Transport>(stream: &mut T) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Send file contents as STDOUT records: header, `sendfile` of the content,
/// padding — the bytes never pass through userspace.
pub async fn send_file<T: Transport>(
    stream: &mut T,
    id: u16,
    file: &OwnedFd,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut position = i64::try_from(offset).map_err(std::io::Error::other)?;
    let mut left = len;
    while left > 0 {
        let chunk = left.min(record::MAX_CONTENT as u64) as usize;
        let mut header = BytesMut::new();
        let padding = record::encode_header(&mut header, RecordType::Stdout, id, chunk);
        stream.write_all(&header).await?;
        let mut sent = 0;
        while sent < chunk {
            match stream.try_sendfile(file, &mut position, chunk - sent) {
                Ok(0) => {
                    // The file shrank: fill the announced record with zeros.
                    stream.write_all(&vec![0u8; chunk - sent]).await?;
                    sent = chunk;
                }
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable().await?,
                Err(e) => return Err(e),
            }
        }
        stream.write_all(&[0u8; 8][..padding]).await?;
        left -= chunk as u64;
    }
    Ok(())
}
