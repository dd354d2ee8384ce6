//! Join tokens: how an agent or a scheduler proves it may join (`slipway cluster token
//! agent|scheduler`, given to `slipway-agent --join` or `cluster.join_token`).
//!
//! A token carries its role, the CA's digest (so the joiner can check whom it talks to)
//! and a secret. One secret per role, made on first use and replaced on rotation; the
//! secrets are replicated state, read current (linearizable) before a join is admitted,
//! so a rotated-out token fails on every member. Secrets are compared in constant time
//! (`subtle`).

use slipway_proto::tls::{JoinToken, Role};
use subtle::ConstantTimeEq;
use tonic::Status;

use super::pki::Ca;
use crate::raft::Store;
use crate::state::Command;

/// The role a join token is for: `agent` or `scheduler`.
pub fn token_role(name: &str) -> Result<Role, Status> {
    match name.parse::<Role>() {
        Ok(role @ (Role::Agent | Role::Scheduler)) => Ok(role),
        _ => Err(Status::invalid_argument(format!(
            "role {name:?}: join tokens exist for \"agent\" and \"scheduler\""
        ))),
    }
}

/// True if `secret` is the current secret of `role`'s join token (read current, so a
/// token rotated on another member is refused here too).
pub async fn admits(store: &Store, role: Role, secret: &str) -> Result<bool, Status> {
    let expected = store.read_current(|s| s.join_secrets.get(role.as_str()).cloned()).await?;
    Ok(expected.is_some_and(|expected| same_secret(&expected, secret)))
}

/// Compares secrets in time independent of where they differ (the length is not secret).
fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A fresh token secret: 32 random bytes, hex.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The join token of `role` for the cluster of `ca`, made on first use; `rotate`
/// replaces its secret.
pub async fn join_token(store: &Store, ca: &Ca, role: Role, rotate: bool) -> Result<JoinToken, Status> {
    let ca_digest = ca.digest().map_err(|e| Status::internal(e.0))?;
    let current = store.read_current(|s| s.join_secrets.get(role.as_str()).cloned()).await?;
    let secret = match current {
        Some(secret) if !rotate => secret,
        _ => {
            let secret = new_secret();
            store
                .write(Command::SetJoinSecret { role: role.as_str().into(), secret: secret.clone() })
                .await?;
            tracing::info!(%role, rotated = rotate, "new join token secret");
            secret
        }
    };
    Ok(JoinToken { role, ca_digest, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        let s = new_secret();
        assert_eq!(s.len(), 64);
        assert!(same_secret(&s, &s.clone()));
        assert!(!same_secret(&s, &new_secret()));
        assert!(!same_secret(&s, &s[..63]));
    }
}
