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

use std::fmt::Write as _;

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

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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
fn bar(used: f64) -> String {
    let used = if used.is_finite() { used.clamp(0.0, 1.0) } else { 0.0 };
    let class = match used {
        u if u > 0.9 => " class=\"crit\"",
        u if u > 0.8 => " class=\"warn\"",
        _ => "",
    };
    format!(
        "<span class=\"bar\" title=\"{} used\"><span{class} style=\"width:{:.0}%\"></span></span>",
        percent(used),
        used * 100.0
    )
}

/// A headroom cell: the bar (filled to the share used), what is free, and the detail.
fn headroom(used: f64, free: &str, detail: &str) -> String {
    format!("<div class=\"hr\">{}<b>{free}</b></div><div class=\"small\">{detail}</div>", bar(used))
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", esc(class), esc(text))
}

/// The page, as this member sees the cluster. `http_port` is the port the request
/// came in on (a guess at the leader's, when this member does not lead).
pub fn render(o: &Overview, http_port: Option<u16>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let r = &o.raft;
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>slipway fleet</title><style>{STYLE}</style></head>\n<body>\n"
    );
    let commit = r.commit_index.map_or("?".to_string(), |c| c.to_string());
    let _ = writeln!(
        h,
        "<h1>slipway fleet</h1><div class=\"sub\" id=\"member\" data-member-id=\"{}\" data-role=\"{}\">\
         member {} · {} · term {} · log {} · committed {} · applied {} · refreshes every {REFRESH_SECS} s</div>",
        r.member_id,
        esc(&r.role),
        r.member_id,
        esc(&r.role),
        r.term,
        r.last_log_index,
        commit,
        r.last_applied,
    );
    leader_note(&mut h, o, http_port);
    nodes(&mut h, o);
    apps(&mut h, o);
    builds(&mut h, o);
    releases(&mut h, o);
    members(&mut h, o);
    let _ = writeln!(
        h,
        "<p class=\"small\">Replicated records as applied on this member; headroom as last reported to the \
         leader. Every member serves this page and <a href=\"/metrics\">/metrics</a> on its http_listen.</p>\
         \n</body></html>"
    );
    h
}

fn leader_note(h: &mut String, o: &Overview, http_port: Option<u16>) {
    if o.leading {
        return;
    }
    let r = &o.raft;
    h.push_str("<div class=\"note\" id=\"leader-note\">");
    match (r.leader_id, &r.leader_addr) {
        (Some(id), Some(addr)) if id != r.member_id => {
            let _ = write!(
                h,
                "This member ({}) does not lead: <b>member {id}</b> does, at gRPC address <span class=\"mono\">{}</span>. \
                 Node headroom and liveness live in the leader's memory, so they are not shown here. \
                 Every member serves this page on its own http_listen, which members do not tell each other",
                r.member_id,
                esc(addr),
            );
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(host, _)| host);
            match http_port {
                Some(port) => {
                    let url = format!("http://{host}:{port}/");
                    let _ = write!(
                        h,
                        "; if the leader uses the same HTTP port as this one: <a href=\"{}\">{}</a>.",
                        esc(&url),
                        esc(&url)
                    );
                }
                None => h.push('.'),
            }
        }
        (Some(_), _) => {
            h.push_str("This member is taking over as leader: node reports arrive within a report interval.")
        }
        (None, _) => h.push_str(
            "No leader is known to this member: the cluster is electing one, or this member is cut off \
             from the majority. Node headroom is shown by the leader only.",
        ),
    }
    h.push_str("</div>\n");
}

fn status_cell(n: &NodeRow) -> String {
    let mut cell = match n.soft.as_ref().map(|s| s.liveness) {
        Some(Liveness::Ready) => badge("ready", "ready"),
        Some(Liveness::Down) => badge("down", "down"),
        Some(Liveness::Unknown) => badge("unknown", "unknown"),
        None => badge("unknown", "see leader"),
    };
    if n.record.draining {
        cell.push(' ');
        cell.push_str(&badge("draining", "draining"));
    }
    if let Some(refusal) = n.soft.as_ref().and_then(|s| s.refusal.as_deref()) {
        let _ = write!(cell, "<div class=\"small err\">refused a build: {}</div>", esc(first_line(refusal)));
    }
    cell
}

