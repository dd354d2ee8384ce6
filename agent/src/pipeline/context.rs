//! The build context: a tar of the context directory, as `docker build` would send it.
//!
//! Follows the Docker CLI (`cli/command/image/build` + `moby/patternmatcher`):
//! - `.dockerignore` at the context root: one pattern per line, `#` comments, patterns
//!   relative to the context root (a leading `/` is dropped, paths are cleaned), `*` and
//!   `?` never cross `/`, `**` crosses any number of directories, `[a-z]` classes, `\`
//!   escapes, `!` re-includes; the last matching pattern wins, and a pattern that matches
//!   a directory excludes everything below it. Unlike `.gitignore`, `*.log` matches only
//!   at the root (write `**/*.log` for every level). An excluded directory is skipped
//!   entirely unless some `!` pattern starts with its path, as in the CLI.
//! - the Dockerfile and `.dockerignore` are always sent, even if ignored;
//! - symlinks are stored as symlinks and never followed; `.git` is sent unless ignored;
//! - owners are 0:0 (as the CLI does, so COPY cache keys do not depend on which user
//!   cloned); mtimes are kept (the classic builder's cache keys ignore mtime); modes are
//!   the ones git records, 0755 for directories and executables and 0644 for other
//!   files, so neither the image nor its cache keys depend on the umask the agent runs
//!   with (the systemd unit's `UMask=0077` checks out files 0600, which a non-root
//!   `USER` in the image could not read).
//!
//! The context directory and the Dockerfile must resolve inside the clone: paths are
//! checked lexically and again after resolving symlinks, so `context = "x"` where `x`
//! links to `/etc` is refused. Sockets, FIFOs and devices are left out.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::Failure;

/// Largest `.dockerignore` read, in bytes.
const MAX_DOCKERIGNORE_BYTES: u64 = 1024 * 1024;

/// Packs `<clone_dir>/<context_rel>` into a tar honouring its `.dockerignore`;
/// `dockerfile_rel` is relative to the context directory and must exist inside it.
pub fn pack_context(clone_dir: &Path, context_rel: &str, dockerfile_rel: &str) -> Result<Vec<u8>, Failure> {
    let fail = Failure::Context;
    inside_path(context_rel).map_err(|why| fail(format!("build.context {context_rel:?} {why}")))?;
    inside_path(dockerfile_rel).map_err(|why| fail(format!("build.dockerfile {dockerfile_rel:?} {why}")))?;

    let root = fs::canonicalize(clone_dir)
        .map_err(|e| fail(format!("cannot open the clone {}: {e}", clone_dir.display())))?;
    let context = match fs::canonicalize(root.join(context_rel)) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fail(format!(
                "the context directory {context_rel:?} does not exist in the repository"
            )))
        }
        Err(e) => return Err(fail(format!("cannot open the context directory {context_rel:?}: {e}"))),
    };
    if !context.starts_with(&root) {
        return Err(fail(format!(
            "the context directory {context_rel:?} leads outside the repository (through a symlink); \
             point build.context at a directory inside the repository"
        )));
    }
    if !context.is_dir() {
        return Err(fail(format!("the context {context_rel:?} is not a directory")));
    }

    let dockerfile = match fs::canonicalize(context.join(dockerfile_rel)) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fail(format!(
                "no Dockerfile at {dockerfile_rel:?} in the context {context_rel:?} \
                 (build.dockerfile is relative to build.context)"
            )))
        }
        Err(e) => return Err(fail(format!("cannot open the Dockerfile {dockerfile_rel:?}: {e}"))),
    };
    if !dockerfile.starts_with(&context) {
        return Err(fail(format!(
            "the Dockerfile {dockerfile_rel:?} leads outside the context {context_rel:?} (through a symlink); \
             point build.dockerfile at a file inside the context"
        )));
    }
    if !dockerfile.is_file() {
        return Err(fail(format!("the Dockerfile {dockerfile_rel:?} is not a regular file")));
    }

    let patterns = keep_needed(read_dockerignore(&context)?, dockerfile_rel).map_err(fail)?;

    let mut tar = tar::Builder::new(Vec::new());
    walk(&context, "", &patterns, &mut tar)
        .map_err(|e| fail(format!("cannot pack the context {context_rel:?}: {e}")))?;
    tar.into_inner().map_err(|e| fail(format!("cannot pack the context {context_rel:?}: {e}")))
}

