//! The fleet registry's token server (Docker's registry token authentication,
//! `auth: token` in the registry's config): who may push or pull which app's images.
//!
//! A **grant** is a credential the scheduler hands out: an app, the actions allowed on
//! its repository (`pull`, `push`) and an expiry, signed with a key every scheduler
//! derives from the cluster CA's key, so any member can check it. The Docker engine
//! presents it as the password of HTTP Basic auth to `GET /v2/token` (the registry's
//! `realm`); the answer is a short-lived JWT (ES256, signed with this scheduler's token
//! certificate, sent in `x5c`) allowing at most what the grant allows and the engine
//! asked for. The registry checks the JWT against the token signer's root
//! (`rootcertbundle`, see `registry_signer`), never the cluster CA: the CA also signs
//! every agent's and operator's certificate, and the registry would take a token from
//! any of their keys.
//!
//! The JWT is made with `jsonwebtoken` (its `Header` carries the `x5c` chain); the
//! signing underneath is ring's, through a small provider (see `ring_es256`), so the
//! scheduler keeps one crypto library.
//!
//! Registry side, for reference:
//!
//! ```yaml
//! auth:
//!   token:
//!     realm: http://<scheduler http_listen>/v2/token
//!     service: slipway-registry
//!     issuer: slipway
//!     rootcertbundle: <data_dir>/pki/registry-signer.pem
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use slipway_proto::tls::{self, Credentials};
use time::format_description::well_known::Rfc3339;

use super::pki::Ca;

/// The registry's `service` (the JWT's audience).
pub const SERVICE: &str = "slipway-registry";
/// The registry's `issuer`.
pub const ISSUER: &str = "slipway";
/// The user name grants are presented with.
pub const GRANT_USER: &str = "slipway-grant";
/// How long a JWT lives (the registry adds 60 s of leeway; it cannot be revoked).
pub const TOKEN_TTL: Duration = Duration::from_secs(300);

/// How long a build's push+pull grant lives: long enough for any clone, build and push
/// (the engine asks for a fresh token with it at each push and pull).
pub const BUILD_GRANT_TTL: Duration = Duration::from_secs(6 * 3600);

/// A grant as the engine presents it: user [`GRANT_USER`], the grant as password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The registry login name: always [`GRANT_USER`].
    pub username: String,
    /// The grant, signed.
    pub password: String,
    /// When the grant expires (seconds since the epoch).
    pub expires: u64,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("username", &self.username).field("expires", &self.expires).finish()
    }
}

/// A login allowing `actions` on `app`'s repository for `ttl`.
pub fn login(ca: &Ca, app: &str, actions: &[&str], ttl: Duration) -> Login {
    let grant = Grant {
        app: app.to_string(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        exp: now_secs().saturating_add(ttl.as_secs()),
    };
    Login { username: GRANT_USER.to_string(), password: sign_grant(ca, &grant), expires: grant.exp }
}

/// What a grant allows: `actions` on the repository named `app`, until `exp` (seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The app whose repository the grant opens.
    pub app: String,
    /// What it allows there: `pull`, `push`.
    pub actions: Vec<String>,
    /// When it stops working (seconds since the epoch).
    pub exp: u64,
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The grant-signing key: derived from the CA's private key, the same on every member.
fn grant_key(ca: &Ca) -> ring::hmac::Key {
    ca.derive_key(b"slipway registry grants v1")
}

/// A grant of `actions` on `app` for `ttl`, as the password to present.
pub fn issue_grant(ca: &Ca, app: &str, actions: &[&str], ttl: Duration) -> String {
    login(ca, app, actions, ttl).password
}

/// `v1.<payload>.<mac>`: the grant, signed.
fn sign_grant(ca: &Ca, grant: &Grant) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(grant).expect("a grant serializes"));
    let mac = ring::hmac::sign(&grant_key(ca), payload.as_bytes());
    format!("v1.{payload}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
}

/// Why a token request was refused (the engine shows it as `unauthorized: <reason>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Checks a presented grant: its signature and its expiry.
pub fn verify_grant(ca: &Ca, password: &str) -> Result<Grant, Refused> {
    let bad = || Refused("not a registry grant from this cluster".into());
    let rest = password.strip_prefix("v1.").ok_or_else(bad)?;
    let (payload, mac) = rest.split_once('.').ok_or_else(bad)?;
    let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| bad())?;
    ring::hmac::verify(&grant_key(ca), payload.as_bytes(), &mac).map_err(|_| bad())?;
    let grant: Grant =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?).map_err(|_| bad())?;
    if grant.exp < now_secs() {
        return Err(Refused(format!("the registry grant for {:?} has expired", grant.app)));
    }
    Ok(grant)
}

