//! The environ `dict` from the plain [`Environ`]: native strings (latin-1,
//! PEP 3333) reused from request to request through a small cache, the
//! `wsgi.*` keys; the dict a copy of the thread's [`Template`] for the
//! names it has, else made at its size.

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::core::environ::{Environ, Flavor};
use crate::core::meta::{last_word as tail, word};
use crate::python::input::{FileWrapper, Input};

/// Python `str` objects for environ keys and values, reused from request
/// to request: a web server sends the same names (and many of the same
/// values: `GATEWAY_INTERFACE`, `SERVER_PROTOCOL`, `REQUEST_METHOD`…) every
/// time, and a reused `str` costs no allocation, no decoding and — since
/// it caches its hash — no hashing when it goes into the `dict`. A small
/// direct-mapped table: a new string simply replaces what was in its slot.
/// `str` is immutable, so sharing one between requests is invisible to apps.
pub struct StrCache {
    slots: Vec<Option<Cached>>,
    /// What each place of the environ (a key or a value, in the order
    /// [`environ_dict`] sets them) held at the last request: a front end
    /// sends the same variables in the same order, so most strings are
    /// found here by one comparison, without hashing.
    recent: Vec<Option<Held>>,
    /// The environs to start from ([`Template`]), by number of variables.
    templates: Vec<Option<Template>>,
    /// How many variables the request had whose names `recent` holds (the
    /// last one made key by key).
    names_len: usize,
}

/// A cache entry: hash, bytes, the `str`.
type Cached = (u64, Box<[u8]>, Py<PyString>);

/// What a place of the environ held: bytes, the `str`.
type Held = (Box<[u8]>, Py<PyString>);

impl StrCache {
    const SLOTS: usize = 512;
    /// Longer strings are not kept (query strings, cookies: rarely repeated).
    const MAX_LEN: usize = 64;
    /// Places remembered: keys and values of this many variables.
    const RECENT: usize = 2 * 64;

    /// A cache for a thread that serves many requests.
    pub fn new() -> StrCache {
        StrCache {
            slots: (0..Self::SLOTS).map(|_| None).collect(),
            recent: (0..Self::RECENT).map(|_| None).collect(),
            templates: (0..Template::SLOTS).map(|_| None).collect(),
            names_len: 0,
        }
    }

    /// No caching (one request per process: CGI).
    pub fn none() -> StrCache {
        StrCache {
            slots: Vec::new(),
            recent: Vec::new(),
            templates: Vec::new(),
            names_len: 0,
        }
    }

    /// The latin-1 decoding of `bytes` as a `str`, for place `at` of the
    /// environ: what that place held last time if it is the same string,
    /// else [`StrCache::get`]'s. (Inlined into the environ's loop: a call
    /// per string cost as much as the comparison.)
    #[inline(always)]
    pub fn get_at<'py>(
        &mut self,
        py: Python<'py>,
        at: usize,
        bytes: &[u8],
    ) -> PyResult<Bound<'py, PyString>> {
        if let Some(Some((held, string))) = self.recent.get(at)
            && same(held, bytes)
        {
            return Ok(string.bind(py).clone());
        }
        self.miss_at(py, at, bytes)
    }

    /// Whether the names of `environ` are those of the last request made
    /// key by key, in the same order (what `recent` holds at the keys'
    /// places): a kind of request that comes again.
    fn repeats_names(&self, environ: &Environ<'_>) -> bool {
        self.names_len == environ.vars.len()
            && environ.vars.iter().enumerate().all(|(at, (key, _))| {
                matches!(self.recent.get(2 * at), Some(Some((held, _))) if same(held, key))
            })
    }

    /// [`StrCache::get_at`] when the place held something else.
    #[inline(never)]
    fn miss_at<'py>(
        &mut self,
        py: Python<'py>,
        at: usize,
        bytes: &[u8],
    ) -> PyResult<Bound<'py, PyString>> {
        let string = self.get(py, bytes)?;
        if at >= self.recent.len() {
            return Ok(string);
        }
        if bytes.len() <= Self::MAX_LEN {
            self.recent[at] = Some((bytes.into(), string.clone().unbind()));
        }
        Ok(string)
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
    let mut at = 0;
    while at + 8 < bytes.len() {
        h = (h ^ word(bytes, at)).wrapping_mul(K);
        h ^= h >> 29;
        at += 8;
    }
    h = (h ^ tail(bytes)).wrapping_mul(K);
    h ^ (h >> 32)
}

/// `a == b` for the short strings of [`StrCache`], compared inline eight
/// bytes at a time, the last eight overlapping (a call to `memcmp` per
/// lookup cost more than the comparison).
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut at = 0;
    while at + 8 < a.len() {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    tail(a) == tail(b)
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

/// Build the environ `dict` from the plain [`Environ`]: a copy of the
/// thread's [`Template`] for requests that send the names it has (in that
/// order), else a new dict.
pub fn environ_dict<'py>(
    py: Python<'py>,
    environ: &Environ<'_>,
    flavor: Flavor,
    input: Input,
    errors: Bound<'py, PyAny>,
    strings: &mut StrCache,
) -> PyResult<Bound<'py, PyDict>> {
    let input = Bound::new(py, input)?.into_any();
    if let Some(dict) = from_template(py, environ, flavor, &errors, strings)? {
        dict.set_item(intern!(py, "wsgi.input"), input)?;
        return Ok(dict);
    }
    let dict = dict_of_size(py, environ.vars.len() + 9)?;
    strings.names_len = environ.vars.len();
    for (at, (key, value)) in environ.vars.iter().enumerate() {
        dict.set_item(
            strings.get_at(py, 2 * at, key)?,
            strings.get_at(py, 2 * at + 1, value)?,
        )?;
    }
    set_wsgi_keys(py, &dict, environ, flavor, input, errors, strings)?;
    Ok(dict)
}

