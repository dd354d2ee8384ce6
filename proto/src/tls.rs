//! Who is calling: the cluster's certificates, and how every peer checks them.
//!
//! The cluster CA (created by the first scheduler, see `slipway_scheduler::pki`)
//! issues one certificate per holder. The holder's role and identity are a URI in the
//! certificate's subject alternative names, `slipway://<role>/<name>`:
//!
//! | role        | name            | may call                                  |
//! |-------------|-----------------|-------------------------------------------|
//! | `scheduler` | its raft node id| the raft service (and serves every one)   |
//! | `agent`     | its node id     | the agent service, certificate renewal    |
//! | `admin`     | an operator name| the control API                           |
//!
//! Scheduler certificates also carry the DNS name [`SERVER_NAME`]: clients check that
//! a server is *a* scheduler of *this* cluster (chain to the CA, that name), not which
//! address it answered on — addresses change, the CA does not.
//!
//! A join token ([`JoinToken`]) pins the CA by the SHA-256 digest of its certificate,
//! so a new agent trusts nothing until the scheduler it dials proves to hold a
//! certificate from that CA ([`connect_pinned`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
#[cfg(feature = "server")]
use tonic::transport::ServerTlsConfig;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
#[cfg(feature = "server")]
use tonic::{Request, Status};

/// The DNS name every scheduler certificate carries and every client expects.
pub const SERVER_NAME: &str = "scheduler.slipway.internal";

/// Scheme of the identity URI in certificates.
const URI_SCHEME: &str = "slipway://";

/// What a certificate's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A member of the raft cluster: may call every service.
    Scheduler,
    /// A node's agent: may hold an agent session, nothing else.
    Agent,
    /// An operator: may call the control API.
    Admin,
}

impl Role {
    /// The role as written in certificates and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scheduler" => Ok(Role::Scheduler),
            "agent" => Ok(Role::Agent),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: expected scheduler, agent or admin")),
        }
    }
}

/// A certificate holder: role and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// What the holder may call.
    pub role: Role,
    /// Who the holder is: a node name, a member id, an operator's name.
    pub name: String,
}

impl PeerIdentity {
    /// The identity of `name` in `role`.
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Self { role, name: name.into() }
    }

    /// `slipway://<role>/<name>`, as the certificate carries it.
    pub fn uri(&self) -> String {
        format!("{URI_SCHEME}{}/{}", self.role, self.name)
    }

    /// Parses [`uri`](Self::uri)'s form; None for anything else.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let (role, name) = uri.strip_prefix(URI_SCHEME)?.split_once('/')?;
        let valid = !name.is_empty()
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let role = role.parse().ok()?;
        valid.then(|| Self { role, name: name.to_string() })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

/// What a certificate says: its holder and when it expires.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Who the certificate names.
    pub identity: PeerIdentity,
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// True when less than a third of the certificate's lifetime is left: time to renew.
    pub fn due_for_renewal(&self) -> bool {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        let left = self.not_after.duration_since(SystemTime::now()).unwrap_or_default();
        left < lifetime / 3
    }
}

/// Reads the identity URI and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    let identity = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => PeerIdentity::from_uri(uri),
            _ => None,
        })
        .ok_or(
            "the certificate names no slipway identity (no slipway:// URI): it is not one of this cluster's",
        )?;
    let time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok(CertInfo {
        identity,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

/// A new private key and a certificate request for it (PEM both): what a joining agent
/// or an operator sends to be certified; the key stays with them.
pub fn new_key_and_csr() -> Result<(String, String), String> {
    crate::csr::new_key_and_csr().map_err(|_| "cannot make a key and certificate request".to_string())
}

/// SHA-256 of a DER certificate, lowercase hex: how tokens pin the CA.
pub fn cert_digest(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// DER of the first certificate in `pem` (a chain starts with its holder's).
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(cert) => cert.map(|c| c.to_vec()).map_err(|e| format!("bad PEM certificate: {e}")),
        None => Err("no certificate in the PEM text".into()),
    }
}

/// `SLWTKN-1-<role>-<CA digest>-<secret>`: lets a new agent or scheduler join. The
/// digest pins the cluster CA; the secret (rotatable) proves the holder was invited.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// What the holder may call.
    pub role: Role,
    /// SHA-256 of the cluster CA's certificate (hex): the CA the joiner will trust.
    pub ca_digest: String,
    /// The secret that proves the holder may join.
    pub secret: String,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SLWTKN-1-{}-{}-{}", self.role, self.ca_digest, self.secret)
    }
}

