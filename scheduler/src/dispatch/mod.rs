//! The dispatcher: the leader's work loop. Each tick it places queued builds and takes
//! builds back from lost nodes (`builds.rs`), deploys every release that is not
//! deployed yet (`deploys.rs`), and keeps the registry grants stored with the apps'
//! services from expiring (`grants.rs`), and drops expired entries from the deny list.
//! [`watch_leadership`] hands the fleet over when leadership changes (`leadership.rs`).
//! What an agent reports at the end of a build is checked before it is recorded
//! (`verify.rs`): the release's image and run spec are the scheduler's, not the agent's
//! word.
//!
//! The loop is driven by the replicated state, not by in-memory queues: whatever the
//! state says is queued gets placed, whatever release is pending gets deployed. So a new
//! leader simply picks up where the old one stopped, and a crash mid-deploy is retried
//! by whoever leads next. What it remembers between ticks (why builds wait, deploys in
//! flight) is [`crate::dispatch_state`]; the Swarm side of a deploy is [`crate::deploy`].
//!
//! ```text
//! Queued ──place()──► AssignBuild ──► agent ── BuildEvent ──► verify ──► finish_build ──► Release N (pending)
//!                                                                                              │
//!                                 RecordDeploy ◄── deploy::deploy (Swarm) ◄── deploy_release ◄─┘
//! ```

mod builds;
mod deploys;
pub mod gc;
mod grants;
mod leadership;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use builds::{assignment, finish_build};
pub use deploys::service_for;
pub use grants::pull_auth;
pub use leadership::{watch_leadership, LEASE_CHECK};
pub use verify::verify_success;

use crate::context::Context;

/// Runs until shutdown. Does nothing while this member is not the leader. Runs under
/// the server's supervisor: a panic here ends the process (`slipway_common::supervise`),
/// so a member never keeps leading with a dead dispatcher.
pub async fn run(ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let mut applied = ctx.store.applied();
    let mut last_tick = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ctx.wake.notified() => {}
            _ = applied.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        // A burst of writes applies thousands of entries a second: one tick covers
        // all that arrived within MIN_TICK, instead of a queue scan per entry.
        tokio::time::sleep_until(last_tick + MIN_TICK).await;
        applied.borrow_and_update();
        last_tick = tokio::time::Instant::now();
        if !ctx.fleet.is_leading() || !ctx.store.is_leader() {
            continue;
        }
        #[cfg(debug_assertions)]
        test_hooks::panic_if_asked(ctx.config.node_id);
        builds::place_queued(&ctx).await;
        builds::requeue_lost(&ctx).await;
        deploys::start_pending_deploys(&ctx).await;
        grants::renew_pull_grants(&ctx);
        prune_revocations(&ctx).await;
        replicate_build_retention(&ctx).await;
        ctx.dispatch.passed();
    }
}

/// Replicates this leader's `build_retention.finished_builds_per_app` when the state
/// holds another value (one write; the apply prunes at once, `state/build_retention.rs`).
async fn replicate_build_retention(ctx: &Context) {
    let keep = ctx.config.build_retention.finished_builds_per_app.max(1);
    if ctx.store.read(|s| s.keep_finished_builds()) == keep {
        return;
    }
    let cmd = crate::state::Command::SetBuildRetention { keep_finished_builds_per_app: keep };
    match ctx.store.write(cmd).await {
        Ok(_) => {
            tracing::info!(keep, "build retention set: finished builds beyond the last {keep} per app go")
        }
        Err(err) => tracing::warn!(%err, "cannot set the build retention; retrying next tick"),
    }
}

/// Fault injection for the integration tests, compiled into debug builds only.
#[cfg(debug_assertions)]
mod test_hooks {
    /// Names a file; while it holds this member's node id, the leader's dispatcher
    /// panics at its next pass (t33 checks that the process exits and another member
    /// leads). Absent in release builds.
    pub const PANIC_DISPATCHER: &str = "SLIPWAY_TEST_PANIC_DISPATCHER";

    /// Names a file; while it holds this member's node id, a deploy on this member waits
    /// right before its Swarm update (t33 cuts the leader off at that moment). The deploy's
    /// leadership re-checks go on meanwhile. Absent in release builds.
    pub const HOLD_DEPLOY: &str = "SLIPWAY_TEST_HOLD_DEPLOY";

    pub async fn hold_deploy_if_asked(node_id: u64) {
        let Some(path) = std::env::var_os(HOLD_DEPLOY) else { return };
        let held = || std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == node_id.to_string());
        if !held() {
            return;
        }
        tracing::warn!("{HOLD_DEPLOY} holds this deploy before its Swarm update");
        while held() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tracing::warn!("{HOLD_DEPLOY} lets this deploy go on to its Swarm update");
    }

    pub fn panic_if_asked(node_id: u64) {
        let Some(path) = std::env::var_os(PANIC_DISPATCHER) else { return };
        let asked = std::fs::read_to_string(path).unwrap_or_default();
        if asked.trim() == node_id.to_string() {
            panic!("{PANIC_DISPATCHER} asked member {node_id}'s dispatcher to panic");
        }
    }
}

/// Drops the deny list entries whose certificates have all expired (one write, only
/// when there is one to drop), so the list stays bounded.
async fn prune_revocations(ctx: &Context) {
    let now_ms = slipway_common::now_ms();
    if !ctx.store.read(|s| s.has_expired_revocations(now_ms)) {
        return;
    }
    match ctx.store.write(crate::state::Command::PruneRevocations { now_ms }).await {
        Ok(_) => tracing::info!("expired entries left the deny list"),
        Err(err) => tracing::warn!(%err, "cannot prune the deny list; retrying next tick"),
    }
}

/// The dispatcher ticks at most this often (placement waits at most this long).
const MIN_TICK: Duration = Duration::from_millis(20);
