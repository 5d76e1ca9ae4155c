//! Hostile input against one real `wsgi-fcgi` process while a probe keeps
//! sending ordinary requests beside it: malformed records (wrong version,
//! lengths that overrun, a truncated name-value pair, a duplicate
//! BEGIN_REQUEST), 100 MB of PARAMS, 52,000 empty params in one request,
//! ABORT_REQUEST in every state, a lying CONTENT_LENGTH, 2,000 connections
//! that never send a byte, a client that never reads its response. For each:
//! a clear log line where there is something to say; and over the whole run:
//! the process survives, the probe sees zero failures, resident memory stays
//! flat. (Each input on its own, with the exact answers, is in
//! tests/fcgi_protocol.rs and tests/fcgi_clients.rs.)

use crate::support::fcgi;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fcgi::*;

const PROMPT: Duration = Duration::from_secs(20);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Ordinary requests, each on a new connection, until stopped: (served,
/// failures with the first error).
struct Probe {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Probe {
    fn start(r: &Responder) -> Probe {
        let (stop, served) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let addr = r.addr.clone();
        let (s, n) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let result = addr.connect().map_err(|e| e.to_string()).and_then(|mut c| {
                    c.send_request(1, &Req::get("/empty"))
                        .map_err(|e| e.to_string())?;
                    c.response_with_result(1, PROMPT)
                });
                match result {
                    Ok(out) if out.status() == 204 => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(out) => failures.push(format!("status {}", out.status())),
                    Err(e) => failures.push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            failures
        });
        Probe {
            stop,
            served,
            thread,
        }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.thread.join().unwrap();
        (self.served.load(Ordering::Relaxed), failures)
    }
}

/// Send `wire` on a new connection (then half-close if asked) and wait
/// until it is closed; the log must come to name `fault`.
fn fault(r: &Responder, wire: &[u8], half_close: bool, fault: &str) {
    let mut bad = r.connect();
    let _ = bad.send(wire);
    if half_close {
        bad.shutdown_write();
    }
    bad.expect_closed(PROMPT);
    assert!(
        r.wait_log(fault, PROMPT),
        "no log line naming {fault:?}:\n{}",
        r.log()
    );
}

#[test]
fn hostile_input_leaves_everyone_else_served_and_memory_flat() {
    let r = Responder::fixtures(&["--threads", "2", "--header-timeout", "3"]);
    for _ in 0..50 {
        assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
    }
    let rss_before = rss_kib(r.pid);
    let probe = Probe::start(&r);
    let begin = record(BEGIN_REQUEST, 1, &begin_body(RESPONDER, KEEP_CONN));

    // Malformed framing and streams: that connection closes, with the fault named.
    fault(
        &r,
        &encode_record(2, BEGIN_REQUEST, 1, &begin_body(RESPONDER, 0), 0),
        false,
        "bad record version 2",
    );
    let mut overrun = begin.clone();
    overrun.extend(&encode_record(1, PARAMS, 1, &[b'x'; 100], 0)[..18]);
    fault(&r, &overrun, true, "connection closed inside a record");
    let truncated = [begin.clone(), stream(PARAMS, 1, b"\x0b\x03SERV", 100)].concat();
    fault(&r, &truncated, false, "name-value pair truncated");
    fault(
        &r,
        &[begin.clone(), begin.clone()].concat(),
        false,
        "which is already active",
    );

    // 100 MB of PARAMS: refused at --max-params-size (1 MiB), the sender cut off.
    let mut flood = r.connect();
    let _ = flood.send(&begin);
    let chunk = record(PARAMS, 1, &encode_pairs(&[("HTTP_X", "p".repeat(65000))]));
    let mut sent = 0usize;
    while sent < 100 << 20 && flood.send(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 100 << 20, "100 MB of PARAMS were all taken in");
    assert!(r.wait_log("exceed the limit of", PROMPT), "{}", r.log());
    drop(flood);

    // 52,000 empty params in one request (624 KB): answered, in linear time.
    let mut params = Req::get("/empty").encoded_params();
    for n in 0..52_000 {
        encode_pair(&mut params, format!("HTTP_X{n}").as_bytes(), b"");
    }
    let mut c = r.connect();
    c.send(
        &[
            begin.clone(),
            stream(PARAMS, 1, &params, 65535),
            record(STDIN, 1, b""),
        ]
        .concat(),
    )
    .unwrap();
    let out = c.response_with_result(1, PROMPT).expect("an answer");
    assert_eq!(out.status(), 204);

    // ABORT_REQUEST in every state: for a request never begun, during its
    // PARAMS, during its body, while it runs, after its end.
    let mut c = r.connect();
    c.abort(7).unwrap();
    c.send(&begin).unwrap();
    c.abort(1).unwrap();
    let _ = c.response_with_result(1, PROMPT);
    let upload = Req::post("/echo", "text/plain", &[b'u'; 1000]).keep_conn();
    let mut c = r.connect();
    c.send(&upload.head_wire(1)).unwrap();
    c.send_record(STDIN, 1, &[b'u'; 10]).unwrap();
    c.abort(1).unwrap();
    let _ = c.response_with_result(1, PROMPT);
    let mut c = r.connect();
    c.send_request(1, &Req::get("/sleep?s=1").keep_conn())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.abort(1).unwrap();
    assert!(r.wait_log("aborted request 1", PROMPT), "{}", r.log());
    let _ = c.response_with_result(1, PROMPT);
    assert_eq!(c.request(1, &Req::get("/empty").keep_conn()).status(), 204);
    c.abort(1).unwrap();
    assert_eq!(c.request(2, &Req::get("/empty").keep_conn()).status(), 204);

    // A lying CONTENT_LENGTH: the app reads what came, and no more.
    let mut c = r.connect();
    let lying = Req::get("/echo")
        .method("POST")
        .param("CONTENT_LENGTH", "1000")
        .stdin(b"only ten!!");
    let out = c.request(1, &lying);
    assert_eq!(out.body(), b"only ten!!", "{out:?}");

    // 2,000 connections that never send a byte: closed by --header-timeout,
    // and the probe goes on meanwhile.
    let silent: Vec<Conn> = (0..2000).filter_map(|_| r.addr.connect().ok()).collect();
    assert_eq!(silent.len(), 2000);
    assert!(
        r.wait_log("no complete request header", PROMPT),
        "{}",
        r.log()
    );
    drop(silent);

    // A client that never reads its 200 MB response: one app thread waits on
    // it; the other serves the probe. Then it goes away.
    let mut deaf = r.connect();
    deaf.send_request(1, &Req::get("/huge?mb=200")).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    drop(deaf);

    std::thread::sleep(Duration::from_millis(500));
    let (served, failures) = probe.finish();
    assert!(
        failures.is_empty(),
        "{} probe requests failed beside the hostile ones, e.g. {:?}\n{}",
        failures.len(),
        failures.first(),
        r.log()
    );
    assert!(served > 20, "the probe was starved: {served} served");
    // Still serving, and memory flat (the 100 MB flood, the 52,000 params and
    // the 200 MB response left nothing behind).
    assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
    let rss_after = rss_kib(r.pid);
    eprintln!(
        "hostile run: probe {served} served, 0 failed; RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
