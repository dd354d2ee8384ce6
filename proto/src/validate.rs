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

/// Longest app name: a DNS label.
pub const MAX_APP_NAME_BYTES: usize = 63;
/// Longest git ref (git itself has no limit; 255 keeps refs usable as file names).
pub const MAX_GIT_REF_BYTES: usize = 255;
/// Longest repository URL.
pub const MAX_REPO_URL_BYTES: usize = 2048;
/// Longest other identifier in a request: request ids, build ids, node names and ids,
/// member addresses.
pub const MAX_ID_BYTES: usize = 255;

/// Most Dockerfile steps recorded with a build (`BuildOutput.build_steps`): the agent
/// records no more, and the scheduler drops any beyond it before the raft write.
pub const MAX_BUILD_STEPS: usize = 200;

/// Longest build step name recorded, in characters.
pub const MAX_STEP_NAME_CHARS: usize = 200;

/// Most changed context paths recorded with a build (`BuildOutput.changed_paths`): the
/// agent reports no more, and the scheduler cuts any beyond it before the raft write.
pub const MAX_CHANGED_PATHS: usize = 1_000;
/// Most bytes of changed context paths recorded with a build (their lengths summed).
pub const MAX_CHANGED_PATHS_BYTES: usize = 64 * 1024;

/// Largest control-API request a scheduler decodes (requests carry a few names; the
/// CLI's answers may be larger, so only decoding is bounded).
pub const MAX_CONTROL_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest message a scheduler decodes from an agent or an agent from a scheduler
/// (reports, build events of one log line each, assignments).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Most lines `apps logs --tail` asks of each task of an app.
pub const MAX_LOG_TAIL: u32 = 10_000;

/// `apps logs --tail N`: at most [`MAX_LOG_TAIL`] lines per task.
pub fn log_tail(tail: u32) -> Result<(), Invalid> {
    if tail > MAX_LOG_TAIL {
        return Err(invalid(
            "log tail",
            format!("{tail} lines asked; the limit is {MAX_LOG_TAIL} lines per task (use --since for older lines)"),
        ));
    }
    Ok(())
}

/// `value` of the request field `what` is at most `max` bytes long.
pub fn bounded(what: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.len() > max {
        return Err(invalid(what, format!("it is {} bytes long; the limit is {max} bytes", value.len())));
    }
    Ok(())
}

