//! The fleet page (`/` and `/fleet` on every member's `http_listen`): one
//! server-rendered HTML document, no script, no external assets, that reloads itself
//! every [`REFRESH_SECS`] seconds.
//!
//! It shows the nodes with their build headroom (build filesystem, CPU, memory, build
//! slots, cache, engine, last report, draining), the apps and the release each runs,
//! the last builds and releases, and the cluster members. Node headroom and liveness
//! are the leader's memory: a follower shows the node records, names the leader and
//! points there. Every string that comes from users, agents or the network (node
//! names, refs, errors, addresses) is HTML-escaped; numbers are also carried in
//! `data-*` attributes of each node row, for scripts and tests.
//!
//! Why `maud`: its templates escape every value by default and are checked at compile time,
//! so escaping is no longer something each call site has to remember.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use slipway_proto::human_bytes;

use super::overview::{NodeRow, Overview};
use crate::placement::Liveness;
use crate::state::{BuildState, DeployState};

/// Seconds between reloads of the page.
pub const REFRESH_SECS: u32 = 3;

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#1f2328;background:#fff}\
h1{font-size:20px;margin:0 0 .2em}h2{font-size:16px;margin:1.4em 0 .4em}\
.sub{color:#59636e}.mono,td.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 10px 4px 0;border-bottom:1px solid #e5e7eb;vertical-align:top}\
th{font-weight:600;color:#59636e;font-size:12.5px}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.age{white-space:nowrap}\
.bar{display:inline-block;width:110px;height:8px;background:#e5e7eb;border-radius:4px;overflow:hidden;vertical-align:middle;margin-right:6px}\
.bar>span{display:block;height:100%;background:#1a7f37}.bar>span.warn{background:#bf8700}.bar>span.crit{background:#cf222e}\
.badge{display:inline-block;padding:0 6px;border-radius:9px;font-size:12px;font-weight:600}\
.ready,.pushed,.deployed{background:#dafbe1;color:#1a7f37}.down,.failed{background:#ffebe9;color:#cf222e}\
.unknown,.cancelled{background:#eaeef2;color:#59636e}.queued,.assigned,.running,.pending,.draining{background:#fff8c5;color:#7d4e00}\
.note{background:#ddf4ff;border:1px solid #54aeff;padding:.6em .9em;border-radius:6px;margin:.8em 0}\
.err{color:#cf222e}.small{font-size:12px;color:#59636e}.hr{white-space:nowrap}th.num{text-align:right}";

/// `2 s`, `5 min`, `3 h`, `2 d`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// `sha256:0123456789ab` (the first 12 hex digits), or `—`.
fn short_digest(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(hex) => format!("sha256:{}", hex.get(..12).unwrap_or(hex)),
        None if digest.is_empty() => "—".into(),
        None => digest.get(..19).unwrap_or(digest).to_string(),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// `42%`, or `?%` for a share that is not a number.
fn percent(share: f64) -> String {
    if share.is_finite() {
        format!("{:.0}%", share.clamp(0.0, 1.0) * 100.0)
    } else {
        "?%".into()
    }
}

/// A bar filled to `used` (0..1), amber above 80 %, red above 90 %.
fn bar(used: f64) -> Markup {
    let used = if used.is_finite() { used.clamp(0.0, 1.0) } else { 0.0 };
    let class = match used {
        u if u > 0.9 => Some("crit"),
        u if u > 0.8 => Some("warn"),
        _ => None,
    };
    html! {
        span.bar title={ (percent(used)) " used" } {
            span class=[class] style={ "width:" (format!("{:.0}", used * 100.0)) "%" } {}
        }
    }
}

/// A headroom cell: the bar (filled to the share used), what is free, and the detail.
fn headroom(used: f64, free: &str, detail: &str) -> Markup {
    html! {
        div.hr { (bar(used)) b { (free) } }
        div.small { (detail) }
    }
}

fn badge(class: &str, text: &str) -> Markup {
    html! { span class={ "badge " (class) } { (text) } }
}

/// The page, as this member sees the cluster. `http_port` is the port the request
/// came in on (a guess at the leader's, when this member does not lead), `scheme` this
/// listener's (`https` with `http.tls`).
pub fn render(o: &Overview, scheme: &str, http_port: Option<u16>) -> String {
    let r = &o.raft;
    let commit = r.commit_index.map_or("?".to_string(), |c| c.to_string());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECS);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "slipway fleet" }
                // Our own constant stylesheet: CSS is raw text, not to be escaped.
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "slipway fleet" }
                div.sub #member data-member-id=(r.member_id) data-role=(r.role) {
                    "member " (r.member_id) " · " (r.role) " · term " (r.term) " · log " (r.last_log_index)
                    " · committed " (commit) " · applied " (r.last_applied)
                    " · refreshes every " (REFRESH_SECS) " s"
                }
                (leader_note(o, scheme, http_port))
                (nodes(o))
                (apps(o))
                (builds(o))
                (releases(o))
                (members(o))
                p.small {
                    "Replicated records as applied on this member; headroom as last reported to the leader. \
                     Every member serves this page and "
                    a href="/metrics" { "/metrics" }
                    " on its http_listen."
                }
            }
        }
    }
    .into_string()
}

fn leader_note(o: &Overview, scheme: &str, http_port: Option<u16>) -> Markup {
    if o.leading {
        return html! {};
    }
    let r = &o.raft;
    html! {
        div.note #leader-note {
            @match (r.leader_id, &r.leader_addr) {
                (Some(id), Some(addr)) if id != r.member_id => {
                    "This member (" (r.member_id) ") does not lead: "
                    b { "member " (id) }
                    " does, at gRPC address "
                    span.mono { (addr) }
                    ". Node headroom and liveness live in the leader's memory, so they are not shown here. \
                     Every member serves this page on its own http_listen, which members do not tell each other"
                    @if let Some(port) = http_port {
                        @let host = addr.rsplit_once(':').map_or(addr.as_str(), |(host, _)| host);
                        @let url = format!("{scheme}://{host}:{port}/");
                        "; if the leader uses the same HTTP port as this one: "
                        a href=(url) { (url) }
                        "."
                    } @else {
                        "."
                    }
                }
                (Some(_), _) => {
                    "This member is taking over as leader: node reports arrive within a report interval."
                }
                (None, _) => {
                    "No leader is known to this member: the cluster is electing one, or this member is cut off \
                     from the majority. Node headroom is shown by the leader only."
                }
            }
        }
    }
}

fn status_cell(n: &NodeRow) -> Markup {
    let (class, text) = match n.soft.as_ref().map(|s| s.liveness) {
        Some(Liveness::Ready) => ("ready", "ready"),
        Some(Liveness::Down) => ("down", "down"),
        Some(Liveness::Unknown) => ("unknown", "unknown"),
        None => ("unknown", "see leader"),
    };
    let refusal = n.soft.as_ref().and_then(|s| s.refusal.as_deref());
    html! {
        (badge(class, text))
        @if n.record.draining {
            " " (badge("draining", "draining"))
        }
        @if let Some(refusal) = refusal {
            div.small.err { "refused a build: " (first_line(refusal)) }
        }
    }
}

fn nodes(o: &Overview) -> Markup {
    html! {
        h2 { "Nodes (" (o.nodes.len()) ")" }
        @if o.nodes.is_empty() {
            p.sub { "No nodes registered: start slipway-agent on a Swarm node." }
        } @else {
            table #nodes {
                tr {
                    th { "node" } th { "status" } th { "build filesystem" } th { "CPU" } th { "memory" }
                    th.num { "builds" } th.num { "cache" } th { "engine" } th { "last report" } th { "draining" }
                }
                @for n in &o.nodes {
                    (node_row(o, n))
                }
            }
        }
    }
}

