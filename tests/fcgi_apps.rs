//! The PEP 3333 rules tests/cgi.rs checks for `wsgi-cgi`, checked again
//! through the real `wsgi-fcgi` responder with our raw FastCGI client
//! (tests/support/fcgi.rs): environ, wsgi.input, lazy headers, exc_info,
//! close(), file_wrapper, print(), bad status and headers, HEAD,
//! Content-Length; and the same routes under wsgiref's validator. Flask and
//! Django through both binaries are in tests/frameworks.rs.

use crate::support::fcgi;

use fcgi::*;

fn gateway() -> Responder {
    Responder::fixtures(&[])
}

/// One request on a fresh connection.
fn get(r: &Responder, req: Req) -> Response {
    r.connect().request(1, &req)
}

#[test]
fn hello_bytes_exactly() {
    let r = Responder::start(&["--app".into(), app("hello.py")], &[]);
    let out = get(&r, Req::get("/"));
    assert_eq!(
        out.stdout,
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, world!\n"
    );
    assert_eq!(out.end, Some((0, REQUEST_COMPLETE)));
    assert!(out.stdout_ended && out.stderr.is_empty());
}

#[test]
fn environ_keys_types_latin1_and_defaults() {
    let r = gateway();
    let req = Req::get("/environ?a=1&b=%C3%A9")
        .param("HTTP_HOST", "example.org")
        .param("HTTP_X_CUSTOM", "yes")
        .param("SCRIPT_NAME", "/mount")
        .param("HTTPS", "on")
        .param_bytes("HTTP_X_PATH", b"/caf\xc3\xa9");
    let env = get(&r, req).json();
    assert_eq!(env["wsgi.version"].to_string(), "[1,0]");
    assert_eq!(env["wsgi.url_scheme"], "https");
    assert_eq!(env["wsgi.multithread"], true);
    assert_eq!(env["wsgi.multiprocess"], false);
    assert_eq!(env["wsgi.run_once"], false);
    assert_eq!(env["wsgi.input_terminated"], true);
    assert_eq!(env["QUERY_STRING"], "a=1&b=%C3%A9");
    assert_eq!(env["SCRIPT_NAME"], "/mount");
    assert_eq!(env["PATH_INFO"], "/environ");
    assert_eq!(env["HTTP_X_CUSTOM"], "yes");
    assert_eq!(env["HTTP_X_PATH"], "/caf\u{c3}\u{a9}");
    assert_eq!(env["FCGI_ROLE"], "RESPONDER");
    assert_eq!(env["types"].to_string(), "[\"str\"]");
    assert!(env["CONTENT_LENGTH"].is_null());

    let req = Req::get("/environ")
        .unset("SERVER_NAME")
        .unset("SERVER_PORT")
        .unset("QUERY_STRING")
        .unset("SCRIPT_NAME")
        .unset("SERVER_PROTOCOL")
        .param("HTTP_HOST", "h.example:8080");
    let env = get(&r, req).json();
    assert_eq!(env["SERVER_NAME"], "h.example");
    assert_eq!(env["SERVER_PORT"], "80");
    assert_eq!(env["QUERY_STRING"], "");
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.0");
}

