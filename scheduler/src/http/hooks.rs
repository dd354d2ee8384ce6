//! `POST /hooks/APP`: deploy on git push. GitHub, GitLab and Gitea / Forgejo push
//! notifications for the app's branch, verified with the app's webhook secret
//! ([`crate::security::webhooks`]), queue a build of the pushed commit
//! (`Command::QueuePushBuild`): coalesced with the app's push build still queued, and
//! deduplicated by the provider's delivery id. The build's release is deployed by the
//! dispatcher like any other (`slipway deploy APP --ref <sha>`).
//!
//! Not behind the HTTP token (providers cannot send it): the signature is the
//! authentication. In order, each step answering on its own:
//!
//! | check                                         | answer                     |
//! |-----------------------------------------------|----------------------------|
//! | `Content-Length` over [`MAX_HOOK_BODY_BYTES`] | 413                        |
//! | the app (its name, then the replicated state) | 404                        |
//! | a signature header                            | 401                        |
//! | the body, read up to the limit                | 413                        |
//! | the signature                                 | 401                        |
//! | the event: ping / not a push                  | 200 pong / 200 ignored     |
//! | the JSON: `ref`, `after` (`checkout_sha`)      | 400                        |
//! | the branch: another one / deleted             | 200 ignored                |
//! | queued, joined, or a redelivery               | 202 / 202 / 200            |
//!
//! **Unknown apps answer 404 before the signature is checked**, so a caller without a
//! secret learns whether an app of a name exists. Decided so because app names are not
//! secret here (the router serves every app at `<app>.<domain>`), and nothing else is
//! answered before the signature verifies: the 404 reads the same for a malformed name
//! and an unknown one, and neither the branch, the repository nor any build is named to
//! an unverified caller. Every refusal is logged (app, provider, delivery, status,
//! reason); never a secret or a signature.
//!
//! A follower takes pushes too: the app is read current (a rotated secret is refused
//! everywhere at once) and the write is forwarded to the leader ([`crate::raft::Store::write`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use slipway_proto::validate;

use crate::context::Context;
use crate::error::Error;
use crate::security::webhooks::{self, Presented};
use crate::state::{sha256_hex, Command, Response as Applied};

/// Largest push notification taken (413 above it): GitHub caps its payloads at 25 MB,
/// but a push's commits list is cut to 20 entries, far below this.
pub const MAX_HOOK_BODY_BYTES: usize = 1024 * 1024;

/// The push notification fields read; everything else is ignored.
#[derive(Debug, Deserialize)]
struct Push {
    /// `refs/heads/<branch>` (or a tag's ref).
    #[serde(rename = "ref")]
    git_ref: String,
    /// The branch's commit after the push; all zeros when the branch was deleted.
    after: String,
    /// GitLab: the commit to check out (null when the branch was deleted).
    #[serde(default)]
    checkout_sha: Option<String>,
}

/// What the push asks for, or why it is ignored.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Build this commit.
    Build(String),
    /// Answered 200, nothing done.
    Ignore(String),
}

