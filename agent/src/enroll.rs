//! The agent's certificate: joining the cluster with a token, keeping the certificate
//! in `<state_dir>/tls/` (key 0600), renewing it before it expires.
//!
//! Joining trusts nothing until a scheduler proves to hold a certificate from the CA
//! the token pins (`slipway_proto::tls::connect_pinned`); the private key is made here
//! and never leaves the node. Renewal runs beside the session: a renewed certificate
//! is used by the next connection, the open session goes on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use slipway_proto::enrollment_client::EnrollmentClient;
use slipway_proto::tls::{self, Credentials, JoinToken, Role, Transport};
use slipway_proto::RenewRequest;

use crate::config::AgentConfig;

/// How often the agent looks at its certificate's remaining lifetime.
const RENEW_CHECK: Duration = Duration::from_secs(5);

/// Where the agent keeps its certificate.
pub fn tls_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tls")
}

/// Why the agent cannot get or keep a certificate.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnrollError(pub String);

/// How this agent reaches the schedulers: its certificate (joining first when it has
/// none), or plain text with `insecure = true`.
pub async fn transport(config: &AgentConfig, node_id: &str) -> Result<Transport, EnrollError> {
    if config.insecure {
        tracing::warn!(
            "!!! insecure = true: talking to the schedulers in PLAIN TEXT. For development only. !!!"
        );
        return Ok(Transport::Insecure);
    }
    let dir = tls_dir(&config.state_dir);
    let token = match &config.join_token {
        Some(t) => Some(t.parse::<JoinToken>().map_err(|e| EnrollError(format!("join token: {e}")))?),
        None => None,
    };
    if let Some(creds) = Credentials::load_dir(&dir).map_err(EnrollError)? {
        let info = creds.info().map_err(EnrollError)?;
        let pinned_elsewhere =
            token.as_ref().is_some_and(|t| creds.ca_digest().ok().as_deref() != Some(&t.ca_digest));
        if info.identity.name == node_id && !pinned_elsewhere {
            return Ok(Transport::Tls(Arc::new(creds)));
        }
        tracing::warn!(dir = %dir.display(), "the stored certificate is for another node or cluster; joining again");
    }
    let Some(token) = token else {
        return Err(EnrollError(format!(
            "no certificate in {}: join the cluster once with `slipway-agent --join TOKEN` (the token from \
             `slipway cluster token agent`)",
            dir.display()
        )));
    };
    if token.role != Role::Agent {
        return Err(EnrollError(
            "that is a scheduler token; an agent joins with `slipway cluster token agent`".into(),
        ));
    }
    let creds = tls::join(&config.schedulers, &token, node_id).await.map_err(EnrollError)?.credentials;
    creds.save_dir(&dir).map_err(EnrollError)?;
    tracing::info!(dir = %dir.display(), "joined the cluster; certificate stored");
    Ok(Transport::Tls(Arc::new(creds)))
}

/// Renews the certificate in `transport` when a third of its lifetime is left, from
/// any scheduler that answers, and stores it; runs until the process ends. Connections
/// made after a renewal present the new certificate.
pub async fn renew_loop(config: AgentConfig, transport: Arc<RwLock<Transport>>) {
    loop {
        tokio::time::sleep(RENEW_CHECK).await;
        let current = transport.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Transport::Tls(creds) = &current else { return };
        if !creds.info().is_ok_and(|i| i.due_for_renewal()) {
            continue;
        }
        match renew(&config.schedulers, &current).await {
            Ok(cert_pem) => {
                let (key_pem, cert_pem) = cert_pem;
                let renewed = Credentials { ca_pem: creds.ca_pem.clone(), cert_pem, key_pem };
                if let Err(e) = renewed.save_dir(&tls_dir(&config.state_dir)) {
                    tracing::error!(error = %e, "cannot store the renewed certificate");
                    continue;
                }
                let until = renewed.info().map(|i| i.not_after).ok();
                *transport.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Transport::Tls(Arc::new(renewed));
                tracing::info!(?until, "certificate renewed");
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the certificate yet; retrying"),
        }
    }
}

/// A new key and a certificate for it, from the first scheduler that answers.
async fn renew(schedulers: &[String], transport: &Transport) -> Result<(String, String), EnrollError> {
    let (key_pem, csr_pem) = tls::new_key_and_csr().map_err(EnrollError)?;
    let mut errors = Vec::new();
    for addr in schedulers {
        let endpoint = transport.endpoint(addr).map_err(EnrollError)?.connect_timeout(Duration::from_secs(3));
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{addr}: {}", tls::error_chain(&e)));
                continue;
            }
        };
        match EnrollmentClient::new(channel).renew(RenewRequest { csr_pem: csr_pem.clone() }).await {
            Ok(reply) => return Ok((key_pem, reply.into_inner().cert_pem)),
            Err(status) => errors.push(format!("{addr}: {}", status.message())),
        }
    }
    Err(EnrollError(errors.join("; ")))
}
