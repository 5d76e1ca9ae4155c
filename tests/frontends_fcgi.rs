//! End to end through web servers that use FastCGI in ways
//! tests/webservers_fcgi.rs does not, each started on a free loopback port
//! with the shipped snippet from conf/:
//!
//! - Apache mod_authnz_fcgi (conf/apache/wsgi-fcgi-authz.conf) asking a
//!   `wsgi-fcgi` AUTHORIZER on TCP (tests/apps/fcgi_fixtures.py's
//!   `authorize`) before serving a static file under /private: the right
//!   bearer token gets the file (as user alice, the user the app named),
//!   no token or a wrong one gets the app's own 403 body, byte for byte,
//!   not Apache's stock page. mod_authnz_fcgi keeps only the body bytes
//!   that arrive in the same STDOUT record as the end of the headers, so
//!   this holds only because wsgi-fcgi sends the header block and the first
//!   body bytes in one record.
//! - h2o `fastcgi.connect` (conf/h2o/wsgi-fcgi.conf, h2o's default of a new
//!   connection per request) → a responder on a unix socket serving
//!   tests/apps/fcgi_site.py at the root: SCRIPT_NAME "" and the whole path
//!   as PATH_INFO, Flask's routes and script_root, a 100 000-byte POST
//!   echoed, 200 requests in a row.
//!
//! A missing server or module is reported with `support::skip`.

use crate::support;
use crate::support::http;

use std::path::{Path, PathBuf};
use std::process::Command;

use http::{Logged, Response, Server, Site};
use support::fcgi::{Listen, Responder};

fn wsgi_fcgi() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wsgi-fcgi"))
}

/// `wsgi-fcgi --app SPEC --venv VENV --bind BIND [EXTRA]`, a responder the
/// test starts on `listen`.
fn responder(spec: &str, venv: &Path, listen: Listen, extra: &[&str]) -> Responder {
    Responder::launch(listen, |bind| {
        let mut cmd = Command::new(wsgi_fcgi());
        cmd.args(["--app", spec, "--venv"])
            .arg(venv)
            .args(["--bind", bind])
            .args(extra);
        cmd
    })
}

cases! {
    apache_authnz_fcgi_authorizer => apache_authorizer();
    h2o_fastcgi_connect_unix_socket => h2o_site();
}

// ---------------------------------------------------------------------------
// Apache mod_authnz_fcgi

const MOD_AUTHNZ_FCGI: &str = "/usr/lib/apache2/modules/mod_authnz_fcgi.so";
/// The static file behind the protected location.
const SECRET: &str = "for alice only\n";
const TOKEN: &str = "Bearer let-me-in";
/// fcgi_fixtures.py's `authorize` refuses with this body.
const DENIED: &str = "denied\n";

/// Apache's main configuration: the snippet at server level (where
/// AuthnzFcgiDefineProvider must be) with the authorizer at `backend`, and a
/// virtual host serving `dir/private/secret.txt` at /private/, granted to
/// all by its own <Directory>: only the snippet's <Location> protects it.
fn apache_conf(dir: &Path, port: u16, backend: &str) -> String {
    let private = dir.join("private");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::write(private.join("secret.txt"), SECRET).unwrap();
    let d = dir.display();
    let modules = [
        "mpm_event",
        "authz_core",
        "alias",
        "log_config",
        "authnz_fcgi",
    ];
    let mut conf = http::apache_main_conf(dir, port, "%h %u \\\"%r\\\" %>s %b", &modules);
    let snippet = support::root().join("conf/apache/wsgi-fcgi-authz.conf");
    conf.push_str(&format!(
        r#"Define WSGI_FCGI_AUTHZ "{backend}"
Include "{}"
<VirtualHost 127.0.0.1:{port}>
    ServerName 127.0.0.1
    Alias /private/ "{d}/private/"
    <Directory "{d}/private">
        Require all granted
    </Directory>
</VirtualHost>
"#,
        snippet.display()
    ));
    conf
}

/// GET /private/secret.txt through Apache with `headers`. A 500 with the
/// authorizer's connection closed for a body that never came is named for
/// what it is: mod_authnz_fcgi sends an authorizer no FCGI_STDIN at all
/// (its comment: "The responder owns the request body, not the
/// authorizer"), so an AUTHORIZER request must run once its PARAMS end.
fn ask(web: &Server, authorizer: &Responder, headers: &[(&str, &str)]) -> Response {
    let r = web.request("GET", "/private/secret.txt", headers, b"");
    let log = authorizer.log();
    if r.status == 500 && log.contains("stalled") {
        panic!(
            "gateway bug: wsgi-fcgi waits for the request body (FCGI_STDIN) of an \
             AUTHORIZER request, which mod_authnz_fcgi never sends, so the app never \
             runs; after --header-timeout wsgi-fcgi closes the connection and Apache \
             answers 500. wsgi-fcgi's log:\n{log}"
        );
    }
    r
}