/// An answer: the status and a JSON body `{"status": …, "reason": …}` (and more).
fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Handles `POST /hooks/{app}`.
pub async fn receive(
    AxState(ctx): AxState<Arc<Context>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let presented = presented(&headers);
    let provider = presented.as_ref().map_or("unknown", Presented::provider);
    let delivery = delivery_id(&headers);
    let refuse = |status: StatusCode, reason: String| {
        tracing::info!(
            app = %app.chars().take(validate::MAX_APP_NAME_BYTES).collect::<String>(),
            provider,
            delivery = delivery.as_deref().unwrap_or("-"),
            status = status.as_u16(),
            %reason,
            "webhook refused"
        );
        let kind = if status.is_success() { "ignored" } else { "refused" };
        answer(status, serde_json::json!({ "status": kind, "reason": reason }))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if declared > MAX_HOOK_BODY_BYTES as u64 {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, too_large(declared));
    }
    let Some(ca) = ctx.ca.clone() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this scheduler runs without TLS (tls.insecure): webhook secrets derive from the cluster CA"
                .into(),
        );
    };
    let not_found = || format!("no app {app:?} takes pushes here; `slipway apps webhook APP` prints the URL");
    if validate::app_name(&app).is_err() {
        return refuse(StatusCode::NOT_FOUND, not_found());
    }
    let record = match ctx.store.read_current(|s| s.apps.get(&app).cloned()).await {
        Ok(Some(record)) => record,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, not_found()),
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let Some(presented) = presented else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no signature: send X-Hub-Signature-256 (GitHub), X-Gitlab-Token (GitLab) or X-Gitea-Signature \
             (Gitea, Forgejo) made with the secret `slipway apps webhook APP` prints"
                .into(),
        );
    };
    let body = match read_limited(body, MAX_HOOK_BODY_BYTES).await {
        Ok(body) => body,
        Err(None) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, too_large(MAX_HOOK_BODY_BYTES as u64 + 1)),
        Err(Some(e)) => return refuse(StatusCode::BAD_REQUEST, format!("the body could not be read: {e}")),
    };
    if !webhooks::verifies(&presented, &webhooks::secret(&ca, &record), &body) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!(
                "the {provider} signature does not match the body and the app's webhook secret (rotated? \
                 `slipway apps webhook {app}` prints the current one)"
            ),
        );
    }
    match event(&presented, &headers) {
        Some(e) if e == "ping" => {
            tracing::info!(%app, provider, "webhook ping");
            return answer(StatusCode::OK, serde_json::json!({ "status": "pong", "app": app }));
        }
        Some(e) if is_push(&presented, &e) => {}
        Some(e) => return refuse(StatusCode::OK, format!("{e:?} events are ignored: only pushes deploy")),
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "no event header (X-GitHub-Event, X-Gitlab-Event or X-Gitea-Event)".into(),
            )
        }
    }
    let push: Push = match serde_json::from_slice(&body) {
        Ok(push) => push,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("not a push notification (JSON with ref and after): {e}"),
            )
        }
    };
    let commit = match decide(&push, &record.branch) {
        Ok(Decision::Build(commit)) => commit,
        Ok(Decision::Ignore(why)) => return refuse(StatusCode::OK, why),
        Err(invalid) => return refuse(StatusCode::BAD_REQUEST, invalid),
    };
    let delivery = match &delivery {
        Some(id) if valid_delivery_id(id) => format!("hook:{provider}:{id}"),
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the delivery id header holds more than 255 letters, digits, '-', '_' or '.'".into(),
            )
        }
        // No delivery id (older GitLab): the same notification is the same push.
        None => format!("hook:{provider}:body-{}", sha256_hex(&body)),
    };
    if let Some(build) = ctx.store.read(|s| {
        s.requests.get(&delivery).and_then(|o| match o {
            crate::state::RequestOutcome::Build(id) => s.builds.get(id).map(|b| b.id.clone()),
            _ => None,
        })
    }) {
        tracing::info!(%app, provider, %delivery, %build, "webhook redelivered: nothing new");
        return answer(
            StatusCode::OK,
            serde_json::json!({ "status": "duplicate", "reason": "this delivery was received before", "build": build }),
        );
    }
    let cmd = Command::QueuePushBuild {
        app: app.clone(),
        commit: commit.clone(),
        delivery: delivery.clone(),
        at_ms: slipway_common::now_ms(),
    };
    match ctx.store.write(cmd).await {
        Ok(Applied::Build(build)) => {
            let status = if build.pushes > 1 { "coalesced" } else { "queued" };
            tracing::info!(%app, provider, %delivery, %commit, build = %build.id, status, "webhook push accepted");
            ctx.dispatcher_wake();
            answer(
                StatusCode::ACCEPTED,
                serde_json::json!({ "status": status, "app": app, "commit": commit, "build": build.id }),
            )
        }
        Ok(other) => refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}")),
        Err(Error::Refused(e)) => refuse(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; the provider may redeliver later")),
    }
}

/// The body, read frame by frame and given up as soon as it passes `limit` bytes
/// (`Err(None)`: nothing more is buffered); `Err(Some(why))` if reading failed.
async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, Option<String>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(None),
        Err(e) => Err(Some(e.to_string())),
    }
}

fn too_large(bytes: u64) -> String {
    format!(
        "the body is {bytes} bytes or more; push notifications are taken up to {MAX_HOOK_BODY_BYTES} bytes"
    )
}

/// The signature a request presents, by header: Gitea's first (Gitea also sends
/// GitHub's headers), then GitLab's, then GitHub's.
fn presented(headers: &HeaderMap) -> Option<Presented> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    value("x-gitea-signature")
        .or_else(|| value("x-forgejo-signature"))
        .map(Presented::Gitea)
        .or_else(|| value("x-gitlab-token").map(Presented::GitLab))
        .or_else(|| value("x-hub-signature-256").map(Presented::GitHub))
}

/// The event a request announces, in its provider's header.
fn event(presented: &Presented, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match presented {
        Presented::GitHub(_) => &["x-github-event"],
        Presented::GitLab(_) => &["x-gitlab-event"],
        Presented::Gitea(_) => &["x-gitea-event", "x-forgejo-event", "x-github-event"],
    };
    names.iter().find_map(|n| headers.get(*n)).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string())
}

fn is_push(presented: &Presented, event: &str) -> bool {
    match presented {
        Presented::GitLab(_) => event == "Push Hook",
        Presented::GitHub(_) | Presented::Gitea(_) => event == "push",
    }
}

