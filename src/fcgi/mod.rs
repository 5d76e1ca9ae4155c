//! FastCGI 1.0. The wire format, sans I/O: records ([`record`]), name-value
//! pairs ([`params`]), the byte-stream decoder ([`codec`]). Then the request
//! path: a connection's state machine on the I/O thread ([`connection`],
//! reading only, on a socket registered with tokio for reading only:
//! [`socket`]), request bodies received before the app starts ([`spool`]),
//! what the connection and the app threads share ([`job`]), a connection
//! served whole by the app thread that accepted it ([`inline`]) and parked
//! between requests when kept alive ([`kept`]), the one place
//! records are framed and written ([`writer`]), and the idle connections
//! that give way at `--max-conns` ([`idle`]).

pub mod codec;
pub mod connection;
pub mod idle;
pub mod inline;
pub mod job;
pub mod kept;
pub mod params;
pub mod record;
pub mod socket;
pub mod spool;
pub mod writer;
