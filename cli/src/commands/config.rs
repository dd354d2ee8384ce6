//! `slipway config APP`, `config set|unset` and `scale`: an app's environment and
//! replicas, changed without a build. A change the cluster rolls out streams like a
//! rollback; one kept for an app's first deploy says so.

use std::collections::HashMap;

use serde_json::{json, Value};
use slipway_proto::deploy_event::Event;
use slipway_proto::{self as pb, DeployEvent};
use tokio_stream::StreamExt;

use super::deploy::follow_deploy;
use super::print_json;
use crate::args::{ConfigArgs, ConfigCmd};
use crate::client::{Call, Failure, Result};
use crate::output::table;

/// Most replicas `scale` accepts (the manifest's bound; the scheduler checks it again).
const MAX_REPLICAS: i64 = 1000;

/// Runs `config APP`, `config set` or `config unset`.
pub async fn run(call: Call<'_>, args: &ConfigArgs) -> Result<()> {
    match (&args.cmd, &args.app) {
        (Some(ConfigCmd::Set { app, pairs }), _) => {
            let set = parse_pairs(pairs)?;
            change(call, pb::SetConfigRequest { app: app.clone(), set, ..Default::default() }).await
        }
        (Some(ConfigCmd::Unset { app, keys }), _) => {
            let req = pb::SetConfigRequest { app: app.clone(), unset: keys.clone(), ..Default::default() };
            change(call, req).await
        }
        (None, Some(app)) => show(call, app, args.json).await,
        (None, None) => Err(Failure::fatal(
            "name the app: `slipway config APP`, `slipway config set APP KEY=VALUE…` or `slipway config unset APP KEY…`",
        )),
    }
}

/// `KEY=VALUE` arguments as a map; the value may hold `=` and be empty.
fn parse_pairs(pairs: &[String]) -> Result<HashMap<String, String>> {
    let mut set = HashMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(Failure::fatal(format!(
                "{pair:?} is not KEY=VALUE; write e.g. DATABASE_URL=postgres://db/shop (quote values with spaces)"
            )));
        };
        if set.insert(key.to_string(), value.to_string()).is_some() {
            return Err(Failure::fatal(format!("{key} is given twice; give each key once")));
        }
    }
    Ok(set)
}

async fn show(call: Call<'_>, app: &str, json: bool) -> Result<()> {
    let mut c = call.client;
    let config = c.get_config(pb::GetConfigRequest { app: app.to_string() }).await?.into_inner();
    if json {
        let entries: Vec<Value> = config
            .entries
            .iter()
            .map(|e| json!({"key": e.key, "value": e.value, "source": e.source, "overrides_manifest": e.overrides_manifest}))
            .collect();
        print_json(&json!({
            "app": config.app, "entries": entries, "release": config.release,
            "config_bytes": config.config_bytes, "max_config_bytes": config.max_config_bytes,
            "scaled_replicas": (config.scaled_replicas != 0).then_some(config.scaled_replicas),
            "manifest_replicas": config.manifest_replicas,
        }));
        return Ok(());
    }
    let rows = config
        .entries
        .iter()
        .map(|e| {
            let source =
                if e.overrides_manifest { "config (over the manifest's)".into() } else { e.source.clone() };
            vec![e.key.clone(), e.value.clone(), source]
        })
        .collect();
    table(&["KEY", "VALUE", "SOURCE"], rows);
    let manifest = match config.release {
        0 => "no release yet: the manifest's env and replicas show after the first deploy".to_string(),
        n => format!("manifest of release v{n}"),
    };
    let replicas = match (config.scaled_replicas, config.manifest_replicas) {
        (0, 0) => "the manifest's".to_string(),
        (0, m) => format!("{m} (the manifest's)"),
        (s, m) => format!("{s} (scaled; the manifest says {m}; `slipway scale {app} --reset` returns to it)"),
    };
    println!("replicas: {replicas}");
    println!("config: {} of {} bytes; {manifest}", config.config_bytes, config.max_config_bytes);
    Ok(())
}

/// `slipway scale APP N|--reset`.
pub async fn scale(call: Call<'_>, app: &str, replicas: Option<i64>, reset: bool) -> Result<()> {
    let replicas = match replicas {
        _ if reset => 0,
        Some(n) if (1..=MAX_REPLICAS).contains(&n) => n as u32,
        n => {
            return Err(Failure::fatal(format!(
                "replicas must be 1 to {MAX_REPLICAS} (the manifest's bounds), got {}; \
                 `slipway scale {app} --reset` returns to the manifest's replicas",
                n.unwrap_or_default()
            )))
        }
    };
    let Call { client: mut c, request_id, .. } = call;
    let req = pb::ScaleRequest { app: app.to_string(), replicas, reset, request_id: request_id.to_string() };
    let stream = c.scale(req).await?.into_inner();
    follow_change(stream).await
}

async fn change(call: Call<'_>, mut req: pb::SetConfigRequest) -> Result<()> {
    let Call { client: mut c, request_id, .. } = call;
    req.request_id = request_id.to_string();
    let stream = c.set_config(req).await?.into_inner();
    follow_change(stream).await
}

/// A change's stream: a release to follow to its end, or one line saying why none was made.
pub(super) async fn follow_change(mut stream: tonic::Streaming<DeployEvent>) -> Result<()> {
    let first = stream.next().await.transpose()?;
    match first.and_then(|e| e.event) {
        Some(Event::DeployProgress(note)) => {
            println!("==> {note}");
            Ok(())
        }
        Some(first) => {
            let first = tokio_stream::iter([Ok(DeployEvent { event: Some(first) })]);
            follow_deploy(first.chain(stream)).await
        }
        None => Err(Failure::fatal("the scheduler ended the stream without saying what it did")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_the_first_equals_and_malformed_ones_are_named() {
        let set =
            parse_pairs(&["A=1".into(), "URL=postgres://u:p@h/db?x=y".into(), "EMPTY=".into()]).unwrap();
        assert_eq!(
            (set["A"].as_str(), set["URL"].as_str(), set["EMPTY"].as_str()),
            ("1", "postgres://u:p@h/db?x=y", "")
        );
        for (bad, says) in [("NOEQUALS", "\"NOEQUALS\" is not KEY=VALUE"), ("=v", "\"=v\" is not KEY=VALUE")]
        {
            let err = parse_pairs(&[bad.into()]).unwrap_err();
            assert!(err.message.contains(says), "{}", err.message);
        }
        let err = parse_pairs(&["A=1".into(), "A=2".into()]).unwrap_err();
        assert!(err.message.contains("A is given twice"), "{}", err.message);
    }
}
