//! `slipway gc [--dry-run] [--json]`: registry retention now, on the leader. Prints each
//! app's policy, the images deleted (or, dry, that would be), the bytes reclaimed, how
//! long builds were held, and what the registry's garbage-collect did.

use serde_json::json;
use slipway_proto::{self as pb, human_bytes};

use super::print_json;
use crate::client::{Call, Failure, Result};
use crate::output::short_digest;

/// `slipway gc`.
pub async fn run(call: Call<'_>, dry_run: bool, json: bool) -> Result<()> {
    let mut c = call.client;
    let r = c.gc(pb::GcRequest { dry_run }).await?.into_inner();
    if json {
        let apps: Vec<_> = r
            .apps
            .iter()
            .map(|a| {
                json!({
                    "app": a.app, "policy": a.policy, "oldest_kept": a.oldest_kept, "kept": a.kept,
                    "deleted": a.deleted.iter().map(|d| json!({
                        "digest": d.digest, "releases": d.releases, "deleted": d.deleted,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        print_json(&json!({
            "dry_run": r.dry_run, "apps": apps, "bytes_reclaimed": r.bytes_reclaimed,
            "pause_ms": r.pause_ms, "blob_gc": r.blob_gc, "blob_gc_ok": r.blob_gc_ok,
        }));
        return blob_gc_result(&r);
    }
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    for a in &r.apps {
        println!(
            "{}: {} ({} images kept, oldest release kept v{}); {verb} {} images",
            a.app,
            a.policy,
            a.kept.len(),
            a.oldest_kept,
            a.deleted.len()
        );
        for d in &a.deleted {
            let releases: Vec<String> = d.releases.iter().map(|n| format!("v{n}")).collect();
            println!("  {verb} {} ({})", short_digest(&d.digest), releases.join(", "));
        }
    }
    if r.dry_run {
        println!("dry run: nothing changed");
        return Ok(());
    }
    println!("bytes reclaimed: {} ({} bytes)", human_bytes(r.bytes_reclaimed), r.bytes_reclaimed);
    println!("registry pause (builds held): {} ms", r.pause_ms);
    println!("garbage-collect: {}", r.blob_gc);
    blob_gc_result(&r)
}

/// A configured garbage-collect that failed fails the command (after its report).
fn blob_gc_result(r: &pb::GcResponse) -> Result<()> {
    if !r.dry_run && !r.blob_gc.starts_with("registry.gc.command is not set") && !r.blob_gc_ok {
        return Err(Failure::fatal(format!("manifests deleted, but garbage-collect failed: {}", r.blob_gc)));
    }
    Ok(())
}
