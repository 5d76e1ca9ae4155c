//! `wsgi-cgi`'s command line: the flags (clap, with the settings table as
//! help), the query words a web server turned into argv stripped first
//! (RFC 3875 §4.4), then the three layers merged ([`settings`]). No Python
//! here: the launcher (`bin/wsgi-cgi.rs`) uses it before it decides whether
//! Python is needed at all, and the cold path (`wsgi-fcgi`'s internal
//! `__cgi` command) parses the same argv the same way.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::cgi::config::{self, Layer, Settings};
use crate::cgi::{EXIT_TABLE, refuse};
use crate::python::startup::AppArgs;

const SCRIPT_HELP: &str =
    "Script mode: a file starting with `#!/path/to/wsgi-cgi` whose body is TOML
(the script keys above); the kernel passes it as SCRIPT. Relative paths in it are
relative to the script's directory.";

/// The settings table as help text: flag, environment variable, script key.
fn after_help() -> String {
    let mut text =
        String::from("Settings (precedence: command line, then script file, then environment):\n");
    for s in config::SETTINGS {
        text.push_str(&format!(
            "  {:<14} env {:<18} script key `{}`\n",
            s.flag, s.env, s.key
        ));
    }
    format!("{text}\n{SCRIPT_HELP}\n\n{EXIT_TABLE}")
}

/// Serve a Python WSGI application to a web server over CGI (RFC 3875).
#[derive(Parser)]
#[command(name = "wsgi-cgi", version)]
struct Cli {
    #[command(flatten)]
    app: AppArgs,
    /// A request body over BYTES (declared, or chunked as it arrives) gets 413
    #[arg(long, value_name = "BYTES")]
    max_body_size: Option<u64>,
    /// Relay to a resident wsgi-fcgi of this app (started on demand); Python starts here only if that cannot serve
    #[arg(long)]
    warm: bool,
    /// Warm mode's private directory [default: ~/.wsgi-gateway]
    #[arg(long, value_name = "DIR")]
    warm_dir: Option<PathBuf>,
    /// App threads of the resident responder [default: 4]
    #[arg(long, value_name = "N")]
    warm_threads: Option<u32>,
    /// Seconds without a request before the resident responder exits [default: 300]
    #[arg(long, value_name = "S")]
    warm_idle: Option<u64>,
    /// A script file (TOML after a #! line) with the settings
    #[arg(value_name = "SCRIPT")]
    script: Option<PathBuf>,
}

/// Same file by device and inode (argv may use another spelling of the path).
fn same_file(a: &OsStr, b: &OsStr) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The settings `args` (argv, program name first) and the environment
/// give. `Err`: the request was refused (500 sent) or `--help`/`--version`
/// printed; the exit status to use.
pub fn settings(args: Vec<OsString>) -> Result<Settings, u8> {
    let (gateway, query, script) = (
        std::env::var_os("GATEWAY_INTERFACE"),
        std::env::var_os("QUERY_STRING"),
        std::env::var_os("SCRIPT_FILENAME"),
    );
    let cgi_argv = config::CgiArgv {
        gateway_interface: gateway.as_deref(),
        query_string: query.as_deref(),
        script_filename: script.as_deref(),
    };
    let args = config::strip_query_words(args, &cgi_argv, same_file)
        .map_err(|message| refuse(&message) as u8)?;
    let matches = Cli::command()
        .after_help(after_help())
        .get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let script = cli
        .script
        .map(|p| Layer::from_script(&p).map(|l| (l, p)))
        .transpose()
        .map_err(|err| refuse(&err.to_string()) as u8)?;
    let command_line = Layer {
        app: cli.app.app,
        venv: cli.app.venv,
        chdir: cli.app.chdir,
        pythonpath: (!cli.app.pythonpath.is_empty()).then_some(cli.app.pythonpath),
        max_body_size: cli.max_body_size,
        warm: cli.warm.then_some(true),
        warm_dir: cli.warm_dir,
        warm_threads: cli.warm_threads,
        warm_idle: cli.warm_idle,
    };
    Ok(config::merge(
        command_line,
        script,
        Layer::from_env(|k| std::env::var_os(k)),
    ))
}

