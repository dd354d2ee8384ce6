//! A build filesystem that ran out of space mid-build.
//!
//! The agent owns one filesystem: the one `build_root` is on, where each build's clone
//! lives (BuildKit's layers and cache are in the engine's data root, which the engine
//! owns). When a build fails and that filesystem is the reason, [`diagnose`] says so:
//! the failure says "no space left on device" (or git's "Out of diskspace"), or the
//! filesystem has less than [`EXHAUSTED_BELOW`] free right after the failure, before the
//! build dir is removed. The pipeline then fails the build naming the build root, its
//! mount point and the free bytes, removes the build dir as always, and raises this
//! node's [`SpaceFloor`]: the build needed more than the room it found, so the node
//! takes no build until it has that room plus `min_free_bytes` again. The floor is kept
//! in `<state_dir>/build-fs-floor` (a restarted agent keeps it): it goes in every report
//! (`build_fs_floor_bytes`, `build_fs_floor_reason`), where placement explains why the
//! node is avoided, and the agent refuses builds below it; it falls back to
//! `min_free_bytes` once the filesystem has that much free, and the file goes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use slipway_proto::human_bytes;

/// Below this many free bytes right after a failed build, the build filesystem is
/// taken to be what failed it, whatever the error said (git's checkout reports a full
/// disk as "unable to write file").
pub const EXHAUSTED_BELOW: u64 = 1 << 20;

/// Total and available bytes of the filesystem holding `path`.
pub fn filesystem_bytes(path: &Path) -> std::io::Result<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let block = stat.fragment_size() as u64;
    Ok((stat.blocks() as u64 * block, stat.blocks_available() as u64 * block))
}

/// Whether an error's text says a filesystem was full.
pub fn says_no_space(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["no space left on device", "out of diskspace", "disk quota exceeded", "enospc"]
        .iter()
        .any(|m| t.contains(m))
}

/// The build filesystem as a full one was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// The agent's build root.
    pub build_root: PathBuf,
    /// Where the filesystem holding it is mounted.
    pub mount_point: PathBuf,
    /// Free bytes (for unprivileged users) when the failure was seen.
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub total_bytes: u64,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the build filesystem ran out of space: build root {} (filesystem mounted at {}) had {} bytes \
             ({}) free of {} when the build failed",
            self.build_root.display(),
            self.mount_point.display(),
            self.free_bytes,
            human_bytes(self.free_bytes),
            human_bytes(self.total_bytes)
        )
    }
}

/// Whether the build filesystem under `build_root` failed a build that failed with
/// `reason`: it is all but full ([`EXHAUSTED_BELOW`]) whatever the reason, or the reason
/// says a disk was full and the failure came from what the agent itself writes there
/// (`agent_wrote`: the clone, the context, the build dir). Measure before removing the
/// build dir. A disk-full message from the engine's build while the build root has room
/// is the engine's data root, not this filesystem: None.
pub fn diagnose(build_root: &Path, agent_wrote: bool, reason: &str) -> Option<Exhausted> {
    let (total, free) = filesystem_bytes(build_root).ok()?;
    if free >= EXHAUSTED_BELOW && !(agent_wrote && says_no_space(reason)) {
        return None;
    }
    Some(Exhausted {
        build_root: build_root.to_path_buf(),
        mount_point: mount_point(build_root),
        free_bytes: free,
        total_bytes: total,
    })
}

/// The mount point of the filesystem holding `path`: its highest ancestor on the same
/// device (`path` itself if it cannot be read).
pub fn mount_point(path: &Path) -> PathBuf {
    let Ok(dev) = std::fs::metadata(path).map(|m| m.dev()) else { return path.to_path_buf() };
    let mut mount = path.to_path_buf();
    let mut dir = path.parent();
    while let Some(d) = dir {
        match std::fs::metadata(d) {
            Ok(m) if m.dev() == dev => mount = d.to_path_buf(),
            _ => break,
        }
        dir = d.parent();
    }
    mount
}

/// This node's raised floor: the free bytes its build filesystem must have before it
/// takes builds again, and why. Shared by the pipeline (which raises it) and the
/// reports and build admission (which read it). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SpaceFloor(Arc<Floor>);

