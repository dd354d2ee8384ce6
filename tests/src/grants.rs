//! [`cluster_token_auth`]: what a slipway cluster's registry runs with, for the kit's
//! [`Registry`](slipway_testkit::Registry): `auth: token` with the scheduler's realm,
//! the token signer's root (derived from the cluster CA, as `slipway-scheduler
//! registry-bundle` writes it) as root certificate bundle and slipway's service and
//! issuer names, the registry's HTTP helpers logging in to the realm with a one-minute
//! pull grant minted from the CA (as the scheduler mints them for deploys).

use std::time::Duration;

use slipway_scheduler::security::pki::Ca;
use slipway_scheduler::security::registry_auth::{issue_grant, GRANT_USER, ISSUER, SERVICE};
use slipway_scheduler::security::registry_signer;
use slipway_testkit::TokenAuth;

/// Token auth against `realm` (`http://<scheduler http_listen>/v2/token`, reachable
/// from every engine; `https://` with `http.tls`, the helpers then trusting `ca`) for a
/// cluster whose CA is `ca`.
pub fn cluster_token_auth(realm: &str, ca: &Ca) -> TokenAuth {
    let bundle = registry_signer::bundle_pem(ca).expect("the token signer derives from the cluster CA");
    let grants = ca.clone();
    let auth = TokenAuth::new(realm, SERVICE, ISSUER, bundle).with_pull_login(move |repo| {
        (GRANT_USER.to_string(), issue_grant(&grants, repo, &["pull"], Duration::from_secs(60)))
    });
    if realm.starts_with("https://") {
        auth.with_realm_ca(ca.cert_pem.clone())
    } else {
        auth
    }
}
