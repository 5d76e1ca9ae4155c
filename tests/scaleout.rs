//! Scale-out: three "hosts" — network namespaces the test creates, on a
//! bridge, each running `wsgi-fcgi --workers 2` bound to its own address
//! and accepting only the balancer's (`FCGI_WEB_SERVER_ADDRS`) — behind
//! nginx with conf/scale-out/nginx-upstream.conf and the location of
//! conf/nginx/wsgi-fcgi.conf, or HAProxy with conf/scale-out/haproxy.cfg
//! (health checks on the ping page), in the test's namespace. Under load (four
//! clients, a connection per request): a HUP on each host in turn fails no
//! request; a host's master SIGKILLed fails at most the requests in flight
//! there, then none; a host's link set down is routed around (nginx's
//! connect timeout, then `fail_timeout`) and the rest serve. Needs root
//! (namespaces) and `ip`.

use crate::support::fcgi::*;
use crate::support::{http, skip, wait_until};

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The namespaces and the bridge, removed on drop.
struct Net {
    tag: String,
    subnet: u8,
    hosts: usize,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    /// `hosts` namespaces on a new bridge (10.77.N.1 here, .11, .12 … there).
    fn new(hosts: usize) -> Option<Net> {
        if !http::is_root() {
            skip("scale-out in network namespaces: needs root");
            return None;
        }
        http::require_program("ip", "iproute2")?;
        // Names and a subnet of this test's own (tests run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let n = (std::process::id() % 1000) * 10 + k % 10;
        let net = Net {
            tag: format!("wgs{n}"),
            subnet: 100 + (n % 150) as u8,
            hosts,
        };
        let bridge = net.bridge();
        // (A run killed before its drop leaves these: start clean.)
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.balancer()),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for h in 0..hosts {
            let (ns, outside, inside) = (net.ns(h), net.veth(h), format!("{}p", net.veth(h)));
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            ip(&["link", "set", &inside, "netns", &ns]);
            ip(&["link", "set", &outside, "master", &bridge]);
            ip(&["link", "set", &outside, "up"]);
            let addr = format!("{}/24", net.host(h));
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inside,
            ]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        Some(net)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    fn ns(&self, h: usize) -> String {
        format!("{}h{h}", self.tag)
    }

    fn veth(&self, h: usize) -> String {
        format!("{}v{h}", self.tag)
    }

    fn balancer(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    fn host(&self, h: usize) -> String {
        format!("10.77.{}.{}", self.subnet, 11 + h)
    }

    /// Take host `h`'s link down (its packets go nowhere: no reset).
    fn link_down(&self, h: usize) {
        ip(&["link", "set", &self.veth(h), "down"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in 0..self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &self.veth(h)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
    }
}

/// Host `h`'s wsgi-fcgi: a master with two workers serving its own copy
/// of warm_app.py ("hH PID UID"), in its namespace.
fn host(net: &Net, h: usize) -> Responder {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(app("warm_app.py")).unwrap();
    let file = dir.path().join("app.py");
    std::fs::write(
        &file,
        text.replace("VERSION = \"v1\"", &format!("VERSION = \"h{h}\"")),
    )
    .unwrap();
    let bind = format!("{}:9000", net.host(h));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns(h)])
        .arg(wsgi_fcgi())
        .arg("--app")
        .arg(&file)
        .args(["--workers", "2", "--threads", "2", "--ping-path", "/ping"])
        .args(["--bind", &bind])
        .env("FCGI_WEB_SERVER_ADDRS", net.balancer());
    Responder::spawn(cmd, Addr::Tcp(bind.parse().unwrap()), dir)
}

/// nginx here: conf/scale-out/nginx-upstream.conf with the hosts'
/// addresses, and the shipped location.
fn nginx(net: &Net) -> Option<http::Server> {
    let exe = http::require_program("nginx", "nginx")?;
    let root = crate::support::root();
    let upstream =
        std::fs::read_to_string(root.join("conf/scale-out/nginx-upstream.conf")).unwrap();
    let mut upstream = upstream;
    for h in 0..3 {
        upstream = upstream.replace(
            &format!("10.0.0.1{}:9000", h + 1),
            &format!("{}:9000", net.host(h)),
        );
    }
    assert!(
        !upstream.contains("server 10.0.0."),
        "the snippet's server lines changed"
    );
    let location = root.join("conf/nginx/wsgi-fcgi.conf");
    let server = http::Server::start_conf(
        "nginx",
        &exe,
        &["error.log"],
        |dir| {
            let d = dir.display();
            format!("-p {d} -e {d}/error.log -c")
                .split(' ')
                .map(Into::into)
                .collect()
        },
        |dir, port| {
            std::fs::copy("/etc/nginx/fastcgi_params", dir.join("fastcgi_params")).unwrap();
            std::fs::write(dir.join("upstream.conf"), &upstream).unwrap();
            let d = dir.display();
            format!(
                r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    fastcgi_temp_path {d}/fastcgi;
    proxy_temp_path {d}/proxy;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/upstream.conf;
    server {{
        listen 127.0.0.1:{port};
        include {};
    }}
}}
"#,
                location.display()
            )
        },
    );
    Some(server)
}

