//! Registry retention, as a pure function: which images of an app the registry keeps.
//!
//! A release is an image (a manifest digest in the app's repository) plus how it runs;
//! config changes, scales and rollbacks make releases that reuse an image. So the
//! policy counts **images**, not release records: `keep_last = N` keeps the images of
//! the N newest distinct digests among the app's releases (newest first by release
//! number), `keep_days = D` (0: off) also keeps every image whose release was deployed
//! (or made and still pending) within the last D days, and **always** kept, whatever N
//! and D say: the app's current release, every release still pending a deploy, and the
//! image the app's Swarm service runs (read from Swarm by the caller, so a service
//! some other hand moved is never pulled out from under it).
//!
//! [`plan`] gives the kept digests, the digests to delete with the releases they
//! carry, and the oldest release whose image is kept (what a refused rollback names).
//! Everything here is deterministic: the clock is an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{DeployState, Release, ReleaseNumber};

/// Default `keep_last`: the images of the last 10 releases.
pub const DEFAULT_KEEP_LAST: u32 = 10;

/// What an app's registry keeps (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The images of the N newest distinct digests; at least 1.
    pub keep_last: u32,
    /// Also every image deployed within this many days; 0 = off.
    pub keep_days: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self { keep_last: DEFAULT_KEEP_LAST, keep_days: 0 }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "keep_last = {}", self.keep_last)?;
        if self.keep_days > 0 {
            write!(f, ", keep_days = {}", self.keep_days)?;
        }
        Ok(())
    }
}

/// What the caller knows beyond the release records.
#[derive(Debug, Clone, Default)]
pub struct Pinned {
    /// The app's current release (0: never deployed).
    pub current: ReleaseNumber,
    /// The digest the app's Swarm service runs now, if it has one.
    pub service_digest: Option<String>,
}

/// The result of [`plan`] for one app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Digests the registry keeps.
    pub keep: BTreeSet<String>,
    /// Digests outside the policy, with the release numbers that carry each (ascending).
    pub delete: BTreeMap<String, Vec<ReleaseNumber>>,
    /// The oldest release whose image is kept (0: the app has no release).
    pub oldest_kept: ReleaseNumber,
}

impl Plan {
    /// Whether release `number` can still be rolled back to (its image is kept).
    pub fn keeps(&self, release: &Release) -> bool {
        self.keep.contains(&release.digest)
    }
}

const DAY_MS: u64 = 24 * 3600 * 1000;

/// Which images of an app to keep under `policy` at `now_ms` (see the module doc).
/// `releases` are the app's releases in any order.
pub fn plan(releases: &[Release], policy: Policy, pinned: &Pinned, now_ms: u64) -> Plan {
    let mut newest_first: Vec<&Release> = releases.iter().collect();
    newest_first.sort_by_key(|r| std::cmp::Reverse(r.number));
    let mut keep = BTreeSet::new();
    for r in &newest_first {
        if keep.len() >= policy.keep_last.max(1) as usize {
            break;
        }
        keep.insert(r.digest.clone());
    }
    let since_ms = now_ms.saturating_sub(u64::from(policy.keep_days) * DAY_MS);
    for r in &newest_first {
        let recent = policy.keep_days > 0
            && r.created_at_ms >= since_ms
            && matches!(r.deploy, DeployState::Deployed | DeployState::Pending);
        if recent || r.number == pinned.current || r.deploy == DeployState::Pending {
            keep.insert(r.digest.clone());
        }
    }
    if let Some(d) = &pinned.service_digest {
        keep.insert(d.clone());
    }
    let mut delete: BTreeMap<String, Vec<ReleaseNumber>> = BTreeMap::new();
    for r in newest_first.iter().rev() {
        if !keep.contains(&r.digest) {
            delete.entry(r.digest.clone()).or_default().push(r.number);
        }
    }
    let oldest_kept = newest_first.iter().rev().find(|r| keep.contains(&r.digest)).map_or(0, |r| r.number);
    Plan { keep, delete, oldest_kept }
}

/// What a GC did (or, dry, would do) to one app.
#[derive(Debug, Clone, Default)]
pub struct AppGc {
    /// The app.
    pub app: String,
    /// Its policy, as text (`keep_last = 5`).
    pub policy: String,
    /// The oldest release still kept (rollbacks reach this far back).
    pub oldest_kept: ReleaseNumber,
    /// Digests kept.
    pub kept: Vec<String>,
    /// Images outside the policy: digest, the releases that ran it, deleted now.
    pub deleted: Vec<DeletedImage>,
}

/// One image outside the policy.
#[derive(Debug, Clone, Default)]
pub struct DeletedImage {
    /// Its manifest digest.
    pub digest: String,
    /// Releases that ran it (now marked collected).
    pub releases: Vec<ReleaseNumber>,
    /// Whether the manifest was deleted by this run (false: dry run, or already gone).
    pub deleted: bool,
}

