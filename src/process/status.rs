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

/// One worker's row, as read from the board.
struct Worker {
    pid: u32,
    running: u32,
    accepting: bool,
    started: u64,
    requests: u64,
    request_start: u64,
    last_duration: u64,
    line: String,
    /// Resident memory (bytes).
    rss: u64,
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
                rss: rss_bytes(pid),
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

/// What the page shows, read from the board once (µs since the epoch for
/// times), so that each format is a plain function of it.
struct Snapshot {
    pool: String,
    pm: &'static str,
    max_children: u64,
    now: u64,
    start: u64,
    accepted: u64,
    /// Connections waiting, and the backlog's size.
    listen: (u64, u64),
    max_listen: u64,
    active: u64,
    total: u64,
    max_active: u64,
    slow: u64,
    timeouts: u64,
    recycles: Vec<(&'static str, u64)>,
    workers: Vec<Worker>,
}

impl Snapshot {
    fn of(board: &Board, pool: &str, listen: (u64, u64)) -> Snapshot {
        let workers = workers(board);
        let active = workers.iter().filter(|w| w.running > 0).count() as u64;
        Snapshot {
            pool: pool.to_string(),
            pm: super::master::pm::Pm::name_of(board.pm.load(Ordering::Relaxed)),
            max_children: board.max_children_reached.load(Ordering::Relaxed),
            now: now_us(),
            start: board.start_time.load(Ordering::Relaxed),
            accepted: board.accepted.load(Ordering::Relaxed),
            listen,
            max_listen: board.max_listen_queue.load(Ordering::Relaxed).max(listen.0),
            active,
            total: workers.len() as u64,
            max_active: board.max_active.load(Ordering::Relaxed).max(active),
            slow: board.slow_requests.load(Ordering::Relaxed),
            timeouts: board.timeouts.load(Ordering::Relaxed),
            recycles: Recycle::ALL
                .iter()
                .zip(&board.recycles)
                .map(|(cause, n)| (cause.name(), n.load(Ordering::Relaxed)))
                .collect(),
            workers,
        }
    }

    fn since(&self) -> u64 {
        self.now.saturating_sub(self.start) / 1_000_000
    }

    /// PHP-FPM's pool fields, in its order, then ours.
    fn pool_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("pool", self.pool.clone()),
            ("process manager", self.pm.into()),
            ("start time", (self.start / 1_000_000).to_string()),
            ("start since", self.since().to_string()),
            ("accepted conn", self.accepted.to_string()),
            ("listen queue", self.listen.0.to_string()),
            ("max listen queue", self.max_listen.to_string()),
            ("listen queue len", self.listen.1.to_string()),
            ("idle processes", (self.total - self.active).to_string()),
            ("active processes", self.active.to_string()),
            ("total processes", self.total.to_string()),
            ("max active processes", self.max_active.to_string()),
            ("max children reached", self.max_children.to_string()),
            ("slow requests", self.slow.to_string()),
            // Ours, beyond PHP-FPM's.
            ("request timeouts", self.timeouts.to_string()),
        ]
    }

    /// PHP-FPM's per-process fields (`?full`).
    fn worker_fields(&self, w: &Worker) -> Vec<(&'static str, String)> {
        let (method, uri) = w.line.split_once(' ').unwrap_or(("-", "-"));
        let duration = if w.running > 0 {
            self.now.saturating_sub(w.request_start)
        } else {
            w.last_duration
        };
        let state = match (w.running > 0, w.accepting) {
            (true, _) => "Running",
            (false, true) => "Idle",
            // (PHP-FPM's name for a worker not serving yet.)
            (false, false) => "Starting",
        };
        vec![
            ("pid", w.pid.to_string()),
            ("state", state.into()),
            ("start time", (w.started / 1_000_000).to_string()),
            (
                "start since",
                (self.now.saturating_sub(w.started) / 1_000_000).to_string(),
            ),
            ("requests", w.requests.to_string()),
            ("request duration", duration.to_string()),
            ("request method", method.to_string()),
            ("request uri", uri.to_string()),
            ("content length", "0".into()),
            ("user", "-".into()),
            ("script", "-".into()),
            ("last request cpu", "0.00".into()),
            ("last request memory", w.rss.to_string()),
            ("requests in flight", w.running.to_string()),
        ]
    }
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
    let snapshot = Snapshot::of(board, pool, listen);
    if words.contains(&"json") {
        ("application/json", json(&snapshot, full))
    } else if words.contains(&"openmetrics") {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            openmetrics(&snapshot, full),
        )
    } else {
        ("text/plain", text(&snapshot, full))
    }
}

