//! The real `wsgi-cgi` binary, run with a CGI environment and stdin: every
//! PEP 3333 / RFC 3875 rule the gateway promises, checked on the bytes it
//! prints. Fixture apps live in tests/apps.

use crate::support;

use support::{Cgi, app};

fn gateway() -> std::path::PathBuf {
    app("gateway.py")
}

fn json(out: &support::CgiOutput) -> serde_json::Value {
    serde_json::from_slice(&out.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} / stderr: {}", out.text(), out.stderr))
}

/// The demo app (a dump of the request's environment) is for a terminal:
/// the default without a web server, or asked for by name (`--app demo`,
/// `WSGI_APP=demo`). Started by a web server with no app configured (under
/// suEXEC `SetEnv WSGI_APP` never arrives), the answer is a 500 and a log
/// line naming suEXEC — never the demo.
#[test]
fn demo_app_only_in_a_terminal_or_by_name() {
    for out in [
        Cgi::get("/").unset("GATEWAY_INTERFACE").run(),
        Cgi::get("/").arg("--app").arg("demo").run(),
        Cgi::get("/").env("WSGI_APP", "demo").run(),
    ] {
        assert_eq!(out.exit, 0, "{}", out.stderr);
        assert_eq!(out.status, 200);
        assert!(out.text().starts_with("Hello from wsgi-gateway!"));
        assert!(out.text().contains("wsgi.run_once = True"));
    }
    let out = Cgi::get("/").run();
    assert_eq!((out.status, out.exit), (500, 3), "{}", out.stderr);
    assert!(!out.text().contains("wsgi-gateway!"), "{}", out.text());
    assert!(out.stderr.contains("suEXEC"), "{}", out.stderr);
    assert!(
        out.stderr.contains("no application configured"),
        "{}",
        out.stderr
    );
}

#[test]
fn hello_bytes_exactly() {
    let out = Cgi::get("/").app(app("hello.py")).run();
    assert_eq!(
        out.raw,
        b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, world!\n"
    );
    assert_eq!(out.exit, 0);
}

#[test]
fn environ_keys_and_types() {
    let out = Cgi::get("/environ")
        .app(gateway())
        .env("QUERY_STRING", "a=1&b=%C3%A9")
        .env("HTTP_HOST", "example.org")
        .env("HTTP_X_CUSTOM", "yes")
        .env("SCRIPT_NAME", "/mount")
        .env("HTTPS", "on")
        .run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    let env = json(&out);
    assert_eq!(env["wsgi.version"].to_string(), "[1,0]");
    assert_eq!(
        env["wsgi.url_scheme"].as_str().unwrap_or("<missing>"),
        "https"
    );
    assert_eq!(env["wsgi.multithread"].to_string(), "false");
    assert_eq!(env["wsgi.multiprocess"].to_string(), "true");
    assert_eq!(env["wsgi.run_once"].to_string(), "true");
    assert_eq!(env["wsgi.input_terminated"].to_string(), "true");
    assert_eq!(
        env["QUERY_STRING"].as_str().unwrap_or("<missing>"),
        "a=1&b=%C3%A9"
    );
    assert_eq!(env["SCRIPT_NAME"].as_str().unwrap_or("<missing>"), "/mount");
    assert_eq!(env["PATH_INFO"].as_str().unwrap_or("<missing>"), "/environ");
    assert_eq!(env["HTTP_X_CUSTOM"].as_str().unwrap_or("<missing>"), "yes");
    assert_eq!(env["types"].to_string(), "[\"str\"]");
    assert!(env["CONTENT_LENGTH"].is_null());
}

#[test]
fn non_ascii_path_is_latin1_native_string() {
    let out = Cgi::get("/environ").app(gateway()).run();
    assert_eq!(out.status, 200);
    // PATH_INFO "/caf\xc3\xa9" must arrive as the latin-1 decoding of those bytes.
    let out2 = Cgi::get("")
        .env_bytes("PATH_INFO", b"/environ")
        .env_bytes("HTTP_X_PATH", b"/caf\xc3\xa9")
        .app(gateway())
        .run();
    let env = json(&out2);
    assert_eq!(
        env["HTTP_X_PATH"].as_str().unwrap_or("<missing>"),
        "/caf\u{c3}\u{a9}"
    );
}