/// App names are DNS labels (they become Swarm service and registry repository names):
/// 1–63 characters of `a-z`, `0-9` and `-`, starting with a letter, not ending with `-`.
pub fn app_name(name: &str) -> Result<(), Invalid> {
    const WHAT: &str = "app name";
    const RULE: &str =
        "app names are DNS labels: 1 to 63 of a-z, 0-9 and '-', starting with a letter, not ending with '-'";
    if name.is_empty() {
        return Err(invalid(WHAT, format!("it is empty; {RULE}")));
    }
    if name.len() > MAX_APP_NAME_BYTES {
        // Not echoed: it may be a megabyte.
        return Err(invalid(WHAT, format!("it is {} bytes long; {RULE}", name.len())));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(WHAT, format!("{name:?} must start with a lowercase letter ({RULE})")));
    }
    if name.ends_with('-') {
        return Err(invalid(WHAT, format!("{name:?} must not end with '-' ({RULE})")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return Err(invalid(WHAT, format!("{name:?} contains {c:?}; use lowercase letters, digits and '-'")));
    }
    Ok(())
}

/// A git ref (branch, tag, full ref or commit id), following `git check-ref-format
/// --allow-onelevel`, never starting with `-` (so it cannot be read as an option) and
/// holding no whitespace at all (git allows non-ASCII spaces; we do not).
pub fn git_ref(r: &str) -> Result<(), Invalid> {
    const WHAT: &str = "git ref";
    if r.is_empty() {
        return Err(invalid(WHAT, "it is empty; give a branch, tag or full commit id"));
    }
    if r.len() > MAX_GIT_REF_BYTES {
        return Err(invalid(WHAT, format!("it is {} bytes long; the limit is {MAX_GIT_REF_BYTES}", r.len())));
    }
    if r.starts_with('-') {
        return Err(invalid(WHAT, format!("{r:?} starts with '-'; a ref cannot look like an option")));
    }
    let bad = |why: &str| Err(invalid(WHAT, format!("{r:?} {why} (see `git check-ref-format`)")));
    if let Some(c) = r.chars().find(|c| {
        c.is_control() || c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return bad(&format!("contains {c:?}, which git refs cannot hold"));
    }
    if r.starts_with('/') || r.ends_with('/') || r.contains("//") {
        return bad("has an empty path component (a leading, trailing or doubled '/')");
    }
    if r.ends_with('.') {
        return bad("ends with '.'");
    }
    if r.contains("..") {
        return bad("contains '..'");
    }
    if r.contains("@{") || r == "@" {
        return bad("contains '@{' or is '@'");
    }
    if r.split('/').any(|part| part.starts_with('.')) {
        return bad("has a path component starting with '.'");
    }
    if r.split('/').any(|part| part.ends_with(".lock")) {
        return bad("has a path component ending with '.lock'");
    }
    Ok(())
}

/// A full commit id as git push notifications carry it: 40 lowercase hex digits (a
/// SHA-1 repository; SHA-256 repositories are not supported yet). An abbreviated id
/// cannot be fetched (see the agent's clone), so it is refused here.
pub fn commit_sha(sha: &str) -> Result<(), Invalid> {
    const WHAT: &str = "commit id";
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        let shown: String = sha.chars().take(64).collect();
        return Err(invalid(
            WHAT,
            format!("{shown:?} is not 40 lowercase hex digits (a full SHA-1 commit id)"),
        ));
    }
    Ok(())
}

/// The all-zero commit id a push notification carries as `after` when a branch was deleted.
pub fn is_null_commit(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// Schemes a repository URL may name.
const URL_SCHEMES: [&str; 5] = ["https", "http", "ssh", "git", "file"];

/// A repository URL: `https://`, `http://`, `ssh://`, `git://`, `file://`, or scp-like
/// `user@host:path`. Never starts with `-`, holds no whitespace or control characters,
/// never uses git's `<transport>::<address>` form (`ext::`, `fd::` and other remote
/// helpers), and its host and user never start with `-` (so ssh cannot take them for
/// options). Whether `file://` may be used is the agent's decision ([`is_file_url`]).
pub fn repo_url(url: &str) -> Result<(), Invalid> {
    const WHAT: &str = "repository URL";
    const FORMS: &str = "use https://host/path, ssh://[user@]host/path, git://host/path, \
                         file:///path or user@host:path";
    if url.is_empty() || url.len() > MAX_REPO_URL_BYTES {
        return Err(invalid(
            WHAT,
            format!("it is {} bytes long; it must be 1 to {MAX_REPO_URL_BYTES} bytes", url.len()),
        ));
    }
    if url.starts_with('-') {
        return Err(invalid(WHAT, format!("{url:?} starts with '-'; {FORMS}")));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(WHAT, format!("{url:?} contains whitespace or control characters")));
    }
    // git reads `<transport>::<address>` as "run git-remote-<transport>" (ext:: runs a
    // command, fd:: reads a file descriptor): never.
    let scheme_len = url.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')));
    if let Some(len) = scheme_len.filter(|len| *len > 0) {
        if url[len..].starts_with("::") {
            return Err(invalid(
                WHAT,
                format!("{url:?} names the git transport {:?}, which is not allowed; {FORMS}", &url[..len]),
            ));
        }
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !URL_SCHEMES.contains(&scheme) {
            return Err(invalid(
                WHAT,
                format!("scheme {scheme:?} is not allowed; use https, http, ssh, git or file"),
            ));
        }
        if rest.is_empty() {
            return Err(invalid(WHAT, format!("{url:?} has nothing after the scheme; {FORMS}")));
        }
        if scheme != "file" {
            let authority = rest.split('/').next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            if host.is_empty() || host.starts_with('-') || authority.starts_with('-') {
                return Err(invalid(
                    WHAT,
                    format!("{url:?} must name a host that does not start with '-'; {FORMS}"),
                ));
            }
        }
        return Ok(());
    }
    // scp-like: [user@]host:path, where host has no '/' before the ':'.
    match url.split_once(':') {
        Some((user_host, path)) if !user_host.is_empty() && !user_host.contains('/') && !path.is_empty() => {
            let host = user_host.rsplit_once('@').map_or(user_host, |(_, host)| host);
            if host.is_empty() || host.starts_with('-') {
                return Err(invalid(
                    WHAT,
                    format!("{url:?} must name a host that does not start with '-'; {FORMS}"),
                ));
            }
            Ok(())
        }
        _ => Err(invalid(WHAT, format!("{url:?} is neither a URL nor user@host:path; {FORMS}"))),
    }
}

/// True for `file://` URLs: repositories on the agent's own disk.
pub fn is_file_url(url: &str) -> bool {
    url.starts_with("file://")
}

/// `sha256:` followed by 64 lowercase hex digits: the only image digest slipway records.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// An image digest ([`is_digest`]).
pub fn digest(d: &str) -> Result<(), Invalid> {
    if is_digest(d) {
        Ok(())
    } else {
        Err(invalid("image digest", format!("{d:?} is not sha256: and 64 lowercase hex digits")))
    }
}

/// A repository to push to or run from: `host[:port]/path`, the registry named (a bare
/// `shop` would go to Docker Hub), the path in lowercase, no tag or digest.
pub fn repository(repository: &str) -> Result<(), Invalid> {
    let bad = |why: &str| Err(invalid("repository", format!("{repository:?} {why}")));
    if repository.is_empty() || repository.len() > 255 {
        return bad("must be 1 to 255 characters long");
    }
    if repository.starts_with('-') || repository.contains('@') {
        return bad("must not start with '-' or hold a digest");
    }
    let (host, path) = match repository.split_once('/') {
        Some((host, path)) if host.contains(['.', ':']) || host == "localhost" => (host, path),
        _ => return bad("must name its registry, like 127.0.0.1:5000/shop"),
    };
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')) {
        return bad("has an invalid registry host");
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
    };
    if !path.split('/').all(component_ok) {
        return bad("must be lowercase path components of letters, digits, '.', '_' and '-', without a tag");
    }
    Ok(())
}