/// `key:   value` lines, values aligned as PHP-FPM aligns them.
fn text(s: &Snapshot, full: bool) -> String {
    let line = |k: &str, v: &str| {
        format!(
            "{k}:{}{v}\n",
            " ".repeat(21usize.saturating_sub(k.len()).max(1))
        )
    };
    let lines =
        |fields: &[(&str, String)]| fields.iter().map(|(k, v)| line(k, v)).collect::<String>();
    let mut body = lines(&s.pool_fields());
    for (cause, n) in &s.recycles {
        body.push_str(&line(&format!("recycled {cause}"), &n.to_string()));
    }
    if full {
        for w in &s.workers {
            body.push_str("\n************************\n");
            body.push_str(&lines(&s.worker_fields(w)));
        }
    }
    body
}

/// `?json`: PHP-FPM's object, numbers as numbers.
fn json(s: &Snapshot, full: bool) -> String {
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
    let mut body = format!("{{{}", object(&s.pool_fields()));
    let causes: Vec<String> = s
        .recycles
        .iter()
        .map(|(c, n)| format!("{}:{n}", json_string(c)))
        .collect();
    body.push_str(&format!(",\"recycles\":{{{}}}", causes.join(",")));
    if full {
        let rows: Vec<String> = s
            .workers
            .iter()
            .map(|w| format!("{{{}}}", object(&s.worker_fields(w))))
            .collect();
        body.push_str(&format!(",\"processes\":[{}]", rows.join(",")));
    }
    body.push('}');
    body
}

