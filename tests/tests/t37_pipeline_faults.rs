//! t37: faults of the pipeline. A real scheduler, agent, registry (token auth) and
//! Swarm; the agent's pushes wait [`PUSH_RETRY_SECS`] for an unreachable registry.
//!
//! 1. The registry is stopped before the first deploy of `hello`: the build runs, its
//!    push finds nobody and the build log says it retries; the test restarts the registry
//!    as soon as the log shows the first retry, and the deploy goes live.
//! 2. The registry stopped again, a second deploy fails after the retry limit naming the
//!    registry and its last error; release 1 still serves, nothing new is recorded.
//! 3. The build filesystem runs out of space mid-build. BuildKit writes layers into the
//!    engine's data root, which the agent does not own (and filling the shared engine's
//!    disk would hurt every other test): the filesystem the agent owns is its build root,
//!    where each build's clone lives. So the build root becomes a small tmpfs
//!    ([`TMPFS_MIB`], above the cluster's 100 MiB floor) and the repository gets a file
//!    of [`HOARD_MB`] MB that the image does not need (`.dockerignore`): the clone's
//!    pack plus its checkout need twice that, and git's checkout runs out of space. The
//!    build fails naming the build root, its mount point and the free bytes; the build
//!    dir is gone; the node's report carries the floor its agent raised (the room the
//!    build found plus `min_free_bytes`), and again once the agent is killed and
//!    restarted (the floor is kept in its `state_dir`); a next deploy waits, placement saying why the
//!    node is avoided; once the tmpfs is grown (space freed), the floor lifts and that
//!    deploy goes live, the large file cloned and left out of the image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use slipway_proto as pb;
use slipway_testkit::GitRepo;
use slipway_tests::cluster::MIN_FREE_BYTES;
use slipway_tests::TestCluster;

/// The agent's `push_retry_secs` here: long enough for the test to see a retry and
/// restart the registry, short enough to wait out in part 2.
const PUSH_RETRY_SECS: u64 = 8;
/// The tmpfs the build root becomes in part 3, in MiB.
const TMPFS_MIB: u64 = 160;
/// The file that does not fit twice, in MB.
const HOARD_MB: u64 = 100;

/// The retry line the agent logs (`==> registry R unreachable, retrying push in Ns (e/l)`).
const RETRY_LINE: &str = "unreachable, retrying push in ";

/// Every build log the agent wrote so far (`<build_root>/logs/*.log`), concatenated.
fn agent_build_logs(root: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(root.join("logs")) else { return String::new() };
    entries.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect::<Vec<_>>().join("\n")
}

/// How many sessions agent 1 has opened so far.
fn sessions_opened(cluster: &TestCluster) -> usize {
    cluster.agent_log(1).matches("session open").count()
}

