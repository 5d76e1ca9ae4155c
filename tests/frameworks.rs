//! Real frameworks from the test virtualenv (tests/setup-venv.sh), Flask and
//! Django, through both real binaries: `wsgi-cgi` once per request and a
//! resident `wsgi-fcgi` on our raw FastCGI client. One scenario for both
//! ([`exercise`]): routes under a `SCRIPT_NAME` prefix, JSON with a
//! non-ASCII query, a redirect, a form POST, a 2 MB multipart upload, and a
//! view that raises (500, traceback in the log, never to the client).

use crate::support;
use crate::support::{Cgi, app, digest, fcgi};

use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// A framework under test: how to point a gateway at it.
struct Framework {
    spec: &'static str,
    /// Route suffix inside the app (Django routes end in '/').
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

/// One request under `/app`: `target` is the path in the app with its
/// query, `body` a POST's content type and bytes.
struct Call<'a> {
    target: &'a str,
    body: Option<(&'a str, &'a [u8])>,
}

/// What came back.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A gateway serving one framework.
trait Gateway {
    fn call(&self, call: Call) -> Answer;
    /// Whether `needle` reached the gateway's log (after the last call).
    fn logged(&self, needle: &str) -> bool;
    /// The log so far, for failure messages.
    fn log(&self) -> String;
}

/// `wsgi-cgi`, one process per call.
struct CgiGateway<'a> {
    fw: &'a Framework,
    venv: PathBuf,
    stderr: RefCell<String>,
}

impl CgiGateway<'_> {
    fn request(&self, path: &str) -> Cgi {
        request(self.fw, &self.venv, path)
    }
}

fn request(fw: &Framework, venv: &Path, path: &str) -> Cgi {
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

impl Gateway for CgiGateway<'_> {
    fn call(&self, call: Call) -> Answer {
        let (path, query) = call.target.split_once('?').unwrap_or((call.target, ""));
        let mut cgi = self.request(path).env("QUERY_STRING", query);
        if let Some((content_type, body)) = call.body {
            cgi = cgi.method("POST").body(content_type, body);
        }
        let out = cgi.run();
        assert_eq!(out.exit, 0, "{}: {}", call.target, out.stderr);
        *self.stderr.borrow_mut() = out.stderr;
        Answer {
            status: out.status,
            headers: out.headers,
            body: out.body,
        }
    }
    fn logged(&self, needle: &str) -> bool {
        self.stderr.borrow().contains(needle)
    }
    fn log(&self) -> String {
        self.stderr.borrow().clone()
    }
}

/// A resident `wsgi-fcgi`, a fresh connection per call.
struct FcgiGateway(fcgi::Responder);

impl Gateway for FcgiGateway {
    fn call(&self, call: Call) -> Answer {
        let mut req = fcgi::Req::get(call.target)
            .param("SCRIPT_NAME", "/app")
            .param("HTTP_HOST", "example.test")
            .param("REQUEST_URI", &format!("/app{}", call.target));
        if let Some((content_type, body)) = call.body {
            req = req
                .method("POST")
                .body(content_type, body)
                .stdin_chunk(8000);
        }
        let out = self.0.connect().request(1, &req);
        assert_eq!(out.app_status(), 0, "{}: {}", call.target, self.0.log());
        let (status, headers, body) = out.cgi();
        Answer {
            status,
            headers,
            body: body.to_vec(),
        }
    }
    fn logged(&self, needle: &str) -> bool {
        self.0.wait_log(needle, fcgi::TIMEOUT)
    }
    fn log(&self) -> String {
        self.0.log()
    }
}

fn cgi(fw: &Framework) -> Option<CgiGateway<'_>> {
    let venv = support::venv()?;
    let stderr = RefCell::default();
    Some(CgiGateway { fw, venv, stderr })
}

fn fcgi(fw: &Framework) -> Option<FcgiGateway> {
    let venv = support::venv()?;
    let args = ["--app".into(), fw.spec.into(), "--venv".into(), venv];
    let args = [&args[..], &["--chdir".into(), app("")]].concat();
    Some(FcgiGateway(fcgi::Responder::start(&args, &[])))
}

fn exercise(fw: &Framework, g: &dyn Gateway) {
    let s = fw.slash;
    let get = |target: &str| g.call(Call { target, body: None });
    let post = |target: &str, content_type: &str, body: &[u8]| {
        let body = Some((content_type, body));
        g.call(Call { target, body })
    };

    let out = get("/");
    assert_eq!(out.status, 200, "{}", g.log());
    assert!(out.text().starts_with("Hello from"), "{}", out.text());

    let out = get(&format!("/json{s}?x=1&y=caf%C3%A9"));
    assert_eq!(out.status, 200, "{}", g.log());
    let v = out.json();
    assert_eq!(v["ok"], true);
    let prefix = v.get("script_root").or(v.get("script_name")).unwrap();
    assert_eq!(prefix, "/app");
    let q = v.get("args").or(v.get("q")).unwrap();
    assert_eq!(q["y"], "caf\u{e9}");
    assert_eq!(q["x"], "1");

    let out = get(&format!("/go{s}"));
    assert_eq!(out.status, 302, "{}", g.log());
    let location = out.header("Location").unwrap();
    assert!(location.ends_with(&format!("/app/json{s}")), "{location}");

    let form = b"name=Ada+Lovelace&city=Z%C3%BCrich";
    let out = post(
        &format!("/form{s}"),
        "application/x-www-form-urlencoded",
        form,
    );
    assert_eq!(out.status, 200, "{}", g.log());
    let v = out.json();
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
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let out = post(&format!("/upload{s}"), &content_type, &body);
    assert_eq!(out.status, 200, "{}", g.log());
    let v = out.json();
    assert_eq!(v["size"], file.len());
    assert_eq!(v["filename"], "blob.bin");
    assert_eq!(v["note"], "hi");
    assert_eq!(v["sha256"], digest::sha256_hex(&file).as_str());

    let out = get(&format!("/boom{s}"));
    assert_eq!(out.status, 500);
    assert!(!out.text().contains("SECRET"), "{}", out.text());
    assert!(
        g.logged("SECRET-"),
        "traceback missing from the log: {}",
        g.log()
    );
}

#[test]
fn flask_through_cgi() {
    let Some(g) = cgi(&FLASK) else { return };
    exercise(&FLASK, &g);
    // A non-ASCII path: the server hands over the decoded bytes.
    let out = g
        .request("")
        .env_bytes("PATH_INFO", b"/path/caf\xc3\xa9")
        .run();
    let v: serde_json::Value = serde_json::from_slice(&out.body).expect(&out.stderr);
    assert_eq!(v["name"], "caf\u{e9}", "{}", out.stderr);
}

#[test]
fn django_through_cgi() {
    let Some(g) = cgi(&DJANGO) else { return };
    exercise(&DJANGO, &g);
}

#[test]
fn flask_through_fcgi() {
    let Some(g) = fcgi(&FLASK) else { return };
    exercise(&FLASK, &g);
}

#[test]
fn django_through_fcgi() {
    let Some(g) = fcgi(&DJANGO) else { return };
    exercise(&DJANGO, &g);
}
