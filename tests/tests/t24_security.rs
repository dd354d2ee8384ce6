//! t24: who may talk to slipway. A real scheduler and agent over mutual TLS
//! ([`TestCluster`]): every gRPC service refuses a caller without a certificate, with
//! one from another CA, with an expired one, or with the wrong role, and says so; an
//! agent joins with a token, not with a rotated-out one nor one pinning another CA; an
//! agent's certificate renews while its session stays open; no file a scheduler keeps
//! holds a token's secret, and the files that hold keys are private; a node's id and
//! name are its own until `slipway nodes remove`, which closes its session and denies
//! its certificate on every call and renewal.
//!
//! The HTTP side, on lone schedulers (no agent, registry or engine: none is needed):
//! over TLS with the cluster CA, the fleet page and `/metrics` refuse an anonymous GET
//! and admit the bearer token or an operator's certificate; an oversized body and a
//! request trickled in are cut off; `/healthz` turns 503 when the store is taken away
//! and when a full disk fails a raft write.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use slipway_proto::agent_message::Msg;
use slipway_proto::agent_service_client::AgentServiceClient;
use slipway_proto::control_client::ControlClient;
use slipway_proto::enrollment_client::EnrollmentClient;
use slipway_proto::raft_client::RaftClient;
use slipway_proto::tls::{Credentials, JoinToken, PeerIdentity, Role, Transport, SERVER_NAME};
use slipway_proto::{self as pb};
use slipway_scheduler::security::pki::Ca;
use slipway_testkit::{free_port, KillOnDrop};
use slipway_tests::cluster::binary;
use slipway_tests::TestCluster;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;

const HOUR: Duration = Duration::from_secs(3600);

/// A channel to `addr` presenting `creds`.
async fn channel(addr: &str, creds: Credentials) -> Result<Channel, String> {
    let endpoint = Transport::Tls(std::sync::Arc::new(creds)).endpoint(addr)?;
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// A channel to `addr` over TLS that trusts the cluster CA but presents no certificate.
async fn anonymous(addr: &str, ca_pem: &str) -> Channel {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(SERVER_NAME);
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn list_apps(channel: Channel) -> Result<(), tonic::Status> {
    ControlClient::new(channel).list_apps(pb::ListAppsRequest {}).await.map(|_| ())
}

/// Opens an agent session saying Hello as `node_id`; the first answer or the refusal.
async fn agent_session(channel: Channel, node_id: &str) -> Result<(), tonic::Status> {
    hello_as(channel, node_id, "intruder").await
}

/// Opens an agent session saying Hello as `node_id` named `name`; the first answer or
/// the refusal.
async fn hello_as(channel: Channel, node_id: &str, name: &str) -> Result<(), tonic::Status> {
    let hello = pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            node_id: node_id.into(),
            name: name.into(),
            report: Some(pb::NodeReport::default()),
            ..Default::default()
        })),
    };
    let outbound = tokio_stream::iter(vec![hello]);
    let mut inbound = AgentServiceClient::new(channel).session(outbound).await?.into_inner();
    inbound.message().await.map(|_| ())
}

/// Asks the scheduler at `addr` to renew `creds`.
async fn renew(addr: &str, creds: Credentials) -> Result<(), tonic::Status> {
    let (_key, csr_pem) = slipway_proto::tls::new_key_and_csr().unwrap();
    let channel = channel(addr, creds).await.unwrap();
    EnrollmentClient::new(channel).renew(pb::RenewRequest { csr_pem }).await.map(|_| ())
}

async fn raft_vote(channel: Channel) -> Result<(), tonic::Status> {
    RaftClient::new(channel).vote(pb::RaftPayload { json: b"null".to_vec() }).await.map(|_| ())
}

/// A TLS record holding a fatal (2) `decode_error` (50) alert, as rustls sends it
/// before a version is agreed (record version TLS 1.2).
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50];

/// Dials `addr` with a bare rustls client that trusts `creds`' CA and presents `creds`
/// whatever their dates, and returns the alert the server answers with: Err when the
/// server cannot be reached, or the connection ends or serves without an alert.
async fn tls_alert_presenting(addr: &str, creds: &Credentials) -> Result<rustls::AlertDescription, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let alert = |err: &std::io::Error| match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => Ok(*alert),
        _ => Err(format!("no alert, but {err:?}")),
    };
    // With TLS 1.3 the client's side of the handshake ends before the server has checked
    // its certificate: the alert then comes with the first read.
    let mut tls = match slipway_tests::tls_client::connect(addr, creds, SERVER_NAME).await? {
        Ok(tls) => tls,
        Err(err) => return alert(&err),
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Err(_) => Err("no answer within 10 s".into()),
        Ok(Ok(0)) => Err("the server closed the connection without an alert".into()),
        Ok(Ok(n)) => Err(format!("the server served {n} bytes")),
        Ok(Err(err)) => alert(&err),
    }
}

