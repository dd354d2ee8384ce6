//! Where the CLI finds its schedulers: `--config`, else `SLIPWAY_CONFIG`, else
//! `.slipway/config.toml` in the current directory, else `~/.config/slipway/config.toml`;
//! `--scheduler` / `SLIPWAY_ADDR` override the addresses.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The CLI's config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// Scheduler addresses (`host:port`); any member will do, the CLI finds the leader.
    #[serde(default)]
    pub schedulers: Vec<String>,
}

impl CliConfig {
    /// Parses a config file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The config file to read, by the documented precedence; None if there is none.
pub fn discover(flag: Option<&Path>, env: Option<&str>, cwd: &Path, home: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_path_buf());
    }
    if let Some(path) = env.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let local = cwd.join(".slipway/config.toml");
    if local.exists() {
        return Some(local);
    }
    let user = home?.join(".config/slipway/config.toml");
    user.exists().then_some(user)
}

/// Resolves the scheduler addresses to use.
pub fn resolve(flag_config: Option<&Path>, flag_addrs: &[String]) -> Result<Vec<String>, String> {
    if !flag_addrs.is_empty() {
        return Ok(flag_addrs.to_vec());
    }
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let env = std::env::var("SLIPWAY_CONFIG").ok();
    let Some(path) = discover(flag_config, env.as_deref(), &cwd, home.as_deref()) else {
        return Err("no scheduler address: pass --scheduler HOST:PORT, set SLIPWAY_ADDR, or write \
                    .slipway/config.toml (schedulers = [\"127.0.0.1:7400\"])"
            .into());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config = CliConfig::parse(&text, &path)?;
    if config.schedulers.is_empty() {
        return Err(format!("{} lists no schedulers (schedulers = [\"host:port\"])", path.display()));
    }
    Ok(config.schedulers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_flag_env_local_user() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("proj");
        let home = dir.path().join("home");
        std::fs::create_dir_all(cwd.join(".slipway")).unwrap();
        std::fs::create_dir_all(home.join(".config/slipway")).unwrap();
        let flag = Path::new("/x/flag.toml");
        assert_eq!(discover(Some(flag), Some("/e.toml"), &cwd, Some(&home)).unwrap(), flag);
        assert_eq!(discover(None, Some("/e.toml"), &cwd, Some(&home)).unwrap(), Path::new("/e.toml"));
        assert_eq!(discover(None, None, &cwd, Some(&home)), None);
        std::fs::write(home.join(".config/slipway/config.toml"), "").unwrap();
        assert_eq!(
            discover(None, None, &cwd, Some(&home)).unwrap(),
            home.join(".config/slipway/config.toml")
        );
        std::fs::write(cwd.join(".slipway/config.toml"), "").unwrap();
        assert_eq!(discover(None, None, &cwd, Some(&home)).unwrap(), cwd.join(".slipway/config.toml"));
    }

    #[test]
    fn bad_files_name_the_key() {
        let err = CliConfig::parse("scheduler = 1", Path::new("c.toml")).unwrap_err();
        assert!(err.contains("scheduler"), "{err}");
        let ok = CliConfig::parse("schedulers = [\"a:1\", \"b:2\"]", Path::new("c.toml")).unwrap();
        assert_eq!(ok.schedulers.len(), 2);
    }
}
