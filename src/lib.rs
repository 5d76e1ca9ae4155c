//! wsgi-gateway: serve Python WSGI (PEP 3333) applications to classic web
//! servers. The data flow of the CGI adapter reads off the module names:
//!
//! ```text
//! bin/wsgi-cgi.rs → config → cgi → request → environ → app → response → wire → stdout
//! ```
//!
//! Layering: plain data (`config`, `request`, `environ`, `response`, `wire`)
//! knows nothing of Python; the Python layer (`python`, `site`, `app`, `input`) is the
//! only place pyo3 appears; `cgi` is the front end that ties them together.
//! The FastCGI responder reuses everything below `cgi` unchanged.

pub mod accesslog;
pub mod app;
pub mod appspec;
pub mod cgi;
pub mod client;
pub mod config;
pub mod environ;
pub mod fcgi;
pub mod input;
pub mod listener;
pub mod log;
pub mod parking;
pub mod pool;
pub mod process;
pub mod python;
pub mod request;
pub mod response;
pub mod server;
pub mod site;
pub mod watchdog;
pub mod wire;
pub mod worker;
