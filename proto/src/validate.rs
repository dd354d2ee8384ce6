//! Validation of names, refs and URLs that come from users and later reach git,
//! Docker or Swarm. Both the scheduler (on the way in) and the agent (before it runs
//! git) call these, so hostile input is refused twice and never becomes an option.

use std::fmt;

/// Why a user-supplied value was refused; the message names the value and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Which input was refused, e.g. `app name`.
    pub what: &'static str,
    /// What is wrong with it and what would be accepted.
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.what, self.reason)
    }
}

impl std::error::Error for Invalid {}

fn invalid(what: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid { what, reason: reason.into() }
}

/// App names are DNS labels (they become Swarm service and registry repository names):
/// 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter, not ending with `-`.
pub fn app_name(name: &str) -> Result<(), Invalid> {
    const WHAT: &str = "app name";
    if name.is_empty() || name.len() > 63 {
        return Err(invalid(WHAT, format!("{name:?} must be 1 to 63 characters long")));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(WHAT, format!("{name:?} must start with a lowercase letter")));
    }
    if name.ends_with('-') {
        return Err(invalid(WHAT, format!("{name:?} must not end with '-'")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(invalid(WHAT, format!("{name:?} contains {c:?}; use lowercase letters, digits and '-'")));
    }
    Ok(())
}

/// A git ref (branch, tag, full ref or commit id), following `git check-ref-format`
/// and never starting with `-` (so it cannot be read as an option).
pub fn git_ref(r: &str) -> Result<(), Invalid> {
    const WHAT: &str = "git ref";
    if r.is_empty() {
        return Err(invalid(WHAT, "it is empty"));
    }
    if r.len() > 255 {
        return Err(invalid(WHAT, "it is longer than 255 characters"));
    }
    if r.starts_with('-') {
        return Err(invalid(WHAT, format!("{r:?} starts with '-'")));
    }
    let bad = |why: &str| Err(invalid(WHAT, format!("{r:?} {why}")));
    if r.starts_with('/') || r.ends_with('/') || r.contains("//") {
        return bad("has an empty path component");
    }
    if r.ends_with('.') || r.ends_with(".lock") {
        return bad("ends with '.' or '.lock'");
    }
    if r.contains("..") || r.contains("@{") || r == "@" {
        return bad("contains '..', '@{' or is '@'");
    }
    if r.split('/').any(|part| part.starts_with('.')) {
        return bad("has a path component starting with '.'");
    }
    if let Some(c) = r.chars().find(|c| {
        c.is_control() || c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return bad(&format!("contains {c:?}, which git refs cannot hold"));
    }
    Ok(())
}

/// A repository URL: `https://`, `http://`, `ssh://`, `git://`, `file://`, or scp-like
/// `user@host:path`. Never starts with `-`, holds no whitespace or control characters.
/// Whether `file://` may be used is the agent's decision ([`is_file_url`]).
pub fn repo_url(url: &str) -> Result<(), Invalid> {
    const WHAT: &str = "repository URL";
    if url.is_empty() || url.len() > 2048 {
        return Err(invalid(WHAT, "must be 1 to 2048 characters long"));
    }
    if url.starts_with('-') {
        return Err(invalid(WHAT, format!("{url:?} starts with '-'")));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(WHAT, format!("{url:?} contains whitespace or control characters")));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" | "git" | "file" if !rest.is_empty() => Ok(()),
            "https" | "http" | "ssh" | "git" | "file" => {
                Err(invalid(WHAT, format!("{url:?} has nothing after the scheme")))
            }
            other => Err(invalid(
                WHAT,
                format!("scheme {other:?} is not allowed; use https, http, ssh, git or file"),
            )),
        };
    }
    // scp-like: [user@]host:path, where host has no '/' before the ':'.
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !host.contains('/') && !path.is_empty() => Ok(()),
        _ => Err(invalid(
            WHAT,
            format!("{url:?} is neither a URL (https://, ssh://, git://, file://) nor user@host:path"),
        )),
    }
}

/// True for `file://` URLs: repositories on the agent's own disk.
pub fn is_file_url(url: &str) -> bool {
    url.starts_with("file://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_dns_labels() {
        for ok in ["shop", "a", "web-2", &"a".repeat(63)] {
            assert_eq!(app_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Shop", "2shop", "shop-", "sh_op", "sh.op", "-x", &"a".repeat(64)] {
            assert!(app_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refs_follow_git_rules_and_never_look_like_options() {
        for ok in ["main", "v1.2.3", "feature/x", "refs/heads/main", "0123abcd"] {
            assert_eq!(git_ref(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack=evil",
            "a..b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "x.lock",
            "/a",
            "a/",
            "a//b",
            ".hidden",
            "a/.b",
            "@",
            "a@{1}",
            "a\\b",
            "a*",
        ] {
            assert!(git_ref(bad).is_err(), "{bad}");
        }
        assert!(git_ref("-x").unwrap_err().to_string().contains("starts with '-'"));
    }

    #[test]
    fn repo_urls_have_an_allowed_scheme() {
        for ok in [
            "https://example.com/a.git",
            "ssh://git@host/a",
            "git@host:team/a.git",
            "file:///srv/git/a",
            "git://host/a",
        ] {
            assert_eq!(repo_url(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-uevil", "ext::sh -c x", "ftp://x/y", "/srv/git/a", "https://", "a b:c"] {
            assert!(repo_url(bad).is_err(), "{bad}");
        }
    }
}
