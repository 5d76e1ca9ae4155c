//! `wsgi-fcgi`: the resident FastCGI responder, and `wsgi-fcgi request`,
//! its health probe. argv → [`wsgi_gateway::fcgi::cli`] → serve or request
//! → exit status. (`wsgi-fcgi __cgi ARGV...` is `wsgi-cgi`'s cold path,
//! which needs libpython: `wsgi-cgi` itself does not link it.)

use std::process::ExitCode;

use wsgi_gateway::fcgi::cli::{self, Invocation};
use wsgi_gateway::fcgi::{client, start};

/// mimalloc instead of glibc malloc: buffers allocated on the I/O thread are
/// freed on the app threads and back; under glibc the two contend on malloc's
/// locks (most of the futex calls per request, tests/bench/fcgi.sh), mimalloc
/// frees them without locking. Python's own allocator is not affected.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    // `wsgi-cgi`'s cold path: one CGI request, Python in this process.
    if args
        .get(1)
        .is_some_and(|a| a == wsgi_gateway::cgi::cli::COLD_COMMAND)
    {
        return match wsgi_gateway::cgi::cli::settings(args[2..].to_vec()) {
            Ok(settings) => ExitCode::from(wsgi_gateway::cgi::run(&settings) as u8),
            Err(code) => ExitCode::from(code),
        };
    }
    let result = cli::invocation(args).and_then(|invocation| match invocation {
        Invocation::Request(args) => client::request(args),
        Invocation::Serve(plan) => start::serve(*plan),
        Invocation::Pools(pools, args) => start::serve_pools(pools, args),
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("wsgi-fcgi: {err:#}");
            ExitCode::from(1)
        }
    }
}
