//! The application side of PEP 3333: load the callable (module, factory or
//! file), build the environ `dict`, `start_response` with its `exc_info`
//! rules and the `write()` callable, iterate the result (bytes only, the
//! `wsgi.file_wrapper` fast path) and always call `close()`. Bytes go to a
//! [`ResponseWriter`]; nothing here knows CGI or FastCGI.

use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use pyo3::exceptions::{PyAssertionError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::core::environ::{Environ, Flavor};
use crate::core::response::{ResponseWriter, make_head};
use crate::python::appspec::{AppSpec, Source};
use crate::python::input::{FileWrapper, Input};
use crate::{log_error, log_info};

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

/// Python `str` objects for environ keys and values, reused from request
/// to request: a web server sends the same names (and many of the same
/// values: `GATEWAY_INTERFACE`, `SERVER_PROTOCOL`, `REQUEST_METHOD`…) every
/// time, and a reused `str` costs no allocation, no decoding and — since
/// it caches its hash — no hashing when it goes into the `dict`. A small
/// direct-mapped table: a new string simply replaces what was in its slot.
/// `str` is immutable, so sharing one between requests is invisible to apps.
pub struct StrCache {
    slots: Vec<Option<Cached>>,
}

/// A cache entry: hash, bytes, the `str`.
type Cached = (u64, Box<[u8]>, Py<PyString>);

impl StrCache {
    const SLOTS: usize = 512;
    /// Longer strings are not kept (query strings, cookies: rarely repeated).
    const MAX_LEN: usize = 64;

    /// A cache for a thread that serves many requests.
    pub fn new() -> StrCache {
        StrCache {
            slots: (0..Self::SLOTS).map(|_| None).collect(),
        }
    }

    /// No caching (one request per process: CGI).
    pub fn none() -> StrCache {
        StrCache { slots: Vec::new() }
    }

    /// The latin-1 decoding of `bytes` as a `str`.
    pub fn get<'py>(&mut self, py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
        if self.slots.is_empty() || bytes.len() > Self::MAX_LEN {
            return latin1_str(py, bytes);
        }
        let hash = short_hash(bytes);
        let slot = &mut self.slots[(hash as usize) % Self::SLOTS];
        if let Some((h, cached, string)) = slot
            && *h == hash
            && same(cached, bytes)
        {
            return Ok(string.bind(py).clone());
        }
        let string = latin1_str(py, bytes)?;
        *slot = Some((hash, bytes.into(), string.clone().unbind()));
        Ok(string)
    }
}

impl Default for StrCache {
    fn default() -> Self {
        StrCache::new()
    }
}

/// A hash of a short string, eight bytes at a time (a byte at a time, as
/// FNV does, cost more than the lookup saved). Only for spreading the
/// cache's slots: a hit is confirmed by comparing the bytes.
#[inline]
fn short_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h ^ w).wrapping_mul(K);
        h ^= h >> 29;
    }
    let mut last = [0u8; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(last)).wrapping_mul(K);
    h ^ (h >> 32)
}

/// `a == b` for the short strings of [`StrCache`], compared inline eight
/// bytes at a time (a call to `memcmp` per lookup cost more than the
/// comparison).
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
    for (p, q) in (&mut x).zip(&mut y) {
        if word(p) != word(q) {
            return false;
        }
    }
    x.remainder().iter().zip(y.remainder()).all(|(p, q)| p == q)
}

/// Bytes decoded as latin-1 into a `str` (PEP 3333 native strings).
fn latin1_str<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let len = pyo3::ffi::Py_ssize_t::try_from(bytes.len())
        .map_err(|_| PyValueError::new_err("environ value too long"))?;
    // SAFETY: `bytes` is valid for `len` bytes; latin-1 decoding cannot fail
    // on content; the result is a new reference (or NULL with an exception).
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyUnicode_DecodeLatin1(bytes.as_ptr().cast(), len, std::ptr::null()),
        )
        .map(|s| s.cast_into_unchecked())
    }
}

