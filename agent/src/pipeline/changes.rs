//! Which paths of the build context changed since the app's previous build, for the
//! cache doctor (`scheduler/src/state/cache_doctor.rs`): it names the files whose change
//! invalidated a `COPY`/`ADD` step.
//!
//! In the build's clone (one commit deep): `git fetch --depth 1 --no-tags -- <repo>
//! <previous sha>` with the clone's transport policy, then `git diff --name-only -z
//! --no-renames <previous> HEAD -- <context>` (literal pathspec). Paths come back relative
//! to the context directory; those the context's `.dockerignore` excludes (as the
//! context tar applies it, [`context::Ignore`]) are dropped, since they cannot change a
//! step. The `.dockerignore` read is the new commit's: a path the old one excluded but
//! the new one sends is listed, one the new one excludes is not. At most
//! [`MAX_CHANGED_PATHS`] paths and [`MAX_CHANGED_PATHS_BYTES`] bytes of them are kept
//! (`truncated` says more changed).
//!
//! Never fails the build: a previous commit that cannot be fetched (force-pushed away,
//! a server refusing commits by id), a git error or [`CHANGES_TIMEOUT`] passing gives
//! `unknown`, said in the build log.

use std::path::Path;
use std::time::{Duration, Instant};

use slipway_proto::ChangedPaths;

use super::{clone, context, LogSink};

/// Most changed paths reported, and most bytes of them (their lengths summed); the
/// scheduler applies the same bounds to what it records.
pub use slipway_proto::validate::{MAX_CHANGED_PATHS, MAX_CHANGED_PATHS_BYTES};

/// Longest the fetch and the diff may take together.
pub const CHANGES_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and what to compare.
pub struct Compare<'a> {
    /// The clone, `HEAD` checked out.
    pub clone_dir: &'a Path,
    /// The repository URL (already validated by the clone).
    pub repo: &'a str,
    /// Whether `file://` repositories may be fetched (as for the clone).
    pub allow_file_repos: bool,
    /// `HEAD`'s commit id.
    pub head: &'a str,
    /// The previous build's commit id.
    pub previous: &'a str,
    /// `build.context` of the manifest.
    pub context_rel: &'a str,
    /// `build.dockerfile` of the manifest (always sent, so never left out).
    pub dockerfile_rel: &'a str,
}

/// The context paths changed from `c.previous` to `c.head` (module doc); logs one line.
pub async fn changed_paths(c: &Compare<'_>, log: &LogSink) -> ChangedPaths {
    let started = Instant::now();
    let since = c.previous.to_string();
    let result = match tokio::time::timeout(CHANGES_TIMEOUT, compare(c)).await {
        Ok(result) => result,
        Err(_) => Err(format!("git took longer than {}s", CHANGES_TIMEOUT.as_secs())),
    };
    let short = |sha: &str| sha.chars().take(12).collect::<String>();
    match result {
        Ok((paths, truncated)) => {
            let shown: Vec<&str> = paths.iter().take(5).map(String::as_str).collect();
            let more = if paths.len() > shown.len() || truncated {
                format!(", {} more", more_text(paths.len() - shown.len(), truncated))
            } else {
                String::new()
            };
            log.line(format!(
                "==> changed in the context since {} (the previous build): {}{} ({:.1}s)",
                short(&since),
                if shown.is_empty() { "nothing".to_string() } else { shown.join(", ") },
                more,
                started.elapsed().as_secs_f64()
            ));
            ChangedPaths { since, paths, truncated, unknown: false }
        }
        Err(why) => {
            log.line(format!(
                "==> cannot tell what changed since {} (the previous build): {why}; the build goes on",
                short(&since)
            ));
            ChangedPaths { since, paths: Vec::new(), truncated: false, unknown: true }
        }
    }
}

/// `12` or `12+` (more beyond the ones counted).
fn more_text(n: usize, truncated: bool) -> String {
    if truncated {
        format!("{n}+")
    } else {
        n.to_string()
    }
}

