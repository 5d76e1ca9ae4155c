//! The gateway's own log lines. Under CGI, stderr is the web server's error
//! log, so every line is one self-contained `wsgi-gateway[pid] level: message`.

use std::io::Write;

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The request or the process failed.
    Error,
    /// Something was wrong but the gateway recovered (dropped header, short body).
    Warn,
    /// Informational.
    Info,
}

/// The last line this process wrote, and how many times it came again
/// since (not written: a run of identical lines — a burst of the same
/// failure — is written once, then counted).
struct Last {
    line: String,
    repeats: u64,
    since: Option<std::time::Instant>,
}

static LAST: std::sync::Mutex<Last> = std::sync::Mutex::new(Last {
    line: String::new(),
    repeats: 0,
    since: None,
});

/// A run of repeats is summed up at least this often.
const REPEAT_SUMMARY: std::time::Duration = std::time::Duration::from_secs(10);

/// Write one log line to stderr. Never fails: a lost log line must not turn
/// into a lost response. The same line again right after itself is only
/// counted; the count is written with the next different line (or every
/// [`REPEAT_SUMMARY`] while the run goes on).
pub fn write(level: Level, message: std::fmt::Arguments<'_>) {
    let label = match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
    };
    let pid = std::process::id();
    let line = format!("wsgi-gateway[{pid}] {label}: {message}\n");
    let mut last = crate::core::lock(&LAST);
    let out = last.next(pid, line, std::time::Instant::now());
    if !out.is_empty() {
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
    }
}

impl Last {
    /// What to write for `line` now (maybe nothing).
    fn next(&mut self, pid: u32, line: String, now: std::time::Instant) -> String {
        let mut out = String::new();
        if line == self.line {
            self.repeats += 1;
            let since = *self.since.get_or_insert(now);
            if now.duration_since(since) < REPEAT_SUMMARY {
                return out;
            }
            // (Summed up; the run goes on counting from here.)
            out.push_str(&summary(pid, self.repeats));
            self.repeats = 0;
            self.since = Some(now);
            return out;
        }
        if self.repeats > 0 {
            out.push_str(&summary(pid, self.repeats));
        }
        out.push_str(&line);
        self.line = line;
        self.repeats = 0;
        self.since = None;
        out
    }
}

fn summary(pid: u32, repeats: u64) -> String {
    format!("wsgi-gateway[{pid}] info: (the message above came {repeats} more time(s))\n")
}

/// Log an error line: `log_error!("app {} failed", spec)`.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::core::log::write($crate::core::log::Level::Error, format_args!($($arg)*)) };
}

/// Log a warning line.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::core::log::write($crate::core::log::Level::Warn, format_args!($($arg)*)) };
}

/// Log an informational line.
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::core::log::write($crate::core::log::Level::Info, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_identical_lines_is_written_once_then_counted() {
        let mut last = Last {
            line: String::new(),
            repeats: 0,
            since: None,
        };
        let t0 = std::time::Instant::now();
        let a = "x info: a\n".to_string();
        assert_eq!(last.next(1, a.clone(), t0), a);
        for _ in 0..2054 {
            assert_eq!(last.next(1, a.clone(), t0), "");
        }
        let b = "x info: b\n".to_string();
        let out = last.next(1, b.clone(), t0);
        assert_eq!(
            out,
            format!("wsgi-gateway[1] info: (the message above came 2054 more time(s))\n{b}")
        );
        // A long run is summed up every REPEAT_SUMMARY.
        assert_eq!(last.next(1, b.clone(), t0), "");
        let later = t0 + REPEAT_SUMMARY;
        assert!(
            last.next(1, b.clone(), later)
                .contains("came 2 more time(s)")
        );
        assert_eq!(last.next(1, b, later), "");
    }
}
