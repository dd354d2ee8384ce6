//! Keeping the build filesystem above its floor and the engine's build cache below its
//! high watermark, removing:
//!
//! - build directories under `build_root` (`<build>-<attempt>`) of builds this agent
//!   is not running (left by a crash or a kill);
//! - images carrying the [`APP_LABEL`] label that are not their app's newest image in
//!   their repository on this engine (superseded releases; the newest stays, so the app's layers stay
//!   cached here and repeat builds keep their affinity). Images are untagged tag by
//!   tag and never forced, so an image a container still uses stays;
//! - dangling images carrying the [`APP_LABEL`] label (a build's image once its per-build
//!   tag went and `latest` moved on);
//! - the engine's BuildKit build cache, down to the low watermark, least recently used
//!   first and only what BuildKit calls reclaimable ([`crate::build_cache`]).
//!
//! A pass runs when a build would start below `min_free_bytes` ([`reclaim`]) and, after
//! every build and every `reclaim.interval_secs`, when the build cache (cache mounts
//! included) is above `reclaim.build_cache_high_watermark_bytes` ([`watermark_pass`]).
//! The build cache is shared with whoever else builds on this engine: until this
//! version slipway never touched it; now it prunes it in those two cases only, and
//! only reclaimable records. Nothing else is touched: not other images, not other
//! containers, not the build logs under `build_root/logs` (their own retention,
//! `slipway_common::build_logs`, keeps those).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bollard::query_parameters::{
    ListImagesOptionsBuilder, PruneImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use bollard::Docker;

use crate::config::ReclaimSettings;
use crate::pipeline::docker::APP_LABEL;

/// What a reclaim pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Build directories removed.
    pub build_dirs: usize,
    /// Superseded images removed (counted once any of their tags or their id went).
    pub images: usize,
    /// Dangling slipway images removed, and the bytes the engine freed with them.
    pub dangling_images: usize,
    /// Bytes the engine reported freed by removing dangling images.
    pub image_bytes: u64,
    /// Bytes BuildKit reported freed from the build cache.
    pub cache_bytes: u64,
    /// The build cache after the pass, when measured.
    pub cache_after: Option<u64>,
}

impl Reclaimed {
    /// Bytes the engine reported freed.
    pub fn bytes(&self) -> u64 {
        self.image_bytes + self.cache_bytes
    }
}

/// What reclaiming did since the agent started, for reports and `/metrics`. Clones share.
#[derive(Debug, Clone, Default)]
pub struct ReclaimStats(Arc<Mutex<ReclaimTotals>>);

/// The totals [`ReclaimStats`] keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimTotals {
    /// Passes that removed something or pruned the cache.
    pub passes: u64,
    /// Bytes the engine reported freed (build cache and dangling images).
    pub bytes: u64,
    /// The engine's build cache at the last measurement (cache mounts included).
    pub build_cache_bytes: u64,
}

impl ReclaimStats {
    /// The totals now.
    pub fn totals(&self) -> ReclaimTotals {
        *self.0.lock().expect("reclaim stats lock poisoned")
    }

    fn record(&self, pass: Option<&Reclaimed>, cache_bytes: Option<u64>) {
        let mut t = self.0.lock().expect("reclaim stats lock poisoned");
        if let Some(pass) = pass {
            t.passes += 1;
            t.bytes += pass.bytes();
        }
        if let Some(bytes) = cache_bytes {
            t.build_cache_bytes = bytes;
        }
    }
}

/// Whether the build cache is above the high watermark (0: never). Pure.
pub fn over_high_watermark(cache_bytes: u64, settings: &ReclaimSettings) -> bool {
    settings.build_cache_high_watermark_bytes > 0 && cache_bytes > settings.build_cache_high_watermark_bytes
}

