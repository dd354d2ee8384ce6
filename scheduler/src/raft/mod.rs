//! Raft: openraft 0.9 (`storage-v2`) over sled, with a tonic transport.
//!
//! ```text
//!  control/agents ──client_write(Command)──► openraft ──append──► log_store (sled "log", flushed)
//!                                               │ commit
//!                                               ▼
//!                                       state_machine: State::apply ──► SharedState (readers)
//!                                               │ every N entries: snapshot ──► file + sled record, purge log
//!  other schedulers ◄── network (raft.proto: vote, append, snapshot, forward) ──►
//! ```
//!
//! - [`log_store`]: the raft log and vote in sled trees; an append is acknowledged to
//!   openraft only after `flush_async` returns.
//! - [`state_machine`]: applies committed [`Command`]s to the in-memory [`crate::state::State`],
//!   builds and installs snapshots (persisted as files: [`snapshot_files`]).
//! - [`network`]: openraft's RPCs over tonic, client and server, dialled with the
//!   transport given to [`open`].
//! - [`store`]: [`Store`], the surface the rest of the scheduler uses: read, read
//!   current, write, leadership.

pub mod log_store;
pub mod membership;
pub mod network;
pub mod snapshot_files;
pub mod space;
pub mod state_machine;
pub mod store;

use std::io::Cursor;

use crate::state::{Command, Response};

openraft::declare_raft_types!(
    /// openraft's type configuration for slipway.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The raft handle the rest of the scheduler uses.
pub type Raft = openraft::Raft<TypeConfig>;
/// Raft member ids.
pub type NodeId = u64;

// Opening and bootstrapping; reading and writing go through [`Store`].

pub use membership::{add_member, remove_member, Added, MembershipError};
pub use network::{Network, Peers, RaftService};
pub use space::{NoSpace, SpaceGuard};
pub use state_machine::SharedState;
pub use store::{Store, WRITE_TIMEOUT};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy, StorageError};
use slipway_proto::tls::Transport;

use self::log_store::LogStore;
use self::state_machine::StateMachineStore;

/// How long [`open`] waits for a store still locked by a raft of this process that is
/// shutting down, before reporting it locked by another process.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// Snapshot bytes per `InstallSnapshot` RPC.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// Raft timing and log-compaction settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats; also the deadline of each AppendEntries RPC.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_min, election_timeout_max)` starts an election.
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    pub election_timeout_max: Duration,
    /// Build a snapshot once this many entries were committed since the last one.
    pub snapshot_every: u64,
    /// Entries already in a snapshot that stay in the log (openraft's
    /// `max_in_snapshot_log_to_keep`), so slightly lagging followers catch up from the log
    /// instead of a snapshot.
    pub keep_logs: u64,
    /// Deadline for sending one snapshot chunk to a follower and installing it.
    pub install_snapshot_timeout: Duration,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            snapshot_every: 5000,
            keep_logs: 1000,
            install_snapshot_timeout: Duration::from_secs(5),
        }
    }
}

