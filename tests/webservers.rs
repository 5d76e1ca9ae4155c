//! End to end through real web servers: Apache 2.4 (mod_cgid) and lighttpd
//! (mod_cgi), each started on a free loopback port with a generated main
//! configuration that includes the shipped snippet from conf/, and serving
//! one fixture app two ways at once:
//!
//! - mounted at `/app` with its settings in the environment (Apache `SetEnv`,
//!   lighttpd `setenv.add-environment`), the binary itself as the CGI program;
//! - script mode: `/cgi-bin/app.cgi`, a `#!<wsgi-cgi>` file with TOML settings.
//!
//! The `*_warm_*` tests serve Flask and Django in warm mode (`warm = true`
//! in the script, `Define WSGI_CGI_WARM_DIR` for Apache's mount; lighttpd's
//! mount stays cold): the same checks, the tracebacks in the responders'
//! logs, and a responder per app left running in the warm directory.
//!
//! A missing server, or (Apache running as root) a `www-data` user that
//! cannot reach the binary or libpython, is reported with `support::skip`.

use crate::support;
use crate::support::http;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use http::{Logged, Response, Server, Site};

/// Where every server mounts the app (the snippets' default prefix) …
const MOUNT: &str = "/app";
/// … and where its script-mode file is.
const SCRIPT: &str = "/cgi-bin/app.cgi";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Apache,
    Lighttpd,
}

/// What a server serves: the settings for the `/app` mount (environment) and
/// for the script file (TOML); an empty string is an unset setting.
struct Served {
    mount_app: String,
    mount_pythonpath: String,
    script_app: String,
    /// Script mode's `pythonpath` (empty: none).
    script_pythonpath: String,
    venv: String,
    /// Warm mode, in the server's directory `warm` (owned by the user CGI
    /// programs run as).
    warm: bool,
    /// Who CGI programs run as, if not this process's user.
    cgi_user: Option<u32>,
}

impl Served {
    /// A fixture app; Flask (which needs the test virtualenv, else `None`) is
    /// mounted by module name on WSGI_PYTHONPATH, the others by file name.
    fn new(name: &str) -> Option<Served> {
        let file = support::app(name).display().to_string();
        let apps = support::app("").display().to_string();
        match name {
            "flask_app.py" => Some(Served {
                mount_app: "flask_app:app".into(),
                mount_pythonpath: apps,
                script_app: file,
                script_pythonpath: String::new(),
                venv: support::venv()?.display().to_string(),
                warm: false,
                cgi_user: None,
            }),
            "djangoapp" => Some(Served {
                mount_app: "djangoapp.wsgi".into(),
                mount_pythonpath: apps.clone(),
                script_app: "djangoapp.wsgi".into(),
                script_pythonpath: apps,
                venv: support::venv()?.display().to_string(),
                warm: false,
                cgi_user: None,
            }),
            _ => Some(Served {
                mount_app: file.clone(),
                mount_pythonpath: String::new(),
                script_app: file,
                script_pythonpath: String::new(),
                venv: String::new(),
                warm: false,
                cgi_user: None,
            }),
        }
    }
}

/// Apache started as root runs CGI programs as `www-data`: check that this
/// user can run the binary, load the libpython it was linked against (else
/// the loader silently falls back to the distribution's libpython of the
/// same soname, if any) and read the app and the virtualenv.
fn www_data_can_run(served: &Served) -> Result<(), String> {
    // (A module spec is read from the script's pythonpath.)
    let app_file = match served.script_app.contains('/') {
        true => served.script_app.clone().into(),
        false => Path::new(&served.script_pythonpath)
            .join(served.script_app.replace('.', "/"))
            .with_extension("py"),
    };
    let mut wanted = vec![
        ("-x", support::wsgi_cgi()),
        ("-x", support::wsgi_cgi().with_file_name("wsgi-fcgi")),
        ("-r", app_file),
    ];
    // (wsgi-cgi links no libpython; its cold path, wsgi-fcgi, does.)
    let fcgi = support::wsgi_cgi().with_file_name("wsgi-fcgi");
    wanted.extend(http::libpython(&fcgi).map(|lib| ("-r", lib)));
    if !served.venv.is_empty() {
        wanted.push(("-r", Path::new(&served.venv).join("pyvenv.cfg")));
    }
    http::www_data_can(&wanted)
        .map_err(|why| format!("Apache runs CGI programs as www-data: {why}"))
}

