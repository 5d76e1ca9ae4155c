//! `wsgi-cgi --warm`, the real binaries run as a web server runs a CGI
//! program: the answers are those of the cold path; 50 requests arriving
//! at once on a cold app start one responder; new code (`restart.txt`, an
//! edited app file) is served on the next request; a responder killed
//! under load costs no GET; the responder exits when idle and removes its
//! socket; a warm directory that is not private, or cannot be made, is
//! served cold with one log line; two users never share a responder.
//! (The web-server runs are in tests/webservers.rs.)

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Cgi, CgiOutput, app, wait_until};

/// An app of its own (tests/apps/warm_app.py, copied) and a warm
/// directory; the responders it started are stopped on drop.
struct Warm {
    top: tempfile::TempDir,
}

impl Warm {
    /// `import_delay`: seconds the app sleeps while it is imported.
    fn new(import_delay: f64) -> Warm {
        let top = tempfile::tempdir().unwrap();
        // Other users run it too (two_users_never_share_a_responder).
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(top.path().join("app")).unwrap();
        let warm = Warm { top };
        warm.write_app("v1", import_delay);
        warm
    }

    fn write_app(&self, version: &str, import_delay: f64) {
        let text = std::fs::read_to_string(app("warm_app.py")).unwrap();
        let text = text
            .replace("VERSION = \"v1\"", &format!("VERSION = {version:?}"))
            .replace(
                "IMPORT_DELAY = 0.0",
                &format!("IMPORT_DELAY = {import_delay}"),
            );
        // Written whole, then renamed: a request never imports half a file.
        let tmp = self.top.path().join("app/app.py.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, self.app()).unwrap();
    }

    fn app(&self) -> PathBuf {
        self.top.path().join("app/app.py")
    }

    fn dir(&self) -> PathBuf {
        self.top.path().join("warm")
    }

    /// A warm-mode request for `path`, with this warm directory.
    fn cgi(&self, path: &str) -> Cgi {
        self.cgi_in(path, &self.dir())
    }

    fn cgi_in(&self, path: &str, dir: &Path) -> Cgi {
        self.cgi_with(path, dir, 60)
    }

    /// `idle`: the responder's `--warm-idle`.
    fn cgi_with(&self, path: &str, dir: &Path, idle: u32) -> Cgi {
        Cgi::get(path)
            .app(self.app())
            .arg("--warm")
            .arg("--warm-dir")
            .arg(dir)
            .arg("--warm-idle")
            .arg(idle.to_string())
    }

    /// The responders' sockets in the warm directory.
    fn sockets(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return vec![];
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect();
        found.sort();
        found
    }

    /// Everything the responders logged.
    fn log(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().extension().is_some_and(|x| x == "log") {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        all
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        // The responders' command lines name the warm directory.
        let _ = std::process::Command::new("pkill")
            .args(["-TERM", "-f"])
            .arg(self.dir())
            .status();
    }
}

/// "VERSION PID UID" of a 200 answer.
fn served(out: &CgiOutput) -> (String, u32, u32) {
    assert_eq!(out.status, 200, "{}\n{}", out.text(), out.stderr);
    let text = out.text();
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields[..] {
        [version, pid, uid] => (version.into(), pid.parse().unwrap(), uid.parse().unwrap()),
        _ => panic!("not VERSION PID UID: {text:?}"),
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Clients, one thread each, running their requests in turn until
/// [`Clients::stop`].
struct Clients {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<CgiOutput>>>,
}

impl Clients {
    fn start(requests: Vec<Vec<Cgi>>) -> Clients {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = requests
            .into_iter()
            .map(|cgis| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut outs = Vec::new();
                    for cgi in cgis {
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        outs.push(cgi.run());
                    }
                    outs
                })
            })
            .collect();
        Clients { stop, threads }
    }

    /// Stop them; what each request got.
    fn stop(self) -> Vec<CgiOutput> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let threads = self.threads.into_iter();
        threads.flat_map(|t| t.join().unwrap()).collect()
    }
}

