//! Build secrets: named in the repository, valued on the build node.
//!
//! `build.secrets` ([`MountSecrets`], [`load_mounts`]) are files served byte for byte
//! through the BuildKit session to `RUN --mount=type=secret,id=NAME`: never build
//! arguments, so never in the image. The rest of this module's docs are about the
//! deprecated `build.secret_args` ([`SecretArgs`], [`load`]), which still work for one
//! release (the build log warns):
//!
//! A manifest lists the names (`[build] secret_args = ["NPM_TOKEN"]`); the value of each
//! is read from `<build_secrets_dir>/<app>/<NAME>` on the node that runs the build
//! (`build_secrets_dir` in `agent.toml`, default [`crate::config::DEFAULT_SECRETS_DIR`]),
//! so secrets are scoped per app and never live in the repository. A value is one line
//! of at most [`MAX_SECRET_BYTES`] bytes (a trailing newline is dropped); a missing or
//! unusable file fails the build naming the file, never the value.
//!
//! Values go to Docker as build arguments and nowhere else: not to the scheduler (so not
//! to raft or events), not in [`SecretArgs`]'s `Debug`, and every log line and failure
//! reason of the build passes through a [`Redactor`] that replaces each value with
//! `***` (so a Dockerfile that echoes one prints `***`). Masking covers the literal
//! value only: a Dockerfile that prints it transformed (base64, reversed) defeats it.
//! As Docker documents for build arguments, a value used by a `RUN` step is recorded in
//! that layer's history (`docker history`): use the secret in an earlier stage of a
//! multi-stage build so the final image does not carry it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use crate::error::Failure;

/// Longest secret value, in bytes.
pub const MAX_SECRET_BYTES: u64 = 4096;

/// What a redacted value is shown as.
pub const MASK: &str = "***";

/// Secret build arguments' values by name. `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretArgs {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for SecretArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.values.keys().map(|k| (k, MASK))).finish()
    }
}

impl SecretArgs {
    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Name and value pairs, for the Engine API's build arguments only.
    pub fn expose(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// True without any secret.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A [`Redactor`] for these values.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.values.values().cloned())
    }

    /// From name and value pairs (tests and tools; builds use [`load`]).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        SecretArgs { values: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }
}

/// Reads the values of `names` for `app` from `<dir>/<app>/<NAME>`. `app` must be a
/// valid app name and each name an identifier (the manifest and the job were checked),
/// so the path cannot leave `dir`.
pub fn load(dir: &Path, app: &str, names: &[String]) -> Result<SecretArgs, Failure> {
    let mut values = BTreeMap::new();
    for name in names {
        let path = dir.join(app).join(name);
        let fail = |why: String| {
            Failure::Setup(format!(
                "secret build argument {name} (build.secret_args) of app {app}: {why}; put its value, \
                 one line, in {} on every build node (readable by the agent only), or remove {name} \
                 from build.secret_args",
                path.display()
            ))
        };
        let bytes = read_secret_file(&path, MAX_SECRET_BYTES + 3).map_err(fail)?;
        let value = value_of(bytes).map_err(|why| fail(why.to_string()))?;
        values.insert(name.clone(), value);
    }
    Ok(SecretArgs { values })
}

/// Up to `limit` bytes of the regular file at `path`; the reason never quotes content.
fn read_secret_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    // Checked before opening: opening a FIFO would block the build.
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(format!("{} is not a regular file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("it is not on this node".into()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(bytes)
}

/// Longest secret file served to `RUN --mount=type=secret` (`build.secrets`), in bytes.
pub const MAX_MOUNT_SECRET_BYTES: u64 = 64 * 1024;

/// Lines of a mounted secret shorter than this are not masked in the log (a `}` or an
/// empty line of a config file would mask half the log).
pub const MIN_MASKED_LINE_CHARS: usize = 6;

/// Secret files by name, served through the BuildKit session to
/// `RUN --mount=type=secret,id=NAME` (`build.secrets`). Unlike [`SecretArgs`], a value is
/// a file, served byte for byte (an `.npmrc` of several lines, say). `Debug` shows names
/// only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MountSecrets {
    values: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for MountSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.values.keys().map(|k| (k, MASK))).finish()
    }
}