/// The registry part of a repository (`docker.io` when there is none).
pub fn registry_of(repository: &str) -> &str {
    match repository.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => host,
        _ => "docker.io",
    }
}

/// An image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn tag(tag: &str) -> Result<(), Invalid> {
    let ok = (1..=128).contains(&tag.len())
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid("image tag", format!("{tag:?} is not a valid image tag")))
    }
}

/// An image pinned by digest, `<repository>@sha256:<64 hex>`: what a service runs.
pub fn image(image: &str) -> Result<(), Invalid> {
    const WHAT: &str = "image";
    let Some((repository, digest)) = image.rsplit_once('@') else {
        return Err(invalid(
            WHAT,
            format!("{image:?} is not pinned by digest; expected <repository>@sha256:<64 hex>"),
        ));
    };
    if !is_digest(digest) {
        return Err(invalid(
            WHAT,
            format!("{image:?} has digest {digest:?}; expected sha256: and 64 lowercase hex digits"),
        ));
    }
    if repository.is_empty() || repository.starts_with('-') || repository.contains('@') {
        return Err(invalid(WHAT, format!("{image:?} has no valid repository before '@'")));
    }
    if repository.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(WHAT, format!("{image:?} contains whitespace or control characters")));
    }
    Ok(())
}

/// The host name every router answers its routes' version at (`.invalid` is reserved by
/// RFC 2606, so no app can be reached there and no manifest may claim it).
pub const ROUTER_STATUS_HOST: &str = "slipway-router.invalid";

/// Longest host name (RFC 1035).
pub const MAX_HOST_NAME_BYTES: usize = 253;

/// A host name the router may serve an app at: lowercase DNS labels (`a-z`, `0-9`, `-`,
/// 1–63 characters, not starting or ending with `-`) joined by dots, at least two labels,
/// at most 253 characters, not an IP address, not under the reserved `.invalid`.
pub fn host_name(name: &str) -> Result<(), Invalid> {
    const WHAT: &str = "host name";
    if name.is_empty() || name.len() > MAX_HOST_NAME_BYTES {
        return Err(invalid(
            WHAT,
            format!("it is {} bytes long; use 1 to {MAX_HOST_NAME_BYTES}", name.len()),
        ));
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid(WHAT, format!("{name:?} has uppercase letters; write it in lowercase")));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid(
            WHAT,
            format!("{name:?} is a single label; give a full name such as shop.example.com"),
        ));
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(invalid(
                WHAT,
                format!(
                    "{name:?} has the label {label:?}; each dot-separated label is 1 to 63 of a-z, 0-9 and '-', \
                     not starting or ending with '-'"
                ),
            ));
        }
    }
    if labels.last().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit())) {
        return Err(invalid(WHAT, format!("{name:?} is an IP address; the router routes by host name")));
    }
    if labels.last() == Some(&"invalid") {
        return Err(invalid(
            WHAT,
            format!("{name:?} is under .invalid, which slipway reserves for the router"),
        ));
    }
    Ok(())
}

/// The node attributes a placement constraint may test (swarmkit's `manager/constraint`);
/// Swarm accepts any other name and then finds no node that matches it.
const CONSTRAINT_ATTRIBUTES: [&str; 5] =
    ["node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch"];
/// Label attributes: the prefix and a non-empty label name.
const CONSTRAINT_LABEL_PREFIXES: [&str; 2] = ["node.labels.", "engine.labels."];
/// The form a placement constraint must have, for error messages.
const CONSTRAINT_FORM: &str = "`<attribute> == <value>` or `<attribute> != <value>`, the attribute \
     one of node.id, node.hostname, node.role, node.platform.os, node.platform.arch, \
     node.labels.<label>, engine.labels.<label>";