/// The gateway fixture's routes answer the same bytes warm as cold (the
/// responder's run_once/multithread flags aside), including bodies,
/// HEAD, errors and refusals; a warm request starts no Python here and a
/// second one reuses the responder.
#[test]
fn warm_answers_as_cold_does() {
    let warm = Warm::new(0.0);
    let dir = warm.dir();
    let gateway = app("gateway.py");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    type Setup<'a> = Box<dyn Fn(Cgi) -> Cgi + 'a>;
    let cases: Vec<(&str, Setup)> = vec![
        (
            "/echo",
            Box::new(|c: Cgi| c.method("POST").body("application/octet-stream", &body)),
        ),
        (
            "/read-all",
            Box::new(|c: Cgi| c.method("POST").body("text/plain", b"abc\ndef")),
        ),
        (
            "/lines",
            Box::new(|c: Cgi| c.method("POST").body("text/plain", b"a\nbb\nccc\n")),
        ),
        ("/write", Box::new(|c| c)),
        ("/lazy", Box::new(|c| c)),
        ("/empty", Box::new(|c| c)),
        ("/big", Box::new(|c| c)),
        ("/head", Box::new(|c: Cgi| c.method("HEAD"))),
        ("/hop", Box::new(|c| c)),
        ("/exc-before", Box::new(|c| c)),
        ("/raise", Box::new(|c| c)),
        ("/bad-status", Box::new(|c| c)),
        ("/bad-header", Box::new(|c| c)),
        ("/no-start", Box::new(|c| c)),
        ("/too-long", Box::new(|c| c)),
        (
            "/echo",
            Box::new(|c: Cgi| c.method("POST").env("CONTENT_LENGTH", "abc")),
        ),
    ];
    for (path, setup) in &cases {
        let cold = setup(Cgi::get(path).app(&gateway)).run();
        let hot = setup(
            Cgi::get(path)
                .app(&gateway)
                .arg("--warm")
                .arg("--warm-dir")
                .arg(&dir)
                .arg("--warm-idle")
                .arg("60"),
        )
        .run();
        assert_eq!(
            (hot.status, &hot.headers),
            (cold.status, &cold.headers),
            "{path}: warm vs cold\nwarm stderr: {}\ncold stderr: {}",
            hot.stderr,
            cold.stderr
        );
        assert!(
            hot.body == cold.body,
            "{path}: bodies differ: {:?} vs {:?}",
            hot.text(),
            cold.text()
        );
        assert!(
            !hot.stderr.contains("serving this request cold"),
            "{path}: {}",
            hot.stderr
        );
        assert!(!hot.text().contains("SECRET"), "{path}: {}", hot.text());
    }
    // One responder served them all; the environ is the request's.
    assert_eq!(warm.sockets().len(), 1, "{:?}", warm.sockets());
    let out = Cgi::get("/environ")
        .app(&gateway)
        .env("QUERY_STRING", "a=1")
        .env("HTTP_X_TEST", "yes")
        .arg("--warm")
        .arg("--warm-dir")
        .arg(&dir)
        .arg("--warm-idle")
        .arg("60")
        .run();
    let environ: serde_json::Value = serde_json::from_slice(&out.body).expect(&out.stderr);
    assert_eq!(environ["QUERY_STRING"], "a=1");
    assert_eq!(environ["HTTP_X_TEST"], "yes");
    assert_eq!(environ["wsgi.run_once"], false, "{environ}");
    // The same interpreter set-up: sys.path, prefixes, what was imported.
    if let Some(venv) = support::venv() {
        let sys = |warm: bool| {
            let mut cgi = Cgi::get("/sys").app(&gateway).arg("--venv").arg(&venv);
            if warm {
                cgi = cgi.arg("--warm").arg("--warm-dir").arg(&dir);
            }
            let out = cgi.run();
            let v: serde_json::Value = serde_json::from_slice(&out.body).expect(&out.stderr);
            v
        };
        assert_eq!(sys(true), sys(false), "warm vs cold interpreter");
    }
    // Tracebacks are the responder's to log (its log in the warm directory).
    assert!(warm.log().contains("SECRET-"), "{}", warm.log());
}

/// The responder's own environment holds no request meta-variable: a
/// header sent with one request never shows in `os.environ` of the next.
#[test]
fn the_request_never_reaches_the_responders_environment() {
    let warm = Warm::new(0.0);
    let out = warm
        .cgi("/osenv")
        .env("HTTP_AUTHORIZATION", "Basic c2VjcmV0")
        .env("HTTP_PROXY", "http://evil.example")
        .env("WSGI_MAX_BODY_SIZE", "1")
        .run();
    assert_eq!(out.status, 200, "{}", out.stderr);
    let names = out.text();
    for name in names.lines() {
        assert!(
            !name.starts_with("HTTP_") && !name.starts_with("WSGI_") && name != "QUERY_STRING",
            "{name} in the responder's environment: {names}"
        );
    }
    assert!(names.lines().any(|n| n == "PATH"), "{names}");
}

/// 50 requests at once on a cold app (0.5 s to import): one responder
/// starts, every request is answered by it.
#[test]
fn fifty_requests_on_a_cold_app_start_one_responder() {
    let warm = Warm::new(0.5);
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let cgi = warm.cgi("/");
            std::thread::spawn(move || cgi.run())
        })
        .collect();
    let outs: Vec<CgiOutput> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let cold: Vec<&CgiOutput> = outs.iter().filter(|o| o.stderr.contains("cold")).collect();
    assert!(
        cold.is_empty(),
        "{} served cold, e.g.: {}",
        cold.len(),
        cold[0].stderr
    );
    let mut pids: Vec<u32> = outs.iter().map(|o| served(o).1).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 1, "served by {pids:?}");
    let started = outs
        .iter()
        .filter(|o| o.stderr.contains("started responder"))
        .count();
    assert_eq!(started, 1);
    assert_eq!(
        warm.log().matches(" socket(s)").count(),
        1,
        "{}",
        warm.log()
    );
}

