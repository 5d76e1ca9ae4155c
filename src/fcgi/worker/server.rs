//! A worker's I/O thread: the connections that app threads handed over
//! (kept alive, multiplexed, slow, or anything not whole at once; see
//! [`crate::fcgi::inline`]), each a task on the tokio runtime
//! ([`crate::fcgi::connection`]); the `FCGI_MAX_CONNS` limit (the oldest
//! idle connection gives way); and a graceful stop: the app threads stop
//! accepting, each connection closes once idle, requests in flight —
//! inline ones too — get the grace period to finish.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::fcgi::connection::{self, Context};
use crate::fcgi::inline::Accepted;
use crate::fcgi::job::Dispatch;
use crate::fcgi::socket::Socket;
use crate::fcgi::worker::listening::Listening;
use crate::{log_error, log_info, log_warn};

/// Serve the connections handed over on `handoffs` (with the limits of
/// `listening`, where the app threads accept them) until `stop` resolves
/// to a grace period, then stop (zero: a fast stop). `Ok(false)`: the
/// grace period ran out with requests still running.
pub async fn serve(
    mut handoffs: mpsc::UnboundedReceiver<Accepted>,
    listening: Arc<Listening>,
    dispatch: Arc<dyn Dispatch>,
    stop: impl Future<Output = Duration>,
) -> std::io::Result<bool> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut io = Io {
        context: Context {
            dispatch,
            limits: listening.limits.clone(),
            shutdown: shutdown_rx,
            idle: listening.idle.clone(),
        },
        slots: listening.slots.clone(),
        connections: JoinSet::new(),
    };
    let mut stop = std::pin::pin!(stop);
    let grace = loop {
        tokio::select! {
            Some(conn) = handoffs.recv() => io.adopt(conn).await,
            grace = &mut stop => break grace,
        }
    };
    log_info!("stopping: no new connections; {grace:?} for requests in flight");
    listening.stop_accepting();
    // (Taken before the shutdown signal: they are served like any other.)
    let waiting = listening.drain_backlog();
    if !waiting.is_empty() {
        log_info!(
            "serving the {} connection(s) waiting in the backlog",
            waiting.len()
        );
    }
    for conn in waiting {
        io.adopt(conn).await;
    }
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        // Connections handed over meanwhile still get their requests served.
        while let Ok(conn) = handoffs.try_recv() {
            io.adopt(conn).await;
        }
        while io.connections.try_join_next().is_some() {}
        // (A kept connection an app thread took is counted from the moment
        // it was taken, before its request counts as inline.)
        if io.connections.is_empty() && listening.inflight() == 0 && listening.kept.is_empty() {
            // (An app thread or the kept connections send before they
            // count themselves off: whatever they sent is here now.)
            match handoffs.try_recv() {
                Ok(conn) => io.adopt(conn).await,
                Err(_) => return Ok(true),
            }
            continue;
        }
        if tokio::time::Instant::now() >= deadline {
            log_warn!(
                "{grace:?} passed with {} connections and {} inline requests still busy; closing them",
                io.connections.len(),
                listening.inflight()
            );
            io.connections.abort_all();
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The I/O thread's connections.
struct Io {
    context: Context,
    /// `--max-conns`.
    slots: Arc<Semaphore>,
    connections: JoinSet<()>,
}

impl Io {
    /// Serve a connection an app thread handed over.
    async fn adopt(&mut self, conn: Accepted) {
        // (A kept connection brings its slot along.)
        let kept = conn.permit.is_some();
        let permit = match conn.permit {
            Some(permit) => permit,
            None => match self.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => match self.make_room().await {
                    Some(permit) => permit,
                    None => return,
                },
            },
        };
        // (The app thread that handed it over dropped its share.)
        let fd = match Arc::try_unwrap(conn.socket) {
            Ok(fd) => fd,
            Err(shared) => match nix::unistd::dup(&*shared) {
                Ok(fd) => fd,
                Err(e) => {
                    log_error!("cannot set up a connection: {e}");
                    return;
                }
            },
        };
        let socket = match Socket::new(fd) {
            Ok(socket) => socket,
            Err(e) => {
                log_error!("cannot set up a connection: {e}");
                return;
            }
        };
        let context = self.context.clone();
        // Reap finished connections: a JoinSet keeps them until joined.
        while self.connections.try_join_next().is_some() {}
        self.connections.spawn(async move {
            connection::serve(socket, context, conn.buf, (kept, conn.in_flight)).await;
            drop(permit);
        });
    }

    /// `--max-conns` reached: the oldest idle connection gives way (one
    /// whose last request turns out to be still running goes back to the
    /// list, and the next is asked); without any, wait for one to close.
    async fn make_room(&self) -> Option<OwnedSemaphorePermit> {
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
}
