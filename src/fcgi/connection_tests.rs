//! Tests of the connection state machine without an interpreter: a fake
//! [`Dispatch`] echoes the request body from a plain thread, writing its
//! response as the app threads do (through the [`Exchange`]); the peer
//! speaks raw records over a socket pair.

use std::io::Read;

use tokio::io::AsyncWriteExt;

use super::*;
use crate::fcgi::job::Job;
use crate::fcgi::proto::params::{self, encode_pair};
use crate::fcgi::proto::record::{
    self, ProtocolStatus, Record, RecordType, encode_stream, encode_stream_end,
};

struct Echo;

impl Dispatch for Echo {
    fn dispatch(&self, mut job: Job) -> Result<(), Box<Job>> {
        std::thread::spawn(move || {
            let mut body = Vec::new();
            job.body.read_to_end(&mut body).unwrap();
            // A body of "slow…" makes the app take a moment.
            if body.starts_with(b"slow") {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            if let Some(ending) = job.exchange.ending() {
                let frames = ending.frames(b"Status: 200 OK\r\n\r\n", Bytes::from(body), 0);
                ending.write(frames);
            }
        });
        Ok(())
    }
}

fn limits() -> Limits {
    Limits {
        max_params: 4096,
        max_conns: 7,
        max_reqs: 7,
        advertised_reqs: 7,
        ..Limits::default()
    }
}

fn context(limits: Limits, shutdown: watch::Receiver<bool>) -> Context {
    Context {
        dispatch: Arc::new(Echo),
        limits: Arc::new(limits),
        shutdown,
        idle: Arc::new(IdleList::default()),
    }
}

fn begin(out: &mut BytesMut, id: u16, role: u16, keep: bool) {
    let mut body = [0u8; 8];
    body[..2].copy_from_slice(&role.to_be_bytes());
    body[2] = u8::from(keep);
    encode_stream(out, RecordType::BeginRequest, id, &body);
}

fn request(out: &mut BytesMut, id: u16, keep: bool, body: &[u8]) {
    begin(out, id, 1, keep);
    let mut params = BytesMut::new();
    encode_pair(&mut params, b"REQUEST_METHOD", b"POST");
    encode_stream(out, RecordType::Params, id, &params);
    encode_stream_end(out, RecordType::Params, id);
    encode_stream(out, RecordType::Stdin, id, body);
    encode_stream_end(out, RecordType::Stdin, id);
}

/// Run a connection, send `wire`, collect records until the peer closes
/// or `until` records arrived.
async fn exchange(wire: BytesMut, until: usize) -> (Vec<Record>, Closed) {
    let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(
        server,
        context(limits(), shutdown),
        BytesMut::new(),
        (false, None),
    ));
    client.write_all(&wire).await.unwrap();
    let mut buf = BytesMut::new();
    let mut records = Vec::new();
    while records.len() < until {
        match RecordDecoder.decode(&mut buf).unwrap() {
            Some(r) => records.push(r),
            None => {
                if client.read_buf(&mut buf).await.unwrap() == 0 {
                    break;
                }
            }
        }
    }
    drop(client);
    (records, task.await.unwrap())
}

fn kinds(records: &[Record]) -> Vec<(u8, u16)> {
    records.iter().map(|r| (r.kind, r.request_id)).collect()
}

#[tokio::test]
async fn get_values_reports_the_limits() {
    let mut wire = BytesMut::new();
    let mut asked = BytesMut::new();
    for name in [
        &b"FCGI_MAX_CONNS"[..],
        b"FCGI_MAX_REQS",
        b"FCGI_MPXS_CONNS",
        b"OTHER",
    ] {
        encode_pair(&mut asked, name, b"");
    }
    record::encode_management(&mut wire, RecordType::GetValues, &asked);
    let (records, _) = exchange(wire, 1).await;
    let answer = params::decode(&records[0].content).unwrap();
    assert_eq!(
        answer.iter().collect::<Vec<_>>(),
        [
            (&b"FCGI_MAX_CONNS"[..], &b"7"[..]),
            (b"FCGI_MAX_REQS", b"7"),
            (b"FCGI_MPXS_CONNS", b"1"),
        ]
    );
}

/// Read records until END_REQUEST or the peer closes.
async fn until_end(client: &mut tokio::net::UnixStream, buf: &mut BytesMut) -> Vec<Record> {
    let mut records = Vec::new();
    loop {
        match RecordDecoder.decode(buf).unwrap() {
            Some(r) => {
                let end = r.kind == RecordType::EndRequest as u8;
                records.push(r);
                if end {
                    return records;
                }
            }
            None => {
                if client.read_buf(buf).await.unwrap() == 0 {
                    return records;
                }
            }
        }
    }
}

