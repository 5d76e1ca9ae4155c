//! A lean `site` for one-shot CGI processes. The interpreter starts with
//! `site_import = 0` and this module does what `site.main()` does that
//! serving needs, without importing `os` and friends (1.6 ms of a 7 ms
//! hello-world request, tests/bench/cgi.sh):
//!
//! - in a virtualenv, `sys.prefix`/`sys.exec_prefix` become the venv
//!   (`site.venv()`), and the base installation's site-packages and the user
//!   site are used only with `include-system-site-packages = true`;
//! - site-packages directories are appended to `sys.path` in `site`'s order
//!   (user site, then each prefix), `.pth` files in each are processed in
//!   sorted order, hidden ones skipped: path lines are added when they exist,
//!   `import` lines are executed (editable installs depend on both);
//! - `sitecustomize` and `usercustomize` are imported when present.
//!
//! Left out: the interactive helpers (`exit`, `quit`, `help`, `copyright`)
//! and `site`'s `__file__` absolutization.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::log_error;

/// What one line of a `.pth` file asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PthLine {
    /// A directory to put on `sys.path` (already joined to the site dir).
    Path(PathBuf),
    /// Python code to execute (`import ...` lines).
    Exec(String),
}

/// Parse a `.pth` file's text as `site.addpackage` does.
pub fn parse_pth(site_dir: &Path, text: &str) -> Vec<PthLine> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            if line.starts_with("import ") || line.starts_with("import\t") {
                PthLine::Exec(line.to_string())
            } else {
                PthLine::Path(site_dir.join(line.trim_end()))
            }
        })
        .collect()
}

/// `include-system-site-packages` from a `pyvenv.cfg`.
pub fn includes_system_site(pyvenv_cfg: &str) -> bool {
    pyvenv_cfg.lines().any(|line| {
        line.split_once('=').is_some_and(|(k, v)| {
            k.trim() == "include-system-site-packages" && v.trim().eq_ignore_ascii_case("true")
        })
    })
}

/// The site-packages directories of `prefix` (`lib` and `sys.platlibdir`).
pub fn prefix_site_dirs(prefix: &Path, platlibdir: &str, version: &str) -> Vec<PathBuf> {
    let mut dirs = vec![
        prefix
            .join(platlibdir)
            .join(format!("python{version}"))
            .join("site-packages"),
    ];
    if platlibdir != "lib" {
        dirs.push(
            prefix
                .join("lib")
                .join(format!("python{version}"))
                .join("site-packages"),
        );
    }
    dirs
}

/// Set up `sys.prefix` and `sys.path` like `site.main()`; `venv` is the
/// virtualenv the interpreter was started for, if any.
pub fn install(py: Python<'_>, venv: Option<&Path>) -> PyResult<()> {
    let sys = py.import("sys")?;
    let version_info = sys.getattr("version_info")?;
    let major: u8 = version_info.get_item(0)?.extract()?;
    let minor: u8 = version_info.get_item(1)?.extract()?;
    let version = format!("{major}.{minor}");
    let platlibdir: String = sys.getattr("platlibdir")?.extract()?;
    let base_prefix: PathBuf = sys.getattr("base_prefix")?.extract()?;

    let mut prefixes = Vec::new();
    let mut system = true;
    if let Some(venv) = venv {
        let venv = std::path::absolute(venv).unwrap_or_else(|_| venv.to_path_buf());
        let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap_or_default();
        system = includes_system_site(&cfg);
        let text = venv.to_string_lossy();
        sys.setattr("prefix", &*text)?;
        sys.setattr("exec_prefix", &*text)?;
        prefixes.push(venv);
    }
    if system {
        prefixes.push(base_prefix);
    }

    let user_site = if system {
        user_site_dir(py, &version)?
    } else {
        None
    };
    let mut dirs: Vec<PathBuf> = user_site.iter().cloned().collect();
    for prefix in &prefixes {
        dirs.extend(prefix_site_dirs(prefix, &platlibdir, &version));
    }
    let path = sys.getattr("path")?;
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        add_site_dir(py, &path, dir)?;
    }
    import_optional(py, "sitecustomize");
    if user_site.is_some() {
        import_optional(py, "usercustomize");
    }
    Ok(())
}