/// The provider's delivery id: the same for a redelivery of one notification.
fn delivery_id(headers: &HeaderMap) -> Option<String> {
    ["x-github-delivery", "x-gitea-delivery", "x-forgejo-delivery", "x-gitlab-event-uuid", "idempotency-key"]
        .iter()
        .find_map(|n| headers.get(*n))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// Delivery ids are UUIDs or numbers; nothing longer or stranger is kept.
fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= validate::MAX_ID_BYTES
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What a verified push to an app deployed from `branch` asks for; an `Err` is a
/// malformed notification (400).
fn decide(push: &Push, branch: &str) -> Result<Decision, String> {
    let Some(pushed) = push.git_ref.strip_prefix("refs/heads/") else {
        return Ok(Decision::Ignore(format!(
            "{:?} is not a branch: only pushes to {branch:?} deploy",
            push.git_ref
        )));
    };
    validate::git_ref(pushed).map_err(|e| format!("ref: {e}"))?;
    if pushed != branch {
        return Ok(Decision::Ignore(format!("a push to branch {pushed:?}: this app deploys {branch:?}")));
    }
    // GitLab names the commit to check out; null (a deletion) falls back to `after`.
    let commit = push.checkout_sha.as_deref().filter(|c| !c.is_empty()).unwrap_or(&push.after);
    if validate::is_null_commit(commit) {
        return Ok(Decision::Ignore(format!("branch {branch:?} was deleted: nothing to deploy")));
    }
    validate::commit_sha(commit).map_err(|e| format!("after: {e}"))?;
    Ok(Decision::Build(commit.to_string()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use futures::StreamExt;

    use super::*;

    fn push(git_ref: &str, after: &str, checkout_sha: Option<&str>) -> Push {
        Push { git_ref: git_ref.into(), after: after.into(), checkout_sha: checkout_sha.map(Into::into) }
    }

    #[test]
    fn only_a_push_of_a_commit_to_the_apps_branch_builds() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(decide(&push("refs/heads/main", sha, None), "main"), Ok(Decision::Build(sha.into())));
        let other = "89abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            decide(&push("refs/heads/main", sha, Some(other)), "main"),
            Ok(Decision::Build(other.into())),
            "GitLab's checkout_sha wins"
        );
        for ignored in [
            push("refs/heads/dev", sha, None),
            push("refs/tags/v1", sha, None),
            push("refs/heads/main", &"0".repeat(40), None),
            push("refs/heads/main", &"0".repeat(40), Some("")),
        ] {
            assert!(matches!(decide(&ignored, "main"), Ok(Decision::Ignore(_))), "{ignored:?}");
        }
        for bad in [
            push("refs/heads/main", "abc123", None),
            push("refs/heads/main", "--upload-pack=x", None),
            push("refs/heads/-x", sha, None),
            push("refs/heads/a..b", sha, None),
        ] {
            assert!(decide(&bad, "main").is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_body_is_given_up_once_it_passes_the_limit_while_streaming() {
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = reads.clone();
        // 64 chunks of 1 KiB, no length declared: over a 16 KiB limit after 17 chunks.
        let chunks = futures::stream::iter(0..64).map(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 1024]))
        });
        assert_eq!(read_limited(Body::from_stream(chunks), 16 * 1024).await, Err(None));
        let read = reads.load(std::sync::atomic::Ordering::SeqCst);
        assert!(read <= 17, "{read} chunks read: reading stops at the limit");
        let exact = read_limited(Body::from(vec![b'x'; 16 * 1024]), 16 * 1024).await.unwrap();
        assert_eq!(exact.len(), 16 * 1024, "the limit itself is taken");
    }

    #[test]
    fn the_provider_is_told_by_its_signature_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-hub-signature-256", HeaderValue::from_static("sha256=ab"));
        assert_eq!(presented(&h).unwrap().provider(), "github");
        h.insert("x-gitlab-token", HeaderValue::from_static("t"));
        assert_eq!(presented(&h).unwrap().provider(), "gitlab");
        h.insert("x-gitea-signature", HeaderValue::from_static("ab"));
        assert_eq!(presented(&h).unwrap().provider(), "gitea", "Gitea sends GitHub's header too");
        h.insert("x-gitea-event", HeaderValue::from_static("push"));
        assert!(is_push(&Presented::Gitea(String::new()), &event(&presented(&h).unwrap(), &h).unwrap()));
        assert!(!is_push(&Presented::GitLab(String::new()), "Tag Push Hook"));
        assert!(valid_delivery_id("72d3162e-cc78-11e3-81ab-4c9367dc0958") && valid_delivery_id("42"));
        assert!(!valid_delivery_id("a b") && !valid_delivery_id("") && !valid_delivery_id(&"a".repeat(256)));
    }
}
