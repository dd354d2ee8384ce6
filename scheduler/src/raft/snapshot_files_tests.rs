//! Power cuts during snapshot saves: [`PowerCut`] is a file layer that keeps, per file,
//! what was written and what was synced, and per directory which entries were synced;
//! [`PowerCut::crash`] drops everything unsynced, as a power loss on ext4 would (a new
//! file whose directory was not synced is gone; a file's unsynced data is gone). It can
//! also fail every operation after the Nth, which is the moment the power goes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use openraft::testing::log_id;
use openraft::StoredMembership;

use super::*;

#[derive(Default)]
struct Fs {
    /// inode → (data as written, data as synced).
    inodes: BTreeMap<u64, (Vec<u8>, Option<Vec<u8>>)>,
    /// Directory entries as the running system sees them, and as synced.
    names: BTreeMap<PathBuf, u64>,
    synced_names: BTreeMap<PathBuf, u64>,
    next_inode: u64,
    /// Operations left before the power goes (None: never).
    ops_left: Option<usize>,
}

#[derive(Default)]
struct PowerCut(Mutex<Fs>);

fn gone() -> io::Error {
    io::Error::other("the power went")
}

impl PowerCut {
    /// Fails every operation after the next `n`.
    fn cut_after(&self, n: usize) {
        self.0.lock().unwrap().ops_left = Some(n);
    }

    /// The power goes: only what was synced stays; the power comes back.
    fn crash(&self) {
        let mut fs = self.0.lock().unwrap();
        fs.names = fs.synced_names.clone();
        let live: std::collections::BTreeSet<u64> = fs.names.values().copied().collect();
        fs.inodes.retain(|ino, _| live.contains(ino));
        for (data, synced) in fs.inodes.values_mut() {
            *data = synced.clone().unwrap_or_default();
        }
        fs.ops_left = None;
    }

    fn op(&self) -> io::Result<std::sync::MutexGuard<'_, Fs>> {
        let mut fs = self.0.lock().unwrap();
        match fs.ops_left {
            Some(0) => Err(gone()),
            Some(n) => {
                fs.ops_left = Some(n - 1);
                Ok(fs)
            }
            None => Ok(fs),
        }
    }
}

impl FileLayer for PowerCut {
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut fs = self.op()?;
        let ino = match fs.names.get(path) {
            Some(ino) => *ino,
            None => {
                fs.next_inode += 1;
                let ino = fs.next_inode;
                fs.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        let entry = fs.inodes.entry(ino).or_default();
        entry.0 = data.to_vec();
        Ok(())
    }
    fn fsync(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.op()?;
        let ino = *fs.names.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let entry = fs.inodes.get_mut(&ino).expect("inode");
        entry.1 = Some(entry.0.clone());
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.op()?;
        let ino = fs.names.remove(from).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        fs.names.insert(to.to_path_buf(), ino);
        Ok(())
    }
    fn fsync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.op()?;
        let Fs { names, synced_names, .. } = &mut *fs;
        synced_names.retain(|p, _| p.parent() != Some(dir));
        synced_names
            .extend(names.iter().filter(|(p, _)| p.parent() == Some(dir)).map(|(p, i)| (p.clone(), *i)));
        Ok(())
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let fs = self.op()?;
        let ino = fs.names.get(path).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(fs.inodes[ino].0.clone())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.op()?;
        fs.names.remove(path).map(drop).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let fs = self.op()?;
        Ok(fs
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect())
    }
}

const DIR: &str = "/data/raft-snapshots";

fn meta(index: u64) -> Meta {
    Meta {
        last_log_id: Some(log_id(1, 1, index)),
        last_membership: StoredMembership::default(),
        snapshot_id: format!("{index}-test"),
    }
}

/// Over sled's ~128 KiB inline limit: the size that was not durable as a sled value.
fn data(index: u64) -> Vec<u8> {
    format!("snapshot {index} ").repeat(20_000).into_bytes()
}

fn open_db(dir: &Path) -> sled::Db {
    sled::Config::new().path(dir).flush_every_ms(None).open().unwrap()
}

