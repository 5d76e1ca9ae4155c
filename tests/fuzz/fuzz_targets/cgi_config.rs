//! The CGI configuration: the argv words Apache makes of a query string
//! (`config::strip_query_words`, with the query and SCRIPT_FILENAME from the
//! input), a script file's TOML (`Layer` as `from_script` parses it), the
//! environment layer, and their merge. Refuse or merge, never panic;
//! argv words are only ever taken away.
#![no_main]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use wsgi_gateway::cgi::config::{self, CgiArgv, Layer};

fuzz_target!(|data: &[u8]| {
    // Four parts separated by 0xff: argv words (split on 0xfe), the query
    // string, SCRIPT_FILENAME, the script file's text.
    let mut parts = data.split(|&b| b == 0xff);
    let argv = parts.next().unwrap_or_default();
    let query = parts.next().unwrap_or_default();
    let script = parts.next().unwrap_or_default();
    let toml_text = parts.next().unwrap_or_default();
    let mut args: Vec<OsString> = vec![OsString::from("/usr/lib/cgi-bin/wsgi-cgi")];
    args.extend(
        argv.split(|&b| b == 0xfe)
            .filter(|w| !w.is_empty())
            .map(|w| OsStr::from_bytes(w).to_os_string()),
    );
    let cgi = CgiArgv {
        gateway_interface: Some(OsStr::new("CGI/1.1")),
        query_string: Some(OsStr::from_bytes(query)),
        script_filename: Some(OsStr::from_bytes(script)),
    };
    let given = args.len();
    if let Ok(kept) = config::strip_query_words(args, &cgi, |a, b| a == b) {
        // Words are only ever taken away, never made up.
        assert!(kept.len() <= given);
        assert_eq!(kept[0], OsStr::new("/usr/lib/cgi-bin/wsgi-cgi"));
    }
    let script_layer = std::str::from_utf8(toml_text)
        .ok()
        .and_then(|text| toml::from_str::<Layer>(text).ok());
    let env = Layer::from_env(|name| match name {
        "WSGI_APP" => Some(OsStr::from_bytes(query).to_os_string()),
        "WSGI_MAX_BODY_SIZE" => Some(OsStr::from_bytes(script).to_os_string()),
        _ => None,
    });
    let settings = config::merge(
        Layer::default(),
        script_layer.map(|l| (l, std::path::PathBuf::from("/srv/site/app.cgi"))),
        env,
    );
    if let Some(app) = &settings.app {
        let _ =
            wsgi_gateway::python::appspec::AppSpec::parse(app, std::path::Path::new("/srv/site"));
    }
});
