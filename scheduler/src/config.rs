//! The scheduler's configuration: `/etc/slipway/scheduler.toml`, overridden by flags and
//! `SLIPWAY_*` environment variables in the binary. Every field has a default that
//! suits a single-node install, so an empty file is a valid config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_common::config::{Check, ConfigError as CommonError};

use crate::raft::RaftConfig;

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
    /// HTTP listener: the fleet page, `/metrics`, `/healthz`, `/readyz` and the
    /// registry's token realm `/v2/token` (see [`HttpSettings`]).
    pub http_listen: SocketAddr,
    /// Raft log, vote, snapshots and build logs live here.
    pub data_dir: PathBuf,
    /// The fleet's internal registry and the grants for it.
    pub registry: RegistryConfig,
    /// How releases become Swarm services.
    pub deploy: DeployConfig,
    /// The router (Caddy) every app is reached through by host name.
    pub router: RouterSettings,
    /// How the leader judges its agents' liveness.
    pub agents: AgentsConfig,
    /// How builds are placed, and how long one may wait for a node.
    pub placement: PlacementConfig,
    /// How this member forms or joins a raft cluster.
    pub cluster: ClusterConfig,
    /// Raft timings.
    pub raft: RaftSettings,
    /// Certificates, join tokens and their lifetimes.
    pub tls: TlsSettings,
    /// Who may read the HTTP side, and whether it speaks TLS.
    pub http: HttpSettings,
    /// Bounds on what apps may ask for.
    pub apps: AppsConfig,
    /// How many finished builds the replicated state keeps.
    pub build_retention: BuildRetentionConfig,
    /// Build logs in `<data_dir>/logs`: kept by age and bytes, not written below a
    /// free-space floor (the raft store shares that disk).
    pub build_logs: slipway_common::build_logs::BuildLogSettings,
    /// The raft store's disk: the free-space floor below which new work is refused.
    pub storage: StorageConfig,
}

/// `[storage]`: the data dir's disk (see `raft::space`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Below this many free bytes on the data dir's filesystem, writes that add work
    /// (apps, builds, releases, config, secrets) are refused with the reason, before a
    /// raft append hits ENOSPC and stops this member; `/readyz` answers 503. 0 turns
    /// the guard off; otherwise at least [`MIN_STORAGE_FLOOR_BYTES`].
    pub min_free_bytes: u64,
}

/// `[storage] min_free_bytes` when unset: room for the bookkeeping still let through
/// (builds finishing, deploys recorded, deletes) and a snapshot or two.
pub const DEFAULT_STORAGE_FLOOR_BYTES: u64 = 256 << 20;
/// The smallest `[storage] min_free_bytes` other than 0: below it the guard would trip
/// too late to matter.
pub const MIN_STORAGE_FLOOR_BYTES: u64 = 1 << 20;

impl Default for StorageConfig {
    fn default() -> Self {
        Self { min_free_bytes: DEFAULT_STORAGE_FLOOR_BYTES }
    }
}

/// Bounds on what apps may ask for (`[apps]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppsConfig {
    /// Most tasks one app may run: bounds `slipway scale` and the manifest's `[run]
    /// replicas`. 1 to the manifest format's ceiling (1000).
    pub max_replicas: u32,
}

/// `[apps] max_replicas` when unset: a fleet of tens of nodes runs no app at 100 tasks,
/// so a typo (`scale shop 1000` for 10) is refused instead of flooding Swarm; a fleet
/// that needs more raises it, up to the manifest format's ceiling.
pub const DEFAULT_MAX_REPLICAS: u32 = 100;

impl Default for AppsConfig {
    fn default() -> Self {
        Self { max_replicas: DEFAULT_MAX_REPLICAS }
    }
}

impl AppsConfig {
    /// Refuses `replicas` (of the manifest's `field`, or a scale) over this fleet's bound,
    /// naming the bound and the key that raises it.
    pub fn check_replicas(&self, what: &str, replicas: u64) -> Result<(), String> {
        let max = self.max_replicas;
        if replicas > u64::from(max) {
            let ceiling = slipway_common::manifest::MAX_REPLICAS;
            return Err(format!(
                "{what} {replicas} is over this fleet's bound of {max} replicas per app; an operator \
                 raises it with `max_replicas` under [apps] in scheduler.toml (at most {ceiling})"
            ));
        }
        Ok(())
    }
}

