//! Measures what the scheduler needs to place builds on this node: the build
//! filesystem (the filesystem `build_root` is on, by `statvfs`), CPU, load, memory, the
//! Docker engine's health and builder (BuildKit, or the classic fallback), the bytes
//! slipway's own images and the engine's build cache hold, and what reclaiming freed.

use std::path::{Path, PathBuf};

use bollard::Docker;
use slipway_proto::NodeReport;
use sysinfo::System;

use crate::metrics::LastReport;
use crate::pipeline::docker::APP_LABEL;
use crate::reclaim::ReclaimStats;
use slipway_common::build_logs::DiskGuard;
use std::sync::Arc;

/// Takes [`NodeReport`]s; keeps the CPU sampler between calls so usage is a rate.
pub struct Reporter {
    sys: Option<System>,
    build_root: PathBuf,
    build_slots: u32,
    /// Named in reports when the engine does not answer.
    docker_socket: String,
    /// Every report measured is recorded here for the agent's `/metrics`.
    last: LastReport,
    /// `builder = "classic"` in agent.toml: reported whatever the engine offers.
    force_classic: bool,
    /// What reclaiming freed and the build cache's last size.
    reclaim: Option<ReclaimStats>,
    /// Whether build log files are written.
    log_guard: Option<Arc<DiskGuard>>,
    /// The floor raised after a build ran the build filesystem out of space.
    space_floor: Option<crate::space::SpaceFloor>,
}

pub use crate::space::filesystem_bytes;

impl Reporter {
    /// A reporter for the node whose builds run under `build_root`; each report it
    /// measures is also recorded in `last`.
    pub fn new(build_root: PathBuf, build_slots: u32, docker_socket: String, last: LastReport) -> Self {
        let sys = System::new().ok().map(|mut s| {
            s.refresh_cpu_usage();
            s
        });
        Self {
            sys,
            build_root,
            build_slots,
            docker_socket,
            last,
            force_classic: false,
            reclaim: None,
            log_guard: None,
            space_floor: None,
        }
    }

    /// Reports what reclaiming freed, the build cache's size, and whether build logs are
    /// written.
    pub fn with_upkeep(mut self, reclaim: ReclaimStats, log_guard: Arc<DiskGuard>) -> Self {
        self.reclaim = Some(reclaim);
        self.log_guard = Some(log_guard);
        self
    }

    /// Reports the build filesystem floor `floor` holds while it is raised.
    pub fn with_space_floor(mut self, floor: crate::space::SpaceFloor) -> Self {
        self.space_floor = Some(floor);
        self
    }

    /// Reports the classic builder whatever the engine offers (the agent forces it).
    pub fn force_classic(mut self, force: bool) -> Self {
        self.force_classic = force;
        self
    }

    /// Measures the node now. `running` are the builds this agent runs.
    pub async fn measure(
        &mut self,
        docker: Option<&Docker>,
        running: Vec<(String, u32)>,
        cached_apps: Vec<String>,
    ) -> NodeReport {
        let (total, available) = filesystem_bytes(&self.build_root).unwrap_or_else(|err| {
            tracing::warn!(build_root = %self.build_root.display(), %err, "cannot stat the build filesystem");
            (0, 0)
        });
        let mut report = NodeReport {
            build_fs_total_bytes: total,
            build_fs_available_bytes: available,
            running_builds: running.len() as u32,
            build_slots: self.build_slots,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            cached_apps,
            running: running
                .into_iter()
                .map(|(build_id, attempt)| slipway_proto::BuildAttempt { build_id, attempt })
                .collect(),
            ..Default::default()
        };
        if let Some(sys) = self.sys.as_mut() {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            report.cpu_count = sys.cpus().len() as u32;
            report.cpu_usage_percent = sys.global_cpu_usage();
            report.memory_total_bytes = sys.total_memory();
            report.memory_available_bytes = sys.available_memory();
        }
        if let Ok(load) = System::load_average() {
            report.load_1m = load.one;
        }
        if let Some(totals) = self.reclaim.as_ref().map(ReclaimStats::totals) {
            report.build_cache_bytes = totals.build_cache_bytes;
            report.reclaimed_bytes_total = totals.bytes;
            report.reclaim_passes_total = totals.passes;
        }
        report.build_logs_stopped = self.log_guard.as_ref().is_some_and(|g| g.stopped());
        if let Some((floor, reason)) = self.space_floor.as_ref().and_then(|f| f.current(available)) {
            report.build_fs_floor_bytes = floor;
            report.build_fs_floor_reason = reason;
        }
        match docker {
            Some(docker) => match docker.version().await {
                Ok(version) => {
                    report.docker_healthy = true;
                    report.docker_version = version.version.unwrap_or_default();
                    // The build cache (measured by the reclaim passes, `/system/df` being
                    // too slow for every report) holds layers and cache mounts.
                    report.cache_bytes = slipway_image_bytes(docker).await + report.build_cache_bytes;
                    report.builder =
                        crate::pipeline::buildkit::engine_builder(Path::new(&self.docker_socket))
                            .await
                            .map(|b| b.name().to_string())
                            .unwrap_or_default();
                }
                Err(err) => {
                    report.docker_error = format!("the engine at {} fails: {err}", self.docker_socket)
                }
            },
            None => {
                report.docker_error = format!(
                    "cannot reach the engine at unix://{} (is dockerd running? agent docker_socket)",
                    self.docker_socket
                )
            }
        }
        self.last.record(&report);
        report
    }
}

/// Bytes held by images slipway built on this engine.
async fn slipway_image_bytes(docker: &Docker) -> u64 {
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
        .filters(&std::collections::HashMap::from([("label", vec![APP_LABEL])]))
        .build();
    match docker.list_images(Some(options)).await {
        Ok(images) => images.iter().map(|i| i.size.max(0) as u64).sum(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_bytes_reads_the_filesystem_of_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let (total, available) = filesystem_bytes(dir.path()).unwrap();
        assert!(total > 0 && available <= total);
        assert!(filesystem_bytes(Path::new("/no/such/dir")).is_err());
    }

    #[tokio::test]
    async fn a_report_without_docker_says_the_engine_is_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let mut r =
            Reporter::new(dir.path().to_path_buf(), 3, "/nonexistent.sock".into(), LastReport::default());
        let report = r.measure(None, vec![("b-1".into(), 1)], vec![]).await;
        assert_eq!((report.running_builds, report.build_slots), (1, 3));
        assert!(!report.docker_healthy);
        assert!(report.docker_error.contains("/nonexistent.sock"), "{}", report.docker_error);
        assert!(report.build_fs_total_bytes > 0);
        assert!(report.memory_total_bytes > 0);
    }
}
