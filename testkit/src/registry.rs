//! [`Registry`]: a private Docker registry for one test.
//!
//! Debian's `docker-registry` (Distribution 2.8) runs as a child process on a free
//! 127.0.0.1 port with its storage in a temporary directory, configured like
//! `packaging/registry.sh` does it (filesystem storage, deletes enabled, log level
//! warn; no auth unless given a [`TokenAuth`]). Docker treats 127.0.0.0/8 registries as
//! insecure, so the engine pushes to it over plain http without configuration.
//! [`Registry::start_on`] listens on another address instead (a
//! [`NetLab`](crate::NetLab)'s host address, for a fleet): engines then need it in their
//! `insecure-registries`. With a [`TokenAuth`] ([`Registry::start_with`],
//! [`Registry::require_tokens`]) it runs `auth: token` with the realm, service, issuer
//! and root certificate bundle the caller gives (slipway's tests give a scheduler's
//! `/v2/token` and its token signer's root); its HTTP helpers then fetch a pull token
//! from the realm for the repository they look at, logging in with what
//! [`TokenAuth::pull_login`] returns. Dropping the [`Registry`] kills the process and
//! deletes its storage.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use reqwest::{header, StatusCode};
use tempfile::TempDir;

use crate::docker::docker_cli;

/// The manifest media types a registry client accepts: Docker v2 schema 2 and OCI,
/// single-platform and index. Without them the registry may answer with (or refuse
/// to convert to) the legacy schema 1.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// What a [`Registry`] needs to run with `auth: token`: the values of that config
/// section, and how its own HTTP helpers log in to the realm for a pull token.
#[derive(Clone)]
pub struct TokenAuth {
    /// Where clients get tokens (`auth.token.realm`), e.g. a scheduler's
    /// `http://<http_listen>/v2/token`; must be reachable from every engine.
    pub realm: String,
    /// The `service` the realm issues tokens for and the registry expects in them.
    pub service: String,
    /// The `iss` of the tokens the registry accepts.
    pub issuer: String,
    /// PEM of the certificates that token certificates must chain to
    /// (`rootcertbundle`), written to `rootcertbundle.pem` in the registry's directory.
    pub root_cert_bundle: String,
    /// The basic-auth login (user, password) the helpers present to the realm for a
    /// pull token of a repository; `None` leaves them without tokens (they then see the
    /// registry's 401).
    pub pull_login: Option<PullLogin>,
    /// PEM of a CA the helpers trust for an `https://` realm (a scheduler's HTTP side
    /// with `http.tls`: the cluster CA).
    pub realm_ca_pem: Option<String>,
}

/// For a repository name, the (user, password) that the realm grants a pull token for it.
pub type PullLogin = Arc<dyn Fn(&str) -> (String, String) + Send + Sync>;

impl TokenAuth {
    /// `auth: token` with these values, no pull login (see [`TokenAuth::with_pull_login`]).
    pub fn new(
        realm: impl Into<String>,
        service: impl Into<String>,
        issuer: impl Into<String>,
        root_cert_bundle: impl Into<String>,
    ) -> TokenAuth {
        TokenAuth {
            realm: realm.into(),
            service: service.into(),
            issuer: issuer.into(),
            root_cert_bundle: root_cert_bundle.into(),
            pull_login: None,
            realm_ca_pem: None,
        }
    }

    /// The same, with `login` giving the helpers' realm login for a repository.
    pub fn with_pull_login(
        self,
        login: impl Fn(&str) -> (String, String) + Send + Sync + 'static,
    ) -> TokenAuth {
        TokenAuth { pull_login: Some(Arc::new(login)), ..self }
    }

    /// The same, the helpers trusting `ca_pem` for an `https://` realm.
    pub fn with_realm_ca(self, ca_pem: impl Into<String>) -> TokenAuth {
        TokenAuth { realm_ca_pem: Some(ca_pem.into()), ..self }
    }
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("realm", &self.realm)
            .field("service", &self.service)
            .field("issuer", &self.issuer)
            .field("pull_login", &self.pull_login.is_some())
            .finish_non_exhaustive()
    }
}

/// A running `docker-registry` (on 127.0.0.1 unless started with
/// [`Registry::start_on`]), owned by one test.
pub struct Registry {
    /// The registry process; killed and reaped on drop.
    child: Child,
    /// The address it listens on.
    ip: IpAddr,
    port: u16,
    /// Holds `config.yml`, `registry.log` and `data/`; removed on drop, after the kill.
    dir: TempDir,
    http: reqwest::Client,
    /// Token auth, if it runs with it.
    auth: Option<TokenAuth>,
    /// References [`Registry::build_and_push`] made in the local engine, untagged on drop.
    built: Mutex<Vec<String>>,
}

