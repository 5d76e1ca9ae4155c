//! Kept-alive connections served by the app threads: nginx's `keepalive`
//! pool, Apache `enablereuse=on`, HAProxy without multiplexing — one
//! request at a time on a connection that stays open. Between requests a
//! connection is parked in an epoll shared by the worker's app threads;
//! when its next request arrives, one thread takes it and serves it
//! ([`super::inline`]): one wake-up per request, as for a connection per
//! request, instead of the I/O thread's and an app thread's.
//!
//! While a thread runs a kept connection's request, nobody reads the
//! socket — unless the peer speaks: the connection stays in the shared
//! epoll (edge-triggered), and whatever it sends during a request (an
//! ABORT_REQUEST, a pipelined or multiplexed request, its close) makes the
//! thread that sees it hand the connection, with the running request, to
//! the I/O thread, which reads on ([`super::connection`]) while the app
//! thread keeps writing the response.
//!
//! ```text
//!            ┌──────────── request ends, answer whole (FCGI_KEEP_CONN) ◀───────────┐
//!            ▼                                                                      │
//!  Parked ──readable──▶ Serving (a thread reads it) ──whole request──▶ Serving + running
//!    │ evicted (--max-conns)      │ anything else                          │ the peer speaks
//!    │ stop: to the I/O thread    ▼                                        ▼
//!    ▼                         I/O thread                     I/O thread (with the running request)
//!  closed
//! ```
//!
//! A kept connection holds a `--max-conns` slot; parked, it is in the
//! worker's [`IdleList`] like the I/O thread's idle ones, oldest first.
//! No Python.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::BytesMut;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::idle::{Evict, IdleList};
use super::inline::{Accepted, InFlight};
use super::job::Exchange;
use crate::log_info;

/// The worker's kept connections.
pub struct Kept {
    /// Every kept connection, edge-triggered, keyed by its token.
    epoll: Epoll,
    conns: Mutex<Conns>,
    next: AtomicU64,
    idle: Arc<IdleList>,
    /// `--max-conns`.
    slots: Arc<Semaphore>,
    /// To the I/O thread.
    handoff: mpsc::UnboundedSender<Accepted>,
    /// A peer sent a request (or an ABORT) while one of its requests ran:
    /// it multiplexes or pipelines (HAProxy with `mpxs-conns`), so from now
    /// on this worker's kept connections are the I/O thread's, which reads
    /// them while requests run.
    multiplexing: AtomicBool,
    me: Weak<Kept>,
}

#[derive(Default)]
struct Conns {
    entries: HashMap<u64, Entry>,
    /// The worker stopped: nothing is parked any more.
    stopped: bool,
    /// Taken out of `entries` for the I/O thread and not sent yet: still
    /// counted as kept, so that a stopping worker never exits with one
    /// on its way (see [`Kept::is_empty`]).
    handing: usize,
}

impl Conns {
    /// Take `token`'s entry out to hand it to the I/O thread
    /// ([`Kept::hand_off_with`] counts it off).
    fn take_for_hand_off(&mut self, token: u64) -> Option<Entry> {
        let entry = self.entries.remove(&token)?;
        self.handing += 1;
        Some(entry)
    }
}

struct Entry {
    socket: Arc<OwnedFd>,
    unix: bool,
    permit: OwnedSemaphorePermit,
    state: State,
}

enum State {
    /// Between requests; in the idle list under `idle_key`.
    Parked { idle_key: u64, buf: BytesMut },
    /// A thread has it: reading its request (`running` none yet; `spoke`:
    /// the peer sent more meanwhile), or running it.
    Serving {
        spoke: bool,
        running: Option<InFlight>,
    },
}

/// What became of a kept connection after its request ([`Kept::ran`]).
pub enum Ran {
    /// Parked for its next request, or the I/O thread has it.
    Left,
    /// Not kept any more: the caller closes it.
    Close(Accepted),
    /// Its next request arrived already: the caller serves it now.
    Again(Accepted),
}

/// What [`Kept::running`] decided.
pub enum Watch {
    /// The connection is watched while the request runs.
    Watched,
    /// The I/O thread has it now (and reads on while the request runs).
    HandedOff,
}

