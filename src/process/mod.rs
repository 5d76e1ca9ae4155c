//! Process management for `wsgi-fcgi --workers N`: a master that holds the
//! listening sockets and supervises pre-forked worker processes
//! ([`master`]), a worker's end of its message pipe to the master
//! ([`ToMaster`], one byte per [`Message`]: ready once its app is imported,
//! replace me once it has served `--max-requests` or a request overran
//! `--request-timeout`), and systemd's `Type=notify` protocol ([`notify`]).
//!
//! Layering: nothing here imports pyo3 or tokio. The master never runs
//! Python or a runtime; what a worker runs after the fork is handed in as a
//! function by the binary.

pub(crate) mod listenq;
pub(crate) mod master;
pub(crate) mod notify;
pub(crate) mod recycle;
pub(crate) mod scoreboard;
pub(crate) mod signals;
pub(crate) mod status;

use std::io;
use std::os::fd::OwnedFd;

/// What a worker tells the master, one byte each on its pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Message {
    /// It imported its app and is about to accept.
    Ready = b'R',
    /// A request of it overran `--request-timeout` (its thread is stuck):
    /// replace it. It goes on serving its other requests until TERM.
    TimedOut = b'T',
    /// It served its `--max-requests`: replace it. It goes on serving
    /// until TERM.
    Recycle = b'X',
}

impl Message {
    /// The message a byte from the pipe carries (`None`: not one).
    pub fn from_byte(byte: u8) -> Option<Message> {
        [Message::Ready, Message::TimedOut, Message::Recycle]
            .into_iter()
            .find(|m| *m as u8 == byte)
    }
}

/// The worker's end of its message pipe to the master.
#[derive(Debug)]
pub struct ToMaster(pub(crate) OwnedFd);

impl ToMaster {
    /// Send `message` (one byte: a pipe write is atomic).
    pub fn send(&self, message: Message) -> io::Result<()> {
        nix::unistd::write(&self.0, &[message as u8])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn each_message_is_its_own_byte() {
        for m in [Message::Ready, Message::TimedOut, Message::Recycle] {
            assert_eq!(Message::from_byte(m as u8), Some(m));
        }
        assert_eq!(Message::from_byte(b'?'), None);
    }
}
