//! The status and ping pages (`--status-path`, `--ping-path`), answered on
//! the FastCGI socket by the I/O thread itself — no Python involved, so they
//! answer even when every app thread is stuck. The status page speaks
//! PHP-FPM's: the same field names, and the format chosen by the query
//! string (`?json`, `?openmetrics`, `?full` for per-worker rows), so existing
//! PHP-FPM exporters and dashboards read it.

use std::sync::atomic::Ordering;

use super::recycle::Recycle;
use super::scoreboard::{Board, now_us};

/// Status page settings.
#[derive(Clone, Debug, Default)]
pub struct Pages {
    /// Path of the status page.
    pub status: Option<String>,
    /// Path of the ping page.
    pub ping: Option<String>,
    /// The pool name shown (`pool`).
    pub pool: String,
    /// The listening sockets (their accept queues are the listen queue).
    pub listeners: Vec<std::os::fd::RawFd>,
}

impl Pages {
    /// The page for a request to `path` with `query`, if it is one:
    /// (content type, body).
    pub fn answer(&self, path: &[u8], query: &[u8]) -> Option<(&'static str, String)> {
        if self.ping.as_deref().is_some_and(|p| p.as_bytes() == path) {
            return Some(("text/plain", "pong\n".into()));
        }
        if self.status.as_deref().is_some_and(|p| p.as_bytes() == path) {
            let board = super::scoreboard::board()?;
            let query = String::from_utf8_lossy(query);
            let (waiting, backlog) = self
                .listeners
                .iter()
                .filter_map(|&fd| super::listenq::queue(fd))
                .fold((0, 0), |(w, b), (qw, qb)| (w + qw, b + qb));
            board.max_listen_queue.fetch_max(waiting, Ordering::Relaxed);
            return Some(render(board, &self.pool, &query, (waiting, backlog)));
        }
        None
    }
}

struct Worker {
    pid: u32,
    running: u32,
    accepting: bool,
    started: u64,
    requests: u64,
    request_start: u64,
    last_duration: u64,
    line: String,
}

fn workers(board: &Board) -> Vec<Worker> {
    board
        .slots
        .iter()
        .filter_map(|s| {
            let pid = s.pid.load(Ordering::Acquire);
            (pid != 0).then(|| Worker {
                pid,
                running: s.running.load(Ordering::Relaxed),
                accepting: s.accepting.load(Ordering::Relaxed) != 0,
                started: s.started.load(Ordering::Relaxed),
                requests: s.requests.load(Ordering::Relaxed),
                request_start: s.request_start.load(Ordering::Relaxed),
                last_duration: s.last_duration.load(Ordering::Relaxed),
                line: s.line(),
            })
        })
        .collect()
}

