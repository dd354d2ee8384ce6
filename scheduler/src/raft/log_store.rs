//! The raft log and vote, in two sled trees of the node's one `sled::Db`.
//!
//! - tree `log`: key = the entry's index as big-endian `u64` (so sled's byte order is
//!   log order), value = the [`Entry`] as JSON;
//! - tree `meta`: `vote`, `last_purged` (the last log id removed by [`purge`]) and
//!   `committed` (so a restart re-applies committed entries before the first election).
//!
//! Durability: [`append`] writes the batch, awaits `flush_async` and then `fdatasync`s
//! sled's data file, and only then tells openraft the entries are on disk; [`save_vote`]
//! and [`truncate`] do the same before they return. (sled 0.34 flushes with
//! `sync_file_range`, which neither writes the file's metadata nor flushes the drive's
//! cache: enough for a killed process, not for a power cut. The `fdatasync` is.) `committed` and `last_purged` are written
//! without their own fsync: the next append's flush (sled's log is ordered) or the `Db`
//! drop makes them durable, and losing the last value only means a shorter replay or a
//! purge repeated after a crash, both of which openraft tolerates.
//!
//! [`append`]: RaftLogStorage::append
//! [`save_vote`]: RaftLogStorage::save_vote
//! [`truncate`]: RaftLogStorage::truncate
//! [`purge`]: RaftLogStorage::purge

// openraft's storage traits return its `StorageError` (224 bytes) by value; the helpers
// here return the same type so `?` stays plain.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{NodeId, TypeConfig};

/// Name of the sled tree holding the log entries.
const LOG_TREE: &str = "log";
/// Name of the sled tree holding the vote and the log pointers.
const META_TREE: &str = "meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The raft log store: openraft's [`RaftLogStorage`] over sled.
///
/// Cheap to clone: clones share the same trees, which is how openraft's replication
/// tasks get their [`RaftLogReader`]s.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// sled's data file, `fdatasync`ed after each flush (None: a store in a test that
    /// does not care about power cuts).
    data_file: Option<std::sync::Arc<std::fs::File>>,
}

impl LogStore {
    /// Opens (creating if needed) the `log` and `meta` trees of `db`.
    pub fn open(db: sled::Db) -> Result<Self, sled::Error> {
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        Ok(Self { db, log, meta, data_file: None })
    }

    /// Makes every flush also `fdatasync` `data_file` (sled's `db` file in its directory).
    pub fn sync_data_file(mut self, data_file: std::fs::File) -> Self {
        self.data_file = Some(std::sync::Arc::new(data_file));
        self
    }

    /// sled's flush, then the data file's `fdatasync`: on disk, not only in the page cache.
    async fn durable(&self) -> Result<(), std::io::Error> {
        self.db.flush_async().await.map_err(std::io::Error::other)?;
        if let Some(file) = self.data_file.clone() {
            tokio::task::spawn_blocking(move || file.sync_data()).await.map_err(std::io::Error::other)??;
        }
        Ok(())
    }

    /// Index of the first entry still in the log (`None`: the log is empty).
    pub fn first_index(&self) -> StorageResult<Option<u64>> {
        let first = self.log.first().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        first.map(|(key, _)| index_of(&key)).transpose()
    }

    /// Number of entries in the log (counts them: for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether the log holds no entry.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<Option<T>> {
        let Some(bytes) = self.meta.get(key).map_err(|e| io_err(subject.clone(), ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| io_err(subject, ErrorVerb::Read, &e))
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, &e))?;
        self.meta.insert(key, bytes).map_err(|e| io_err(subject, ErrorVerb::Write, &e))?;
        Ok(())
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.durable().await.map_err(|e| io_err(subject, ErrorVerb::Write, &e))
    }

    /// Removes every entry whose key lies in `range`, in one atomic batch.
    fn remove_range(&self, range: (Bound<[u8; 8]>, Bound<[u8; 8]>)) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(range) {
            let (key, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let keys = (map_bound(range.start_bound()), map_bound(range.end_bound()));
        let mut entries = Vec::new();
        for item in self.log.range(keys) {
            let (key, value) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
            let index = index_of(&key)?;
            let entry: Entry<TypeConfig> = serde_json::from_slice(&value)
                .map_err(|e| io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        let last = self.log.last().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        let last_log_id = match last {
            None => last_purged,
            Some((key, value)) => {
                let index = index_of(&key)?;
                let entry: Entry<TypeConfig> = serde_json::from_slice(&value)
                    .map_err(|e| io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, &e))?;
                // Entries left behind by a purge interrupted by a crash sort before it.
                std::cmp::max(Some(entry.log_id), last_purged)
            }
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(KEY_VOTE, vote, ErrorSubject::Vote)?;
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.write_meta(KEY_COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.read_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let value = serde_json::to_vec(&entry)
                .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e))?;
            batch.insert(&key_of(entry.log_id.index), value);
        }
        self.log.apply_batch(batch).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        // Acknowledge only what is on disk: openraft counts this node towards the quorum
        // as soon as the callback runs.
        match self.durable().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(since = %log_id, "truncating the raft log");
        self.remove_range((Bound::Included(key_of(log_id.index)), Bound::Unbounded))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        tracing::debug!(upto = %log_id, "purging the raft log");
        // Record the pointer first: a crash before the removal leaves entries that the
        // next purge removes, never a hole.
        self.write_meta(KEY_LAST_PURGED, &log_id, ErrorSubject::Logs)?;
        self.remove_range((Bound::Unbounded, Bound::Included(key_of(log_id.index))))?;
        self.flush(ErrorSubject::Logs).await
    }
}

