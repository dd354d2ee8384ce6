//! The baseline: a 3-member etcd cluster on loopback, in plain text or with mutual TLS
//! on every link, and the `etcd` binary it runs.

use std::path::{Path, PathBuf};
use std::process;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::pki::EtcdPki;
use crate::{connect, loopback, tail, Running, MEMBERS, SETTLE_TIMEOUT};

/// Generated client code for the subset of etcd's v3 API in `tests/proto/etcd/rpc.proto`.
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

use etcdserverpb::kv_client::KvClient;
use etcdserverpb::maintenance_client::MaintenanceClient;
use etcdserverpb::StatusRequest;

/// One etcd member of the baseline cluster.
struct EtcdMember {
    /// Its client URL's `host:port`.
    client: String,
    log: PathBuf,
    process: Option<Running>,
}

/// Three etcd members on loopback founding one cluster, each with its own data dir;
/// dropping it kills them.
pub struct Etcd {
    members: Vec<EtcdMember>,
    /// How its clients dial it: None in plain text.
    tls: Option<ClientTlsConfig>,
    /// Client address of the leader.
    pub leader: String,
    /// What the leader says it runs.
    pub version: String,
}

impl Etcd {
    /// Starts the members under `root`, with mutual TLS on client and peer links when
    /// `pki` is given, and waits until they agree on a leader.
    pub async fn start(binary: &Path, root: &Path, pki: Option<&EtcdPki>) -> Etcd {
        let scheme = if pki.is_some() { "https" } else { "http" };
        let addrs: Vec<(u64, String, String)> = (1..=MEMBERS).map(|i| (i, loopback(), loopback())).collect();
        let cluster: Vec<String> =
            addrs.iter().map(|(i, _, peer)| format!("e{i}={scheme}://{peer}")).collect();
        let token = format!("bench-raft-{}-{scheme}", std::process::id());
        let mut members = Vec::new();
        for (i, client, peer) in addrs {
            let mut command = process::Command::new(binary);
            command.args(["--name", &format!("e{i}")]);
            command.arg("--data-dir").arg(root.join(format!("etcd-{i}")));
            command.args(["--listen-client-urls", &format!("{scheme}://{client}")]);
            command.args(["--advertise-client-urls", &format!("{scheme}://{client}")]);
            command.args(["--listen-peer-urls", &format!("{scheme}://{peer}")]);
            command.args(["--initial-advertise-peer-urls", &format!("{scheme}://{peer}")]);
            command.args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"]);
            command.args(["--initial-cluster-token", &token, "--logger", "zap", "--log-level", "warn"]);
            if let Some(pki) = pki {
                command.arg("--cert-file").arg(&pki.member_cert).arg("--key-file").arg(&pki.member_key);
                command.arg("--trusted-ca-file").arg(&pki.ca_file).arg("--client-cert-auth");
                command.arg("--peer-cert-file").arg(&pki.member_cert);
                command.arg("--peer-key-file").arg(&pki.member_key);
                command.arg("--peer-trusted-ca-file").arg(&pki.ca_file).arg("--peer-client-cert-auth");
            }
            let log = root.join(format!("etcd-{i}.log"));
            let process = Some(Running::spawn(command, &log));
            members.push(EtcdMember { client, log, process });
        }
        let tls = pki.map(EtcdPki::client_tls);
        let mut etcd = Etcd { members, tls, leader: String::new(), version: String::new() };
        etcd.find_leader().await;
        etcd
    }

    /// Asks every member for its status until all name the same leader.
    async fn find_leader(&mut self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut views = Vec::new();
            for m in &self.members {
                views.push((m.client.clone(), self.status(&m.client).await));
            }
            let leaders: Vec<u64> = views.iter().map(|(_, v)| v.as_ref().map_or(0, |v| v.leader)).collect();
            if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
                let answered_by_leader = |v: &etcdserverpb::StatusResponse| {
                    v.header.as_ref().is_some_and(|h| h.member_id == leaders[0])
                };
                if let Some((addr, Ok(status))) =
                    views.iter().find(|(_, v)| v.as_ref().is_ok_and(answered_by_leader))
                {
                    self.leader = addr.clone();
                    self.version = status.version.clone();
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no agreed etcd leader after {SETTLE_TIMEOUT:?}: {views:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `clients` KV clients of the leader, each on its own connection.
    pub async fn clients(&self, clients: usize) -> Vec<KvClient<Channel>> {
        let mut kv = Vec::new();
        for _ in 0..clients {
            let channel = connect(self.endpoint(&self.leader)).await.expect("connect to the etcd leader");
            kv.push(KvClient::new(channel));
        }
        kv
    }

    /// The channel settings for a member's client address.
    fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = match &self.tls {
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.clone())?,
            None => Endpoint::from_shared(format!("http://{addr}"))?,
        };
        Ok(endpoint.connect_timeout(Duration::from_millis(500)).tcp_nodelay(true))
    }

    /// `Maintenance.Status` of the member at `addr`.
    async fn status(&self, addr: &str) -> Result<etcdserverpb::StatusResponse, tonic::Status> {
        let mut request = tonic::Request::new(StatusRequest {});
        request.set_timeout(Duration::from_secs(2));
        let channel = connect(self.endpoint(addr)).await?;
        Ok(MaintenanceClient::new(channel).status(request).await?.into_inner())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.process = None;
        }
        if std::thread::panicking() {
            for m in &self.members {
                eprintln!("--- {} (tail) ---\n{}", m.log.display(), tail(&m.log, 30));
            }
        }
    }
}

/// The `etcd` binary: found on PATH, or installed from Debian's `etcd-server`.
pub fn ensure_etcd() -> PathBuf {
    let find = || {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).map(|dir| dir.join("etcd")).find(|p| p.is_file())
    };
    if let Some(found) = find() {
        return found;
    }
    eprintln!(
        "etcd is not on PATH: installing Debian's etcd-server with apt-get (needs root). \
         If the package starts its own etcd service, that one keeps 2379/2380; the bench's \
         members listen on other ports."
    );
    let apt = |args: &[&str]| {
        process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            // The bench's stdout is its report: apt-get's progress goes to stderr.
            .stdout(std::io::stderr())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "etcd-server"]) {
        eprintln!("apt-get install failed; running apt-get update and trying again");
        assert!(apt(&["update"]), "apt-get update failed");
        assert!(apt(&["install", "-y", "etcd-server"]), "apt-get install -y etcd-server failed");
    }
    find().expect("etcd-server is installed but `etcd` is not on PATH")
}
