//! Pools: one `wsgi-fcgi` master serving the `[pool.NAME]` tables of a
//! `--config` file (and of the files its `include` names), each pool with
//! its own app, socket, user, process manager and status page; a pool
//! whose app does not import is retried with back-off while the others
//! serve, and serves once its code is fixed; no worker holds another
//! pool's socket; a configuration that cannot work is refused with the
//! reason; `preload = true` forks a pool's workers from a template that
//! imported its app once. The apps are copies of tests/apps/warm_app.py
//! ("VERSION PID UID" answers).

use crate::process::workers_of;
use crate::support::fcgi::*;
use crate::support::{http::is_root, skip, wait_until};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// "VERSION PID UID" of one request to the pool at `socket`.
fn ask(socket: &Path, path: &str) -> Result<(String, u32, u32), String> {
    let text = Addr::Unix(socket.to_path_buf()).get_text(path)?;
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [version, pid, uid] => Ok((
            version.to_string(),
            pid.parse().map_err(|_| text.clone())?,
            uid.parse().map_err(|_| text.clone())?,
        )),
        _ => Err(format!("not VERSION PID UID: {text:?}")),
    }
}

/// The status page's `pool` and `process manager` of the pool at `socket`.
fn status(socket: &Path) -> (String, String) {
    let out = Addr::Unix(socket.to_path_buf())
        .connect()
        .unwrap()
        .request(1, &Req::get("/status"));
    let text = out.text();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    (field("pool"), field("process manager"))
}

/// The unix sockets listening on this machine ("socket:[INODE]"), from
/// /proc/net/unix (state 01 with __SO_ACCEPTCON).
fn listening_unix_sockets() -> Vec<String> {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let inode = f.get(6)?;
            (f.get(3) == Some(&"00010000") && f.get(5) == Some(&"01"))
                .then(|| format!("socket:[{inode}]"))
        })
        .collect()
}

/// The socket inodes `pid` holds open.
fn socket_inodes(pid: u32) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("socket:"))
        .collect();
    found.sort();
    found.dedup();
    found
}

struct Site {
    name: String,
    socket: PathBuf,
    uid: Option<u32>,
}

