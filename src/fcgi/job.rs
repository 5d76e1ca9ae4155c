//! What a connection and the app side exchange: the [`Job`] a connection
//! hands to a [`Dispatch`] once a request's PARAMS are complete, and the
//! [`Out`] messages the request sends back — plus the connection [`Limits`].
//! The data flow is connection → `Job` → app threads → `Out` → connection.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::output::DirectWrite;
use super::record::Role;
use crate::request::MetaVariables;

/// Pages the connection answers itself, without the app (status, ping):
/// `(path, query)` → `(content type, body)`.
#[derive(Clone)]
pub struct PageHook(pub Arc<PageFn>);

/// `(path, query)` → `(content type, body)` of a page, if it is one.
pub type PageFn = dyn Fn(&[u8], &[u8]) -> Option<(&'static str, String)> + Send + Sync;

impl std::fmt::Debug for PageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageHook")
    }
}

/// Limits and advertised values of a connection.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest PARAMS stream accepted (bytes).
    pub max_params: usize,
    /// Largest request body (`CONTENT_LENGTH`) accepted; `None`: no limit.
    pub max_body: Option<u64>,
    /// `FCGI_MAX_CONNS` as advertised.
    pub max_conns: usize,
    /// `FCGI_MAX_REQS` as advertised.
    pub max_reqs: usize,
    /// Status and ping pages.
    pub pages: Option<PageHook>,
}

/// What a running request sends back to its connection.
#[derive(Debug)]
pub enum Out {
    /// Response bytes: the CGI header block (empty after the first), then body.
    Stdout {
        /// The CGI header block, or empty.
        head: Bytes,
        /// Body bytes.
        body: Bytes,
    },
    /// Bytes for the web server's error log.
    Stderr(Bytes),
    /// `len` bytes of a file from `offset`, sent with `sendfile(2)`.
    File {
        /// A descriptor of the file (a duplicate the connection owns).
        file: OwnedFd,
        /// Start offset.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// Already framed records (the rest of a direct write that came short).
    Raw(Bytes),
    /// The request is over and its END_REQUEST already went out (directly).
    Finalize(u32),
    /// The request overran `--request-timeout` (its output is now dropped):
    /// answer 504 if no header went out yet, else cut the response short;
    /// then END_REQUEST.
    Timeout,
    /// The request is over: its last output (if any), then END_REQUEST
    /// with this `appStatus` — one message, so one write for small responses.
    End {
        /// `appStatus`.
        status: u32,
        /// A last CGI header block, or empty.
        head: Bytes,
        /// A last body chunk, or empty.
        body: Bytes,
    },
}

/// A request ready to run, handed to the [`Dispatch`].
pub struct Job {
    /// The request id on its connection.
    pub request_id: u16,
    /// RESPONDER or AUTHORIZER.
    pub role: Role,
    /// The PARAMS.
    pub meta: MetaVariables,
    /// STDIN content as it arrives; closed at the end of the stream.
    pub stdin: mpsc::Receiver<Bytes>,
    /// Where the request's output goes.
    pub out: mpsc::Sender<Out>,
    /// Set when the web server aborted the request or went away.
    pub aborted: Arc<AtomicBool>,
    /// Set once any of the response (its header block) was sent.
    pub head_sent: Arc<AtomicBool>,
    /// Messages sent on `out` that the connection has not written yet: the
    /// app thread writes to `direct` itself only while this is zero (order).
    pub pending: Arc<AtomicUsize>,
    /// The socket, for the app thread's own writes (streamed chunks; see
    /// [`DirectWrite`]).
    pub direct: Option<Arc<DirectWrite>>,
    /// Whether the final response may also be written directly (only on
    /// kept-alive connections outside shutdown: otherwise the connection
    /// must see the end to close).
    pub direct_final: bool,
}

/// Runs jobs (the Python thread pool in the worker; a plain function in tests).
pub trait Dispatch: Send + Sync + 'static {
    /// Queue a job; `Err` gives it back when overloaded.
    fn dispatch(&self, job: Job) -> Result<(), Box<Job>>;
}