fn apache_authorizer() -> Option<()> {
    let exe = http::require_program("apache2", "apache2")?;
    if !Path::new(MOD_AUTHNZ_FCGI).is_file() {
        support::skip(&format!("no {MOD_AUTHNZ_FCGI} (apt-get install apache2)"));
        return None;
    }
    let venv = support::venv()?;
    // mod_authnz_fcgi speaks TCP only.
    let spec = format!("{}:authorize", support::app("fcgi_fixtures.py").display());
    let authorizer = responder(&spec, &venv, Listen::Tcp, &[]);
    let backend = format!("fcgi://127.0.0.1:{}/", authorizer.port());
    let args = |_: &Path| vec!["-DFOREGROUND".into(), "-f".into()];
    let logs = ["error.log", "access.log"];
    let web = Server::start_conf("apache2", &exe, &logs, args, |dir, port| {
        apache_conf(dir, port, &backend)
    });

    // The right token: the file, served to the user the app named.
    let mark = web.log_mark();
    let r = ask(&web, &authorizer, &[("Authorization", TOKEN)]);
    assert_eq!((r.status, r.text().as_str()), (200, SECRET), "{r:?}");
    let line = r#"127.0.0.1 alice "GET /private/secret.txt HTTP/1.1" 200"#;
    let log = web.log_since(&mark, &[line]);
    assert!(log.contains(line), "no {line:?} in Apache's logs: {log}");

    // No token, a wrong one, a Basic one: the app's 403 and its body. Were
    // the body in a STDOUT record of its own, after the header block's,
    // mod_authnz_fcgi would drop it and Apache would send its stock
    // "403 Forbidden" HTML page instead.
    for headers in [
        &[][..],
        &[("Authorization", "Bearer let-me-out")][..],
        &[("Authorization", "Basic YWxpY2U6c2VjcmV0")][..],
    ] {
        let r = ask(&web, &authorizer, headers);
        assert_eq!(r.status, 403, "{headers:?}: {r:?}");
        assert_eq!(
            r.text(),
            DENIED,
            "{headers:?}: not the authorizer's body (Apache's own page instead?)"
        );
        // The app answered in the AUTHORIZER role and its headers came along.
        assert_eq!(r.header("X-Role"), Some("AUTHORIZER"), "{r:?}");
    }
    Some(())
}

// ---------------------------------------------------------------------------
// h2o

/// The shipped h2o snippet with `port` on 127.0.0.1 and `socket` put in,
/// and its `user:` line dropped when not root (h2o cannot switch users then).
fn h2o_conf(snippet: &str, port: u16, socket: &Path) -> String {
    const LISTEN: &str = "listen: 8080";
    const SOCKET: &str = "port: /run/wsgi-fcgi/app.sock";
    assert!(
        snippet.lines().any(|l| l == LISTEN) && snippet.contains(SOCKET),
        "conf/h2o/wsgi-fcgi.conf has no {LISTEN:?} line or no {SOCKET:?}"
    );
    let drop_user = !http::is_root();
    let mut conf = String::from("# Generated by tests/frontends_fcgi.rs\n");
    for line in snippet.lines() {
        if line == LISTEN {
            conf.push_str(&format!("listen:\n  host: 127.0.0.1\n  port: {port}\n"));
        } else if drop_user && line.starts_with("user:") {
            conf.push_str("# (user: dropped, not root)\n");
        } else {
            let socket = format!("port: {}", socket.display());
            conf.push_str(&line.replace(SOCKET, &socket));
            conf.push('\n');
        }
    }
    conf
}

fn h2o_site() -> Option<()> {
    let exe = http::require_program("h2o", "h2o")?;
    let venv = support::venv()?;
    let spec = support::app("fcgi_site.py").display().to_string();
    // Started as root, h2o runs as www-data (the snippet's `user`): the
    // socket (mode 0660) gets its group.
    let group: &[&str] = if http::is_root() {
        &["--socket-group", "www-data"]
    } else {
        &[]
    };
    let app = responder(&spec, &venv, Listen::Unix, group);
    let snippet = std::fs::read_to_string(support::root().join("conf/h2o/wsgi-fcgi.conf"))
        .expect("conf/h2o/wsgi-fcgi.conf");
    let args = |_: &Path| vec!["-c".into()];
    let web = Server::start_conf("h2o", &exe, &[], args, |_, port| {
        h2o_conf(&snippet, port, &app.socket())
    });
    let s = Site {
        web: &web,
        log: &app,
        prefix: "",
    };

    s.check_mounted_at_root();

    // One after another, each on a new FastCGI connection (h2o's default).
    let failed: Vec<(usize, Response)> = (0..200)
        .map(|i| (i, s.get("/json")))
        .filter(|(_, r)| r.status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 200 GETs of /json failed, the first: {:?}",
        failed.len(),
        failed.first()
    );
    Some(())
}