/// A registry on loopback ([`Registry::start`]), or `None` after a loud
/// [`skip`](crate::skip) where `docker-registry` is not installed. Panics if it is
/// installed and does not start.
pub async fn require_registry() -> Option<Registry> {
    if Registry::binary().is_none() {
        crate::skip(
            "this test needs docker-registry, which is not installed. Fix: apt-get install docker-registry",
        );
        return None;
    }
    Some(Registry::start().await)
}

impl Registry {
    /// Starts a registry and waits until `/v2/` answers. Panics with the reason (and
    /// the registry's log) if it cannot; see [`Registry::try_start`].
    pub async fn start() -> Registry {
        match Registry::try_start().await {
            Ok(registry) => registry,
            Err(e) => panic!("cannot start the test registry: {e:#}"),
        }
    }

    /// Starts a registry on a free port in a new temporary directory and waits (up to
    /// 30 s) until `GET /v2/` answers 200. Retries with another port if the one it
    /// picked was taken meanwhile.
    pub async fn try_start() -> anyhow::Result<Registry> {
        Registry::try_start_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// Like [`Registry::start`], listening on `ip` (which must be an address of this
    /// host) instead of 127.0.0.1. Engines push to and pull from it over plain http
    /// only if they list it (or a network holding it) in `insecure-registries`.
    pub async fn start_on(ip: impl Into<IpAddr>) -> Registry {
        let ip = ip.into();
        match Registry::try_start_on(ip).await {
            Ok(registry) => registry,
            Err(e) => panic!("cannot start the test registry on {ip}: {e:#}"),
        }
    }

    /// Like [`Registry::try_start`], listening on `ip`.
    pub async fn try_start_on(ip: impl Into<IpAddr>) -> anyhow::Result<Registry> {
        Registry::try_start_in(ip, &std::env::temp_dir()).await
    }

    /// Like [`Registry::try_start_on`], with its temporary directory under `parent`
    /// (so that a fixture cleaning up after a crashed run finds the registry by the
    /// path on its command line).
    pub async fn try_start_in(ip: impl Into<IpAddr>, parent: &Path) -> anyhow::Result<Registry> {
        Registry::start_with(ip, parent, None).await
    }

    /// Like [`Registry::try_start_in`], with token auth if `auth` is given.
    pub async fn start_with(
        ip: impl Into<IpAddr>,
        parent: &Path,
        auth: Option<TokenAuth>,
    ) -> anyhow::Result<Registry> {
        let ip = ip.into();
        let binary = installed_binary()?;
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(pem) = auth.as_ref().and_then(|a| a.realm_ca_pem.as_ref()) {
            http = http.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
        }
        let http = http.build()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new().prefix("slipway-registry-").tempdir_in(parent)?;
            let port = crate::net::free_port_on(ip);
            match spawn_and_wait(&binary, dir.path(), ip, port, auth.as_ref(), &http).await {
                Ok(child) => {
                    return Ok(Registry { child, ip, port, dir, http, auth, built: Mutex::default() })
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Where `docker-registry` is installed, if it is: on `PATH` or in `/usr/bin`.
    pub fn binary() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin")])
            .map(|dir| dir.join("docker-registry"))
            .find(|candidate| candidate.is_file())
    }

    /// Stops the registry (kill and reap), keeping its directory: pushes and pulls now
    /// fail as with an unreachable registry.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the registry again after [`Registry::stop`] (or restarts it): same address,
    /// same storage, same auth; returns once `/v2/` answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let binary = installed_binary()?;
        self.child =
            spawn_and_wait(&binary, self.dir.path(), self.ip, self.port, self.auth.as_ref(), &self.http)
                .await?;
        Ok(())
    }

    /// Restarts the registry (same address, same storage) with token auth: from now on
    /// it admits only what `auth`'s token server allows.
    pub async fn require_tokens(&mut self, auth: TokenAuth) -> anyhow::Result<()> {
        self.stop();
        let binary = installed_binary()?;
        self.child =
            spawn_and_wait(&binary, self.dir.path(), self.ip, self.port, Some(&auth), &self.http).await?;
        self.auth = Some(auth);
        Ok(())
    }

    /// `127.0.0.1:PORT` (or `IP:PORT` of [`Registry::start_on`]): the registry part of
    /// image references.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The address it listens on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `<addr>/<repo>`: the image name to tag and push as.
    pub fn image(&self, repo: &str) -> String {
        format!("{}/{repo}", self.addr())
    }

    /// Its storage directory (`rootdirectory` in the config).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its log so far (level warn, plus the access log), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Builds `context` (a directory holding a `Dockerfile`) with the local engine as
    /// `<addr>/<repo>:<tag>`, pushes it here and returns it pinned by digest,
    /// `<addr>/<repo>@sha256:…`. Both references are untagged from the engine when the
    /// registry is dropped (the layers stay in its cache for the next run). For a
    /// registry without token auth (the engine pushes without logging in). Panics with
    /// the registry's log if the build or push fails.
    pub fn build_and_push(&self, context: &Path, repo: &str, tag: &str) -> String {
        let repository = self.image(repo);
        let tagged = format!("{repository}:{tag}");
        let context_arg = context.to_str().expect("a UTF-8 context path");
        docker_cli(&["build", "-q", "-t", &tagged, context_arg]).unwrap_or_else(|e| panic!("{e}"));
        self.lock_built().push(tagged.clone());
        docker_cli(&["push", &tagged]).unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", self.log()));
        let digests =
            docker_cli(&["inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", &tagged])
                .unwrap_or_else(|e| panic!("{e}"));
        let pinned = digests
            .lines()
            .find(|d| d.starts_with(&format!("{repository}@sha256:")))
            .unwrap_or_else(|| panic!("no digest of {repository} in {digests:?} after the push"))
            .to_string();
        self.lock_built().push(pinned.clone());
        pinned
    }

    fn lock_built(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.built.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Does the registry hold the manifest `digest` (`sha256:…`) of `repo`?
    /// (`GET /v2/<repo>/manifests/<digest>`, accepting Docker v2 and OCI manifests.)
    pub async fn has_manifest(&self, repo: &str, digest: &str) -> bool {
        let url = format!("{}/{repo}/manifests/{digest}", self.base_url());
        let response = self.get(&url, Some(repo)).await;
        match response.status() {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            status => panic!("GET {url}: unexpected {status}: {}", response.text().await.unwrap_or_default()),
        }
    }

    /// Whether `repo@digest` can be pulled whole: its manifest answers and so does every
    /// blob it references (config and layers); Err names what is missing.
    pub async fn pullable(&self, repo: &str, digest: &str) -> Result<(), String> {
        let url = format!("{}/{repo}/manifests/{digest}", self.base_url());
        let manifest =
            self.get_json(&url, Some(repo)).await.ok_or_else(|| format!("no manifest {repo}@{digest}"))?;
        let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap_or_default().to_string()];
        blobs.extend(
            manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["digest"].as_str().map(str::to_string)),
        );
        for blob in blobs {
            let url = format!("{}/{repo}/blobs/{blob}", self.base_url());
            let status = self.get(&url, Some(repo)).await.status();
            if status != StatusCode::OK {
                return Err(format!("{repo}@{digest}: blob {blob} answered {status}"));
            }
        }
        Ok(())
    }

    /// Its config file (what `docker-registry garbage-collect` takes).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// The digest of the manifest `reference` (a tag or digest) of `repo` points to
    /// (its `Docker-Content-Digest`), or `None` if there is none.
    pub async fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let url = format!("{}/{repo}/manifests/{reference}", self.base_url());
        let response = self.get(&url, Some(repo)).await;
        match response.status() {
            StatusCode::OK => Some(
                response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("GET {url}: no Docker-Content-Digest header"))
                    .to_string(),
            ),
            StatusCode::NOT_FOUND => None,
            status => panic!("GET {url}: unexpected {status}: {}", response.text().await.unwrap_or_default()),
        }
    }

    /// The tags of `repo` (`GET /v2/<repo>/tags/list`), sorted; empty if the
    /// repository does not exist or has no tags left.
    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let url = format!("{}/{repo}/tags/list", self.base_url());
        let body = match self.get_json(&url, Some(repo)).await {
            Some(body) => body,
            None => return Vec::new(),
        };
        let mut tags: Vec<String> = body["tags"]
            .as_array()
            .map(|tags| tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        tags.sort();
        tags
    }

    /// The repositories it holds (`GET /v2/_catalog`), sorted. Without token auth only:
    /// the token server grants no catalog scope.
    pub async fn catalog(&self) -> Vec<String> {
        let url = format!("{}/_catalog", self.base_url());
        let body = self.get_json(&url, None).await.unwrap_or_default();
        let mut repos: Vec<String> = body["repositories"]
            .as_array()
            .map(|r| r.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        repos.sort();
        repos
    }

    fn base_url(&self) -> String {
        format!("http://{}/v2", self.addr())
    }

    /// GETs `url`, with a pull token for `repo` when the registry wants tokens and
    /// [`TokenAuth::pull_login`] says how to get one.
    async fn get(&self, url: &str, repo: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(url).header(header::ACCEPT, MANIFEST_ACCEPT);
        if let (Some(auth), Some(repo)) = (&self.auth, repo) {
            if let Some(login) = &auth.pull_login {
                request = request.bearer_auth(self.pull_token(auth, login, repo).await);
            }
        }
        request.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}\nregistry log:\n{}", self.log()))
    }

    /// A token to pull `repo`, from the realm (the Docker token protocol: `GET
    /// realm?service=…&scope=repository:<repo>:pull` with basic auth).
    async fn pull_token(&self, auth: &TokenAuth, login: &PullLogin, repo: &str) -> String {
        let (user, password) = login(repo);
        let response = self
            .http
            .get(&auth.realm)
            .query(&[("service", auth.service.as_str()), ("scope", &format!("repository:{repo}:pull"))])
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {}: {e}", auth.realm));
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, StatusCode::OK, "the token server refused a pull login for {repo}: {body}");
        body["token"].as_str().expect("a token").to_string()
    }

    /// The JSON body of `url`, `None` on 404.
    async fn get_json(&self, url: &str, repo: Option<&str>) -> Option<serde_json::Value> {
        let response = self.get(url, repo).await;
        match response.status() {
            StatusCode::OK => {
                Some(response.json().await.unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}")))
            }
            StatusCode::NOT_FOUND => None,
            status => panic!("GET {url}: unexpected {status}: {}", response.text().await.unwrap_or_default()),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reference in self.lock_built().drain(..) {
            let _ = docker_cli(&["image", "rm", &reference]);
        }
        // `dir` is removed after this, when the fields drop.
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr())
            .field("pid", &self.child.id())
            .field("dir", &self.dir.path())
            .field("token_realm", &self.auth.as_ref().map(|a| &a.realm))
            .finish()
    }
}