#[test]
fn missing_variables_get_defaults() {
    let out = Cgi::get("/environ")
        .unset("SERVER_NAME")
        .unset("SERVER_PORT")
        .unset("QUERY_STRING")
        .unset("SCRIPT_NAME")
        .unset("SERVER_PROTOCOL")
        .env("HTTP_HOST", "h.example:8080")
        .app(gateway())
        .run();
    let env = json(&out);
    assert_eq!(
        env["SERVER_NAME"].as_str().unwrap_or("<missing>"),
        "h.example"
    );
    assert_eq!(env["SERVER_PORT"].as_str().unwrap_or("<missing>"), "80");
    assert_eq!(env["QUERY_STRING"].as_str().unwrap_or("<missing>"), "");
    assert_eq!(env["SCRIPT_NAME"].as_str().unwrap_or("<missing>"), "");
    assert_eq!(
        env["SERVER_PROTOCOL"].as_str().unwrap_or("<missing>"),
        "HTTP/1.0"
    );
}

#[test]
fn httpoxy_header_never_reaches_the_process_environment() {
    let out = Cgi::get("/environ")
        .env("HTTP_PROXY", "http://evil:1")
        .app(gateway())
        .run();
    let env = json(&out);
    assert_eq!(
        env["HTTP_PROXY"].as_str().unwrap_or("<missing>"),
        "http://evil:1"
    );
    assert!(env["os.environ.HTTP_PROXY"].is_null());
}

#[test]
fn input_reads_never_pass_content_length() {
    let out = Cgi::get("/echo")
        .method("POST")
        .body("application/octet-stream", b"0123456789")
        .stdin(b"0123456789EXTRA-BYTES-NOT-PART-OF-THE-BODY")
        .app(gateway())
        .run();
    assert_eq!(out.body, b"0123456789");
    assert_eq!(out.header("X-More"), Some("0"));
}

#[test]
fn short_body_ends_reads_instead_of_hanging() {
    let out = Cgi::get("/echo")
        .method("POST")
        .env("CONTENT_LENGTH", "1000")
        .stdin(b"only this")
        .app(gateway())
        .run();
    assert_eq!(out.status, 200);
    assert_eq!(out.body, b"only this");
}

#[test]
fn read_without_size_reads_the_whole_body() {
    let body = vec![b'x'; 300_000];
    let out = Cgi::get("/read-all")
        .method("POST")
        .body("text/plain", &body)
        .app(gateway())
        .run();
    let v = json(&out);
    assert_eq!(v["len"].to_string(), "300000");
    assert_eq!(v["again"].to_string(), "0");
}

#[test]
fn absent_content_length_means_no_body() {
    let out = Cgi::get("/read-all")
        .method("POST")
        .stdin(b"ignored")
        .app(gateway())
        .run();
    assert_eq!(json(&out)["len"].to_string(), "0");
}

/// Apache mod_cgi/mod_cgid with a chunked request: no CONTENT_LENGTH, the
/// decoded body on stdin. It is read whole (in memory, or spilled to a
/// temporary file past 1 MiB) and the app gets it with its CONTENT_LENGTH.
#[test]
fn a_chunked_body_without_content_length_reaches_the_app() {
    for size in [5usize, 3 * 1024 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let out = Cgi::get("/echo")
            .method("POST")
            .env("CONTENT_TYPE", "application/octet-stream")
            .env("HTTP_TRANSFER_ENCODING", "chunked")
            .stdin(&body)
            .app(gateway())
            .run();
        assert_eq!(out.status, 200, "{size}: {}", out.stderr);
        assert!(out.body == body, "{size}: the body changed on its way");
    }
    // The app sees the measured length, and no Transfer-Encoding.
    let out = Cgi::get("/environ")
        .method("POST")
        .env("HTTP_TRANSFER_ENCODING", "chunked")
        .stdin(b"0123456789")
        .app(gateway())
        .run();
    let v = json(&out);
    assert_eq!(v["CONTENT_LENGTH"].as_str(), Some("10"), "{v}");
    assert!(v["HTTP_TRANSFER_ENCODING"].is_null(), "{v}");
}

