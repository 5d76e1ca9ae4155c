//! `wsgi-fcgi --pm dynamic | ondemand`, real processes: ondemand starts no
//! worker, spawns one when a connection waits, retires it after
//! `--idle-timeout`, and never runs more than `--max-workers` (the status
//! page counts the times connections had to wait); with `--preload` the
//! app is imported once, in a template; dynamic scales between its spare
//! bounds under a load step and back; HUP and `--max-requests` lose no
//! request; wrong settings are refused before anything starts. The app is
//! tests/apps/reloadable.py ("VERSION PID" answers).

use crate::process::{Load, kill, served, workers_of};
use crate::support::fcgi::*;
use crate::support::wait_until;

use std::process::Command;
use std::time::Duration;

/// A master with these `--pm` settings serving reloadable.py, version
/// "v1"; the processes that imported it are listed in the file `imports`.
fn pm_master_v1(args: &[&str]) -> Responder {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("version");
    std::fs::write(&version, "v1").unwrap();
    let imports = dir.path().join("imports");
    let addr = Addr::Unix(dir.path().join("fcgi.sock"));
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.arg("--app")
        .arg(app("reloadable.py"))
        .args(args)
        .arg("--bind")
        .arg(addr.arg())
        .env("RELOADABLE_VERSION", &version)
        .env("RELOADABLE_IMPORTS", &imports);
    Responder::spawn(cmd, addr, dir)
}

