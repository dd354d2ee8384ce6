//! Shallow clone of one ref with the system `git`, no shell involved.
//!
//! `git init`, then `git fetch --depth 1 --no-tags -- <repo> <ref>` (the `--` ends option
//! parsing, and the URL and ref were validated by [`slipway_proto::validate`] so neither
//! can start with `-`), then `git checkout --detach FETCH_HEAD` and `git rev-parse HEAD`.
//!
//! Refs may be branches, tags, full ref names or **full** 40-character commit ids.
//! Fetching a commit by id relies on git's protocol v2 (forced with
//! `-c protocol.version=2`), whose servers answer wants for any reachable commit; with
//! protocol v0 the server would also need `uploadpack.allowAnySHA1InWant`. Abbreviated
//! commit ids cannot be fetched at all: git needs the full id to ask for it.
//!
//! git never prompts (`GIT_TERMINAL_PROMPT=0`, `GIT_ASKPASS=/bin/true`, stdin closed),
//! speaks English (`LC_ALL=C`, so its messages can be recognised), and may use only the
//! https, http, ssh and git transports (`protocol.allow=never` with those four allowed:
//! no `ext::`, `fd::` or other remote helper even if a URL got past validation), plus
//! `file://` when this agent allows local repositories.
//! Credentials embedded in URLs (`https://user:token@host/…`) are masked in every log
//! line and error message. The user's git config is otherwise honoured (an operator may
//! configure `insteadOf`, proxies or credential helpers for the agent's user).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use slipway_proto::validate;
use tokio::process::Command;

use super::LogSink;
use crate::error::Failure;

/// How long a clone may take unless configured otherwise.
pub const DEFAULT_CLONE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Longest piece of git's stderr quoted in an error.
const MAX_GIT_MESSAGE: usize = 2000;

/// Clones `git_ref` of `repo` into `dest` (created if missing) and returns the commit id
/// checked out. Logs `==> cloning <repo> at <ref>` and what git reports.
pub async fn clone(
    repo: &str,
    git_ref: &str,
    dest: &Path,
    allow_file_repos: bool,
    timeout: Duration,
    log: &LogSink,
) -> Result<String, Failure> {
    let shown = redact_url(repo);
    validate::repo_url(repo).map_err(|e| Failure::Clone(redact_urls_in(&e.to_string())))?;
    validate::git_ref(git_ref).map_err(|e| Failure::Clone(e.to_string()))?;
    if validate::is_file_url(repo) && !allow_file_repos {
        return Err(Failure::Clone(format!(
            "cannot clone {shown}: file:// repositories are not allowed on this agent \
             (allow_file_repos is off); use an https, ssh or git URL"
        )));
    }
    log.line(format!("==> cloning {shown} at {git_ref}"));
    match tokio::time::timeout(timeout, fetch(repo, git_ref, dest, allow_file_repos, log)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Clone(format!(
            "cloning {shown} at {git_ref} took longer than {}s and was stopped",
            timeout.as_secs_f64()
        ))),
    }
}

async fn fetch(
    repo: &str,
    git_ref: &str,
    dest: &Path,
    allow_file_repos: bool,
    log: &LogSink,
) -> Result<String, Failure> {
    let shown = redact_url(repo);
    // Synchronous on purpose: a blocking-pool `create_dir_all` would outlive a dropped
    // build and recreate the directory its guard has just removed.
    std::fs::create_dir_all(dest)
        .map_err(|e| Failure::Setup(format!("cannot create {}: {e}", dest.display())))?;
    let fail = |out: GitOutput| Failure::Clone(format!("cannot clone {shown}: {}", out.message()));

    let init = git(dest, &["init", "-q"]).await?;
    if !init.ok {
        return Err(fail(init));
    }

    let mut args = vec!["-c", "protocol.version=2"];
    for policy in protocol_policy(allow_file_repos) {
        args.extend(["-c", policy]);
    }
    args.extend(["fetch", "--depth", "1", "--no-tags", "--", repo, git_ref]);
    let fetch = git(dest, &args).await?;
    if !fetch.ok {
        return Err(fetch_failure(&shown, git_ref, &fetch));
    }
    for line in fetch.stderr.lines().filter(|l| !l.trim().is_empty()) {
        log.line(redact_urls_in(line));
    }

    let checkout = git(dest, &["checkout", "-q", "--detach", "FETCH_HEAD"]).await?;
    if !checkout.ok {
        return Err(fail(checkout));
    }
    let head = git(dest, &["rev-parse", "HEAD"]).await?;
    let sha = head.stdout.trim().to_string();
    let hex = sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !head.ok || !hex || !(sha.len() == 40 || sha.len() == 64) {
        return Err(fail(head));
    }
    log.line(format!("==> checked out {sha}"));
    Ok(sha)
}

