//! What each record does to the request it belongs to (specification §5):
//! BEGIN_REQUEST (a new request, or a refusal), PARAMS (the header), STDIN
//! (the body: received first, or streamed), ABORT_REQUEST, management
//! records (§4); and the answers the connection makes itself — refusals,
//! status pages, 413 — as opposed to the app's, which its threads write.

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::{Closed, Connection, Req};
use crate::core::request::MetaVariables;
use crate::core::response::error_head;
use crate::fcgi::job::{Body, Exchange, Job, Limits};
use crate::fcgi::proto::params;
use crate::fcgi::proto::record::{
    BeginRequest, NULL_REQUEST_ID, ProtocolStatus, Record, RecordType, Role,
};
use crate::fcgi::spool::Spool;
use crate::fcgi::writer::Frames;
use crate::{log_error, log_info};

/// STDIN records waiting for a streaming app: past this, the socket is not read.
const STDIN_QUEUE: usize = 4;
/// Ended requests whose STDIN has not ended yet, at most.
const MAX_ENDED: usize = 64;

impl Connection {
    /// A record: management (id 0) or one of a request's.
    pub(super) async fn on_record(&mut self, record: Record) -> Result<(), Closed> {
        let id = record.request_id;
        if id == NULL_REQUEST_ID {
            return self.on_management(record).await;
        }
        match RecordType::from_u8(record.kind) {
            Some(RecordType::BeginRequest) => self.on_begin(id, &record.content).await,
            Some(RecordType::AbortRequest) => self.on_abort(id).await,
            Some(RecordType::Params) => self.on_params(id, &record.content).await,
            Some(kind @ (RecordType::Stdin | RecordType::Data)) => {
                self.on_stdin(kind, id, record.content).await
            }
            _ => Err(Closed::Protocol(format!(
                "unexpected record type {} for request {id}",
                record.kind
            ))),
        }
    }

    /// BEGIN_REQUEST: a new request, or a refusal (role, `FCGI_MAX_REQS`).
    async fn on_begin(&mut self, id: u16, content: &[u8]) -> Result<(), Closed> {
        let Some(begin) = BeginRequest::parse(content) else {
            return Err(Closed::Protocol(format!(
                "BEGIN_REQUEST for request {id} is {} bytes, expected 8",
                content.len()
            )));
        };
        if !self.begun {
            self.begun = true;
            self.drain_until = None;
        }
        match self.requests.get(&id) {
            Some(r) if r.live() => {
                return Err(Closed::Protocol(format!(
                    "BEGIN_REQUEST for request {id}, which is already active"
                )));
            }
            Some(_) => {
                self.requests.remove(&id);
            }
            None => {}
        }
        if !matches!(begin.role, Role::Responder | Role::Authorizer) {
            return self.refuse(id, ProtocolStatus::UnknownRole).await;
        }
        let live = self.requests.values().filter(|r| r.live()).count();
        if live >= self.context.limits.max_reqs.max(1) {
            log_error!(
                "request {id}: {live} requests already on this connection (FCGI_MAX_REQS): FCGI_OVERLOADED"
            );
            return self.refuse(id, ProtocolStatus::Overloaded).await;
        }
        self.requests.insert(
            id,
            Req::Params {
                role: begin.role,
                keep_conn: begin.keep_conn,
                params: BytesMut::new(),
            },
        );
        Ok(())
    }

    /// END_REQUEST with `status` now (a refusal at BEGIN_REQUEST).
    async fn refuse(&mut self, id: u16, status: ProtocolStatus) -> Result<(), Closed> {
        let mut frames = Frames::default();
        frames.end_request(id, 0, status);
        self.answer_here(id, true, false, frames).await
    }

    /// Answer request `id` with `frames` of our own (END_REQUEST among them)
    /// and forget it — or, while its STDIN may still come (`stdin_ended`
    /// false), keep it `Ended` so that those records are ignored (§3.3).
    async fn answer_here(
        &mut self,
        id: u16,
        keep_conn: bool,
        stdin_ended: bool,
        frames: Frames,
    ) -> Result<(), Closed> {
        if stdin_ended {
            self.requests.remove(&id);
        } else {
            let ended = self.requests.values().filter(|r| !r.live()).count();
            if ended >= MAX_ENDED {
                return Err(Closed::Protocol(format!(
                    "more than {MAX_ENDED} ended requests with unfinished STDIN streams"
                )));
            }
            self.requests.insert(id, Req::Ended);
        }
        self.close_when_idle |= !keep_conn;
        self.send(frames).await
    }