/// `[build_retention]`: finished builds beyond the last N per app leave the replicated
/// state (their releases stay). The leader replicates its value; keep it equal on every
/// member, or the value of whichever member leads wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildRetentionConfig {
    /// Finished (pushed, failed, cancelled) builds kept per app, at least 1.
    pub finished_builds_per_app: u64,
}

impl Default for BuildRetentionConfig {
    fn default() -> Self {
        Self { finished_builds_per_app: crate::state::DEFAULT_KEEP_FINISHED_BUILDS }
    }
}

/// The HTTP side on `http_listen` (`http/`): TLS and who may read the fleet page and
/// `/metrics`. `/healthz`, `/readyz` and `/v2/token` stay open to anyone who reaches the
/// port (the token realm checks grants itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Serve HTTPS with a certificate from the cluster CA (needs TLS on gRPC, i.e. not
    /// `tls.insecure`). Off by default: the registry's token realm is on this listener,
    /// and an engine reaches an `https://` realm only if it trusts the cluster CA
    /// (README, "The HTTP side").
    pub tls: bool,
    /// Names and addresses clients use to reach `http_listen`, put in its certificate
    /// besides `scheduler.slipway.internal` and `http_listen`'s own IP address
    /// (e.g. `["sched-1.example.net", "10.0.0.11"]`).
    pub tls_names: Vec<String>,
    /// The fleet page and `/metrics` answer only a caller with the bearer token (as
    /// `Authorization: Bearer TOKEN`, or as the password of HTTP Basic auth, for
    /// browsers) or, with `tls`, a client certificate of an operator or a scheduler.
    /// `false` is allowed only when `http_listen` is a loopback address.
    pub require_auth: bool,
    /// The bearer token's file (default `<data_dir>/http-token`, made with a random
    /// token at first start, mode 0600). Give every member the same file to scrape
    /// them all with one token.
    pub token_file: Option<PathBuf>,
    /// The URL git hosts reach this HTTP side at (e.g. `https://deploy.example.com`,
    /// a proxy in front of the members): `slipway apps webhook` prints
    /// `<public_url>/hooks/APP`. Unset: built from `http_listen` (and `tls`), which a
    /// git host outside the fleet's network rarely reaches.
    pub public_url: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { tls: false, tls_names: Vec::new(), require_auth: true, token_file: None, public_url: None }
    }
}

/// Mutual TLS on the gRPC listener (control API, agent sessions, raft), with the
/// cluster CA in `<data_dir>/pki/` (see `security/pki.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Development only: plain-text gRPC, nobody checked. Said loudly at start.
    pub insecure: bool,
    /// For founding members of a static cluster: a directory holding the shared CA
    /// (`ca.pem`, `ca.key`, made by `slipway-scheduler init-ca DIR`), copied into the
    /// data dir at first start.
    pub ca_dir: Option<PathBuf>,
    /// Lifetime of agent certificates; agents renew when a third is left.
    pub agent_cert_validity_secs: u64,
    /// Lifetime of operator certificates (`slipway cluster admin-cert`).
    pub admin_cert_validity_secs: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            insecure: false,
            ca_dir: None,
            agent_cert_validity_secs: 30 * 24 * 3600,
            admin_cert_validity_secs: 365 * 24 * 3600,
        }
    }
}

/// How a scheduler whose data dir holds no cluster yet comes to belong to one. Once the
/// data dir holds a cluster, this is ignored: a scheduler never initialises twice.
///
/// - neither key (default): found a one-member cluster (the first scheduler);
/// - `join = true`: wait to be added by `slipway cluster join ADDR`, run against the
///   cluster (`ADDR` is this scheduler's advertised address);
/// - `members = [...]`: found the cluster together with the members listed (every
///   member lists the same set, this one included), for unattended installs.
///
/// A joining scheduler (with TLS) first gets the cluster CA: `join_token` (from
/// `slipway cluster token scheduler`) presented to a member at one of `join_via`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Wait to be added by `slipway cluster join` instead of founding a cluster.
    pub join: bool,
    /// The founding members of a static cluster (the same list on each of them).
    pub members: Vec<MemberConfig>,
    /// A scheduler join token, to fetch the cluster CA and a certificate when joining.
    pub join_token: Option<String>,
    /// Members to fetch the certificate from when joining (`host:port`).
    pub join_via: Vec<String>,
}