/// One `scope` the engine asks for: `repository:<name>:<action>,<action>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    #[serde(rename = "type")]
    /// Always `repository`.
    pub kind: String,
    /// The repository.
    pub name: String,
    /// The actions asked for (or, in a token, allowed).
    pub actions: Vec<String>,
}

/// Parses `repository:NAME:ACTIONS`; other scopes (e.g. `registry:catalog:*`) are ignored.
pub fn parse_scope(scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    (kind == "repository" && !name.is_empty()).then(|| Access {
        kind: kind.into(),
        name: name.into(),
        actions: actions.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
    })
}

/// What of `asked` the grant allows: its own repository, its own actions.
pub fn allowed(grant: Option<&Grant>, asked: &[Access]) -> Vec<Access> {
    let Some(grant) = grant else { return Vec::new() };
    asked
        .iter()
        .filter(|a| a.name == grant.app)
        .map(|a| Access {
            kind: a.kind.clone(),
            name: a.name.clone(),
            actions: a.actions.iter().filter(|x| grant.actions.contains(x)).cloned().collect(),
        })
        .filter(|a| !a.actions.is_empty())
        .collect()
}

/// The token endpoint's JSON answer.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The signed JWT.
    pub token: String,
    /// The same token, under the name OAuth2 clients read.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
}

/// The claims the registry checks (`iss`, `aud`, the times, `access`) and a unique `jti`.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    access: Vec<Access>,
}

/// A JWT for `access`, signed with `signer`'s key and carrying its certificate (the
/// first of `cert_pem`) in `x5c`. The scheduler signs with its token certificate
/// (`RegistrySigner::credentials`); the registry takes no other.
pub fn token(signer: &Credentials, subject: &str, access: Vec<Access>) -> Result<TokenResponse, String> {
    use rustls::pki_types::pem::PemObject;
    let leaf = tls::first_cert_der(&signer.cert_pem)?;
    let mut header = Header::new(Algorithm::ES256);
    header.x5c = Some(vec![STANDARD.encode(&leaf)]);
    let now = now_secs();
    let claims = Claims {
        iss: ISSUER,
        sub: subject,
        aud: SERVICE,
        iat: now,
        nbf: now.saturating_sub(5),
        exp: now + TOKEN_TTL.as_secs(),
        jti: uuid::Uuid::new_v4().to_string(),
        access,
    };
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(signer.key_pem.as_bytes())
        .map_err(|e| format!("this scheduler's key is not PKCS#8 PEM: {e}"))?;
    ring_es256::install();
    let jwt = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(key.secret_pkcs8_der()))
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidEcdsaKey => "this scheduler's key is not an ECDSA P-256 key".to_string(),
            _ => format!("cannot sign the token: {e}"),
        })?;
    let issued_at = time::OffsetDateTime::from_unix_timestamp(now as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .map_err(|e| format!("cannot format the token's issue time: {e}"))?;
    Ok(TokenResponse { token: jwt.clone(), access_token: jwt, expires_in: TOKEN_TTL.as_secs(), issued_at })
}

/// jsonwebtoken's signing backend, on ring.
///
/// jsonwebtoken 10 signs through a process-wide `CryptoProvider`; its own are aws-lc-rs
/// (`aws_lc_rs`) or RustCrypto (`rust_crypto`: p256, rsa, ed25519-dalek, …), either a
/// second crypto stack beside the ring that rustls, rcgen and the grants already use.
/// This one signs ES256 with ring and nothing else: the scheduler only mints tokens (the
/// registry checks them), so verifying and JWK helpers are refused.
mod ring_es256 {
    use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
    use jsonwebtoken::errors::{ErrorKind, Result};
    use jsonwebtoken::signature::{Error, Signer};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    static PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: signer,
        verifier_factory: verifier,
        jwk_utils: JwkUtils::new_unimplemented(),
    };

    /// Makes this the process's provider; later calls change nothing.
    pub(super) fn install() {
        let _ = PROVIDER.install_default();
    }

    /// An ES256 signer over a PKCS#8 P-256 key.
    struct Es256(EcdsaKeyPair);

    impl Signer<Vec<u8>> for Es256 {
        fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, Error> {
            let signature = self.0.sign(&SystemRandom::new(), msg).map_err(|_| Error::new())?;
            Ok(signature.as_ref().to_vec())
        }
    }

    impl JwtSigner for Es256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::ES256
        }
    }

    fn signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
        if *alg != Algorithm::ES256 {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.inner(), &SystemRandom::new())
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
        Ok(Box::new(Es256(pair)))
    }

    fn verifier(_: &Algorithm, _: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
        Err(ErrorKind::InvalidAlgorithm.into())
    }
}

