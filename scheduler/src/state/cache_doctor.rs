//! The cache doctor: why a build rebuilt steps its app's previous build had, and what it cost.
//!
//! [`diagnose`] compares a build's Dockerfile steps ([`BuildStep`], as BuildKit names them:
//! `[deps 2/3] RUN pip install …`) with the previous build's. Steps are aligned by stage and
//! instruction text (the `n/m` numbering is ignored, so adding a step elsewhere does not
//! misalign them). The step named is the first one, in build-log order, that is not
//! cached now although the previous build had the same instruction in the same stage:
//! from there on BuildKit rebuilds the stage. For a `COPY`/`ADD` from the context it
//! lists which of the changed paths its sources match. The changed paths are the agent's
//! (`agent/src/pipeline/changes.rs`: `git diff` from the previous build's commit, the
//! `.dockerignore`d left out), used only when they were taken against the same previous
//! build the steps are compared with. When a dependency install step (`npm ci`,
//! `pip install`, …, or a `RUN` naming a lockfile) reran after a `COPY` of the whole
//! context and no lockfile changed, it advises copying the lockfile first. The step named
//! stays the first rebuilt one (the `COPY`: where the cache chain broke, and what the
//! changed files invalidated); the advice names the install step.
//!
//! Pure: no IO, no clock. [`for_build`] picks the previous build from the state; the
//! control API calls it at read time, so nothing of this goes through raft.

use super::{build_seq, Build, BuildOutput, BuildState, BuildStep, ChangedPaths, State};

/// What the cache doctor found about one build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// The step whose cache miss rebuilt the rest, as the build log names it.
    pub step: String,
    /// Why it missed: the files it copies changed, or the cache did not have it.
    pub cause: String,
    /// Of the paths changed since the previous build, those the step copies (empty when
    /// the changed paths are not known).
    pub changed_paths: Vec<String>,
    /// More paths changed than the agent reported: `changed_paths` is not all of them.
    pub changed_paths_truncated: bool,
    /// Steps rebuilt from it on (itself included).
    pub rebuilt_steps: u32,
    /// Time those steps took, in milliseconds.
    pub rebuilt_ms: u64,
    /// Bytes the build's push sent (filled by [`for_build`]; 0 from [`diagnose`]).
    pub bytes_pushed: u64,
    /// What to change in the Dockerfile, or empty.
    pub advice: String,
}

/// Files whose change legitimately reruns a dependency install.
const LOCKFILES: &[&str] = &[
    "package.json",
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "requirements.txt",
    "poetry.lock",
    "pyproject.toml",
    "Pipfile.lock",
    "Cargo.toml",
    "Cargo.lock",
    "go.mod",
    "go.sum",
    "Gemfile",
    "Gemfile.lock",
    "composer.json",
    "composer.lock",
    "mix.lock",
];

/// Commands that install an app's dependencies.
const INSTALLS: &[&str] = &[
    "npm ci",
    "npm install",
    "npm i ",
    "yarn install",
    "yarn --frozen-lockfile",
    "pnpm install",
    "pip install",
    "pip3 install",
    "poetry install",
    "pipenv install",
    "uv sync",
    "bundle install",
    "go mod download",
    "cargo fetch",
    "cargo chef cook",
    "composer install",
    "mix deps.get",
];

/// A step split into its stage (`deps`, or empty), number and instruction.
struct Parsed<'a> {
    stage: &'a str,
    instruction: &'a str,
}

fn parse(name: &str) -> Option<Parsed<'_>> {
    let rest = name.strip_prefix('[')?;
    let (inside, instruction) = rest.split_once("] ")?;
    let stage = inside.rsplit_once(' ').map_or("", |(stage, _)| stage);
    Some(Parsed { stage, instruction: instruction.trim() })
}

fn keyword(instruction: &str) -> String {
    instruction.split_whitespace().next().unwrap_or("").to_ascii_uppercase()
}

/// Sources of a `COPY`/`ADD` from the build context, or `None` for another instruction or
/// a `COPY --from=…` (which copies from a stage or image, not the context).
fn context_sources(instruction: &str) -> Option<Vec<String>> {
    if !matches!(keyword(instruction).as_str(), "COPY" | "ADD") {
        return None;
    }
    let args = instruction.split_once(char::is_whitespace).map_or("", |(_, a)| a).trim();
    let mut words: Vec<String> = Vec::new();
    for w in args.split_whitespace() {
        if let Some(flag) = w.strip_prefix("--") {
            if flag.starts_with("from=") {
                return None;
            }
            continue;
        }
        words.push(w.to_string());
    }
    // The JSON form: `COPY ["a b", "dest"]`.
    let joined = words.join(" ");
    if joined.starts_with('[') {
        if let Ok(list) = serde_json::from_str::<Vec<String>>(&joined) {
            words = list;
        }
    }
    words.pop()?; // the destination
    Some(words)
}

