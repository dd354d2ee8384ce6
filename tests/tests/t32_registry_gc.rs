//! t32: registry retention and garbage collection on a real scheduler, agent, registry
//! (token auth) and Swarm. An app deployed 15 times (15 images, each with its own 1 MiB
//! random layer) under `keep_last = 5`: `gc --dry-run` lists exactly the 10 oldest and
//! changes nothing; `gc` deletes exactly those manifests (HEAD: 404 collected, 200 kept),
//! the registry's data directory shrinks by about the bytes reported, a build queued
//! while the GC holds builds waits and then goes live, a rollback to a kept release
//! works and one to a collected release is refused naming the policy and the oldest
//! release kept, `releases --json` marks them; an old commit rebuilt after the GC (its
//! layer was swept) deploys, and its task restarts from the registry after the engine
//! lost the image. Last, a GC whose garbage-collect is killed mid-run leaves every kept
//! release pullable.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use slipway_testkit::{docker_cli, GitRepo};
use slipway_tests::TestCluster;

const APP: &str = "gcapp";
const MIB: u64 = 1 << 20;

/// The app: busybox, a 1 MiB random file per commit (the layer whose bytes matter), no port.
fn app_repo() -> GitRepo {
    let repo = GitRepo::empty();
    repo.write("slipway.toml", format!("name = \"{APP}\"\n[run]\nreplicas = 1\n"));
    repo.write(
        "Dockerfile",
        "FROM slipway/busybox:latest\nCOPY blob.bin /blob.bin\nCOPY n.txt /n.txt\n\
         CMD [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n",
    );
    repo
}

fn commit_image(repo: &GitRepo, n: u32) -> String {
    let blob: Vec<u8> = (0..MIB).map(|_| rand_byte()).collect();
    repo.write("blob.bin", blob);
    repo.write("n.txt", format!("{n}\n"));
    repo.commit(&format!("image {n}"))
}

fn rand_byte() -> u8 {
    use std::cell::Cell;
    thread_local!(static X: Cell<u64> = Cell::new(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1));
    X.with(|x| {
        let mut v = x.get();
        v ^= v << 13;
        v ^= v >> 7;
        v ^= v << 17;
        x.set(v);
        (v >> 24) as u8
    })
}

