//! A new ECDSA P-256 key and a PKCS#10 certificate request for it, written with `ring`
//! (which every slipway binary links for TLS) and a few lines of DER.
//!
//! Hand-written on purpose: the request is one fixed shape (an empty-attribute request
//! for one P-256 key, signed with ECDSA-SHA256; the scheduler decides the certificate's
//! identity, not the request), and making it with rcgen would pull rcgen's issuing
//! machinery into the operator's CLI and the agents, which only ever ask. The scheduler
//! parses and verifies these requests with rcgen (`pki.rs`, whose tests sign one).

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

/// DER of OID 1.2.840.10045.2.1 (id-ecPublicKey).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of OID 1.2.840.10045.3.1.7 (prime256v1).
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of OID 1.2.840.10045.4.3.2 (ecdsa-with-SHA256).
const OID_ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// DER of OID 2.5.4.3 (commonName).
const OID_COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
/// The subject's common name; the scheduler ignores it and certifies its own identity.
const SUBJECT: &[u8] = b"slipway";

/// One DER TLV: `tag`, the length of `parts` together, then the parts.
fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = vec![tag];
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, parts)
}

/// A BIT STRING with no unused bits.
fn bit_string(bytes: &[u8]) -> Vec<u8> {
    tlv(0x03, &[&[0x00], bytes])
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A new key (PKCS#8 PEM) and a certificate request for it (PEM).
pub fn new_key_and_csr() -> Result<(String, String), ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| ring::error::Unspecified)?;
    let name = sequence(&[&tlv(0x31, &[&sequence(&[OID_COMMON_NAME, &tlv(0x0c, &[SUBJECT])])])]);
    let spki = sequence(&[&sequence(&[OID_EC_PUBLIC_KEY, OID_P256]), &bit_string(key.public_key().as_ref())]);
    let version: &[u8] = &[0x02, 0x01, 0x00];
    let no_attributes: &[u8] = &[0xa0, 0x00];
    let info = sequence(&[version, &name, &spki, no_attributes]);
    let signature = key.sign(&rng, &info)?;
    let request = sequence(&[&info, &sequence(&[OID_ECDSA_SHA256]), &bit_string(signature.as_ref())]);
    Ok((pem("PRIVATE KEY", pkcs8.as_ref()), pem("CERTIFICATE REQUEST", &request)))
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn lengths_use_the_short_and_long_forms() {
        assert_eq!(tlv(0x04, &[&[1, 2]]), [0x04, 2, 1, 2]);
        assert_eq!(&tlv(0x04, &[&[0; 200]])[..3], [0x04, 0x81, 200]);
        assert_eq!(&tlv(0x04, &[&[0; 300]])[..4], [0x04, 0x82, 1, 44]);
    }

    #[test]
    fn the_request_parses_and_carries_the_keys_public_half() {
        let (key_pem, csr_pem) = new_key_and_csr().unwrap();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{key_pem}");
        let body: String = csr_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        let (rest, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        assert!(rest.is_empty());
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.to_string(), "CN=slipway");
        assert_eq!(info.subject_pki.subject_public_key.data.len(), 65, "an uncompressed P-256 point");
        assert_eq!(csr.signature_algorithm.algorithm.to_id_string(), "1.2.840.10045.4.3.2");
    }
}