fn normalise(source: &str) -> &str {
    let s = source.trim_start_matches("./").trim_end_matches('/');
    if s.is_empty() || s == "." {
        "."
    } else {
        s
    }
}

/// A `COPY . …` / `ADD . …`: the whole context.
fn copies_whole_context(instruction: &str) -> bool {
    context_sources(instruction).is_some_and(|s| s.iter().any(|s| normalise(s) == "."))
}

/// `*` and `?` within one path component, as Docker's `filepath.Match`.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => {
                (0..=t.len()).take_while(|&i| i == 0 || t[i - 1] != '/').any(|i| go(&p[1..], &t[i..]))
            }
            Some('?') => t.first().is_some_and(|&c| c != '/') && go(&p[1..], &t[1..]),
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

/// Whether `path` (relative to the context) is copied by `source`: the source itself, a
/// file under it, or a glob match of it or of one of its directories.
fn source_matches(source: &str, path: &str) -> bool {
    let source = normalise(source);
    let path = path.trim_start_matches("./");
    if source == "." {
        return true;
    }
    let mut prefix = String::new();
    for part in path.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if glob(source, &prefix) {
            return true;
        }
    }
    false
}

/// A `RUN` of a known install command, or one naming a lockfile
/// (`RUN sh install-deps.sh requirements.txt`).
fn is_install(instruction: &str) -> bool {
    if keyword(instruction) != "RUN" {
        return false;
    }
    let padded = format!("{instruction} ");
    INSTALLS.iter().any(|i| padded.contains(i))
        || padded
            .split(|c: char| {
                c.is_whitespace() || matches!(c, '=' | '"' | '\'' | ',' | ';' | '&' | '|' | '<' | '>')
            })
            .any(is_lockfile)
}

fn is_lockfile(path: &str) -> bool {
    let file = path.rsplit('/').next().unwrap_or(path);
    if file.is_empty() {
        return false;
    }
    LOCKFILES.contains(&file) || (file.starts_with("requirements") && file.ends_with(".txt"))
}

