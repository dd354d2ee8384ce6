//! The scheduler as a client of the fleet registry: is this digest in this app's
//! repository?
//!
//! Before the leader records a release it asks the registry itself, rather than take the
//! agent's word: `HEAD /v2/<app>/manifests/<digest>` with a JWT allowing `pull` on that
//! repository only, minted by this scheduler's token signer ([`super::registry_auth`];
//! no grant or realm round trip: the scheduler is the token server). A cluster running
//! without TLS has no signer and its registry takes anyone: the HEAD goes anonymous.
//! The `Accept` header names every manifest type an engine pushes (Docker v2 schema 2,
//! its manifest list, OCI manifest and index), so the registry answers for each.
//!
//! A 404 is an answer (the image is not there) and fails at once; so does a refusal
//! (401/403: the registry does not take this cluster's tokens). Connection errors,
//! timeouts, 429 and 5xx are retried with [`Backoff`] for a few seconds
//! ([`Retry::default`]), then fail naming the registry: a release is never recorded
//! unverified.
//!
//! The registry is reached over plain HTTP at `registry.addr`, as the engines reach it
//! in the quick start and the fleet scripts.

use std::time::Duration;

use reqwest::{header, StatusCode};
use slipway_common::Backoff;

use super::registry_auth::{self, Access};
use super::registry_signer::RegistrySigner;

/// The manifest media types an engine pushes, for `Accept`.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

/// The token's subject, as the registry logs it.
const SUBJECT: &str = "slipway-scheduler";

/// How long the check keeps trying a registry that does not answer.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Most requests sent.
    pub attempts: u32,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// The first pause between tries (doubling, up to a second).
    pub first_delay: Duration,
}

impl Default for Retry {
    /// Five tries over about four seconds of pauses, each request at most 3 s.
    fn default() -> Self {
        Self { attempts: 5, request_timeout: Duration::from_secs(3), first_delay: Duration::from_millis(250) }
    }
}

/// Why the registry did not confirm a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestCheckError {
    /// The registry answered: the repository has no such manifest.
    #[error("{digest} is not in the fleet registry's repository {repository}: the registry answered 404 to HEAD /v2/{app}/manifests/{digest}")]
    Missing {
        /// The app (the repository's name in the registry).
        app: String,
        /// `<registry>/<app>`.
        repository: String,
        /// The digest looked for.
        digest: String,
    },
    /// The registry answered with another digest than the one asked for.
    #[error("the fleet registry at {registry} answered for {app}@{asked} with the manifest {answered}")]
    OtherDigest {
        /// `registry.addr`.
        registry: String,
        /// The app.
        app: String,
        /// The digest looked for.
        asked: String,
        /// The `Docker-Content-Digest` it answered with.
        answered: String,
    },
    /// The registry refused the scheduler's token (or, without TLS, anonymous reads).
    #[error("the fleet registry at {registry} refused the scheduler's pull token for {app} (HTTP {status}); {hint}")]
    Refused {
        /// `registry.addr`.
        registry: String,
        /// The app.
        app: String,
        /// The status it answered.
        status: u16,
        /// What to check.
        hint: &'static str,
    },
    /// No usable answer after every try (unreachable, timing out, 5xx, or an answer
    /// this check does not understand).
    #[error("the fleet registry at {registry} did not confirm {app}@{digest}: {why}")]
    Unavailable {
        /// `registry.addr`.
        registry: String,
        /// The app.
        app: String,
        /// The digest looked for.
        digest: String,
        /// The last error, with how many tries were made.
        why: String,
    },
}

/// Checks that `<registry>/<app>@<digest>` exists, reading with a pull token for `app`
/// signed by `signer` (anonymous without one).
pub async fn manifest_exists(
    registry: &str,
    signer: Option<&RegistrySigner>,
    app: &str,
    digest: &str,
    retry: Retry,
) -> Result<(), ManifestCheckError> {
    let unavailable = |why: String| ManifestCheckError::Unavailable {
        registry: registry.to_string(),
        app: app.to_string(),
        digest: digest.to_string(),
        why,
    };
    let http = reqwest::Client::builder()
        .timeout(retry.request_timeout)
        .build()
        .map_err(|e| unavailable(format!("cannot make an HTTP client: {e}")))?;
    let url = format!("http://{registry}/v2/{app}/manifests/{digest}");
    let mut backoff = Backoff::new(retry.first_delay, Duration::from_secs(1));
    let mut last = String::new();
    for attempt in 1..=retry.attempts.max(1) {
        if attempt > 1 {
            backoff.wait().await;
        }
        // A fresh token per try: one lives 5 minutes, a try at most a few seconds.
        let mut request = http.head(&url).header(header::ACCEPT, MANIFEST_TYPES.join(", "));
        if let Some(signer) = signer {
            let access =
                vec![Access { kind: "repository".into(), name: app.into(), actions: vec!["pull".into()] }];
            let token = registry_auth::token(signer.credentials(), SUBJECT, access).map_err(unavailable)?;
            request = request.bearer_auth(token.token);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                last = format!("HEAD {url}: {}", error_chain(&e));
                continue;
            }
        };
        match response.status() {
            StatusCode::OK => {
                let answered = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(digest);
                if answered != digest {
                    return Err(ManifestCheckError::OtherDigest {
                        registry: registry.to_string(),
                        app: app.to_string(),
                        asked: digest.to_string(),
                        answered: answered.to_string(),
                    });
                }
                return Ok(());
            }
            StatusCode::NOT_FOUND => {
                return Err(ManifestCheckError::Missing {
                    app: app.to_string(),
                    repository: format!("{registry}/{app}"),
                    digest: digest.to_string(),
                })
            }
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                return Err(ManifestCheckError::Refused {
                    registry: registry.to_string(),
                    app: app.to_string(),
                    status: status.as_u16(),
                    hint: if signer.is_some() {
                        "its auth.token.rootcertbundle must be the token signer's root \
                         (<data_dir>/pki/registry-signer.pem)"
                    } else {
                        "this scheduler runs without TLS, so it has no token signer: the \
                         registry must take anonymous reads"
                    },
                })
            }
            status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                last = format!("HEAD {url} answered {status}");
            }
            status => return Err(unavailable(format!("HEAD {url} answered {status}"))),
        }
    }
    Err(unavailable(format!("{last} ({} tries)", retry.attempts.max(1))))
}