fn nodes(h: &mut String, o: &Overview) {
    let _ = writeln!(h, "<h2>Nodes ({})</h2>", o.nodes.len());
    if o.nodes.is_empty() {
        h.push_str("<p class=\"sub\">No nodes registered: start slipway-agent on a Swarm node.</p>\n");
        return;
    }
    h.push_str(
        "<table id=\"nodes\"><tr><th>node</th><th>status</th><th>build filesystem</th><th>CPU</th>\
         <th>memory</th><th class=\"num\">builds</th><th class=\"num\">cache</th><th>engine</th><th>last report</th><th>draining</th></tr>\n",
    );
    for n in &o.nodes {
        let id = esc(&n.record.id);
        let name = esc(&n.record.name);
        let report = n.soft.as_ref().and_then(|s| s.report.as_ref());
        let status = match n.soft.as_ref().map(|s| s.liveness) {
            Some(Liveness::Ready) => "ready",
            Some(Liveness::Down) => "down",
            Some(Liveness::Unknown) => "unknown",
            None => "not-leader",
        };
        let _ = write!(
            h,
            "<tr class=\"node\" data-node-id=\"{id}\" data-node-name=\"{name}\" data-status=\"{status}\" \
             data-draining=\"{}\"",
            n.record.draining
        );
        if let Some(r) = report {
            let _ = write!(
                h,
                " data-build-fs-free-bytes=\"{}\" data-build-fs-total-bytes=\"{}\" data-cpus=\"{}\" \
                 data-cpu-usage-percent=\"{:.1}\" data-load1=\"{:.2}\" data-memory-available-bytes=\"{}\" \
                 data-memory-total-bytes=\"{}\" data-running-builds=\"{}\" data-build-slots=\"{}\" \
                 data-cache-bytes=\"{}\"",
                r.build_fs_available_bytes,
                r.build_fs_total_bytes,
                r.cpu_count,
                r.cpu_usage_percent,
                r.load_1m,
                r.memory_available_bytes,
                r.memory_total_bytes,
                r.running_builds.max(n.assigned),
                r.build_slots,
                r.cache_bytes,
            );
        }
        let _ = write!(
            h,
            "><td><b>{name}</b><div class=\"small mono\">{id}</div></td><td>{}</td>",
            status_cell(n)
        );
        match report {
            Some(r) => {
                let fs_used = 1.0 - r.build_fs_available_bytes as f64 / r.build_fs_total_bytes.max(1) as f64;
                let cpu_used = f64::from(r.cpu_usage_percent) / 100.0;
                let idle_cores = if cpu_used.is_finite() {
                    format!("{:.1}", f64::from(r.cpu_count) * (1.0 - cpu_used.clamp(0.0, 1.0)))
                } else {
                    "?".into()
                };
                let mem_used = 1.0 - r.memory_available_bytes as f64 / r.memory_total_bytes.max(1) as f64;
                let engine = if r.docker_healthy {
                    esc(&r.docker_version)
                } else {
                    format!("<span class=\"err\">{}</span>", esc(first_line(&r.docker_error)))
                };
                let fs = headroom(
                    fs_used,
                    &format!("{} free", human_bytes(r.build_fs_available_bytes)),
                    &format!("of {} · {} used", human_bytes(r.build_fs_total_bytes), percent(fs_used)),
                );
                let cpu = headroom(
                    cpu_used,
                    &format!("{idle_cores} of {} cores idle", r.cpu_count),
                    &format!("{} used · load {:.2}", percent(cpu_used), r.load_1m),
                );
                let mem = headroom(
                    mem_used,
                    &format!("{} available", human_bytes(r.memory_available_bytes)),
                    &format!("of {} · {} used", human_bytes(r.memory_total_bytes), percent(mem_used)),
                );
                let _ = write!(
                    h,
                    "<td class=\"fs\">{fs}</td><td class=\"cpu\">{cpu}</td><td class=\"mem\">{mem}</td>\
                     <td class=\"builds num\">{} / {}</td><td class=\"cache num\">{}</td><td>{engine}</td>",
                    r.running_builds.max(n.assigned),
                    r.build_slots,
                    human_bytes(r.cache_bytes),
                );
            }
            None => {
                let why = if o.leading { "no report yet" } else { "on the leader" };
                let _ = write!(h, "<td colspan=\"6\" class=\"sub\">{why}</td>",);
            }
        }
        let last = n.soft.as_ref().and_then(|s| s.last_report_age);
        let last = last.map_or("—".to_string(), |a| format!("{:.1} s ago", a.as_secs_f64()));
        let _ = writeln!(
            h,
            "<td class=\"age\">{last}</td><td>{}</td></tr>",
            if n.record.draining { "yes" } else { "no" }
        );
    }
    h.push_str("</table>\n");
}

