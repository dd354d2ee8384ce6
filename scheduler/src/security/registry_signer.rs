//! The registry's token signer: the only key whose tokens the registry takes.
//!
//! The registry checks a token's `x5c` certificate against its `rootcertbundle` and takes
//! any chain to it, whatever the certificate is for. Were the bundle the cluster CA, every
//! agent's and operator's own key could mint a token for any repository. So the bundle is
//! the **signer root** (`<data_dir>/pki/registry-signer.pem`), a self-signed certificate
//! that signs nothing but the schedulers' token certificates:
//!
//! ```text
//! signer root     key derived from the CA key   the registry's rootcertbundle
//!   └ token leaf  a fresh key at each start     sent in x5c, signs the JWTs (ES256)
//! ```
//!
//! **Derived, not stored.** The root's key is derived from the CA's private key, the way
//! the grant key is (`registry_auth`): HMAC-SHA256 keyed with the CA key's DER over a
//! label is the P-256 scalar. Every scheduler holds the CA key, so every one derives the
//! same root with nothing new to ship: no change to joining (`Certified`), to
//! `init-ca`/`tls.ca_dir`, or to clusters made before the signer existed, and any member
//! (or `slipway-scheduler registry-bundle` offline) gives the operator the same bundle. The
//! root is exactly as secret as the CA key and changes when the CA does. Its certificate's
//! fields are all derived too (name, validity: the CA's, serial and key identifier: from
//! the key); only the ECDSA signature differs between renderings, and the registry checks
//! a leaf by the root's name and key, so any member's leaf verifies against any member's
//! bundle. Each scheduler makes its leaf's key at start and keeps it in memory only.
//!
//! ring makes keys only from its own randomness, so the derived scalar's public point is
//! computed with `p256` (RustCrypto), once at start; ring (through rcgen and
//! `registry_auth`) still makes every signature.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use p256::pkcs8::EncodePrivateKey as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::PrivatePkcs8KeyDer;
use slipway_proto::tls::{self, Credentials};

use super::pki::{pki_dir, Ca, PkiError};

/// The bundle's file name in `<data_dir>/pki/`: the registry's `rootcertbundle`.
pub const BUNDLE_FILE: &str = "registry-signer.pem";
/// The signer root's name (its subject's common name).
pub const ROOT_NAME: &str = "slipway registry token signer";
/// What the root's key is derived with: a new label is a new root.
const DERIVATION_LABEL: &[u8] = b"slipway registry token signer v1";
/// How far back a leaf's validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(300);

/// Where a scheduler writes the bundle: `<data_dir>/pki/registry-signer.pem`.
pub fn bundle_path(data_dir: &Path) -> PathBuf {
    pki_dir(data_dir).join(BUNDLE_FILE)
}

/// This scheduler's token signer: its leaf (key and certificate) and the root the
/// registry trusts.
pub struct RegistrySigner {
    /// The leaf: `cert_pem` is its certificate alone (what `x5c` carries), `key_pem` its
    /// key, `ca_pem` the root.
    leaf: Credentials,
}

impl std::fmt::Debug for RegistrySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySigner").finish_non_exhaustive()
    }
}

impl RegistrySigner {
    /// The root derived from `ca` and a new leaf for member `member` (its name in the
    /// leaf's subject, for the registry's log).
    pub fn new(ca: &Ca, member: &str) -> Result<RegistrySigner, PkiError> {
        RegistrySigner::under(Root::derive(ca)?, member)
    }