/// Warm mode's directory for a server's directory `dir`.
fn warm_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("warm")
}

/// The warm-mode responders' logs (one per app and settings).
struct WarmLogs(std::path::PathBuf);

impl Logged for WarmLogs {
    fn name(&self) -> &str {
        "the warm-mode responders"
    }
    fn log_files(&self) -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(&self.0).into_iter().flatten().flatten();
        let logs = entries.map(|e| e.path());
        logs.filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect()
    }
}

/// Write `dir/cgi-bin/app.cgi` (and an empty document root) for `served`.
fn write_site(dir: &Path, served: &Served) {
    let cgi_bin = dir.join("cgi-bin");
    std::fs::create_dir_all(&cgi_bin).unwrap();
    std::fs::create_dir_all(dir.join("htdocs")).unwrap();
    let mut script = format!(
        "#!{}\n# script mode, written by tests/webservers.rs\napp = {:?}\n",
        support::wsgi_cgi().display(),
        served.script_app
    );
    if !served.venv.is_empty() {
        script.push_str(&format!("venv = {:?}\n", served.venv));
    }
    if !served.script_pythonpath.is_empty() {
        script.push_str(&format!("pythonpath = [{:?}]\n", served.script_pythonpath));
    }
    if served.warm {
        let warm = warm_dir(dir);
        script.push_str(&format!(
            "warm = true\nwarm-dir = {:?}\n",
            warm.display().to_string()
        ));
        std::fs::create_dir_all(&warm).unwrap();
        std::fs::set_permissions(&warm, std::fs::Permissions::from_mode(0o700)).unwrap();
        if let Some(uid) = served.cgi_user {
            std::os::unix::fs::chown(&warm, Some(uid), Some(uid)).unwrap();
        }
    }
    std::fs::write(cgi_bin.join("notes.txt"), "SECRET-NOTES\n").unwrap();
    let path = cgi_bin.join("app.cgi");
    std::fs::write(&path, script).unwrap();
    for p in [&path, &cgi_bin] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

const APACHE_MODULES: &str =
    "mpm_event authz_core mime alias env setenvif cgid log_config unixd dir";

fn apache_conf(dir: &Path, port: u16, served: &Served) -> String {
    let d = dir.display();
    let mut conf = format!(
        "# Generated by tests/webservers.rs\n\
         ServerRoot \"{d}\"\nDefaultRuntimeDir \"{d}\"\nPidFile \"{d}/httpd.pid\"\n\
         ErrorLog \"{d}/error.log\"\nLogLevel warn\nListen 127.0.0.1:{port}\nServerName 127.0.0.1\n"
    );
    if http::is_root() {
        conf.push_str("User www-data\nGroup www-data\n");
    }
    for m in APACHE_MODULES.split_whitespace() {
        conf.push_str(&format!(
            "<IfModule !{m}_module>\n    LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so\n</IfModule>\n"
        ));
    }
    // Apache cannot Define an empty value: unset settings stay undefined.
    let mut optional = String::new();
    let warm = match served.warm {
        true => warm_dir(dir).display().to_string(),
        false => String::new(),
    };
    for (name, value) in [
        ("WSGI_CGI_VENV", &served.venv),
        ("WSGI_CGI_PYTHONPATH", &served.mount_pythonpath),
        ("WSGI_CGI_WARM_DIR", &warm),
    ] {
        if !value.is_empty() {
            optional.push_str(&format!("Define {name} \"{value}\"\n"));
        }
    }
    conf.push_str(&format!(
        r#"TypesConfig /etc/mime.types
ScriptSock "{d}/cgid.sock"
LogFormat "%h \"%r\" %>s %b %D" test
CustomLog "{d}/access.log" test
# A granted document root: mod_cgid looks PATH_TRANSLATED up in it.
DocumentRoot "{d}/htdocs"
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory "{d}/htdocs">
    Require all granted
</Directory>
# Apache drops the Proxy request header itself (httpoxy). Re-create
# HTTP_PROXY from it, as an unpatched server would, to see the gateway keep
# it in the WSGI environ but out of os.environ.
SetEnvIf Proxy "^(.+)$" HTTP_PROXY=$1

# The snippet's settings; WSGI_CGI_PREFIX keeps its default, /app.
Define WSGI_CGI_BIN "{bin}"
Define WSGI_CGI_APP "{app}"
Define WSGI_CGI_SCRIPTS "{d}/cgi-bin"
{optional}<VirtualHost 127.0.0.1:{port}>
    ServerName 127.0.0.1
    Include "{snippet}"
</VirtualHost>
"#,
        bin = support::wsgi_cgi().display(),
        app = served.mount_app,
        snippet = support::root().join("conf/apache/wsgi-cgi.conf").display(),
    ));
    conf
}

fn lighttpd_conf(dir: &Path, port: u16, served: &Served) -> String {
    let d = dir.display();
    format!(
        r#"# Generated by tests/webservers.rs
server.modules = ( "mod_accesslog" )
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = "{d}/htdocs"
server.errorlog = "{d}/error.log"
# CGI programs' stderr (tracebacks) goes here.
server.breakagelog = "{d}/cgi-stderr.log"
server.upload-dirs = ( "{d}" )
accesslog.filename = "{d}/access.log"

var.wsgi_cgi_bin = "{bin}"
var.wsgi_cgi_prefix = "{MOUNT}"
var.wsgi_cgi_app = "{app}"
var.wsgi_cgi_venv = "{venv}"
var.wsgi_cgi_chdir = ""
var.wsgi_cgi_pythonpath = "{pythonpath}"
var.wsgi_cgi_scripts = "{d}/cgi-bin"
include "{snippet}"
"#,
        bin = support::wsgi_cgi().display(),
        app = served.mount_app,
        venv = served.venv,
        pythonpath = served.mount_pythonpath,
        snippet = support::root()
            .join("conf/lighttpd/wsgi-cgi.conf")
            .display(),
    )
}

/// Start `kind` serving `served`, or skip (returning `None`).
fn start(kind: Kind, served: &Served) -> Option<Server> {
    let (program, logs): (&str, &[&str]) = match kind {
        Kind::Apache => ("apache2", &["error.log"]),
        Kind::Lighttpd => ("lighttpd", &["error.log", "cgi-stderr.log"]),
    };
    let Some(exe) = http::find_program(program) else {
        support::skip(&format!(
            "{program} is not installed (apt-get install {program})"
        ));
        return None;
    };
    if kind == Kind::Apache {
        if !Path::new("/usr/lib/apache2/modules/mod_cgid.so").is_file() {
            support::skip("no Apache modules in /usr/lib/apache2/modules (Debian layout expected)");
            return None;
        }
        if let Err(why) = www_data_can_run(served) {
            support::skip(&why);
            return None;
        }
    }
    Some(Server::start(program, logs, |dir, port| {
        write_site(dir, served);
        let (file, conf) = match kind {
            Kind::Apache => ("httpd.conf", apache_conf(dir, port, served)),
            Kind::Lighttpd => ("lighttpd.conf", lighttpd_conf(dir, port, served)),
        };
        let conf_path = dir.join(file);
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(&exe);
        // A clean environment: nothing from the test run leaks into the CGIs.
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8");
        match kind {
            Kind::Apache => cmd.arg("-f").arg(&conf_path).arg("-DFOREGROUND"),
            Kind::Lighttpd => cmd.arg("-D").arg("-f").arg(&conf_path),
        };
        cmd
    }))
}

/// Assert the status, showing the response if not (the server's logs are
/// printed when it is dropped during the panic).
fn expect(server: &Server, response: &Response, status: u16) {
    assert_eq!(
        response.status,
        status,
        "{}: {response:?}\nbody: {}",
        server.name,
        response.text()
    );
}

/// GET `target`, expecting 200.
fn get_ok(s: &Server, target: &str) -> Response {
    let r = s.get(target);
    expect(s, &r, 200);
    r
}

fn check_flask(s: &Server, logs: &dyn Logged, _: Kind, p: &str) {
    assert_eq!(get_ok(s, &format!("{p}/")).text(), "Hello from Flask\n");

    // SCRIPT_NAME from the server is Flask's script_root: URLs stay under the prefix.
    let j = get_ok(s, &format!("{p}/json?x=1")).json();
    assert_eq!(j["script_root"].as_str(), Some(p), "{j:?}");
    assert_eq!(j["path"].as_str(), Some("/json"));
    assert_eq!(j["args"]["x"].as_str(), Some("1"));

    let r = s.get(&format!("{p}/go"));
    assert!(matches!(r.status, 301 | 302 | 303 | 307 | 308), "{r:?}");
    let location = r.header("Location").expect("Location header");
    let target = format!("{p}/json");
    let absolute = format!("http://127.0.0.1:{}{target}", s.port);
    assert!(
        location == target || location == absolute,
        "redirected to {location}"
    );
    assert_eq!(get_ok(s, &target).json()["script_root"].as_str(), Some(p));

    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = s.request(
        "POST",
        &format!("{p}/form"),
        &form,
        b"name=Zo%C3%A9&city=Paris",
    );
    expect(s, &r, 200);
    let j = r.json();
    assert_eq!(
        (j["name"].as_str(), j["city"].as_str()),
        (Some("Zoé"), Some("Paris"))
    );

    let data = http::random_bytes(1 << 20, 0x5eed);
    let (content_type, body) =
        http::multipart(&[("note", "one MiB")], ("file", "random.bin", &data));
    let r = s.request(
        "POST",
        &format!("{p}/upload"),
        &[("Content-Type", &content_type)],
        &body,
    );
    expect(s, &r, 200);
    let j = r.json();
    assert_eq!(j["filename"].as_str(), Some("random.bin"));
    assert_eq!(j["size"].as_f64(), Some((1 << 20) as f64));
    assert_eq!(j["sha256"].as_str(), Some(http::sha256_hex(&data).as_str()));
    assert_eq!(j["note"].as_str(), Some("one MiB"));

    let j = get_ok(s, &format!("{p}/path/caf%C3%A9")).json();
    assert_eq!(j["name"].as_str(), Some("café"));

    let mark = logs.log_mark();
    let r = s.get(&format!("{p}/boom"));
    expect(s, &r, 500);
    let body = r.text();
    assert!(
        !body.contains("SECRET") && !body.contains("Traceback"),
        "leaked: {body}"
    );
    let log = logs.log_since(&mark, &["Traceback", "SECRET-FLASK-DETAIL"]);
    assert!(
        log.contains("Traceback") && log.contains("SECRET-FLASK-DETAIL"),
        "not logged: {log}"
    );
}

fn check_hello(s: &Server, _: &dyn Logged, _: Kind, p: &str) {
    for target in [format!("{p}/"), p.to_string(), format!("{p}/any/path?a=b")] {
        let r = get_ok(s, &target);
        assert_eq!(r.text(), "Hello, world!\n");
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
    }
    // Other files in the scripts directory are never served as they are.
    let r = s.get("/cgi-bin/notes.txt");
    assert!(r.status >= 400 && !r.text().contains("SECRET"), "{r:?}");
}

fn check_gateway(s: &Server, _: &dyn Logged, kind: Kind, p: &str) {
    let r = s.request(
        "GET",
        &format!("{p}/environ?q=1"),
        &[("Proxy", "http://evil")],
        b"",
    );
    expect(s, &r, 200);
    let env = r.json();
    // httpoxy: whatever the server passes, the app's process never sees it.
    assert!(env.get("os.environ.HTTP_PROXY").is_some(), "{env:?}");
    assert_eq!(
        env["os.environ.HTTP_PROXY"],
        serde_json::Value::Null,
        "{env:?}"
    );
    match kind {
        // re-created by SetEnvIf in the test configuration
        Kind::Apache => assert_eq!(env["HTTP_PROXY"].as_str(), Some("http://evil")),
        // lighttpd drops the Proxy header itself
        Kind::Lighttpd => assert!(env.get("HTTP_PROXY").is_none(), "{env:?}"),
    }
    let port = s.port.to_string();
    for (key, value) in [
        ("SCRIPT_NAME", p),
        ("PATH_INFO", "/environ"),
        ("QUERY_STRING", "q=1"),
        ("REQUEST_METHOD", "GET"),
        ("wsgi.url_scheme", "http"),
        ("SERVER_PORT", &port),
    ] {
        assert_eq!(env[key].as_str(), Some(value), "{key} in {env:?}");
    }
    assert_eq!(env["wsgi.run_once"], serde_json::Value::Bool(true));

    // A request body through the server, read back exactly.
    let data = http::random_bytes(100_000, 7);
    let binary = [("Content-Type", "application/octet-stream")];
    let r = s.request("POST", &format!("{p}/echo"), &binary, &data);
    expect(s, &r, 200);
    assert!(
        r.body == data,
        "echoed {} bytes of {}",
        r.body.len(),
        data.len()
    );
    assert_eq!(r.header("X-More"), Some("0"));

    // The same body sent chunked: Apache mod_cgid passes it decoded on stdin
    // with no CONTENT_LENGTH (wsgi-cgi reads it whole and measures it; the
    // app got an empty body before), lighttpd measures it itself.
    let r = http::post_chunked(s.port, &format!("{p}/echo"), &binary, &data, 4096);
    expect(s, &r, 200);
    assert!(
        r.body == data,
        "chunked: echoed {} bytes of {}",
        r.body.len(),
        data.len()
    );
}

/// RFC 3875 §4.4: a server MAY turn an `=`-less query string into argv
/// words (Apache does, lighttpd does not). They must neither act as flags
/// nor cost the script-mode file its place as the first argument.
fn check_query_words(s: &Server, _: &dyn Logged, _: Kind, p: &str) {
    let many = vec!["w"; 1000].join("+"); // more words than Apache passes on
    let mut wrong = Vec::new();
    for query in ["--venv+/nonexistent", "x", "--app+hello.py+extra", &many] {
        let r = s.get(&format!("{p}/environ?{query}"));
        let json = r.status == 200 && r.header("Content-Type") == Some("application/json");
        if !json || r.json()["QUERY_STRING"].as_str() != Some(query) {
            let first_line = r.text().lines().next().unwrap_or_default().to_string();
            wrong.push(format!(
                "{p}/environ?{query:.30} -> {} {first_line:?}",
                r.status
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}: not served by gateway.py:\n{}",
        s.name,
        wrong.join("\n")
    );
}

fn check_broken_import(s: &Server, _: &dyn Logged, _: Kind, p: &str) {
    let mark = s.log_mark();
    let r = s.get(&format!("{p}/"));
    expect(s, &r, 500);
    assert!(!r.text().contains("SECRET"), "leaked: {}", r.text());
    let log = s.log_since(&mark, &["SECRET-IMPORT-DETAIL"]);
    assert!(log.contains("SECRET-IMPORT-DETAIL"), "not logged: {log}");
}

/// Django's routes (they end in '/').
fn check_django(s: &Server, logs: &dyn Logged, _: Kind, p: &str) {
    let site = Site {
        web: s,
        log: logs,
        prefix: p,
    };
    assert_eq!(site.get_ok("/").text(), "Hello from Django\n");
    let j = site.get_ok("/json/?q=1").json();
    assert_eq!(j["script_name"].as_str(), Some(p), "{j:?}");
    assert_eq!(j["path_info"].as_str(), Some("/json/"), "{j:?}");
    assert_eq!(j["q"]["q"].as_str(), Some("1"), "{j:?}");
    site.check_redirect("/go/", &format!("{p}/json/"));
    site.check_form("/form/");
    site.check_upload("/upload/");
    site.check_500("/boom/", &["SECRET-DJANGO-DETAIL"]);
}

/// Serve the fixture app `name` with `kind` and run `check` on both
/// prefixes; `warm`: in warm mode (where the server's configuration has it).
fn serve(kind: Kind, name: &str, warm: bool, check: fn(&Server, &dyn Logged, Kind, &str)) {
    let Some(mut served) = Served::new(name) else {
        return;
    };
    served.warm = warm;
    // Apache as root runs CGI programs as www-data; lighttpd (no
    // server.username) as the user who started it.
    if kind == Kind::Apache && http::is_root() {
        served.cgi_user = Some(33);
    }
    let Some(server) = start(kind, &served) else {
        return;
    };
    let warm_logs = WarmLogs(warm_dir(&server.dir));
    for prefix in [MOUNT, SCRIPT] {
        // (lighttpd's mount has no warm setting: it stays cold.)
        let is_warm = warm && (prefix == SCRIPT || kind == Kind::Apache);
        let logs: &dyn Logged = if is_warm { &warm_logs } else { &server };
        check(&server, logs, kind, prefix);
    }
    if warm {
        let sockets = std::fs::read_dir(warm_dir(&server.dir))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
            .count();
        let expected = if kind == Kind::Apache { 2 } else { 1 };
        assert_eq!(sockets, expected, "{}: warm-mode responders", server.name);
        let log = server.log();
        assert!(!log.contains("serving this request cold"), "{log}");
        // The responders go with the server's directory.
        let _ = Command::new("pkill")
            .args(["-TERM", "-f"])
            .arg(warm_dir(&server.dir))
            .status();
    }
}

/// One test per (server, app, checks): each starts its own server.
macro_rules! webserver_tests {
    ($($test:ident: $kind:ident, $app:literal, $warm:literal, $check:ident;)*) => {$(
        #[test]
        fn $test() {
            serve(Kind::$kind, $app, $warm, $check);
        }
    )*};
}

webserver_tests! {
    apache_flask: Apache, "flask_app.py", false, check_flask;
    apache_django: Apache, "djangoapp", false, check_django;
    apache_hello: Apache, "hello.py", false, check_hello;
    apache_environ_httpoxy_body: Apache, "gateway.py", false, check_gateway;
    apache_query_words_are_not_arguments: Apache, "gateway.py", false, check_query_words;
    apache_broken_import: Apache, "broken_import.py", false, check_broken_import;
    apache_warm_flask: Apache, "flask_app.py", true, check_flask;
    apache_warm_django: Apache, "djangoapp", true, check_django;
    apache_warm_query_words_are_not_arguments: Apache, "gateway.py", true, check_query_words;
    lighttpd_flask: Lighttpd, "flask_app.py", false, check_flask;
    lighttpd_hello: Lighttpd, "hello.py", false, check_hello;
    lighttpd_environ_httpoxy_body: Lighttpd, "gateway.py", false, check_gateway;
    lighttpd_query_words_are_not_arguments: Lighttpd, "gateway.py", false, check_query_words;
    lighttpd_broken_import: Lighttpd, "broken_import.py", false, check_broken_import;
    lighttpd_warm_flask: Lighttpd, "flask_app.py", true, check_flask;
    lighttpd_warm_django: Lighttpd, "djangoapp", true, check_django;
}
