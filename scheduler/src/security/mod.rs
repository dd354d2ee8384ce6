//! Security: who may talk to the scheduler, and who may push and pull which images.
//!
//! - [`pki`]: the cluster CA in `<data_dir>/pki/`, this scheduler's certificate, and
//!   issuing certificates from CSRs (an agent's or operator's key never leaves its
//!   machine).
//! - [`credentials`]: this scheduler's CA and certificate at start (loaded, made,
//!   copied or fetched with a join token).
//! - [`http_access`]: who may read the HTTP side (its bearer token) and its TLS
//!   certificate from the CA.
//! - [`join_tokens`]: the join tokens of agents and schedulers (`slipway cluster token`):
//!   the state keeps a nonce per role, never the secret, which every member derives
//!   from the CA key and compares in constant time.
//! - [`registry_auth`]: the registry's token server: grants (an app, its actions, an
//!   expiry) signed with a key derived from the CA, exchanged at `GET /v2/token` for a
//!   short-lived JWT.
//! - [`registry_signer`]: the only key the registry takes tokens from: a root derived
//!   from the CA key (the registry's `rootcertbundle`, `<data_dir>/pki/registry-signer.pem`)
//!   and each scheduler's token certificate under it.
//! - [`registry_client`]: the scheduler reading the registry with its own token: is the
//!   digest an agent reported in the app's repository (checked before a release is
//!   recorded)?
//! - [`realm_proxy`]: `slipway-scheduler realm-proxy`, the registry's token realm in
//!   front of several members.
//! - [`webhooks`]: the per-app webhook secrets (derived from the CA key and a generation
//!   in the app record, never stored) and the GitHub / GitLab / Gitea signature checks.
//! - [`revocation`]: every call's check against the replicated deny list (removed
//!   nodes' and schedulers' certificates).
//!
//! Who may call which gRPC service is decided by the roles certificates carry
//! and the deny list (`slipway_proto::tls::require` with [`revocation::gate`], wired in
//! `server.rs`); enrollment (`api/enroll.rs`)
//! is open and checks tokens and certificates itself.

pub mod credentials;
pub mod http_access;
pub mod join_tokens;
pub mod pki;
pub mod realm_proxy;
pub mod registry_auth;
pub mod registry_client;
pub mod registry_signer;
pub mod revocation;
pub mod webhooks;
