//! `doze serve --config doze.toml`: every `doze serve` flag can be a key of a TOML file, with
//! its long name (`proxy-listen`, or `proxy_listen`). Flags on the command line win, then the
//! `DOZE_*` environment, then the file, then the defaults. The file's settings are turned into
//! flags before clap parses the command line, so they are validated exactly as flags are, and
//! `--help` documents them.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::CommandFactory;

/// `argv` with the config file's settings added as flags, when `serve` is given one (`--config`
/// or `DOZE_CONFIG`); `argv` unchanged otherwise.
pub fn apply(argv: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return Ok(argv);
    }
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("the config file {} is not valid TOML", path.display()))?;
    if let Some(warning) = secrets_exposed(&path, &table) {
        // Logging is not set up yet.
        eprintln!("doze: warning: {warning}");
    }
    let cli = super::Cli::command();
    let serve = cli
        .find_subcommand("serve")
        .context("the serve command is missing")?;
    let mut out = argv.clone();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            bail!(
                "unknown setting '{key}' in {}: the keys are the long flags of `doze serve` (see `doze serve --help`)",
                path.display()
            );
        };
        if given_on_command_line(&argv, &long) {
            continue;
        }
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        match (value, takes_value) {
            (toml::Value::Boolean(true), false) => out.push(format!("--{long}").into()),
            (toml::Value::Boolean(false), false) => {}
            (toml::Value::String(s), true) => out.push(format!("--{long}={s}").into()),
            (toml::Value::Integer(n), true) => out.push(format!("--{long}={n}").into()),
            (toml::Value::Float(f), true) => out.push(format!("--{long}={f}").into()),
            (toml::Value::Boolean(b), true) => out.push(format!("--{long}={b}").into()),
            (other, false) => bail!(
                "'{key}' in {} is a switch: give it true or false, not {other}",
                path.display()
            ),
            (other, true) => bail!(
                "'{key}' in {} must be a string or a number, not {other}",
                path.display()
            ),
        }
    }
    Ok(out)
}

/// Keys whose values are secrets (a token, or a DSN that may carry a password).
const SECRET_KEYS: [&str; 2] = ["admin-token", "db-dsn"];

/// A warning when the file holds a secret and other users may read it (doze refuses such a
/// token file; a config file is only warned about, as it usually holds no secret).
fn secrets_exposed(path: &std::path::Path, table: &toml::Table) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let key = table
        .keys()
        .find(|k| SECRET_KEYS.contains(&k.replace('_', "-").as_str()))?;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o077;
    (mode != 0).then(|| {
        format!(
            "{} holds '{key}' and other users may read it (group and other bits {mode:03o}); chmod 600 it, or move the secret to an environment file",
            path.display()
        )
    })
}

/// The file named by `--config FILE`, `--config=FILE` or `DOZE_CONFIG`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(2);
    while let Some(a) = args.next() {
        let a = a.to_str().unwrap_or("");
        if a == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("DOZE_CONFIG").map(PathBuf::from)
}

fn given_on_command_line(argv: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    argv.iter().skip(2).any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_file_with_a_secret_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("doze.toml");
        std::fs::write(&path, "admin_token = \"x\"\n").expect("write");
        let table: toml::Table = toml::from_str("admin_token = \"x\"").expect("toml");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let warning = secrets_exposed(&path, &table).expect("a warning");
        assert!(
            warning.contains("admin_token") && warning.contains("044"),
            "{warning}"
        );
        assert!(
            !warning.contains("\"x\""),
            "the secret is echoed: {warning}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(secrets_exposed(&path, &table), None);
        let harmless: toml::Table = toml::from_str("log-level = \"info\"").expect("toml");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(secrets_exposed(&path, &harmless), None);
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn settings_become_flags_below_the_command_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("doze.toml");
        std::fs::write(
            &file,
            "idle_timeout = \"7m\"\nwake-timeout = \"9s\"\nreuse_port = true\nmax-connections = 50\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = format!("--config={}", file.display());
        let out = apply(os(&["doze", "serve", &config, "--wake-timeout", "3s"]))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let out: Vec<String> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(out.contains(&"--idle-timeout=7m".to_owned()), "{out:?}");
        assert!(out.contains(&"--reuse-port".to_owned()), "{out:?}");
        assert!(out.contains(&"--max-connections=50".to_owned()), "{out:?}");
        assert!(
            !out.iter().any(|a| a == "--wake-timeout=9s"),
            "the flag wins: {out:?}"
        );
    }

    #[test]
    fn the_example_config_parses_as_serve_flags() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/doze.example.toml");
        let config = format!("--config={example}");
        let out = apply(os(&["doze", "serve", &config])).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(out.len() > 10, "{out:?}");
        if let Err(e) = <super::super::Cli as clap::Parser>::try_parse_from(&out) {
            panic!("{e}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("doze.toml");
        let config = format!("--config={}", file.display());
        std::fs::write(&file, "proxy_lisen = \"0.0.0.0:3306\"\n").unwrap_or_else(|e| panic!("{e}"));
        let err = apply(os(&["doze", "serve", &config])).expect_err("refused");
        assert!(format!("{err:#}").contains("proxy_lisen"), "{err:#}");
        std::fs::write(&file, "reuse-port = \"yes\"\n").unwrap_or_else(|e| panic!("{e}"));
        let err = apply(os(&["doze", "serve", &config])).expect_err("refused");
        assert!(format!("{err:#}").contains("switch"), "{err:#}");
        std::fs::write(&file, "not toml [").unwrap_or_else(|e| panic!("{e}"));
        assert!(apply(os(&["doze", "serve", &config])).is_err());
        // Other commands ignore --config.
        assert!(apply(os(&["doze", "version"])).is_ok());
    }
}
