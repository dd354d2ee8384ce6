//! openraft's RPCs between schedulers, over tonic (`slipway.v1.Raft` in `raft.proto`).
//!
//! Every RPC carries openraft's own request and response types as JSON in a
//! `RaftPayload`, so the wire follows openraft exactly. The server encodes the whole
//! `Result<Response, RaftError>` of the local call, so a remote raft error arrives as
//! [`RPCError::RemoteError`] and not as a transport failure.
//!
//! - client side: [`Network`] (openraft's [`RaftNetworkFactory`]) hands out one
//!   [`Connection`] per target; the tonic channels behind them are created lazily, once
//!   per address, and reused ([`Peers`]). A transport failure becomes
//!   [`RPCError::Unreachable`] so openraft backs off before retrying; an RPC that
//!   outlives openraft's `hard_ttl` becomes [`RPCError::Timeout`].
//! - follower to leader: `ForwardWrite` and `ReadIndex`, through the same [`Peers`]
//!   type (see [`super::Store`]).
//! - server side: [`RaftService`] feeds incoming RPCs to the local [`Raft`] and
//!   executes writes forwarded by followers.
//!
//! How peers are dialled (plain text, or TLS with this scheduler's certificate) is a
//! value, [`Peers`], given to the raft instance when it is opened ([`super::open`]):
//! nothing about the transport is process-wide, so schedulers with different
//! certificates can share a process (as the tests' clusters do).

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError,
    RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RPCTypes};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use slipway_proto::metadata::{NO_SPACE, RAFT_LEADER_ADDR, RAFT_NO_QUORUM};
use slipway_proto::raft_client::RaftClient;
use slipway_proto::raft_server::{Raft as RaftRpc, RaftServer};
use slipway_proto::tls::Transport;
use slipway_proto::RaftPayload;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{NodeId, Raft, SpaceGuard, TypeConfig, WriteError};
use crate::state::{Command, Response};

/// How long establishing a TCP connection to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest RPC message either side sends or accepts. Snapshot chunks travel as JSON
/// arrays (about 3.5 bytes per byte), so a 1 MiB chunk needs well over tonic's 4 MiB default.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// The channel settings for a plain-text peer at `addr` (`host:port`, or a full
/// `http://` URI): what schedulers running with `tls.insecure` dial, and what tests
/// and benchmarks use to reach them. [`Peers::endpoint`] is the one schedulers use.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(with_settings(Endpoint::from_shared(slipway_proto::endpoint_uri(addr))?))
}

/// Timeouts, keep-alives and no Nagle, for every peer channel.
fn with_settings(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
}

/// How this scheduler dials its peers (its transport: plain text, or TLS with its own
/// certificate) and the lazily connected clients, one per peer address, shared by every
/// clone.
#[derive(Clone)]
pub struct Peers {
    transport: Transport,
    clients: Arc<Mutex<HashMap<String, RaftClient<Channel>>>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = matches!(self.transport, Transport::Tls(_));
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Peers").field("tls", &tls).field("clients", &clients).finish()
    }
}

impl Peers {
    /// Peers dialled with `transport`; no client yet.
    pub fn new(transport: Transport) -> Self {
        Self { transport, clients: Arc::default() }
    }

