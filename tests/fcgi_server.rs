//! The `wsgi-fcgi` process as an operator and a web server meet it: the
//! request body limit, large uploads and downloads with the worker's memory
//! watched, sendfile, app threads working in parallel, `wsgi-fcgi request`,
//! TERM and INT, sockets inherited on fd 0 or from systemd (LISTEN_FDS), the
//! unix socket mode, FCGI_WEB_SERVER_ADDRS and start-up failures. Driven by
//! the raw client in tests/support/fcgi.rs.

use crate::support::digest;
use crate::support::fcgi;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fcgi::*;

const MIB: usize = 1 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

/// Peak RSS growth (MB) of the responder while `work` runs, from VmHWM.
fn peak_growth_mb(r: &Responder, work: impl FnOnce()) -> u64 {
    let before = r.status_kb("VmRSS");
    work();
    r.status_kb("VmHWM").saturating_sub(before) / 1024
}
#[test]
fn body_over_max_body_size_is_413_before_the_app_runs() {
    let r = Responder::fixtures(&["--max-body-size", "1000"]);
    let marker = r.path("ran");
    let route = format!("/ran?marker={}", marker.display());
    let out = r
        .connect()
        .request(1, &Req::post(&route, "text/plain", &[b'x'; 1001]));
    assert_eq!(out.status(), 413);
    assert_eq!(out.end.map(|e| e.1), Some(REQUEST_COMPLETE));
    assert!(out.text().contains("Content Too Large"));
    assert!(!marker.exists(), "the app ran");
    assert!(
        r.log().contains("exceeds the limit of 1000: 413"),
        "{}",
        r.log()
    );
    // A body far larger than the socket buffers, still being sent while the
    // 413 comes back: with FCGI_KEEP_CONN the connection then goes on...
    let big = vec![b'x'; 8 << 20];
    let mut c = r.connect();
    let mut writer = c.try_clone();
    let wire = Req::post(&route, "text/plain", &big).keep_conn().wire(1);
    let send = std::thread::spawn(move || writer.send(&wire));
    assert_eq!(c.response(1).status(), 413);
    send.join()
        .unwrap()
        .expect("the rest of the body could be sent");
    assert_eq!(c.request(2, &Req::get("/empty").keep_conn()).status(), 204);
    // ...and without it the 413 still reaches the web server.
    let mut c = r.connect();
    let mut writer = c.try_clone();
    let wire = Req::post(&route, "text/plain", &big).wire(1);
    let send = std::thread::spawn(move || writer.send(&wire));
    let out = c.response(1);
    assert_eq!(out.status(), 413, "{out:?}");
    let _ = send.join().unwrap();
    assert!(!marker.exists(), "the app ran");
    // At the limit: served.
    let out = r
        .connect()
        .request(1, &Req::post(&route, "text/plain", &[b'x'; 1000]));
    assert_eq!(
        (out.status(), std::fs::read_to_string(&marker).ok()),
        (200, Some("ran".into()))
    );
}

/// One MiB of the 1 GiB upload: the pattern, stamped with its index so a
/// lost, doubled or reordered piece changes the digest.
fn upload_piece(index: usize, base: &[u8]) -> Vec<u8> {
    let mut piece = base.to_vec();
    piece[..8].copy_from_slice(&(index as u64).to_le_bytes());
    piece
}

/// sha256 of `count` pieces made by `piece` (never all in memory).
fn sha256_of_pieces(count: usize, piece: impl Fn(usize) -> Vec<u8>) -> String {
    let mut hasher = digest::Sha256::new();
    for i in 0..count {
        hasher.update(&piece(i));
    }
    hasher.hex()
}

/// The issue's bar: a 1 GiB upload passes with the worker's memory flat.
/// The body is sent as it is made (1 MiB at a time, in 32 KiB STDIN records
/// like nginx's) and read by the app in 64 KiB pieces.
/// A 1 GiB upload, received first (the default: spooled to a temporary
/// file, then read by the app) and streamed to the app as it arrives
/// (`--stream-request-body`): the worker's memory stays flat either way.
#[test]
fn upload_of_1_gib_keeps_memory_flat_spooled_or_streamed() {
    upload_of_1_gib(&["--threads", "1"], "spooled");
    upload_of_1_gib(&["--threads", "1", "--stream-request-body"], "streamed");
}