/// Always send the files the daemon needs, like the CLI does: `.dockerignore` and the
/// Dockerfile are re-included when a pattern excludes them.
fn keep_needed(mut patterns: Vec<Pattern>, dockerfile_rel: &str) -> Result<Vec<Pattern>, String> {
    for keep in [".dockerignore".to_string(), clean(dockerfile_rel)] {
        if matches(&patterns, &keep) {
            patterns.push(Pattern::compile(&format!("!{keep}"))?);
        }
    }
    Ok(patterns)
}

/// A context's `.dockerignore` as [`pack_context`] applies it (the Dockerfile and
/// `.dockerignore` itself always sent): which context paths the build never sees.
#[derive(Debug, Clone)]
pub struct Ignore(Vec<Pattern>);

impl Ignore {
    /// Reads `<context_dir>/.dockerignore` (none: nothing is excluded). Call it after
    /// [`pack_context`] accepted the context: the directory is not checked again here.
    pub fn read(context_dir: &Path, dockerfile_rel: &str) -> Result<Ignore, Failure> {
        keep_needed(read_dockerignore(context_dir)?, dockerfile_rel).map(Ignore).map_err(Failure::Context)
    }

    /// From `.dockerignore` text.
    pub fn parse(text: &str, dockerfile_rel: &str) -> Result<Ignore, String> {
        keep_needed(parse_dockerignore(text)?, dockerfile_rel).map(Ignore)
    }

    /// Whether the build context leaves `path` (relative to the context, `/`-separated) out.
    pub fn excludes(&self, path: &str) -> bool {
        matches(&self.0, path)
    }
}

/// Relative, non-empty, no `..`.
fn inside_path(p: &str) -> Result<(), &'static str> {
    let path = Path::new(p);
    if p.is_empty() {
        Err("is empty")
    } else if path.is_absolute() {
        Err("must be relative to the repository, not absolute")
    } else if path.components().any(|c| matches!(c, Component::ParentDir)) {
        Err("must not contain '..'; it must stay inside the repository")
    } else {
        Ok(())
    }
}

/// `./a//b/` → `a/b`, as Go's `filepath.Clean` would (no `..` reaches here).
pub(super) fn clean(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

fn read_dockerignore(context: &Path) -> Result<Vec<Pattern>, Failure> {
    let path = context.join(".dockerignore");
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Failure::Context(format!("cannot read .dockerignore: {e}"))),
    };
    if !meta.is_file() {
        return Err(Failure::Context(
            ".dockerignore must be a regular file (not a link or directory)".into(),
        ));
    }
    if meta.len() > MAX_DOCKERIGNORE_BYTES {
        return Err(Failure::Context(format!(
            ".dockerignore is {} bytes; the limit is {MAX_DOCKERIGNORE_BYTES}",
            meta.len()
        )));
    }
    let text = fs::read(&path).map_err(|e| Failure::Context(format!("cannot read .dockerignore: {e}")))?;
    parse_dockerignore(&String::from_utf8_lossy(&text)).map_err(Failure::Context)
}

/// Parses `.dockerignore` text like `moby/patternmatcher/ignorefile.ReadAll`.
fn parse_dockerignore(text: &str) -> Result<Vec<Pattern>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut patterns = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (invert, body) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        let mut body = if body.is_empty() { String::new() } else { go_clean(body) };
        if body.len() > 1 && body.starts_with('/') {
            body.remove(0);
        }
        let text = if invert { format!("!{body}") } else { body };
        patterns.push(Pattern::compile(&text).map_err(|e| format!(".dockerignore line {}: {e}", n + 1))?);
    }
    Ok(patterns)
}

