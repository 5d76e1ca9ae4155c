//! End to end over FastCGI through real web servers, each started on a free
//! loopback port with a generated main configuration that includes the
//! shipped snippet from conf/ as it is:
//!
//! - nginx (conf/nginx/wsgi-fcgi.conf) → a `wsgi-fcgi` responder the test
//!   starts, on a unix socket and on TCP, through a `keepalive` upstream;
//! - Apache mod_proxy_fcgi (conf/apache/wsgi-fcgi-proxy.conf, enablereuse=on)
//!   → a responder on a unix socket, and on TCP;
//! - Apache mod_fcgid (conf/apache/wsgi-fcgid.conf), which starts wsgi-fcgi
//!   itself with the listening socket on fd 0;
//! - lighttpd mod_fastcgi (conf/lighttpd/wsgi-fcgi.conf) → a responder on a
//!   unix socket, and in `bin-path` mode, where lighttpd starts wsgi-fcgi;
//! - spawn-fcgi (conf/spawn-fcgi.sh) starting wsgi-fcgi with the socket on
//!   fd 0, probed with `wsgi-fcgi request`, then served through nginx;
//! - Mercurial's hgweb behind nginx at /hg/, cloned with `hg clone`;
//! - HAProxy (conf/haproxy/wsgi-fcgi.cfg, `fcgi-app`) in its default mode,
//!   with `option keep-conn`, and multiplexing (`option mpxs-conns`,
//!   `get-values`, `http-reuse always`), each under wrk -c32 with Flask and
//!   a close() that takes a moment (HAProxy pipelines the next request
//!   meanwhile): not one non-2xx, not one timeout.
//!
//! The app is tests/apps/fcgi_site.py (Flask plus gateway.py's and
//! stream_app.py's routes in one responder); Django through nginx. Checked:
//! routes, JSON, forms, uploads, redirects and SCRIPT_NAME/PATH_INFO under
//! the prefix, a generator's chunks arriving as they are yielded, 100 MiB up
//! and down (hashed as they go, never held in memory), clean 500s with the
//! traceback in the right log, and connections kept open and reused where
//! the server does that (nginx, mod_proxy_fcgi).
//! A missing server or module is reported with `support::skip`.

use crate::support;
use crate::support::http;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::{Logged, Ready, Server, Site};
use std::os::unix::fs::PermissionsExt;
use support::fcgi::{Addr, Listen, Req, Responder};
use support::wait_until;

const MOUNT: &str = "/app";

/// What a responder serves: wsgi-fcgi's settings.
struct App {
    spec: String,
    venv: PathBuf,
    chdir: Option<PathBuf>,
    env: Vec<(&'static str, String)>,
}

impl App {
    /// A file app under tests/apps, run with the test virtualenv.
    fn file(name: &str) -> Option<App> {
        let spec = support::app(name).display().to_string();
        Some(App {
            spec,
            venv: support::venv()?,
            chdir: None,
            env: vec![],
        })
    }
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--app".into(), self.spec.clone(), "--venv".into()];
        args.push(self.venv.display().to_string());
        if let Some(dir) = &self.chdir {
            args.extend(["--chdir".into(), dir.display().to_string()]);
        }
        args
    }
}

fn wsgi_fcgi() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wsgi-fcgi"))
}

/// Web servers started as root run their workers as www-data: the unix
/// socket (mode 0660) gets that group, as the snippets recommend.
fn socket_group() -> Option<&'static str> {
    http::is_root().then_some("www-data")
}

/// wsgi-fcgi serving `app`, started by the test.
fn responder(app: &App, listen: Listen) -> Responder {
    Responder::launch(listen, |bind| {
        let mut cmd = Command::new(wsgi_fcgi());
        cmd.args(app.args()).args(["--bind", bind]);
        if let Some(group) = socket_group() {
            cmd.args(["--socket-group", group]);
        }
        cmd.envs(app.env.iter().map(|(k, v)| (k, v)));
        cmd
    })
}

/// Start web server `name` with the main configuration `conf(dir, port)`.
fn start(name: &str, logs: &[&str], conf: impl Fn(&Path, u16) -> String) -> Option<Server> {
    let exe = http::require_program(name, name)?;
    let args = |dir: &Path| {
        let d = dir.display();
        let words = match name {
            "nginx" => format!("-p {d} -e {d}/error.log -c"),
            "apache2" => "-DFOREGROUND -f".into(),
            // The main file (global, defaults, frontend; written by
            // `conf`), then the shipped snippet: sections follow defaults.
            "haproxy" => format!("-db -f {d}/main.cfg -f"),
            _ => "-D -f".into(),
        };
        words.split(' ').map(Into::into).collect()
    };
    Some(Server::start_conf(name, &exe, logs, args, conf))
}

/// nginx in front of `upstream` (as its `server` line writes it), mounted at
/// `prefix`: the shipped snippet for /app, else a copy with /app replaced,
/// as the snippet's header tells users to do.
fn nginx(upstream: &str, prefix: &str) -> Option<Server> {
    start("nginx", &["error.log"], |dir, port| {
        // `include fastcgi_params` is relative to the main configuration.
        std::fs::copy("/etc/nginx/fastcgi_params", dir.join("fastcgi_params"))
            .expect("/etc/nginx/fastcgi_params (Debian's nginx-common)");
        let mut snippet = support::root().join("conf/nginx/wsgi-fcgi.conf");
        if prefix != MOUNT {
            let text = std::fs::read_to_string(&snippet).unwrap();
            snippet = dir.join("location.conf");
            std::fs::write(&snippet, text.replace(MOUNT, prefix)).unwrap();
        }
        let (d, snippet) = (dir.display(), snippet.display());
        let user = http::is_root().then_some("user www-data www-data;");
        let user = user.unwrap_or_default();
        format!(
            r#"# Generated by tests/webservers_fcgi.rs
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_max_body_size 200m;
    client_body_temp_path {d}/body;
    fastcgi_temp_path {d}/fastcgi;
    proxy_temp_path {d}/proxy;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream wsgi_fcgi {{
        server {upstream};
        # Room for every connection of the load tests (wrk -c16): kept
        # connections stay kept, none is closed for want of a cache slot.
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name 127.0.0.1;
        include {snippet};
    }}
}}
"#
        )
    })
}