fn rss_bytes(pid: u32) -> u64 {
    // (The page size from sysconf: 16 and 64 KiB pages exist.)
    i32::try_from(pid)
        .ok()
        .and_then(|pid| super::recycle::resident_bytes(nix::unistd::Pid::from_raw(pid)))
        .unwrap_or(0)
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The status page in the format the query asks for.
pub fn render(
    board: &Board,
    pool: &str,
    query: &str,
    listen: (u64, u64),
) -> (&'static str, String) {
    let words: Vec<&str> = query.split('&').collect();
    let full = words.contains(&"full");
    let now = now_us();
    let list = workers(board);
    let active = list.iter().filter(|w| w.running > 0).count() as u64;
    let total = list.len() as u64;
    let start = board.start_time.load(Ordering::Relaxed);
    let since = now.saturating_sub(start) / 1_000_000;
    let max_active = board.max_active.load(Ordering::Relaxed).max(active);
    let max_listen = board.max_listen_queue.load(Ordering::Relaxed).max(listen.0);
    // PHP-FPM's pool fields, in its order.
    let pool_fields: Vec<(&str, String)> = vec![
        ("pool", pool.to_string()),
        ("process manager", "static".into()),
        ("start time", (start / 1_000_000).to_string()),
        ("start since", since.to_string()),
        (
            "accepted conn",
            board.accepted.load(Ordering::Relaxed).to_string(),
        ),
        ("listen queue", listen.0.to_string()),
        ("max listen queue", max_listen.to_string()),
        ("listen queue len", listen.1.to_string()),
        ("idle processes", (total - active).to_string()),
        ("active processes", active.to_string()),
        ("total processes", total.to_string()),
        ("max active processes", max_active.to_string()),
        ("max children reached", "0".into()),
        (
            "slow requests",
            board.slow_requests.load(Ordering::Relaxed).to_string(),
        ),
        // Ours, beyond PHP-FPM's.
        (
            "request timeouts",
            board.timeouts.load(Ordering::Relaxed).to_string(),
        ),
    ];
    let recycles: Vec<(&str, u64)> = Recycle::ALL
        .iter()
        .zip(&board.recycles)
        .map(|(cause, n)| (cause.name(), n.load(Ordering::Relaxed)))
        .collect();
    let worker_fields = |w: &Worker| -> Vec<(&'static str, String)> {
        let (method, uri) = w.line.split_once(' ').unwrap_or(("-", "-"));
        let duration = if w.running > 0 {
            now.saturating_sub(w.request_start)
        } else {
            w.last_duration
        };
        vec![
            ("pid", w.pid.to_string()),
            (
                "state",
                match (w.running > 0, w.accepting) {
                    (true, _) => "Running",
                    (false, true) => "Idle",
                    // (PHP-FPM's name for a worker not serving yet.)
                    (false, false) => "Starting",
                }
                .into(),
            ),
            ("start time", (w.started / 1_000_000).to_string()),
            (
                "start since",
                (now.saturating_sub(w.started) / 1_000_000).to_string(),
            ),
            ("requests", w.requests.to_string()),
            ("request duration", duration.to_string()),
            ("request method", method.to_string()),
            ("request uri", uri.to_string()),
            ("content length", "0".into()),
            ("user", "-".into()),
            ("script", "-".into()),
            ("last request cpu", "0.00".into()),
            ("last request memory", rss_bytes(w.pid).to_string()),
            ("requests in flight", w.running.to_string()),
        ]
    };
    let numeric = |key: &str| {
        !matches!(
            key,
            "pool"
                | "process manager"
                | "state"
                | "request method"
                | "request uri"
                | "user"
                | "script"
        )
    };
    if words.contains(&"json") {
        let object = |fields: &[(&str, String)]| {
            let items: Vec<String> = fields
                .iter()
                .map(|(k, v)| {
                    let value = if numeric(k) {
                        v.clone()
                    } else {
                        json_string(v)
                    };
                    format!("{}:{value}", json_string(k))
                })
                .collect();
            items.join(",")
        };
        let mut body = format!("{{{}", object(&pool_fields));
        let causes: Vec<String> = recycles
            .iter()
            .map(|(c, n)| format!("{}:{n}", json_string(c)))
            .collect();
        body.push_str(&format!(",\"recycles\":{{{}}}", causes.join(",")));
        if full {
            let rows: Vec<String> = list
                .iter()
                .map(|w| format!("{{{}}}", object(&worker_fields(w))))
                .collect();
            body.push_str(&format!(",\"processes\":[{}]", rows.join(",")));
        }
        body.push('}');
        return ("application/json", body);
    }
    if words.contains(&"openmetrics") {
        let mut body = String::new();
        // (OpenMetrics: a counter's sample is named `<family>_total`.)
        let metric = |body: &mut String, name: &str, kind: &str, help: &str, value: String| {
            let sample = if kind == "counter" { "_total" } else { "" };
            body.push_str(&format!(
                "# HELP phpfpm_{name} {help}\n# TYPE phpfpm_{name} {kind}\nphpfpm_{name}{sample} {value}\n"
            ));
        };
        metric(
            &mut body,
            "up",
            "gauge",
            "Whether the pool is up.",
            "1".into(),
        );
        metric(
            &mut body,
            "start_since",
            "gauge",
            "Seconds since the pool started.",
            since.to_string(),
        );
        metric(
            &mut body,
            "accepted_connections",
            "counter",
            "Requests accepted (PHP-FPM's accepted conn).",
            board.accepted.load(Ordering::Relaxed).to_string(),
        );
        metric(
            &mut body,
            "listen_queue",
            "gauge",
            "Connections waiting to be accepted.",
            listen.0.to_string(),
        );
        metric(
            &mut body,
            "max_listen_queue",
            "gauge",
            "Longest listen queue seen.",
            max_listen.to_string(),
        );
        metric(
            &mut body,
            "listen_queue_length",
            "gauge",
            "Size of the listen queue (backlog).",
            listen.1.to_string(),
        );
        metric(
            &mut body,
            "idle_processes",
            "gauge",
            "Idle worker processes.",
            (total - active).to_string(),
        );
        metric(
            &mut body,
            "active_processes",
            "gauge",
            "Worker processes serving requests.",
            active.to_string(),
        );
        metric(
            &mut body,
            "total_processes",
            "gauge",
            "Worker processes.",
            total.to_string(),
        );
        metric(
            &mut body,
            "max_active_processes",
            "gauge",
            "Most worker processes active at once.",
            max_active.to_string(),
        );
        metric(
            &mut body,
            "slow_requests",
            "counter",
            "Requests slower than --slow-request-log.",
            board.slow_requests.load(Ordering::Relaxed).to_string(),
        );
        metric(
            &mut body,
            "request_timeouts",
            "counter",
            "Requests that overran --request-timeout.",
            board.timeouts.load(Ordering::Relaxed).to_string(),
        );
        body.push_str(
            "# HELP phpfpm_recycles Workers recycled, by cause.\n# TYPE phpfpm_recycles counter\n",
        );
        for (cause, n) in &recycles {
            body.push_str(&format!("phpfpm_recycles_total{{cause=\"{cause}\"}} {n}\n"));
        }
        if full {
            body.push_str("# HELP phpfpm_process_requests Requests served by a worker.\n# TYPE phpfpm_process_requests counter\n");
            for w in &list {
                body.push_str(&format!(
                    "phpfpm_process_requests_total{{pid=\"{}\"}} {}\n",
                    w.pid, w.requests
                ));
            }
            body.push_str("# HELP phpfpm_process_memory Resident memory of a worker (bytes).\n# TYPE phpfpm_process_memory gauge\n");
            for w in &list {
                body.push_str(&format!(
                    "phpfpm_process_memory{{pid=\"{}\"}} {}\n",
                    w.pid,
                    rss_bytes(w.pid)
                ));
            }
        }
        body.push_str("# EOF\n");
        return (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        );
    }
    let text = |fields: &[(&str, String)]| {
        fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}:{}{v}\n",
                    " ".repeat(21usize.saturating_sub(k.len()).max(1))
                )
            })
            .collect::<String>()
    };
    let mut body = text(&pool_fields);
    for (cause, n) in &recycles {
        let key = format!("recycled {cause}");
        body.push_str(&format!(
            "{key}:{}{n}\n",
            " ".repeat(21usize.saturating_sub(key.len()).max(1))
        ));
    }
    if full {
        for w in &list {
            body.push_str("\n************************\n");
            body.push_str(&text(&worker_fields(w)));
        }
    }
    ("text/plain", body)
}
