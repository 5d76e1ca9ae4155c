//! `--request-timeout` and `--slow-request-log`: a watchdog thread per
//! worker that sees what each app thread runs (a slot per thread), logs the
//! Python stack of exactly the thread behind a slow or overrunning request
//! (`sys._current_frames()`, in-process: no ptrace, works in containers),
//! answers an overrun with 504 (written by the watchdog itself) and
//! asks for the worker to be replaced.

use crate::core::lock;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fcgi::job::Exchange;
use crate::{log_error, log_warn};
use pyo3::prelude::*;

/// `--request-timeout` and `--slow-request-log`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    /// A request running longer gets its stack logged, a 504 (if no header
    /// went out yet), and the worker is replaced.
    pub request: Option<Duration>,
    /// A request running longer gets its stack logged (once).
    pub slow: Option<Duration>,
}

/// What an app thread is running, for the watchdog.
pub(crate) struct Running {
    pub(crate) started: Instant,
    pub(crate) what: String,
    pub(crate) thread: u64,
    pub(crate) thread_name: String,
    pub(crate) exchange: Arc<Exchange>,
    pub(crate) slow_logged: bool,
    pub(crate) timed_out: bool,
}

/// One slot per app thread.
pub(crate) type Slots = Arc<Vec<Mutex<Option<Running>>>>;

/// The watchdog thread: checks the running requests a few times per
/// shortest limit; logs the Python stack of exactly the thread that runs a
/// slow or overrunning request (`sys._current_frames()`, in-process: no
/// ptrace), answers an overrun with 504 and calls `on_timeout` (the worker
/// asks its master for a replacement).
pub(crate) fn watchdog(slots: Slots, timeouts: Timeouts, on_timeout: Box<dyn Fn() + Send>) {
    let shortest = [timeouts.request, timeouts.slow]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(1));
    let tick = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut replacement_asked = false;
    loop {
        std::thread::sleep(tick);
        let mut reports = Vec::new();
        for slot in slots.iter() {
            let mut slot = lock(slot);
            let Some(running) = slot.as_mut() else {
                continue;
            };
            let elapsed = running.started.elapsed();
            if timeouts.request.is_some_and(|t| elapsed >= t) && !running.timed_out {
                running.timed_out = true;
                // 504, or the response cut short (the app thread's writes
                // stop within 100 ms of the abort, so the writer frees up).
                if running.exchange.time_out() {
                    if let Some(board) = crate::process::scoreboard::board() {
                        board.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    reports.push((
                        true,
                        elapsed,
                        running.what.clone(),
                        running.thread,
                        running.thread_name.clone(),
                    ));
                }
            } else if timeouts.slow.is_some_and(|t| elapsed >= t) && !running.slow_logged {
                running.slow_logged = true;
                if let Some(board) = crate::process::scoreboard::board() {
                    board.slow_requests.fetch_add(1, Ordering::Relaxed);
                }
                reports.push((
                    false,
                    elapsed,
                    running.what.clone(),
                    running.thread,
                    running.thread_name.clone(),
                ));
            }
        }
        for (timed_out, elapsed, what, thread, name) in reports {
            // Asked first: a worker whose thread holds the GIL is replaced
            // even though nothing here can run Python.
            if timed_out && !replacement_asked {
                replacement_asked = true;
                on_timeout();
            }
            let stack = match crate::python::interpreter::attach_within(
                "wsgi-watchdog-stack",
                STACK_WAIT,
                move |py| python_stack(py, thread),
            ) {
                Some(stack) => format!("Python stack, most recent call last:\n{stack}"),
                None => format!(
                    "no Python stack: the GIL was not released within {:.0} s (a thread stuck \
                     in C code holding it?); faulthandler's stacks of every thread follow",
                    STACK_WAIT.as_secs_f64()
                ),
            };
            if timed_out {
                log_error!(
                    "request timed out after {:.1} s: {what} (thread {name}); answered 504 unless its \
                     response had begun; {stack}",
                    elapsed.as_secs_f64()
                );
            } else {
                log_warn!(
                    "slow request ({:.1} s so far): {what} (thread {name}); {stack}",
                    elapsed.as_secs_f64()
                );
            }
            if !stack.starts_with("Python stack") {
                // faulthandler writes them from the signal handler, on
                // this thread, now (no GIL needed).
                let _ = nix::sys::pthread::pthread_kill(
                    nix::sys::pthread::pthread_self(),
                    crate::python::interpreter::STACKS_SIGNAL,
                );
            }
        }
    }
}

/// How long the watchdog waits for the GIL to format a stack.
const STACK_WAIT: Duration = Duration::from_secs(1);

/// The Python stack of the thread with this ident, formatted.
fn python_stack(py: Python<'_>, thread: u64) -> String {
    let stack = || -> PyResult<String> {
        let frames = py.import("sys")?.call_method0("_current_frames")?;
        let Ok(frame) = frames.get_item(thread) else {
            return Ok("  (the thread is no longer running Python code)".into());
        };
        let lines = py
            .import("traceback")?
            .call_method1("format_stack", (frame,))?;
        let mut text = String::new();
        for line in lines.try_iter()? {
            text.push_str(&line?.extract::<String>()?);
        }
        Ok(text.trim_end().to_string())
    };
    stack().unwrap_or_else(|e| format!("  (stack unavailable: {e})"))
}

/// "METHOD URI" of a request, for log lines.
pub(crate) fn describe(meta: &crate::core::meta::MetaVariables) -> String {
    let mut line = Vec::new();
    describe_into(meta, &mut line);
    String::from_utf8_lossy(&line).into_owned()
}

/// "METHOD URI" of a request, its raw bytes in `line` (cleared first; a
/// buffer kept from request to request: the scoreboard's line costs no
/// allocation).
pub(crate) fn describe_into(meta: &crate::core::meta::MetaVariables, line: &mut Vec<u8>) {
    line.clear();
    line.extend_from_slice(meta.get(b"REQUEST_METHOD").unwrap_or(b"GET"));
    line.push(b' ');
    if let Some(uri) = meta.get(b"REQUEST_URI") {
        line.extend_from_slice(uri);
        return;
    }
    line.extend_from_slice(meta.get(b"SCRIPT_NAME").unwrap_or_default());
    line.extend_from_slice(meta.get(b"PATH_INFO").unwrap_or_default());
    if let Some(query) = meta.get(b"QUERY_STRING").filter(|q| !q.is_empty()) {
        line.push(b'?');
        line.extend_from_slice(query);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_is_method_and_uri_or_its_parts() {
        let meta = |pairs: &[(&str, &str)]| -> crate::core::meta::MetaVariables {
            pairs.iter().copied().collect()
        };
        let mut line = b"left over".to_vec();
        describe_into(
            &meta(&[
                ("REQUEST_METHOD", "POST"),
                ("REQUEST_URI", "/a?b=1"),
                ("PATH_INFO", "/x"),
            ]),
            &mut line,
        );
        assert_eq!(line, b"POST /a?b=1");
        describe_into(
            &meta(&[
                ("SCRIPT_NAME", "/app"),
                ("PATH_INFO", "/p"),
                ("QUERY_STRING", "q=\u{e9}"),
            ]),
            &mut line,
        );
        assert_eq!(line, "GET /app/p?q=\u{e9}".as_bytes());
        describe_into(
            &meta(&[("PATH_INFO", "/p"), ("QUERY_STRING", "")]),
            &mut line,
        );
        assert_eq!(line, b"GET /p");
        assert_eq!(describe(&meta(&[("REQUEST_URI", "/")])), "GET /");
    }
}
