//! The real `wsgi-fcgi` binary driven record by record over a unix socket
//! by our own raw client (tests/support/fcgi.rs): management records, roles,
//! FCGI_KEEP_CONN, PARAMS and STDIN framing, every malformed input (only
//! that connection closes, with a log line naming the fault), ABORT_REQUEST
//! and vanished clients. Process-level behaviour (signals, sockets, limits,
//! large transfers) is in tests/fcgi_server.rs, the apps in tests/fcgi_apps.rs.
//! Fixture routes: tests/apps/fcgi_fixtures.py (plus gateway.py's).

use crate::support::fcgi;

use std::time::{Duration, Instant};

use fcgi::*;

const SHORT: Duration = Duration::from_millis(300);

#[test]
fn get_values_answers_known_names_exactly() {
    let r = Responder::fixtures(&["--max-conns", "7", "--max-reqs", "5"]);
    let mut c = r.connect();
    c.get_values(&[
        "FCGI_MAX_CONNS",
        "FCGI_MAX_REQS",
        "FCGI_MPXS_CONNS",
        "FCGI_NO_SUCH_NAME",
    ])
    .unwrap();
    let got = c.read_record();
    let expected = encode_pairs(&[
        ("FCGI_MAX_CONNS", "7"),
        ("FCGI_MAX_REQS", "5"),
        ("FCGI_MPXS_CONNS", "1"),
    ]);
    assert_eq!((got.version, got.kind, got.id), (1, GET_VALUES_RESULT, 0));
    assert_eq!(got.content, expected, "{:?}", decode_pairs(&got.content));
    // Only unknown names: an empty result, and the connection stays usable.
    c.get_values(&["FCGI_NO_SUCH_NAME"]).unwrap();
    assert_eq!(
        c.read_record(),
        Record {
            version: 1,
            kind: GET_VALUES_RESULT,
            id: 0,
            content: vec![],
            padding: 0
        }
    );
    // A management record in the middle of a request is answered at once.
    c.send_request(1, &Req::get("/sleep?s=0.3")).unwrap();
    c.get_values(&["FCGI_MPXS_CONNS"]).unwrap();
    let response = c.response(1);
    assert_eq!(response.status(), 200);
    assert_eq!(response.other.len(), 1, "{:?}", response.other);
    assert_eq!(
        decode_pairs(&response.other[0].content),
        [("FCGI_MPXS_CONNS".into(), "1".into())]
    );
}

/// Without `--max-reqs`, FCGI_MAX_REQS advertises the app threads (HAProxy
/// with `mpxs-conns` and `get-values` then opens a connection per thread's
/// worth of requests, and those spread over the workers, instead of queueing
/// everything on one connection's worker: Flask 0.82x -> 1.13-1.29x uWSGI);
/// more requests than that on one connection are still served (64 allowed).
#[test]
fn max_reqs_advertises_the_app_threads_unless_given() {
    let r = Responder::fixtures(&["--threads", "3"]);
    let mut c = r.connect();
    c.get_values(&["FCGI_MAX_REQS"]).unwrap();
    assert_eq!(
        decode_pairs(&c.read_record().content),
        [("FCGI_MAX_REQS".into(), "3".into())]
    );
    for id in 1..=5u16 {
        c.send_request(id, &Req::get("/sleep?s=0.2").keep_conn())
            .unwrap();
    }
    // (Answers come in any order.)
    let mut ended = std::collections::BTreeSet::new();
    while ended.len() < 5 {
        match c.next(Duration::from_secs(10)) {
            Next::Record(r) if r.kind == END_REQUEST => {
                assert_eq!(r.content[4], REQUEST_COMPLETE, "request {} refused", r.id);
                ended.insert(r.id);
            }
            Next::Record(_) => {}
            other => panic!("after {ended:?}: {other:?}"),
        }
    }
}

#[test]
fn unknown_management_type_gets_unknown_type_with_the_type_byte() {
    let r = Responder::fixtures(&[]);
    let mut c = r.connect();
    for kind in [42u8, 255, STDIN] {
        c.send(&encode_record(1, kind, 0, b"some content", 3))
            .unwrap();
        let got = c.read_record();
        assert_eq!((got.kind, got.id), (UNKNOWN_TYPE, 0), "type {kind}");
        assert_eq!(got.content, [kind, 0, 0, 0, 0, 0, 0, 0]);
    }
    assert_eq!(c.request(1, &Req::get("/empty")).status(), 204);
}