impl RaftConfig {
    /// openraft's config for these settings, validated.
    pub fn to_openraft(&self) -> Result<openraft::Config, RaftSetupError> {
        if self.snapshot_every == 0 {
            return Err(RaftSetupError::Config("snapshot_every must be at least 1".into()));
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: "slipway".into(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.install_snapshot_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            // openraft asks for a lag threshold above the snapshot interval.
            replication_lag_threshold: self.snapshot_every.saturating_mul(2).max(5000),
            ..Default::default()
        };
        config.validate().map_err(|e| {
            RaftSetupError::Config(format!(
                "{e} (the election timeout must be longer than the heartbeat interval, and its min below its max)"
            ))
        })
    }
}

/// Why the raft node could not be opened or bootstrapped.
#[derive(Debug, thiserror::Error)]
pub enum RaftSetupError {
    /// The raft settings are inconsistent.
    #[error("invalid raft settings: {0}")]
    Config(String),
    /// The data directory could not be created.
    #[error("cannot create the raft data directory {path} (mode 0700): {source}")]
    CreateDir {
        /// The path concerned.
        path: PathBuf,
        #[source]
        /// What the OS said.
        source: std::io::Error,
    },
    /// sled's data file could not be opened for `fdatasync`.
    #[error("cannot open the raft store's data file {path}: {source}")]
    DataFile {
        /// The path concerned.
        path: PathBuf,
        #[source]
        /// What the OS said.
        source: std::io::Error,
    },
    /// Another process holds the store open.
    #[error(
        "the raft store {path} is in use by another process; stop the other slipway-scheduler \
         using this data_dir, or give this one its own data_dir"
    )]
    Locked {
        /// The store.
        path: PathBuf,
    },
    /// sled could not open the store.
    #[error(
        "cannot open the raft store {path}: {source}; if it is damaged, move it aside and rejoin \
         this scheduler to the cluster with an empty data_dir"
    )]
    Open {
        /// The path concerned.
        path: PathBuf,
        #[source]
        /// What sled said.
        source: sled::Error,
    },
    /// The stored snapshot could not be read.
    #[error("cannot load the raft snapshot from {path}: {source}")]
    Load {
        /// The path concerned.
        path: PathBuf,
        #[source]
        /// What the store said.
        source: Box<StorageError<NodeId>>,
    },
    /// openraft stopped: starting failed (unreadable log) or the node was shut down.
    #[error("raft is not running: {0}; see the log above for the storage error")]
    Raft(#[source] Box<Fatal<NodeId>>),
    /// openraft refused to initialise the cluster.
    #[error("cannot initialise the cluster: {0}")]
    Initialize(#[source] Box<InitializeError<NodeId, BasicNode>>),
}

impl From<Fatal<NodeId>> for RaftSetupError {
    fn from(e: Fatal<NodeId>) -> Self {
        Self::Raft(Box::new(e))
    }
}

impl From<InitializeError<NodeId, BasicNode>> for RaftSetupError {
    fn from(e: InitializeError<NodeId, BasicNode>) -> Self {
        Self::Initialize(Box::new(e))
    }
}

/// Why a write (or a linearizable read check) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This scheduler is not the leader and could not hand the write on: no leader is
    /// known (`None`: an election is under way), or the node it forwarded to was not the
    /// leader either. Retry, against `leader_addr` if given.
    #[error("{}", not_leader_message(.leader_addr))]
    NotLeader {
        /// The leader's address, if one is known.
        leader_addr: Option<String>,
    },
    /// The leader could not confirm its leadership with a quorum (linearizable reads).
    #[error(
        "the leader cannot reach a quorum of schedulers ({0}); check the other schedulers and the network"
    )]
    NoQuorum(String),
    /// Forwarding a write (or a read index request) to the leader failed in transport; a
    /// write may or may not have been applied (commands carry a `request_id` to make retries safe).
    #[error("forwarding the request to the leader at {leader_addr} failed: {source}; retry in a moment")]
    Forward {
        /// The leader the write was forwarded to.
        leader_addr: String,
        #[source]
        /// What the transport said.
        source: Box<tonic::Status>,
    },
    /// raft refused the write for a reason that does not apply to plain commands
    /// (a membership change in progress).
    #[error("raft refused the write: {0}")]
    Refused(String),
    /// The leader's data dir is below its free-space floor (see [`space`]); the text is
    /// the leader's, naming its directory and the fix.
    #[error("{0}")]
    NoSpace(String),
    /// raft has stopped on this scheduler: a storage failure, or shutdown.
    #[error("raft has stopped on this scheduler: {0}; check its data_dir and logs, then restart it")]
    Fatal(#[source] Box<Fatal<NodeId>>),
}

impl From<Fatal<NodeId>> for WriteError {
    fn from(e: Fatal<NodeId>) -> Self {
        Self::Fatal(Box::new(e))
    }
}

