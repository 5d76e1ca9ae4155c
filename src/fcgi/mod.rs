//! The FastCGI responder. The wire format, sans I/O ([`proto`]). Then the
//! request path: a connection's state machine on the I/O thread ([`connection`],
//! reading only, on a socket registered with tokio for reading only:
//! [`socket`]), request bodies received before the app starts ([`spool`]),
//! what the connection and the app threads share ([`job`]), a connection
//! served whole by the app thread that accepted it ([`inline`]) and parked
//! between requests when kept alive ([`kept`]), the one place
//! records are framed and written ([`writer`]), and the idle connections
//! that give way at `--max-conns` ([`idle`]). Around it, the worker process
//! ([`worker`]: its app threads, I/O thread, listening sockets, watchdog and
//! access log), and `wsgi-fcgi request`, a FastCGI client ([`client`]).

pub mod cli;
pub mod client;
pub mod connection;
pub mod idle;
pub(crate) mod inline;
pub mod job;
pub(crate) mod kept;
pub mod pools;
pub mod proto;
pub(crate) mod socket;
pub(crate) mod spool;
pub mod start;
pub(crate) mod worker;
pub(crate) mod writer;
