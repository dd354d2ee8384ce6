//! The store: the replicated state as the rest of the scheduler reads and writes it.
//!
//! [`Store`] holds the raft node, the state it applies, the last applied index, and the
//! clients a follower uses to reach the leader. Everything above the store goes through
//! it:
//!
//! - [`Store::read`]: the state as applied on this member (may lag the leader);
//! - [`Store::read_current`]: a linearizable read: the leader confirms with a quorum, a
//!   follower catches up to the leader's read index first;
//! - [`Store::write`]: a command through raft, forwarded to the leader when this member
//!   follows, bounded by [`WRITE_TIMEOUT`];
//! - [`Store::is_leader`], [`Store::leader_addr`], [`Store::require_leader`];
//! - [`Store::confirm_leading`]: a quorum confirms this member leads, right before a
//!   side effect outside raft (the fence against a deposed leader);
//! - [`Store::health`]: whether this member still keeps what it commits (`/healthz`);
//! - [`Store::space`]: the guard that refuses new work while the data dir is short of
//!   disk ([`super::space`]).
//!
//! [`Store::replicate`] and [`Store::linearizable`] are the raft-level steps under
//! `write` and `read_current`, with raft's own error ([`WriteError`]).

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::watch;

use super::network::Peers;
use super::{Raft, SharedState, SpaceGuard, WriteError};
use crate::error::Error;
use crate::state::{Command, Response, State};

/// How long a write (or a leader's read check) may wait for a quorum.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write forwarded to the leader may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Store::replicate`] waits for a forwarded write to be applied here too.
const FORWARDED_APPLY_WAIT: Duration = Duration::from_secs(5);

/// How long a leader's quorum check that found no quorum is tried again: one round of
/// heartbeats answered late (a follower that just started, a loaded machine) is not a
/// lost quorum, and failing the caller at once turned it into spurious "unavailable"
/// errors (seen in CI right after a cluster started). A leader really cut off still
/// fails after this, well within [`WRITE_TIMEOUT`].
const QUORUM_RETRY: Duration = Duration::from_secs(2);

/// openraft's `ensure_linearizable`, tried again for up to [`QUORUM_RETRY`] while a
/// quorum does not confirm this leader (see there).
async fn ensure_linearizable(
    raft: &Raft,
) -> Result<
    Option<openraft::LogId<super::NodeId>>,
    RaftError<super::NodeId, CheckIsLeaderError<super::NodeId, openraft::BasicNode>>,
> {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match raft.ensure_linearizable().await {
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
                if started.elapsed() < QUORUM_RETRY =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(400));
            }
            other => return other,
        }
    }
}

fn no_quorum_message(what: &str) -> String {
    format!(
        "this scheduler could not {what} within {} s: it cannot reach a majority of the cluster \
         (see `slipway cluster status`); retrying is safe, a retried deploy joins the first",
        WRITE_TIMEOUT.as_secs()
    )
}

/// The replicated store of one member: its raft node and the state it applies.
#[derive(Clone)]
pub struct Store {
    raft: Raft,
    state: SharedState,
    /// Last applied raft index; changes whenever the state does.
    applied: watch::Receiver<u64>,
    /// Clients to the leader, for forwarded writes and read indexes.
    leader: Peers,
    /// sled's data file as opened, to notice it removed or replaced.
    file: StoreFile,
    /// Refuses writes that need headroom while the data dir is below its floor.
    space: std::sync::Arc<SpaceGuard>,
    /// TEST ONLY ([`UNSAFE_LOCAL_READS_ENV`]): `read_current` skips the leader check.
    unsafe_local_reads: bool,
}

/// TEST ONLY, never in production: with `SLIPWAY_TEST_UNSAFE_LOCAL_READS=1` in its
/// environment at start, a member answers "current" reads from its own applied state
/// without confirming leadership or catching up ([`Store::read_current`] becomes
/// [`Store::read`]): a cut-off or lagging member serves stale data. It exists so the
/// chaos run (`tests/src/chaos`) can show its linearizability checker catches that.
pub const UNSAFE_LOCAL_READS_ENV: &str = "SLIPWAY_TEST_UNSAFE_LOCAL_READS";

