//! Tests of the connection state machine without an interpreter: a fake
//! [`Dispatch`] echoes the request body; the peer speaks raw records over a
//! socket pair.

use super::*;
use crate::fcgi::params::encode_pair;
use crate::fcgi::record::{encode_stream, encode_stream_end};

struct Echo;

impl Dispatch for Echo {
    fn dispatch(&self, mut job: Job) -> Result<(), Box<Job>> {
        std::thread::spawn(move || {
            let mut body = Vec::new();
            while let Some(chunk) = job.stdin.blocking_recv() {
                body.extend_from_slice(&chunk);
            }
            let end = Out::End {
                status: 0,
                head: Bytes::from_static(b"Status: 200 OK\r\n\r\n"),
                body: Bytes::from(body),
            };
            let _ = job.out.blocking_send(end);
        });
        Ok(())
    }
}

fn limits() -> Arc<Limits> {
    Arc::new(Limits {
        max_params: 4096,
        max_body: None,
        max_conns: 7,
        max_reqs: 7,
        pages: None,
    })
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
    let task = tokio::spawn(serve(server, Arc::new(Echo), limits(), shutdown));
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
        answer,
        vec![
            (b"FCGI_MAX_CONNS".to_vec(), b"7".to_vec()),
            (b"FCGI_MAX_REQS".to_vec(), b"7".to_vec()),
            (b"FCGI_MPXS_CONNS".to_vec(), b"0".to_vec()),
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
    let task = tokio::spawn(serve(server, Arc::new(Echo), limits(), shutdown));
    let mut buf = BytesMut::new();
    let (stdout, end) = (RecordType::Stdout as u8, RecordType::EndRequest as u8);
    for (id, keep, body) in [(1u16, true, &b"first"[..]), (2, false, b"second")] {
        let mut wire = BytesMut::new();
        request(&mut wire, id, keep, body);
        client.write_all(&wire).await.unwrap();
        let records = until_end(&mut client, &mut buf).await;
        assert_eq!(
            kinds(&records),
            vec![(stdout, id), (stdout, id), (stdout, id), (end, id)]
        );
        assert_eq!(&records[1].content[..], body);
    }
    // Without FCGI_KEEP_CONN the responder closes after END_REQUEST.
    assert_eq!(client.read_buf(&mut buf).await.unwrap(), 0);
    drop(client);
    assert_eq!(task.await.unwrap(), Closed::Normal);
}

#[tokio::test]
async fn a_second_request_is_refused_and_its_records_ignored() {
    let mut wire = BytesMut::new();
    begin(&mut wire, 1, 1, true);
    encode_stream_end(&mut wire, RecordType::Params, 1);
    request(&mut wire, 2, true, b"ignored");
    encode_stream(&mut wire, RecordType::Stdin, 1, b"body");
    encode_stream_end(&mut wire, RecordType::Stdin, 1);
    let (records, _) = exchange(wire, 5).await;
    assert_eq!(records[0].kind, RecordType::EndRequest as u8);
    assert_eq!(records[0].request_id, 2);
    assert_eq!(records[0].content[4], ProtocolStatus::CantMpxConn as u8);
    assert_eq!(&records[2].content[..], b"body");
    assert_eq!(records[4].kind, RecordType::EndRequest as u8);
    assert_eq!(records[4].request_id, 1);
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
