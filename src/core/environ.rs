//! The PEP 3333 environ, computed from a request's raw meta-variables
//! (RFC 3875 §4.1) without Python: native strings are the raw bytes decoded
//! as latin-1 ("bytes-in-unicode", PEP 3333 "Unicode Issues"), defaults for
//! the keys PEP 3333 requires, `CONTENT_LENGTH` validated, `wsgi.url_scheme`
//! derived. The Python layer turns an [`Environ`] into the `dict`.

use std::borrow::Cow;

use crate::core::request::RequestError;

/// The `wsgi.*` flags that depend on the front end (CGI vs FastCGI).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flavor {
    /// `wsgi.multithread`
    pub multithread: bool,
    /// `wsgi.multiprocess`
    pub multiprocess: bool,
    /// `wsgi.run_once`
    pub run_once: bool,
}

/// CGI: one request per process, many processes.
pub const CGI: Flavor = Flavor {
    multithread: false,
    multiprocess: true,
    run_once: true,
};

/// The environ's string part plus the facts the gateway itself needs.
///
/// Keys and values stay raw bytes borrowed from the request's
/// meta-variables (a native string is their latin-1 decoding, done by the
/// Python layer straight into `str` objects, or by [`Environ::get`]): no
/// copy is made on the way to the `dict`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environ<'a> {
    /// Every `str`-valued key and its raw value, in a stable order.
    pub vars: Vec<(&'a [u8], Cow<'a, [u8]>)>,
    /// `wsgi.url_scheme`: `"http"` or `"https"`.
    pub url_scheme: &'static str,
    /// The validated `CONTENT_LENGTH` (`None` when absent or empty).
    pub content_length: Option<u64>,
    /// True for `HEAD`: the gateway sends no body bytes.
    pub is_head: bool,
}