/// One founding member of a statically configured cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The member's raft id (its `node_id`).
    pub id: u64,
    /// Its advertised gRPC address, `host:port`.
    pub addr: String,
}

/// Raft timing and log compaction. The defaults elect a new leader that accepts writes
/// about a second after the old one dies on a LAN; raise the election timeouts on
/// slow or distant links (they must stay well above the round trip).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// How often the leader heartbeats its followers.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time between these two starts an
    /// election.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// Take a snapshot after this many log entries; older entries are purged.
    pub snapshot_every: u64,
    /// Entries kept behind the snapshot, so slightly lagging members catch up from
    /// the log rather than by snapshot.
    pub keep_logs: u64,
    /// How long the leader waits for a joining scheduler (`slipway cluster join`) to
    /// catch up with its log before it takes the newcomer out again and fails the join.
    pub join_catch_up_secs: u64,
}

/// Longest `raft.join_catch_up_secs`: an hour (the `cluster join` call waits that long).
pub const MAX_JOIN_CATCH_UP_SECS: u64 = 3600;

/// Longest `registry.pull_grant_validity_secs`: a year (the leader renews grants anyway).
pub const MAX_PULL_GRANT_VALIDITY_SECS: u64 = 365 * 24 * 3600;

/// The fleet's internal registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `host:port` every engine of the fleet can push to and pull from, and the leader
    /// reads (plain HTTP) to check each build's image before recording its release.
    pub addr: String,
    /// How long the pull-only registry grant stored with each Swarm service stays
    /// valid (with TLS on); the leader renews it when a third is left, without
    /// restarting tasks (see `security/registry_auth.rs`).
    pub pull_grant_validity_secs: u64,
    /// Which images each app's repository keeps (`[registry.retention]`).
    pub retention: RetentionConfig,
    /// When and how the leader collects what retention lets go (`[registry.gc]`).
    pub gc: GcConfig,
}

/// `[registry.retention]`: the policy of every app, and per-app overrides in
/// `[registry.retention.apps.NAME]` (see `state::retention`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Keep the images of the last N releases (distinct images; at least 1).
    pub keep_last: u32,
    /// Also keep every image deployed within this many days (0: off).
    pub keep_days: u32,
    /// Per-app overrides; a key left out takes the value above.
    pub apps: std::collections::BTreeMap<String, AppRetention>,
}

/// `[registry.retention.apps.NAME]`: one app's overrides.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRetention {
    /// Overrides `keep_last`.
    pub keep_last: Option<u32>,
    /// Overrides `keep_days`.
    pub keep_days: Option<u32>,
}

/// `[registry.gc]`: the leader's registry garbage collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run a GC this often (0: only `slipway gc`).
    pub interval_secs: u64,
    /// The registry's own garbage collector, as argv, run on the leader's host after the
    /// manifest deletes, e.g. `["docker-registry", "garbage-collect",
    /// "/etc/docker/registry/config.yml"]`. Empty: manifests only; blob space comes back
    /// when the operator runs it.
    pub command: Vec<String>,
    /// How long garbage-collect may run before it is killed (what it deleted stays
    /// deleted; unreferenced blobs left over go at the next run).
    pub command_timeout_secs: u64,
    /// How long a GC waits for running builds to finish (pushes must not run during
    /// garbage-collect) before it skips this round.
    pub quiet_timeout_secs: u64,
}

