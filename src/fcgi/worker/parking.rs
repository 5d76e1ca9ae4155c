//! Where an idle app thread waits: for a job from the I/O thread (its
//! mailbox, an eventfd), a new connection on the listening sockets, which
//! it then accepts and serves itself ([`crate::fcgi::inline`]) — no
//! cross-thread wake-up for a connection per request, as in uWSGI and
//! PHP-FPM — *or* the next request on a kept-alive connection parked in
//! the worker's shared epoll ([`crate::fcgi::kept`]).
//!
//! The shared epoll is watched by one idle thread at a time, the watcher
//! (an epoll inside epolls cannot be `EPOLLEXCLUSIVE`: watched by every
//! idle thread, each kept request would wake them all). The pool moves the
//! watch to another idle thread when the watcher gets busy (see
//! [`Parked::watch`]); with one thread it never moves.
//!
//! Every idle thread of every worker waits in its own epoll on the shared
//! listening sockets with `EPOLLEXCLUSIVE`, so a new connection wakes one
//! of them, not all. A thread that hands a kept-alive connection to its I/O
//! thread steps aside (see [`Waiter::handed_off`]), so kept connections
//! spread over the workers even when a keepalive pool opens them in one
//! burst.
//! Once the worker stops, a stop eventfd makes every thread let go of the
//! listening sockets.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::fcgi::inline::Accepted;
use crate::fcgi::job::Job;
use crate::fcgi::kept::Kept;
use crate::fcgi::worker::linger::Lingering;
use crate::fcgi::worker::listening::{Listening, Take};
use crate::log_error;

/// An idle thread's mailbox: `dispatch` puts its next job here. (A queue,
/// so that no job is ever overwritten, whatever the races between a thread
/// that accepted a connection and a dispatch that picked it meanwhile.)
pub struct Parked {
    jobs: Mutex<std::collections::VecDeque<Job>>,
    wake: EventFd,
    /// The thread's epoll (mailbox, listening sockets, and the kept
    /// connections' epoll while it is the watcher).
    epoll: Epoll,
}

/// What woke an idle thread.
pub enum Woken {
    /// A job from the I/O thread.
    Job(Job),
    /// A connection this thread accepted.
    Connection(Accepted),
}

/// Tokens of the epoll registrations (listening socket `i` is `i`).
const MAILBOX: u64 = u64::MAX;
const STOP: u64 = u64::MAX - 1;
const KEPT: u64 = u64::MAX - 2;
/// How long a thread that handed a connection over leaves the next ones to
/// its peers, and how often an idle thread with peers looks for waiting ones.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
const TICK: std::time::Duration = std::time::Duration::from_millis(5);
/// How often a paused thread looks for connections nobody took: when every
/// worker is paused (nginx opens a new upstream connection every
/// `keepalive_requests`, 1000 by default, so under load each worker keeps
/// new ones all the time), a connection waits this long at most, not the
/// whole pause. Not while another worker has a thread waiting for
/// connections (the scoreboard's `waiting`): that one was woken for it.
const PAUSED_TICK: std::time::Duration = std::time::Duration::from_millis(2);
/// Connections a thread takes in a row straight from the kept connections'
/// epoll or the listening sockets' backlog before it waits on its own
/// epoll again (see [`Waiter::wait`]).
const DIRECT_TAKES: u8 = 3;

impl Parked {
    /// An empty mailbox.
    pub fn new() -> io::Result<Parked> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, MAILBOX))?;
        Ok(Parked {
            jobs: Mutex::new(std::collections::VecDeque::new()),
            wake,
            epoll,
        })
    }

    /// Become (`true`) or stop being the watcher of the kept connections'
    /// epoll. Called by the pool, for this thread or another, under its
    /// lock; a watcher that has connections waiting wakes at once.
    pub fn watch(&self, kept: &Kept, on: bool) {
        let result = if on {
            self.epoll
                .add(kept.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, KEPT))
        } else {
            self.epoll.delete(kept.as_fd())
        };
        if let Err(e) = result {
            log_error!("cannot (un)watch the kept connections: {e}");
        }
    }

    /// Give the thread its next job and wake it.
    pub fn give(&self, job: Job) {
        crate::core::lock(&self.jobs).push_back(job);
        let _ = self.wake.write(1);
    }

    /// The next job given to this thread, if any.
    pub fn take(&self) -> Option<Job> {
        crate::core::lock(&self.jobs).pop_front()
    }
}