/// Build the environ `dict` from the plain [`Environ`].
pub fn environ_dict<'py>(
    py: Python<'py>,
    environ: &Environ<'_>,
    flavor: Flavor,
    input: Input,
    errors: Bound<'py, PyAny>,
    strings: &mut StrCache,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = dict_of_size(py, environ.vars.len() + 9)?;
    for (key, value) in &environ.vars {
        dict.set_item(strings.get(py, key)?, strings.get(py, value)?)?;
    }
    dict.set_item(intern!(py, "wsgi.version"), PyTuple::new(py, [1, 0])?)?;
    dict.set_item(
        intern!(py, "wsgi.url_scheme"),
        strings.get(py, environ.url_scheme.as_bytes())?,
    )?;
    dict.set_item(intern!(py, "wsgi.input"), Bound::new(py, input)?)?;
    dict.set_item(intern!(py, "wsgi.errors"), errors)?;
    dict.set_item(intern!(py, "wsgi.multithread"), flavor.multithread)?;
    dict.set_item(intern!(py, "wsgi.multiprocess"), flavor.multiprocess)?;
    dict.set_item(intern!(py, "wsgi.run_once"), flavor.run_once)?;
    dict.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    dict.set_item(
        intern!(py, "wsgi.file_wrapper"),
        py.get_type::<FileWrapper>(),
    )?;
    Ok(dict)
}

/// An empty dict with room for `len` items.
fn dict_of_size(py: Python<'_>, len: usize) -> PyResult<Bound<'_, PyDict>> {
    #[cfg(wsgi_presized_dict)]
    {
        unsafe extern "C" {
            fn _PyDict_NewPresized(minused: pyo3::ffi::Py_ssize_t) -> *mut pyo3::ffi::PyObject;
        }
        let len = pyo3::ffi::Py_ssize_t::try_from(len).unwrap_or(0);
        // SAFETY: called with the GIL held; returns a new reference to a
        // dict, or NULL with an exception set.
        unsafe {
            Bound::from_owned_ptr_or_err(py, _PyDict_NewPresized(len))
                .map(|d| d.cast_into_unchecked())
        }
    }
    #[cfg(not(wsgi_presized_dict))]
    {
        let _ = len;
        Ok(PyDict::new(py))
    }
}

/// `start_response`; its bound `write` method is the `write()` callable.
#[pyclass(module = "wsgi_gateway", name = "StartResponse", frozen)]
pub struct StartResponse {
    writer: Mutex<ResponseWriter>,
    client_gone: AtomicBool,
}

impl StartResponse {
    fn lock(&self) -> std::sync::MutexGuard<'_, ResponseWriter> {
        crate::core::lock(&self.writer)
    }

    fn write_bytes(&self, py: Python<'_>, data: &Bound<'_, PyBytes>, last: bool) -> PyResult<()> {
        let data = shared_bytes(data);
        // A final chunk the sink only holds needs no GIL hand-off. (Taking the
        // writer lock with the GIL held is safe: nobody holding it waits for
        // the GIL.)
        let mut writer = self.lock();
        let last = last || writer.completes(data.len());
        let written = if writer.may_block(last) {
            drop(writer);
            py.detach(|| self.lock().write(data, last))
        } else {
            writer.write(data, last)
        };
        written.map_err(|e| {
            self.client_gone.store(true, Ordering::Relaxed);
            PyErr::from(e)
        })
    }
}

/// A Python `bytes` object as [`Bytes`] without copying: the object is
/// immutable and kept alive by the reference held here, so its buffer can be
/// read from any thread, GIL or not. Small chunks are copied instead (cheaper
/// than a reference that must be released later).
fn shared_bytes(data: &Bound<'_, PyBytes>) -> Bytes {
    struct Owner {
        object: Py<PyBytes>,
        ptr: *const u8,
        len: usize,
    }
    // SAFETY: `ptr`/`len` point into the immutable buffer of `object`, which
    // this struct keeps alive; a bytes object's buffer never moves or
    // changes, so sharing it with another thread is sound. Dropping the
    // `Py` without the GIL defers the decref to pyo3's reference pool.
    unsafe impl Send for Owner {}
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            let _ = &self.object;
            // SAFETY: see the `Send` impl above.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
    let slice = data.as_bytes();
    if slice.len() <= 16 * 1024 {
        return Bytes::copy_from_slice(slice);
    }
    Bytes::from_owner(Owner {
        object: data.clone().unbind(),
        ptr: slice.as_ptr(),
        len: slice.len(),
    })
}

