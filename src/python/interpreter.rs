//! The interpreter: PEP 587 `PyConfig` initialization with `program_name` set
//! explicitly (the build-time interpreter, or `<venv>/bin/python`, never a
//! `PATH` lookup — research/deps.md §1.2, §1.4), the venv version preflight,
//! `sys.path` set-up, and the exit without `Py_FinalizeEx` (flush, `atexit`).

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pyo3::ffi;
use pyo3::prelude::*;

/// The interpreter this binary was built against (baked in by build.rs).
pub const BUILD_PYTHON: &str = env!("WSGI_GATEWAY_BUILD_PYTHON");
/// Its full version string (`sys.version`; empty if build.rs could not run it).
pub const BUILD_PYTHON_FULL: &str = env!("WSGI_GATEWAY_BUILD_PYTHON_FULL");

/// Why the interpreter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    /// The venv directory has no `pyvenv.cfg`.
    #[error("{0} is not a virtualenv (no pyvenv.cfg in it)")]
    NotAVenv(PathBuf),
    /// The venv was made by another Python version than the linked libpython.
    #[error(
        "virtualenv {venv} was created with Python {venv_version}, but this wsgi-gateway is linked against libpython {linked}; recreate the venv with Python {linked} ({build}) or rebuild wsgi-gateway with PYO3_PYTHON pointing at Python {venv_version}"
    )]
    VersionMismatch {
        /// The venv directory.
        venv: PathBuf,
        /// Version from `pyvenv.cfg`.
        venv_version: String,
        /// `major.minor` of the linked libpython.
        linked: String,
        /// The build-time interpreter.
        build: &'static str,
    },
    /// `Py_InitializeFromConfig` failed.
    #[error("Python initialization failed: {0}")]
    Init(String),
    /// The interpreter (`program_name`) cannot be reached.
    #[error(
        "cannot access the Python interpreter {path}: {reason} (this user needs search permission on every directory above it; otherwise the loader may take another libpython of the same soname)"
    )]
    Unreachable {
        /// `program_name`.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// Another libpython than the build's was loaded.
    #[error(
        "the libpython loaded ({loaded}, Python {loaded_version}) is not the one wsgi-gateway was built against (Python {build_version}, {build}): the build's library cannot be reached by this user (search permission on every directory above it), or was replaced; refusing to run on the wrong Python"
    )]
    WrongLibpython {
        /// Where the loaded library is.
        loaded: String,
        /// Its `Py_GetVersion()`.
        loaded_version: String,
        /// The build-time `sys.version`.
        build_version: &'static str,
        /// The build-time interpreter.
        build: &'static str,
    },
}

/// The libpython this process loaded, if it is not the build's: (its file,
/// its full version).
fn wrong_libpython() -> Option<(String, String)> {
    // SAFETY: Py_GetVersion returns a pointer to a static NUL-terminated
    // string and may be called before initialization.
    let loaded = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }
        .to_string_lossy()
        .into_owned();
    // (Compared with runs of white space as one space: `sys.version` holds a
    // newline before the compiler on some builds, which build.rs flattens.)
    let flat = |v: &str| v.split_whitespace().collect::<Vec<_>>().join(" ");
    if BUILD_PYTHON_FULL.is_empty() || flat(&loaded) == flat(BUILD_PYTHON_FULL) {
        return None;
    }
    // SAFETY: dladdr only reads the loader's tables; `info` is written by
    // it and read only when it succeeded; dli_fname is a NUL-terminated
    // string owned by the loader.
    let file = unsafe {
        let mut info = std::mem::zeroed::<nix::libc::Dl_info>();
        let addr = ffi::Py_GetVersion as *const std::ffi::c_void;
        if nix::libc::dladdr(addr, &mut info) != 0 && !info.dli_fname.is_null() {
            CStr::from_ptr(info.dli_fname)
                .to_string_lossy()
                .into_owned()
        } else {
            "an unknown file".into()
        }
    };
    Some((file, loaded))
}

/// `major.minor` of the libpython actually loaded (not the build-time guess).
pub fn linked_version() -> String {
    // SAFETY: Py_GetVersion returns a pointer to a static NUL-terminated
    // string and may be called before initialization.
    let full = unsafe { CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    major_minor(&full).unwrap_or_default()
}

fn major_minor(version: &str) -> Option<String> {
    let mut parts = version.split(|c: char| c == '.' || c.is_whitespace());
    let major = parts.next()?.trim();
    let minor = parts.next()?.trim();
    (!major.is_empty() && !minor.is_empty()).then(|| format!("{major}.{minor}"))
}

/// The Python version a `pyvenv.cfg` records (`version` or `version_info`).
pub fn pyvenv_version(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        matches!(key.trim(), "version" | "version_info")
            .then(|| major_minor(value.trim()))
            .flatten()
    })
}

/// Check a venv against the linked libpython; returns the `program_name` to use.
pub fn venv_program_name(venv: &Path) -> Result<PathBuf, PythonError> {
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg"))
        .map_err(|_| PythonError::NotAVenv(venv.to_path_buf()))?;
    let linked = linked_version();
    if let Some(venv_version) = pyvenv_version(&cfg)
        && venv_version != linked
    {
        return Err(PythonError::VersionMismatch {
            venv: venv.to_path_buf(),
            venv_version,
            linked,
            build: BUILD_PYTHON,
        });
    }
    Ok(venv.join("bin").join("python"))
}