/// `wsgi-cgi`'s whole run (bin/wsgi-cgi.rs): the settings; in warm mode
/// the relay to the app's resident responder (no Python in this process);
/// otherwise, or when the relay cannot serve, the cold path
/// ([`exec_cold`]). Returns the exit status.
pub fn launch(args: Vec<OsString>) -> u8 {
    let settings = match settings(args.clone()) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    // Started by a web server with no app (under suEXEC, SetEnv never
    // arrives): refused here, before anything is started, with the reason.
    let by_server = std::env::var_os("GATEWAY_INTERFACE").is_some();
    if settings.app.is_none()
        && let Err(message) = crate::python::appspec::choose(None, Path::new("."), by_server)
    {
        return refuse(&message) as u8;
    }
    let (mut prefix, mut measured) = (None, None);
    if settings.warm.enabled {
        match crate::cgi::warm::handle(&settings) {
            crate::cgi::warm::Relayed::Done(exit) => return exit as u8,
            crate::cgi::warm::Relayed::Cold {
                why,
                prefix: read,
                measured: length,
            } => {
                crate::log_warn!("warm mode: serving this request cold: {why}");
                (prefix, measured) = (read, length);
            }
        }
    }
    exec_cold(args, prefix, measured)
}

/// The internal command of `wsgi-fcgi` that serves one CGI request cold
/// (Python in-process): `wsgi-fcgi __cgi ARGV...`, `ARGV` being
/// `wsgi-cgi`'s own argv, program name first.
pub const COLD_COMMAND: &str = "__cgi";

/// Serve the request cold: replace this process by `wsgi-fcgi __cgi`
/// (which links libpython; `wsgi-cgi` does not) with the same argv,
/// environment and descriptors. `prefix`: the start of the body a warm
/// relay had read already, passed on in a memfd named by
/// [`crate::cgi::BODY_FD_ENV`]; `measured`: the length of a chunked body
/// read whole. Returns only if the exec failed (500 sent).
pub fn exec_cold(
    args: Vec<OsString>,
    prefix: Option<Box<dyn std::io::Read + Send>>,
    measured: Option<u64>,
) -> u8 {
    use std::os::unix::process::CommandExt;
    let fcgi = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("wsgi-fcgi"),
        Err(e) => return refuse(&format!("cannot find this binary: {e}")) as u8,
    };
    let mut command = std::process::Command::new(&fcgi);
    command.arg(COLD_COMMAND).args(args);
    if let Some(length) = measured {
        command.env("CONTENT_LENGTH", length.to_string());
    }
    // (Kept open until the exec: the new process inherits it.)
    let _memfd = match prefix {
        Some(mut prefix) => match body_memfd(&mut *prefix) {
            Ok(fd) => {
                use std::os::fd::AsRawFd;
                command.env(crate::cgi::BODY_FD_ENV, fd.as_raw_fd().to_string());
                Some(fd)
            }
            Err(e) => return refuse(&format!("cannot keep the request body: {e}")) as u8,
        },
        None => None,
    };
    let err = command.exec();
    refuse(&format!(
        "cannot run {} (wsgi-cgi serves without warm mode through the wsgi-fcgi installed beside it): {err}",
        fcgi.display()
    )) as u8
}

/// `data` in a memfd (inherited across exec), rewound.
fn body_memfd(data: &mut dyn std::io::Read) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Seek;
    let fd = nix::sys::memfd::memfd_create(c"wsgi-cgi-body", nix::sys::memfd::MFdFlags::empty())?;
    let mut file = std::fs::File::from(fd);
    std::io::copy(data, &mut file)?;
    file.rewind()?;
    Ok(file.into())
}
