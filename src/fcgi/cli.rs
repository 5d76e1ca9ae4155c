//! The settings of `wsgi-fcgi`: one flag table (clap), which `--config
//! FILE` (TOML, the flags' names as keys) and `WSGI_<FLAG>` variables feed
//! too — the command line wins over the environment, which wins over the
//! file — turned into the options of a worker and its master ([`Plan`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fcgi::job::Limits;
use crate::fcgi::worker::listener::{Bind, UnixSocketOptions};
use crate::fcgi::worker::pool::Timeouts;
use crate::fcgi::worker::{Sched, WorkerOptions};
use crate::process::master::pm::Pm;
use crate::python::startup::AppArgs;

mod layers;
pub use layers::{Invocation, invocation, parse};
pub(super) use layers::{config_arg, flags_of, read_table};

/// The end of `--help`.
pub const AFTER_HELP: &str =
    "Environment: every flag may be given as WSGI_<FLAG> (WSGI_APP, WSGI_WORKERS,
WSGI_MAX_REQUESTS, ...; WSGI_BIND ','-separated, WSGI_PYTHONPATH ':'-separated,
switches on for 1/true/yes/on); the command line wins over the environment,
which wins over --config. An empty variable counts as unset.

Listening: --bind unix:PATH, HOST:PORT or [IPv6]:PORT (repeatable). Without
--bind, a listening socket inherited on fd 0 (spawn-fcgi, mod_fcgid, lighttpd
bin-path) or from systemd (LISTEN_FDS) is used. FCGI_WEB_SERVER_ADDRS (comma-
separated IPs) restricts TCP peers.

Signals (the process, or with --workers the master):
  TERM        graceful stop: no new connections, requests in flight finish
              within --graceful-timeout
  INT, QUIT   stop at once
  HUP         (--workers) reload: the app is imported afresh (by a new
              template, or with --no-preload by each new worker) and new
              workers start accepting; the old ones then finish their
              requests and exit. The listening sockets stay open
              throughout. If the new code does not import, the old workers
              go on serving.
  TTIN, TTOU  (--workers) one worker process more / fewer (--pm dynamic,
              ondemand: --max-workers one more / fewer)
  USR1        reopen the access log (the master passes it to its workers)

Exit status: 0 stopped normally; 1 could not start (bad option, socket,
interpreter); 4 the application failed to import (with --workers: in the
template or the first worker, which stops the master instead of a respawn
loop).
`wsgi-fcgi request`: 0 when the response status is 2xx, 1 otherwise, 2 when
the request failed.";

/// Serve a Python WSGI application to web servers over FastCGI.
#[derive(Parser)]
#[command(
    version,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct Cli {
    /// `wsgi-fcgi request …`, or none: serve.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The serve flags.
    #[command(flatten)]
    pub serve: Serve,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Send one request to a FastCGI responder and print the response.
    Request(RequestArgs),
}

