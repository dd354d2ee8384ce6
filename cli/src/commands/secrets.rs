//! `slipway secrets set|list|unset`: an app's secrets, kept by Swarm and delivered to its
//! tasks as files under /run/secrets. The value comes from stdin, is sent once to the
//! leader, and is never printed.

use std::io::Read;

use serde_json::json;
use slipway_proto::{self as pb, validate};

use super::config::follow_change;
use super::print_json;
use crate::args::SecretsCmd;
use crate::client::{Call, Failure, Result};
use crate::output::table;

/// Runs `secrets set`, `secrets list` or `secrets unset`.
pub async fn run(call: Call<'_>, cmd: &SecretsCmd) -> Result<()> {
    match cmd {
        SecretsCmd::Set { app, name, .. } => {
            let value = call.input.unwrap_or_default().to_vec();
            let Call { client: mut c, request_id, .. } = call;
            let req = pb::SetSecretRequest {
                app: app.clone(),
                name: name.clone(),
                value,
                request_id: request_id.to_string(),
            };
            let stream = c.set_secret(req).await?.into_inner();
            follow_change(stream).await
        }
        SecretsCmd::Unset { app, name } => {
            let Call { client: mut c, request_id, .. } = call;
            let req = pb::UnsetSecretRequest {
                app: app.clone(),
                name: name.clone(),
                request_id: request_id.to_string(),
            };
            let stream = c.unset_secret(req).await?.into_inner();
            follow_change(stream).await
        }
        SecretsCmd::List { app, json } => list(call, app, *json).await,
    }
}

/// A secret's value from `input`: at most one trailing `\n` (or `\r\n`) stripped unless
/// `keep_newline`; refused when empty or over Swarm's 500 KiB, before anything is sent.
pub fn read_value(input: impl Read, keep_newline: bool) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    // One byte past the limit is enough to know it is too large.
    input
        .take(validate::MAX_SECRET_BYTES as u64 + 2)
        .read_to_end(&mut value)
        .map_err(|e| Failure::fatal(format!("cannot read the secret's value from stdin: {e}")))?;
    if !keep_newline && value.ends_with(b"\n") {
        value.pop();
        if value.ends_with(b"\r") {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(Failure::fatal(
            "the secret's value is empty: pipe it on stdin, e.g. `printf %s \"$PW\" | slipway secrets set APP NAME`",
        ));
    }
    if value.len() > validate::MAX_SECRET_BYTES {
        return Err(Failure::fatal(format!(
            "the secret's value is over {} bytes (500 KiB, Swarm's limit for a secret)",
            validate::MAX_SECRET_BYTES
        )));
    }
    Ok(value)
}

async fn list(call: Call<'_>, app: &str, json: bool) -> Result<()> {
    let mut c = call.client;
    let listed = c.list_secrets(pb::ListSecretsRequest { app: app.to_string() }).await?.into_inner();
    if json {
        let secrets: Vec<_> = listed
            .secrets
            .iter()
            .map(|s| {
                json!({"name": s.name, "version": s.version, "set_at_ms": s.set_at_ms,
                       "swarm_name": s.swarm_name, "swarm_id": s.swarm_id,
                       "release": (s.release != 0).then_some(s.release)})
            })
            .collect();
        print_json(&json!({"app": listed.app, "secrets": secrets}));
        return Ok(());
    }
    if listed.secrets.is_empty() {
        println!("app {app} has no secrets; `slipway secrets set {app} NAME` reads one from stdin");
        return Ok(());
    }
    let rows = listed
        .secrets
        .iter()
        .map(|s| {
            let release = if s.release == 0 { "-".to_string() } else { format!("v{}", s.release) };
            vec![
                s.name.clone(),
                format!("v{}", s.version),
                crate::output::age(s.set_at_ms),
                release,
                s.swarm_name.clone(),
            ]
        })
        .collect();
    table(&["NAME", "VERSION", "SET", "RELEASE", "SWARM SECRET"], rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_stripped_and_the_limits_hold() {
        assert_eq!(read_value(&b"s3cret\n"[..], false).unwrap(), b"s3cret");
        assert_eq!(read_value(&b"s3cret\r\n"[..], false).unwrap(), b"s3cret");
        assert_eq!(read_value(&b"two\n\n"[..], false).unwrap(), b"two\n");
        assert_eq!(read_value(&b"s3cret\n"[..], true).unwrap(), b"s3cret\n");
        assert!(read_value(&b"\n"[..], false).unwrap_err().message.contains("empty"));
        let big = vec![b'x'; validate::MAX_SECRET_BYTES + 1];
        assert!(read_value(&big[..], false).unwrap_err().message.contains("500 KiB"));
        assert!(read_value(&big[..validate::MAX_SECRET_BYTES], false).is_ok());
    }
}
