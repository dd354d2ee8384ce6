//! Build logs kept on local disk, bounded: by age and total bytes ([`select`], pure;
//! [`sweep`] applies it to a directory), and never written into a filesystem below its
//! free-space floor ([`DiskGuard`]).
//!
//! The scheduler keeps its build logs in `<data_dir>/logs`, next to the raft store, and
//! the agent in `<build_root>/logs`, next to its builds. Neither may fill that disk: the
//! sweep (at start and every `interval_secs`) removes the oldest logs first, and the
//! guard measures the free space (statvfs) before writing, at most once a second, and
//! stops writing logs (one warning, then silence until space is back) below
//! `min_free_bytes`. A log that was not written is a lost log, not a stopped raft.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// `[build_logs]` in `scheduler.toml` and `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildLogSettings {
    /// Logs older than this many days go (0: no age limit).
    pub max_age_days: u64,
    /// The logs together hold at most this many bytes; the oldest go first (0: no limit).
    pub max_bytes: u64,
    /// Below this many free bytes on the log directory's filesystem, no log is written.
    pub min_free_bytes: u64,
    /// How often the sweep runs (it also runs at start).
    pub interval_secs: u64,
}

impl Default for BuildLogSettings {
    fn default() -> Self {
        Self { max_age_days: 14, max_bytes: 1 << 30, min_free_bytes: 1 << 30, interval_secs: 3600 }
    }
}

impl BuildLogSettings {
    /// The age limit, if any.
    pub fn max_age(&self) -> Option<Duration> {
        (self.max_age_days > 0).then(|| Duration::from_secs(self.max_age_days.saturating_mul(86_400)))
    }

    /// Checks the values TOML types alone cannot (`section` names the table in errors).
    pub fn check(&self, section: &str) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err(format!("{section}.interval_secs must be at least 1 (the default is 3600)"));
        }
        Ok(())
    }
}

/// One log file as the sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// Where it is.
    pub path: PathBuf,
    /// When it was last written.
    pub modified: SystemTime,
    /// Its size.
    pub bytes: u64,
}

/// Which logs go: every log older than `max_age`, then the oldest of the rest until
/// what stays holds at most `max_bytes` (0: no limit). Pure.
pub fn select(files: &[LogFile], now: SystemTime, max_age: Option<Duration>, max_bytes: u64) -> Vec<PathBuf> {
    let mut by_age: Vec<&LogFile> = files.iter().collect();
    // Oldest first; the path breaks ties so the choice is stable.
    by_age.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.path.cmp(&b.path)));
    let too_old = |f: &LogFile| {
        max_age.is_some_and(|age| now.duration_since(f.modified).is_ok_and(|elapsed| elapsed > age))
    };
    let mut total: u64 = files.iter().map(|f| f.bytes).sum();
    let mut gone = Vec::new();
    for f in by_age {
        if too_old(f) || (max_bytes > 0 && total > max_bytes) {
            total -= f.bytes;
            gone.push(f.path.clone());
        }
    }
    gone
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Log files removed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Log files left, and their bytes.
    pub kept_files: usize,
    /// Bytes left.
    pub kept_bytes: u64,
}

/// Applies [`select`] to the `*.log` files directly in `dir` (nothing else there is
/// touched). A missing directory is an empty one.
pub fn sweep(dir: &Path, settings: &BuildLogSettings, now: SystemTime) -> std::io::Result<Swept> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Swept::default()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        files.push(LogFile { path, modified, bytes: meta.len() });
    }
    let gone = select(&files, now, settings.max_age(), settings.max_bytes);
    let mut swept = Swept::default();
    for f in &files {
        if gone.contains(&f.path) && std::fs::remove_file(&f.path).is_ok() {
            swept.files += 1;
            swept.bytes += f.bytes;
        } else {
            swept.kept_files += 1;
            swept.kept_bytes += f.bytes;
        }
    }
    Ok(swept)
}

/// Free bytes of the filesystem holding `path` (statvfs: what an unprivileged writer gets).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Whether build logs may be written to a directory now: its filesystem keeps at least
/// `min_free_bytes` free. Measures at most once a second; says once when it stops and
/// once when it resumes. Shared by every writer of the directory.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free_bytes: u64,
    checked: Mutex<Option<Instant>>,
    stopped: AtomicBool,
    skipped_lines: AtomicU64,
}