impl RetentionConfig {
    /// The policy of `app`.
    pub fn policy(&self, app: &str) -> crate::state::retention::Policy {
        let o = self.apps.get(app).cloned().unwrap_or_default();
        crate::state::retention::Policy {
            keep_last: o.keep_last.unwrap_or(self.keep_last).max(1),
            keep_days: o.keep_days.unwrap_or(self.keep_days),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { keep_last: crate::state::retention::DEFAULT_KEEP_LAST, keep_days: 0, apps: Default::default() }
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval_secs: 24 * 3600,
            command: Vec::new(),
            command_timeout_secs: 3600,
            quiet_timeout_secs: 600,
        }
    }
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
/// How a service's port is published.
pub enum PublishModeConfig {
    /// Through Swarm's routing mesh (needs IPVS).
    Ingress,
    /// On the host of each task.
    Host,
}

/// The router: a Caddy service `<stack>_router` on every node, publishing `http_port`,
/// serving each app at `<app>.<domain>` and its manifest's `run.domains`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    /// Apps answer at `<app>.<domain>`; point a wildcard DNS record `*.<domain>` at the
    /// router nodes (`localhost` needs none: `*.localhost` is the local host).
    pub domain: String,
    /// Host port the router publishes on every node (its container listens on 80).
    pub http_port: u16,
    /// The router's image: Caddy 2.6 or later, with `caddy` on the `PATH`.
    /// `packaging/router-image.sh` builds `slipway.invalid/router:latest` from Debian's
    /// caddy on a node; the reserved `.invalid` registry name makes Swarm's pull attempt
    /// fail at once and run the node's own image, instead of asking Docker Hub. On a fleet,
    /// build it on every node or push it to the fleet's registry and name it here.
    pub image: String,
}

/// Shared storage for the apps' `persist` directories.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsConfig {
    /// The NFS server's address.
    pub addr: String,
    /// The exported directory under which each app's `persist` paths live.
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
            router: RouterSettings::default(),
            agents: AgentsConfig::default(),
            placement: PlacementConfig::default(),
            cluster: ClusterConfig::default(),
            raft: RaftSettings::default(),
            tls: TlsSettings::default(),
            http: HttpSettings::default(),
            apps: AppsConfig::default(),
            build_retention: BuildRetentionConfig::default(),
            build_logs: Default::default(),
            storage: StorageConfig::default(),
        }
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        let raft = RaftConfig::default();
        Self {
            heartbeat_ms: raft.heartbeat_interval.as_millis() as u64,
            election_timeout_min_ms: raft.election_timeout_min.as_millis() as u64,
            election_timeout_max_ms: raft.election_timeout_max.as_millis() as u64,
            snapshot_every: raft.snapshot_every,
            keep_logs: raft.keep_logs,
            join_catch_up_secs: 60,
        }
    }
}

impl RaftSettings {
    /// The raft module's settings.
    pub fn to_raft_config(&self) -> RaftConfig {
        RaftConfig {
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            election_timeout_min: Duration::from_millis(self.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(self.election_timeout_max_ms),
            snapshot_every: self.snapshot_every,
            keep_logs: self.keep_logs,
            ..RaftConfig::default()
        }
    }
}

impl RegistryConfig {
    /// `<addr>/<app>`: the only repository a build of `app` pushes to, and the one its
    /// releases run from.
    pub fn repository(&self, app: &str) -> String {
        format!("{}/{app}", self.addr)
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:5000".into(),
            pull_grant_validity_secs: 30 * 24 * 3600,
            retention: RetentionConfig::default(),
            gc: GcConfig::default(),
        }
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

impl Default for RouterSettings {
    fn default() -> Self {
        Self { domain: "localhost".into(), http_port: 80, image: "slipway.invalid/router:latest".into() }
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
        Ok(slipway_common::config::load(path)?)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(slipway_common::config::parse(text)?)
    }

