//! Shared hosting: Apache with suEXEC (apache2-suexec-custom) serving two
//! users' `~/public_html/cgi-bin`, from conf/shared-hosting/ as shipped
//! (the host's `apache-userdir.conf`; each user's `app.cgi` and `app.fcgi`
//! with their paths filled in). Each user has a 0711 home and the app in a
//! 0700 `~/site`. Checked: script-mode CGI, the same in warm mode, and the
//! mod_fcgid wrapper each run the app as its user, who cannot list the
//! other's `~/site`; the wrapper's process stays resident; the warm
//! responder's directory is made in the home from the password database
//! (suEXEC gives no `HOME`); a `SetEnv`-only configuration (suEXEC clears
//! the variable) gets a 500 and a log line naming suEXEC — never the demo,
//! also for the binary itself dropped into `cgi-bin`.
//!
//! Needs root (it creates the users `wgalice` and `wgbob` if missing) and
//! Apache with mod_suexec, mod_userdir, mod_fcgid and the suexec-custom
//! wrapper; otherwise each test is skipped (strict mode fails it).

use crate::support;
use crate::support::http;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use http::{Logged, Server};

/// The test users.
const USERS: [&str; 2] = ["wgalice", "wgbob"];

/// The tests share the users' homes: one at a time.
static HOMES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A test user: name, uid, gid, home.
struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

fn id(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The user `name`, created if missing (home 0711 under /home).
fn user(name: &'static str) -> User {
    if id("-u", name).is_none() {
        let made = Command::new("useradd")
            .args(["--create-home", "--shell", "/usr/sbin/nologin", name])
            .status()
            .expect("run useradd");
        assert!(made.success(), "useradd {name}");
    }
    let home = PathBuf::from(format!("/home/{name}"));
    let (uid, gid) = (id("-u", name).unwrap(), id("-g", name).unwrap());
    // (A home left by an earlier user of that name is taken over.)
    std::fs::create_dir_all(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o711)).unwrap();
    User {
        name,
        uid,
        gid,
        home,
    }
}

/// Prerequisites, each missing one a skip.
fn prerequisites() -> Option<PathBuf> {
    if !http::is_root() {
        support::skip("suEXEC: needs root (test users, Apache as www-data)");
        return None;
    }
    let apache = http::find_program("apache2").or_else(|| {
        support::skip("apache2 is not installed (apt-get install apache2)");
        None
    })?;
    for module in ["suexec", "userdir", "fcgid", "cgid"] {
        let so = format!("/usr/lib/apache2/modules/mod_{module}.so");
        if !Path::new(&so).is_file() {
            support::skip(&format!(
                "no {so} (apt-get install apache2 libapache2-mod-fcgid)"
            ));
            return None;
        }
    }
    let suexec = Path::new("/usr/lib/apache2/suexec");
    let setuid = std::fs::metadata(suexec).is_ok_and(|m| m.permissions().mode() & 0o4000 != 0);
    if !setuid {
        support::skip("no setuid /usr/lib/apache2/suexec (apt-get install apache2-suexec-custom)");
        return None;
    }
    let userdir = std::fs::read_to_string("/etc/apache2/suexec/www-data").unwrap_or_default();
    if userdir.lines().nth(1) != Some("public_html/cgi-bin") {
        support::skip(
            "/etc/apache2/suexec/www-data: the userdir line is not Debian's public_html/cgi-bin",
        );
        return None;
    }
    support::venv()?;
    Some(apache)
}

/// `from` with `/usr/local/bin/` → the built binaries' directory and
/// `/home/you` → the user's home.
fn fill(text: &str, user: &User) -> String {
    let bin = support::wsgi_cgi().parent().unwrap().display().to_string();
    text.replace("/usr/local/bin/", &format!("{bin}/"))
        .replace("/home/you", &user.home.display().to_string())
}

fn write_owned(path: &Path, text: &str, mode: u32, user: &User) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
}

fn dir_owned(path: &Path, mode: u32, user: &User) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
}

/// A user's site, as the README's shared-hosting section says to lay it
/// out: the app in ~/site (0700), the shipped app.cgi (cold), warm.cgi
/// (the same with `warm = true`), app.fcgi, and the bare binary with only
/// `SetEnv` to configure it.
fn set_up(user: &User) {
    let conf = support::root().join("conf/shared-hosting");
    let site = user.home.join("site");
    dir_owned(&site, 0o700, user);
    let app = std::fs::read_to_string(support::app("suexec_app.py")).unwrap();
    write_owned(&site.join("app.py"), &app, 0o644, user);
    let venv = support::venv().unwrap().display().to_string();
    let venv_line =
        |text: String| text.replace(&format!("{}/site/venv", user.home.display()), &venv);
    for dir in ["public_html", "public_html/cgi-bin"] {
        dir_owned(&user.home.join(dir), 0o755, user);
    }
    let cgi_bin = user.home.join("public_html/cgi-bin");
    let cold = venv_line(fill(
        &std::fs::read_to_string(conf.join("app.cgi")).unwrap(),
        user,
    ));
    write_owned(&cgi_bin.join("app.cgi"), &cold, 0o755, user);
    let warm = cold.replace("# warm = true", "warm = true");
    assert_ne!(warm, cold, "conf/shared-hosting/app.cgi lost its warm line");
    write_owned(&cgi_bin.join("warm.cgi"), &warm, 0o755, user);
    let fcgi = venv_line(fill(
        &std::fs::read_to_string(conf.join("app.fcgi")).unwrap(),
        user,
    ));
    write_owned(&cgi_bin.join("app.fcgi"), &fcgi, 0o755, user);
    // The binary itself in cgi-bin, as a hosting user might drop it there.
    let bare = cgi_bin.join("wsgi-cgi");
    std::fs::copy(support::wsgi_cgi(), &bare).unwrap();
    std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&bare, Some(user.uid), Some(user.gid)).unwrap();
    // A previous run's warm directory and responders go.
    let _ = Command::new("pkill")
        .args(["-KILL", "-u", user.name, "-f", "wsgi-fcgi"])
        .status();
    let _ = std::fs::remove_dir_all(user.home.join(".wsgi-gateway"));
}

