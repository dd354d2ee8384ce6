//! Revocations: the replicated deny list of certificates no member accepts any more,
//! and removing a node from the fleet.
//!
//! A certificate is known by its holder (`role` and `name`, the identity its URI names)
//! and when it became valid (`not_before`). A [`Revocation`] of a holder denies every
//! certificate of that holder valid from its `issued_until_ms` or earlier: all the
//! certificates issued to it before it was removed, whoever issued them (a join, a
//! renewal, a scheduler's own at start, a version that recorded nothing) — which a list
//! of serials recorded at issue could not promise. A certificate issued to the same name
//! later (the node joins again after its removal) starts after that time, because the
//! issuer reads [`State::valid_from_floor_ms`], so it is not denied.
//!
//! Entries stay until every certificate they deny has expired (`expires_at_ms`, the
//! removal time plus the longest lifetime the role's certificates get); the leader then
//! proposes [`super::Command::PruneRevocations`]. One entry per removed holder: the list
//! is bounded by the removals within one certificate lifetime.

use serde::{Deserialize, Serialize};

use super::{ApplyError, BuildState, Response, State};

/// The certificates of one holder that no member accepts any more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `agent`, `scheduler` or `admin`: the role the certificates name.
    pub role: String,
    /// The name they carry: a node id, a scheduler's raft id, an operator's name.
    pub name: String,
    /// Certificates of this holder valid from this time or earlier are denied (ms since
    /// the epoch: when the holder was removed).
    pub issued_until_ms: u64,
    /// Every denied certificate has expired by then, so the entry may go (ms since the epoch).
    pub expires_at_ms: u64,
    /// Why, for the refused caller and the log (no secret in it).
    pub reason: String,
}

/// The key of a holder's entry in [`State::revocations`].
pub fn holder_key(role: &str, name: &str) -> String {
    format!("{role}/{name}")
}

impl State {
    /// The revocation denying a certificate of `role`/`name` valid from `not_before_ms`,
    /// if one does.
    pub fn revocation(&self, role: &str, name: &str, not_before_ms: u64) -> Option<&Revocation> {
        self.revocations.get(&holder_key(role, name)).filter(|r| not_before_ms <= r.issued_until_ms)
    }

    /// The earliest a new certificate for `role`/`name` may be valid from so that no
    /// revocation denies it (ms since the epoch), if the holder was ever revoked.
    pub fn valid_from_floor_ms(&self, role: &str, name: &str) -> Option<u64> {
        self.revocations.get(&holder_key(role, name)).map(|r| r.issued_until_ms + 1)
    }

    /// True when some entry of the deny list has expired (time to prune).
    pub fn has_expired_revocations(&self, now_ms: u64) -> bool {
        self.revocations.values().any(|r| r.expires_at_ms < now_ms)
    }

    /// Adds `r` to the deny list; a holder already on it keeps one entry, denying up to
    /// the later time and until the later expiry.
    pub(super) fn revoke(&mut self, r: Revocation) {
        let entry = self.revocations.entry(holder_key(&r.role, &r.name)).or_insert_with(|| r.clone());
        entry.issued_until_ms = entry.issued_until_ms.max(r.issued_until_ms);
        entry.expires_at_ms = entry.expires_at_ms.max(r.expires_at_ms);
        entry.reason = r.reason;
    }

    /// Drops the entries whose certificates have all expired by `now_ms`.
    pub(super) fn prune_revocations(&mut self, now_ms: u64) -> Response {
        self.revocations.retain(|_, r| r.expires_at_ms >= now_ms);
        Response::Done
    }

    /// Removes node `node_id` from the fleet: its record goes (its name is free again),
    /// its unfinished builds go back to the queue as after a lost node, and its
    /// certificates are denied.
    pub(super) fn remove_node(
        &mut self,
        node_id: &str,
        at_ms: u64,
        certs_expire_by_ms: u64,
    ) -> Result<Response, ApplyError> {
        let node = self.nodes.remove(node_id).ok_or_else(|| ApplyError::NoSuchNode(node_id.to_string()))?;
        let mut requeued = Vec::new();
        for build in self.builds.values_mut() {
            let unfinished = matches!(build.state, BuildState::Assigned | BuildState::Running);
            if unfinished && build.node_id.as_deref() == Some(node_id) {
                build.state = BuildState::Queued;
                build.queued_at_ms = at_ms;
                build.node_id = None;
                build.error = Some(format!("attempt {} lost: node {} was removed", build.attempt, node.name));
                requeued.push(build.id.clone());
            }
        }
        self.revoke(Revocation {
            role: "agent".into(),
            name: node_id.to_string(),
            issued_until_ms: at_ms,
            expires_at_ms: certs_expire_by_ms,
            reason: format!("node {:?} was removed from the fleet", node.name),
        });
        Ok(Response::NodeRemoved { node, requeued })
    }

