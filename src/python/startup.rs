//! Start-up, the same for both binaries: choose the app `--app` names,
//! change directory, start the interpreter in the right virtualenv, then
//! (with the GIL) put `--pythonpath` and the working directory on
//! `sys.path` and import the app — logging a failure with its traceback.
//! `wsgi-cgi` runs it once per request with the lean `site` and the cyclic
//! GC paused for the import; a `wsgi-fcgi` worker once per process.

use std::path::{Path, PathBuf};

use clap::Args;
use pyo3::prelude::*;

use super::appspec::{self, AppSpec};
use super::{interpreter, load, site};
use crate::log_error;

/// The options both binaries share, defined once (flattened into each
/// one's flag table).
#[derive(Args, Clone, Debug, Default)]
pub struct AppArgs {
    /// The app: module:callable, module:factory(), or path/to/app.py|app.wsgi (`demo`: the built-in demo app, the default when no web server started us)
    #[arg(long, value_name = "SPEC")]
    pub app: Option<String>,
    /// A virtualenv; its Python version must match the linked libpython
    #[arg(long, value_name = "DIR")]
    pub venv: Option<PathBuf>,
    /// Change to DIR before loading the app (it is put on sys.path)
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// Put DIR in front of sys.path (repeatable)
    #[arg(long, value_name = "DIR")]
    pub pythonpath: Vec<PathBuf>,
}

/// What both binaries' options say about the app and its interpreter.
pub struct Startup<'a> {
    /// `--app` (`None`: the built-in demo, when allowed).
    pub app: Option<&'a str>,
    /// `--venv`.
    pub venv: Option<&'a Path>,
    /// `--chdir`.
    pub chdir: Option<&'a Path>,
    /// `--pythonpath`, in order.
    pub pythonpath: &'a [PathBuf],
    /// The lean `site` of [`site`] instead of CPython's, and no cyclic GC
    /// during the import: `wsgi-cgi`'s one request per process, and
    /// `wsgi-fcgi --lean-site` (warm mode's responders: the same `sys.path`
    /// as the cold path, and a faster start).
    pub lean: bool,
}

impl Startup<'_> {
    /// Choose the app (a relative file is found from `base`; `by_server`:
    /// a web server started us, so no demo app), change directory, start
    /// the interpreter. The error is the message to log.
    pub fn interpreter(&self, base: &Path, by_server: bool) -> Result<Option<AppSpec>, String> {
        let spec = appspec::choose(self.app, base, by_server)?;
        if let Some(dir) = self.chdir {
            std::env::set_current_dir(dir)
                .map_err(|e| format!("cannot chdir to {}: {e}", dir.display()))?;
        }
        let program_name = match self.venv {
            Some(venv) => interpreter::venv_program_name(venv).map_err(|e| e.to_string())?,
            None => interpreter::BUILD_PYTHON.into(),
        };
        // (It also refuses an unreachable interpreter and a wrong libpython.)
        interpreter::initialize(&program_name, self.lean).map_err(|e| e.to_string())?;
        Ok(spec)
    }

    /// Import the app: `sys.path` first (`--pythonpath`, then the working
    /// directory), then `spec`. A failure is logged, traceback and all.
    pub fn import<'py>(
        &self,
        py: Python<'py>,
        spec: Option<&AppSpec>,
    ) -> Option<Bound<'py, PyAny>> {
        let mut path = self.pythonpath.to_vec();
        if let Ok(cwd) = std::env::current_dir() {
            path.push(cwd);
        }
        let site = || match self.lean {
            true => site::install(py, self.venv),
            false => Ok(()),
        };
        let load = || match self.lean {
            true => without_gc(py, || load::load(py, spec)),
            false => load::load(py, spec),
        };
        let loaded = site()
            .and_then(|()| interpreter::prepend_sys_path(py, &path))
            .and_then(|()| load());
        match loaded {
            Ok(app) => Some(app),
            Err(err) => {
                let name = self.app.unwrap_or("<demo>");
                log_error!("failed to load the application {name}; traceback follows");
                err.display(py);
                None
            }
        }
    }
}

/// Run `f` with the cyclic garbage collector paused: importing a framework
/// triggers dozens of collections that find nothing worth freeing in a
/// process that lives for one request (Flask: ~10 ms of ~100 ms).
fn without_gc<'py, T>(py: Python<'py>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    let gc = py.import("gc")?;
    let was_enabled = gc.call_method0("isenabled")?.is_truthy()?;
    gc.call_method0("disable")?;
    let result = f();
    if was_enabled {
        gc.call_method0("enable")?;
    }
    result
}