fn open(db: &sled::Db, files: &Arc<PowerCut>) -> StorageResult<SnapshotStore> {
    SnapshotStore::open(db.clone(), PathBuf::from(DIR), files.clone())
}

#[tokio::test]
async fn a_power_cut_at_any_step_of_a_save_leaves_the_old_snapshot_or_the_new_one_whole() {
    let mut cut_at = 0;
    loop {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let files = Arc::new(PowerCut::default());
        let store = open(&db, &files).unwrap();
        store.save(&meta(10), &data(10)).await.unwrap();

        files.cut_after(cut_at);
        let saved = store.save(&meta(20), &data(20)).await;
        files.crash();
        // Restart: sled as it was flushed (only flushed records were written at all
        // here), the files as the power cut left them.
        drop(store);
        let store = open(&db, &files).expect("the store opens after the cut");
        let (loaded, bytes) = store.load().unwrap().expect("a snapshot survives");
        let index = loaded.last_log_id.unwrap().index;
        assert_eq!(bytes, data(index), "cut after {cut_at} operations: snapshot {index} is not whole");
        if saved.is_ok() {
            // Returned Ok: openraft purges the log before it now, so it must be the new one.
            assert_eq!(index, 20, "the save returned but a power cut lost it");
        }
        // Leftovers (the temp file, an unnamed file) are gone: one file per snapshot.
        assert_eq!(files.list(Path::new(DIR)).unwrap().len(), 1, "cut after {cut_at}");
        if saved.is_ok() {
            eprintln!("checked power cuts after 0..={cut_at} file operations of a save");
            return;
        }
        cut_at += 1;
    }
}

#[tokio::test]
async fn an_install_then_a_crash_during_the_log_purge_restarts_from_the_installed_snapshot() {
    // openraft purges the log once install_snapshot returned: the power goes then.
    let dir = tempfile::tempdir().unwrap();
    let files = Arc::new(PowerCut::default());
    {
        let db = open_db(dir.path());
        let store = open(&db, &files).unwrap();
        store.save(&meta(5), &data(5)).await.unwrap();
        store.save(&meta(50), &data(50)).await.unwrap();
        files.cut_after(0);
    }
    files.crash();
    let db = open_db(dir.path());
    let (loaded, bytes) = open(&db, &files).unwrap().load().unwrap().unwrap();
    assert_eq!(loaded.last_log_id, Some(log_id(1, 1, 50)));
    assert_eq!(bytes, data(50));
}

#[tokio::test]
async fn a_record_naming_a_missing_file_is_an_error_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let files = Arc::new(PowerCut::default());
    let store = open(&db, &files).unwrap();
    store.save(&meta(7), &data(7)).await.unwrap();
    let name = files.list(Path::new(DIR)).unwrap().remove(0);
    files.remove(&Path::new(DIR).join(&name)).unwrap();
    let err = open(&db, &files).unwrap().load().unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains("cannot be read") && err.contains("rejoin"), "{err}");
}

#[tokio::test]
async fn without_syncing_the_directory_a_cut_loses_the_snapshot_the_record_names() {
    // The fake can tell: the same steps minus the directory fsync lose the file.
    let files = PowerCut::default();
    let dir = Path::new(DIR);
    files.write(&dir.join("s.tmp"), b"x").unwrap();
    files.fsync(&dir.join("s.tmp")).unwrap();
    files.rename(&dir.join("s.tmp"), &dir.join("s")).unwrap();
    files.crash();
    assert!(files.read(&dir.join("s")).is_err());
}

#[tokio::test]
async fn a_snapshot_an_earlier_version_kept_in_sled_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    let tree = db.open_tree(SNAPSHOT_TREE).unwrap();
    tree.insert(KEY_META, serde_json::to_vec(&meta(3)).unwrap()).unwrap();
    tree.insert(KEY_LEGACY_DATA, data(3)).unwrap();
    let files = Arc::new(PowerCut::default());
    let store = open(&db, &files).unwrap();
    assert_eq!(store.load().unwrap().unwrap().1, data(3));
    store.save(&meta(4), &data(4)).await.unwrap();
    assert!(tree.get(KEY_LEGACY_DATA).unwrap().is_none());
    assert_eq!(store.load().unwrap().unwrap().1, data(4));
}
