//! The local Docker engine: a client for tests ([`require_docker`]), the one base image
//! ([`base_image`], `slipway/busybox:latest`, built by `packaging/base-image.sh` and by
//! nothing else), both at once ([`engine_with_base`]), the router image
//! ([`router_image`], `slipway.invalid/router:latest`, Debian's Caddy on the base image, built
//! by `packaging/router-image.sh`), a single-node Swarm ([`ensure_swarm`]), the docker
//! CLI ([`docker_cli`]) and cleanup of what a test made ([`remove_images`],
//! [`StackCleanup`]).
//!
//! Machine-wide set-up runs once per test process (a [`OnceCell`]) and under `flock`
//! across processes: the image scripts lock `/tmp/slipway-base-image.lock` and
//! `/tmp/slipway-router-image.lock` themselves, and [`ensure_swarm`] locks
//! `/tmp/slipway-swarm.lock`, the same file `packaging/lib.sh`'s `ensure_swarm` locks.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use fs2::FileExt;
use tokio::sync::OnceCell;

use crate::{skip, workspace_root};

/// The base image every example app and test image builds `FROM`.
pub const BASE_IMAGE: &str = "slipway/busybox:latest";

/// The image each stack's `<stack>_router` service runs: Debian's Caddy (2.6.2 on
/// Debian 12) and busybox, labelled `org.slipway.caddy-version`.
pub const ROUTER_IMAGE: &str = "slipway.invalid/router:latest";

/// Request timeout of the client [`require_docker`] returns. bollard's default
/// (120 s) is shorter than a cold build or push on a loaded 2-core machine.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(900);

const SWARM_LOCK: &str = "/tmp/slipway-swarm.lock";

/// A client for the engine at `/var/run/docker.sock` (or `DOCKER_HOST` if it names a
/// unix socket), API version negotiated (Debian's engine speaks 1.41), timeout
/// [`DOCKER_TIMEOUT`].
///
/// Where no engine answers: panics if `SLIPWAY_REQUIRE_DOCKER=1`, else prints a loud
/// skip message and returns `None`; the test then returns early:
///
/// ```no_run
/// # async fn t() {
/// let Some(docker) = slipway_testkit::require_docker().await else { return };
/// # }
/// ```
pub async fn require_docker() -> Option<Docker> {
    match connect().await {
        Ok(docker) => Some(docker),
        Err(e) => {
            skip(&format!(
                "this test needs a Docker engine and none answers at /var/run/docker.sock (or $DOCKER_HOST): {e:#}. \
                 Fix: start dockerd (packaging/lib.sh ensure_docker)"
            ));
            None
        }
    }
}

async fn connect() -> anyhow::Result<Docker> {
    let docker = Docker::connect_with_unix_defaults()?.negotiate_version().await?;
    docker.ping().await?;
    Ok(docker.with_timeout(DOCKER_TIMEOUT))
}

/// The local engine ([`require_docker`]) with [`BASE_IMAGE`] in it ([`base_image`]):
/// what a test that builds images needs. `None` after a loud skip where no engine
/// answers.
pub async fn engine_with_base() -> Option<(Docker, &'static str)> {
    let docker = require_docker().await?;
    Some((docker, base_image().await))
}

/// Makes sure [`BASE_IMAGE`] exists, building it with `packaging/base-image.sh` (a
/// no-op when it exists; once per process). Returns the image name. Panics with the
/// script's output if it fails.
pub async fn base_image() -> &'static str {
    static DONE: OnceCell<Result<(), String>> = OnceCell::const_new();
    if let Err(e) = DONE.get_or_init(|| run_packaging_script("base-image.sh")).await {
        panic!("cannot build {BASE_IMAGE}: {e}");
    }
    BASE_IMAGE
}