    /// Refuses a node name another node holds, naming the holder.
    pub(super) fn check_node_name(&self, id: &str, name: &str) -> Result<(), ApplyError> {
        match self.nodes.values().find(|n| n.id != id && n.name == name) {
            Some(holder) => {
                Err(ApplyError::NodeNameTaken { name: name.to_string(), holder: holder.id.clone() })
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Build, Command};
    use super::*;

    fn register(s: &mut State, id: &str, name: &str) -> Response {
        s.apply(&Command::RegisterNode {
            id: id.into(),
            name: name.into(),
            labels: Default::default(),
            at_ms: 1,
        })
    }

    fn running_build_on(s: &mut State, node: &str) -> Build {
        s.apply(&Command::CreateApp {
            name: "shop".into(),
            repo: "r".into(),
            branch: "main".into(),
            at_ms: 1,
        });
        let Response::Build(b) = s.apply(&Command::QueueBuild {
            app: "shop".into(),
            git_ref: "main".into(),
            no_cache: false,
            request_id: None,
            at_ms: 2,
        }) else {
            panic!("queued")
        };
        s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: node.into(), attempt: 1 });
        s.apply(&Command::StartBuild { build_id: b.id.clone(), attempt: 1 });
        s.builds[&b.id].clone()
    }

    fn remove(s: &mut State, id: &str, at_ms: u64) -> Response {
        s.apply(&Command::RemoveNode { node_id: id.into(), at_ms, certs_expire_by_ms: at_ms + 1000 })
    }

    #[test]
    fn removing_a_node_frees_its_name_requeues_its_builds_and_denies_its_certificates() {
        let mut s = State::default();
        register(&mut s, "n1", "node-1");
        let b = running_build_on(&mut s, "n1");
        let Response::NodeRemoved { node, requeued } = remove(&mut s, "n1", 5_000) else { panic!() };
        assert_eq!((node.name.as_str(), requeued), ("node-1", vec![b.id.clone()]));
        let b = s.builds[&b.id].clone();
        assert_eq!((b.state, b.node_id.as_deref(), b.queued_at_ms), (BuildState::Queued, None, 5_000));
        assert!(b.error.as_deref().unwrap().contains("node node-1 was removed"), "{b:?}");
        // A certificate from before the removal is denied; one valid only after it is not.
        assert!(s.revocation("agent", "n1", 4_000).is_some_and(|r| r.reason.contains("node-1")));
        assert!(s.revocation("agent", "n1", 5_000).is_some());
        assert_eq!(s.valid_from_floor_ms("agent", "n1"), Some(5_001));
        assert!(s.revocation("agent", "n1", 5_001).is_none());
        assert!(s.revocation("scheduler", "n1", 0).is_none(), "another role's holder is untouched");
        // The name is free: another node takes it; a second removal is not found.
        assert!(matches!(register(&mut s, "n2", "node-1"), Response::Node(_)));
        assert_eq!(remove(&mut s, "n1", 6_000), Response::Refused(ApplyError::NoSuchNode("n1".into())));
        // Nothing can be assigned to the removed node.
        let again =
            s.apply(&Command::AssignBuild { build_id: b.id.clone(), node_id: "n1".into(), attempt: 2 });
        assert_eq!(again, Response::Refused(ApplyError::NoSuchNode("n1".into())));
    }

    #[test]
    fn node_names_are_unique_and_a_node_keeps_its_own() {
        let mut s = State::default();
        register(&mut s, "n1", "node-1");
        let before = s.clone();
        assert_eq!(
            register(&mut s, "n2", "node-1"),
            Response::Refused(ApplyError::NodeNameTaken { name: "node-1".into(), holder: "n1".into() })
        );
        assert_eq!(s, before, "a refusal changes nothing");
        assert!(matches!(register(&mut s, "n1", "node-1"), Response::Node(_)), "re-registering as itself");
        let err = ApplyError::NodeNameTaken { name: "node-1".into(), holder: "n1".into() }.to_string();
        assert!(err.contains("held by node \"n1\"") && err.contains("slipway nodes remove"), "{err}");
    }

    #[test]
    fn a_holder_removed_twice_keeps_one_entry_denying_up_to_the_later_time() {
        let mut s = State::default();
        register(&mut s, "n1", "a");
        remove(&mut s, "n1", 1_000);
        register(&mut s, "n1", "a");
        remove(&mut s, "n1", 3_000);
        assert_eq!(s.revocations.len(), 1);
        assert!(s.revocation("agent", "n1", 2_500).is_some());
        assert_eq!(s.revocations["agent/n1"].expires_at_ms, 4_000);
    }

    #[test]
    fn expired_entries_are_pruned_and_the_list_survives_a_snapshot() {
        let mut s = State::default();
        register(&mut s, "n1", "a");
        remove(&mut s, "n1", 1_000);
        s.apply(&Command::RevokeCertificates {
            role: "scheduler".into(),
            name: "3".into(),
            reason: "scheduler 3 was removed from the cluster".into(),
            at_ms: 1_500,
            certs_expire_by_ms: 9_000,
        });
        let snapshot = serde_json::to_string(&s).unwrap();
        let restored: State = serde_json::from_str(&snapshot).unwrap();
        assert_eq!(restored, s);
        assert!(restored.revocation("scheduler", "3", 1_400).is_some());

        assert!(!s.has_expired_revocations(2_000));
        assert!(s.has_expired_revocations(2_001));
        s.apply(&Command::PruneRevocations { now_ms: 2_001 });
        assert!(s.revocation("agent", "n1", 0).is_none(), "expired: gone");
        assert!(s.revocation("scheduler", "3", 0).is_some(), "not yet expired: kept");
        // A state written before revocations existed reads as an empty list.
        let older = snapshot.split(r#","revocations""#).next().unwrap().to_string() + "}";
        assert!(serde_json::from_str::<State>(&older).unwrap().revocations.is_empty(), "{older}");
    }
}
