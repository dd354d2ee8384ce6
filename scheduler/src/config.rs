//! The scheduler's configuration: `/etc/slipway/scheduler.toml`, overridden by flags and
//! `SLIPWAY_*` environment variables in the binary. Every field has a default that
//! suits a single-node install, so an empty file is a valid config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `slipway-scheduler` needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// This member's raft id (unique in the cluster, never reused).
    pub node_id: u64,
    /// gRPC listener: control API, agent sessions and raft.
    pub listen: SocketAddr,
    /// Address other schedulers, agents and clients use to reach `listen`
    /// (default: `listen`, or the bound address when the port is 0).
    pub advertise: Option<String>,
    /// HTTP listener: `/healthz`, `/readyz`, `/metrics`.
    pub http_listen: SocketAddr,
    /// Raft log, vote, snapshots and build logs live here.
    pub data_dir: PathBuf,
    pub registry: RegistryConfig,
    pub deploy: DeployConfig,
    pub agents: AgentsConfig,
    pub placement: PlacementConfig,
}

/// The fleet's internal registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `host:port` every engine of the fleet can push to and pull from.
    pub addr: String,
}

/// How releases become Swarm services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// Stack namespace: services are `<stack>_<app>`.
    pub stack: String,
    /// Engine API socket of a Swarm manager.
    pub docker_socket: String,
    /// `ingress` (routing mesh, for real fleets) or `host` (publish on the node running
    /// the task; needed where the kernel lacks IPVS).
    pub publish_mode: PublishModeConfig,
    /// How long a deploy may take to converge before it is called failed.
    pub converge_timeout_secs: u64,
    /// Where `persist` directories live: local volumes unless an NFS server is set.
    pub nfs: Option<NfsConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishModeConfig {
    Ingress,
    Host,
}

/// Shared storage for the apps' `persist` directories.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsConfig {
    pub addr: String,
    pub export_root: String,
}

/// Agent sessions and liveness.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// How often agents report.
    pub report_interval_secs: u32,
    /// A node that has not reported for this long is Down and loses its builds.
    pub down_after_secs: u64,
}

/// Placement policy knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// A node needs at least this much free space on its build filesystem.
    pub min_free_bytes: u64,
    /// A build no node can take for this long fails with the reasons.
    pub queue_timeout_secs: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:7400".parse().expect("valid literal"),
            advertise: None,
            http_listen: "127.0.0.1:7401".parse().expect("valid literal"),
            data_dir: PathBuf::from("/var/lib/slipway/scheduler"),
            registry: RegistryConfig::default(),
            deploy: DeployConfig::default(),
            agents: AgentsConfig::default(),
            placement: PlacementConfig::default(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { addr: "127.0.0.1:5000".into() }
    }
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            stack: "slipway".into(),
            docker_socket: "/var/run/docker.sock".into(),
            publish_mode: PublishModeConfig::Ingress,
            converge_timeout_secs: 180,
            nfs: None,
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self { report_interval_secs: 3, down_after_secs: 15 }
    }
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self { min_free_bytes: 2 << 30, queue_timeout_secs: 600 }
    }
}

impl SchedulerConfig {
    /// Reads a TOML config file; unknown keys and wrong types are errors naming the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.registry.addr.is_empty() || self.registry.addr.contains('/') {
            return Err(ConfigError(format!(
                "registry.addr {:?} must be host:port, e.g. \"127.0.0.1:5000\"",
                self.registry.addr
            )));
        }
        if slipway_proto::validate::app_name(&self.deploy.stack).is_err() {
            return Err(ConfigError(format!(
                "deploy.stack {:?} must be a DNS label (lowercase letters, digits, '-')",
                self.deploy.stack
            )));
        }
        if self.agents.down_after_secs < u64::from(self.agents.report_interval_secs) * 2 {
            return Err(ConfigError(
                "agents.down_after_secs must be at least twice agents.report_interval_secs".into(),
            ));
        }
        Ok(())
    }

    /// How long a node may stay silent before it is Down.
    pub fn down_after(&self) -> Duration {
        Duration::from_secs(self.agents.down_after_secs)
    }
}

/// A config that cannot be used, with the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("bad scheduler config: {0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_a_valid_single_node_config() {
        let c = SchedulerConfig::parse("").unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.deploy.stack, "slipway");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = SchedulerConfig::parse("[deploy]\nstak = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("stak"), "{e}");
        let e = SchedulerConfig::parse("[deploy]\nstack = \"Bad_Stack\"\n").unwrap_err();
        assert!(e.to_string().contains("deploy.stack"), "{e}");
        let e = SchedulerConfig::parse("[deploy]\npublish_mode = \"mesh\"\n").unwrap_err();
        assert!(e.to_string().contains("publish_mode"), "{e}");
    }
}