fn du_bytes(dir: &Path) -> u64 {
    let out = std::process::Command::new("du").args(["-sb"]).arg(dir).output().expect("du");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

fn cli_json(cluster: &TestCluster, args: &[&str]) -> Value {
    let out = cluster.cli(args);
    assert!(out.status.success(), "slipway {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The task must pull its image again: the engine forgets it, the service restarts.
fn restart_from_registry(cluster: &TestCluster) {
    let image = cluster.service_image(APP);
    let _ = docker_cli(&["rmi", "-f", &image]);
    cluster
        .swarm_cli(&[
            "service",
            "update",
            "--force",
            "--with-registry-auth",
            "--detach=false",
            "-q",
            &cluster.service(APP),
        ])
        .unwrap_or_else(|e| panic!("the service restarts from the registry: {e}"));
    let tasks = cluster
        .swarm_cli(&[
            "service",
            "ps",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
            &cluster.service(APP),
        ])
        .unwrap();
    assert!(tasks.contains("Running"), "task runs after pulling {image}: {tasks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_last_five_of_fifteen() {
    // garbage-collect runs a second late, so a build can be queued while builds are held.
    let settings = "retention.keep_last = 5\ngc.interval_secs = 0\n\
        gc.command = [\"sh\", \"-c\", \"sleep 2; exec docker-registry garbage-collect \\\"$0\\\"\", \"{registry_config}\"]\n";
    let Some(cluster) = TestCluster::start_with_registry("gc32", settings).await else { return };
    let repo = app_repo();
    cluster.create_app(APP, &repo.url()).await.expect("create");
    let mut commits = Vec::new();
    let mut digests = Vec::new();
    for n in 1..=15 {
        let sha = commit_image(&repo, n);
        if n == 1 {
            repo.tag("old1");
        }
        let live = cluster.deploy(APP, None).await.live().clone();
        assert_eq!(live.number, u64::from(n));
        commits.push(sha);
        digests.push(live.digest);
    }
    let registry = cluster.registry();

    // Dry run: exactly the 10 oldest, nothing changes.
    let dry = cli_json(&cluster, &["gc", "--dry-run", "--json"]);
    let app = dry["apps"].as_array().unwrap().iter().find(|a| a["app"] == APP).unwrap().clone();
    let listed: Vec<&str> =
        app["deleted"].as_array().unwrap().iter().map(|d| d["digest"].as_str().unwrap()).collect();
    let mut expected: Vec<&str> = digests[..10].iter().map(String::as_str).collect();
    expected.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "dry run lists the 10 oldest");
    assert_eq!(app["oldest_kept"], 11);
    for d in &digests {
        assert!(registry.has_manifest(APP, d).await, "dry run deleted nothing");
    }

    // The GC, with a deploy queued while it holds builds.
    let before = du_bytes(&registry.data_dir());
    let started = Instant::now();
    let gc = cluster.cli_spawn(&["gc", "--json"]);
    let log_deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.scheduler_log(1).contains("registry GC: builds held") {
        assert!(Instant::now() < log_deadline, "the GC never held builds");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sha16 = commit_image(&repo, 16);
    let queued = cluster.deploy(APP, None);
    let gc_out = tokio::task::spawn_blocking(move || gc.wait_with_output().unwrap());
    let (run16, gc_out) = tokio::join!(queued, gc_out);
    let gc_out = gc_out.unwrap();
    assert!(gc_out.status.success(), "gc: {}", String::from_utf8_lossy(&gc_out.stderr));
    let report: Value = serde_json::from_slice(&gc_out.stdout).unwrap();
    let gc_took = started.elapsed();
    let release16 = run16.live().clone();
    assert_eq!(release16.number, 16, "the build queued during the GC waited and went live");
    digests.push(release16.digest.clone());
    commits.push(sha16);
    assert!(report["blob_gc_ok"].as_bool().unwrap(), "{report}");
    let reclaimed = report["bytes_reclaimed"].as_u64().unwrap();
    let pause_ms = report["pause_ms"].as_u64().unwrap();
    println!("FIGURE gc: bytes reclaimed {reclaimed} ({} MiB) for 10 images; registry pause {pause_ms} ms; gc call {gc_took:?}", reclaimed / MIB);
    for (i, d) in digests[..15].iter().enumerate() {
        assert_eq!(
            registry.has_manifest(APP, d).await,
            i >= 10,
            "release {}: kept iff among the last 5",
            i + 1
        );
    }
    let after = du_bytes(&registry.data_dir());
    // The new build (16) pushed about 1 MiB + its small layers meanwhile; count it back.
    let pushed16 = release16.bytes_pushed;
    let shrink = before as i64 + pushed16 as i64 - after as i64;
    println!("FIGURE gc: data dir {before} -> {after} bytes (shrink {shrink}, build 16 pushed {pushed16})");
    // Tolerance: the report counts blob sizes as the manifests give them (compressed,
    // exactly the blob files); du also counts the directories and link files the GC
    // removes, and bytes_pushed is uncompressed: 20 % plus 1 MiB either way.
    let tolerance = (reclaimed / 5 + MIB) as i64;
    assert!(reclaimed >= 10 * MIB, "10 random MiB layers: {reclaimed}");
    assert!((shrink - reclaimed as i64).abs() <= tolerance, "shrink {shrink} vs reported {reclaimed}");

    // Deleting a manifest by digest removed the tags pointing at it (Distribution 2.8).
    let tags = registry.tags(APP).await;
    for r in cluster.releases(APP).await.iter().filter(|r| r.number <= 10) {
        assert!(
            !tags.contains(&r.build_id),
            "tag {} of collected release {} is gone: {tags:?}",
            r.build_id,
            r.number
        );
    }
    assert!(tags.contains(&"latest".to_string()), "{tags:?}");

    // Rollbacks: to a kept release works; to a collected one is refused, naming why.
    let rolled = cluster.rollback(APP, Some(13)).await.live().clone();
    assert_eq!(rolled.digest, digests[12]);
    let refused = cluster.cli(&["rollback", APP, "--to", "3"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("keep_last = 5") && err.contains("oldest release still kept is 12"), "{err}");
    let releases = cli_json(&cluster, &["releases", APP, "--json"]);
    for r in releases.as_array().unwrap() {
        let n = r["number"].as_u64().unwrap();
        assert_eq!(r["collected"], n <= 10, "release {n}: {r}");
        assert_eq!(r["rollbackable"], n >= 12, "release {n}: {r}");
    }

    // An old commit rebuilt after its layer was swept: pushed again, deploys, restarts from the registry.
    let rebuilt = cluster.deploy(APP, Some("old1")).await.live().clone();
    registry.pullable(APP, &rebuilt.digest).await.expect("the rebuilt image is whole");
    restart_from_registry(&cluster);

    // Kill the GC command halfway (manifests deleted, blobs not yet swept, or mid-sweep):
    // every kept release stays pullable.
    for n in 19..=20 {
        commit_image(&repo, n);
        cluster.deploy(APP, None).await.live();
    }
    let gc = cluster.cli_spawn(&["gc", "--json"]);
    let scheduler = cluster.member_pid(1).expect("scheduler runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        if let Some(pid) = child_running(scheduler, "garbage-collect") {
            break pid;
        }
        assert!(Instant::now() < deadline, "garbage-collect never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    std::process::Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    let out = tokio::task::spawn_blocking(move || gc.wait_with_output().unwrap()).await.unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("garbage-collect failed"),
        "a killed garbage-collect is reported: {said} {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let kept = cli_json(&cluster, &["releases", APP, "--json"]);
    let mut checked = 0;
    for r in kept.as_array().unwrap().iter().filter(|r| r["rollbackable"] == true) {
        registry
            .pullable(APP, r["digest"].as_str().unwrap())
            .await
            .expect("kept release pullable after a killed GC");
        checked += 1;
    }
    assert!(checked >= 5, "{checked}");
    // The next GC finishes the job; the kept releases are still whole after its sweep.
    let again = cli_json(&cluster, &["gc", "--json"]);
    assert!(again["blob_gc_ok"].as_bool().unwrap(), "{again}");
    for r in kept.as_array().unwrap().iter().filter(|r| r["rollbackable"] == true) {
        registry
            .pullable(APP, r["digest"].as_str().unwrap())
            .await
            .expect("kept release pullable after the next GC");
    }
    restart_from_registry(&cluster);
}

/// A child of `parent` (this test's scheduler) whose command line contains `needle`:
/// the GC command, while it waits before garbage-collect or runs it.
fn child_running(parent: u32, needle: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            return Some(pid);
        }
    }
    None
}