/// `--max-body-size` (also `WSGI_MAX_BODY_SIZE`, script key
/// `max-body-size`): a declared length over it, or a chunked body growing
/// past it, is answered 413 (exit 8) before the app runs.
#[test]
fn max_body_size_refuses_large_bodies_with_413() {
    let declared = Cgi::get("/read-all")
        .method("POST")
        .body("text/plain", &[b'x'; 2000])
        .arg("--max-body-size")
        .arg("1000")
        .app(gateway())
        .run();
    assert_eq!(
        (declared.status, declared.exit),
        (413, 8),
        "{}",
        declared.stderr
    );
    assert!(
        declared
            .stderr
            .contains("over --max-body-size (1000 bytes)"),
        "{}",
        declared.stderr
    );
    let chunked = Cgi::get("/read-all")
        .method("POST")
        .env("HTTP_TRANSFER_ENCODING", "chunked")
        .env("WSGI_MAX_BODY_SIZE", "1000")
        .stdin(&[b'x'; 2000])
        .app(gateway())
        .run();
    assert_eq!(
        (chunked.status, chunked.exit),
        (413, 8),
        "{}",
        chunked.stderr
    );
    let within = Cgi::get("/read-all")
        .method("POST")
        .env("HTTP_TRANSFER_ENCODING", "chunked")
        .env("WSGI_MAX_BODY_SIZE", "1000")
        .stdin(&[b'x'; 1000])
        .app(gateway())
        .run();
    assert_eq!(within.status, 200, "{}", within.stderr);
    assert_eq!(json(&within)["len"].to_string(), "1000");
}

#[test]
fn readline_readlines_and_iteration() {
    let out = Cgi::get("/lines")
        .method("POST")
        .body("text/plain", b"first\nabcdef\nhint1\nhint2\nit1\nit2")
        .app(gateway())
        .run();
    let v = json(&out);
    assert_eq!(v["first"].as_str().unwrap_or("<missing>"), "first\n");
    assert_eq!(v["limited"].as_str().unwrap_or("<missing>"), "abc");
    assert_eq!(v["rest_of_line"].as_str().unwrap_or("<missing>"), "def\n");
    assert_eq!(v["hinted"].to_string(), "[\"hint1\\n\"]");
    assert_eq!(
        v["iterated"].to_string(),
        "[\"hint2\\n\",\"it1\\n\",\"it2\"]"
    );
    assert_eq!(v["after"].as_str().unwrap_or("<missing>"), "");
}

#[test]
fn invalid_content_length_is_a_400() {
    for bad in ["abc", "-5", "1e3"] {
        let out = Cgi::get("/echo")
            .method("POST")
            .env("CONTENT_LENGTH", bad)
            .app(gateway())
            .run();
        assert_eq!(out.status, 400, "{bad}: {}", out.stderr);
        assert_eq!(out.exit, 8);
        assert!(out.stderr.contains("invalid CONTENT_LENGTH"));
    }
}

#[test]
fn write_callable_then_iterable() {
    let out = Cgi::get("/write").app(gateway()).run();
    assert_eq!(out.body, b"written then returned\n");
}

#[test]
fn lazy_headers_and_lazy_start_response() {
    let out = Cgi::get("/lazy").app(gateway()).run();
    assert_eq!(out.body, b"lazy body\n");
    let out = Cgi::get("/lazy-start").app(gateway()).run();
    assert_eq!(out.status, 201);
    assert_eq!(out.body, b"created\n");
}