impl Environ<'_> {
    /// Look a key up and decode the value (latin-1).
    pub fn get(&self, key: &str) -> Option<String> {
        self.raw(key.as_bytes()).map(latin1)
    }

    fn raw(&self, key: &[u8]) -> Option<&[u8]> {
        self.vars
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// Decode bytes as latin-1: every byte becomes the code point of equal value.
pub fn latin1(bytes: &[u8]) -> String {
    if bytes.is_ascii() {
        // SAFETY-free fast path: ASCII is valid UTF-8.
        return String::from_utf8_lossy(bytes).into_owned();
    }
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Up to this many variables a name is looked up by a scan (cheaper than
/// hashing for what web servers send); beyond, through a hash index, so
/// that a request with tens of thousands of variables costs linear time.
const SCAN_LIMIT: usize = 64;

/// The environ's variables being gathered, and where each name is.
struct Vars<'a> {
    list: Vec<(&'a [u8], Cow<'a, [u8]>)>,
    /// Each name's [`name_hash`], beside `list` (while names are found by a
    /// scan: at most [`SCAN_LIMIT`] variables and the 7 defaults): a scan
    /// compares these before any bytes.
    hashes: [u8; SCAN_LIMIT + 8],
    /// A bit per hash seen (a one-word Bloom filter): a name whose bit is
    /// clear is new, with no scan — names are rarely repeated, and a scan
    /// per variable was a tenth of a small request's cost.
    seen: u64,
    index: Option<std::collections::HashMap<&'a [u8], usize>>,
}

use crate::core::meta::name_hash;

impl<'a> Vars<'a> {
    fn new(expected: usize) -> Vars<'a> {
        Vars {
            list: Vec::with_capacity(expected + 8),
            hashes: [0; SCAN_LIMIT + 8],
            seen: 0,
            index: (expected > SCAN_LIMIT)
                .then(|| std::collections::HashMap::with_capacity(expected)),
        }
    }

    #[inline(always)]
    fn position(&self, name: &[u8], hash: u8) -> Option<usize> {
        if self.index.is_some() {
            return self.indexed(name);
        }
        if self.seen & (1 << hash) == 0 {
            return None;
        }
        (0..self.list.len()).find(|&at| self.hashes[at] == hash && self.list[at].0 == name)
    }

    /// (Out of line: only requests with very many variables come here.)
    #[cold]
    #[inline(never)]
    fn indexed(&self, name: &[u8]) -> Option<usize> {
        self.index
            .as_ref()
            .and_then(|index| index.get(name).copied())
    }

    /// Set `name` to `value`: a name given twice keeps its last value (as
    /// PHP-FPM does: web-server configs override an included default that
    /// way, e.g. nginx's `fastcgi_param HTTP_HOST $host:$server_port;`
    /// after `include fastcgi_params;`), in its first place.
    #[inline(always)]
    fn set(&mut self, name: &'a [u8], hash: u8, value: Cow<'a, [u8]>) {
        match self.position(name, hash) {
            Some(at) => self.list[at].1 = value,
            None => {
                if let Some(index) = &mut self.index {
                    Self::index_insert(index, name, self.list.len());
                }
                self.seen |= 1 << hash;
                if self.index.is_none() {
                    self.hashes[self.list.len()] = hash;
                }
                self.list.push((name, value));
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn index_insert(
        index: &mut std::collections::HashMap<&'a [u8], usize>,
        name: &'a [u8],
        at: usize,
    ) {
        index.insert(name, at);
    }

    /// (A removed name's bit stays set: at worst a later lookup scans.)
    fn remove(&mut self, name: &[u8]) {
        let Some(at) = self.position(name, name_hash(name)) else {
            return;
        };
        // (Each name is in the list once.)
        self.list.remove(at);
        self.hashes.copy_within(at + 1.., at);
        if let Some(index) = &mut self.index {
            index.clear();
            for (at, (k, _)) in self.list.iter().enumerate() {
                index.insert(k, at);
            }
        }
    }
}

/// The keys PEP 3333 requires, each with its bit in [`Noted::required`].
const REQUEST_METHOD: u8 = 1;
const SCRIPT_NAME: u8 = 2;
const PATH_INFO: u8 = 4;
const QUERY_STRING: u8 = 8;
const SERVER_NAME: u8 = 16;
const SERVER_PORT: u8 = 32;
const SERVER_PROTOCOL: u8 = 64;

/// What the one pass over the meta-variables notes for the rest of the
/// build: the last value of each name that steers it, and which required
/// keys were given.
#[derive(Default)]
struct Noted<'a> {
    https: Option<&'a [u8]>,
    request_scheme: Option<&'a [u8]>,
    http_host: Option<&'a [u8]>,
    request_method: Option<&'a [u8]>,
    content_length: Option<u64>,
    required: u8,
}

/// Build the environ's plain part from raw meta-variables (a name given
/// twice: the last value wins). Linear in their number: one pass, the
/// names that matter recognised by one `match` each.
pub fn build(meta: &crate::core::meta::MetaVariables) -> Result<Environ<'_>, RequestError> {
    let mut vars = Vars::new(meta.len());
    let mut noted = Noted::default();
    for (name, value, hash) in meta.iter_hashed() {
        match name {
            // The CGI names are authoritative: their HTTP_ duplicates are
            // not passed on (`wsgiref.validate` rejects them).
            b"HTTP_CONTENT_TYPE" | b"HTTP_CONTENT_LENGTH" => continue,
            b"CONTENT_LENGTH" => {
                noted.content_length = content_length(value)?;
                match noted.content_length {
                    // (An empty one given last leaves none.)
                    None => vars.remove(name),
                    Some(length) => {
                        vars.set(name, hash, Cow::Owned(length.to_string().into_bytes()))
                    }
                }
                continue;
            }
            b"HTTPS" => noted.https = Some(value),
            b"REQUEST_SCHEME" => noted.request_scheme = Some(value),
            b"HTTP_HOST" => noted.http_host = Some(value),
            b"REQUEST_METHOD" => {
                noted.request_method = Some(value);
                noted.required |= REQUEST_METHOD;
            }
            b"SCRIPT_NAME" => noted.required |= SCRIPT_NAME,
            b"PATH_INFO" => noted.required |= PATH_INFO,
            b"QUERY_STRING" => noted.required |= QUERY_STRING,
            b"SERVER_NAME" => noted.required |= SERVER_NAME,
            b"SERVER_PORT" => noted.required |= SERVER_PORT,
            b"SERVER_PROTOCOL" => noted.required |= SERVER_PROTOCOL,
            _ => {}
        }
        vars.set(name, hash, Cow::Borrowed(value));
    }

    // A body the web server de-chunked and measured (nginx sets
    // CONTENT_LENGTH and still passes the header): the app must not
    // de-chunk it again (bottle, pypiserver's upload: 400).
    if noted.content_length.is_some() {
        vars.remove(b"HTTP_TRANSFER_ENCODING");
    }

    let https = noted.https.is_some_and(|v| {
        v.eq_ignore_ascii_case(b"on") || v == b"1" || v.eq_ignore_ascii_case(b"yes")
    });
    let scheme_https = noted
        .request_scheme
        .is_some_and(|v| v.eq_ignore_ascii_case(b"https"));
    let url_scheme = if https || scheme_https {
        "https"
    } else {
        "http"
    };

    if noted.required != 127 {
        add_defaults(&mut vars, &noted, url_scheme);
    }
    Ok(Environ {
        vars: vars.list,
        url_scheme,
        content_length: noted.content_length,
        is_head: noted.request_method == Some(b"HEAD"),
    })
}

/// A `CONTENT_LENGTH` value: digits (blanks around them allowed), or
/// blank for none.
fn content_length(value: &[u8]) -> Result<Option<u64>, RequestError> {
    let trimmed = value.trim_ascii();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let bad = || RequestError::BadContentLength(latin1(value));
    if !trimmed.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(trimmed)
        .ok()
        .and_then(|t| t.parse().ok())
        .map(Some)
        .ok_or_else(bad)
}

/// The keys PEP 3333 requires that the request did not give: what CGI
/// servers default them to (`SERVER_NAME` from `Host`, the scheme's port).
fn add_defaults<'a>(vars: &mut Vars<'a>, noted: &Noted<'a>, url_scheme: &str) {
    let default_name = noted.http_host.and_then(host_name).unwrap_or(b"localhost");
    let default_port: &[u8] = if url_scheme == "https" { b"443" } else { b"80" };
    let defaults: [(u8, &'static [u8], &'a [u8]); 7] = [
        (REQUEST_METHOD, b"REQUEST_METHOD", b"GET"),
        (SCRIPT_NAME, b"SCRIPT_NAME", b""),
        (PATH_INFO, b"PATH_INFO", b""),
        (QUERY_STRING, b"QUERY_STRING", b""),
        (SERVER_NAME, b"SERVER_NAME", default_name),
        (SERVER_PORT, b"SERVER_PORT", default_port),
        (SERVER_PROTOCOL, b"SERVER_PROTOCOL", b"HTTP/1.0"),
    ];
    for (bit, key, value) in defaults {
        if noted.required & bit == 0 {
            vars.set(key, name_hash(key), Cow::Borrowed(value));
        }
    }
}

/// The host part of a `Host` header (`name`, `name:port`, `[v6]:port`).
fn host_name(host: &[u8]) -> Option<&[u8]> {
    if host.is_empty() {
        return None;
    }
    if host.starts_with(b"[") {
        return memchr::memchr(b']', host).map(|end| &host[..=end]);
    }
    Some(host.split(|&b| b == b':').next().unwrap_or(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&[u8], &[u8])]) -> crate::core::meta::MetaVariables {
        pairs.iter().copied().collect()
    }

    /// (meta-variables, key, expected value) — one row per mapping rule.
    #[test]
    fn mapping_table() {
        type Row = (
            &'static [(&'static [u8], &'static [u8])],
            &'static str,
            Option<&'static str>,
        );
        let rows: &[Row] = &[
            // latin-1: every byte maps to the code point of equal value
            (
                &[(b"PATH_INFO", b"/caf\xc3\xa9")],
                "PATH_INFO",
                Some("/caf\u{c3}\u{a9}"),
            ),
            (
                &[(b"PATH_INFO", b"/\xff\x80")],
                "PATH_INFO",
                Some("/\u{ff}\u{80}"),
            ),
            (
                &[(b"HTTP_X_NAME", b"\xe9t\xe9")],
                "HTTP_X_NAME",
                Some("\u{e9}t\u{e9}"),
            ),
            (
                &[(b"QUERY_STRING", b"a=%C3%A9")],
                "QUERY_STRING",
                Some("a=%C3%A9"),
            ),
            // defaults for missing keys
            (&[], "REQUEST_METHOD", Some("GET")),
            (&[], "SCRIPT_NAME", Some("")),
            (&[], "PATH_INFO", Some("")),
            (&[], "QUERY_STRING", Some("")),
            (&[], "SERVER_NAME", Some("localhost")),
            (&[], "SERVER_PORT", Some("80")),
            (&[], "SERVER_PROTOCOL", Some("HTTP/1.0")),
            (
                &[(b"HTTP_HOST", b"example.org:8080")],
                "SERVER_NAME",
                Some("example.org"),
            ),
            (
                &[(b"HTTP_HOST", b"[::1]:8080")],
                "SERVER_NAME",
                Some("[::1]"),
            ),
            (&[(b"HTTPS", b"on")], "SERVER_PORT", Some("443")),
            // the server's mapping is kept as is
            (
                &[(b"SCRIPT_NAME", b"/app"), (b"PATH_INFO", b"/x/y")],
                "SCRIPT_NAME",
                Some("/app"),
            ),
            (
                &[(b"SERVER_PORT", b"8443"), (b"HTTPS", b"on")],
                "SERVER_PORT",
                Some("8443"),
            ),
            // CONTENT_LENGTH / CONTENT_TYPE: empty or absent
            (&[(b"CONTENT_LENGTH", b"")], "CONTENT_LENGTH", None),
            (
                &[(b"CONTENT_LENGTH", b" 12 ")],
                "CONTENT_LENGTH",
                Some("12"),
            ),
            (&[(b"CONTENT_LENGTH", b"007")], "CONTENT_LENGTH", Some("7")),
            (&[], "CONTENT_LENGTH", None),
            (&[(b"CONTENT_TYPE", b"")], "CONTENT_TYPE", Some("")),
            (&[], "CONTENT_TYPE", None),
            // duplicates the CGI names shadow
            (&[(b"HTTP_CONTENT_TYPE", b"x/y")], "HTTP_CONTENT_TYPE", None),
            (
                &[(b"HTTP_CONTENT_LENGTH", b"3")],
                "HTTP_CONTENT_LENGTH",
                None,
            ),
            // the last of two equal names wins (PHP-FPM's rule; nginx's
            // override after `include fastcgi_params;`)
            (&[(b"HTTP_A", b"1"), (b"HTTP_A", b"2")], "HTTP_A", Some("2")),
            (
                &[(b"HTTP_HOST", b"h"), (b"HTTP_HOST", b"h:8080")],
                "SERVER_NAME",
                Some("h"),
            ),
            (
                &[(b"CONTENT_LENGTH", b"3"), (b"CONTENT_LENGTH", b"5")],
                "CONTENT_LENGTH",
                Some("5"),
            ),
            (
                &[(b"CONTENT_LENGTH", b"3"), (b"CONTENT_LENGTH", b"")],
                "CONTENT_LENGTH",
                None,
            ),
            // a body de-chunked by the web server, with its length: the
            // chunked header does not reach the app; without a length it does
            (
                &[
                    (b"HTTP_TRANSFER_ENCODING", b"chunked"),
                    (b"CONTENT_LENGTH", b"5"),
                ],
                "HTTP_TRANSFER_ENCODING",
                None,
            ),
            (
                &[(b"HTTP_TRANSFER_ENCODING", b"chunked")],
                "HTTP_TRANSFER_ENCODING",
                Some("chunked"),
            ),
        ];
        for (pairs, key, expected) in rows {
            let meta = meta(pairs);
            let environ = build(&meta).unwrap();
            assert_eq!(
                environ.get(key).as_deref(),
                *expected,
                "key {key} from {pairs:?}"
            );
        }
    }

    /// As many variables as a scan handles, none of them a required key,
    /// a repeat of each: every name once, the defaults added after them.
    #[test]
    fn the_most_variables_a_scan_handles_with_the_defaults() {
        let names: Vec<String> = (0..SCAN_LIMIT).map(|i| format!("HTTP_X_{i}")).collect();
        let mut meta: crate::core::meta::MetaVariables =
            names.iter().map(|n| (n.as_str(), "1")).collect();
        for n in &names {
            meta.push(n.as_bytes(), b"2");
        }
        assert_eq!(meta.len(), 2 * SCAN_LIMIT);
        // (2 * SCAN_LIMIT pairs: the hashed lookup; the first half alone scans.)
        let half: crate::core::meta::MetaVariables = meta.iter().take(SCAN_LIMIT).collect();
        for meta in [&half, &meta] {
            let environ = build(meta).unwrap();
            assert_eq!(environ.vars.len(), SCAN_LIMIT + 7);
            assert_eq!(environ.vars[SCAN_LIMIT].0, b"REQUEST_METHOD");
        }
        assert_eq!(build(&meta).unwrap().get("HTTP_X_7").as_deref(), Some("2"));
        assert_eq!(build(&half).unwrap().get("HTTP_X_7").as_deref(), Some("1"));
    }

    /// Many variables (the hashed lookup): each name once, in its first
    /// place, with its last value; the defaults still filled in.
    #[test]
    fn many_variables_keep_the_last_value_of_each_name() {
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..5000)
            .map(|i| {
                (
                    format!("HTTP_X_{}", i % 1000).into_bytes(),
                    i.to_string().into_bytes(),
                )
            })
            .collect();
        pairs.push((b"CONTENT_LENGTH".to_vec(), b"7".to_vec()));
        pairs.push((b"HTTPS".to_vec(), b"off".to_vec()));
        pairs.push((b"HTTPS".to_vec(), b"on".to_vec()));
        let meta: crate::core::meta::MetaVariables = pairs.into_iter().collect();
        let environ = build(&meta).unwrap();
        assert_eq!(environ.get("HTTP_X_0").as_deref(), Some("4000"));
        assert_eq!(environ.get("HTTP_X_999").as_deref(), Some("4999"));
        assert_eq!(environ.vars[0].0, b"HTTP_X_0");
        let names = environ
            .vars
            .iter()
            .filter(|(k, _)| k.starts_with(b"HTTP_X_"))
            .count();
        assert_eq!(names, 1000);
        assert_eq!(environ.content_length, Some(7));
        assert_eq!(environ.url_scheme, "https");
        assert_eq!(environ.get("SERVER_PORT").as_deref(), Some("443"));
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn url_scheme_table() {
        let rows: &[(&[(&[u8], &[u8])], &str)] = &[
            (&[], "http"),
            (&[(b"HTTPS", b"on")], "https"),
            (&[(b"HTTPS", b"ON")], "https"),
            (&[(b"HTTPS", b"1")], "https"),
            (&[(b"HTTPS", b"yes")], "https"),
            (&[(b"HTTPS", b"off")], "http"),
            (&[(b"HTTPS", b"")], "http"),
            (&[(b"REQUEST_SCHEME", b"https")], "https"),
            (&[(b"REQUEST_SCHEME", b"http")], "http"),
            (&[(b"HTTPS", b""), (b"REQUEST_SCHEME", b"HTTPS")], "https"),
        ];
        for (pairs, scheme) in rows {
            assert_eq!(
                build(&meta(pairs)).unwrap().url_scheme,
                *scheme,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn invalid_content_length_is_an_error() {
        for bad in [
            &b"-1"[..],
            b"abc",
            b"1.5",
            b"12 34",
            b"99999999999999999999999",
            b"+5",
        ] {
            let err = build(&meta(&[(b"CONTENT_LENGTH", bad)])).unwrap_err();
            assert!(matches!(err, RequestError::BadContentLength(_)), "{bad:?}");
        }
        let meta = meta(&[(b"CONTENT_LENGTH", b"42")]);
        let environ = build(&meta).unwrap();
        assert_eq!(environ.content_length, Some(42));
    }

    #[test]
    fn head_requests_are_flagged() {
        assert!(
            build(&meta(&[(b"REQUEST_METHOD", b"HEAD")]))
                .unwrap()
                .is_head
        );
        assert!(
            !build(&meta(&[(b"REQUEST_METHOD", b"GET")]))
                .unwrap()
                .is_head
        );
    }
}
