//! The environ builder (`environ::build`): arbitrary meta-variables, names
//! and values of any bytes, repeated names, CONTENT_LENGTH, HTTPS,
//! SCRIPT_NAME/PATH_INFO, HTTP_TRANSFER_ENCODING... It must refuse or
//! build, never panic, in time linear in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Names that steer the builder, picked by a byte.
const NAMES: &[&[u8]] = &[
    b"CONTENT_LENGTH",
    b"CONTENT_TYPE",
    b"HTTPS",
    b"REQUEST_SCHEME",
    b"SCRIPT_NAME",
    b"PATH_INFO",
    b"REQUEST_URI",
    b"QUERY_STRING",
    b"REQUEST_METHOD",
    b"SERVER_PORT",
    b"HTTP_HOST",
    b"HTTP_TRANSFER_ENCODING",
    b"HTTP_PROXY",
    b"SERVER_PROTOCOL",
];

fuzz_target!(|data: &[u8]| {
    // [selector, value length, value...]: a selector below NAMES.len() is a
    // known name; otherwise the next value is a name of its own.
    let mut meta: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut at = 0;
    let mut free_name: Option<Vec<u8>> = None;
    while at + 2 <= data.len() {
        let (selector, len) = (usize::from(data[at]), usize::from(data[at + 1]));
        at += 2;
        let value = data[at..(at + len).min(data.len())].to_vec();
        at += value.len();
        match (selector < NAMES.len(), free_name.take()) {
            (true, _) => meta.push((NAMES[selector].to_vec(), value)),
            (false, Some(name)) => meta.push((name, value)),
            (false, None) => free_name = Some(value),
        }
    }
    let meta: wsgi_gateway::core::meta::MetaVariables = meta.into_iter().collect();
    if let Ok(environ) = wsgi_gateway::core::environ::build(&meta) {
        let _ = environ.content_length;
        let _ = environ.is_head;
    }
});
