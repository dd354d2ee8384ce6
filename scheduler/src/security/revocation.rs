//! Checking callers against the deny list (the state's revocations, see
//! `state::revocations`): on every gRPC call through [`gate`], the tonic interceptor's
//! check after the caller's role; on every renewal and join in `api/enroll.rs`
//! through [`check`]. A refusal is `permission_denied` with the reason and what to
//! do; it is logged on the server (at most once per holder every 30 s: a removed agent
//! keeps retrying) with the holder and the reason, nothing secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use slipway_proto::tls::{CertInfo, Gate, PeerIdentity, Role};
use tonic::Status;

use crate::raft::Store;
use crate::state::State;

/// How often one refused holder is logged.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Milliseconds since the epoch of `t` (0 before it).
pub fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Refuses a certificate on the deny list, saying why and what to do.
pub fn check(state: &State, cert: &CertInfo) -> Result<(), Status> {
    let who = &cert.identity;
    let Some(revoked) = state.revocation(who.role.as_str(), &who.name, epoch_ms(cert.not_before)) else {
        return Ok(());
    };
    let fix = match who.role {
        Role::Agent => {
            "to bring the node back, delete the `tls` directory in the agent's state_dir and start it with a \
             join token (`slipway cluster token agent`)"
        }
        Role::Scheduler => {
            "stop that scheduler, empty its data_dir and join it again (`slipway cluster token scheduler`, \
             then `slipway cluster join ADDR`)"
        }
        Role::Admin => "get a new operator certificate with `slipway cluster admin-cert`",
    };
    Err(Status::permission_denied(format!("the certificate of {who} is revoked: {}; {fix}", revoked.reason)))
}

/// The interceptor's check of every call against the replicated deny list, logging
/// each refused holder at most once every 30 s.
pub fn gate(store: Store) -> Gate {
    let logged: Arc<Mutex<HashMap<PeerIdentity, Instant>>> = Arc::default();
    Arc::new(move |cert: &CertInfo| {
        let refused = store.read(|s| check(s, cert));
        if let Err(status) = &refused {
            log_refusal(&logged, &cert.identity, status.message());
        }
        refused
    })
}

fn log_refusal(logged: &Mutex<HashMap<PeerIdentity, Instant>>, who: &PeerIdentity, reason: &str) {
    let mut logged = logged.lock().unwrap_or_else(PoisonError::into_inner);
    if logged.get(who).is_none_or(|at| at.elapsed() > LOG_EVERY) {
        logged.insert(who.clone(), Instant::now());
        logged.retain(|_, at| at.elapsed() <= LOG_EVERY);
        tracing::warn!(%who, reason, "refused a call from a revoked certificate");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn cert(role: Role, name: &str, not_before_ms: u64) -> CertInfo {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        CertInfo {
            identity: PeerIdentity::new(role, name),
            not_before: at(not_before_ms),
            not_after: at(not_before_ms + 3_600_000),
        }
    }

    #[test]
    fn a_revoked_certificate_is_refused_saying_why_and_what_to_do() {
        let mut s = State::default();
        s.apply(&Command::RevokeCertificates {
            role: "scheduler".into(),
            name: "3".into(),
            reason: "scheduler 3 was removed from the cluster".into(),
            at_ms: 10_000,
            certs_expire_by_ms: 99_000,
        });
        let status = check(&s, &cert(Role::Scheduler, "3", 9_000)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("scheduler \"3\" is revoked: scheduler 3 was removed")
                && status.message().contains("empty its data_dir"),
            "{}",
            status.message()
        );
        assert!(check(&s, &cert(Role::Scheduler, "3", 11_000)).is_ok(), "issued after the removal");
        assert!(check(&s, &cert(Role::Agent, "3", 9_000)).is_ok(), "another role");
        assert!(check(&s, &cert(Role::Scheduler, "2", 9_000)).is_ok(), "another member");
    }
}
