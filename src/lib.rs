//! wsgi-gateway: serve Python WSGI (PEP 3333) applications to classic web
//! servers, as a CGI adapter (`wsgi-cgi`, a process per request) and a
//! resident FastCGI responder (`wsgi-fcgi`, pre-forked workers under a
//! master). The folders are the layers:
//!
//! ```text
//! core/     request, environ, response, wire, log   both binaries; no pyo3, no tokio
//! python/   interpreter, site, startup, load,       both binaries; pyo3
//!           environ, app, input
//! cgi/      the CGI front end: settings (cli,        wsgi-cgi (and its cold
//!           config), body, warm (the relay), run     path, wsgi-fcgi __cgi)
//! fcgi/     proto/ (sans I/O), the request path,     wsgi-fcgi only; tokio on
//!           worker/ (app threads, I/O thread)        the I/O thread only
//! process/  master, signals, recycle, scoreboard,    wsgi-fcgi --workers; no pyo3,
//!           status, listenq, notify                  no tokio
//! ```
//!
//! One CGI request, file by file (`wsgi-cgi` itself links no libpython):
//!
//! ```text
//! bin/wsgi-cgi.rs → cgi/cli (argv) → cgi/config (settings)
//!   warm:  → cgi/body → cgi/warm (relay: fcgi/proto records over a unix
//!          socket to the app's resident wsgi-fcgi) → stdout
//!   cold:  exec bin/wsgi-fcgi.rs __cgi → cgi/cli → cgi (run) → core/request
//!          → core/environ → python/environ (the dict) → python/app
//!          (start_response) → core/response → core/wire → stdout
//! ```
//!
//! One FastCGI request on a fresh connection (nginx's plain `fastcgi_pass`):
//!
//! ```text
//! fcgi/worker/parking (accept) → fcgi/inline (records → job) → fcgi/worker/pool
//!   → core/environ → python/environ → python/app → core/response
//!   → fcgi/writer (STDOUT, END_REQUEST)
//! ```
//!
//! Kept-alive connections are parked between requests (`fcgi/kept`);
//! multiplexed, slow or pipelined ones go to the I/O thread
//! (`fcgi/worker/server` → `fcgi/connection`), which hands each request to
//! an app thread as a job (`fcgi/job`). With `--workers`, the master
//! (`process/master`, no Python) holds the listening sockets and starts the
//! workers: with `--preload` (the default) they are forked by a template
//! that imported the app (`process/master/template`), re-parented to it.
//!
//! Modules are `pub(crate)` unless the binaries, the integration tests or
//! the fuzz targets (`tests/fuzz`) use them, so that dead code shows.

pub mod cgi;
pub mod core;
pub mod fcgi;
pub mod process;
pub mod python;
