//! The scheduler as a three-member raft cluster: each member a `slipway-scheduler`
//! process in its own network namespace ([`TestCluster::start_replicated`]), so a test
//! can `kill -9` one, restart it from its data dir, or cut it off from the others.
//!
//! A removed member's certificate is denied: the leader refuses its forwarded writes.
//! An agent whose session is with a leader that steps down (paused, then continued)
//! or is cut off from its peers reports to the new leader within a bound.
//!
//! Writes here are deploys (`Deploy` with a request id, acknowledged by the
//! `build_queued` event): each carries a unique git ref, so the builds' refs tell
//! which writes were applied, and how many times. [`Writers`] are clients writing in a
//! loop while a test kills or pauses the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slipway_proto::deploy_event::Event;
use slipway_proto::raft_client::RaftClient;
use slipway_proto::tls::{Credentials, Transport};
use slipway_proto::{self as pb};
use slipway_scheduler::config::SchedulerConfig;
use slipway_scheduler::dispatch::LEASE_CHECK;
use slipway_scheduler::raft::store::WRITE_TIMEOUT;
use slipway_scheduler::state::Command;
use slipway_testkit::GitRepo;
use slipway_tests::TestCluster;
use tokio::sync::Mutex;
use tokio_stream::StreamExt;

const APP: &str = "ledger";

