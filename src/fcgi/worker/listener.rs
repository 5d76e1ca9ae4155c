//! Listening sockets of the FastCGI responder: `--bind unix:PATH`,
//! `--bind HOST:PORT` / `[IPv6]:PORT`, a socket inherited on fd 0
//! (`FCGI_LISTENSOCK_FILENO`: spawn-fcgi, mod_fcgid, lighttpd `bin-path`) and
//! systemd socket activation (`LISTEN_FDS`). Unix sockets are created with a
//! mode that is never world-writable by default (0660, like PHP-FPM's
//! `listen.mode`). Plain std sockets: the caller hands them to its runtime.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, SockaddrLike, SockaddrStorage, getpeername, getsockname, getsockopt, sockopt,
};

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address (host names are resolved once, at start).
    Tcp(String),
}

/// A bind address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Not `unix:PATH`, `HOST:PORT` or `[IPv6]:PORT`.
    #[error("invalid bind address {0:?}: expected unix:PATH, HOST:PORT or [IPv6]:PORT")]
    BadAddress(String),
    /// Binding or setting up the socket failed.
    // (The error is in the message, not a `source`: `{err:#}` would print
    // it twice.)
    #[error("cannot listen on {address}: {reason}")]
    Io {
        /// The address.
        address: String,
        /// The error.
        reason: io::Error,
    },
    /// No `--bind` and nothing inherited.
    #[error(
        "no listening socket: pass --bind, or start wsgi-fcgi with a listening socket on fd 0 or via systemd socket activation"
    )]
    Nothing,
}

impl Bind {
    /// Parse `unix:PATH`, `HOST:PORT` or `[IPv6]:PORT`.
    pub fn parse(text: &str) -> Result<Bind, ListenError> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenError::BadAddress(text.into()));
            }
            return Ok(Bind::Unix(path.into()));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| ListenError::BadAddress(text.into()))?;
        if host.is_empty()
            || port.parse::<u16>().is_err()
            || (host.contains(':') && !host.starts_with('['))
        {
            return Err(ListenError::BadAddress(text.into()));
        }
        Ok(Bind::Tcp(text.into()))
    }
}

/// A listening socket, not yet registered with a runtime.
#[derive(Debug)]
pub enum Listener {
    /// TCP (IPv4 or IPv6).
    Tcp(std::net::TcpListener),
    /// A unix socket.
    Unix(UnixListener),
}

impl Listener {
    /// Its descriptor, and whether it is a unix socket.
    pub fn raw(&self) -> (std::os::fd::RawFd, bool) {
        use std::os::fd::AsRawFd;
        match self {
            Listener::Tcp(l) => (l.as_raw_fd(), false),
            Listener::Unix(l) => (l.as_raw_fd(), true),
        }
    }

    /// Another descriptor for the same listening socket (each worker
    /// process of a master takes one).
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }
}

/// Unix socket ownership and mode.
#[derive(Clone, Debug)]
pub struct UnixSocketOptions {
    /// File mode (default 0o660).
    pub mode: u32,
    /// Owner user name.
    pub owner: Option<String>,
    /// Owner group name.
    pub group: Option<String>,
}

impl Default for UnixSocketOptions {
    fn default() -> Self {
        UnixSocketOptions {
            mode: 0o660,
            owner: None,
            group: None,
        }
    }
}

fn io_err(address: &str) -> impl FnOnce(io::Error) -> ListenError + '_ {
    move |reason| ListenError::Io {
        address: address.to_string(),
        reason,
    }
}

/// Bind one address.
pub fn bind(bind: &Bind, unix: &UnixSocketOptions, backlog: i32) -> Result<Listener, ListenError> {
    match bind {
        Bind::Unix(path) => bind_unix(path, unix, backlog),
        Bind::Tcp(text) => {
            let addr: SocketAddr = text
                .to_socket_addrs()
                .map_err(io_err(text))?
                .next()
                .ok_or_else(|| ListenError::BadAddress(text.clone()))?;
            let domain = socket2::Domain::for_address(addr);
            let socket =
                socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(io_err(text))?;
            socket.set_reuse_address(true).map_err(io_err(text))?;
            if addr.is_ipv6() {
                socket.set_only_v6(true).map_err(io_err(text))?;
            }
            socket.bind(&addr.into()).map_err(io_err(text))?;
            socket.listen(backlog).map_err(io_err(text))?;
            Ok(Listener::Tcp(socket.into()))
        }
    }
}

/// The socket files this process bound: path, device, inode.
static BOUND: std::sync::Mutex<Vec<(std::path::PathBuf, u64, u64)>> =
    std::sync::Mutex::new(Vec::new());

/// Remove the socket file at `path` unless it is no longer the one this
/// process bound: another process (a new responder `wsgi-cgi --warm`
/// started, a new master) may have replaced it meanwhile. A path this
/// process did not bind itself (inherited sockets) is removed as it is.
pub fn remove_socket_file(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let bound = crate::core::lock(&BOUND)
        .iter()
        .find(|(p, _, _)| p == path)
        .map(|&(_, dev, ino)| (dev, ino));
    if let Some(identity) = bound {
        let meta = std::fs::symlink_metadata(path)?;
        if (meta.dev(), meta.ino()) != identity {
            return Ok(());
        }
    }
    std::fs::remove_file(path)
}