/// Go's `filepath.Clean` for patterns: collapses `//`, drops `.`, resolves `..` lexically.
fn go_clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// One `.dockerignore` line, compiled to tokens equivalent to the CLI's regular expression.
#[derive(Debug, Clone)]
struct Pattern {
    /// A `!` line: re-includes what earlier lines excluded.
    exception: bool,
    /// The cleaned pattern text without `!` (used for the directory-descent check).
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    /// `*`: any run of characters except `/`.
    Star,
    /// `?`: one character except `/`.
    Question,
    /// `**/` or inner `**`: nothing, or anything ending with `/`.
    AnyDirs,
    /// Trailing `**`: anything at all.
    AnyRest,
    /// `[…]` / `[^…]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Pattern {
    fn compile(line: &str) -> Result<Pattern, String> {
        let (exception, text) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.to_string()),
            None => (false, line.to_string()),
        };
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    tokens.push(if i == chars.len() { Token::AnyRest } else { Token::AnyDirs });
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Question),
                '\\' => match chars.get(i) {
                    Some(&next) => {
                        tokens.push(Token::Literal(next));
                        i += 1;
                    }
                    None => tokens.push(Token::Literal('\\')),
                },
                '[' => {
                    let (token, next) =
                        parse_class(&chars, i).ok_or_else(|| format!("bad pattern {text:?}"))?;
                    tokens.push(token);
                    i = next;
                }
                other => tokens.push(Token::Literal(other)),
            }
        }
        Ok(Pattern { exception, text, tokens })
    }

    /// Whether the whole of `path` matches (no parent logic here).
    fn matches_exactly(&self, path: &str) -> bool {
        let text: Vec<char> = path.chars().collect();
        let mut memo = vec![None; (self.tokens.len() + 1) * (text.len() + 1)];
        match_at(&self.tokens, &text, 0, 0, &mut memo)
    }

    /// Whether `path` or one of its parent directories matches.
    fn matches_or_parent(&self, path: &str) -> bool {
        if self.matches_exactly(path) {
            return true;
        }
        path.match_indices('/').any(|(i, _)| self.matches_exactly(&path[..i]))
    }
}

/// `[` was consumed; parses up to the closing `]`. Returns the class and the next index.
fn parse_class(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let negated = matches!(chars.get(i), Some('^') | Some('!'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if c == '\\' {
            i += 1;
            c = *chars.get(i)?;
        }
        i += 1;
        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|n| *n != ']') {
            let mut hi = chars[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *chars.get(i)?;
                i += 1;
            }
            ranges.push((c, hi));
        } else {
            ranges.push((c, c));
        }
    }
}

fn match_at(tokens: &[Token], text: &[char], t: usize, p: usize, memo: &mut [Option<bool>]) -> bool {
    let key = t * (text.len() + 1) + p;
    if let Some(known) = memo[key] {
        return known;
    }
    let result = match tokens.get(t) {
        None => p == text.len(),
        Some(Token::Literal(c)) => text.get(p) == Some(c) && match_at(tokens, text, t + 1, p + 1, memo),
        Some(Token::Question) => {
            text.get(p).is_some_and(|c| *c != '/') && match_at(tokens, text, t + 1, p + 1, memo)
        }
        Some(Token::Class { negated, ranges }) => {
            text.get(p).is_some_and(|c| {
                *c != '/' && ranges.iter().any(|(lo, hi)| (lo..=hi).contains(&c)) != *negated
            }) && match_at(tokens, text, t + 1, p + 1, memo)
        }
        Some(Token::Star) => {
            let mut q = p;
            loop {
                if match_at(tokens, text, t + 1, q, memo) {
                    break true;
                }
                if q == text.len() || text[q] == '/' {
                    break false;
                }
                q += 1;
            }
        }
        Some(Token::AnyDirs) => {
            match_at(tokens, text, t + 1, p, memo)
                || (p..text.len()).any(|q| text[q] == '/' && match_at(tokens, text, t + 1, q + 1, memo))
        }
        Some(Token::AnyRest) => true,
    };
    memo[key] = Some(result);
    result
}

/// Docker's `MatchesOrParentMatches`: is `path` (relative, `/`-separated) excluded?
fn matches(patterns: &[Pattern], path: &str) -> bool {
    let mut excluded = false;
    for pattern in patterns {
        // An exclusion cannot change an excluded path, an exception an included one.
        if pattern.exception != excluded {
            continue;
        }
        if pattern.matches_or_parent(path) {
            excluded = !pattern.exception;
        }
    }
    excluded
}

