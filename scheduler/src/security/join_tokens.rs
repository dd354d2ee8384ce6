//! Join tokens: how an agent or a scheduler proves it may join (`slipway cluster token
//! agent|scheduler`, given to `slipway-agent --join` or `cluster.join_token`).
//!
//! A token carries its role, the CA's digest (so the joiner can check whom it talks to)
//! and a secret. One token per role, made on first use and replaced on rotation; what
//! stands for it is replicated state, read current (linearizable) before a join is
//! admitted, so a rotated-out token fails on every member.
//!
//! **The secret is never stored.** The state holds, per role, a random nonce
//! ([`JoinSecret::Derived`]); the secret is `HMAC-SHA256(k, "<role>\n<nonce>")` in hex,
//! `k` a key every member derives from the CA's private key ([`Ca::derive_key`]). So:
//! - any member shows the current token again (`slipway cluster token agent`, after a
//!   failover too): every scheduler holds the CA;
//! - the raft log, the snapshots and their backups give away a nonce, worthless without
//!   the CA key, and whoever has the CA key can issue certificates anyway;
//! - a rotation is a new nonce: the old secret can no longer be derived anywhere.
//!
//! A hash of a random secret would keep it out of the state too, but could not be
//! shown again after the call that made it; deriving keeps `cluster token` without
//! `--rotate` working on every member. Secrets that earlier versions kept in clear
//! are read as their SHA-256 when the state is loaded or their log entry applied
//! ([`JoinSecret::Sha256`]): they still admit joins, and `cluster token` says to rotate
//! to get one it can show. Every comparison is constant-time (`subtle`).

use slipway_proto::tls::{JoinToken, Role};
use subtle::ConstantTimeEq;
use tonic::Status;

use super::pki::Ca;
use crate::raft::Store;
use crate::state::{sha256_hex, Command, JoinSecret};

/// What the join token key is derived for (a new label makes every token new).
const KEY_LABEL: &[u8] = b"slipway join tokens v1";

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
pub async fn admits(store: &Store, ca: &Ca, role: Role, secret: &str) -> Result<bool, Status> {
    let kept = store.read_current(|s| s.join_secrets.get(role.as_str()).cloned()).await?;
    Ok(kept.is_some_and(|kept| stands_for(ca, role, &kept, secret)))
}

/// True if `kept` is how the state keeps `secret`.
fn stands_for(ca: &Ca, role: Role, kept: &JoinSecret, secret: &str) -> bool {
    match kept {
        JoinSecret::Derived { nonce } => same_secret(&derived_secret(ca, role, nonce), secret),
        JoinSecret::Sha256 { hash } => same_secret(hash, &sha256_hex(secret.as_bytes())),
    }
}

/// The secret of `role`'s token made with `nonce`: 64 hex digits, as tokens carry.
fn derived_secret(ca: &Ca, role: Role, nonce: &str) -> String {
    let tag = ring::hmac::sign(&ca.derive_key(KEY_LABEL), format!("{role}\n{nonce}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets in time independent of where they differ (the length is not secret).
fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Why a token from an earlier version cannot be shown, and what to do.
fn shown_no_more(role: Role) -> String {
    format!(
        "the {role} join token was made by an earlier slipway, which kept it in clear; it is now kept only \
         as a hash: it still admits joins, but cannot be shown again. `slipway cluster token {role} --rotate` \
         makes one that can (the old one then stops working)"
    )
}

/// A fresh nonce: 32 random bytes, hex.
fn new_nonce() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The join token of `role` for the cluster of `ca`, made on first use; `rotate`
/// replaces it.
pub async fn join_token(store: &Store, ca: &Ca, role: Role, rotate: bool) -> Result<JoinToken, Status> {
    let ca_digest = ca.digest().map_err(|e| Status::internal(e.0))?;
    let current = || store.read_current(|s| s.join_secrets.get(role.as_str()).cloned());
    let kept = match current().await? {
        Some(kept) if !rotate => kept,
        _ => {
            let nonce = new_nonce();
            store.write(Command::SetJoinNonce { role: role.as_str().into(), nonce, replace: rotate }).await?;
            tracing::info!(%role, rotated = rotate, "new join token");
            // What the state holds now: a first use that raced another keeps the first.
            current().await?.ok_or_else(|| Status::internal(format!("the {role} join token was not kept")))?
        }
    };
    let secret = match kept {
        JoinSecret::Derived { nonce } => derived_secret(ca, role, &nonce),
        JoinSecret::Sha256 { .. } => return Err(Status::failed_precondition(shown_no_more(role))),
    };
    Ok(JoinToken { role, ca_digest, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        let s = new_nonce();
        assert_eq!(s.len(), 64);
        assert!(same_secret(&s, &s.clone()));
        assert!(!same_secret(&s, &new_nonce()));
        assert!(!same_secret(&s, &s[..63]));
    }

    #[test]
    fn a_derived_secret_is_the_cas_and_the_nonces_and_nobody_elses() {
        let ca = Ca::create().unwrap();
        let nonce = new_nonce();
        let secret = derived_secret(&ca, Role::Agent, &nonce);
        let kept = JoinSecret::Derived { nonce: nonce.clone() };
        // A token carries it: 64 hex digits.
        let token: JoinToken =
            format!("SLWTKN-1-agent-{}-{secret}", ca.digest().unwrap()).parse().expect("a token's shape");
        assert_eq!(token.secret, secret);
        // Every member holding the CA derives the same secret, from the same key file.
        let member = Ca::from_pem(ca.cert_pem.clone(), ca.key_pem().to_string()).unwrap();
        assert!(stands_for(&member, Role::Agent, &kept, &secret));
        // Not another role's, not after a rotation, not under another CA.
        assert!(!stands_for(&ca, Role::Scheduler, &kept, &secret));
        assert!(!stands_for(&ca, Role::Agent, &JoinSecret::Derived { nonce: new_nonce() }, &secret));
        assert!(!stands_for(&Ca::create().unwrap(), Role::Agent, &kept, &secret));
        assert!(!secret.contains(&nonce) && secret != nonce);
    }

    #[test]
    fn a_secret_kept_in_clear_by_an_earlier_version_still_admits_by_its_hash() {
        let ca = Ca::create().unwrap();
        let old = new_nonce();
        let kept = JoinSecret::from_clear(&old);
        assert!(!format!("{kept:?}").contains(&old));
        assert!(stands_for(&ca, Role::Agent, &kept, &old));
        assert!(!stands_for(&ca, Role::Agent, &kept, &new_nonce()));
        assert!(!stands_for(&ca, Role::Agent, &kept, &sha256_hex(old.as_bytes())), "the hash is no secret");
    }
}