/// `touch restart.txt`, then an edited app file: each served on the next
/// request, by a new responder; the old one exits.
#[test]
fn new_code_is_served_on_the_next_request() {
    let warm = Warm::new(0.0);
    let (version, first, _) = served(&warm.cgi("/").run());
    assert_eq!(version, "v1");
    assert_eq!(served(&warm.cgi("/").run()).1, first);

    std::thread::sleep(Duration::from_millis(20)); // (a visible mtime step)
    std::fs::write(warm.top.path().join("app/restart.txt"), "").unwrap();
    let (version, second, _) = served(&warm.cgi("/").run());
    assert_eq!(version, "v1");
    assert_ne!(second, first, "restart.txt did not restart the responder");
    assert_eq!(served(&warm.cgi("/").run()).1, second, "restarted twice");
    assert!(
        wait_until(Duration::from_secs(10), || !alive(first)),
        "the old responder lives on"
    );

    std::thread::sleep(Duration::from_millis(20));
    warm.write_app("v2", 0.0);
    let (version, third, _) = served(&warm.cgi("/").run());
    assert_eq!(version, "v2");
    assert_ne!(third, second);
    assert_eq!(warm.sockets().len(), 1);
}

/// Restarts under load (`restart.txt` touched every 400 ms while four
/// clients POST): every request is answered, by the responder of its
/// moment, none cold and none refused — the old responder serves what
/// reached it before its socket went away.
#[test]
fn restarts_under_load_lose_no_post() {
    let warm = Warm::new(0.0);
    let (_, first, _) = served(&warm.cgi("/").run());
    let clients = Clients::start(
        (0..4)
            .map(|i| {
                let body = format!("client {i}");
                let post = || {
                    warm.cgi("/")
                        .method("POST")
                        .body("text/plain", body.as_bytes())
                };
                (0..300).map(|_| post()).collect()
            })
            .collect(),
    );
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        std::fs::write(warm.top.path().join("app/restart.txt"), "").unwrap();
    }
    std::thread::sleep(Duration::from_millis(400));
    let outs = clients.stop();
    let mut pids: Vec<u32> = outs.iter().map(|o| served(o).1).collect();
    pids.sort();
    pids.dedup();
    eprintln!(
        "{} POSTs over 5 restarts, answered by {} responders",
        outs.len(),
        pids.len()
    );
    assert!(pids.len() >= 3 && pids.contains(&first), "{pids:?}");
    for out in &outs {
        assert!(!out.stderr.contains("cold"), "{}", out.stderr);
    }
}

/// SIGKILL of the responder while four clients send GETs: every request
/// is answered (at worst cold), and a new responder takes over.
#[test]
fn a_killed_responder_costs_no_get() {
    let warm = Warm::new(0.0);
    let (_, first, _) = served(&warm.cgi("/").run());
    let get = || warm.cgi("/slow").env("QUERY_STRING", "s=0.05");
    let clients = Clients::start((0..4).map(|_| (0..200).map(|_| get()).collect()).collect());
    std::thread::sleep(Duration::from_millis(700));
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(1500));
    let outs = clients.stop();
    assert!(outs.len() > 20, "{} requests", outs.len());
    for out in &outs {
        assert_eq!(out.status, 200, "{}", out.stderr);
    }
    let cold = outs.iter().filter(|o| o.stderr.contains("cold")).count();
    let mut pids: Vec<u32> = outs.iter().map(|o| served(o).1).collect();
    pids.sort();
    pids.dedup();
    eprintln!(
        "{} GETs around a SIGKILL: {cold} served cold, answered by {} processes",
        outs.len(),
        pids.len()
    );
    assert!(pids.len() >= 2, "the kill changed nothing: {pids:?}");
    let (_, after, _) = served(&warm.cgi("/").run());
    assert_ne!(after, first);
}

/// `--warm-idle 1`: the responder exits a second after its last request
/// and removes its socket; the next request starts another.
#[test]
fn an_idle_responder_exits_and_removes_its_socket() {
    let warm = Warm::new(0.0);
    let run = || warm.cgi_with("/", &warm.dir(), 1).run();
    let (_, pid, _) = served(&run());
    assert_eq!(warm.sockets().len(), 1);
    assert!(
        wait_until(Duration::from_secs(15), || !alive(pid)
            && warm.sockets().is_empty()),
        "pid {pid} alive: {}, sockets {:?}",
        alive(pid),
        warm.sockets()
    );
    assert!(warm.log().contains("--idle-exit"), "{}", warm.log());
    let (_, again, _) = served(&run());
    assert_ne!(again, pid);
}