fn walk(dir: &Path, rel: &str, patterns: &[Pattern], tar: &mut tar::Builder<Vec<u8>>) -> io::Result<()> {
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let rel_path = if rel.is_empty() { PathBuf::from(&name) } else { Path::new(rel).join(&name) };
        let rel_str = rel_path.to_string_lossy().into_owned();
        let meta = entry.metadata()?; // DirEntry::metadata does not follow symlinks.
        let kind = meta.file_type();

        if matches(patterns, &rel_str) {
            if kind.is_dir() && exception_below(patterns, &rel_str) {
                // Not sent itself, but a `!` pattern may re-include something inside.
                walk(&entry.path(), &rel_str, patterns, tar)?;
            }
            continue;
        }

        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        header.set_uid(0);
        header.set_gid(0);
        if !kind.is_symlink() {
            header.set_mode(git_mode(&meta));
        }
        if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            header.set_size(0);
            tar.append_link(&mut header, &rel_path, &target)?;
        } else if kind.is_dir() {
            header.set_size(0);
            tar.append_data(&mut header, &rel_path, io::empty())?;
            walk(&entry.path(), &rel_str, patterns, tar)?;
        } else if kind.is_file() {
            let file = fs::File::open(entry.path())?;
            tar.append_data(&mut header, &rel_path, file)?;
        }
        // Sockets, FIFOs and devices have no place in an image build: left out.
    }
    Ok(())
}

/// The mode git would check `meta`'s file out with under the usual umask (022): git
/// records only whether a file is executable.
fn git_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let executable = meta.permissions().mode() & 0o100 != 0;
    if meta.is_dir() || executable {
        0o755
    } else {
        0o644
    }
}