enum Apache<'a> {
    /// mod_proxy_fcgi to this `WSGI_FCGI_BACKEND`.
    Proxy(String),
    /// mod_fcgid starting wsgi-fcgi for this app.
    Fcgid(&'a App),
}

fn apache(mode: Apache) -> Option<Server> {
    let (module, package) = match mode {
        Apache::Proxy(_) => ("proxy_fcgi", "apache2"),
        Apache::Fcgid(_) => ("fcgid", "libapache2-mod-fcgid"),
    };
    let so = format!("/usr/lib/apache2/modules/mod_{module}.so");
    if http::find_program("apache2").is_some() && !Path::new(&so).is_file() {
        support::skip(&format!("no {so} (apt-get install {package})"));
        return None;
    }
    if let Apache::Fcgid(app) = &mode {
        // mod_fcgid runs wsgi-fcgi as www-data.
        let mut wanted = vec![("-x", wsgi_fcgi()), ("-r", app.venv.join("pyvenv.cfg"))];
        wanted.extend([
            ("-r", PathBuf::from(&app.spec)),
            ("-r", http::big_file().0.clone()),
        ]);
        wanted.extend(http::libpython(&wsgi_fcgi()).map(|lib| ("-r", lib)));
        if let Err(why) = http::www_data_can(&wanted) {
            support::skip(&format!("mod_fcgid: {why}"));
            return None;
        }
    }
    start("apache2", &["error.log"], |dir, port| {
        let d = dir.display();
        let modules = [
            "mpm_event",
            "authz_core",
            "alias",
            "setenvif",
            "log_config",
            "proxy",
            module,
        ];
        let mut conf = http::apache_main_conf(dir, port, "%h \\\"%r\\\" %>s %b %D", &modules);
        let snippet = match &mode {
            Apache::Proxy(backend) => {
                conf.push_str(&format!("Define WSGI_FCGI_BACKEND \"{backend}\"\n"));
                "wsgi-fcgi-proxy.conf"
            }
            Apache::Fcgid(app) => {
                let (bin, venv) = (wsgi_fcgi(), app.venv.display());
                conf.push_str(&format!(
                    r#"# Server-wide mod_fcgid paths (Debian's fcgid.conf sets them).
FcgidIPCDir "{d}/fcgid"
FcgidProcessTableFile "{d}/fcgid_shm"
Define WSGI_FCGID_BIN "{}"
Define WSGI_FCGID_APP "{}"
Define WSGI_FCGID_VENV "{venv}"
"#,
                    bin.display(),
                    app.spec
                ));
                "wsgi-fcgid.conf"
            }
        };
        let snippet = support::root().join("conf/apache").join(snippet);
        conf.push_str(&format!(
            "<VirtualHost 127.0.0.1:{port}>\n    ServerName 127.0.0.1\n    Include \"{}\"\n</VirtualHost>\n",
            snippet.display()
        ));
        conf
    })
}

/// lighttpd → the `responder`, or in bin-path mode (no responder) starting
/// wsgi-fcgi for `app` itself.
fn lighttpd(responder: Option<&Responder>, app: &App) -> Option<Server> {
    start("lighttpd", &["error.log", "breakage.log"], |dir, port| {
        let d = dir.display();
        let socket = responder.map_or(dir.join("app.sock"), |r| r.socket());
        let bin = if responder.is_none() {
            wsgi_fcgi()
        } else {
            PathBuf::new()
        };
        // Unset is "", as the snippet documents (with a responder they are unused).
        let chdir = app.chdir.clone().unwrap_or_default();
        let (socket, bin, chdir, venv) = (
            socket.display(),
            bin.display(),
            chdir.display(),
            app.venv.display(),
        );
        let snippet = support::root().join("conf/lighttpd/wsgi-fcgi.conf");
        format!(
            r#"# Generated by tests/webservers_fcgi.rs
server.modules = ( "mod_accesslog" )
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = "{d}"
server.errorlog = "{d}/error.log"
# The stderr of the programs lighttpd starts (bin-path).
server.breakagelog = "{d}/breakage.log"
server.upload-dirs = ( "{d}" )
server.max-request-size = 204800
accesslog.filename = "{d}/access.log"
var.wsgi_fcgi_prefix = "{MOUNT}"
var.wsgi_fcgi_socket = "{socket}"
var.wsgi_fcgi_bin_path = "{bin}"
var.wsgi_fcgi_app = "{}"
var.wsgi_fcgi_venv = "{venv}"
var.wsgi_fcgi_chdir = "{chdir}"
include "{}"
"#,
            app.spec,
            snippet.display()
        )
    })
}

