//! Who may read the HTTP side, and its TLS (`[http]` in the config).
//!
//! - [`BearerToken`]: the token the fleet page and `/metrics` ask for when
//!   `http.require_auth` is on, kept in `http.token_file` (default
//!   `<data_dir>/http-token`, mode 0600, a random one written at first start). Callers
//!   present it as `Authorization: Bearer TOKEN`, or as the password of HTTP Basic auth
//!   (what a browser prompts for); it is compared in constant time.
//! - [`HttpCertificate`]: the listener's certificate with `http.tls`: issued by the
//!   cluster CA at start for `scheduler.slipway.internal`, `http_listen`'s address and
//!   `http.tls_names`, for server use only (no slipway identity: its key calls nothing),
//!   its key only in memory, and issued again during the handshake that finds a third
//!   of its [`HTTP_CERT_VALIDITY`] left. [`server_config`] also asks for a client
//!   certificate from the CA, optional, so browsers and scrapers without one can still
//!   present the token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use subtle::ConstantTimeEq;

use super::pki::{self, Ca};

/// Fewest characters a token read from `http.token_file` may have.
const MIN_TOKEN_CHARS: usize = 32;

/// How long the HTTP side's certificate is valid; it is issued again when a third is left.
pub const HTTP_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The HTTP side's bearer token.
#[derive(Clone)]
pub struct BearerToken {
    token: String,
    /// Where it was read from (for messages).
    pub path: PathBuf,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken(from {})", self.path.display())
    }
}

impl BearerToken {
    /// Reads the token from `path`, or writes a new random one there (mode 0600) when the
    /// file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let token = text.trim().to_string();
                if token.len() < MIN_TOKEN_CHARS || token.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(format!(
                        "{} must hold one token of at least {MIN_TOKEN_CHARS} characters without spaces \
                         (e.g. `openssl rand -hex 32`); delete it to have a new one made",
                        path.display()
                    ));
                }
                let mode = std::fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        mode = format!("{:o}", mode & 0o777),
                        "the HTTP token file is readable by other users; chmod 600 it"
                    );
                }
                Ok(Self { token, path: path.to_path_buf() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
                slipway_proto::tls::write_file(path, &format!("{token}\n"), 0o600)
                    .map_err(|e| format!("cannot make the HTTP token (http.token_file): {e}"))?;
                tracing::info!(file = %path.display(), "made the HTTP side's bearer token");
                Ok(Self { token, path: path.to_path_buf() })
            }
            Err(e) => Err(format!("cannot read the HTTP token (http.token_file) {}: {e}", path.display())),
        }
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.token.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// The HTTP side's certificate: issued by the CA, renewed during a handshake when due.
#[derive(Debug)]
pub struct HttpCertificate {
    ca: Arc<Ca>,
    node_id: u64,
    names: Vec<String>,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl HttpCertificate {
    /// Issues the first certificate for scheduler `node_id`, naming `names`.
    pub fn issue(ca: Arc<Ca>, node_id: u64, names: Vec<String>) -> Result<Self, String> {
        let current = Mutex::new(Self::make(&ca, node_id, &names)?);
        Ok(Self { ca, node_id, names, current })
    }

    /// A new key and certificate, and when to renew them.
    fn make(ca: &Ca, node_id: u64, names: &[String]) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
        let (chain, key) = pki::issue_http_server(ca, node_id, names, HTTP_CERT_VALIDITY).map_err(|e| e.0)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        let renew_at = SystemTime::now() + HTTP_CERT_VALIDITY * 2 / 3;
        Ok((Arc::new(CertifiedKey::new(chain, signing)), renew_at))
    }
}

impl ResolvesServerCert for HttpCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if SystemTime::now() >= current.1 {
            match Self::make(&self.ca, self.node_id, &self.names) {
                Ok(fresh) => {
                    *current = fresh;
                    tracing::info!("issued the HTTP side's certificate again");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the HTTP side's certificate; serving the old one")
                }
            }
        }
        Some(current.0.clone())
    }
}

/// rustls settings of the HTTP side: `certificate`, HTTP/1.1, and an optional client
/// certificate that must chain to the CA when one is presented.
pub fn server_config(ca: &Ca, certificate: HttpCertificate) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = slipway_proto::tls::first_cert_der(&ca.cert_pem)?;
    roots.add(CertificateDer::from(ca_der)).map_err(|e| format!("the CA certificate: {e}"))?;
    let clients = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(Arc::new(certificate));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_kept_private_and_compared_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("http-token");
        let made = BearerToken::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = BearerToken::load_or_create(&path).unwrap();
        assert!(again.matches(&made.token) && made.token.len() == 64);
        assert!(!again.matches(&made.token[..63]) && !again.matches(""));
        assert!(!format!("{again:?}").contains(&made.token), "Debug shows no secret");

        std::fs::write(&path, "short\n").unwrap();
        let e = BearerToken::load_or_create(&path).unwrap_err();
        assert!(e.contains("at least 32 characters"), "{e}");
    }

    #[test]
    fn the_http_certificate_names_the_listener_and_serves_only() {
        let ca = Arc::new(Ca::create().unwrap());
        let names = vec!["127.0.0.1".to_string(), "sched-1.example.net".to_string()];
        let (chain, _key) = pki::issue_http_server(&ca, 3, &names, HTTP_CERT_VALIDITY).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
        let text = format!("{san:?}");
        assert!(
            text.contains("scheduler.slipway.internal") && text.contains("sched-1.example.net"),
            "{text}"
        );
        assert!(!text.contains("slipway://"), "no identity a service would admit: {text}");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(slipway_proto::tls::cert_info(&chain[0]).is_err());
        server_config(&ca, HttpCertificate::issue(ca.clone(), 3, names).unwrap()).unwrap();
    }
}
