//! The application side of PEP 3333, once the callable is loaded
//! ([`super::load`]) and its environ built ([`super::environ`]):
//! `start_response` with its `exc_info` rules and the `write()` callable,
//! iterate the result (bytes only, the `wsgi.file_wrapper` fast path) and
//! always call `close()`. Bytes go to a [`ResponseWriter`]; nothing here
//! knows CGI or FastCGI.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use pyo3::exceptions::{PyAssertionError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};

use crate::core::environ::{Environ, Flavor};
use crate::core::response::{Head, HeadBuilder, ResponseWriter};
use crate::python::environ::{StrCache, environ_dict};
use crate::python::input::{FileWrapper, Input};
use crate::{log_error, log_info};

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

/// The validated [`Head`] of a status and a header list, each header
/// written into the head's block as it is read (no copy of the strings).
fn make_head(status: &str, headers: &Bound<'_, PyAny>) -> PyResult<Head> {
    let invalid = |e: crate::core::response::ResponseError| PyValueError::new_err(e.to_string());
    let mut head = HeadBuilder::new(status).map_err(invalid)?;
    for item in headers.try_iter()? {
        let item = item?;
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item
            .extract()
            .map_err(|_| PyTypeError::new_err("response headers must be (name, value) tuples"))?;
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err("header names and values must be str"));
        };
        head.header(name.to_str()?, value.to_str()?)
            .map_err(invalid)?;
    }
    Ok(head.finish())
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
        let head = make_head(status, response_headers)?;
        this.lock().set_head(head);
        slf.getattr(pyo3::intern!(slf.py(), "write"))
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
    // (One lookup, of an interned name; the bound method is called.)
    if let Some(close) = iterable.getattr_opt(pyo3::intern!(iterable.py(), "close"))? {
        close.call0()?;
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
