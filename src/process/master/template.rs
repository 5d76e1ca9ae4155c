//! `--preload` (`preload = true` in a pool): the pool's **template**, a
//! child of the master that imports the pool's app once (as the pool's
//! user, in its venv) and forks the pool's workers from it on the master's
//! request, so that a worker — an ondemand spawn above all — costs a fork,
//! not an import. The master itself runs no Python (its pools may have
//! different users and venvs; an app's import or crash never touches it),
//! and a reload is a new template importing the new code — no re-exec of
//! the master, whose old image would serve the old code (gunicorn#2449).
//!
//! ```text
//!  master ──"S" + a pipe's write end (SCM_RIGHTS)──▶ template
//!  template: fork ─▶ A: fork ─▶ W (the worker)
//!                    A ──"P" + W's pid──▶ master;  A exits
//!  W is re-parented to the master (PR_SET_CHILD_SUBREAPER), which reaps,
//!  signals and recycles it like any worker; W's messages go on its pipe.
//! ```
//!
//! The link is a `SOCK_SEQPACKET` pair (one message per send). The
//! template says "R" once its app is imported; it exits when the master
//! goes (the link closes, or its parent-death signal).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recv,
    recvmsg, send, sendmsg, socketpair,
};
use nix::unistd::{ForkResult, Pid, fork, getppid};

use nix::sys::signal::kill;

use super::pool::{Pool, Worker};
use crate::core::exit::Exit;
use crate::process::ToMaster;
use crate::process::scoreboard::Board;
use crate::{log_error, log_info, log_warn};

/// The interpreter's fork protocol (CPython's `PyOS_BeforeFork` /
/// `AfterFork_*`), which brackets each fork of a template.
pub trait ForkHooks {
    /// In the template, right before `fork()`.
    fn before_fork(&self);
    /// In the template, right after.
    fn after_fork_parent(&self);
    /// In the new worker, right after.
    fn after_fork_child(&self);
}

/// A template's name in `ps` (its command line is the master's): its
/// workers take back the name the process had.
const NAME: &std::ffi::CStr = c"wsgi-fcgi-tmpl";

/// What a pool's template process runs (it imports the app, says
/// [`Link::ready`], then [`Link::serve`]s); returns its exit status.
pub type TemplateMain<'a> = Box<dyn Fn(Link) -> i32 + 'a>;

/// The template's end of its link to the master.
pub struct Link {
    ctl: OwnedFd,
    master: Pid,
    board: Option<&'static Board>,
    /// The process's name before it became the template.
    name: Option<std::ffi::CString>,
}

/// The master's view of a pool's template.
pub(super) struct Template {
    pub(super) pid: Pid,
    ctl: OwnedFd,
    /// The pool generation whose code it imported.
    pub(super) generation: u64,
    /// It said "R": its app is imported.
    pub(super) ready: bool,
    pub(super) started: Instant,
}

/// Fork a pool's template: the child runs `main` and exits; `close`:
/// the descriptors it must not keep (other pools', the workers' pipes).
pub(super) fn start(
    main: &TemplateMain<'_>,
    generation: u64,
    board: Option<&'static Board>,
    close: &[RawFd],
) -> std::io::Result<Template> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let master = nix::unistd::getpid();
    // SAFETY: the master is single-threaded (no runtime, no Python).
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(ours);
            for &fd in close {
                let _ = nix::unistd::close(fd);
            }
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
            if getppid() != master {
                std::process::exit(Exit::Success.code());
            }
            let _ = SigSet::empty().thread_set_mask();
            let name = nix::sys::prctl::get_name().ok();
            let _ = nix::sys::prctl::set_name(NAME);
            if let Some(board) = board {
                // (Inherited by the workers forked from here.)
                crate::process::scoreboard::install(board);
            }
            let code = main(Link {
                ctl: theirs,
                master,
                board,
                name,
            });
            std::process::exit(code);
        }
        ForkResult::Parent { child } => Ok(Template {
            pid: child,
            ctl: ours,
            generation,
            ready: false,
            started: Instant::now(),
        }),
    }
}