/// What a GC did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Nothing changed: only the plan.
    pub dry_run: bool,
    /// Per app (apps with nothing outside the policy included).
    pub apps: Vec<AppGc>,
    /// Bytes of the blobs only deleted manifests referenced (see the module doc).
    pub bytes_reclaimed: u64,
    /// How long queued builds were held.
    pub pause: Duration,
    /// What garbage-collect did: "not configured …", or its exit and output's tail.
    pub blob_gc: String,
    /// Whether garbage-collect ran and exited 0.
    pub blob_gc_ok: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{PhaseTimings, RunSpec};

    fn release(number: u64, digest: &str, created_at_ms: u64, deploy: DeployState) -> Release {
        Release {
            app: "shop".into(),
            number,
            digest: digest.into(),
            repository: "r/shop".into(),
            git_sha: "abc".into(),
            build_id: format!("b-{number}"),
            node_id: "n1".into(),
            created_at_ms,
            rollback_of: None,
            deploy,
            deploy_error: None,
            run: RunSpec::default(),
            bytes_pushed: 0,
            timings: PhaseTimings::default(),
            config: BTreeMap::new(),
            replicas: None,
            change: None,
            secrets: BTreeMap::new(),
            collected: false,
        }
    }

    /// Releases 1..=n, each its own image `d<n>`, deployed, one a day.
    fn history(n: u64) -> Vec<Release> {
        (1..=n).map(|i| release(i, &format!("d{i}"), i * DAY_MS, DeployState::Deployed)).collect()
    }

    fn digests(keep: &BTreeSet<String>) -> Vec<&str> {
        let mut v: Vec<&str> = keep.iter().map(String::as_str).collect();
        v.sort_by_key(|d| d[1..].parse::<u64>().unwrap_or(0));
        v
    }

    #[test]
    fn keep_last_keeps_the_newest_images_and_deletes_the_rest() {
        let rs = history(15);
        let p = plan(
            &rs,
            Policy { keep_last: 5, keep_days: 0 },
            &Pinned { current: 15, service_digest: None },
            0,
        );
        assert_eq!(digests(&p.keep), ["d11", "d12", "d13", "d14", "d15"]);
        assert_eq!(p.delete.len(), 10);
        assert_eq!(p.delete["d1"], [1]);
        assert_eq!(p.oldest_kept, 11);
    }

    #[test]
    fn releases_sharing_an_image_count_once() {
        // 4 and 5 are config changes of image d3; 6 rolls back to d1.
        let mut rs = history(3);
        rs.push(release(4, "d3", 4, DeployState::Deployed));
        rs.push(release(5, "d3", 5, DeployState::Deployed));
        rs.push(release(6, "d1", 6, DeployState::Deployed));
        let p =
            plan(&rs, Policy { keep_last: 2, keep_days: 0 }, &Pinned { current: 6, service_digest: None }, 0);
        assert_eq!(digests(&p.keep), ["d1", "d3"]);
        assert_eq!(p.delete.keys().collect::<Vec<_>>(), ["d2"]);
        assert_eq!(p.oldest_kept, 1, "release 1 runs d1, which is kept");
    }

    #[test]
    fn the_current_release_pending_deploys_and_the_service_image_are_always_kept() {
        let mut rs = history(10);
        rs[1].deploy = DeployState::Pending; // release 2 waits for its deploy
        let pinned = Pinned { current: 3, service_digest: Some("d4".into()) };
        let p = plan(&rs, Policy { keep_last: 1, keep_days: 0 }, &pinned, 0);
        assert_eq!(digests(&p.keep), ["d2", "d3", "d4", "d10"]);
        assert_eq!(p.oldest_kept, 2);
        assert!(!p.delete.contains_key("d3") && p.delete.contains_key("d1"));
    }

    #[test]
    fn keep_days_keeps_what_was_deployed_recently_and_is_off_at_zero() {
        let mut rs = history(10);
        rs[7].deploy = DeployState::Failed; // release 8 never ran
        let now = 10 * DAY_MS;
        let pinned = Pinned { current: 10, service_digest: None };
        let p = plan(&rs, Policy { keep_last: 1, keep_days: 3 }, &pinned, now);
        // Made at day 7 or later: 7, 9, 10 (8 failed, so only the policy's N could keep it).
        assert_eq!(digests(&p.keep), ["d7", "d9", "d10"]);
        let off = plan(&rs, Policy { keep_last: 1, keep_days: 0 }, &pinned, now);
        assert_eq!(digests(&off.keep), ["d10"]);
    }

    #[test]
    fn keep_last_zero_still_keeps_one_and_an_empty_app_plans_nothing() {
        let rs = history(3);
        let p = plan(&rs, Policy { keep_last: 0, keep_days: 0 }, &Pinned::default(), 0);
        assert_eq!(digests(&p.keep), ["d3"]);
        assert_eq!(plan(&[], Policy::default(), &Pinned::default(), 0), Plan::default());
    }
}