/// The CLI descends into an excluded directory only if an exception pattern starts with it.
fn exception_below(patterns: &[Pattern], dir: &str) -> bool {
    let dir_slash = format!("{dir}/");
    patterns.iter().any(|p| p.exception && format!("{}/", p.text).starts_with(&dir_slash))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn write(root: &Path, files: &[&str]) {
        for f in files {
            let path = root.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("content of {f}\n")).unwrap();
        }
    }

    /// Entry path → (type, link target or content).
    fn entries(tar: &[u8]) -> BTreeMap<String, (tar::EntryType, String)> {
        let mut archive = tar::Archive::new(tar);
        let mut out = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
            let kind = entry.header().entry_type();
            let detail = if kind.is_symlink() {
                entry.link_name().unwrap().unwrap().to_string_lossy().into_owned()
            } else {
                let mut s = String::new();
                entry.read_to_string(&mut s).unwrap();
                s
            };
            out.insert(path, (kind, detail));
        }
        out
    }

    fn names(tar: &[u8]) -> Vec<String> {
        entries(tar).into_keys().collect()
    }

    fn excluded(ignore: &str, path: &str) -> bool {
        matches(&parse_dockerignore(ignore).unwrap(), path)
    }

    #[test]
    fn patterns_follow_docker_not_gitignore() {
        assert!(excluded("*.log", "a.log"));
        assert!(!excluded("*.log", "sub/a.log"), "* stays at the root, unlike .gitignore");
        assert!(excluded("**/*.log", "sub/deep/a.log"));
        assert!(excluded("**/*.log", "a.log"));
        assert!(excluded("node_modules", "node_modules/x/y.js"), "a directory excludes its contents");
        assert!(!excluded("node_modules", "web/node_modules/x.js"));
        assert!(excluded("/build", "build/out"), "leading / is the context root");
        assert!(excluded("./build/", "build/out"));
        assert!(excluded("docs/**", "docs/a/b.md"));
        assert!(excluded("a/**/z", "a/z") && excluded("a/**/z", "a/b/c/z"));
        assert!(excluded("file?.txt", "file1.txt") && !excluded("file?.txt", "file10.txt"));
        assert!(excluded("file[0-4].txt", "file3.txt") && !excluded("file[0-4].txt", "file7.txt"));
        assert!(excluded("file[^0-4].txt", "file7.txt") && !excluded("file[^0-4].txt", "file3.txt"));
        assert!(excluded("\\#literal", "#literal"));
        assert!(!excluded("# a comment\n", "# a comment"));
        assert!(excluded("  spaced  \n", "spaced"));
        assert!(excluded("**", "anything/at/all"));
        assert!(parse_dockerignore("[oops").is_err());
    }

    #[test]
    fn the_last_matching_line_wins() {
        let ignore = "*.md\n!README.md\n";
        assert!(excluded(ignore, "CHANGES.md"));
        assert!(!excluded(ignore, "README.md"));
        assert!(
            excluded("!README.md\n*.md\n", "README.md"),
            "an exception before the exclusion does nothing"
        );
        assert!(!excluded("docs\n!docs/keep.md\n", "docs/keep.md"));
        assert!(excluded("docs\n!docs/keep.md\n", "docs/drop.md"));
    }

    #[test]
    fn ignored_files_stay_out_and_exceptions_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            &[
                "Dockerfile",
                "src/main.rs",
                "app.log",
                "src/debug.log",
                "node_modules/left-pad/index.js",
                "docs/keep.md",
                "docs/drop.md",
                "secrets/key.pem",
                ".git/HEAD",
            ],
        );
        fs::write(
            root.join(".dockerignore"),
            "# build junk\n*.log\nnode_modules\ndocs\n!docs/keep.md\nsecrets/\n.dockerignore\nDockerfile\n",
        )
        .unwrap();
        let tar = pack_context(root, ".", "Dockerfile").unwrap();
        assert_eq!(
            names(&tar),
            [
                ".dockerignore",
                ".git",
                ".git/HEAD",
                "Dockerfile",
                "docs/keep.md",
                "src",
                "src/debug.log",
                "src/main.rs",
            ],
            "the Dockerfile and .dockerignore are always sent, .git like any directory"
        );
    }

    #[test]
    fn the_context_can_be_a_subdirectory_with_a_nested_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["web/ops/Dockerfile", "web/index.html", "api/main.go"]);
        fs::write(dir.path().join("web/.dockerignore"), "ops\n").unwrap();
        let tar = pack_context(dir.path(), "web", "ops/Dockerfile").unwrap();
        assert_eq!(names(&tar), [".dockerignore", "index.html", "ops/Dockerfile"]);
    }

    #[test]
    fn symlinks_are_stored_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["Dockerfile"]);
        symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        symlink("/etc", dir.path().join("etc")).unwrap();
        let tar = pack_context(dir.path(), ".", "Dockerfile").unwrap();
        let e = entries(&tar);
        assert_eq!(e["passwd"], (tar::EntryType::Symlink, "/etc/passwd".to_string()));
        assert_eq!(e["etc"], (tar::EntryType::Symlink, "/etc".to_string()));
        assert_eq!(e.len(), 3, "nothing below the linked /etc: {:?}", e.keys());
    }

    #[test]
    fn modes_are_gits_whatever_the_umask_and_owners_are_root() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["Dockerfile", "run.sh", "conf/app.toml"]);
        // As a checkout under umask 0077 leaves them.
        for (path, mode) in
            [("Dockerfile", 0o600), ("run.sh", 0o700), ("conf", 0o700), ("conf/app.toml", 0o600)]
        {
            fs::set_permissions(dir.path().join(path), fs::Permissions::from_mode(mode)).unwrap();
        }
        let tar = pack_context(dir.path(), ".", "Dockerfile").unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut modes = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert!(h.mtime().unwrap() > 0, "real mtimes are kept");
            let path = entry.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
            modes.insert(path, h.mode().unwrap() & 0o7777);
        }
        let expected = [("Dockerfile", 0o644), ("run.sh", 0o755), ("conf", 0o755), ("conf/app.toml", 0o644)];
        assert_eq!(modes, expected.into_iter().map(|(p, m)| (p.to_string(), m)).collect());
    }

    #[test]
    fn escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("clone");
        write(&root, &["Dockerfile", "sub/x"]);
        write(dir.path(), &["outside/Dockerfile"]);
        symlink("/etc", root.join("etc-link")).unwrap();
        symlink(dir.path().join("outside"), root.join("out-link")).unwrap();
        symlink(dir.path().join("outside/Dockerfile"), root.join("Dockerfile.link")).unwrap();
        let reason = |ctx: &str, df: &str| pack_context(&root, ctx, df).unwrap_err().reason().to_string();

        assert!(reason("../outside", "Dockerfile").contains("'..'"));
        assert!(reason("/etc", "Dockerfile").contains("absolute"));
        assert!(reason(".", "../outside/Dockerfile").contains("'..'"));
        assert!(reason(".", "/etc/passwd").contains("absolute"));
        assert!(reason("etc-link", "passwd").contains("leads outside the repository"));
        assert!(reason("out-link", "Dockerfile").contains("leads outside the repository"));
        assert!(reason(".", "Dockerfile.link").contains("leads outside the context"));
        assert!(reason("sub", "../Dockerfile").contains("'..'"));
        assert!(reason(".", "out-link/Dockerfile").contains("leads outside the context"));
        assert!(reason("sub/../..", "Dockerfile").contains("'..'"));

        // The field, the value and the fix are named.
        assert_eq!(
            reason("../outside", "Dockerfile"),
            "build.context \"../outside\" must not contain '..'; it must stay inside the repository"
        );
        assert_eq!(
            reason(".", "/etc/passwd"),
            "build.dockerfile \"/etc/passwd\" must be relative to the repository, not absolute"
        );
        assert!(reason("out-link", "Dockerfile")
            .ends_with("point build.context at a directory inside the repository"));
        assert!(
            reason(".", "Dockerfile.link").ends_with("point build.dockerfile at a file inside the context")
        );
    }

    #[test]
    fn symlink_loops_and_dangling_links_are_refused_or_stored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, &["Dockerfile"]);
        symlink("loop", root.join("loop")).unwrap();
        symlink("ping", root.join("pong")).unwrap();
        symlink("pong", root.join("ping")).unwrap();
        symlink("nowhere", root.join("dangling")).unwrap();
        symlink("../../../../../../../../etc/shadow", root.join("dots")).unwrap();
        let err = pack_context(root, "loop", "Dockerfile").unwrap_err();
        assert!(err.reason().starts_with("cannot open the context directory \"loop\""), "{err}");
        let err = pack_context(root, ".", "ping").unwrap_err();
        assert!(err.reason().starts_with("cannot open the Dockerfile \"ping\""), "{err}");
        let e = entries(&pack_context(root, ".", "Dockerfile").unwrap());
        for (link, target) in [("loop", "loop"), ("ping", "pong"), ("dangling", "nowhere")] {
            assert_eq!(e[link], (tar::EntryType::Symlink, target.to_string()));
        }
        assert_eq!(e["dots"].0, tar::EntryType::Symlink, "stored, not followed");
    }

    #[test]
    fn a_missing_dockerfile_or_context_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["src/main.rs", "docker/Dockerfile"]);
        let err = pack_context(dir.path(), ".", "Dockerfile").unwrap_err();
        assert_eq!(err.phase(), "context");
        assert!(err.reason().contains("no Dockerfile at \"Dockerfile\""), "{err}");
        let err = pack_context(dir.path(), "web", "Dockerfile").unwrap_err();
        assert!(err.reason().contains("\"web\" does not exist"), "{err}");
        let err = pack_context(dir.path(), "src/main.rs", "Dockerfile").unwrap_err();
        assert!(err.reason().contains("not a directory"), "{err}");
        let err = pack_context(dir.path(), ".", "docker").unwrap_err();
        assert!(err.reason().contains("not a regular file"), "{err}");
        assert!(pack_context(dir.path(), ".", "docker/Dockerfile").is_ok());
    }

    #[test]
    fn a_linked_dockerignore_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &["Dockerfile"]);
        symlink("/etc/passwd", dir.path().join(".dockerignore")).unwrap();
        let err = pack_context(dir.path(), ".", "Dockerfile").unwrap_err();
        assert!(err.reason().contains("regular file"), "{err}");
    }

    #[test]
    fn long_paths_and_link_targets_survive() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        write(dir.path(), &["Dockerfile", &long]);
        symlink(&long, dir.path().join("link")).unwrap();
        let e = entries(&pack_context(dir.path(), ".", "Dockerfile").unwrap());
        assert_eq!(e[&long].1, format!("content of {long}\n"));
        assert_eq!(e["link"].1, long);
    }
}

