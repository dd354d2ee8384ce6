//! Keeping the build filesystem above its floor, by removing only what slipway made:
//!
//! - build directories under `build_root` (`<build>-<attempt>`) of builds this agent
//!   is not running (left by a crash or a kill);
//! - images carrying the [`APP_LABEL`] label that are not their app's newest image on
//!   this engine (superseded releases; the newest stays, so the app's layers stay
//!   cached here and repeat builds keep their affinity). Images are untagged tag by
//!   tag and never forced, so an image a container still uses stays.
//!
//! Nothing else on the engine or the disk is touched: not other images, not other
//! containers, not the engine's build cache (it is shared with whoever else builds on
//! this engine), not the build logs under `build_root/logs`.

use std::collections::BTreeMap;
use std::path::Path;

use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use bollard::Docker;

use crate::pipeline::docker::APP_LABEL;

/// What a reclaim pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Build directories removed.
    pub build_dirs: usize,
    /// Superseded images removed (counted once any of their tags or their id went).
    pub images: usize,
}

/// Removes stale build directories and superseded slipway images (see the module doc).
/// `running` are the `<build>-<attempt>` directory names of the builds running now.
pub async fn reclaim(docker: Option<&Docker>, build_root: &Path, running: &[String]) -> Reclaimed {
    let mut done = Reclaimed { build_dirs: remove_stale_build_dirs(build_root, running).await, images: 0 };
    if let Some(docker) = docker {
        done.images = remove_superseded_images(docker).await;
    }
    tracing::info!(build_dirs = done.build_dirs, images = done.images, "reclaimed disk space");
    done
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
    // Newest image per app stays.
    let mut newest: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for image in &images {
        let Some(app) = image.labels.get(APP_LABEL) else { continue };
        let entry = newest.entry(app.clone()).or_insert((image.created, image.id.clone()));
        if image.created > entry.0 {
            *entry = (image.created, image.id.clone());
        }
    }
    let mut removed = 0;
    for image in images {
        let Some(app) = image.labels.get(APP_LABEL) else { continue };
        if newest.get(app).is_some_and(|(_, id)| *id == image.id) {
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