fn upload_of_1_gib(args: &[&str], mode: &str) {
    const PIECES: usize = 1024;
    let r = Responder::fixtures(args);
    let base = pattern(MIB);
    let expected = {
        let base = base.clone();
        sha256_of_pieces(PIECES, move |i| upload_piece(i, &base))
    };
    assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
    let started = Instant::now();
    let mut out = None;
    let growth = peak_growth_mb(&r, || {
        let mut c = r.connect();
        let req = Req::get("/sha256")
            .method("POST")
            .param("CONTENT_TYPE", "application/octet-stream")
            .param("CONTENT_LENGTH", &(PIECES * MIB).to_string());
        c.send(&req.head_wire(1)).unwrap();
        let mut sender = c.try_clone();
        let send = std::thread::spawn(move || {
            for i in 0..PIECES {
                for record in upload_piece(i, &base).chunks(32 * 1024) {
                    sender.send_record(STDIN, 1, record).unwrap();
                }
            }
            sender.send_record(STDIN, 1, b"").unwrap();
        });
        out = Some(c.response(1));
        send.join().unwrap();
    });
    let v = out.unwrap().json();
    assert_eq!(
        (v["len"].as_u64(), v["sha256"].as_str()),
        (Some((PIECES * MIB) as u64), Some(&*expected))
    );
    eprintln!(
        "1 GiB {mode} upload: {:?}, peak RSS growth {growth} MB",
        started.elapsed()
    );
    assert!(
        growth < 40,
        "RSS grew by {growth} MB during a 1 GiB {mode} upload"
    );
}

#[test]
fn read_all_of_a_50_mib_upload_stays_under_150_mb() {
    let r = Responder::fixtures(&["--threads", "1"]);
    let body = pattern(50 * MIB);
    assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
    let out = r.connect().request(
        1,
        &Req::post("/read-all", "application/octet-stream", &body),
    );
    let v = out.json();
    assert_eq!(
        (v["len"].as_u64(), v["again"].as_u64()),
        (Some(body.len() as u64), Some(0))
    );
    let peak = r.status_kb("VmHWM") / 1024;
    eprintln!("50 MiB read(): peak RSS {peak} MB");
    assert!(
        peak < 150,
        "peak RSS {peak} MB for a 50 MiB body read with read(): the body is held more than \
         once (wsgi.input.read() must build its bytes object from the buffer, not from copies)"
    );
}

#[test]
fn download_of_1_gib_streams_with_flat_memory() {
    let r = Responder::fixtures(&["--threads", "1"]);
    assert_eq!(r.connect().request(1, &Req::get("/empty")).status(), 204);
    let baseline = r.status_kb("VmRSS");
    let expected: Vec<u8> = (0..65536 + 256).map(|i| i as u8).collect();
    let (mut head, mut body_len, mut records, mut max_rss) = (Vec::new(), 0usize, 0usize, baseline);
    let started = Instant::now();
    let mut c = r.connect();
    c.send_request(1, &Req::get("/huge?mb=1024")).unwrap();
    let out = c.response_with(1, TIMEOUT, |mut chunk| {
        if head.windows(4).all(|w| w != b"\r\n\r\n") {
            let old = head.len().saturating_sub(3);
            head.extend_from_slice(chunk);
            let Some(end) = head[old..].windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            chunk = &chunk[(old + end + 4).saturating_sub(head.len() - chunk.len())..];
        }
        let at = body_len % 256;
        assert_eq!(
            chunk,
            &expected[at..at + chunk.len()],
            "body corrupt at byte {body_len}"
        );
        body_len += chunk.len();
        records += 1;
        if records % 256 == 0 {
            max_rss = max_rss.max(r.status_kb("VmRSS"));
        }
    });
    assert_eq!(out.end, Some((0, REQUEST_COMPLETE)));
    assert!(head.starts_with(b"Status: 200 OK\r\n"));
    assert_eq!(body_len, 1024 * MIB);
    let growth = (max_rss - baseline) / 1024;
    eprintln!(
        "1 GiB download: {:?}, RSS growth {growth} MB",
        started.elapsed()
    );
    assert!(
        growth < 30,
        "RSS grew by {growth} MB during a streamed download"
    );
}