/// One thread's waiting place.
pub struct Waiter {
    me: Arc<Parked>,
    listening: Option<Arc<Listening>>,
    /// Still registered on the listening sockets.
    accepting: bool,
    /// Off the listening sockets until then, after handing a connection
    /// over (see [`Waiter::handed_off`]).
    paused_until: Option<std::time::Instant>,
    /// When this thread last looked for waiting connections while paused.
    looked: std::time::Instant,
    /// Connections closed on our side, waiting for the peer's close:
    /// looked at whenever the thread wakes anyway.
    lingering: Lingering,
    /// The scoreboard and this worker's slot in it (workers under a
    /// master): where a paused thread sees whether another worker has a
    /// thread waiting for connections.
    board: Option<(&'static crate::process::scoreboard::Board, usize)>,
    /// The last connection this thread took was a kept one: the next may
    /// be waiting already.
    kept_hot: bool,
    /// The last connection this thread took was a new one it accepted: the
    /// next may be in the backlog already.
    accept_hot: bool,
    /// Connections taken straight from the kept connections' epoll or the
    /// backlog since the last full wait.
    direct: u8,
}

impl Waiter {
    /// A waiter for `me`, accepting on `listening` if given.
    pub fn new(me: Arc<Parked>, listening: Option<Arc<Listening>>) -> io::Result<Waiter> {
        let accepting = listening.is_some();
        if let Some(listening) = &listening {
            me.epoll
                .add(&listening.stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))?;
        }
        let waiter = Waiter {
            me,
            listening,
            accepting,
            lingering: Lingering::new()?,
            paused_until: None,
            looked: std::time::Instant::now(),
            board: crate::process::scoreboard::board().zip(crate::process::scoreboard::my_index()),
            kept_hot: false,
            accept_hot: false,
            direct: 0,
        };
        waiter.register()?;
        if let (true, Some((board, me))) = (waiter.accepting, waiter.board) {
            board.slots[me].accepting.store(1, Ordering::Relaxed);
        }
        Ok(waiter)
    }

    fn register(&self) -> io::Result<()> {
        if let (true, Some(listening)) = (self.accepting, &self.listening) {
            let exclusive = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
            for (index, (socket, _)) in listening.sockets.iter().enumerate() {
                self.me
                    .epoll
                    .add(socket, EpollEvent::new(exclusive, index as u64))?;
            }
        }
        Ok(())
    }

    fn unregister(&self) {
        if let Some(listening) = &self.listening {
            for (socket, _) in &listening.sockets {
                let _ = self.me.epoll.delete(socket);
            }
        }
    }

    /// This thread's mailbox.
    pub fn parked(&self) -> Arc<Parked> {
        self.me.clone()
    }

    /// The listening sockets this thread accepts on, if any.
    pub fn listening(&self) -> Option<&Arc<Listening>> {
        self.listening.as_ref()
    }