    /// ABORT_REQUEST (§5.4): a request not yet running ends at once; a
    /// running one has its output stopped, and its END_REQUEST follows when
    /// the app returns.
    async fn on_abort(&mut self, id: u16) -> Result<(), Closed> {
        if let Some(Req::Running {
            exchange, stdin, ..
        }) = self.requests.get_mut(&id)
        {
            log_info!("web server aborted request {id}");
            exchange.abort();
            *stdin = None;
            if self.stdin_waiting.as_ref().is_some_and(|(w, _)| *w == id) {
                self.stdin_waiting = None;
            }
            return Ok(());
        }
        let keep_conn = match self.requests.get(&id) {
            Some(Req::Params { keep_conn, .. } | Req::Body { keep_conn, .. }) => *keep_conn,
            _ => return Ok(()), // already ended: nothing to do (§5.4)
        };
        log_info!("web server aborted request {id} before it ran");
        // Records of it still on the way are ignored (until its STDIN ends).
        let mut frames = Frames::default();
        frames.end_request(id, 0, ProtocolStatus::RequestComplete);
        self.answer_here(id, keep_conn, false, frames).await
    }

    /// PARAMS: collect up to the limit; the empty record completes the header.
    async fn on_params(&mut self, id: u16, content: &[u8]) -> Result<(), Closed> {
        if matches!(self.requests.get(&id), Some(Req::Ended)) {
            return Ok(()); // a refused request's records are ignored (§3.3)
        }
        let Some(Req::Params { params, .. }) = self.requests.get_mut(&id) else {
            return Err(Closed::Protocol(format!(
                "PARAMS for request {id}, which is not expecting params"
            )));
        };
        if content.is_empty() {
            return self.on_header(id).await;
        }
        if params.len() + content.len() > self.context.limits.max_params {
            return Err(Closed::Protocol(format!(
                "PARAMS of request {id} exceed the limit of {} bytes",
                self.context.limits.max_params
            )));
        }
        params.extend_from_slice(content);
        Ok(())
    }

    /// The request header is complete: a page of ours, a 413, or the body
    /// next (received first, or streamed to the app at once).
    async fn on_header(&mut self, id: u16) -> Result<(), Closed> {
        let Some(Req::Params {
            role,
            keep_conn,
            params,
        }) = self.requests.remove(&id)
        else {
            return Ok(());
        };
        let meta = params::decode(&params)
            .map_err(|e| Closed::Protocol(format!("PARAMS of request {id}: {e}")))?;
        if let Some(response) = own_answer(&self.context.limits, id, &meta) {
            let mut frames = Frames::default();
            frames.whole_response(id, &response);
            return self.answer_here(id, keep_conn, false, frames).await;
        }
        let limits = &self.context.limits;
        if role == Role::Authorizer {
            // An authorizer gets no body (Apache's mod_authnz_fcgi sends no
            // STDIN at all): it runs now, and any STDIN that follows is dropped.
            let nothing = Body::Memory(Default::default());
            return self
                .start(id, role, keep_conn, meta, nothing, None, false)
                .await;
        }
        if limits.stream_request_body {
            let (tx, rx) = mpsc::channel(STDIN_QUEUE);
            return self
                .start(id, role, keep_conn, meta, Body::stream(rx), Some(tx), false)
                .await;
        }
        let spool = Spool::new(limits.body_buffer_size, limits.body_temp_dir.clone());
        self.requests.insert(
            id,
            Req::Body {
                role,
                keep_conn,
                meta,
                spool,
            },
        );
        Ok(())
    }

    /// Hand a request to the app threads. `stdin`: where its STDIN goes
    /// while it runs (`--stream-request-body`); `stdin_ended`: all of it
    /// arrived (the body was received first).
    #[allow(clippy::too_many_arguments)]
    async fn start(
        &mut self,
        id: u16,
        role: Role,
        keep_conn: bool,
        meta: MetaVariables,
        body: Body,
        stdin: Option<mpsc::Sender<Bytes>>,
        stdin_ended: bool,
    ) -> Result<(), Closed> {
        let wake_on_end = !keep_conn || !stdin_ended || self.stopping;
        let exchange = Exchange::new(id, self.link.clone(), wake_on_end);
        let job = Job {
            role,
            meta,
            body,
            exchange: exchange.clone(),
        };
        self.requests.insert(
            id,
            Req::Running {
                exchange,
                keep_conn,
                stdin,
                stdin_ended,
            },
        );
        if self.context.dispatch.dispatch(job).is_err() {
            log_error!("request {id}: all app threads busy and the queue is full: FCGI_OVERLOADED");
            let mut frames = Frames::default();
            frames.end_request(id, 0, ProtocolStatus::Overloaded);
            return self.answer_here(id, keep_conn, stdin_ended, frames).await;
        }
        Ok(())
    }