/// Queues a deploy of `git_ref` through member `via`; Ok(build id) once the cluster
/// acknowledged it (the first event of the stream). Connecting counts in the 15 s an
/// attempt may take: a paused member takes the connection and never answers.
async fn write(cluster: &TestCluster, via: u64, git_ref: &str, request_id: &str) -> Result<String, String> {
    let req = pb::DeployRequest {
        app: APP.into(),
        git_ref: git_ref.into(),
        no_cache: false,
        request_id: request_id.into(),
    };
    let call = async {
        let mut client = cluster.member_client(via).await.map_err(|e| format!("connect: {e}"))?;
        let mut stream = client.deploy(req).await.map_err(|s| s.message().to_string())?.into_inner();
        match stream.next().await {
            Some(Ok(pb::DeployEvent { event: Some(Event::BuildQueued(id)) })) => Ok(id),
            other => Err(format!("unexpected first event: {other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(15), call).await.map_err(|_| "no answer in 15 s".to_string())?
}

/// An agent's reconnect after its session ends: a connect (its 3 s timeout) and a
/// backoff (at most 2 s), in `agent/src/session.rs`.
const AGENT_RECONNECT: Duration = Duration::from_secs(5);

/// Milliseconds since the epoch, as an agent stamps its reports (`sent_at_ms`).
fn now_ms() -> u64 {
    u64::try_from(std::time::UNIX_EPOCH.elapsed().expect("clock after 1970").as_millis()).expect("ms fit")
}

/// Waits until member `leader` holds the agent's session: it lists the agent's node
/// Ready with a report the agent sent after `since_ms`. Returns how long that took;
/// panics after `bound`, naming what the member listed.
async fn agent_reports_to(cluster: &TestCluster, leader: u64, since_ms: u64, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let listed = match cluster.member_client(leader).await {
            Ok(mut client) => client.list_nodes(pb::ListNodesRequest {}).await.map(|r| r.into_inner().nodes),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        let reached = listed.as_ref().is_ok_and(|nodes| {
            nodes.iter().any(|n| {
                n.status == pb::NodeStatus::Ready as i32
                    && n.report.as_ref().is_some_and(|r| r.sent_at_ms > since_ms)
            })
        });
        if reached {
            return started.elapsed();
        }
        if started.elapsed() > bound {
            let log = cluster.agent_log(1);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let sessions: Vec<String> = cluster
                .member_ids()
                .into_iter()
                .flat_map(|id| {
                    let log = cluster.scheduler_log(id);
                    log.lines()
                        .filter(|l| {
                            l.contains("agent session")
                                || l.contains("leadership changed")
                                || l.contains("leads")
                        })
                        .map(|l| format!("scheduler {id}: {l}"))
                        .collect::<Vec<_>>()
                })
                .collect();
            panic!(
                "the agent's reports did not reach scheduler {leader} within {bound:?}: it lists {listed:?}; \
                 the agent's log ends:\n{}\nthe members on agent sessions and leadership:\n{}",
                tail.join("\n"),
                sessions.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The git refs of the builds member `id` holds, with how often each occurs.
async fn refs_on(cluster: &TestCluster, id: u64) -> Result<BTreeMap<String, usize>, String> {
    let mut client = cluster.member_client(id).await.map_err(|e| e.to_string())?;
    let builds = client
        .list_builds(pb::ListBuildsRequest { app: APP.into() })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner()
        .builds;
    let mut refs = BTreeMap::new();
    for b in builds {
        *refs.entry(b.git_ref).or_insert(0) += 1;
    }
    Ok(refs)
}

/// Waits until every running member holds the same builds; returns them.
async fn converged(cluster: &TestCluster) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for id in cluster.running_members() {
            views.push(refs_on(cluster, id).await);
        }
        if let Some(Ok(first)) = views.first() {
            if views.iter().all(|v| v.as_ref() == Ok(first)) {
                return first.clone();
            }
        }
        assert!(Instant::now() < deadline, "members did not converge in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Clients writing deploys in a loop until stopped, each retrying an unacknowledged
/// write (same request id) on the next member until it is acknowledged (60 s at most:
/// around a paused leader one write can wait out a forward to it, 10 s, then an attempt
/// on it, 15 s, before the next member takes it).
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<Duration>>,
}

impl Writers {
    /// `clients` writers on `cluster`; client `c` starts on member `c % 3 + 1`. Refs are
    /// `{tag}c{c}w{seq}`.
    fn start(cluster: &Arc<TestCluster>, clients: u64, tag: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (cluster, stop, acked, tag) = (cluster.clone(), stop.clone(), acked.clone(), tag.to_string());
            tasks.push(tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (git_ref, request_id) = (format!("{tag}c{c}w{seq}"), format!("t22-{tag}-{c}-{seq}"));
                    let started = Instant::now();
                    let mut via = c % 3 + 1;
                    loop {
                        if cluster.running_members().contains(&via)
                            && write(&cluster, via, &git_ref, &request_id).await.is_ok()
                        {
                            break;
                        }
                        assert!(
                            started.elapsed() < Duration::from_secs(60),
                            "write {git_ref} not acknowledged in 60 s"
                        );
                        via = via % 3 + 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    slowest = slowest.max(started.elapsed());
                    acked.lock().await.insert(git_ref);
                    seq += 1;
                }
                slowest
            }));
        }
        Writers { stop, acked, tasks }
    }

    /// How many writes were acknowledged so far.
    async fn acked(&self) -> usize {
        self.acked.lock().await.len()
    }

    /// Waits (60 s at most) until `n` more writes than now are acknowledged.
    async fn wait_for_more(&self, n: usize) {
        let target = self.acked().await + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked().await < target {
            assert!(
                Instant::now() < deadline,
                "writers acknowledged {} of {target} in 60 s",
                self.acked().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops them once their current write is acknowledged: every acknowledged ref and
    /// the slowest write.
    async fn stop(self) -> (BTreeSet<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut slowest = Duration::ZERO;
        for task in self.tasks {
            slowest = slowest.max(task.await.expect("client task"));
        }
        let acked = self.acked.lock().await.clone();
        (acked, slowest)
    }
}

/// Every acknowledged write is on every member exactly once, and no write twice.
fn assert_exactly_once(refs: &BTreeMap<String, usize>, acked: &BTreeSet<String>) {
    for r in acked {
        assert_eq!(refs.get(r), Some(&1), "acknowledged write {r} is on every member exactly once");
    }
    let twice: Vec<_> = refs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "writes applied twice: {twice:?}");
}

/// A replicated cluster with the app registered and no agent (builds just queue).
async fn ledger_cluster(stack: &str, raft: &str) -> Option<TestCluster> {
    let mut cluster = TestCluster::start_replicated(stack, 3, raft).await?;
    cluster.kill_agent(1);
    cluster.create_app(APP, "file:///nonexistent/ledger").await.expect("create the app");
    Some(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_leader_kill_mid_stream_exactly_once() {
    let Some(cluster) = ledger_cluster("t22kill", "").await else { return };
    let cluster = Arc::new(cluster);
    // Four clients write in a loop, each retrying an unacknowledged write (same
    // request id) on the next member until it is acknowledged.
    let writers = Writers::start(&cluster, 4, "");
    // The kill lands mid-stream (some writes acknowledged), and the clients go on until
    // the new leader acknowledged a dozen more.
    writers.wait_for_more(12).await;
    let leader = cluster.leader().await;
    let killed_at = Instant::now();
    cluster.kill_member(leader);
    eprintln!("killed leader {leader} (kill -9) with {} writes acknowledged", writers.acked().await);
    writers.wait_for_more(12).await;
    let (acked, slowest) = writers.stop().await;
    eprintln!(
        "slowest acknowledged write: {slowest:?} (the failover window), {:?} after the kill",
        killed_at.elapsed()
    );

    cluster.start_member(leader).await;
    let refs = converged(&cluster).await;
    assert!(acked.len() > 20, "only {} writes acknowledged", acked.len());
    assert_exactly_once(&refs, &acked);
    eprintln!("{} writes acknowledged, {} applied, all members agree", acked.len(), refs.len());
}

/// The leader `kill -STOP`ped amid writes: a paused process keeps its sockets open and
/// answers nothing, so followers notice only the silence. The other two elect a leader
/// that takes writes within a bound derived from the members' raft config; once
/// continued, the old leader finds a newer term, steps down and follows; no write
/// acknowledged meanwhile is lost or applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_steps_down_when_continued_after_a_new_one_took_the_writes() {
    let Some(mut cluster) = ledger_cluster("t22pause", "").await else { return };
    // An agent holds a session with the leader (its builds of the ledger fail at once).
    cluster.start_agent(1);
    cluster.wait_for_ready_nodes(1).await;
    let cluster = Arc::new(cluster);
    let raft = SchedulerConfig::load(&cluster.member_config_path(1)).expect("the member's config").raft;
    // The followers hear nothing for one election timeout (at most the max), a split
    // vote costs another, then a write commits; plus 5 s for a loaded 2-core machine.
    let election = Duration::from_millis(raft.election_timeout_max_ms);
    let bound = election * 3 + Duration::from_secs(5);

    let writers = Writers::start(&cluster, 4, "p");
    writers.wait_for_more(10).await;
    let old = cluster.leader().await;
    let paused_at = Instant::now();
    cluster.pause_member(old);
    eprintln!("paused leader {old} (kill -STOP) with {} writes acknowledged", writers.acked().await);

    // A new leader, asked directly, takes a write.
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let (new, failover) = 'elected: loop {
        for &id in &others {
            let leads = cluster.status_of(id).await.is_ok_and(|s| s.state == "Leader" && s.leader_id == id);
            if leads && write(&cluster, id, "after-pause", "t22s-after-pause").await.is_ok() {
                break 'elected (id, paused_at.elapsed());
            }
        }
        assert!(paused_at.elapsed() < bound, "no new leader took a write within {bound:?} of the pause");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "failover: scheduler {new} took a write {failover:?} after the pause (bound {bound:?}: 3 × \
         election_timeout_max_ms {} + 5 s)",
        raft.election_timeout_max_ms
    );
    assert!(failover < bound, "failover {failover:?} over {bound:?}");
    writers.wait_for_more(10).await;

    // Continued, the old leader learns of the newer term and follows the new leader.
    let resumed_at = Instant::now();
    let resumed_ms = now_ms();
    cluster.resume_member(old);
    loop {
        let view = cluster.status_of(old).await;
        if view.as_ref().is_ok_and(|s| s.state == "Follower" && s.leader_id == new) {
            break;
        }
        assert!(
            resumed_at.elapsed() < bound,
            "scheduler {old} does not follow {new} after SIGCONT: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("scheduler {old} follows {new} {:?} after SIGCONT", resumed_at.elapsed());
    // The agent held its session with the paused leader. Stepped down, that member ends
    // the session naming the leader, and the agent reports to the leader. Bound: the
    // agent's reconnect, a report interval, plus 5 s for a loaded machine.
    let config = SchedulerConfig::load(&cluster.member_config_path(new)).expect("the member's config");
    let agent_bound =
        AGENT_RECONNECT + Duration::from_secs(u64::from(config.agents.report_interval_secs) + 5);
    let moved = agent_reports_to(&cluster, new, resumed_ms, agent_bound).await;
    eprintln!(
        "the agent reports to scheduler {new} {moved:?} after {old} followed it (bound {agent_bound:?})"
    );
    writers.wait_for_more(5).await;
    let (mut acked, slowest) = writers.stop().await;
    acked.insert("after-pause".into());

    let refs = converged(&cluster).await;
    assert_exactly_once(&refs, &acked);
    eprintln!(
        "{} writes acknowledged, {} applied, all members agree; slowest write {slowest:?}",
        acked.len(),
        refs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_minority_takes_no_writes_and_converges_after_healing() {
    let Some(mut cluster) = ledger_cluster("t22part", "").await else { return };
    // An agent holds a session with the leader (its builds of the ledger fail at once).
    cluster.start_agent(1);
    cluster.wait_for_ready_nodes(1).await;
    write(&cluster, 1, "before", "t22p-before").await.expect("write before the partition");

    let old = cluster.leader().await;
    let (cut_at, cut_ms) = (Instant::now(), now_ms());
    cluster.isolate(old);
    eprintln!("cut off the leader, scheduler {old}");
    let lone = write(&cluster, old, "lonely", "t22p-lonely").await;
    assert!(lone.is_err(), "the cut-off leader acknowledged a write: {lone:?}");
    eprintln!("write to the cut-off member: {}", lone.unwrap_err());

    let majority: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let started = Instant::now();
    let mut served = None;
    while served.is_none() && started.elapsed() < Duration::from_secs(20) {
        for &via in &majority {
            if write(&cluster, via, "majority", "t22p-majority").await.is_ok() {
                served = Some(via);
                break;
            }
        }
    }
    let via = served.expect("the majority accepts writes while the old leader is cut off");
    eprintln!("majority (via {via}) accepted a write {:?} after the cut", started.elapsed());
    let status = cluster.status_of(via).await.expect("status");
    assert!(status.leader_id != old && status.leader_id != 0, "{status:?}");

    // The agent held its session with the old leader, which still reaches it but not its
    // peers, and still believes it leads (openraft does not step it down). It cannot
    // confirm its leadership with a quorum, so it lets the agent go, and the agent
    // reports to the new leader. Bound: one lease check, one confirmation (the store's
    // write timeout), the agent's reconnect, a report interval, plus 5 s for a loaded
    // machine.
    let config = SchedulerConfig::load(&cluster.member_config_path(via)).expect("the member's config");
    let agent_bound = LEASE_CHECK
        + WRITE_TIMEOUT
        + AGENT_RECONNECT
        + Duration::from_secs(u64::from(config.agents.report_interval_secs) + 5);
    agent_reports_to(&cluster, status.leader_id, cut_ms, agent_bound).await;
    eprintln!(
        "the agent reports to the new leader {} {:?} after the cut (bound {agent_bound:?})",
        status.leader_id,
        cut_at.elapsed()
    );

    cluster.heal(old);
    let refs = converged(&cluster).await;
    assert_eq!(refs.keys().map(String::as_str).collect::<Vec<_>>(), ["before", "majority"]);
    assert!(!refs.contains_key("lonely"), "the minority's write must not survive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_every_member_and_starting_them_again_keeps_the_state() {
    let Some(cluster) = ledger_cluster("t22restart", "").await else { return };
    for i in 0..10 {
        write(&cluster, i % 3 + 1, &format!("r{i}"), &format!("t22r-{i}")).await.expect("write");
    }
    let before = converged(&cluster).await;
    for id in 1..=3 {
        cluster.kill_member(id);
    }
    for id in 1..=3 {
        cluster.start_member(id).await;
    }
    let leader = cluster.leader().await;
    eprintln!("after a full restart scheduler {leader} leads");
    assert_eq!(converged(&cluster).await, before);
    write(&cluster, leader, "after", "t22r-after").await.expect("the restarted cluster takes writes");
}

/// `raft.join_catch_up_secs` of the join test: short, yet ample for a snapshot of a
/// few dozen entries over loopback.
const JOIN_CATCH_UP_SECS: u64 = 8;

/// A TCP proxy on `ip` (a fresh port) to `to`, which forwards only the first connection
/// (the leader's check of a joiner) and holds every later one open without a byte
/// through (its raft traffic). Returns its address and how many connections it held.
async fn first_connection_only(ip: std::net::Ipv4Addr, to: &str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address").to_string();
    let (to, held) = (to.to_string(), Arc::new(AtomicUsize::new(0)));
    let counter = held.clone();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut first = true;
        while let Ok((mut inbound, _)) = listener.accept().await {
            if std::mem::take(&mut first) {
                let to = to.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            } else {
                counter.fetch_add(1, Ordering::SeqCst);
                kept.push(inbound);
            }
        }
    });
    (addr, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_and_wiped_member_rejoins_as_new_and_catches_up_by_snapshot() {
    let raft = format!("snapshot_every = 20\nkeep_logs = 5\njoin_catch_up_secs = {JOIN_CATCH_UP_SECS}");
    let Some(mut cluster) = ledger_cluster("t22join", &raft).await else {
        return;
    };
    for i in 0..60 {
        write(&cluster, 1, &format!("j{i}"), &format!("t22j-{i}")).await.expect("write");
    }
    let leader = cluster.leader().await;
    let removed = (1..=3).find(|id| *id != leader).expect("a follower");
    let out = cluster.cli(&["cluster", "remove", &removed.to_string()]);
    assert!(out.status.success(), "cluster remove: {}", String::from_utf8_lossy(&out.stderr));

    // The removed scheduler still runs and, hearing no leader, campaigns: the members
    // refuse its votes, so the leader and the term stay as they were. Watched until it
    // campaigned twice (its own term went up by two), each campaign once its election
    // timeout (the default's 800 ms at most, plus the leader lease) ran out.
    let before = cluster.status_of(leader).await.expect("leader status");
    let term_of_removed = || async { cluster.status_of(removed).await.map_or(0, |s| s.term) };
    let removed_from = term_of_removed().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while term_of_removed().await < removed_from + 2 {
        assert!(Instant::now() < deadline, "the removed member did not campaign twice in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = cluster.status_of(leader).await.expect("leader status");
    assert_eq!(
        (after.leader_id, after.term),
        (leader, before.term),
        "the removed member disturbed the cluster"
    );
    write(&cluster, leader, "after-removal", "t22j-after-removal").await.expect("the cluster takes writes");

    // Its certificate is denied: a write it forwards to the leader is refused, saying why.
    let theirs = Credentials::load_dir(&cluster.data_dir_of(removed).join("pki")).unwrap().expect("its cert");
    let channel = Transport::Tls(Arc::new(theirs)).endpoint(&cluster.grpc_addr(leader)).unwrap();
    let forwarded =
        Command::CreateApp { name: "sneaky".into(), repo: "r".into(), branch: "main".into(), at_ms: 1 };
    let refused = RaftClient::new(channel.connect().await.expect("the leader takes the handshake"))
        .forward_write(pb::RaftPayload { json: serde_json::to_vec(&forwarded).unwrap() })
        .await
        .expect_err("a removed scheduler's forwarded write");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains(&format!("scheduler {removed} was removed from the cluster")),
        "{refused:?}"
    );
    assert!(cluster.scheduler_log(leader).contains("refused a call from a revoked certificate"));
    let mut client = cluster.member_client(leader).await.expect("connect to the leader");
    let apps = client.list_apps(pb::ListAppsRequest {}).await.expect("list apps").into_inner().apps;
    assert!(apps.iter().all(|a| a.name != "sneaky"), "nothing was recorded: {apps:?}");

    // The same host comes back with an empty data dir, as a new member (ids are never reused).
    let addr = cluster.grpc_addr(removed);
    cluster.replace_member(removed, 4).await;
    for i in 60..80 {
        write(&cluster, cluster.leader().await, &format!("j{i}"), &format!("t22j-{i}")).await.expect("write");
    }

    // A newcomer the leader can check but then not reach (its raft traffic goes nowhere)
    // never catches up: after `raft.join_catch_up_secs` it is taken out again, saying why.
    let lab = cluster.lab().expect("a replicated cluster runs in network namespaces");
    let (proxy, held) = first_connection_only(lab.host_ip(), &addr).await;
    let started = Instant::now();
    let out = cluster.cli(&["cluster", "join", &proxy]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("join via {proxy} (unreachable after the check): {took:?}: {}", stderr.trim());
    assert!(!out.status.success(), "a join that cannot catch up succeeded");
    assert!(
        stderr.contains(&format!("did not catch up with the leader within {JOIN_CATCH_UP_SECS} s")),
        "{stderr}"
    );
    let bound = Duration::from_secs(JOIN_CATCH_UP_SECS);
    assert!(took >= bound, "the join failed after {took:?}, before the {bound:?} it is given");
    // Headroom for a loaded machine: the removal is one committed membership change.
    assert!(took < bound + Duration::from_secs(20), "the join took {took:?}, given {bound:?}");
    assert!(held.load(Ordering::SeqCst) > 0, "the leader never tried to replicate to the newcomer");
    let logged = (1..=3).filter(|id| *id != removed).map(|id| cluster.scheduler_log(id)).collect::<String>();
    assert!(logged.contains("took out the learner that did not catch up"), "no member logged the removal");
    let status = cluster.status_of(cluster.leader().await).await.expect("leader status");
    assert!(!status.members.iter().any(|m| m.id == 4 || m.addr == proxy), "still a member: {status:?}");

    let out = cluster.cli(&["cluster", "join", &addr]);
    assert!(out.status.success(), "cluster join: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());

    let refs = converged(&cluster).await;
    assert_eq!(refs.len(), 81);
    let status = cluster.status_of(4).await.expect("status of the new member");
    assert!(status.snapshot_index > 0, "the new member got a snapshot: {status:?}");
    assert!(status.members.iter().any(|m| m.id == 4 && m.voter), "{status:?}");
    assert!(!status.members.iter().any(|m| m.id == removed), "{status:?}");
    let out = cluster.cli(&["cluster", "status"]);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_in_flight_build_survives_a_leader_kill_and_is_released_once() {
    let Some(cluster) = TestCluster::start_replicated("t22build", 3, "").await else { return };
    let repo = GitRepo::from_example("hello");
    // A build step slow enough to kill the leader while the agent runs it.
    let dockerfile = std::fs::read_to_string(repo.path().join("Dockerfile")).expect("read Dockerfile");
    let slow = dockerfile.replace("COPY www /app/www", "RUN sleep 6\nCOPY www /app/www");
    repo.write("Dockerfile", slow);
    repo.commit("a slow build step");
    cluster.create_app("hello", &repo.url()).await.expect("create the app");

    let leader = cluster.leader().await;
    let build_id = {
        let mut client = cluster.member_client(leader).await.expect("connect");
        let req = pb::DeployRequest {
            app: "hello".into(),
            git_ref: String::new(),
            no_cache: false,
            request_id: "t22-slow".into(),
        };
        let mut stream = client.deploy(req).await.expect("deploy").into_inner();
        match stream.next().await {
            Some(Ok(pb::DeployEvent { event: Some(Event::BuildQueued(id)) })) => id,
            other => panic!("unexpected first event {other:?}"),
        }
    };
    let running = wait_build(&cluster, &build_id, |b| b.state == pb::BuildState::Running as i32).await;
    eprintln!("build {build_id} runs on node {}; killing leader {leader}", running.node_id);
    cluster.kill_member(leader);

    let done = wait_build(&cluster, &build_id, |b| b.release != 0).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    assert_eq!(done.state, pb::BuildState::Pushed as i32, "{done:?}");
    assert_eq!(done.attempt, 1, "the build finished on its first attempt, not placed again: {done:?}");
    assert_eq!(done.node_id, running.node_id);

    // The new leader deploys the release the old one never saw: once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Right after the kill, a loaded machine may still be electing: retry then.
        let releases = match cluster.try_releases("hello").await {
            Ok(releases) => releases,
            Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(status) => panic!("list releases: {status}"),
        };
        assert_eq!(releases.len(), 1, "exactly one release: {releases:?}");
        if releases[0].deploy_state == pb::DeployState::Deployed as i32 {
            break;
        }
        assert!(releases[0].deploy_state != pb::DeployState::Failed as i32, "{releases:?}");
        assert!(Instant::now() < deadline, "release not deployed in 120 s: {releases:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.wait_for_app("hello", "/", Duration::from_secs(60)).await.expect("the app answers");
    assert_eq!(cluster.builds("hello").await.len(), 1);
}

/// Polls the build through whichever member leads until `done` holds (90 s at most).
async fn wait_build(cluster: &TestCluster, id: &str, done: impl Fn(&pb::Build) -> bool) -> pb::Build {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let build = cluster.client().await.get_build(pb::GetBuildRequest { id: id.into() }).await;
        if let Ok(b) = build.map(|r| r.into_inner()) {
            if done(&b) {
                return b;
            }
            assert!(
                b.state != pb::BuildState::Failed as i32 && b.state != pb::BuildState::Cancelled as i32,
                "build ended badly: {b:?}"
            );
        }
        assert!(Instant::now() < deadline, "build {id} did not get there in 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
