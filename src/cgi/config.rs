//! Settings of `wsgi-cgi`: one table ([`SETTINGS`]) naming each setting's
//! flag, environment variable and script-file key, and the merge of the three
//! sources. Precedence: command line, then the script file, then the
//! environment (Apache `SetEnv`, lighttpd `setenv.add-environment`).
//!
//! Web servers exec CGI programs with no arguments, except that Apache
//! (RFC 3875 §4.4) turns a query string without `=` into argv words. Those
//! words are request data, so they are stripped before parsing:
//! `GET /app?--venv+/tmp/evil` must never choose a virtualenv.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One row of the settings table.
pub struct Setting {
    /// Name, as in the script file.
    pub key: &'static str,
    /// Command-line flag.
    pub flag: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// Every setting, the single source for flags, environment variables,
/// script-file keys and the documentation.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "app",
        flag: "--app",
        env: "WSGI_APP",
        doc: "the WSGI application: module:callable, module:factory(), or path/to/app.py|app.wsgi (callable `application`); `demo`: the built-in demo app, the default only when no web server started wsgi-cgi",
    },
    Setting {
        key: "venv",
        flag: "--venv",
        env: "WSGI_VENV",
        doc: "a virtualenv (a directory with pyvenv.cfg) whose Python version matches the linked libpython",
    },
    Setting {
        key: "chdir",
        flag: "--chdir",
        env: "WSGI_CHDIR",
        doc: "change to this directory before loading the app; it is put on sys.path",
    },
    Setting {
        key: "pythonpath",
        flag: "--pythonpath",
        env: "WSGI_PYTHONPATH",
        doc: "directories put in front of sys.path (flag repeatable; ':'-separated in the environment)",
    },
    Setting {
        key: "max-body-size",
        flag: "--max-body-size",
        env: "WSGI_MAX_BODY_SIZE",
        doc: "bytes: a request body over this (its CONTENT_LENGTH, or a chunked body as it arrives) is answered 413; default: no limit",
    },
    Setting {
        key: "warm",
        flag: "--warm",
        env: "WSGI_WARM",
        doc: "warm mode (true/1): relay the request to a resident wsgi-fcgi of this app, started on the first request and stopped after warm-idle seconds without one; Python is not started in this process unless the relay cannot serve",
    },
    Setting {
        key: "warm-dir",
        flag: "--warm-dir",
        env: "WSGI_WARM_DIR",
        doc: "warm mode's private directory (sockets, lock, logs), mode 0700, owned by the user; default: ~/.wsgi-gateway, the home taken from the password database",
    },
    Setting {
        key: "warm-threads",
        flag: "--warm-threads",
        env: "WSGI_WARM_THREADS",
        doc: "app threads of the resident responder (its --threads); default 4",
    },
    Setting {
        key: "warm-idle",
        flag: "--warm-idle",
        env: "WSGI_WARM_IDLE",
        doc: "seconds without a request after which the resident responder exits (its --idle-exit); default 300",
    },
];

/// Warm mode's settings (see [`SETTINGS`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WarmSettings {
    /// `warm`: relay to a resident responder.
    pub enabled: bool,
    /// `warm-dir`.
    pub dir: Option<PathBuf>,
    /// `warm-threads`.
    pub threads: Option<u32>,
    /// `warm-idle`, seconds.
    pub idle: Option<u64>,
}

/// The validated settings a run uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The app spec (`None`: the built-in demo app).
    pub app: Option<String>,
    /// Virtualenv directory.
    pub venv: Option<PathBuf>,
    /// Working directory.
    pub chdir: Option<PathBuf>,
    /// Extra `sys.path` entries.
    pub pythonpath: Vec<PathBuf>,
    /// Largest request body accepted (bytes).
    pub max_body_size: Option<u64>,
    /// Directory that relative file app specs are resolved against.
    pub base_dir: Option<PathBuf>,
    /// Warm mode.
    pub warm: WarmSettings,
}