async fn compare(c: &Compare<'_>) -> Result<(Vec<String>, bool), String> {
    if !is_commit_id(c.previous) {
        return Err(format!("{:?} is not a full commit id", c.previous.chars().take(80).collect::<String>()));
    }
    let ignore = context::Ignore::read(&c.clone_dir.join(c.context_rel), c.dockerfile_rel)
        .map_err(|e| e.reason().to_string())?;
    if c.previous == c.head {
        return Ok((Vec::new(), false));
    }
    let mut args = vec!["-c", "protocol.version=2"];
    for policy in clone::protocol_policy(c.allow_file_repos) {
        args.extend(["-c", policy]);
    }
    args.extend(["fetch", "-q", "--depth", "1", "--no-tags", "--", c.repo, c.previous]);
    let fetch = clone::git(c.clone_dir, &args).await.map_err(|e| e.reason().to_string())?;
    if !fetch.ok {
        return Err(format!("cannot fetch it: {}", fetch.message()));
    }
    let context = context::clean(c.context_rel);
    let diff = clone::git(
        c.clone_dir,
        &[
            "--literal-pathspecs",
            "diff",
            "--name-only",
            "-z",
            "--no-renames",
            "--no-ext-diff",
            c.previous,
            c.head,
            "--",
            &context,
        ],
    )
    .await
    .map_err(|e| e.reason().to_string())?;
    if !diff.ok {
        return Err(format!("git diff failed: {}", diff.message()));
    }
    Ok(bound(relevant(&diff.stdout, &context, &ignore)))
}

fn is_commit_id(sha: &str) -> bool {
    (sha.len() == 40 || sha.len() == 64)
        && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `git diff --name-only -z` output (paths relative to the repository) → paths relative
/// to `context` (`.` for the root) that `ignore` does not exclude, in git's order.
fn relevant(diff: &str, context: &str, ignore: &context::Ignore) -> Vec<String> {
    diff.split('\0')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            if context == "." {
                Some(p)
            } else {
                p.strip_prefix(context).and_then(|rest| rest.strip_prefix('/'))
            }
        })
        .filter(|p| !p.is_empty() && !ignore.excludes(p))
        .map(str::to_string)
        .collect()
}

/// The first paths within [`MAX_CHANGED_PATHS`] and [`MAX_CHANGED_PATHS_BYTES`], and
/// whether any were left out.
fn bound(paths: Vec<String>) -> (Vec<String>, bool) {
    slipway_proto::validate::bound_changed_paths(paths)
}

#[cfg(test)]
mod tests {
    use slipway_testkit::GitRepo;

    use super::*;

    fn ignore(text: &str) -> context::Ignore {
        context::Ignore::parse(text, "Dockerfile").unwrap()
    }

    #[test]
    fn diff_output_is_split_made_relative_and_filtered() {
        let out = "app.py\0README.md\0docs/x.md\0web/src/a.js\0web/.git/x\0Dockerfile\0web\0";
        assert_eq!(
            relevant(out, ".", &ignore("*.md\nDockerfile\n")),
            vec!["app.py", "docs/x.md", "web/src/a.js", "web/.git/x", "Dockerfile", "web"],
            "`*.md` only at the root; the Dockerfile is always sent"
        );
        assert_eq!(relevant(out, "web", &ignore("**/.git\n")), vec!["src/a.js"]);
        assert_eq!(relevant("", ".", &ignore("")), Vec::<String>::new());
        assert_eq!(
            relevant("a\0b/c\0b/d\0", ".", &ignore("b\n!b/d\n")),
            vec!["a", "b/d"],
            "an exception re-includes a path under an excluded directory"
        );
        assert_eq!(relevant("web2/x\0", "web", &ignore("")), Vec::<String>::new(), "not a prefix match");
    }

