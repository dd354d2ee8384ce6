//! The app manifest: `slipway.toml` at the root of the app's repository.
//!
//! Everything but `name` is optional. Parsing is strict: unknown keys, wrong types and
//! values that would break the build or the Swarm service are refused with a message that
//! names the field as a dotted path (`run.replicas: …`, `run.persist[1]: …`), so a person
//! can fix the file without reading our source. Nothing is half-applied: a manifest is
//! either entirely valid or rejected.
//!
//! Two readers, one parser: the agent reads the file from the clone to build the image
//! (the `[build]` table), and sends the text with its result; the scheduler parses that
//! text again here and takes the release's run spec ([`Manifest::run_spec`]) from its own
//! parse, never from the run spec the agent reports. Pure: no file or network access.
//!
//! ```toml
//! name = "shop"
//! [build]
//! dockerfile = "Dockerfile"   # relative to `context`
//! context = "."               # relative to the repository root
//! target = "runtime"
//! args = { NODE_ENV = "production" }
//! secrets = ["NPM_TOKEN"]     # for RUN --mount=type=secret; values live on the build nodes
//! [run]
//! replicas = 2
//! port = 8080                 # the container port; the router reaches the app there
//! domains = ["shop.example.com"]   # beside <app>.<router domain>
//! publish = 5432              # a host port, only for what the router does not serve
//! constraints = ["node.labels.ssd == true"]
//! env = { LOG_LEVEL = "info" }
//! persist = ["/app/uploads", "/app/data"]
//! [run.healthcheck]
//! cmd = ["CMD", "/bin/check"]  # or ["CMD-SHELL", "curl -f …"], or a bare command
//! interval = "5s"
//! retries = 3
//! ```
//!
//! Healthcheck commands follow Docker's `HEALTHCHECK` forms: `["CMD", prog, args…]`,
//! `["CMD-SHELL", "shell command"]` or `["NONE"]` (turn off the image's own check).
//! For convenience a bare command (`["/bin/check", "--quick"]`) is taken as
//! `["CMD", "/bin/check", "--quick"]` and a plain string (`cmd = "curl -f localhost"`)
//! as `["CMD-SHELL", "curl -f localhost"]`, like Compose's `test`.
//!
//! **Build arguments.** `args` are written in the repository, so they are not secret
//! (their values are still never logged). A secret build argument (a registry token for
//! `npm install`, say) is only *named* in `secret_args`; its value is read on the build
//! node from `<build_secrets_dir>/<app>/<NAME>` (`agent.toml`, default
//! `/etc/slipway/build-secrets`), passed to Docker as a build argument, masked as `***`
//! in every log line and failure reason, and never sent to the scheduler (the agent's
//! `pipeline::secrets` module says how, and what masking cannot do). A name may be in
//! `args` or `secret_args`, not both.
//!
//! **Build secrets.** `secrets = ["NPM_TOKEN"]` names files the build node holds at
//! `<build_secrets_dir>/<app>/<NAME>`; BuildKit mounts each where the Dockerfile asks
//! (`RUN --mount=type=secret,id=NPM_TOKEN cat /run/secrets/NPM_TOKEN`), through the
//! agent's build session: never a build argument, never in the image's history or config,
//! never sent to the scheduler. `secret_args` still works for this release (the build log
//! warns and names the move to `secrets`); a name may be in only one of `args`,
//! `secret_args` and `secrets`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use slipway_proto::validate;

/// Name of the manifest file at the root of an app's repository.
pub const MANIFEST_FILE: &str = "slipway.toml";

/// Largest `slipway.toml` accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// Most replicas a manifest may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// Most secret build arguments a manifest may name.
pub const MAX_SECRET_ARGS: usize = 64;

/// Most host names (`run.domains`) and placement constraints a manifest may list.
pub const MAX_DOMAINS: usize = 32;

/// A parsed and validated `slipway.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The app's name; must match the app the build was queued for.
    pub name: String,
    /// How the image is built.
    #[serde(default)]
    pub build: BuildSection,
    /// How the image runs.
    #[serde(default)]
    pub run: RunSection,
}

/// The `[build]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildSection {
    /// Path of the Dockerfile, relative to [`BuildSection::context`] (as in Compose).
    pub dockerfile: String,
    /// Build context directory, relative to the repository root.
    pub context: String,
    /// Build stage to stop at (`docker build --target`).
    pub target: Option<String>,
    /// Build arguments (`--build-arg`) written in the repository: not secret, though
    /// their values are never logged.
    pub args: BTreeMap<String, String>,
    /// Names of secret build arguments, valued on the build node (module docs).
    /// Deprecated: the values end up in the image's history; use `secrets`.
    pub secret_args: Vec<String>,
    /// Names of secrets served to `RUN --mount=type=secret,id=NAME`, valued on the build
    /// node (module docs).
    pub secrets: Vec<String>,
}

impl Default for BuildSection {
    fn default() -> Self {
        Self {
            dockerfile: "Dockerfile".into(),
            context: ".".into(),
            target: None,
            args: BTreeMap::new(),
            secret_args: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// The `[run]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Number of tasks of the Swarm service, 1 to [`MAX_REPLICAS`].
    pub replicas: u32,
    /// Container port the app listens on (also its `$PORT`); the router reaches it there.
    pub port: Option<u16>,
    /// Host port published to [`RunSection::port`] on the nodes, for apps the router
    /// does not serve.
    pub publish: Option<u16>,
    /// Host names the router serves the app at, beside `<app>.<router domain>`.
    pub domains: Vec<String>,
    /// Swarm placement constraints of the tasks.
    pub constraints: Vec<String>,
    /// Environment of the containers.
    pub env: BTreeMap<String, String>,
    /// Absolute container paths kept on shared storage across releases.
    pub persist: Vec<String>,
    /// The service's healthcheck (rolling updates wait for it).
    pub healthcheck: Option<HealthcheckSection>,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            replicas: 1,
            port: None,
            publish: None,
            domains: Vec::new(),
            constraints: Vec::new(),
            env: BTreeMap::new(),
            persist: Vec::new(),
            healthcheck: None,
        }
    }
}