/// Never print the secret by accident.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}, CA {}, secret …)", self.role, self.ca_digest)
    }
}

impl FromStr for JoinToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("not a join token ({why}); get one with `slipway cluster token agent` (or `scheduler`)")
        };
        let parts: Vec<&str> = s.trim().split('-').collect();
        let [prefix, version, role, digest, secret] = parts[..] else { return Err(bad("wrong shape")) };
        if prefix != "SLWTKN" || version != "1" {
            return Err(bad("it does not start with SLWTKN-1-"));
        }
        let role: Role = role.parse().map_err(|_| bad("unknown role"))?;
        if role == Role::Admin {
            return Err(bad("admins get certificates with `slipway cluster admin-cert`, not tokens"));
        }
        let hex = |t: &str, len: usize| t.len() == len && t.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(digest, 64) || !hex(secret, 64) {
            return Err(bad("its CA digest and secret are 64 hex digits each"));
        }
        Ok(Self { role, ca_digest: digest.to_ascii_lowercase(), secret: secret.to_ascii_lowercase() })
    }
}

/// A holder's PEM files: the cluster CA, its certificate (chain) and private key.
#[derive(Clone)]
pub struct Credentials {
    /// The cluster CA's certificate (PEM).
    pub ca_pem: String,
    /// This holder's certificate (PEM).
    pub cert_pem: String,
    /// This holder's private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = self.info().map(|i| i.identity.to_string()).unwrap_or_else(|e| e);
        write!(f, "Credentials({who})")
    }
}

/// File names of a credentials directory.
pub const CA_FILE: &str = "ca.pem";
/// File name of the certificate in a credentials directory.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key in a credentials directory (mode 0600).
pub const KEY_FILE: &str = "key.pem";

impl Credentials {
    /// Reads `ca.pem`, `cert.pem` and `key.pem` from `dir`; None if `cert.pem` is absent.
    pub fn load_dir(dir: &Path) -> Result<Option<Self>, String> {
        if !dir.join(CERT_FILE).exists() {
            return Ok(None);
        }
        Self::load(&dir.join(CA_FILE), &dir.join(CERT_FILE), &dir.join(KEY_FILE)).map(Some)
    }

    /// Reads the three PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, String> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let creds = Self { ca_pem: read(ca)?, cert_pem: read(cert)?, key_pem: read(key)? };
        creds.info()?;
        Ok(creds)
    }

    /// Writes them into `dir` (created 0700; the key 0600), replacing what is there.
    pub fn save_dir(&self, dir: &Path) -> Result<(), String> {
        write_private_dir(dir)?;
        write_file(&dir.join(CA_FILE), &self.ca_pem, 0o644)?;
        write_file(&dir.join(KEY_FILE), &self.key_pem, 0o600)?;
        write_file(&dir.join(CERT_FILE), &self.cert_pem, 0o644)
    }

    /// Who the certificate says its holder is, and its validity.
    pub fn info(&self) -> Result<CertInfo, String> {
        cert_info(&first_cert_der(&self.cert_pem)?)
    }

    /// Digest of the CA certificate (what join tokens pin).
    pub fn ca_digest(&self) -> Result<String, String> {
        Ok(cert_digest(&first_cert_der(&self.ca_pem)?))
    }

    /// TLS for a client of the schedulers: trusts the cluster CA, expects
    /// [`SERVER_NAME`], presents this certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(SERVER_NAME)
    }

    /// TLS for a scheduler's listener: presents this certificate; asks for a client
    /// certificate from the cluster CA but lets a caller without one through the
    /// handshake, so a joining agent can present its token. Each service then checks
    /// the caller's role ([`authorize`]).
    #[cfg(feature = "server")]
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }
}

/// Creates `dir` (and missing parents) private to its owner, mode 0700, and makes it so
/// when it exists already: for directories that hold keys or the cluster's state.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn write_private_dir(dir: &Path) -> Result<(), String> {
    create_private_dir(dir).map_err(|e| format!("cannot create {} (mode 0700): {e}", dir.display()))
}