/// The flags of `wsgi-fcgi` (serving): the one table of its settings,
/// also read from `--config` and `WSGI_*`.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("master").args(["workers", "pm"]).multiple(true))]
pub struct Serve {
    /// `--app`, `--venv`, `--chdir`, `--pythonpath`: as for `wsgi-cgi`.
    #[command(flatten)]
    pub app: AppArgs,
    /// Listen on unix:PATH, HOST:PORT or [IPv6]:PORT (repeatable)
    #[arg(long, value_name = "ADDRESS")]
    bind: Vec<String>,
    /// Python threads running the app
    #[arg(long, value_name = "N", default_value_t = 4)]
    threads: usize,
    /// Mode of a unix socket (octal); never world-writable by default
    #[arg(long, value_name = "MODE", default_value = "660", value_parser = parse_mode)]
    socket_mode: u32,
    /// Owner (user name) of a unix socket
    #[arg(long, value_name = "USER")]
    socket_owner: Option<String>,
    /// Group of a unix socket
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Listen backlog
    #[arg(long, value_name = "N", default_value_t = 1024)]
    backlog: i32,
    /// Connections open at once (advertised as FCGI_MAX_CONNS); at the limit the oldest idle one is closed for a new one
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_conns: usize,
    /// Requests in flight on one connection (multiplexing), default 64; advertised as FCGI_MAX_REQS when given, else the worker's app threads are (a multiplexing client such as HAProxy then opens more connections, which spread over the workers, instead of queueing requests on one)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_reqs: Option<u32>,
    /// Largest PARAMS (request headers and CGI variables) in bytes; more closes the connection
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    max_params_size: usize,
    /// Largest request body in bytes; a larger CONTENT_LENGTH gets 413 before the app runs [default: no limit]
    #[arg(long, value_name = "BYTES")]
    max_body_size: Option<u64>,
    /// Request bodies up to this size are received in memory before the app runs; larger ones go to a temporary file
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    body_buffer_size: usize,
    /// Directory for those temporary files (unlinked at once) [default: $TMPDIR, else /tmp]
    #[arg(long, value_name = "DIR")]
    body_temp_dir: Option<PathBuf>,
    /// Start the app before its request body has arrived and let it read the body as it comes (a slow client then holds an app thread)
    #[arg(long)]
    stream_request_body: bool,
    /// Seconds a connection may take to send a complete request header (BEGIN_REQUEST and PARAMS), or may let a body stall, before it is closed
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    header_timeout: f64,
    /// Serve kept-alive connections (nginx keepalive pools) on the I/O thread: two wake-ups per request instead of one (by default the app threads serve them)
    #[arg(long)]
    kept_on_io_thread: bool,
    /// Also send wsgi.errors output to the web server as FCGI_STDERR (like fcgiwrap -f)
    #[arg(long)]
    forward_stderr: bool,
    /// Seconds TERM waits for requests in flight
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    graceful_timeout: f64,
    /// Run a master with N pre-forked worker processes (signals: see below) [default: one process, no master]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    workers: Option<u32>,
    /// Process manager (PHP-FPM's modes): static keeps --workers; dynamic keeps between --min-spare and --max-spare idle workers, up to --max-workers; ondemand starts workers when connections wait and retires them after --idle-timeout
    #[arg(long, value_name = "MODE", value_enum)]
    pm: Option<PmMode>,
    /// (--pm dynamic, ondemand) Most workers at once [default: --workers, else 5]
    #[arg(long, value_name = "N", requires = "pm", value_parser = clap::value_parser!(u32).range(1..=crate::process::scoreboard::SLOTS as i64))]
    max_workers: Option<u32>,
    /// (--pm dynamic) Workers at start [default: min-spare + (max-spare - min-spare) / 2]
    #[arg(long, value_name = "N", requires = "pm")]
    start_workers: Option<u32>,
    /// (--pm dynamic) Fewest idle workers (more are spawned, 1, 2, 4 ... up to 32 a second)
    #[arg(long, value_name = "N", requires = "pm", default_value_t = 1)]
    min_spare: u32,
    /// (--pm dynamic) Most idle workers (one more is retired each second)
    #[arg(long, value_name = "N", requires = "pm", default_value_t = 3)]
    max_spare: u32,
    /// (--pm ondemand) Seconds a worker may serve nothing before it is retired
    #[arg(long, value_name = "S", requires = "pm", default_value_t = 10.0)]
    idle_timeout: f64,
    /// (--workers) Import the app once, in a template process (as --user), and fork the workers from it (copy-on-write sharing); HUP imports the new code in a new template [default: on with --workers 2 or more and --pm dynamic; off with one worker and --pm ondemand]
    #[arg(long, requires = "master", overrides_with = "no_preload")]
    preload: bool,
    /// (--workers) Import the app in each worker instead: for apps that start threads or open connections at import (a fork does not carry threads over, and would share the connections)
    #[arg(long, overrides_with = "preload")]
    no_preload: bool,
    /// (--workers) Replace a worker after it served N requests (its replacement starts first)
    #[arg(long, value_name = "N", requires = "master", value_parser = clap::value_parser!(u64).range(1..))]
    max_requests: Option<u64>,
    /// (--workers) Up to N more requests per worker, at random, so workers do not recycle together
    #[arg(long, value_name = "N", requires = "max_requests", default_value_t = 0)]
    max_requests_jitter: u64,
    /// (--workers) Replace a worker after S seconds (plus up to 10% at random)
    #[arg(long, value_name = "S", requires = "master")]
    max_lifetime: Option<f64>,
    /// A request running longer than S seconds: its Python stack is logged, it gets a 504 if its response has not begun, and (with --workers) the worker is replaced once its other requests are done; the master kills a worker that does not act by S + --graceful-timeout
    #[arg(long, value_name = "S")]
    request_timeout: Option<f64>,
    /// Log the Python stack of requests running longer than S seconds (like PHP-FPM's slowlog)
    #[arg(long, value_name = "S")]
    slow_request_log: Option<f64>,
    /// Answer PATH with the pool's status (PHP-FPM's fields; ?json, ?openmetrics, ?full), without the app
    #[arg(long, value_name = "PATH")]
    status_path: Option<String>,
    /// Answer PATH with "pong", without the app (a health check)
    #[arg(long, value_name = "PATH")]
    ping_path: Option<String>,
    /// Read settings from a TOML file whose keys are these flags' names (e.g. `workers = 4`); flags given here win
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and import the app in a child process (as --user), report the import time, and exit: 0 when all is well (like php-fpm -t)
    #[arg(long)]
    check: bool,
    /// Write an access log line per request to FILE ('-': stderr); USR1 reopens it
    #[arg(long, value_name = "FILE")]
    access_log: Option<String>,
    /// Apache LogFormat atoms: %h %l %u %t %r %m %U %q %H %s %b %B %D %T %P %{Header}i %{VAR}e %%
    #[arg(long, value_name = "FMT", default_value = crate::fcgi::worker::accesslog::DEFAULT_FORMAT)]
    access_log_format: String,
    /// Run the app as this user once the sockets are bound (with --workers: the workers; the master stays as started)
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Run the app as this group [default: the --user's primary group]
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// Stop (as TERM does) after S seconds without a request, removing the socket: a responder started on demand, as `wsgi-cgi --warm` does [default: never]
    #[arg(long, value_name = "S", conflicts_with = "workers")]
    idle_exit: Option<f64>,
    /// Accept unix-socket connections only from processes running as this process's user (SO_PEERCRED); others are closed at once and logged
    #[arg(long)]
    same_uid_only: bool,
    /// Start Python as wsgi-cgi does: its lean `site` (venv, site-packages, .pth files and sitecustomize done from Rust; no user site-packages) and no cyclic GC while the app is imported; wsgi-cgi --warm sets it, so that warm and cold requests see the same sys.path
    #[arg(long)]
    lean_site: bool,
    /// Scheduling policy of the processes that run the app (the master keeps the default): batch (SCHED_BATCH) lets a worker woken by a new connection wait for the web server it would otherwise preempt, so that it finds several connections at once and serves them without a context switch each; other is Linux's default (chrt -o) [default: batch, unless started under another policy than other (chrt, systemd's CPUSchedulingPolicy=), which is kept]
    #[arg(long, value_name = "POLICY", value_enum)]
    sched: Option<Sched>,
    /// (--workers) Replace a worker whose resident memory exceeds MiB (minus up to 5% at random; sampled every second)
    #[arg(long, value_name = "MiB", requires = "master", value_parser = clap::value_parser!(u64).range(1..))]
    max_rss: Option<u64>,
}

/// `--pm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PmMode {
    /// A fixed number of workers.
    Static,
    /// Idle workers kept between the spare bounds.
    Dynamic,
    /// Workers only while connections come.
    Ondemand,
}