/// Values from one source; `None` leaves the setting to the next source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// See [`SETTINGS`].
    pub app: Option<String>,
    /// See [`SETTINGS`].
    pub venv: Option<PathBuf>,
    /// See [`SETTINGS`].
    pub chdir: Option<PathBuf>,
    /// See [`SETTINGS`].
    pub pythonpath: Option<Vec<PathBuf>>,
    /// See [`SETTINGS`].
    #[serde(rename = "max-body-size")]
    pub max_body_size: Option<u64>,
    /// See [`SETTINGS`].
    pub warm: Option<bool>,
    /// See [`SETTINGS`].
    #[serde(rename = "warm-dir")]
    pub warm_dir: Option<PathBuf>,
    /// See [`SETTINGS`].
    #[serde(rename = "warm-threads")]
    pub warm_threads: Option<u32>,
    /// See [`SETTINGS`].
    #[serde(rename = "warm-idle")]
    pub warm_idle: Option<u64>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The script file could not be read.
    #[error("cannot read script file {path}: {source}")]
    ReadScript {
        /// The script file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The script file is not valid TOML of the expected shape.
    #[error("invalid script file {path}: {message}")]
    ParseScript {
        /// The script file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
}

impl Layer {
    /// The environment layer, read through `get`.
    pub fn from_env(get: impl Fn(&str) -> Option<OsString>) -> Layer {
        let path = |name: &str| get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let number = |name: &str| -> Option<u64> { get(name)?.to_str()?.trim().parse().ok() };
        Layer {
            app: get("WSGI_APP")
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().into_owned()),
            venv: path("WSGI_VENV"),
            chdir: path("WSGI_CHDIR"),
            pythonpath: get("WSGI_PYTHONPATH").filter(|v| !v.is_empty()).map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            }),
            // (Not a number: ignored, as an unset variable.)
            max_body_size: number("WSGI_MAX_BODY_SIZE"),
            warm: get("WSGI_WARM").and_then(|v| match v.to_str()?.trim() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => None,
            }),
            warm_dir: path("WSGI_WARM_DIR"),
            warm_threads: number("WSGI_WARM_THREADS").and_then(|n| u32::try_from(n).ok()),
            warm_idle: number("WSGI_WARM_IDLE"),
        }
    }

    /// A script file (`#!/path/to/wsgi-cgi` then TOML). Relative paths in it
    /// are relative to the file's directory.
    pub fn from_script(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadScript {
            path: path.to_path_buf(),
            source,
        })?;
        let mut layer: Layer = toml::from_str(&text).map_err(|e| ConfigError::ParseScript {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: PathBuf| if p.is_relative() { dir.join(p) } else { p };
        layer.venv = layer.venv.map(rebase);
        layer.chdir = layer.chdir.map(rebase);
        layer.warm_dir = layer.warm_dir.map(rebase);
        layer.pythonpath = layer
            .pythonpath
            .map(|paths| paths.into_iter().map(rebase).collect());
        Ok(layer)
    }

    fn or(self, other: Layer) -> Layer {
        Layer {
            app: self.app.or(other.app),
            venv: self.venv.or(other.venv),
            chdir: self.chdir.or(other.chdir),
            pythonpath: self.pythonpath.or(other.pythonpath),
            max_body_size: self.max_body_size.or(other.max_body_size),
            warm: self.warm.or(other.warm),
            warm_dir: self.warm_dir.or(other.warm_dir),
            warm_threads: self.warm_threads.or(other.warm_threads),
            warm_idle: self.warm_idle.or(other.warm_idle),
        }
    }
}

/// Merge the layers, highest precedence first: command line, script, environment.
pub fn merge(cli: Layer, script: Option<(Layer, PathBuf)>, env: Layer) -> Settings {
    let script_dir = script
        .as_ref()
        .and_then(|(_, path)| path.parent().map(Path::to_path_buf));
    let script_app = script.as_ref().and_then(|(layer, _)| layer.app.clone());
    let cli_has_app = cli.app.is_some();
    let merged = cli.or(script.map(|(l, _)| l).unwrap_or_default()).or(env);
    // A relative file spec from the script file is relative to the script.
    let base_dir = if !cli_has_app && script_app.is_some() {
        script_dir
    } else {
        None
    };
    Settings {
        app: merged.app,
        venv: merged.venv,
        chdir: merged.chdir,
        pythonpath: merged.pythonpath.unwrap_or_default(),
        max_body_size: merged.max_body_size,
        base_dir,
        warm: WarmSettings {
            enabled: merged.warm.unwrap_or(false),
            dir: merged.warm_dir,
            threads: merged.warm_threads,
            idle: merged.warm_idle,
        },
    }
}

