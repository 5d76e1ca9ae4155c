//! Warm mode (`--warm`, `WSGI_WARM=1`, `warm = true`): the CGI process
//! does not start Python. It relays the request over FastCGI to a resident
//! `wsgi-fcgi` of the same app, which the first request starts and which
//! exits by itself after `warm-idle` seconds without a request.
//!
//! Per request: find the private directory ([`private_dir`]), derive the
//! responder's key from what defines the app ([`Place::key`]), connect to
//! its unix socket and check that the peer runs as our user, relay
//! ([`relay`]). No responder (or a dead one, or one older than the app's
//! code): under a lock in the directory, exactly one CGI process starts a
//! new one detached and waits for it, holding no Python; the others wait
//! for the lock, then connect. Whatever fails before the response begins
//! is served cold by the caller, with the reason logged once
//! ([`Relayed::Cold`]); a relay broken after the response began ends the
//! response truncated (exit status 7).
//!
//! New code: when the app file or `restart.txt` in the app's directory
//! (Passenger's convention) changed after the responder started (mtime or
//! ctime: FTP clients may keep an upload's old mtime), the next request
//! stops it (TERM: it finishes what it is serving) and starts a new one.
//!
//! Files: this one, the request; `responder.rs`, where the responder lives
//! and how it starts; `relay.rs`, the FastCGI exchange.

mod relay;
mod responder;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;

use crate::cgi::config::Settings;
use crate::core::exit::Exit;
use crate::core::response::ResponseWriter;
use crate::{log_error, log_info};

use relay::{Broke, relay};
use responder::Place;

/// What the relay did.
pub enum Relayed {
    /// The responder answered (or its answer broke after it began: then
    /// the exit status says so).
    Done(Exit),
    /// Serve the request cold: why (logged by the caller), and the start
    /// of the request body that was read from stdin already (the rest is
    /// still there), which the cold path must read first.
    Cold {
        /// Why warm mode could not serve.
        why: String,
        /// The body read so far (`None`: stdin untouched).
        prefix: Option<Box<dyn Read + Send>>,
        /// The measured length of a chunked body read whole (it then has
        /// no CONTENT_LENGTH of its own).
        measured: Option<u64>,
    },
}

/// The launcher's warm path (bin/wsgi-cgi.rs): this request, from the
/// process environment and stdin, through the app's resident responder;
/// the response on stdout. No Python in this process.
pub fn handle(settings: &Settings) -> Relayed {
    let mut meta: crate::core::meta::MetaVariables = std::env::vars_os()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    let mut sink = match crate::cgi::CgiSink::share_stdout() {
        Ok(sink) => sink,
        Err(e) => {
            log_error!("cannot set up stdout for the response: {e}");
            return Relayed::Done(Exit::ClientGone);
        }
    };
    let refuse = |sink: crate::cgi::CgiSink, status: u16, message: String, exit: Exit| {
        log_error!("rejecting request: {message}");
        let _ = ResponseWriter::new(Box::new(sink), false).fail(status);
        Relayed::Done(exit)
    };
    let chunked = crate::core::request::is_chunked(&meta)
        && meta.get(b"CONTENT_LENGTH").is_none_or(<[u8]>::is_empty);
    let body = match crate::cgi::body::receive(&mut meta, settings.max_body_size) {
        Ok(body) => body,
        Err(refusal) => return refuse(sink, refusal.status, refusal.message, Exit::BadRequest),
    };
    let length = match crate::core::environ::build(&meta) {
        Ok(environ) => environ.content_length.unwrap_or(0),
        Err(err) => return refuse(sink, 400, err.to_string(), Exit::BadRequest),
    };
    let measured = chunked.then_some(length);
    match serve(settings, &meta, body, length, sink.file()) {
        Relayed::Cold { why, prefix, .. } => Relayed::Cold {
            why,
            prefix,
            measured,
        },
        done => done,
    }
}

/// Serve the request through the app's resident responder. `meta` are the
/// request's meta-variables, `body` a body read already (chunked) or
/// `None` for stdin, `length` the body's length, `out` the response channel.
pub fn serve(
    settings: &Settings,
    meta: &crate::core::meta::MetaVariables,
    body: Option<Box<dyn Read + Send>>,
    length: u64,
    out: &mut File,
) -> Relayed {
    let cold = |why: String, prefix| Relayed::Cold {
        why,
        prefix,
        measured: None,
    };
    let mut place = match Place::new(settings) {
        Ok(place) => place,
        Err(why) => return cold(why, body),
    };
    let (conn, fresh) = match place.responder() {
        Ok(found) => found,
        Err(why) => return cold(why, body),
    };
    let from_stdin = body.is_none();
    let mut source = body.unwrap_or_else(|| Box::new(io::stdin()));
    let idempotent = matches!(
        meta.get(b"REQUEST_METHOD"),
        Some(b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE")
    );
    let relayed = relay(conn, meta, &mut *source, length, out);
    if fresh {
        place.outcome(!matches!(relayed, Err(Broke::BeforeResponse { .. })));
    }
    match relayed {
        Ok(()) => Relayed::Done(Exit::Success),
        Err(Broke::Output(e)) => {
            log_info!("warm mode: the client went away: {e}");
            Relayed::Done(Exit::ClientGone)
        }
        Err(Broke::AfterResponse(why)) => {
            log_error!("warm mode: the responder's answer broke off: {why}; response truncated");
            Relayed::Done(Exit::ClientGone)
        }
        Err(Broke::BeforeResponse { why, kept, sent }) => {
            if sent && !idempotent {
                // The app may have run: a second run (cold) could do twice
                // what a POST does. nginx does not retry those either.
                log_error!(
                    "warm mode: the responder failed after the whole request was sent, \
                     before answering ({why}); not repeating a non-idempotent request"
                );
                let _ = out.write_all(
                    b"Status: 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\nBad Gateway\n",
                );
                return Relayed::Done(Exit::AppError);
            }
            // What was read, then (a chunked body read whole) the rest of it.
            let prefix = match from_stdin {
                true => kept.then(Box::new(io::empty())),
                false => kept.then(source),
            };
            let why = match fresh {
                true => format!(
                    "the responder started for this request did not answer it ({why}); see {}",
                    place.log().display()
                ),
                false => format!("the relay failed before the response: {why}"),
            };
            cold(why, Some(prefix))
        }
    }
}
