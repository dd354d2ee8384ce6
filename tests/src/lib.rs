//! # slipway-tests: shared fixtures for the integration tests
//!
//! The tests under `tests/tests/` are named by tier (`t00` fixtures, `t10` in-process
//! cluster, `t20` real Docker engine + registry + Swarm, `t30` fleet); see
//! `tests/README.md`. They speak through the fixtures here so each test reads like
//! its scenario:
//!
//! - [`docker`]: [`require_docker`] (an engine client, or a loud skip), [`base_image`]
//!   (`slipway/busybox:latest`, built locally by `packaging/base-image.sh`),
//!   [`ensure_swarm`] (a single-node Swarm on the local engine).
//! - [`registry`]: [`Registry`], Debian's `docker-registry` on a free loopback port in
//!   a temporary directory, with HTTP helpers to look at what was pushed; with a
//!   [`TokenAuth`] it takes tokens from a scheduler, as slipway's registries do.
//! - [`gitrepo`]: [`GitRepo`], an app from `examples/` committed into a fresh git
//!   repository that the agent can clone through a `file://` URL.
//! - [`net`]: [`free_port`], [`wait_for_http`].
//! - [`netns`]: [`NetLab`], a bridge and a /24 of network namespaces ("nodes") for
//!   tests, with a knob that cuts one node off from the others (needs root).
//! - [`fleet`]: [`Fleet`], several `dockerd`s each in a [`NetLab`] node, one Swarm,
//!   a registry on the lab's host address; kill and restart an engine (needs root).
//! - [`cluster`]: [`TestCluster`], the `slipway-scheduler` and `slipway-agent`
//!   binaries as child processes (so tests can `kill -9` them) on a registry (token
//!   auth, the cluster's own token server) and the local Swarm, or on a [`Fleet`] with
//!   an agent per engine, with a control-API client; [`DeployRun`] collects a deploy
//!   stream.
//! - [`browser`]: headless Chromium, for pages an operator looks at.
//! - [`exposition`]: [`exposition::check`], which reads `/metrics` text as a scraper does.
//!
//! Fixtures panic with a message naming the fix when the machine lacks something:
//! they are for tests, where a panic is a failure with a reason.
//!
//! Test binaries run concurrently (one process per file under `tests/tests/`), so
//! machine-wide set-up (the base image, `docker swarm init`) is once per process and
//! serialised across processes with `flock` on a file under `/tmp`.

#![forbid(unsafe_code)]

pub mod browser;
pub mod cluster;
pub mod docker;
pub mod exposition;
pub mod fleet;
pub mod gitrepo;
pub mod net;
pub mod netns;
pub mod registry;

use std::io::Write;
use std::path::PathBuf;

pub use cluster::{set_app_port, DeployRun, TestCluster};
pub use docker::{base_image, ensure_swarm, require_docker, BASE_IMAGE};
pub use fleet::Fleet;
pub use gitrepo::GitRepo;
pub use net::{free_port, wait_for_http};
pub use netns::NetLab;
pub use registry::{Registry, TokenAuth};

/// Name of the environment variable that turns "skip" into "fail" for tests that need
/// a Docker engine or the registry binary. CI sets it to `1`.
pub const REQUIRE_DOCKER_ENV: &str = "SLIPWAY_REQUIRE_DOCKER";

/// A child process killed and reaped when dropped, also when the test panics (an
/// orphaned server would keep the test's output pipe open).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The workspace root (the directory holding `packaging/`, `examples/`, `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent directory").to_path_buf()
}

/// Is `SLIPWAY_REQUIRE_DOCKER=1` set (CI), so that missing Docker pieces fail tests?
pub fn docker_required() -> bool {
    std::env::var(REQUIRE_DOCKER_ENV).is_ok_and(|v| v == "1")
}

/// Reports that the current test cannot run here because `reason`: panics when
/// [`docker_required`], otherwise prints a loud skip banner on stderr. The caller
/// returns early after it.
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("<unnamed test>").to_string();
    if docker_required() {
        panic!("{test}: {reason} ({REQUIRE_DOCKER_ENV}=1, so this is a failure, not a skip)");
    }
    // Straight to fd 2, not eprintln!: libtest captures the macros' output of passing
    // tests, and a skip must be seen.
    let banner = format!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}\n\
         !!! {reason}\n\
         !!! (set {REQUIRE_DOCKER_ENV}=1 to make this a failure)\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
}