/// One blob a manifest references: its digest and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:…`.
    pub digest: String,
    /// Its size, as the manifest says.
    pub size: u64,
}

/// What the garbage collector asks of the registry: a manifest's blobs (config and
/// layers) and deleting a manifest by digest, with a token allowing `pull` and `delete`
/// on the app's repository only (anonymous without a signer). One request each, no
/// retries: a GC that fails halfway is run again, and what it did is idempotent.
pub struct RegistryAdmin<'a> {
    registry: &'a str,
    signer: Option<&'a RegistrySigner>,
    http: reqwest::Client,
}

impl<'a> RegistryAdmin<'a> {
    /// A client of the registry at `registry` (`host:port`, plain HTTP).
    pub fn new(registry: &'a str, signer: Option<&'a RegistrySigner>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Self { registry, signer, http })
    }

    fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        app: &str,
    ) -> Result<reqwest::RequestBuilder, String> {
        let Some(signer) = self.signer else { return Ok(request) };
        let access = vec![Access {
            kind: "repository".into(),
            name: app.into(),
            actions: vec!["pull".into(), "delete".into()],
        }];
        let token = registry_auth::token(signer.credentials(), SUBJECT, access)?;
        Ok(request.bearer_auth(token.token))
    }

    /// The blobs `app@digest` references (its config and layers; for an index, its
    /// manifests' entries as listed), or `None` if the registry has no such manifest.
    pub async fn manifest_blobs(&self, app: &str, digest: &str) -> Result<Option<Vec<BlobRef>>, String> {
        let url = format!("http://{}/v2/{app}/manifests/{digest}", self.registry);
        let request =
            self.authorize(self.http.get(&url).header(header::ACCEPT, MANIFEST_TYPES.join(", ")), app)?;
        let response = request.send().await.map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(format!("GET {url} answered {status}")),
        }
        let body: serde_json::Value =
            response.json().await.map_err(|e| format!("GET {url}: not a JSON manifest: {e}"))?;
        let blob = |v: &serde_json::Value| {
            Some(BlobRef { digest: v.get("digest")?.as_str()?.to_string(), size: v.get("size")?.as_u64()? })
        };
        let mut blobs: Vec<BlobRef> = body.get("config").and_then(blob).into_iter().collect();
        for key in ["layers", "manifests"] {
            if let Some(list) = body.get(key).and_then(|l| l.as_array()) {
                blobs.extend(list.iter().filter_map(blob));
            }
        }
        Ok(Some(blobs))
    }

    /// Deletes `app@digest` (`DELETE /v2/<app>/manifests/<digest>`); a manifest already
    /// gone counts as deleted (`Ok(false)`).
    pub async fn delete_manifest(&self, app: &str, digest: &str) -> Result<bool, String> {
        let url = format!("http://{}/v2/{app}/manifests/{digest}", self.registry);
        let response = self
            .authorize(self.http.delete(&url), app)?
            .send()
            .await
            .map_err(|e| format!("DELETE {url}: {}", error_chain(&e)))?;
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::METHOD_NOT_ALLOWED => Err(format!(
                "DELETE {url} answered 405: the registry has deletes off; set storage.delete.enabled: true in its config"
            )),
            status => {
                let text = response.text().await.unwrap_or_default();
                Err(format!("DELETE {url} answered {status}: {}", text.trim()))
            }
        }
    }
}

/// An error with its sources (reqwest's own message is only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use slipway_testkit::registry::require_registry;

    use super::*;

    const NO_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn quick() -> Retry {
        Retry { attempts: 3, request_timeout: Duration::from_secs(1), first_delay: Duration::from_millis(50) }
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_retried_then_named() {
        // A port nothing listens on: every try is refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let started = Instant::now();
        let err = manifest_exists(&addr, None, "shop", NO_DIGEST, quick()).await.unwrap_err();
        assert!(matches!(err, ManifestCheckError::Unavailable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("the fleet registry at {addr}")), "{text}");
        assert!(text.contains("(3 tries)"), "{text}");
        // Two pauses of 50-75 ms and 100-150 ms.
        assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_real_registry_answers_missing_for_an_unknown_digest() {
        let Some(registry) = require_registry().await else { return };
        let err = manifest_exists(&registry.addr(), None, "shop", NO_DIGEST, quick()).await.unwrap_err();
        assert_eq!(
            err,
            ManifestCheckError::Missing {
                app: "shop".into(),
                repository: format!("{}/shop", registry.addr()),
                digest: NO_DIGEST.into(),
            }
        );
    }
}