impl MountSecrets {
    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// True without any secret.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The content of `name`, for the build session only.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.values.get(name).map(Vec::as_slice)
    }

    /// A [`Redactor`] masking each line of every value (lines of at least
    /// [`MIN_MASKED_LINE_CHARS`] characters, trimmed).
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.values.values().flat_map(|v| {
            String::from_utf8_lossy(v)
                .lines()
                .map(str::trim)
                .filter(|l| l.chars().count() >= MIN_MASKED_LINE_CHARS)
                .map(str::to_string)
                .collect::<Vec<_>>()
        }))
    }

    /// From name and content pairs (tests and tools; builds use [`load_mounts`]).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        MountSecrets { values: pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect() }
    }
}

/// Reads the files of `names` (`build.secrets`) for `app` from `<dir>/<app>/<NAME>`; the
/// same path rules as [`load`].
pub fn load_mounts(dir: &Path, app: &str, names: &[String]) -> Result<MountSecrets, Failure> {
    let mut values = BTreeMap::new();
    for name in names {
        let path = dir.join(app).join(name);
        let fail = |why: String| {
            Failure::Setup(format!(
                "secret {name} (build.secrets) of app {app}: {why}; put it in {} on every build node \
                 (readable by the agent only), or remove {name} from build.secrets",
                path.display()
            ))
        };
        let bytes = read_secret_file(&path, MAX_MOUNT_SECRET_BYTES + 1).map_err(fail)?;
        if bytes.len() as u64 > MAX_MOUNT_SECRET_BYTES {
            return Err(fail("the file is larger than 64 KiB".into()));
        }
        if bytes.is_empty() {
            return Err(fail("the file is empty".into()));
        }
        values.insert(name.clone(), bytes);
    }
    Ok(MountSecrets { values })
}

/// The value a secret file holds: its text without one trailing newline. The reasons
/// never quote the value.
fn value_of(mut bytes: Vec<u8>) -> Result<String, &'static str> {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err("the value is longer than 4096 bytes");
    }
    let value = String::from_utf8(bytes).map_err(|_| "the value is not UTF-8 text")?;
    if value.is_empty() {
        return Err("the value is empty");
    }
    if value.chars().any(char::is_control) {
        // A line break would let a value slip past the line-by-line masking.
        return Err("the value holds a line break or another control character");
    }
    Ok(value)
}

