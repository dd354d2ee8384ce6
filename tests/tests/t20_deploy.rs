//! t20: the main job end to end against the real engine, registry and Swarm:
//! git repo → image built on local disk → registry → Swarm service pinned by digest,
//! a code-only redeploy that reuses the dependency layers, a rollback, and a
//! scheduler killed with -9 that comes back with everything it knew.

use std::time::Duration;

use slipway_testkit::{docker_cli, GitRepo};
use slipway_tests::TestCluster;

#[tokio::test(flavor = "multi_thread")]
async fn t20_deploy_redeploy_rollback_and_restart() {
    let Some(cluster) = TestCluster::start("t20main").await else { return };
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");

    // Release 1: a cold build, pushed and deployed by digest.
    let first = cluster.deploy("hello", None).await;
    let r1 = first.live().clone();
    assert_eq!(r1.number, 1);
    assert!(r1.digest.starts_with("sha256:") && r1.digest.len() == 71, "{}", r1.digest);
    assert_eq!(r1.image, format!("{}/hello@{}", cluster.registry().addr(), r1.digest));
    assert_eq!(cluster.service_image("hello"), r1.image, "the service runs release 1 pinned by digest");
    assert!(
        cluster.registry().has_manifest("hello", &r1.digest).await,
        "release 1's digest is in the registry"
    );
    let body = cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.expect("app answers");
    assert!(body.contains("hello from slipway"), "{body}");
    let cold = first.built.clone().expect("build output");
    assert!(cold.layers_pushed >= 2, "a cold push sends the base, dependency and code layers: {cold:?}");
    let stacks = docker_cli(&["stack", "services", &cluster.stack]).unwrap();
    assert!(stacks.contains(&cluster.service("hello")), "docker stack services lists it:\n{stacks}");

    // Release 2: a code-only change rebuilds only the last layer.
    repo.write("www/version.txt", "v2-code-only\n");
    let sha2 = repo.commit("code-only change");
    let second = cluster.deploy("hello", None).await;
    let r2 = second.live().clone();
    assert_eq!((r2.number, r2.git_sha.as_str()), (2, sha2.as_str()));
    assert_ne!(r2.digest, r1.digest);
    let warm = second.built.clone().expect("build output");
    assert!(warm.cache_hits >= 2, "the dependency steps come from the layer cache: {warm:?}");
    assert!(warm.layers_reused >= 2, "base and dependency layers already in the registry: {warm:?}");
    assert_eq!(warm.layers_pushed, 1, "only the code layer travels: {warm:?}");
    assert!(warm.bytes_pushed < cold.bytes_pushed, "{warm:?} vs {cold:?}");
    assert_eq!(cluster.service_image("hello"), r2.image);
    let body = cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.unwrap();
    assert!(body.contains("v2-code-only"), "{body}");

    // Release 3: rollback to release 1's image.
    let back = cluster.rollback("hello", None).await;
    let r3 = back.live().clone();
    assert_eq!((r3.number, r3.rollback_of, r3.digest.as_str()), (3, 1, r1.digest.as_str()));
    assert_eq!(cluster.service_image("hello"), r1.image);

    // kill -9 and restart: apps, builds and releases survive.
    let apps_before = cluster.apps().await;
    let builds_before = cluster.builds("hello").await;
    let releases_before = cluster.releases("hello").await;
    cluster.kill_scheduler();
    cluster.start_scheduler().await;
    assert_eq!(cluster.apps().await, apps_before);
    assert_eq!(cluster.builds("hello").await, builds_before);
    assert_eq!(cluster.releases("hello").await, releases_before);
    assert_eq!(releases_before.len(), 3);

    // The CLI prints what the issue promises in --json.
    let out = cluster.cli(&["releases", "hello", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("releases --json is JSON");
    for key in ["number", "digest", "image", "git_sha", "build_id", "node"] {
        assert!(json[0].get(key).is_some(), "releases --json lacks {key}: {json}");
    }
    cluster.wait_for_ready_nodes(1).await;
    let out = cluster.cli(&["nodes", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nodes --json is JSON");
    for key in [
        "id",
        "name",
        "status",
        "build_fs_available_bytes",
        "build_fs_total_bytes",
        "cpu_usage_percent",
        "running_builds",
    ] {
        assert!(json[0].get(key).is_some(), "nodes --json lacks {key}: {json}");
    }
    assert!(json[0]["build_fs_total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json[0]["builder"], "buildkit", "the engine's builder is reported: {json}");
    let out = cluster.cli(&["nodes"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("(buildkit)"), "nodes shows the builder beside the engine version:\n{table}");

    apps_show_and_logs(&cluster, r3.number).await;
    config_and_scale(&cluster, &repo).await;
}

/// `apps show` lists the task Swarm runs (node, state `running`, the current release);
/// `apps logs` prints what it wrote, prefixed with its task and node, and `--follow`
/// prints a line written after it started (httpd -v logs a request for a static file);
/// an app never deployed and an unknown app say so.
async fn apps_show_and_logs(cluster: &TestCluster, current: u64) {
    let out = cluster.cli(&["apps", "show", "hello", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("apps show --json is JSON");
    assert_eq!(json["release"]["number"], current, "{json}");
    assert_eq!(json["deployed"], true, "{json}");
    assert_eq!(json["replicas"]["desired"], 1, "{json}");
    let tasks = json["tasks"].as_array().expect("tasks is a list");
    let running: Vec<&serde_json::Value> = tasks.iter().filter(|t| t["state"] == "running").collect();
    assert_eq!(running.len(), 1, "one running task: {json}");
    let task = running[0];
    assert_eq!(task["release"], current, "the running task runs the current release: {json}");
    let node = task["node"].as_str().expect("node");
    assert!(!node.is_empty(), "{json}");
    let id: String = task["id"].as_str().unwrap().chars().take(12).collect();
    let prefix = format!("hello.{}.{id}@{node} | ", task["slot"]);
    let table = String::from_utf8_lossy(&cluster.cli(&["apps", "show", "hello"]).stdout).into_owned();
    assert!(table.contains("running") && table.contains(&format!("v{current}")), "{table}");

    let out = cluster.cli(&["apps", "logs", "hello", "--tail", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().count() <= 5 * tasks.len(), "--tail 5 per task:\n{stdout}");
    assert!(
        stdout.lines().any(|l| l == format!("{prefix}hello: listening on port 8080")),
        "the start line, with its task and node:\n{stdout}"
    );
    assert!(!stderr.contains("note:"), "every task's log answered:\n{stderr}");
    let mut follow = cluster.cli_spawn(&["apps", "logs", "hello", "--follow", "--tail", "0"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let err = follow.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // A static file: httpd -v logs its answer (CGI answers, like the healthcheck's, it does not).
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.wait_for_app("hello", "/version.txt", Duration::from_secs(20)).await.expect("static file");
    let line = rx.recv_timeout(Duration::from_secs(20));
    follow.kill().unwrap();
    let _ = follow.wait();
    let line = line.expect("--follow prints a request line written after it started");
    assert!(line.starts_with(&prefix) && line.contains("response:200"), "{line}");

    cluster.create_app("idle", "https://example.com/idle.git").await.expect("create app");
    let out = cluster.cli(&["apps", "show", "idle", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("apps show --json is JSON");
    assert_eq!(
        (&json["deployed"], &json["release"], &json["tasks"]),
        (&false.into(), &serde_json::Value::Null, &serde_json::json!([]))
    );
    let out = cluster.cli(&["apps", "logs", "idle"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no service yet"), "{stderr}");
    for cmd in [&["apps", "show", "nope"][..], &["apps", "logs", "nope"]] {
        let out = cluster.cli(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("\"nope\" not found") && stderr.contains("slipway apps"),
            "{stderr}"
        );
    }
    let out = cluster.cli(&["apps", "logs", "hello", "--since", "ten minutes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("10m"), "{stderr}");
    let out = cluster.cli(&["apps", "logs", "hello", "--tail", "10001"]);
    assert!(!out.status.success(), "--tail over the limit is refused");
}

/// `slipway config set|unset` and `scale` through the real CLI: each change is a release
/// of the running image (no build) that the app sees, a code deploy keeps both, and bad
/// input is refused with nothing changed.
async fn config_and_scale(cluster: &TestCluster, repo: &GitRepo) {
    let cli = |args: &[&str]| {
        let out = cluster.cli(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        (out.status.success(), stdout, stderr)
    };
    let answers = |expected: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let body = cluster.wait_for_app("hello", "/", Duration::from_secs(30)).await.unwrap_or_default();
            if body.contains(expected) || std::time::Instant::now() > deadline {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let whole = std::time::Instant::now();
    let builds_before = cluster.builds("hello").await.len();
    let current = cluster.releases("hello").await.last().cloned().expect("a release");

    // config set: a release of the same image, no build; the manifest's GREETING is overridden.
    let started = std::time::Instant::now();
    let (ok, out, err) =
        cli(&["config", "set", "hello", "GREETING=from config", "DATABASE_URL=postgres://db/x=1"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("config: set DATABASE_URL, GREETING, no build") && out.contains("is live"), "{out}");
    let body = answers("greeting: from config").await;
    assert!(body.contains("greeting: from config"), "the app sees the config value: {body}");
    eprintln!("measured: config set to the new value served: {:?}", started.elapsed());
    let releases = cluster.releases("hello").await;
    let config_release = releases.last().unwrap().clone();
    assert_eq!(config_release.digest, current.digest, "same image");
    assert_eq!(config_release.change, "config: set DATABASE_URL, GREETING");
    assert_eq!(cluster.builds("hello").await.len(), builds_before, "no build");
    let (_, table, _) = cli(&["releases", "hello"]);
    assert!(table.contains("config: set DATABASE_URL, GREETING"), "{table}");
    assert!(!table.contains("postgres://"), "releases show keys, never values:\n{table}");
    let (ok, json, err) = cli(&["config", "hello", "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("config --json is JSON");
    let source = |key: &str| {
        json["entries"].as_array().unwrap().iter().find(|e| e["key"] == key).map(|e| e["source"].clone())
    };
    assert_eq!(source("GREETING"), Some("config".into()), "{json}");
    assert_eq!(
        json["entries"].as_array().unwrap().iter().find(|e| e["key"] == "GREETING").unwrap()
            ["overrides_manifest"],
        true
    );
    assert_eq!(source("DATABASE_URL"), Some("config".into()), "{json}");

    // Bad input: refused naming the key or the limit, nothing recorded, nothing rolled out.
    let releases_before = cluster.releases("hello").await;
    let big = format!("BIG={}", "x".repeat(65 * 1024));
    for (args, says) in [
        (vec!["config", "set", "hello", "OK=1", "1BAD=x"], "\"1BAD\" is not an environment variable name"),
        (vec!["config", "set", "hello", "NOEQUALS"], "\"NOEQUALS\" is not KEY=VALUE"),
        (vec!["config", "set", "hello", &big], "the value of BIG is 66560 bytes long"),
        (vec!["config", "unset", "hello", "NEVER_SET"], "has no config key NEVER_SET"),
        (vec!["config", "set", "nope", "A=1"], "app \"nope\" not found"),
        (vec!["scale", "hello", "-1"], "replicas must be 1 to 1000"),
        (vec!["scale", "hello", "5000"], "replicas must be 1 to 1000"),
    ] {
        let (ok, out, err) = cli(&args);
        assert!(!ok && err.contains(says), "{args:?}: expected {says:?}\n{out}{err}");
    }
    assert_eq!(cluster.releases("hello").await, releases_before, "nothing half-applied");
    assert!(!cli(&["config", "hello"]).1.contains("OK"), "the good key of a refused change was not kept");

    // scale 2: two tasks run, without a build.
    let (ok, out, err) = cli(&["scale", "hello", "2"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("scale to 2") && out.contains("runs 2 task(s)"), "{out}");
    assert_eq!(running_tasks(cluster), 2);

    // A code deploy keeps the config and the scale.
    repo.write("www/version.txt", "v4-after-config\n");
    repo.commit("code after config");
    let started = std::time::Instant::now();
    let deployed = cluster.deploy("hello", None).await;
    let r = deployed.live().clone();
    assert_eq!((r.replicas, r.change.as_str()), (2, ""), "{r:?}");
    assert_eq!(r.config_keys, ["DATABASE_URL", "GREETING"]);
    let body = answers("v4-after-config").await;
    assert!(body.contains("v4-after-config") && body.contains("greeting: from config"), "{body}");
    eprintln!("measured: code-only deploy to the new code served: {:?}", started.elapsed());
    assert_eq!(running_tasks(cluster), 2, "the scaled replicas survive the deploy");
    // `apps show` names the config keys (never the values) and the scale.
    let (ok, out, err) = cli(&["apps", "show", "hello", "--json"]);
    assert!(ok, "{out}{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("apps show --json is JSON");
    assert_eq!(shown["config_keys"], serde_json::json!(["DATABASE_URL", "GREETING"]), "{shown}");
    assert_eq!(shown["scaled_replicas"], 2, "{shown}");
    assert!(!out.contains("from config"), "no config value in apps show: {out}");

    // scale --reset: back to the manifest's replicas; unset: back to the manifest's value.
    let (ok, out, err) = cli(&["scale", "hello", "--reset"]);
    assert!(ok && out.contains("runs 1 task(s)"), "{out}{err}");
    assert_eq!(running_tasks(cluster), 1);
    let (ok, out, err) = cli(&["config", "unset", "hello", "GREETING"]);
    assert!(ok, "{out}{err}");
    let body = answers("greeting: hello, operator").await;
    assert!(body.contains("greeting: hello, operator"), "the manifest's value again: {body}");
    eprintln!("measured: config and scale steps in all: {:?}", whole.elapsed());
}

/// Tasks of the hello service Swarm reports running.
fn running_tasks(cluster: &TestCluster) -> usize {
    let service = cluster.service("hello");
    let states = cluster
        .swarm_cli(&[
            "service",
            "ps",
            &service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
        ])
        .unwrap();
    states.lines().filter(|l| l.starts_with("Running")).count()
}

/// The Dockerfile people write today, `docker init`-style: a dependency stage whose
/// `RUN` reads the manifest through a bind mount and keeps a cache mount, a runtime stage
/// copying from it, a step using a secret mounted from the build node. It deploys and
/// answers; the secret reaches the step, shows as `***` in the build log and is in
/// neither `docker history --no-trunc` nor `docker image inspect` of the release; a
/// dependency change reruns the step, which finds what the first build left in its
/// cache mount.
///
/// `NONCE` (unique per run) keys the cache mount and the steps, so earlier runs on this
/// engine answer neither.
const MODERN_DOCKERFILE: &str = r#"FROM slipway/busybox:latest AS deps
WORKDIR /app
RUN --mount=type=bind,source=deps.txt,target=/app/deps.txt \
    --mount=type=bind,source=install-deps.sh,target=/app/install-deps.sh \
    --mount=type=cache,id=NONCE,target=/root/.cache/deps \
    if [ -e /root/.cache/deps/seen ]; then echo "cache mount: kept"; else echo "cache mount: empty"; fi \
    && cp /app/deps.txt /root/.cache/deps/seen && sh /app/install-deps.sh /app/deps.txt /app/deps

FROM slipway/busybox:latest
WORKDIR /app
COPY --from=deps /app/deps /app/deps
RUN --mount=type=secret,id=API_KEY echo "api key: $(cat /run/secrets/API_KEY)" && grep -q '^k3y-' /run/secrets/API_KEY && echo NONCE
COPY www /app/www
CMD ["sh", "-c", "trap 'kill $pid; exit 0' TERM; busybox httpd -f -p \"${PORT:-8080}\" -h /app/www & pid=$!; wait $pid"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn t20_buildkit_mounts_and_secret() {
    let Some(cluster) = TestCluster::start("t20bk").await else { return };
    let repo = GitRepo::from_example("hello");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let nonce = format!("t20bk-{nanos}");
    // Unrelated to the nonce, which the Dockerfile (so the history) shows.
    let secret = format!("k3y-{:x}", (nanos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    cluster.put_build_secret("modern", "API_KEY", &format!("{secret}\n"));
    repo.write("slipway.toml", "name = \"modern\"\n[build]\nsecrets = [\"API_KEY\"]\n[run]\nport = 8080\n");
    repo.write("Dockerfile", MODERN_DOCKERFILE.replace("NONCE", &nonce));
    repo.commit("BuildKit Dockerfile");
    cluster.create_app("modern", &repo.url()).await.expect("create app");

    let first = cluster.deploy("modern", None).await;
    let r1 = first.live().clone();
    let body = cluster.wait_for_app("modern", "/", Duration::from_secs(60)).await.expect("app answers");
    assert!(body.contains("hello from slipway") && body.contains("deps: 5"), "{body}");
    let log = &first.log;
    assert!(log.iter().any(|l| l.contains("with BuildKit")), "{log:#?}");
    assert!(log.iter().any(|l| l.ends_with(" cache mount: empty")), "{log:#?}");
    assert!(log.iter().any(|l| l.ends_with(" api key: ***")), "the step saw the secret: {log:#?}");
    assert!(log.iter().all(|l| !l.contains(&secret)), "{log:#?}");
    for args in [vec!["history", "--no-trunc", &r1.image], vec!["image", "inspect", &r1.image]] {
        let out = docker_cli(&args).unwrap();
        assert!(!out.contains(&secret), "docker {args:?} shows the secret:\n{out}");
    }

    // A dependency change reruns the step; its cache mount still holds the first build's file.
    let deps = std::fs::read_to_string(repo.path().join("deps.txt")).unwrap();
    repo.write("deps.txt", format!("{deps}is-odd 3.0.1 64\n"));
    repo.commit("one more dependency");
    let second = cluster.deploy("modern", None).await;
    second.live();
    assert!(second.log.iter().any(|l| l.ends_with(" cache mount: kept")), "{:#?}", second.log);
    // The steps are kept with the build: `builds show` lists each, cached or not, with its time.
    let out = cluster.cli(&["builds", "show", &second.build_id, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("builds show --json");
    let steps = json["output"]["build_steps"].as_array().cloned().unwrap_or_default();
    let named = |part: &str| steps.iter().find(|s| s["name"].as_str().is_some_and(|n| n.contains(part)));
    let deps_step = named("--mount=type=cache").unwrap_or_else(|| panic!("the deps RUN step: {json}"));
    assert_eq!(deps_step["cached"], false, "the dependency change reran it: {json}");
    assert!(deps_step["duration_ms"].is_u64(), "{json}");
    assert!(steps.iter().any(|s| s["cached"] == true), "a step from the cache: {json}");
    assert_eq!(steps.len() as u64, json["output"]["steps"].as_u64().unwrap(), "{json}");
    let out = cluster.cli(&["builds", "show", &second.build_id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CACHED  TIME") && text.contains("RUN --mount=type=bind"), "{text}");
    let body = cluster.wait_for_app("modern", "/", Duration::from_secs(60)).await.unwrap();
    assert!(body.contains("deps: 6"), "{body}");

    cache_doctor(&cluster, nanos).await;
}

/// `doctor`'s Dockerfile copies the whole context before its install step (a `RUN` given
/// the lockfile); `LOCKFILE_FIRST` is the same app copying the lockfile first. `NONCE`
/// keys the install step, and `app.py` holds it too, so no earlier run's cache answers.
const WHOLE_CONTEXT_FIRST: &str = "FROM slipway/busybox:latest
WORKDIR /app
COPY . /app/
RUN sh /app/install-deps.sh /app/requirements.txt /app/deps && echo NONCE
CMD [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done\"]
";
const LOCKFILE_FIRST: &str = "FROM slipway/busybox:latest
WORKDIR /app
COPY requirements.txt install-deps.sh /app/
RUN sh /app/install-deps.sh /app/requirements.txt /app/deps && echo NONCE
COPY . /app/
CMD [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done\"]
";

/// The cache doctor on a code-only change: with the whole context copied before the
/// install, it names the `COPY` (the first rebuilt step), the one changed file it copies
/// (`README.md` changed too, but `.dockerignore` keeps it out of the context) and advises
/// copying the lockfile first, naming the install step; in the deploy stream, `builds
/// show` and `--json`. With the lockfile copied first, the same change gets no advice.
async fn cache_doctor(cluster: &TestCluster, nanos: u128) {
    let nonce = format!("t20doc-{nanos}");
    let repo = GitRepo::empty();
    let install =
        std::fs::read_to_string(slipway_testkit::workspace_root().join("examples/hello/install-deps.sh"))
            .expect("the example's install script");
    repo.write("install-deps.sh", install);
    repo.write("requirements.txt", "left-pad 1.3.0 4\n");
    repo.write(".dockerignore", ".git\n*.md\n");
    repo.write("README.md", "doctor\n");
    repo.write("slipway.toml", "name = \"doctor\"\n");
    repo.write("Dockerfile", WHOLE_CONTEXT_FIRST.replace("NONCE", &nonce));
    let code = |v: u32| format!("print('v{v} {nonce}')\n");
    repo.write("app.py", code(1));
    repo.commit("whole context first");
    cluster.create_app("doctor", &repo.url()).await.expect("create app");
    cluster.deploy("doctor", None).await.live();

    repo.write("app.py", code(2));
    repo.write("README.md", "doctor, second edition\n");
    repo.commit("code only");
    let run = cluster.deploy("doctor", None).await;
    run.live();
    let doctor = doctor_of(cluster, &run.build_id);
    assert_eq!(doctor["step"], "[3/4] COPY . /app/", "{doctor}");
    assert_eq!(doctor["changed_paths"], serde_json::json!(["app.py"]), "{doctor}");
    let advice = doctor["advice"].as_str().unwrap_or_default();
    assert!(
        advice.contains(&format!(
            "`RUN sh /app/install-deps.sh /app/requirements.txt /app/deps && echo {nonce}` reran"
        )) && advice.contains("copy the lockfile"),
        "{doctor}"
    );
    let stream = &run.log;
    assert!(
        stream.iter().any(|l| l.contains("cache doctor: `[3/4] COPY . /app/` was rebuilt")),
        "{stream:#?}"
    );
    assert!(stream.iter().any(|l| l.ends_with("changed files it copies: app.py")), "{stream:#?}");
    let out = cluster.cli(&["builds", "show", &run.build_id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("changed files it copies: app.py") && text.contains("advice: "), "{text}");

    repo.write("Dockerfile", LOCKFILE_FIRST.replace("NONCE", &nonce));
    repo.commit("lockfile first");
    cluster.deploy("doctor", None).await.live();
    repo.write("app.py", code(3));
    repo.commit("code only again");
    let run = cluster.deploy("doctor", None).await;
    run.live();
    let doctor = doctor_of(cluster, &run.build_id);
    assert_eq!(doctor["step"], "[5/5] COPY . /app/", "{doctor}");
    assert_eq!(doctor["changed_paths"], serde_json::json!(["app.py"]), "{doctor}");
    assert_eq!(doctor["advice"], serde_json::Value::Null, "the install stayed cached: {doctor}");
}

/// `builds show ID --json`'s cache doctor finding.
fn doctor_of(cluster: &TestCluster, build_id: &str) -> serde_json::Value {
    let out = cluster.cli(&["builds", "show", build_id, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("builds show --json");
    assert!(json["cache_doctor"].is_object(), "a finding: {json}");
    json["cache_doctor"].clone()
}