fn extract_headers(headers: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in headers.try_iter()? {
        let item = item?;
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item
            .extract()
            .map_err(|_| PyTypeError::new_err("response headers must be (name, value) tuples"))?;
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err("header names and values must be str"));
        };
        out.push((name.to_str()?.to_owned(), value.to_str()?.to_owned()));
    }
    Ok(out)
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, response_headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        response_headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let exc_info = exc_info.filter(|e| !e.is_none());
        if let Some(exc_info) = exc_info {
            if this.lock().headers_sent() {
                // PEP 3333: too late to change the status; re-raise the error.
                return Err(PyErr::from_value(exc_info.get_item(1)?));
            }
        } else if this.lock().has_head() {
            return Err(PyAssertionError::new_err(
                "start_response called a second time without exc_info",
            ));
        }
        let status = status
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("status must be a str"))?
            .to_str()?;
        let headers = extract_headers(response_headers)?;
        let head = make_head(status, headers).map_err(|e| PyValueError::new_err(e.to_string()))?;
        this.lock().set_head(head);
        slf.getattr("write")
    }

    /// The PEP 3333 `write()` callable: send bytes now.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() argument must be bytes"))?;
        if !self.lock().has_head() {
            return Err(PyAssertionError::new_err(
                "write() called before start_response",
            ));
        }
        self.write_bytes(py, data, false)
    }
}

/// How serving one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response went out completely.
    Complete,
    /// The app failed before sending headers; a generic 500 went out.
    AppFailed,
    /// The app failed after headers were sent; the response is truncated.
    Truncated,
    /// The output was closed by the other side.
    ClientGone,
}

/// The exit status (CGI) or `appStatus` (FastCGI) of an outcome.
impl From<Outcome> for crate::core::exit::Exit {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Complete => Self::Success,
            Outcome::AppFailed => Self::AppError,
            Outcome::Truncated => Self::Truncated,
            Outcome::ClientGone => Self::ClientGone,
        }
    }
}

/// One request, for both front ends: the environ `dict` (a failure to
/// build it — no `sys.stderr`, say — is the app's: logged, 500), then
/// [`serve`].
#[allow(clippy::too_many_arguments)]
pub fn run(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    environ: &Environ<'_>,
    flavor: Flavor,
    input: Input,
    errors: PyResult<Bound<'_, PyAny>>,
    strings: &mut StrCache,
    mut writer: ResponseWriter,
) -> (Outcome, ResponseWriter) {
    match errors.and_then(|errors| environ_dict(py, environ, flavor, input, errors, strings)) {
        Ok(dict) => serve(py, app, dict, writer),
        Err(err) => {
            err.display(py);
            // (Writing may wait for the socket: not with the GIL.)
            let _ = py.detach(|| writer.fail(500));
            (Outcome::AppFailed, writer)
        }
    }
}

/// Call the app with `environ`, send its response through `writer`.
pub fn serve(
    py: Python<'_>,
    app: &Bound<'_, PyAny>,
    environ: Bound<'_, PyDict>,
    writer: ResponseWriter,
) -> (Outcome, ResponseWriter) {
    let start_response = match Bound::new(
        py,
        StartResponse {
            writer: Mutex::new(writer),
            client_gone: AtomicBool::new(false),
        },
    ) {
        Ok(sr) => sr,
        Err(err) => {
            err.display(py);
            // Unreachable in practice: allocation of a small object failed.
            std::process::abort();
        }
    };
    let sr = start_response.get();
    let mut outcome = match app.call1((environ, &start_response)) {
        Err(err) => fail(py, sr, err, "the application raised"),
        Ok(iterable) => {
            let streamed = stream(py, sr, &iterable);
            let mut outcome = match streamed {
                Ok(()) => Outcome::Complete,
                Err(err) => fail(py, sr, err, "the application's response failed"),
            };
            if let Err(err) = close(&iterable) {
                if outcome == Outcome::Complete {
                    outcome = fail(py, sr, err, "close() of the response iterable raised");
                } else {
                    log_error!("close() of the response iterable raised as well");
                    err.display(py);
                }
            }
            outcome
        }
    };
    if outcome == Outcome::Complete && !sr.lock().has_head() {
        log_error!("the application returned without calling start_response");
        outcome = fail_before_headers(sr);
    }
    if outcome == Outcome::Complete {
        let mut writer = sr.lock();
        let finished = if writer.may_block(true) {
            drop(writer);
            py.detach(|| sr.lock().finish())
        } else {
            writer.finish()
        };
        if let Err(err) = finished {
            log_info!("client went away before the response was complete: {err}");
            outcome = Outcome::ClientGone;
        }
    }
    let writer = std::mem::replace(
        &mut *sr.lock(),
        ResponseWriter::new(Box::new(NullSink), false),
    );
    (outcome, writer)
}

fn close(iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    // A list or a tuple (what most apps return) has no `close`, and its
    // type cannot be given one: no failed lookup, whose AttributeError
    // (message formatted, then dropped) costs more than the rest of a
    // hello-world response.
    if iterable.is_exact_instance_of::<pyo3::types::PyList>()
        || iterable.is_exact_instance_of::<PyTuple>()
    {
        return Ok(());
    }
    if iterable.hasattr("close")? {
        iterable.call_method0("close")?;
    }
    Ok(())
}