/// An app thread makes each environ as a copy of one it keeps (see
/// `python::environ::Template`): what an app does to its environ (a key
/// changed, added, deleted — as middleware does) never reaches the next
/// request, and requests that send other names, in turn on one thread, each
/// see exactly their own.
#[test]
fn an_environ_changed_by_the_app_never_reaches_the_next_request() {
    let r = Responder::fixtures(&["--threads", "1"]);
    let mut conn = r.connect();
    let first = conn
        .request(
            1,
            &Req::get("/environ?n=0")
                .param("HTTP_X_SAME", "a")
                .keep_conn(),
        )
        .json();
    for i in 1..40u32 {
        // Three kinds of request, in runs of three (a template is made for
        // the second of a run, the third is its copy): the first one's
        // names, one more name, and as many names as the first with one of
        // them another.
        let kind = (i / 3) % 3;
        let req = match kind {
            0 => Req::get(&format!("/environ?n={i}&mutate=1")).param("HTTP_X_SAME", "a"),
            1 => Req::get(&format!("/environ?n={i}"))
                .param("HTTP_X_SAME", "a")
                .param("HTTP_X_MORE", &i.to_string()),
            _ => Req::get(&format!("/environ?n={i}")).param("HTTP_X_OTHER", "a"),
        };
        let env = conn.request(1, &req.keep_conn()).json();
        let mutate = if kind == 0 { "&mutate=1" } else { "" };
        assert_eq!(env["QUERY_STRING"], format!("n={i}{mutate}"), "request {i}");
        assert_eq!(env["PATH_INFO"], "/environ", "request {i}");
        assert_eq!(env["X_ADDED"], serde_json::Value::Null, "request {i}");
        assert_eq!(env["wsgi.url_scheme"], "http", "request {i}");
        assert_eq!(
            env["wsgi.version"],
            serde_json::json!([1, 0]),
            "request {i}"
        );
        let (same, more, other) = match kind {
            0 => (
                serde_json::json!("a"),
                serde_json::Value::Null,
                serde_json::Value::Null,
            ),
            1 => (
                serde_json::json!("a"),
                serde_json::json!(i.to_string()),
                serde_json::Value::Null,
            ),
            _ => (
                serde_json::Value::Null,
                serde_json::Value::Null,
                serde_json::json!("a"),
            ),
        };
        assert_eq!(env["HTTP_X_SAME"], same, "request {i}");
        assert_eq!(env["HTTP_X_MORE"], more, "request {i}");
        assert_eq!(env["HTTP_X_OTHER"], other, "request {i}");
        // The same keys as the first request's, but for the headers sent.
        let mut keys: Vec<&String> = env.as_object().unwrap().keys().collect();
        let mut want: Vec<&String> = first.as_object().unwrap().keys().collect();
        keys.retain(|k| !k.starts_with("HTTP_X_"));
        want.retain(|k| !k.starts_with("HTTP_X_"));
        keys.sort();
        want.sort();
        assert_eq!(keys, want, "request {i}");
    }
}

/// The app threads reuse `str` objects for repeated environ keys and values
/// (see `app::StrCache`): every request must still see exactly its own
/// values — same key with changing values, same value under other keys,
/// non-ASCII bytes, lengths around the cache's limit — on one connection and
/// one thread.
#[test]
fn reused_environ_strings_never_leak_between_requests() {
    let r = Responder::fixtures(&["--threads", "1"]);
    let mut conn = r.connect();
    for i in 0..200u32 {
        let long = "v".repeat(60 + (i as usize % 10));
        let latin = [b'x', 0xe0 + (i % 16) as u8];
        let req = Req::get(&format!("/environ?n={}", i % 7))
            .param("HTTP_X_COUNTER", &i.to_string())
            .param("HTTP_X_SAME", if i % 2 == 0 { "even" } else { "odd" })
            .param("HTTP_X_LONG", &long)
            .param_bytes("HTTP_X_LATIN", &latin)
            .param(&format!("HTTP_X_KEY_{}", i % 5), "k")
            .keep_conn();
        let env = conn.request(1, &req).json();
        assert_eq!(env["HTTP_X_COUNTER"], i.to_string(), "request {i}");
        assert_eq!(env["HTTP_X_SAME"], if i % 2 == 0 { "even" } else { "odd" });
        assert_eq!(env["HTTP_X_LONG"], long.as_str());
        let expected: String = latin.iter().map(|&b| char::from(b)).collect();
        assert_eq!(env["HTTP_X_LATIN"], expected.as_str());
        assert_eq!(env["QUERY_STRING"], format!("n={}", i % 7));
        for k in 0..5 {
            let key = format!("HTTP_X_KEY_{k}");
            let want = if k == i % 5 {
                serde_json::json!("k")
            } else {
                serde_json::Value::Null
            };
            assert_eq!(env[key.as_str()], want, "request {i}, {key}");
        }
    }
}

