//! How the real `wsgi-fcgi` treats clients that are slow, idle, hostile or
//! multiplexing, driven by our raw FastCGI client (tests/support/fcgi.rs):
//!
//! - request bodies are received before the app runs, so trickling uploads
//!   and idle connections hold no app thread (`--threads 1` still answers);
//! - `--header-timeout` closes a slowloris connection (a header that never
//!   completes, nothing sent at all, a body that stalls);
//! - at `--max-conns` the oldest idle connection gives way to a new one;
//! - eleven requests interleaved on one connection (`FCGI_MPXS_CONNS=1`):
//!   eight uploads whose bodies are interleaved (one aborted mid-body) and
//!   three downloads streamed at once: every other response whole and under
//!   its own id;
//! - kept connections served by the app threads (the default;
//!   `fcgi/kept.rs`): an ABORT_REQUEST or a second request sent
//!   while a request runs is seen at once (the connection goes to the I/O
//!   thread with its running request), requests take turns over many kept
//!   connections, and a stop closes the parked ones.

use crate::support::fcgi;

use std::collections::HashMap;
use std::time::Duration;

use fcgi::*;

/// Long enough for any answer that is not held up; far below the
/// timeouts that a held-up request would run into.
const PROMPT: Duration = Duration::from_secs(5);

/// A POST /echo whose body only partly arrives: head, then `sent` bytes
/// of the announced `len`.
fn trickle(c: &mut Conn, id: u16, len: usize, sent: usize) {
    let req = Req::post("/echo", "application/octet-stream", &vec![b't'; len]).keep_conn();
    c.send(&req.head_wire(id)).unwrap();
    c.send_record(STDIN, id, &vec![b't'; sent]).unwrap();
}

#[test]
fn trickling_uploads_and_idle_connections_hold_no_app_thread() {
    let r = Responder::fixtures(&["--threads", "1"]);
    // Six kept-alive connections, idle after one request each.
    let mut idle: Vec<Conn> = (0..6).map(|_| r.connect()).collect();
    for c in &mut idle {
        assert_eq!(c.request(1, &Req::get("/empty").keep_conn()).status(), 204);
    }
    // A hundred uploads whose bodies are still on their way.
    let mut uploads: Vec<Conn> = (0..100).map(|_| r.connect()).collect();
    for c in &mut uploads {
        trickle(c, 1, 1000, 10);
    }
    // A new request is answered at once by the one app thread.
    let mut fresh = r.connect();
    fresh.send_request(1, &Req::get("/empty")).unwrap();
    let answer = fresh.response_with_result(1, PROMPT);
    assert!(
        answer.as_ref().is_ok_and(|a| a.status() == 204),
        "a new request waited behind slow uploads: {answer:?}\n{}",
        r.log()
    );
    // The idle connections still serve, and an upload that completes runs.
    assert_eq!(
        idle[3].request(1, &Req::get("/empty").keep_conn()).status(),
        204
    );
    let last = uploads.last_mut().unwrap();
    last.send_record(STDIN, 1, &[b't'; 990]).unwrap();
    last.send_record(STDIN, 1, b"").unwrap();
    let echoed = last.response(1);
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.body(), &vec![b't'; 1000][..]);
}

