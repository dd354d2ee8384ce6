//! The scheduler's error type at its API boundary, mapped once to gRPC [`Status`].
//!
//! What the caller can act on (bad input, not found, not leader) is kept apart from
//! what is fatal to this member (storage broken).

use slipway_proto::metadata::{LEADER_HINT, NO_SPACE};
use tonic::{Code, Status};

use crate::state::ApplyError;

#[derive(Debug, thiserror::Error)]
/// What a gRPC handler can fail with.
pub enum Error {
    /// A name, ref or URL from the user was refused before it reached git or Docker.
    #[error(transparent)]
    Invalid(#[from] slipway_proto::validate::Invalid),
    /// The replicated state refused the command (unknown app, no such release, …).
    #[error(transparent)]
    Refused(#[from] ApplyError),
    /// Something the request named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// This member is not the leader; `leader` is where to go, if known.
    #[error("this scheduler is not the leader{}", leader.as_ref().map(|l| format!("; the leader is at {l}")).unwrap_or_else(|| " and no leader is elected yet; retry shortly".into()))]
    NotLeader {
        /// The leader's address, if one is known.
        leader: Option<String>,
    },
    /// A dependency (engine, registry, peer) did not answer; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// This member follows, and the leader it knows did not answer a forwarded write or
    /// read index (it died or moved, and no election has replaced it yet): answered like
    /// [`Error::NotLeader`] with no leader known, so clients retry (with the same request
    /// id) once a leader is elected.
    #[error("{0}")]
    LeaderUnreachable(String),
    /// A scheduler's data dir is below `[storage] min_free_bytes`: new work is refused
    /// until there is room. The text names the directory, its free bytes, the floor and
    /// the fix (the leader's own, when a follower forwarded the write).
    #[error("{0}")]
    NoSpace(String),
    /// Raft storage failed: this member cannot serve until an operator looks at it.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let msg = err.to_string();
        match err {
            Error::Invalid(_)
            | Error::Refused(
                ApplyError::InvalidConfig(_)
                | ApplyError::InvalidReplicas { .. }
                | ApplyError::InvalidSecret(_),
            ) => Status::invalid_argument(msg),
            Error::Refused(
                ApplyError::NoSuchApp(_) | ApplyError::NoSuchBuild(_) | ApplyError::NoSuchNode(_),
            )
            | Error::Refused(ApplyError::NoSuchRelease { .. } | ApplyError::NoSuchSecret { .. })
            | Error::NotFound(_) => Status::not_found(msg),
            Error::Refused(ApplyError::AppExists(_)) => Status::already_exists(msg),
            Error::Refused(_) => Status::failed_precondition(msg),
            Error::NotLeader { leader } => {
                // Always present, empty while no leader is known: clients retry on it.
                let mut status = Status::new(Code::Unavailable, msg);
                let hint =
                    leader.and_then(|l| l.parse().ok()).unwrap_or_else(|| "".parse().expect("empty value"));
                status.metadata_mut().insert(LEADER_HINT, hint);
                status
            }
            Error::LeaderUnreachable(_) => {
                let mut status = Status::new(Code::Unavailable, msg);
                status.metadata_mut().insert(LEADER_HINT, "".parse().expect("empty value"));
                status
            }
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::NoSpace(_) => {
                let mut status = Status::resource_exhausted(msg);
                status.metadata_mut().insert(NO_SPACE, tonic::metadata::MetadataValue::from_static("1"));
                status
            }
            Error::Storage(_) => Status::internal(msg),
        }
    }
}