#[test]
fn httpoxy_header_never_reaches_the_process_environment() {
    let env = get(
        &gateway(),
        Req::get("/environ").param("HTTP_PROXY", "http://evil:1"),
    )
    .json();
    assert_eq!(env["HTTP_PROXY"], "http://evil:1");
    assert!(env["os.environ.HTTP_PROXY"].is_null());
}

#[test]
fn input_semantics() {
    let r = gateway();
    // Never past CONTENT_LENGTH.
    let req = Req::post("/echo", "application/octet-stream", b"0123456789")
        .stdin(b"0123456789EXTRA-BYTES-NOT-PART-OF-THE-BODY");
    let out = get(&r, req);
    assert_eq!(out.body(), b"0123456789");
    assert_eq!(out.header("X-More").as_deref(), Some("0"));
    // A short body ends reads instead of hanging.
    let req = Req::get("/echo")
        .method("POST")
        .param("CONTENT_LENGTH", "1000")
        .stdin(b"only this");
    assert_eq!(get(&r, req).body(), b"only this");
    // read() without a size.
    let v = get(&r, Req::post("/read-all", "text/plain", &[b'x'; 300_000])).json();
    assert_eq!(
        (v["len"].as_u64(), v["again"].as_u64()),
        (Some(300_000), Some(0))
    );
    // readline, readline(size), readlines(hint), iteration.
    let body = b"first\nabcdef\nhint1\nhint2\nit1\nit2";
    let v = get(&r, Req::post("/lines", "text/plain", body).stdin_chunk(3)).json();
    assert_eq!(v["first"], "first\n");
    assert_eq!(v["limited"], "abc");
    assert_eq!(v["rest_of_line"], "def\n");
    assert_eq!(v["hinted"].to_string(), "[\"hint1\\n\"]");
    assert_eq!(
        v["iterated"].to_string(),
        "[\"hint2\\n\",\"it1\\n\",\"it2\"]"
    );
    assert_eq!(v["after"], "");
}

#[test]
fn absent_content_length_reads_the_terminated_stdin_stream() {
    // Unlike CGI (RFC 3875 §4.1.2: no CONTENT_LENGTH, no body), FastCGI's
    // STDIN stream is explicitly terminated, so a body sent without a length
    // (nginx `fastcgi_request_buffering off` with a chunked request) reaches
    // the app: wsgi.input_terminated is true.
    let r = gateway();
    let v = get(&r, Req::get("/read-all").method("POST").stdin(b"no length")).json();
    assert_eq!(v["len"], 9);
}

/// With --stream-request-body, wsgi.input streams STDIN as it arrives: the
/// app answers after reading 15 of 1000 announced bytes, before the rest
/// was even sent.
#[test]
fn with_stream_request_body_the_app_starts_before_the_body_is_complete() {
    let r = Responder::fixtures(&["--stream-request-body"]);
    let mut c = r.connect();
    let req = Req::get("/echo?size=5")
        .method("POST")
        .param("CONTENT_LENGTH", "1000");
    c.send(&req.head_wire(1)).unwrap();
    c.send_record(STDIN, 1, b"first-fifteen..").unwrap();
    let out = c.response(1);
    assert_eq!(out.body(), b"first");
    assert_eq!(out.header("X-More").as_deref(), Some("10"));
}

#[test]
fn invalid_content_length_is_a_400_with_app_status_8() {
    let r = gateway();
    for bad in ["abc", "-5", "1e3"] {
        let out = get(
            &r,
            Req::get("/echo")
                .method("POST")
                .param("CONTENT_LENGTH", bad),
        );
        assert_eq!(out.status(), 400, "{bad}");
        assert_eq!(out.end, Some((8, REQUEST_COMPLETE)), "{bad}");
    }
    assert!(r.log().contains("invalid CONTENT_LENGTH"), "{}", r.log());
}

