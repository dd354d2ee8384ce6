//! # slipway-testkit: the machine-level fixtures every slipway test shares
//!
//! One copy of the fixtures that stand up real infrastructure, used by the unit tests
//! of `slipway-agent` and `slipway-scheduler` (as a dev-dependency) and by the
//! integration tests in `tests/`. It knows nothing of slipway's own crates: what is
//! slipway-specific (a cluster of its binaries, a fleet of engines, grants minted by
//! its CA) lives in `tests/src/`, on top of this kit.
//!
//! ## Layout
//!
//! - [`docker`]: the local engine. [`require_docker`] (a client, or a loud skip),
//!   [`base_image`] (`slipway/busybox:latest`, the one base image, built by
//!   `packaging/base-image.sh`), [`engine_with_base`] (both), [`router_image`]
//!   (`slipway.invalid/router:latest`, Debian's Caddy, built by `packaging/router-image.sh`),
//!   [`ensure_swarm`] (a single-node Swarm), [`docker_cli`], [`remove_images`],
//!   [`StackCleanup`].
//! - [`registry`]: [`Registry`], Debian's `docker-registry` on a free port in a
//!   temporary directory ([`require_registry`]: or a loud skip without the binary),
//!   with HTTP helpers to look at what was pushed and [`Registry::build_and_push`];
//!   with a [`TokenAuth`] it runs `auth: token` against a token server the caller
//!   names.
//! - [`gitrepo`]: [`GitRepo`], a git repository in a temporary directory (empty, or an
//!   app from `examples/`) that a build clones through a `file://` URL; [`git`] runs
//!   git anywhere with the user's configuration ignored.
//! - [`exposition`]: [`exposition::check`], a Prometheus text-format checker for the
//!   `/metrics` of the scheduler and the agent.
//! - [`net`]: [`free_port`], [`wait_for_http`].
//! - [`netns`]: [`NetLab`], a bridge and a /24 of network namespaces ("nodes"), with a
//!   knob that cuts one node off from the others (needs root).
//! - This file: [`skip`] and [`docker_required`] (the skip-or-fail rule),
//!   [`KillOnDrop`], [`workspace_root`], [`unique_name`].
//!
//! Fixtures panic with a message naming the fix when the machine lacks something:
//! they are for tests, where a panic is a failure with a reason. Where a missing piece
//! (no engine, no `docker-registry`, not root) should skip the test instead, the
//! `require_*`/`try_*` forms print a loud banner and return `None` — unless
//! `SLIPWAY_REQUIRE_DOCKER=1` ([`REQUIRE_DOCKER_ENV`]; CI sets it), which makes the
//! skip a failure.
//!
//! Test binaries run concurrently, so machine-wide set-up (the base and router images,
//! `docker swarm init`) is once per process and serialised across processes with `flock` on a
//! file under `/tmp`.

#![forbid(unsafe_code)]

pub mod docker;
pub mod exposition;
pub mod gitrepo;
pub mod net;
pub mod netns;
pub mod registry;

use std::io::Write;
use std::path::PathBuf;

pub use docker::{
    base_image, docker_cli, engine_with_base, ensure_swarm, remove_images, require_docker, router_image,
    StackCleanup, BASE_IMAGE, ROUTER_IMAGE,
};
pub use gitrepo::{git, GitRepo};
pub use net::{free_port, wait_for_http, wait_for_http_as};
pub use netns::NetLab;
pub use registry::{require_registry, Registry, TokenAuth};

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

/// The workspace root (the directory holding `packaging/`, `examples/`, `testkit/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ has a parent directory").to_path_buf()
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

/// `<prefix>-<pid>-<n>`: a name no other test process and no earlier call in this one
/// uses, for images, containers and stacks (lower case, digits and `-`: valid for all
/// three when `prefix` is).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}{n}", std::process::id())
}
