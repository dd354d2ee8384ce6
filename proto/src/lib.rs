//! # slipway-proto
//!
//! slipway's wire protocol, split by audience as in `slipway/v1/`:
//! - `types.proto`: messages every audience shares (`App`, `Build`, `Release`, `NodeReport`, …);
//! - `agent.proto`: the agent ⇄ scheduler session;
//! - `control.proto`: the operator API (the CLI is one client);
//! - `raft.proto`: scheduler ⇄ scheduler raft RPCs;
//! - `enroll.proto`: certificates for members (joining with a token, renewing).
//!
//! [`tls`] says who may call which service.
//!
//! Domain types and their conversions live in the crates that own them (`convert.rs`).
#![forbid(unsafe_code)]

/// Generated code for package `slipway.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("slipway.v1");
}

pub use v1::*;

impl std::fmt::Debug for v1::RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin").field("username", &self.username).finish_non_exhaustive()
    }
}

mod csr;
pub mod tls;
pub mod validate;

/// The router's contract between the scheduler (which runs Caddy and renders its config)
/// and the agents (which load it through each node's admin socket).
pub mod router {
    /// The volume holding a stack's router admin socket on each node.
    pub fn admin_volume(stack: &str) -> String {
        format!("{stack}_router_admin")
    }
    /// The admin socket's file name in that volume.
    pub const ADMIN_SOCKET: &str = "admin.sock";
    /// `@id` of the handler that answers the routes' version.
    pub const VERSION_ID: &str = "slipway_routes";
    /// The Host of admin requests: Caddy 2.6 checks it, and on a UNIX socket allows
    /// only an empty one unless the config's `admin.origins` names others.
    pub const ADMIN_ORIGIN: &str = "slipway-agent";
}

/// gRPC metadata keys slipway puts on its errors: part of the wire contract, so they
/// live here and nowhere else.
pub mod metadata {
    /// On a "not the leader" error from the control API or the agent session service:
    /// the leader's address (`host:port`), empty while none is known. Clients retry
    /// elsewhere when they see it.
    pub const LEADER_HINT: &str = "slipway-leader";
    /// On a raft RPC a follower could not forward: the leader's advertised address.
    pub const RAFT_LEADER_ADDR: &str = "slipway-leader-addr";
    /// On a forwarded write the leader could not commit for lack of a quorum.
    pub const RAFT_NO_QUORUM: &str = "slipway-no-quorum";
    /// On a write refused because a scheduler's data dir is below its free-space floor
    /// (`RESOURCE_EXHAUSTED`): from the control API, and from the leader to a follower
    /// that forwarded the write, which answers its client with the same refusal.
    pub const NO_SPACE: &str = "slipway-no-space";
}

/// `12.3 GiB`-style sizes for messages (both the scheduler and the agent name sizes).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Most changed paths [`changed_paths_text`] names; the rest are counted.
pub const CHANGED_PATHS_SHOWN: usize = 10;

/// The cache doctor's changed paths for a line of text (deploy stream, `builds show`,
/// fleet page): the first [`CHANGED_PATHS_SHOWN`], then `and N more` (`N+` when the
/// agent's list was itself cut).
pub fn changed_paths_text(paths: &[String], truncated: bool) -> String {
    let shown = paths.iter().take(CHANGED_PATHS_SHOWN).cloned().collect::<Vec<_>>().join(", ");
    let rest = paths.len().saturating_sub(CHANGED_PATHS_SHOWN);
    match (rest, truncated) {
        (0, false) => shown,
        (n, false) => format!("{shown}, and {n} more"),
        (n, true) => format!("{shown}, and {n}+ more"),
    }
}

/// The URI a gRPC client dials for a scheduler address: `host:port` gets `http://`;
/// an address that already names its scheme is kept. The one place every client
/// (agent, CLI, raft peers) turns configured addresses into endpoints.
pub fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}
