//! The protocol-neutral core both binaries share, with no pyo3 and no
//! tokio: the request as a web server gives it ([`request`]: raw
//! meta-variables and a body reader), the PEP 3333 environ computed from it
//! ([`environ`]), the response rules ([`response`]: status and header
//! validation, the lazy header rule, `Content-Length`) and the CGI header
//! block they become on the wire ([`wire`]); and the gateway's own log
//! lines ([`log`]).

pub mod environ;
pub mod log;
pub mod request;
pub mod response;
pub mod wire;