/// git's `protocol.*.allow` settings: every transport refused unless named here.
pub(super) fn protocol_policy(allow_file_repos: bool) -> Vec<&'static str> {
    let file = if allow_file_repos { "protocol.file.allow=always" } else { "protocol.file.allow=never" };
    vec![
        "protocol.allow=never",
        "protocol.https.allow=always",
        "protocol.http.allow=always",
        "protocol.ssh.allow=always",
        "protocol.git.allow=always",
        file,
    ]
}

fn fetch_failure(shown: &str, git_ref: &str, out: &GitOutput) -> Failure {
    if out.stderr.contains("couldn't find remote ref") {
        let looks_abbreviated =
            (4..40).contains(&git_ref.len()) && git_ref.bytes().all(|b| b.is_ascii_hexdigit());
        let hint = if looks_abbreviated {
            " (abbreviated commit ids cannot be fetched; give the full 40-character id)"
        } else {
            ""
        };
        return Failure::Clone(format!("ref '{git_ref}' not found in {shown}{hint}"));
    }
    if out.stderr.contains("not our ref") || out.stderr.contains("unadvertised object") {
        return Failure::Clone(format!(
            "commit {git_ref} cannot be fetched from {shown}: the server refuses to send commits \
             by id (or the commit is not reachable from any branch or tag); use a branch or tag"
        ));
    }
    Failure::Clone(format!("cannot clone {shown}: {}", out.message()))
}