impl Template {
    /// The descriptor the master polls while the template boots.
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ctl.as_fd()
    }

    /// The link is readable: "R" (ready) marks it so; `false`: it closed
    /// (the template is exiting; reaping tells why).
    pub(super) fn on_readable(&mut self) -> bool {
        let mut byte = [0u8; 8];
        match recv(self.ctl.as_raw_fd(), &mut byte, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => false,
            Ok(_) => {
                if byte[0] == b'R' {
                    self.ready = true;
                }
                true
            }
            Err(Errno::EAGAIN | Errno::EINTR) => true,
            Err(_) => false,
        }
    }

    /// Have the template fork a worker whose messages come on a new pipe:
    /// its pid and the pipe's read end. A template that does not answer
    /// within `wait` is reported as an error (the caller kills it).
    pub(super) fn fork_worker(&self, wait: Duration) -> std::io::Result<(Pid, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let fds = [write.as_raw_fd()];
        sendmsg::<()>(
            self.ctl.as_raw_fd(),
            &[IoSlice::new(b"S")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        drop(write);
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the template did not answer",
                ));
            }
            let mut fds = [PollFd::new(self.ctl.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                .unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let mut reply = [0u8; 8];
            let n = match recv(self.ctl.as_raw_fd(), &mut reply, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            match (n, reply[0]) {
                (0, _) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the template exited",
                    ));
                }
                (5, b'P') => {
                    let pid = i32::from_le_bytes([reply[1], reply[2], reply[3], reply[4]]);
                    return Ok((Pid::from_raw(pid), read));
                }
                (5, b'E') => {
                    let errno = i32::from_le_bytes([reply[1], reply[2], reply[3], reply[4]]);
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
                _ => continue,
            }
        }
    }
}

impl Link {
    /// The app is imported: the master may ask for workers.
    pub fn ready(&self) -> std::io::Result<()> {
        send(self.ctl.as_raw_fd(), b"R", MsgFlags::MSG_NOSIGNAL)?;
        Ok(())
    }

