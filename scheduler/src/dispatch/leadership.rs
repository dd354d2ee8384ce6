//! Leadership changes, as the leader's soft state sees them: a member that starts
//! leading takes the fleet over (nodes Unknown until they report), one that stops
//! forgets the fleet and stands its dispatcher down (deploys aborted; the next leader
//! redeploys what is still pending). Also logs when this member joins or leaves the
//! cluster's membership.

use std::sync::Arc;

use tokio::sync::watch;

use crate::context::Context;

/// Follows raft's metrics and hands the fleet over when leadership changes. Fails when
/// raft stops (a fatal storage error, such as a failed write or fsync): the supervisor
/// then ends the process rather than leave a member that can neither lead nor follow.
pub async fn watch_leadership(ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
    let mut metrics = ctx.store.raft().metrics();
    let mut leading = false;
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
        let now_leading = ctx.store.is_leader();
        if now_leading != leading {
            tracing::info!(leader = now_leading, term = metrics.borrow().current_term, "leadership changed");
            ctx.fleet.leadership_changed(now_leading);
            if !now_leading {
                ctx.dispatch.stand_down();
            }
            leading = now_leading;
            ctx.dispatcher_wake();
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() {
                return Err("raft stopped (its core task ended); see the lines before this one".into());
            },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