/// Property tests on generated trees: packing never panics, and never packs anything
/// from outside the clone, whatever the symlinks (to outside, `..` chains, absolute
/// targets, loops) and `.dockerignore` patterns.
/// `PROPTEST_CASES=200000 cargo test --release -p slipway-agent fuzz_` runs them long.
#[cfg(test)]
mod fuzz {
    use std::io::Read;
    use std::os::unix::fs::symlink;

    use proptest::prelude::*;

    use super::*;

    /// In every file outside the clone, never in one inside.
    const OUTSIDE: &[u8] = b"OUTSIDE-THE-CLONE";

    #[derive(Debug, Clone)]
    enum Node {
        Dir,
        File(Vec<u8>),
        /// `{OUT}` stands for the directory next to the clone.
        Link(String),
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "Dockerfile", ".dockerignore", "d e", "ü", ".git", "x.log"])
            .prop_map(str::to_string)
    }

    fn rel_path() -> impl Strategy<Value = String> {
        prop::collection::vec(name(), 1..4).prop_map(|parts| parts.join("/"))
    }

    fn link_target() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "{OUT}",
                "{OUT}/secret",
                "{OUT}/Dockerfile",
                "/etc",
                "/etc/passwd",
                "/",
                "..",
                "../..",
                "../../..",
                "../../../../../../../../etc",
                "../outside",
                "../outside/secret",
                ".",
                "./",
                "nowhere",
                "",
            ])
            .prop_map(str::to_string),
            rel_path(),
            rel_path().prop_map(|p| format!("../{p}")),
        ]
    }

    fn node() -> impl Strategy<Value = Node> {
        prop_oneof![
            2 => Just(Node::Dir),
            3 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Node::File),
            3 => link_target().prop_map(Node::Link),
        ]
    }

    fn ignore_file() -> impl Strategy<Value = Option<String>> {
        prop::option::of(
            prop::collection::vec(
                prop_oneof![
                    prop::sample::select(vec![
                        "*",
                        "a",
                        "!a/b",
                        "**",
                        "**/Dockerfile",
                        "!Dockerfile",
                        "[",
                        "\\",
                        "a/*",
                        "!*",
                        "/b",
                        "../a",
                        "**/*.log",
                        "!.dockerignore",
                        "# c",
                        "[^a]",
                        "?",
                    ])
                    .prop_map(str::to_string),
                    rel_path(),
                ],
                0..5,
            )
            .prop_map(|lines| lines.join("\n")),
        )
    }

    fn choice(usual: &'static str) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just(usual.to_string()),
            1 => prop::sample::select(vec![".", "", "../outside", "/etc", "a/..", "./a", "a//b"])
                .prop_map(str::to_string),
            2 => rel_path(),
        ]
    }

    /// Builds the tree under `<tmp>/clone`, with `<tmp>/outside` next to it.
    fn build(tmp: &Path, tree: &[(String, Node)], ignore: &Option<String>) -> PathBuf {
        let root = tmp.join("clone");
        let outside = tmp.join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(outside.join("dir")).unwrap();
        for file in ["secret", "Dockerfile", "dir/Dockerfile"] {
            fs::write(outside.join(file), OUTSIDE).unwrap();
        }
        for (path, node) in tree {
            let path = root.join(path);
            // Parents that are files or links make this entry impossible: skip it.
            let _ = fs::create_dir_all(path.parent().unwrap());
            let _ = match node {
                Node::Dir => fs::create_dir_all(&path),
                Node::File(bytes) => fs::write(&path, [b"inside ".as_slice(), bytes].concat()),
                Node::Link(target) => symlink(target.replace("{OUT}", &outside.display().to_string()), &path),
            };
        }
        if let Some(text) = ignore {
            let _ = fs::write(root.join(".dockerignore"), text);
        }
        root
    }

    /// Every entry of `tar` is a real file, directory or symlink inside `context`, reached
    /// without following any symlink, with the same content or link target.
    fn check_tar(context: &Path, tar: &[u8]) -> Result<(), TestCaseError> {
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            prop_assert!(
                path.components().all(|c| matches!(c, Component::Normal(_))),
                "entry {} is not a plain relative path",
                path.display()
            );
            let mut here = context.to_path_buf();
            let parts: Vec<_> = path.components().collect();
            for part in &parts[..parts.len() - 1] {
                here.push(part);
                let meta = fs::symlink_metadata(&here).unwrap();
                prop_assert!(
                    meta.is_dir() && !meta.file_type().is_symlink(),
                    "{} was followed",
                    here.display()
                );
            }
            here.push(parts[parts.len() - 1]);
            let meta = fs::symlink_metadata(&here).unwrap();
            let kind = entry.header().entry_type();
            if kind.is_symlink() {
                prop_assert!(meta.file_type().is_symlink(), "{}", here.display());
                let target = entry.link_name().unwrap().unwrap().into_owned();
                prop_assert_eq!(target, fs::read_link(&here).unwrap());
            } else if kind.is_dir() {
                prop_assert!(meta.is_dir() && !meta.file_type().is_symlink(), "{}", here.display());
            } else {
                prop_assert!(meta.is_file(), "{} is packed as a file", here.display());
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                prop_assert!(!content.windows(OUTSIDE.len()).any(|w| w == OUTSIDE), "{}", here.display());
                prop_assert_eq!(content, fs::read(&here).unwrap());
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn fuzz_context_packer_never_leaves_the_clone(
            mut tree in prop::collection::vec((rel_path(), node()), 0..24),
            ignore in ignore_file(),
            context in choice("."),
            dockerfile in choice("Dockerfile"),
            add_dockerfiles in any::<bool>(),
        ) {
            if add_dockerfiles {
                for path in ["Dockerfile", "a/Dockerfile", "b/Dockerfile"] {
                    tree.push((path.to_string(), Node::File(b"FROM scratch".to_vec())));
                }
            }
            let tmp = tempfile::tempdir().unwrap();
            let root = build(tmp.path(), &tree, &ignore);
            match pack_context(&root, &context, &dockerfile) {
                Ok(tar) => {
                    let real_root = fs::canonicalize(&root).unwrap();
                    let real_context = fs::canonicalize(root.join(&context)).unwrap();
                    prop_assert!(real_context.starts_with(&real_root), "context {context:?} left the clone");
                    let real_dockerfile = fs::canonicalize(real_context.join(&dockerfile)).unwrap();
                    prop_assert!(real_dockerfile.starts_with(&real_context), "dockerfile {dockerfile:?} left");
                    check_tar(&real_context, &tar)?;
                }
                Err(failure) => {
                    prop_assert_eq!(failure.phase(), "context");
                    prop_assert!(!failure.reason().is_empty());
                }
            }
        }

        #[test]
        fn fuzz_dockerignore_parsing_and_matching_never_panic(
            text in prop_oneof!["\\PC{0,40}", any::<String>()],
            path in "[a-z*?!/.\\\\\\[\\]^-]{0,12}",
        ) {
            if let Ok(patterns) = parse_dockerignore(&text) {
                let _ = matches(&patterns, &path);
            }
        }
    }

    /// The generator must reach successful packs with symlinks in them, or the
    /// property above checks little.
    #[test]
    fn generated_trees_often_pack() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = (prop::collection::vec((rel_path(), node()), 0..24), ignore_file());
        let mut packed_with_links = 0;
        for _ in 0..200 {
            let (mut tree, ignore) = strategy.new_tree(&mut runner).unwrap().current();
            tree.push(("Dockerfile".into(), Node::File(b"FROM scratch".to_vec())));
            let tmp = tempfile::tempdir().unwrap();
            let root = build(tmp.path(), &tree, &ignore);
            if let Ok(tar) = pack_context(&root, ".", "Dockerfile") {
                let mut archive = tar::Archive::new(tar.as_slice());
                if archive.entries().unwrap().any(|e| e.unwrap().header().entry_type().is_symlink()) {
                    packed_with_links += 1;
                }
            }
        }
        assert!(packed_with_links >= 20, "only {packed_with_links} of 200 packs held symlinks");
    }
}