    /// A connection this thread accepted went to the I/O thread, where it
    /// stays (kept alive): let the other workers take the next ones. Alone,
    /// go to the back of the sockets' wait queues (the next thread of this
    /// worker first). With peers, step off the sockets for [`PAUSE`]: a
    /// burst of connections (a keepalive pool being opened) otherwise all
    /// wakes the one thread that was woken first, and it accepts them all;
    /// the peers' idle threads look for waiting connections every [`TICK`],
    /// and this one every [`PAUSED_TICK`] meanwhile.
    pub fn handed_off(&mut self) {
        if !self.accepting {
            return;
        }
        self.unregister();
        if let Some(listening) = self.listening.as_ref().filter(|l| l.peers) {
            // The more kept connections this worker holds (its I/O
            // thread's and parked ones: the --max-conns slots in use), the
            // longer it leaves the next ones to its peers (up to 5 pauses):
            // a peer that was slow to wake for the burst still gets its share.
            let in_use = listening.limits.max_conns.max(1) - listening.slots.available_permits();
            let held = in_use.clamp(1, 5) as u32;
            self.paused_until = Some(std::time::Instant::now() + PAUSE * held);
        } else if let Err(e) = self.register() {
            log_error!("cannot wait on the listening sockets again: {e}");
        }
    }

