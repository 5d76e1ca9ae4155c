//! Real frameworks through the real `wsgi-cgi` binary, with `--venv` pointing
//! at the test virtualenv (tests/setup-venv.sh): Flask and Django routes,
//! JSON, form POST, multipart upload, redirects under a `SCRIPT_NAME` prefix,
//! and a view that raises.

use crate::support;
use crate::support::digest;

use support::{Cgi, CgiOutput, app};

fn json(out: &CgiOutput) -> serde_json::Value {
    serde_json::from_slice(&out.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} / stderr: {}", out.text(), out.stderr))
}

/// A framework under test: how to point wsgi-cgi at it.
struct Framework {
    spec: &'static str,
    /// Route prefix inside the app (Django routes end in '/').
    slash: &'static str,
}

const FLASK: Framework = Framework {
    spec: "flask_app:application",
    slash: "",
};
const DJANGO: Framework = Framework {
    spec: "djangoapp.wsgi",
    slash: "/",
};

fn request(fw: &Framework, venv: &std::path::Path, path: &str) -> Cgi {
    Cgi::get(path)
        .env("SCRIPT_NAME", "/app")
        .env("HTTP_HOST", "example.test")
        .env("REQUEST_URI", &format!("/app{path}"))
        .arg("--venv")
        .arg(venv)
        .arg("--chdir")
        .arg(app(""))
        .app(fw.spec)
}

fn exercise(fw: &Framework) {
    let Some(venv) = support::venv() else { return };
    let s = fw.slash;

    let out = request(fw, &venv, "/").run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    assert!(out.text().starts_with("Hello from"), "{}", out.text());
    assert_eq!(out.exit, 0);

    let out = request(fw, &venv, &format!("/json{s}"))
        .env("QUERY_STRING", "x=1&y=caf%C3%A9")
        .run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    let v = json(&out);
    assert_eq!(v["ok"], true);
    let prefix = v.get("script_root").or(v.get("script_name")).unwrap();
    assert_eq!(prefix, "/app");
    let q = v.get("args").or(v.get("q")).unwrap();
    assert_eq!(q["y"], "caf\u{e9}");

    let out = request(fw, &venv, &format!("/go{s}")).run();
    assert_eq!(out.status, 302, "{}", out.stderr);
    let location = out.header("Location").unwrap();
    assert!(location.ends_with(&format!("/app/json{s}")), "{location}");

    let out = request(fw, &venv, &format!("/form{s}"))
        .method("POST")
        .body(
            "application/x-www-form-urlencoded",
            b"name=Ada+Lovelace&city=Z%C3%BCrich",
        )
        .run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    let v = json(&out);
    assert_eq!(v["name"], "Ada Lovelace");
    assert_eq!(v["city"], "Z\u{fc}rich");

    let file: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let boundary = "----wsgi-gateway-test-boundary";
    let body = support::multipart(
        boundary,
        &[("note", b"hi", None), ("file", &file, Some("blob.bin"))],
    );
    let out = request(fw, &venv, &format!("/upload{s}"))
        .method("POST")
        .body(&format!("multipart/form-data; boundary={boundary}"), &body)
        .run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    let v = json(&out);
    assert_eq!(v["size"], file.len());
    assert_eq!(v["filename"], "blob.bin");
    assert_eq!(v["note"], "hi");
    assert_eq!(v["sha256"], digest::sha256_hex(&file).as_str());

    let out = request(fw, &venv, &format!("/boom{s}")).run();
    assert_eq!(out.status, 500);
    assert!(!out.text().contains("SECRET"), "{}", out.text());
    assert!(
        out.stderr.contains("SECRET-"),
        "traceback missing from the log: {}",
        out.stderr
    );
}

#[test]
fn flask_app() {
    exercise(&FLASK);
    let Some(venv) = support::venv() else { return };
    // A non-ASCII path: the server hands over the decoded bytes.
    let out = request(&FLASK, &venv, "")
        .env_bytes("PATH_INFO", b"/path/caf\xc3\xa9")
        .run();
    assert_eq!(json(&out)["name"], "caf\u{e9}", "{}", out.stderr);
}

#[test]
fn django_app() {
    exercise(&DJANGO);
}
