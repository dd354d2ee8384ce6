//! The cluster CA: created by the scheduler that founds the cluster, handed to each
//! scheduler that joins with a scheduler token, kept in `<data_dir>/pki/` (both dirs 0700):
//!
//! ```text
//! pki/ca.pem  ca.key (0600)          the cluster CA
//! pki/cert.pem key.pem (0600)        this scheduler's certificate (chain: leaf, CA)
//! pki/registry-signer.pem            the registry's rootcertbundle (`registry_signer`)
//! ```
//!
//! Every certificate names its holder as `slipway://<role>/<name>` (see
//! `slipway_proto::tls`). Keys are ECDSA P-256. A scheduler issues certificates from
//! a CSR, so an agent's or operator's private key never leaves its machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use slipway_proto::tls::{self, Credentials, PeerIdentity, Role};

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a scheduler's own certificate is valid (renewed at start when a third is left).
pub const SCHEDULER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back a new certificate's validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(300);

/// A PKI problem, with the file or the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(pub String);

fn err(e: impl std::fmt::Display) -> PkiError {
    PkiError(e.to_string())
}

/// The cluster CA: its certificate and key.
#[derive(Clone)]
pub struct Ca {
    /// The CA's certificate (PEM): what every member and client trusts.
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.digest().unwrap_or_default())
    }
}

/// Where a scheduler keeps its PKI files.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

impl Ca {
    /// A new CA for a new cluster.
    pub fn create() -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "slipway");
        dn.push(DnType::CommonName, "slipway cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The CA from PEM text (as a joining scheduler receives it).
    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<Ca, PkiError> {
        let ca = Ca { cert_pem, key_pem };
        ca.issuer()?;
        Ok(ca)
    }

    /// Reads `ca.pem` and `ca.key` from `dir`; None if there is no CA there.
    pub fn load(dir: &Path) -> Result<Option<Ca>, PkiError> {
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !cert.exists() {
            return Ok(None);
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| PkiError(format!("cannot read {}: {e}", p.display())))
        };
        Ca::from_pem(read(&cert)?, read(&key)?).map(Some)
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        tls::create_private_dir(dir)
            .map_err(|e| PkiError(format!("cannot create {} (mode 0700): {e}", dir.display())))?;
        tls::write_file(&dir.join("ca.key"), &self.key_pem, 0o600).map_err(PkiError)?;
        tls::write_file(&dir.join("ca.pem"), &self.cert_pem, 0o644).map_err(PkiError)
    }

    /// The CA's private key, PEM (handed to schedulers that join).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// An HMAC-SHA256 key for one purpose (`label`), derived from the CA's private key:
    /// the same on every member (each holds the same `ca.key`), unknown to anyone
    /// without it. Registry grants and join token secrets are made with such keys.
    pub fn derive_key(&self, label: &[u8]) -> ring::hmac::Key {
        let derived =
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key_pem.as_bytes()), label);
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
    }

    /// SHA-256 of the CA certificate: what join tokens pin.
    pub fn digest(&self) -> Result<String, PkiError> {
        Ok(tls::cert_digest(&tls::first_cert_der(&self.cert_pem).map_err(PkiError)?))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|e| PkiError(format!("the CA key does not parse: {e}")))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|e| PkiError(format!("the CA certificate does not parse: {e}")))
    }

    /// A certificate for `who` on the public key of `csr_pem`, valid for `validity`, and
    /// not before `valid_from_floor` when given (a holder that was revoked: its new
    /// certificate must start after the revocation, see `state::revocations`). Only the
    /// CSR's key is used: the CA decides the name, role and lifetime.
    pub fn issue_for_csr(
        &self,
        who: &PeerIdentity,
        csr_pem: &str,
        validity: Duration,
        valid_from_floor: Option<SystemTime>,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError(format!("the certificate request does not parse: {e}")))?;
        let mut params = leaf_params(who, validity)?;
        if let Some(floor) = valid_from_floor {
            // Whole seconds up, as the certificate keeps them.
            let secs = floor.duration_since(SystemTime::UNIX_EPOCH).map_err(err)?;
            let floor = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.as_secs() + 1);
            if time::OffsetDateTime::from(floor) > params.not_before {
                params.not_before = time::OffsetDateTime::from(floor);
            }
        }
        let cert = params.signed_by(&csr.public_key, &self.issuer()?).map_err(err)?;
        Ok(cert.pem())
    }

    /// A key and certificate for `who`, made here (a scheduler's own, or a test's).
    pub fn issue(&self, who: &PeerIdentity, validity: Duration) -> Result<Credentials, PkiError> {
        let now = SystemTime::now();
        self.issue_between(who, now - BACKDATE.min(validity / 10), now + validity)
    }

    /// A key and certificate for `who`, valid from `not_before` to `not_after`.
    pub fn issue_between(
        &self,
        who: &PeerIdentity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Credentials, PkiError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = leaf_params(who, Duration::ZERO)?;
        set_validity_between(&mut params, not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer()?).map_err(err)?;
        let mut cert_pem = cert.pem();
        if who.role == Role::Scheduler {
            // Servers send the CA along, so a joining agent can check it against its token.
            cert_pem.push_str(&self.cert_pem);
        }
        Ok(Credentials { ca_pem: self.cert_pem.clone(), cert_pem, key_pem: key.serialize_pem() })
    }
}

