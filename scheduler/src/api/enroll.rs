//! Who gets a certificate: the `Enrollment` service (joining with a join token, renewing
//! with a certificate), and operator certificates for the control API.
//!
//! Any member can issue (every scheduler holds the CA). The tokens themselves are
//! [`crate::security::join_tokens`]; the CA is [`crate::security::pki`].
//!
//! Identity is never taken twice: a join under the id of a registered node, or of a
//! current raft member, is refused until that node or member is removed. A renewal
//! extends only an identity that is still one: a registered node, a raft member, an
//! operator not on the deny list. A holder that was revoked gets certificates that
//! start after its revocation ([`State::valid_from_floor_ms`]), so they are not denied.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use slipway_proto::tls::{self, Caller, PeerIdentity, Role};
use slipway_proto::{self as pb};
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::security::pki::{self, Ca};
use crate::security::{join_tokens, revocation};
use crate::state::State;

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
pub(crate) fn validity(ctx: &Context, role: Role) -> Duration {
    match role {
        Role::Agent => Duration::from_secs(ctx.config.tls.agent_cert_validity_secs),
        Role::Admin => Duration::from_secs(ctx.config.tls.admin_cert_validity_secs),
        Role::Scheduler => pki::SCHEDULER_CERT_VALIDITY,
    }
}

/// Names a certificate may carry: an agent's node id, a scheduler's raft id, an
/// operator's name.
pub(crate) fn check_name(role: Role, name: &str) -> Result<(), Status> {
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
    let floor = ctx.store.read(|s| valid_from_floor(s, &who));
    let cert_pem = ca
        .issue_for_csr(&who, csr_pem, validity(ctx, Role::Admin), floor)
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
        // Current, not this member's possibly lagging view: the name must be free now.
        let (taken, floor) =
            self.ctx.store.read_current(|s| (taken(s, &who), valid_from_floor(s, &who))).await?;
        if let Some(taken) = taken.or_else(|| member_taken(&self.ctx, &who)) {
            tracing::warn!(%who, "join refused: the name is taken");
            return Err(Status::failed_precondition(taken));
        }
        let cert_pem = ca
            .issue_for_csr(&who, &req.csr_pem, validity(&self.ctx, role), floor)
            .map_err(|e| Status::invalid_argument(e.0))?;
        // A scheduler issues certificates too: it gets the CA's key.
        let ca_key_pem = if role == Role::Scheduler { ca.key_pem().to_string() } else { String::new() };
        tracing::info!(%who, "joined with a token");
        Ok(Response::new(pb::Certified { cert_pem, ca_pem: ca.cert_pem.clone(), ca_key_pem }))
    }

    async fn renew(&self, req: Request<pb::RenewRequest>) -> Result<Response<pb::Certified>, Status> {
        let ca = ca(&self.ctx)?;
        let cert = tls::peer_cert(&req)?;
        let who = cert.identity.clone();
        let checked = self.ctx.store.read(|s| {
            revocation::check(s, &cert)?;
            not_a_member(&self.ctx, s, &who).map_or(Ok(()), |why| Err(Status::permission_denied(why)))?;
            Ok::<_, Status>(valid_from_floor(s, &who))
        });
        let floor = checked.inspect_err(|refused| {
            tracing::warn!(%who, reason = refused.message(), "renewal refused");
        })?;
        let cert_pem = ca
            .issue_for_csr(&who, &req.get_ref().csr_pem, validity(&self.ctx, who.role), floor)
            .map_err(|e| Status::invalid_argument(e.0))?;
        tracing::info!(%who, "renewed a certificate");
        Ok(Response::new(pb::Certified { cert_pem, ca_pem: ca.cert_pem.clone(), ca_key_pem: String::new() }))
    }
}

/// Where a new certificate for `who` must start, if it was ever revoked.
fn valid_from_floor(state: &State, who: &PeerIdentity) -> Option<SystemTime> {
    state
        .valid_from_floor_ms(who.role.as_str(), &who.name)
        .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// Why `who` may not join under its name: a registered node holds it.
fn taken(state: &State, who: &PeerIdentity) -> Option<String> {
    let node = state.nodes.get(&who.name).filter(|_| who.role == Role::Agent)?;
    Some(format!(
        "node {:?} (named {:?}) is already a member of the fleet; remove it first with `slipway nodes remove {}`",
        node.id, node.name, node.id
    ))
}

/// Why `who` may not join under its name: it is a current raft member's id.
fn member_taken(ctx: &Context, who: &PeerIdentity) -> Option<String> {
    let id: u64 = who.name.parse().ok().filter(|_| who.role == Role::Scheduler)?;
    let metrics = ctx.store.raft().metrics();
    let member = metrics.borrow().membership_config.membership().get_node(&id).is_some();
    member.then(|| {
        format!("scheduler {id} is already a member of the cluster; remove it first with `slipway cluster remove {id}`")
    })
}

/// Why `who` may not renew: it is no longer what its certificate was issued for.
fn not_a_member(ctx: &Context, state: &State, who: &PeerIdentity) -> Option<String> {
    match who.role {
        Role::Agent if !state.nodes.contains_key(&who.name) => Some(format!(
            "{who} is not a registered node of this fleet (removed?), so its certificate is not renewed; \
             to bring the node back, delete the `tls` directory in the agent's state_dir and start it with a \
             join token"
        )),
        Role::Scheduler if member_taken(ctx, who).is_none() => Some(format!(
            "{who} is not a member of this cluster (removed?), so its certificate is not renewed; empty its \
             data_dir and join it again"
        )),
        _ => None,
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