/// The agent's report as the leader holds it.
async fn report(cluster: &TestCluster) -> pb::NodeReport {
    let nodes = cluster.client().await.list_nodes(pb::ListNodesRequest {}).await.expect("nodes").into_inner();
    nodes.nodes.into_iter().find_map(|n| n.report).expect("a node with a report")
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `timeout`.
async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tmpfs mounted over a directory, unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "slipway-t37", &dir.display().to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Grows it to `mib` (what freeing space looks like to the agent).
    fn resize(&self, mib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m"), &self.0.display().to_string()])
            .status()
            .expect("mount -o remount");
        assert!(status.success(), "cannot resize the tmpfs on {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn t37_pipeline_faults() {
    let started = Instant::now();
    let Some(mut cluster) = TestCluster::start("pipefault").await else { return };
    let ready = Instant::now();
    eprintln!("t37: cluster up at {:?}", started.elapsed());
    let opened = sessions_opened(&cluster);
    cluster.kill_agent(1);
    cluster.set_agent_push_retry(1, PUSH_RETRY_SECS);
    cluster.start_agent(1);
    // The new agent's session, not the killed one's (still Ready for a few seconds).
    wait_until("the restarted agent holds a session", Duration::from_secs(30), || {
        let n = sessions_opened(&cluster);
        async move { n > opened }
    })
    .await;
    let root = cluster.agent_build_root(1).to_path_buf();
    let registry = cluster.registry().addr();
    let repo = GitRepo::from_example("hello");
    cluster.create_app("hello", &repo.url()).await.expect("create app");

    // 1. The registry is down when the push starts, and back while the agent retries.
    cluster.registry_mut().stop();
    let deploy = tokio::spawn(cluster.deploy_detached("hello").await);
    let timeout = Duration::from_secs(120);
    wait_until("a push retry in the build log", timeout, || {
        let logs = agent_build_logs(&root);
        async move { logs.contains(RETRY_LINE) }
    })
    .await;
    cluster.registry_mut().restart().await.expect("restart the registry");
    let run = deploy.await.expect("the deploy task");
    let first = run.live().clone();
    let log = run.log.join("\n");
    let retry = format!("==> registry {registry} {RETRY_LINE}");
    assert!(log.contains(&retry), "the streamed log shows the retry: {log}");
    assert!(log.contains(&format!("/{PUSH_RETRY_SECS}s): ")), "with its limit: {log}");
    assert!(log.contains(&format!("==> registry {registry} answered again")), "{log}");
    let body = cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.expect("hello answers");
    assert!(body.contains("hello"), "{body}");
    eprintln!("t37: push retried until the registry came back, deployed at {:?}", started.elapsed());

    // 2. The registry stays down past the limit: the build fails naming it, release 1
    //    still serves.
    cluster.registry_mut().stop();
    let t = Instant::now();
    let run = cluster.deploy("hello", None).await;
    let error = run.error();
    assert!(error.contains(&format!("registry {registry} (registry unreachable: ")), "{error}");
    assert!(error.contains(&format!("push_retry_secs = {PUSH_RETRY_SECS}): ")), "{error}");
    assert!(error.contains("connection refused"), "the last error: {error}");
    assert!(
        t.elapsed() >= Duration::from_secs(PUSH_RETRY_SECS),
        "it retried for the limit: {:?}",
        t.elapsed()
    );
    let releases = cluster.releases("hello").await;
    assert_eq!(releases.len(), 1, "nothing recorded: {releases:?}");
    assert!(cluster.service_image("hello").contains(&first.digest), "the service still runs release 1");
    cluster.wait_for_app("hello", "/", Duration::from_secs(10)).await.expect("release 1 still answers");
    cluster.registry_mut().restart().await.expect("restart the registry");
    eprintln!("t37: push failed after the retry limit at {:?}", started.elapsed());

    // 3. The build filesystem runs out of space mid-build.
    let tmpfs = match Tmpfs::mount(&root, TMPFS_MIB) {
        Ok(tmpfs) => tmpfs,
        Err(e) => {
            slipway_testkit::skip(&format!("part 3 needs a tmpfs on the build root (root): {e}"));
            return;
        }
    };
    let mut hoard = vec![0u8; (HOARD_MB * 1_000_000) as usize];
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut hoard)).expect("random bytes");
    // Stored and sent uncompressed: random bytes do not shrink, and zlib is slow.
    repo.git(&["config", "core.compression", "0"]);
    repo.write("hoard.bin", &hoard);
    drop(hoard);
    repo.write(".dockerignore", "hoard.bin\n");
    repo.commit("a file the image does not need");
    let run = cluster.deploy("hello", None).await;
    let error = run.error();
    let r = root.display();
    assert!(error.contains("the build filesystem ran out of space"), "{error}");
    assert!(error.contains(&format!("build root {r} (filesystem mounted at {r}) had ")), "{error}");
    assert!(error.contains(" bytes ("), "the free bytes: {error}");
    assert!(error.contains("the build dir was removed"), "{error}");
    assert!(error.contains("clone: "), "the phase it hit: {error}");
    let left: Vec<_> = std::fs::read_dir(&root)
        .expect("build root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "logs")
        .collect();
    assert!(left.is_empty(), "the build dir is gone: {left:?}");
    assert_eq!(cluster.releases("hello").await.len(), 1);
    cluster.wait_for_app("hello", "/", Duration::from_secs(10)).await.expect("release 1 still answers");

    // The node's report carries the floor: what the build found, plus min_free_bytes.
    wait_until("the raised floor in the node's report", Duration::from_secs(10), || async {
        report(&cluster).await.build_fs_floor_bytes > 0
    })
    .await;
    let r1 = report(&cluster).await;
    assert!(r1.build_fs_floor_bytes > r1.build_fs_available_bytes, "{r1:?}");
    assert!(r1.build_fs_floor_bytes >= MIN_FREE_BYTES + (TMPFS_MIB << 20) * 9 / 10, "{r1:?}");
    assert!(r1.build_fs_floor_reason.contains(&format!("ran out of space on {r}")), "{r1:?}");

    // The floor is kept on the agent's disk: a restarted agent reports it again.
    let opened = sessions_opened(&cluster);
    cluster.kill_agent(1);
    cluster.start_agent(1);
    wait_until("the restarted agent holds a session", Duration::from_secs(30), || {
        let n = sessions_opened(&cluster);
        async move { n > opened }
    })
    .await;
    let restarted_ms = u64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
    wait_until("a report sent by the restarted agent", Duration::from_secs(15), || async {
        report(&cluster).await.sent_at_ms > restarted_ms
    })
    .await;
    let r1 = report(&cluster).await;
    assert!(
        r1.build_fs_floor_bytes > r1.build_fs_available_bytes,
        "the restarted agent holds the floor: {r1:?}"
    );
    assert!(r1.build_fs_floor_reason.contains(&format!("ran out of space on {r}")), "{r1:?}");

    // A next deploy waits: placement says why the node is avoided. Growing the tmpfs
    // past the floor (space freed) lets it through.
    let deploy = tokio::spawn(cluster.deploy_detached("hello").await);
    wait_until("placement explains the raised floor", Duration::from_secs(15), || {
        let log = cluster.scheduler_log(1);
        async move { log.lines().any(|l| l.contains("build waits for a node") && l.contains("its agent raised")) }
    })
    .await;
    tmpfs.resize(TMPFS_MIB + 2 * HOARD_MB + 150);
    let run = deploy.await.expect("the deploy task");
    let second = run.live().clone();
    let rejected: Vec<String> = run
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Some(pb::deploy_event::Event::Placement(p)) => Some(p.rejected.iter().map(|r| r.reason.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        rejected.iter().any(|r| r.contains("below the floor of") && r.contains("its agent raised")),
        "the deploy was told why it waited: {rejected:?}"
    );
    assert_ne!(second.digest, first.digest);
    assert!(cluster.service_image("hello").contains(&second.digest));
    let r2 = report(&cluster).await;
    assert_eq!(r2.build_fs_floor_bytes, 0, "the floor lifted: {r2:?}");
    eprintln!(
        "t37: out of space, avoided, room again and deployed at {:?} ({:?} after the cluster was up)",
        started.elapsed(),
        ready.elapsed()
    );
    drop(tmpfs);
}