/// The `[run.healthcheck]` table. Durations are written like `"5s"`, `"1m30s"`, `"500ms"`
/// (see [`parse_duration`]); an omitted field keeps Docker's default.
///
/// This is the TOML input shape only, kept so omitted fields and field-named errors can be
/// told apart; [`HealthcheckSection::to_wire`] turns it into the one healthcheck type on the
/// wire, `slipway_proto::Healthcheck`, which is what leaves the agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckSection {
    /// Normalised to Docker's form: `CMD …`, `CMD-SHELL …` or `NONE` first.
    #[serde(deserialize_with = "healthcheck_cmd")]
    pub cmd: Vec<String>,
    /// Time between checks.
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    /// Time one check may take.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// Grace period after start during which failures do not count.
    #[serde(default, deserialize_with = "duration")]
    pub start_period: Option<Duration>,
    /// Consecutive failures that make a task unhealthy.
    pub retries: Option<u32>,
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `run.healthcheck.interval` or `run.persist[0]`.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a `slipway.toml` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The file is larger than [`MAX_MANIFEST_BYTES`].
    #[error("slipway.toml is {bytes} bytes; the limit is {MAX_MANIFEST_BYTES} bytes")]
    TooLarge {
        /// Size of the file that was refused.
        bytes: usize,
    },
    /// The file is not valid TOML.
    #[error("slipway.toml is not valid TOML: {0}")]
    Syntax(String),
    /// Fields with wrong types or values, every one that was found.
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl ManifestError {
    /// The fields this error is about (empty for size and syntax errors).
    pub fn fields(&self) -> Vec<&str> {
        match self {
            ManifestError::Invalid(errors) => errors.iter().map(|e| e.field.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

impl Manifest {
    /// Parses and validates the text of a `slipway.toml`.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { bytes: text.len() });
        }
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ManifestError::Syntax(with_line(text, e.message(), e.span())))?;
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.inner();
            let reason = with_line(text, inner.message(), inner.span());
            let field = if field == "." { "manifest".to_string() } else { field };
            ManifestError::Invalid(vec![FieldError { field, reason }])
        })?;
        let errors = manifest.check();
        if errors.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestError::Invalid(errors))
        }
    }

    /// Semantic checks that serde's types cannot express.
    fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut fail = |field: String, reason: String| errors.push(FieldError { field, reason });

        if let Err(e) = validate::app_name(&self.name) {
            fail("name".into(), e.reason);
        }

        let b = &self.build;
        if let Err(reason) = relative_path(&b.dockerfile) {
            fail("build.dockerfile".into(), reason);
        } else if b.dockerfile == "." || b.dockerfile.ends_with('/') {
            fail("build.dockerfile".into(), format!("{:?} names a directory, not a file", b.dockerfile));
        }
        if let Err(reason) = relative_path(&b.context) {
            fail("build.context".into(), reason);
        }
        if let Some(target) = &b.target {
            let ok = target.starts_with(|c: char| c.is_ascii_alphabetic())
                && target.len() <= 128
                && target.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                fail(
                    "build.target".into(),
                    format!(
                        "{target:?} is not a build stage name (a letter, then letters, digits, '-', '_', '.')"
                    ),
                );
            }
        }
        for key in b.args.keys() {
            if !is_identifier(key) {
                fail(
                    "build.args".into(),
                    format!("{key:?} is not a valid argument name (letters, digits, '_'; not first a digit)"),
                );
            }
        }
        for (key, value) in &b.args {
            if value.contains('\0') {
                // Never echo the value.
                fail(format!("build.args.{key}"), "the value contains a NUL character".into());
            }
        }
        if b.secret_args.len() > MAX_SECRET_ARGS {
            fail(
                "build.secret_args".into(),
                format!("names {} arguments; the limit is {MAX_SECRET_ARGS}", b.secret_args.len()),
            );
        }
        for (i, name) in b.secret_args.iter().enumerate().take(MAX_SECRET_ARGS) {
            let field = format!("build.secret_args[{i}]");
            if !is_identifier(name) {
                let name: String = name.chars().take(64).collect();
                fail(
                    field,
                    format!(
                        "{name:?} is not a valid argument name (letters, digits, '_'; not first a digit)"
                    ),
                );
            } else if b.secret_args[..i].contains(name) {
                fail(field, format!("{name:?} is listed twice"));
            } else if b.args.contains_key(name) {
                fail(
                    field,
                    format!(
                        "{name:?} is also in build.args; a secret's value comes from the build node, \
                         so remove it from build.args"
                    ),
                );
            }
        }

        if b.secrets.len() > MAX_SECRET_ARGS {
            fail(
                "build.secrets".into(),
                format!("names {} secrets; the limit is {MAX_SECRET_ARGS}", b.secrets.len()),
            );
        }
        for (i, name) in b.secrets.iter().enumerate().take(MAX_SECRET_ARGS) {
            let field = format!("build.secrets[{i}]");
            if !is_identifier(name) {
                let name: String = name.chars().take(64).collect();
                fail(
                    field,
                    format!("{name:?} is not a valid secret name (letters, digits, '_'; not first a digit)"),
                );
            } else if b.secrets[..i].contains(name) {
                fail(field, format!("{name:?} is listed twice"));
            } else if b.args.contains_key(name) || b.secret_args.contains(name) {
                fail(
                    field,
                    format!(
                        "{name:?} is also in build.args or build.secret_args; a secret is mounted, not \
                         passed as a build argument, so remove it from there"
                    ),
                );
            }
        }

        let r = &self.run;
        if !(1..=MAX_REPLICAS).contains(&r.replicas) {
            fail("run.replicas".into(), format!("must be 1 to {MAX_REPLICAS}, got {}", r.replicas));
        }
        if r.port == Some(0) {
            fail("run.port".into(), "must be 1 to 65535, got 0 (omit it if the app listens on none)".into());
        }
        match (r.publish, r.port) {
            (Some(0), _) => fail(
                "run.publish".into(),
                "must be 1 to 65535, got 0 (omit it to publish no host port)".into(),
            ),
            (Some(_), None) => fail(
                "run.publish".into(),
                "publishes run.port on the hosts, but run.port is not set; add the port the app listens on"
                    .into(),
            ),
            _ => {}
        }
        if r.domains.len() > MAX_DOMAINS {
            fail(
                "run.domains".into(),
                format!("lists {} names; the limit is {MAX_DOMAINS}", r.domains.len()),
            );
        }
        for (i, domain) in r.domains.iter().enumerate().take(MAX_DOMAINS) {
            if let Err(e) = validate::host_name(domain) {
                fail(format!("run.domains[{i}]"), e.reason);
            } else if r.domains[..i].contains(domain) {
                fail(format!("run.domains[{i}]"), format!("{domain:?} is listed twice"));
            }
        }
        if !r.domains.is_empty() && r.port.is_none() {
            fail(
                "run.domains".into(),
                "the router needs run.port, the port the app listens on, to serve these names".into(),
            );
        }
        if r.constraints.len() > MAX_DOMAINS {
            fail(
                "run.constraints".into(),
                format!("lists {} constraints; the limit is {MAX_DOMAINS}", r.constraints.len()),
            );
        }
        for (i, constraint) in r.constraints.iter().enumerate().take(MAX_DOMAINS) {
            if let Err(e) = validate::placement_constraint(constraint) {
                fail(format!("run.constraints[{i}]"), e.reason);
            }
        }
        for (key, value) in &r.env {
            if !is_identifier(key) {
                fail(
                    "run.env".into(),
                    format!("{key:?} is not a valid variable name (letters, digits, '_'; not first a digit)"),
                );
            } else if value.contains('\0') {
                fail(format!("run.env.{key}"), "the value contains a NUL character".into());
            }
        }
        for (i, path) in r.persist.iter().enumerate() {
            if let Err(reason) = persist_path(path) {
                fail(format!("run.persist[{i}]"), reason);
            } else if r.persist[..i].contains(path) {
                fail(format!("run.persist[{i}]"), format!("{path:?} is listed twice"));
            }
        }
        if let Some(h) = &r.healthcheck {
            if let Err(reason) = check_cmd(&h.cmd) {
                fail("run.healthcheck.cmd".into(), reason);
            }
            if let Some(retries) = h.retries {
                if !(1..=100).contains(&retries) {
                    fail(
                        "run.healthcheck.retries".into(),
                        format!("must be 1 to 100, got {retries} (omit it for Docker's default of 3)"),
                    );
                }
            }
        }
        errors
    }

    /// The `[run]` part as it travels to the scheduler (0 means "not set" for the ports
    /// and the healthcheck's durations and retries: Docker's defaults apply).
    pub fn run_spec(&self) -> slipway_proto::RunSpec {
        let r = &self.run;
        slipway_proto::RunSpec {
            replicas: r.replicas,
            port: r.port.map(u32::from).unwrap_or(0),
            env: r.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            persist: r.persist.clone(),
            healthcheck: r.healthcheck.as_ref().map(HealthcheckSection::to_wire),
            publish: r.publish.map(u32::from).unwrap_or(0),
            domains: r.domains.clone(),
            constraints: r.constraints.clone(),
        }
    }
}

