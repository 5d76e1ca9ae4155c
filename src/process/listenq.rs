//! The accept queue of a listening socket — the status page's "listen
//! queue" (connections waiting for a worker) and "listen queue len" (the
//! backlog). TCP: `getsockopt(TCP_INFO)` (for a listener, `tcpi_unacked`
//! is the queue and `tcpi_sacked` the backlog). Unix: the kernel's
//! `sock_diag` netlink interface (`UNIX_DIAG_RQLEN`), as `ss -xl` reads it.

use std::mem::size_of;
use std::os::fd::RawFd;

use nix::libc;

/// (connections waiting, backlog) of the listening socket `fd`.
pub fn queue(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: getsockname into a sockaddr_storage of the right size.
    let family = unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockname(fd, (&raw mut addr).cast(), &mut len) != 0 {
            return None;
        }
        i32::from(addr.ss_family)
    };
    match family {
        libc::AF_INET | libc::AF_INET6 => tcp(fd),
        libc::AF_UNIX => unix(fd),
        _ => None,
    }
}

fn tcp(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: getsockopt(TCP_INFO) fills at most `len` bytes of `info`.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        ) != 0
        {
            return None;
        }
        Some((u64::from(info.tcpi_unacked), u64::from(info.tcpi_sacked)))
    }
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const TCP_LISTEN: u32 = 10;

fn unix(fd: RawFd) -> Option<(u64, u64)> {
    // The socket's inode names it to sock_diag.
    // SAFETY: fstat into a zeroed stat.
    let inode = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return None;
        }
        st.st_ino as u32
    };
    // nlmsghdr (16) + unix_diag_req (24).
    let mut request = [0u8; 40];
    request[0..4].copy_from_slice(&40u32.to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request[6..8].copy_from_slice(&((libc::NLM_F_REQUEST) as u16).to_ne_bytes());
    request[16] = libc::AF_UNIX as u8;
    request[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    request[24..28].copy_from_slice(&inode.to_ne_bytes());
    request[28..32].copy_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes());
    request[32..40].copy_from_slice(&[0xff; 8]); // any cookie
    // SAFETY: a netlink socket of our own, closed below.
    let sock = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if sock < 0 {
        return None;
    }
    let mut reply = [0u8; 1024];
    // SAFETY: send/recv on our socket with buffers of the given sizes.
    let n = unsafe {
        let sent = libc::send(sock, request.as_ptr().cast(), request.len(), 0);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let n = if sent == request.len() as isize {
            libc::recv(sock, reply.as_mut_ptr().cast(), reply.len(), 0)
        } else {
            -1
        };
        libc::close(sock);
        n
    };
    let reply = reply.get(..usize::try_from(n).ok()?)?;
    let word = |at: usize| Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?));
    let half = |at: usize| Some(u16::from_ne_bytes(reply.get(at..at + 2)?.try_into().ok()?));
    // nlmsghdr: len, type (SOCK_DIAG_BY_FAMILY for an answer); then the
    // 16-byte unix_diag_msg, then attributes (len, type, data, padded to 4).
    if half(4)? != SOCK_DIAG_BY_FAMILY || word(20)? != inode {
        return None;
    }
    let end = (word(0)? as usize).min(reply.len());
    let mut at = 32;
    while at + 4 <= end {
        let (len, kind) = (half(at)? as usize, half(at + 2)?);
        if len < 4 {
            break;
        }
        if kind == UNIX_DIAG_RQLEN && len >= 12 {
            return Some((u64::from(word(at + 4)?), u64::from(word(at + 8)?)));
        }
        at += (len + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn unix_and_tcp_queues_count_unaccepted_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(queue(unix.as_raw_fd()).map(|q| q.0), Some(0));
        assert_eq!(queue(tcp.as_raw_fd()).map(|q| q.0), Some(0));
        let _a = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _b = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let _c = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (waiting, backlog) = queue(unix.as_raw_fd()).unwrap();
        assert_eq!(waiting, 2);
        assert!(backlog >= 2);
        assert_eq!(queue(tcp.as_raw_fd()).map(|q| q.0), Some(1));
    }
}