#[test]
fn exc_info_replaces_headers_before_they_are_sent() {
    let out = Cgi::get("/exc-before").app(gateway()).run();
    assert_eq!(out.status, 503);
    assert_eq!(out.header("X-Old"), None);
    assert_eq!(out.exit, 0);
}

#[test]
fn exc_info_after_headers_reraises_and_truncates() {
    let out = Cgi::get("/exc-after").app(gateway()).run();
    assert_eq!(out.status, 200);
    assert_eq!(out.body, b"partial ");
    assert_eq!(out.exit, 6);
    assert!(out.stderr.contains("SECRET-AFTER-HEADERS"));
    assert!(!out.text().contains("SECRET"));
}

#[test]
fn close_is_called_on_success_and_on_error() {
    for fail in ["0", "1"] {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("closed");
        let out = Cgi::get("/close")
            .env(
                "QUERY_STRING",
                &format!("marker={}&fail={fail}", marker.display()),
            )
            .app(gateway())
            .run();
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "closed",
            "fail={fail}"
        );
        if fail == "1" {
            assert_eq!(out.body, b"one ");
            assert_eq!(out.exit, 6);
        } else {
            assert_eq!(out.body, b"one two\n");
        }
    }
}

#[test]
fn file_wrapper_sends_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let q = |extra: &str| format!("path={}{extra}", path.display());
    let out = Cgi::get("/file")
        .env("QUERY_STRING", &q(""))
        .app(gateway())
        .run();
    assert_eq!(out.body, data);
    let out = Cgi::get("/file")
        .env("QUERY_STRING", &q("&skip=1000"))
        .app(gateway())
        .run();
    assert_eq!(out.body, &data[1000..]);
    let out = Cgi::get("/file")
        .env("QUERY_STRING", &q("&length=5000"))
        .app(gateway())
        .run();
    assert_eq!(out.body, &data[..5000]);
    let out = Cgi::get("/file")
        .method("HEAD")
        .env("QUERY_STRING", &q(""))
        .app(gateway())
        .run();
    assert!(out.body.is_empty());
    assert_eq!(out.status, 200);
}

#[test]
fn print_and_fd1_never_corrupt_the_response() {
    let out = Cgi::get("/print").app(gateway()).run();
    assert_eq!(out.body, b"clean\n");
    assert!(out.stderr.contains("THIS-GOES-TO-STDERR"));
    assert!(out.stderr.contains("ALSO-STDERR"));
    assert!(out.stderr.contains("FD1-GOES-TO-STDERR"));
}

fn assert_clean_500(out: &support::CgiOutput, exit: i32) {
    assert_eq!(out.status, 500, "stderr: {}", out.stderr);
    assert_eq!(out.exit, exit, "stderr: {}", out.stderr);
    let text = out.text();
    assert!(text.contains("Internal Server Error"));
    assert!(
        !text.contains("SECRET") && !text.contains("Traceback"),
        "{text}"
    );
    assert_eq!(
        out.header("Content-Length"),
        Some(&*out.body.len().to_string())
    );
}

#[test]
fn malformed_status_is_a_500() {
    for s in ["nocode", "short", "crlf", "noreason"] {
        let out = Cgi::get("/bad-status")
            .env("QUERY_STRING", &format!("s={s}"))
            .app(gateway())
            .run();
        assert_clean_500(&out, 5);
        assert!(!out.raw.windows(10).any(|w| w == b"X-Injected"), "{s}");
    }
}

#[test]
fn header_injection_and_bad_headers_are_refused() {
    for h in ["crlf", "lf", "nonlatin", "name", "bytes"] {
        let out = Cgi::get("/bad-header")
            .env("QUERY_STRING", &format!("h={h}"))
            .app(gateway())
            .run();
        assert_clean_500(&out, 5);
        assert!(!out.raw.windows(8).any(|w| w == b"injected"), "{h}");
        assert!(out.stderr.contains("Traceback"), "{h}: {}", out.stderr);
    }
}

