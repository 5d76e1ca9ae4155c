//! The FastCGI 1.0 wire format, sans I/O: records ([`record`]), name-value
//! pairs ([`params`]) and the byte-stream decoder ([`codec`]). Bytes in,
//! records out: no sockets, no threads, fuzzed (`tests/fuzz`).

pub mod codec;
pub mod params;
pub mod record;