/// The arguments of `wsgi-fcgi request`.
#[derive(Args)]
pub struct RequestArgs {
    /// The responder: unix:PATH, HOST:PORT or [IPv6]:PORT
    pub address: String,
    /// The path, with an optional ?query
    #[arg(default_value = "/")]
    pub path: String,
    /// Request method
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// A header, "Name: value" (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Request body
    #[arg(short = 'd', long, value_name = "DATA", conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Request body from a file
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
}

/// `--max-reqs` when not given.
const DEFAULT_MAX_REQS: usize = 64;

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|e| format!("not an octal mode: {e}"))
}

/// What the serve flags ask for.
pub struct Plan {
    /// What each worker (or the only process) runs with.
    pub options: WorkerOptions,
    /// `--max-lifetime`.
    pub max_lifetime: Option<Duration>,
    /// `--max-rss`, in bytes.
    pub max_rss: Option<u64>,
    /// `--check`.
    pub check: bool,
    /// `--preload`.
    pub preload: bool,
    /// `--pm` and its settings.
    pub pm: Pm,
}

impl Serve {
    /// The flags, checked and turned into options.
    pub fn plan(self) -> anyhow::Result<Plan> {
        let args = self;
        let pm = args.pm_settings()?;
        // A master of several workers forks them from the imported app
        // unless told not to; not ondemand, whose point is nothing resident
        // while idle, nor a single worker, which shares with nobody.
        let default = match &pm {
            Pm::Static => args.workers.is_some_and(|n| n >= 2),
            Pm::Dynamic { .. } => true,
            Pm::Ondemand { .. } => false,
        };
        let preload = !args.no_preload && (args.preload || default);
        let binds = args
            .bind
            .iter()
            .map(|b| Bind::parse(b))
            .collect::<Result<Vec<_>, _>>()?;
        let options = WorkerOptions {
            app: args.app.app,
            binds,
            unix: UnixSocketOptions {
                mode: args.socket_mode,
                owner: args.socket_owner,
                group: args.socket_group,
            },
            backlog: args.backlog,
            threads: args.threads.max(1),
            venv: args.app.venv,
            chdir: args.app.chdir,
            pythonpath: args.app.pythonpath,
            limits: Limits {
                max_params: args.max_params_size,
                max_body: args.max_body_size,
                max_conns: args.max_conns,
                max_reqs: args.max_reqs.map_or(DEFAULT_MAX_REQS, |n| n as usize),
                advertised_reqs: args.max_reqs.map_or(args.threads.max(1), |n| n as usize),
                page_hook: None,
                body_buffer_size: args.body_buffer_size,
                body_temp_dir: args.body_temp_dir,
                stream_request_body: args.stream_request_body,
                header_timeout: Duration::from_secs_f64(args.header_timeout.max(0.001)),
                kept_inline: !args.kept_on_io_thread,
            },
            forward_stderr: args.forward_stderr,
            graceful_timeout: Duration::from_secs_f64(args.graceful_timeout.max(0.0)),
            workers: match &pm {
                Pm::Static => args.workers.map_or(0, |n| n as usize),
                Pm::Dynamic { max, .. } | Pm::Ondemand { max, .. } => *max,
            },
            max_requests: args.max_requests,
            max_requests_jitter: args.max_requests_jitter,
            timeouts: Timeouts {
                request: args
                    .request_timeout
                    .map(|s| Duration::from_secs_f64(s.max(0.001))),
                slow: args
                    .slow_request_log
                    .map(|s| Duration::from_secs_f64(s.max(0.001))),
            },
            status_path: args.status_path,
            ping_path: args.ping_path,
            access_log: args.access_log,
            access_log_format: args.access_log_format,
            user: args.user,
            group: args.group,
            idle_exit: args
                .idle_exit
                .map(|s| Duration::from_secs_f64(s.max(0.001))),
            same_uid_only: args.same_uid_only,
            lean_site: args.lean_site,
            pool: None,
            sched: args.sched,
        };
        Ok(Plan {
            options,
            max_lifetime: args
                .max_lifetime
                .map(|s| Duration::from_secs_f64(s.max(0.001))),
            max_rss: args.max_rss.map(|mib| mib << 20),
            check: args.check,
            preload,
            pm,
        })
    }