/// The `wsgi.*` keys, after the CGI variables.
fn set_wsgi_keys<'py>(
    py: Python<'py>,
    dict: &Bound<'py, PyDict>,
    environ: &Environ<'_>,
    flavor: Flavor,
    input: Bound<'py, PyAny>,
    errors: Bound<'py, PyAny>,
    strings: &mut StrCache,
) -> PyResult<()> {
    // `(1, 0)`: one tuple for every request (it is immutable).
    static VERSION: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
    let version = VERSION.get_or_try_init(py, || PyTuple::new(py, [1, 0]).map(Bound::unbind))?;
    dict.set_item(intern!(py, "wsgi.version"), version.bind(py))?;
    dict.set_item(
        intern!(py, "wsgi.url_scheme"),
        strings.get(py, environ.url_scheme.as_bytes())?,
    )?;
    dict.set_item(intern!(py, "wsgi.input"), input)?;
    dict.set_item(intern!(py, "wsgi.errors"), errors)?;
    dict.set_item(intern!(py, "wsgi.multithread"), flavor.multithread)?;
    dict.set_item(intern!(py, "wsgi.multiprocess"), flavor.multiprocess)?;
    dict.set_item(intern!(py, "wsgi.run_once"), flavor.run_once)?;
    dict.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    dict.set_item(
        intern!(py, "wsgi.file_wrapper"),
        py.get_type::<FileWrapper>(),
    )
}

/// An environ a thread made, to start the next ones from: a front end
/// sends the same names in the same order request after request, most of
/// them with the same values, so a copy of this dict (one copy of its
/// table, with CPython's keys kind for `str` keys) with only the values
/// that differ set costs a fraction of a dict filled key by key.
/// Only the thread's own code sees it: the app gets copies.
struct Template {
    /// The names with the values of `values`, then the `wsgi.*` keys, with
    /// `wsgi.input` and `wsgi.errors` None: set for each request (no
    /// request's body, or its stream to the web server, is kept by it).
    dict: Py<PyDict>,
    /// The CGI names in the order the request sent them: their bytes and
    /// the dict's keys.
    names: Vec<Held>,
    /// The value of each name in `dict`.
    values: Vec<Py<PyString>>,
    url_scheme: &'static str,
    flavor: Flavor,
}

impl Template {
    /// Templates a thread keeps, chosen by the number of variables (clients
    /// of other kinds send other numbers of headers).
    const SLOTS: usize = 4;

    /// The template of this request, made as [`environ_dict`]'s new dict is.
    fn new<'py>(
        py: Python<'py>,
        environ: &Environ<'_>,
        flavor: Flavor,
        strings: &mut StrCache,
    ) -> PyResult<Template> {
        // PyDict_New, not the presized dict: its keys table is of the kind
        // for `str` keys only (the presized one's is the general kind).
        let dict = PyDict::new(py);
        let mut names = Vec::with_capacity(environ.vars.len());
        let mut values = Vec::with_capacity(environ.vars.len());
        strings.names_len = environ.vars.len();
        for (at, (key, value)) in environ.vars.iter().enumerate() {
            let name = strings.get_at(py, 2 * at, key)?;
            let value = strings.get_at(py, 2 * at + 1, value)?;
            dict.set_item(&name, &value)?;
            names.push((Box::from(*key), name.unbind()));
            values.push(value.unbind());
        }
        let none = py.None().into_bound(py);
        set_wsgi_keys(py, &dict, environ, flavor, none.clone(), none, strings)?;
        Ok(Template {
            dict: dict.unbind(),
            names,
            values,
            url_scheme: environ.url_scheme,
            flavor,
        })
    }

    /// Whether the request sends exactly these names, in this order.
    fn fits(&self, environ: &Environ<'_>, flavor: Flavor) -> bool {
        self.flavor == flavor
            && self.names.len() == environ.vars.len()
            && (environ.vars.iter().zip(&self.names)).all(|((key, _), (name, _))| same(key, name))
    }
}

/// The environ as a copy of the thread's template for requests with its
/// names, the values that differ set. `None`: no template fits — a new one
/// is made (for this request and the next of its kind) when the last
/// request made key by key had the same names: a kind of request that
/// comes again, not one of many kinds in turn (which would make a template
/// per request).
fn from_template<'py>(
    py: Python<'py>,
    environ: &Environ<'_>,
    flavor: Flavor,
    errors: &Bound<'py, PyAny>,
    strings: &mut StrCache,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    if strings.templates.is_empty() {
        return Ok(None);
    }
    let slot = environ.vars.len() % strings.templates.len();
    let template = match strings.templates[slot].take() {
        Some(t) if t.fits(environ, flavor) => t,
        other if strings.repeats_names(environ) => {
            drop(other);
            Template::new(py, environ, flavor, strings)?
        }
        other => {
            strings.templates[slot] = other;
            return Ok(None);
        }
    };
    let dict = template.dict.bind(py).copy()?;
    for (at, (_, value)) in environ.vars.iter().enumerate() {
        let value = strings.get_at(py, 2 * at + 1, value)?;
        if value.as_ptr() != template.values[at].as_ptr() {
            dict.set_item(template.names[at].1.bind(py), value)?;
        }
    }
    if environ.url_scheme != template.url_scheme {
        dict.set_item(
            intern!(py, "wsgi.url_scheme"),
            strings.get(py, environ.url_scheme.as_bytes())?,
        )?;
    }
    dict.set_item(intern!(py, "wsgi.errors"), errors)?;
    strings.templates[slot] = Some(template);
    Ok(Some(dict))
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
