//! The exit statuses of both binaries, one table. `wsgi-cgi` exits with
//! what happened to its one request (every status but `Setup`);
//! `wsgi-fcgi` with `Success`, `Setup` or `AppLoad` (a worker's status
//! tells its master the same). A FastCGI request's `appStatus` in
//! END_REQUEST is the status a CGI process would have exited with.

/// An exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The response was sent completely (whatever its HTTP status); the
    /// responder stopped normally.
    Success = 0,
    /// The responder could not start (an option, a socket, the interpreter).
    Setup = 1,
    /// Invalid command line (clap's usage error).
    Usage = 2,
    /// Configuration, virtualenv or interpreter start-up failed; 500 sent.
    Config = 3,
    /// The application failed to import (CGI: 500 sent).
    AppLoad = 4,
    /// The application failed before sending headers; 500 sent.
    AppError = 5,
    /// The application failed after headers were sent; response truncated.
    Truncated = 6,
    /// The web server or client closed the output early.
    ClientGone = 7,
    /// The request was malformed (invalid CONTENT_LENGTH; 400 sent) or its
    /// body is over `--max-body-size` (413 sent).
    BadRequest = 8,
}

impl Exit {
    /// As a process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }
}