#[test]
fn file_wrapper_sends_a_20_mb_file_byte_exact() {
    let r = Responder::fixtures(&[]);
    let path = r.path("data.bin");
    let data = pattern(20_000_000 + 3);
    std::fs::write(&path, &data).unwrap();
    let out = r
        .connect()
        .request(1, &Req::get(&format!("/file?path={}", path.display())));
    assert_eq!(out.end, Some((0, REQUEST_COMPLETE)));
    assert!(
        out.body() == &data[..],
        "file body differs ({} bytes)",
        out.body().len()
    );
    let q = format!("/file?path={}&skip=65000&length=1000000", path.display());
    let out = r.connect().request(1, &Req::get(&q));
    assert!(out.body() == &data[65000..1_065_000]);
}

#[test]
fn four_app_threads_serve_four_slow_requests_at_once() {
    let r = Responder::fixtures(&["--threads", "4"]);
    let mut conns: Vec<Conn> = (0..4).map(|_| r.connect()).collect();
    let started = Instant::now();
    for c in &mut conns {
        c.send_request(1, &Req::get("/sleep?s=0.5")).unwrap();
    }
    let threads: std::collections::BTreeSet<u64> = conns
        .iter_mut()
        .map(|c| c.response(1).json()["thread"].as_u64().unwrap())
        .collect();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1800),
        "4 × 0.5 s on 4 threads took {elapsed:?}"
    );
    assert_eq!(threads.len(), 4, "not 4 distinct app threads: {threads:?}");
}

#[test]
fn wsgi_multithread_follows_threads() {
    for (threads, multithread) in [("4", true), ("1", false)] {
        let r = Responder::fixtures(&["--threads", threads]);
        let env = r.connect().request(1, &Req::get("/environ")).json();
        assert_eq!(env["wsgi.multithread"], multithread, "--threads {threads}");
        assert_eq!(env["wsgi.run_once"], false);
        assert_eq!(env["FCGI_ROLE"], "RESPONDER");
    }
}