/// One Swarm placement constraint, in swarmkit's form: `<attribute> ==|!= <value>`, spaces
/// around the operator optional, the attribute one of `node.id`, `node.hostname`,
/// `node.role`, `node.platform.os`, `node.platform.arch` or a label under `node.labels.` /
/// `engine.labels.` (letters, digits, `-`, `_`, `.`), the value non-empty and within
/// swarmkit's characters (letters, digits, spaces and `:-_.*()?+[]\^$|/`).
pub fn placement_constraint(constraint: &str) -> Result<(), Invalid> {
    let refuse = |why: String| {
        Err(invalid("placement constraint", format!("{constraint:?} {why}; expected {CONSTRAINT_FORM}")))
    };
    if constraint.len() > MAX_ID_BYTES {
        return refuse(format!("is over {MAX_ID_BYTES} bytes long"));
    }
    if constraint.chars().any(char::is_control) {
        return refuse("contains a control character".into());
    }
    // swarmkit looks for `==` first, then `!=`.
    let Some((attribute, value)) = constraint.split_once("==").or_else(|| constraint.split_once("!=")) else {
        return refuse("has no operator".into());
    };
    let (attribute, value) = (attribute.trim(), value.trim());
    let label = CONSTRAINT_LABEL_PREFIXES.iter().find_map(|prefix| attribute.strip_prefix(prefix));
    let label_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    match label {
        Some(label) if label.is_empty() || !label.chars().all(label_char) => {
            return refuse(format!(
                "tests {attribute:?}, whose label name is empty or holds characters other than \
                 letters, digits, '-', '_' and '.'"
            ))
        }
        Some(_) => {}
        None if CONSTRAINT_ATTRIBUTES.contains(&attribute) => {}
        None => return refuse(format!("tests the unknown attribute {attribute:?}")),
    }
    let value_char = |c: char| c.is_ascii_alphanumeric() || c == ' ' || ":-_.*()?+[]\\^$|/".contains(c);
    if value.is_empty() || !value.chars().all(value_char) {
        return refuse(format!("has the value {value:?}, which is empty or holds a character Swarm refuses"));
    }
    Ok(())
}

/// Most bytes of config one app holds: the keys and values set with `slipway config set`,
/// counted together (the manifest's `[run] env` is not counted: the manifest has its own limit).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Longest environment variable name accepted as a config key.
pub const MAX_ENV_NAME_BYTES: usize = 255;

/// Config keys are POSIX environment variable names: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// [`MAX_ENV_NAME_BYTES`] bytes.
pub fn env_name(key: &str) -> Result<(), Invalid> {
    const WHAT: &str = "config key";
    const RULE: &str = "use letters, digits and '_', not starting with a digit (e.g. DATABASE_URL)";
    if key.len() > MAX_ENV_NAME_BYTES {
        return Err(invalid(
            WHAT,
            format!("it is {} bytes long; the limit is {MAX_ENV_NAME_BYTES} bytes", key.len()),
        ));
    }
    let ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(WHAT, format!("{key:?} is not an environment variable name; {RULE}")));
    }
    Ok(())
}