    /// `--pm` and the settings of its mode, checked. Settings of another
    /// mode are ignored, as PHP-FPM does (a pools file sets defaults for
    /// pools of every mode).
    fn pm_settings(&self) -> anyhow::Result<Pm> {
        let mode = self.pm.unwrap_or(PmMode::Static);
        let max = self.max_workers.or(self.workers).map_or(5, |n| n as usize);
        match mode {
            PmMode::Static => Ok(Pm::Static),
            PmMode::Ondemand => Ok(Pm::Ondemand {
                max,
                idle_timeout: Duration::from_secs_f64(self.idle_timeout.max(0.001)),
            }),
            PmMode::Dynamic => {
                let (min_spare, max_spare) = (self.min_spare as usize, self.max_spare as usize);
                if min_spare > max_spare {
                    anyhow::bail!("--min-spare {min_spare} is more than --max-spare {max_spare}");
                }
                let start = self
                    .start_workers
                    .map_or(min_spare + (max_spare - min_spare) / 2, |n| n as usize);
                if start > max || min_spare > max {
                    anyhow::bail!(
                        "--start-workers {start} and --min-spare {min_spare} must not exceed --max-workers {max}"
                    );
                }
                Ok(Pm::Dynamic {
                    max,
                    start,
                    min_spare,
                    max_spare,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::Parser;

    fn preload(args: &[&str]) -> bool {
        let argv = std::iter::once("wsgi-fcgi").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .unwrap()
            .serve
            .plan()
            .unwrap()
            .preload
    }

    #[test]
    fn preload_is_the_default_where_workers_share_the_app() {
        assert!(!preload(&[]), "one process");
        assert!(
            !preload(&["--workers", "1"]),
            "one worker shares with nobody"
        );
        assert!(preload(&["--workers", "2"]));
        assert!(preload(&["--pm", "dynamic"]));
        assert!(
            !preload(&["--pm", "ondemand"]),
            "nothing resident while idle"
        );
        assert!(preload(&["--pm", "ondemand", "--preload"]));
        assert!(preload(&["--workers", "1", "--preload"]));
        assert!(!preload(&["--workers", "2", "--no-preload"]));
        // The last of the two wins (a file's `preload`, then the command line's).
        assert!(preload(&["--workers", "2", "--no-preload", "--preload"]));
        assert!(!preload(&["--workers", "2", "--preload", "--no-preload"]));
    }
}