/// The sled key of log index `index`: big-endian, so byte order is index order.
fn key_of(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> StorageResult<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        let e =
            AnyError::error(format!("log key of {} bytes, expected 8: the raft log is corrupt", key.len()));
        StorageError::from(StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Read, e))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn map_bound(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(key_of(*i)),
        Bound::Excluded(i) => Bound::Excluded(key_of(*i)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A storage error about `subject`, caused by `source`.
pub(crate) fn io_err<E>(subject: ErrorSubject<NodeId>, verb: ErrorVerb, source: &E) -> StorageError<NodeId>
where
    E: std::error::Error + 'static,
{
    StorageIOError::new(subject, verb, AnyError::new(source)).into()
}

#[cfg(test)]
mod tests {
    use openraft::testing::{blank_ent, log_id};

    use super::*;
    use crate::raft::state_machine::StateMachineStore;

    fn open_store(dir: &std::path::Path) -> LogStore {
        let db = sled::Config::new().path(dir).flush_every_ms(None).open().unwrap();
        LogStore::open(db).unwrap()
    }

    /// Writes entries without openraft's callback (it can only be built inside openraft).
    fn put(store: &LogStore, indexes: std::ops::RangeInclusive<u64>) {
        let mut batch = sled::Batch::default();
        for i in indexes {
            let entry = blank_ent::<TypeConfig>(1, 1, i);
            batch.insert(&key_of(i), serde_json::to_vec(&entry).unwrap());
        }
        store.log.apply_batch(batch).unwrap();
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn ranges_read_back_in_index_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(dir.path());
        // Past index 255 little-endian keys would sort 256 before 2; big-endian keeps order.
        put(&store, 1..=300);
        assert_eq!(indexes(&store.try_get_log_entries(5..9).await.unwrap()), vec![5, 6, 7, 8]);
        assert_eq!(indexes(&store.try_get_log_entries(254..=257).await.unwrap()), vec![254, 255, 256, 257]);
        assert_eq!(store.try_get_log_entries(298..).await.unwrap().len(), 3);
        assert_eq!(store.try_get_log_entries(..3).await.unwrap().len(), 2);
        assert!(store.try_get_log_entries(301..400).await.unwrap().is_empty());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 300)));
        assert_eq!(state.last_purged_log_id, None);
    }

    #[tokio::test]
    async fn purge_and_truncate_leave_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(dir.path());
        put(&store, 1..=20);

        store.purge(log_id(1, 1, 5)).await.unwrap();
        assert_eq!(store.first_index().unwrap(), Some(6));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 5)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 20)));

        store.truncate(log_id(1, 1, 15)).await.unwrap();
        assert_eq!(indexes(&store.try_get_log_entries(..).await.unwrap()), (6..15).collect::<Vec<_>>());

        // Purging past the last entry empties the log; the last log id is the purged one.
        store.purge(log_id(1, 1, 30)).await.unwrap();
        assert!(store.is_empty());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 30)));
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 30)));
    }

    #[tokio::test]
    async fn vote_committed_and_purge_pointer_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open_store(dir.path());
            put(&store, 1..=10);
            store.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
            store.save_committed(Some(log_id(1, 1, 8))).await.unwrap();
            store.purge(log_id(1, 1, 4)).await.unwrap();
        }
        let mut store = open_store(dir.path());
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(3, 2)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 8)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 10)));
        assert_eq!(store.first_index().unwrap(), Some(5));
    }

    /// Builds a fresh store pair in its own temporary directory for openraft's suite.
    struct SuiteBuilder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir>
        for SuiteBuilder
    {
        async fn build(&self) -> StorageResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            let db = sled::Config::new()
                .path(dir.path())
                .flush_every_ms(None)
                .open()
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
            let log =
                LogStore::open(db.clone()).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
            let sm = StateMachineStore::open(db, dir.path().join("snapshots")).await?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite (log store + state machine + snapshots).
    /// It starts its own runtimes, so this is a plain `#[test]`.
    #[test]
    fn openraft_storage_suite_passes() {
        openraft::testing::Suite::test_all(SuiteBuilder).unwrap();
    }
}