impl HealthcheckSection {
    /// The section as the wire's healthcheck: an omitted duration or retry count becomes 0,
    /// "Docker's default" (`parse_duration` keeps durations whole milliseconds and in range).
    pub fn to_wire(&self) -> slipway_proto::Healthcheck {
        let ms = |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        slipway_proto::Healthcheck {
            cmd: self.cmd.clone(),
            interval_ms: ms(self.interval),
            timeout_ms: ms(self.timeout),
            retries: self.retries.unwrap_or(0),
            start_period_ms: ms(self.start_period),
        }
    }
}

/// Appends ` (line N)` when the error has a position in the text.
fn with_line(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> String {
    let message = message.trim_end();
    match span {
        Some(span) if span.start <= text.len() => {
            let line = text.as_bytes()[..span.start].iter().filter(|b| **b == b'\n').count() + 1;
            format!("{message} (line {line})")
        }
        _ => message.to_string(),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: names that work as shell variables and build arguments.
fn is_identifier(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 256
}

/// A path inside the repository: relative, no `..`, no control characters.
fn relative_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty (use \".\" for the repository root)".into());
    }
    if p.chars().any(char::is_control) {
        return Err(format!("{p:?} contains control characters"));
    }
    let path = Path::new(p);
    if path.is_absolute() {
        return Err(format!("{p:?} is absolute; give a path relative to the repository"));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{p:?} contains '..'; it must stay inside the repository"));
    }
    Ok(())
}

/// A `persist` entry: an absolute container path below `/`, without `..`.
fn persist_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must be an absolute path in the container, like \"/app/data\""));
    }
    if p.chars().any(char::is_control) {
        return Err(format!("{p:?} contains control characters"));
    }
    let path = Path::new(p);
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{p:?} contains '..'"));
    }
    if !path.components().any(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("{p:?} is the container's root; name a directory below it"));
    }
    Ok(())
}