fn not_leader_message(leader_addr: &Option<String>) -> String {
    match leader_addr {
        Some(addr) => format!("this scheduler is not the leader; send the request to the leader at {addr}"),
        None => "no scheduler is leader right now (an election is under way); retry in a moment".into(),
    }
}

/// An opened raft node, as the [`Store`] the rest of the scheduler reads and writes.
pub struct Opened {
    /// The raft node, its applied state, and the means to write through the leader.
    pub store: Store,
    /// Whether the store already held a cluster (a vote or log entries) when opened:
    /// such a node must never be bootstrapped again.
    pub initialized: bool,
}

/// Opens (creating if needed) the raft store at `<data_dir>/raft`, private to its owner
/// (0700; sled's files inside take the process umask), and starts the raft node
/// `node_id` on it, dialling its peers with `transport` (plain text, or TLS with this
/// scheduler's certificate).
///
/// The last snapshot is loaded and the committed log entries after it are re-applied
/// before this returns, so the state is current as of the last commit this node saw.
pub async fn open(
    data_dir: &Path,
    node_id: NodeId,
    config: &RaftConfig,
    transport: Transport,
) -> Result<Opened, RaftSetupError> {
    let raft_config = Arc::new(config.to_openraft()?);
    let path = data_dir.join("raft");
    slipway_proto::tls::create_private_dir(&path)
        .map_err(|source| RaftSetupError::CreateDir { path: path.clone(), source })?;
    let db = open_db(&path).await?;
    let data_file = std::fs::File::open(path.join("db"))
        .map_err(|source| RaftSetupError::DataFile { path: path.join("db"), source })?;
    let store_file = store::StoreFile::of(path.join("db"), &data_file)
        .map_err(|source| RaftSetupError::DataFile { path: path.join("db"), source })?;
    let log_store = LogStore::open(db.clone())
        .map_err(|source| RaftSetupError::Open { path: path.clone(), source })?
        .sync_data_file(data_file);
    // Beside sled's directory, not in it: sled owns the files there.
    let state_machine = StateMachineStore::open(db, data_dir.join("raft-snapshots"))
        .await
        .map_err(|e| RaftSetupError::Load { path: path.clone(), source: Box::new(e) })?;
    let state = state_machine.state();
    let applied = state_machine.subscribe_applied();
    // Raft RPCs and a follower's calls to the leader use clients of their own (a large
    // snapshot chunk never queues ahead of a forwarded write).
    let network = Network::new(node_id, Peers::new(transport.clone()));
    let raft = Raft::new(node_id, raft_config, network, log_store, state_machine).await?;
    let initialized = raft.is_initialized().await?;
    tracing::info!(node_id, path = %path.display(), initialized, applied = *applied.borrow(), "raft store opened");
    let store =
        Store::new(raft, state, applied, Peers::new(transport), store_file, SpaceGuard::off(data_dir));
    Ok(Opened { store, initialized })
}

/// Opens the sled db at `path`, waiting up to [`LOCK_WAIT`] for a lock held by a raft of
/// this process that is still shutting down.
async fn open_db(path: &Path) -> Result<sled::Db, RaftSetupError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let config = sled::Config::new().path(path).flush_every_ms(None);
        let opened = tokio::task::spawn_blocking(move || config.open())
            .await
            .unwrap_or_else(|e| Err(sled::Error::ReportableBug(format!("opening the store panicked: {e}"))));
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(RaftSetupError::Locked { path: path.to_path_buf() });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => return Err(RaftSetupError::Open { path: path.to_path_buf(), source }),
        }
    }
}