    #[test]
    fn the_list_is_bounded_by_count_and_bytes() {
        let few: Vec<String> = (0..3).map(|i| format!("f{i}")).collect();
        assert_eq!(bound(few.clone()), (few, false));
        let many: Vec<String> = (0..MAX_CHANGED_PATHS + 1).map(|i| format!("f{i}")).collect();
        let (kept, truncated) = bound(many);
        assert_eq!((kept.len(), truncated), (MAX_CHANGED_PATHS, true));
        let exactly: Vec<String> = (0..MAX_CHANGED_PATHS).map(|i| format!("f{i}")).collect();
        assert!(!bound(exactly).1, "exactly the bound is all");
        let long: Vec<String> = (0..100).map(|i| format!("{i:0>1000}")).collect();
        let (kept, truncated) = bound(long);
        assert_eq!((kept.len(), truncated), (MAX_CHANGED_PATHS_BYTES / 1000, true));
        assert!(kept.iter().map(String::len).sum::<usize>() <= MAX_CHANGED_PATHS_BYTES);
    }

    async fn shallow_clone(repo: &GitRepo, dir: &Path) -> String {
        clone::clone(&repo.url(), "main", dir, true, Duration::from_secs(60), &LogSink::discard())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_shallow_clone_fetches_the_previous_commit_and_lists_the_context_changes() {
        let repo = GitRepo::empty();
        let first = repo.commit_files(
            &[
                ("web/app.py", "1\n"),
                ("web/notes.md", "1\n"),
                ("web/.dockerignore", "*.md\n"),
                ("other.txt", "1\n"),
            ],
            "one",
        );
        repo.commit_files(&[("web/lib/x.py", "new\n")], "two");
        repo.commit_files(&[("web/app.py", "2\n"), ("web/notes.md", "2\n"), ("other.txt", "2\n")], "three");
        let dest = tempfile::tempdir().unwrap();
        let head = shallow_clone(&repo, dest.path()).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let c = Compare {
            clone_dir: dest.path(),
            repo: &repo.url(),
            allow_file_repos: true,
            head: &head,
            previous: &first,
            context_rel: "./web/",
            dockerfile_rel: "Dockerfile",
        };
        let got = changed_paths(&c, &LogSink::new(tx)).await;
        assert_eq!(
            got,
            ChangedPaths {
                since: first.clone(),
                paths: vec!["app.py".into(), "lib/x.py".into()],
                truncated: false,
                unknown: false
            }
        );
        let line = rx.try_recv().unwrap();
        assert!(line.contains(": app.py, lib/x.py ("), "{line}");

        let same = Compare { previous: &head, ..c };
        assert_eq!(changed_paths(&same, &LogSink::discard()).await.paths, Vec::<String>::new());
    }

    #[tokio::test]
    async fn what_cannot_be_known_is_unknown_not_a_failure() {
        let repo = GitRepo::empty();
        repo.commit_files(&[("app.py", "1\n")], "one");
        let dest = tempfile::tempdir().unwrap();
        let head = shallow_clone(&repo, dest.path()).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let missing = "0123456789abcdef0123456789abcdef01234567";
        let c = Compare {
            clone_dir: dest.path(),
            repo: &repo.url(),
            allow_file_repos: true,
            head: &head,
            previous: missing,
            context_rel: ".",
            dockerfile_rel: "Dockerfile",
        };
        let got = changed_paths(&c, &LogSink::new(tx)).await;
        assert!(got.unknown && got.paths.is_empty() && got.since == missing, "{got:?}");
        let line = rx.try_recv().unwrap();
        assert!(
            line.contains("cannot tell what changed since 0123456789ab") && line.contains("cannot fetch it"),
            "{line}"
        );
        let bad = Compare { previous: "--upload-pack=x", ..c };
        let got = changed_paths(&bad, &LogSink::discard()).await;
        assert!(got.unknown, "{got:?}");
    }
}