/// A config value for `key`: any text without a NUL (the engine cannot pass one), at most
/// [`MAX_CONFIG_BYTES`] long.
pub fn env_value(key: &str, value: &str) -> Result<(), Invalid> {
    const WHAT: &str = "config value";
    if value.contains('\0') {
        return Err(invalid(
            WHAT,
            format!("the value of {key} holds a NUL character, which no environment can carry"),
        ));
    }
    if value.len() > MAX_CONFIG_BYTES {
        return Err(invalid(
            WHAT,
            format!(
                "the value of {key} is {} bytes long; an app's config is at most {MAX_CONFIG_BYTES} bytes \
                 (keep large data in a file or a secret)",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Largest secret value: Swarm's own limit for a secret's data (500 KiB).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
/// Longest secret name: Swarm's limit for any secret name. The Swarm secret slipway
/// makes (`<stack>_<app>_<NAME>_v<N>`, see [`swarm_secret_name`]) must fit it too.
pub const MAX_SECRET_NAME_BYTES: usize = 64;

/// The rule secret names follow, quoted in every refusal.
pub const SECRET_NAME_RULE: &str = "secret names are 1 to 64 of letters, digits, '-', '_' and '.', starting \
     and ending with a letter or digit (valid as a Swarm secret name and as a file name under /run/secrets)";

/// A secret's name: a valid Swarm secret name (`[a-zA-Z0-9]+([a-zA-Z0-9-_.]*[a-zA-Z0-9])?`,
/// at most [`MAX_SECRET_NAME_BYTES`]) and therefore a plain file name under `/run/secrets`
/// (no `/`, never `.` or `..`, no leading dot or dash).
pub fn secret_name(name: &str) -> Result<(), Invalid> {
    const WHAT: &str = "secret name";
    let edge = |c: char| c.is_ascii_alphanumeric();
    let ok = (1..=MAX_SECRET_NAME_BYTES).contains(&name.len())
        && name.starts_with(edge)
        && name.ends_with(edge)
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(invalid(WHAT, format!("{name:?} is not allowed; {SECRET_NAME_RULE}")));
    }
    Ok(())
}

/// A secret's value: 1 byte to [`MAX_SECRET_BYTES`] (Swarm's limit); any bytes.
pub fn secret_value(name: &str, value: &[u8]) -> Result<(), Invalid> {
    const WHAT: &str = "secret value";
    if value.is_empty() {
        return Err(invalid(WHAT, format!("the value of {name} is empty; Swarm keeps no empty secret")));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(invalid(
            WHAT,
            format!(
                "the value of {name} is {} bytes long; a secret is at most {MAX_SECRET_BYTES} bytes \
                 (500 KiB, Swarm's limit)",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// The Swarm secret that holds version `version` of an app's secret: `<stack>_<app>_<name>_v<version>`,
/// refused when it would be longer than Swarm allows (the message names the limit).
pub fn swarm_secret_name(stack: &str, app: &str, name: &str, version: u32) -> Result<String, Invalid> {
    let swarm = format!("{stack}_{app}_{name}_v{version}");
    if swarm.len() > MAX_SECRET_NAME_BYTES {
        return Err(invalid(
            "secret name",
            format!(
                "{name:?} makes the Swarm secret name {swarm:?}, {} bytes long; Swarm allows \
                 {MAX_SECRET_NAME_BYTES}: use a shorter secret name",
                swarm.len()
            ),
        ));
    }
    Ok(swarm)
}

/// The first of `paths` within [`MAX_CHANGED_PATHS`] and [`MAX_CHANGED_PATHS_BYTES`], and
/// whether any were left out.
pub fn bound_changed_paths(paths: impl IntoIterator<Item = String>) -> (Vec<String>, bool) {
    let mut kept = Vec::new();
    let mut bytes = 0;
    for p in paths {
        if kept.len() == MAX_CHANGED_PATHS || bytes + p.len() > MAX_CHANGED_PATHS_BYTES {
            return (kept, true);
        }
        bytes += p.len();
        kept.push(p);
    }
    (kept, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refusal's message, which must name the input and what is wrong.
    fn refused(result: Result<(), Invalid>, input: &str) -> String {
        match result {
            Ok(()) => panic!("{input:?} should be refused"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn commit_ids_are_full_and_lowercase() {
        commit_sha(&"0123456789abcdef".repeat(3)[..40]).unwrap();
        for bad in [
            "",
            "abc1234",
            &"A".repeat(40),
            &"g".repeat(40),
            &"a".repeat(41),
            "-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            let e = commit_sha(bad).unwrap_err();
            assert!(e.to_string().contains("40 lowercase hex"), "{e}");
        }
        assert!(is_null_commit(&"0".repeat(40)) && !is_null_commit("") && !is_null_commit(&"a".repeat(40)));
    }

    #[test]
    fn app_names_are_dns_labels() {
        for ok in ["shop", "a", "web-2", "a1", &"a".repeat(63)] {
            assert_eq!(app_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "it is empty; app names are DNS labels: 1 to 63 of a-z, 0-9 and '-'"),
            (&"a".repeat(64), "it is 64 bytes long; app names are DNS labels: 1 to 63"),
            ("Shop", "must start with a lowercase letter"),
            ("sHop", "contains 'H'; use lowercase letters, digits and '-'"),
            ("2shop", "must start with a lowercase letter"),
            ("-x", "must start with a lowercase letter"),
            ("shop-", "must not end with '-'"),
            ("sh_op", "contains '_'"),
            ("sh.op", "contains '.'"),
            ("shöp", "contains 'ö'"),
            ("ѕhop", "must start with a lowercase letter"), // Cyrillic 's'
            ("a b", "contains ' '"),
        ] {
            let msg = refused(app_name(bad), bad);
            assert!(msg.starts_with("invalid app name: "), "{msg}");
            assert!(msg.contains(why), "{bad:?}: {msg}");
            if !bad.is_empty() && bad.len() < 64 {
                assert!(msg.contains(&format!("{bad:?}")), "the value is named: {msg}");
            }
        }
    }

    #[test]
    fn refs_follow_git_rules_and_never_look_like_options() {
        for ok in ["main", "v1.2.3", "feature/x", "feature/-x", "refs/heads/main", "0123abcd", "a@b", "ü"] {
            assert_eq!(git_ref(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "it is empty"),
            (&"a".repeat(256), "the limit is 255"),
            ("-x", "starts with '-'"),
            ("--upload-pack=evil", "starts with '-'"),
            ("a..b", "contains '..'"),
            ("a b", "contains ' '"),
            ("a\u{a0}b", "contains '\\u{a0}'"),
            ("a\tb", "contains '\\t'"),
            ("a\nb", "contains '\\n'"),
            ("a\u{7f}", "contains '\\u{7f}'"),
            ("a\0", "contains '\\0'"),
            ("a~1", "contains '~'"),
            ("a^", "contains '^'"),
            ("a:b", "contains ':'"),
            ("a?", "contains '?'"),
            ("a*", "contains '*'"),
            ("a[b", "contains '['"),
            ("a\\b", "contains '\\\\'"),
            ("x.lock", "ending with '.lock'"),
            ("x.lock/y", "ending with '.lock'"),
            ("refs/heads/y.lock", "ending with '.lock'"),
            ("/a", "empty path component"),
            ("a/", "empty path component"),
            ("a//b", "empty path component"),
            ("a.", "ends with '.'"),
            (".hidden", "starting with '.'"),
            ("a/.b", "starting with '.'"),
            ("@", "is '@'"),
            ("a@{1}", "'@{'"),
        ] {
            let msg = refused(git_ref(bad), bad);
            assert!(msg.starts_with("invalid git ref: "), "{msg}");
            assert!(msg.contains(why), "{bad:?} should say {why:?}: {msg}");
        }
    }

    /// Our rules against git's own `check-ref-format` for a list of tricky refs (where
    /// git is installed): whatever we accept, git accepts.
    #[test]
    fn accepted_refs_pass_git_check_ref_format() {
        let corpus = [
            "main",
            "a.lock/b",
            "a/b.lock",
            "a/.b",
            "feature/-x",
            "a..b",
            "a@{b",
            "@",
            "x/",
            "é",
            ".a",
            "a/.",
            "a@b",
            "@@",
            "a/@/b",
            "v1.0",
            "a.b.c",
            "refs/tags/v1",
            "a-b_c",
            "a/b/c/d",
            "x.lockx",
        ];
        for r in corpus {
            let Ok(out) =
                std::process::Command::new("git").args(["check-ref-format", "--allow-onelevel", r]).output()
            else {
                eprintln!("git is not installed: skipping the comparison");
                return;
            };
            if git_ref(r).is_ok() {
                assert!(out.status.success(), "we accept {r:?} but git does not");
            }
        }
    }

    #[test]
    fn repo_urls_have_an_allowed_scheme() {
        for ok in [
            "https://example.com/a.git",
            "http://example.com:8080/a.git",
            "https://user:token@example.com/a.git",
            "ssh://git@host/a",
            "ssh://git@host:2222/a",
            "git@host:team/a.git",
            "host:team/a.git",
            "file:///srv/git/a",
            "git://host/a",
        ] {
            assert_eq!(repo_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "must be 1 to 2048 bytes"),
            (&format!("https://h/{}", "a".repeat(2048)), "must be 1 to 2048 bytes"),
            ("-uevil", "starts with '-'"),
            ("--upload-pack=touch /tmp/x", "starts with '-'"),
            ("ext::sh -c touch% /tmp/pwned", "whitespace"),
            ("ext::sh%20-c%20touch", "the git transport \"ext\""),
            ("fd::17", "the git transport \"fd\""),
            ("fd::17/x", "the git transport \"fd\""),
            ("testgit::/srv/x", "the git transport \"testgit\""),
            ("host::path", "the git transport \"host\""),
            ("ftp://x/y", "scheme \"ftp\" is not allowed"),
            ("HTTPS://x/y", "scheme \"HTTPS\" is not allowed"),
            ("javascript://x", "scheme \"javascript\" is not allowed"),
            ("https://", "nothing after the scheme"),
            ("ssh://-oProxyCommand=touch%20x/a", "host that does not start with '-'"),
            ("ssh://git@-oProxyCommand=x/a", "host that does not start with '-'"),
            ("https:///path", "host that does not start with '-'"),
            ("git@-oProxyCommand=x:a", "host that does not start with '-'"),
            ("@:a", "host that does not start with '-'"),
            ("/srv/git/a", "neither a URL nor user@host:path"),
            ("./a:b", "neither a URL nor user@host:path"),
            ("host:", "neither a URL nor user@host:path"),
            ("a b:c", "whitespace"),
            ("https://h/a\tb", "whitespace or control"),
            ("https://h/a\u{1b}[31m", "control"),
            ("https://h/a\u{2028}", "whitespace"),
        ] {
            let msg = refused(repo_url(bad), bad);
            assert!(msg.starts_with("invalid repository URL: "), "{msg}");
            assert!(msg.contains(why), "{bad:?} should say {why:?}: {msg}");
        }
    }

    #[test]
    fn file_urls_are_recognised_exactly() {
        assert!(is_file_url("file:///srv/a"));
        assert!(!is_file_url("https://h/file:///a"));
        assert!(repo_url("FILE:///srv/a").is_err(), "an upper-case scheme cannot dodge the file check");
    }

    #[test]
    fn other_fields_are_bounded_by_length() {
        assert_eq!(bounded("request id", "abc", 3), Ok(()));
        let msg = refused(bounded("request id", "abcd", 3), "abcd");
        assert_eq!(msg, "invalid request id: it is 4 bytes long; the limit is 3 bytes");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        /// `^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`, written out.
        fn reference_app_name(s: &str) -> bool {
            let b = s.as_bytes();
            let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
            (1..=63).contains(&b.len())
                && b[0].is_ascii_lowercase()
                && b.iter().all(inner)
                && *b.last().unwrap_or(&b'-') != b'-'
        }

        /// The rules of `git check-ref-format --allow-onelevel`, from its manual, plus
        /// ours: no leading `-`, no whitespace, at most 255 bytes.
        fn reference_git_ref(s: &str) -> bool {
            let git = !s.is_empty()
                && s != "@"
                && !s.contains("@{")
                && !s.contains("..")
                && !s.ends_with('.')
                && s.split('/').all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
                && !s.chars().any(|c| (c as u32) < 0x20 || c == '\u{7f}' || " ~^:?*[\\".contains(c));
            let ours = !s.starts_with('-')
                && s.len() <= 255
                && !s.chars().any(|c| c.is_whitespace() || c.is_control());
            git && ours
        }

        fn ref_like() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    4 => "[a-z0-9]{1,4}",
                    1 => prop::sample::select(vec![
                        "/", ".", "..", "-", "@", "@{", ".lock", "~", "^", ":", "?", "*", "[", "\\",
                        " ", "\t", "\n", "\u{7f}", "\u{a0}", "é", "//",
                    ])
                    .prop_map(str::to_string),
                ],
                0..8,
            )
            .prop_map(|parts| parts.concat())
        }

        fn url_like() -> impl Strategy<Value = String> {
            (
                prop::sample::select(vec![
                    "", "https://", "http://", "ssh://", "git://", "file://", "ext::", "fd::", "ftp://",
                    "-u", "git@", "HTTPS://", "a::", "x:",
                ]),
                "[-a-zA-Z0-9@:/._ %\t~]{0,24}",
            )
                .prop_map(|(scheme, rest)| format!("{scheme}{rest}"))
        }

        proptest! {
            #[test]
            fn fuzz_validators_never_panic(s in any::<String>()) {
                let _ = app_name(&s);
                let _ = git_ref(&s);
                let _ = repo_url(&s);
                let _ = bounded("field", &s, 10);
            }

            #[test]
            fn fuzz_app_names_match_the_dns_label_rule(s in "[a-zA-Z0-9._ -]{0,70}|\\PC{0,8}") {
                prop_assert_eq!(app_name(&s).is_ok(), reference_app_name(&s), "{:?}", s);
            }

            #[test]
            fn fuzz_git_refs_match_git_rules(s in ref_like()) {
                prop_assert_eq!(git_ref(&s).is_ok(), reference_git_ref(&s), "{:?}", s);
            }

            #[test]
            fn fuzz_arbitrary_git_refs_match_git_rules(s in any::<String>()) {
                prop_assert_eq!(git_ref(&s).is_ok(), reference_git_ref(&s), "{:?}", s);
            }

            #[test]
            fn fuzz_accepted_urls_are_safe_for_git(s in url_like()) {
                if repo_url(&s).is_ok() {
                    prop_assert!(!s.starts_with('-'), "{:?}", s);
                    prop_assert!(!s.chars().any(|c| c.is_whitespace() || c.is_control()), "{:?}", s);
                    let scheme_end = s.find(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)));
                    prop_assert!(scheme_end.is_none_or(|i| !s[i..].starts_with("::")), "{:?}", s);
                    match s.split_once("://") {
                        Some((scheme, _)) => prop_assert!(URL_SCHEMES.contains(&scheme), "{:?}", s),
                        None => {
                            let (user_host, _) = s.split_once(':').expect("scp-like has a ':'");
                            prop_assert!(!user_host.contains('/'), "{:?}", s);
                            let host = user_host.rsplit('@').next().unwrap_or_default();
                            prop_assert!(!host.is_empty() && !host.starts_with('-'), "{:?}", s);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn digests_repositories_tags_and_images_are_checked() {
        assert!(is_digest(&format!("sha256:{}", "0".repeat(64))));
        assert!(!is_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_digest(&format!("sha512:{}", "0".repeat(64))));
        assert!(!is_digest("sha256:abc"));
        assert!(digest("sha256:abc").unwrap_err().to_string().contains("64 lowercase hex"));
        for ok in ["127.0.0.1:5000/shop", "registry.local/team/shop", "localhost/shop"] {
            assert_eq!(repository(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "shop",
            "team/shop",
            "127.0.0.1:5000/Shop",
            "127.0.0.1:5000/shop:1",
            "r.local/shop@sha256:00",
            "-x",
            "r.local//b",
            "r.local/",
            "bad host:1/x",
        ] {
            assert!(repository(bad).is_err(), "{bad}");
        }
        assert_eq!(registry_of("127.0.0.1:5000/shop"), "127.0.0.1:5000");
        assert_eq!(registry_of("library/shop"), "docker.io");
        assert!(tag("b-1.2_x").is_ok());
        assert!(tag("-x").is_err() && tag("").is_err() && tag("a/b").is_err());
    }

    #[test]
    fn host_names_are_lowercase_dns_names_of_two_labels_or_more() {
        for ok in ["shop.example.com", "a.b", "hello.localhost", "x-1.y2.example"] {
            host_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("", "bytes long"),
            ("Shop.example.com", "lowercase"),
            ("localhost", "single label"),
            ("shop..example.com", "label \"\""),
            ("-shop.example.com", "not starting"),
            ("shop_1.example.com", "label"),
            ("10.0.0.1", "IP address"),
            ("router.slipway.invalid", ".invalid"),
        ] {
            let err = host_name(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        host_name(ROUTER_STATUS_HOST).unwrap_err();
        let long = format!("{}.com", "a.".repeat(130));
        assert!(host_name(&long).unwrap_err().to_string().contains("bytes long"));
    }

    #[test]
    fn placement_constraints_name_an_attribute_an_operator_and_a_value() {
        for ok in [
            "node.labels.gpu == true",
            "node.role!=manager",
            "engine.labels.ssd == yes",
            "node.hostname == n1",
        ] {
            placement_constraint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("node.labels.gpu = true", "has no operator"),
            ("node.colour == red", "unknown attribute \"node.colour\""),
            ("node.labels. == x", "label name is empty"),
            ("node.role ==", "which is empty"),
            ("node.role == a == b", "a character Swarm refuses"),
            ("node.role == a\nb", "control character"),
        ] {
            let err = placement_constraint(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn config_keys_are_posix_variable_names_and_values_are_bounded() {
        for ok in ["A", "_", "DATABASE_URL", "a1_b2", "_9"] {
            assert_eq!(env_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1X", "A-B", "A B", "A=B", "É", "a.b"] {
            let msg = refused(env_name(bad), bad);
            assert!(msg.contains("not an environment variable name; use letters"), "{msg}");
        }
        let msg = env_name(&"A".repeat(256)).unwrap_err().to_string();
        assert!(msg.contains("256 bytes long; the limit is 255"), "{msg}");
        assert_eq!(env_value("K", "any = text, even\nnewlines"), Ok(()));
        let msg = env_value("K", "a\0b").unwrap_err().to_string();
        assert!(msg.contains("the value of K holds a NUL"), "{msg}");
        let msg = env_value("BIG", &"x".repeat(MAX_CONFIG_BYTES + 1)).unwrap_err().to_string();
        assert!(msg.contains("the value of BIG is 65537 bytes long"), "{msg}");
    }

    #[test]
    fn secret_names_are_swarm_names_and_plain_file_names() {
        for good in ["DB_PASSWORD", "tls.key", "a", "api-token-2", &"x".repeat(64)] {
            assert!(secret_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../etc", "a/b", "-x", "x-", ".hidden", "a b", "é", &"x".repeat(65)] {
            let msg = refused(secret_name(bad), bad);
            assert!(msg.starts_with("invalid secret name: ") && msg.contains(SECRET_NAME_RULE), "{msg}");
        }
        assert!(secret_value("K", b"v").is_ok());
        assert!(secret_value("K", &vec![0; MAX_SECRET_BYTES]).is_ok());
        let msg = refused(secret_value("K", &vec![0; MAX_SECRET_BYTES + 1]), "big");
        assert!(
            msg.contains("the value of K is 512001 bytes long; a secret is at most 512000 bytes"),
            "{msg}"
        );
        assert!(refused(secret_value("K", b""), "empty").contains("empty"));
        assert_eq!(swarm_secret_name("sl", "shop", "DB", 3).unwrap(), "sl_shop_DB_v3");
        let msg = refused(swarm_secret_name("stack", "shop", &"x".repeat(60), 1).map(drop), "long");
        assert!(msg.contains("Swarm allows 64: use a shorter secret name"), "{msg}");
    }
}