/// Clients requesting /app/ through the balancer without pause, each
/// answer's host counted; failures kept with the time they happened.
struct Load {
    by_host: Arc<[AtomicUsize; 3]>,
    clients: http::Clients,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let by_host: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let counts = by_host.clone();
        let clients = http::Clients::start(clients, move || {
            counts[fetch(port)?].fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        Load { by_host, clients }
    }

    fn served(&self) -> [usize; 3] {
        std::array::from_fn(|h| self.by_host[h].load(Ordering::Relaxed))
    }

    fn finish(self) -> (Vec<(Instant, String)>, [usize; 3]) {
        let (_, failures) = self.clients.finish();
        (
            failures,
            std::array::from_fn(|h| self.by_host[h].load(Ordering::Relaxed)),
        )
    }
}

/// One request through the balancer: the host that answered.
fn fetch(port: u16) -> Result<usize, String> {
    match http::first_word(port, "/app/")?.as_str() {
        "h0" => Ok(0),
        "h1" => Ok(1),
        "h2" => Ok(2),
        other => Err(format!("not a host's answer: {other:?}")),
    }
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -s {name} {pid}");
}

#[test]
fn nginx_in_front_of_three_hosts_reloads_survives_a_kill_and_a_link_down() {
    three_hosts(nginx);
}

#[test]
fn haproxy_in_front_of_three_hosts_reloads_survives_a_kill_and_a_link_down() {
    three_hosts(haproxy);
}

/// HAProxy here: conf/scale-out/haproxy.cfg with the hosts' addresses,
/// after a main configuration as its header describes.
fn haproxy(net: &Net) -> Option<http::Server> {
    let exe = http::require_program("haproxy", "haproxy")?;
    let root = crate::support::root();
    let mut backend = std::fs::read_to_string(root.join("conf/scale-out/haproxy.cfg")).unwrap();
    for h in 0..3 {
        backend = backend.replace(
            &format!(" 10.0.0.1{}:9000", h + 1),
            &format!(" {}:9000", net.host(h)),
        );
    }
    assert!(
        !backend.contains(" 10.0.0.11:"),
        "the snippet's server lines changed"
    );
    let server = http::Server::start_conf(
        "haproxy",
        &exe,
        &[],
        |dir| {
            let d = dir.display();
            format!("-db -f {d}/main.cfg -f")
                .split(' ')
                .map(Into::into)
                .collect()
        },
        |dir, port| {
            let main = format!(
                r#"global
    log stderr format raw local0
    maxconn 512
defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 5s
    timeout client 30s
    timeout server 10s
frontend web
    bind 127.0.0.1:{port}
    default_backend wsgi_fcgi_hosts
"#
            );
            std::fs::write(dir.join("main.cfg"), main).unwrap();
            backend.clone()
        },
    );
    Some(server)
}

/// The three scenarios behind the balancer `front` starts.
fn three_hosts(front: fn(&Net) -> Option<http::Server>) {
    let Some(net) = Net::new(3) else { return };
    let hosts: Vec<Responder> = (0..3).map(|h| host(&net, h)).collect();
    let Some(web) = front(&net) else { return };
    let port = web.port;
    let logs = || {
        let mut all = web.log();
        for (h, r) in hosts.iter().enumerate() {
            all.push_str(&format!("\n--- host {h} ---\n{}", r.log()));
        }
        all
    };
    assert!(
        wait_until(Duration::from_secs(20), || fetch(port).is_ok()),
        "{}",
        logs()
    );

    // 1. A HUP on each host in turn: not one request fails.
    let load = Load::start(port, 4);
    for r in &hosts {
        signal(r.pid, "HUP");
        assert!(
            r.wait_log("generation 1 ready", Duration::from_secs(30)),
            "{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (failures, served) = load.finish();
    assert!(failures.is_empty(), "{failures:?}\n{}", logs());
    assert!(
        served.iter().all(|&n| n > 10),
        "every host serves: {served:?}"
    );
    let name = &web.name;
    eprintln!("{name}: HUP on each of 3 hosts in turn: {served:?} served, none failed");

    // 2. Host 0's master SIGKILLed: at most the requests in flight there
    //    fail (its workers finish theirs, nginx retries the rest on the
    //    next host), then none.
    let load = Load::start(port, 4);
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    signal(hosts[0].pid, "KILL");
    std::thread::sleep(Duration::from_secs(2));
    let (failures, served) = load.finish();
    assert!(
        failures.len() <= 4,
        "{} failed: {failures:?}\n{}",
        failures.len(),
        logs()
    );
    let late: Vec<_> = failures
        .iter()
        .filter(|f| f.0.duration_since(killed) > Duration::from_secs(1))
        .collect();
    assert!(late.is_empty(), "failures after the kill settled: {late:?}");
    eprintln!(
        "{name}: host 0 SIGKILLed under load: {} failed, {served:?} served",
        failures.len()
    );

    // 3. Host 1's link down (packets dropped, no reset): requests that
    //    reach for it wait out the 1 s connect timeout and go to host 2;
    //    then host 1 is left out for fail_timeout. Nothing fails.
    if name == "haproxy" {
        // Its health check (the ping page, over FastCGI) took host 0 out.
        assert!(
            wait_until(Duration::from_secs(10), || web
                .log()
                .contains("host1 is DOWN")),
            "{}",
            web.log()
        );
    }
    let before = served_by(port, 20);
    assert_eq!(before[0], 0, "the killed host still answers: {before:?}");
    // (A reload's closed kept connections may have counted as failures
    // and left host 1 out for fail_timeout: wait until it is back.)
    assert!(
        wait_until(Duration::from_secs(15), || served_by(port, 10)[1] > 0),
        "host 1 is not in the rotation\n{}",
        logs()
    );
    let load = Load::start(port, 4);
    std::thread::sleep(Duration::from_millis(300));
    net.link_down(1);
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let at_down = load.served();
    std::thread::sleep(Duration::from_secs(2));
    // (Requests already sent to host 1 wait out the read timeout, then go
    // to host 2: finishing waits for them.)
    let (failures, served) = load.finish();
    assert!(failures.is_empty(), "{failures:?}\n{}", logs());
    assert_eq!(
        served[1], at_down[1],
        "host 1 answered after its link went down"
    );
    // Routed around: every request now goes to host 2, none waits.
    let after = served_by(port, 20);
    assert_eq!(after, [0, 0, 20], "{}", logs());
    if name == "haproxy" {
        assert!(web.log().contains("host2 is DOWN"), "{}", web.log());
    }
    eprintln!(
        "{name}: host 1's link down {:.1} s under load: none failed, {served:?} served",
        down.elapsed().as_secs_f64()
    );
}

/// Which hosts answer `n` requests in a row.
fn served_by(port: u16, n: usize) -> [usize; 3] {
    let mut counts = [0; 3];
    for _ in 0..n {
        if let Ok(h) = fetch(port) {
            counts[h] += 1;
        }
    }
    counts
}