fn node_row(o: &Overview, n: &NodeRow) -> Markup {
    let report = n.soft.as_ref().and_then(|s| s.report.as_ref());
    let status = match n.soft.as_ref().map(|s| s.liveness) {
        Some(Liveness::Ready) => "ready",
        Some(Liveness::Down) => "down",
        Some(Liveness::Unknown) => "unknown",
        None => "not-leader",
    };
    let running = report.map(|r| r.running_builds.max(n.assigned));
    let last = n.soft.as_ref().and_then(|s| s.last_report_age);
    let last = last.map_or("—".to_string(), |a| format!("{:.1} s ago", a.as_secs_f64()));
    html! {
        tr.node data-node-id=(n.record.id) data-node-name=(n.record.name) data-status=(status)
            data-draining=(n.record.draining)
            data-build-fs-free-bytes=[report.map(|r| r.build_fs_available_bytes)]
            data-build-fs-total-bytes=[report.map(|r| r.build_fs_total_bytes)]
            data-cpus=[report.map(|r| r.cpu_count)]
            data-cpu-usage-percent=[report.map(|r| format!("{:.1}", r.cpu_usage_percent))]
            data-load1=[report.map(|r| format!("{:.2}", r.load_1m))]
            data-memory-available-bytes=[report.map(|r| r.memory_available_bytes)]
            data-memory-total-bytes=[report.map(|r| r.memory_total_bytes)]
            data-running-builds=[running]
            data-build-slots=[report.map(|r| r.build_slots)]
            data-cache-bytes=[report.map(|r| r.cache_bytes)] {
            td { b { (n.record.name) } div.small.mono { (n.record.id) } }
            td { (status_cell(n)) }
            @match report {
                Some(r) => {
                    @let fs_used = 1.0 - r.build_fs_available_bytes as f64 / r.build_fs_total_bytes.max(1) as f64;
                    @let cpu_used = f64::from(r.cpu_usage_percent) / 100.0;
                    @let idle_cores = if cpu_used.is_finite() {
                        format!("{:.1}", f64::from(r.cpu_count) * (1.0 - cpu_used.clamp(0.0, 1.0)))
                    } else {
                        "?".into()
                    };
                    @let mem_used = 1.0 - r.memory_available_bytes as f64 / r.memory_total_bytes.max(1) as f64;
                    td.fs {
                        (headroom(
                            fs_used,
                            &format!("{} free", human_bytes(r.build_fs_available_bytes)),
                            &format!("of {} · {} used", human_bytes(r.build_fs_total_bytes), percent(fs_used)),
                        ))
                        // A floor the agent raised after a build ran out of space: placement
                        // avoids the node until the filesystem has that much free.
                        @if r.build_fs_floor_bytes > 0 {
                            div.small.err {
                                "no builds below " (human_bytes(r.build_fs_floor_bytes)) " free: "
                                (r.build_fs_floor_reason)
                            }
                        }
                    }
                    td.cpu {
                        (headroom(
                            cpu_used,
                            &format!("{idle_cores} of {} cores idle", r.cpu_count),
                            &format!("{} used · load {:.2}", percent(cpu_used), r.load_1m),
                        ))
                    }
                    td.mem {
                        (headroom(
                            mem_used,
                            &format!("{} available", human_bytes(r.memory_available_bytes)),
                            &format!("of {} · {} used", human_bytes(r.memory_total_bytes), percent(mem_used)),
                        ))
                    }
                    td.builds.num { (r.running_builds.max(n.assigned)) " / " (r.build_slots) }
                    td.cache.num { (human_bytes(r.cache_bytes)) }
                    td {
                        @if r.docker_healthy {
                            (r.docker_version)
                        } @else {
                            span.err { (first_line(&r.docker_error)) }
                        }
                    }
                }
                None => {
                    td.sub colspan="6" { (if o.leading { "no report yet" } else { "on the leader" }) }
                }
            }
            td.age { (last) }
            td { (if n.record.draining { "yes" } else { "no" }) }
        }
    }
}