/// Writes `contents` to `path` with `mode` (through a temporary file, so a crash
/// leaves the old file or the new one, never half of one).
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(fail)?;
    file.write_all(contents.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Installs ring as rustls's crypto provider, once per process (every binary calls
/// this first: two providers in one process make rustls panic).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How a process talks to the schedulers: over mutual TLS, or (development only, see
/// the `insecure` settings) in plain text.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Mutual TLS with these credentials.
    Tls(Arc<Credentials>),
    /// Plain text (development only: `tls.insecure`).
    Insecure,
}

impl Transport {
    /// A gRPC endpoint for the scheduler at `addr` (`host:port`).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        let bad = |e: &dyn fmt::Display| format!("bad scheduler address {addr:?}: {e}");
        match self {
            Transport::Insecure => Endpoint::from_shared(crate::endpoint_uri(addr)).map_err(|e| bad(&e)),
            Transport::Tls(creds) => {
                // The server would just drop the handshake: say it here, with the fix.
                let info = creds.info()?;
                let now = SystemTime::now();
                if let Ok(ago) = now.duration_since(info.not_after) {
                    return Err(format!(
                        "the {} certificate expired {} s ago: an operator gets a new one with `slipway cluster \
                         admin-cert`, an agent joins again with `slipway-agent --join TOKEN`",
                        info.identity,
                        ago.as_secs()
                    ));
                }
                if info.not_before > now {
                    return Err(format!(
                        "the {} certificate is not valid yet: is this clock right?",
                        info.identity
                    ));
                }
                Endpoint::from_shared(format!("https://{}", strip_scheme(addr)))
                    .map_err(|e| bad(&e))?
                    .tls_config(creds.client_tls())
                    .map_err(|e| bad(&e))
            }
        }
    }
}

fn strip_scheme(addr: &str) -> &str {
    addr.split_once("://").map_or(addr, |(_, rest)| rest)
}

/// The caller of a request, from its client certificate (verified against the cluster
/// CA by the TLS handshake).
#[cfg(feature = "server")]
pub fn peer_identity<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    peer_cert(request).map(|i| i.identity)
}

/// Who called, as a handler sees it (in the request's extensions, put there by
/// [`require`]).
#[cfg(feature = "server")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Checked against the cluster CA.
    Verified(PeerIdentity),
    /// The server runs without TLS (insecure development mode): nobody is checked.
    Unchecked,
}

/// Checks that the caller holds one of `allowed` roles; returns who it is.
#[cfg(feature = "server")]
pub fn authorize<T>(request: &Request<T>, allowed: &[Role]) -> Result<PeerIdentity, Status> {
    let who = peer_identity(request)?;
    if allowed.contains(&who.role) {
        Ok(who)
    } else {
        let roles: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        Err(Status::permission_denied(format!(
            "{who} may not call this service: it is for the {} role",
            roles.join(" or ")
        )))
    }
}

/// The caller's certificate, as [`cert_info`] reads it (its leaf, verified against the
/// cluster CA by the TLS handshake).
#[cfg(feature = "server")]
pub fn peer_cert<T>(request: &Request<T>) -> Result<CertInfo, Status> {
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: this scheduler serves members of its cluster only; an agent joins with \
             `slipway-agent --join TOKEN`, an operator uses a certificate from `slipway cluster admin-cert`",
        )
    })?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("an empty client certificate chain"))?;
    cert_info(leaf).map_err(Status::unauthenticated)
}

/// What a server checks about a caller's certificate beyond its role, on every call (a
/// deny list of revoked certificates): Err refuses the call with that status.
#[cfg(feature = "server")]
pub type Gate = Arc<dyn Fn(&CertInfo) -> Result<(), Status> + Send + Sync>;

/// A tonic interceptor admitting only `allowed` roles whose certificate `gate` lets
/// through (everyone when `secure` is false: a server without TLS), leaving the
/// [`Caller`] in the request's extensions.
#[cfg(feature = "server")]
pub fn require(
    allowed: &'static [Role],
    secure: bool,
    gate: Gate,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let caller = if secure {
            let who = authorize(&request, allowed)?;
            gate(&peer_cert(&request)?)?;
            Caller::Verified(who)
        } else {
            Caller::Unchecked
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// A channel to the scheduler at `addr` for a holder of no certificate yet (joining):
/// TLS that trusts the server only if its chain holds a CA whose digest is
/// `ca_digest` and its certificate is that CA's scheduler certificate.
pub async fn connect_pinned(addr: &str, ca_digest: &str) -> Result<Channel, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa { digest: ca_digest.to_string(), provider: provider.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = strip_scheme(addr).to_string();
    let endpoint = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| format!("bad scheduler address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (connector, target) = (connector.clone(), target.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            format!(
                "cannot reach the scheduler at {addr} over TLS pinned to CA {ca_digest}: {}",
                error_chain(&e)
            )
        })
}

