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

/// Write one log line to stderr. Never fails: a lost log line must not turn
/// into a lost response.
pub fn write(level: Level, message: std::fmt::Arguments<'_>) {
    let label = match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
    };
    let line = format!("wsgi-gateway[{}] {label}: {message}\n", std::process::id());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Log an error line: `log_error!("app {} failed", spec)`.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

/// Log a warning line.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

/// Log an informational line.
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}