    fn validate_cluster(&self) -> Result<(), CommonError> {
        let members = &self.cluster.members;
        if self.node_id == 0 {
            return Err(CommonError::invalid(
                "node_id must be at least 1 (0 means \"none\" in cluster status)",
            ));
        }
        if let Some(token) = &self.cluster.join_token {
            let token: slipway_proto::tls::JoinToken =
                token.parse().map_err(|e| CommonError::invalid(format!("cluster.join_token: {e}")))?;
            if token.role != slipway_proto::tls::Role::Scheduler {
                return Err(CommonError::invalid(
                    "cluster.join_token is an agent token; a scheduler joins with `slipway cluster token scheduler`"
                        ,
                ));
            }
            if !self.cluster.join || self.cluster.join_via.is_empty() {
                return Err(CommonError::invalid(
                    "cluster.join_token needs join = true and join_via = [\"host:port\" of a member]",
                ));
            }
        }
        if self.tls.agent_cert_validity_secs < 30 || self.tls.admin_cert_validity_secs < 30 {
            return Err(CommonError::invalid("tls.*_cert_validity_secs must be at least 30 seconds"));
        }
        if members.is_empty() {
            return Ok(());
        }
        if self.cluster.join {
            return Err(CommonError::invalid(
                "cluster.join and cluster.members exclude each other: list the founding members \
                 on every founding scheduler, or set join = true on a scheduler added later",
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut addrs = std::collections::BTreeSet::new();
        for m in members {
            if m.id == 0 {
                return Err(CommonError::invalid("cluster.members: id 0 is not a valid member id"));
            }
            if !ids.insert(m.id) {
                return Err(CommonError::invalid(format!("cluster.members: id {} is listed twice", m.id)));
            }
            if !addrs.insert(m.addr.as_str()) {
                return Err(CommonError::invalid(format!(
                    "cluster.members: address {} is listed twice",
                    m.addr
                )));
            }
            if m.addr.is_empty() || m.addr.contains('/') {
                return Err(CommonError::invalid(format!(
                    "cluster.members: address {:?} of member {} must be host:port",
                    m.addr, m.id
                )));
            }
        }
        let Some(me) = members.iter().find(|m| m.id == self.node_id) else {
            return Err(CommonError::invalid(format!(
                "cluster.members does not list this scheduler (node_id = {}); every founding member \
                 lists all of them, itself included",
                self.node_id
            )));
        };
        if let Some(advertise) = &self.advertise {
            if *advertise != me.addr {
                return Err(CommonError::invalid(format!(
                    "advertise = {advertise:?} but cluster.members lists member {} at {:?}; make them the same",
                    self.node_id, me.addr
                )));
            }
        }
        Ok(())
    }

    /// The founding members of a statically configured cluster (empty otherwise).
    pub fn static_members(&self) -> std::collections::BTreeMap<u64, String> {
        self.cluster.members.iter().map(|m| (m.id, m.addr.clone())).collect()
    }

    /// The address this scheduler advertises, if the config says (the bound address
    /// otherwise).
    pub fn advertised(&self) -> Option<String> {
        self.advertise
            .clone()
            .or_else(|| self.cluster.members.iter().find(|m| m.id == self.node_id).map(|m| m.addr.clone()))
    }

    /// The HTTP bearer token's file: `http.token_file`, or `<data_dir>/http-token`.
    pub fn http_token_file(&self) -> PathBuf {
        self.http.token_file.clone().unwrap_or_else(|| self.data_dir.join("http-token"))
    }

    /// Where a git host posts pushes for `app` (`http.public_url`, else `http_listen`).
    pub fn webhook_url(&self, app: &str) -> String {
        let base = match &self.http.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("{}://{}", if self.http.tls { "https" } else { "http" }, self.http_listen),
        };
        format!("{base}/hooks/{app}")
    }

    fn validate_http(&self) -> Result<(), CommonError> {
        if let Some(url) = &self.http.public_url {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            let fine = rest.is_some_and(|r| {
                !r.is_empty()
                    && !r.starts_with('/')
                    && !r.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#'))
            }) && url.len() <= slipway_proto::validate::MAX_REPO_URL_BYTES;
            if !fine {
                return Err(CommonError::invalid(format!(
                    "http.public_url {url:?} must be an http:// or https:// URL without query or fragment, \
                     such as \"https://deploy.example.com\" (git hosts post to <public_url>/hooks/APP)"
                )));
            }
        }
        if !self.http.require_auth && !self.http_listen.ip().is_loopback() {
            return Err(CommonError::invalid(format!(
                "http.require_auth = false is allowed only on a loopback http_listen, and {} is not: anyone \
                 who reaches it would read the fleet's nodes, addresses and build errors; keep require_auth \
                 (callers present the token in {}) or listen on 127.0.0.1",
                self.http_listen,
                self.http_token_file().display()
            )));
        }
        if self.http.tls && self.tls.insecure {
            return Err(CommonError::invalid(
                "http.tls needs the cluster CA, and tls.insecure = true runs without one: turn one of them off",
            ));
        }
        for name in &self.http.tls_names {
            let dns_label = |l: &str| {
                (1..=63).contains(&l.len())
                    && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            let dns_name = name.len() <= 253 && name.split('.').all(dns_label);
            if name.parse::<std::net::IpAddr>().is_err() && !dns_name {
                return Err(CommonError::invalid(format!(
                    "http.tls_names: {name:?} is neither an IP address nor a lowercase DNS name such as \
                     sched-1.example.net"
                )));
            }
        }
        Ok(())
    }

    /// How long a node may stay silent before it is Down.
    pub fn down_after(&self) -> Duration {
        Duration::from_secs(self.agents.down_after_secs)
    }
}

/// A config that cannot be used: the file, the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("bad scheduler config: {0}")]
pub struct ConfigError(#[from] slipway_common::config::ConfigError);

impl Check for SchedulerConfig {
    /// Checks the values TOML types alone cannot.
    fn check(&self) -> Result<(), CommonError> {
        let ceiling = slipway_common::manifest::MAX_REPLICAS;
        if !(1..=ceiling).contains(&self.apps.max_replicas) {
            return Err(CommonError::invalid(format!(
                "apps.max_replicas = {} is out of range: 1 to {ceiling} (the manifest format's ceiling; \
                 the default is {DEFAULT_MAX_REPLICAS})",
                self.apps.max_replicas
            )));
        }
        if self.build_retention.finished_builds_per_app == 0 {
            return Err(CommonError::invalid(format!(
                "build_retention.finished_builds_per_app must be at least 1 (the default is {})",
                crate::state::DEFAULT_KEEP_FINISHED_BUILDS
            )));
        }
        self.build_logs.check("build_logs").map_err(CommonError::invalid)?;
        let floor = self.storage.min_free_bytes;
        if floor != 0 && floor < MIN_STORAGE_FLOOR_BYTES {
            return Err(CommonError::invalid(format!(
                "storage.min_free_bytes = {floor} is too small: 0 (off) or at least {MIN_STORAGE_FLOOR_BYTES} \
                 (1 MiB; the default is {DEFAULT_STORAGE_FLOOR_BYTES}, 256 MiB)"
            )));
        }
        if self.registry.addr.is_empty() || self.registry.addr.contains('/') {
            return Err(CommonError::invalid(format!(
                "registry.addr {:?} must be host:port, e.g. \"127.0.0.1:5000\"",
                self.registry.addr
            )));
        }
        let validity = self.registry.pull_grant_validity_secs;
        if !(30..=MAX_PULL_GRANT_VALIDITY_SECS).contains(&validity) {
            return Err(CommonError::invalid(format!(
                "registry.pull_grant_validity_secs = {validity} is out of range: 30 to {MAX_PULL_GRANT_VALIDITY_SECS} \
                 (one year; the default is {}, 30 days)",
                RegistryConfig::default().pull_grant_validity_secs
            )));
        }
        let retention = &self.registry.retention;
        if retention.keep_last == 0 {
            return Err(CommonError::invalid(
                "registry.retention.keep_last = 0: at least 1 (the current release is always kept; the default is 10)",
            ));
        }
        for (app, o) in &retention.apps {
            if slipway_proto::validate::app_name(app).is_err() {
                return Err(CommonError::invalid(format!(
                    "registry.retention.apps.{app}: {app:?} is not an app name (a DNS label)"
                )));
            }
            if o.keep_last == Some(0) {
                return Err(CommonError::invalid(format!(
                    "registry.retention.apps.{app}.keep_last = 0: at least 1"
                )));
            }
        }
        if self.registry.gc.command.first().is_some_and(|c| c.trim().is_empty()) {
            return Err(CommonError::invalid(
                "registry.gc.command: the first element must be the program, e.g. \"docker-registry\"",
            ));
        }
        if slipway_proto::validate::app_name(&self.deploy.stack).is_err() {
            return Err(CommonError::invalid(format!(
                "deploy.stack {:?} must be a DNS label (lowercase letters, digits, '-')",
                self.deploy.stack
            )));
        }
        if self.router.domain != "localhost" {
            slipway_proto::validate::host_name(&self.router.domain)
                .map_err(|e| CommonError::invalid(format!("router.domain: {}", e.reason)))?;
        }
        if self.router.http_port == 0 {
            return Err(CommonError::invalid("router.http_port must be 1 to 65535 (80 on a real fleet)"));
        }
        if self.router.image.is_empty()
            || self.router.image.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(CommonError::invalid(format!(
                "router.image {:?} must be an image reference such as slipway.invalid/router:latest",
                self.router.image
            )));
        }
        self.validate_cluster()?;
        self.validate_http()?;
        self.raft.to_raft_config().to_openraft().map_err(|e| CommonError::invalid(format!("[raft]: {e}")))?;
        if !(1..=MAX_JOIN_CATCH_UP_SECS).contains(&self.raft.join_catch_up_secs) {
            return Err(CommonError::invalid(format!(
                "raft.join_catch_up_secs = {} must be between 1 and {MAX_JOIN_CATCH_UP_SECS} (seconds a \
                 joining scheduler has to catch up; the default is 60)",
                self.raft.join_catch_up_secs
            )));
        }
        if self.agents.down_after_secs < u64::from(self.agents.report_interval_secs) * 2 {
            return Err(CommonError::invalid(
                "agents.down_after_secs must be at least twice agents.report_interval_secs",
            ));
        }
        Ok(())
    }
}

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
    fn retention_has_defaults_and_per_app_overrides() {
        let c = SchedulerConfig::parse("").unwrap();
        assert_eq!(c.registry.retention.policy("shop").to_string(), "keep_last = 10");
        assert_eq!(c.registry.gc.interval_secs, 86400);
        assert!(c.registry.gc.command.is_empty());
        let c = SchedulerConfig::parse(
            "[registry.retention]\nkeep_last = 5\n[registry.retention.apps.shop]\nkeep_days = 7\n\
             [registry.gc]\ncommand = [\"docker-registry\", \"garbage-collect\", \"/c.yml\"]\n",
        )
        .unwrap();
        assert_eq!(c.registry.retention.policy("shop").to_string(), "keep_last = 5, keep_days = 7");
        assert_eq!(c.registry.retention.policy("blog").to_string(), "keep_last = 5");
        let zero = SchedulerConfig::parse("[registry.retention.apps.shop]\nkeep_last = 0\n").unwrap_err();
        assert!(zero.to_string().contains("registry.retention.apps.shop.keep_last = 0"), "{zero}");
        let typo = SchedulerConfig::parse("[registry.retention]\nkeep = 5\n").unwrap_err();
        assert!(typo.to_string().contains("keep"), "{typo}");
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

    const THREE: &str = "[cluster]\nmembers = [{ id = 1, addr = \"a:1\" }, { id = 2, addr = \"b:2\" }, \
                         { id = 3, addr = \"c:3\" }]\n";

    #[test]
    fn static_members_must_list_this_node_once_and_agree_with_advertise() {
        let c = SchedulerConfig::parse(&format!("node_id = 2\n{THREE}")).unwrap();
        assert_eq!(c.static_members().len(), 3);
        assert_eq!(c.advertised().as_deref(), Some("b:2"));

        let e = SchedulerConfig::parse(&format!("node_id = 4\n{THREE}")).unwrap_err();
        assert!(e.to_string().contains("node_id = 4"), "{e}");
        let e = SchedulerConfig::parse(&format!("node_id = 2\nadvertise = \"x:9\"\n{THREE}")).unwrap_err();
        assert!(e.to_string().contains("make them the same"), "{e}");
        let dup = "[cluster]\nmembers = [{ id = 1, addr = \"a:1\" }, { id = 1, addr = \"b:2\" }]\n";
        let e = SchedulerConfig::parse(dup).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = SchedulerConfig::parse(&format!("{THREE}join = true\n")).unwrap_err();
        assert!(e.to_string().contains("exclude each other"), "{e}");
    }

    #[test]
    fn the_packaged_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../packaging/config/scheduler.toml");
        let c = SchedulerConfig::parse(text).unwrap();
        let d = SchedulerConfig::default();
        assert_eq!(toml::to_string(&c).unwrap(), toml::to_string(&d).unwrap());
    }

    #[test]
    fn the_http_side_is_open_only_on_loopback() {
        let c = SchedulerConfig::parse("").unwrap();
        assert!(c.http.require_auth && !c.http.tls);
        assert_eq!(c.http_token_file(), PathBuf::from("/var/lib/slipway/scheduler/http-token"));
        SchedulerConfig::parse("[http]\nrequire_auth = false\n").unwrap();
        let e = SchedulerConfig::parse("http_listen = \"10.0.0.1:7401\"\n[http]\nrequire_auth = false\n")
            .unwrap_err();
        assert!(e.to_string().contains("only on a loopback http_listen"), "{e}");
        let e = SchedulerConfig::parse("[http]\ntls = true\n[tls]\ninsecure = true\n").unwrap_err();
        assert!(e.to_string().contains("http.tls needs the cluster CA"), "{e}");
        let e = SchedulerConfig::parse("[http]\ntls_names = [\"bad name\"]\n").unwrap_err();
        assert!(e.to_string().contains("http.tls_names"), "{e}");
        let c = SchedulerConfig::parse("[http]\npublic_url = \"https://deploy.example.com/\"\n").unwrap();
        assert_eq!(c.webhook_url("shop"), "https://deploy.example.com/hooks/shop");
        assert_eq!(SchedulerConfig::default().webhook_url("shop"), "http://127.0.0.1:7401/hooks/shop");
        let e = SchedulerConfig::parse("[http]\npublic_url = \"ftp://x\"\n").unwrap_err();
        assert!(e.to_string().contains("http.public_url"), "{e}");
        SchedulerConfig::parse("[http]\ntls = true\ntls_names = [\"sched-1\", \"10.0.0.11\", \"::1\"]\n")
            .unwrap();
    }

    #[test]
    fn raft_timings_are_checked() {
        let c = SchedulerConfig::parse("[raft]\nheartbeat_ms = 120\n").unwrap();
        assert_eq!(c.raft.to_raft_config().heartbeat_interval, Duration::from_millis(120));
        let e = SchedulerConfig::parse("[raft]\nheartbeat_ms = 2000\n").unwrap_err();
        assert!(e.to_string().contains("[raft]"), "{e}");
        assert_eq!(SchedulerConfig::parse("").unwrap().raft.join_catch_up_secs, 60);
        assert_eq!(
            SchedulerConfig::parse("[raft]\njoin_catch_up_secs = 5\n").unwrap().raft.join_catch_up_secs,
            5
        );
        for bad in ["0", "3601"] {
            let e = SchedulerConfig::parse(&format!("[raft]\njoin_catch_up_secs = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("raft.join_catch_up_secs"), "{e}");
        }
    }

    #[test]
    fn the_storage_floor_defaults_to_256_mib_and_is_off_or_at_least_1_mib() {
        assert_eq!(SchedulerConfig::parse("").unwrap().storage.min_free_bytes, 256 << 20);
        assert_eq!(
            SchedulerConfig::parse("[storage]\nmin_free_bytes = 0\n").unwrap().storage.min_free_bytes,
            0
        );
        SchedulerConfig::parse("[storage]\nmin_free_bytes = 1048576\n").unwrap();
        let e = SchedulerConfig::parse("[storage]\nmin_free_bytes = 4096\n").unwrap_err().to_string();
        assert!(e.contains("storage.min_free_bytes = 4096 is too small: 0 (off) or at least 1048576"), "{e}");
        let e = SchedulerConfig::parse("[storage]\nmin_free = 1\n").unwrap_err().to_string();
        assert!(e.contains("min_free"), "{e}");
    }

    #[test]
    fn max_replicas_defaults_to_100_and_is_checked() {
        let c = SchedulerConfig::parse("").unwrap();
        assert_eq!(c.apps.max_replicas, DEFAULT_MAX_REPLICAS);
        assert!(c.apps.check_replicas("replicas", 100).is_ok());
        let err = c.apps.check_replicas("replicas", 101).unwrap_err();
        assert!(err.starts_with("replicas 101 is over this fleet's bound of 100 replicas per app"), "{err}");
        assert_eq!(SchedulerConfig::parse("[apps]\nmax_replicas = 500\n").unwrap().apps.max_replicas, 500);
        for bad in ["0", "1001"] {
            let err =
                SchedulerConfig::parse(&format!("[apps]\nmax_replicas = {bad}\n")).unwrap_err().to_string();
            assert!(err.contains(&format!("apps.max_replicas = {bad} is out of range: 1 to 1000")), "{err}");
        }
    }
}