fn check_cmd(cmd: &[String]) -> Result<(), String> {
    match cmd.first().map(String::as_str) {
        None => Err("must not be empty".into()),
        Some("CMD") if cmd.len() < 2 => Err("[\"CMD\"] needs a program after it".into()),
        Some("CMD") if cmd[1].is_empty() => Err("the program after \"CMD\" is empty".into()),
        Some("CMD-SHELL") if cmd.len() != 2 || cmd[1].trim().is_empty() => {
            Err("[\"CMD-SHELL\", …] takes exactly one non-empty shell command".into())
        }
        Some("NONE") if cmd.len() != 1 => Err("[\"NONE\"] takes nothing after it".into()),
        _ if cmd.iter().any(|a| a.contains('\0')) => Err("contains a NUL character".into()),
        _ => Ok(()),
    }
}

/// Accepts a shell string or an array of strings; normalises to Docker's tagged form.
fn healthcheck_cmd<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct CmdVisitor;
    impl<'de> Visitor<'de> for CmdVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings like [\"CMD\", \"/bin/check\"] or a shell command string")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<String>, E> {
            Ok(vec!["CMD-SHELL".into(), s.into()])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut cmd = Vec::new();
            while let Some(arg) = seq.next_element::<String>()? {
                cmd.push(arg);
            }
            match cmd.first().map(String::as_str) {
                None | Some("CMD" | "CMD-SHELL" | "NONE") => {}
                Some(_) => cmd.insert(0, "CMD".into()),
            }
            Ok(cmd)
        }
    }
    d.deserialize_any(CmdVisitor)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map(Some).map_err(de::Error::custom)
}