#[derive(Debug, Default)]
struct Floor {
    raised: Mutex<Option<Raised>>,
    /// Where a raised floor is kept across restarts; none in unit tests.
    file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Raised {
    floor: u64,
    reason: String,
}

impl PartialEq for SpaceFloor {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The file under `state_dir` holding a raised floor.
pub const FLOOR_FILE: &str = "build-fs-floor";

impl SpaceFloor {
    /// The floor kept in `file`: the one a previous run raised, if it left one. A file
    /// that cannot be read is logged and ignored (the floor starts at `min_free_bytes`,
    /// as it would with no file), never an error: the floor only steers placement.
    pub fn kept_in(file: PathBuf) -> Self {
        let raised = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice::<Raised>(&bytes) {
                Ok(raised) => {
                    tracing::info!(floor = raised.floor, file = %file.display(), "the build filesystem floor a previous run raised holds");
                    Some(raised)
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable build filesystem floor");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring an unreadable build filesystem floor");
                None
            }
        };
        SpaceFloor(Arc::new(Floor { raised: Mutex::new(raised), file: Some(file) }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Raised>> {
        self.0.raised.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `raised` to the floor's file (none: removes it), whole or not at all; a
    /// failure is logged: the floor still holds in memory.
    fn keep(&self, raised: Option<&Raised>) {
        let Some(file) = &self.0.file else { return };
        let result = match raised {
            Some(raised) => {
                let tmp = file.with_extension("tmp");
                serde_json::to_vec(raised)
                    .map_err(std::io::Error::other)
                    .and_then(|bytes| std::fs::write(&tmp, bytes))
                    .and_then(|()| std::fs::rename(&tmp, file))
            }
            None => match std::fs::remove_file(file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        if let Err(e) = result {
            tracing::warn!(file = %file.display(), error = %e, "could not keep the build filesystem floor on disk");
        }
    }

    /// Raises the floor to `free_after + min_free_bytes` (never lowers a raised one):
    /// `free_after` is what the filesystem has once the failed build's dir is gone,
    /// which the build needed more than. Returns the floor.
    pub fn raise(&self, exhausted: &Exhausted, free_after: u64, min_free_bytes: u64) -> u64 {
        let floor = free_after.saturating_add(min_free_bytes);
        let mut raised = self.lock();
        let floor = raised.as_ref().map_or(floor, |r| r.floor.max(floor));
        let reason = format!(
            "a build ran out of space on {} (mounted at {}); it had {} free when it started, so this \
             node takes builds again with {} free (that + min_free_bytes)",
            exhausted.build_root.display(),
            exhausted.mount_point.display(),
            human_bytes(free_after),
            human_bytes(floor)
        );
        tracing::warn!(floor, %reason, "build filesystem floor raised");
        let now = Raised { floor, reason };
        self.keep(Some(&now));
        *raised = Some(now);
        floor
    }

    /// The raised floor and why, while the filesystem has less than it free
    /// (`available`); a floor reached is forgotten (logged once).
    pub fn current(&self, available: u64) -> Option<(u64, String)> {
        let mut raised = self.lock();
        match raised.as_ref() {
            Some(r) if available < r.floor => Some((r.floor, r.reason.clone())),
            Some(r) => {
                tracing::info!(
                    floor = r.floor,
                    available,
                    "the build filesystem has room again; the raised floor is lifted"
                );
                self.keep(None);
                *raised = None;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exhausted() -> Exhausted {
        Exhausted {
            build_root: "/var/lib/slipway/builds".into(),
            mount_point: "/var/lib/slipway".into(),
            free_bytes: 0,
            total_bytes: 1 << 30,
        }
    }

    #[test]
    fn disk_full_messages_are_recognised() {
        assert!(says_no_space("fatal: write error: No space left on device"));
        assert!(says_no_space("fatal: sha1 file '/b/.git/index.lock' write error. Out of diskspace"));
        assert!(says_no_space("write /var/lib/docker/tmp/x: ENOSPC"));
        assert!(!says_no_space("exit code: 1"));
    }

    #[test]
    fn a_raised_floor_survives_a_restart_until_it_is_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FLOOR_FILE);
        let floor = SpaceFloor::kept_in(file.clone());
        assert_eq!(floor.current(0), None, "no file: no floor");
        assert_eq!(floor.raise(&exhausted(), 300, 100), 400);
        drop(floor);

        let restarted = SpaceFloor::kept_in(file.clone());
        let (at, reason) = restarted.current(399).expect("the floor came back from the file");
        assert_eq!(at, 400);
        assert!(reason.contains("mounted at /var/lib/slipway"), "{reason}");
        assert_eq!(restarted.current(400), None, "reached: lifted");
        assert!(!file.exists(), "a lifted floor leaves no file");
        assert_eq!(SpaceFloor::kept_in(file.clone()).current(0), None, "and stays lifted");

        std::fs::write(&file, b"{not json").unwrap();
        assert_eq!(SpaceFloor::kept_in(file).current(0), None, "an unreadable file is ignored");
    }

    #[test]
    fn the_floor_holds_until_the_room_is_back_and_never_drops_while_raised() {
        let floor = SpaceFloor::default();
        assert_eq!(floor.current(0), None);
        assert_eq!(floor.raise(&exhausted(), 300, 100), 400);
        let (at, reason) = floor.current(399).expect("still below");
        assert_eq!(at, 400);
        assert!(reason.contains("/var/lib/slipway/builds") && reason.contains("mounted at /var/lib/slipway"));
        // A second failure with less room does not lower it.
        assert_eq!(floor.raise(&exhausted(), 100, 100), 400);
        assert_eq!(floor.current(400), None, "reached: lifted");
        assert_eq!(floor.current(0), None, "and forgotten");
    }

    #[test]
    fn the_mount_point_is_the_top_of_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        let mount = mount_point(&deep);
        assert!(deep.starts_with(&mount), "{}", mount.display());
        assert_eq!(mount_point(Path::new("/")), PathBuf::from("/"));
        // /proc is a filesystem of its own.
        assert_eq!(mount_point(Path::new("/proc/self")), PathBuf::from("/proc"));
    }

    #[test]
    fn a_roomy_filesystem_did_not_fail_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let (_, free) = filesystem_bytes(dir.path()).unwrap();
        if free < 1 << 30 {
            return; // this machine's temp dir is too full to tell.
        }
        assert_eq!(
            diagnose(dir.path(), false, "No space left on device"),
            None,
            "the engine's disk, not ours"
        );
        assert_eq!(diagnose(dir.path(), true, "exit code: 1"), None);
        let ours =
            diagnose(dir.path(), true, "fatal: write error: No space left on device").expect("the clone's");
        assert_eq!(ours.build_root, dir.path());
        assert!(ours.to_string().contains(&format!("bytes ({}) free", human_bytes(ours.free_bytes))));
    }
}
