//! The write guard: a member whose data dir is short of disk refuses new work before
//! raft has to write it.
//!
//! A raft append that hits ENOSPC is a fatal storage error: raft stops and the process
//! exits (status 70) for its service manager to restart it, which helps nothing while
//! the disk stays full. So before a client write is proposed, [`SpaceGuard::admit`]
//! measures the free space of the data dir's filesystem (statvfs, what an unprivileged
//! writer gets; at most once per [`MEASURE_EVERY`]) and refuses commands that
//! [`Command::needs_headroom`] (new apps, builds, releases, config, secrets) while it is
//! below `[storage] min_free_bytes`, with [`NoSpace`]: the directory, the free bytes,
//! the floor and the fix. Bookkeeping of accepted work, security changes and deletes
//! still go through (the floor is their headroom), and reads never touch the disk.
//!
//! The guard runs where a write is accepted ([`super::Store::write`]) and again on the
//! leader for writes a follower forwards ([`super::RaftService`]), whose refusal crosses
//! back with the [`NO_SPACE`] metadata key: the client sees the leader's message.
//! `/readyz` answers 503 and `/metrics` shows `slipway_storage_free_bytes` from
//! [`SpaceGuard::status`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slipway_proto::human_bytes;
pub use slipway_proto::metadata::NO_SPACE;

use crate::state::Command;

/// How long one measurement of the free space is reused.
pub const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// A write refused because the data dir is below its floor. Its text is what the
/// operator reads (through the CLI, on whichever member they called).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the scheduler's data dir {} has {} free, below storage.min_free_bytes ({}): new apps, builds, \
     releases, config and secrets are refused until there is room (reads, deletes and work already \
     accepted go on); free space on that filesystem (old files, docker images), or lower \
     [storage] min_free_bytes in scheduler.toml",
    .dir.display(), human_bytes(*.free_bytes), human_bytes(*.min_free_bytes)
)]
pub struct NoSpace {
    /// The data dir measured.
    pub dir: PathBuf,
    /// Its free bytes when measured.
    pub free_bytes: u64,
    /// The floor (`[storage] min_free_bytes`).
    pub min_free_bytes: u64,
}

/// What [`SpaceGuard::status`] saw last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceStatus {
    /// Free bytes of the data dir's filesystem (None: it could not be measured).
    pub free_bytes: Option<u64>,
    /// The floor; 0 when the guard is off.
    pub min_free_bytes: u64,
}

/// Keeps writes off a data dir below its free-space floor (see the module doc). Shared
/// by the store and the raft service; cheap to call per write.
#[derive(Debug)]
pub struct SpaceGuard {
    dir: PathBuf,
    min_free_bytes: u64,
    /// The last measurement and when it was taken.
    last: Mutex<Option<(Instant, Option<u64>)>>,
}

impl SpaceGuard {
    /// A guard for `dir` keeping `min_free_bytes` free; 0 turns it off (it still
    /// measures, for `/metrics`).
    pub fn new(dir: &Path, min_free_bytes: u64) -> Self {
        Self { dir: dir.to_path_buf(), min_free_bytes, last: Mutex::new(None) }
    }

    /// A guard that never refuses (tests, and stores opened without a config).
    pub fn off(dir: &Path) -> Self {
        Self::new(dir, 0)
    }

    /// The free space (measured at most once per [`MEASURE_EVERY`]) and the floor.
    pub fn status(&self) -> SpaceStatus {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let free_bytes = match *last {
            Some((at, free)) if at.elapsed() < MEASURE_EVERY => free,
            _ => {
                let free = match slipway_common::build_logs::free_bytes(&self.dir) {
                    Ok(free) => Some(free),
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "cannot measure the data dir's free space");
                        None
                    }
                };
                *last = Some((Instant::now(), free));
                free
            }
        };
        SpaceStatus { free_bytes, min_free_bytes: self.min_free_bytes }
    }

    /// Fails while the data dir is below the floor. A directory that cannot be measured
    /// passes: the write itself will say what is wrong.
    pub fn check(&self) -> Result<(), NoSpace> {
        let SpaceStatus { free_bytes, min_free_bytes } = self.status();
        match free_bytes {
            Some(free) if free < min_free_bytes => {
                Err(NoSpace { dir: self.dir.clone(), free_bytes: free, min_free_bytes })
            }
            _ => Ok(()),
        }
    }

    /// Whether `cmd` may be proposed now: always for commands that do not need
    /// headroom ([`Command::needs_headroom`]), otherwise [`Self::check`].
    pub fn admit(&self, cmd: &Command) -> Result<(), NoSpace> {
        if !cmd.needs_headroom() {
            return Ok(());
        }
        self.check().inspect_err(|refused| {
            tracing::warn!(
                dir = %refused.dir.display(),
                free_bytes = refused.free_bytes,
                min_free_bytes = refused.min_free_bytes,
                "refused a write: the data dir is below storage.min_free_bytes"
            );
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::test_cluster::{create_app, queue_build};

    fn delete(name: &str) -> Command {
        Command::DeleteApp { name: name.into() }
    }

    #[test]
    fn below_the_floor_new_work_is_refused_naming_the_dir_and_the_fix_and_deletes_pass() {
        let dir = tempfile::tempdir().unwrap();
        let free = slipway_common::build_logs::free_bytes(dir.path()).unwrap();
        let guard = SpaceGuard::new(dir.path(), free.saturating_mul(2).max(1 << 40));
        let refused = guard.admit(&create_app("shop")).unwrap_err();
        assert_eq!(refused.dir, dir.path());
        assert!(refused.free_bytes > 0 && refused.free_bytes < refused.min_free_bytes, "{refused:?}");
        let text = refused.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains("storage.min_free_bytes") && text.contains("free space on that filesystem"),
            "{text}"
        );
        assert!(guard.admit(&queue_build("shop")).is_err());
        guard.admit(&delete("shop")).expect("a delete frees space");
        assert!(guard.check().is_err());

        // Off, or above the floor: everything passes.
        SpaceGuard::off(dir.path()).admit(&create_app("shop")).unwrap();
        SpaceGuard::new(dir.path(), 1 << 20).admit(&create_app("shop")).unwrap();
        assert_eq!(SpaceGuard::off(dir.path()).status().min_free_bytes, 0);
    }

    #[test]
    fn a_directory_that_cannot_be_measured_is_not_refused() {
        let guard = SpaceGuard::new(Path::new("/nonexistent/slipway-data"), u64::MAX);
        assert_eq!(guard.status().free_bytes, None);
        guard.admit(&create_app("shop")).unwrap();
    }
}