/// Replaces known secret values in text with [`MASK`]. `Debug` shows how many.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is masked whole.
    values: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    /// Masks each of `values` (empty ones are ignored).
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Redactor { values }
    }

    /// Adds the values of `other`.
    pub fn extend(&mut self, other: &Redactor) {
        *self = Redactor::new(self.values.iter().chain(&other.values).cloned());
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), MASK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "tok-5ecr3t-value";

    fn dir_with(app: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(app)).unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(app).join(name), content).unwrap();
        }
        dir
    }

    #[test]
    fn values_come_from_the_apps_directory_without_the_newline() {
        let dir = dir_with("shop", &[("TOKEN", b"tok-5ecr3t-value\n"), ("KEY", b"k\r\n")]);
        let names = ["TOKEN".to_string(), "KEY".to_string()];
        let secrets = load(dir.path(), "shop", &names).unwrap();
        assert_eq!(secrets.expose().collect::<Vec<_>>(), [("KEY", "k"), ("TOKEN", VALUE)]);
        assert_eq!(secrets.names().collect::<Vec<_>>(), ["KEY", "TOKEN"]);
        let shown = format!("{secrets:?}");
        assert_eq!(shown, r#"{"KEY": "***", "TOKEN": "***"}"#);
        assert!(load(dir.path(), "blog", &names[..1]).is_err(), "another app's secrets are not shared");
    }

    #[test]
    fn a_missing_or_unusable_secret_names_the_file_and_the_fix_never_the_value() {
        let long = vec![b'x'; 5000];
        let dir = dir_with(
            "shop",
            &[
                ("EMPTY", b"\n"),
                ("TWO_LINES", b"tok-5ecr3t-value\nsecond\n"),
                ("NUL", b"tok-5ecr3t-value\0"),
                ("LONG", &long),
                ("BINARY", b"\xff\xfe"),
            ],
        );
        std::fs::create_dir(dir.path().join("shop/DIR")).unwrap();
        for (name, why) in [
            ("MISSING", "it is not on this node"),
            ("EMPTY", "the value is empty"),
            ("TWO_LINES", "line break"),
            ("NUL", "control character"),
            ("LONG", "longer than 4096 bytes"),
            ("BINARY", "not UTF-8"),
            ("DIR", "is not a regular file"),
        ] {
            let err = load(dir.path(), "shop", &[name.to_string()]).unwrap_err();
            assert_eq!(err.phase(), "setup");
            let reason = err.reason();
            let path = dir.path().join("shop").join(name);
            assert!(reason
                .starts_with(&format!("secret build argument {name} (build.secret_args) of app shop: ")));
            assert!(reason.contains(why), "{name}: {reason}");
            assert!(reason.contains(&format!("in {} on every build node", path.display())), "{reason}");
            assert!(reason.contains(&format!("or remove {name} from build.secret_args")), "{reason}");
            assert!(!reason.contains("5ecr3t") && !reason.contains("xxxx"), "{reason}");
        }
    }

    #[test]
    fn mounted_secrets_are_files_served_whole_and_masked_by_line() {
        let npmrc = b"//registry.example/:_authToken=tok-5ecr3t-value\n}\nalways-auth=true\n";
        let dir = dir_with("shop", &[("NPMRC", npmrc), ("EMPTY", b"")]);
        let secrets = load_mounts(dir.path(), "shop", &["NPMRC".to_string()]).unwrap();
        assert_eq!(secrets.get("NPMRC"), Some(&npmrc[..]), "served byte for byte");
        assert_eq!(secrets.get("OTHER"), None);
        assert_eq!(format!("{secrets:?}"), r#"{"NPMRC": "***"}"#);
        let r = secrets.redactor();
        assert_eq!(r.redact("x //registry.example/:_authToken=tok-5ecr3t-value }"), "x *** }");
        assert_eq!(r.redact("always-auth=true"), "***");
        for (name, why) in [("MISSING", "it is not on this node"), ("EMPTY", "the file is empty")] {
            let reason =
                load_mounts(dir.path(), "shop", &[name.to_string()]).unwrap_err().reason().to_string();
            assert!(
                reason.starts_with(&format!("secret {name} (build.secrets) of app shop: {why}")),
                "{reason}"
            );
            assert!(reason.contains(&format!("or remove {name} from build.secrets")), "{reason}");
        }
        let big = vec![b'x'; 70 * 1024];
        let dir = dir_with("shop", &[("BIG", &big)]);
        let reason = load_mounts(dir.path(), "shop", &["BIG".to_string()]).unwrap_err().reason().to_string();
        assert!(reason.contains("larger than 64 KiB") && !reason.contains("xxxx"), "{reason}");
    }

    #[test]
    fn redaction_masks_every_value_longest_first() {
        let r = Redactor::new(["abc".to_string(), "abcdef".to_string(), String::new()]);
        assert_eq!(r.redact("x abcdef y abc z"), "x *** y *** z");
        assert_eq!(r.redact("nothing here"), "nothing here");
        assert_eq!(Redactor::default().redact("a"), "a");
        let mut both = Redactor::new(["one1".to_string()]);
        both.extend(&Redactor::new(["two2".to_string()]));
        assert_eq!(both.redact("one1 two2"), "*** ***");
    }
}