fn start(apache: &Path) -> Server {
    Server::start("apache2", &["error.log"], |dir, port| {
        let mut conf = http::apache_main_conf(
            dir,
            port,
            "%h \\\"%r\\\" %>s %b",
            &[
                "mpm_event",
                "authz_core",
                "mime",
                "alias",
                "env",
                "cgid",
                "userdir",
                "suexec",
                "fcgid",
                "log_config",
                "unixd",
            ],
        );
        conf.push_str(&format!(
            "TypesConfig /etc/mime.types\nScriptSock \"{d}/cgid.sock\"\nFcgidIPCDir \"{d}/fcgid\"\n\
             FcgidProcessTableFile \"{d}/fcgid.shm\"\n\
             DocumentRoot \"{d}/htdocs\"\n\
             Include \"{snippet}\"\n",
            d = dir.display(),
            snippet = support::root()
                .join("conf/shared-hosting/apache-userdir.conf")
                .display(),
        ));
        // SetEnv-only configuration of the bare binary (suEXEC clears it).
        for name in USERS {
            conf.push_str(&format!(
                "<Location \"/~{name}/cgi-bin/wsgi-cgi\">\n    SetEnv WSGI_APP /home/{name}/site/app.py\n</Location>\n"
            ));
        }
        std::fs::create_dir_all(dir.join("htdocs")).unwrap();
        std::fs::create_dir_all(dir.join("fcgid")).unwrap();
        std::os::unix::fs::chown(dir.join("fcgid"), Some(33), Some(33)).unwrap();
        let path = dir.join("httpd.conf");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new(apache);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .arg("-f")
            .arg(&path)
            .arg("-DFOREGROUND");
        cmd
    })
}

/// GET `target`, expecting the app's JSON.
fn who(web: &Server, target: &str) -> serde_json::Value {
    let r = web.get(target);
    assert_eq!(
        r.status,
        200,
        "{target}: {r:?}\n{}\nsuexec.log: {}",
        r.text(),
        suexec_log()
    );
    r.json()
}

fn suexec_log() -> String {
    let log = std::fs::read_to_string("/var/log/apache2/suexec.log").unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Both users' apps, each as its user, through script-mode CGI, warm
/// mode and the mod_fcgid wrapper; neither can list the other's ~/site.
#[test]
fn each_users_app_runs_as_that_user_in_every_mode() {
    let Some(apache) = prerequisites() else {
        return;
    };
    let _homes = HOMES.lock().unwrap_or_else(|e| e.into_inner());
    let users = USERS.map(user);
    for u in &users {
        set_up(u);
    }
    let web = start(&apache);
    for (me, other) in [(&users[0], &users[1]), (&users[1], &users[0])] {
        let other_site = other.home.join("site").display().to_string();
        let mut pids = Vec::new();
        for (script, twice_same_pid) in [("app.cgi", false), ("warm.cgi", true), ("app.fcgi", true)]
        {
            let target = format!("/~{}/cgi-bin/{script}/?other={other_site}", me.name);
            let first = who(&web, &target);
            assert_eq!(first["uid"], me.uid, "{script}: {first}");
            assert_eq!(first["user"], me.name, "{script}: {first}");
            assert_eq!(first["other_readable"], false, "{script}: {first}");
            assert_eq!(
                first["script_name"],
                format!("/~{}/cgi-bin/{script}", me.name)
            );
            let second = who(&web, &target);
            assert_eq!(
                first["pid"] == second["pid"],
                twice_same_pid,
                "{script}: pids {} and {}",
                first["pid"],
                second["pid"]
            );
            pids.push(first["pid"].as_u64().unwrap());
        }
        // Warm mode's directory: in the home from the password database,
        // private to the user; its responder runs as the user.
        let warm = me.home.join(".wsgi-gateway");
        let meta = std::fs::metadata(&warm).expect("~/.wsgi-gateway");
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.mode() & 0o777), (me.uid, 0o700));
        let status = std::fs::read_to_string(format!("/proc/{}/status", pids[1])).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.contains(&me.uid.to_string())),
            "{status}"
        );
    }
    assert!(
        !web.log().contains("serving this request cold"),
        "{}",
        web.log()
    );
    for u in &users {
        let _ = Command::new("pkill")
            .args(["-TERM", "-u", u.name, "-f", "wsgi-fcgi"])
            .status();
    }
}

/// `SetEnv WSGI_APP` under suEXEC never arrives: the bare binary answers
/// 500 and logs why, naming suEXEC — never the demo's environment dump.
#[test]
fn setenv_only_under_suexec_is_a_500_naming_suexec() {
    let Some(apache) = prerequisites() else {
        return;
    };
    let _homes = HOMES.lock().unwrap_or_else(|e| e.into_inner());
    let alice = user(USERS[0]);
    set_up(&alice);
    let web = start(&apache);
    let mark = web.log_mark();
    let r = web.get(&format!("/~{}/cgi-bin/wsgi-cgi/", alice.name));
    assert_eq!(r.status, 500, "{r:?}: {}", r.text());
    let body = r.text();
    assert!(
        !body.contains("wsgi-gateway!") && !body.contains("SERVER_"),
        "{body}"
    );
    let log = web.log_since(&mark, &["suEXEC", "no application configured"]);
    assert!(
        log.contains("suEXEC") && log.contains("no application configured"),
        "{log}"
    );
}