/// Why `current` rebuilt steps `previous` had (module doc). `None` for a first build, a
/// build that took every step it could from the cache, or one whose first rebuilt step is
/// new (the Dockerfile changed there). `changed`: the paths of the context changed since
/// the previous build, relative to it; `None` when not known.
pub fn diagnose(
    previous: &[BuildStep],
    current: &[BuildStep],
    changed: Option<&ChangedPaths>,
) -> Option<Diagnosis> {
    let changed = changed.filter(|c| !c.unknown);
    let changed_paths: &[String] = changed.map_or(&[], |c| c.paths.as_slice());
    let before: std::collections::BTreeSet<(&str, &str)> =
        previous.iter().filter_map(|s| parse(&s.name)).map(|p| (p.stage, p.instruction)).collect();
    if before.is_empty() {
        return None;
    }
    let steps: Vec<(&BuildStep, Parsed<'_>)> =
        current.iter().filter_map(|s| Some((s, parse(&s.name)?))).collect();
    // The first rebuilt step of each stage is where that stage's cache chain broke.
    let (at, (first, p)) =
        steps.iter().enumerate().filter(|(_, (s, p))| !s.cached && keyword(p.instruction) != "FROM").find(
            |(i, (_, p))| {
                !steps[..*i]
                    .iter()
                    .any(|(s, q)| q.stage == p.stage && !s.cached && keyword(q.instruction) != "FROM")
            },
        )?;
    if !before.contains(&(p.stage, p.instruction)) {
        return None;
    }
    let rebuilt: Vec<&(&BuildStep, Parsed<'_>)> = steps[at..].iter().filter(|(s, _)| !s.cached).collect();
    let (cause, matched) = match context_sources(p.instruction) {
        Some(sources) => {
            let matched: Vec<String> = changed_paths
                .iter()
                .filter(|path| sources.iter().any(|s| source_matches(s, path)))
                .cloned()
                .collect();
            let cause = if changed.is_none() {
                "files it copies changed since the previous build"
            } else if matched.is_empty() {
                "none of the changed files is one it copies: the build cache did not have it (another node, or pruned)"
            } else {
                "files it copies changed since the previous build"
            };
            (cause, matched)
        }
        None => ("the build cache did not have it (another node, pruned, or a new base image)", Vec::new()),
    };
    let lockfile_changed = changed_paths.iter().any(|p| is_lockfile(p));
    let mut advice = String::new();
    if !lockfile_changed {
        let mut whole: Option<&str> = None;
        for (s, q) in &rebuilt {
            if q.stage != p.stage {
                continue;
            }
            if copies_whole_context(q.instruction) {
                whole.get_or_insert(q.instruction);
            } else if let Some(copy) = whole.filter(|_| !s.cached && is_install(q.instruction)) {
                advice = format!(
                    "the dependency install step `{}` reran because `{copy}` copies the whole context: \
                     copy the lockfile (e.g. package.json + package-lock.json, requirements.txt, Cargo.lock, go.sum) \
                     and run the install before copying the rest",
                    q.instruction
                );
                break;
            }
        }
    }
    Some(Diagnosis {
        step: first.name.clone(),
        cause: cause.to_string(),
        changed_paths_truncated: changed.is_some_and(|c| c.truncated) && !matched.is_empty(),
        changed_paths: matched,
        rebuilt_steps: u32::try_from(rebuilt.len()).unwrap_or(u32::MAX),
        rebuilt_ms: rebuilt.iter().map(|(s, _)| s.duration_ms).sum(),
        bytes_pushed: 0,
        advice,
    })
}

/// The cache doctor for `build`, against its app's newest pushed build before it that
/// has step records. `None` for a build not pushed, one built with `--no-cache`, or
/// one with nothing to say.
pub fn for_build(s: &State, build: &Build) -> Option<Diagnosis> {
    if build.state != BuildState::Pushed || build.no_cache {
        return None;
    }
    against_previous(s, &build.app, &build.id, build.output.as_ref()?)
}

/// [`for_build`] for a build whose output is verified but not yet recorded (the deploy
/// stream says it as soon as the image is pushed). The caller skips `--no-cache` builds.
/// The changed paths are used only when the agent took them against the previous build's
/// commit (another build may have been pushed between its assignment and its end).
pub fn against_previous(s: &State, app: &str, build_id: &str, current: &BuildOutput) -> Option<Diagnosis> {
    let previous = previous_output(s, app, build_id)?;
    let changed = current.changed_paths.as_ref().filter(|c| c.since == previous.git_sha);
    let mut d = diagnose(&previous.build_steps, &current.build_steps, changed)?;
    d.bytes_pushed = current.bytes_pushed;
    Some(d)
}

/// What the cache doctor compares build `build_id` of `app` with: the app's newest pushed
/// build before it that has step records. Its commit goes to the agent with the
/// assignment (`previous_git_sha`), for the changed paths.
pub fn previous_output<'s>(s: &'s State, app: &str, build_id: &str) -> Option<&'s BuildOutput> {
    let seq = build_seq(build_id);
    Some(
        s.builds
            .values()
            .filter(|b| b.app == app && b.state == BuildState::Pushed && build_seq(&b.id) < seq)
            .filter_map(|b| Some((build_seq(&b.id), b.output.as_ref()?)))
            .filter(|(_, o)| !o.build_steps.is_empty())
            .max_by_key(|(n, _)| *n)?
            .1,
    )
}

