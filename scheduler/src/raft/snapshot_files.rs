//! Where the state machine's snapshot lives, durably: one file per snapshot in
//! `<data_dir>/raft-snapshots/`, and in sled only a small record naming it.
//!
//! Why not a sled value: sled 0.34 keeps a value over ~128 KiB as a separate blob file
//! that it never fsyncs, while only its main data file is synced; openraft then purges
//! the log before the snapshot, so a power cut could leave neither. Here a save is
//!
//! ```text
//! write <name>.tmp ─► fsync it ─► rename to <name> ─► fsync the directory
//!                  ─► sled: meta + file name, flushed ─► remove the previous file
//! ```
//!
//! so the record points only at a file already durable, and whatever moment the power
//! goes, a restart finds the old snapshot or the new one, whole. On open, temporary
//! files and files no record names (a cut before the record, or before the old file
//! went) are removed; a record naming a file that is missing is an error saying what
//! is wrong, never an empty state. Snapshots stored as sled values by earlier versions
//! are still read.
//!
//! The file operations go through [`FileLayer`], so tests can cut the power: the fake in
//! the tests records which writes were synced and drops the rest on a "crash".

// openraft's storage traits return its `StorageError` (224 bytes) by value.
#![allow(clippy::result_large_err)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{AnyError, BasicNode, ErrorSubject, ErrorVerb, SnapshotMeta, StorageError, StorageIOError};
use tokio::sync::Mutex;

use super::log_store::io_err;
use super::NodeId;

/// Name of the sled tree holding the current snapshot's record.
const SNAPSHOT_TREE: &str = "snapshot";
/// Key of the current snapshot's [`SnapshotMeta`] (JSON).
const KEY_META: &[u8] = b"meta";
/// Key of the name of the file holding the current snapshot's data.
const KEY_FILE: &[u8] = b"file";
/// Key of the snapshot's data as earlier versions stored it (in sled itself).
const KEY_LEGACY_DATA: &[u8] = b"data";
/// Suffix of a snapshot file still being written.
const TMP_SUFFIX: &str = ".tmp";

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Meta = SnapshotMeta<NodeId, BasicNode>;
/// A stored snapshot: its meta and its data.
pub type StoredSnapshot = (Meta, Vec<u8>);