/// Makes sure [`ROUTER_IMAGE`] exists and holds the installed `caddy` package's
/// version, building it with `packaging/router-image.sh` (which installs Debian's
/// `caddy` when missing, needs root then, and builds [`BASE_IMAGE`] first; a no-op when
/// the image is current; once per process). Returns the image name. Panics with the
/// script's output if it fails.
pub async fn router_image() -> &'static str {
    static DONE: OnceCell<Result<(), String>> = OnceCell::const_new();
    if let Err(e) = DONE.get_or_init(|| run_packaging_script("router-image.sh")).await {
        panic!("cannot build {ROUTER_IMAGE}: {e}");
    }
    ROUTER_IMAGE
}

/// Runs `packaging/<script>` with bash, off the async runtime; an error carries its
/// output.
async fn run_packaging_script(script: &'static str) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let path = workspace_root().join("packaging").join(script);
        let output = Command::new("bash")
            .arg(&path)
            .env("NO_COLOR", "1")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}):\n{}{}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("{script} task panicked: {e}")))
}

/// Makes sure the local engine is an active Swarm manager: `docker swarm init
/// --advertise-addr 127.0.0.1`, or the default route's address if Docker refuses
/// loopback (once per process, under `flock` on `/tmp/slipway-swarm.lock`). Returns
/// the node's advertised address. Panics with the CLI's error and the fix if it fails.
pub async fn ensure_swarm() -> &'static str {
    static ADDR: OnceCell<Result<String, String>> = OnceCell::const_new();
    let result = ADDR
        .get_or_init(|| async {
            tokio::task::spawn_blocking(init_swarm)
                .await
                .unwrap_or_else(|e| Err(format!("swarm init task panicked: {e}")))
        })
        .await;
    match result {
        Ok(addr) => addr,
        Err(e) => panic!("cannot make this engine a Swarm manager: {e}"),
    }
}

