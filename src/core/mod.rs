//! The protocol-neutral core both binaries share, with no pyo3 and no
//! tokio: the request as a web server gives it ([`request`]: raw
//! meta-variables ([`meta`]) and a body reader), the PEP 3333 environ computed from it
//! ([`environ`]), the response rules ([`response`]: status and header
//! validation, the lazy header rule, `Content-Length`) and the CGI header
//! block they become on the wire ([`wire`]); the gateway's own log lines
//! ([`log`]); and both binaries' exit statuses ([`exit`]).

pub mod environ;
pub(crate) mod exit;
pub(crate) mod log;
pub mod meta;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod wire;

/// Lock `mutex`, poisoned or not: a poisoned lock only means a panic on
/// another thread (the release build aborts on panic anyway), and every
/// state kept behind these locks stays valid between statements.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