/// The file operations a durable save needs. Paths are absolute.
pub trait FileLayer: Send + Sync + 'static {
    /// Creates (or truncates) `path` and writes `data`; not durable until [`Self::fsync`].
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Makes `path`'s data durable.
    fn fsync(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to` (replacing it); durable once the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn fsync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Reads `path` whole.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Removes `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the files in `dir`, creating it (private) if it is missing.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// The real file system.
pub struct Disk;

impl FileLayer for Disk {
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }
    fn fsync(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn fsync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        slipway_proto::tls::create_private_dir(dir)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
}

/// The one current snapshot: a record in sled naming a file in `dir`.
#[derive(Clone)]
pub struct SnapshotStore {
    db: sled::Db,
    tree: sled::Tree,
    dir: PathBuf,
    files: Arc<dyn FileLayer>,
    /// Serializes saves, so a slow build cannot overwrite a newer installed snapshot.
    save_lock: Arc<Mutex<()>>,
}

impl SnapshotStore {
    /// Opens the record in `db` and the files in `dir`, removing leftovers of a save
    /// that a crash interrupted.
    pub fn open(db: sled::Db, dir: PathBuf, files: Arc<dyn FileLayer>) -> StorageResult<Self> {
        let tree = db
            .open_tree(SNAPSHOT_TREE)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, &e))?;
        let store = Self { db, tree, dir, files, save_lock: Arc::new(Mutex::new(())) };
        store.remove_leftovers()?;
        Ok(store)
    }

    /// Removes the files no record names: temporary files, and a snapshot written
    /// before a crash kept its record from being stored (or the previous one, before it
    /// was removed).
    fn remove_leftovers(&self) -> StorageResult<()> {
        let current = self.current_file()?;
        let names = self.files.list(&self.dir).map_err(|e| self.dir_err(ErrorVerb::Read, &e))?;
        for name in names {
            if Some(&name) == current.as_ref() {
                continue;
            }
            let path = self.dir.join(&name);
            tracing::info!(file = %path.display(), "removing a snapshot file no record names (left by an interrupted save)");
            self.files.remove(&path).map_err(|e| self.dir_err(ErrorVerb::Delete, &e))?;
        }
        Ok(())
    }

    fn current_file(&self) -> StorageResult<Option<String>> {
        let name = self.tree.get(KEY_FILE).map_err(|e| read_err(&e))?;
        Ok(name.map(|n| String::from_utf8_lossy(&n).into_owned()))
    }

    /// The current snapshot, or None when there is none yet. A record naming a file
    /// that is missing or unreadable is an error naming the file.
    pub fn load(&self) -> StorageResult<Option<StoredSnapshot>> {
        let Some(meta) = self.tree.get(KEY_META).map_err(|e| read_err(&e))? else {
            return Ok(None);
        };
        let meta: Meta = serde_json::from_slice(&meta).map_err(|e| read_err(&e))?;
        let data = match self.current_file()? {
            Some(name) => {
                let path = self.dir.join(&name);
                self.files.read(&path).map_err(|e| {
                    snapshot_err(
                        &meta,
                        ErrorVerb::Read,
                        &AnyError::error(format!(
                            "the raft store's record names snapshot file {} for {meta}, but it cannot be \
                             read ({e}): the data dir lost a file it had synced. Restore the data_dir from \
                             a backup, or empty it and rejoin this scheduler to the cluster",
                            path.display()
                        )),
                    )
                })?
            }
            None => {
                self.tree.get(KEY_LEGACY_DATA).map_err(|e| read_err(&e))?.map(|d| d.to_vec()).ok_or_else(
                    || {
                        snapshot_err(
                            &meta,
                            ErrorVerb::Read,
                            &AnyError::error("snapshot meta without data: the raft store is corrupt"),
                        )
                    },
                )?
            }
        };
        Ok(Some((meta, data)))
    }

    /// Replaces the current snapshot with `meta`/`data`, unless the stored one is newer.
    /// Returns once the new snapshot survives a power cut (so the log before it may go).
    pub async fn save(&self, meta: &Meta, data: &[u8]) -> StorageResult<()> {
        let _guard = self.save_lock.lock().await;
        if let Some(current) = self.current_meta()? {
            if current.last_log_id > meta.last_log_id {
                tracing::info!(kept = %current, dropped = %meta, "kept the newer stored snapshot");
                return Ok(());
            }
        }
        let name = format!(
            "snapshot-{}-{}.json",
            meta.last_log_id.map_or(0, |l| l.index),
            uuid::Uuid::new_v4().simple()
        );
        let (files, dir, write_name, write_data) =
            (self.files.clone(), self.dir.clone(), name.clone(), data.to_vec());
        tokio::task::spawn_blocking(move || write_durably(files.as_ref(), &dir, &write_name, &write_data))
            .await
            .map_err(|e| snapshot_err(meta, ErrorVerb::Write, &e))?
            .map_err(|e| snapshot_err(meta, ErrorVerb::Write, &e))?;
        let previous = self.current_file()?;
        let meta_bytes = serde_json::to_vec(meta).map_err(|e| snapshot_err(meta, ErrorVerb::Write, &e))?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_META, meta_bytes);
        batch.insert(KEY_FILE, name.as_bytes());
        batch.remove(KEY_LEGACY_DATA);
        self.tree.apply_batch(batch).map_err(|e| snapshot_err(meta, ErrorVerb::Write, &e))?;
        self.db.flush_async().await.map_err(|e| snapshot_err(meta, ErrorVerb::Write, &e))?;
        if let Some(previous) = previous.filter(|p| *p != name) {
            // Not needed for safety: a file left here is removed at the next start.
            if let Err(err) = self.files.remove(&self.dir.join(&previous)) {
                tracing::warn!(%err, file = previous, "cannot remove the previous snapshot file");
            }
        }
        Ok(())
    }

    fn current_meta(&self) -> StorageResult<Option<Meta>> {
        match self.tree.get(KEY_META).map_err(|e| read_err(&e))? {
            Some(meta) => Ok(Some(serde_json::from_slice(&meta).map_err(|e| read_err(&e))?)),
            None => Ok(None),
        }
    }

    fn dir_err(&self, verb: ErrorVerb, e: &io::Error) -> StorageError<NodeId> {
        StorageIOError::new(
            ErrorSubject::Snapshot(None),
            verb,
            AnyError::error(format!("snapshot directory {}: {e}", self.dir.display())),
        )
        .into()
    }
}

/// `dir/name` with `data`, durable: temp file, fsync, rename, fsync of the directory.
fn write_durably(files: &dyn FileLayer, dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let path = dir.join(name);
    files.write(&tmp, data)?;
    files.fsync(&tmp)?;
    files.rename(&tmp, &path)?;
    files.fsync_dir(dir)
}

fn read_err(e: &dyn std::error::Error) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::Snapshot(None), ErrorVerb::Read, AnyError::error(e)).into()
}

/// A storage error about snapshot `meta`.
pub fn snapshot_err<E>(meta: &Meta, verb: ErrorVerb, source: &E) -> StorageError<NodeId>
where
    E: std::error::Error + 'static,
{
    io_err(ErrorSubject::Snapshot(Some(meta.signature())), verb, source)
}

#[cfg(test)]
#[path = "snapshot_files_tests.rs"]
mod tests;
