//! End to end through real web servers: Apache 2.4 (mod_cgid) and lighttpd
//! (mod_cgi), each started on a free loopback port with a generated main
//! configuration that includes the shipped snippet from conf/, and serving
//! one fixture app two ways at once:
//!
//! - mounted at `/app` with its settings in the environment (Apache `SetEnv`,
//!   lighttpd `setenv.add-environment`), the binary itself as the CGI program;
//! - script mode: `/cgi-bin/app.cgi`, a `#!<wsgi-cgi>` file with TOML settings.
//!
//! A missing server, or (Apache running as root) a `www-data` user that
//! cannot reach the binary or libpython, is reported with `support::skip`.

#[path = "support/http.rs"]
mod http;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use http::{Json, Response, Server};

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
    venv: String,
}

impl Served {
    /// A fixture app; Flask (which needs the test virtualenv, else `None`) is
    /// mounted by module name on WSGI_PYTHONPATH, the others by file name.
    fn new(name: &str) -> Option<Served> {
        let file = support::app(name).display().to_string();
        if name != "flask_app.py" {
            let (mount_app, script_app) = (file.clone(), file);
            let (mount_pythonpath, venv) = (String::new(), String::new());
            return Some(Served {
                mount_app,
                mount_pythonpath,
                script_app,
                venv,
            });
        }
        Some(Served {
            mount_app: "flask_app:app".into(),
            mount_pythonpath: support::app("").display().to_string(),
            script_app: file,
            venv: support::venv()?.display().to_string(),
        })
    }
}