    /// This worker's scoreboard row, while this thread waits on the
    /// listening sockets and is not paused.
    fn waiting_slot(&self) -> Option<&'static crate::process::scoreboard::Slot> {
        let (board, me) = self.board?;
        (self.accepting && self.paused_until.is_none()).then(|| &board.slots[me])
    }

    /// Whether another worker has a thread waiting for connections.
    fn others_waiting(&self) -> bool {
        self.board
            .is_some_and(|(board, me)| board.others_waiting(me))
    }

    /// Back on the listening sockets once the pause is over.
    fn resume(&mut self) {
        let due = self
            .paused_until
            .is_some_and(|until| until <= std::time::Instant::now());
        if due {
            self.paused_until = None;
            if let Err(e) = self.register() {
                log_error!("cannot wait on the listening sockets again: {e}");
            }
        }
    }

    /// How long to sleep at most: until a lingering connection expires, the
    /// pause ends, or (with peers) the next look for waiting connections.
    fn timeout(&self) -> EpollTimeout {
        let now = std::time::Instant::now();
        let peers = self.listening.as_ref().is_some_and(|l| l.peers);
        let tick = (self.accepting && peers && self.paused_until.is_none()).then_some(TICK);
        let pause = self
            .paused_until
            .map(|t| t.saturating_duration_since(now).min(PAUSED_TICK));
        let linger = self
            .lingering
            .next_expiry()
            .map(|until| until.saturating_duration_since(now));
        match [tick, pause, linger].into_iter().flatten().min() {
            None => EpollTimeout::NONE,
            Some(left) => {
                EpollTimeout::from(u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX))
            }
        }
    }

    /// Wait (call without the GIL) for a job or a connection.
    pub fn wait(&mut self) -> Woken {
        let mut events = [EpollEvent::empty(); 8];
        loop {
            if let Some(job) = self.me.take() {
                return Woken::Job(job);
            }
            // Under keep-alive load the next kept connection is nearly
            // always ready: take it straight from the kept connections'
            // epoll — one epoll_wait instead of two (this thread's, which
            // reports that epoll readable, then that epoll's) — a few times
            // in a row; then wait on this thread's epoll again, which sees
            // the stop, new connections, the mailbox and the lingering ones.
            if self.kept_hot && self.direct < DIRECT_TAKES {
                self.direct += 1;
                if let Some(conn) = self.kept() {
                    return Woken::Connection(conn);
                }
                self.kept_hot = false;
            }
            // The same for a connection per request (nginx's plain
            // `fastcgi_pass`): under load the next one is in the backlog,
            // and accept4 finds it without the epoll_wait that would only
            // say so (not while paused: that leaves it to the peers).
            if self.accept_hot && self.direct < DIRECT_TAKES {
                self.direct += 1;
                if let Some(conn) = self.try_accept() {
                    return Woken::Connection(conn);
                }
                self.accept_hot = false;
            }
            self.direct = 0;
            let waiting = self.waiting_slot();
            if let Some(slot) = waiting {
                slot.waiting.fetch_add(1, Ordering::AcqRel);
            }
            let result = self.me.epoll.wait(&mut events, self.timeout());
            if let Some(slot) = waiting {
                slot.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            let ready = match result {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log_error!("waiting for work: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            if let Some(woken) = self.woken_by(&events[..ready]) {
                return woken;
            }
        }
    }

    /// What the events of one epoll_wait give this thread (`None`: wait
    /// again).
    fn woken_by(&mut self, events: &[EpollEvent]) -> Option<Woken> {
        // The stop first: no connection is accepted after it.
        if self.accepting && events.iter().any(|e| e.data() == STOP) {
            self.unregister();
            self.accepting = false;
        }
        self.resume();
        // A tick: a burst may be waiting that woke another thread only,
        // or a connection that no paused peer took (looked for while
        // paused even when busy with kept connections).
        let look = match self.paused_until {
            None => events.is_empty(),
            // (A waiting peer was woken for it already: a peer slow to
            // run, on a busy machine, still gets its share.)
            Some(_) => self.looked.elapsed() >= PAUSED_TICK && !self.others_waiting(),
        };
        let mut accepted = if look { self.look_for_waiting() } else { None };
        let mut kept = false;
        for event in events {
            match event.data() {
                MAILBOX => {
                    let _ = self.me.wake.read();
                }
                STOP => {}
                KEPT => kept = true,
                index if self.accepting && accepted.is_none() => {
                    accepted = self.accept(index as usize);
                }
                _ => {}
            }
        }
        self.lingering.reap();
        if let Some(job) = self.me.take() {
            if let Some(conn) = accepted {
                // Both at once: the job now, the connection to the I/O
                // thread (sent before it is counted off).
                self.hand_off(conn);
                if let Some(listening) = &self.listening {
                    listening.inflight.fetch_sub(1, Ordering::SeqCst);
                }
            }
            return Some(Woken::Job(job));
        }
        if let Some(conn) = accepted {
            self.accept_hot = true;
            return Some(Woken::Connection(conn));
        }
        // (A job first: the watch then moves on, and the next watcher
        // takes the kept connection.)
        let conn = kept.then(|| self.kept()).flatten()?;
        self.kept_hot = true;
        Some(Woken::Connection(conn))
    }

    /// A kept connection with a request (or a close) waiting (counted in
    /// `inflight` as an accepted one is).
    fn kept(&self) -> Option<Accepted> {
        let listening = self.listening.as_ref()?;
        let conn = listening.kept.take()?;
        listening.inflight.fetch_add(1, Ordering::SeqCst);
        Some(conn)
    }

    /// A half-closed connection whose peer has not closed yet: read from
    /// this thread's own epoll between jobs ([`Lingering`]): no hand-off.
    pub fn linger(&mut self, socket: OwnedFd) {
        self.lingering.add(socket);
    }

    /// Accept a connection if one is waiting, paused or not (never waits).
    fn look_for_waiting(&mut self) -> Option<Accepted> {
        self.looked = std::time::Instant::now();
        self.accept_any()
    }

    /// Accept a connection if one is waiting and this thread is not paused
    /// (never waits).
    pub fn try_accept(&self) -> Option<Accepted> {
        if self.paused_until.is_some() {
            return None;
        }
        self.accept_any()
    }

    /// A connection from any of the listening sockets, if one waits (the
    /// stop is checked by [`Waiter::accept`]).
    fn accept_any(&self) -> Option<Accepted> {
        let count = self.listening.as_ref()?.sockets.len();
        if !self.accepting {
            return None;
        }
        (0..count).find_map(|index| self.accept(index))
    }

    /// Give a connection to the I/O thread.
    pub fn hand_off(&self, conn: Accepted) {
        if let Some(listening) = &self.listening {
            let _ = listening.handoff.send(conn);
        }
    }

    /// Accept one connection on listening socket `index` (another thread
    /// may have taken it: then `None`).
    ///
    /// The connection counts in `inflight` from before `accept4` (the thread
    /// that serves it counts it off): a stopping worker, which sets
    /// `stopped` and then waits for `inflight` to reach zero, either sees it
    /// here or this thread sees `stopped` and does not accept — no
    /// connection is taken from the backlog and then dropped by the exit.
    fn accept(&self, index: usize) -> Option<Accepted> {
        let listening = self.listening.as_ref()?;
        listening.inflight.fetch_add(1, Ordering::SeqCst);
        let not_taken = || {
            listening.inflight.fetch_sub(1, Ordering::SeqCst);
            None
        };
        if listening.stopped.load(Ordering::SeqCst) {
            return not_taken();
        }
        match listening.take(index) {
            Take::Connection(conn) => Some(conn),
            Take::Refused | Take::Interrupted | Take::Empty => not_taken(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fcgi::job::Limits;
    use std::os::fd::AsRawFd;

    /// A unix listening socket in a fresh directory (`s.sock`), as an app
    /// thread with peers (other workers) sees it; the channel's receiver
    /// keeps hand-offs possible.
    fn listening() -> (
        tempfile::TempDir,
        std::os::unix::net::UnixListener,
        tokio::sync::mpsc::UnboundedReceiver<Accepted>,
        Arc<Listening>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s.sock")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (handoff, handoffs) = tokio::sync::mpsc::unbounded_channel();
        let listening = Arc::new(
            Listening::new(
                &[(listener.as_raw_fd(), true)],
                (None, None),
                Arc::new(Limits::default()),
                handoff,
                true,
            )
            .unwrap(),
        );
        (dir, listener, handoffs, listening)
    }

    /// Every worker paused (each kept a new connection a moment ago, as
    /// under nginx's keepalive_requests churn): a connection waiting on the
    /// socket is taken by a paused thread before its pause ends, not left
    /// in the backlog for the whole pause.
    #[test]
    fn a_paused_thread_takes_a_connection_nobody_else_takes() {
        let (dir, _listener, _handoffs, listening) = listening();
        let path = dir.path().join("s.sock");
        // Five slots held: the longest pause (5 × PAUSE).
        let _held = listening.slots.clone().try_acquire_many_owned(5).unwrap();
        let mut waiter = Waiter::new(Arc::new(Parked::new().unwrap()), Some(listening)).unwrap();
        waiter.handed_off();
        assert!(waiter.paused_until.is_some());
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        match waiter.wait() {
            Woken::Connection(_) => {}
            _ => panic!("woken without the connection"),
        }
        assert!(
            waiter.paused_until.is_some(),
            "the connection waited for the whole pause"
        );
    }

    /// Another worker has a thread waiting for connections (woken for
    /// this one, but slow to run on a busy machine): the paused thread
    /// leaves the connection to it for the whole pause, so a keepalive
    /// pool opened in one burst still spreads over the workers.
    #[test]
    fn a_paused_thread_leaves_a_connection_to_a_waiting_peer() {
        let (dir, _listener, _handoffs, listening) = listening();
        let path = dir.path().join("s.sock");
        let board = crate::process::scoreboard::create().unwrap();
        let (me_pid, peer_pid) = (u32::MAX - 7, u32::MAX - 8);
        let me = board.claim(me_pid).unwrap();
        let peer = board.claim(peer_pid).unwrap();
        let mut waiter = Waiter::new(Arc::new(Parked::new().unwrap()), Some(listening)).unwrap();
        waiter.board = Some((board, me));
        board.slots[peer].waiting.store(1, Ordering::Release);
        waiter.handed_off();
        let until = waiter.paused_until.unwrap();
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let taken = matches!(waiter.wait(), Woken::Connection(_));
        let after_pause = std::time::Instant::now() >= until;
        // And this thread's own waits are counted while it is not paused.
        let counted = board.slots[me].waiting.load(Ordering::Acquire);
        board.release(me_pid);
        board.release(peer_pid);
        assert!(taken, "woken without the connection");
        assert!(after_pause, "taken from a waiting peer during the pause");
        assert_eq!(counted, 0, "a wait that ended is still counted");
    }
}