/// Parses `"5s"`, `"1m30s"`, `"500ms"`, `"2h"` with [`humantime::parse_duration`]: numbers
/// each followed by a unit (`ms`, `s`, `m`, `h`, and humantime's others such as `sec`, `min`,
/// `d`). Two forms humantime takes are refused, as the manifest always did: spaces (`"5 s"`)
/// and fractions (`"1.5s"`). Zero is refused (omit the field to keep Docker's default), and
/// so is anything that is not a whole number of milliseconds, the unit on the wire.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &dyn fmt::Display| {
        Err(format!("invalid duration {text:?}: {why} (write it like \"5s\", \"1m30s\", \"500ms\")"))
    };
    if text.contains(|c: char| c.is_whitespace()) {
        return bad(&"write it without spaces");
    }
    if text.contains('.') {
        return bad(&"write a whole number of each unit, such as \"1s500ms\"");
    }
    let duration = match humantime::parse_duration(text) {
        Ok(duration) => duration,
        Err(err) => return bad(&err),
    };
    if duration.is_zero() {
        return bad(&"it must be longer than zero");
    }
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return bad(&"it must be a whole number of milliseconds");
    }
    if u64::try_from(duration.as_millis()).is_err() {
        return bad(&"it is too long");
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
name = "shop"
[build]
dockerfile = "Dockerfile"
context = "."
target = "runtime"
args = { NODE_ENV = "production" }
[run]
replicas = 2
port = 8080
env = { LOG_LEVEL = "info" }
persist = ["/app/uploads", "/app/data"]
[run.healthcheck]
cmd = ["CMD", "/bin/check"]
interval = "5s"
retries = 3
"#;

    /// Parses `text`, expects a rejection, and checks that it names `field`.
    fn rejected(text: &str, field: &str) -> String {
        let err = Manifest::parse(text).expect_err(text);
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{field}: ")) || message.contains(&format!("; {field}: ")),
            "error for {text:?} should name {field}: {message}"
        );
        message
    }

    #[test]
    fn the_design_example_parses_into_the_expected_run_spec() {
        let m = Manifest::parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(m.name, "shop");
        assert_eq!(m.build.dockerfile, "Dockerfile");
        assert_eq!(m.build.context, ".");
        assert_eq!(m.build.target.as_deref(), Some("runtime"));
        assert_eq!(m.build.args["NODE_ENV"], "production");
        let run = m.run_spec();
        assert_eq!(run.replicas, 2);
        assert_eq!(run.port, 8080);
        assert_eq!(run.env["LOG_LEVEL"], "info");
        assert_eq!(run.persist, ["/app/uploads", "/app/data"]);
        let h = run.healthcheck.unwrap();
        assert_eq!(h.cmd, ["CMD", "/bin/check"]);
        assert_eq!(h.interval_ms, 5000);
        assert_eq!((h.timeout_ms, h.start_period_ms), (0, 0));
        assert_eq!(h.retries, 3);
    }

    #[test]
    fn routing_fields_are_checked_and_travel_to_the_scheduler() {
        let m = Manifest::parse(
            "name = \"db\"\n[run]\nport = 5432\npublish = 15432\ndomains = [\"db.example.com\"]\n\
             constraints = [\"node.labels.ssd == true\"]\n",
        )
        .unwrap();
        let run = m.run_spec();
        assert_eq!((run.port, run.publish), (5432, 15432));
        assert_eq!(run.domains, ["db.example.com"]);
        assert_eq!(run.constraints, ["node.labels.ssd == true"]);
        let msg = rejected("name = \"a\"\n[run]\npublish = 80\n", "run.publish");
        assert!(msg.contains("run.port is not set"), "{msg}");
        rejected("name = \"a\"\n[run]\nport = 80\npublish = 0\n", "run.publish");
        let msg = rejected(
            "name = \"a\"\n[run]\nport = 80\ndomains = [\"ok.example\", \"Bad.example\"]\n",
            "run.domains[1]",
        );
        assert!(msg.contains("lowercase"), "{msg}");
        let msg = rejected(
            "name = \"a\"\n[run]\nport = 80\ndomains = [\"a.example\", \"a.example\"]\n",
            "run.domains[1]",
        );
        assert!(msg.contains("twice"), "{msg}");
        let msg = rejected("name = \"a\"\n[run]\ndomains = [\"a.example\"]\n", "run.domains");
        assert!(msg.contains("needs run.port"), "{msg}");
        let msg =
            rejected("name = \"a\"\n[run]\nconstraints = [\"node.labels.x = 1\"]\n", "run.constraints[0]");
        assert!(msg.contains("=="), "{msg}");
    }

    #[test]
    fn the_example_apps_manifest_parses() {
        let m = Manifest::parse(include_str!("../../examples/hello/slipway.toml")).unwrap();
        assert_eq!(m.name, "hello");
        let run = m.run_spec();
        assert_eq!((run.replicas, run.port), (1, 8080));
        assert_eq!(run.healthcheck.unwrap().interval_ms, 2000);
    }

    #[test]
    fn only_the_name_is_required() {
        let m = Manifest::parse("name = \"web\"\n").unwrap();
        assert_eq!(m.build, BuildSection::default());
        assert_eq!(m.run, RunSection::default());
        let run = m.run_spec();
        assert_eq!((run.replicas, run.port), (1, 0));
        assert!(run.healthcheck.is_none());
        rejected("[run]\nreplicas = 2\n", "manifest");
        assert!(Manifest::parse("").unwrap_err().to_string().contains("missing field `name`"));
    }

    #[test]
    fn type_errors_name_the_dotted_field_and_line() {
        let msg = rejected("name = \"shop\"\n[run]\nreplicas = \"two\"\n", "run.replicas");
        assert!(msg.contains("invalid type: string \"two\", expected u32"), "{msg}");
        assert!(msg.contains("(line 3)"), "{msg}");
        let msg = rejected("name = \"shop\"\n[run]\nport = 70000\n", "run.port");
        assert!(msg.contains("u16"), "{msg}");
        rejected("name = \"shop\"\n[run]\npersist = [\"/a\", 3]\n", "run.persist[1]");
        rejected("name = \"shop\"\n[run]\nenv = { A = 1 }\n", "run.env.A");
        rejected("name = 5\n", "name");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let msg = rejected("name = \"shop\"\n[run]\nreplica = 2\n", "run.replica");
        assert!(msg.contains("unknown field `replica`"), "{msg}");
        let msg = rejected("name = \"shop\"\n[deploy]\nx = 1\n", "deploy");
        assert!(msg.contains("unknown field `deploy`"), "{msg}");
        rejected(
            "name = \"shop\"\n[run.healthcheck]\ncmd = \"true\"\nintervl = \"5s\"\n",
            "run.healthcheck.intervl",
        );
    }

    #[test]
    fn syntax_errors_and_oversized_files_are_refused() {
        let err = Manifest::parse("name = \"shop\n").unwrap_err();
        assert!(matches!(err, ManifestError::Syntax(_)), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        let big = format!("name = \"shop\"\n# {}\n", "x".repeat(MAX_MANIFEST_BYTES));
        let err = Manifest::parse(&big).unwrap_err();
        assert!(matches!(err, ManifestError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("limit is 65536 bytes"), "{err}");
    }

    #[test]
    fn the_name_must_be_an_app_name() {
        let msg = rejected("name = \"Shop_1\"\n", "name");
        assert!(msg.contains("lowercase"), "{msg}");
        rejected("name = \"\"\n", "name");
    }

    #[test]
    fn replicas_and_port_have_bounds() {
        rejected("name = \"a\"\n[run]\nreplicas = 0\n", "run.replicas");
        let msg = rejected("name = \"a\"\n[run]\nreplicas = 1001\n", "run.replicas");
        assert!(msg.contains("1 to 1000"), "{msg}");
        rejected("name = \"a\"\n[run]\nport = 0\n", "run.port");
        rejected("name = \"a\"\n[run]\nport = -1\n", "run.port");
        let m = Manifest::parse("name = \"a\"\n[run]\nreplicas = 1000\nport = 65535\n").unwrap();
        assert_eq!(m.run_spec().port, 65535);
    }

    #[test]
    fn persist_paths_are_absolute_and_stay_put() {
        for (bad, why) in [
            ("app/data", "absolute"),
            ("/app/../etc", "'..'"),
            ("/", "root"),
            ("//", "root"),
            ("/a\n", "control"),
        ] {
            let text = format!("name = \"a\"\n[run]\npersist = [\"/ok\", {bad:?}]\n");
            let msg = rejected(&text, "run.persist[1]");
            assert!(msg.contains(why), "{msg}");
        }
        rejected("name = \"a\"\n[run]\npersist = [\"/d\", \"/d\"]\n", "run.persist[1]");
    }

    #[test]
    fn build_paths_stay_inside_the_repository() {
        for field in ["dockerfile", "context"] {
            for bad in ["/etc/passwd", "../x", "a/../../b", ""] {
                let text = format!("name = \"a\"\n[build]\n{field} = {bad:?}\n");
                rejected(&text, &format!("build.{field}"));
            }
        }
        rejected("name = \"a\"\n[build]\ndockerfile = \"docker/\"\n", "build.dockerfile");
        let m =
            Manifest::parse("name = \"a\"\n[build]\ncontext = \"web\"\ndockerfile = \"ops/Dockerfile\"\n")
                .unwrap();
        assert_eq!((m.build.context.as_str(), m.build.dockerfile.as_str()), ("web", "ops/Dockerfile"));
    }

    #[test]
    fn names_of_variables_arguments_and_stages_are_checked() {
        let msg = rejected("name = \"a\"\n[run]\nenv = { \"1X\" = \"v\" }\n", "run.env");
        assert!(msg.contains("\"1X\""), "{msg}");
        rejected("name = \"a\"\n[run]\nenv = { \"A-B\" = \"v\" }\n", "run.env");
        rejected("name = \"a\"\n[build]\nargs = { \"X Y\" = \"v\" }\n", "build.args");
        rejected("name = \"a\"\n[build]\ntarget = \"-x\"\n", "build.target");
        rejected("name = \"a\"\n[build]\ntarget = \"a b\"\n", "build.target");
    }

    #[test]
    fn build_secrets_are_names_only_and_in_one_list() {
        let m = Manifest::parse("name = \"a\"\n[build]\nsecrets = [\"NPM_TOKEN\", \"npmrc\"]\n").unwrap();
        assert_eq!(m.build.secrets, ["NPM_TOKEN", "npmrc"]);
        rejected("name = \"a\"\n[build]\nsecrets = [\"../x\"]\n", "build.secrets[0]");
        rejected("name = \"a\"\n[build]\nsecrets = [\"T\", \"T\"]\n", "build.secrets[1]");
        let msg =
            rejected("name = \"a\"\n[build]\nsecret_args = [\"T\"]\nsecrets = [\"T\"]\n", "build.secrets[0]");
        assert!(msg.contains("mounted, not passed as a build argument"), "{msg}");
        rejected("name = \"a\"\n[build]\nargs = { T = \"x\" }\nsecrets = [\"T\"]\n", "build.secrets[0]");
        rejected("name = \"a\"\n[build]\nsecrets = \"T\"\n", "build.secrets");
    }

    #[test]
    fn secret_values_are_not_echoed() {
        let msg =
            rejected("name = \"a\"\n[build]\nargs = { TOKEN = \"s3cr3t\\u0000\" }\n", "build.args.TOKEN");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn secret_args_are_names_only() {
        let m = Manifest::parse(
            "name = \"a\"\n[build]\nargs = { MODE = \"prod\" }\nsecret_args = [\"NPM_TOKEN\", \"_KEY2\"]\n",
        )
        .unwrap();
        assert_eq!(m.build.secret_args, ["NPM_TOKEN", "_KEY2"]);
        let msg =
            rejected("name = \"a\"\n[build]\nsecret_args = [\"OK\", \"A-B\"]\n", "build.secret_args[1]");
        assert!(msg.contains("\"A-B\" is not a valid argument name"), "{msg}");
        let msg = rejected("name = \"a\"\n[build]\nsecret_args = [\"T\", \"T\"]\n", "build.secret_args[1]");
        assert!(msg.contains("listed twice"), "{msg}");
        let msg = rejected(
            "name = \"a\"\n[build]\nargs = { T = \"x\" }\nsecret_args = [\"T\"]\n",
            "build.secret_args[0]",
        );
        assert!(msg.contains("also in build.args") && msg.contains("remove it from build.args"), "{msg}");
        let many: Vec<String> = (0..65).map(|i| format!("\"S{i}\"")).collect();
        let msg = rejected(
            &format!("name = \"a\"\n[build]\nsecret_args = [{}]\n", many.join(", ")),
            "build.secret_args",
        );
        assert!(msg.contains("names 65 arguments; the limit is 64"), "{msg}");
        rejected("name = \"a\"\n[build]\nsecret_args = { T = \"value\" }\n", "build.secret_args");
    }

    #[test]
    fn healthcheck_commands_take_docker_forms() {
        let cmd = |spec: &str| {
            let text = format!("name = \"a\"\n[run.healthcheck]\ncmd = {spec}\n");
            Manifest::parse(&text).map(|m| m.run.healthcheck.unwrap().cmd)
        };
        assert_eq!(cmd(r#"["CMD", "/bin/check", "-q"]"#).unwrap(), ["CMD", "/bin/check", "-q"]);
        assert_eq!(cmd(r#"["CMD-SHELL", "curl -f x"]"#).unwrap(), ["CMD-SHELL", "curl -f x"]);
        assert_eq!(cmd(r#"["/bin/check"]"#).unwrap(), ["CMD", "/bin/check"]);
        assert_eq!(cmd(r#""curl -f localhost""#).unwrap(), ["CMD-SHELL", "curl -f localhost"]);
        assert_eq!(cmd(r#"["NONE"]"#).unwrap(), ["NONE"]);
        for bad in
            [r#"[]"#, r#"["CMD"]"#, r#"["CMD-SHELL"]"#, r#"["CMD-SHELL", "a", "b"]"#, r#"["NONE", "x"]"#]
        {
            let text = format!("name = \"a\"\n[run.healthcheck]\ncmd = {bad}\n");
            rejected(&text, "run.healthcheck.cmd");
        }
        let msg = rejected("name = \"a\"\n[run.healthcheck]\ncmd = 5\n", "run.healthcheck.cmd");
        assert!(msg.contains("array of strings"), "{msg}");
        rejected("name = \"a\"\n[run.healthcheck]\ninterval = \"5s\"\n", "run.healthcheck");
        rejected("name = \"a\"\n[run.healthcheck]\ncmd = \"true\"\nretries = 0\n", "run.healthcheck.retries");
    }

    #[test]
    fn healthcheck_durations_parse() {
        let text = "name = \"a\"\n[run.healthcheck]\ncmd = \"true\"\ninterval = \"1m30s\"\n\
                    timeout = \"500ms\"\nstart_period = \"2h\"\n";
        let h = Manifest::parse(text).unwrap().run_spec().healthcheck.unwrap();
        assert_eq!((h.interval_ms, h.timeout_ms, h.start_period_ms), (90_000, 500, 7_200_000));
        for bad in ["5", "5x", "s", "", "0s", "1.5s", "5 s", "99999999999999999999h"] {
            let text = format!("name = \"a\"\n[run.healthcheck]\ncmd = \"true\"\ntimeout = {bad:?}\n");
            let msg = rejected(&text, "run.healthcheck.timeout");
            assert!(msg.contains("invalid duration"), "{msg}");
        }
    }

    #[test]
    fn healthcheck_durations_take_humantime_units_in_whole_milliseconds() {
        let text = "name = \"a\"\n[run.healthcheck]\ncmd = \"true\"\ninterval = \"1min5sec\"\n\
                    timeout = \"1500000us\"\nstart_period = \"1d\"\n";
        let h = Manifest::parse(text).unwrap().run_spec().healthcheck.unwrap();
        assert_eq!((h.interval_ms, h.timeout_ms, h.start_period_ms), (65_000, 1_500, 86_400_000));
        for bad in ["1ns", "1500us", " 5s", "5s ", "+5s", "-5s", "5S"] {
            let text = format!("name = \"a\"\n[run.healthcheck]\ncmd = \"true\"\ninterval = {bad:?}\n");
            let msg = rejected(&text, "run.healthcheck.interval");
            assert!(msg.contains("invalid duration"), "{msg}");
        }
    }

    #[test]
    fn every_semantic_error_is_reported_at_once() {
        let err = Manifest::parse("name = \"A\"\n[run]\nreplicas = 0\npersist = [\"x\"]\n").unwrap_err();
        assert_eq!(err.fields(), ["name", "run.replicas", "run.persist[0]"]);
    }
}

/// Property tests: the parser never panics, and whatever it accepts holds its promises.
/// `PROPTEST_CASES=200000 cargo test --release -p slipway-common fuzz_` runs them long.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    use super::*;

    fn toml_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_./-]{0,12}",
            Just("/".to_string()),
            Just("..".to_string()),
            Just("../x".to_string()),
            Just("a/../../b".to_string()),
            Just("/etc/passwd".to_string()),
            Just("5s".to_string()),
            Just("1m30s".to_string()),
            Just("0s".to_string()),
            Just("99999999999999999999h".to_string()),
            Just("CMD".to_string()),
            Just("CMD-SHELL".to_string()),
            Just("NONE".to_string()),
            "\\PC{0,8}",
            any::<String>(),
        ]
        .prop_map(|s| format!("{s:?}").replace("\\u{", "\\u{0"))
    }

    fn toml_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            toml_string(),
            any::<i64>().prop_map(|n| n.to_string()),
            (0u32..70_000).prop_map(|n| n.to_string()),
            Just("0".to_string()),
            Just("1e308".to_string()),
            Just("nan".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            Just("1979-05-27T07:32:00Z".to_string()),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(", "))),
                prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                    let kv: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", kv.join(", "))
                }),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "name",
                "dockerfile",
                "context",
                "target",
                "args",
                "secret_args",
                "replicas",
                "port",
                "env",
                "persist",
                "healthcheck",
                "cmd",
                "interval",
                "timeout",
                "start_period",
                "retries",
                "build",
                "run",
            ])
            .prop_map(str::to_string),
            "[A-Za-z_][A-Za-z0-9_]{0,6}",
            "\"[^\"\\\\]{0,6}\"",
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
            2 => prop::sample::select(vec![
                "[build]",
                "[run]",
                "[run.healthcheck]",
                "[build.args]",
                "[run.env]",
                "[[run.persist]]",
                "[deploy]",
                "name = \"shop\"",
                "name = \"Shop\"",
            ])
            .prop_map(str::to_string),
            1 => "\\PC{0,20}",
        ]
    }

    fn manifest_text() -> impl Strategy<Value = String> {
        prop::collection::vec(line(), 0..16).prop_map(|lines| lines.join("\n"))
    }

    /// What an accepted manifest promises the agent and the scheduler.
    fn check_promises(m: &Manifest) -> Result<(), TestCaseError> {
        prop_assert!(validate::app_name(&m.name).is_ok(), "{m:?}");
        for path in [&m.build.dockerfile, &m.build.context] {
            prop_assert!(!path.is_empty() && !path.starts_with('/'), "{m:?}");
            prop_assert!(!Path::new(path).components().any(|c| c == Component::ParentDir), "{m:?}");
        }
        prop_assert!((1..=MAX_REPLICAS).contains(&m.run.replicas), "{m:?}");
        prop_assert!(m.run.port != Some(0), "{m:?}");
        for p in &m.run.persist {
            prop_assert!(p.starts_with('/') && !p.contains("/../") && !p.ends_with("/.."), "{m:?}");
        }
        for name in m.build.args.keys().chain(&m.build.secret_args) {
            prop_assert!(is_identifier(name), "{m:?}");
        }
        prop_assert!(m.build.secret_args.iter().all(|n| !m.build.args.contains_key(n)), "{m:?}");
        if let Some(h) = &m.run.healthcheck {
            for d in [h.interval, h.timeout, h.start_period].into_iter().flatten() {
                prop_assert!(d.as_millis() > 0 && d.subsec_nanos() % 1_000_000 == 0, "{m:?}");
            }
        }
        let _ = m.run_spec();
        Ok(())
    }

    fn path() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "Dockerfile",
            ".",
            "web",
            "ops/Dockerfile",
            "./a//b/",
            "",
            "/",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../b",
            "a/..",
            "docker/",
            "a\tb",
            "/app/data",
            "/app/../etc",
            "//",
            "x",
            "/d",
        ])
        .prop_map(|p| format!("{p:?}"))
    }

    fn ident() -> impl Strategy<Value = String> {
        prop_oneof!["[A-Z_][A-Z0-9_]{0,5}", "[0-9a-z -]{1,4}"].prop_map(|k| format!("{k:?}"))
    }

    fn strings() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![ident(), path(), toml_string()], 0..4)
            .prop_map(|v| format!("[{}]", v.join(", ")))
    }

    fn pairs() -> impl Strategy<Value = String> {
        prop::collection::vec((ident(), toml_string()), 0..4).prop_map(|kv| {
            let kv: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", kv.join(", "))
        })
    }

    fn duration() -> impl Strategy<Value = String> {
        prop_oneof![
            (
                0u64..100,
                prop::sample::select(vec![
                    "ms", "s", "m", "h", "", "x", "us", "ns", "sec", "min", "d", ".5s", " s"
                ])
            )
                .prop_map(|(n, u)| format!("\"{n}{u}\"")),
            toml_string()
        ]
    }

    /// A `(key, value)` of `table`, typed as the manifest expects most of the time.
    fn entry(table: &'static str) -> BoxedStrategy<String> {
        let typed: BoxedStrategy<(&str, String)> = match table {
            "build" => prop_oneof![
                path().prop_map(|v| ("dockerfile", v)),
                path().prop_map(|v| ("context", v)),
                prop_oneof!["[a-z][a-z0-9_.-]{0,6}", "[ -~]{0,4}"].prop_map(|v| ("target", format!("{v:?}"))),
                pairs().prop_map(|v| ("args", v)),
                strings().prop_map(|v| ("secret_args", v)),
            ]
            .boxed(),
            "run" => prop_oneof![
                (-1i64..1200).prop_map(|v| ("replicas", v.to_string())),
                (-1i64..70_000).prop_map(|v| ("port", v.to_string())),
                pairs().prop_map(|v| ("env", v)),
                strings().prop_map(|v| ("persist", v)),
            ]
            .boxed(),
            _ => prop_oneof![
                prop_oneof![strings(), toml_string()].prop_map(|v| ("cmd", v)),
                duration().prop_map(|v| ("interval", v)),
                duration().prop_map(|v| ("timeout", v)),
                duration().prop_map(|v| ("start_period", v)),
                (-1i64..120).prop_map(|v| ("retries", v.to_string())),
            ]
            .boxed(),
        };
        prop_oneof![
            6 => typed.prop_map(|(k, v)| format!("{k} = {v}")),
            1 => (key(), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        ]
        .boxed()
    }

    /// Manifests shaped like real ones, many of them valid.
    fn typed_manifest() -> impl Strategy<Value = String> {
        (
            prop_oneof![4 => Just("\"shop\"".to_string()), 1 => toml_string()],
            prop::collection::vec(entry("build"), 0..5),
            prop::collection::vec(entry("run"), 0..5),
            prop::option::of(prop::collection::vec(entry("healthcheck"), 0..5)),
        )
            .prop_map(|(name, build, run, healthcheck)| {
                // A key twice in one table is a TOML error: keep the first.
                let dedup = |entries: Vec<String>| {
                    let mut seen = std::collections::BTreeSet::new();
                    entries
                        .into_iter()
                        .filter(|e| seen.insert(e.split(" = ").next().unwrap_or_default().to_string()))
                        .collect::<Vec<_>>()
                };
                let (build, run, healthcheck) = (dedup(build), dedup(run), healthcheck.map(dedup));
                let mut text =
                    format!("name = {name}\n[build]\n{}\n[run]\n{}\n", build.join("\n"), run.join("\n"));
                if let Some(h) = healthcheck {
                    text.push_str(&format!("[run.healthcheck]\n{}\n", h.join("\n")));
                }
                text
            })
    }

    /// The typed generator must reach accepted manifests, or the promises go unchecked.
    #[test]
    fn typed_manifests_are_often_valid() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = typed_manifest();
        let accepted = (0..500)
            .filter(|_| {
                let text = strategy.new_tree(&mut runner).unwrap().current();
                Manifest::parse(&text).is_ok()
            })
            .count();
        assert!(accepted >= 25, "only {accepted} of 500 generated manifests were valid");
    }

    proptest! {
        #[test]
        fn fuzz_manifest_parser_never_panics_on_arbitrary_text(text in any::<String>()) {
            if let Ok(m) = Manifest::parse(&text) {
                check_promises(&m)?;
            }
        }

        #[test]
        fn fuzz_manifest_parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(m) = Manifest::parse(&String::from_utf8_lossy(&bytes)) {
                check_promises(&m)?;
            }
        }

        #[test]
        fn fuzz_manifest_parser_never_panics_on_toml_like_text(text in manifest_text()) {
            match Manifest::parse(&text) {
                Ok(m) => check_promises(&m)?,
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn fuzz_manifest_parser_checks_every_accepted_build_and_run_table(text in typed_manifest()) {
            if let Ok(m) = Manifest::parse(&text) {
                check_promises(&m)?;
            }
        }
    }
}
