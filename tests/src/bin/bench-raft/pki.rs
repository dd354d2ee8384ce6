//! The certificates of a mutual-TLS pass: slipway's cluster CA (as `slipway-scheduler
//! init-ca` makes it) with a client certificate for the bench, and a CA of the same key
//! type for etcd, with one certificate its members serve and peer with and one for the
//! bench's clients. Also the probe that reports what a client really negotiates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use slipway_proto::tls::{Credentials, PeerIdentity, Role, Transport};
use slipway_scheduler::security::pki::Ca;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Lifetime of every certificate the bench makes (a run takes minutes).
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// slipway's side of a mutual-TLS pass.
pub struct SlipwayPki {
    /// `[tls] ca_dir` of every member: the shared cluster CA (`ca.pem`, `ca.key`).
    pub ca_dir: PathBuf,
    /// The bench's own certificate: a scheduler's role, as the internal `Raft` service
    /// (`ForwardWrite`) takes calls only from schedulers.
    pub client: Arc<Credentials>,
}

impl SlipwayPki {
    /// A new cluster CA saved in `dir`, and the bench's certificate from it.
    pub fn create(dir: &Path) -> SlipwayPki {
        let ca = Ca::create().expect("create slipway's cluster CA");
        ca.save(dir).expect("save slipway's cluster CA");
        let client = ca
            .issue(&PeerIdentity::new(Role::Scheduler, "bench"), VALIDITY)
            .expect("issue the bench's certificate");
        SlipwayPki { ca_dir: dir.to_path_buf(), client: Arc::new(client) }
    }

    /// How the bench dials the members.
    pub fn transport(&self) -> Transport {
        Transport::Tls(self.client.clone())
    }
}

/// etcd's side of a mutual-TLS pass: files its members load, and the bench's client side.
pub struct EtcdPki {
    /// The CA every member and client trusts (`--trusted-ca-file`, `--peer-trusted-ca-file`).
    pub ca_file: PathBuf,
    /// What the members present to clients and to each other (`--cert-file`,
    /// `--peer-cert-file`): IP address 127.0.0.1, server and client use.
    pub member_cert: PathBuf,
    pub member_key: PathBuf,
    /// The bench's clients: a client-only certificate from the same CA.
    pub client: Credentials,
}

impl EtcdPki {
    /// A CA and the certificates above, written into `dir`.
    pub fn create(dir: &Path) -> EtcdPki {
        std::fs::create_dir_all(dir).expect("create etcd's certificate dir");
        let ca_key = KeyPair::generate().expect("generate etcd's CA key");
        let mut ca_params = params("bench-raft etcd CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.self_signed(&ca_key).expect("sign etcd's CA");
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("etcd's CA as an issuer");

        let leaf = |name: &str, server: bool| {
            let key = KeyPair::generate().expect("generate a key");
            let mut p = params(name);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            if server {
                p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
                p.subject_alt_names = vec![SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())];
            }
            let cert = p.signed_by(&key, &issuer).expect("sign a certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (member_pem, member_key_pem) = leaf("etcd member", true);
        let (client_pem, client_key_pem) = leaf("bench-raft client", false);

        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        };
        EtcdPki {
            ca_file: write("ca.pem", &ca_pem),
            member_cert: write("member.pem", &member_pem),
            member_key: write("member-key.pem", &member_key_pem),
            client: Credentials { ca_pem, cert_pem: client_pem, key_pem: client_key_pem },
        }
    }

    /// TLS of the bench's etcd clients: trusts etcd's CA, checks the member's IP address,
    /// presents the client certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.client.ca_pem))
            .identity(Identity::from_pem(&self.client.cert_pem, &self.client.key_pem))
    }
}

fn params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("certificate params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let now = std::time::SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + VALIDITY).into();
    params
}

/// The TLS version and cipher suite a client of the bench (rustls, as inside tonic, with
/// HTTP/2 offered) agrees with the server at `addr`, presenting `creds` and expecting
/// `server_name`: read off a real handshake, for the output's header.
pub async fn negotiated(addr: &str, creds: &Credentials, server_name: &str) -> String {
    match handshake(addr, creds, server_name).await {
        Ok(agreed) => agreed,
        Err(e) => format!("unknown (the probe's handshake failed: {e})"),
    }
}

async fn handshake(addr: &str, creds: &Credentials, server_name: &str) -> Result<String, String> {
    let tls =
        slipway_tests::tls_client::connect(addr, creds, server_name).await?.map_err(|e| e.to_string())?;
    let (_, connection) = tls.get_ref();
    let version = connection.protocol_version().map_or("no version".into(), |v| format!("{v:?}"));
    let suite =
        connection.negotiated_cipher_suite().map_or("no suite".into(), |s| format!("{:?}", s.suite()));
    Ok(format!("{version}, {suite}"))
}