#[test]
fn write_callable_lazy_headers_and_lazy_start_response() {
    let r = gateway();
    assert_eq!(
        get(&r, Req::get("/write")).body(),
        b"written then returned\n"
    );
    assert_eq!(get(&r, Req::get("/lazy")).body(), b"lazy body\n");
    let out = get(&r, Req::get("/lazy-start"));
    assert_eq!((out.status(), out.body()), (201, &b"created\n"[..]));
}

#[test]
fn exc_info_before_and_after_headers() {
    let r = gateway();
    let out = get(&r, Req::get("/exc-before"));
    assert_eq!(out.status(), 503);
    assert_eq!(out.header("X-Old"), None);
    assert_eq!(out.app_status(), 0);
    // After the headers, an error cuts the response short: the connection
    // closes without END_REQUEST, so no web server takes the part for the
    // whole (nginx: "upstream prematurely closed", a broken response).
    let out = get(&r, Req::get("/exc-after"));
    assert_eq!((out.status(), out.body()), (200, &b"partial "[..]));
    assert_eq!((out.end, out.closed), (None, true), "{out:?}");
    assert!(!out.text().contains("SECRET"));
    assert!(r.log().contains("SECRET-AFTER-HEADERS"), "{}", r.log());
    assert!(
        r.wait_log(
            "GET /exc-after: the app failed after its response began",
            TIMEOUT
        ),
        "{}",
        r.log()
    );
    // The worker goes on.
    assert_eq!(get(&r, Req::get("/empty")).status(), 204);
}

#[test]
fn close_is_called_on_success_and_on_error() {
    let r = gateway();
    // (A failed iteration: cut short, no END_REQUEST.)
    for (fail, body, end) in [
        ("0", &b"one two\n"[..], Some((0, REQUEST_COMPLETE))),
        ("1", b"one ", None),
    ] {
        let marker = r.path(&format!("closed-{fail}"));
        let q = format!("/close?marker={}&fail={fail}", marker.display());
        let out = get(&r, Req::get(&q));
        assert_eq!((out.body(), out.end), (body, end), "fail={fail}");
        assert!(wait_file(&marker, "closed", TIMEOUT), "fail={fail}");
    }
}

