//! `wsgi-cgi`: serve one request of a Python WSGI app as a CGI program.
//! argv/env → settings → in warm mode the relay to the app's resident
//! responder; otherwise, or when the relay cannot serve, the cold path:
//! this process becomes `wsgi-fcgi __cgi` (Python in-process). See
//! [`wsgi_gateway::cgi::cli::launch`]. This binary never loads libpython:
//! a warm request costs what a small C program's start costs.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(wsgi_gateway::cgi::cli::launch(
        std::env::args_os().collect(),
    ))
}