/// FCGI_MPXS_CONNS=1: a second request while one is running is served at
/// once on another app thread, each with its own END_REQUEST.
#[test]
fn a_second_request_while_one_runs_is_served_alongside_it() {
    let r = Responder::fixtures(&["--threads", "2"]);
    let mut c = r.connect();
    c.send_request(1, &Req::get("/sleep?s=0.6").keep_conn())
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.send_request(2, &Req::get("/empty").keep_conn()).unwrap();
    let started = Instant::now();
    let second = c.response(2);
    assert_eq!(second.status(), 204);
    assert_eq!(second.end, Some((0, REQUEST_COMPLETE)));
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "request 2 waited for request 1 ({:?})",
        started.elapsed()
    );
    // Request 1's records came before or after, whole.
    let first = c.response(1);
    assert_eq!(first.status(), 200, "{first:?}");
    assert_eq!(first.end, Some((0, REQUEST_COMPLETE)));
    // Both ids are free again.
    assert_eq!(c.request(1, &Req::get("/empty").keep_conn()).status(), 204);
    assert_eq!(c.request(2, &Req::get("/empty").keep_conn()).status(), 204);
}

/// HAProxy sends the next BEGIN_REQUEST on a kept connection as soon as it
/// has sent the body, before END_REQUEST; the app's close() takes a moment
/// here. Refusing it (FCGI_CANT_MPX_CONN) left HAProxy's client waiting
/// until its server timeout.
#[test]
fn a_begin_pipelined_before_end_request_is_served_not_refused() {
    let r = Responder::fixtures(&["--threads", "1"]);
    let mut c = r.connect();
    c.send_request(1, &Req::get("/slow-close?s=0.3").keep_conn())
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    c.send_request(2, &Req::get("/empty").keep_conn()).unwrap();
    let first = c.response(1);
    assert_eq!(first.status(), 200, "{first:?}");
    let ends: Vec<_> = first
        .other
        .iter()
        .filter_map(|rec| Some((rec.id, rec.end_request()?)))
        .collect();
    assert!(
        !ends.contains(&(2, (0, CANT_MPX_CONN))),
        "the pipelined request was refused: {ends:?}"
    );
    let second = c.response(2);
    assert_eq!(second.status(), 204, "{second:?}\n{}", r.log());
}

/// Spec §3.3: "While a request ID R is inactive, the application ignores
/// records with requestId == R". A request refused at BEGIN_REQUEST (here
/// for its role) may still have PARAMS and STDIN on the way: they must not
/// disturb the request that runs.
#[test]
fn records_of_a_refused_request_are_ignored_and_the_active_one_completes() {
    let r = Responder::fixtures(&[]);
    let mut c = r.connect();
    c.send_request(1, &Req::get("/sleep?s=0.4").keep_conn())
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut wire = record(BEGIN_REQUEST, 2, &begin_body(FILTER, KEEP_CONN));
    wire.extend(record(PARAMS, 2, &Req::get("/environ").encoded_params()));
    wire.extend(record(PARAMS, 2, b""));
    wire.extend(record(STDIN, 2, b"ignored"));
    wire.extend(record(STDIN, 2, b""));
    c.send(&wire).unwrap();
    let first = c.response(1);
    assert!(!first.closed, "{:?}\n{}", first.other, r.log());
    assert_eq!(first.status(), 200);
    let refused: Vec<_> = first
        .other
        .iter()
        .filter_map(|rec| Some((rec.id, rec.end_request()?)))
        .collect();
    assert_eq!(refused, [(2, (0, UNKNOWN_ROLE))]);
}

#[test]
fn filter_and_unknown_roles_are_refused_with_unknown_role() {
    let r = Responder::fixtures(&[]);
    let mut c = r.connect();
    for (id, role) in [(1u16, FILTER), (2, 0), (3, 99)] {
        c.begin(id, role, KEEP_CONN).unwrap();
        let got = c.read_record();
        assert_eq!(
            (got.id, got.end_request()),
            (id, Some((0, UNKNOWN_ROLE))),
            "role {role}"
        );
    }
    assert_eq!(c.request(4, &Req::get("/empty")).status(), 204);
}

