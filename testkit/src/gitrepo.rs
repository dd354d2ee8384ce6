//! [`GitRepo`]: an app's source in a fresh git repository, as the agent sees it.
//!
//! [`GitRepo::from_example`] copies `examples/<name>` into a temporary directory,
//! runs `git init -b main` and commits it; [`GitRepo::empty`] starts with no commit.
//! The agent clones it through [`GitRepo::url`] (`file://…`, so `git clone --depth 1`
//! works as over a network). Tests then change files and commit to make new revisions.
//! The repository's git configuration is local to it: [`git`], which runs every git
//! command here, ignores the user's and system's, so a global `commit.gpgsign` or hook
//! cannot break a test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::workspace_root;

/// A git repository in a temporary directory, removed on drop.
pub struct GitRepo {
    /// Keeps the directory alive; the repository is `<tempdir>/<name>`.
    _tmp: TempDir,
    path: PathBuf,
}

impl GitRepo {
    /// `examples/<name>` from the workspace, copied (file modes kept), initialised on
    /// branch `main` and committed as "initial commit". Panics if the example does not
    /// exist or git fails.
    pub fn from_example(name: &str) -> GitRepo {
        let source = workspace_root().join("examples").join(name);
        assert!(source.is_dir(), "no example app at {}", source.display());
        GitRepo::from_dir(name, &source)
    }

    /// The contents of `source` (without any `.git`) committed into a new repository
    /// whose directory is named `name`.
    pub fn from_dir(name: &str, source: &Path) -> GitRepo {
        let repo = GitRepo::init(name, |path| {
            copy_tree(source, path)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", source.display(), path.display()))
        });
        repo.commit("initial commit");
        repo
    }

    /// A repository on branch `main` with nothing committed yet, its directory named
    /// `repo`.
    pub fn empty() -> GitRepo {
        GitRepo::init("repo", |path| {
            fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()))
        })
    }

    /// `<tempdir>/<name>`, filled by `fill`, then `git init` with a local identity.
    fn init(name: &str, fill: impl FnOnce(&Path)) -> GitRepo {
        let tmp = tempfile::Builder::new().prefix("slipway-git-").tempdir().expect("create a tempdir");
        let path = tmp.path().join(name);
        fill(&path);
        let repo = GitRepo { _tmp: tmp, path };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.name", "slipway tests"]);
        repo.git(&["config", "user.email", "tests@slipway.invalid"]);
        repo.git(&["config", "commit.gpgsign", "false"]);
        repo.git(&["config", "tag.gpgsign", "false"]);
        repo
    }

    /// The working tree's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `file://<path>`: the URL to clone it from.
    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// Writes `contents` to `rel` (relative to the working tree; parent directories
    /// are created). Not committed until [`GitRepo::commit`].
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
        let target = self.path.join(rel.as_ref());
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        }
        fs::write(&target, contents).unwrap_or_else(|e| panic!("write {}: {e}", target.display()));
    }

    /// Commits every change in the working tree (`git add -A`; an empty commit if
    /// nothing changed) and returns the new commit's sha.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "--no-verify", "-m", message]);
        self.head()
    }

    /// Writes `files` (path relative to the working tree, contents) and commits every
    /// change as [`GitRepo::commit`] does; the new commit's sha.
    pub fn commit_files(&self, files: &[(&str, &str)], message: &str) -> String {
        for (rel, contents) in files {
            self.write(rel, contents);
        }
        self.commit(message)
    }

    /// Creates the lightweight tag `name` at HEAD.
    pub fn tag(&self, name: &str) {
        self.git(&["tag", name]);
    }

    /// The sha of HEAD.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// Runs `git <args>` in the repository; its trimmed stdout. Panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }
}

/// Runs `git <args>` in `dir` (any directory: a [`GitRepo`], a clone of one) with the
/// system's and user's git configuration ignored; its trimmed stdout. Panics with
/// git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap_or_else(|e| panic!("cannot run git (is it installed?): {e}"));
    assert!(
        output.status.success(),
        "git {} in {} failed ({}): {}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl std::fmt::Debug for GitRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitRepo").field("path", &self.path).finish()
    }
}

/// Copies a directory tree, keeping file modes and symlinks, skipping `.git`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else {
            fs::copy(&src, &dst)?; // copies the permission bits too
        }
    }
    Ok(())
}