fn bind_unix(
    path: &Path,
    options: &UnixSocketOptions,
    backlog: i32,
) -> Result<Listener, ListenError> {
    let name = path.display().to_string();
    // A stale socket from a previous run: remove it if nobody answers on it.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err() {
            std::fs::remove_file(path).map_err(io_err(&name))?;
        }
    }
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .map_err(io_err(&name))?;
    // The socket file is created with its final mode (the umask around
    // bind): no chmod by path afterwards, which a symlink planted meanwhile
    // could redirect.
    let umask = nix::sys::stat::Mode::from_bits_truncate(!options.mode & 0o777);
    let old = nix::sys::stat::umask(umask);
    let bound = socket.bind(&socket2::SockAddr::unix(path).map_err(io_err(&name))?);
    nix::sys::stat::umask(old);
    bound.map_err(io_err(&name))?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::MetadataExt;
        crate::core::lock(&BOUND).push((path.to_path_buf(), meta.dev(), meta.ino()));
    }
    socket.listen(backlog).map_err(io_err(&name))?;
    if options.owner.is_some() || options.group.is_some() {
        let uid = match &options.owner {
            Some(user) => Some(lookup_user(user).map_err(io_err(&name))?),
            None => None,
        };
        let gid = match &options.group {
            Some(group) => Some(lookup_group(group).map_err(io_err(&name))?),
            None => None,
        };
        // (Not following a symlink: the file we bound, or nothing.)
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            uid,
            gid,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(&name)(e.into()))?;
    }
    Ok(Listener::Unix(UnixListener::from(OwnedFd::from(socket))))
}

fn lookup_user(name: &str) -> io::Result<nix::unistd::Uid> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(user.uid),
        _ => Err(io::Error::other(format!("no such user {name:?}"))),
    }
}

fn lookup_group(name: &str) -> io::Result<nix::unistd::Gid> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        _ => Err(io::Error::other(format!("no such group {name:?}"))),
    }
}

/// Is `fd` a listening stream socket? Returns its family.
fn listening_family(fd: RawFd) -> Option<AddressFamily> {
    // SAFETY: the descriptor is only borrowed for these calls.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if !getsockopt(&borrowed, sockopt::AcceptConn).ok()? {
        return None;
    }
    // FCGI_LISTENSOCK_FILENO: getpeername fails with ENOTCONN on a listener.
    if getpeername::<SockaddrStorage>(fd).is_ok() {
        return None;
    }
    getsockname::<SockaddrStorage>(fd).ok()?.family()
}

fn adopt(fd: OwnedFd) -> Option<Listener> {
    match listening_family(fd.as_raw_fd())? {
        AddressFamily::Unix => Some(Listener::Unix(UnixListener::from(fd))),
        AddressFamily::Inet | AddressFamily::Inet6 => {
            Some(Listener::Tcp(std::net::TcpListener::from(fd)))
        }
        _ => None,
    }
}

/// Listening sockets handed over by the parent: systemd's `LISTEN_FDS`
/// (for this process), else a listening socket on fd 0. The fd-0 socket is
/// moved to a new descriptor and fd 0 becomes `/dev/null`.
pub fn inherited() -> io::Result<Vec<Listener>> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if let (true, Some(count)) = (
        pid_matches,
        std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<i32>().ok()),
    ) {
        let mut listeners = Vec::new();
        for fd in 3..3 + count {
            nix::fcntl::fcntl(
                // SAFETY: systemd passed these descriptors to us.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
            // SAFETY: LISTEN_FDS hands ownership of fds 3.. to this process.
            if let Some(listener) = adopt(unsafe { OwnedFd::from_raw_fd(fd) }) {
                listeners.push(listener);
            }
        }
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: called before any other thread exists.
            unsafe { std::env::remove_var(name) };
        }
        return Ok(listeners);
    }
    if listening_family(0).is_none() {
        return Ok(Vec::new());
    }
    let stdin = io::stdin();
    let raw = nix::fcntl::fcntl(stdin.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(null.as_fd())?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor we own.
    Ok(adopt(unsafe { OwnedFd::from_raw_fd(raw) })
        .into_iter()
        .collect())
}

/// The addresses in `FCGI_WEB_SERVER_ADDRS` (spec §3.2), if set.
pub fn web_server_addrs() -> Option<Vec<std::net::IpAddr>> {
    let value = std::env::var("FCGI_WEB_SERVER_ADDRS").ok()?;
    Some(
        value
            .split([',', ' '])
            .filter_map(|a| a.trim().parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn bind_address_table() {
        assert_eq!(
            Bind::parse("unix:/run/app.sock").unwrap(),
            Bind::Unix("/run/app.sock".into())
        );
        assert_eq!(
            Bind::parse("127.0.0.1:9000").unwrap(),
            Bind::Tcp("127.0.0.1:9000".into())
        );
        assert_eq!(
            Bind::parse("[::1]:9000").unwrap(),
            Bind::Tcp("[::1]:9000".into())
        );
        assert_eq!(
            Bind::parse("localhost:9000").unwrap(),
            Bind::Tcp("localhost:9000".into())
        );
        for bad in ["unix:", "9000", "host:", "host:99999", "::1:9000", ":9000"] {
            assert!(Bind::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_socket_is_not_world_writable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _l = bind(&Bind::Unix(path.clone()), &UnixSocketOptions::default(), 16).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A stale socket file is replaced.
        drop(_l);
        assert!(bind(&Bind::Unix(path), &UnixSocketOptions::default(), 16).is_ok());
    }
}