#[test]
fn authorizer_allows_with_variables_and_denies_with_a_page() {
    let r = Responder::fixtures(&[]);
    let allowed = Req::post(
        "/authorize",
        "text/plain",
        b"a body the authorizer never sees",
    )
    .role(AUTHORIZER)
    .param("HTTP_AUTHORIZATION", "Bearer let-me-in");
    let out = r.connect().request(1, &allowed);
    assert_eq!(out.status(), 200, "{}", r.log());
    assert_eq!(out.end, Some((0, REQUEST_COMPLETE)));
    assert_eq!(out.header("Variable-AUTH_USER").as_deref(), Some("alice"));
    assert_eq!(
        out.header("Variable-AUTH_ROLE_SEEN").as_deref(),
        Some("AUTHORIZER")
    );
    assert_eq!(out.header("X-Body-Len").as_deref(), Some("0"));
    assert!(out.body().is_empty());

    let denied = Req::get("/authorize")
        .role(AUTHORIZER)
        .param("HTTP_AUTHORIZATION", "Bearer wrong");
    let out = r.connect().request(1, &denied);
    assert_eq!(out.status(), 403);
    assert_eq!(out.text(), "denied\n");
    assert_eq!(out.header("X-Role").as_deref(), Some("AUTHORIZER"));
    assert_eq!(out.header("Variable-AUTH_USER"), None);
}

#[test]
fn keep_conn_set_serves_sequential_requests_on_one_connection() {
    let r = Responder::fixtures(&[]);
    let mut c = r.connect();
    for (i, id) in [1u16, 2, 1].into_iter().enumerate() {
        let body = format!("request number {i}");
        let out = c.request(
            id,
            &Req::post("/echo", "text/plain", body.as_bytes()).keep_conn(),
        );
        assert_eq!((out.status(), out.text()), (200, body));
        assert_eq!(out.end, Some((0, REQUEST_COMPLETE)));
        assert!(out.stdout_ended);
    }
    c.expect_silence(SHORT);
    // The last request without FCGI_KEEP_CONN: closed after its END_REQUEST.
    assert_eq!(c.request(3, &Req::get("/empty")).status(), 204);
    assert_eq!(c.expect_closed(TIMEOUT), []);
}

#[test]
fn keep_conn_clear_closes_the_connection_after_end_request() {
    let r = Responder::fixtures(&[]);
    let mut c = r.connect();
    let out = c.request(1, &Req::get("/environ"));
    assert_eq!(out.status(), 200);
    assert_eq!(out.end, Some((0, REQUEST_COMPLETE)));
    assert_eq!(c.expect_closed(TIMEOUT), []);
}

#[test]
fn params_split_anywhere_and_four_byte_lengths() {
    let r = Responder::fixtures(&[]);
    let long_name = format!("HTTP_X_{}", "N".repeat(150));
    let long_value = "v".repeat(200);
    let huge_value = "h".repeat(100_000);
    for chunk in [1, 7, 100, 65535] {
        let req = Req::get("/environ")
            .param("HTTP_X_LONG_VALUE", &long_value)
            .param(&long_name, "short")
            .param("HTTP_X_HUGE", &huge_value)
            .params_chunk(chunk);
        // One more pair with 4-byte lengths although both fit in one byte.
        let mut params = req.encoded_params();
        encode_pair_with(&mut params, b"HTTP_X_FORCED", b"abc", true, true);
        let mut wire = record(BEGIN_REQUEST, 1, &begin_body(RESPONDER, 0));
        wire.extend(stream(PARAMS, 1, &params, chunk));
        wire.extend(stream(STDIN, 1, b"", 1));
        let mut c = r.connect();
        c.send(&wire).unwrap();
        let env = c.response(1).json();
        assert_eq!(
            env["HTTP_X_LONG_VALUE"],
            long_value.as_str(),
            "chunk {chunk}"
        );
        assert_eq!(env[&long_name], "short", "chunk {chunk}");
        assert_eq!(env["HTTP_X_HUGE"].as_str().map(str::len), Some(100_000));
        assert_eq!(env["HTTP_X_FORCED"], "abc", "chunk {chunk}");
    }
}