fn init_swarm() -> Result<String, String> {
    let lock = OpenOptions::new()
        .create(true)
        .append(true)
        .open(SWARM_LOCK)
        .map_err(|e| format!("cannot open {SWARM_LOCK}: {e}"))?;
    lock.lock_exclusive().map_err(|e| format!("cannot lock {SWARM_LOCK}: {e}"))?;
    // The lock is released when `lock` is dropped, on every return below.
    match swarm_state()?.as_str() {
        "active" => return swarm_addr(),
        "inactive" => {}
        other => {
            return Err(format!(
                "this engine's swarm state is '{other}'. Fix: docker swarm leave --force, then rerun"
            ))
        }
    }
    let first = docker_cli(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    if first.is_ok() {
        return swarm_addr();
    }
    let addr = default_route_addr().ok_or_else(|| {
        format!(
            "docker swarm init --advertise-addr 127.0.0.1 failed ({}) and there is no default \
             route address to retry with. Fix: docker swarm init --advertise-addr <host IP>",
            first.unwrap_err()
        )
    })?;
    docker_cli(&["swarm", "init", "--advertise-addr", &addr])
        .map_err(|e| format!("{e}. Fix: docker swarm init --advertise-addr <host IP>"))?;
    swarm_addr()
}

fn swarm_state() -> Result<String, String> {
    docker_cli(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
}

fn swarm_addr() -> Result<String, String> {
    docker_cli(&["info", "--format", "{{.Swarm.NodeAddr}}"])
}

/// The IPv4 address of the interface the default route goes through.
fn default_route_addr() -> Option<String> {
    let routes = Command::new("ip").args(["-4", "route", "show", "default"]).output().ok()?;
    let routes = String::from_utf8_lossy(&routes.stdout);
    let mut words = routes.split_whitespace();
    words.find(|w| *w == "dev")?;
    let dev = words.next()?;
    let addrs = Command::new("ip").args(["-4", "-o", "addr", "show", "dev", dev]).output().ok()?;
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    let mut words = addrs.split_whitespace();
    words.find(|w| *w == "inet")?;
    Some(words.next()?.split('/').next()?.to_string())
}

/// Runs the docker CLI; its trimmed stdout, or an error with its stderr.
pub fn docker_cli(args: &[&str]) -> Result<String, String> {
    run_docker(Command::new("docker"), args, None)
}

/// Like [`docker_cli`], with its own client config directory (`DOCKER_CONFIG`: what
/// `docker login` there stored) and `stdin` (e.g. for `login --password-stdin`).
pub fn docker_cli_as(config: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut command = Command::new("docker");
    command.env("DOCKER_CONFIG", config);
    run_docker(command, args, stdin)
}

fn run_docker(mut command: Command, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let cannot = |e: std::io::Error| {
        format!("cannot run docker {}: {e} (is the docker CLI installed?)", args.join(" "))
    };
    let mut child = command
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(cannot)?;
    }
    let output = child.wait_with_output().map_err(cannot)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Removes `images` (names, references or ids) from `docker`'s engine, forced, ignoring
/// errors: cleanup, so that repeated runs do not pile up test images.
pub async fn remove_images(docker: &Docker, images: &[String]) {
    for image in images {
        let options = bollard::query_parameters::RemoveImageOptionsBuilder::default().force(true).build();
        let _ = docker.remove_image(image, Some(options), None).await;
    }
}

/// Removes the Swarm stack `stack` from the local engine: its services (those labelled
/// `com.docker.stack.namespace=<stack>`, as `docker stack deploy` and slipway label
/// them), then its `<stack>_default` network and its volumes, retrying for up to 20 s
/// while the tasks' containers go (until then the network and volumes are in use) and
/// until the network is gone.
/// Best effort: never panics.
pub fn remove_stack(stack: &str) {
    let filter = format!("label=com.docker.stack.namespace={stack}");
    let services = docker_cli(&["service", "ls", "-q", "--filter", &filter]).unwrap_or_default();
    for id in services.split_whitespace() {
        let _ = docker_cli(&["service", "rm", id]);
    }
    // Generous: a task's container may still be starting when the service goes, and on a
    // loaded machine stopping it and freeing its volume took more than 20 s (seen in CI).
    let deadline = Instant::now() + Duration::from_secs(90);
    let network = format!("{stack}_default");
    loop {
        // A Swarm network removed while tasks still hold it lingers a moment after `rm`
        // succeeds: it is gone when `inspect` no longer finds it.
        let _ = docker_cli(&["network", "rm", &network]);
        let network_gone = docker_cli(&["network", "inspect", &network]).is_err();
        let volumes = docker_cli(&["volume", "ls", "-q", "--filter", &filter]).unwrap_or_default();
        let volumes_gone = volumes.split_whitespace().all(|v| docker_cli(&["volume", "rm", v]).is_ok());
        // The router's start config (a Swarm config object, in use until its service goes).
        let configs = docker_cli(&["config", "ls", "-q", "--filter", &filter]).unwrap_or_default();
        let configs_gone = configs.split_whitespace().all(|c| docker_cli(&["config", "rm", c]).is_ok());
        if (network_gone && volumes_gone && configs_gone) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Removes a Swarm stack ([`remove_stack`]) when dropped, also when the test panicked.
#[derive(Debug)]
pub struct StackCleanup {
    stack: String,
}

impl StackCleanup {
    /// A guard for `stack`.
    pub fn new(stack: &str) -> StackCleanup {
        StackCleanup { stack: stack.to_string() }
    }
}

impl Drop for StackCleanup {
    fn drop(&mut self) {
        remove_stack(&self.stack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router image runs Debian's caddy (its libraries are all there) and carries
    /// the version label the script compares.
    #[tokio::test]
    async fn router_image_runs_caddy_and_is_labelled() {
        if require_docker().await.is_none() {
            return;
        }
        let image = router_image().await;
        let version =
            docker_cli(&["run", "--rm", image, "caddy", "version"]).expect("caddy runs in the image");
        let label = docker_cli(&[
            "image",
            "inspect",
            "--format",
            "{{ index .Config.Labels \"org.slipway.caddy-version\" }}",
            image,
        ])
        .expect("the image exists");
        assert!(!label.is_empty() && version.starts_with(&label), "caddy {version}, label {label}");
        // busybox is there for `docker exec` debugging.
        docker_cli(&["run", "--rm", image, "sh", "-c", "wget --help 2>&1 | grep -q Usage"])
            .expect("busybox in the image");
    }
}
