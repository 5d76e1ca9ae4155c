//! The integration tests, one binary (pyo3 and the helpers linked once):
//! each module drives the real binaries, `wsgi-cgi` and `wsgi-fcgi`, from
//! outside — under the real web servers and front ends the tests start from
//! `conf/`, with real Flask, Django, Trac, pypiserver and Mercurial apps.
//! Helpers are in `support` (CGI runs; `support::fcgi`: a raw FastCGI
//! client and responder processes; `support::http`: web servers and an
//! HTTP client; `support::digest`). Run one module with a filter:
//! `cargo test --test integration webservers_fcgi::`.

#[macro_use]
mod support;

mod cgi;
mod fcgi_apps;
mod fcgi_clients;
mod fcgi_protocol;
mod fcgi_server;
mod frameworks;
mod frontends_fcgi;
mod hostile;
mod pm;
mod pools;
mod process;
mod scaleout;
mod suexec;
mod warm;
mod webservers;
mod webservers_fcgi;