fn fail(py: Python<'_>, sr: &StartResponse, err: PyErr, what: &str) -> Outcome {
    if sr.client_gone.load(Ordering::Relaxed) {
        log_info!("client went away while sending the response: {err}");
        return Outcome::ClientGone;
    }
    log_error!("{what}; traceback follows");
    err.display(py);
    if sr.lock().headers_sent() {
        log_error!("headers were already sent: the response is truncated");
        Outcome::Truncated
    } else {
        fail_before_headers(sr)
    }
}

fn fail_before_headers(sr: &StartResponse) -> Outcome {
    match sr.lock().fail(500) {
        Ok(_) => Outcome::AppFailed,
        Err(_) => Outcome::ClientGone,
    }
}

fn stream(py: Python<'_>, sr: &StartResponse, iterable: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(wrapper) = iterable.cast::<FileWrapper>()
        && send_file(py, sr, wrapper.get())?
    {
        return Ok(());
    }
    // A list or tuple says when its last item comes: that one may leave
    // together with the end of the response.
    let known_len = if iterable.is_exact_instance_of::<pyo3::types::PyList>()
        || iterable.is_exact_instance_of::<pyo3::types::PyTuple>()
    {
        iterable.len().ok()
    } else {
        None
    };
    for (index, item) in iterable.try_iter()?.enumerate() {
        let item = item?;
        let chunk = item.cast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err(format!(
                "the application must yield bytes, not {}",
                item.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let data = chunk.as_bytes();
        if data.is_empty() {
            continue;
        }
        if !sr.lock().has_head() {
            return Err(PyAssertionError::new_err(
                "the application yielded body data before calling start_response",
            ));
        }
        sr.write_bytes(py, chunk, known_len == Some(index + 1))?;
    }
    Ok(())
}

/// The `wsgi.file_wrapper` fast path: a regular file goes out with the
/// sink's zero-copy path from its current position. `Ok(false)`: not
/// applicable, iterate instead.
fn send_file(py: Python<'_>, sr: &StartResponse, wrapper: &FileWrapper) -> PyResult<bool> {
    let filelike = wrapper.filelike.bind(py);
    if !sr.lock().has_head() || !filelike.hasattr("fileno")? {
        return Ok(false);
    }
    let Ok(fd) = filelike
        .call_method0("fileno")
        .and_then(|f| f.extract::<i32>())
    else {
        return Ok(false);
    };
    // SAFETY: the file object stays alive (and its fd open) for the whole
    // call, since `wrapper` holds a reference to it and we hold the GIL
    // except inside `detach`, during which nobody else can close it.
    let file = unsafe { BorrowedFd::borrow_raw(fd) };
    let Ok(stat) = nix::sys::stat::fstat(file) else {
        return Ok(false);
    };
    use nix::sys::stat::SFlag;
    if stat.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Ok(false);
    }
    let offset: u64 = match filelike.call_method0("tell").and_then(|t| t.extract()) {
        Ok(offset) => offset,
        Err(_) => return Ok(false),
    };
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    let len = size.saturating_sub(offset);
    let sent = py
        .detach(|| sr.lock().write_file(file, offset, len))
        .map_err(|e| {
            sr.client_gone.store(true, Ordering::Relaxed);
            PyErr::from(e)
        })?;
    Ok(sent)
}

/// A sink that discards everything (used once the real one was handed back).
struct NullSink;

impl crate::core::response::Sink for NullSink {
    fn send(
        &mut self,
        _: Option<&crate::core::response::Head>,
        _: Bytes,
        _: bool,
    ) -> std::io::Result<()> {
        Ok(())
    }
    fn send_file(
        &mut self,
        _: Option<&crate::core::response::Head>,
        _: BorrowedFd<'_>,
        _: u64,
        _: u64,
    ) -> std::io::Result<Option<u64>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::{same, short_hash};

    #[test]
    fn the_cache_compare_is_equality_at_every_length_and_position() {
        for len in 0..=64usize {
            let a: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            assert!(same(&a, &a.clone()), "{len}");
            assert!(!same(&a, &a[..len.saturating_sub(1)]) || len == 0, "{len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 1;
                assert!(!same(&a, &b), "{len} {at}");
                // (Not a guarantee, but a hash that misses a byte shows.)
                assert_ne!(short_hash(&a), short_hash(&b), "{len} {at}");
            }
        }
        // A trailing zero byte is not the end of the string.
        assert_ne!(short_hash(b"ab"), short_hash(b"ab\0"));
    }
}
