//! The layers that feed the flag table ([`super::Serve`]): a `--config`
//! file's settings, then `WSGI_<FLAG>` variables, then the command line —
//! each turned into flags placed before the next, so that the last one
//! given wins; and what the result asks for ([`Invocation`]).

use std::path::Path;

use anyhow::Context;
use clap::Parser;

use super::{Cli, Command, Plan, RequestArgs};

/// Parse `args` (argv): the config file's flags, then the environment's,
/// then the command line's own.
pub fn parse(args: Vec<std::ffi::OsString>) -> anyhow::Result<Cli> {
    let (args, cli_start) = with_config_file(args)?;
    let args = with_environment(args, cli_start);
    Ok(Cli::parse_from(args))
}

/// `--config FILE`: the file's settings become flags placed before the
/// command line's own (which therefore win: the last occurrence counts).
/// Its keys are the long flag names — the flag table (`super::Serve`) is the one
/// source of settings — with TOML values: `workers = 4`, `bind =
/// ["unix:/run/app.sock"]`, `forward-stderr = true`. An unknown key is an
/// unknown flag, and an error.
/// Returns the arguments and where the command line's own begin.
fn with_config_file(
    args: Vec<std::ffi::OsString>,
) -> anyhow::Result<(Vec<std::ffi::OsString>, usize)> {
    let Some((file, at, count)) = config_arg(&args) else {
        return Ok((args, 1));
    };
    let table = read_table(Path::new(&file))?;
    let flags = flags_of(&table, Path::new(&file))?;
    let mut out: Vec<std::ffi::OsString> = vec![args[0].clone()];
    out.extend(flags.into_iter().map(Into::into));
    let cli_start = out.len();
    out.extend(
        args.into_iter()
            .enumerate()
            .filter(|(i, _)| *i != 0 && !(at..at + count).contains(i))
            .map(|(_, a)| a),
    );
    Ok((out, cli_start))
}

/// `--config FILE` (or `--config=FILE`) of a serve command line: the file,
/// and where its one or two arguments are.
pub(in crate::fcgi) fn config_arg(
    args: &[std::ffi::OsString],
) -> Option<(std::ffi::OsString, usize, usize)> {
    if args.get(1).is_some_and(|a| a == "request") {
        return None;
    }
    match args.iter().position(|a| a == "--config") {
        Some(i) => Some((args.get(i + 1)?.clone(), i, 2)),
        None => {
            let i = args
                .iter()
                .position(|a| a.to_string_lossy().starts_with("--config="))?;
            let text = args[i].to_string_lossy().into_owned();
            Some((text["--config=".len()..].into(), i, 1))
        }
    }
}

pub(in crate::fcgi) fn read_table(file: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("--config {}", file.display()))?;
    toml::from_str(&text).with_context(|| format!("--config {}", file.display()))
}

/// A table's settings as flags (`pool` and `include` aside: [`pools`]).
pub(in crate::fcgi) fn flags_of(table: &toml::Table, file: &Path) -> anyhow::Result<Vec<String>> {
    use clap::CommandFactory;
    let command = Cli::command();
    let mut flags = Vec::new();
    for (key, value) in table {
        if key == "pool" || key == "include" {
            continue;
        }
        if key == "config" {
            anyhow::bail!(
                "--config {}: `config` cannot be set in a config file",
                file.display()
            );
        }
        let values = match value {
            toml::Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for value in values {
            match value {
                toml::Value::Boolean(true) => flags.push(format!("--{key}")),
                // (`preload = false`: `--no-preload`, over a default of on.)
                toml::Value::Boolean(false) if has_flag(&command, &format!("no-{key}")) => {
                    flags.push(format!("--no-{key}"))
                }
                toml::Value::Boolean(false) => {}
                toml::Value::String(text) => flags.push(format!("--{key}={text}")),
                toml::Value::Integer(n) => flags.push(format!("--{key}={n}")),
                toml::Value::Float(x) => flags.push(format!("--{key}={x}")),
                other => anyhow::bail!(
                    "--config {}: `{key}`: a {} is not a string, number, boolean or list of them",
                    file.display(),
                    other.type_str()
                ),
            }
        }
    }
    Ok(flags)
}

/// Whether `--NAME` is one of `command`'s flags.
fn has_flag(command: &clap::Command, name: &str) -> bool {
    command.get_arguments().any(|a| a.get_long() == Some(name))
}

/// What a `wsgi-fcgi` command line asks for.
pub enum Invocation {
    /// `wsgi-fcgi request …`.
    Request(RequestArgs),
    /// Serve one app.
    Serve(Box<Plan>),
    /// Serve the pools of a `--config` file with `[pool.NAME]` tables;
    /// the argv, to read them again on HUP.
    Pools(Vec<(String, Plan)>, Vec<std::ffi::OsString>),
}

/// Parse argv: a `--config` file with pools gives [`Invocation::Pools`].
pub fn invocation(args: Vec<std::ffi::OsString>) -> anyhow::Result<Invocation> {
    if let Some(pools) = crate::fcgi::pools::read(&args)? {
        return Ok(Invocation::Pools(pools, args));
    }
    let cli = parse(args)?;
    Ok(match cli.command {
        Some(Command::Request(args)) => Invocation::Request(args),
        None => Invocation::Serve(Box::new(cli.serve.plan()?)),
    })
}

/// Every setting may also come from `WSGI_<FLAG>` (upper case, `-` → `_`:
/// `WSGI_MAX_REQUESTS=1000`): such variables become flags placed after the
/// config file's and before the command line's, so the command line wins
/// over the environment, which wins over the file. An empty variable counts
/// as unset (web servers pass "" for "not configured"); `WSGI_BIND` and
/// `WSGI_PYTHONPATH` take several values (`,` and `:` separated); a switch
/// is on for `1`, `true`, `yes` or `on`.
fn with_environment(args: Vec<std::ffi::OsString>, cli_start: usize) -> Vec<std::ffi::OsString> {
    use clap::CommandFactory;
    if args.get(1).is_some_and(|a| a == "request") {
        return args;
    }
    let command = Cli::command();
    let mut flags: Vec<std::ffi::OsString> = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "config" | "check" | "help" | "version") {
            continue;
        }
        let name = format!("WSGI_{}", long.to_ascii_uppercase().replace('-', "_"));
        let Some(value) = std::env::var_os(&name).filter(|v| !v.is_empty()) else {
            continue;
        };
        let value = value.to_string_lossy().into_owned();
        if !arg.get_action().takes_values() {
            match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => flags.push(format!("--{long}").into()),
                // (WSGI_PRELOAD=0: `--no-preload`, over a default of on.)
                "0" | "false" | "no" | "off" if has_flag(&command, &format!("no-{long}")) => {
                    flags.push(format!("--no-{long}").into())
                }
                _ => {}
            }
            continue;
        }
        let separator = match long {
            "pythonpath" => Some(':'),
            "bind" => Some(','),
            _ => None,
        };
        let values: Vec<&str> = match separator {
            Some(sep) => value.split(sep).filter(|v| !v.is_empty()).collect(),
            None => vec![value.as_str()],
        };
        for value in values {
            flags.push(format!("--{long}={value}").into());
        }
    }
    if flags.is_empty() {
        return args;
    }
    // After argv[0] and any config-file flags, before the command line's own.
    let split = cli_start.clamp(1, args.len().max(1));
    let mut out: Vec<std::ffi::OsString> = args[..split].to_vec();
    out.extend(flags);
    out.extend(args[split..].iter().cloned());
    out
}