    /// The channel settings for a peer at `addr` (`host:port`, or a full `http://` URI),
    /// with TLS when this scheduler has a certificate.
    ///
    /// The one place where a scheduler's peer channels are configured.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        match &self.transport {
            Transport::Tls(creds) => Ok(with_settings(
                Endpoint::from_shared(format!("https://{}", addr.trim_start_matches("http://")))?
                    .tls_config(creds.client_tls())?,
            )),
            Transport::Insecure => endpoint(addr),
        }
    }

    /// The client for `addr`; the first call creates its channel, which connects on first
    /// use and reconnects by itself after a failure.
    fn client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(addr) {
            return Ok(client.clone());
        }
        let client = RaftClient::new(self.endpoint(addr)?.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// openraft's network factory: connections from this node to its peers.
#[derive(Debug, Clone)]
pub struct Network {
    node_id: NodeId,
    peers: Peers,
}

impl Network {
    /// A network for the node `node_id` (named in timeout errors), dialling through `peers`.
    pub fn new(node_id: NodeId, peers: Peers) -> Self {
        Self { node_id, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        let client = self.peers.client(&node.addr).map_err(|e| {
            tracing::warn!(peer = target, addr = %node.addr, error = %e, "bad raft peer address");
            AnyError::new(&e).add_context(|| format!("raft peer {target} has address {:?}", node.addr))
        });
        Connection { from: self.node_id, target, node: node.clone(), client }
    }
}

/// A connection to one peer, as openraft's [`RaftNetwork`].
pub struct Connection {
    from: NodeId,
    target: NodeId,
    node: BasicNode,
    /// Err when the peer's address is not a valid URI: every RPC fails as unreachable.
    client: Result<RaftClient<Channel>, AnyError>,
}

impl Connection {
    async fn call<Req, Resp, E>(&self, rpc: RPCTypes, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let mut client = self.client.clone().map_err(|e| RPCError::Unreachable(Unreachable::from(e)))?;
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(ttl);
        let call = async move {
            match rpc {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let timeout = || Timeout { action: rpc, id: self.from, target: self.target, timeout: ttl };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_elapsed) => return Err(RPCError::Timeout(timeout())),
            Ok(Err(status)) if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                return Err(RPCError::Timeout(timeout()))
            }
            Ok(Err(status)) if status.code() == Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result
            .map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.call(RPCTypes::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RPCTypes::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call(RPCTypes::Vote, &rpc, &option).await
    }
}

/// What the leader answers to a forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedWrite {
    /// Log index the command was committed at (the follower waits to apply it).
    pub log_index: u64,
    /// What applying the command returned.
    pub response: Response,
}

/// The follower-to-leader RPCs of `raft.proto`.
#[derive(Debug, Clone, Copy)]
enum LeaderRpc {
    ForwardWrite,
    ReadIndex,
}

impl Peers {
    /// Sends `cmd` to the leader at `leader_addr` over `ForwardWrite` and returns its answer.
    pub(crate) async fn forward_write(
        &self,
        leader_addr: &str,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<ForwardedWrite, WriteError> {
        let json = serde_json::to_vec(cmd).map_err(|e| WriteError::Forward {
            leader_addr: leader_addr.to_string(),
            source: Box::new(Status::internal(e.to_string())),
        })?;
        self.call_leader(leader_addr, LeaderRpc::ForwardWrite, json, timeout).await
    }

    /// Asks the leader at `leader_addr` for a read index (see [`super::Store::linearizable`]).
    pub(crate) async fn read_index(&self, leader_addr: &str, timeout: Duration) -> Result<u64, WriteError> {
        self.call_leader(leader_addr, LeaderRpc::ReadIndex, b"null".to_vec(), timeout).await
    }

    /// Calls `rpc` on the leader at `leader_addr` with a JSON payload and decodes its JSON
    /// answer. "Not the leader" and "no quorum" come back as such; anything else that goes
    /// wrong on the way is [`WriteError::Forward`].
    async fn call_leader<T: DeserializeOwned>(
        &self,
        leader_addr: &str,
        rpc: LeaderRpc,
        json: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, WriteError> {
        let forward_err = |source: Status| WriteError::Forward {
            leader_addr: leader_addr.to_string(),
            source: Box::new(source),
        };
        let mut client = self
            .client(leader_addr)
            .map_err(|e| forward_err(Status::invalid_argument(format!("bad leader address: {e}"))))?;
        let mut request = tonic::Request::new(RaftPayload { json });
        request.set_timeout(timeout);
        let call = async {
            match rpc {
                LeaderRpc::ForwardWrite => client.forward_write(request).await,
                LeaderRpc::ReadIndex => client.read_index(request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_elapsed) => {
                return Err(forward_err(Status::deadline_exceeded("no answer from the leader in time")))
            }
            Ok(Err(status)) if status.code() == Code::FailedPrecondition => {
                let leader_addr =
                    status.metadata().get(RAFT_LEADER_ADDR).and_then(|v| v.to_str().ok()).map(str::to_string);
                return Err(WriteError::NotLeader { leader_addr });
            }
            Ok(Err(status)) if status.metadata().contains_key(RAFT_NO_QUORUM) => {
                return Err(WriteError::NoQuorum(status.message().to_string()))
            }
            Ok(Err(status)) if status.metadata().contains_key(NO_SPACE) => {
                return Err(WriteError::NoSpace(status.message().to_string()))
            }
            Ok(Err(status)) => return Err(forward_err(status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        serde_json::from_slice(&reply.json)
            .map_err(|e| forward_err(Status::internal(format!("undecodable answer from the leader: {e}"))))
    }
}

/// The tonic service answering peers' raft RPCs with the local [`Raft`].
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    /// Refuses forwarded writes that need headroom while the data dir is short of it.
    space: Arc<SpaceGuard>,
    /// When each refused non-member was last logged (one warning per 30 s each).
    refusals_logged: Arc<Mutex<HashMap<NodeId, std::time::Instant>>>,
}

impl RaftService {
    /// A service answering for the raft of `store`, with its write guard.
    pub fn new(store: &super::Store) -> Self {
        Self { raft: store.raft().clone(), space: store.space().clone(), refusals_logged: Arc::default() }
    }

    /// The service as a tonic server, with message limits large enough for snapshot chunks.
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

impl RaftService {
    /// A vote refusal for `candidate` when it is not a voter of the membership this node
    /// knows: a removed scheduler that missed its own removal keeps campaigning, and must
    /// not win an election (and disturb the cluster) on an up-to-date log. Refusing a
    /// vote is always safe; a member this node has not heard of yet is refused only
    /// until the membership that adds it is replicated here.
    fn refuse_non_member(&self, candidate: NodeId) -> Option<VoteResponse<NodeId>> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|id| id == candidate) || membership.get_node(&m.id).is_none() {
            // A node outside any cluster (waiting to join) has no say; openraft decides.
            return None;
        }
        let mut logged = self.refusals_logged.lock().unwrap_or_else(PoisonError::into_inner);
        if logged.get(&candidate).is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
            logged.insert(candidate, std::time::Instant::now());
            tracing::warn!(
                candidate,
                "refusing the votes of scheduler {candidate}: it is not a member of this cluster \
                 (removed?); stop it, or wipe its data_dir and join it again"
            );
        }
        Some(VoteResponse::new(m.vote, None, false))
    }
}

fn decode<T: DeserializeOwned>(request: tonic::Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&request.into_inner().json).map_err(|e| {
        Status::invalid_argument(format!("undecodable raft payload (peer on another version?): {e}"))
    })
}

fn encode<T: Serialize>(value: &T) -> Result<tonic::Response<RaftPayload>, Status> {
    let json =
        serde_json::to_vec(value).map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))?;
    Ok(tonic::Response::new(RaftPayload { json }))
}

/// The status a forwarded write gets when this node is not the leader either.
fn not_leader(leader_addr: Option<String>) -> Status {
    let message = match &leader_addr {
        Some(addr) => format!("this scheduler is not the leader; the leader is at {addr}"),
        None => "this scheduler is not the leader and knows no leader (election in progress?)".to_string(),
    };
    let mut status = Status::failed_precondition(message);
    if let Some(value) = leader_addr.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(RAFT_LEADER_ADDR, value);
    }
    status
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(request)?;
        let candidate = rpc.vote.leader_id().voted_for();
        if let Some(refused) = candidate.and_then(|c| self.refuse_non_member(c)) {
            return encode(&Ok::<_, RaftError<NodeId>>(refused));
        }
        encode(&self.raft.vote(rpc).await)
    }

    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn read_index(
        &self,
        _request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => encode(&read_log_id.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => {
                Err(not_leader(to.leader_node.map(|n| n.addr)))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                let mut status = Status::unavailable(format!("the leader cannot reach a quorum: {e}"));
                status
                    .metadata_mut()
                    .insert(RAFT_NO_QUORUM, tonic::metadata::MetadataValue::from_static("1"));
                Err(status)
            }
            Err(RaftError::Fatal(e)) => {
                Err(Status::internal(format!("the leader's raft has stopped: {e}; see its logs")))
            }
        }
    }

    async fn forward_write(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, Status> {
        let cmd: Command = decode(request)?;
        // The leader's own disk: the write goes into its log first.
        if let Err(refused) = self.space.admit(&cmd) {
            let mut status = Status::resource_exhausted(refused.to_string());
            status.metadata_mut().insert(NO_SPACE, tonic::metadata::MetadataValue::from_static("1"));
            return Err(status);
        }
        match self.raft.client_write(cmd).await {
            Ok(written) => {
                encode(&ForwardedWrite { log_index: written.log_id.index, response: written.data })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                Err(not_leader(to.leader_node.map(|n| n.addr)))
            }
            Err(RaftError::APIError(e)) => Err(Status::failed_precondition(e.to_string())),
            Err(RaftError::Fatal(e)) => {
                Err(Status::unavailable(format!("the leader's raft has stopped: {e}; see its logs")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;
    use crate::raft::test_cluster::{create_app, fast_config, TestCluster};

    fn vote_request() -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(1, 1), None)
    }

    fn plain() -> Peers {
        Peers::new(Transport::Insecure)
    }

    async fn connect(addr: &str) -> Connection {
        Network::new(1, plain()).new_client(2, &BasicNode { addr: addr.into() }).await
    }

    #[tokio::test]
    async fn a_peer_that_refuses_connections_is_unreachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = connect(&addr)
            .await
            .vote(vote_request(), RPCOption::new(Duration::from_secs(2)))
            .await
            .unwrap_err();
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_bad_peer_address_is_unreachable() {
        let err = connect("not an address")
            .await
            .vote(vote_request(), RPCOption::new(Duration::from_secs(1)))
            .await;
        assert!(matches!(err, Err(RPCError::Unreachable(_))), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_are_reused_per_address() {
        let network = Network::new(1, plain());
        network.peers.client("127.0.0.1:1").unwrap();
        network.peers.client("127.0.0.1:1").unwrap();
        network.peers.client("127.0.0.1:2").unwrap();
        assert_eq!(network.peers.clients.lock().unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_raft_error_crosses_the_wire_as_a_remote_error() {
        let mut cluster = TestCluster::new(fast_config());
        cluster.start(1).await;
        let mut conn = connect(&cluster.addr(1)).await;
        // A live, uninitialised node answers a vote request normally.
        let resp = conn.vote(vote_request(), RPCOption::new(Duration::from_secs(2))).await.unwrap();
        assert!(resp.vote_granted);
        // A stopped raft behind a live server answers with its error, not a transport failure.
        cluster.raft(1).shutdown().await.unwrap();
        let err = conn.vote(vote_request(), RPCOption::new(Duration::from_secs(2))).await.unwrap_err();
        match err {
            RPCError::RemoteError(RemoteError { target: 2, source: RaftError::Fatal(_), .. }) => {}
            other => panic!("expected a remote fatal error, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_forwarded_to_a_node_that_is_not_leader_is_refused_as_not_leader() {
        let mut cluster = TestCluster::new(fast_config());
        cluster.start(1).await;
        let err = plain()
            .forward_write(&cluster.addr(1), &create_app("shop"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::NotLeader { leader_addr: None }), "{err:?}");
        // And a write on a node of no cluster says so rather than hanging.
        let err = cluster.store(1).replicate(create_app("shop")).await.unwrap_err();
        assert!(matches!(err, WriteError::NotLeader { leader_addr: None }), "{err:?}");
        assert!(err.to_string().contains("election"), "{err}");
    }

    #[test]
    fn not_leader_status_carries_the_leader_address() {
        let status = not_leader(Some("10.0.0.2:7000".into()));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.metadata().get(RAFT_LEADER_ADDR).unwrap(), "10.0.0.2:7000");
        assert!(status.message().contains("10.0.0.2:7000"));
    }
}