/// Measures the build cache and, above the high watermark, runs a full pass down to the
/// low one. `None` when the cache is below it (or cannot be measured: logged). Called
/// only while no build runs, so every build dir it finds is stale.
pub async fn watermark_pass(
    docker: Option<&Docker>,
    socket: &Path,
    build_root: &Path,
    settings: &ReclaimSettings,
    stats: &ReclaimStats,
) -> Option<Reclaimed> {
    let usage = match crate::build_cache::usage(socket).await {
        Ok(usage) => usage,
        Err(err) => {
            tracing::warn!(%err, "cannot measure the build cache");
            return None;
        }
    };
    stats.record(None, Some(usage.total_bytes));
    if !over_high_watermark(usage.total_bytes, settings) {
        return None;
    }
    tracing::info!(
        build_cache_bytes = usage.total_bytes,
        reclaimable_bytes = usage.reclaimable_bytes,
        high_watermark_bytes = settings.build_cache_high_watermark_bytes,
        low_watermark_bytes = settings.build_cache_low_watermark_bytes,
        "the build cache is above its high watermark; pruning"
    );
    Some(reclaim(docker, socket, build_root, &[], settings.build_cache_low_watermark_bytes, stats).await)
}

/// Removes stale build directories, superseded and dangling slipway images, and prunes
/// the build cache down to `keep_cache_bytes` (see the module doc). `running` are the
/// `<build>-<attempt>` directory names of the builds running now.
pub async fn reclaim(
    docker: Option<&Docker>,
    socket: &Path,
    build_root: &Path,
    running: &[String],
    keep_cache_bytes: u64,
    stats: &ReclaimStats,
) -> Reclaimed {
    let mut done =
        Reclaimed { build_dirs: remove_stale_build_dirs(build_root, running).await, ..Default::default() };
    if let Some(docker) = docker {
        done.images = remove_superseded_images(docker).await;
        (done.dangling_images, done.image_bytes) = prune_dangling_images(docker).await;
        match crate::build_cache::prune_to(socket, keep_cache_bytes).await {
            Ok(freed) => done.cache_bytes = freed,
            Err(err) => tracing::warn!(%err, "cannot prune the build cache"),
        }
        done.cache_after = crate::build_cache::usage(socket).await.ok().map(|u| u.total_bytes);
    }
    stats.record(Some(&done), done.cache_after);
    tracing::info!(
        build_dirs = done.build_dirs,
        images = done.images,
        dangling_images = done.dangling_images,
        image_bytes = done.image_bytes,
        build_cache_bytes_freed = done.cache_bytes,
        build_cache_bytes_after = done.cache_after,
        "reclaimed disk space"
    );
    done
}

/// Removes slipway's dangling images (no tag left); how many, and the bytes freed.
async fn prune_dangling_images(docker: &Docker) -> (usize, u64) {
    let filters = std::collections::HashMap::from([("dangling", vec!["true"]), ("label", vec![APP_LABEL])]);
    let options = PruneImagesOptionsBuilder::default().filters(&filters).build();
    match docker.prune_images(Some(options)).await {
        Ok(answer) => (
            answer.images_deleted.map_or(0, |d| d.iter().filter(|i| i.deleted.is_some()).count()),
            answer.space_reclaimed.unwrap_or(0).max(0) as u64,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot prune slipway's dangling images");
            (0, 0)
        }
    }
}

/// The repository of an image reference: `reg:5000/app:tag` and `reg:5000/app@sha256:…`
/// are `reg:5000/app`. Pure.
fn repository_of(reference: &str) -> &str {
    if let Some((repository, _)) = reference.split_once('@') {
        return repository;
    }
    match reference.rsplit_once(':') {
        // A colon after the last slash separates the tag; before it, a registry port.
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => reference,
    }
}

/// Is `name` a build directory name, `<build id>-<attempt>`?
fn is_build_dir_name(name: &str) -> bool {
    let Some((build, attempt)) = name.rsplit_once('-') else { return false };
    build.starts_with("b-")
        && build.len() > 2
        && build[2..].bytes().all(|b| b.is_ascii_digit())
        && !attempt.is_empty()
        && attempt.bytes().all(|b| b.is_ascii_digit())
}

async fn remove_stale_build_dirs(build_root: &Path, running: &[String]) -> usize {
    let root = build_root.to_path_buf();
    let running = running.to_vec();
    let removed = tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&root) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir || !is_build_dir_name(&name) || running.contains(&name) {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a stale build dir"),
            }
        }
        removed
    })
    .await;
    removed.unwrap_or(0)
}

