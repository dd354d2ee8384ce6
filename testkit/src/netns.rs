//! [`NetLab`]: a network lab for tests — one Linux bridge and one /24 subnet, with
//! "nodes" that are network namespaces plugged into it, and a partition knob.
//!
//! ```text
//!   host (the tests)  10.231.K.1  ── bridge slwbrK ──┬── veth ── netns slwK-1  10.231.K.11
//!                                                     ├── veth ── netns slwK-2  10.231.K.12
//!                                                     └── …
//! ```
//!
//! `K` (1..=250) is taken with an exclusive `flock` on `/run/slipway-netlab-K.lock`,
//! held for the lab's life, so test processes running at the same time never share
//! a bridge, a subnet or a namespace name. Before building anything the lab removes
//! what a crashed earlier run may have left under the same `K` (its namespaces —
//! killing the processes still in them, orphans of that run —, veths, bridge and
//! host iptables rules), so a `kill -9`ed test costs nothing but the next run's
//! cleanup.
//!
//! Processes enter a node with `nsenter --net=/var/run/netns/slwK-N` ([`NetLab::command`]),
//! not `ip netns exec`, which remounts `/sys` and so hides the cgroup hierarchy that
//! `dockerd` and `runc` need. Only the network namespace changes: nodes share the
//! host's filesystem, processes and cgroups.
//!
//! [`NetLab::forward_to_host`] makes a port on a node's loopback reach the same port on
//! the host's loopback (for services the host runs on loopback only).
//!
//! [`NetLab::isolate`] cuts a node off from every other node of the lab (both ways)
//! with iptables rules inside that node's namespace, leaving its link to the host up:
//! the test can still watch and reach a partitioned node. [`NetLab::heal`] undoes it.
//!
//! Finer faults, for chaos runs (all undone by [`NetLab::heal`] too):
//! [`NetLab::cut_between`] drops traffic between two nodes only (a non-transitive
//! partition: both still reach the third); [`NetLab::block_inbound`] drops what other
//! nodes send to one TCP port of a node, while the node's own connections out still
//! work (a one-way partition at the RPC level: it can call its peers, they cannot
//! call it); [`NetLab::throttle`] rate-limits a node's outgoing traffic with a `tbf`
//! qdisc, which queues packets (slow links; kernels without `netem`, like this
//! project's CI machine, cannot add a fixed delay).
//!
//! Dropping the lab deletes the namespaces, veths, bridge and host rules. It kills
//! nothing: callers kill their processes first (a namespace with processes in it
//! lives on, unnamed, until they exit).
//!
//! Needs root, `ip` (iproute2), `iptables` and `nsenter` (util-linux);
//! [`NetLab::try_new`] skips loudly where they are missing.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use fs2::FileExt;

use crate::skip;

/// The highest lab index, and so the number of labs that can exist at once.
const MAX_LABS: u8 = 250;
/// Node `n` gets the address `10.231.K.(NODE_IP_OFFSET + n)`.
const NODE_IP_OFFSET: u8 = 10;
/// The highest node number: its address must stay below .255.
pub const MAX_NODE: u8 = 240;
/// The chain [`NetLab::isolate`] creates in a node's namespace.
const ISOLATE_CHAIN: &str = "SLW-ISOLATE";
/// The chain the finer faults ([`NetLab::cut_between`], [`NetLab::block_inbound`]) use.
const FAULT_CHAIN: &str = "SLW-FAULT";

/// One bridge, one /24 subnet and its nodes, owned by this lab alone; see the module docs.
pub struct NetLab {
    /// The lab index `K`: the bridge is `slwbrK`, the subnet `10.231.K.0/24`.
    k: u8,
    /// Whatever the caller named the lab (a test or stack name), for messages.
    tag: String,
    /// Nodes added so far.
    nodes: BTreeSet<u8>,
    /// Holds the `flock` on `/run/slipway-netlab-K.lock`; released when dropped.
    _lock: File,
}

impl NetLab {
    /// A lab, or `None` after a loud [`skip`] where this machine cannot host one (not
    /// root, or `ip`/`iptables`/`nsenter` missing). Panics if setting it up fails.
    pub fn try_new(tag: &str) -> Option<NetLab> {
        match missing_prerequisite() {
            Some(reason) => {
                skip(&format!("this test needs a network lab (network namespaces and a bridge): {reason}"));
                None
            }
            None => Some(NetLab::new(tag)),
        }
    }