/// An error with its causes, `outer: inner: innermost` (transport errors keep the
/// useful part, such as a certificate problem, in their sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What a join returns: the certificate (and, for a scheduler, the CA key) with the
/// private key made here for it.
pub struct Joined {
    /// The certificate the cluster issued and the key made here.
    pub credentials: Credentials,
    /// The CA's private key (schedulers only; empty for agents).
    pub ca_key_pem: String,
    /// The scheduler that answered.
    pub via: String,
}

/// Joins with `token` as `name`: asks the schedulers at `addrs` in turn (each trusted
/// only if it proves to hold a certificate from the CA the token pins) for a
/// certificate on a key made here, and checks the CA it answers with.
pub async fn join(addrs: &[String], token: &JoinToken, name: &str) -> Result<Joined, String> {
    let (key_pem, csr_pem) = new_key_and_csr()?;
    let mut errors = Vec::new();
    for addr in addrs {
        let channel = match connect_pinned(addr, &token.ca_digest).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let req = crate::JoinRequest {
            role: token.role.to_string(),
            secret: token.secret.clone(),
            csr_pem: csr_pem.clone(),
            name: name.to_string(),
        };
        match crate::enrollment_client::EnrollmentClient::new(channel).join(req).await {
            Ok(reply) => {
                let got = reply.into_inner();
                if cert_digest(&first_cert_der(&got.ca_pem)?) != token.ca_digest {
                    return Err(format!("{addr} answered with a CA that is not the token's"));
                }
                let credentials = Credentials { ca_pem: got.ca_pem, cert_pem: got.cert_pem, key_pem };
                return Ok(Joined { credentials, ca_key_pem: got.ca_key_pem, via: addr.clone() });
            }
            Err(status) => errors.push(format!("{addr}: {}", status.message())),
        }
    }
    Err(format!("cannot join the cluster: {}", errors.join("; ")))
}

/// Trusts a server chain whose CA certificate has the pinned digest.
#[derive(Debug)]
struct PinnedCa {
    digest: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| cert_digest(c) == self.digest).ok_or_else(|| {
            rustls::Error::General(format!(
                "the server's certificate chain holds no CA with digest {} (the token's): wrong cluster, or \
                 someone in between",
                self.digest
            ))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip_and_refuse_junk() {
        let id = PeerIdentity::new(Role::Agent, "3f2a-node");
        assert_eq!(id.uri(), "slipway://agent/3f2a-node");
        assert_eq!(PeerIdentity::from_uri(&id.uri()), Some(id));
        for junk in [
            "slipway://root/x",
            "slipway://agent/",
            "https://agent/x",
            "slipway://agent/a/b",
            "slipway://admin/a b",
        ] {
            assert_eq!(PeerIdentity::from_uri(junk), None, "{junk}");
        }
    }

    #[test]
    fn credentials_are_private_on_disk_even_where_the_dir_was_open() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("admin");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let creds = Credentials { ca_pem: "ca".into(), cert_pem: "cert".into(), key_pem: "key".into() };
        creds.save_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(CERT_FILE)), 0o644);
        let fresh = root.path().join("a/b");
        create_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_say_how_to_get_one() {
        let t = JoinToken { role: Role::Agent, ca_digest: "a".repeat(64), secret: "0b".repeat(32) };
        assert_eq!(t.to_string().parse::<JoinToken>(), Ok(t.clone()));
        assert!(!format!("{t:?}").contains(&t.secret), "Debug hides the secret");
        for bad in ["", "SLWTKN-1-agent-abc-def", "SLWTKN-2-agent", &t.to_string().replace("agent", "admin")]
        {
            let err = bad.parse::<JoinToken>().unwrap_err();
            assert!(err.contains("slipway cluster token") || err.contains("admin-cert"), "{bad}: {err}");
        }
    }
}