/// conf/spawn-fcgi.sh starting wsgi-fcgi for `app` on `dir/app.sock`.
fn spawn_fcgi(app: &App) -> Option<Server> {
    http::require_program("spawn-fcgi", "spawn-fcgi")?;
    let script = support::root().join("conf/spawn-fcgi.sh");
    let ready = Ready::Unix("app.sock");
    Some(Server::start_ready("spawn-fcgi", &[], ready, |dir, _| {
        let mut cmd = Command::new("sh");
        cmd.arg(&script)
            .args(app.args())
            .env("WSGI_FCGI_BIN", wsgi_fcgi());
        cmd.env("SPAWN_FCGI_SOCKET", dir.join("app.sock"));
        cmd.envs(socket_group().map(|g| ("SPAWN_FCGI_GROUP", g)));
        cmd
    }))
}

fn check_flask(s: &Site) {
    let p = s.prefix;
    assert_eq!(s.get_ok("/").text(), "Hello from Flask\n");
    // The prefix without its slash is sent to it (by the server or by Flask).
    s.check_redirect("", &format!("{p}/"));
    // SCRIPT_NAME from the server is Flask's script_root: URLs stay under the prefix.
    let j = s.get_ok("/json?x=1").json();
    assert_eq!(j["script_root"].as_str(), Some(p), "{j:?}");
    let (path, x) = (j["path"].as_str(), j["args"]["x"].as_str());
    assert_eq!((path, x), (Some("/json"), Some("1")), "{j:?}");
    s.check_redirect("/go", &format!("{p}/json"));
    s.check_form("/form");
    s.check_upload("/upload");
    let name = s.get_ok("/path/caf%C3%A9").json()["name"].clone();
    assert_eq!(name.as_str(), Some("café"));
    s.check_500("/boom", &["Traceback", "SECRET-FLASK-DETAIL"]);
}

fn check_environ(s: &Site) {
    let (env, port) = (s.get_ok("/environ?q=1").json(), s.web.port.to_string());
    for (key, value) in [
        ("SCRIPT_NAME", s.prefix),
        ("PATH_INFO", "/environ"),
        ("QUERY_STRING", "q=1"),
        ("REQUEST_METHOD", "GET"),
        ("SERVER_PORT", &port),
        ("wsgi.url_scheme", "http"),
    ] {
        let name = &s.web.name;
        assert_eq!(env[key].as_str(), Some(value), "{key} from {name}: {env:?}");
    }
    // A resident, threaded responder.
    assert_eq!(
        env["wsgi.run_once"],
        serde_json::Value::Bool(false),
        "{env:?}"
    );
    assert_eq!(
        env["wsgi.multithread"],
        serde_json::Value::Bool(true),
        "{env:?}"
    );

    let data = http::random_bytes(100_000, 7);
    let r = s.post("/echo", "application/octet-stream", &data);
    s.expect(&r, 200);
    assert!(
        r.body == data,
        "echoed {} bytes of {}",
        r.body.len(),
        data.len()
    );
    s.check_500("/raise", &["SECRET-TRACEBACK-DETAIL"]);
    check_cut_short(s);
}