#[test]
fn stdin_in_many_small_padded_records_arrives_intact() {
    let r = Responder::fixtures(&[]);
    let body: Vec<u8> = (0..100_003u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut wire = Req::post("/echo", "application/octet-stream", &body).head_wire(1);
    let (mut at, mut size) = (0, 1);
    while at < body.len() {
        let end = (at + size).min(body.len());
        wire.extend(encode_record(
            1,
            STDIN,
            1,
            &body[at..end],
            (size % 256) as u8,
        ));
        at = end;
        size = size % 997 + 13;
    }
    wire.extend(record(STDIN, 1, b""));
    let mut c = r.connect();
    c.send(&wire).unwrap();
    let out = c.response(1);
    assert_eq!(out.body(), &body[..]);
    assert_eq!(out.header("X-More").as_deref(), Some("0"));
}

#[test]
fn repeated_empty_stdin_after_the_end_is_tolerated() {
    let r = Responder::fixtures(&[]);
    let mut c = r.connect();
    let mut wire = Req::post("/echo", "text/plain", b"once")
        .keep_conn()
        .wire(1);
    wire.extend(record(STDIN, 1, b""));
    c.send(&wire).unwrap();
    assert_eq!(c.response(1).text(), "once");
    c.send_record(STDIN, 1, b"").unwrap();
    let out = c.request(2, &Req::post("/echo", "text/plain", b"twice").keep_conn());
    assert_eq!(out.text(), "twice", "{}", r.log());
    assert!(
        !r.log().contains("closing FastCGI connection"),
        "{}",
        r.log()
    );
}

/// Send `wire` on a fresh connection (half-closing it if asked) and check
/// that only this connection closes, with a log line naming the fault.
fn assert_fault(r: &Responder, wire: &[u8], half_close: bool, fault: &str) {
    let mut before = r.connect();
    let mut bad = r.connect();
    let _ = bad.send(wire);
    if half_close {
        bad.shutdown_write();
    }
    let seen = bad.expect_closed(TIMEOUT);
    assert!(
        seen.iter().all(|rec| rec.kind != STDOUT),
        "{fault}: {seen:?}"
    );
    let logged = || {
        r.log()
            .lines()
            .any(|l| l.contains("error: closing FastCGI connection: ") && l.contains(fault))
    };
    let deadline = Instant::now() + TIMEOUT;
    while !logged() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(logged(), "no log line naming {fault:?}:\n{}", r.log());
    assert_eq!(
        before.request(1, &Req::get("/empty")).status(),
        204,
        "{fault}"
    );
    assert_eq!(
        r.connect().request(1, &Req::get("/empty")).status(),
        204,
        "{fault}"
    );
}

#[test]
fn malformed_framing_closes_only_that_connection() {
    let r = Responder::fixtures(&[]);
    let begin = record(BEGIN_REQUEST, 1, &begin_body(RESPONDER, KEEP_CONN));
    assert_fault(
        &r,
        &encode_record(2, BEGIN_REQUEST, 1, &begin_body(RESPONDER, 0), 0),
        false,
        "bad record version 2",
    );
    assert_fault(
        &r,
        &[begin.clone(), encode_record(0, PARAMS, 1, b"", 0)].concat(),
        false,
        "bad record version 0",
    );
    assert_fault(
        &r,
        &begin[..5],
        true,
        "connection closed inside a record (5 bytes",
    );
    let mut cut = begin.clone();
    cut.extend(&encode_record(1, PARAMS, 1, &[b'x'; 100], 0)[..18]);
    assert_fault(
        &r,
        &cut,
        true,
        "connection closed inside a record (18 bytes",
    );
    assert_fault(
        &r,
        &record(BEGIN_REQUEST, 1, &[0, 1]),
        false,
        "is 2 bytes, expected 8",
    );
    assert_fault(
        &r,
        &[begin.clone(), record(42, 1, b"?")].concat(),
        false,
        "unexpected record type 42",
    );
    assert_fault(
        &r,
        &record(GET_VALUES, 0, &[0x85, 1]),
        false,
        "GET_VALUES: name-value pair truncated",
    );
}

#[test]
fn malformed_streams_close_only_that_connection() {
    let r = Responder::fixtures(&["--max-params-size", "1000"]);
    let begin = record(BEGIN_REQUEST, 1, &begin_body(RESPONDER, KEEP_CONN));
    let pairs = Req::get("/sleep?s=0.2").encoded_params();
    let big = encode_pairs(&[("HTTP_X_BIG", "b".repeat(2000))]);
    let mut over = begin.clone();
    for piece in big.chunks(500) {
        over.extend(record(PARAMS, 1, piece));
    }
    assert_fault(
        &r,
        &over,
        false,
        "PARAMS of request 1 exceed the limit of 1000 bytes",
    );
    let head = [begin.clone(), stream(PARAMS, 1, &pairs, 64)].concat();
    assert_fault(
        &r,
        &[head.clone(), record(PARAMS, 1, &pairs)].concat(),
        false,
        "PARAMS for request 1, which is not expecting params",
    );
    assert_fault(
        &r,
        &record(STDIN, 9, b"data"),
        false,
        "for request 9, which was never begun",
    );
    assert_fault(
        &r,
        &record(PARAMS, 9, &pairs),
        false,
        "PARAMS for request 9, which is not expecting params",
    );
    let late = [
        head.clone(),
        record(STDIN, 1, b""),
        record(STDIN, 1, b"late"),
    ]
    .concat();
    assert_fault(
        &r,
        &late,
        false,
        "STDIN for request 1 after its stream ended",
    );
    let early = [
        begin.clone(),
        record(PARAMS, 1, &pairs),
        record(STDIN, 1, b"x"),
    ]
    .concat();
    assert_fault(
        &r,
        &early,
        false,
        "STDIN for request 1 before its PARAMS ended",
    );
    let truncated = [begin.clone(), stream(PARAMS, 1, b"\x0b\x03SERV", 100)].concat();
    assert_fault(
        &r,
        &truncated,
        false,
        "PARAMS of request 1: name-value pair truncated",
    );
    assert_fault(
        &r,
        &[begin.clone(), begin.clone()].concat(),
        false,
        "request 1, which is already active",
    );
}

#[test]
fn abort_during_params_ends_the_request_at_once() {
    let r = Responder::fixtures(&[]);
    let mut c = r.connect();
    let pairs = Req::get("/environ").encoded_params();
    let mut wire = record(BEGIN_REQUEST, 1, &begin_body(RESPONDER, KEEP_CONN));
    wire.extend(record(PARAMS, 1, &pairs[..20]));
    wire.extend(record(ABORT_REQUEST, 1, b""));
    c.send(&wire).unwrap();
    let out = c.response(1);
    assert_eq!(out.end, Some((0, REQUEST_COMPLETE)));
    assert!(out.stdout.is_empty() && out.other.is_empty(), "{out:?}");
    c.expect_silence(SHORT);
    // ABORT for a request that is not active: ignored (§5.4).
    c.abort(7).unwrap();
    c.expect_silence(SHORT);
    assert_eq!(c.request(1, &Req::get("/empty").keep_conn()).status(), 204);
}

/// Records until (and including) the first END_REQUEST for `id`, then
/// nothing more for a while: exactly one END_REQUEST.
fn one_end_request(c: &mut Conn, id: u16) -> Response {
    let out = c.response(id);
    assert!(
        out.end.is_some(),
        "the connection closed without END_REQUEST"
    );
    assert!(out.other.is_empty(), "{:?}", out.other);
    c.expect_silence(Duration::from_millis(500));
    out
}

#[test]
fn abort_mid_upload_ends_the_request_exactly_once() {
    let r = Responder::fixtures(&["--threads", "1"]);
    let mut c = r.connect();
    let body = vec![b'u'; 4 << 20];
    let req = Req::post("/echo", "application/octet-stream", &body).keep_conn();
    c.send(&req.head_wire(1)).unwrap();
    for piece in body[..2 << 20].chunks(65535) {
        c.send_record(STDIN, 1, piece).unwrap();
    }
    c.abort(1).unwrap();
    let out = one_end_request(&mut c, 1);
    assert_eq!(out.protocol_status(), REQUEST_COMPLETE);
    assert!(r.wait_log("aborted request 1", TIMEOUT), "{}", r.log());
    // The one app thread is free again and the connection goes on.
    assert_eq!(c.request(2, &Req::get("/empty").keep_conn()).status(), 204);
}

#[test]
fn abort_mid_download_stops_the_app_and_closes_its_iterable() {
    let r = Responder::fixtures(&["--threads", "1"]);
    let marker = r.path("closed");
    let mut c = r.connect();
    c.send_request(
        1,
        &Req::get(&format!("/huge?mb=200&marker={}", marker.display())).keep_conn(),
    )
    .unwrap();
    for _ in 0..10 {
        assert_eq!(c.read_record().kind, STDOUT);
    }
    c.abort(1).unwrap();
    let out = one_end_request(&mut c, 1);
    assert!(
        out.stdout_records < 3200,
        "the whole body went out despite ABORT"
    );
    assert!(
        wait_file(&marker, "closed", TIMEOUT),
        "close() did not run; log:\n{}",
        r.log()
    );
    assert_eq!(c.request(2, &Req::get("/empty").keep_conn()).status(), 204);
}

#[test]
fn vanished_client_mid_upload_or_download_frees_the_app_thread() {
    // (--stream-request-body: the app reads the upload as it arrives, so it
    // sees the end where the body stopped. Received first, as by default, a
    // cut upload never reaches the app: see tests/fcgi_server.rs.)
    let r = Responder::fixtures(&["--threads", "1", "--stream-request-body"]);
    // Mid-upload: the app reads EOF where the body stopped.
    let seen = r.path("seen");
    let mut c = r.connect();
    let req = Req::post(
        &format!("/sha256?marker={}", seen.display()),
        "application/octet-stream",
        &vec![1u8; 10 << 20],
    );
    c.send(&req.head_wire(1)).unwrap();
    for piece in vec![1u8; 3 << 20].chunks(65535) {
        c.send_record(STDIN, 1, piece).unwrap();
    }
    drop(c);
    assert!(
        wait_file(&seen, &format!("done {}", 3 << 20), TIMEOUT),
        "{}",
        r.log()
    );
    assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
    // Mid-download: the generator is closed.
    let closed = r.path("closed");
    let mut c = r.connect();
    c.send_request(
        1,
        &Req::get(&format!("/huge?mb=200&marker={}", closed.display())),
    )
    .unwrap();
    for _ in 0..16 {
        c.read_record();
    }
    drop(c);
    assert!(
        wait_file(&closed, "closed", TIMEOUT),
        "close() did not run; log:\n{}",
        r.log()
    );
    assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
    assert!(
        r.log()
            .contains("web server closed the connection during a request"),
        "{}",
        r.log()
    );
    assert!(!r.log().contains("panicked"), "{}", r.log());
}

/// The PARAMS of a request with `extra` pairs appended to `req`'s (names may
/// repeat), as BEGIN_REQUEST + PARAMS + empty STDIN.
fn wire_with_pairs(id: u16, req: &Req, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut params = req.encoded_params();
    for (name, value) in extra {
        encode_pair(&mut params, name, value);
    }
    let mut wire = record(BEGIN_REQUEST, id, &begin_body(RESPONDER, KEEP_CONN));
    wire.extend(stream(PARAMS, id, &params, 65535));
    wire.extend(record(STDIN, id, b""));
    wire
}

/// A param sent twice: the last value wins, as in PHP-FPM — nginx's
/// `include fastcgi_params; fastcgi_param HTTP_HOST $host:$server_port;`
/// overrides Debian's `HTTP_HOST $host` that way.
#[test]
fn a_param_sent_twice_keeps_its_last_value() {
    let r = Responder::fixtures(&[]);
    let mut c = r.connect();
    let req = Req::get("/environ").param("HTTP_HOST", "example.org");
    c.send(&wire_with_pairs(
        1,
        &req,
        &[
            (b"HTTP_HOST", b"example.org:8080"),
            (b"HTTP_X_TWICE", b"1"),
            (b"HTTP_X_TWICE", b"2"),
        ],
    ))
    .unwrap();
    let env = c.response(1).json();
    assert_eq!(env["HTTP_HOST"], "example.org:8080", "{env}");
    assert_eq!(env["HTTP_X_TWICE"], "2", "{env}");
}

/// Tens of thousands of variables in one request (here 120,000 empty
/// `HTTP_*` params, 1.6 MB of PARAMS) take linear time: the app sees them
/// all, and another connection is answered meanwhile (a quadratic build,
/// with the GIL held, took seconds and starved the other threads).
#[test]
fn a_hundred_and_twenty_thousand_params_cost_linear_time() {
    let r = Responder::fixtures(&["--threads", "2", "--max-params-size", "3000000"]);
    let names: Vec<Vec<u8>> = (0..120_000)
        .map(|i| format!("HTTP_X{i}").into_bytes())
        .collect();
    let extra: Vec<(&[u8], &[u8])> = names.iter().map(|n| (n.as_slice(), &b""[..])).collect();
    let mut big = r.connect();
    big.send(&wire_with_pairs(1, &Req::get("/environ"), &extra))
        .unwrap();
    // A probe on another connection, while the big one is being built.
    std::thread::sleep(Duration::from_millis(300));
    let mut probe = r.connect();
    probe
        .send_request(2, &Req::get("/empty").keep_conn())
        .unwrap();
    let probed = probe.response_with_result(2, Duration::from_secs(3));
    assert!(
        probed.as_ref().is_ok_and(|p| p.status() == 204),
        "another request waited for the big one: {probed:?}"
    );
    let env = big
        .response_with_result(1, Duration::from_secs(20))
        .expect("the big request is answered")
        .json();
    assert_eq!(env["HTTP_X119999"], "", "the last variable is missing");
}

/// The status and ping pages are matched on the whole path (SCRIPT_NAME +
/// PATH_INFO) only: under a mount at /app, /app/status is the app's (an
/// app route is not shadowed, and nobody reaches the page through the
/// app's public location); the page answers where its exact path is routed.
#[test]
fn status_and_ping_pages_match_the_whole_path_only() {
    let r = Responder::fixtures(&["--status-path", "/status", "--ping-path", "/app/ping"]);
    let page = |script: &str, path: &str| {
        let out = r.connect().request(
            1,
            &Req::get(path)
                .param("SCRIPT_NAME", script)
                .param("QUERY_STRING", ""),
        );
        (out.status(), out.text())
    };
    let (status, text) = page("", "/status");
    assert!(status == 200 && text.contains("pool:"), "{status} {text}");
    let (status, text) = page("/app", "/status");
    assert!(
        !text.contains("pool:"),
        "/app/status gave the status page: {text}"
    );
    assert_eq!(status, 404, "{text}");
    assert_eq!(page("/app", "/ping"), (200, "pong\n".to_string()));
    let (_, text) = page("", "/ping");
    assert_ne!(text, "pong\n", "/ping is not the ping path here");
}

/// nginx passes `Transfer-Encoding: chunked` along with the body it already
/// de-chunked and measured (CONTENT_LENGTH): the header does not reach the
/// app, which would de-chunk the body again (bottle answers 400).
#[test]
fn a_dechunked_body_with_its_length_hides_the_chunked_header() {
    let r = Responder::fixtures(&[]);
    let req =
        Req::post("/environ", "text/plain", b"hello").param("HTTP_TRANSFER_ENCODING", "chunked");
    let env = r.connect().request(1, &req).json();
    assert_eq!(env["CONTENT_LENGTH"], "5", "{env}");
    assert!(env.get("HTTP_TRANSFER_ENCODING").is_none(), "{env}");
}

/// A body that came chunked from the client (Apache mod_proxy_fcgi passes
/// it on as it arrives, with `Transfer-Encoding: chunked` and no
/// CONTENT_LENGTH, unless the whole body had already arrived): received
/// whole, the app gets its measured CONTENT_LENGTH and no
/// HTTP_TRANSFER_ENCODING, so it does not de-chunk de-chunked bytes (bottle:
/// 400). Whether the request arrives at once (served by the accepting
/// thread) or in pieces (by the I/O thread), and not with
/// --stream-request-body, whose length is not known when the app starts.
#[test]
fn a_chunked_body_received_whole_gets_its_measured_length() {
    let environ = |r: &Responder, in_pieces: bool| -> serde_json::Value {
        let req = Req::get("/environ")
            .method("POST")
            .param("CONTENT_TYPE", "text/plain")
            .param("HTTP_TRANSFER_ENCODING", "chunked")
            .stdin(b"hello");
        let wire = req.wire(1);
        let mut c = r.connect();
        if in_pieces {
            let head = req.head_wire(1).len();
            c.send(&wire[..head]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            c.send(&wire[head..]).unwrap();
        } else {
            c.send(&wire).unwrap();
        }
        let out = c.response(1);
        serde_json::from_slice(out.body()).unwrap_or_else(|e| panic!("{e}: {}", r.log()))
    };
    let r = Responder::fixtures(&[]);
    for in_pieces in [false, true] {
        let env = environ(&r, in_pieces);
        assert_eq!(env["CONTENT_LENGTH"], "5", "in pieces: {in_pieces}: {env}");
        assert!(env.get("HTTP_TRANSFER_ENCODING").is_none(), "{env}");
    }
    let streamed = Responder::fixtures(&["--stream-request-body"]);
    let env = environ(&streamed, true);
    assert!(env.get("CONTENT_LENGTH").is_none(), "{env}");
    assert_eq!(env["HTTP_TRANSFER_ENCODING"], "chunked");
}