/// The raft store's data file: its path and which file it was when opened (device and
/// inode). sled keeps writing to the file it opened, so a data dir removed or unmounted
/// under a running scheduler goes unnoticed by raft: every write still "succeeds", into
/// a file no restart will find.
#[derive(Debug, Clone)]
pub struct StoreFile {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
}

impl StoreFile {
    /// The identity of `file`, opened at `path`.
    pub fn of(path: std::path::PathBuf, file: &std::fs::File) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        Ok(Self { path, dev: meta.dev(), ino: meta.ino() })
    }

    /// Fails when `path` is gone or is another file now.
    async fn check(&self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        match tokio::fs::metadata(&self.path).await {
            Ok(meta) if (meta.dev(), meta.ino()) == (self.dev, self.ino) => Ok(()),
            Ok(_) => Err(format!(
                "the raft store {} is another file than the one this scheduler opened (was the data_dir \
                 replaced or a file system mounted over it?): what it commits now is lost at restart; \
                 restart it on its real data_dir",
                self.path.display()
            )),
            Err(e) => Err(format!(
                "the raft store {} is gone ({e}): what this scheduler commits now is lost at restart; \
                 stop it, and restore its data_dir or rejoin it to the cluster with an empty one",
                self.path.display()
            )),
        }
    }
}

impl Store {
    pub(super) fn new(
        raft: Raft,
        state: SharedState,
        applied: watch::Receiver<u64>,
        leader: Peers,
        file: StoreFile,
        space: SpaceGuard,
    ) -> Self {
        let unsafe_local_reads = std::env::var(UNSAFE_LOCAL_READS_ENV).is_ok_and(|v| v == "1");
        if unsafe_local_reads {
            tracing::warn!(
                "{UNSAFE_LOCAL_READS_ENV}=1: reads may be stale; a test-only switch, never use it"
            );
        }
        Self { raft, state, applied, leader, file, space: std::sync::Arc::new(space), unsafe_local_reads }
    }

    /// This store with `guard` refusing writes while the data dir is short of disk
    /// (opened, it has one that never refuses). Set it before the store is shared.
    pub fn with_space_guard(mut self, guard: SpaceGuard) -> Self {
        self.space = std::sync::Arc::new(guard);
        self
    }

    /// The free-space guard of this member's data dir (`/readyz`, `/metrics`).
    pub fn space(&self) -> &std::sync::Arc<SpaceGuard> {
        &self.space
    }

    /// Whether this member still keeps what it commits: raft runs (it stops for good on
    /// a storage error, such as a full disk or a failed write) and the store's data file
    /// is still the one it opened. The error says what broke and what to do.
    pub async fn health(&self) -> Result<(), String> {
        if let Err(fatal) = &self.raft.metrics().borrow().running_state {
            return Err(format!(
                "raft has stopped on this scheduler: {fatal}; check its data_dir (disk full? read-only?) and \
                 its log, then restart it"
            ));
        }
        self.file.check().await
    }

    /// The raft node: metrics, membership changes, shutdown.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The last applied index, to watch: it changes whenever the state does.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// How this member dials its peers (with its certificate when it has one).
    pub fn peers(&self) -> &Peers {
        &self.leader
    }