fn apps(o: &Overview) -> Markup {
    html! {
        h2 { "Apps (" (o.apps.len()) ")" }
        @if o.apps.is_empty() {
            p.sub { "No apps: " span.mono { "slipway apps create NAME --repo URL" } "." }
        } @else {
            table #apps {
                tr { th { "app" } th { "current release" } th { "digest" } th.num { "releases" } th { "answers at" } }
                @for a in &o.apps {
                    tr {
                        td { b { (a.name) } }
                        td {
                            @if a.current_release == 0 {
                                span.sub { "never deployed" }
                            } @else {
                                "v" (a.current_release)
                            }
                        }
                        td.mono title=(a.digest) { (short_digest(&a.digest)) }
                        td.num { (a.releases) }
                        td {
                            @for url in &a.urls {
                                a.mono href=(url) { (url) } " "
                            }
                        }
                    }
                }
            }
        }
    }
}

fn state_class(state: BuildState) -> &'static str {
    match state {
        BuildState::Queued => "queued",
        BuildState::Assigned => "assigned",
        BuildState::Running => "running",
        BuildState::Pushed => "pushed",
        BuildState::Failed => "failed",
        BuildState::Cancelled => "cancelled",
    }
}

fn builds(o: &Overview) -> Markup {
    html! {
        h2 { "Recent builds" }
        @if o.recent_builds.is_empty() {
            p.sub { "No builds yet: " span.mono { "slipway deploy APP" } "." }
        } @else {
            table #builds {
                tr {
                    th { "build" } th { "app" } th { "ref" } th { "state" } th { "node" }
                    th.num { "attempt" } th { "age" } th { "error" }
                }
                @for b in &o.recent_builds {
                    tr {
                        td.mono { (b.id) }
                        td { (b.app) }
                        td.mono { (if b.git_ref.is_empty() { "(branch)" } else { b.git_ref.as_str() }) }
                        td { (badge(state_class(b.state), state_class(b.state))) }
                        td { (b.node_id.as_deref().map_or("—", |id| o.node_name(id))) }
                        td.num { (b.attempt) }
                        td { (age(o.now_ms.saturating_sub(b.created_at_ms))) }
                        td.err { (b.error.as_deref().map(first_line).unwrap_or_default()) }
                    }
                    @if let Some(d) = o.cache_doctor.get(&b.id) {
                        tr.doctor data-build=(b.id) {
                            td {}
                            td.small colspan="7" {
                                @for line in d.lines() { div { (line) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn releases(o: &Overview) -> Markup {
    html! {
        h2 { "Recent releases" }
        @if o.recent_releases.is_empty() {
            p.sub { "No releases yet." }
        } @else {
            table #releases {
                tr {
                    th { "app" } th { "release" } th { "digest" } th { "git" } th { "built on" }
                    th { "deploy" } th { "age" }
                }
                @for r in &o.recent_releases {
                    @let (class, text) = match r.deploy {
                        DeployState::Pending => ("pending", "pending"),
                        DeployState::Deployed => ("deployed", "deployed"),
                        DeployState::Failed => ("failed", "failed"),
                    };
                    tr {
                        td { (r.app) }
                        td {
                            "v" (r.number)
                            @if let Some(of) = r.rollback_of {
                                " " span.small { "(rollback to v" (of) ")" }
                            }
                        }
                        td.mono title=(r.digest) { (short_digest(&r.digest)) }
                        td.mono { (r.git_sha.get(..10).unwrap_or(&r.git_sha)) }
                        td { (o.node_name(&r.node_id)) }
                        td {
                            (badge(class, text))
                            @if let Some(err) = &r.deploy_error {
                                " " span.small.err { (first_line(err)) }
                            }
                        }
                        td { (age(o.now_ms.saturating_sub(r.created_at_ms))) }
                    }
                }
            }
        }
    }
}

fn members(o: &Overview) -> Markup {
    let r = &o.raft;
    html! {
        h2 { "Cluster members (" (r.members.len()) ")" }
        table #members {
            tr {
                th { "id" } th { "gRPC address" } th { "vote" } th { "leader" }
                th.num { "term" } th.num { "applied" } th.num { "log matched" }
            }
            @for m in &r.members {
                @let this = m.id == r.member_id;
                tr data-member-id=(m.id) {
                    td {
                        (m.id)
                        @if this {
                            " " span.small { "(this page)" }
                        }
                    }
                    td.mono { (m.addr) }
                    td { (if m.voter { "voter" } else { "learner" }) }
                    td { (if r.leader_id == Some(m.id) { "★ leader" } else { "" }) }
                    td.num { @if this { (r.term) } }
                    td.num { @if this { (r.last_applied) } }
                    td.num { @if let Some(i) = m.matched { (i) } }
                }
            }
        }
        p.small {
            "Term and applied index are this member's; the others' log position is known to the \
             leader only (log matched). Snapshot at " (r.snapshot_index) ", log purged up to "
            (r.purged_index) "."
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use slipway_proto::NodeReport;

    use super::*;
    use crate::fleet::{NodeSoftState, ReportDelays};
    use crate::http::overview::{AppRow, MemberRow, RaftOverview};
    use crate::state::{Build, NodeRecord, Release};

    const EVIL: &str = "<script>alert(\"x\")</script>&'";

    fn overview(leading: bool) -> Overview {
        let report = NodeReport {
            build_fs_total_bytes: 100 << 30,
            build_fs_available_bytes: 5 << 30,
            cpu_count: 4,
            cpu_usage_percent: 25.0,
            load_1m: 0.5,
            memory_total_bytes: 8 << 30,
            memory_available_bytes: 6 << 30,
            build_slots: 2,
            running_builds: 1,
            cache_bytes: 3 << 20,
            docker_healthy: true,
            docker_version: "20.10.24".into(),
            ..Default::default()
        };
        let node = |id: &str, name: &str| crate::http::overview::NodeRow {
            record: NodeRecord {
                id: id.into(),
                name: name.into(),
                labels: BTreeMap::new(),
                draining: false,
                registered_at_ms: 0,
            },
            soft: leading.then(|| NodeSoftState {
                liveness: Liveness::Ready,
                report: Some(report.clone()),
                last_report_age: Some(Duration::from_millis(800)),
                connected: true,
                refusal: None,
            }),
            assigned: 0,
        };
        let build = Build {
            id: "b-7".into(),
            app: "shop".into(),
            git_ref: EVIL.into(),
            no_cache: false,
            state: BuildState::Failed,
            node_id: Some("n-2".into()),
            attempt: 1,
            created_at_ms: 1_000,
            queued_at_ms: 1_000,
            finished_at_ms: Some(2_000),
            error: Some(format!("clone failed: {EVIL}\nsecond line")),
            output: None,
            release: None,
            pushes: 0,
        };
        Overview {
            now_ms: 61_000,
            leading,
            raft: RaftOverview {
                member_id: 2,
                role: if leading { "leader" } else { "follower" }.into(),
                term: 4,
                leader_id: Some(if leading { 2 } else { 1 }),
                leader_addr: Some(if leading { "10.0.0.2:7400" } else { "10.0.0.1:7400" }.into()),
                last_log_index: 9,
                commit_index: Some(9),
                last_applied: 9,
                snapshot_index: 0,
                purged_index: 0,
                members: vec![
                    MemberRow { id: 1, addr: "10.0.0.1:7400".into(), voter: true, matched: None },
                    MemberRow { id: 2, addr: "10.0.0.2:7400".into(), voter: true, matched: None },
                ],
            },
            nodes: vec![node("n-1", "alpha"), node("n-2", EVIL)],
            builds_by_state: [0, 0, 0, 0, 1, 0],
            oldest_queued_ms: None,
            apps: vec![AppRow {
                name: "shop".into(),
                current_release: 3,
                digest: format!("sha256:{}", "ab".repeat(32)),
                releases: 3,
                urls: vec!["http://shop.localhost/".into()],
            }],
            recent_builds: vec![build],
            cache_doctor: [(
                "b-7".to_string(),
                crate::state::cache_doctor::Diagnosis {
                    step: "[3/5] COPY . .".into(),
                    changed_paths: vec!["app.py".into()],
                    advice: "copy the <lockfile> first".into(),
                    ..Default::default()
                },
            )]
            .into(),
            recent_releases: vec![Release {
                secrets: Default::default(),
                app: "shop".into(),
                number: 3,
                digest: format!("sha256:{}", "ab".repeat(32)),
                repository: "127.0.0.1:5000/shop".into(),
                git_sha: "0123456789abcdef".into(),
                build_id: "b-5".into(),
                node_id: "n-1".into(),
                created_at_ms: 1_000,
                rollback_of: Some(1),
                deploy: DeployState::Failed,
                deploy_error: Some(format!("task failed: {EVIL}\nmore")),
                run: Default::default(),
                bytes_pushed: 0,
                timings: Default::default(),
                config: Default::default(),
                replicas: None,
                change: None,
                collected: false,
            }],
            placements: (0, 0),
            report_delays: ReportDelays::default(),
            builds_pruned: 0,
            build_logs: Default::default(),
            storage: Default::default(),
        }
    }

    #[test]
    fn the_leader_shows_headroom_and_escapes_what_users_and_agents_wrote() {
        let page = render(&overview(true), "http", Some(7401));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"3\">"));
        assert!(!page.contains("<script"), "nothing user-controlled is markup:\n{page}");
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;'"));
        assert!(
            page.contains("<b>5.0 GiB free</b></div><div class=\"small\">of 100.0 GiB · 95% used"),
            "{page}"
        );
        assert!(page.contains("<b>3.0 of 4 cores idle</b></div><div class=\"small\">25% used · load 0.50"));
        assert!(page.contains("<b>6.0 GiB available</b></div><div class=\"small\">of 8.0 GiB · 25% used"));
        assert!(page.contains("<span class=\"crit\" style=\"width:95%\">"), "a nearly full disk is red");
        assert!(page.contains("data-build-fs-free-bytes=\"5368709120\""));
        assert!(page.contains("0.8 s ago"));
        assert!(page.contains("sha256:abababababab<"), "short digest");
        assert!(page.contains("clone failed:") && !page.contains("second line"), "error's first line only");
        assert!(page.contains("★ leader"));
        assert!(page.contains("cache doctor: `[3/5] COPY . .` was rebuilt"), "{page}");
        assert!(page.contains("advice: copy the &lt;lockfile&gt; first"), "{page}");
        assert!(page.contains("changed files it copies: app.py"), "{page}");
        assert!(page.contains("v3 <span class=\"small\">(rollback to v1)</span>"), "{page}");
        assert!(page.contains("<td class=\"mono\">0123456789</td><td>alpha</td>"), "{page}");
        assert!(page.contains("task failed: &lt;script&gt;") && !page.contains("more"), "{page}");
        assert!(!page.contains("leader-note"));
    }

    #[test]
    fn a_floor_raised_after_a_build_ran_out_of_space_is_shown_with_its_reason() {
        let mut o = overview(true);
        assert!(!render(&o, "http", Some(7401)).contains("no builds below"));
        let soft = o.nodes[0].soft.as_mut().expect("the leader knows its nodes' reports");
        let report = soft.report.as_mut().expect("a report");
        report.build_fs_floor_bytes = 6 << 30;
        report.build_fs_floor_reason = format!("a build ran out of space on /srv/{EVIL}");
        let page = render(&o, "http", Some(7401));
        assert!(
            page.contains("no builds below 6.0 GiB free: a build ran out of space on /srv/&lt;script&gt;"),
            "{page}"
        );
    }

    #[test]
    fn a_follower_names_the_leader_and_points_there() {
        let page = render(&overview(false), "http", Some(7401));
        assert!(page.contains("<b>member 1</b> does, at gRPC address <span class=\"mono\">10.0.0.1:7400"));
        assert!(page.contains("<a href=\"http://10.0.0.1:7401/\">"), "{page}");
        assert!(page.contains("data-status=\"not-leader\""));
        assert!(!page.contains("data-build-fs-free-bytes"), "no headroom on a follower");
        let no_port = render(&overview(false), "http", None);
        assert!(!no_port.contains("<a href=\"http://10.0.0.1"));
    }

    #[test]
    fn ages_and_digests_read_well() {
        assert_eq!(age(59_000), "59 s");
        assert_eq!(age(600_000), "10 min");
        assert_eq!(age(3 * 86_400_000), "3 d");
        assert_eq!(short_digest(""), "—");
    }
}