fn imports(r: &Responder) -> Vec<String> {
    std::fs::read_to_string(r.path("imports"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `name: value` of the text status page.
fn status_field(r: &Responder, name: &str) -> String {
    let out = r.connect().request(1, &Req::get("/status"));
    assert_eq!(out.status(), 200, "{}", r.log());
    let text = out.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name:?} in {text}"))
}

/// Zero workers at start (or, if the start's probe connection spawned
/// one, none once it retired); none is spawned while nobody connects; a request spawns exactly one, which serves the ones after it
/// and retires in turn.
#[test]
fn ondemand_starts_at_zero_spawns_on_a_connection_and_retires_when_idle() {
    let r = pm_master_v1(&[
        "--pm",
        "ondemand",
        "--idle-timeout",
        "1",
        "--max-workers",
        "3",
        "--threads",
        "2",
    ]);
    assert!(
        r.log()
            .contains("pm ondemand on 1 socket(s): starting 0 worker process(es), at most 3"),
        "{}",
        r.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || workers_of(r.pid).is_empty()),
        "a worker at start: {:?}\n{}",
        workers_of(r.pid),
        r.log()
    );
    // Nobody connects: nothing is spawned (the master does not spin on its
    // listening socket either: it wakes once a second).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(workers_of(r.pid).is_empty(), "{}", r.log());
    let master_ticks = cpu_ticks(r.pid);
    assert!(
        master_ticks < 100,
        "the idle master used {master_ticks} ticks"
    );

    let (version, pid) = served(&r, "/").unwrap();
    assert_eq!(version, "v1");
    assert_eq!(workers_of(r.pid), [pid]);
    for _ in 0..20 {
        assert_eq!(served(&r, "/").unwrap().1, pid, "one worker is enough");
    }
    assert!(
        wait_until(Duration::from_secs(10), || workers_of(r.pid).is_empty()),
        "{}",
        r.log()
    );
    assert_ne!(served(&r, "/").unwrap().1, pid);
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `--preload`: the app is imported once, in the template; every worker
/// spawned on demand afterwards is a fork of it (no import of its own).
#[test]
fn ondemand_with_preload_imports_once_in_the_template() {
    let r = pm_master_v1(&[
        "--pm",
        "ondemand",
        "--preload",
        "--idle-timeout",
        "0.5",
        "--threads",
        "1",
    ]);
    let mut pids = Vec::new();
    for _ in 0..3 {
        assert!(
            wait_until(Duration::from_secs(10), || workers_of(r.pid).is_empty()),
            "{}",
            r.log()
        );
        pids.push(served(&r, "/").unwrap().1);
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "not a new worker each time: {pids:?}");
    let template = crate::process::templates_of(r.pid);
    assert_eq!(template.len(), 1, "{}", r.log());
    assert_eq!(imports(&r), [format!("{} v1", template[0])], "{}", r.log());
}

/// Five slow requests at once, `--max-workers 3` of one thread each: three
/// workers, never four; every request is answered; the log says the limit
/// was reached and the status page counts it (`max children reached`).
#[test]
fn ondemand_stops_at_max_workers_and_says_so() {
    let r = pm_master_v1(&[
        "--pm",
        "ondemand",
        "--max-workers",
        "3",
        "--threads",
        "1",
        "--status-path",
        "/status",
    ]);
    let clients: Vec<_> = (0..5)
        .map(|_| {
            let addr = r.addr.clone();
            std::thread::spawn(move || {
                let mut c = addr.connect().unwrap();
                c.send_request(1, &Req::get("/slow").param("QUERY_STRING", "s=1.5"))
                    .unwrap();
                c.response_with_result(1, Duration::from_secs(20))
            })
        })
        .collect();
    let mut most = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        most = most.max(workers_of(r.pid).len());
        std::thread::sleep(Duration::from_millis(20));
    }
    for client in clients {
        let out = client.join().unwrap().unwrap();
        assert_eq!(out.status(), 200, "{}", r.log());
    }
    assert_eq!(most, 3, "{}", r.log());
    assert!(r.log().contains("(--max-workers) are busy"), "{}", r.log());
    assert_ne!(status_field(&r, "max children reached"), "0");
    assert_eq!(status_field(&r, "process manager"), "ondemand");
}

/// Dynamic, 2 at start, 1–2 idle spares, at most 6, one thread each: four
/// clients looping on a slow page make it spawn until spares are idle
/// again (5 or 6 workers), without a failed request; when they stop,
/// idle workers retire, one a second, down to the 2 spares.
#[test]
fn dynamic_scales_between_its_spares_under_a_load_step() {
    let r = pm_master_v1(&[
        "--pm",
        "dynamic",
        "--start-workers",
        "2",
        "--min-spare",
        "1",
        "--max-spare",
        "2",
        "--max-workers",
        "6",
        "--threads",
        "1",
        "--status-path",
        "/status",
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || workers_of(r.pid).len() == 2),
        "{}",
        r.log()
    );
    let load = SlowLoad::start(&r, 4);
    assert!(
        wait_until(Duration::from_secs(15), || workers_of(r.pid).len() >= 5),
        "did not scale up: {:?}\n{}",
        workers_of(r.pid),
        r.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let during = workers_of(r.pid).len();
    assert!((5..=6).contains(&during), "{during} workers\n{}", r.log());
    let (ok, failed) = load.finish();
    assert_eq!(failed, 0, "{}", r.log());
    assert!(ok > 10, "{ok}");
    assert!(
        wait_until(Duration::from_secs(15), || workers_of(r.pid).len() == 2),
        "did not retire the idle: {:?}\n{}",
        workers_of(r.pid),
        r.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(workers_of(r.pid).len(), 2, "retired below the spares");
    assert_eq!(status_field(&r, "process manager"), "dynamic");
}

/// Clients looping on /slow?s=0.1, each on its own connection.
struct SlowLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, usize)>>,
}

impl SlowLoad {
    fn start(r: &Responder, clients: usize) -> SlowLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let (stop, addr) = (stop.clone(), r.addr.clone());
                std::thread::spawn(move || {
                    let (mut ok, mut failed) = (0, 0);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let result = addr.connect().map_err(|e| e.to_string()).and_then(|mut c| {
                            c.send_request(1, &Req::get("/slow").param("QUERY_STRING", "s=0.1"))
                                .map_err(|e| e.to_string())?;
                            c.response_with_result(1, Duration::from_secs(20))
                        });
                        match result {
                            Ok(out) if out.status() == 200 => ok += 1,
                            _ => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        SlowLoad { stop, threads }
    }

    fn finish(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    }
}

/// Under load, ondemand: HUP serves the new version without a failed
/// request, and `--max-requests` recycles workers (each replaced before it
/// stops) without one either.
#[test]
fn hup_and_max_requests_under_ondemand_lose_no_request() {
    let r = pm_master_v1(&[
        "--pm",
        "ondemand",
        "--max-workers",
        "4",
        "--threads",
        "2",
        "--max-requests",
        "50",
    ]);
    let load = Load::start(&r, 3);
    assert!(
        wait_until(Duration::from_secs(20), || r
            .log()
            .contains("recycled (max-requests)")),
        "{}",
        r.log()
    );
    std::fs::write(r.path("version"), "v2").unwrap();
    kill(r.pid, "HUP");
    assert!(
        wait_until(Duration::from_secs(20), || served(&r, "/")
            .is_ok_and(|(v, _)| v == "v2")),
        "{}",
        r.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, error) = load.finish();
    assert_eq!(failed, 0, "{error:?}\n{}", r.log());
    assert!(ok > 100, "{ok}");
    // The old generation and the recycled finish and leave; the current
    // one stays within --max-workers.
    assert!(
        wait_until(Duration::from_secs(15), || workers_of(r.pid).len() <= 4),
        "{:?}\n{}",
        workers_of(r.pid),
        r.log()
    );
}

/// Settings that cannot work are refused at start with the reason, exit
/// status 1 (clap's own: 2), before any socket or worker. (Those of another
/// mode are ignored, as PHP-FPM does: a pools file's defaults serve pools
/// of every mode.)
#[test]
fn wrong_pm_settings_are_refused() {
    let cases: [(&[&str], &str); 2] = [
        (
            &["--pm", "dynamic", "--min-spare", "4", "--max-spare", "2"],
            "--min-spare 4 is more than --max-spare 2",
        ),
        (
            &[
                "--pm",
                "dynamic",
                "--max-workers",
                "2",
                "--start-workers",
                "3",
            ],
            "must not exceed --max-workers 2",
        ),
    ];
    for (args, why) in cases {
        let out = Command::new(wsgi_fcgi())
            .args(["--app"])
            .arg(app("hello.py"))
            .args(["--bind", "unix:/nonexistent/dir/s.sock"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // A dynamic-only flag without --pm: clap's usage error.
    let out = Command::new(wsgi_fcgi())
        .args(["--min-spare", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