/// Sends the HTTP/2 preface in plain text to `addr` and returns every byte the server
/// answers until it closes the connection (Err when it cannot be reached or keeps it open).
async fn plain_text_answer(addr: &str) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    match read {
        Err(_) => Err(format!("the connection stayed open; {answer:02x?} so far")),
        // A reset after the alert is still a close.
        Ok(_) if !answer.is_empty() => Ok(answer),
        Ok(result) => Err(format!("closed without a byte: {result:?}")),
    }
}

fn refused(result: Result<(), tonic::Status>, code: Code, needle: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(status.message().contains(needle), "{what}: {:?} should say {needle:?}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_refuses_strangers_and_wrong_roles() {
    let Some(cluster) = TestCluster::start("t24auth").await else { return };
    let addr = cluster.grpc_addr(1);
    let ca = cluster.ca();
    let admin = cluster.admin_credentials().expect("TLS").clone();
    let agent = ca.issue(&PeerIdentity::new(Role::Agent, "intruder-node"), HOUR).unwrap();
    let scheduler = ca.issue(&PeerIdentity::new(Role::Scheduler, "9"), HOUR).unwrap();
    let now = SystemTime::now();
    let expired =
        ca.issue_between(&PeerIdentity::new(Role::Admin, "late"), now - 2 * HOUR, now - HOUR).unwrap();
    let foreign = Ca::create().unwrap().issue(&PeerIdentity::new(Role::Admin, "mallory"), HOUR).unwrap();

    // The control API: operators (and schedulers) only.
    list_apps(channel(&addr, admin.clone()).await.unwrap()).await.expect("an operator lists apps");
    let ch = channel(&addr, agent.clone()).await.unwrap();
    refused(
        list_apps(ch).await,
        Code::PermissionDenied,
        "agent \"intruder-node\" may not call",
        "agent → control",
    );
    let ch = anonymous(&addr, &admin.ca_pem).await;
    refused(list_apps(ch).await, Code::Unauthenticated, "no client certificate", "anonymous → control");

    // Agent sessions: agents only, each for its own node.
    let ch = channel(&addr, admin.clone()).await.unwrap();
    refused(
        agent_session(ch, "x").await,
        Code::PermissionDenied,
        "it is for the agent role",
        "admin → agent service",
    );
    let ch = channel(&addr, agent.clone()).await.unwrap();
    refused(
        agent_session(ch, "someone-else").await,
        Code::PermissionDenied,
        "speaks for its own node",
        "agent as another node",
    );
    let ch = anonymous(&addr, &admin.ca_pem).await;
    refused(
        agent_session(ch, "x").await,
        Code::Unauthenticated,
        "no client certificate",
        "anonymous → agent service",
    );

    // Raft: schedulers only.
    for (who, creds) in [("admin", admin.clone()), ("agent", agent.clone())] {
        let ch = channel(&addr, creds).await.unwrap();
        refused(
            raft_vote(ch).await,
            Code::PermissionDenied,
            "it is for the scheduler role",
            &format!("{who} → raft"),
        );
    }
    let ch = anonymous(&addr, &admin.ca_pem).await;
    refused(raft_vote(ch).await, Code::Unauthenticated, "no client certificate", "anonymous → raft");
    let past_the_door = raft_vote(channel(&addr, scheduler).await.unwrap()).await;
    assert!(
        !matches!(
            past_the_door.as_ref().map_err(|s| s.code()),
            Err(Code::PermissionDenied | Code::Unauthenticated)
        ),
        "a scheduler certificate gets into raft: {past_the_door:?}"
    );

    // A certificate the CA did not issue: the handshake fails, and the client is told
    // why. An expired one: the client says so before it even dials.
    let outcome = match channel(&addr, foreign).await {
        Err(e) => Err(e),
        Ok(ch) => list_apps(ch).await.map_err(|s| format!("{s:?}")),
    };
    let err = outcome.expect_err("another CA").to_lowercase();
    assert!(err.contains("certificate") || err.contains("alert"), "another CA: {err}");
    let err = channel(&addr, expired.clone()).await.expect_err("expired");
    assert!(err.contains("admin \"late\" certificate expired") && err.contains("admin-cert"), "{err}");
    // And the server refuses it all the same, should a client not check: a client that
    // presents it anyway is told `certificate_expired` by the server's alert.
    let alert = tls_alert_presenting(&addr, &expired).await;
    assert_eq!(
        alert,
        Ok(rustls::AlertDescription::CertificateExpired),
        "the server refuses an expired certificate"
    );
    // Plain text to a TLS listener: what a plain-text gRPC client sends first (the HTTP/2
    // preface) is answered with a fatal decode_error alert, then the connection closes.
    let answer = plain_text_answer(&addr).await;
    assert_eq!(answer, Ok(DECODE_ERROR_ALERT.to_vec()), "plain text is refused with a decode_error alert");
    // The CLI says what is wrong and what to do.
    let cli_config = cluster.dir.path().join("agent-cli.toml");
    agent.save_dir(&cluster.dir.path().join("agent-creds")).unwrap();
    std::fs::write(
        &cli_config,
        format!(
            "schedulers = [\"{addr}\"]\n[tls]\nca = \"agent-creds/ca.pem\"\ncert = \"agent-creds/cert.pem\"\nkey = \"agent-creds/key.pem\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(binary("slipway"))
        .arg("--config")
        .arg(&cli_config)
        .args(["apps", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("may not call this service"), "{stderr}");
    std::fs::write(&cli_config, format!("schedulers = [\"{addr}\"]\n")).unwrap();
    let out = Command::new(binary("slipway"))
        .arg("--config")
        .arg(&cli_config)
        .args(["apps", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("admin-cert"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_with_the_current_token_only() {
    let Some(cluster) = TestCluster::start("t24join").await else { return };
    let old = cluster.agent_token().to_string();
    let out = cluster.cli(&["cluster", "token", "agent", "--rotate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(new, old, "rotation makes a new token");

    let (status, log) = cluster.try_agent_join(1, "rotated", &old, Duration::from_secs(10));
    assert!(status.is_some_and(|s| !s.success()), "an agent with a rotated-out token does not join:\n{log}");
    assert!(log.contains("not valid here (rotated"), "it says why:\n{log}");

    let forged = new.replace(&new[15..79], &"0".repeat(64));
    assert_ne!(forged, new);
    let (status, log) = cluster.try_agent_join(1, "forged", &forged, Duration::from_secs(10));
    assert!(status.is_some_and(|s| !s.success()), "a token pinning another CA does not join:\n{log}");
    assert!(log.contains("holds no CA with digest"), "it says why:\n{log}");

    let (status, log) = cluster.try_agent_join(1, "welcome", &new, Duration::from_secs(10));
    assert!(status.is_none(), "an agent with the current token joins and stays:\n{log}");
    assert!(log.contains("joined the cluster"), "{log}");
    let mode = std::fs::metadata(cluster.dir.path().join("welcome/state/tls/key.pem")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_renews_while_its_session_stays_open() {
    // 30 s certificates: renewed when a third is left, about 20 s in.
    let Some(mut cluster) = TestCluster::start_with_tls("t24renew", "agent_cert_validity_secs = 30\n").await
    else {
        return;
    };
    let cert_path = cluster.dir.path().join("agent/tls/cert.pem");
    let first = Credentials::load_dir(&cluster.dir.path().join("agent/tls"))
        .unwrap()
        .expect("joined")
        .info()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(45);
    while !cluster.agent_log(1).contains("certificate renewed") {
        assert!(Instant::now() < deadline, "no renewal in 45 s:\n{}", cluster.agent_log(1));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let renewed =
        Credentials::load_dir(&cluster.dir.path().join("agent/tls")).unwrap().unwrap().info().unwrap();
    assert!(renewed.not_after > first.not_after, "a later expiry: {first:?} → {renewed:?}");
    assert_eq!(renewed.identity, first.identity);
    let sessions = cluster.scheduler_log(1).matches("agent session opened").count();
    assert_eq!(sessions, 1, "the session stayed open through the renewal");

    // Past the first certificate's expiry, a new connection uses the renewed one.
    let wait = first.not_after.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_secs(1)).await;
    cluster.kill_agent(1);
    cluster.start_agent(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.scheduler_log(1).matches("agent session opened").count() < 2 {
        assert!(Instant::now() < deadline, "the agent did not reconnect:\n{}", cluster.agent_log(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.wait_for_ready_nodes(1).await;
    assert!(std::fs::read_to_string(cert_path).unwrap().contains("BEGIN CERTIFICATE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_joins_with_a_scheduler_token_and_gets_the_cluster_ca() {
    let Some(cluster) = TestCluster::start("t24sched").await else { return };
    let out = cluster.cli(&["cluster", "token", "scheduler"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("SLWTKN-1-scheduler-"), "{token}");

    // A second scheduler on loopback, waiting to be added, with the token.
    let dir = cluster.dir.path().join("second");
    std::fs::create_dir_all(&dir).unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "node_id = 2\nlisten = \"{grpc}\"\nhttp_listen = \"{http}\"\ndata_dir = \"{}\"\n\n[cluster]\njoin = true\n\
         join_token = \"{token}\"\njoin_via = [\"{}\"]\n",
        dir.join("data").display(),
        cluster.grpc_addr(1)
    );
    std::fs::write(dir.join("scheduler.toml"), config).unwrap();
    let mut child = cluster.spawn(
        Command::new(binary("slipway-scheduler")),
        "second/scheduler.toml",
        "second/scheduler.log",
    );
    let _second = {
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("http://{http}/healthz")).await.is_err() {
            let log = std::fs::read_to_string(dir.join("scheduler.log")).unwrap_or_default();
            assert!(child.try_wait().unwrap().is_none(), "the joining scheduler exited:\n{log}");
            assert!(Instant::now() < deadline, "the joining scheduler does not serve:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        KillOnDrop(child)
    };
    let theirs = std::fs::read_to_string(dir.join("data/pki/ca.pem")).expect("it got the CA");
    assert_eq!(theirs, cluster.ca().cert_pem, "the cluster's CA, not a new one");
    let key = std::fs::metadata(dir.join("data/pki/ca.key")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777, 0o600);

    // The leader probes it as a scheduler and adds it; both then speak raft over mTLS.
    let out = cluster.cli(&["cluster", "join", &grpc]);
    assert!(out.status.success(), "cluster join: {}", String::from_utf8_lossy(&out.stderr));
    let status = cluster.status_of(1).await.expect("status");
    assert!(status.members.iter().any(|m| m.id == 2 && m.voter), "{status:?}");

    // A stale scheduler token is refused like an agent's.
    let out = cluster.cli(&["cluster", "token", "scheduler", "--rotate"]);
    assert!(out.status.success());
    let (key_pem, csr_pem) = slipway_proto::tls::new_key_and_csr().unwrap();
    drop(key_pem);
    let parsed: slipway_proto::tls::JoinToken = token.parse().unwrap();
    let channel = slipway_proto::tls::connect_pinned(&cluster.grpc_addr(1), &parsed.ca_digest).await.unwrap();
    let refused = slipway_proto::enrollment_client::EnrollmentClient::new(channel)
        .join(pb::JoinRequest { role: "scheduler".into(), secret: parsed.secret, csr_pem, name: "3".into() })
        .await
        .expect_err("a rotated-out scheduler token");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn mode(path: &std::path::Path) -> u32 {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_a_scheduler_keeps_holds_a_token_secret_and_keys_are_private() {
    let Some(cluster) = TestCluster::start("t24rest").await else { return };
    let secret = |token: &str| token.trim().parse::<JoinToken>().expect("a token").secret;
    let shown = |args: &[&str]| {
        let out = cluster.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The agents' first token (the agent joined with it), a scheduler token, a rotated
    // agent token; and the current one shown again, without rotating: the same.
    let rotated = shown(&["cluster", "token", "agent", "--rotate"]);
    assert_eq!(shown(&["cluster", "token", "agent"]), rotated, "shown again, not made again");
    let secrets =
        [secret(cluster.agent_token()), secret(&shown(&["cluster", "token", "scheduler"])), secret(&rotated)];
    // What the raft log holds is on disk (the control: an app's name is found).
    cluster.create_app("findme-zq7", "https://example.invalid/r.git").await.expect("create an app");

    let data = cluster.data_dir_of(1);
    let files = files_under(&data);
    let holds = |needle: &[u8]| {
        files
            .iter()
            .filter(|f| std::fs::read(f).unwrap().windows(needle.len()).any(|w| w == needle))
            .map(|f| f.strip_prefix(&data).unwrap().display().to_string())
            .collect::<Vec<_>>()
    };
    assert!(!holds(b"findme-zq7").is_empty(), "the raft store is searched: {files:?}");
    for s in &secrets {
        assert_eq!(holds(s.as_bytes()), Vec::<String>::new(), "files holding a token's secret");
    }

    // Private: the data dir, the CA and the raft store; keys 0600.
    for dir in [data.clone(), data.join("pki"), data.join("raft")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for key in ["pki/ca.key", "pki/key.pem", "http-token"] {
        assert_eq!(mode(&data.join(key)), 0o600, "{key}");
    }
    // The agent's state dir and its certificate.
    let agent = cluster.dir.path().join("agent");
    assert_eq!((mode(&agent), mode(&agent.join("tls"))), (0o700, 0o700));
    assert_eq!(mode(&agent.join("tls/key.pem")), 0o600);
    // An operator certificate the CLI stores.
    shown(&["cluster", "admin-cert", "ops", "--out", "ops-creds"]);
    let ops = cluster.dir.path().join("ops-creds");
    assert_eq!((mode(&ops), mode(&ops.join("key.pem"))), (0o700, 0o600));

    // A lost operator certificate is revoked: every call with it is refused, the
    // caller's own certificate cannot revoke itself, and one issued to the name
    // afterwards works.
    let addr = cluster.grpc_addrs()[0].clone();
    let ops_creds = || Credentials::load_dir(&ops).unwrap().expect("the operator's certificate");
    list_apps(channel(&addr, ops_creds()).await.unwrap()).await.expect("a fresh operator certificate calls");
    shown(&["cluster", "admin-revoke", "ops"]);
    refused(
        list_apps(channel(&addr, ops_creds()).await.unwrap()).await,
        Code::PermissionDenied,
        "is revoked",
        "a revoked operator certificate",
    );
    let own = cluster.cli(&["cluster", "admin-revoke", "tests"]);
    let said = String::from_utf8_lossy(&own.stderr);
    assert!(!own.status.success() && said.contains("another operator"), "revoking oneself: {said}");
    shown(&["cluster", "admin-cert", "ops", "--out", "ops-creds-2"]);
    // It starts just after the revocation (up to about 2 s ahead), so that the entry
    // does not deny it.
    let again = Credentials::load_dir(&cluster.dir.path().join("ops-creds-2")).unwrap().unwrap();
    let starts = again.info().unwrap().not_before;
    if let Ok(ahead) = starts.duration_since(SystemTime::now()) {
        assert!(ahead < Duration::from_secs(5), "starts {ahead:?} ahead");
        tokio::time::sleep(ahead + Duration::from_millis(100)).await;
    }
    list_apps(channel(&addr, again).await.unwrap()).await.expect("a certificate issued after the revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_cut_off_and_its_name_is_free_again() {
    let Some(cluster) = TestCluster::start("t24remove").await else { return };
    let addr = cluster.grpc_addr(1);
    let name = cluster.agent_name(1).to_string();
    let creds = cluster.agent_credentials(1);
    let node_id = creds.info().unwrap().identity.name;
    let token: JoinToken = cluster.agent_token().parse().unwrap();
    let addrs = [addr.clone()];

    // While it is a member, its id and its name are its own.
    let err = slipway_proto::tls::join(&addrs, &token, &node_id).await.err().expect("a join under its id");
    assert!(
        err.contains("is already a member") && err.contains(&format!("slipway nodes remove {node_id}")),
        "{err}"
    );
    let other = cluster.ca().issue(&PeerIdentity::new(Role::Agent, "other-node"), HOUR).unwrap();
    refused(
        hello_as(channel(&addr, other).await.unwrap(), "other-node", &name).await,
        Code::FailedPrecondition,
        &format!("is held by node {node_id:?}"),
        "a Hello with another node's name",
    );
    renew(&addr, creds.clone()).await.expect("a member renews");

    // A node nobody has: a clear error, and how to see the nodes.
    let out = cluster.cli(&["nodes", "remove", "no-such-node"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("`slipway nodes` lists them"), "{stderr}");

    let out = cluster.cli(&["nodes", "remove", &name]);
    assert!(out.status.success(), "nodes remove: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed from the fleet"));
    let removed = Instant::now();

    // Its session closes at its next report (one report interval: 1 s here).
    while !cluster.scheduler_log(1).contains("closing the session of a removed node") {
        assert!(
            removed.elapsed() < Duration::from_secs(5),
            "the session stayed open:\n{}",
            cluster.scheduler_log(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("session closed {:?} after the removal", removed.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.agent_log(1).contains("was removed from the fleet") {
        assert!(Instant::now() < deadline, "the agent was not told why:\n{}", cluster.agent_log(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Any call with its certificate, and its renewal, are refused, saying why.
    refused(
        agent_session(channel(&addr, creds.clone()).await.unwrap(), &node_id).await,
        Code::PermissionDenied,
        "is revoked: node",
        "the removed node's session",
    );
    refused(
        renew(&addr, creds.clone()).await,
        Code::PermissionDenied,
        "is revoked",
        "the removed node's renewal",
    );
    let nodes = cluster.client().await.list_nodes(pb::ListNodesRequest {}).await.unwrap().into_inner().nodes;
    assert!(nodes.iter().all(|n| n.id != node_id), "{nodes:?}");
    assert!(cluster.scheduler_log(1).contains("refused a call from a revoked certificate"));

    // Removed, its id and name are free: a join under the id works, and the new
    // certificate (valid only after the removal) holds a session under the old name.
    let joined = slipway_proto::tls::join(&addrs, &token, &node_id).await.expect("a join after removal");
    let fresh = joined.credentials;
    let not_before = fresh.info().unwrap().not_before;
    if let Ok(wait) = not_before.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(100)).await;
    }
    hello_as(channel(&addr, fresh).await.unwrap(), &node_id, &name)
        .await
        .expect("the new certificate serves");
    refused(
        agent_session(channel(&addr, creds).await.unwrap(), &node_id).await,
        Code::PermissionDenied,
        "is revoked",
        "the old certificate, after the node joined again",
    );
}

/// One `slipway-scheduler` process alone (no agent, registry or engine), for its HTTP
/// side: `http` is its `[http]` section, `data_dir` where it keeps its state.
struct Lone {
    /// The config file's text up to its last section, which [`Lone::reconfigure`] replaces.
    base_config: String,
    http: String,
    tls: bool,
    grpc: String,
    ca: Ca,
    data_dir: std::path::PathBuf,
    log: std::path::PathBuf,
    config: std::path::PathBuf,
    child: KillOnDrop,
}

impl Lone {
    /// Starts it with `http_section` as `[http]` and `extra` (more sections) after it.
    async fn start(
        dir: &std::path::Path,
        data_dir: &std::path::Path,
        http_section: &str,
        extra: &str,
    ) -> Lone {
        slipway_proto::tls::install_crypto_provider();
        let ca = Ca::create().unwrap();
        ca.save(&dir.join("ca")).unwrap();
        let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let base_config = format!(
            "listen = \"{grpc}\"\nhttp_listen = \"{http}\"\ndata_dir = \"{}\"\n\n[tls]\nca_dir = \"{}\"\n\n\
             [http]\n{http_section}\n",
            data_dir.display(),
            dir.join("ca").display()
        );
        std::fs::write(dir.join("scheduler.toml"), format!("{base_config}\n{extra}")).unwrap();
        let log = dir.join("scheduler.log");
        std::fs::File::create(&log).unwrap();
        let config = dir.join("scheduler.toml");
        let child = KillOnDrop(Self::spawn(&config, &log));
        let tls = http_section.contains("tls = true");
        let data_dir = data_dir.to_path_buf();
        let lone = Lone { base_config, http, tls, grpc, ca, data_dir, log, config, child };
        lone.wait_ready().await;
        lone
    }

    fn spawn(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
        let append = || std::fs::OpenOptions::new().append(true).open(log).unwrap();
        Command::new(binary("slipway-scheduler"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,openraft=warn,sled=warn")
            .stdout(append())
            .stderr(append())
            .spawn()
            .unwrap()
    }

    /// Replaces the sections after `[http]` with `extra` (read at the next start).
    fn reconfigure(&self, extra: &str) {
        std::fs::write(&self.config, format!("{}\n{extra}", self.base_config)).unwrap();
    }

    /// `kill -9`s it (no shutdown: what it acknowledged must already be on disk).
    fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// Starts the scheduler again on its config and data dir (after it exited).
    async fn restart(&mut self) {
        self.child = KillOnDrop(Self::spawn(&self.config, &self.log));
        self.wait_ready().await;
    }

    /// The process's exit status, once it exited within `wait`.
    fn exited_within(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    async fn wait_ready(&self) {
        let client = self.client(None);
        let lone = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client.get(lone.url("/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "the scheduler does not serve:\n{}", lone.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", if self.tls { "https" } else { "http" }, self.http)
    }

    /// A client trusting the cluster CA (only it), presenting `identity` if given.
    fn client(&self, identity: Option<&Credentials>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10));
        if let Some(creds) = identity {
            let pem = format!("{}{}", creds.cert_pem, creds.key_pem);
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("http-token")).expect("the HTTP token").trim().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The status and body `request` gets. A request the connection broke before it was
/// sent (`BrokenPipe` writing it, seen once in four suite runs on a loaded machine, right
/// after the handshake; not understood yet) is sent again, at most twice, saying so: what
/// these tests assert is the answer, not the transport.
async fn status(request: reqwest::RequestBuilder) -> (u16, String) {
    let mut tries = 0;
    let response = loop {
        let attempt = request.try_clone().expect("a request without a streamed body").send().await;
        match attempt {
            Ok(response) => break response,
            Err(err) if tries < 2 && err.is_request() && !err.is_timeout() => {
                eprintln!("sending again after a broken connection: {err:?}");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("an answer: {err:?}"),
        }
    };
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_side_wants_the_token_or_an_operator_certificate_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let lone = Lone::start(dir.path(), &dir.path().join("data"), "tls = true", "").await;
    let anonymous = lone.client(None);

    // TLS with the cluster CA: a client that trusts only the usual roots refuses the
    // certificate, and plain HTTP gets no page.
    let stranger = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    let err = stranger.get(lone.url("/healthz")).send().await.expect_err("an untrusted certificate");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let plain = plain_text_answer(&lone.http).await;
    assert_eq!(
        plain,
        Ok(DECODE_ERROR_ALERT.to_vec()),
        "plain text on the TLS listener: a decode_error alert"
    );

    // Open to anyone: health and the token realm (which answers with a token for nothing).
    assert_eq!(status(anonymous.get(lone.url("/healthz"))).await, (200, "ok\n".into()));
    assert_eq!(status(anonymous.get(lone.url("/v2/token?service=slipway-registry"))).await.0, 200);

    // Refused anonymously or with a wrong token, with both challenges.
    for path in ["/", "/fleet", "/metrics"] {
        let response = anonymous.get(lone.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "anonymous GET {path}");
        let challenges: Vec<_> = response.headers().get_all("www-authenticate").iter().collect();
        assert_eq!(challenges.len(), 2, "{challenges:?}");
        assert!(response.text().await.unwrap().contains("http-token"), "the hint names the token file");
    }
    let (code, _) = status(anonymous.get(lone.url("/metrics")).bearer_auth("0".repeat(64))).await;
    assert_eq!(code, 401, "a wrong token");
    assert!(lone.log().contains("refused an HTTP request: wrong token"), "logged:\n{}", lone.log());
    assert!(!lone.log().contains(&lone.token()), "the log holds no token");

    // The token, as a bearer token or (browsers) a Basic password.
    let (code, text) = status(anonymous.get(lone.url("/metrics")).bearer_auth(lone.token())).await;
    assert_eq!(code, 200);
    slipway_testkit::exposition::check(&text).expect("valid exposition text");
    let (code, page) = status(anonymous.get(lone.url("/")).basic_auth("anyone", Some(lone.token()))).await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>"), "{page}");

    // A client certificate from the CA: an operator's admits, an agent's does not.
    let admin = lone.ca.issue(&PeerIdentity::new(Role::Admin, "ops"), HOUR).unwrap();
    assert_eq!(status(lone.client(Some(&admin)).get(lone.url("/metrics"))).await.0, 200);
    let agent = lone.ca.issue(&PeerIdentity::new(Role::Agent, "node-x"), HOUR).unwrap();
    let (code, text) = status(lone.client(Some(&agent)).get(lone.url("/metrics"))).await;
    assert_eq!(code, 403, "{text}");
    // One from another CA fails the handshake.
    let foreign = Ca::create().unwrap().issue(&PeerIdentity::new(Role::Admin, "ops"), HOUR).unwrap();
    assert!(lone.client(Some(&foreign)).get(lone.url("/metrics")).send().await.is_err());

    // A body over the limit is refused before any handler reads it.
    let big = vec![b'x'; 1 << 20];
    let (code, _) = status(anonymous.get(lone.url("/healthz")).body(big)).await;
    assert_eq!(code, 413, "an oversized body");
}

/// A tmpfs of `size` mounted on `dir` (unmounted on drop), or None where this process
/// may not mount (not root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                slipway_testkit::skip(&format!("this test mounts a tmpfs (needs root): {other:?}"));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` up to its last byte, then gives `leave` bytes
/// back (the ballast file shrinks).
fn fill(dir: &std::path::Path, leave: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("ballast")).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let mut byte = [0u8; 1];
    while file.write_all(&byte).is_ok() {
        byte[0] = 1;
    }
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(leave)).unwrap();
}

/// Creates apps `{prefix}{n}` through `control` until one is refused (or `limit` were
/// acknowledged): the acknowledged names, and the refusal.
async fn create_until_refused(
    control: &mut ControlClient<Channel>,
    prefix: &str,
    limit: usize,
) -> (Vec<String>, Option<tonic::Status>) {
    let mut acknowledged = Vec::new();
    for n in 0..limit {
        let req = pb::CreateAppRequest {
            name: format!("{prefix}{n}"),
            repo: "https://example.invalid/r.git".into(),
            branch: "main".into(),
        };
        match control.create_app(req).await {
            Ok(_) => acknowledged.push(format!("{prefix}{n}")),
            Err(status) => return (acknowledged, Some(status)),
        }
    }
    (acknowledged, None)
}

/// The names of the apps the scheduler at `lone` holds.
async fn app_names(lone: &Lone) -> Vec<String> {
    let admin = lone.ca.issue(&PeerIdentity::new(Role::Admin, "ops"), HOUR).unwrap();
    let mut control = ControlClient::new(channel(&lone.grpc, admin).await.unwrap());
    let apps = control.list_apps(pb::ListAppsRequest {}).await.expect("reads are served").into_inner().apps;
    apps.into_iter().map(|a| a.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_store_fails_healthz_a_full_disk_ends_the_process_unless_the_space_guard_refuses_writes_first()
{
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_tmpfs) = Tmpfs::mount(&data, "48m") else { return };
    // The guard off first: a full disk as raft meets it.
    let mut lone = Lone::start(dir.path(), &data, "", "[storage]\nmin_free_bytes = 0\n").await;
    let client = lone.client(None);
    let healthz = lone.url("/healthz");
    let health = || async { status(client.get(&healthz)).await };
    assert_eq!(health().await, (200, "ok\n".into()));

    // A client trickling its request's headers (one every second) is cut off once the
    // header read deadline (10 s) passes, instead of holding the connection forever.
    let addr = lone.http.clone();
    let slowloris = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let started = Instant::now();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut buf = [0u8; 256];
            let closed = match tokio::time::timeout(Duration::from_millis(10), tcp.read(&mut buf)).await {
                Ok(Ok(n)) => n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
                Ok(Err(_)) => true,
                Err(_) => tcp.write_all(b"X-Slow: 1\r\n").await.is_err(),
            };
            if closed || started.elapsed() > Duration::from_secs(30) {
                return started.elapsed();
            }
        }
    });

    // The store's directory moved away: what raft commits would be lost at restart.
    let raft = data.join("raft");
    std::fs::rename(&raft, data.join("raft.moved")).unwrap();
    let (code, text) = health().await;
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("is gone"), "{text}");
    assert_eq!(status(client.get(lone.url("/readyz"))).await.0, 503);
    std::fs::rename(data.join("raft.moved"), &raft).unwrap();
    assert_eq!(health().await.0, 200, "the same store back in place");

    let cut_after = slowloris.await.unwrap();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(16)).contains(&cut_after),
        "a trickled request was cut off after {cut_after:?}"
    );

    // A full disk: the next raft write fails and raft stops for good (a fatal storage
    // error). The process exits (status 70, one line naming the task and the cause) so
    // that systemd restarts it, rather than staying up as a member that cannot commit.
    fill(&data, 0);
    let admin = lone.ca.issue(&PeerIdentity::new(Role::Admin, "ops"), HOUR).unwrap();
    let mut control = ControlClient::new(channel(&lone.grpc, admin).await.unwrap());
    // Every create before the one that failed was acknowledged.
    let (mut acknowledged, failed) = create_until_refused(&mut control, "full", 200).await;
    let failed = failed.expect("a write to a full disk fails");
    let exit = lone.exited_within(Duration::from_secs(30));
    let exit = exit.unwrap_or_else(|| panic!("the scheduler exits after {failed:?}:\n{}", lone.log()));
    assert_eq!(exit.code(), Some(70), "{}", lone.log());
    let log = lone.log();
    assert!(
        log.contains("supervised task") && log.contains("exiting so the service manager restarts"),
        "{log}"
    );

    // Space freed and started again on the same data dir: it serves, and every
    // acknowledged write is there.
    std::fs::remove_file(data.join("ballast")).unwrap();
    lone.restart().await;
    assert_eq!(health().await, (200, "ok\n".into()));
    let names = app_names(&lone).await;
    for name in &acknowledged {
        assert!(names.contains(name), "acknowledged {name} is kept: {names:?}");
    }

    // The guard on (as by default, with a floor this small disk can hold): the disk
    // filled to below the floor but not to the end. New work is refused with the
    // reason; the process stays, serves reads, and keeps what it acknowledged.
    const FLOOR: u64 = 16 << 20;
    lone.kill();
    lone.reconfigure(&format!("[storage]\nmin_free_bytes = {FLOOR}\n"));
    lone.restart().await;
    let (token, metrics_url) = (lone.token(), lone.url("/metrics"));
    let metric = |name: &'static str| {
        let (client, url, token) = (client.clone(), metrics_url.clone(), token.clone());
        async move {
            let (code, text) = status(client.get(url).bearer_auth(token)).await;
            assert_eq!(code, 200, "{text}");
            let samples = slipway_testkit::exposition::check(&text).expect("valid exposition text");
            samples.iter().find(|s| s.name == name).map(|s| s.value as u64)
        }
    };
    assert_eq!(metric("slipway_storage_min_free_bytes").await, Some(FLOOR));
    assert!(metric("slipway_storage_free_bytes").await.is_some_and(|free| free > FLOOR));

    fill(&data, FLOOR / 2);
    // The guard measures at most once a second (`raft::space::MEASURE_EVERY`): once
    // `/readyz` says so, it refuses.
    let deadline = Instant::now() + Duration::from_secs(10);
    let readyz = loop {
        let (code, text) = status(client.get(lone.url("/readyz"))).await;
        if code == 503 {
            break text;
        }
        assert!(Instant::now() < deadline, "/readyz still says {code} {text} below the floor");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(readyz.contains("below storage.min_free_bytes"), "{readyz}");
    let admin = lone.ca.issue(&PeerIdentity::new(Role::Admin, "ops"), HOUR).unwrap();
    let mut control = ControlClient::new(channel(&lone.grpc, admin).await.unwrap());
    let (guarded, refused) = create_until_refused(&mut control, "guarded", 1).await;
    assert!(guarded.is_empty(), "created below the floor: {guarded:?}");
    let refused = refused.expect("a create below the floor is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.metadata().contains_key(slipway_proto::metadata::NO_SPACE), "{refused:?}");
    let why = refused.message();
    for needle in
        [&data.display().to_string(), "below storage.min_free_bytes (16.0 MiB)", "free space on that"]
    {
        assert!(why.contains(needle), "the refusal says {needle:?}: {why}");
    }
    assert!(lone.child.0.try_wait().unwrap().is_none(), "the scheduler stays up:\n{}", lone.log());
    assert_eq!(health().await, (200, "ok\n".into()), "it still keeps what it commits");
    assert!(metric("slipway_storage_free_bytes").await.is_some_and(|free| free < FLOOR));
    let names = app_names(&lone).await;
    for name in &acknowledged {
        assert!(names.contains(name), "reads go on below the floor: {name} in {names:?}");
    }

    // Space freed: writes resume once the guard measures again (at most a second).
    std::fs::remove_file(data.join("ballast")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (made, refused) = create_until_refused(&mut control, "resumed", 1).await;
        if let [name] = &made[..] {
            acknowledged.push(name.clone());
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume after space was freed: {refused:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(client.get(lone.url("/readyz"))).await.0, 200);

    // kill -9 and start again: everything acknowledged is there.
    lone.kill();
    lone.restart().await;
    let names = app_names(&lone).await;
    for name in &acknowledged {
        assert!(names.contains(name), "acknowledged {name} survives kill -9: {names:?}");
    }
    eprintln!("{} apps acknowledged across the full disk, the guard and two restarts", acknowledged.len());
}