#[test]
fn app_errors_are_generic_500s_with_traceback_on_stderr() {
    let out = Cgi::get("/raise").app(gateway()).run();
    assert_clean_500(&out, 5);
    assert!(out.stderr.contains("SECRET-TRACEBACK-DETAIL"));
    assert!(out.stderr.contains("Traceback"));
    for route in ["/no-start", "/non-bytes"] {
        let out = Cgi::get(route).app(gateway()).run();
        assert_clean_500(&out, 5);
    }
}

#[test]
fn import_failure_is_a_500_with_exit_4() {
    let out = Cgi::get("/").app(app("broken_import.py")).run();
    assert_clean_500(&out, 4);
    assert!(out.stderr.contains("SECRET-IMPORT-DETAIL"));
    let out = Cgi::get("/").app("no_such_module_here:app").run();
    assert_clean_500(&out, 4);
    assert!(out.stderr.contains("ModuleNotFoundError"));
}

/// A factory with literal arguments (gunicorn's form, as pypiserver's docs
/// write `pypiserver:app(root="/srv/pkgs")`): a `/` in them does not make the
/// spec a file path.
#[test]
fn a_factory_with_literal_arguments() {
    let out = Cgi::get("/")
        .arg("--pythonpath")
        .arg(support::root().join("tests/apps"))
        .app(r#"factory:create_with("hi", path="/srv/x", times=2)"#)
        .run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    assert_eq!(out.text(), "hi /srv/x\nhi /srv/x\n");
    // Not literals: refused, saying so.
    let out = Cgi::get("/")
        .arg("--pythonpath")
        .arg(support::root().join("tests/apps"))
        .app("factory:create_with(open('/etc/passwd'))")
        .run();
    assert_clean_500(&out, 4);
    assert!(
        out.stderr.contains("must be Python literals"),
        "{}",
        out.stderr
    );
}

/// Loading mistakes name their fix: a file whose callable is not called
/// `application` gets "did you mean file.py:app"; an app file named like
/// the package it imports is told to rename itself.
#[test]
fn load_errors_suggest_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let flaskish = dir.path().join("flaskapp.py");
    std::fs::write(
        &flaskish,
        "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n",
    )
    .unwrap();
    let out = Cgi::get("/").app(&flaskish).run();
    assert_clean_500(&out, 4);
    assert!(
        out.stderr
            .contains(&format!("did you mean {}:app?", flaskish.display())),
        "{}",
        out.stderr
    );
    let shadow = dir.path().join("json.py");
    std::fs::write(&shadow, "import json.decoder\napplication = None\n").unwrap();
    let out = Cgi::get("/").app(&shadow).run();
    assert_clean_500(&out, 4);
    assert!(
        out.stderr
            .contains("has the name of the module it imports (`json`)"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_configuration_is_a_500_with_exit_3() {
    let out = Cgi::get("/")
        .arg("--app")
        .arg("demo")
        .arg("--venv")
        .arg("/nonexistent")
        .run();
    assert_clean_500(&out, 3);
    assert!(out.stderr.contains("not a virtualenv"));
    let out = Cgi::get("/").app("not a spec!").run();
    assert_clean_500(&out, 3);
}

#[test]
fn venv_of_another_python_version_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pyvenv.cfg"),
        "home = /usr/bin\nversion = 2.7.18\n",
    )
    .unwrap();
    let out = Cgi::get("/")
        .arg("--app")
        .arg("demo")
        .arg("--venv")
        .arg(dir.path())
        .run();
    assert_clean_500(&out, 3);
    assert!(
        out.stderr.contains("was created with Python 2.7"),
        "{}",
        out.stderr
    );
}

#[test]
fn empty_body_sends_headers_at_the_end() {
    let out = Cgi::get("/empty").app(gateway()).run();
    assert_eq!(out.raw, b"Status: 204 No Content\r\n\r\n");
}

#[test]
fn excess_body_is_cut_at_content_length() {
    let out = Cgi::get("/too-long").app(gateway()).run();
    assert_eq!(out.body, b"abc");
    assert!(out.stderr.contains("more than its Content-Length"));
}

#[test]
fn hop_by_hop_headers_are_dropped() {
    let out = Cgi::get("/hop").app(gateway()).run();
    assert_eq!(out.status, 200);
    assert_eq!(out.header("Connection"), None);
    // And the log says so (PEP 3333 forbids them: the app has a bug).
    assert!(
        out.stderr
            .contains("warning: dropped hop-by-hop header \"Connection\""),
        "{}",
        out.stderr
    );
}

/// A bad command line is exit status 2 (clap's usage error), with the
/// usage on stderr and nothing on stdout.
#[test]
fn an_unknown_flag_is_exit_status_2() {
    let out = std::process::Command::new(support::wsgi_cgi())
        .arg("--no-such-flag")
        .env_remove("GATEWAY_INTERFACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn head_sends_headers_but_no_body() {
    let out = Cgi::get("/head").method("HEAD").app(gateway()).run();
    assert_eq!(out.status, 200);
    assert_eq!(out.header("Content-Length"), Some("26"));
    assert!(out.body.is_empty());
    assert_eq!(out.exit, 0, "{}", out.stderr);
}

#[test]
fn latin1_header_values_go_out_as_latin1_bytes() {
    let out = Cgi::get("/latin1-header").app(gateway()).run();
    assert!(out.raw.windows(12).any(|w| w == b"X-Name: caf\xe9"));
}

#[test]
fn factory_and_module_specs() {
    let out = Cgi::get("/")
        .app("factory:create_app()")
        .arg("--pythonpath")
        .arg(app(""))
        .run();
    assert_eq!(out.body, b"made by a factory\n", "{}", out.stderr);
    let out = Cgi::get("/").app("hello").arg("--chdir").arg(app("")).run();
    assert_eq!(out.body, b"Hello, world!\n", "{}", out.stderr);
    let out = Cgi::get("/")
        .env("WSGI_APP", "hello:application")
        .env("WSGI_PYTHONPATH", app("").to_str().unwrap())
        .run();
    assert_eq!(out.body, b"Hello, world!\n", "{}", out.stderr);
}

#[test]
fn script_mode_reads_toml_after_the_shebang() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.cgi");
    std::fs::write(
        &script,
        format!(
            "#!{}\n# the app, relative to this file's directory\napp = \"apps/hello.py\"\n",
            support::wsgi_cgi().display()
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(support::root().join("tests/apps"), dir.path().join("apps"))
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Run the script itself: the kernel execs wsgi-cgi with the script as argv[1].
    let out = Cgi::get("/").run_program(&script);
    assert_eq!(out.body, b"Hello, world!\n", "{}", out.stderr);
    // A '='-less query under a server that adds no argv words (lighttpd):
    // the script is still the script.
    let out = Cgi::get("/")
        .env("QUERY_STRING", "x")
        .env("SCRIPT_FILENAME", script.to_str().unwrap())
        .run_program(&script);
    assert_eq!(out.body, b"Hello, world!\n", "{}", out.stderr);
}

#[test]
fn query_words_never_become_flags() {
    // Apache passes an '='-less query string as argv words (RFC 3875 §4.4).
    let out = Cgi::get("/environ")
        .app(gateway())
        .arg("--venv")
        .arg("/tmp/evil")
        .env("QUERY_STRING", "--venv+/tmp/evil")
        .run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    // Arguments that could be query words but do not match: refused.
    let refused = Cgi::get("/environ")
        .app(gateway())
        .env("QUERY_STRING", "something")
        .run();
    assert_eq!(refused.status, 500, "{}", refused.stderr);
    assert_eq!(refused.exit, 3);
    assert!(refused.stderr.contains("RFC 3875"));
    assert_eq!(
        json(&out)["QUERY_STRING"].as_str().unwrap_or("<missing>"),
        "--venv+/tmp/evil"
    );
}

/// Every well-behaved route, with the app wrapped in wsgiref.validate's
/// validator (warnings are errors): the gateway must not trip it.
#[test]
fn validator_raises_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("m");
    let file = dir.path().join("f");
    std::fs::write(&file, b"file contents").unwrap();
    let cases: Vec<(&str, &str, &str, Option<&[u8]>)> = vec![
        ("/environ", "GET", "", None),
        ("/echo", "POST", "", Some(b"body bytes")),
        ("/lines", "POST", "", Some(b"a\nbcdef\nc\nd\ne")),
        ("/write", "GET", "", None),
        ("/lazy", "GET", "", None),
        ("/lazy-start", "GET", "", None),
        ("/exc-before", "GET", "", None),
        ("/empty", "GET", "", None),
        ("/head", "HEAD", "", None),
        ("/latin1-header", "GET", "", None),
        ("/print", "GET", "", None),
    ];
    let close_q = format!("marker={}", marker.display());
    let file_q = format!("path={}", file.display());
    let mut cases = cases;
    cases.push(("/close", "GET", &close_q, None));
    cases.push(("/file", "GET", &file_q, None));
    for (path, method, query, body) in cases {
        let mut req = Cgi::get(path)
            .method(method)
            .env("QUERY_STRING", query)
            .app(app("validated.py"))
            .arg("--pythonpath")
            .arg(app(""));
        if let Some(body) = body {
            req = req.body("text/plain", body);
        }
        let out = req.run();
        assert_ne!(
            out.status, 500,
            "{path}: validator complained: {}",
            out.stderr
        );
        assert_eq!(out.exit, 0, "{path}: {}", out.stderr);
        assert!(!out.stderr.contains("Traceback"), "{path}: {}", out.stderr);
    }
    // The validator is live: a route that breaks PEP 3333 trips it.
    let out = Cgi::get("/non-bytes").app(app("validated.py")).run();
    assert_eq!(out.status, 500);
    assert!(out.stderr.contains("AssertionError"), "{}", out.stderr);
}

/// The settings table is the single source: every flag and variable is in
/// `--help` and in the README.
#[test]
fn help_and_readme_cover_the_settings_table() {
    let out = std::process::Command::new(support::wsgi_cgi())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let readme = std::fs::read_to_string(support::root().join("README.md")).unwrap();
    for s in wsgi_gateway::cgi::config::SETTINGS {
        for word in [s.flag, s.env] {
            assert!(help.contains(word), "--help lacks {word}");
            assert!(readme.contains(word), "README lacks {word}");
        }
    }
    assert!(help.contains("Exit status"));
}

/// The web server goes away mid-response: the app's iterable is closed, the
/// exit status says so, nothing panics.
#[test]
fn vanished_client_closes_the_iterable_and_exits_7() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("closed");
    let mut child = Command::new(support::wsgi_cgi())
        .env_clear()
        .env("REQUEST_METHOD", "GET")
        .env("PATH_INFO", "/big")
        .env("QUERY_STRING", format!("marker={}", marker.display()))
        .args(["--app", gateway().to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 4096];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("client went away"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "closed");
}

/// A fresh virtualenv `DIR/venv` of the build's interpreter (with the
/// system site-packages if asked): its path and its site-packages.
fn make_venv(dir: &std::path::Path, system: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let venv = dir.join("venv");
    let mut make = std::process::Command::new(wsgi_gateway::python::interpreter::BUILD_PYTHON);
    make.args(["-m", "venv", "--without-pip"]);
    if system {
        make.arg("--system-site-packages");
    }
    assert!(make.arg(&venv).status().unwrap().success());
    let site = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("site-packages");
    (venv, site)
}

/// A virtualenv is really used: `sys.prefix` is the venv and its `.pth`
/// files run (editable installs rely on them).
#[test]
fn venv_site_packages_and_pth_files_work() {
    let dir = tempfile::tempdir().unwrap();
    let (venv, site) = make_venv(dir.path(), false);
    let src = dir.path().join("editable_src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(
        src.join("editable_app.py"),
        "import sys\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [sys.prefix.encode()]\n",
    )
    .unwrap();
    std::fs::write(site.join("editable.pth"), format!("{}\n", src.display())).unwrap();
    let out = Cgi::get("/")
        .arg("--venv")
        .arg(&venv)
        .app("editable_app")
        .run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    assert_eq!(out.text(), venv.to_str().unwrap());
}

/// The lean `site` does what CPython's does that apps rely on: in a
/// virtualenv, `.pth` path lines and `import` lines (in sorted order),
/// `sitecustomize`, and the base installation's site-packages only with
/// `include-system-site-packages = true`.
#[test]
fn the_lean_site_runs_pth_imports_sitecustomize_and_honours_system_site_packages() {
    let base_site = std::process::Command::new(wsgi_gateway::python::interpreter::BUILD_PYTHON)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'], end='')",
        ])
        .output()
        .unwrap();
    let base_site = String::from_utf8(base_site.stdout).unwrap();
    for system in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (venv, site) = make_venv(dir.path(), system);
        let extra = dir.path().join("extra");
        std::fs::create_dir(&extra).unwrap();
        std::fs::write(site.join("pth_marker.py"), "").unwrap();
        // A path line and an import line; the import runs after the path is in.
        std::fs::write(site.join("a.pth"), format!("{}\n", extra.display())).unwrap();
        std::fs::write(site.join("b.pth"), "import pth_marker\n").unwrap();
        std::fs::write(site.join("sitecustomize.py"), "").unwrap();
        let out = Cgi::get("/sys")
            .arg("--venv")
            .arg(&venv)
            .app(gateway())
            .run();
        assert_eq!(out.status, 200, "{}", out.stderr);
        let sys = json(&out);
        assert_eq!(sys["prefix"], venv.to_str().unwrap());
        let modules: Vec<&str> = sys["modules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m.as_str())
            .collect();
        assert!(modules.contains(&"pth_marker"), "{sys}");
        assert!(modules.contains(&"sitecustomize"), "{sys}");
        // (The gateway imports no wsgiref: its own start-up stays lean.)
        assert!(!modules.contains(&"wsgiref"), "{sys}");
        let path: Vec<&str> = sys["path"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert!(path.contains(&extra.to_str().unwrap()), "{sys}");
        assert!(path.contains(&site.to_str().unwrap()), "{sys}");
        assert_eq!(
            path.contains(&base_site.as_str()),
            system,
            "system site-packages {system}: {sys}"
        );
    }
}

/// `atexit` handlers run, and after the response is complete: the client
/// has read the whole response (EOF on the CGI's stdout) while the handler
/// still waits for the test's go-ahead.
#[test]
fn atexit_handlers_run_after_the_response_is_complete() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let (go, ran) = (dir.path().join("go"), dir.path().join("ran"));
    let app = dir.path().join("exiting.py");
    std::fs::write(
        &app,
        format!(
            "import atexit, os, time\n\
             def wait():\n\
             \x20   deadline = time.monotonic() + 30\n\
             \x20   while not os.path.exists({go:?}) and time.monotonic() < deadline:\n\
             \x20       time.sleep(0.01)\n\
             \x20   with open({ran:?}, 'w') as f:\n\
             \x20       f.write('after' if os.path.exists({go:?}) else 'timed out')\n\
             atexit.register(wait)\n\
             def application(environ, start_response):\n\
             \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
             \x20   return [b'done']\n",
            go = go.display().to_string(),
            ran = ran.display().to_string(),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(support::wsgi_cgi())
        .arg("--app")
        .arg(&app)
        .env_clear()
        .envs([
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", "/"),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut response = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut response)
        .unwrap();
    assert!(response.ends_with("\r\n\r\ndone"), "{response:?}");
    assert!(
        !ran.exists(),
        "the atexit handler ran before the response was complete"
    );
    std::fs::write(&go, "").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "after");
}