impl Diagnosis {
    /// A short paragraph for the deploy stream.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("cache doctor: `{}` was rebuilt ({}),", self.step, self.cause),
            format!(
                "  and {} step(s) from it on: {:.1}s, {} pushed",
                self.rebuilt_steps,
                self.rebuilt_ms as f64 / 1000.0,
                slipway_proto::human_bytes(self.bytes_pushed)
            ),
        ];
        if !self.changed_paths.is_empty() {
            lines.push(format!(
                "  changed files it copies: {}",
                slipway_proto::changed_paths_text(&self.changed_paths, self.changed_paths_truncated)
            ));
        }
        if !self.advice.is_empty() {
            lines.push(format!("  advice: {}", self.advice));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(paths: &[String]) -> ChangedPaths {
        ChangedPaths { since: "a".repeat(40), paths: paths.to_vec(), truncated: false, unknown: false }
    }

    fn step(name: &str, cached: bool, ms: u64) -> BuildStep {
        BuildStep { name: name.to_string(), cached, duration_ms: if cached { 0 } else { ms } }
    }

    /// A Node app that copies the whole context before `npm ci`.
    fn whole_context(code_cached: bool) -> Vec<BuildStep> {
        vec![
            step("[1/5] FROM docker.io/library/node:20", false, 100),
            step("[2/5] WORKDIR /app", true, 0),
            step("[3/5] COPY . .", code_cached, 300),
            step("[4/5] RUN npm ci", code_cached, 41_000),
            step("[5/5] RUN npm run build", code_cached, 9_000),
        ]
    }

    /// The same app with the lockfile copied first.
    fn lockfile_first(code_cached: bool) -> Vec<BuildStep> {
        vec![
            step("[1/6] FROM docker.io/library/node:20", false, 100),
            step("[2/6] WORKDIR /app", true, 0),
            step("[3/6] COPY package.json package-lock.json ./", true, 0),
            step("[4/6] RUN npm ci", true, 0),
            step("[5/6] COPY . .", code_cached, 300),
            step("[6/6] RUN npm run build", code_cached, 9_000),
        ]
    }

    #[test]
    fn a_whole_context_copy_before_the_install_is_named_with_advice() {
        let changed = vec!["src/app.js".to_string()];
        let d = diagnose(&whole_context(true), &whole_context(false), Some(&known(&changed)))
            .expect("a diagnosis");
        assert_eq!(d.step, "[3/5] COPY . .");
        assert_eq!(d.changed_paths, changed);
        assert_eq!(d.rebuilt_steps, 3);
        assert_eq!(d.rebuilt_ms, 50_300);
        assert!(
            d.advice.contains("`RUN npm ci` reran because `COPY . .` copies the whole context"),
            "{}",
            d.advice
        );
        assert!(d.advice.contains("lockfile"), "{}", d.advice);
        // Changed paths unknown: the step and the advice all the same.
        let d = diagnose(&whole_context(true), &whole_context(false), None).expect("a diagnosis");
        assert_eq!(d.step, "[3/5] COPY . .");
        assert!(d.changed_paths.is_empty());
        assert!(!d.advice.is_empty());
    }

    #[test]
    fn a_lockfile_change_reruns_the_install_without_advice() {
        let changed = vec!["package-lock.json".to_string()];
        let d = diagnose(&whole_context(true), &whole_context(false), Some(&known(&changed)))
            .expect("a diagnosis");
        assert_eq!(d.advice, "");
    }

    #[test]
    fn lockfile_first_gets_no_advice() {
        let changed = vec!["src/app.js".to_string()];
        let d = diagnose(&lockfile_first(true), &lockfile_first(false), Some(&known(&changed)))
            .expect("a diagnosis");
        assert_eq!(d.step, "[5/6] COPY . .");
        assert_eq!(d.rebuilt_steps, 2);
        assert_eq!(d.advice, "", "the install stayed cached");
    }

    #[test]
    fn nothing_rebuilt_is_none() {
        assert_eq!(diagnose(&whole_context(true), &whole_context(true), None), None);
        assert_eq!(diagnose(&whole_context(false), &whole_context(true), None), None);
    }

    #[test]
    fn a_first_build_is_none() {
        assert_eq!(diagnose(&[], &whole_context(false), Some(&known(&["a".to_string()]))), None);
    }

    #[test]
    fn a_new_step_is_not_blamed_on_the_cache() {
        let mut current = whole_context(false);
        current[2] = step("[3/5] COPY src/ ./src/", false, 300);
        assert_eq!(diagnose(&whole_context(true), &current, None), None);
    }

    #[test]
    fn only_the_paths_a_copy_takes_are_listed() {
        let prev = vec![
            step("[1/3] FROM python:3.12", false, 1),
            step("[2/3] COPY requirements*.txt src/ /app/", true, 0),
            step("[3/3] RUN pip install -r /app/requirements.txt", true, 0),
        ];
        let cur: Vec<BuildStep> = prev.iter().map(|s| step(&s.name, false, 1_000)).collect();
        let changed: Vec<String> = ["README.md", "src/main.py", "requirements-dev.txt", "tests/x.py"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let d = diagnose(&prev, &cur, Some(&known(&changed))).expect("a diagnosis");
        assert_eq!(d.step, "[2/3] COPY requirements*.txt src/ /app/");
        assert_eq!(d.changed_paths, vec!["src/main.py".to_string(), "requirements-dev.txt".to_string()]);
        assert_eq!(d.advice, "", "not a whole-context copy");
    }

    #[test]
    fn a_cold_cache_names_the_first_step_and_no_files() {
        let prev = whole_context(true);
        let mut cur = whole_context(false);
        cur[1] = step("[2/5] WORKDIR /app", false, 50);
        let d = diagnose(&prev, &cur, None).expect("a diagnosis");
        assert_eq!(d.step, "[2/5] WORKDIR /app");
        assert!(d.cause.contains("cache did not have it"), "{}", d.cause);
        assert_eq!(d.rebuilt_steps, 4);
    }

    #[test]
    fn stages_are_aligned_by_name_not_number() {
        let prev = vec![
            step("[deps 1/3] FROM python:3.12", false, 1),
            step("[deps 2/3] COPY . /app", true, 0),
            step("[deps 3/3] RUN pip install -r /app/requirements.txt", true, 0),
        ];
        let cur = vec![
            step("[deps 1/4] FROM python:3.12", false, 1),
            step("[deps 2/4] ENV X=1", true, 0),
            step("[deps 3/4] COPY . /app", false, 200),
            step("[deps 4/4] RUN pip install -r /app/requirements.txt", false, 20_000),
        ];
        let d = diagnose(&prev, &cur, None).expect("a diagnosis");
        assert_eq!(d.step, "[deps 3/4] COPY . /app");
        assert!(d.advice.contains("`COPY . /app`"), "{}", d.advice);
    }

    fn build(id: &str, app: &str, state: BuildState, steps: Vec<BuildStep>) -> Build {
        Build {
            id: id.to_string(),
            app: app.to_string(),
            git_ref: "main".to_string(),
            no_cache: false,
            state,
            node_id: None,
            attempt: 1,
            created_at_ms: 0,
            queued_at_ms: 0,
            finished_at_ms: Some(1),
            error: None,
            output: (state == BuildState::Pushed).then(|| BuildOutput {
                build_steps: steps,
                bytes_pushed: 4096,
                ..Default::default()
            }),
            release: None,
            pushes: 0,
        }
    }

    #[test]
    fn a_build_is_compared_with_its_apps_previous_pushed_build() {
        let mut s = State::default();
        for b in [
            build("b-1", "shop", BuildState::Pushed, whole_context(false)),
            build("b-2", "shop", BuildState::Pushed, whole_context(true)),
            build("b-3", "other", BuildState::Pushed, lockfile_first(true)),
            build("b-4", "shop", BuildState::Failed, vec![]),
            build("b-5", "shop", BuildState::Pushed, whole_context(false)),
        ] {
            s.builds.insert(b.id.clone(), b);
        }
        let d = for_build(&s, &s.builds["b-5"]).expect("b-5 against b-2");
        assert_eq!(d.step, "[3/5] COPY . .");
        assert_eq!(d.bytes_pushed, 4096);
        assert!(!d.advice.is_empty());
        let lines = d.lines();
        assert_eq!(
            lines[0],
            "cache doctor: `[3/5] COPY . .` was rebuilt (files it copies changed since the previous build),"
        );
        assert_eq!(lines[1], "  and 3 step(s) from it on: 50.3s, 4.0 KiB pushed");
        assert!(lines[2].starts_with("  advice: the dependency install step `RUN npm ci`"), "{}", lines[2]);
        assert_eq!(for_build(&s, &s.builds["b-1"]), None, "a first build");
        assert_eq!(for_build(&s, &s.builds["b-2"]), None, "all cached");
        assert_eq!(for_build(&s, &s.builds["b-4"]), None, "not pushed");
        let mut no_cache = s.builds["b-5"].clone();
        no_cache.no_cache = true;
        assert_eq!(for_build(&s, &no_cache), None, "--no-cache rebuilds by request");
    }

    /// The t20 `doctor` app's shape: the install is a script given the lockfile.
    fn python_whole_context(code_cached: bool) -> Vec<BuildStep> {
        vec![
            step("[1/4] FROM docker.io/slipway/busybox:latest", false, 100),
            step("[2/4] WORKDIR /app", true, 0),
            step("[3/4] COPY . /app/", code_cached, 300),
            step("[4/4] RUN sh /app/install-deps.sh /app/requirements.txt /app/deps", code_cached, 2_000),
        ]
    }

    #[test]
    fn the_agents_changed_paths_are_used_when_taken_against_the_same_previous_build() {
        let mut s = State::default();
        let mut b1 = build("b-1", "doctor", BuildState::Pushed, python_whole_context(false));
        b1.output.as_mut().unwrap().git_sha = "1".repeat(40);
        let mut b2 = build("b-2", "doctor", BuildState::Pushed, python_whole_context(false));
        let changed = |since: &str| ChangedPaths {
            since: since.to_string(),
            paths: vec!["app.py".into()],
            truncated: false,
            unknown: false,
        };
        b2.output.as_mut().unwrap().changed_paths = Some(changed(&"1".repeat(40)));
        for b in [b1, b2] {
            s.builds.insert(b.id.clone(), b);
        }
        assert_eq!(previous_output(&s, "doctor", "b-2").map(|o| o.git_sha.clone()), Some("1".repeat(40)));
        assert_eq!(previous_output(&s, "doctor", "b-1"), None);
        let d = for_build(&s, &s.builds["b-2"]).expect("b-2 against b-1");
        assert_eq!(d.step, "[3/4] COPY . /app/", "the first rebuilt step: where the chain broke");
        assert_eq!(d.changed_paths, vec!["app.py".to_string()]);
        assert!(
            d.advice.starts_with(
                "the dependency install step `RUN sh /app/install-deps.sh /app/requirements.txt /app/deps` reran"
            ) && d.advice.contains("copy the lockfile"),
            "a RUN naming a lockfile is an install step: {}",
            d.advice
        );
        assert_eq!(d.lines()[2], "  changed files it copies: app.py");
        // Taken against another commit (a build pushed meanwhile): not used.
        s.builds.get_mut("b-2").unwrap().output.as_mut().unwrap().changed_paths =
            Some(changed(&"2".repeat(40)));
        let d = for_build(&s, &s.builds["b-2"]).expect("a diagnosis");
        assert!(d.changed_paths.is_empty() && !d.advice.is_empty(), "{d:?}");
    }

    #[test]
    fn known_paths_say_whether_the_copy_was_invalidated_or_the_cache_lost() {
        let (prev, cur) = (python_whole_context(true), python_whole_context(false));
        let nothing = known(&[]);
        let d = diagnose(&prev, &cur, Some(&nothing)).expect("a diagnosis");
        assert!(d.cause.contains("cache did not have it"), "nothing changed: {}", d.cause);
        let unknown = ChangedPaths { unknown: true, ..known(&["x".into()]) };
        let d = diagnose(&prev, &cur, Some(&unknown)).expect("a diagnosis");
        assert!(d.cause.contains("files it copies changed") && d.changed_paths.is_empty(), "{d:?}");
        let many: Vec<String> = (0..12).map(|i| format!("src/m{i}.py")).collect();
        let cut = ChangedPaths { truncated: true, ..known(&many) };
        let d = diagnose(&prev, &cur, Some(&cut)).expect("a diagnosis");
        assert!(d.changed_paths_truncated, "{d:?}");
        assert!(d.lines()[2].ends_with("src/m9.py, and 2+ more"), "{}", d.lines()[2]);
        let lock = known(&["app.py".into(), "requirements.txt".into()]);
        assert_eq!(diagnose(&prev, &cur, Some(&lock)).unwrap().advice, "", "a lockfile changed");
    }

    #[test]
    fn install_steps_are_known_commands_or_name_a_lockfile() {
        assert!(is_install("RUN npm ci"));
        assert!(is_install("RUN ./deps.sh --from=requirements-prod.txt"));
        assert!(is_install("RUN cd /app && sh fetch.sh go.sum"));
        assert!(!is_install("RUN sh /app/build.sh /app/src"));
        assert!(!is_install("COPY package.json ."), "not a RUN");
    }

    #[test]
    fn copy_from_a_stage_is_not_a_context_copy() {
        assert_eq!(context_sources("COPY --from=build /out /app"), None);
        assert_eq!(context_sources("COPY --chown=1:1 a b /d"), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(context_sources(r#"COPY ["a b", "/d"]"#), Some(vec!["a b".to_string()]));
        assert!(copies_whole_context("ADD ./ /srv"));
        assert!(!copies_whole_context("COPY src /srv"));
        assert!(source_matches("*.json", "package.json"));
        assert!(!source_matches("*.json", "web/package.json"));
    }
}