#[test]
fn file_wrapper_sends_the_file() {
    let r = gateway();
    let path = r.path("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let q = |extra: &str| format!("/file?path={}{extra}", path.display());
    assert!(get(&r, Req::get(&q(""))).body() == &data[..]);
    assert!(get(&r, Req::get(&q("&skip=1000"))).body() == &data[1000..]);
    assert!(get(&r, Req::get(&q("&length=5000"))).body() == &data[..5000]);
    let out = get(&r, Req::get(&q("")).method("HEAD"));
    assert_eq!(
        (out.status(), out.body().len(), out.app_status()),
        (200, 0, 0)
    );
}

#[test]
fn print_and_fd1_never_corrupt_the_response() {
    let r = gateway();
    let out = get(&r, Req::get("/print"));
    assert_eq!(out.body(), b"clean\n");
    assert!(out.stderr.is_empty());
    for line in ["THIS-GOES-TO-STDERR", "ALSO-STDERR", "FD1-GOES-TO-STDERR"] {
        assert!(
            r.wait_log(line, TIMEOUT),
            "{line} not in the log:\n{}",
            r.log()
        );
    }
}

fn assert_clean_500(out: &Response, what: &str) {
    assert_eq!(out.status(), 500, "{what}");
    assert_eq!(out.end, Some((5, REQUEST_COMPLETE)), "{what}");
    let text = out.text();
    assert!(text.contains("Internal Server Error"), "{what}: {text}");
    assert!(
        !text.contains("SECRET") && !text.contains("Traceback"),
        "{what}: {text}"
    );
    assert_eq!(
        out.header("Content-Length"),
        Some(out.body().len().to_string())
    );
}

#[test]
fn app_failure_before_headers_is_a_generic_500_with_app_status_5() {
    let r = gateway();
    for route in ["/raise", "/no-start", "/non-bytes"] {
        assert_clean_500(&get(&r, Req::get(route)), route);
    }
    let log = r.log();
    assert!(
        log.contains("Traceback") && log.contains("SECRET-TRACEBACK-DETAIL"),
        "{log}"
    );
    assert!(log.contains("before calling start_response"), "{log}");
}

#[test]
fn malformed_status_and_headers_are_500s() {
    let r = gateway();
    for s in ["nocode", "short", "crlf", "noreason"] {
        let out = get(&r, Req::get(&format!("/bad-status?s={s}")));
        assert_clean_500(&out, s);
        assert!(!out.stdout.windows(10).any(|w| w == b"X-Injected"), "{s}");
    }
    for h in ["crlf", "lf", "nonlatin", "name", "bytes"] {
        let out = get(&r, Req::get(&format!("/bad-header?h={h}")));
        assert_clean_500(&out, h);
        assert!(!out.stdout.windows(8).any(|w| w == b"injected"), "{h}");
    }
    assert!(r.log().contains("Traceback"), "{}", r.log());
}

#[test]
fn response_rules_empty_too_long_hop_head_latin1() {
    let r = gateway();
    assert_eq!(
        get(&r, Req::get("/empty")).stdout,
        b"Status: 204 No Content\r\n\r\n"
    );
    assert_eq!(get(&r, Req::get("/too-long")).body(), b"abc");
    assert!(
        r.wait_log("more than its Content-Length", TIMEOUT),
        "{}",
        r.log()
    );
    let out = get(&r, Req::get("/hop"));
    assert_eq!((out.status(), out.header("Connection")), (200, None));
    let out = get(&r, Req::get("/head").method("HEAD"));
    assert_eq!(out.header("Content-Length").as_deref(), Some("26"));
    assert_eq!(
        (out.status(), out.body().len(), out.app_status()),
        (200, 0, 0)
    );
    let out = get(&r, Req::get("/latin1-header"));
    assert!(out.stdout.windows(12).any(|w| w == b"X-Name: caf\xe9"));
}

/// Every well-behaved route, with the app wrapped in wsgiref.validate's
/// validator (warnings are errors): nothing may trip it.
#[test]
fn validator_raises_nothing() {
    let r = Responder::start(
        &[
            "--app".into(),
            app("validated.py"),
            "--pythonpath".into(),
            app(""),
        ],
        &[],
    );
    let file = r.path("f");
    std::fs::write(&file, b"file contents").unwrap();
    let marker = r.path("m");
    let cases = [
        Req::get("/environ"),
        Req::post("/echo", "text/plain", b"body bytes"),
        Req::post("/lines", "text/plain", b"a\nbcdef\nc\nd\ne"),
        Req::get("/write"),
        Req::get("/lazy"),
        Req::get("/lazy-start"),
        Req::get("/exc-before"),
        Req::get("/empty"),
        Req::get("/head").method("HEAD"),
        Req::get("/latin1-header"),
        Req::get("/print"),
        Req::get(&format!("/close?marker={}", marker.display())),
        Req::get(&format!("/file?path={}", file.display())),
    ];
    for req in &cases {
        let out = r.connect().request(1, req);
        let path = String::from_utf8_lossy(
            &req.params
                .iter()
                .find(|(k, _)| k == b"PATH_INFO")
                .unwrap()
                .1,
        )
        .into_owned();
        assert_ne!(
            out.status(),
            500,
            "{path}: validator complained:\n{}",
            r.log()
        );
        assert_eq!(out.app_status(), 0, "{path}: {}", r.log());
    }
    assert!(!r.log().contains("Traceback"), "{}", r.log());
    // The validator is live: a route that breaks PEP 3333 trips it.
    assert_eq!(get(&r, Req::get("/non-bytes")).status(), 500);
    assert!(r.wait_log("AssertionError", TIMEOUT), "{}", r.log());
}