impl Kept {
    /// No connection kept yet; parked ones enter `idle`, each holds one of
    /// `slots`, and those the I/O thread must serve go to `handoff`.
    pub fn new(
        idle: Arc<IdleList>,
        slots: Arc<Semaphore>,
        handoff: mpsc::UnboundedSender<Accepted>,
    ) -> std::io::Result<Arc<Kept>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(Arc::new_cyclic(|me| Kept {
            epoll,
            conns: Mutex::new(Conns::default()),
            next: AtomicU64::new(0),
            idle,
            slots,
            handoff,
            multiplexing: AtomicBool::new(false),
            me: me.clone(),
        }))
    }

    /// The shared epoll, readable while a kept connection has news (an app
    /// thread's own epoll watches it; see [`crate::fcgi::worker::parking`]).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        crate::core::lock(&self.conns)
    }

    /// `conn` holds a whole request with FCGI_KEEP_CONN, about to run with
    /// `exchange`: watch the connection while it runs (kept from now on),
    /// or hand it to the I/O thread — when the peer already sent more, no
    /// `--max-conns` slot is free, or the worker stops.
    pub fn running(&self, conn: &mut Accepted, exchange: &Arc<Exchange>) -> Watch {
        let in_flight = InFlight {
            link: exchange.link().clone(),
            exchange: exchange.clone(),
        };
        if self.multiplexing.load(Ordering::Relaxed) {
            self.release(conn);
            let permit = conn.permit.take();
            let _ = self.handoff.send(Accepted {
                permit,
                in_flight: Some(in_flight),
                ..Accepted::new_shared(conn.socket.clone(), conn.unix)
            });
            return Watch::HandedOff;
        }
        let token = match conn.token {
            Some(token) => token,
            None => match self.keep(conn) {
                Some(token) => token,
                None => {
                    self.hand_off(conn, None, Some(in_flight));
                    return Watch::HandedOff;
                }
            },
        };
        let mut conns = self.lock();
        let Some(entry) = conns.entries.get_mut(&token) else {
            return Watch::HandedOff; // (cannot happen: Serving is ours)
        };
        if let State::Serving {
            spoke: false,
            running,
        } = &mut entry.state
        {
            *running = Some(in_flight);
            drop(conns);
            // With no idle thread watching, a write that waits for room
            // notices the peer speaking.
            let me = self.me.clone();
            exchange
                .link()
                .writer
                .when_peer_speaks(Some(Box::new(move || {
                    if let Some(kept) = me.upgrade() {
                        kept.peer_spoke(token);
                    }
                })));
            return Watch::Watched;
        }
        let entry = conns.take_for_hand_off(token);
        drop(conns);
        if let Some(entry) = entry {
            self.hand_off(conn, Some(entry), Some(in_flight));
        }
        Watch::HandedOff
    }

    /// A first request with FCGI_KEEP_CONN: the connection becomes kept
    /// (a slot, a token, in the epoll); `None`: no slot free, or stopping.
    pub fn keep(&self, conn: &mut Accepted) -> Option<u64> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.lock();
        if conns.stopped {
            return None;
        }
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        self.epoll
            .add(conn.socket.as_fd(), EpollEvent::new(interest, token))
            .ok()?;
        conns.entries.insert(
            token,
            Entry {
                socket: conn.socket.clone(),
                unix: conn.unix,
                permit,
                state: State::Serving {
                    spoke: false,
                    running: None,
                },
            },
        );
        conn.token = Some(token);
        Some(token)
    }

    /// The request of a watched connection ended (`clean`: its answer went
    /// out whole): park it for the next one — or give it back to serve at
    /// once when that arrived already.
    pub fn ran(&self, conn: Accepted, clean: bool) -> Ran {
        let Some(token) = conn.token else {
            return Ran::Close(conn);
        };
        let mut conns = self.lock();
        if let Some(Entry {
            state:
                State::Serving {
                    running: Some(in_flight),
                    ..
                },
            ..
        }) = conns.entries.get_mut(&token)
        {
            in_flight.link.writer.when_peer_speaks(None);
        }
        let stopped = conns.stopped;
        let Some(entry) = conns.entries.get_mut(&token) else {
            return Ran::Left; // taken over meanwhile
        };
        // The next request arrived before this call (its edge was seen).
        let waiting = matches!(entry.state, State::Serving { spoke: true, .. });
        if clean && !stopped && waiting {
            entry.state = State::Serving {
                spoke: false,
                running: None,
            };
            return Ran::Again(conn);
        }
        if clean && !stopped {
            let me = self.me.clone();
            let evict = Evict::Call(Arc::new(move || {
                if let Some(kept) = me.upgrade() {
                    kept.evict(token);
                }
            }));
            entry.state = State::Parked {
                idle_key: self.idle.enter(evict),
                buf: conn.buf,
            };
            return Ran::Left;
        }
        let entry = if clean {
            conns.take_for_hand_off(token)
        } else {
            conns.entries.remove(&token)
        };
        drop(conns);
        let _ = self.epoll.delete(conn.socket.as_fd());
        match entry {
            Some(entry) if clean => {
                // Stopping: the I/O thread serves what arrived and closes
                // it once idle.
                let mut buf = conn.buf;
                read_waiting(&conn.socket, &mut buf);
                let conn = Accepted::new_shared(conn.socket, conn.unix);
                self.hand_off_with(&conn, Some(entry), None, buf);
                Ran::Left
            }
            _ => Ran::Close(conn),
        }
    }

    /// A connection a thread took is not kept any more (the I/O thread
    /// gets it, or it closes): forget it.
    pub fn release(&self, conn: &mut Accepted) {
        if let Some(token) = conn.token.take() {
            let entry = self.lock().entries.remove(&token);
            let _ = self.epoll.delete(conn.socket.as_fd());
            if let Some(entry) = entry {
                conn.permit = Some(entry.permit);
            }
        }
    }

    /// A kept connection with a request waiting (or its peer's close), to
    /// serve; never waits. News of connections being served is acted on
    /// here (see the module doc).
    pub fn take(&self) -> Option<Accepted> {
        loop {
            let mut events = [EpollEvent::empty(); 1];
            let ready = self.epoll.wait(&mut events, EpollTimeout::ZERO).ok()?;
            if ready == 0 {
                return None;
            }
            let token = events[0].data();
            // (Data, not the peer's close: it speaks.)
            let speaks = !events[0].events().contains(EpollFlags::EPOLLRDHUP);
            let mut conns = self.lock();
            let Some(entry) = conns.entries.get_mut(&token) else {
                continue;
            };
            match &mut entry.state {
                State::Parked { idle_key, buf } => {
                    let (key, buf) = (*idle_key, std::mem::take(buf));
                    entry.state = State::Serving {
                        spoke: false,
                        running: None,
                    };
                    let conn = Accepted {
                        socket: entry.socket.clone(),
                        unix: entry.unix,
                        buf,
                        permit: None,
                        token: Some(token),
                        in_flight: None,
                    };
                    drop(conns);
                    self.idle.leave(key);
                    return Some(conn);
                }
                State::Serving {
                    running: None,
                    spoke,
                } => *spoke |= unread(&entry.socket),
                State::Serving {
                    running: Some(in_flight),
                    spoke,
                } => {
                    if !unread(&entry.socket) {
                        continue; // (the edge of bytes the thread read)
                    }
                    if in_flight.exchange.ended() {
                        // Its END_REQUEST is out: the web server reuses the
                        // connection at once (nginx does), before the thread
                        // parks it. Not multiplexing: the thread serves it
                        // when it parks it (see `ran`).
                        *spoke = true;
                        continue;
                    }
                    drop(conns);
                    if speaks && !self.multiplexing.swap(true, Ordering::Relaxed) {
                        log_info!(
                            "a web server sends requests on a kept connection while one runs \
                             (multiplexing or pipelining): its kept connections are read by the \
                             I/O thread from now on"
                        );
                    }
                    self.peer_spoke(token);
                }
            }
        }
    }

    /// The peer of a connection whose request runs sent something (an
    /// ABORT_REQUEST, another request, its close): the I/O thread reads on.
    fn peer_spoke(&self, token: u64) {
        let mut conns = self.lock();
        let running = match conns.entries.get_mut(&token) {
            Some(Entry {
                state: State::Serving { running, spoke },
                ..
            }) => match running {
                // (Over: the next request; see `take`.)
                Some(in_flight) if in_flight.exchange.ended() => {
                    *spoke = true;
                    return;
                }
                Some(_) => running.take(),
                None => return,
            },
            _ => return,
        };
        let entry = conns.take_for_hand_off(token);
        drop(conns);
        if let (Some(entry), Some(in_flight)) = (entry, running) {
            in_flight.link.writer.when_peer_speaks(None);
            let conn = Accepted::new_shared(entry.socket.clone(), entry.unix);
            self.hand_off(&conn, Some(entry), Some(in_flight));
        }
    }

    /// Give a kept connection to the I/O thread, with its slot and the
    /// request running on it, if any.
    fn hand_off(&self, conn: &Accepted, entry: Option<Entry>, in_flight: Option<InFlight>) {
        self.hand_off_with(conn, entry, in_flight, BytesMut::new());
    }

    /// [`Kept::hand_off`] with bytes already read from the connection.
    fn hand_off_with(
        &self,
        conn: &Accepted,
        entry: Option<Entry>,
        in_flight: Option<InFlight>,
        buf: BytesMut,
    ) {
        let _ = self.epoll.delete(conn.socket.as_fd());
        let counted = entry.is_some();
        let permit = entry.map(|e| e.permit);
        let _ = self.handoff.send(Accepted {
            socket: conn.socket.clone(),
            unix: conn.unix,
            buf,
            permit,
            token: None,
            in_flight,
        });
        if counted {
            self.lock().handing -= 1;
        }
    }

    /// `--max-conns` reached: close a parked connection (unless a thread
    /// took it meanwhile).
    fn evict(&self, token: u64) {
        let mut conns = self.lock();
        if !matches!(
            conns.entries.get(&token).map(|e| &e.state),
            Some(State::Parked { .. })
        ) {
            return;
        }
        let entry = conns.entries.remove(&token);
        drop(conns);
        if let Some(entry) = entry {
            let _ = self.epoll.delete(entry.socket.as_fd());
            log_info!("closed an idle connection: --max-conns reached and a new one arrived");
        }
    }

    /// Kept connections of this worker (parked, being served, or on their
    /// way to the I/O thread).
    pub fn len(&self) -> usize {
        let conns = self.lock();
        conns.entries.len() + conns.handing
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The worker stops: nothing is parked from now on; the parked
    /// connections go to the I/O thread (it serves a request already on
    /// its way, and closes each once idle). Those being served follow
    /// when their request ends.
    pub fn stop(&self) {
        let mut conns = self.lock();
        conns.stopped = true;
        let parked: Vec<u64> = conns
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Parked { .. }))
            .map(|(token, _)| *token)
            .collect();
        let entries: Vec<Entry> = parked
            .iter()
            .filter_map(|token| conns.take_for_hand_off(*token))
            .collect();
        drop(conns);
        for mut entry in entries {
            let mut buf = BytesMut::new();
            if let State::Parked {
                idle_key,
                buf: kept,
            } = &mut entry.state
            {
                self.idle.leave(*idle_key);
                buf = std::mem::take(kept);
            }
            // What the web server already sent (a request on its way) goes
            // along: the I/O thread serves it, and closes an idle one at
            // once (the web server drops a closed idle connection from its
            // pool without an error; one it may reuse any moment must not
            // linger).
            let conn = Accepted::new_shared(entry.socket.clone(), entry.unix);
            read_waiting(&conn.socket, &mut buf);
            self.hand_off_with(&conn, Some(entry), None, buf);
        }
    }
}

/// Read what the socket holds right now, without waiting.
fn read_waiting(socket: &OwnedFd, buf: &mut BytesMut) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            &mut chunk,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether the peer has sent something not read yet (an edge-triggered
/// event can also stand for bytes a serving thread already read).
fn unread(socket: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    nix::sys::socket::recv(
        std::os::fd::AsRawFd::as_raw_fd(socket),
        &mut byte,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_PEEK,
    )
    .is_ok()
}
