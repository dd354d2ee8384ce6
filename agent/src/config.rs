//! The agent's configuration: `/etc/slipway/agent.toml`, overridden by flags and
//! `SLIPWAY_*` environment variables in the binary. An empty file is valid: every
//! field has a default for a node running next to a local scheduler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slipway_common::config::{Check, ConfigError as CommonError};

/// Where the agent looks for secret build arguments unless `build_secrets_dir` says
/// otherwise.
pub const DEFAULT_SECRETS_DIR: &str = "/etc/slipway/build-secrets";

/// Longest `push_retry_secs` accepted: a build does not wait on a registry for longer.
pub const MAX_PUSH_RETRY_SECS: u64 = 3600;

/// Everything `slipway-agent` needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Scheduler addresses (`host:port`); the agent follows leader hints between them.
    pub schedulers: Vec<String>,
    /// Node name shown to operators (default: the host name).
    pub name: Option<String>,
    /// Node id and agent bookkeeping live here.
    pub state_dir: PathBuf,
    /// Builds run in `<build_root>/<build_id>-<attempt>` on local disk.
    pub build_root: PathBuf,
    /// Engine API socket of this node's Docker engine.
    pub docker_socket: String,
    /// Builds run at the same time, at most.
    pub build_slots: u32,
    /// Whether `file://` repositories (on this node's disk) may be built.
    pub allow_file_repos: bool,
    /// Values of secret build arguments: `<build_secrets_dir>/<app>/<NAME>`, one line
    /// each, readable by the agent only (the build pipeline's `secrets` module).
    pub build_secrets_dir: PathBuf,
    /// CPU cores one build may use (0: no cap).
    pub build_cpu_limit: f64,
    /// Memory one build may use, in bytes (0: no cap).
    pub build_memory_limit_bytes: u64,
    /// Longest a clone may take.
    pub clone_timeout_secs: u64,
    /// How long a push keeps being retried (with backoff) while the registry is
    /// unreachable, before the build fails naming it (0: no retry; at most 3600).
    pub push_retry_secs: u64,
    /// Free bytes the build filesystem keeps: below it the agent reclaims slipway's own
    /// leftovers, and refuses new builds if that is not enough (the scheduler places
    /// them elsewhere). Keep it equal to the scheduler's `placement.min_free_bytes`.
    pub min_free_bytes: u64,
    /// Labels reported to the scheduler.
    pub labels: BTreeMap<String, String>,
    /// Where the agent serves its own `/metrics` (`host:port`; port 0 picks a free one;
    /// empty: no listener). Loopback by default: open it to the scraper's network only.
    pub metrics_listen: String,
    /// Join token (`slipway cluster token agent`), used once to get this agent's
    /// certificate into `<state_dir>/tls/`; later starts need it no more.
    pub join_token: Option<String>,
    /// Development only: plain-text gRPC to a scheduler running with `tls.insecure`.
    pub insecure: bool,
    /// `"auto"`: BuildKit through the engine unless the engine turned it off (then the
    /// classic builder); `"classic"`: always the classic builder (an escape hatch for a
    /// Dockerfile that BuildKit builds differently).
    pub builder: BuilderChoice,
    /// When the engine's build cache is pruned (`reclaim.rs`).
    pub reclaim: ReclaimSettings,
    /// Build logs in `<build_root>/logs`: kept by age and bytes, not written below a
    /// free-space floor.
    pub build_logs: slipway_common::build_logs::BuildLogSettings,
}

/// `[reclaim]`: the build cache watermarks. After every build and every `interval_secs`,
/// the agent measures the engine's BuildKit build cache (cache mounts included); above
/// the high watermark it removes slipway's leftovers (stale build dirs, superseded and
/// dangling slipway images) and prunes the build cache, least recently used first and
/// only what BuildKit calls reclaimable, down to the low watermark. The engine's build
/// cache is shared with whoever else builds on it: slipway prunes it only above the high
/// watermark (or below `min_free_bytes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReclaimSettings {
    /// Above this many bytes of build cache, a pass runs (0: never by size).
    pub build_cache_high_watermark_bytes: u64,
    /// A pass prunes the build cache down to this many bytes.
    pub build_cache_low_watermark_bytes: u64,
    /// How often the cache is measured besides after each build.
    pub interval_secs: u64,
}

impl Default for ReclaimSettings {
    fn default() -> Self {
        Self {
            build_cache_high_watermark_bytes: 20 << 30,
            build_cache_low_watermark_bytes: 10 << 30,
            interval_secs: 300,
        }
    }
}

/// Which builder the agent asks the engine for (`builder` in `agent.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuilderChoice {
    /// BuildKit, or the classic builder where the engine has BuildKit turned off.
    #[default]
    Auto,
    /// Always the classic builder.
    Classic,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            schedulers: vec!["127.0.0.1:7400".into()],
            name: None,
            state_dir: PathBuf::from("/var/lib/slipway/agent"),
            build_root: PathBuf::from("/var/lib/slipway/builds"),
            docker_socket: "/var/run/docker.sock".into(),
            build_slots: 2,
            allow_file_repos: true,
            build_secrets_dir: PathBuf::from(DEFAULT_SECRETS_DIR),
            build_cpu_limit: 0.0,
            build_memory_limit_bytes: 0,
            clone_timeout_secs: 600,
            push_retry_secs: 120,
            min_free_bytes: 2 << 30,
            labels: BTreeMap::new(),
            metrics_listen: "127.0.0.1:7402".into(),
            join_token: None,
            insecure: false,
            builder: BuilderChoice::Auto,
            reclaim: ReclaimSettings::default(),
            build_logs: Default::default(),
        }
    }
}