/// `~/.local/lib/pythonX.Y/site-packages` (or under `PYTHONUSERBASE`) when
/// user site-packages are enabled and the directory exists.
fn user_site_dir(py: Python<'_>, version: &str) -> PyResult<Option<PathBuf>> {
    let flags = py.import("sys")?.getattr("flags")?;
    if flags.getattr("no_user_site")?.extract::<i32>()? != 0 {
        return Ok(None);
    }
    if nix::unistd::getuid() != nix::unistd::geteuid()
        || nix::unistd::getgid() != nix::unistd::getegid()
    {
        return Ok(None);
    }
    let base = match std::env::var_os("PYTHONUSERBASE").filter(|v| !v.is_empty()) {
        Some(base) => PathBuf::from(base),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local"),
            None => return Ok(None),
        },
    };
    let dir = base
        .join("lib")
        .join(format!("python{version}"))
        .join("site-packages");
    Ok(dir.is_dir().then_some(dir))
}

/// `sys.path` holds `str` entries (importlib skips anything else).
fn contains(path: &Bound<'_, PyAny>, dir: &Path) -> PyResult<bool> {
    path.call_method1("__contains__", (dir.to_string_lossy(),))?
        .is_truthy()
}

fn append(path: &Bound<'_, PyAny>, dir: &Path) -> PyResult<()> {
    path.call_method1("append", (dir.to_string_lossy(),))
        .map(drop)
}

fn add_site_dir(py: Python<'_>, path: &Bound<'_, PyAny>, dir: &Path) -> PyResult<()> {
    if !contains(path, dir)? {
        append(path, dir)?;
    }
    let mut pth_files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "pth")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(_) => return Ok(()),
    };
    pth_files.sort();
    for file in pth_files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (number, line) in parse_pth(dir, &text).into_iter().enumerate() {
            match line {
                PthLine::Path(entry) => {
                    if entry.exists() && !contains(path, &entry)? {
                        append(path, &entry)?;
                    }
                }
                PthLine::Exec(code) => {
                    if let Err(err) = exec_line(py, &code) {
                        log_error!(
                            "error processing line {} of {}; remainder of file ignored",
                            number + 1,
                            file.display()
                        );
                        err.display(py);
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

fn exec_line(py: Python<'_>, code: &str) -> PyResult<()> {
    let globals = PyDict::new(py);
    globals.set_item("__builtins__", py.import("builtins")?)?;
    globals.set_item("sys", py.import("sys")?)?;
    py.import("builtins")?
        .getattr("exec")?
        .call1((code, &globals))?;
    Ok(())
}

/// `import name`, ignoring only the module's own absence (as `site` does).
fn import_optional(py: Python<'_>, name: &str) {
    if let Err(err) = py.import(name) {
        let missing = err.is_instance_of::<pyo3::exceptions::PyModuleNotFoundError>(py)
            && err
                .value(py)
                .getattr("name")
                .and_then(|n| n.extract::<String>())
                .is_ok_and(|n| n == name);
        if !missing {
            log_error!("error in {name}; traceback follows");
            err.display(py);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pth_lines() {
        let dir = Path::new("/site");
        let text = "# comment\n../src\n\nimport foo; foo.install()\nimport\tbar\nrel/dir  \n";
        assert_eq!(
            parse_pth(dir, text),
            vec![
                PthLine::Path("/site/../src".into()),
                PthLine::Exec("import foo; foo.install()".into()),
                PthLine::Exec("import\tbar".into()),
                PthLine::Path("/site/rel/dir".into()),
            ]
        );
    }

    #[test]
    fn system_site_flag_and_dirs() {
        assert!(includes_system_site(
            "home = /x\ninclude-system-site-packages = true\n"
        ));
        assert!(!includes_system_site(
            "include-system-site-packages = false\n"
        ));
        assert!(!includes_system_site("home = /x\n"));
        assert_eq!(
            prefix_site_dirs(Path::new("/p"), "lib64", "3.11"),
            vec![
                PathBuf::from("/p/lib64/python3.11/site-packages"),
                PathBuf::from("/p/lib/python3.11/site-packages")
            ]
        );
    }
}