/// What one git command printed.
pub(super) struct GitOutput {
    pub(super) ok: bool,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl GitOutput {
    /// git's own explanation: its `fatal:`/`error:` lines, else the end of its stderr.
    pub(super) fn message(&self) -> String {
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter_map(|l| l.strip_prefix("fatal: ").or_else(|| l.strip_prefix("error: ")))
            .collect();
        let text = if errors.is_empty() { self.stderr.trim().to_string() } else { errors.join("; ") };
        let text = if text.is_empty() { "git failed without saying why".to_string() } else { text };
        let text = redact_urls_in(&text);
        match text.char_indices().nth(MAX_GIT_MESSAGE) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    }
}

pub(super) async fn git(dir: &Path, args: &[&str]) -> Result<GitOutput, Failure> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/true")
        .env("SSH_ASKPASS", "/bin/true")
        .env("LC_ALL", "C")
        .env_remove("LANGUAGE")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Failure::Setup(format!("cannot run git (is it installed?): {e}")))?;
    Ok(GitOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `https://user:token@host/x` → `https://***@host/x`; other URLs unchanged.
pub fn redact_url(url: &str) -> String {
    redact_urls_in(url)
}

/// Masks the user-info part of every `scheme://user@host` URL inside `text`.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end =
            tail.find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"').unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str("***");
                out.push_str(&tail[userinfo_end..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use slipway_testkit::{git as run_git, GitRepo};

    use super::*;

    const T: Duration = Duration::from_secs(60);

    async fn clone_into(
        repo: &str,
        git_ref: &str,
        allow_file: bool,
    ) -> (tempfile::TempDir, Result<String, Failure>) {
        let dest = tempfile::tempdir().unwrap();
        let result = clone(repo, git_ref, &dest.path().join("c"), allow_file, T, &LogSink::discard()).await;
        (dest, result)
    }

    fn repo_with_history() -> (GitRepo, String, String) {
        let repo = GitRepo::empty();
        let first = repo.commit_files(&[("app.txt", "one\n")], "one");
        run_git(repo.path(), &["tag", "-a", "v1", "-m", "release 1"]);
        run_git(repo.path(), &["tag", "light", first.as_str()]);
        let second = repo.commit_files(&[("app.txt", "two\n")], "two");
        run_git(repo.path(), &["branch", "feature/x", first.as_str()]);
        (repo, first, second)
    }

    #[tokio::test]
    async fn clones_a_branch_shallowly() {
        let (repo, _, second) = repo_with_history();
        let (dest, sha) = clone_into(&repo.url(), "main", true).await;
        assert_eq!(sha.unwrap(), second);
        let dir = dest.path().join("c");
        assert_eq!(std::fs::read_to_string(dir.join("app.txt")).unwrap(), "two\n");
        assert_eq!(run_git(&dir, &["rev-list", "--count", "HEAD"]), "1", "only one commit is fetched");
    }

    #[tokio::test]
    async fn clones_tags_branches_with_slashes_and_full_refs() {
        let (repo, first, second) = repo_with_history();
        for (r, want) in
            [("v1", &first), ("light", &first), ("feature/x", &first), ("refs/heads/main", &second)]
        {
            let (_dest, sha) = clone_into(&repo.url(), r, true).await;
            assert_eq!(&sha.unwrap_or_else(|e| panic!("{r}: {e}")), want, "{r}");
        }
    }

    #[tokio::test]
    async fn clones_a_full_commit_id_but_explains_abbreviated_ones() {
        let (repo, first, _) = repo_with_history();
        let (dest, sha) = clone_into(&repo.url(), &first, true).await;
        assert_eq!(sha.unwrap(), first);
        assert_eq!(std::fs::read_to_string(dest.path().join("c/app.txt")).unwrap(), "one\n");
        let (_dest, err) = clone_into(&repo.url(), &first[..10], true).await;
        let err = err.unwrap_err().to_string();
        assert!(err.contains("abbreviated commit ids cannot be fetched"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_ref_is_named() {
        let (repo, _, _) = repo_with_history();
        let (_dest, err) = clone_into(&repo.url(), "nope", true).await;
        let err = err.unwrap_err();
        assert_eq!(err.phase(), "clone");
        assert_eq!(err.reason(), format!("ref 'nope' not found in {}", repo.url()));
    }

    #[tokio::test]
    async fn unreachable_or_invalid_repositories_are_explained() {
        let (_dest, err) = clone_into("file:///nonexistent/repo", "main", true).await;
        let err = err.unwrap_err().to_string();
        assert!(err.contains("cannot clone file:///nonexistent/repo: "), "{err}");
        assert!(err.contains("does not appear to be a git repository"), "{err}");

        let (_dest, err) = clone_into("ftp://example.com/x", "main", true).await;
        assert!(err.unwrap_err().to_string().contains("scheme \"ftp\" is not allowed"));
        let (_dest, err) = clone_into("-uevil", "main", true).await;
        assert!(err.unwrap_err().to_string().contains("starts with '-'"));
        let (_dest, err) = clone_into("file:///x", "--upload-pack=touch /tmp/pwned", true).await;
        assert!(err.unwrap_err().to_string().contains("git ref"));
    }

    /// Even a URL that got past validation could only use the four network transports
    /// (and file:// where allowed): git itself refuses the rest.
    #[tokio::test]
    async fn git_refuses_every_transport_but_the_allowed_ones() {
        let (repo, _, _) = repo_with_history();
        let dest = tempfile::tempdir().unwrap();
        run_git(dest.path(), &["init", "-q"]);
        let fetch = |url: &str, allow_file: bool| {
            let mut cmd = std::process::Command::new("git");
            cmd.arg("-C").arg(dest.path());
            for policy in protocol_policy(allow_file) {
                cmd.args(["-c", policy]);
            }
            let out = cmd.args(["fetch", "--depth", "1", "--", url, "main"]).output().unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let marker = dest.path().join("pwned");
        let ext = format!("ext::sh -c touch% {}", marker.display());
        let (ok, err) = fetch(&ext, true);
        assert!(!ok && err.contains("transport 'ext' not allowed"), "{err}");
        assert!(!marker.exists(), "the ext:: command did not run");
        let (ok, err) = fetch("fd::0", true);
        assert!(!ok && err.contains("transport 'fd' not allowed"), "{err}");
        let (ok, err) = fetch(&repo.url(), false);
        assert!(!ok && err.contains("transport 'file' not allowed"), "{err}");
        let (ok, err) = fetch(&repo.path().display().to_string(), false);
        assert!(!ok && err.contains("transport 'file' not allowed"), "a plain path is file:// too: {err}");
        assert!(fetch(&repo.url(), true).0, "file:// where allowed");
    }

    #[tokio::test]
    async fn file_repositories_need_permission() {
        let (repo, _, _) = repo_with_history();
        let (dest, err) = clone_into(&repo.url(), "main", false).await;
        let err = err.unwrap_err().to_string();
        assert!(err.contains("file:// repositories are not allowed"), "{err}");
        assert!(!dest.path().join("c").exists(), "nothing ran");
    }

    #[tokio::test]
    async fn a_slow_clone_times_out() {
        let (repo, _, _) = repo_with_history();
        let dest = tempfile::tempdir().unwrap();
        let err =
            clone(&repo.url(), "main", dest.path(), true, Duration::from_millis(1), &LogSink::discard())
                .await
                .unwrap_err();
        assert!(err.reason().contains("took longer than 0.001s"), "{err}");
    }

    #[tokio::test]
    async fn credentials_in_urls_never_reach_logs_or_errors() {
        assert_eq!(redact_url("https://user:s3cret@example.com/a.git"), "https://***@example.com/a.git");
        assert_eq!(redact_url("https://example.com/a.git"), "https://example.com/a.git");
        assert_eq!(redact_url("git@host:team/a.git"), "git@host:team/a.git");
        assert_eq!(
            redact_urls_in("fatal: unable to access 'https://u:p@h:1/x/': refused"),
            "fatal: unable to access 'https://***@h:1/x/': refused"
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let dest = tempfile::tempdir().unwrap();
        let err =
            clone("https://user:s3cret@127.0.0.1:9/x.git", "main", dest.path(), false, T, &LogSink::new(tx))
                .await
                .unwrap_err()
                .to_string();
        assert!(
            !err.contains("s3cret") && err.contains("cannot clone https://***@127.0.0.1:9/x.git"),
            "{err}"
        );
        while let Ok(line) = rx.try_recv() {
            assert!(!line.contains("s3cret"), "{line}");
        }
    }
}