/// [`Registry::binary`], or an error naming the fix.
fn installed_binary() -> anyhow::Result<PathBuf> {
    Registry::binary()
        .ok_or_else(|| anyhow!("docker-registry is not installed. Fix: apt-get install docker-registry"))
}

/// The registry's configuration: the same as `packaging/registry.sh` writes. With
/// `auth`, its root certificate bundle goes to `DIR/rootcertbundle.pem`.
fn config(dir: &Path, ip: IpAddr, port: u16, auth: Option<&TokenAuth>) -> anyhow::Result<String> {
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  fields:\n    service: slipway-test-registry\n\
         storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
         http:\n  addr: {ip}:{port}\n",
        data = dir.join("data").display()
    );
    if let Some(auth) = auth {
        let bundle = dir.join("rootcertbundle.pem");
        fs::write(&bundle, &auth.root_cert_bundle)?;
        config += &format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            auth.realm,
            auth.service,
            auth.issuer,
            bundle.display()
        );
    }
    Ok(config)
}

/// Writes the config, starts the registry and waits until `/v2/` answers; on failure
/// the child is killed and the error carries the log.
async fn spawn_and_wait(
    binary: &Path,
    dir: &Path,
    ip: IpAddr,
    port: u16,
    auth: Option<&TokenAuth>,
    http: &reqwest::Client,
) -> anyhow::Result<Child> {
    fs::create_dir_all(dir.join("data"))?;
    let config_path = dir.join("config.yml");
    fs::write(&config_path, config(dir, ip, port, auth)?)?;
    let log_path = dir.join("registry.log");
    let log = File::create(&log_path)?;
    let mut child = Command::new(binary)
        .arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let url = format!("http://{ip}:{port}/v2/");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            bail!("docker-registry exited during start ({status}) on port {port}; its log:\n{log}");
        }
        if let Ok(response) = http.get(&url).send().await {
            // With token auth, /v2/ answers 401 with the realm to ask.
            let ready = if auth.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
            if response.status() == ready {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            bail!("docker-registry did not answer {url} within {START_TIMEOUT:?}; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
