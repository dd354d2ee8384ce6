//! This scheduler's own TLS credentials at start: the cluster CA and its certificate,
//! from its data dir, or on first start made (founding alone), copied from `tls.ca_dir`
//! (founding a static cluster) or fetched from a member with a scheduler join token
//! (`cluster.join_token`, joining). None with `tls.insecure`.

use std::path::Path;

use slipway_proto::tls::{self, Credentials};

use super::pki::{self, Ca};
use crate::config::SchedulerConfig;

/// This scheduler's CA and certificate (None with `tls.insecure`): from its data dir;
/// at first start made (founding alone), copied from `tls.ca_dir` (founding a static
/// cluster), or fetched with `cluster.join_token` (joining).
pub async fn at_start(config: &SchedulerConfig) -> Result<Option<(Ca, Credentials)>, String> {
    if config.tls.insecure {
        tracing::warn!(
            "!!! tls.insecure = true: gRPC in PLAIN TEXT, NOBODY CHECKED. Anyone who reaches {} controls \
             every app on this fleet. For development only. !!!",
            config.listen
        );
        return Ok(None);
    }
    let dir = pki::pki_dir(&config.data_dir);
    if Ca::load(&dir).map_err(|e| e.0)?.is_none() {
        if let Some(src) = &config.tls.ca_dir {
            let ca = Ca::load(src)
                .map_err(|e| e.0)?
                .ok_or_else(|| format!("tls.ca_dir {} holds no ca.pem", src.display()))?;
            ca.save(&dir).map_err(|e| e.0)?;
            tracing::info!(from = %src.display(), "installed the cluster CA");
        } else if let Some(token) = &config.cluster.join_token {
            fetch_ca(config, token, &dir).await?;
        }
    }
    let founding_alone = !config.cluster.join && config.cluster.members.is_empty();
    pki::scheduler_credentials(&config.data_dir, config.node_id, founding_alone).map(Some).map_err(|e| e.0)
}

/// Joins with a scheduler token: asks a member at one of `cluster.join_via` for the CA
/// (checked against the token's digest) and a certificate.
async fn fetch_ca(config: &SchedulerConfig, token: &str, dir: &Path) -> Result<(), String> {
    let token: tls::JoinToken = token.parse()?;
    let joined = tls::join(&config.cluster.join_via, &token, &config.node_id.to_string())
        .await
        .map_err(|e| format!("cluster.join_token: {e}"))?;
    let mut creds = joined.credentials;
    let ca = Ca::from_pem(creds.ca_pem.clone(), joined.ca_key_pem).map_err(|e| e.0)?;
    ca.save(dir).map_err(|e| e.0)?;
    // Servers send the CA along with their certificate (see `Ca::issue`).
    creds.cert_pem.push_str(&creds.ca_pem);
    creds.save_dir(dir)?;
    tracing::info!(via = %joined.via, "joined the cluster's PKI with a scheduler token");
    Ok(())
}