    /// STDIN (and FILTER's DATA, unused by our roles).
    async fn on_stdin(&mut self, kind: RecordType, id: u16, content: Bytes) -> Result<(), Closed> {
        let fault = |m: String| Err(Closed::Protocol(m));
        let Some(request) = self.requests.get_mut(&id) else {
            if content.is_empty() {
                return Ok(()); // a repeated end-of-stream after END_REQUEST
            }
            return fault(format!("{kind:?} for request {id}, which was never begun"));
        };
        if kind == RecordType::Data {
            return Ok(());
        }
        match request {
            Req::Params { .. } => fault(format!("STDIN for request {id} before its PARAMS ended")),
            Req::Ended => {
                if content.is_empty() {
                    self.requests.remove(&id);
                }
                Ok(())
            }
            Req::Body { spool, .. } => {
                if content.is_empty() {
                    return self.body_complete(id).await;
                }
                let over = self
                    .context
                    .limits
                    .max_body
                    .is_some_and(|limit| spool.len + content.len() as u64 > limit);
                if over {
                    return self.refuse_body(id).await;
                }
                if let Err(e) = spool.push(content) {
                    log_error!("request {id}: cannot hold its body: {e}");
                    return Err(Closed::PeerGone);
                }
                Ok(())
            }
            Req::Running {
                stdin, stdin_ended, ..
            } => {
                if *stdin_ended {
                    if content.is_empty() {
                        return Ok(()); // a second end-of-stream (fastcgi-client sends one)
                    }
                    return fault(format!("STDIN for request {id} after its stream ended"));
                }
                if content.is_empty() {
                    *stdin = None; // the reader sees EOF
                    *stdin_ended = true;
                } else if stdin.is_some() {
                    self.stdin_waiting = Some((id, content));
                }
                Ok(())
            }
        }
    }

    /// The body is complete: the app may run.
    async fn body_complete(&mut self, id: u16) -> Result<(), Closed> {
        let Some(Req::Body {
            role,
            keep_conn,
            meta,
            spool,
        }) = self.requests.remove(&id)
        else {
            return Ok(());
        };
        match spool.finish() {
            Ok(body) => {
                self.start(id, role, keep_conn, meta, body, None, true)
                    .await
            }
            Err(e) => {
                log_error!("request {id}: cannot read back its body: {e}");
                Err(Closed::PeerGone)
            }
        }
    }

    /// A body that grew past `--max-body-size` (more than its CONTENT_LENGTH
    /// said, or none was given): 413, and the rest is ignored.
    async fn refuse_body(&mut self, id: u16) -> Result<(), Closed> {
        let keep_conn = matches!(
            self.requests.get(&id),
            Some(Req::Body {
                keep_conn: true,
                ..
            })
        );
        log_error!("request {id}: body exceeds --max-body-size: 413");
        let mut frames = Frames::default();
        frames.whole_response(id, &too_large());
        self.answer_here(id, keep_conn, false, frames).await
    }

    async fn on_management(&mut self, record: Record) -> Result<(), Closed> {
        let mut out = BytesMut::new();
        if record.kind == RecordType::GetValues as u8 {
            let asked = params::decode(&record.content)
                .map_err(|e| Closed::Protocol(format!("GET_VALUES: {e}")))?;
            let limits = &self.context.limits;
            let mut answer = BytesMut::new();
            for (name, _) in asked.iter() {
                let value = match name {
                    b"FCGI_MAX_CONNS" => limits.max_conns.to_string(),
                    b"FCGI_MAX_REQS" => limits.advertised_reqs.to_string(),
                    b"FCGI_MPXS_CONNS" => "1".to_string(),
                    _ => continue, // unknown names are omitted (§4.1)
                };
                params::encode_pair(&mut answer, name, value.as_bytes());
            }
            crate::fcgi::proto::record::encode_management(
                &mut out,
                RecordType::GetValuesResult,
                &answer,
            );
        } else {
            crate::fcgi::proto::record::encode_unknown_type(&mut out, record.kind);
        }
        let mut frames = Frames::default();
        frames.management(&out);
        self.send(frames).await
    }
}

/// A status or ping page, or a 413 for a body over `--max-body-size`: the
/// whole response, made without the app.
pub(in crate::fcgi) fn own_answer(
    limits: &Limits,
    id: u16,
    meta: &MetaVariables,
) -> Option<Vec<u8>> {
    // Every request's header passes here (inline or on the I/O thread):
    // `accepted conn` counts requests, as PHP-FPM's does.
    if let Some(board) = crate::process::scoreboard::board() {
        board
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    // (A name given twice: its last value, as the environ has it.)
    let get = |key: &[u8]| meta.get(key).unwrap_or_default();
    if let Some(pages) = &limits.page_hook {
        // The whole path only (SCRIPT_NAME + PATH_INFO): under a mount such
        // as nginx's `location /app/`, /app/status is the app's, and the
        // page is reached only where the operator routes its exact path.
        let full = [get(b"SCRIPT_NAME"), get(b"PATH_INFO")].concat();
        let query = get(b"QUERY_STRING");
        let answer = (pages.0)(&full, query);
        if let Some((content_type, body)) = answer {
            let response = format!(
                "Status: 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\n\r\n{body}",
                body.len()
            );
            return Some(response.into_bytes());
        }
    }
    let limit = limits.max_body?;
    let length = std::str::from_utf8(get(b"CONTENT_LENGTH"))
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) if length > limit => {
            log_error!("request {id}: body of {length} bytes exceeds the limit of {limit}: 413");
            Some(too_large())
        }
        _ => None,
    }
}

/// The 413 response.
fn too_large() -> Vec<u8> {
    let (head, body) = error_head(413);
    let mut response = head.block().to_vec();
    response.extend_from_slice(body);
    response
}