    /// Reads the replicated state (as applied on this member).
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().expect("state lock poisoned"))
    }

    /// Reads the replicated state for an answer that must be current (linearizable):
    /// the leader first confirms with a quorum that it still leads; a follower first
    /// catches up to the leader's read index. A member cut off from the majority
    /// answers "unavailable" instead of stale data.
    pub async fn read_current<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, Error> {
        if self.unsafe_local_reads {
            return Ok(self.read(f));
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.linearizable()).await {
            Ok(Ok(())) => Ok(self.read(f)),
            Ok(Err(WriteError::NotLeader { leader_addr })) => Err(Error::NotLeader { leader: leader_addr }),
            Ok(Err(WriteError::Fatal(e))) => Err(Error::Storage(e.to_string())),
            // The leader this follower knows did not answer its read index (it died, and
            // no election has replaced it yet): answered like "not the leader", so clients
            // retry. A deploy reads before it writes, so this is the first step to fail.
            Ok(Err(err @ WriteError::Forward { .. })) => Err(Error::LeaderUnreachable(err.to_string())),
            Ok(Err(e)) => Err(Error::Unavailable(e.to_string())),
            Err(_) => Err(Error::Unavailable(no_quorum_message("confirm it is up to date"))),
        }
    }

    /// Proposes a command through raft (forwarded to the leader if need be) and waits
    /// until it is committed and applied. A refusal by the state machine is an error.
    /// A write not committed within [`WRITE_TIMEOUT`] (no quorum) fails as unavailable;
    /// it may still be applied later, which is why commands carry request ids.
    ///
    /// New work ([`Command::needs_headroom`]) is refused first while this member's data
    /// dir is below its floor, and by the leader when its own is ([`Error::NoSpace`]).
    pub async fn write(&self, cmd: Command) -> Result<Response, Error> {
        self.space.admit(&cmd).map_err(|refused| Error::NoSpace(refused.to_string()))?;
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.replicate(cmd))
            .await
            .map_err(|_| Error::Unavailable(no_quorum_message("commit the change")))?;
        match written {
            Ok(Response::Refused(err)) => Err(Error::Refused(err)),
            Ok(resp) => Ok(resp),
            Err(WriteError::NotLeader { leader_addr }) => Err(Error::NotLeader { leader: leader_addr }),
            Err(WriteError::Fatal(err)) => Err(Error::Storage(err.to_string())),
            Err(WriteError::NoSpace(why)) => Err(Error::NoSpace(why)),
            Err(err @ WriteError::Forward { .. }) => Err(Error::LeaderUnreachable(err.to_string())),
            Err(err) => Err(Error::Unavailable(err.to_string())),
        }
    }

    /// True while this member leads the cluster.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(m.id)
    }

    /// Proves, right before a side effect outside raft (a Swarm update, a grant
    /// renewal, a service removal, a registry delete), that this member still leads: a quorum confirms it
    /// (openraft's `ensure_linearizable`), within [`WRITE_TIMEOUT`]. openraft 0.9 does not
    /// make a leader cut off from its quorum step down, so [`Self::is_leader`] alone can
    /// be a deposed leader's stale belief.
    pub async fn confirm_leading(&self) -> Result<(), Error> {
        self.require_leader()?;
        match tokio::time::timeout(WRITE_TIMEOUT, ensure_linearizable(&self.raft)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err(Error::NotLeader { leader: self.leader_addr() })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(Error::Unavailable(format!("a quorum did not confirm this member's leadership: {e}")))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(Error::Storage(e.to_string())),
            Err(_) => Err(Error::Unavailable(no_quorum_message("confirm it still leads"))),
        }
    }

    /// The address of the leader this node knows, from its metrics and membership.
    pub fn leader_addr(&self) -> Option<String> {
        super::leader_addr(&self.raft)
    }

    /// Fails with the leader's address unless this member is the leader.
    pub fn require_leader(&self) -> Result<(), Error> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader { leader: self.leader_addr() })
        }
    }

    /// Replicates `cmd` and returns what applying it returned.
    ///
    /// On a follower the command is forwarded to the leader (`ForwardWrite`), and the call
    /// returns once this node has applied it as well (read-your-writes), or after
    /// a few seconds if it lags.
    pub async fn replicate(&self, cmd: Command) -> Result<Response, WriteError> {
        let to_forward = cmd.clone();
        let to = match self.raft.client_write(cmd).await {
            Ok(written) => return Ok(written.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => to,
            Err(RaftError::APIError(e)) => return Err(WriteError::Refused(e.to_string())),
            Err(RaftError::Fatal(e)) => return Err(e.into()),
        };
        let Some(leader_addr) = to.leader_node.map(|n| n.addr).or_else(|| self.leader_addr()) else {
            return Err(WriteError::NotLeader { leader_addr: None });
        };
        let forwarded = self.leader.forward_write(&leader_addr, &to_forward, FORWARD_TIMEOUT).await?;
        let wait = self.raft.wait(Some(FORWARDED_APPLY_WAIT));
        if let Err(e) = wait.applied_index_at_least(Some(forwarded.log_index), "forwarded write").await {
            tracing::warn!(index = forwarded.log_index, error = %e, "forwarded write not yet applied here");
        }
        Ok(forwarded.response)
    }

    /// Returns once this node's state includes every write committed before the call, so
    /// a read that follows is linearizable. The leader confirms its leadership with a
    /// quorum (openraft's `ensure_linearizable`); a follower asks the leader for that read
    /// index (`ReadIndex`) and waits until it has applied it. Fails with
    /// [`WriteError::NotLeader`] (no leader known, or the one asked is no longer it) or
    /// [`WriteError::NoQuorum`].
    pub async fn linearizable(&self) -> Result<(), WriteError> {
        let to = match ensure_linearizable(&self.raft).await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(to))) => to,
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                return Err(WriteError::NoQuorum(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => return Err(e.into()),
        };
        let Some(leader) = to.leader_node.map(|n| n.addr).or_else(|| self.leader_addr()) else {
            return Err(WriteError::NotLeader { leader_addr: None });
        };
        let index = self.leader.read_index(&leader, FORWARD_TIMEOUT).await?;
        self.raft
            .wait(Some(FORWARDED_APPLY_WAIT))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map_err(|e| {
                WriteError::NoQuorum(format!("this member did not catch up with the leader in time: {e}"))
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use slipway_proto::metadata::{LEADER_HINT, NO_SPACE};
    use tonic::{Code, Status};

    use crate::error::Error;
    use crate::raft::test_cluster::{create_app, fast_config, TestCluster};
    use crate::raft::RaftConfig;
    use crate::state::Command;

    /// A leader whose data dir is below its floor refuses new work forwarded by a
    /// follower whose own disk is fine: the follower's client gets the leader's refusal
    /// (its directory, free bytes and floor) as RESOURCE_EXHAUSTED with `slipway-no-space`,
    /// and removals still go through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_answers_with_the_leaders_no_space_refusal_and_deletes_still_pass() {
        let mut cluster = TestCluster::new(fast_config());
        // Node 1 founds the cluster and leads; no disk has a petabyte free.
        cluster.space_floors.insert(1, 1 << 50);
        for id in 1..=2 {
            cluster.start(id).await;
        }
        cluster.bootstrap(1).await;
        cluster.add_voters(1, &[2]).await;
        assert_eq!(cluster.leader().await, 1);
        cluster.store(1).replicate(create_app("before")).await.unwrap();

        let refused = cluster.store(2).write(create_app("after")).await.unwrap_err();
        let Error::NoSpace(why) = &refused else { panic!("{refused:?}") };
        let leader_dir = cluster.dir.path().join("node-1").display().to_string();
        assert!(
            why.contains(&leader_dir) && why.contains("below storage.min_free_bytes (1024.0 TiB)"),
            "{why}"
        );
        let status = Status::from(refused);
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.metadata().contains_key(NO_SPACE), "{status:?}");
        assert!(!status.metadata().contains_key(LEADER_HINT), "not retried elsewhere: {status:?}");

        cluster.store(2).write(Command::DeleteApp { name: "before".into() }).await.expect("a delete");
        assert!(cluster.state(2).apps.is_empty());
    }

    /// Until an election replaces a dead leader, its followers still name it: a deploy on
    /// one of them (a read, then a write) must answer "not the leader, none known", which
    /// clients retry, not a plain "unavailable" they give up on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_whose_leader_died_answers_not_the_leader_on_reads_and_writes() {
        // Elections slow enough that the dead leader stays the followers' known leader
        // for the checks below (6 s at least; they fail at once, on a refused connection).
        let config = RaftConfig {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_secs(6),
            election_timeout_max: Duration::from_secs(7),
            ..RaftConfig::default()
        };
        let mut cluster = TestCluster::new(config);
        for id in 1..=3 {
            cluster.start(id).await;
        }
        cluster.bootstrap(1).await;
        cluster.add_voters(1, &[2, 3]).await;
        let leader = cluster.leader().await;
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        cluster.store(follower).replicate(create_app("before")).await.unwrap();
        let leader_addr = cluster.addr(leader);
        cluster.stop(leader).await;
        assert_eq!(cluster.raft(follower).metrics().borrow().current_leader, Some(leader));

        let read = cluster.store(follower).read_current(|s| s.apps.len()).await.unwrap_err();
        assert!(matches!(read, Error::LeaderUnreachable(_)), "{read:?}");
        let write = cluster.store(follower).write(create_app("after")).await.unwrap_err();
        assert!(matches!(write, Error::LeaderUnreachable(_)), "{write:?}");
        for err in [read, write] {
            let status = Status::from(err);
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(status.metadata().get(LEADER_HINT).unwrap(), "", "{status:?}");
            assert!(status.message().contains(&leader_addr), "{status:?}");
        }
    }
}
