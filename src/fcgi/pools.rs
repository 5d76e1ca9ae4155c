//! Pools (`[pool.NAME]` tables in `--config`, PHP-FPM's pools): the file
//! and the files its `include` names read into one [`Plan`] per pool, each
//! checked as the command line's would be ([`super::cli`]), then checked
//! together (each its own sockets). `super::start` serves them and reads
//! them again on HUP.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;

use super::cli::{Cli, Plan, config_arg, flags_of, read_table};

/// `--config FILE` with `[pool.NAME]` tables (and `include = "DIR/*.toml"`
/// files holding more of them): each pool's plan. A pool's settings are
/// the file's top-level ones (defaults for every pool), then its own
/// table's, then the command line's (which win); `WSGI_*` variables are
/// not read for pools. `None`: not a pools file.
pub fn read(args: &[std::ffi::OsString]) -> anyhow::Result<Option<Vec<(String, Plan)>>> {
    let Some((file, at, count)) = config_arg(args) else {
        return Ok(None);
    };
    let file = PathBuf::from(file);
    let table = read_table(&file)?;
    if !table.contains_key("pool") && !table.contains_key("include") {
        return Ok(None);
    }
    let defaults = flags_of(&table, &file)?;
    let mut tables: Vec<(String, toml::Table, PathBuf)> = Vec::new();
    collect_pools(&table, &file, &mut tables)?;
    let includes = match table.get("include") {
        None => vec![],
        Some(toml::Value::String(one)) => vec![one.clone()],
        Some(toml::Value::Array(many)) => many
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("--config {}: `include`: not strings", file.display()))?,
        Some(_) => anyhow::bail!("--config {}: `include`: not a string", file.display()),
    };
    for pattern in includes {
        let base = file.parent().unwrap_or(Path::new("."));
        for path in glob(&base.join(&pattern))? {
            let included = read_table(&path)?;
            if let Some(key) = included.keys().find(|k| *k != "pool") {
                anyhow::bail!(
                    "{}: `{key}`: an included file holds [pool.NAME] tables only",
                    path.display()
                );
            }
            collect_pools(&included, &path, &mut tables)?;
        }
    }
    if tables.is_empty() {
        anyhow::bail!("--config {}: no [pool.NAME] table", file.display());
    }
    let own: Vec<std::ffi::OsString> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 0 && !(at..at + count).contains(i))
        .map(|(_, a)| a.clone())
        .collect();
    let mut plans: Vec<(String, Plan)> = Vec::new();
    for (name, pool, from) in tables {
        let what = format!("pool {name} ({})", from.display());
        let mut argv: Vec<std::ffi::OsString> = vec![args[0].clone()];
        argv.extend(defaults.iter().map(Into::into));
        argv.extend(flags_of(&pool, &from)?.into_iter().map(Into::into));
        argv.extend(own.iter().cloned());
        let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let mut plan = cli.serve.plan().with_context(|| what.clone())?;
        if plan.options.binds.is_empty() {
            anyhow::bail!("{what}: no `bind` (each pool listens on its own sockets)");
        }
        if plan.options.idle_exit.is_some() {
            anyhow::bail!("{what}: `idle-exit` is for a single process, not a pool");
        }
        if plan.options.workers == 0 {
            plan.options.workers = 1;
        }
        for (other, earlier) in &plans {
            if let Some(bind) = plan
                .options
                .binds
                .iter()
                .find(|b| earlier.options.binds.contains(b))
            {
                anyhow::bail!("{what}: {bind:?} is pool {other}'s already");
            }
        }
        plan.options.pool = Some(name.clone());
        plans.push((name, plan));
    }
    Ok(Some(plans))
}

/// The `[pool.NAME]` tables of `table` (read from `file`), checked.
fn collect_pools(
    table: &toml::Table,
    file: &Path,
    into: &mut Vec<(String, toml::Table, PathBuf)>,
) -> anyhow::Result<()> {
    let Some(pools) = table.get("pool") else {
        return Ok(());
    };
    let Some(pools) = pools.as_table() else {
        anyhow::bail!(
            "{}: `pool` is not a table of [pool.NAME] tables",
            file.display()
        );
    };
    for (name, pool) in pools {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            anyhow::bail!(
                "{}: [pool.{name}]: a pool name is letters, digits, '-', '_' and '.'",
                file.display()
            );
        }
        let Some(pool) = pool.as_table() else {
            anyhow::bail!("{}: pool.{name} is not a table", file.display());
        };
        if into.iter().any(|(n, _, _)| n == name) {
            anyhow::bail!("{}: [pool.{name}] is defined twice", file.display());
        }
        into.push((name.clone(), pool.clone(), file.to_path_buf()));
    }
    Ok(())
}

/// The files matching `pattern`, whose last component may hold `*` and
/// `?` (PHP-FPM's `include = /etc/php-fpm.d/*.conf`), sorted.
fn glob(pattern: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let Some(name) = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        anyhow::bail!("include {}: no file name", pattern.display());
    };
    if !name.contains(['*', '?']) {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("include {}", pattern.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| wildcard(&name, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// Whether `text` matches `pattern` (`*`: any run, `?`: any one char).
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn include_patterns_match_as_a_shell_does() {
        assert!(wildcard("*.toml", "www.toml"));
        assert!(wildcard("*.toml", ".toml"));
        assert!(!wildcard("*.toml", "www.toml.bak"));
        assert!(wildcard("site-?.toml", "site-a.toml"));
        assert!(!wildcard("site-?.toml", "site-ab.toml"));
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxbyy"));
    }
}