    /// Takes the first free lab index `K`, removes what a crashed run left under it,
    /// and creates the bridge `slwbrK` with `10.231.K.1/24`, up, with host `FORWARD`
    /// rules that let node-to-node traffic across it through. Panics on failure (run
    /// [`NetLab::try_new`] to skip where the machine cannot do this).
    pub fn new(tag: &str) -> NetLab {
        if let Some(reason) = missing_prerequisite() {
            panic!("cannot create the network lab '{tag}': {reason}");
        }
        let (k, lock) = take_index(tag);
        let lab = NetLab { k, tag: tag.to_string(), nodes: BTreeSet::new(), _lock: lock };
        remove_leftovers(k);
        let bridge = lab.bridge();
        run_or_panic(ip(&["link", "add", &bridge, "type", "bridge"]));
        run_or_panic(ip(&["addr", "add", &format!("{}/24", lab.host_ip()), "dev", &bridge]));
        run_or_panic(ip(&["link", "set", &bridge, "up"]));
        // Docker sets the FORWARD policy to DROP, and with br_netfilter loaded frames
        // crossing a bridge traverse FORWARD: let everything on our bridge through.
        for direction in ["-i", "-o"] {
            run_or_panic(iptables(&forward_rule("-I", direction, k)));
        }
        lab
    }

    /// The lab index `K` (bridge `slwbrK`, subnet `10.231.K.0/24`).
    pub fn index(&self) -> u8 {
        self.k
    }

    /// What the caller named the lab.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The bridge's name, `slwbrK`.
    pub fn bridge(&self) -> String {
        format!("slwbr{}", self.k)
    }