/// How often the guard measures at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl DiskGuard {
    /// A guard for `dir`, keeping `min_free_bytes` free (0: never stops).
    pub fn new(dir: PathBuf, min_free_bytes: u64) -> Self {
        Self {
            dir,
            min_free_bytes,
            checked: Mutex::new(None),
            stopped: AtomicBool::new(false),
            skipped_lines: AtomicU64::new(0),
        }
    }

    /// True if a log line may be written now; false (counted) if the disk is too full.
    pub fn may_write(&self) -> bool {
        if self.min_free_bytes > 0 {
            let mut checked = self.checked.lock().expect("disk guard lock poisoned");
            if checked.is_none_or(|at| at.elapsed() >= CHECK_EVERY) {
                *checked = Some(Instant::now());
                drop(checked);
                self.measure();
            }
        }
        let stopped = self.stopped.load(Ordering::Relaxed);
        if stopped {
            self.skipped_lines.fetch_add(1, Ordering::Relaxed);
        }
        !stopped
    }

    fn measure(&self) {
        // A directory that cannot be measured is written to: the write itself will say why.
        let Ok(free) = free_bytes(&self.dir) else { return };
        let low = free < self.min_free_bytes;
        let was = self.stopped.swap(low, Ordering::Relaxed);
        if low && !was {
            tracing::warn!(
                dir = %self.dir.display(),
                free_bytes = free,
                min_free_bytes = self.min_free_bytes,
                "build logs are no longer written here: the filesystem is below build_logs.min_free_bytes \
                 (free space on it, or lower build_logs.max_bytes); live log lines still reach watchers"
            );
        } else if !low && was {
            tracing::info!(dir = %self.dir.display(), free_bytes = free, "build logs are written again");
        }
    }

    /// True while logs are not written.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Log lines not written because the disk was too full, since start.
    pub fn skipped_lines(&self) -> u64 {
        self.skipped_lines.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn file(name: &str, age_days: u64, bytes: u64, now: SystemTime) -> LogFile {
        LogFile { path: PathBuf::from(name), modified: now - DAY * age_days as u32, bytes }
    }

    #[test]
    fn old_logs_go_then_the_oldest_until_the_rest_fits() {
        let now = SystemTime::UNIX_EPOCH + DAY * 1000;
        let files = [
            file("a.log", 20, 10, now),
            file("b.log", 10, 400, now),
            file("c.log", 5, 300, now),
            file("d.log", 1, 300, now),
            file("e.log", 0, 100, now),
        ];
        // Age only: a is older than 14 days.
        assert_eq!(select(&files, now, Some(DAY * 14), 0), [PathBuf::from("a.log")]);
        // Bytes only: 1,110 held, 700 allowed: a (10) and b (400) go, oldest first.
        assert_eq!(select(&files, now, None, 700), [PathBuf::from("a.log"), PathBuf::from("b.log")]);
        // Both: c goes too to fit 400.
        assert_eq!(select(&files, now, Some(DAY * 14), 400).len(), 3);
        // No limits: nothing goes; everything within limits: nothing goes.
        assert!(select(&files, now, None, 0).is_empty());
        assert!(select(&files, now, Some(DAY * 30), 10_000).is_empty());
        // A log from the future (clock moved back) is not old.
        let future = [file("f.log", 0, 1, now + DAY)];
        assert!(select(&future, now, Some(DAY), 0).is_empty());
    }

    #[test]
    fn a_sweep_of_a_real_directory_removes_only_selected_logs() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("b-1.log", 600), ("b-2.log", 600), ("b-3.log", 600)] {
            std::fs::write(dir.path().join(name), vec![b'x'; bytes]).unwrap();
            // Distinct modification times, b-1 oldest.
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(dir.path().join("notes.txt"), vec![b'x'; 5000]).unwrap();
        std::fs::create_dir(dir.path().join("sub.log")).unwrap();
        let settings = BuildLogSettings { max_age_days: 14, max_bytes: 1300, ..Default::default() };
        let swept = sweep(dir.path(), &settings, SystemTime::now()).unwrap();
        assert_eq!((swept.files, swept.bytes, swept.kept_files, swept.kept_bytes), (1, 600, 2, 1200));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["b-2.log", "b-3.log", "notes.txt", "sub.log"]);
        // Two days later, with a one-day limit, both remaining logs are too old.
        let later = SystemTime::now() + DAY * 2;
        let swept = sweep(dir.path(), &BuildLogSettings { max_age_days: 1, max_bytes: 0, ..settings }, later)
            .unwrap();
        assert_eq!(swept.files, 2);
        assert_eq!(sweep(&dir.path().join("none"), &settings, later).unwrap(), Swept::default());
    }

    #[test]
    fn the_guard_stops_below_the_floor_and_counts_what_it_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let open = DiskGuard::new(dir.path().to_path_buf(), 1);
        assert!(open.may_write() && !open.stopped());
        let full = DiskGuard::new(dir.path().to_path_buf(), free.saturating_mul(2).max(1 << 40));
        assert!(!full.may_write());
        assert!(!full.may_write());
        assert!(full.stopped());
        assert_eq!(full.skipped_lines(), 2);
        assert!(DiskGuard::new(dir.path().to_path_buf(), 0).may_write());
    }
}