    fn under(root: Root, member: &str) -> Result<RegistrySigner, PkiError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name = name(&format!("slipway scheduler {member} registry tokens"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::from(SystemTime::now() - BACKDATE);
        params.not_after = root.params.not_after;
        let issuer = Issuer::new(root.params.clone(), root.key);
        let cert = params.signed_by(&key, &issuer).map_err(err)?;
        let leaf = Credentials { ca_pem: root.cert_pem, cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(RegistrySigner { leaf })
    }

    /// The key that signs tokens and the certificate sent with them (see
    /// `registry_auth::token`).
    pub fn credentials(&self) -> &Credentials {
        &self.leaf
    }

    /// The root's certificate (PEM): the registry's `rootcertbundle`.
    pub fn bundle_pem(&self) -> &str {
        &self.leaf.ca_pem
    }
}

/// The signer root's certificate for the cluster whose CA is `ca` (PEM): what the registry's
/// `rootcertbundle` holds.
pub fn bundle_pem(ca: &Ca) -> Result<String, PkiError> {
    Ok(Root::derive(ca)?.cert_pem)
}

/// Writes `ca`'s bundle to `path` (mode 0644) unless the file already holds a certificate
/// of the same root, so a registry configured with it sees no change; true if written.
pub fn write_bundle(ca: &Ca, path: &Path) -> Result<bool, PkiError> {
    Root::derive(ca)?.write(path)
}

/// This scheduler's signer at start; writes the bundle to `<data_dir>/pki/` (see
/// [`write_bundle`]).
pub fn at_start(ca: &Ca, data_dir: &Path, node_id: u64) -> Result<RegistrySigner, PkiError> {
    let root = Root::derive(ca)?;
    let path = bundle_path(data_dir);
    if root.write(&path)? {
        tracing::info!(path = %path.display(), "wrote the registry's token signer bundle");
    }
    RegistrySigner::under(root, &node_id.to_string())
}

/// The signer root: its derived key, its certificate's fields and a rendering of it.
struct Root {
    key: KeyPair,
    params: CertificateParams,
    cert_pem: String,
}

impl Root {
    fn derive(ca: &Ca) -> Result<Root, PkiError> {
        let key = derive_key(ca)?;
        let ca_der = tls::first_cert_der(&ca.cert_pem).map_err(PkiError)?;
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| PkiError(format!("the CA certificate does not parse: {e}")))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name = name(ROOT_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        // The CA's validity: the same on every member, and the root lives as long as the
        // CA it is derived from. The serial and key identifier are rcgen's, from the key.
        params.not_before = ca_cert.validity().not_before.to_datetime();
        params.not_after = ca_cert.validity().not_after.to_datetime();
        let cert_pem = params.self_signed(&key).map_err(err)?.pem();
        Ok(Root { key, params, cert_pem })
    }

    /// Writes the certificate to `path` unless it holds one of this root already.
    fn write(&self, path: &Path) -> Result<bool, PkiError> {
        if self.held_by(path) {
            return Ok(false);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| PkiError(format!("cannot create {}: {e}", dir.display())))?;
        }
        tls::write_file(path, &self.cert_pem, 0o644).map_err(PkiError)?;
        Ok(true)
    }

    /// Whether `path` holds a certificate with this root's key.
    fn held_by(&self, path: &Path) -> bool {
        let Ok(pem) = std::fs::read_to_string(path) else { return false };
        let Ok(der) = tls::first_cert_der(&pem) else { return false };
        x509_parser::parse_x509_certificate(&der).is_ok_and(|(_, cert)| {
            cert.public_key().subject_public_key.data.as_ref() == self.key.public_key_raw()
        })
    }
}

/// The root's key: HMAC-SHA256, keyed with the CA key's PKCS#8 DER, over the label and a
/// counter, is the P-256 scalar (the first that is one: below the group order, not 0;
/// the counter moves past the first with a chance of about 2^-32).
fn derive_key(ca: &Ca) -> Result<KeyPair, PkiError> {
    let ca_key = PrivatePkcs8KeyDer::from_pem_slice(ca.key_pem().as_bytes())
        .map_err(|e| PkiError(format!("the CA key is not PKCS#8 PEM: {e}")))?;
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ca_key.secret_pkcs8_der());
    let secret = (0u8..=u8::MAX)
        .find_map(|counter| {
            let tag = ring::hmac::sign(&hmac, &[DERIVATION_LABEL, &[counter]].concat());
            p256::SecretKey::from_slice(tag.as_ref()).ok()
        })
        .ok_or_else(|| PkiError("no P-256 key derives from this CA key".into()))?;
    let pkcs8 = secret.to_pkcs8_der().map_err(|e| PkiError(format!("cannot encode the signer key: {e}")))?;
    KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8.as_bytes())).map_err(err)
}

