//! FastCGI 1.0: the wire format, sans I/O — records ([`record`]), name-value
//! pairs ([`params`]), the byte-stream decoder ([`codec`]) — then one
//! connection's state machine ([`connection`]) and how its records are
//! written to the socket ([`output`]), on a socket registered with tokio
//! for reading only ([`socket`]).

pub mod codec;
pub mod connection;
pub mod job;
pub mod output;
pub mod params;
pub mod record;
pub mod socket;
