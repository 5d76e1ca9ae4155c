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
        doc: "the WSGI application: module:callable, module:factory(), or path/to/app.py|app.wsgi (callable `application`); default: the built-in demo app",
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
];

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
    /// Directory that relative file app specs are resolved against.
    pub base_dir: Option<PathBuf>,
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
        base_dir,
    }
}

/// Remove the argv words a web server made from an `=`-less query string
/// (RFC 3875 §4.4; Apache mod_cgi/mod_cgid do it). Only under CGI
/// (`GATEWAY_INTERFACE` set). The words are counted, not compared, so no
/// decoding difference can let a request-controlled word through.
pub fn strip_query_words(
    mut args: Vec<OsString>,
    gateway_interface: Option<&OsStr>,
    query_string: Option<&OsStr>,
) -> Vec<OsString> {
    let (Some(_), Some(query)) = (gateway_interface, query_string) else {
        return args;
    };
    let query = query.as_encoded_bytes();
    if query.is_empty() || query.contains(&b'=') {
        return args;
    }
    let words = query.split(|&b| b == b'+').count();
    let keep = args.len().saturating_sub(words).max(1.min(args.len()));
    args.truncate(keep);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn query_words_are_stripped_only_under_cgi() {
        let cgi = Some(OsStr::new("CGI/1.1"));
        let rows: &[(&[&str], Option<&str>, Option<&str>, &[&str])] = &[
            (
                &["wsgi-cgi", "--venv", "/tmp/evil"],
                cgi.map(|_| "CGI/1.1"),
                Some("--venv+/tmp/evil"),
                &["wsgi-cgi"],
            ),
            (
                &["wsgi-cgi", "/s/app.cgi", "x"],
                Some("CGI/1.1"),
                Some("x"),
                &["wsgi-cgi", "/s/app.cgi"],
            ),
            (
                &["wsgi-cgi", "/s/app.cgi"],
                Some("CGI/1.1"),
                Some("a=b"),
                &["wsgi-cgi", "/s/app.cgi"],
            ),
            (
                &["wsgi-cgi", "/s/app.cgi"],
                Some("CGI/1.1"),
                Some(""),
                &["wsgi-cgi", "/s/app.cgi"],
            ),
            (
                &["wsgi-cgi", "--app", "x:y"],
                None,
                Some("zzz"),
                &["wsgi-cgi", "--app", "x:y"],
            ),
            (&["wsgi-cgi"], Some("CGI/1.1"), Some("a+b+c"), &["wsgi-cgi"]),
        ];
        for (args, gi, qs, expected) in rows {
            let got = strip_query_words(os(args), gi.map(OsStr::new), qs.map(OsStr::new));
            assert_eq!(got, os(expected), "{args:?} {qs:?}");
        }
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