fn apps(h: &mut String, o: &Overview) {
    let _ = writeln!(h, "<h2>Apps ({})</h2>", o.apps.len());
    if o.apps.is_empty() {
        h.push_str("<p class=\"sub\">No apps: <span class=\"mono\">slipway apps create NAME --repo URL</span>.</p>\n");
        return;
    }
    h.push_str(
        "<table id=\"apps\"><tr><th>app</th><th>current release</th><th>digest</th><th class=\"num\">releases</th></tr>\n",
    );
    for a in &o.apps {
        let current = if a.current_release == 0 {
            "<span class=\"sub\">never deployed</span>".to_string()
        } else {
            format!("v{}", a.current_release)
        };
        let _ = writeln!(
            h,
            "<tr><td><b>{}</b></td><td>{current}</td><td class=\"mono\" title=\"{}\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&a.name),
            esc(&a.digest),
            esc(&short_digest(&a.digest)),
            a.releases,
        );
    }
    h.push_str("</table>\n");
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

fn builds(h: &mut String, o: &Overview) {
    let _ = writeln!(h, "<h2>Recent builds</h2>");
    if o.recent_builds.is_empty() {
        h.push_str("<p class=\"sub\">No builds yet: <span class=\"mono\">slipway deploy APP</span>.</p>\n");
        return;
    }
    h.push_str(
        "<table id=\"builds\"><tr><th>build</th><th>app</th><th>ref</th><th>state</th><th>node</th>\
         <th class=\"num\">attempt</th><th>age</th><th>error</th></tr>\n",
    );
    for b in &o.recent_builds {
        let node = b.node_id.as_deref().map_or("—".to_string(), |id| esc(o.node_name(id)));
        let error = b.error.as_deref().map(first_line).unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{node}</td>\
             <td class=\"num\">{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            esc(&b.id),
            esc(&b.app),
            esc(if b.git_ref.is_empty() { "(branch)" } else { &b.git_ref }),
            badge(state_class(b.state), state_class(b.state)),
            b.attempt,
            age(o.now_ms.saturating_sub(b.created_at_ms)),
            esc(error),
        );
    }
    h.push_str("</table>\n");
}

fn releases(h: &mut String, o: &Overview) {
    let _ = writeln!(h, "<h2>Recent releases</h2>");
    if o.recent_releases.is_empty() {
        h.push_str("<p class=\"sub\">No releases yet.</p>\n");
        return;
    }
    h.push_str(
        "<table id=\"releases\"><tr><th>app</th><th>release</th><th>digest</th><th>git</th><th>built on</th>\
         <th>deploy</th><th>age</th></tr>\n",
    );
    for r in &o.recent_releases {
        let (class, text) = match r.deploy {
            DeployState::Pending => ("pending", "pending"),
            DeployState::Deployed => ("deployed", "deployed"),
            DeployState::Failed => ("failed", "failed"),
        };
        let mut deploy = badge(class, text);
        if let Some(err) = &r.deploy_error {
            let _ = write!(deploy, " <span class=\"small err\">{}</span>", esc(first_line(err)));
        }
        let number = match r.rollback_of {
            Some(of) => format!("v{} <span class=\"small\">(rollback to v{of})</span>", r.number),
            None => format!("v{}", r.number),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{number}</td><td class=\"mono\" title=\"{}\">{}</td><td class=\"mono\">{}</td>\
             <td>{}</td><td>{deploy}</td><td>{}</td></tr>",
            esc(&r.app),
            esc(&r.digest),
            esc(&short_digest(&r.digest)),
            esc(r.git_sha.get(..10).unwrap_or(&r.git_sha)),
            esc(o.node_name(&r.node_id)),
            age(o.now_ms.saturating_sub(r.created_at_ms)),
        );
    }
    h.push_str("</table>\n");
}

