//! Tier 30 fixtures: the network lab ([`NetLab`]) and the Docker fleet work on this
//! machine, and leave nothing behind.
//!
//! Needs root (namespaces, bridges, iptables); skips loudly without it.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use slipway_tests::NetLab;

const PORT: u16 = 7000;

/// A child process killed and reaped when dropped, also when the test panics (an
/// orphaned server would keep the test's output pipe open).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `busybox httpd` serving `hello.txt` on every address of node `n`, port [`PORT`].
fn serve(lab: &NetLab, n: u8, dir: &std::path::Path) -> KillOnDrop {
    std::fs::write(dir.join("hello.txt"), "hello from node 1\n").unwrap();
    let child = lab
        .command(n, "busybox")
        .args(["httpd", "-f", "-p", &PORT.to_string(), "-h"])
        .arg(dir)
        .stdin(Stdio::null())
        .spawn()
        .map(KillOnDrop)
        .expect("start busybox httpd in node 1");
    let addr = SocketAddr::from((lab.ip(n), PORT));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "busybox httpd in node {n} does not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Does `GET http://ip:PORT/hello.txt` from node `from` succeed (2 s timeout)?
/// Returns the outcome and how long it took. (curl: Debian's `busybox wget -T`
/// segfaults.)
fn fetch_from_node(lab: &NetLab, from: u8, ip: Ipv4Addr) -> (bool, Duration) {
    let started = Instant::now();
    let output = lab
        .command(from, "curl")
        .args(["-sS", "--connect-timeout", "2", "--max-time", "3", &format!("http://{ip}:{PORT}/hello.txt")])
        .stdin(Stdio::null())
        .output()
        .expect("run busybox wget in a node");
    let ok = output.status.success() && String::from_utf8_lossy(&output.stdout).contains("hello from node 1");
    (ok, started.elapsed())
}

fn reachable_from_host(ip: Ipv4Addr) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((ip, PORT)), Duration::from_secs(2)).is_ok()
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn netlab_isolates_and_heals_a_node_and_leaves_nothing() {
    let Some(mut lab) = NetLab::try_new("t30-netlab") else { return };
    let k = lab.index();
    let ip1 = lab.add_node(1);
    let ip2 = lab.add_node(2);
    assert_eq!(lab.host_ip(), Ipv4Addr::new(10, 231, k, 1));
    assert_eq!((ip1, ip2), (Ipv4Addr::new(10, 231, k, 11), Ipv4Addr::new(10, 231, k, 12)));
    assert_eq!(lab.netns_path(1), std::path::PathBuf::from(format!("/var/run/netns/slw{k}-1")));

    let www = tempfile::tempdir().unwrap();
    let httpd = serve(&lab, 1, www.path());

    let (ok, _) = fetch_from_node(&lab, 2, ip1);
    assert!(ok, "node 2 reaches node 1 across the bridge");
    assert!(reachable_from_host(ip1), "the host reaches node 1");
    let (ok, _) = fetch_from_node(&lab, 1, ip1);
    assert!(ok, "node 1 reaches itself");

    lab.isolate(1);
    assert!(lab.is_isolated(1));
    let (ok, took) = fetch_from_node(&lab, 2, ip1);
    assert!(!ok, "node 2 must not reach an isolated node 1");
    assert!(took >= Duration::from_millis(1500), "dropped, so the connection times out (took {took:?})");
    assert!(reachable_from_host(ip1), "the host still reaches isolated node 1");
    let (ok, _) = fetch_from_node(&lab, 1, ip1);
    assert!(ok, "isolated node 1 still reaches itself");
    // And node 1 reaches the host, but not node 2.
    let out = lab
        .command(1, "busybox")
        .args(["ping", "-c", "1", "-W", "1"])
        .arg(lab.host_ip().to_string())
        .output();
    assert!(out.unwrap().status.success(), "isolated node 1 still reaches the host");
    let out = lab.command(1, "busybox").args(["ping", "-c", "1", "-W", "1"]).arg(ip2.to_string()).output();
    assert!(!out.unwrap().status.success(), "isolated node 1 must not reach node 2");

    lab.heal(1);
    assert!(!lab.is_isolated(1));
    let (ok, _) = fetch_from_node(&lab, 2, ip1);
    assert!(ok, "node 2 reaches node 1 again after heal");

    drop(httpd);
    drop(lab);

    let namespaces = command_output("ip", &["netns", "list"]);
    assert!(!namespaces.contains(&format!("slw{k}-")), "namespaces left behind:\n{namespaces}");
    let links = command_output("ip", &["-o", "link", "show"]);
    assert!(
        !links.contains(&format!("slwbr{k}")) && !links.contains(&format!("slwv{k}-")),
        "links left behind:\n{links}"
    );
    let forward = command_output("iptables", &["-S", "FORWARD"]);
    assert!(!forward.contains(&format!("slwbr{k} ")), "FORWARD rules left behind:\n{forward}");
}