/// The grant in an `Authorization: Basic …` header, if any (anonymous: None).
pub fn basic_password(header: Option<&str>) -> Result<Option<String>, Refused> {
    let Some(value) = header else { return Ok(None) };
    let bad = || Refused("malformed Basic credentials".into());
    let encoded = value.strip_prefix("Basic ").ok_or_else(bad)?;
    let decoded =
        String::from_utf8(STANDARD.decode(encoded.trim()).map_err(|_| bad())?).map_err(|_| bad())?;
    let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
    if user != GRANT_USER {
        return Err(Refused(format!("unknown user {user:?}: the registry takes slipway's grants only")));
    }
    Ok(Some(password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::registry_signer::RegistrySigner;

    #[test]
    fn a_grant_allows_its_app_and_actions_only() {
        let ca = Ca::create().unwrap();
        let password = issue_grant(&ca, "alpha", &["push", "pull"], Duration::from_secs(60));
        let grant = verify_grant(&ca, &password).unwrap();
        let asked: Vec<Access> = ["repository:alpha:push,pull", "repository:beta:pull", "registry:catalog:*"]
            .iter()
            .filter_map(|s| parse_scope(s))
            .collect();
        let granted = allowed(Some(&grant), &asked);
        assert_eq!(granted.len(), 1);
        assert_eq!((granted[0].name.as_str(), granted[0].actions.len()), ("alpha", 2));
        let pull_only =
            verify_grant(&ca, &issue_grant(&ca, "alpha", &["pull"], Duration::from_secs(60))).unwrap();
        assert_eq!(allowed(Some(&pull_only), &asked)[0].actions, ["pull"]);
        assert!(allowed(None, &asked).is_empty(), "anonymous gets nothing");
    }

    #[test]
    fn forged_tampered_and_foreign_grants_are_refused() {
        let ca = Ca::create().unwrap();
        let password = issue_grant(&ca, "alpha", &["pull"], Duration::from_secs(60));
        let other = Ca::create().unwrap();
        assert!(verify_grant(&other, &password).is_err(), "another cluster's grant");
        let tampered = password.replacen("v1.", "v1.e", 1);
        assert!(verify_grant(&ca, &tampered).is_err());
        assert!(verify_grant(&ca, "hunter2").is_err());
        let expired = issue_grant(&ca, "alpha", &["pull"], Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(verify_grant(&ca, &expired).unwrap_err().0.contains("expired"));
    }

    #[test]
    fn tokens_are_es256_jwts_with_the_signers_certificate() {
        let ca = Ca::create().unwrap();
        let signer = RegistrySigner::new(&ca, "1").unwrap();
        let access =
            vec![Access { kind: "repository".into(), name: "alpha".into(), actions: vec!["pull".into()] }];
        let t = token(signer.credentials(), "grant:alpha", access).unwrap();
        let parts: Vec<&str> = t.token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        let leaf = STANDARD.decode(header["x5c"][0].as_str().unwrap()).unwrap();
        assert_eq!(leaf, tls::first_cert_der(&signer.credentials().cert_pem).unwrap(), "the signer's leaf");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some(ISSUER), Some(SERVICE)));
        assert_eq!(claims["access"][0]["name"], "alpha");
        // The signature verifies with the certificate's public key (raw r||s, 64 bytes).
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let public = cert.public_key().subject_public_key.data.to_vec();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        assert!(t.issued_at.ends_with('Z') && t.issued_at.len() == 20, "{}", t.issued_at);
    }

    #[test]
    fn basic_credentials_are_parsed_and_strangers_named() {
        let header = format!("Basic {}", STANDARD.encode(format!("{GRANT_USER}:v1.x.y")));
        assert_eq!(basic_password(Some(&header)).unwrap().as_deref(), Some("v1.x.y"));
        assert_eq!(basic_password(None).unwrap(), None);
        let alice = format!("Basic {}", STANDARD.encode("alice:pw"));
        assert!(basic_password(Some(&alice)).unwrap_err().0.contains("alice"));
    }
}
