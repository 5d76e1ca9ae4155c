//! The FastCGI 1.0 wire format, sans I/O: records ([`record`]), name-value
//! pairs ([`params`]) and the byte-stream decoder ([`codec`]).

pub mod codec;
pub mod connection;
pub mod params;
pub mod record;