/// Apache started as root runs CGI programs as `www-data`: check that this
/// user can run the binary, load the libpython it was linked against (else
/// the loader silently falls back to the distribution's libpython of the
/// same soname, if any) and read the app and the virtualenv.
fn www_data_can_run(served: &Served) -> Result<(), String> {
    if !http::is_root() {
        return Ok(()); // Apache then runs CGI programs as the current user
    }
    let mut wanted = vec![
        ("-x", support::wsgi_cgi()),
        ("-r", served.script_app.clone().into()),
    ];
    wanted.extend(http::libpython(&support::wsgi_cgi()).map(|lib| ("-r", lib)));
    if !served.venv.is_empty() {
        wanted.push(("-r", Path::new(&served.venv).join("pyvenv.cfg")));
    }
    let www_data = |test: &str, path: &Path| {
        Command::new("runuser")
            .args(["-u", "www-data", "--", "test", test])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success())
    };
    let blocked: Vec<&PathBuf> = wanted
        .iter()
        .filter(|(test, path)| !www_data(test, path))
        .map(|(_, path)| path)
        .collect();
    if blocked.is_empty() {
        return Ok(());
    }
    let mut dirs: Vec<String> = blocked
        .iter()
        .flat_map(|p| p.ancestors().skip(1))
        .filter(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(|d| d.display().to_string())
        .collect();
    dirs.sort();
    dirs.dedup();
    Err(format!(
        "Apache runs CGI programs as www-data, which cannot reach {blocked:?}; \
         let it traverse the parent directories: `chmod o+x {}` (.ci/run does this)",
        dirs.join(" ")
    ))
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
    for (name, value) in [
        ("WSGI_CGI_VENV", &served.venv),
        ("WSGI_CGI_PYTHONPATH", &served.mount_pythonpath),
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

fn check_flask(s: &Server, _: Kind, p: &str) {
    assert_eq!(get_ok(s, &format!("{p}/")).text(), "Hello from Flask\n");

    // SCRIPT_NAME from the server is Flask's script_root: URLs stay under the prefix.
    let j = get_ok(s, &format!("{p}/json?x=1")).json();
    assert_eq!(j.get("script_root").str(), Some(p), "{j:?}");
    assert_eq!(j.get("path").str(), Some("/json"));
    assert_eq!(j.get("args").get("x").str(), Some("1"));

    let r = s.get(&format!("{p}/go"));
    assert!(matches!(r.status, 301 | 302 | 303 | 307 | 308), "{r:?}");
    let location = r.header("Location").expect("Location header");
    let target = format!("{p}/json");
    let absolute = format!("http://127.0.0.1:{}{target}", s.port);
    assert!(
        location == target || location == absolute,
        "redirected to {location}"
    );
    assert_eq!(get_ok(s, &target).json().get("script_root").str(), Some(p));

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
        (j.get("name").str(), j.get("city").str()),
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
    assert_eq!(j.get("filename").str(), Some("random.bin"));
    assert_eq!(j.get("size").num(), Some((1 << 20) as f64));
    assert_eq!(
        j.get("sha256").str(),
        Some(http::sha256_hex(&data).as_str())
    );
    assert_eq!(j.get("note").str(), Some("one MiB"));

    let j = get_ok(s, &format!("{p}/path/caf%C3%A9")).json();
    assert_eq!(j.get("name").str(), Some("café"));

    let mark = s.log_mark();
    let r = s.get(&format!("{p}/boom"));
    expect(s, &r, 500);
    let body = r.text();
    assert!(
        !body.contains("SECRET") && !body.contains("Traceback"),
        "leaked: {body}"
    );
    let log = s.log_since(&mark, &["Traceback", "SECRET-FLASK-DETAIL"]);
    assert!(
        log.contains("Traceback") && log.contains("SECRET-FLASK-DETAIL"),
        "not logged: {log}"
    );
}

fn check_hello(s: &Server, _: Kind, p: &str) {
    for target in [format!("{p}/"), p.to_string(), format!("{p}/any/path?a=b")] {
        let r = get_ok(s, &target);
        assert_eq!(r.text(), "Hello, world!\n");
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
    }
    // Other files in the scripts directory are never served as they are.
    let r = s.get("/cgi-bin/notes.txt");
    assert!(r.status >= 400 && !r.text().contains("SECRET"), "{r:?}");
}

fn check_gateway(s: &Server, kind: Kind, p: &str) {
    let r = s.request(
        "GET",
        &format!("{p}/environ?q=1"),
        &[("Proxy", "http://evil")],
        b"",
    );
    expect(s, &r, 200);
    let env = r.json();
    // httpoxy: whatever the server passes, the app's process never sees it.
    assert!(env.has("os.environ.HTTP_PROXY"), "{env:?}");
    assert_eq!(env.get("os.environ.HTTP_PROXY"), &Json::Null, "{env:?}");
    match kind {
        // re-created by SetEnvIf in the test configuration
        Kind::Apache => assert_eq!(env.get("HTTP_PROXY").str(), Some("http://evil")),
        // lighttpd drops the Proxy header itself
        Kind::Lighttpd => assert!(!env.has("HTTP_PROXY"), "{env:?}"),
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
        assert_eq!(env.get(key).str(), Some(value), "{key} in {env:?}");
    }
    assert_eq!(env.get("wsgi.run_once"), &Json::Bool(true));

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
}

/// RFC 3875 §4.4: a server MAY turn an `=`-less query string into argv
/// words (Apache does, lighttpd does not). They must neither act as flags
/// nor cost the script-mode file its place as the first argument.
fn check_query_words(s: &Server, _: Kind, p: &str) {
    let many = vec!["w"; 1000].join("+"); // more words than Apache passes on
    let mut wrong = Vec::new();
    for query in ["--venv+/nonexistent", "x", "--app+hello.py+extra", &many] {
        let r = s.get(&format!("{p}/environ?{query}"));
        let json = r.status == 200 && r.header("Content-Type") == Some("application/json");
        if !json || r.json().get("QUERY_STRING").str() != Some(query) {
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

fn check_broken_import(s: &Server, _: Kind, p: &str) {
    let mark = s.log_mark();
    let r = s.get(&format!("{p}/"));
    expect(s, &r, 500);
    assert!(!r.text().contains("SECRET"), "leaked: {}", r.text());
    let log = s.log_since(&mark, &["SECRET-IMPORT-DETAIL"]);
    assert!(log.contains("SECRET-IMPORT-DETAIL"), "not logged: {log}");
}

/// Serve the fixture app `name` with `kind` and run `check` on both prefixes.
fn serve(kind: Kind, name: &str, check: fn(&Server, Kind, &str)) {
    let Some(served) = Served::new(name) else {
        return;
    };
    let Some(server) = start(kind, &served) else {
        return;
    };
    for prefix in [MOUNT, SCRIPT] {
        check(&server, kind, prefix);
    }
}

/// One test per (server, app, checks): each starts its own server.
macro_rules! webserver_tests {
    ($($test:ident: $kind:ident, $app:literal, $check:ident;)*) => {$(
        #[test]
        fn $test() {
            serve(Kind::$kind, $app, $check);
        }
    )*};
}

webserver_tests! {
    apache_flask: Apache, "flask_app.py", check_flask;
    apache_hello: Apache, "hello.py", check_hello;
    apache_environ_httpoxy_body: Apache, "gateway.py", check_gateway;
    apache_query_words_are_not_arguments: Apache, "gateway.py", check_query_words;
    apache_broken_import: Apache, "broken_import.py", check_broken_import;
    lighttpd_flask: Lighttpd, "flask_app.py", check_flask;
    lighttpd_hello: Lighttpd, "hello.py", check_hello;
    lighttpd_environ_httpoxy_body: Lighttpd, "gateway.py", check_gateway;
    lighttpd_query_words_are_not_arguments: Lighttpd, "gateway.py", check_query_words;
    lighttpd_broken_import: Lighttpd, "broken_import.py", check_broken_import;
}