/// Founds a cluster of `members` (id → advertised address) on this node, unless its
/// store already holds a cluster. Returns whether it initialised one.
///
/// Call it on the node meant to start a new cluster with itself alone, or on every
/// founding member with the same `members` (they all write the same membership at log
/// index 0, so that is safe). Nodes that join an existing cluster wait to be added by
/// the leader instead ([`add_member`]).
pub async fn bootstrap(raft: &Raft, members: BTreeMap<NodeId, String>) -> Result<bool, RaftSetupError> {
    if raft.is_initialized().await? {
        tracing::info!("the raft store already holds a cluster; not bootstrapping");
        return Ok(false);
    }
    let count = members.len();
    let nodes: BTreeMap<NodeId, BasicNode> =
        members.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
    match raft.initialize(nodes).await {
        Ok(()) => {
            tracing::info!(members = count, "founded a raft cluster");
            Ok(true)
        }
        // Raced with a vote or entries from a peer: the store is no longer pristine.
        Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
            tracing::info!(reason = %e, "not bootstrapping");
            Ok(false)
        }
        Err(RaftError::APIError(e)) => Err(e.into()),
        Err(RaftError::Fatal(e)) => Err(e.into()),
    }
}

/// The address of the leader `raft` knows, from its metrics and membership.
pub(crate) fn leader_addr(raft: &Raft) -> Option<String> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let leader = metrics.current_leader?;
    metrics.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
}

/// An in-process raft cluster for tests: each node has its own data dir under one
/// temporary directory and serves [`RaftService`] on `127.0.0.1`.
#[cfg(test)]
pub(crate) mod test_cluster {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::state::State;

    /// One scheduler's raft: its handles and its server.
    pub(crate) struct TestNode {
        pub addr: String,
        pub opened: Opened,
        server: tokio::task::JoinHandle<()>,
        stop_server: Option<oneshot::Sender<()>>,
    }

    impl Drop for TestNode {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    pub(crate) struct TestCluster {
        pub dir: tempfile::TempDir,
        pub config: RaftConfig,
        pub nodes: BTreeMap<NodeId, TestNode>,
        /// Addresses of nodes ever started, so a restarted node keeps its address.
        addrs: BTreeMap<NodeId, String>,
        /// `[storage] min_free_bytes` of nodes started with a space guard (none: off).
        pub space_floors: BTreeMap<NodeId, u64>,
    }

    /// Settings that elect a leader quickly without flapping on a loaded 2-core machine.
    pub(crate) fn fast_config() -> RaftConfig {
        RaftConfig {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            ..RaftConfig::default()
        }
    }

    impl TestCluster {
        pub fn new(config: RaftConfig) -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                config,
                nodes: BTreeMap::new(),
                addrs: BTreeMap::new(),
                space_floors: BTreeMap::new(),
            }
        }