fn members(h: &mut String, o: &Overview) {
    let r = &o.raft;
    let _ = writeln!(h, "<h2>Cluster members ({})</h2>", r.members.len());
    h.push_str(
        "<table id=\"members\"><tr><th>id</th><th>gRPC address</th><th>vote</th><th>leader</th>\
         <th class=\"num\">term</th><th class=\"num\">applied</th><th class=\"num\">log matched</th></tr>\n",
    );
    for m in &r.members {
        let this = m.id == r.member_id;
        let leader = if r.leader_id == Some(m.id) { "★ leader" } else { "" };
        let (term, applied) =
            if this { (r.term.to_string(), r.last_applied.to_string()) } else { ("".into(), "".into()) };
        let matched = m.matched.map_or(String::new(), |i| i.to_string());
        let _ = writeln!(
            h,
            "<tr data-member-id=\"{}\"><td>{}{}</td><td class=\"mono\">{}</td><td>{}</td><td>{leader}</td>\
             <td class=\"num\">{term}</td><td class=\"num\">{applied}</td><td class=\"num\">{matched}</td></tr>",
            m.id,
            m.id,
            if this { " <span class=\"small\">(this page)</span>" } else { "" },
            esc(&m.addr),
            if m.voter { "voter" } else { "learner" },
        );
    }
    h.push_str("</table>\n");
    let _ = writeln!(
        h,
        "<p class=\"small\">Term and applied index are this member's; the others' log position is known to the \
         leader only (log matched). Snapshot at {}, log purged up to {}.</p>",
        r.snapshot_index, r.purged_index
    );
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
            }],
            recent_builds: vec![build],
            recent_releases: vec![Release {
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
            }],
            placements: (0, 0),
            report_delays: ReportDelays::default(),
        }
    }

    #[test]
    fn the_leader_shows_headroom_and_escapes_what_users_and_agents_wrote() {
        let page = render(&overview(true), Some(7401));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"3\">"));
        assert!(!page.contains("<script"), "nothing user-controlled is markup:\n{page}");
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"));
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
        assert!(page.contains("v3 <span class=\"small\">(rollback to v1)</span>"), "{page}");
        assert!(page.contains("<td class=\"mono\">0123456789</td><td>alpha</td>"), "{page}");
        assert!(page.contains("task failed: &lt;script&gt;") && !page.contains("more"), "{page}");
        assert!(!page.contains("leader-note"));
    }

    #[test]
    fn a_follower_names_the_leader_and_points_there() {
        let page = render(&overview(false), Some(7401));
        assert!(page.contains("<b>member 1</b> does, at gRPC address <span class=\"mono\">10.0.0.1:7400"));
        assert!(page.contains("<a href=\"http://10.0.0.1:7401/\">"), "{page}");
        assert!(page.contains("data-status=\"not-leader\""));
        assert!(!page.contains("data-build-fs-free-bytes"), "no headroom on a follower");
        let no_port = render(&overview(false), None);
        assert!(!no_port.contains("<a href=\"http://10.0.0.1"));
    }

    #[test]
    fn ages_and_digests_read_well() {
        assert_eq!(age(59_000), "59 s");
        assert_eq!(age(600_000), "10 min");
        assert_eq!(age(3 * 86_400_000), "3 d");
        assert_eq!(short_digest(""), "—");
        assert_eq!(esc("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }
}