#[test]
fn bodies_larger_than_the_buffer_are_spooled_and_read_whole() {
    // 3 MiB through a 64 KiB memory buffer: the rest goes to a temporary
    // file in --body-temp-dir, unlinked at once (nothing left there).
    let dir = tempfile::tempdir().unwrap();
    let temp = dir.path().display().to_string();
    let r = Responder::fixtures(&["--body-buffer-size", "65536", "--body-temp-dir", &temp]);
    let body: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let out = r
        .connect()
        .request(1, &Req::post("/echo", "application/octet-stream", &body));
    assert_eq!(out.status(), 200);
    assert!(
        out.body() == &body[..],
        "the spooled body came back changed"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_header_that_never_completes_or_a_stalled_body_is_closed_at_the_header_timeout() {
    let r = Responder::fixtures(&["--header-timeout", "1"]);
    // Slowloris: a BEGIN_REQUEST one byte at a time, then nothing.
    let mut slow = r.connect();
    let begin = record(BEGIN_REQUEST, 1, &begin_body(RESPONDER, KEEP_CONN));
    for byte in &begin[..5] {
        slow.send(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    slow.expect_closed(PROMPT);
    // A connection that sends nothing at all.
    let mut silent = r.connect();
    silent.expect_closed(PROMPT);
    assert!(
        r.wait_log("no complete request header", PROMPT),
        "{}",
        r.log()
    );
    // A body that stops halfway.
    let mut stalled = r.connect();
    trickle(&mut stalled, 1, 1000, 100);
    stalled.expect_closed(PROMPT);
    assert!(r.wait_log("request body stalled", PROMPT), "{}", r.log());
    // Everyone else is served.
    assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
}

#[test]
fn at_max_conns_the_oldest_idle_connection_gives_way() {
    // Idle on the I/O thread, and parked for the app threads.
    max_conns_case(&[]);
    max_conns_case(&["--kept-on-io-thread"]);
}

fn max_conns_case(extra: &[&str]) {
    let mut args = vec!["--max-conns", "5"];
    args.extend_from_slice(extra);
    let r = Responder::fixtures(&args);
    let mut idle: Vec<Conn> = (0..5).map(|_| r.connect()).collect();
    for c in &mut idle {
        assert_eq!(c.request(1, &Req::get("/empty").keep_conn()).status(), 204);
        // (Kept alive: the I/O thread's, it holds a slot.)
        std::thread::sleep(Duration::from_millis(50));
    }
    // A newcomer whose request comes in two parts: not whole at once, so
    // the I/O thread serves it, and it needs a connection slot.
    let mut newcomer = r.connect();
    let wire = Req::get("/empty").keep_conn().wire(1);
    newcomer.send(&wire[..wire.len() - 8]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    newcomer.send(&wire[wire.len() - 8..]).unwrap();
    let answer = newcomer.response_with_result(1, PROMPT);
    assert!(
        answer.as_ref().is_ok_and(|a| a.status() == 204),
        "a new connection was locked out by idle ones: {answer:?}\n{}",
        r.log()
    );
    // The one idle the longest was closed for it.
    idle[0].expect_closed(PROMPT);
    assert!(
        r.wait_log("closed an idle connection", PROMPT),
        "{}",
        r.log()
    );
    assert_eq!(
        idle[4].request(1, &Req::get("/empty").keep_conn()).status(),
        204
    );
}

#[test]
fn eleven_requests_interleaved_on_one_connection_with_one_aborted() {
    let r = Responder::fixtures(&["--threads", "4"]);
    let mut c = r.connect();
    let aborted = 5u16;
    let bodies: HashMap<u16, Vec<u8>> = (1..=8u16)
        .map(|id| {
            let len = 150_000 + usize::from(id) * 7_001;
            let body = (0..len).map(|i| (i as u8).wrapping_mul(id as u8)).collect();
            (id, body)
        })
        .collect();
    // Three downloads produced at the same time (64 KiB every 10 ms)...
    for id in 9..=11u16 {
        c.send_request(id, &Req::get("/drip?n=32&ms=10").keep_conn())
            .unwrap();
    }
    // ...and eight uploads: all eight headers, then the bodies in 16 KiB
    // slices, round robin.
    for id in 1..=8u16 {
        let req = Req::post("/echo", "application/octet-stream", &bodies[&id]).keep_conn();
        c.send(&req.head_wire(id)).unwrap();
    }
    let mut offset = 0;
    while offset < bodies[&8].len() {
        for id in 1..=8u16 {
            let body = &bodies[&id];
            if offset < body.len() {
                let end = (offset + 16_384).min(body.len());
                c.send_record(STDIN, id, &body[offset..end]).unwrap();
                if end == body.len() {
                    c.send_record(STDIN, id, b"").unwrap();
                }
            }
            if id == aborted && offset == 65_536 {
                c.abort(id).unwrap();
            }
        }
        offset += 16_384;
    }
    // Collect everything until eleven END_REQUESTs.
    let mut stdout: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut ends: HashMap<u16, (u32, u8)> = HashMap::new();
    let mut order = Vec::new();
    while ends.len() < 11 {
        match c.next(PROMPT) {
            Next::Record(rec) => match rec.kind {
                STDOUT => {
                    if !rec.content.is_empty() {
                        order.push(rec.id);
                    }
                    stdout.entry(rec.id).or_default().extend(rec.content);
                }
                END_REQUEST => {
                    assert!(ends.insert(rec.id, rec.end_request().unwrap()).is_none());
                }
                _ => panic!("unexpected record {rec:?}"),
            },
            other => panic!(
                "{other:?} with {} of 11 requests ended\n{}",
                ends.len(),
                r.log()
            ),
        }
    }
    for id in 1..=8u16 {
        assert_eq!(ends[&id].1, REQUEST_COMPLETE, "request {id}");
        if id == aborted {
            continue; // ended before it ran: whatever it sent is not checked
        }
        let out = stdout.get(&id).map(Vec::as_slice).unwrap_or_default();
        let body = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|end| &out[end + 4..]);
        assert!(
            body == Some(&bodies[&id][..]),
            "request {id}'s echo is not its body"
        );
    }
    let pattern: Vec<u8> = (0..=255u8).cycle().take(2 << 20).collect();
    for id in 9..=11u16 {
        assert_eq!(ends[&id], (0, REQUEST_COMPLETE), "request {id}");
        let out = &stdout[&id];
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        assert!(
            out[end + 4..] == pattern[..],
            "download {id} is not the pattern"
        );
    }
    // The downloads really did share the connection at the same time.
    let downloads: Vec<u16> = order.into_iter().filter(|id| *id >= 9).collect();
    let switches = downloads.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= 4,
        "the downloads took turns only {switches} times"
    );
    assert!(r.wait_log("aborted request 5", PROMPT), "{}", r.log());
    // And the connection goes on.
    assert_eq!(c.request(3, &Req::get("/empty").keep_conn()).status(), 204);
}

/// A kept connection whose request runs on an app thread (nobody reads
/// the socket then): its ABORT_REQUEST is seen while the app still runs —
/// by the idle thread that watches the kept connections (`--threads 2`),
/// and by a write waiting for room (`--threads 1`, the client stopped
/// reading) — and the connection goes on.
#[test]
fn abort_on_a_kept_connection_is_seen_while_the_request_runs() {
    for threads in ["2", "1"] {
        let r = Responder::fixtures(&["--threads", threads]);
        let marker = r.path("closed");
        let mut c = r.connect();
        // A first request makes the connection a kept one.
        assert_eq!(c.request(1, &Req::get("/empty").keep_conn()).status(), 204);
        let target = if threads == "2" {
            "/sleep?s=1.5".to_string()
        } else {
            format!("/huge?mb=200&marker={}", marker.display())
        };
        c.send_request(1, &Req::get(&target).keep_conn()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let started = std::time::Instant::now();
        c.abort(1).unwrap();
        assert!(
            r.wait_log("web server aborted request 1", PROMPT),
            "--threads {threads}: the abort was not seen\n{}",
            r.log()
        );
        if threads == "2" {
            assert!(
                started.elapsed() < Duration::from_millis(1000),
                "--threads 2: the abort was seen only after the app returned"
            );
        }
        if threads == "2" {
            let out = c.response_with_result(1, PROMPT).expect("END_REQUEST");
            assert_eq!(out.protocol_status(), REQUEST_COMPLETE);
            assert!(
                out.stdout.is_empty(),
                "--threads 2: the aborted response went out"
            );
        } else {
            // The write that noticed the abort was waiting inside a record:
            // it ends the record-less way (the connection is shut down, never
            // a corrupt record) unless the record was finished first (then
            // END_REQUEST follows). Either way the app stopped early.
            match c.response_with_result(1, PROMPT) {
                Ok(out) => {
                    assert_eq!(out.protocol_status(), REQUEST_COMPLETE);
                    assert!(
                        out.stdout_records < 3200,
                        "the whole body went out despite ABORT"
                    );
                }
                Err(e) => {
                    assert!(e.contains("inside a record") || e.contains("closed"), "{e}");
                    c = r.connect();
                }
            }
            assert!(wait_file(&marker, "closed", PROMPT), "close() did not run");
        }
        assert_eq!(c.request(2, &Req::get("/empty").keep_conn()).status(), 204);
    }
}

/// Many kept connections taking turns (`--threads 3`, requests sent in
/// rounds over eight connections, some answered by a page, some closing):
/// every answer whole, under its id, on its own connection.
#[test]
fn many_kept_connections_take_turns_on_the_app_threads() {
    let r = Responder::fixtures(&["--threads", "3", "--ping-path", "/ping"]);
    let mut conns: Vec<Conn> = (0..8).map(|_| r.connect()).collect();
    for round in 0..25u16 {
        for (n, c) in conns.iter_mut().enumerate() {
            let id = round % 3 + 1;
            let echo = format!("round {round} conn {n}");
            let req = Req::post("/echo", "text/plain", echo.as_bytes()).keep_conn();
            c.send_request(id, &req).unwrap();
            let out = c.response_with_result(id, PROMPT).expect("an answer");
            assert_eq!(out.status(), 200, "round {round} conn {n}: {out:?}");
            assert!(
                out.body().ends_with(echo.as_bytes()),
                "round {round} conn {n}"
            );
            if round % 10 == 9 {
                let ping = c.request(id, &Req::get("/ping").keep_conn());
                assert_eq!(ping.text().trim(), "pong", "round {round} conn {n}");
            }
        }
    }
    // The last request of a connection without FCGI_KEEP_CONN closes it.
    for c in &mut conns {
        assert_eq!(c.request(1, &Req::get("/empty")).status(), 204);
        c.expect_closed(PROMPT);
    }
    assert!(!r.log().contains("error"), "{}", r.log());
}

/// A web server reuses a kept connection the moment it reads END_REQUEST
/// (nginx does), before the app thread that wrote it has parked it: that
/// next request is served as the next one, on the app threads — not taken
/// for multiplexing, which would send the worker's kept connections to the
/// I/O thread for good.
#[test]
fn a_request_right_after_end_request_is_not_taken_for_multiplexing() {
    let r = Responder::fixtures(&["--threads", "2"]);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let mut c = r.connect();
            std::thread::spawn(move || {
                for n in 0..3000u32 {
                    let out = c.request(1, &Req::get("/empty").keep_conn());
                    assert_eq!(out.status(), 204, "request {n}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        !r.log().contains("multiplexing or pipelining"),
        "{}",
        r.log()
    );
}

/// An idle kept-alive connection reset by its peer (HAProxy and h2o close
/// idle ones that way) is a normal close: no error, and not "closed during a
/// request" (its last request had ended) — parked for the app threads, and
/// on the I/O thread (`--kept-on-io-thread`).
#[test]
fn an_idle_connection_reset_by_its_peer_is_a_normal_close() {
    for extra in [&[][..], &["--kept-on-io-thread"][..]] {
        let app = fcgi::app("fcgi_fixtures.py");
        let mut args = vec!["--app", app.to_str().unwrap()];
        args.extend_from_slice(extra);
        let r = Responder::start_tcp(&args, &[]);
        let mut c = r.connect();
        assert_eq!(c.request(1, &Req::get("/empty").keep_conn()).status(), 204);
        std::thread::sleep(Duration::from_millis(100));
        c.reset();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
        let log = r.log();
        assert!(
            !log.contains("error") && !log.contains("during a request"),
            "{extra:?}: {log}"
        );
    }
}

/// A graceful stop closes the parked kept connections at once (idle: the
/// web server drops them from its pool) and exits.
#[test]
fn a_stop_closes_parked_kept_connections() {
    let mut r = Responder::fixtures(&["--threads", "2"]);
    let mut conns: Vec<Conn> = (0..4).map(|_| r.connect()).collect();
    for c in &mut conns {
        assert_eq!(c.request(1, &Req::get("/empty").keep_conn()).status(), 204);
    }
    let started = std::time::Instant::now();
    r.signal("TERM");
    for c in &mut conns {
        c.expect_closed(PROMPT);
    }
    drop(conns);
    let status = r.wait_exit(PROMPT).expect("exited after TERM");
    assert!(status.success(), "{status}\n{}", r.log());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the stop waited for idle connections: {:?}",
        started.elapsed()
    );
}