/// An app that does not import: the first request tries a responder and
/// is served cold (the app's 500); the requests after it are served cold
/// without another try (the back-off); the fixed app is served warm on the
/// next request.
#[test]
fn a_broken_app_is_not_started_again_until_it_changes() {
    let warm = Warm::new(0.0);
    let broken = "raise RuntimeError('broken at import')\n";
    std::fs::write(warm.app(), broken).unwrap();
    let tries = || warm.log().matches("broken at import").count();
    let first = warm.cgi("/").run();
    assert_eq!(first.status, 500, "{}", first.stderr);
    assert!(first.stderr.contains("did not answer"), "{}", first.stderr);
    assert!(tries() >= 1, "{}", warm.log());
    let after_first = tries();
    for _ in 0..3 {
        let out = warm.cgi("/").run();
        assert_eq!(out.status, 500, "{}", out.stderr);
        assert!(out.stderr.contains("not trying again"), "{}", out.stderr);
    }
    assert_eq!(tries(), after_first, "a responder was started again");
    assert!(warm.sockets().is_empty());

    std::thread::sleep(Duration::from_millis(20)); // (a visible mtime step)
    warm.write_app("v2", 0.0);
    let out = warm.cgi("/").run();
    assert!(!out.stderr.contains("cold"), "{}", out.stderr);
    assert_eq!(served(&out).0, "v2");
    assert_eq!(warm.sockets().len(), 1);
}

/// A warm directory others may enter, one that cannot be created, or one
/// owned by another user: the request is served cold, with one log line
/// saying why.
#[test]
fn an_unusable_warm_directory_is_served_cold_with_one_line() {
    let warm = Warm::new(0.0);
    let open = warm.top.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cases = vec![
        (open.clone(), "chmod 700"),
        (
            Path::new("/proc/no/such/dir").to_path_buf(),
            "cannot create",
        ),
    ];
    let foreign = warm.top.path().join("foreign");
    if support::http::is_root() {
        std::fs::create_dir(&foreign).unwrap();
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        cases.push((foreign.clone(), "owned by uid 65534"));
    } else {
        support::skip("a warm directory owned by another user: needs root to make one");
    }
    for (dir, why) in cases {
        let out = warm.cgi_in("/", &dir).run();
        assert_eq!(served(&out).0, "v1");
        assert!(!out.stderr.contains("started responder"), "{}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains("warm")).collect();
        assert_eq!(lines.len(), 1, "{}: {lines:?}", dir.display());
        assert!(
            lines[0].contains("serving this request cold") && lines[0].contains(why),
            "{lines:?}"
        );
    }
    assert!(warm.sockets().is_empty());
}

/// Two users, one app file, one warm-directory path pattern: each user's
/// request is served by a responder of that user; neither can use the
/// other's directory (cold, with the reason), and a responder refuses a
/// connection from another uid even where the directory would let it in.
#[test]
fn two_users_never_share_a_responder() {
    if !support::http::is_root() {
        support::skip("two users: needs root to run wsgi-cgi as nobody and www-data");
        return;
    }
    let warm = Warm::new(0.0);
    let users = [(65534u32, 65534u32), (33, 33)];
    let mut pids = Vec::new();
    for (uid, gid) in users {
        let dir = warm.top.path().join(format!("warm-{uid}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        let out = warm.cgi_in("/", &dir).user(uid, gid).run();
        let (_, pid, served_uid) = served(&out);
        assert_eq!(served_uid, uid, "{}", out.stderr);
        assert!(out.stderr.contains("started responder"), "{}", out.stderr);
        pids.push((pid, dir));
    }
    assert_ne!(pids[0].0, pids[1].0);
    // www-data pointed at nobody's directory: cold, as www-data.
    let out = warm.cgi_in("/", &pids[0].1).user(33, 33).run();
    let (_, _, served_uid) = served(&out);
    assert_eq!(served_uid, 33);
    assert!(out.stderr.contains("owned by uid 65534"), "{}", out.stderr);
    // Root may enter nobody's directory; nobody's responder still refuses it.
    let socket = std::fs::read_dir(&pids[0].1)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
        .expect("nobody's socket");
    let (code, _, stderr) =
        support::fcgi::probe(&[format!("unix:{}", socket.display()), "/".into()]);
    assert_ne!(code, 0, "root was served by nobody's responder: {stderr}");
    let log: String = std::fs::read_dir(&pids[0].1)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(log.contains("refused a connection from uid 0"), "{log}");
    for (_, dir) in &pids {
        let _ = std::process::Command::new("pkill")
            .args(["-TERM", "-f"])
            .arg(dir)
            .status();
    }
}