#[test]
fn request_subcommand_exit_statuses() {
    let r = Responder::fixtures(&[]);
    let addr = r.addr.arg();
    let (code, stdout, stderr) = probe(&[&addr, "/environ?x=1", "-H", "X-Custom: yes"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with(b"Status: 200 OK\r\n"));
    let text = String::from_utf8_lossy(&stdout);
    assert!(
        text.contains("\"HTTP_X_CUSTOM\": \"yes\"") && text.contains("\"QUERY_STRING\": \"x=1\""),
        "{text}"
    );
    let (code, stdout, _) = probe(&[&addr, "/echo", "-X", "POST", "-d", "posted body"]);
    assert_eq!(code, 0);
    assert!(
        stdout.ends_with(b"\r\n\r\nposted body"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
    assert_eq!(probe(&[&addr, "/no-such-route"]).0, 1);
    assert_eq!(probe(&[&addr, "/raise"]).0, 1);
    let missing = r.path("nobody.sock");
    let (code, _, stderr) = probe(&[&format!("unix:{}", missing.display()), "/"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert_eq!(probe(&[&free_addr().to_string(), "/"]).0, 2);
}

#[test]
fn request_probe_never_fails_against_a_healthy_responder() {
    let r = Responder::fixtures(&[]);
    let addr = r.addr.arg();
    let mut failures = Vec::new();
    for _ in 0..200 {
        let (code, _, stderr) = probe(&[&addr, "/empty"]);
        if code != 0 {
            failures.push(stderr.trim().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 `wsgi-fcgi request` runs against a healthy responder failed, e.g. {:?} \
         (with FCGI_KEEP_CONN clear the responder closes right after END_REQUEST: the probe \
         must have written its whole request by then); log:\n{}",
        failures.len(),
        failures.first(),
        r.log()
    );
}

#[test]
fn term_lets_the_request_in_flight_finish_then_exits_0() {
    let mut r = Responder::fixtures(&[]);
    let started = r.path("started");
    let mut idle = r.connect();
    assert_eq!(
        idle.request(1, &Req::get("/empty").keep_conn()).status(),
        204
    );
    let mut c = r.connect();
    c.send_request(
        1,
        &Req::get(&format!("/sleep?s=1&started={}", started.display())),
    )
    .unwrap();
    assert!(wait_file(&started, "started", TIMEOUT));
    r.signal("TERM");
    // An idle keep-alive connection is closed at once.
    assert_eq!(idle.expect_closed(Duration::from_secs(2)), []);
    assert!(r.wait_log("stopping", TIMEOUT), "{}", r.log());
    std::thread::sleep(Duration::from_millis(100));
    let late = r.addr.connect().ok();
    let out = c.response(1);
    assert_eq!(
        (out.status(), out.end),
        (200, Some((0, REQUEST_COMPLETE))),
        "{}",
        r.log()
    );
    if let Some(mut late) = late {
        let _ = late.send_request(1, &Req::get("/empty"));
        assert_eq!(
            late.expect_closed(TIMEOUT),
            [],
            "a connection made after TERM was served"
        );
    }
    let status = r.wait_exit(TIMEOUT).expect("no exit after TERM");
    assert_eq!(status.code(), Some(0), "{}", r.log());
    assert!(r.log().contains("stopped"), "{}", r.log());
}

#[test]
fn int_stops_at_once_without_waiting_for_requests() {
    let mut r = Responder::fixtures(&[]);
    let started = r.path("started");
    let mut c = r.connect();
    c.send_request(
        1,
        &Req::get(&format!("/sleep?s=5&started={}", started.display())),
    )
    .unwrap();
    assert!(wait_file(&started, "started", TIMEOUT));
    let t = Instant::now();
    r.signal("INT");
    let status = r
        .wait_exit(Duration::from_secs(3))
        .expect("INT did not stop the responder");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "INT took {:?}",
        t.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", r.log());
    assert!(
        c.response(1).closed,
        "the 5 s request completed despite INT"
    );
}

fn hello() -> [String; 2] {
    ["--app".into(), app("hello.py").display().to_string()]
}

#[test]
fn serves_a_listening_socket_inherited_on_fd_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.args(hello())
        .stdin(Stdio::from(OwnedFd::from(listener)));
    let r = Responder::spawn(cmd, Addr::Unix(path), dir);
    assert_eq!(
        r.connect().request(1, &Req::get("/")).text(),
        "Hello, world!\n"
    );
    assert!(r.log().contains("on 1 socket(s)"), "{}", r.log());
}

/// Spawned by a web server (the socket on fd 0, no --bind) with no app
/// configured — mod_fcgid's `FcgidInitialEnv WSGI_APP` under suEXEC never
/// arrives — wsgi-fcgi refuses to start instead of serving the demo app;
/// `--app demo` asks for it by name.
#[test]
fn spawned_without_an_app_it_refuses_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let out = Command::new(wsgi_fcgi())
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no application configured"), "{stderr}");
    assert!(stderr.contains("suEXEC"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.args(["--app", "demo"])
        .stdin(Stdio::from(OwnedFd::from(listener)));
    let r = Responder::spawn(cmd, Addr::Unix(path), dir);
    let text = r.connect().request(1, &Req::get("/")).text();
    assert!(text.starts_with("Hello from wsgi-gateway!"), "{text}");
}

#[test]
fn serves_a_systemd_socket_from_listen_fds() {
    use std::os::fd::{BorrowedFd, FromRawFd};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("systemd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#])
        .arg(wsgi_fcgi())
        .args(hello())
        .stdin(Stdio::null());
    // Runs in the child between fork and exec: only dup2 and fcntl, which
    // are async-signal-safe and do not allocate.
    let listener_to_fd_3 = move || -> std::io::Result<()> {
        // SAFETY: `fd` is the listener, open in the parent until spawn
        // returns and so open in the child. The OwnedFd naming descriptor 3
        // is only the target of dup2 and is forgotten, never closed.
        let mut three = unsafe { OwnedFd::from_raw_fd(3) };
        // SAFETY: `fd` is open here (see above) for the call's duration.
        let listener = unsafe { BorrowedFd::borrow_raw(fd) };
        let duplicated = nix::unistd::dup2(listener, &mut three);
        std::mem::forget(three);
        duplicated?;
        // SAFETY: descriptor 3 was just made a copy of the listener.
        let three = unsafe { BorrowedFd::borrow_raw(3) };
        // dup2(3, 3) keeps FD_CLOEXEC: clear it so that fd 3 survives exec.
        nix::fcntl::fcntl(
            three,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        Ok(())
    };
    // SAFETY: the hook is async-signal-safe, see above.
    unsafe { cmd.pre_exec(listener_to_fd_3) };
    let r = Responder::spawn(cmd, Addr::Unix(path), dir);
    drop(listener);
    assert_eq!(
        r.connect().request(1, &Req::get("/")).text(),
        "Hello, world!\n"
    );
    assert!(r.log().contains("on 1 socket(s)"), "{}", r.log());
}

#[test]
fn unix_socket_is_not_world_writable_by_default() {
    use std::os::unix::fs::PermissionsExt;
    for (args, mode) in [(vec![], 0o660), (vec!["--socket-mode", "600"], 0o600)] {
        let r = Responder::fixtures(&args);
        let Addr::Unix(path) = &r.addr else {
            unreachable!()
        };
        let actual = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(actual, mode, "{args:?}: {actual:o}");
    }
}

#[test]
fn fcgi_web_server_addrs_restricts_tcp_peers() {
    let r = Responder::start_tcp(&hello(), &[("FCGI_WEB_SERVER_ADDRS", "10.9.9.9")]);
    let mut c = r.connect();
    let _ = c.send_request(1, &Req::get("/"));
    assert_eq!(
        c.expect_closed(TIMEOUT),
        [],
        "served a peer not in FCGI_WEB_SERVER_ADDRS"
    );
    assert!(
        r.wait_log("refused FastCGI connection from 127.0.0.1", TIMEOUT),
        "{}",
        r.log()
    );
    let r = Responder::start_tcp(
        &hello(),
        &[("FCGI_WEB_SERVER_ADDRS", "10.9.9.9, 127.0.0.1")],
    );
    assert_eq!(
        r.connect().request(1, &Req::get("/")).text(),
        "Hello, world!\n"
    );
}

#[test]
fn startup_failures_exit_with_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let bind = format!("unix:{}", dir.path().join("s.sock").display());
    let run = |args: &[&str]| {
        let out = Command::new(wsgi_fcgi())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let broken = app("broken_import.py").display().to_string();
    let (code, log) = run(&["--app", &broken, "--bind", &bind]);
    assert_eq!(code, Some(4), "{log}");
    assert!(
        log.contains("SECRET-IMPORT-DETAIL") && log.contains("failed to load"),
        "{log}"
    );
    let (code, log) = run(&["--app", &broken]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("no listening socket"), "{log}");
}

#[test]
fn forward_stderr_sends_wsgi_errors_as_fcgi_stderr() {
    for (args, forwarded) in [
        (vec![], ""),
        (vec!["--forward-stderr"], "ERRORS-STREAM-LINE\n"),
    ] {
        let r = Responder::fixtures(&[args.as_slice(), &["--threads", "1"]].concat());
        // (One thread: the requests after the first are made from its
        // environ template, which must not keep a request's stream — nor,
        // through it, the connection — alive.)
        for _ in 0..3 {
            let mut conn = r.connect();
            let out = conn.request(1, &Req::get("/errors"));
            assert_eq!(out.text(), "logged\n");
            assert_eq!(String::from_utf8_lossy(&out.stderr), forwarded, "{args:?}");
            assert!(
                matches!(conn.next(TIMEOUT), Next::Closed),
                "{args:?}: the connection stayed open after the response"
            );
            // Closed, not only half-closed: a write meets a closed socket.
            let closed = (0..50).any(|_| {
                let refused = conn.send(&record(STDIN, 1, b"")).is_err();
                if !refused {
                    std::thread::sleep(Duration::from_millis(20));
                }
                refused
            });
            assert!(
                closed,
                "{args:?}: something still holds the connection's socket"
            );
        }
        assert!(r.wait_log("ERRORS-STREAM-LINE", TIMEOUT), "{}", r.log());
    }
}

#[test]
fn repeated_binds_serve_together_and_graceful_timeout_bounds_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let unix = dir.path().join("a.sock");
    let tcp = free_addr();
    let v6 = match std::net::TcpListener::bind("[::1]:0") {
        Ok(l) => Some(l.local_addr().unwrap()),
        Err(e) => {
            skip(&format!("the [::1] bind: no IPv6 loopback here ({e})"));
            None
        }
    };
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.args([
        "--app",
        &app("fcgi_fixtures.py").display().to_string(),
        "--graceful-timeout",
        "0.5",
    ])
    .args([
        "--bind",
        &format!("unix:{}", unix.display()),
        "--bind",
        &tcp.to_string(),
    ])
    .stdin(Stdio::null());
    if let Some(v6) = v6 {
        cmd.args(["--bind", &v6.to_string()]);
    }
    let mut r = Responder::spawn(cmd, Addr::Unix(unix), dir);
    let sockets = if v6.is_some() { 3 } else { 2 };
    assert!(
        r.log().contains(&format!("on {sockets} socket(s)")),
        "{}",
        r.log()
    );
    for addr in [Some(Addr::Tcp(tcp)), v6.map(Addr::Tcp)]
        .into_iter()
        .flatten()
    {
        let out = addr.connect().unwrap().request(1, &Req::get("/empty"));
        assert_eq!(out.status(), 204, "{addr:?}");
    }
    // A request longer than --graceful-timeout is cut when it expires.
    let mut c = r.connect();
    let marker = r.path("started");
    c.send_request(
        1,
        &Req::get(&format!("/sleep?s=5&started={}", marker.display())),
    )
    .unwrap();
    assert!(wait_file(&marker, "started", Duration::from_secs(20)));
    let t = Instant::now();
    let status = r.terminate(Duration::from_secs(4));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "TERM waited {:?}",
        t.elapsed()
    );
    assert_eq!(status.code(), Some(0));
    assert!(c.response(1).closed);
    assert!(r.log().contains("still busy; closing them"), "{}", r.log());
}

#[test]
fn a_live_socket_path_is_refused_and_a_stale_one_replaced() {
    let mut first = Responder::fixtures(&[]);
    let Addr::Unix(path) = first.addr.clone() else {
        unreachable!()
    };
    let bind = format!("unix:{}", path.display());
    let out = Command::new(wsgi_fcgi())
        .args([
            "--app",
            &app("hello.py").display().to_string(),
            "--bind",
            &bind,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        first.connect().request(1, &Req::get("/empty")).status(),
        204
    );
    // Killed without cleaning up: the socket file stays, and is replaced.
    first.signal("KILL");
    first.wait_exit(TIMEOUT).unwrap();
    assert!(path.exists());
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.args([
        "--app",
        &app("hello.py").display().to_string(),
        "--bind",
        &bind,
    ])
    .stdin(Stdio::null());
    let second = Responder::spawn(cmd, Addr::Unix(path), tempfile::tempdir().unwrap());
    assert_eq!(
        second.connect().request(1, &Req::get("/")).text(),
        "Hello, world!\n"
    );
}

/// TERM to a single process whose only app thread is busy: the connections
/// waiting in its backlog are served before it exits, not reset (warm
/// mode's restart and idle exit rely on it), and its socket file is gone
/// as soon as the stop begins.
#[test]
fn a_stopping_process_serves_the_connections_in_its_backlog() {
    let mut r = Responder::fixtures(&["--threads", "1"]);
    let mut busy = r.connect();
    let started = r.path("started");
    let target = format!("/sleep?s=1&started={}", started.display());
    busy.send_request(1, &Req::get(&target)).unwrap();
    // Once the sleep runs, nobody accepts the next ones.
    assert!(wait_file(&started, "started", TIMEOUT), "{}", r.log());
    let mut waiting: Vec<Conn> = (0..3)
        .map(|_| {
            let mut c = r.connect();
            c.send_request(1, &Req::get("/empty")).unwrap();
            c
        })
        .collect();
    r.signal("TERM");
    assert!(
        wait_until_gone(&r.socket(), TIMEOUT),
        "the socket file outlived the stop's start"
    );
    assert_eq!(busy.response(1).status(), 200, "{}", r.log());
    for c in &mut waiting {
        assert_eq!(c.response(1).status(), 204, "{}", r.log());
    }
    let status = r.wait_exit(TIMEOUT).expect("exit after TERM");
    assert!(status.success(), "{status}: {}", r.log());
    assert!(
        r.log().contains("3 connection(s) waiting in the backlog"),
        "{}",
        r.log()
    );
}

fn wait_until_gone(path: &std::path::Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}