/// A label value, escaped as OpenMetrics wants (`\\`, `\"`, `\n`).
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `?openmetrics`: the `phpfpm_*` families of the PHP-FPM exporters.
fn openmetrics(s: &Snapshot, full: bool) -> String {
    // (name, type, help, value). A counter's sample is `<family>_total`.
    let metrics: [(&str, &str, &str, u64); 12] = [
        ("up", "gauge", "Whether the pool is up.", 1),
        (
            "start_since",
            "gauge",
            "Seconds since the pool started.",
            s.since(),
        ),
        (
            "accepted_connections",
            "counter",
            "Requests accepted (PHP-FPM's accepted conn).",
            s.accepted,
        ),
        (
            "listen_queue",
            "gauge",
            "Connections waiting to be accepted.",
            s.listen.0,
        ),
        (
            "max_listen_queue",
            "gauge",
            "Longest listen queue seen.",
            s.max_listen,
        ),
        (
            "listen_queue_length",
            "gauge",
            "Size of the listen queue (backlog).",
            s.listen.1,
        ),
        (
            "idle_processes",
            "gauge",
            "Idle worker processes.",
            s.total - s.active,
        ),
        (
            "active_processes",
            "gauge",
            "Worker processes serving requests.",
            s.active,
        ),
        ("total_processes", "gauge", "Worker processes.", s.total),
        (
            "max_active_processes",
            "gauge",
            "Most worker processes active at once.",
            s.max_active,
        ),
        (
            "slow_requests",
            "counter",
            "Requests slower than --slow-request-log.",
            s.slow,
        ),
        (
            "request_timeouts",
            "counter",
            "Requests that overran --request-timeout.",
            s.timeouts,
        ),
    ];
    // Every sample is labelled with its pool (one master may run many).
    let pool = format!("pool=\"{}\"", label_value(&s.pool));
    let mut body = String::new();
    for (name, kind, help, value) in metrics {
        let sample = if kind == "counter" { "_total" } else { "" };
        body.push_str(&format!(
            "# HELP phpfpm_{name} {help}\n# TYPE phpfpm_{name} {kind}\nphpfpm_{name}{sample}{{{pool}}} {value}\n"
        ));
    }
    body.push_str(
        "# HELP phpfpm_recycles Workers recycled, by cause.\n# TYPE phpfpm_recycles counter\n",
    );
    for (cause, n) in &s.recycles {
        body.push_str(&format!(
            "phpfpm_recycles_total{{{pool},cause=\"{cause}\"}} {n}\n"
        ));
    }
    if full {
        body.push_str("# HELP phpfpm_process_requests Requests served by a worker.\n# TYPE phpfpm_process_requests counter\n");
        for w in &s.workers {
            body.push_str(&format!(
                "phpfpm_process_requests_total{{{pool},pid=\"{}\"}} {}\n",
                w.pid, w.requests
            ));
        }
        body.push_str("# HELP phpfpm_process_memory Resident memory of a worker (bytes).\n# TYPE phpfpm_process_memory gauge\n");
        for w in &s.workers {
            body.push_str(&format!(
                "phpfpm_process_memory{{{pool},pid=\"{}\"}} {}\n",
                w.pid, w.rss
            ));
        }
    }
    body.push_str("# EOF\n");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let worker = |pid, running, accepting, requests| Worker {
            pid,
            running,
            accepting,
            started: 1_000_000_000,
            requests,
            request_start: 2_000_000,
            last_duration: 1500,
            line: "GET /x?y=1".into(),
            rss: 4 << 20,
        };
        Snapshot {
            pool: "www".into(),
            pm: "static",
            max_children: 0,
            now: 5_000_000,
            start: 1_000_000,
            accepted: 7,
            listen: (2, 1024),
            max_listen: 3,
            active: 1,
            total: 3,
            max_active: 2,
            slow: 1,
            timeouts: 0,
            recycles: vec![("max requests", 4), ("max rss", 0)],
            workers: vec![
                worker(11, 1, true, 5),
                worker(12, 0, true, 2),
                worker(13, 0, false, 0),
            ],
        }
    }

    #[test]
    fn text_aligns_php_fpm_fields_and_lists_workers_with_full() {
        let s = snapshot();
        let body = text(&s, true);
        assert!(body.starts_with("pool:                 www\nprocess manager:      static\n"));
        assert!(body.contains("\naccepted conn:        7\n"), "{body}");
        assert!(body.contains("\nrecycled max requests: 4\n"), "{body}");
        assert_eq!(body.matches("\n************************\n").count(), 3);
        assert!(body.contains("state:                Running\n"));
        assert!(body.contains("state:                Starting\n"));
        assert!(body.contains("request uri:          /x?y=1\n"));
        assert!(!text(&s, false).contains("pid:"));
    }

    #[test]
    fn json_is_php_fpm_s_object_with_numbers_as_numbers() {
        let s = snapshot();
        let value: serde_json::Value = serde_json::from_str(&json(&s, true)).unwrap();
        assert_eq!(value["pool"], "www");
        assert_eq!(value["accepted conn"], 7);
        assert_eq!(value["start since"], 4);
        assert_eq!(value["idle processes"], 2);
        assert_eq!(value["recycles"]["max requests"], 4);
        let rows = value["processes"].as_array().unwrap();
        let states: Vec<&str> = rows.iter().map(|r| r["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["Running", "Idle", "Starting"]);
        assert_eq!(rows[0]["request duration"], 3_000_000);
        assert_eq!(rows[1]["request duration"], 1500);
        assert_eq!(rows[0]["request method"], "GET");
        assert_eq!(rows[0]["last request memory"], 4 << 20);
        let brief: serde_json::Value = serde_json::from_str(&json(&s, false)).unwrap();
        assert!(brief.get("processes").is_none());
    }

    #[test]
    fn openmetrics_counters_end_in_total_and_the_page_in_eof() {
        let s = snapshot();
        let body = openmetrics(&s, true);
        assert!(body.contains(
            "# TYPE phpfpm_accepted_connections counter\nphpfpm_accepted_connections_total{pool=\"www\"} 7\n"
        ));
        assert!(
            body.contains(
                "# TYPE phpfpm_listen_queue gauge\nphpfpm_listen_queue{pool=\"www\"} 2\n"
            )
        );
        assert!(body.contains("phpfpm_recycles_total{pool=\"www\",cause=\"max requests\"} 4\n"));
        assert!(body.contains("phpfpm_process_requests_total{pool=\"www\",pid=\"11\"} 5\n"));
        assert!(body.contains("phpfpm_process_memory{pool=\"www\",pid=\"13\"} 4194304\n"));
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert!(body.ends_with("# EOF\n"));
        assert_eq!(body.matches("# EOF").count(), 1);
        assert!(!openmetrics(&s, false).contains("pid="));
    }
}
