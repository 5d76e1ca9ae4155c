//! The access log (`--access-log FILE`, `--access-log-format FMT`): one
//! line per request in Apache's `LogFormat` language, compiled once.
//! Atoms: `%h` remote address, `%l` `-`, `%u` remote user, `%t` time
//! (`[25/Nov/2026:20:16:40 +0000]`), `%r` request line, `%m` method, `%U`
//! path, `%q` query string (with its `?`), `%H` protocol, `%s`/`%>s` status,
//! `%b` body bytes (`-` for none), `%B` body bytes, `%D` duration in µs, `%T`
//! in seconds, `%P` worker pid, `%{Name}i` a request header, `%{NAME}e` a
//! CGI/FastCGI variable, `%%` a `%`. Lines are written with one `write(2)`
//! each (`O_APPEND`), so workers can share the file; USR1 reopens it (log
//! rotation).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Apache's "combined" format plus the duration in microseconds.
pub const DEFAULT_FORMAT: &str = "%h - %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-Agent}i\" %D";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Atom {
    Text(String),
    Remote,
    User,
    Time,
    RequestLine,
    Method,
    Path,
    Query,
    Protocol,
    Status,
    BytesOrDash,
    Bytes,
    Micros,
    Seconds,
    Pid,
    Header(Vec<u8>),
    Variable(Vec<u8>),
}

/// A bad `--access-log-format`.
#[derive(Debug, thiserror::Error)]
#[error("--access-log-format: {0}")]
pub struct FormatError(String);

fn compile(format: &str) -> Result<Vec<Atom>, FormatError> {
    let mut atoms = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        let mut name = None;
        if chars.peek() == Some(&'{') {
            chars.next();
            let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
            name = Some(inner);
        }
        if chars.peek() == Some(&'>') {
            chars.next();
        }
        let Some(letter) = chars.next() else {
            return Err(FormatError("a lone % at the end".into()));
        };
        let atom = match (letter, name) {
            ('%', None) => {
                text.push('%');
                continue;
            }
            ('h', None) => Atom::Remote,
            ('l', None) => Atom::Text("-".into()),
            ('u', None) => Atom::User,
            ('t', None) => Atom::Time,
            ('r', None) => Atom::RequestLine,
            ('m', None) => Atom::Method,
            ('U', None) => Atom::Path,
            ('q', None) => Atom::Query,
            ('H', None) => Atom::Protocol,
            ('s', None) => Atom::Status,
            ('b', None) => Atom::BytesOrDash,
            ('B', None) => Atom::Bytes,
            ('D', None) => Atom::Micros,
            ('T', None) => Atom::Seconds,
            ('P', None) => Atom::Pid,
            ('i', Some(header)) => {
                let cgi = header.to_ascii_uppercase().replace('-', "_");
                Atom::Header(format!("HTTP_{cgi}").into_bytes())
            }
            ('e', Some(variable)) => Atom::Variable(variable.into_bytes()),
            (letter, _) => return Err(FormatError(format!("unknown atom %{letter}"))),
        };
        if !text.is_empty() {
            atoms.push(Atom::Text(std::mem::take(&mut text)));
        }
        atoms.push(atom);
    }
    if !text.is_empty() {
        atoms.push(Atom::Text(text));
    }
    Ok(atoms)
}

/// What is known of a finished request.
pub struct Entry<'a> {
    /// The request's meta-variables.
    pub meta: &'a crate::core::meta::MetaVariables,
    /// Response status (0: none was sent).
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// From the start of the app to the end of the response.
    pub duration: Duration,
}