/// `O=slipway, CN=<common_name>`.
fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "slipway");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn err(e: impl std::fmt::Display) -> PkiError {
    PkiError(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::tls::{PeerIdentity, Role};

    /// The raw public key and subject of a PEM certificate.
    fn key_and_subject(pem: &str) -> (Vec<u8>, String) {
        let der = tls::first_cert_der(pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        (cert.public_key().subject_public_key.data.to_vec(), cert.subject().to_string())
    }

    /// Whether `child`'s signature verifies with `parent`'s public key.
    fn signed_by(child: &str, parent: &str) -> bool {
        let der = tls::first_cert_der(child).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let (parent_key, _) = key_and_subject(parent);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, parent_key)
            .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .is_ok()
    }

    #[test]
    fn every_member_derives_the_same_root_and_it_is_not_the_ca() {
        let ca = Ca::create().unwrap();
        // A member that joined got the CA as PEM text and saved it.
        let joined = Ca::from_pem(ca.cert_pem.clone(), ca.key_pem().to_string()).unwrap();
        let one = RegistrySigner::new(&ca, "1").unwrap();
        let two = RegistrySigner::new(&joined, "2").unwrap();
        let (root_key, subject) = key_and_subject(one.bundle_pem());
        assert_eq!(key_and_subject(two.bundle_pem()).0, root_key, "the same root key on every member");
        assert_eq!(key_and_subject(&bundle_pem(&ca).unwrap()).0, root_key, "and offline");
        assert!(subject.contains(ROOT_NAME), "{subject}");
        // Each member's leaf chains to any member's rendering of the root.
        assert!(signed_by(&two.credentials().cert_pem, one.bundle_pem()));
        assert!(signed_by(&one.credentials().cert_pem, two.bundle_pem()));
        assert_ne!(
            key_and_subject(&one.credentials().cert_pem).0,
            key_and_subject(&two.credentials().cert_pem).0
        );

        // Not the CA's key; another CA, another root.
        assert_ne!(key_and_subject(&ca.cert_pem).0, root_key, "the root is not the CA");
        let other = Ca::create().unwrap();
        assert_ne!(key_and_subject(&bundle_pem(&other).unwrap()).0, root_key);
    }

    #[test]
    fn no_cluster_certificate_chains_to_the_root() {
        let ca = Ca::create().unwrap();
        let bundle = bundle_pem(&ca).unwrap();
        let (_, root_subject) = key_and_subject(&bundle);
        for role in [Role::Agent, Role::Admin, Role::Scheduler] {
            let creds = ca.issue(&PeerIdentity::new(role, "x"), Duration::from_secs(3600)).unwrap();
            assert!(!signed_by(&creds.cert_pem, &bundle), "{role:?}'s certificate verifies against the root");
            let der = tls::first_cert_der(&creds.cert_pem).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert_ne!(cert.issuer().to_string(), root_subject, "{role:?}: issued in the root's name");
        }
        assert!(signed_by(
            &ca.issue(&PeerIdentity::new(Role::Agent, "x"), Duration::from_secs(60)).unwrap().cert_pem,
            &ca.cert_pem
        ));
    }

    #[test]
    fn the_bundle_is_written_once_and_replaced_when_the_ca_changes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create().unwrap();
        let signer = at_start(&ca, dir.path(), 1).unwrap();
        let path = bundle_path(dir.path());
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written, signer.bundle_pem());
        // Started again (or by another member): the file is left as it is.
        at_start(&ca, dir.path(), 1).unwrap();
        assert!(!write_bundle(&ca, &path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
        // A file of another cluster's root, or junk, is replaced.
        let other = Ca::create().unwrap();
        assert!(write_bundle(&other, &path).unwrap());
        assert_eq!(
            key_and_subject(&std::fs::read_to_string(&path).unwrap()).0,
            key_and_subject(&bundle_pem(&other).unwrap()).0
        );
        std::fs::write(&path, "junk").unwrap();
        assert!(write_bundle(&ca, &path).unwrap());
    }

    #[test]
    fn the_root_lives_as_long_as_the_ca() {
        let ca = Ca::create().unwrap();
        let validity = |pem: &str| {
            let der = tls::first_cert_der(pem).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp())
        };
        let signer = RegistrySigner::new(&ca, "1").unwrap();
        assert_eq!(validity(signer.bundle_pem()), validity(&ca.cert_pem));
        let (leaf_from, leaf_until) = validity(&signer.credentials().cert_pem);
        assert_eq!(leaf_until, validity(&ca.cert_pem).1);
        assert!(leaf_from <= time::OffsetDateTime::now_utc().unix_timestamp());
    }
}
