//! t23: what an operator looks at. A real scheduler and agent (TestCluster); the fleet
//! page and `/metrics` refuse a caller without the scheduler's HTTP token; the fleet
//! page rendered by headless Chromium (the token as the Basic password) shows the node with the headroom numbers its
//! agent reported and reloads itself; the scheduler's `/metrics` is valid exposition
//! text carrying the node's gauges; the agent answers its own `/metrics`.
//!
//! Needs Docker (the cluster) and Debian's `chromium`; skips loudly without them, and
//! fails instead with SLIPWAY_REQUIRE_DOCKER=1. `SLIPWAY_T23_SCREENSHOT=PATH` keeps the
//! page's screenshot there for a look.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use slipway_proto as pb;
use slipway_testkit::exposition::{check, Sample};
use slipway_testkit::GitRepo;
use slipway_tests::browser::{chromium, headless};
use slipway_tests::TestCluster;

/// A valid git ref (git allows these characters) that is also HTML.
const EVIL_REF: &str = "<script>alert(\"x\")</script>";

/// The value of attribute `name` in the first tag of `dom` that contains `anchor`.
fn attr<'a>(dom: &'a str, anchor: &str, name: &str) -> Option<&'a str> {
    let at = dom.find(anchor)?;
    let tag = &dom[dom[..at].rfind('<')?..at + dom[at..].find('>')?];
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// The agent's metrics address, from the line it logs once it listens.
async fn agent_metrics_addr(cluster: &TestCluster) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = cluster.agent_log(1);
        if let Some(addr) = log.split("serving /metrics on http://").nth(1).and_then(|r| r.split('/').next())
        {
            return addr.to_string();
        }
        assert!(Instant::now() < deadline, "the agent did not say where it serves /metrics:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sample<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> &'a Sample {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name}{labels:?} in /metrics"))
}

#[test]
fn t23_fleet_page_and_metrics() {
    let Some(chromium) = chromium() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(fleet_page_and_metrics(&chromium));
}