/// Apache's transformation of one query word into an argv word
/// (`create_argv` in mod_cgi/mod_cgid): `%XX` decoded (a NUL ends the word),
/// then shell metacharacters escaped with a backslash (`ap_escape_shell_cmd`).
pub fn apache_query_word(word: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut decoded = Vec::with_capacity(word.len());
    let mut i = 0;
    while i < word.len() {
        if word[i] == b'%'
            && i + 2 < word.len()
            && let (Some(h), Some(l)) = (hex(word[i + 1]), hex(word[i + 2]))
        {
            decoded.push(h * 16 + l);
            i += 3;
            continue;
        }
        decoded.push(word[i]);
        i += 1;
    }
    if let Some(nul) = decoded.iter().position(|&b| b == 0) {
        decoded.truncate(nul);
    }
    let mut escaped = Vec::with_capacity(decoded.len());
    for b in decoded {
        if b"&;`'\"|*?~<>^()[]{}$\\\n".contains(&b) {
            escaped.push(b'\\');
        }
        escaped.push(b);
    }
    escaped
}

/// What the CGI environment says about argv (RFC 3875 §4.4).
pub struct CgiArgv<'a> {
    /// `GATEWAY_INTERFACE`: set when running as a CGI program.
    pub gateway_interface: Option<&'a OsStr>,
    /// `QUERY_STRING`.
    pub query_string: Option<&'a OsStr>,
    /// `SCRIPT_FILENAME`.
    pub script_filename: Option<&'a OsStr>,
}