/// Initialize CPython with `program_name` and release the GIL (pyo3 expects
/// an initialized interpreter with no thread attached). With `lean_site`,
/// `site` is not imported: the caller runs [`crate::python::site::install`] instead.
pub fn initialize(program_name: &Path, lean_site: bool) -> Result<(), PythonError> {
    std::fs::metadata(program_name).map_err(|reason| PythonError::Unreachable {
        path: program_name.to_path_buf(),
        reason,
    })?;
    if let Some((loaded, loaded_version)) = wrong_libpython() {
        return Err(PythonError::WrongLibpython {
            loaded,
            loaded_version,
            build_version: BUILD_PYTHON_FULL,
            build: BUILD_PYTHON,
        });
    }
    let name = CString::new(program_name.as_os_str().as_bytes())
        .map_err(|_| PythonError::Init("program name contains NUL".into()))?;
    // SAFETY: PyConfig is a plain C struct that PyConfig_InitPythonConfig
    // fully initializes; fields are written through a raw pointer so that the
    // config and its program_name field are never borrowed mutably twice;
    // PyConfig_Clear frees what SetBytesString allocated; nothing else runs
    // Python concurrently (we are before initialization, single-threaded).
    unsafe {
        let mut storage = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        let config = storage.as_mut_ptr();
        ffi::PyConfig_InitPythonConfig(config);
        (*config).install_signal_handlers = 0;
        (*config).parse_argv = 0;
        if lean_site {
            (*config).site_import = 0;
        }
        let status =
            ffi::PyConfig_SetBytesString(config, &raw mut (*config).program_name, name.as_ptr());
        if ffi::PyStatus_Exception(status) != 0 {
            ffi::PyConfig_Clear(config);
            return Err(PythonError::Init(status_message(&status)));
        }
        let status = ffi::Py_InitializeFromConfig(config);
        ffi::PyConfig_Clear(config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(PythonError::Init(status_message(&status)));
        }
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

fn status_message(status: &ffi::PyStatus) -> String {
    if status.err_msg.is_null() {
        return "unknown error".into();
    }
    // SAFETY: err_msg is a static C string set by CPython.
    unsafe { CStr::from_ptr(status.err_msg) }
        .to_string_lossy()
        .into_owned()
}

/// Put `dirs` in front of `sys.path`, in order, without duplicates.
pub fn prepend_sys_path(py: Python<'_>, dirs: &[PathBuf]) -> PyResult<()> {
    let path = py.import("sys")?.getattr("path")?;
    for dir in dirs.iter().rev() {
        let text = dir.to_string_lossy();
        while path.call_method1("__contains__", (&*text,))?.is_truthy()? {
            path.call_method1("remove", (&*text,))?;
        }
        path.call_method1("insert", (0, &*text))?;
    }
    Ok(())
}

/// The signal on which a `wsgi-fcgi` worker writes the Python stacks of
/// all its threads to the log (faulthandler: without the GIL, so also when
/// a thread holds it in C code).
pub const STACKS_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;

/// Register faulthandler for [`STACKS_SIGNAL`], writing to fd 2 (the log).
pub fn dump_stacks_on_signal(py: Python<'_>) -> PyResult<()> {
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("file", 2)?;
    kwargs.set_item("all_threads", true)?;
    kwargs.set_item("chain", false)?;
    py.import("faulthandler")?
        .call_method("register", (STACKS_SIGNAL as i32,), Some(&kwargs))?;
    Ok(())
}

/// Run `f` with the GIL if it can be had within `wait`: on a helper thread
/// named `name`, so that a GIL held for good (a thread stuck in C code) does
/// not hold the caller too. `None`: not in time (the helper stays blocked
/// until the GIL frees up, then runs `f` and ends).
pub fn attach_within<T: Send + 'static>(
    name: &str,
    wait: std::time::Duration,
    f: impl FnOnce(Python<'_>) -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(Python::attach(f));
        })
        .ok()?;
    rx.recv_timeout(wait).ok()
}

/// What `Py_FinalizeEx` would have done that matters: run `atexit` handlers
/// and flush Python's standard streams. Finalization itself is skipped
/// (it costs milliseconds per CGI request and some extensions crash in it).
pub fn run_exit_hooks(py: Python<'_>) {
    if let Ok(atexit) = py.import("atexit")
        && let Err(err) = atexit.call_method0("_run_exitfuncs")
    {
        err.display(py);
    }
    if let Ok(sys) = py.import("sys") {
        for stream in ["stdout", "stderr"] {
            if let Ok(s) = sys.getattr(stream) {
                let _ = s.call_method0("flush");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyvenv_versions() {
        assert_eq!(
            pyvenv_version("home = /x\nversion = 3.11.7\n").as_deref(),
            Some("3.11")
        );
        assert_eq!(
            pyvenv_version("version_info = 3.12.1.final.0\n").as_deref(),
            Some("3.12")
        );
        assert_eq!(pyvenv_version("home = /x\n"), None);
        assert_eq!(
            major_minor("3.11.7 (main, Jan 1 2024)").as_deref(),
            Some("3.11")
        );
    }
}
