//! `wsgi-cgi`: serve one request of a Python WSGI app as a CGI program.
//! argv/env → settings → [`wsgi_gateway::cgi::run`] → exit status.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use wsgi_gateway::cgi::config::{self, Layer};
use wsgi_gateway::cgi::{self, EXIT_TABLE};
use wsgi_gateway::python::startup::AppArgs;

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
            "  {:<14} env {:<16} script key `{}`\n",
            s.flag, s.env, s.key
        ));
    }
    format!("{text}\n{SCRIPT_HELP}\n\n{EXIT_TABLE}")
}

/// Serve a Python WSGI application to a web server over CGI (RFC 3875).
#[derive(Parser)]
#[command(version)]
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

fn main() -> ExitCode {
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
    let args = match config::strip_query_words(std::env::args_os().collect(), &cgi_argv, same_file)
    {
        Ok(args) => args,
        Err(message) => return ExitCode::from(cgi::refuse(&message) as u8),
    };
    let matches = Cli::command()
        .after_help(after_help())
        .get_matches_from(args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let script = match cli
        .script
        .map(|p| Layer::from_script(&p).map(|l| (l, p)))
        .transpose()
    {
        Ok(script) => script,
        Err(err) => return ExitCode::from(cgi::refuse(&err.to_string()) as u8),
    };
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
    let settings = config::merge(
        command_line,
        script,
        Layer::from_env(|k| std::env::var_os(k)),
    );
    ExitCode::from(cgi::run(&settings) as u8)
}