/// A server-only certificate for scheduler `node_id`'s HTTP side (`http.tls`), valid for
/// `validity`, naming `names` (DNS names or IP addresses) besides [`tls::SERVER_NAME`]:
/// DER of the chain (leaf, CA) and of the new key (PKCS#8). It carries no slipway
/// identity and no client use, so its key cannot call any service.
pub fn issue_http_server(
    ca: &Ca,
    node_id: u64,
    names: &[String],
    validity: Duration,
) -> Result<(Vec<Vec<u8>>, Vec<u8>), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "slipway");
    dn.push(DnType::OrganizationalUnitName, "http");
    dn.push(DnType::CommonName, format!("scheduler {node_id} HTTP side"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(tls::SERVER_NAME.try_into().map_err(err)?)];
    for name in names {
        params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.as_str().try_into().map_err(|e| PkiError(format!("{name:?} in http.tls_names: {e}")))?,
            ),
        });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &ca.issuer()?).map_err(err)?;
    let ca_der = tls::first_cert_der(&ca.cert_pem).map_err(PkiError)?;
    Ok((vec![cert.der().to_vec(), ca_der], key.serialize_der()))
}

fn leaf_params(who: &PeerIdentity, validity: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "slipway");
    dn.push(DnType::OrganizationalUnitName, who.role.as_str());
    dn.push(DnType::CommonName, who.name.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(who.uri().try_into().map_err(err)?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if who.role == Role::Scheduler {
        params.subject_alt_names.push(SanType::DnsName(tls::SERVER_NAME.try_into().map_err(err)?));
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    Ok(params)
}

/// Valid from a little before now (clocks a little behind: at most [`BACKDATE`], a
/// tenth of the lifetime for short ones) for `validity`.
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = std::time::SystemTime::now();
    set_validity_between(params, now - BACKDATE.min(validity / 10), now + validity);
}

fn set_validity_between(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
}

/// This scheduler's PKI at start: the CA (made now when `found` and there is none),
/// and its own certificate (issued again when missing or due for renewal).
pub fn scheduler_credentials(
    data_dir: &Path,
    node_id: u64,
    found: bool,
) -> Result<(Ca, Credentials), PkiError> {
    let dir = pki_dir(data_dir);
    let ca = match Ca::load(&dir)? {
        Some(ca) => ca,
        None if found => {
            let ca = Ca::create()?;
            ca.save(&dir)?;
            tracing::info!(digest = %ca.digest()?, dir = %dir.display(), "created the cluster CA");
            ca
        }
        None => {
            return Err(PkiError(format!(
                "no cluster CA in {}: a scheduler joining a cluster gets it with its token (`join_token` in \
                 [cluster], from `slipway cluster token scheduler`); founding members of a static cluster \
                 share one made by `slipway-scheduler init-ca DIR` (`[tls] ca_dir`)",
                dir.display()
            )))
        }
    };
    let me = PeerIdentity::new(Role::Scheduler, node_id.to_string());
    let current = Credentials::load_dir(&dir).map_err(PkiError)?;
    let fresh = match current {
        Some(c)
            if c.ca_pem == ca.cert_pem
                && c.info().is_ok_and(|i| i.identity == me && !i.due_for_renewal()) =>
        {
            c
        }
        _ => {
            let c = ca.issue(&me, SCHEDULER_CERT_VALIDITY)?;
            c.save_dir(&dir).map_err(PkiError)?;
            tracing::info!("issued this scheduler's certificate");
            c
        }
    };
    Ok((ca, fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_gets_the_name_and_role_the_ca_decides() {
        let ca = Ca::create().unwrap();
        let (_key, csr) = tls::new_key_and_csr().unwrap();
        let who = PeerIdentity::new(Role::Agent, "node-7");
        let pem = ca.issue_for_csr(&who, &csr, Duration::from_secs(3600), None).unwrap();
        let info = tls::cert_info(&tls::first_cert_der(&pem).unwrap()).unwrap();
        assert_eq!(info.identity, who);
        let life = info.not_after.duration_since(info.not_before).unwrap();
        assert!(
            life >= Duration::from_secs(3600)
                && life <= Duration::from_secs(3600) + BACKDATE + Duration::from_secs(5)
        );
        assert!(!info.due_for_renewal());
    }

    #[test]
    fn a_certificate_for_a_revoked_holder_starts_after_the_floor() {
        let ca = Ca::create().unwrap();
        let (_key, csr) = tls::new_key_and_csr().unwrap();
        let who = PeerIdentity::new(Role::Agent, "node-7");
        // Revoked a moment ago: the usual backdating would reach before the revocation.
        let floor = SystemTime::now() - Duration::from_millis(1500);
        let pem = ca.issue_for_csr(&who, &csr, Duration::from_secs(3600), Some(floor)).unwrap();
        let info = tls::cert_info(&tls::first_cert_der(&pem).unwrap()).unwrap();
        assert!(info.not_before > floor, "{:?} after {floor:?}", info.not_before);
        assert!(info.not_before <= SystemTime::now() + Duration::from_secs(1));
        // A floor long past changes nothing.
        let long_ago = SystemTime::now() - Duration::from_secs(24 * 3600);
        let pem = ca.issue_for_csr(&who, &csr, Duration::from_secs(3600), Some(long_ago)).unwrap();
        let info = tls::cert_info(&tls::first_cert_der(&pem).unwrap()).unwrap();
        assert!(info.not_before < SystemTime::now() - BACKDATE + Duration::from_secs(5));
    }

    #[test]
    fn the_ca_and_the_scheduler_key_are_private_on_disk() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (ca, creds) = scheduler_credentials(dir.path(), 1, true).unwrap();
        let mode =
            |f: &str| std::fs::metadata(pki_dir(dir.path()).join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("key.pem"), 0o600);
        assert_eq!(mode(""), 0o700, "the pki dir");
        assert_eq!(creds.info().unwrap().identity, PeerIdentity::new(Role::Scheduler, "1"));
        // Started again: the same CA and certificate, nothing re-created.
        let (again, creds2) = scheduler_credentials(dir.path(), 1, true).unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
        assert_eq!(creds2.cert_pem, creds.cert_pem);
        // A member that is not founding and has no CA says how to get one.
        let other = tempfile::tempdir().unwrap();
        let e = scheduler_credentials(other.path(), 2, false).unwrap_err();
        assert!(e.0.contains("join_token"), "{e}");
    }

    #[test]
    fn a_bad_csr_is_refused_with_a_reason() {
        let ca = Ca::create().unwrap();
        let e = ca
            .issue_for_csr(&PeerIdentity::new(Role::Agent, "x"), "junk", Duration::from_secs(60), None)
            .unwrap_err();
        assert!(e.0.contains("certificate request"), "{e}");
    }
}