async fn remove_superseded_images(docker: &Docker) -> usize {
    let options = ListImagesOptionsBuilder::default()
        .filters(&std::collections::HashMap::from([("label", vec![APP_LABEL])]))
        .build();
    let images = match docker.list_images(Some(options)).await {
        Ok(images) => images,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list slipway's images");
            return 0;
        }
    };
    // The newest image per app and repository stays: an engine shared by two fleets (or
    // two test clusters) holds two repositories of an app, each with its own newest.
    let key = |image: &bollard::models::ImageSummary| -> Option<(String, String)> {
        let app = image.labels.get(APP_LABEL)?.clone();
        let repository = image
            .repo_tags
            .iter()
            .chain(image.repo_digests.iter())
            .filter(|r| !r.starts_with("<none>"))
            .map(|r| repository_of(r).to_string())
            .min()
            .unwrap_or_default();
        Some((app, repository))
    };
    let mut newest: BTreeMap<(String, String), (i64, String)> = BTreeMap::new();
    for image in &images {
        let Some(k) = key(image) else { continue };
        let entry = newest.entry(k).or_insert((image.created, image.id.clone()));
        if image.created > entry.0 {
            *entry = (image.created, image.id.clone());
        }
    }
    let mut removed = 0;
    for image in images {
        let Some(k) = key(&image) else { continue };
        if newest.get(&k).is_some_and(|(_, id)| *id == image.id) {
            continue;
        }
        // Untag each tag (an image in several repositories cannot be removed by id
        // without force), then the image itself if it is left untagged.
        let mut names: Vec<String> =
            image.repo_tags.iter().filter(|t| t.as_str() != "<none>:<none>").cloned().collect();
        names.push(image.id.clone());
        let mut gone = false;
        for name in names {
            let options = RemoveImageOptionsBuilder::default().force(false).noprune(false).build();
            match docker.remove_image(&name, Some(options), None).await {
                Ok(_) => gone = true,
                Err(e) => tracing::debug!(image = %name, error = %e, "kept (in use, or already removed)"),
            }
        }
        if gone {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_runs_only_above_the_high_watermark() {
        let settings = ReclaimSettings {
            build_cache_high_watermark_bytes: 100,
            build_cache_low_watermark_bytes: 50,
            interval_secs: 1,
        };
        assert!(!over_high_watermark(100, &settings));
        assert!(over_high_watermark(101, &settings));
        let never = ReclaimSettings { build_cache_high_watermark_bytes: 0, ..settings };
        assert!(!over_high_watermark(u64::MAX, &never));
    }

    #[test]
    fn the_repository_of_a_reference_drops_its_tag_or_digest() {
        assert_eq!(repository_of("127.0.0.1:5000/shop:b-7"), "127.0.0.1:5000/shop");
        assert_eq!(repository_of("127.0.0.1:5000/shop@sha256:abc"), "127.0.0.1:5000/shop");
        assert_eq!(repository_of("127.0.0.1:5000/shop"), "127.0.0.1:5000/shop");
        assert_eq!(repository_of("shop:latest"), "shop");
    }

    #[test]
    fn only_build_dir_names_are_build_dirs() {
        assert!(is_build_dir_name("b-12-1"));
        assert!(is_build_dir_name("b-1-10"));
        for name in ["logs", "b--1", "b-1", "b-x-1", "b-1-", "c-1-1", "b-1-1x", ".b-1-1"] {
            assert!(!is_build_dir_name(name), "{name}");
        }
    }

    #[tokio::test]
    async fn stale_build_dirs_go_running_ones_and_everything_else_stay() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["b-1-1", "b-2-1", "b-3-2", "logs", "other"] {
            std::fs::create_dir(root.path().join(dir)).unwrap();
        }
        std::fs::write(root.path().join("b-9-1"), "a file, not a build dir").unwrap();
        let removed = remove_stale_build_dirs(root.path(), &["b-2-1".to_string()]).await;
        assert_eq!(removed, 2);
        let mut left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b-2-1", "b-9-1", "logs", "other"]);
    }
}