async fn fleet_page_and_metrics(chromium: &Path) {
    let Some(cluster) = TestCluster::start("t23page").await else { return };
    let started = Instant::now();
    let http = cluster.http_addr(1);
    let nodes = cluster.client().await.list_nodes(pb::ListNodesRequest {}).await.expect("nodes").into_inner();
    let node = nodes.nodes.first().expect("the agent's node").clone();
    let report = node.report.clone().expect("the node reported");
    let name = node.name.clone();
    assert_eq!(name, "t23page-node");

    // A build whose ref is markup: it fails (no such ref), and the page must show the
    // ref and the error as text, never run them.
    let repo = GitRepo::from_example("hello");
    cluster.create_app("t23app", &repo.url()).await.expect("create app");
    let failed = cluster.deploy("t23app", Some(EVIL_REF)).await;
    let reason = format!("clone failed: ref '{EVIL_REF}' not found in {}", repo.url());
    let said = format!("build {} failed: {reason}", failed.build_id);
    assert_eq!(failed.error(), said, "the deploy of a missing ref fails in the clone");
    let build =
        cluster.builds("t23app").await.into_iter().find(|b| b.id == failed.build_id).expect("the build");
    assert_eq!((build.state(), build.error.as_str()), (pb::BuildState::Failed, reason.as_str()));

    // /metrics: valid text, the node's gauges equal to what its agent reported.
    // Behind the token (http.require_auth is on by default, also on loopback).
    let anonymous = reqwest::get(format!("http://{http}/metrics")).await.expect("GET /metrics");
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED, "an anonymous GET of /metrics");
    let text = cluster.http_get(1, "/metrics").await;
    assert_eq!(
        text.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = text.text().await.expect("metrics body");
    let samples =
        check(&text).unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{text}"));
    let of_node = [("node", name.as_str()), ("node_id", node.id.as_str())];
    let gauge = |metric: &str| sample(&samples, metric, &of_node).value;
    assert_eq!(gauge("slipway_node_build_fs_total_bytes"), report.build_fs_total_bytes as f64);
    assert_eq!(gauge("slipway_node_cpus"), f64::from(report.cpu_count));
    assert_eq!(gauge("slipway_node_memory_total_bytes"), report.memory_total_bytes as f64);
    assert_eq!(gauge("slipway_node_build_slots"), 2.0);
    assert_eq!(gauge("slipway_node_engine_healthy"), 1.0);
    assert_eq!(gauge("slipway_node_draining"), 0.0);
    assert!(gauge("slipway_node_last_report_age_seconds") < 5.0);
    assert_eq!(
        sample(&samples, "slipway_node_status", &[of_node[0], of_node[1], ("status", "ready")]).value,
        1.0
    );
    assert_eq!(sample(&samples, "slipway_raft_is_leader", &[]).value, 1.0);
    assert_eq!(sample(&samples, "slipway_raft_members", &[]).value, 1.0);
    assert!(sample(&samples, "slipway_raft_commit_index", &[]).value >= 1.0);
    assert_eq!(sample(&samples, "slipway_build_queue_length", &[]).value, 0.0);
    assert_eq!(sample(&samples, "slipway_builds", &[("state", "Failed")]).value, 1.0);
    let placed = sample(&samples, "slipway_placement_decisions_total", &[("outcome", "placed")]);
    assert_eq!(placed.value, 1.0, "the failed build was placed once");

    // The page as a browser renders it.
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let anonymous = headless(chromium, profile.path(), &["--dump-dom"], &format!("http://{http}/"));
    assert!(!anonymous.contains("data-node-id"), "the page without the token:\n{anonymous}");
    let url = cluster.fleet_page_url(1);
    let dom = headless(chromium, profile.path(), &["--dump-dom"], &url);
    assert!(dom.contains("<meta http-equiv=\"refresh\" content=\"3\">"), "the page reloads itself:\n{dom}");
    let row = format!("data-node-id=\"{}\"", node.id);
    assert!(dom.contains(&row), "the node's row:\n{dom}");
    let data =
        |name: &str| attr(&dom, &row, name).unwrap_or_else(|| panic!("{name} on the node's row:\n{dom}"));
    assert_eq!(data("data-node-name"), name);
    assert_eq!(data("data-status"), "ready");
    assert_eq!(data("data-cpus"), report.cpu_count.to_string());
    assert_eq!(data("data-build-fs-total-bytes"), report.build_fs_total_bytes.to_string());
    assert_eq!(data("data-memory-total-bytes"), report.memory_total_bytes.to_string());
    assert_eq!(data("data-build-slots"), "2");
    // What a person reads: headroom in words, in the row's cells.
    let text_row = &dom[dom.find(&row).unwrap()..];
    let text_row = &text_row[..text_row.find("</tr>").expect("end of the node's row")];
    let fs_total = slipway_proto::human_bytes(report.build_fs_total_bytes);
    let mem_total = slipway_proto::human_bytes(report.memory_total_bytes);
    for needle in [
        format!("of {fs_total}"),
        format!("of {} cores idle", report.cpu_count),
        format!("of {mem_total}"),
        "0 / 2".to_string(),
        report.docker_version.clone(),
        " s ago".to_string(),
    ] {
        assert!(text_row.contains(&needle), "{needle:?} in the node's row:\n{text_row}");
    }
    assert!(dom.contains("★ leader") && dom.contains("(this page)"), "the members table:\n{dom}");
    assert!(!dom.contains("<script"), "a ref became markup:\n{dom}");
    let builds = &dom[dom.find("id=\"builds\"").expect("the builds table")..];
    assert!(
        builds.contains("&lt;script&gt;alert(\"x\")&lt;/script&gt;") && builds.contains("failed"),
        "the failed build with its ref as text:\n{builds}"
    );
    assert!(dom.contains("t23app") && dom.contains("never deployed"), "the app:\n{dom}");

    // A screenshot, for a look (kept where SLIPWAY_T23_SCREENSHOT says).
    let png = std::env::var_os("SLIPWAY_T23_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile.path().join("fleet.png"));
    let shot = format!("--screenshot={}", png.display());
    headless(chromium, profile.path(), &[&shot, "--window-size=1400,900", "--hide-scrollbars"], &url);
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "a real PNG: {} bytes", bytes.len());

    // The agent's own /metrics.
    let agent = agent_metrics_addr(&cluster).await;
    let text = reqwest::get(format!("http://{agent}/metrics")).await.expect("GET agent /metrics");
    let text = text.text().await.expect("agent metrics body");
    let samples = check(&text).unwrap_or_else(|e| panic!("agent /metrics is not valid: {e}\n{text}"));
    assert_eq!(sample(&samples, "slipway_agent_cpus", &[]).value, f64::from(report.cpu_count));
    assert_eq!(sample(&samples, "slipway_agent_build_slots", &[]).value, 2.0);
    assert_eq!(sample(&samples, "slipway_agent_engine_healthy", &[]).value, 1.0);
    assert_eq!(
        sample(&samples, "slipway_agent_build_fs_total_bytes", &[]).value,
        report.build_fs_total_bytes as f64
    );
    assert!(sample(&samples, "process_resident_memory_bytes", &[]).value > 1e6);
    assert!(sample(&samples, "process_cpu_seconds_total", &[]).value > 0.0);

    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}
