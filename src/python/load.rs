//! Load the application callable `--app` names ([`AppSpec`]): a module's
//! attribute, a factory called (with literal arguments, gunicorn's form),
//! a file run as mod_wsgi runs `.wsgi` files, or the built-in demo app —
//! with hints for the usual mistakes (a file that shadows a module, a
//! callable under another name).

use std::ffi::CString;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::python::appspec::{AppSpec, Source};

const DEMO_APP: &str = include_str!("demo_app.py");

/// Load the application callable; `None` loads the built-in demo app.
pub fn load<'py>(py: Python<'py>, spec: Option<&AppSpec>) -> PyResult<Bound<'py, PyAny>> {
    let Some(spec) = spec else {
        let code = CString::new(DEMO_APP)?;
        let module =
            PyModule::from_code(py, &code, c"<wsgi-gateway demo app>", c"wsgi_gateway_demo")?;
        return module.getattr("application");
    };
    let module = match &spec.source {
        Source::Module(name) => py.import(name.as_str())?.into_any(),
        Source::File(path) => {
            let source = std::fs::read(path).map_err(|e| {
                pyo3::exceptions::PyOSError::new_err(format!("cannot read {}: {e}", path.display()))
            })?;
            if let Some(dir) = path.parent() {
                crate::python::interpreter::prepend_sys_path(py, &[dir.to_path_buf()])?;
            }
            let code = CString::new(source).map_err(|_| {
                PyValueError::new_err(format!("{} contains a NUL byte", path.display()))
            })?;
            let file_name = CString::new(path.to_string_lossy().as_bytes())?;
            PyModule::from_code(py, &code, &file_name, c"__wsgi_app__")
                .map_err(|err| hint_shadowing_file(py, path, err))?
                .into_any()
        }
    };
    let mut app = match module.getattr(spec.callable.as_str()) {
        Ok(app) => app,
        Err(err) => return Err(hint_missing_callable(py, &module, spec, err)),
    };
    if spec.factory && spec.args.is_empty() {
        app = app.call0()?;
    } else if spec.factory {
        app = call_with_literals(py, &app, spec)?;
    }
    if !app.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "{} is not callable (got {})",
            spec.callable,
            app.get_type().name()?
        )));
    }
    Ok(app)
}

/// A factory called with the arguments written in the spec, which must be
/// Python literals (as gunicorn takes them: `app(root="/srv", debug=True)`).
fn call_with_literals<'py>(
    py: Python<'py>,
    factory: &Bound<'py, PyAny>,
    spec: &AppSpec,
) -> PyResult<Bound<'py, PyAny>> {
    let code = c"import ast
def call(f, text, name):
    try:
        node = ast.parse('f(' + text + ')', mode='eval').body
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f'the arguments of {name}({text}) must be Python literals (strings, numbers, True/False/None, lists, dicts): {e}') from None
    return f(*args, **kwargs)
";
    let helper = PyModule::from_code(py, code, c"<wsgi-gateway factory>", c"wsgi_gateway_factory")?;
    helper
        .getattr("call")?
        .call1((factory, spec.args.as_str(), spec.callable.as_str()))
}

/// An app file named like the package it imports (`roundup.py` doing
/// `import roundup.cgi`): its directory is on `sys.path`, so Python finds
/// the file instead of the package — say so.
fn hint_shadowing_file(py: Python<'_>, path: &std::path::Path, err: PyErr) -> PyErr {
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return err;
    };
    let message = err.value(py).to_string();
    let shadowed = message.contains(&format!("'{stem}' is not a package"))
        || message.contains(&format!("partially initialized module '{stem}'"));
    if !shadowed {
        return err;
    }
    let hint = pyo3::exceptions::PyImportError::new_err(format!(
        "{message} — the app file {} has the name of the module it imports (`{stem}`): with \
         its directory on sys.path, Python imports the file instead of the package; rename \
         the file (e.g. {stem}_wsgi.py)",
        path.display()
    ));
    hint.set_cause(py, Some(err));
    hint
}

/// The module has no such attribute: say which WSGI-looking callables it
/// has (`--app flaskapp.py` whose callable is `app`: suggest
/// `flaskapp.py:app`).
fn hint_missing_callable(
    py: Python<'_>,
    module: &Bound<'_, PyAny>,
    spec: &AppSpec,
    err: PyErr,
) -> PyErr {
    let named = match &spec.source {
        Source::Module(name) => name.clone(),
        Source::File(path) => path.display().to_string(),
    };
    let found: Vec<String> = ["app", "application", "create_app", "make_app", "wsgi_app"]
        .into_iter()
        .filter(|name| *name != spec.callable)
        .filter(|name| module.getattr(*name).is_ok_and(|attr| attr.is_callable()))
        .map(|name| format!("{named}:{name}"))
        .collect();
    let _ = py;
    if found.is_empty() {
        return err;
    }
    pyo3::exceptions::PyAttributeError::new_err(format!(
        "{named} has no callable `{}` (the default when the spec names none); \
         did you mean {}? (a factory: add `()`)",
        spec.callable,
        found.join(" or ")
    ))
}