    /// `10.231.K.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.231.{}.0/24", self.k)
    }

    /// `10.231.K.1`: the host's address on the bridge. Every node reaches the host
    /// (and a server the test runs there, such as a registry) at it, also while isolated.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.k, 1)
    }

    /// Adds node `n` (1..=240): namespace `slwK-n`, a veth pair with the host end on
    /// the bridge and the other end (`eth0`) in the namespace with `10.231.K.(10+n)/24`,
    /// `lo` up, the default route via [`host_ip`](Self::host_ip). Returns the node's
    /// address. Panics if `n` exists already or setting it up fails.
    pub fn add_node(&mut self, n: u8) -> Ipv4Addr {
        assert!((1..=MAX_NODE).contains(&n), "node numbers are 1 to {MAX_NODE}, not {n}");
        assert!(!self.nodes.contains(&n), "node {n} of lab {} exists already", self.k);
        let ns = self.netns_name(n);
        let host_end = format!("slwv{}-{n}", self.k);
        let node_end = format!("slwp{}-{n}", self.k);
        run_or_panic(ip(&["netns", "add", &ns]));
        self.nodes.insert(n);
        run_or_panic(ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &node_end]));
        run_or_panic(ip(&["link", "set", &host_end, "master", &self.bridge(), "up"]));
        run_or_panic(ip(&["link", "set", &node_end, "netns", &ns]));
        let addr = format!("{}/24", self.ip(n));
        let gateway = self.host_ip().to_string();
        for args in [
            &["link", "set", &node_end, "name", "eth0"][..],
            &["addr", "add", &addr, "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &["link", "set", "lo", "up"],
            &["route", "add", "default", "via", &gateway],
        ] {
            let mut command = ip(&["-n", &ns]);
            command.args(args);
            run_or_panic(command);
        }
        self.ip(n)
    }

    /// Node `n`'s address, `10.231.K.(10+n)` (whether or not it was added).
    pub fn ip(&self, n: u8) -> Ipv4Addr {
        assert!((1..=MAX_NODE).contains(&n), "node numbers are 1 to {MAX_NODE}, not {n}");
        Ipv4Addr::new(10, 231, self.k, NODE_IP_OFFSET + n)
    }

    /// The nodes added so far, in order.
    pub fn nodes(&self) -> Vec<u8> {
        self.nodes.iter().copied().collect()
    }

    /// Node `n`'s namespace name, `slwK-n`.
    pub fn netns_name(&self, n: u8) -> String {
        format!("slw{}-{n}", self.k)
    }

    /// `/var/run/netns/slwK-n`: what `nsenter --net=` takes.
    pub fn netns_path(&self, n: u8) -> PathBuf {
        PathBuf::from("/var/run/netns").join(self.netns_name(n))
    }

    /// `nsenter --net=<node n's namespace> -- program`: a command that runs `program`
    /// in node `n`'s network namespace (and nothing else changed). Add arguments,
    /// redirections and environment as with any [`Command`].
    pub fn command(&self, n: u8, program: impl AsRef<OsStr>) -> Command {
        self.assert_node(n);
        let mut net = std::ffi::OsString::from("--net=");
        net.push(self.netns_path(n));
        let mut command = Command::new("nsenter");
        command.arg(net).arg("--").arg(program);
        command
    }

    /// Makes `127.0.0.1:port` inside node `n` reach `127.0.0.1:port` on the host (a
    /// service the host runs on loopback only, such as a test registry the host's engine
    /// pushes to): the test process listens in the node's namespace (a socket stays in
    /// the namespace it was made in, so only a short-lived thread enters it) and copies
    /// each connection to the host's port. Runs until the returned task is aborted.
    /// Loopback stays reachable when the node is [isolated](Self::isolate). Panics if
    /// the port cannot be bound in the node.
    pub fn forward_to_host(&self, n: u8, port: u16) -> tokio::task::JoinHandle<()> {
        self.assert_node(n);
        let path = self.netns_path(n);
        let bound = std::thread::spawn(move || -> std::io::Result<std::net::TcpListener> {
            let netns = File::open(&path)?;
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .expect("the thread binding in the node's namespace");
        let listener = bound
            .and_then(tokio::net::TcpListener::from_std)
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port} in node {n}: {e}"));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        })
    }

    /// Cuts node `n` off from every other node of the lab, both directions, with a
    /// chain `SLW-ISOLATE` in its namespace jumped to first from `INPUT` and `OUTPUT`:
    /// loopback and traffic to or from the host's bridge address pass, the rest of the
    /// subnet is dropped (connections time out; established ones stall). Idempotent.
    pub fn isolate(&self, n: u8) {
        self.assert_node(n);
        self.remove_isolation(n);
        let host = self.host_ip().to_string();
        let subnet = self.subnet();
        let rules: [&[&str]; 8] = [
            &["-N", ISOLATE_CHAIN],
            &["-A", ISOLATE_CHAIN, "-i", "lo", "-j", "ACCEPT"],
            &["-A", ISOLATE_CHAIN, "-o", "lo", "-j", "ACCEPT"],
            &["-A", ISOLATE_CHAIN, "-s", &host, "-j", "ACCEPT"],
            &["-A", ISOLATE_CHAIN, "-d", &host, "-j", "ACCEPT"],
            &["-A", ISOLATE_CHAIN, "-s", &subnet, "-j", "DROP"],
            &["-A", ISOLATE_CHAIN, "-d", &subnet, "-j", "DROP"],
            &["-I", "INPUT", "1", "-j", ISOLATE_CHAIN],
        ];
        for rule in rules {
            run_or_panic(self.node_iptables(n, rule));
        }
        run_or_panic(self.node_iptables(n, &["-I", "OUTPUT", "1", "-j", ISOLATE_CHAIN]));
    }

    /// Undoes [`isolate`](Self::isolate) and the finer faults on node `n`
    /// ([`cut_between`](Self::cut_between) rules made in its namespace,
    /// [`block_inbound`](Self::block_inbound), [`throttle`](Self::throttle)): node `n`
    /// reaches the other nodes again. Harmless on a node with no fault.
    pub fn heal(&self, n: u8) {
        self.assert_node(n);
        self.remove_isolation(n);
        self.remove_chain(n, FAULT_CHAIN);
        let _ = run(self.node_tc(n, &["qdisc", "del", "dev", "eth0", "root"]));
    }

    /// Drops every packet between nodes `n` and `m` (both ways), with rules in `n`'s
    /// namespace: both still reach the other nodes and the host, so the partition is
    /// not transitive. [`heal`](Self::heal)`(n)` undoes it.
    pub fn cut_between(&self, n: u8, m: u8) {
        self.assert_node(n);
        self.assert_node(m);
        let peer = self.ip(m).to_string();
        self.ensure_fault_chain(n);
        run_or_panic(self.node_iptables(n, &["-A", FAULT_CHAIN, "-s", &peer, "-j", "DROP"]));
        run_or_panic(self.node_iptables(n, &["-A", FAULT_CHAIN, "-d", &peer, "-j", "DROP"]));
    }

    /// Drops what the other nodes send to TCP `port` of node `n` (requests and the
    /// rest of their connections), while connections node `n` opens to them keep
    /// working both ways: `n` can call its peers, they cannot call it. The host still
    /// reaches the port. [`heal`](Self::heal)`(n)` undoes it.
    pub fn block_inbound(&self, n: u8, port: u16) {
        self.assert_node(n);
        let (subnet, port) = (self.subnet(), port.to_string());
        self.ensure_fault_chain(n);
        let rule = ["-A", FAULT_CHAIN, "-s", &subnet, "-p", "tcp", "--dport", &port, "-j", "DROP"];
        run_or_panic(self.node_iptables(n, &rule));
    }

    /// Limits node `n`'s outgoing traffic to `kbit_per_s`, queueing up to `latency`
    /// worth of packets (a `tbf` qdisc on its `eth0`): a slow, delaying link.
    /// [`heal`](Self::heal)`(n)` undoes it. Panics if the kernel lacks `tbf`.
    pub fn throttle(&self, n: u8, kbit_per_s: u32, latency: std::time::Duration) {
        self.assert_node(n);
        let (rate, latency) = (format!("{kbit_per_s}kbit"), format!("{}ms", latency.as_millis()));
        let args = [
            "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "1600", "latency",
            &latency,
        ];
        run_or_panic(self.node_tc(n, &args));
    }

    /// Creates the fault chain in node `n`'s namespace (traffic with the host passes
    /// first), jumped to from `INPUT` and `OUTPUT`, unless it exists.
    fn ensure_fault_chain(&self, n: u8) {
        if run(self.node_iptables(n, &["-S", FAULT_CHAIN])).is_ok() {
            return;
        }
        let host = self.host_ip().to_string();
        let rules: [&[&str]; 5] = [
            &["-N", FAULT_CHAIN],
            &["-A", FAULT_CHAIN, "-s", &host, "-j", "RETURN"],
            &["-A", FAULT_CHAIN, "-d", &host, "-j", "RETURN"],
            &["-I", "INPUT", "1", "-j", FAULT_CHAIN],
            &["-I", "OUTPUT", "1", "-j", FAULT_CHAIN],
        ];
        for rule in rules {
            run_or_panic(self.node_iptables(n, rule));
        }
    }

    fn node_tc(&self, n: u8, args: &[&str]) -> Command {
        let mut command = self.command(n, "tc");
        command.args(args);
        command
    }

    /// Is node `n` isolated now (does its `SLW-ISOLATE` chain exist)?
    pub fn is_isolated(&self, n: u8) -> bool {
        self.assert_node(n);
        run(self.node_iptables(n, &["-S", ISOLATE_CHAIN])).is_ok()
    }

    fn remove_isolation(&self, n: u8) {
        self.remove_chain(n, ISOLATE_CHAIN);
    }

    /// Removes `chain` and every jump to it from node `n`'s namespace.
    fn remove_chain(&self, n: u8, name: &str) {
        for chain in ["INPUT", "OUTPUT"] {
            // Delete every jump, in case of duplicates.
            while run(self.node_iptables(n, &["-D", chain, "-j", name])).is_ok() {}
        }
        let _ = run(self.node_iptables(n, &["-F", name]));
        let _ = run(self.node_iptables(n, &["-X", name]));
    }

    fn node_iptables(&self, n: u8, args: &[&str]) -> Command {
        let mut command = self.command(n, "iptables");
        command.arg("-w").args(args);
        command
    }

    fn assert_node(&self, n: u8) {
        assert!(self.nodes.contains(&n), "lab {} ({}) has no node {n}", self.k, self.tag);
    }
}

