//! A worker's accept loop: listening sockets registered with the tokio
//! runtime, one task per connection ([`crate::fcgi::connection`]), the
//! `FCGI_MAX_CONNS` limit (the oldest idle connection gives way), the `FCGI_WEB_SERVER_ADDRS` peer allow-list, and a
//! graceful stop (stop accepting; each connection closes once idle).

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::fcgi::connection::{self, Context};
use crate::fcgi::idle::IdleList;
use crate::fcgi::job::{Dispatch, Limits};
use crate::fcgi::socket::Socket;
use crate::listener::Listener;
use crate::{log_error, log_info, log_warn};

/// How the accept loop behaves.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Connection limits and advertised values.
    pub limits: Limits,
    /// TCP peers allowed to connect (`FCGI_WEB_SERVER_ADDRS`); `None`: all.
    pub allowed_peers: Option<Vec<IpAddr>>,
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

enum AsyncListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl AsyncListener {
    fn new(listener: Listener) -> std::io::Result<AsyncListener> {
        Ok(match listener {
            Listener::Tcp(l) => {
                l.set_nonblocking(true)?;
                AsyncListener::Tcp(tokio::net::TcpListener::from_std(l)?)
            }
            Listener::Unix(l) => {
                l.set_nonblocking(true)?;
                AsyncListener::Unix(tokio::net::UnixListener::from_std(l)?)
            }
        })
    }

    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            AsyncListener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
            AsyncListener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

/// Serve until `stop` resolves to a grace period, then stop: no new
/// connections, requests in flight get up to the grace period to finish
/// (zero: a fast stop).
pub async fn serve(
    listeners: Vec<Listener>,
    dispatch: Arc<dyn Dispatch>,
    options: ServerOptions,
    stop: impl Future<Output = Duration>,
) -> std::io::Result<()> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let context = Context {
        dispatch,
        limits: Arc::new(options.limits.clone()),
        shutdown: shutdown_rx,
        idle: Arc::new(IdleList::default()),
    };
    let slots = Arc::new(Semaphore::new(options.limits.max_conns.max(1)));
    let mut accepting = JoinSet::new();
    let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    for listener in listeners {
        let listener = AsyncListener::new(listener)?;
        let accept = Acceptor {
            context: context.clone(),
            slots: slots.clone(),
            allowed: options.allowed_peers.clone(),
            connections: connections.clone(),
        };
        accepting.spawn(accept.run(listener));
    }
    let grace = stop.await;
    log_info!("stopping: no new connections; {grace:?} for requests in flight");
    accepting.abort_all();
    let _ = shutdown_tx.send(true);
    let mut connections = connections.lock().await;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        if !connections.is_empty() {
            log_warn!(
                "{grace:?} passed with {} connections still busy; closing them",
                connections.len()
            );
        }
        connections.abort_all();
    }
    Ok(())
}

/// One listening socket's accept loop.
struct Acceptor {
    context: Context,
    /// `--max-conns`.
    slots: Arc<Semaphore>,
    allowed: Option<Vec<IpAddr>>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
}

impl Acceptor {
    async fn run(self, listener: AsyncListener) {
        loop {
            let accepted = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    log_warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Some(board) = crate::process::scoreboard::board() {
                board
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => match self.make_room().await {
                    Some(permit) => permit,
                    None => return,
                },
            };
            let Some(socket) = self.socket(accepted) else {
                continue;
            };
            let context = self.context.clone();
            let task = async move {
                connection::serve(socket, context, BytesMut::new()).await;
                drop(permit);
            };
            let mut set = self.connections.lock().await;
            // Reap finished connections: a JoinSet keeps them until joined.
            while set.try_join_next().is_some() {}
            set.spawn(task);
        }
    }

    /// `--max-conns` reached: the oldest idle connection gives way (one
    /// whose last request turns out to be still running goes back to the
    /// list, and the next is asked); without any, wait for one to close.
    async fn make_room(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        loop {
            let asked = self.context.idle.evict_oldest();
            let wait = if asked {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(200)
            };
            match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => return Some(permit),
                Ok(Err(_)) => return None,
                Err(_elapsed) => continue,
            }
        }
    }

    /// The accepted connection as a [`Socket`], unless its peer is not allowed.
    fn socket(&self, accepted: Accepted) -> Option<Socket> {
        let (fd, unix) = match accepted {
            Accepted::Tcp(stream, peer) => {
                if self
                    .allowed
                    .as_ref()
                    .is_some_and(|list| !list.contains(&peer.ip()))
                {
                    log_error!(
                        "refused FastCGI connection from {peer}: not in FCGI_WEB_SERVER_ADDRS"
                    );
                    return None;
                }
                let _ = stream.set_nodelay(true);
                (stream.into_std().map(OwnedFd::from), false)
            }
            Accepted::Unix(stream) => (stream.into_std().map(OwnedFd::from), true),
        };
        match fd.and_then(|fd| Socket::new(fd, unix)) {
            Ok(socket) => Some(socket),
            Err(e) => {
                log_error!("cannot set up a connection: {e}");
                None
            }
        }
    }
}
