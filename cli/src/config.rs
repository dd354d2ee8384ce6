//! Where the CLI finds its schedulers: `--config`, else `SLIPWAY_CONFIG`, else
//! `.slipway/config.toml` in the current directory, else `~/.config/slipway/config.toml`;
//! `--scheduler` / `SLIPWAY_ADDR` override the addresses. The same file names the
//! operator's credentials (`[tls]`), paths relative to the file:
//!
//! ```toml
//! schedulers = ["10.0.0.1:7400", "10.0.0.2:7400"]
//! [tls]
//! ca = "tls/ca.pem"
//! cert = "tls/cert.pem"
//! key = "tls/key.pem"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slipway_proto::tls::{Credentials, Transport};

/// The CLI's config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// Scheduler addresses (`host:port`); any member will do, the CLI finds the leader.
    #[serde(default)]
    pub schedulers: Vec<String>,
    #[serde(default)]
    pub tls: CliTls,
}

/// The operator's certificate (from `slipway cluster admin-cert` or
/// `slipway-scheduler admin-cert`), or `insecure = true` for a scheduler without TLS.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CliTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
}

impl CliTls {
    /// How to reach the schedulers; relative paths are from `base` (the file's directory).
    pub fn transport(&self, base: &Path, file: &Path) -> Result<Transport, String> {
        if self.insecure {
            return Ok(Transport::Insecure);
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.key) else {
            return Err(format!(
                "{} names no credentials: add [tls] ca, cert and key (an operator certificate from \
                 `slipway cluster admin-cert NAME` or, on a scheduler, `slipway-scheduler admin-cert NAME`)",
                file.display()
            ));
        };
        let creds = Credentials::load(&base.join(ca), &base.join(cert), &base.join(key))
            .map_err(|e| format!("{}: [tls]: {e}", file.display()))?;
        Ok(Transport::Tls(std::sync::Arc::new(creds)))
    }
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

/// Resolves the scheduler addresses to use and how to reach them.
pub fn resolve(
    flag_config: Option<&Path>,
    flag_addrs: &[String],
) -> Result<(Vec<String>, Transport), String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read the current directory: {e}"))?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let env = std::env::var("SLIPWAY_CONFIG").ok();
    let Some(path) = discover(flag_config, env.as_deref(), &cwd, home.as_deref()) else {
        return Err("no CLI config: write .slipway/config.toml with schedulers = [\"host:port\"] and the \
                    operator credentials under [tls] (see `slipway cluster admin-cert`)"
            .into());
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config = CliConfig::parse(&text, &path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let transport = config.tls.transport(base, &path)?;
    let addrs = if flag_addrs.is_empty() { config.schedulers } else { flag_addrs.to_vec() };
    if addrs.is_empty() {
        return Err(format!("{} lists no schedulers (schedulers = [\"host:port\"])", path.display()));
    }
    Ok((addrs, transport))
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
