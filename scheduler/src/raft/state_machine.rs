//! The state machine: committed [`Command`]s applied to the in-memory [`State`], and its
//! snapshots, persisted as files ([`super::snapshot_files`]).
//!
//! The [`State`] lives in memory behind a [`SharedState`] lock that the rest of the
//! scheduler reads. `apply` takes the write lock once per entry and never across an
//! `.await`, so readers wait at most one `State::apply`. After each applied batch the
//! last applied index is published on a [`watch`] channel ([`StateMachineStore::subscribe_applied`])
//! so the dispatcher and watchers wake on changes instead of polling.
//!
//! Persistence is by snapshot only: applying an entry writes nothing to disk, since the
//! entry is already durable in the raft log. A snapshot (`{state, last_applied,
//! membership}` as JSON) is written durably to a file, with its record in the sled tree
//! `snapshot` ([`super::snapshot_files`]), when openraft builds one (every `snapshot_every` entries) or installs one from the leader. On start
//! the last snapshot is loaded, and openraft re-applies the log entries after it up to
//! the persisted committed index (see [`super::log_store`]) before the node serves.

// openraft's storage traits return its `StorageError` (224 bytes) by value; the helpers
// here return the same type so `?` stays plain.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot_files::{snapshot_err, Disk, FileLayer, SnapshotStore};
use super::{NodeId, TypeConfig};
use crate::state::{Command, Response, State};

/// The replicated state as the rest of the scheduler reads it.
///
/// Hold the read lock briefly and never across an `.await`: the state machine needs the
/// write lock for every applied entry.
pub type SharedState = Arc<RwLock<State>>;

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, BasicNode>;

/// What a snapshot holds: everything needed to rebuild the state machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotPayload {
    state: State,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
}

/// The state machine store: openraft's [`RaftStateMachine`] over the in-memory [`State`].
pub struct StateMachineStore {
    state: SharedState,
    /// Last entry applied to `state`.
    last_applied_log: Option<LogId<NodeId>>,
    /// Last membership config applied (with the log id that carried it).
    last_membership: Membership,
    snapshots: SnapshotStore,
    /// Publishes `last_applied_log`'s index (0 before anything was applied).
    applied_tx: watch::Sender<u64>,
}

impl StateMachineStore {
    /// Opens the snapshot record of `db` and the snapshot files in `snapshot_dir`
    /// ([`super::snapshot_files`]), and loads the last snapshot, if any, as the state.
    pub async fn open(db: sled::Db, snapshot_dir: std::path::PathBuf) -> StorageResult<Self> {
        Self::open_with(db, snapshot_dir, Arc::new(Disk)).await
    }

    /// [`Self::open`] with the snapshot files going through `files` (tests cut the power).
    pub async fn open_with(
        db: sled::Db,
        snapshot_dir: std::path::PathBuf,
        files: Arc<dyn FileLayer>,
    ) -> StorageResult<Self> {
        let snapshots = SnapshotStore::open(db, snapshot_dir, files)?;
        let (state, last_applied_log, last_membership) = match snapshots.load()? {
            Some((meta, data)) => {
                let payload = decode_payload(&meta, &data)?;
                tracing::info!(
                    snapshot = %meta,
                    apps = payload.state.apps.len(),
                    builds = payload.state.builds.len(),
                    "loaded the raft snapshot"
                );
                (payload.state, meta.last_log_id, meta.last_membership)
            }
            None => (State::default(), None, Membership::default()),
        };
        let (applied_tx, _) = watch::channel(last_applied_log.map_or(0, |l| l.index));
        Ok(Self {
            state: Arc::new(RwLock::new(state)),
            last_applied_log,
            last_membership,
            snapshots,
            applied_tx,
        })
    }

    /// The state readers share; it changes as entries are applied.
    pub fn state(&self) -> SharedState {
        Arc::clone(&self.state)
    }

    /// A receiver of the last applied log index: it changes after every applied batch
    /// and after a snapshot is installed.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// The last log id applied to the state.
    pub fn last_applied_log(&self) -> Option<LogId<NodeId>> {
        self.last_applied_log
    }

