//! Leadership changes, as the leader's soft state sees them: a member that starts
//! leading takes the fleet over (nodes Unknown until they report), one that stops
//! forgets the fleet and stands its dispatcher down (deploys aborted; the next leader
//! redeploys what is still pending), which ends its agents' sessions, pointing them at
//! the leader. Also logs when this member joins or leaves the cluster's membership.
//!
//! Leading means raft's leader *and* a quorum confirming it: openraft 0.9 does not step
//! down a leader cut off from its peers, which would otherwise keep its agents (and so
//! its nodes' builds) away from the leader the others elected. The leader confirms
//! every [`LEASE_CHECK`] ([`hold_lease`]); one that cannot (within the store's write
//! timeout) lets its fleet go, as a stepped-down leader does, until a quorum answers.
//! Its deploys are left to their own fence (they re-confirm every second and abort
//! saying why); the dispatcher stands down when raft's leadership goes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::context::Context;

/// How often the leader confirms with a quorum that it still leads.
pub const LEASE_CHECK: Duration = Duration::from_secs(2);

/// Aborts the task when dropped (when [`watch_leadership`] returns).
struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `lease` true while this member is not raft's leader or a quorum confirms its
/// leadership, false while it is raft's leader and cannot get that confirmation.
async fn hold_lease(ctx: Arc<Context>, lease: watch::Sender<bool>) {
    loop {
        let held = !ctx.store.is_leader()
            || match ctx.store.confirm_leading().await {
                Ok(()) => true,
                // Lost the leadership meanwhile: the metrics say so (or are about to).
                Err(crate::error::Error::NotLeader { .. }) => true,
                Err(_) if !ctx.store.is_leader() => true,
                Err(err) => {
                    if *lease.borrow() {
                        tracing::warn!(
                            %err,
                            "this leader cannot confirm that it still leads: its agents are sent to find \
                             the leader and its deploys stop, until a quorum answers"
                        );
                    }
                    false
                }
            };
        if held && !*lease.borrow() {
            tracing::info!("a quorum confirms this member's leadership again, or another member leads");
        }
        lease.send_if_modified(|was| std::mem::replace(was, held) != held);
        tokio::time::sleep(LEASE_CHECK).await;
    }
}

/// Follows raft's metrics and hands the fleet over when leadership changes. Fails when
/// raft stops (a fatal storage error, such as a failed write or fsync): the supervisor
/// then ends the process rather than leave a member that can neither lead nor follow.
pub async fn watch_leadership(ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let mut metrics = ctx.store.raft().metrics();
    let (lease_tx, mut lease) = watch::channel(true);
    let _lease_check = StopOnDrop(tokio::spawn(hold_lease(ctx.clone(), lease_tx)).abort_handle());
    let mut leading = false;
    let mut raft_leading = false;
    let mut member = false;
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            return Err(format!("raft stopped: {fatal}; check the data_dir (disk full? read-only?)"));
        }
        let now_member = {
            let m = metrics.borrow();
            m.membership_config.membership().get_node(&m.id).is_some()
        };
        if member && !now_member {
            tracing::error!(
                "this scheduler was removed from the cluster: it no longer takes part; stop it, and \
                 empty its data_dir before joining it to a cluster again"
            );
        } else if !member && now_member {
            tracing::info!("this scheduler is a member of the cluster");
        }
        member = now_member;
        let now_raft_leading = ctx.store.is_leader();
        let now_leading = now_raft_leading && *lease.borrow();
        if now_leading != leading || now_raft_leading != raft_leading {
            tracing::info!(leader = now_leading, term = metrics.borrow().current_term, "leadership changed");
            ctx.fleet.leadership_changed(now_leading);
            // Deploys stop when raft's leadership goes. A lost lease alone leaves them to
            // their own fence (each re-confirms every second and aborts, saying why).
            if !now_raft_leading && raft_leading {
                ctx.dispatch.stand_down();
            }
            leading = now_leading;
            raft_leading = now_raft_leading;
            ctx.dispatcher_wake();
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() {
                return Err("raft stopped (its core task ended); see the lines before this one".into());
            },
            changed = lease.changed() => if changed.is_err() {
                return Err("the leadership lease check ended (a panic? see the lines before this one)".into());
            },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
