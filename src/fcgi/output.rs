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

/// A response that is complete when the app returns (hello world, an error
/// page) can be written by the app thread itself: one non-blocking write of
/// its records and END_REQUEST on a duplicate of the socket. The I/O thread
/// is not woken for it; it learns that the request ended when it next wakes
/// (the web server's next request on this kept-alive connection). `busy`
/// makes the two writers exclusive: the I/O thread holds it whenever it is
/// not idle, the app thread only ever tries it.
pub struct DirectWrite {
    socket: OwnedFd,
    busy: AtomicBool,
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

    pub(super) async fn lock(&self) {
        while !self.try_lock() {
            tokio::task::yield_now().await;
        }
    }

    pub(super) fn unlock(&self) {
        self.busy.store(false, Ordering::Release);
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
        let written = match nix::unistd::write(&self.socket, records) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => 0,
            Err(_) => {
                // The connection is gone; nothing more to tell anyone.
                self.unlock();
                return true;
            }
        };
        if written == records.len() {
            if let Ok(mut finished) = self.finished.lock() {
                *finished = Some((id, status, out));
            }
            self.unlock();
            return true;
        }
        if written > 0 {
            // Frames are in order: the rest, then the end, through the queue.
            let _ = out.try_send(Out::Raw(Bytes::copy_from_slice(&records[written..])));
            let _ = out.try_send(Out::Finalize(status));
            self.unlock();
            return true;
        }
        self.unlock();
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
    let segments = &mut frames.segments;
    while !segments.is_empty() {
        let written = {
            let slices: Vec<std::io::IoSlice<'_>> = segments
                .iter()
                .take(64)
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            stream.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let Some(front) = segments.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                segments.pop_front();
            } else {
                bytes::Buf::advance(front, left);
                left = 0;
            }
        }
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