    fn apply_command(&self, log_id: LogId<NodeId>, cmd: &Command) -> StorageResult<Response> {
        let mut state = self.state.write().map_err(|_| poisoned(log_id))?;
        Ok(state.apply(cmd))
    }

    fn publish_applied(&self) {
        if let Some(last) = self.last_applied_log {
            self.applied_tx.send_replace(last.index);
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.last_applied_log, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Normal(cmd) => self.apply_command(entry.log_id, cmd)?,
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    Response::Done
                }
            };
            self.last_applied_log = Some(entry.log_id);
            responses.push(response);
        }
        self.publish_applied();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // A frozen copy: openraft builds the snapshot in another task while this store
        // goes on applying entries.
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner).clone();
        SnapshotBuilder {
            payload: SnapshotPayload {
                state,
                last_applied: self.last_applied_log,
                last_membership: self.last_membership.clone(),
            },
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let payload = decode_payload(meta, &data)?;
        self.snapshots.save(meta, &data).await?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "installed a raft snapshot from the leader");
        {
            // A snapshot replaces the whole state, so it also heals a lock poisoned by a panic.
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            *state = payload.state;
        }
        self.state.clear_poison();
        self.last_applied_log = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish_applied();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self
            .snapshots
            .load()?
            .map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Builds a snapshot from the copy of the state taken by `get_snapshot_builder`.
pub struct SnapshotBuilder {
    payload: SnapshotPayload,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let last_applied = self.payload.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: self.payload.last_membership.clone(),
            snapshot_id: format!("{}-{}", last_applied.map_or(0, |l| l.index), uuid::Uuid::new_v4().simple()),
        };
        // Serializing a large state is CPU work: keep it off the async workers.
        let payload = self.payload.clone();
        let data = tokio::task::spawn_blocking(move || serde_json::to_vec(&payload))
            .await
            .map_err(|e| snapshot_err(&meta, ErrorVerb::Write, &e))?
            .map_err(|e| snapshot_err(&meta, ErrorVerb::Write, &e))?;
        self.snapshots.save(&meta, &data).await?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "built a raft snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