/// Remove the argv words a web server made from an `=`-less query string
/// (RFC 3875 §4.4: Apache mod_cgi/mod_cgid do it, lighttpd and fcgiwrap do
/// not). Those words are request data and must never become flags:
///
/// - script mode (an argument is `SCRIPT_FILENAME`, and that is not this
///   binary): everything after the script is dropped;
/// - otherwise trailing arguments equal to Apache's rendering of the query
///   words are dropped;
/// - arguments that could be query words but do not match are ambiguous:
///   `Err`, and the caller refuses the request (fail closed).
///
/// `same_file(a, b)` compares two paths (dev/inode in production).
pub fn strip_query_words(
    mut args: Vec<OsString>,
    cgi: &CgiArgv<'_>,
    same_file: impl Fn(&OsStr, &OsStr) -> bool,
) -> Result<Vec<OsString>, String> {
    let (Some(_), Some(query)) = (cgi.gateway_interface, cgi.query_string) else {
        return Ok(args);
    };
    let query = query.as_encoded_bytes();
    if query.is_empty() || query.contains(&b'=') {
        return Ok(args);
    }
    if let Some(script) = cgi.script_filename.filter(|s| !s.is_empty()) {
        let own = args.first().is_some_and(|exe| same_file(exe, script));
        if !own && let Some(i) = args.iter().skip(1).position(|a| same_file(a, script)) {
            args.truncate(i + 2);
            return Ok(args);
        }
    }
    let words: Vec<Vec<u8>> = query.split(|&b| b == b'+').map(apache_query_word).collect();
    let n = words.len();
    if args.len() > n {
        let tail = &args[args.len() - n..];
        if tail
            .iter()
            .zip(&words)
            .all(|(a, w)| a.as_encoded_bytes() == w.as_slice())
        {
            args.truncate(args.len() - n);
            return Ok(args);
        }
    }
    if args.len() > 1 {
        return Err(format!(
            "command-line arguments {:?} may be words of the query string (RFC 3875 section 4.4) but do not match it; refusing to parse them",
            &args[1..]
        ));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn strip(
        args: &[&str],
        query: Option<&str>,
        script: Option<&str>,
    ) -> Result<Vec<OsString>, String> {
        let cgi = CgiArgv {
            gateway_interface: Some(OsStr::new("CGI/1.1")),
            query_string: query.map(OsStr::new),
            script_filename: script.map(OsStr::new),
        };
        strip_query_words(os(args), &cgi, |a, b| a == b)
    }

    #[test]
    fn apache_words_are_stripped() {
        // Apache ScriptAlias to the binary: argv = [binary, words...]
        let got = strip(
            &["/bin/wsgi-cgi", "--venv", "/tmp/evil"],
            Some("--venv+/tmp/evil"),
            Some("/bin/wsgi-cgi"),
        );
        assert_eq!(got.unwrap(), os(&["/bin/wsgi-cgi"]));
        let got = strip(
            &["/bin/wsgi-cgi", "a\\$b", "c d"],
            Some("a$b+c%20d"),
            Some("/bin/wsgi-cgi"),
        );
        assert_eq!(got.unwrap(), os(&["/bin/wsgi-cgi"]));
        // Apache script mode: argv = [binary, script, words...]
        let got = strip(
            &["/bin/wsgi-cgi", "/cgi/app.cgi", "x"],
            Some("x"),
            Some("/cgi/app.cgi"),
        );
        assert_eq!(got.unwrap(), os(&["/bin/wsgi-cgi", "/cgi/app.cgi"]));
    }

    #[test]
    fn servers_without_words_keep_their_arguments() {
        // lighttpd / fcgiwrap script mode: no words added
        let got = strip(
            &["/bin/wsgi-cgi", "/cgi/app.cgi"],
            Some("x"),
            Some("/cgi/app.cgi"),
        );
        assert_eq!(got.unwrap(), os(&["/bin/wsgi-cgi", "/cgi/app.cgi"]));
        let got = strip(
            &["/bin/wsgi-cgi", "/cgi/app.cgi"],
            Some("--venv+/x"),
            Some("/cgi/app.cgi"),
        );
        assert_eq!(got.unwrap(), os(&["/bin/wsgi-cgi", "/cgi/app.cgi"]));
        let got = strip(&["/bin/wsgi-cgi"], Some("a+b+c"), Some("/bin/wsgi-cgi"));
        assert_eq!(got.unwrap(), os(&["/bin/wsgi-cgi"]));
        // '=' in the query, no query, or not CGI: nothing to do
        assert_eq!(
            strip(&["w", "--app", "x:y"], Some("a=b"), None).unwrap(),
            os(&["w", "--app", "x:y"])
        );
        assert_eq!(
            strip(&["w", "--app", "x:y"], None, None).unwrap(),
            os(&["w", "--app", "x:y"])
        );
        let not_cgi = CgiArgv {
            gateway_interface: None,
            query_string: Some(OsStr::new("z")),
            script_filename: None,
        };
        assert_eq!(
            strip_query_words(os(&["w", "--app", "x:y"]), &not_cgi, |a, b| a == b)
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn ambiguous_arguments_fail_closed() {
        assert!(
            strip(
                &["/bin/wsgi-cgi", "--venv", "/tmp/evil"],
                Some("--venv+%2Ftmp%2Fother"),
                None
            )
            .is_err()
        );
        assert!(strip(&["/bin/wsgi-cgi", "--app", "x:y"], Some("q"), None).is_err());
    }

    #[test]
    fn apache_word_rendering() {
        assert_eq!(apache_query_word(b"caf%C3%A9"), b"caf\xc3\xa9".to_vec());
        assert_eq!(apache_query_word(b"a;b"), b"a\\;b".to_vec());
        assert_eq!(apache_query_word(b"%zz%4"), b"%zz%4".to_vec());
        assert_eq!(apache_query_word(b"ab%00cd"), b"ab".to_vec());
    }

    #[test]
    fn precedence_cli_then_script_then_env() {
        let cli = Layer {
            venv: Some("/cli".into()),
            ..Layer::default()
        };
        let script = Layer {
            venv: Some("/script".into()),
            app: Some("app.py".into()),
            ..Layer::default()
        };
        let env = Layer {
            app: Some("env:app".into()),
            chdir: Some("/env".into()),
            ..Layer::default()
        };
        let s = merge(cli, Some((script, "/site/cgi-bin/app.cgi".into())), env);
        assert_eq!(s.venv, Some("/cli".into()));
        assert_eq!(s.app.as_deref(), Some("app.py"));
        assert_eq!(s.chdir, Some("/env".into()));
        assert_eq!(s.base_dir, Some("/site/cgi-bin".into()));
    }

    #[test]
    fn env_layer_splits_pythonpath() {
        let layer = Layer::from_env(|name| match name {
            "WSGI_PYTHONPATH" => Some("/a:/b".into()),
            "WSGI_APP" => Some("".into()),
            _ => None,
        });
        assert_eq!(layer.pythonpath, Some(vec!["/a".into(), "/b".into()]));
        assert_eq!(layer.app, None);
    }

    #[test]
    fn script_file_with_shebang_parses_and_rebases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.cgi");
        std::fs::write(
            &path,
            "#!/usr/local/bin/wsgi-cgi\napp = \"hello.py\"\nvenv = \"../venv\"\npythonpath = [\"lib\", \"/abs\"]\n",
        )
        .unwrap();
        let layer = Layer::from_script(&path).unwrap();
        assert_eq!(layer.venv, Some(dir.path().join("../venv")));
        assert_eq!(
            layer.pythonpath,
            Some(vec![dir.path().join("lib"), "/abs".into()])
        );
        std::fs::write(&path, "apps = 1\n").unwrap();
        assert!(matches!(
            Layer::from_script(&path),
            Err(ConfigError::ParseScript { .. })
        ));
    }
}
