//! The Python objects a request hands to the app besides the environ:
//! `wsgi.input` (PEP 3333 "Input and Error Streams": `read`, `readline`,
//! `readlines`, iteration) over a [`BodyReader`], and `wsgi.file_wrapper`.
//! Blocking reads release the GIL.

use std::sync::Mutex;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::core::request::BodyReader;

/// `wsgi.input`: the request body, never read past `CONTENT_LENGTH`.
#[pyclass(module = "wsgi_gateway", name = "Input", frozen)]
pub struct Input {
    reader: Mutex<BodyReader>,
}

fn size_arg(size: Option<isize>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

impl Input {
    /// Wrap a body reader.
    pub fn new(reader: BodyReader) -> Self {
        Input {
            reader: Mutex::new(reader),
        }
    }

    fn with_reader<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut BodyReader) -> std::io::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut reader = self
                .reader
                .lock()
                .map_err(|_| PyOSError::new_err("wsgi.input is broken"))?;
            f(&mut reader).map_err(PyErr::from)
        })
    }
}

#[pymethods]
impl Input {
    /// `read(size=-1)`: up to `size` bytes, or all that is left. When the
    /// length is known the bytes object is allocated once and filled straight
    /// from the source (a 1 GiB upload read whole costs 1 GiB, not 3).
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let size = size_arg(size);
        let hint = self.with_reader(py, |r| Ok(r.size_hint()))?;
        let exact = match (size, hint.and_then(|h| usize::try_from(h).ok())) {
            (Some(size), Some(hint)) => Some(size.min(hint)),
            (None, Some(hint)) => Some(hint),
            (_, None) => None,
        };
        let Some(exact) = exact else {
            let data = self.with_reader(py, |r| r.read(size))?;
            return Ok(PyBytes::new(py, &data));
        };
        let mut got = 0;
        let bytes = PyBytes::new_with(py, exact, |buf| {
            got = self.with_reader(py, |r| r.read_into(buf))?;
            Ok(())
        })?;
        if got < exact {
            // The body ended early: hand out only what arrived.
            return Ok(PyBytes::new(py, &bytes.as_bytes()[..got]));
        }
        Ok(bytes)
    }

    /// `readline(size=-1)`: one line, at most `size` bytes.
    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with_reader(py, |r| r.readline(size_arg(size)))?;
        Ok(PyBytes::new(py, &data))
    }

    /// `readlines(hint=-1)`: lines until EOF, or until `hint` bytes were read.
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint).filter(|&h| h > 0);
        let lines = self.with_reader(py, |r| {
            let mut lines = Vec::new();
            let mut total = 0;
            loop {
                let line = r.readline(None)?;
                if line.is_empty() {
                    break;
                }
                total += line.len();
                lines.push(line);
                if hint.is_some_and(|h| total >= h) {
                    break;
                }
            }
            Ok(lines)
        })?;
        PyList::new(py, lines.iter().map(|l| PyBytes::new(py, l)))
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.with_reader(py, |r| r.readline(None))?;
        Ok((!line.is_empty()).then(|| PyBytes::new(py, &line)))
    }
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterates the file in blocks;
/// the gateway recognizes it and sends regular files with `sendfile(2)`.
#[pyclass(module = "wsgi_gateway", name = "FileWrapper", frozen)]
pub struct FileWrapper {
    /// The wrapped file-like object.
    pub filelike: Py<PyAny>,
    /// Block size for the iteration fallback.
    pub blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let block = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        Ok((block.len()? > 0).then_some(block))
    }

    /// Closes the wrapped file, as PEP 3333 asks.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let filelike = self.filelike.bind(py);
        if filelike.hasattr("close")? {
            filelike.call_method0("close")?;
        }
        Ok(())
    }
}