/// Twenty pools in one master — static, dynamic and ondemand, half of
/// them from an included directory, under three users when run as root —
/// one of whose apps does not import: the nineteen serve, each its own
/// app as its own user, with its own status page; the broken one is
/// retried with growing back-off and serves once its file is fixed; the
/// workers of one pool hold no other pool's listening socket.
#[test]
fn twenty_pools_in_one_master_one_broken_the_others_serve() {
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(top.path().join("pool.d")).unwrap();
    let template = std::fs::read_to_string(app("warm_app.py")).unwrap();
    let users: &[(&str, u32)] = if is_root() {
        &[("nobody", 65534), ("daemon", 1), ("www-data", 33)]
    } else {
        skip("pools under other users: needs root");
        &[]
    };
    let modes = [
        "workers = 1",
        "pm = \"ondemand\"\nmax-workers = 2",
        "pm = \"dynamic\"\nmax-workers = 3\nstart-workers = 1\nmin-spare = 1\nmax-spare = 2",
    ];
    let mut main =
        String::from("threads = 1\nstatus-path = \"/status\"\ninclude = \"pool.d/*.toml\"\n");
    let mut sites = Vec::new();
    for i in 0..20 {
        let name = if i == 19 {
            "broken".to_string()
        } else {
            format!("site{i}")
        };
        let app_file = top.path().join(format!("{name}.py"));
        let text = if i == 19 {
            "raise RuntimeError('broken at import')\n".to_string()
        } else {
            template.replace("VERSION = \"v1\"", &format!("VERSION = \"{name}\""))
        };
        std::fs::write(&app_file, text).unwrap();
        std::fs::set_permissions(&app_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let socket = top.path().join(format!("{name}.sock"));
        let user = users.get(i % 3).copied();
        let mut table = format!(
            "[pool.{name}]\napp = \"{}\"\nbind = \"unix:{}\"\n{}\n",
            app_file.display(),
            socket.display(),
            // (The broken one static: ondemand would try only on demand.)
            modes[if i == 19 { 0 } else { i % 3 }]
        );
        if let Some((user, _)) = user {
            table.push_str(&format!("user = \"{user}\"\n"));
        }
        if i % 2 == 0 {
            main.push_str(&table);
        } else {
            std::fs::write(top.path().join(format!("pool.d/{name}.toml")), table).unwrap();
        }
        sites.push(Site {
            name,
            socket,
            uid: user.map(|(_, uid)| uid),
        });
    }
    let config = top.path().join("pools.toml");
    std::fs::write(&config, main).unwrap();
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.arg("--config").arg(&config);
    // Ready once site0's worker (static, one) serves.
    let r = Responder::spawn(cmd, Addr::Unix(sites[0].socket.clone()), top);

    for site in &sites[..19] {
        let mut last = Err(String::new());
        let ok = wait_until(Duration::from_secs(30), || {
            last = ask(&site.socket, "/");
            last.is_ok()
        });
        assert!(ok, "{}: {last:?}\n{}", site.name, r.log());
        let (version, pid, uid) = last.unwrap();
        assert_eq!(version, site.name);
        if let Some(expected) = site.uid {
            assert_eq!(uid, expected, "{}", site.name);
        }
        assert_ne!(pid, r.pid);
        assert_eq!(status(&site.socket).0, site.name);
    }
    assert_eq!(status(&sites[1].socket).1, "ondemand");
    assert_eq!(status(&sites[2].socket).1, "dynamic");
    assert_eq!(status(&sites[3].socket).1, "static");

    // The broken pool: retried, later each time; the master lives on.
    assert!(
        wait_until(Duration::from_secs(20), || r
            .log()
            .matches("pool broken: failed")
            .count()
            >= 3),
        "{}",
        r.log()
    );
    assert!(r.log().contains("retrying in 1 s"), "{}", r.log());
    assert!(r.log().contains("retrying in 2 s"), "{}", r.log());
    assert!(r.log().contains("the other pools go on serving"));
    assert!(ask(&sites[5].socket, "/").is_ok());

    // Fixed: served at the next retry.
    let broken = &sites[19];
    let fixed = template.replace("VERSION = \"v1\"", "VERSION = \"broken-fixed\"");
    std::fs::write(r.dir.path().join("broken.py"), fixed).unwrap();
    let mut last = Err(String::new());
    let ok = wait_until(Duration::from_secs(40), || {
        last = ask(&broken.socket, "/");
        last.is_ok()
    });
    assert!(ok, "{last:?}\n{}", r.log());
    assert_eq!(last.unwrap().0, "broken-fixed");

    // Isolation: a worker (and a template) holds its own pool's listening
    // socket only.
    let listening = listening_unix_sockets();
    let listeners: Vec<String> = socket_inodes(r.pid)
        .into_iter()
        .filter(|s| listening.contains(s))
        .collect();
    assert_eq!(listeners.len(), 20, "{listeners:?}");
    let templates = crate::process::templates_of(r.pid);
    assert!(
        !templates.is_empty(),
        "static and dynamic pools preload by default"
    );
    for worker in workers_of(r.pid).into_iter().chain(templates) {
        let held: Vec<&String> = socket_inodes(worker)
            .iter()
            .filter_map(|s| listeners.iter().find(|l| *l == s))
            .collect();
        assert_eq!(held.len(), 1, "worker {worker} holds listeners {held:?}");
    }
}

/// Pool files that cannot work are refused at start, with the pool and
/// the reason (exit status 1), and `--check` imports each pool's app,
/// exiting 4 at the one that does not import.
#[test]
fn pool_configurations_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hello = app("hello.py");
    let cases = [
        (
            "[pool.a]\nbind = \"unix:/tmp/x-a.sock\"\n[pool.b]\nbind = \"unix:/tmp/x-a.sock\"\n",
            "is pool a's already",
        ),
        ("[pool.a]\nworkers = 2\n", "no `bind`"),
        (
            "[pool.a]\nbind = \"unix:/tmp/x-a.sock\"\nidle-exit = 30\n",
            "`idle-exit` is for a single process",
        ),
        (
            "[pool.\"a b\"]\nbind = \"unix:/tmp/x-a.sock\"\n",
            "a pool name is letters",
        ),
        ("include = \"d/*.toml\"\n", "no [pool.NAME] table"),
        (
            "[pool.a]\nbind = \"unix:/tmp/x-a.sock\"\nno-such-flag = 1\n",
            "pool a (",
        ),
    ];
    std::fs::create_dir(dir.path().join("d")).unwrap();
    for (text, why) in cases {
        let file = dir.path().join("pools.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(wsgi_fcgi())
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        assert!(stderr.contains(why), "{text}: {stderr}");
    }
    // An included file holds pool tables only.
    std::fs::write(dir.path().join("d/x.toml"), "workers = 3\n").unwrap();
    std::fs::write(dir.path().join("pools.toml"), "include = \"d/*.toml\"\n").unwrap();
    let out = Command::new(wsgi_fcgi())
        .arg("--config")
        .arg(dir.path().join("pools.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds [pool.NAME] tables only"));

    // --check: each pool imported in turn; the broken one stops it with 4.
    std::fs::remove_file(dir.path().join("d/x.toml")).unwrap();
    let check = format!(
        "[pool.good]\napp = \"{}\"\nbind = \"unix:{}/g.sock\"\n[pool.zbad]\napp = \"{}\"\nbind = \"unix:{}/b.sock\"\n",
        hello.display(),
        dir.path().display(),
        app("broken_import.py").display(),
        dir.path().display()
    );
    std::fs::write(dir.path().join("pools.toml"), check).unwrap();
    let out = Command::new(wsgi_fcgi())
        .arg("--config")
        .arg(dir.path().join("pools.toml"))
        .arg("--check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("pool good:") && stdout.contains("configuration OK"),
        "{stdout}"
    );
    assert!(stdout.contains("pool zbad:"), "{stdout}");
}

/// The shipped example (conf/pools/: a main file, a pool.d file), with its
/// paths pointed at this test's directory and app: both pools serve, each
/// with its status page, its process manager and its user.
#[test]
fn the_shipped_pools_example_serves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let hello = dir.path().join("hello.py");
    std::fs::copy(app("hello.py"), &hello).unwrap();
    std::fs::set_permissions(&hello, std::fs::Permissions::from_mode(0o644)).unwrap();
    let root = crate::support::root().join("conf/pools");
    let fix = |text: String| -> String {
        text.lines()
            .filter(|l| !l.starts_with("venv") && !l.starts_with("chdir"))
            .filter(|l| is_root() || !l.starts_with("user") && !l.starts_with("socket-group"))
            .map(|l| {
                let l = l.replace("/run/wsgi-fcgi/", &format!("{}/", dir.path().display()));
                let l = l.replace("/var/log/wsgi-fcgi/", &format!("{}/", dir.path().display()));
                if l.starts_with("app = ") {
                    format!("app = \"{}\"", hello.display())
                } else if l.starts_with("user = ") {
                    "user = \"nobody\"".to_string()
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::create_dir(dir.path().join("pool.d")).unwrap();
    for file in ["wsgi-fcgi.toml", "pool.d/blog.toml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        std::fs::write(dir.path().join(file), fix(text)).unwrap();
    }
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.arg("--config").arg(dir.path().join("wsgi-fcgi.toml"));
    let shop = dir.path().join("shop.sock");
    let blog = dir.path().join("blog.sock");
    let r = Responder::spawn(cmd, Addr::Unix(shop.clone()), dir);
    for (socket, name, pm) in [(&shop, "shop", "dynamic"), (&blog, "blog", "ondemand")] {
        let out = Addr::Unix(socket.clone())
            .connect()
            .unwrap()
            .request(1, &Req::get("/fpm-ping"));
        assert_eq!(out.text(), "pong\n", "{}", r.log());
        let out = Addr::Unix(socket.clone())
            .connect()
            .unwrap()
            .request(1, &Req::get("/fpm-status"));
        let text = out.text();
        assert!(
            text.contains(&format!("pool:                 {name}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("process manager:      {pm}\n")),
            "{text}"
        );
        let out = Addr::Unix(socket.clone())
            .connect()
            .unwrap()
            .request(1, &Req::get("/"));
        assert_eq!(out.status(), 200, "{}", r.log());
    }
    if is_root() {
        let mode = std::fs::metadata(&shop).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(mode.mode() & 0o777, 0o660);
        assert_eq!(mode.gid(), 33, "socket-group www-data");
    }
    assert!(r.log().contains("pool shop: pm dynamic"), "{}", r.log());
}

/// systemd's `Type=notify` with pools: READY=1 once every pool serves or
/// has failed (a broken pool does not hold the service back, and its
/// `STATUS=` names it); HUP: RELOADING=1, then READY=1 again.
#[test]
fn ready_comes_once_every_pool_serves_or_failed() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    // It fails after the good pool is ready: READY=1 must not wait for an
    // announcement that never comes.
    let broken = dir.path().join("slow_broken.py");
    std::fs::write(
        &broken,
        "import time\ntime.sleep(1)\nraise RuntimeError('no')\n",
    )
    .unwrap();
    let config = format!(
        "threads = 1\n[pool.good]\napp = \"{}\"\nbind = \"unix:{d}/good.sock\"\nworkers = 2\n\
         [pool.broken]\napp = \"{}\"\nbind = \"unix:{d}/broken.sock\"\n",
        app("hello.py").display(),
        broken.display(),
        d = dir.path().display()
    );
    std::fs::write(dir.path().join("pools.toml"), config).unwrap();
    let good = Addr::Unix(dir.path().join("good.sock"));
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.arg("--config")
        .arg(dir.path().join("pools.toml"))
        .env("NOTIFY_SOCKET", &notify_path);
    let r = Responder::spawn(cmd, good, dir);
    let ready = crate::process::notifications(&socket, "READY=1");
    let last = ready.last().unwrap();
    assert!(last.contains(&format!("MAINPID={}", r.pid)), "{ready:?}");
    assert!(
        last.contains("serving 2 pool(s) with 2 worker(s); failed: broken"),
        "{ready:?}\n{}",
        r.log()
    );
    crate::process::kill(r.pid, "HUP");
    let reload = crate::process::notifications(&socket, "READY=1");
    assert!(
        reload.iter().any(|m| m.contains("RELOADING=1")),
        "{reload:?}"
    );
}

/// `preload = true` in a pool: the pool's app is imported once, by a
/// template process of its own (as the pool's user), and every worker —
/// the ondemand pool's spawns, a static pool's workers — is forked from
/// it and re-parented to the master, which supervises it like any worker.
/// HUP imports the new code in a new template; a new code that does not
/// import cancels that pool's reload (the old template goes on forking).
#[test]
fn preloaded_pools_fork_their_workers_from_a_template() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let imports = dir.path().join("imports.log");
    std::fs::write(&imports, "").unwrap();
    std::fs::set_permissions(&imports, std::fs::Permissions::from_mode(0o666)).unwrap();
    let fixture = std::fs::read_to_string(app("warm_app.py")).unwrap();
    // Each import appends its pid: a worker forked from a template never does.
    let code = |version: &str| {
        format!(
            "with open({:?}, 'a') as _f:\n    _f.write(f'{{__import__(\"os\").getpid()}}\\n')\n{}",
            imports.display().to_string(),
            fixture.replace("VERSION = \"v1\"", &format!("VERSION = \"{version}\""))
        )
    };
    let (user, uid) = if is_root() {
        ("user = \"nobody\"\n", Some(65534))
    } else {
        skip("a preloaded pool under another user: needs root");
        ("", None)
    };
    for (name, version) in [("od", "od1"), ("st", "st1")] {
        let file = dir.path().join(format!("{name}.py"));
        std::fs::write(&file, code(version)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let d = dir.path().display().to_string();
    let config = format!(
        "threads = 1\npreload = true\n\
         [pool.od]\napp = \"{d}/od.py\"\nbind = \"unix:{d}/od.sock\"\npm = \"ondemand\"\n\
         idle-timeout = 2\n{user}\
         [pool.st]\napp = \"{d}/st.py\"\nbind = \"unix:{d}/st.sock\"\nworkers = 2\n"
    );
    std::fs::write(dir.path().join("pools.toml"), config).unwrap();
    let od = dir.path().join("od.sock");
    let st = dir.path().join("st.sock");
    let mut cmd = Command::new(wsgi_fcgi());
    cmd.arg("--config").arg(dir.path().join("pools.toml"));
    let r = Responder::spawn(cmd, Addr::Unix(st.clone()), dir);
    let imported = || -> Vec<u32> {
        std::fs::read_to_string(&imports)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect()
    };
    let parent = |pid: u32| -> u32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        after.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let serve = |socket: &Path| -> (String, u32, u32) {
        let mut last = Err(String::new());
        let ok = wait_until(Duration::from_secs(20), || {
            last = ask(socket, "/");
            last.is_ok()
        });
        assert!(ok, "{last:?}\n{}", r.log());
        last.unwrap()
    };

    let (version, od_worker, od_uid) = serve(&od);
    assert_eq!(version, "od1");
    // (Asked at once: it retires after two seconds idle.)
    assert_eq!(parent(od_worker), r.pid, "the ondemand worker's parent");
    if let Some(uid) = uid {
        assert_eq!(
            od_uid, uid,
            "the template and its workers run as the pool's user"
        );
    }
    assert_eq!(serve(&st).0, "st1");
    // st's two workers (and od's, until it retires): the master's children.
    assert!(
        wait_until(Duration::from_secs(10), || workers_of(r.pid).len() >= 2),
        "{}",
        r.log()
    );
    let workers = workers_of(r.pid);
    // One import per pool, by its template, in no worker.
    let mut templates = imported();
    templates.sort_unstable();
    assert_eq!(templates.len(), 2, "{templates:?}\n{}", r.log());
    assert_eq!(crate::process::templates_of(r.pid), templates);
    assert!(
        !templates.contains(&od_worker),
        "the ondemand worker imported the app"
    );
    for worker in &workers {
        assert!(
            !templates.contains(worker),
            "worker {worker} imported the app"
        );
    }

    // Ondemand: retired when idle, forked again (no import) on demand.
    let idle = format!("worker {od_worker} idle for");
    assert!(r.wait_log(&idle, Duration::from_secs(15)), "{}", r.log());
    // (Gone, not only told to go: until then it may still take one.)
    let exited = format!("worker {od_worker} exited");
    assert!(r.wait_log(&exited, Duration::from_secs(15)), "{}", r.log());
    let (_, again, _) = serve(&od);
    assert_ne!(again, od_worker);
    assert_eq!(imported().len(), 2, "{}", r.log());

    // HUP: the new code, imported by a new template per pool.
    std::fs::write(r.dir.path().join("st.py"), code("st2")).unwrap();
    crate::process::kill(r.pid, "HUP");
    assert!(
        wait_until(Duration::from_secs(20), || ask(&st, "/")
            .is_ok_and(|(v, _, _)| v == "st2")),
        "{}",
        r.log()
    );
    assert!(wait_until(Duration::from_secs(10), || imported().len() == 4));
    assert!(
        wait_until(Duration::from_secs(10), || templates.iter().all(
            |t| !std::path::Path::new(&format!("/proc/{t}")).exists() || parent(*t) != r.pid
        )),
        "the old templates exit once the new generation is ready\n{}",
        r.log()
    );

    // A new code that does not import: that pool's reload is cancelled;
    // its old template goes on forking workers of the code it has.
    std::fs::write(r.dir.path().join("od.py"), "raise RuntimeError('no')\n").unwrap();
    crate::process::kill(r.pid, "HUP");
    let cancelled = "pool od: reload cancelled: new template";
    assert!(
        r.wait_log(cancelled, Duration::from_secs(20)),
        "{}",
        r.log()
    );
    assert_eq!(serve(&od).0, "od1");
    assert_eq!(serve(&st).0, "st2");

    // TERM: the master, its workers and the templates all go.
    let master = r.pid;
    // (st's reload to the same code ends with its old template gone.)
    assert!(
        wait_until(Duration::from_secs(10), || crate::process::templates_of(
            master
        )
        .len()
            == 2),
        "a template per pool: {:?}\n{}",
        crate::process::templates_of(master),
        r.log()
    );
    let mut everyone: Vec<u32> = workers_of(master);
    everyone.extend(crate::process::templates_of(master));
    crate::process::kill(master, "TERM");
    assert!(wait_until(Duration::from_secs(20), || everyone
        .iter()
        .chain([&master])
        .all(|p| std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_or(true, |s| s.contains(") Z ")))));
}
