//! A bare rustls client configured as tonic's inside slipway's binaries: it trusts the
//! CA in a [`Credentials`], presents its certificate whatever its dates, and offers
//! HTTP/2. Tests that need to see the handshake itself (the alert a server sends, the
//! version and suite it agrees) dial with it instead of with a tonic channel, which
//! hides both.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use slipway_proto::tls::Credentials;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The client's configuration for `creds`, or what in them rustls cannot read.
pub fn config(creds: &Credentials) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| format!("the CA: {e}"))?).map_err(|e| format!("the CA: {e}"))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).map_err(|e| format!("the key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Connects to `addr` and runs the client's side of a handshake expecting
/// `server_name`: Err(connect) when the TCP connection fails, Ok(the handshake's
/// outcome) otherwise, whose error holds the alert a server answered with.
pub async fn connect(
    addr: &str,
    creds: &Credentials,
    server_name: &str,
) -> Result<std::io::Result<TlsStream<TcpStream>>, String> {
    let config = config(creds)?;
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| format!("{server_name:?}: {e}"))?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await)
}
