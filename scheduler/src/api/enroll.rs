//! Who gets a certificate: the `Enrollment` service (joining with a join token, renewing
//! with a certificate), and operator certificates for the control API.
//!
//! Any member can issue (every scheduler holds the CA). The tokens themselves are
//! [`crate::security::join_tokens`]; the CA is [`crate::security::pki`].

use std::sync::Arc;
use std::time::Duration;

use slipway_proto::tls::{self, Caller, PeerIdentity, Role};
use slipway_proto::{self as pb};
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::security::join_tokens;
use crate::security::pki::{self, Ca};

/// The `Enrollment` gRPC service.
pub struct EnrollmentService {
    ctx: Arc<Context>,
}

impl EnrollmentService {
    /// The enrollment service of the scheduler sharing `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

/// The CA, or why this scheduler cannot issue (it runs without TLS).
pub(crate) fn ca(ctx: &Context) -> Result<&Ca, Status> {
    ctx.ca.as_deref().ok_or_else(|| {
        Status::failed_precondition(
            "this scheduler runs without TLS (tls.insecure = true): it has no CA and issues no certificates",
        )
    })
}

/// How long certificates of `role` are valid.
fn validity(ctx: &Context, role: Role) -> Duration {
    match role {
        Role::Agent => Duration::from_secs(ctx.config.tls.agent_cert_validity_secs),
        Role::Admin => Duration::from_secs(ctx.config.tls.admin_cert_validity_secs),
        Role::Scheduler => pki::SCHEDULER_CERT_VALIDITY,
    }
}

/// Names a certificate may carry: an agent's node id, a scheduler's raft id, an
/// operator's name.
fn check_name(role: Role, name: &str) -> Result<(), Status> {
    let ok = PeerIdentity::from_uri(&PeerIdentity::new(role, name).uri()).is_some()
        && (role != Role::Scheduler || name.parse::<u64>().is_ok_and(|id| id > 0));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{role} name {name:?}: 1 to 128 letters, digits, '-', '_' or '.' (a scheduler's is its node_id)"
        )))
    }
}

/// An operator certificate for `name` on the key in `csr_pem`.
pub fn issue_admin_cert(ctx: &Context, name: &str, csr_pem: &str) -> Result<pb::Certified, Status> {
    check_name(Role::Admin, name)?;
    let ca = ca(ctx)?;
    let who = PeerIdentity::new(Role::Admin, name);
    let cert_pem = ca
        .issue_for_csr(&who, csr_pem, validity(ctx, Role::Admin))
        .map_err(|e| Status::invalid_argument(e.0))?;
    tracing::info!(%who, "issued an operator certificate");
    Ok(pb::Certified { cert_pem, ca_pem: ca.cert_pem.clone(), ca_key_pem: String::new() })
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::Certified>, Status> {
        let req = req.into_inner();
        let role = join_tokens::token_role(&req.role)?;
        check_name(role, &req.name)?;
        let ca = ca(&self.ctx)?;
        if !join_tokens::admits(&self.ctx.store, ca, role, &req.secret).await? {
            tracing::warn!(%role, name = %req.name, "join refused: wrong or rotated token");
            return Err(Status::permission_denied(format!(
                "this {role} join token is not valid here (rotated, or from another cluster); get the current \
                 one with `slipway cluster token {role}`"
            )));
        }
        let who = PeerIdentity::new(role, req.name);
        let cert_pem = ca
            .issue_for_csr(&who, &req.csr_pem, validity(&self.ctx, role))
            .map_err(|e| Status::invalid_argument(e.0))?;
        // A scheduler issues certificates too: it gets the CA's key.
        let ca_key_pem = if role == Role::Scheduler { ca.key_pem().to_string() } else { String::new() };
        tracing::info!(%who, "joined with a token");
        Ok(Response::new(pb::Certified { cert_pem, ca_pem: ca.cert_pem.clone(), ca_key_pem }))
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::Certified>, Status> {
        let ca = ca(&self.ctx)?;
        let who = tls::peer_identity(&req)?;
        let cert_pem = ca
            .issue_for_csr(&who, &req.get_ref().csr_pem, validity(&self.ctx, who.role))
            .map_err(|e| Status::invalid_argument(e.0))?;
        tracing::info!(%who, "renewed a certificate");
        Ok(Response::new(pb::Certified { cert_pem, ca_pem: ca.cert_pem.clone(), ca_key_pem: String::new() }))
    }
}

/// The caller a service's interceptor admitted (see `tls::require`).
pub fn caller<T>(req: &Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller::Unchecked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_per_role() {
        assert!(check_name(Role::Scheduler, "2").is_ok());
        assert!(check_name(Role::Scheduler, "two").is_err());
        assert!(check_name(Role::Scheduler, "0").is_err());
        assert!(check_name(Role::Agent, "5d0c7f0e-9a1b-4c2d-8e3f-001122334455").is_ok());
        assert!(check_name(Role::Admin, "alice smith").is_err());
        assert!(check_name(Role::Admin, "").is_err());
    }
}
