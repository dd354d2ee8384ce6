//! Webhook secrets and signatures (`POST /hooks/APP`, `slipway apps webhook APP`).
//!
//! **The secret is never stored**, as with join tokens (`join_tokens.rs`): it is
//! `HMAC-SHA256(k, "webhook\n<app>\n<created_at_ms>\n<generation>")` in hex, `k` a key
//! every member derives from the CA's private key ([`Ca::derive_key`]). The app record
//! holds only the generation, which `--rotate` bumps (`Command::RotateWebhook`). So any
//! member's HTTP side verifies a push and shows the secret again, the raft log and
//! snapshots give nothing away, a rotation makes the old secret underivable, and an app
//! deleted and made again under the same name (another creation time) gets a new one.
//!
//! What each provider sends ([`Presented`]), checked by [`verifies`]:
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>`;
//! - Gitea / Forgejo: `X-Gitea-Signature: <hex HMAC-SHA256(secret, raw body)>`;
//! - GitLab: `X-Gitlab-Token: <secret>` (GitLab signs nothing: the secret itself travels,
//!   so the hook URL must be https where the path is not trusted).
//!
//! MACs are checked with `ring::hmac::verify` (constant-time), the GitLab token with
//! `subtle`. Nothing here logs; callers never log a secret or a presented signature.

use ring::hmac;
use subtle::ConstantTimeEq;

use super::pki::Ca;
use crate::state::App;

/// What the webhook key is derived for (a new label makes every secret new).
const KEY_LABEL: &[u8] = b"slipway webhooks v1";

/// The webhook secret of `app` as it is now: 64 hex digits.
pub fn secret(ca: &Ca, app: &App) -> String {
    let message = format!("webhook\n{}\n{}\n{}", app.name, app.created_at_ms, app.webhook_generation);
    hex(hmac::sign(&ca.derive_key(KEY_LABEL), message.as_bytes()).as_ref())
}

/// A push notification's proof of the secret, as one provider presents it.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    /// GitHub's `X-Hub-Signature-256` value: `sha256=<hex>`.
    GitHub(String),
    /// GitLab's `X-Gitlab-Token` value: the secret itself.
    GitLab(String),
    /// Gitea's or Forgejo's `X-Gitea-Signature` value: `<hex>`.
    Gitea(String),
}

impl std::fmt::Debug for Presented {
    /// Never the value: it is a MAC of the body or, for GitLab, the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.provider())
    }
}

impl Presented {
    /// `github`, `gitlab` or `gitea`: for logs, answers and delivery ids.
    pub fn provider(&self) -> &'static str {
        match self {
            Self::GitHub(_) => "github",
            Self::GitLab(_) => "gitlab",
            Self::Gitea(_) => "gitea",
        }
    }
}

/// True if `presented` proves `body` was sent by someone holding `secret`.
pub fn verifies(presented: &Presented, secret: &str, body: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mac_verifies =
        |hex_mac: &str| unhex(hex_mac.trim()).is_some_and(|mac| hmac::verify(&key, body, &mac).is_ok());
    match presented {
        Presented::GitHub(value) => value.trim().strip_prefix("sha256=").is_some_and(mac_verifies),
        Presented::Gitea(value) => mac_verifies(value),
        Presented::GitLab(token) => token.as_bytes().ct_eq(secret.as_bytes()).into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string (either case), or None if it is not one.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}"#;

    fn mac(secret: &str, body: &[u8]) -> String {
        hex(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body).as_ref())
    }

    fn app(name: &str, created_at_ms: u64, webhook_generation: u64) -> App {
        App {
            name: name.into(),
            repo: "file:///r".into(),
            branch: "main".into(),
            created_at_ms,
            current_release: 0,
            config: Default::default(),
            replicas: None,
            webhook_generation,
            secrets: Default::default(),
        }
    }

    #[test]
    fn github_signs_the_body_with_a_sha256_prefix() {
        let secret = "s3cret";
        let good = format!("sha256={}", mac(secret, BODY));
        assert!(verifies(&Presented::GitHub(good.clone()), secret, BODY));
        assert!(verifies(
            &Presented::GitHub(good.to_uppercase().replace("SHA256=", "sha256=")),
            secret,
            BODY
        ));
        assert!(!verifies(&Presented::GitHub(good.clone()), "other", BODY), "wrong secret");
        assert!(!verifies(&Presented::GitHub(good.clone()), secret, b"{}"), "another body");
        assert!(!verifies(&Presented::GitHub(mac(secret, BODY)), secret, BODY), "no sha256= prefix");
        assert!(!verifies(&Presented::GitHub(format!("sha1={}", mac(secret, BODY))), secret, BODY));
        assert!(!verifies(&Presented::GitHub("sha256=zz".into()), secret, BODY));
        assert!(!verifies(&Presented::GitHub(String::new()), secret, BODY));
        // GitHub's signature in Gitea's header is Gitea's shape no more.
        assert!(!verifies(&Presented::Gitea(good), secret, BODY), "wrong header");
    }

    #[test]
    fn gitea_signs_the_body_in_bare_hex() {
        let secret = "s3cret";
        let good = mac(secret, BODY);
        assert!(verifies(&Presented::Gitea(good.clone()), secret, BODY));
        assert!(!verifies(&Presented::Gitea(good.clone()), "other", BODY), "wrong secret");
        assert!(!verifies(&Presented::Gitea(good[..62].into()), secret, BODY), "cut short");
        assert!(!verifies(&Presented::Gitea(String::new()), secret, BODY));
        assert!(!verifies(&Presented::GitHub(good.clone()), secret, BODY), "wrong header");
        assert!(!verifies(&Presented::GitLab(good), secret, BODY), "a MAC is not the token");
    }

    #[test]
    fn gitlab_presents_the_secret_itself() {
        let secret = "s3cret";
        assert!(verifies(&Presented::GitLab(secret.into()), secret, BODY));
        assert!(!verifies(&Presented::GitLab("s3cre".into()), secret, BODY), "a prefix");
        assert!(!verifies(&Presented::GitLab("other!".into()), secret, BODY), "wrong secret");
        assert!(!verifies(&Presented::GitLab(String::new()), secret, BODY));
        assert!(!verifies(&Presented::GitHub(format!("sha256={secret}")), secret, BODY), "wrong header");
    }

    #[test]
    fn the_secret_is_the_cas_the_apps_and_the_generations() {
        let ca = Ca::create().unwrap();
        let shop = secret(&ca, &app("shop", 1, 0));
        assert_eq!(shop.len(), 64);
        let member = Ca::from_pem(ca.cert_pem.clone(), ca.key_pem().to_string()).unwrap();
        assert_eq!(secret(&member, &app("shop", 1, 0)), shop, "every member derives the same");
        assert_ne!(secret(&ca, &app("shop", 1, 1)), shop, "a rotation makes a new one");
        assert_ne!(secret(&ca, &app("shop", 2, 0)), shop, "so does making the app again");
        assert_ne!(secret(&ca, &app("shop2", 1, 0)), shop);
        assert_ne!(secret(&Ca::create().unwrap(), &app("shop", 1, 0)), shop);
        assert_eq!(format!("{:?}", Presented::GitLab(shop.clone())), "gitlab", "Debug never shows it");
    }
}