    /// Fork a worker running `worker` for each request of the master,
    /// until the master goes; returns the template's exit status. `hooks`
    /// bracket each fork (the interpreter's fork protocol).
    pub fn serve(&self, hooks: &dyn ForkHooks, worker: &dyn Fn(ToMaster) -> i32) -> i32 {
        loop {
            let mut buf = [0u8; 8];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (n, pipe) = match recvmsg::<()>(
                self.ctl.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let pipe = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                            _ => None,
                        })
                    });
                    (msg.bytes, pipe)
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return Exit::Success.code(),
            };
            if n == 0 {
                // The master is gone.
                return Exit::Success.code();
            }
            if let Some(fd) = pipe {
                // SAFETY: received just now (SCM_RIGHTS): ours alone.
                let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
                self.fork_worker(pipe, hooks, worker);
            }
        }
    }

    /// One worker: fork A, which forks the worker W, tells the master W's
    /// pid and exits, so that W is re-parented to the master.
    fn fork_worker(&self, pipe: OwnedFd, hooks: &dyn ForkHooks, worker: &dyn Fn(ToMaster) -> i32) {
        hooks.before_fork();
        // SAFETY: the template is single-threaded (an interpreter whose
        // fork protocol `hooks` follows; no runtime).
        let forked = unsafe { fork() };
        match forked {
            Ok(ForkResult::Child) => {
                // A: no Python here (its state is the template's, mid-fork).
                // SAFETY: as above: A is single-threaded.
                match unsafe { fork() } {
                    Ok(ForkResult::Child) => {
                        // W's own name first: re-parented (A exits at once),
                        // it is never a child of the master named like a
                        // template.
                        if let Some(name) = &self.name {
                            let _ = nix::sys::prctl::set_name(name);
                        }
                        hooks.after_fork_child();
                        self.become_worker(pipe, worker)
                    }
                    Ok(ForkResult::Parent { child }) => self.reply(b'P', child.as_raw()),
                    Err(e) => self.reply(b'E', e as i32),
                }
                // SAFETY: _exit: no atexit handlers, no destructors (the
                // interpreter's state belongs to the template).
                unsafe { nix::libc::_exit(0) };
            }
            Ok(ForkResult::Parent { child }) => {
                hooks.after_fork_parent();
                drop(pipe);
                let _ = nix::sys::wait::waitpid(child, None);
            }
            Err(e) => {
                hooks.after_fork_parent();
                self.reply(b'E', e as i32);
            }
        }
    }

    fn reply(&self, kind: u8, value: i32) {
        let v = value.to_le_bytes();
        let _ = send(
            self.ctl.as_raw_fd(),
            &[kind, v[0], v[1], v[2], v[3]],
            MsgFlags::MSG_NOSIGNAL,
        );
    }

    /// In W: wait to be the master's child, then be a worker.
    fn become_worker(&self, pipe: OwnedFd, worker: &dyn Fn(ToMaster) -> i32) -> ! {
        let _ = nix::unistd::close(self.ctl.as_raw_fd());
        // A exits right after the fork: W belongs to the master then.
        let deadline = Instant::now() + Duration::from_secs(2);
        while getppid() != self.master {
            if Instant::now() > deadline || getppid() == Pid::from_raw(1) {
                std::process::exit(Exit::Setup.code());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        super::pool::become_worker(self.master, self.board, pipe, worker)
    }
}

// --- the master's side: a pool with a template ------------------------------

impl<'a> Pool<'a> {
    /// `preload = true`: its workers are forked from a template running
    /// `main`.
    pub(super) fn with_template(mut self, main: Option<TemplateMain<'a>>) -> Pool<'a> {
        self.template_main = main;
        self
    }

    /// Its templates (if any) exit; the workers forked from them go on.
    pub(super) fn stop_templates(&mut self) {
        for t in [self.template.take(), self.old_template.take()]
            .into_iter()
            .flatten()
        {
            let _ = kill(t.pid, Signal::SIGTERM);
        }
    }

    /// Whether `pid` is one of its templates.
    pub(super) fn has_template(&self, pid: Pid) -> bool {
        [&self.template, &self.old_template]
            .into_iter()
            .flatten()
            .any(|t| t.pid == pid)
    }

    /// Its template `pid` exited: before it was ready, the app does not
    /// import (as a worker failing to boot); later, a new one is started
    /// (the workers forked from it go on). `Some(status)`: the master is
    /// to stop with it.
    pub(super) fn template_exited(&mut self, pid: Pid, code: i32, how: &str) -> Option<i32> {
        if self.old_template.as_ref().is_some_and(|t| t.pid == pid) {
            self.old_template = None;
            return None;
        }
        let t = self.template.take().filter(|t| t.pid == pid)?;
        if t.ready {
            log_warn!("{}template {pid} died ({how}); starting another", self.tag);
            self.next_spawn = Instant::now() + Duration::from_millis(100);
            return None;
        }
        let failed = self.boot_failed(
            &Worker::booting(pid, t.generation, None),
            "template",
            code,
            how,
        );
        if self.template.is_none() && self.generation < t.generation {
            // The reload was cancelled: the template it replaced stays.
            self.template = self.old_template.take();
        }
        failed
    }

    /// Start the template of the current generation (the one it replaces
    /// forks workers until the new one is ready).
    pub(super) fn start_template(&mut self, others: &[RawFd]) -> std::io::Result<()> {
        let Some(main) = &self.template_main else {
            return Ok(());
        };
        let mut close: Vec<RawFd> = others.to_vec();
        close.extend(
            self.own_fds()
                .into_iter()
                .filter(|fd| !self.options.listeners.contains(fd)),
        );
        let started = start(main, self.generation, self.board, &close)?;
        log_info!(
            "{}template {} importing the app (generation {})",
            self.tag,
            started.pid,
            self.generation
        );
        if let Some(previous) = self.template.replace(started)
            && let Some(older) = self.old_template.replace(previous)
        {
            let _ = kill(older.pid, Signal::SIGTERM);
        }
        Ok(())
    }

    /// `preload = true`: a worker forked from the template, once it is
    /// ready (until then the pool waits; its link wakes the master).
    pub(super) fn spawn_from_template(&mut self) -> std::io::Result<()> {
        let Some(t) = self
            .template
            .as_ref()
            .filter(|t| t.ready && t.generation == self.generation)
        else {
            return Ok(());
        };
        match t.fork_worker(Duration::from_secs(5)) {
            Ok((pid, read)) => {
                self.add_worker(pid, read);
                Ok(())
            }
            Err(e) => {
                log_error!(
                    "{}template {} cannot fork a worker ({e}): starting another template",
                    self.tag,
                    t.pid
                );
                let _ = kill(t.pid, Signal::SIGKILL);
                self.template = None;
                self.next_spawn = Instant::now() + Duration::from_secs(1);
                Ok(())
            }
        }
    }

    /// The template's link is readable: "R", its app is imported.
    pub(super) fn on_template(&mut self) {
        if let Some(t) = &mut self.template
            && t.on_readable()
            && t.ready
        {
            log_info!(
                "{}template {} ready: app imported in {:.1} s; workers are forked from it",
                self.tag,
                t.pid,
                t.started.elapsed().as_secs_f64()
            );
        }
    }
}