        /// Starts (or restarts, on its old address and data dir) node `id`.
        pub async fn start(&mut self, id: NodeId) -> &TestNode {
            let listener = match self.addrs.get(&id) {
                None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
                Some(addr) => bind_again(addr).await,
            };
            let addr = listener.local_addr().unwrap().to_string();
            self.addrs.insert(id, addr.clone());
            let data_dir = self.dir.path().join(format!("node-{id}"));
            let mut opened = open(&data_dir, id, &self.config, Transport::Insecure).await.unwrap();
            if let Some(&floor) = self.space_floors.get(&id) {
                opened.store = opened.store.with_space_guard(SpaceGuard::new(&data_dir, floor));
            }
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let service = RaftService::new(&opened.store).into_server();
            let server = tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        stop_rx.await.ok();
                    })
                    .await
                    .unwrap();
            });
            self.nodes.insert(id, TestNode { addr, opened, server, stop_server: Some(stop_tx) });
            &self.nodes[&id]
        }

        /// Shuts node `id` down: its raft, then its server.
        pub async fn stop(&mut self, id: NodeId) {
            let mut node = self.nodes.remove(&id).unwrap();
            node.opened.store.raft().shutdown().await.unwrap();
            if let Some(stop) = node.stop_server.take() {
                stop.send(()).ok();
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut node.server).await;
        }

        pub fn raft(&self, id: NodeId) -> &Raft {
            self.nodes[&id].opened.store.raft()
        }

        pub fn store(&self, id: NodeId) -> &Store {
            &self.nodes[&id].opened.store
        }

        pub fn addr(&self, id: NodeId) -> String {
            self.nodes[&id].addr.clone()
        }

        pub fn state(&self, id: NodeId) -> State {
            self.nodes[&id].opened.store.read(State::clone)
        }

        pub fn applied(&self, id: NodeId) -> u64 {
            *self.nodes[&id].opened.store.applied().borrow()
        }

        pub async fn bootstrap(&self, id: NodeId) -> bool {
            bootstrap(self.raft(id), BTreeMap::from([(id, self.addr(id))])).await.unwrap()
        }

        /// Adds `ids` as voters through the leader `leader`.
        pub async fn add_voters(&self, leader: NodeId, ids: &[NodeId]) {
            let raft = self.raft(leader);
            // Membership changes wait for the leader to commit the current membership.
            raft.wait(Some(Duration::from_secs(20)))
                .metrics(
                    |m| {
                        m.current_leader == Some(leader)
                            && m.last_applied.map(|l| l.index)
                                >= m.membership_config.log_id().map(|l| l.index)
                    },
                    "leader committed its membership",
                )
                .await
                .unwrap();
            for &id in ids {
                raft.add_learner(id, BasicNode { addr: self.addr(id) }, true).await.unwrap();
            }
            let voters: BTreeSet<NodeId> =
                raft.metrics().borrow().membership_config.voter_ids().chain(ids.iter().copied()).collect();
            raft.change_membership(voters, false).await.unwrap();
        }

        /// Waits until every running node names the same running leader.
        pub async fn leader(&self) -> NodeId {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let leaders: BTreeSet<Option<NodeId>> = self
                    .nodes
                    .values()
                    .map(|n| n.opened.store.raft().metrics().borrow().current_leader)
                    .collect();
                if let [Some(leader)] = leaders.into_iter().collect::<Vec<_>>()[..] {
                    if self.nodes.contains_key(&leader) {
                        return leader;
                    }
                }
                assert!(tokio::time::Instant::now() < deadline, "no leader elected in 20 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Waits until node `id` has applied `index`.
        pub async fn wait_applied(&self, id: NodeId, index: u64) {
            let mut applied = self.nodes[&id].opened.store.applied();
            tokio::time::timeout(Duration::from_secs(20), applied.wait_for(|a| *a >= index))
                .await
                .unwrap_or_else(|_| panic!("node {id} did not apply index {index} in 20 s"))
                .unwrap();
        }

        /// Waits until every running node has applied what `leader` has, then returns
        /// the leader's state.
        pub async fn converged(&self, leader: NodeId) -> State {
            let index = self.applied(leader);
            for &id in self.nodes.keys() {
                self.wait_applied(id, index).await;
            }
            self.state(leader)
        }
    }

    /// Binds `addr` again after its previous listener closed.
    async fn bind_again(addr: &str) -> TcpListener {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(addr).await {
                return listener;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot bind {addr} again");
    }

    pub(crate) fn create_app(name: &str) -> Command {
        Command::CreateApp {
            name: name.into(),
            repo: format!("file:///srv/{name}"),
            branch: "main".into(),
            at_ms: 1,
        }
    }

    pub(crate) fn queue_build(app: &str) -> Command {
        Command::QueueBuild {
            app: app.into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: Some(format!("req-{app}")),
            at_ms: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::test_cluster::{create_app, fast_config, queue_build, TestCluster};
    use super::*;
    use crate::state::State;

    fn one_member() -> BTreeMap<NodeId, String> {
        BTreeMap::from([(1, "127.0.0.1:1".to_string())])
    }

    async fn single_node(dir: &Path, config: &RaftConfig) -> Opened {
        let opened = open(dir, 1, config, Transport::Insecure).await.unwrap();
        bootstrap(opened.store.raft(), one_member()).await.unwrap();
        opened
            .store
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .current_leader(1, "single node leads")
            .await
            .unwrap();
        opened
    }

    async fn shut(opened: Opened) {
        opened.store.raft().shutdown().await.unwrap();
        drop(opened);
    }

    #[test]
    fn default_settings_are_valid_and_bad_ones_are_explained() {
        let config = RaftConfig::default().to_openraft().unwrap();
        assert_eq!((config.heartbeat_interval, config.election_timeout_min), (100, 400));
        let bad = RaftConfig { election_timeout_min: Duration::from_millis(50), ..RaftConfig::default() };
        let err = bad.to_openraft().unwrap_err().to_string();
        assert!(err.contains("heartbeat"), "{err}");
        let bad = RaftConfig { snapshot_every: 0, ..RaftConfig::default() };
        assert!(bad.to_openraft().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_node_keeps_its_state_across_a_restart_and_is_not_bootstrapped_again() {
        let dir = tempfile::tempdir().unwrap();
        let config = RaftConfig::default();
        let opened = open(dir.path(), 1, &config, Transport::Insecure).await.unwrap();
        assert!(!opened.initialized);
        let mode = std::fs::metadata(dir.path().join("raft")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o700);
        assert!(bootstrap(opened.store.raft(), one_member()).await.unwrap());
        opened.store.raft().wait(Some(Duration::from_secs(10))).current_leader(1, "leader").await.unwrap();

        let started = Instant::now();
        for i in 0..60 {
            let resp = opened.store.replicate(create_app(&format!("app-{i}"))).await.unwrap();
            assert!(matches!(resp, Response::App(_)), "{resp:?}");
        }
        for i in 0..40 {
            let resp = opened.store.replicate(queue_build(&format!("app-{i}"))).await.unwrap();
            assert!(matches!(resp, Response::Build(_)), "{resp:?}");
        }
        let elapsed = started.elapsed();
        eprintln!(
            "100 sequential durable writes: {elapsed:?} ({:.0} writes/s)",
            100.0 / elapsed.as_secs_f64()
        );

        let before = opened.store.read(State::clone);
        let applied = *opened.store.applied().borrow();
        assert_eq!((before.apps.len(), before.builds.len()), (60, 40));
        shut(opened).await;

        let reopened = open(dir.path(), 1, &config, Transport::Insecure).await.unwrap();
        assert!(reopened.initialized);
        // The committed entries were re-applied inside `open`, before any election.
        assert_eq!(*reopened.store.applied().borrow(), applied);
        assert_eq!(reopened.store.read(State::clone), before);
        assert!(!bootstrap(reopened.store.raft(), one_member()).await.unwrap());

        reopened
            .store
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .current_leader(1, "leader again")
            .await
            .unwrap();
        reopened.store.replicate(create_app("after-restart")).await.unwrap();
        let state = reopened.store.read(State::clone);
        assert_eq!(state.apps.len(), 61);
        assert_eq!(state.builds.len(), 40);
        let voters: Vec<NodeId> =
            reopened.store.raft().metrics().borrow().membership_config.voter_ids().collect();
        assert_eq!(voters, vec![1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_in_use_is_reported_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(dir.path(), 1, &RaftConfig::default(), Transport::Insecure).await.unwrap();
        let Err(err) = open(dir.path(), 1, &RaftConfig::default(), Transport::Insecure).await else {
            panic!("opened a store that is in use");
        };
        assert!(matches!(err, RaftSetupError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("in use by another process"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixteen_concurrent_writers_all_get_their_writes_applied() {
        // openraft 0.9 awaits each append's flush before taking the next client write, so
        // concurrency does not batch flushes: the rate printed here is one fsync per write.
        let dir = tempfile::tempdir().unwrap();
        let opened = single_node(dir.path(), &RaftConfig::default()).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let store = opened.store.clone();
                tokio::spawn(async move {
                    for i in 0..25 {
                        store.replicate(create_app(&format!("app-{t}-{i}"))).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed();
        eprintln!(
            "400 durable writes from 16 writers: {elapsed:?} ({:.0} writes/s)",
            400.0 / elapsed.as_secs_f64()
        );
        assert_eq!(opened.store.read(|s| s.apps.len()), 400);
        shut(opened).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_bound_the_log_and_a_restart_resumes_from_snapshot_plus_log() {
        let dir = tempfile::tempdir().unwrap();
        let config = RaftConfig { snapshot_every: 50, keep_logs: 10, ..RaftConfig::default() };
        let opened = single_node(dir.path(), &config).await;
        for i in 0..200 {
            opened.store.replicate(create_app(&format!("app-{i}"))).await.unwrap();
        }
        opened
            .store
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= 150) && m.purged.is_some_and(|p| p.index > 100),
                "snapshot built and log purged",
            )
            .await
            .unwrap();
        // Entries past the snapshot: the restart must replay them from the log.
        for i in 200..205 {
            opened.store.replicate(create_app(&format!("app-{i}"))).await.unwrap();
        }
        let metrics = opened.store.raft().metrics().borrow().clone();
        let snapshot_index = metrics.snapshot.map(|s| s.index).unwrap();
        eprintln!(
            "after 205 writes: last log {:?}, snapshot {:?}, purged {:?}",
            metrics.last_log_index, metrics.snapshot, metrics.purged
        );
        let before = opened.store.read(State::clone);
        let applied = *opened.store.applied().borrow();
        shut(opened).await;

        {
            let db = open_db(&dir.path().join("raft")).await.unwrap();
            let log = LogStore::open(db.clone()).unwrap();
            let first = log.first_index().unwrap().unwrap();
            assert!(first > 1, "log starts at {first}");
            assert!(log.len() < 100, "log holds {} entries", log.len());
            assert!(db.open_tree("snapshot").unwrap().get("meta").unwrap().is_some());
            eprintln!("stored log: {} entries from index {first}", log.len());
        }

        let reopened = open(dir.path(), 1, &config, Transport::Insecure).await.unwrap();
        assert!(snapshot_index < applied, "snapshot {snapshot_index}, applied {applied}");
        assert_eq!(*reopened.store.applied().borrow(), applied);
        assert_eq!(reopened.store.read(State::clone), before);
        assert_eq!(before.apps.len(), 205);
        shut(reopened).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_replicate_and_a_follower_forwards_writes_applied_once() {
        let mut cluster = TestCluster::new(fast_config());
        for id in 1..=3 {
            cluster.start(id).await;
        }
        assert!(cluster.bootstrap(1).await);
        assert!(!cluster.bootstrap(1).await);
        cluster.add_voters(1, &[2, 3]).await;
        let leader = cluster.leader().await;

        for i in 0..20 {
            cluster.store(leader).replicate(create_app(&format!("app-{i}"))).await.unwrap();
        }
        let state = cluster.converged(leader).await;
        assert_eq!(state.apps.len(), 20);
        for id in 1..=3 {
            assert_eq!(cluster.state(id), state, "node {id}");
        }

        let follower = (1..=3).find(|id| *id != leader).unwrap();
        let resp = cluster.store(follower).replicate(create_app("via-follower")).await.unwrap();
        assert!(matches!(resp, Response::App(_)), "{resp:?}");
        // Read-your-writes: the follower has applied its forwarded write on return.
        assert!(cluster.state(follower).apps.contains_key("via-follower"));
        let resp = cluster.store(follower).replicate(queue_build("via-follower")).await.unwrap();
        let Response::Build(build) = resp else { panic!("{resp:?}") };

        let state = cluster.converged(leader).await;
        assert_eq!(state.apps.len(), 21);
        let builds: Vec<_> = state.builds.values().filter(|b| b.app == "via-follower").collect();
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].id, build.id);
        for id in 1..=3 {
            assert_eq!(cluster.state(id), state, "node {id}");
        }

        cluster.store(leader).linearizable().await.unwrap();
        // A follower reads linearizably too: it asks the leader for the read index and
        // waits until it has applied it.
        let resp = cluster.store(leader).replicate(create_app("just-written")).await.unwrap();
        assert!(matches!(resp, Response::App(_)), "{resp:?}");
        cluster.store(follower).linearizable().await.unwrap();
        assert!(cluster.state(follower).apps.contains_key("just-written"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_leader_takes_over_and_a_restarted_node_catches_up() {
        let mut cluster = TestCluster::new(fast_config());
        for id in 1..=3 {
            cluster.start(id).await;
        }
        cluster.bootstrap(1).await;
        cluster.add_voters(1, &[2, 3]).await;
        let old = cluster.leader().await;
        for i in 0..10 {
            cluster.store(old).replicate(create_app(&format!("before-{i}"))).await.unwrap();
        }
        cluster.converged(old).await;

        cluster.stop(old).await;
        let started = Instant::now();
        let new = cluster.leader().await;
        eprintln!("failover: node {new} leads {:?} after node {old} stopped", started.elapsed());
        assert_ne!(new, old);
        let follower = (1..=3).find(|id| *id != old && *id != new).unwrap();
        cluster.store(follower).replicate(create_app("after-failover")).await.unwrap();

        cluster.start(old).await;
        assert!(cluster.nodes[&old].opened.initialized);
        assert!(!cluster.bootstrap(old).await);
        let leader = cluster.leader().await;
        let state = cluster.converged(leader).await;
        assert_eq!(state.apps.len(), 11);
        assert_eq!(cluster.state(old), state);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_joiner_that_never_answers_is_taken_out_after_the_catch_up_time() {
        let mut cluster = TestCluster::new(fast_config());
        cluster.start(1).await;
        cluster.bootstrap(1).await;
        cluster.leader().await;
        for i in 0..10 {
            cluster.store(1).replicate(create_app(&format!("app-{i}"))).await.unwrap();
        }
        // Accepts connections and never answers: the raft RPCs to it time out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let catch_up = Duration::from_secs(2);
        let started = std::time::Instant::now();
        // Bounded: a joiner wrongly made a voter leaves the promotion waiting for a quorum.
        let added = tokio::time::timeout(catch_up * 5, add_member(cluster.raft(1), 2, &addr, catch_up))
            .await
            .expect("add_member returns within its catch-up time");
        let took = started.elapsed();
        assert!(matches!(added, Err(MembershipError::CatchUp { id: 2, .. })), "{added:?}");
        assert!(took >= catch_up && took < catch_up + Duration::from_secs(5), "{took:?}");
        let membership = cluster.raft(1).metrics().borrow().membership_config.membership().clone();
        assert!(membership.get_node(&2).is_none(), "still a member: {membership:?}");
        drop(silent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_added_after_compaction_catches_up_from_a_snapshot() {
        let mut cluster = TestCluster::new(RaftConfig { snapshot_every: 20, keep_logs: 0, ..fast_config() });
        cluster.start(1).await;
        cluster.bootstrap(1).await;
        cluster.leader().await;
        for i in 0..100 {
            cluster.store(1).replicate(create_app(&format!("app-{i}"))).await.unwrap();
        }
        cluster
            .raft(1)
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= 60), "log purged")
            .await
            .unwrap();

        cluster.start(2).await;
        cluster.add_voters(1, &[2]).await;
        let state = cluster.converged(1).await;
        assert_eq!(state.apps.len(), 100);
        assert_eq!(cluster.state(2), state);
        let snapshot = cluster.raft(2).metrics().borrow().snapshot;
        assert!(snapshot.is_some_and(|s| s.index >= 60), "node 2 snapshot: {snapshot:?}");
    }
}