fn decode_payload(meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> StorageResult<SnapshotPayload> {
    serde_json::from_slice(data).map_err(|e| snapshot_err(meta, ErrorVerb::Read, &e))
}

fn poisoned(log_id: LogId<NodeId>) -> StorageError<NodeId> {
    StorageIOError::new(
        ErrorSubject::Apply(log_id),
        ErrorVerb::Write,
        AnyError::error(
            "the state lock was poisoned by a panic while applying an earlier entry; \
             restart the scheduler to rebuild the state from the snapshot and the log",
        ),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use openraft::Membership as RaftMembership;

    use super::*;

    /// Opens the store, waiting (as the scheduler does, `raft::open_db`) while a store
    /// just dropped still holds its lock: sled's threads let go of it a little later,
    /// later still on a loaded machine (seen: "WouldBlock" in a reopen test).
    fn open_db(dir: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::Config::new().path(dir).flush_every_ms(None).open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                opened => return opened.unwrap(),
            }
        }
    }

    fn create_app(name: &str) -> Command {
        Command::CreateApp { name: name.into(), repo: "file:///r".into(), branch: "main".into(), at_ms: 1 }
    }

    fn normal(index: u64, cmd: Command) -> Entry<TypeConfig> {
        Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Normal(cmd) }
    }

    #[tokio::test]
    async fn applies_commands_and_publishes_the_applied_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm =
            StateMachineStore::open(open_db(dir.path()), dir.path().join("snapshots")).await.unwrap();
        let mut applied = sm.subscribe_applied();
        let members = RaftMembership::new(vec![[1u64].into()], None);
        let entries = vec![
            Entry { log_id: log_id(1, 1, 1), payload: EntryPayload::Membership(members.clone()) },
            normal(2, create_app("shop")),
            normal(3, create_app("shop")),
        ];
        let responses = sm.apply(entries).await.unwrap();
        assert_eq!(responses[0], Response::Done);
        assert!(matches!(responses[1], Response::App(_)));
        assert!(matches!(responses[2], Response::Refused(_)));
        assert!(applied.has_changed().unwrap());
        assert_eq!(*applied.borrow_and_update(), 3);
        let (last, membership) = sm.applied_state().await.unwrap();
        assert_eq!(last, Some(log_id(1, 1, 3)));
        assert_eq!(membership.membership(), &members);
        assert!(sm.state().read().unwrap().apps.contains_key("shop"));
    }

    #[tokio::test]
    async fn a_built_snapshot_is_what_a_reopened_store_starts_from() {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let mut sm =
                StateMachineStore::open(open_db(dir.path()), dir.path().join("snapshots")).await.unwrap();
            sm.apply((1..=20).map(|i| normal(i, create_app(&format!("app-{i}"))))).await.unwrap();
            let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
            assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 20)));
            // Entries applied after the snapshot are not in it: the log replays them.
            sm.apply([normal(21, create_app("late"))]).await.unwrap();
            sm.state().read().unwrap().clone()
        };
        let mut sm =
            StateMachineStore::open(open_db(dir.path()), dir.path().join("snapshots")).await.unwrap();
        assert_eq!(sm.last_applied_log(), Some(log_id(1, 1, 20)));
        assert_eq!(*sm.subscribe_applied().borrow(), 20);
        assert_eq!(sm.state().read().unwrap().apps.len(), 20);
        sm.apply([normal(21, create_app("late"))]).await.unwrap();
        assert_eq!(*sm.state().read().unwrap(), expected);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(1, 1, 20)));
    }

    #[tokio::test]
    async fn snapshots_hold_no_join_secret_an_earlier_version_kept_in_clear() {
        let secret = "5e".repeat(32);
        let in_clear = |data: &[u8]| String::from_utf8_lossy(data).contains(&secret);
        // Its log entry, replayed, then snapshotted.
        let dir = tempfile::tempdir().unwrap();
        let mut sm =
            StateMachineStore::open(open_db(dir.path()), dir.path().join("snapshots")).await.unwrap();
        let logged = Command::SetJoinSecret { role: "agent".into(), secret: secret.clone() };
        sm.apply([normal(1, logged)]).await.unwrap();
        let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let data = built.snapshot.into_inner();
        assert!(!in_clear(&data), "{}", String::from_utf8_lossy(&data));

        // A snapshot it wrote, installed: the state keeps the hash, and so does the next
        // snapshot, which replaces the one received.
        let mut old: serde_json::Value = serde_json::from_slice(&data).unwrap();
        old["state"]["join_secrets"]["agent"] = secret.clone().into();
        let old = serde_json::to_vec(&old).unwrap();
        assert!(in_clear(&old));
        let other = tempfile::tempdir().unwrap();
        let mut follower =
            StateMachineStore::open(open_db(other.path()), other.path().join("snapshots")).await.unwrap();
        follower.install_snapshot(&built.meta, Box::new(Cursor::new(old))).await.unwrap();
        let kept = follower.state().read().unwrap().join_secrets["agent"].clone();
        assert_eq!(kept, crate::state::JoinSecret::from_clear(&secret));
        follower.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert!(!in_clear(&current.snapshot.into_inner()));
    }

    #[tokio::test]
    async fn installing_a_snapshot_replaces_the_state_and_an_older_build_cannot_undo_it() {
        let leader_dir = tempfile::tempdir().unwrap();
        let follower_dir = tempfile::tempdir().unwrap();
        let mut leader =
            StateMachineStore::open(open_db(leader_dir.path()), leader_dir.path().join("snapshots"))
                .await
                .unwrap();
        let mut follower =
            StateMachineStore::open(open_db(follower_dir.path()), follower_dir.path().join("snapshots"))
                .await
                .unwrap();

        follower.apply([normal(1, create_app("stale"))]).await.unwrap();
        let mut old_builder = follower.get_snapshot_builder().await;

        leader.apply((1..=5).map(|i| normal(i, create_app(&format!("app-{i}"))))).await.unwrap();
        let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.unwrap();
        follower.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();

        let state = follower.state();
        assert!(!state.read().unwrap().apps.contains_key("stale"));
        assert_eq!(state.read().unwrap().apps.len(), 5);
        assert_eq!(*follower.subscribe_applied().borrow(), 5);

        // A build that started before the install finishes late: the stored snapshot stays.
        old_builder.build_snapshot().await.unwrap();
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(1, 1, 5)));
    }
}