impl Drop for NetLab {
    /// Deletes the namespaces, veths, bridge and host rules; never panics. Processes
    /// still in a namespace are not killed (they are the caller's): the namespace then
    /// lives on, unnamed and cut off, until they exit. A warning names them.
    fn drop(&mut self) {
        for n in self.nodes.clone() {
            let ns = self.netns_name(n);
            if let Ok(pids) = run(ip(&["netns", "pids", &ns])) {
                if !pids.trim().is_empty() {
                    let pids = pids.split_whitespace().collect::<Vec<_>>().join(" ");
                    let _ = writeln!(
                        std::io::stderr(),
                        "warning: lab {} ({}): processes {pids} still run in namespace {ns}; kill them before dropping the lab",
                        self.k,
                        self.tag
                    );
                }
            }
        }
        remove_lab(self.k, false);
    }
}

impl std::fmt::Debug for NetLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetLab")
            .field("k", &self.k)
            .field("tag", &self.tag)
            .field("bridge", &self.bridge())
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// Why this machine cannot host a lab, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // /proc/self belongs to the effective user.
    match std::fs::metadata("/proc/self") {
        Ok(meta) if meta.uid() == 0 => {}
        Ok(meta) => return Some(format!("it must run as root (uid {} here)", meta.uid())),
        Err(e) => return Some(format!("cannot tell the user id (/proc/self: {e})")),
    }
    for (program, package) in [("ip", "iproute2"), ("iptables", "iptables"), ("nsenter", "util-linux")] {
        let found = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{program}` is missing. Fix: apt-get install {package}"));
        }
    }
    None
}

/// The first lab index whose lock file we can lock exclusively, and the locked file.
fn take_index(tag: &str) -> (u8, File) {
    for k in 1..=MAX_LABS {
        let path = format!("/run/slipway-netlab-{k}.lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        if file.try_lock_exclusive().is_ok() {
            // Who holds it, for a person looking at /run. The file is never deleted:
            // deleting a lock file races with the next process opening it.
            let _ = file.set_len(0);
            let _ = writeln!(file, "{} {tag}", std::process::id());
            return (k, file);
        }
    }
    panic!("all {MAX_LABS} network labs are taken (/run/slipway-netlab-*.lock are all locked)");
}

/// Removes what a crashed run left under index `k`: its namespaces (killing the
/// processes in them), veths, bridge and host rules.
fn remove_leftovers(k: u8) {
    remove_lab(k, true);
}

/// Deletes everything of lab `k`; with `kill_orphans`, first kills the processes left
/// in its namespaces. Best effort, never panics.
fn remove_lab(k: u8, kill_orphans: bool) {
    let ns_prefix = format!("slw{k}-");
    let namespaces: Vec<String> = run(ip(&["netns", "list"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.strip_prefix(&ns_prefix).is_some_and(|n| n.parse::<u8>().is_ok()))
        .map(str::to_string)
        .collect();
    for ns in &namespaces {
        if kill_orphans {
            for pid in run(ip(&["netns", "pids", ns])).unwrap_or_default().split_whitespace() {
                let _ = run(command("kill", &["-KILL", pid]));
            }
        }
        let _ = run(ip(&["netns", "del", ns]));
    }
    let veth_prefix = format!("slwv{k}-");
    let links = run(ip(&["-o", "link", "show"])).unwrap_or_default();
    for line in links.lines() {
        // "12: slwv3-1@if11: <BROADCAST,…"
        let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else { continue };
        if name.strip_prefix(&veth_prefix).is_some_and(|n| n.parse::<u8>().is_ok()) {
            let _ = run(ip(&["link", "del", name]));
        }
    }
    let _ = run(ip(&["link", "del", &format!("slwbr{k}")]));
    for direction in ["-i", "-o"] {
        while run(iptables(&forward_rule("-D", direction, k))).is_ok() {}
    }
}

/// The host rule letting traffic in (`-i`) or out of (`-o`) lab `k`'s bridge through
/// `FORWARD`, for `-I` (insert first) or `-D` (delete).
fn forward_rule(action: &str, direction: &str, k: u8) -> Vec<String> {
    let mut rule = vec![action.to_string(), "FORWARD".to_string()];
    if action == "-I" {
        rule.push("1".to_string());
    }
    rule.extend(
        [direction, &format!("slwbr{k}"), "-m", "comment", "--comment", &format!("slipway-netlab-{k}")]
            .map(str::to_string),
    );
    rule.extend(["-j", "ACCEPT"].map(str::to_string));
    rule
}

fn ip(args: &[&str]) -> Command {
    command("ip", args)
}

fn iptables(args: &[String]) -> Command {
    let mut command = Command::new("iptables");
    command.arg("-w").args(args);
    command
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    command
}

/// Runs `command`; its stdout, or an error naming it with its stderr.
fn run(mut command: Command) -> Result<String, String> {
    let output = command.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn run_or_panic(command: Command) -> String {
    run(command).unwrap_or_else(|e| panic!("network lab: {e}"))
}