impl Entry<'_> {
    fn var(&self, key: &[u8]) -> Option<String> {
        self.meta
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Where lines go.
enum Target {
    File(PathBuf, File),
    Stderr,
}

/// An open access log.
pub struct AccessLog {
    atoms: Vec<Atom>,
    target: Mutex<Target>,
}

impl AccessLog {
    /// Open `path` for appending (`-`: stderr) with `format`.
    pub fn open(path: &str, format: &str) -> Result<AccessLog, String> {
        let atoms = compile(format).map_err(|e| e.to_string())?;
        let target = if path == "-" {
            Target::Stderr
        } else {
            let file = open_append(path)?;
            Target::File(PathBuf::from(path), file)
        };
        Ok(AccessLog {
            atoms,
            target: Mutex::new(target),
        })
    }

    /// USR1: reopen the file (after a rotation moved it away).
    pub fn reopen(&self) -> Result<(), String> {
        let mut target = crate::core::lock(&self.target);
        if let Target::File(path, file) = &mut *target {
            *file = open_append(&path.to_string_lossy())?;
        }
        Ok(())
    }

    /// Write one line for `entry`.
    pub fn log(&self, entry: &Entry<'_>) {
        let mut line = self.format(entry, SystemTime::now());
        line.push('\n');
        let mut target = crate::core::lock(&self.target);
        let _ = match &mut *target {
            Target::File(_, file) => file.write_all(line.as_bytes()),
            Target::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }

    fn format(&self, e: &Entry<'_>, now: SystemTime) -> String {
        let dash = |v: Option<String>| v.filter(|v| !v.is_empty()).unwrap_or_else(|| "-".into());
        let path =
            || e.var(b"SCRIPT_NAME").unwrap_or_default() + &e.var(b"PATH_INFO").unwrap_or_default();
        let query = || {
            e.var(b"QUERY_STRING")
                .filter(|q| !q.is_empty())
                .map_or(String::new(), |q| format!("?{q}"))
        };
        let mut out = String::with_capacity(160);
        for atom in &self.atoms {
            match atom {
                Atom::Text(t) => out.push_str(t),
                Atom::Remote => out.push_str(&dash(e.var(b"REMOTE_ADDR"))),
                Atom::User => out.push_str(&dash(e.var(b"REMOTE_USER"))),
                Atom::Time => out.push_str(&clf_time(now)),
                Atom::RequestLine => {
                    let uri = e.var(b"REQUEST_URI").unwrap_or_else(|| path() + &query());
                    out.push_str(&format!(
                        "{} {uri} {}",
                        dash(e.var(b"REQUEST_METHOD")),
                        dash(e.var(b"SERVER_PROTOCOL"))
                    ));
                }
                Atom::Method => out.push_str(&dash(e.var(b"REQUEST_METHOD"))),
                Atom::Path => out.push_str(&path()),
                Atom::Query => out.push_str(&query()),
                Atom::Protocol => out.push_str(&dash(e.var(b"SERVER_PROTOCOL"))),
                Atom::Status => out.push_str(&e.status.to_string()),
                Atom::BytesOrDash if e.bytes == 0 => out.push('-'),
                Atom::BytesOrDash | Atom::Bytes => out.push_str(&e.bytes.to_string()),
                Atom::Micros => out.push_str(&e.duration.as_micros().to_string()),
                Atom::Seconds => out.push_str(&e.duration.as_secs().to_string()),
                Atom::Pid => out.push_str(&std::process::id().to_string()),
                Atom::Header(key) | Atom::Variable(key) => out.push_str(&dash(e.var(key))),
            }
        }
        // One request, one line, whatever a header held.
        out.replace(['\n', '\r'], " ")
    }
}

/// `--check`: the format compiles and the file's directory exists (the file
/// itself is not created).
pub fn check(path: &str, format: &str) -> Result<(), String> {
    compile(format).map_err(|e| e.to_string())?;
    if path != "-" {
        let dir = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            return Err(format!(
                "--access-log {path}: {} is not a directory",
                dir.display()
            ));
        }
    }
    Ok(())
}

fn open_append(path: &str) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("--access-log {path}: {e}"))
}

/// `[dd/Mon/yyyy:HH:MM:SS +0000]` (UTC), Apache's `%t`.
fn clf_time(now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "[{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000]",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> crate::core::meta::MetaVariables {
        pairs.iter().copied().collect()
    }

    #[test]
    fn time_is_apache_clf_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_638_000); // 2026-11-25 20:20:00 UTC
        assert_eq!(clf_time(t), "[25/Nov/2026:20:20:00 +0000]");
        assert_eq!(
            clf_time(SystemTime::UNIX_EPOCH),
            "[01/Jan/1970:00:00:00 +0000]"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(clf_time(leap), "[29/Feb/2000:00:00:00 +0000]");
    }

    #[test]
    fn atoms_table() {
        let m = meta(&[
            ("REMOTE_ADDR", "10.0.0.7"),
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/app/x?y=1"),
            ("SCRIPT_NAME", "/app"),
            ("PATH_INFO", "/x"),
            ("QUERY_STRING", "y=1"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("HTTP_USER_AGENT", "curl/8\nforged"),
            ("HTTP_X_REQUEST_ID", "abc"),
        ]);
        let entry = Entry {
            meta: &m,
            status: 201,
            bytes: 0,
            duration: Duration::from_micros(1_500_250),
        };
        let rows: &[(&str, &str)] = &[
            ("%h %l %u", "10.0.0.7 - -"),
            ("\"%r\"", "\"POST /app/x?y=1 HTTP/1.1\""),
            ("%m %U%q %H", "POST /app/x?y=1 HTTP/1.1"),
            ("%s %>s %b %B", "201 201 - 0"),
            ("%D %T", "1500250 1"),
            ("%{User-Agent}i", "curl/8 forged"),
            ("%{X-Request-Id}i %{Referer}i", "abc -"),
            ("%{SCRIPT_NAME}e 100%%", "/app 100%"),
        ];
        for (format, expected) in rows {
            let log = AccessLog {
                atoms: compile(format).unwrap(),
                target: Mutex::new(Target::Stderr),
            };
            assert_eq!(
                log.format(&entry, SystemTime::UNIX_EPOCH),
                *expected,
                "{format}"
            );
        }
        assert!(compile("%Z").is_err());
        assert!(compile("trailing %").is_err());
        assert!(compile(DEFAULT_FORMAT).is_ok());
    }
}