/// A config that cannot be used: the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("bad agent config: {0}")]
pub struct ConfigError(#[from] slipway_common::config::ConfigError);

impl AgentConfig {
    /// Reads a TOML config file; unknown keys and wrong types are errors naming the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(slipway_common::config::load(path)?)
    }

    /// Checks the values again (after flags and environment overrode some).
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(self.check()?)
    }

    /// Parses TOML text and checks the values.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(slipway_common::config::parse(text)?)
    }

    /// The name reported for this node.
    pub fn node_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "node".into())
        })
    }
}

impl Check for AgentConfig {
    /// Checks the values TOML types alone cannot.
    fn check(&self) -> Result<(), CommonError> {
        if self.schedulers.is_empty() {
            return Err(CommonError::invalid("schedulers must list at least one host:port"));
        }
        if self.build_slots == 0 {
            return Err(CommonError::invalid("build_slots must be at least 1"));
        }
        if !self.build_root.is_absolute() || !self.state_dir.is_absolute() {
            return Err(CommonError::invalid("build_root and state_dir must be absolute paths"));
        }
        if !self.build_secrets_dir.is_absolute() {
            return Err(CommonError::invalid(format!(
                "build_secrets_dir {:?} must be an absolute path",
                self.build_secrets_dir.display().to_string()
            )));
        }
        if self.build_cpu_limit < 0.0 {
            return Err(CommonError::invalid(
                "build_cpu_limit must be 0 (no cap) or a positive number of cores",
            ));
        }
        if self.push_retry_secs > MAX_PUSH_RETRY_SECS {
            return Err(CommonError::invalid(format!(
                "push_retry_secs ({}) must be at most {MAX_PUSH_RETRY_SECS} (an hour); 0 turns push retries off",
                self.push_retry_secs
            )));
        }
        let r = &self.reclaim;
        if r.build_cache_high_watermark_bytes > 0
            && r.build_cache_low_watermark_bytes > r.build_cache_high_watermark_bytes
        {
            return Err(CommonError::invalid(format!(
                "reclaim.build_cache_low_watermark_bytes ({}) must not exceed reclaim.build_cache_high_watermark_bytes ({})",
                r.build_cache_low_watermark_bytes, r.build_cache_high_watermark_bytes
            )));
        }
        if r.interval_secs == 0 {
            return Err(CommonError::invalid(
                "reclaim.interval_secs must be at least 1 (the default is 300)",
            ));
        }
        self.build_logs.check("build_logs").map_err(CommonError::invalid)?;
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(CommonError::invalid(format!(
                "metrics_listen {:?} must be an ip:port such as \"127.0.0.1:7402\" (or \"\" for no listener)",
                self.metrics_listen
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../packaging/config/agent.toml");
        let c = AgentConfig::parse(text).unwrap();
        assert_eq!(toml::to_string(&c).unwrap(), toml::to_string(&AgentConfig::default()).unwrap());
    }

    #[test]
    fn defaults_and_named_errors() {
        assert_eq!(AgentConfig::parse("").unwrap().build_slots, 2);
        assert!(AgentConfig::parse("build_slot = 3").unwrap_err().to_string().contains("build_slot"));
        assert!(AgentConfig::parse("build_slots = 0").unwrap_err().to_string().contains("build_slots"));
        assert!(AgentConfig::parse("build_root = \"rel\"").unwrap_err().to_string().contains("build_root"));
        assert!(AgentConfig::parse("build_secrets_dir = \"s\"")
            .unwrap_err()
            .to_string()
            .contains("build_secrets_dir \"s\" must be an absolute path"));
        assert!(AgentConfig::parse("metrics_listen = \"localhost\"")
            .unwrap_err()
            .to_string()
            .contains("metrics_listen"));
        assert_eq!(AgentConfig::parse("metrics_listen = \"\"").unwrap().metrics_listen, "");
        assert_eq!(AgentConfig::parse("metrics_listen = \"0.0.0.0:0\"").unwrap().metrics_listen, "0.0.0.0:0");
        assert_eq!(AgentConfig::parse("builder = \"classic\"").unwrap().builder, BuilderChoice::Classic);
        let err = AgentConfig::parse(
            "[reclaim]\nbuild_cache_high_watermark_bytes = 10\nbuild_cache_low_watermark_bytes = 20\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("build_cache_low_watermark_bytes (20) must not exceed"), "{err}");
        assert!(AgentConfig::parse("[build_logs]\ninterval_secs = 0\n")
            .unwrap_err()
            .to_string()
            .contains("build_logs.interval_secs"));
        assert_eq!(AgentConfig::parse("").unwrap().push_retry_secs, 120);
        assert_eq!(AgentConfig::parse("push_retry_secs = 0").unwrap().push_retry_secs, 0);
        assert_eq!(AgentConfig::parse("push_retry_secs = 3600").unwrap().push_retry_secs, 3600);
        let err = AgentConfig::parse("push_retry_secs = 3601").unwrap_err().to_string();
        assert!(err.contains("push_retry_secs (3601) must be at most 3600"), "{err}");
        let err = AgentConfig::parse("builder = \"buildx\"").unwrap_err().to_string();
        assert!(err.contains("builder") && err.contains("classic"), "{err}");
    }
}