#[tokio::test]
async fn keep_conn_serves_two_requests_then_closes_without_it() {
    let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(
        server,
        context(limits(), shutdown),
        BytesMut::new(),
        (false, None),
    ));
    let mut buf = BytesMut::new();
    let (stdout, end) = (RecordType::Stdout as u8, RecordType::EndRequest as u8);
    for (id, keep, body) in [(1u16, true, &b"first"[..]), (2, false, b"second")] {
        let mut wire = BytesMut::new();
        request(&mut wire, id, keep, body);
        client.write_all(&wire).await.unwrap();
        let records = until_end(&mut client, &mut buf).await;
        // The header block and the body share the first STDOUT record.
        assert_eq!(kinds(&records), vec![(stdout, id), (stdout, id), (end, id)]);
        assert_eq!(&records[0].content[18..], body);
    }
    // Without FCGI_KEEP_CONN the responder closes after END_REQUEST.
    assert_eq!(client.read_buf(&mut buf).await.unwrap(), 0);
    drop(client);
    assert_eq!(task.await.unwrap(), Closed::Normal);
}

#[tokio::test]
async fn requests_interleaved_on_one_connection_each_get_their_own_end() {
    // Request 1's header, then all of request 2, then request 1's body:
    // both are served, each response whole and under its own id.
    let mut wire = BytesMut::new();
    begin(&mut wire, 1, 1, true);
    encode_stream_end(&mut wire, RecordType::Params, 1);
    request(&mut wire, 2, true, b"second");
    encode_stream(&mut wire, RecordType::Stdin, 1, b"first");
    encode_stream_end(&mut wire, RecordType::Stdin, 1);
    let (records, _) = exchange(wire, 6).await;
    for id in [1u16, 2] {
        let mine: Vec<&Record> = records.iter().filter(|r| r.request_id == id).collect();
        let body: Vec<u8> = mine
            .iter()
            .filter(|r| r.kind == RecordType::Stdout as u8)
            .flat_map(|r| r.content.to_vec())
            .collect();
        let expected = if id == 1 { &b"first"[..] } else { b"second" };
        assert_eq!(&body[18..], expected, "request {id}");
        assert_eq!(mine.last().unwrap().kind, RecordType::EndRequest as u8);
        assert_eq!(
            mine.last().unwrap().content[4],
            ProtocolStatus::RequestComplete as u8
        );
    }
}

#[tokio::test]
async fn a_begin_pipelined_behind_an_unfinished_request_is_served() {
    // HAProxy sends the next BEGIN_REQUEST as soon as it has sent a body,
    // before END_REQUEST: it must be served, not refused.
    let mut wire = BytesMut::new();
    request(&mut wire, 1, true, b"slow first");
    request(&mut wire, 1 + 1, true, b"then second");
    let (records, _) = exchange(wire, 6).await;
    let ends: Vec<(u16, u8)> = records
        .iter()
        .filter(|r| r.kind == RecordType::EndRequest as u8)
        .map(|r| (r.request_id, r.content[4]))
        .collect();
    assert_eq!(
        ends,
        vec![(2, 0), (1, 0)],
        "the quick one ends first, none refused"
    );
}

#[tokio::test]
async fn a_request_header_that_never_completes_is_closed_at_the_timeout() {
    let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let limits = Limits {
        header_timeout: std::time::Duration::from_millis(300),
        ..limits()
    };
    let task = tokio::spawn(serve(
        server,
        context(limits, shutdown),
        BytesMut::new(),
        (false, None),
    ));
    let mut wire = BytesMut::new();
    begin(&mut wire, 1, 1, true);
    client.write_all(&wire[..5]).await.unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .expect("closed by the header timeout")
        .unwrap();
    assert!(
        matches!(closed, Closed::Timeout(ref m) if m.contains("header")),
        "{closed:?}"
    );
}

#[tokio::test]
async fn an_idle_connection_gives_way_when_evicted() {
    let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let context = context(limits(), shutdown);
    let idle = context.idle.clone();
    let task = tokio::spawn(serve(server, context, BytesMut::new(), (false, None)));
    // Not idle before its first request: nothing to evict.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!idle.evict_oldest());
    let mut wire = BytesMut::new();
    request(&mut wire, 1, true, b"x");
    client.write_all(&wire).await.unwrap();
    let mut buf = BytesMut::new();
    until_end(&mut client, &mut buf).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(idle.evict_oldest());
    assert_eq!(task.await.unwrap(), Closed::Evicted);
}

#[tokio::test]
async fn malformed_input_names_the_fault() {
    let mut wire = BytesMut::new();
    encode_stream(&mut wire, RecordType::Stdin, 9, b"x");
    let (_, closed) = exchange(wire, 1).await;
    assert!(
        matches!(closed, Closed::Protocol(ref m) if m.contains("never begun")),
        "{closed:?}"
    );
    let wire = BytesMut::from(&[2u8, 1, 0, 1, 0, 0, 0, 0][..]);
    let (_, closed) = exchange(wire, 1).await;
    assert!(
        matches!(closed, Closed::Protocol(ref m) if m.contains("bad record version")),
        "{closed:?}"
    );
}
