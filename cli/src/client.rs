//! How the CLI reaches the cluster: connect to the members over mutual TLS and find the
//! leader (asking any member who leads). Every failure becomes a [`Failure`] the
//! operator can read, marked retryable when a leader change explains it.

use std::time::Duration;

use slipway_proto::control_client::ControlClient;
use slipway_proto::metadata::{LEADER_HINT, NO_SPACE};
use slipway_proto::tls::Transport;
use slipway_proto::{self as pb};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a member may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A failure to report: the message is what the operator reads; `retry` marks the
/// failures a leader change explains, which are worth another try.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong, for the operator.
    pub message: String,
    /// Another attempt (against the new leader) may succeed.
    pub retry: bool,
}

impl Failure {
    /// A failure no retry helps.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self { message: message.into(), retry: false }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let what = match s.code() {
            Code::NotFound => "not found",
            Code::InvalidArgument => "invalid input",
            Code::AlreadyExists => "already exists",
            Code::FailedPrecondition => "refused",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "timed out",
            Code::ResourceExhausted if s.metadata().contains_key(NO_SPACE) => "out of disk",
            _ => "error",
        };
        Failure { message: format!("{what}: {}", s.message()), retry: leader_changing(&s) }
    }
}

/// Did the call fail because the member is not (or no longer) the leader, or because
/// the connection to it broke? Errors the scheduler itself answers carry no transport
/// error as their source; "not the leader" carries the leader hint.
pub fn leader_changing(s: &Status) -> bool {
    s.metadata().contains_key(LEADER_HINT)
        || (matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
            && std::error::Error::source(s).is_some())
}

/// What a command returns.
pub type Result<T> = std::result::Result<T, Failure>;

/// The cluster as the CLI sees it: the members' addresses and how to reach them.
pub struct Cluster {
    addrs: Vec<String>,
    transport: Transport,
}

impl Cluster {
    /// The members at `addrs`, reached with `transport`.
    pub fn new(addrs: Vec<String>, transport: Transport) -> Self {
        Self { addrs, transport }
    }

    /// Connects to the member at `addr`.
    pub async fn connect(&self, addr: &str) -> std::result::Result<ControlClient<Channel>, String> {
        let endpoint = self.transport.endpoint(addr)?.connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("{addr}: {}", slipway_proto::tls::error_chain(&e)))?;
        Ok(ControlClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Connects to the leader: asks the members in turn who leads. While an election is
    /// under way (nobody leads) or the leader cannot be reached, a member that answers is
    /// used (it forwards writes, or says who leads once the election is over). A scheduler
    /// that belongs to no cluster yet (waiting to join) is only used when nothing else
    /// answers, so `cluster status` can still say so.
    pub async fn leader(&self) -> Result<ControlClient<Channel>> {
        let mut errors = Vec::new();
        let mut member = None;
        let mut outsider = None;
        for addr in &self.addrs {
            let mut client = match self.connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let status = match client.cluster_status(pb::ClusterStatusRequest {}).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    errors.push(format!("{addr}: {}", e.message()));
                    continue;
                }
            };
            if status.members.is_empty() {
                outsider.get_or_insert(client);
                continue;
            }
            if status.leader_id == status.node_id {
                return Ok(client);
            }
            if let Some(m) = status.members.iter().find(|m| m.id == status.leader_id) {
                if let Ok(c) = self.connect(&m.addr).await {
                    return Ok(c);
                }
            }
            member.get_or_insert(client);
        }
        member.or(outsider).ok_or_else(|| {
            Failure::fatal(format!(
                "cannot reach a scheduler ({}); is slipway-scheduler running? (`./packaging/quickstart.sh` starts one)",
                errors.join("; ")
            ))
        })
    }
}

/// One run of a command: where it goes and whether an earlier attempt may have happened.
pub struct Call<'a> {
    /// The leader (or the member that answered).
    pub client: ControlClient<Channel>,
    /// The whole cluster, for commands that ask every member.
    pub cluster: &'a Cluster,
    /// The same for every attempt: the scheduler joins a retried deploy to the first.
    pub request_id: &'a str,
    /// An earlier attempt may have gone through, so "already exists" / "not found"
    /// from a create or delete count as done.
    pub retry: bool,
    /// What the command read from stdin before the first attempt (`secrets set`), so a
    /// retry sends the same bytes.
    pub input: Option<&'a [u8]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_hint(status: Status, hint: &str) -> Status {
        let mut status = status;
        status.metadata_mut().insert(LEADER_HINT, hint.parse().unwrap());
        status
    }

    #[test]
    fn not_the_leader_is_retried_with_or_without_a_known_leader() {
        // A follower that knows the leader; one during an election; one whose known
        // leader did not answer its forwarded write or read index (the leader died).
        assert!(leader_changing(&with_hint(Status::unavailable("not the leader"), "10.0.0.2:7400")));
        assert!(leader_changing(&with_hint(Status::unavailable("no leader yet"), "")));
        let unreachable = with_hint(
            Status::unavailable("forwarding the request to the leader at 10.0.0.2:7400 failed"),
            "",
        );
        let failure = Failure::from(unreachable);
        assert!(failure.retry, "{failure:?}");
        assert!(failure.message.starts_with("unavailable: forwarding"), "{failure:?}");
    }

    #[test]
    fn a_broken_connection_is_retried() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let status = Status::from_error(Box::new(refused));
        assert!(leader_changing(&status), "{status:?}");
    }

    #[test]
    fn the_schedulers_own_answers_are_not_retried() {
        // Without the leader hint and without a transport error as their source, these
        // are the scheduler's verdict (no quorum, bad input, ...): a retry repeats it.
        for status in [
            Status::unavailable("this scheduler could not commit the change within 10 s"),
            Status::not_found("no such app"),
            Status::invalid_argument("bad name"),
            Status::failed_precondition("refused"),
            Status::already_exists("exists"),
            Status::internal("storage failure"),
            Status::unknown("odd"),
        ] {
            assert!(!leader_changing(&status), "{status:?}");
            assert!(!Failure::from(status).retry);
        }
    }
}