/// An app that fails after its response began: the client's response is
/// broken (no last chunk), never a whole one that caches would keep, and
/// the web server logs why.
fn check_cut_short(s: &Site) {
    let head = format!(
        "GET {}/exc-after HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        s.prefix
    );
    let raw = http::exchange(s.web.port, head.as_bytes(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{}: no response: {e}", s.web.name));
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{}: {text}", s.web.name);
    assert!(text.contains("partial "), "{}: {text}", s.web.name);
    // nginx, Apache mod_proxy_fcgi and lighttpd leave the chunked body
    // unterminated; mod_fcgid appends its own 500 page to the body, then
    // terminates it (its way; the client sees the failure in the body).
    assert!(
        !text.ends_with("0\r\n\r\n") || text.contains("500 Internal Server Error"),
        "{}: a response cut short by the app looks complete: {text:?}",
        s.web.name
    );
}

/// Sequential requests reuse kept-open connections (FCGI_KEEP_CONN): some
/// stay open afterwards, far fewer than the requests.
fn check_kept_open(s: &Site, responder: &Responder) {
    for _ in 0..12 {
        s.get_ok("/json");
    }
    // Kept open (none would be without reuse) and reused: fewer than the
    // requests of this site so far (12 here and those of the checks
    // before). Apache's pool is per worker thread, and its event MPM hands
    // sequential requests to whichever idle thread: usually 1-4 threads,
    // 5 seen once in CI, so the bound is the request count, not a guess.
    let open = responder.connections();
    assert!(
        (1..12).contains(&open),
        "{}: {open} connections open to wsgi-fcgi after 12 requests \
         (expected at least one kept open and reused, fewer than the requests)",
        s.web.name
    );
}

fn site<'a>(web: &'a Server, log: &'a dyn Logged) -> Site<'a> {
    let prefix = MOUNT;
    Site { web, log, prefix }
}

cases! {
    nginx_unix_socket => nginx_site(Listen::Unix, true);
    nginx_tcp => nginx_site(Listen::Tcp, false);
    nginx_django => run_nginx_django();
    nginx_hgweb_clone => nginx_hgweb();
    nginx_pip_uploads_to_and_installs_from_pypiserver => pypiserver(false);
    apache_pip_uploads_to_and_installs_from_pypiserver => pypiserver(true);
    nginx_trac_creates_a_ticket => trac(false);
    apache_trac_creates_a_ticket => trac(true);
    apache_proxy_fcgi_unix_socket => apache_proxy(Listen::Unix);
    apache_proxy_fcgi_tcp => apache_proxy(Listen::Tcp);
    apache_fcgid => run_apache_fcgid();
    lighttpd_socket => run_lighttpd_socket();
    lighttpd_bin_path => run_lighttpd_bin_path();
    spawn_fcgi_fd0 => run_spawn_fcgi_fd0();
    nginx_ten_hup_reloads_under_load => nginx_reloads_under_load();
    nginx_max_requests_50_under_load => nginx_max_requests_under_load();
    nginx_preload_hup_reloads_under_load => nginx_preload_reloads_under_load();
    nginx_keepalive_load_spreads_over_two_workers => nginx_spread_over_workers();
    nginx_pools_hup_adds_removes_and_changes_under_load => nginx_pools_reconfigured();
    haproxy_default_under_load => run_haproxy(&[]);
    haproxy_keep_conn_under_load => run_haproxy(&["option keep-conn"]);
    haproxy_mpxs_conns_under_load => run_haproxy(&[
        "option mpxs-conns",
        "option max-reqs 10",
        "option get-values",
        "http-reuse always",
    ]);
}

/// `--workers 2` behind nginx's keepalive pool under wrk: the kept
/// connections (and so the requests) are spread over both workers — no
/// worker serves more than 60% (the status page's per-worker counts). The
/// pool is opened in one burst at the start, and every connection stays.
fn nginx_spread_over_workers() -> Option<()> {
    let app = App::file("fcgi_site.py")?;
    let responder = Responder::launch(Listen::Unix, |bind| {
        let mut cmd = Command::new(wsgi_fcgi());
        cmd.args(app.args())
            .args(["--workers", "2", "--threads", "1", "--bind", bind])
            .args(["--status-path", "/status"]);
        if let Some(group) = socket_group() {
            cmd.args(["--socket-group", group]);
        }
        cmd
    });
    let web = nginx(&responder.address(), MOUNT)?;
    // Both workers up and accepting (two rows, neither "Starting": a
    // worker still importing its app when the pool opens gets none of it).
    let status = || {
        let out = Command::new(wsgi_fcgi())
            .args(["request", &responder.address(), "/status?json&full"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let accepting = |status: serde_json::Value| {
        let starting = match &status["processes"] {
            serde_json::Value::Array(rows) => {
                rows.iter().any(|r| r["state"].as_str() == Some("Starting"))
            }
            _ => true,
        };
        status["total processes"].as_f64() == Some(2.0) && !starting
    };
    while !accepting(status()) {
        assert!(std::time::Instant::now() < deadline, "{}", responder.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let load = wrk(&format!("http://127.0.0.1:{}{MOUNT}/json", web.port), 16, 3)?;
    assert_eq!(load.non_2xx, 0, "{load:?}");
    let counts: Vec<f64> = match &status()["processes"] {
        serde_json::Value::Array(rows) => {
            rows.iter().filter_map(|r| r["requests"].as_f64()).collect()
        }
        other => panic!("no processes in the status page: {other:?}"),
    };
    let total: f64 = counts.iter().sum();
    eprintln!("requests per worker under nginx keep-alive: {counts:?} of {total}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(
        total >= load.requests as f64 * 0.9,
        "{counts:?} vs {load:?}"
    );
    let top = counts.iter().cloned().fold(0.0, f64::max);
    assert!(
        top <= 0.6 * total,
        "one worker served {top} of {total} requests ({counts:?})"
    );
    Some(())
}

/// HAProxy in front of `responder` with the shipped snippet, the
/// commented-out `enable` lines of it switched on.
fn haproxy(responder: &Responder, enable: &[&str]) -> Option<Server> {
    start("haproxy", &[], |dir, port| {
        let snippet = support::root().join("conf/haproxy/wsgi-fcgi.cfg");
        let mut text = std::fs::read_to_string(&snippet).unwrap();
        for line in enable {
            let commented = format!("    # {line}\n");
            assert!(text.contains(&commented), "{line:?} is not in {snippet:?}");
            text = text.replace(&commented, &format!("    {line}\n"));
        }
        let socket = responder.socket().display().to_string();
        text = text.replace("\"${WSGI_FCGI_ADDR}\"", &socket);
        let main = format!(
            r#"# Generated by tests/webservers_fcgi.rs
global
    log stderr format raw local0
    maxconn 512
defaults
    mode http
    log global
    # Only failed requests, with HAProxy's reason (termination state).
    option httplog
    option dontlog-normal
    timeout connect 5s
    timeout client 30s
    # A request left hanging shows up as a 504 within the run.
    timeout server 3s
frontend web
    bind 127.0.0.1:{port}
    default_backend wsgi_fcgi
"#
        );
        std::fs::write(dir.join("main.cfg"), main).unwrap();
        text
    })
}

/// What wrk reported.
#[derive(Debug)]
struct Load {
    requests: u64,
    non_2xx: u64,
    socket_errors: String,
}

/// `wrk -c CONNECTIONS` against `url` for `seconds`.
fn wrk(url: &str, connections: u32, seconds: u32) -> Option<Load> {
    let wrk = http::require_program("wrk", "wrk")?;
    let out = Command::new(wrk)
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["--timeout", "5s", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk: {text}");
    let number = |line: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or(0)
    };
    let mut load = Load {
        requests: 0,
        non_2xx: 0,
        socket_errors: String::new(),
    };
    for line in text.lines().map(str::trim) {
        if line.contains(" requests in ") {
            load.requests = number(line);
        } else if line.starts_with("Non-2xx or 3xx responses:") {
            load.non_2xx = number(line);
        } else if line.starts_with("Socket errors:") {
            load.socket_errors = line.to_string();
        }
    }
    assert!(load.requests > 0, "wrk printed no request count: {text}");
    Some(load)
}

/// HAProxy → wsgi-fcgi (Flask, fcgi_site.py, mounted at the root as the
/// snippet's `path-info` says) in one of its connection modes.
fn run_haproxy(enable: &[&str]) -> Option<()> {
    let app = App::file("fcgi_site.py")?;
    let responder = responder(&app, Listen::Unix);
    let web = haproxy(&responder, enable)?;
    let s = Site {
        web: &web,
        log: &responder,
        prefix: "",
    };
    s.check_mounted_at_root();
    // Flask under load, each response's close() taking 20 ms: HAProxy sends
    // the next request of a connection before our END_REQUEST.
    let load = wrk(&format!("http://127.0.0.1:{}/slow-close", web.port), 32, 5)?;
    eprintln!("HAProxy {enable:?}: {load:?}");
    let no_socket_errors = load
        .socket_errors
        .split(|c: char| !c.is_ascii_digit())
        .all(|n| n.is_empty() || n == "0");
    let clean = load.non_2xx == 0 && no_socket_errors;
    assert!(
        clean,
        "HAProxy {enable:?}: {load:?}\nhaproxy: {}\nwsgi-fcgi: {}",
        web.log(),
        responder.log()
    );
    assert!(load.requests > 100, "{load:?}");
    Some(())
}

/// nginx → wsgi-fcgi serving fcgi_site.py over `listen`.
fn nginx_site(listen: Listen, big: bool) -> Option<()> {
    let app = App::file("fcgi_site.py")?;
    let responder = responder(&app, listen);
    let web = nginx(&responder.address(), MOUNT)?;
    let s = site(&web, &responder);
    check_environ(&s);
    check_flask(&s);
    s.check_stream();
    if big {
        s.check_big();
    }
    check_kept_open(&s, &responder);
    Some(())
}

fn run_nginx_django() -> Option<()> {
    let venv = support::venv()?;
    let (spec, chdir) = ("djangoapp.wsgi".into(), Some(support::app("")));
    let app = App {
        spec,
        venv,
        chdir,
        env: vec![],
    };
    let responder = responder(&app, Listen::Unix);
    let web = nginx(&responder.address(), MOUNT)?;
    let s = site(&web, &responder);
    assert_eq!(s.get_ok("/").text(), "Hello from Django\n");
    let j = s.get_ok("/json/?q=1").json();
    assert_eq!(j["script_name"].as_str(), Some(MOUNT), "{j:?}");
    assert_eq!(j["path"].as_str(), Some("/app/json/"), "{j:?}");
    assert_eq!(j["path_info"].as_str(), Some("/json/"), "{j:?}");
    assert_eq!(j["q"]["q"].as_str(), Some("1"), "{j:?}");
    s.check_redirect("/go/", "/app/json/");
    s.check_form("/form/");
    s.check_upload("/upload/");
    s.check_500("/boom/", &["SECRET-DJANGO-DETAIL"]);
    Some(())
}

fn apache_proxy(listen: Listen) -> Option<()> {
    let app = App::file("fcgi_site.py")?;
    let responder = responder(&app, listen);
    let backend = match listen {
        Listen::Unix => format!("unix:{}|fcgi://localhost", responder.socket().display()),
        Listen::Tcp => format!("fcgi://127.0.0.1:{}", responder.port()),
    };
    let web = apache(Apache::Proxy(backend))?;
    let s = site(&web, &responder);
    check_environ(&s);
    check_flask(&s);
    s.check_stream();
    if listen == Listen::Unix {
        s.check_big();
    }
    check_kept_open(&s, &responder);
    Some(())
}

fn run_apache_fcgid() -> Option<()> {
    let app = App::file("fcgi_site.py")?;
    let web = apache(Apache::Fcgid(&app))?;
    // mod_fcgid gives wsgi-fcgi's stderr to Apache's error log.
    let s = site(&web, &web);
    check_environ(&s);
    check_flask(&s);
    s.check_stream();
    s.check_big();
    // The processes mod_fcgid started adopted the socket on fd 0.
    let log = web.log();
    assert!(log.contains("app threads on 1 socket(s)"), "{log}");
    Some(())
}

fn run_lighttpd_socket() -> Option<()> {
    let app = App::file("fcgi_site.py")?;
    let responder = responder(&app, Listen::Unix);
    let web = lighttpd(Some(&responder), &app)?;
    let s = site(&web, &responder);
    check_environ(&s);
    check_flask(&s);
    s.check_stream();
    s.check_big();
    Some(())
}

fn run_lighttpd_bin_path() -> Option<()> {
    let app = App::file("fcgi_site.py")?;
    let web = lighttpd(None, &app)?;
    let s = site(&web, &web);
    let r = web.get("/app/environ");
    let refused = "a value is required for '--chdir";
    if r.status != 200 && web.log_since(&[], &[refused]).contains(refused) {
        panic!(
            "gateway bug: lighttpd starts wsgi-fcgi with WSGI_CHDIR=\"\" (the snippet's \
             \"no chdir\"; wsgi-cgi treats an empty WSGI_* as unset) and wsgi-fcgi exits \
             at once with \"error: a value is required for '--chdir <DIR>'\", so lighttpd \
             answers {} (its log follows)",
            r.status
        );
    }
    check_environ(&s);
    check_flask(&s);
    s.check_stream();
    Some(())
}

fn run_spawn_fcgi_fd0() -> Option<()> {
    let app = App::file("fcgi_site.py")?;
    let spawned = spawn_fcgi(&app)?;
    let address = format!("unix:{}", spawned.dir.join("app.sock").display());
    let mut probe = Command::new(wsgi_fcgi());
    let probe = probe
        .args(["request", &address, "/environ?probe=1"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success(),
        "wsgi-fcgi request: {:?} {out}",
        probe.status
    );
    let probed = out.starts_with("Status: 200") && out.contains(r#""QUERY_STRING": "probe=1""#);
    assert!(probed, "{out}");
    let web = nginx(&address, MOUNT)?;
    let s = site(&web, &spawned);
    check_environ(&s);
    check_flask(&s);
    s.check_stream();
    Some(())
}

/// Mercurial's hgweb at /hg/ behind nginx: its pages link under /hg/ and
/// `hg clone` over HTTP gets the commit.
fn nginx_hgweb() -> Option<()> {
    const DESC: &str = "first commit over fcgi";
    let mut app = App::file("hgweb_app.py")?;
    let hg = app.venv.join("bin/hg");
    if !hg.is_file() {
        support::skip("no hg in the test virtualenv: rerun tests/setup-venv.sh (mercurial)");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (repo, clone) = (tmp.path().join("repo"), tmp.path().join("clone"));
    let hg = |args: &[&str]| {
        let mut cmd = Command::new(&hg);
        let out = cmd
            .args(args)
            .env("HGRCPATH", "")
            .env("HGPLAIN", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "hg {args:?}: {stdout}{stderr}");
        stdout
    };
    let (r, c) = (repo.to_str().unwrap(), clone.to_str().unwrap());
    hg(&["init", r]);
    std::fs::write(repo.join("README"), "served by wsgi-fcgi\n").unwrap();
    hg(&["-R", r, "add", "-q", &format!("{r}/README")]);
    hg(&["-R", r, "commit", "-qu", "test", "-m", DESC]);

    app.env.push(("HGWEB_REPO", r.to_string()));
    let responder = responder(&app, Listen::Unix);
    let web = nginx(&responder.address(), "/hg")?;
    let page = web.get("/hg/");
    assert_eq!(page.status, 200, "{page:?}");
    let html = page.text();
    assert!(
        html.contains(DESC) && html.contains(r#"href="/hg/"#),
        "{html}"
    );

    let url = format!("http://127.0.0.1:{}/hg/", web.port);
    hg(&["clone", "-q", &url, c]);
    assert_eq!(hg(&["-R", c, "log", "-T", "{desc}"]), DESC);
    let readme = std::fs::read_to_string(clone.join("README")).unwrap();
    assert_eq!(readme, "served by wsgi-fcgi\n");
    Some(())
}

/// pip and pypiserver behind Debian's stock nginx (or Apache mod_proxy_fcgi)
/// and our snippet, no workaround:
/// pypiserver's app built by its factory with arguments (`--app
/// 'pypiserver:app(roots=[...], ...)'`, as its docs write it for gunicorn); a
/// wheel uploaded with a chunked request body (nginx de-chunks it, sets
/// CONTENT_LENGTH and still passes `Transfer-Encoding: chunked`: bottle then
/// de-chunked again and answered 400); then `pip download` through the index.
fn pypiserver(behind_apache: bool) -> Option<()> {
    let app = App::file("hello.py")?;
    let python = app.venv.join("bin/python");
    let has = Command::new(&python)
        .args(["-c", "import pypiserver"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        support::skip("no pypiserver in the test virtualenv: rerun tests/setup-venv.sh");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (packages, out) = (tmp.path().join("packages"), tmp.path().join("out"));
    std::fs::create_dir_all(&packages).unwrap();
    let wheel = tmp.path().join("demo_pkg-1.0-py3-none-any.whl");
    let built = Command::new(&python)
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
             \x20   z.writestr('demo_pkg/__init__.py', 'VALUE = 42\\n')\n\
             \x20   z.writestr('demo_pkg-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: demo-pkg\\nVersion: 1.0\\n')\n\
             \x20   z.writestr('demo_pkg-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n\
             \x20   z.writestr('demo_pkg-1.0.dist-info/RECORD', '')\n",
        )
        .arg(&wheel)
        .status()
        .unwrap();
    assert!(built.success());
    let spec = format!(
        "pypiserver:app(roots=[{:?}], authenticate=[], password_file='.')",
        packages.display().to_string()
    );
    let pypi = App { spec, ..app };
    let responder = responder(&pypi, Listen::Unix);
    let (web, prefix) = if behind_apache {
        let backend = format!("unix:{}|fcgi://localhost", responder.socket().display());
        (apache(Apache::Proxy(backend))?, MOUNT)
    } else {
        (nginx(&responder.address(), "/pypi")?, "/pypi")
    };
    // The upload, chunked, as twine's streaming uploads may send it.
    let content = std::fs::read(&wheel).unwrap();
    let (content_type, body) = http::multipart(
        &[
            (":action", "file_upload"),
            ("name", "demo-pkg"),
            ("version", "1.0"),
        ],
        ("content", "demo_pkg-1.0-py3-none-any.whl", &content),
    );
    let type_header = [("Content-Type", content_type.as_str())];
    let upload = http::post_chunked(
        web.port,
        &format!("{prefix}/"),
        &type_header,
        &body,
        body.len(),
    );
    assert!(
        upload.status == 200,
        "upload: {upload:?}\n{}\n{}",
        web.log(),
        responder.log()
    );
    assert!(packages.join("demo_pkg-1.0-py3-none-any.whl").is_file());
    let index = format!("http://127.0.0.1:{}{prefix}/simple/", web.port);
    let pip = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir"])
        .args([
            "--disable-pip-version-check",
            "--index-url",
            &index,
            "demo-pkg==1.0",
            "-d",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        pip.status.success(),
        "pip download: {}{}",
        String::from_utf8_lossy(&pip.stdout),
        String::from_utf8_lossy(&pip.stderr)
    );
    assert!(out.join("demo_pkg-1.0-py3-none-any.whl").is_file());
    Some(())
}

/// Trac behind Debian's stock nginx (or Apache mod_proxy_fcgi) and our
/// snippet, as its WSGI docs set it up: the new-ticket form (its token in a cookie and a hidden field),
/// the POST that creates the ticket and its redirect, the ticket page.
fn trac(behind_apache: bool) -> Option<()> {
    let mut app = App::file("trac_app.py")?;
    let admin = app.venv.join("bin/trac-admin");
    if !admin.is_file() {
        support::skip("no trac-admin in the test virtualenv: rerun tests/setup-venv.sh (trac)");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let env = tmp.path().join("env");
    let admin = |args: &[&str]| {
        let out = Command::new(&admin).arg(&env).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "trac-admin {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    admin(&["initenv", "Served", "sqlite:db/trac.db"]);
    admin(&[
        "permission",
        "add",
        "anonymous",
        "TICKET_CREATE",
        "TICKET_MODIFY",
    ]);
    app.env.push(("TRAC_ENV", env.display().to_string()));
    let responder = responder(&app, Listen::Unix);
    let (web, prefix) = if behind_apache {
        let backend = format!("unix:{}|fcgi://localhost", responder.socket().display());
        (apache(Apache::Proxy(backend))?, MOUNT)
    } else {
        (nginx(&responder.address(), "/trac")?, "/trac")
    };
    let form = web.get(&format!("{prefix}/newticket"));
    assert_eq!(form.status, 200, "{}\n{}", form.text(), responder.log());
    let cookie = form
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| v.strip_prefix("trac_form_token="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no form token cookie: {:?}", form.headers))
        .to_string();
    let body = format!(
        "__FORM_TOKEN={cookie}&field_summary=Served+by+wsgi-fcgi&field_type=defect\
         &field_description=Created+through+nginx&field_reporter=anonymous&submit=Create+ticket"
    );
    let cookie_header = format!("trac_form_token={cookie}");
    let created = web.request(
        "POST",
        &format!("{prefix}/newticket"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", cookie_header.as_str()),
        ],
        body.as_bytes(),
    );
    assert_eq!(
        created.status,
        303,
        "{}\n{}",
        created.text(),
        responder.log()
    );
    let location = created.header("Location").unwrap_or_default().to_string();
    assert!(
        location.ends_with(&format!("{prefix}/ticket/1")),
        "{location}"
    );
    let ticket = web.get(&format!("{prefix}/ticket/1"));
    assert_eq!(ticket.status, 200);
    assert!(
        ticket.text().contains("Served by wsgi-fcgi"),
        "{}",
        ticket.text()
    );
    Some(())
}

/// A request through nginx: the app version served.
type Fetch = Box<dyn Fn() -> Result<String, String>>;

/// `wsgi-fcgi --workers 2 EXTRA` serving reloadable.py (version file
/// starting at "v0") behind nginx (upstream keepalive pool,
/// `fastcgi_keep_conn on`), four clients requesting without pause while
/// `during(master pid, version file, log)` runs: not one request may fail.
/// Returns the requests served and a fetch of the current version.
fn nginx_master_under_load(
    extra: &[&str],
    during: impl FnOnce(u32, &Path, &dyn Fn() -> String),
) -> Option<(usize, Fetch)> {
    let mut app = App::file("reloadable.py")?;
    let versions = tempfile::tempdir().unwrap();
    let version_file = versions.path().join("version");
    std::fs::write(&version_file, "v0").unwrap();
    app.env
        .push(("RELOADABLE_VERSION", version_file.display().to_string()));
    let responder = Responder::launch(Listen::Unix, |bind| {
        let mut cmd = Command::new(wsgi_fcgi());
        cmd.args(app.args())
            .args(["--workers", "2", "--threads", "2", "--bind", bind])
            .args(extra);
        if let Some(group) = socket_group() {
            cmd.args(["--socket-group", group]);
        }
        cmd.envs(app.env.iter().map(|(k, v)| (k, v)));
        cmd
    });
    let web = nginx(&responder.address(), MOUNT)?;
    let port = web.port;
    // One request on its own connection to nginx: the version served.
    let fetch = move || http::first_word(port, "/app/");
    assert_eq!(fetch(), Ok("v0".to_string()), "{}", responder.log());
    let clients = http::Clients::start(4, fetch);
    let log = || responder.log();
    during(responder.pid, &version_file, &log);
    let (served, failures) = clients.finish();
    none_failed(served, &failures, &web, &responder);
    // Keep both servers up for the caller's last checks.
    let keep = (web, responder, versions);
    let fetch_after = move || {
        let _ = &keep;
        fetch()
    };
    Some((served, Box::new(fetch_after)))
}

/// Not one of the load's requests failed (else: how many, the first, both logs).
fn none_failed(
    served: usize,
    failures: &[(std::time::Instant, String)],
    web: &Server,
    responder: &Responder,
) {
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}\nnginx: {}\nwsgi-fcgi: {}",
        failures.len(),
        served + failures.len(),
        failures.first(),
        web.log(),
        responder.log()
    );
}

fn wait_for_log(log: &dyn Fn() -> String, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !log().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} within 30 s: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ten HUP reloads under load, each with a new version of the app: not one
/// request fails, and the last version is what is served afterwards.
fn nginx_reloads_under_load() -> Option<()> {
    let (served, fetch) = nginx_master_under_load(&[], |master, version_file, log| {
        for round in 1..=10 {
            std::fs::write(version_file, format!("v{round}")).unwrap();
            let hup = Command::new("kill")
                .args(["-s", "HUP", &master.to_string()])
                .status();
            assert!(hup.is_ok_and(|s| s.success()));
            wait_for_log(log, &format!("master: generation {round} ready"));
            // Some load on the new generation before the next reload.
            std::thread::sleep(Duration::from_millis(300));
        }
    })?;
    eprintln!("10 HUP reloads through nginx: {served} requests served, none failed");
    assert!(served > 200, "only {served} requests in ten reloads");
    for _ in 0..10 {
        assert_eq!(fetch(), Ok("v10".to_string()));
    }
    Some(())
}

/// `--max-requests 50` under keep-alive load: workers are replaced again
/// and again, and not one request fails.
fn nginx_max_requests_under_load() -> Option<()> {
    let (served, _) = nginx_master_under_load(&["--max-requests", "50"], |_, _, log| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while log().matches("recycled (max-requests)").count() < 10 {
            assert!(std::time::Instant::now() < deadline, "{}", log());
            std::thread::sleep(Duration::from_millis(20));
        }
    })?;
    eprintln!("--max-requests 50 through nginx: {served} requests served, none failed");
    Some(())
}

/// `--preload`: five HUP reloads under load, each importing a new version
/// of the app in a new template: not one request fails, and the last
/// version is served afterwards.
fn nginx_preload_reloads_under_load() -> Option<()> {
    let (served, fetch) = nginx_master_under_load(&["--preload"], |master, version_file, log| {
        for round in 1..=5 {
            std::fs::write(version_file, format!("v{round}")).unwrap();
            let hup = Command::new("kill")
                .args(["-s", "HUP", &master.to_string()])
                .status();
            assert!(hup.is_ok_and(|s| s.success()));
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !log().contains(&format!("master: generation {round} ready")) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "reload {round}: {}",
                    log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    })?;
    eprintln!("5 --preload HUP reloads through nginx: {served} requests served, none failed");
    for _ in 0..10 {
        assert_eq!(fetch(), Ok("v5".to_string()));
    }
    Some(())
}

/// One master with pools behind nginx (a connection per request, four
/// clients without pause) on pool `main`: HUP with `main` changed (a new
/// app file, `--pm dynamic`), pool `old` removed and `new` added — not one
/// request fails, `main` serves the new app, `old`'s workers finish and its
/// socket file goes, `new` serves. Then a configuration that does not parse
/// and HUP: nothing changes (same workers), the log says why.
fn nginx_pools_reconfigured() -> Option<()> {
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let template = std::fs::read_to_string(support::app("warm_app.py")).unwrap();
    for version in ["main-v1", "main-v2", "old", "new"] {
        let file = top.path().join(format!("{version}.py"));
        let text = template.replace("VERSION = \"v1\"", &format!("VERSION = \"{version}\""));
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let group = socket_group().map_or(String::new(), |g| format!("socket-group = \"{g}\"\n"));
    let dir = top.path().to_path_buf();
    let pool = |name: &str, app: &str, extra: &str| {
        format!(
            "[pool.{name}]\napp = \"{}\"\nbind = \"unix:{}\"\n{extra}\n",
            dir.join(format!("{app}.py")).display(),
            dir.join(format!("{name}.sock")).display()
        )
    };
    let config = top.path().join("pools.toml");
    let head = format!("threads = 2\n{group}");
    std::fs::write(
        &config,
        format!(
            "{head}{}{}",
            pool("main", "main-v1", "workers = 2"),
            pool("old", "old", "workers = 1")
        ),
    )
    .unwrap();
    let main_socket = top.path().join("main.sock");
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.arg("--config").arg(&config);
    let responder = Responder::spawn(cmd, Addr::Unix(main_socket.clone()), top);
    let top = responder.dir.path().to_path_buf();
    let web = nginx(&responder.address(), MOUNT)?;
    let port = web.port;
    let fetch = move || http::first_word(port, "/app/");
    assert!(
        wait_until(Duration::from_secs(20), || fetch() == Ok("main-v1".into())),
        "{}\n{}",
        web.log(),
        responder.log()
    );
    let clients = http::Clients::start(4, fetch);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(
        &config,
        format!(
            "{head}{}{}",
            pool(
                "main",
                "main-v2",
                "pm = \"dynamic\"\nstart-workers = 2\nmax-workers = 4"
            ),
            pool("new", "new", "workers = 1")
        ),
    )
    .unwrap();
    let hup = |pid: u32| {
        let sent = Command::new("kill")
            .args(["-s", "HUP", &pid.to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()));
    };
    hup(responder.pid);
    assert!(
        wait_until(Duration::from_secs(30), || fetch() == Ok("main-v2".into())
            && responder.log().contains("pool old: removed")),
        "{}",
        responder.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (served, failures) = clients.finish();
    none_failed(served, &failures, &web, &responder);
    eprintln!("pools reconfigured by HUP through nginx: {served} requests, none failed");
    assert!(served > 50, "only {served} requests");
    assert!(!top.join("old.sock").exists(), "old.sock is still there");
    let new = Addr::Unix(top.join("new.sock"))
        .connect()
        .unwrap()
        .request(1, &Req::get("/"));
    assert_eq!(new.status(), 200, "{}", responder.log());
    assert!(new.text().starts_with("new "), "{}", new.text());

    // A configuration that does not parse: nothing changes.
    let before = crate::process::workers_of(responder.pid);
    std::fs::write(&config, "[pool.main\nbroken").unwrap();
    hup(responder.pid);
    assert!(
        wait_until(Duration::from_secs(10), || responder
            .log()
            .contains("nothing changed")),
        "{}",
        responder.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(crate::process::workers_of(responder.pid), before);
    assert_eq!(fetch(), Ok("main-v2".into()));
    Some(())
}
