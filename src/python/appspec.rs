//! What `--app` names: `module:callable`, `module:factory()`, a bare module
//! (callable `application`), or a file `path/to/app.py` / `app.wsgi`
//! (optionally `file:callable`), as mod_wsgi's `WSGIScriptAlias` files. A
//! bare `x.wsgi` is a file only when it exists: `myproject.wsgi` is also
//! Django's module name for its WSGI entry point.

use std::path::{Path, PathBuf};

/// Where the application object comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An importable module, e.g. `myproject.wsgi`.
    Module(String),
    /// A Python file executed as a module, e.g. `/srv/app/app.wsgi`.
    File(PathBuf),
}

/// A parsed application spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSpec {
    /// Module or file.
    pub source: Source,
    /// Attribute holding the WSGI callable (or the factory).
    pub callable: String,
    /// `callable(...)` is a factory to call once.
    pub factory: bool,
    /// The factory's arguments, as written between its parentheses
    /// (Python literals, as gunicorn takes them: `app(root="/srv")`).
    pub args: String,
}

/// A spec that cannot name an application.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppSpecError {
    /// The spec is not one of the accepted forms.
    #[error(
        "invalid app spec {0:?}: expected module:callable, module:factory() (arguments: Python literals), or a file path ending in .py or .wsgi"
    )]
    Invalid(String),
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// `dir/x`, `x.py` are files; `x.wsgi` is a file only if it exists, since
/// `myproject.wsgi` is also Django's module name for its WSGI entry point.
fn looks_like_file(s: &str, base: &Path) -> bool {
    s.contains('/') || s.ends_with(".py") || (s.ends_with(".wsgi") && base.join(s).is_file())
}

/// `--app demo`: the built-in demo app, by name (a module called `demo` is
/// `demo:application`).
pub const DEMO: &str = "demo";

/// Which app to serve: `Ok(None)` is the built-in demo app — named
/// (`demo`), or no app at all when no web server started us (`by_server`
/// false: a terminal). Started by a web server with no app configured, the
/// demo (a dump of the request's environment) is refused: `Err` says why,
/// naming suEXEC, which clears the variables (`SetEnv WSGI_APP`,
/// `FcgidInitialEnv WSGI_APP`) such a setup relies on.
pub fn choose(spec: Option<&str>, base: &Path, by_server: bool) -> Result<Option<AppSpec>, String> {
    match spec.map(str::trim) {
        Some(DEMO) => Ok(None),
        Some(text) => AppSpec::parse(text, base)
            .map(Some)
            .map_err(|e| e.to_string()),
        None if by_server => Err("no application configured (--app, WSGI_APP or a script \
             file's `app`), and a web server started this process: not serving the built-in \
             demo app (it shows the request's environment). Under suEXEC (cPanel, Plesk, \
             Virtualmin) variables set with SetEnv or FcgidInitialEnv never arrive: name the \
             app in a script file or a wrapper script instead; `--app demo` serves the demo"
            .to_string()),
        None => Ok(None),
    }
}

impl AppSpec {
    /// Parse a spec. Relative file paths are resolved against `base`.
    pub fn parse(spec: &str, base: &Path) -> Result<AppSpec, AppSpecError> {
        let invalid = || AppSpecError::Invalid(spec.to_string());
        let spec = spec.trim();
        // A factory call first: its arguments may hold anything (`/`, `:`).
        let (head, args) = match spec.split_once('(') {
            Some((head, rest)) if head.contains(':') => match rest.strip_suffix(')') {
                Some(args) => (head, Some(args)),
                None => return Err(invalid()),
            },
            _ => (spec, None),
        };
        let (target, attr) = match head.rsplit_once(':') {
            Some((target, attr)) if !attr.contains('/') => (target, Some(attr)),
            _ => (head, None),
        };
        let (callable, factory) = match (attr, args) {
            (None, _) => ("application".to_string(), false),
            (Some(attr), args) => (attr.to_string(), args.is_some()),
        };
        if !is_identifier(&callable) || target.is_empty() {
            return Err(invalid());
        }
        let source = if looks_like_file(target, base) {
            Source::File(base.join(target))
        } else if target.split('.').all(is_identifier) {
            Source::Module(target.to_string())
        } else {
            return Err(invalid());
        };
        Ok(AppSpec {
            source,
            callable,
            factory,
            args: args.unwrap_or_default().trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_table() {
        let base = Path::new("/base");
        let module = |m: &str, c: &str, f: bool| AppSpec {
            source: Source::Module(m.into()),
            callable: c.into(),
            factory: f,
            args: String::new(),
        };
        let file = |p: &str, c: &str, f: bool| AppSpec {
            source: Source::File(p.into()),
            callable: c.into(),
            factory: f,
            args: String::new(),
        };
        let rows = [
            (
                "myproject.wsgi",
                module("myproject.wsgi", "application", false),
            ),
            ("myproject.wsgi:app", module("myproject.wsgi", "app", false)),
            (
                "pkg.mod:create_app()",
                module("pkg.mod", "create_app", true),
            ),
            ("app.py", file("/base/app.py", "application", false)),
            ("./app.wsgi", file("/base/./app.wsgi", "application", false)),
            (
                "site/app.wsgi",
                file("/base/site/app.wsgi", "application", false),
            ),
            ("site.wsgi", module("site.wsgi", "application", false)),
            ("/srv/app.py:app", file("/srv/app.py", "app", false)),
            ("/srv/app.py:make()", file("/srv/app.py", "make", true)),
        ];
        for (text, expected) in rows {
            assert_eq!(AppSpec::parse(text, base).unwrap(), expected, "{text}");
        }
        // A factory with arguments (gunicorn's form, pypiserver's docs): a
        // `/` in them does not make the spec a file.
        let with_args =
            AppSpec::parse(r#"pypiserver:app(root="/srv/pkgs", port=1)"#, base).unwrap();
        assert_eq!(with_args.source, Source::Module("pypiserver".into()));
        assert_eq!(
            (with_args.callable.as_str(), with_args.factory),
            ("app", true)
        );
        assert_eq!(with_args.args, r#"root="/srv/pkgs", port=1"#);
        for bad in [
            "", ":app", "mod:", "mod:1x", "bad-name", "a..b", "mod:f(x", "mod:(x)",
        ] {
            assert!(AppSpec::parse(bad, base).is_err(), "{bad:?}");
        }
    }
}
