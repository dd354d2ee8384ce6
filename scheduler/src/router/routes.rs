//! Routes: which host names reach which app, computed from the replicated state alone
//! (pure; every member computes the same routes, and so the same router config).
//!
//! An app is routed once a release of it is live: the routes follow its current release
//! (on its first deploy, the pending release, so the router knows the app by the time
//! its tasks run). It answers at `<app>.<domain>` and at every `run.domains` name of
//! that release, on its `run.port`; an app without a port has no route. The router
//! reaches the tasks at `tasks.<stack>_<app>`, Swarm's DNS name for every task of a
//! service (in both endpoint modes), so a route never changes when a release does.

use crate::state::{DeployState, Release, State};

/// One app as the router serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The app.
    pub app: String,
    /// Host names it answers at, `<app>.<domain>` first.
    pub hosts: Vec<String>,
    /// DNS name of the app's tasks on the stack's network: `tasks.<stack>_<app>`.
    pub upstream: String,
    /// Container port the tasks listen on.
    pub port: u16,
}

/// The release whose routes an app has: its current release, or, before its first
/// deploy succeeded, its newest pending release.
pub fn routed_release<'a>(state: &'a State, app: &str) -> Option<&'a Release> {
    let current = state.apps.get(app)?.current_release;
    let releases = state.releases.get(app)?;
    match releases.iter().find(|r| r.number == current) {
        Some(release) => Some(release),
        None => releases.iter().rev().find(|r| r.deploy == DeployState::Pending),
    }
}

/// The router's name for an app: `<app>.<domain>`.
pub fn app_host(app: &str, domain: &str) -> String {
    format!("{app}.{domain}")
}

/// Every route, by app name. A host name is served by one app only: the router's own
/// names (`<app>.<domain>`) come first, then `run.domains` by app name (claims keep
/// them unique; a duplicate can only come from a state written before they did).
pub fn routes(state: &State, stack: &str, domain: &str) -> Vec<Route> {
    let mut taken: std::collections::HashSet<String> =
        state.apps.keys().map(|app| app_host(app, domain)).collect();
    let mut routes = Vec::new();
    for app in state.apps.keys() {
        let Some(release) = routed_release(state, app) else { continue };
        let Some(port) = release.run.port else { continue };
        let mut hosts = vec![app_host(app, domain)];
        for host in &release.run.domains {
            if taken.insert(host.clone()) {
                hosts.push(host.clone());
            } else {
                tracing::warn!(%app, %host, "host name served by another app; not routed to this one");
            }
        }
        routes.push(Route { app: app.clone(), hosts, upstream: format!("tasks.{stack}_{app}"), port });
    }
    routes
}

/// Where an app answers: `http://host[:port]/` for each router name (the port left out
/// when it is 80), then its published port on its router name. Empty until a release of
/// it is recorded.
pub fn app_urls(state: &State, app: &str, domain: &str, router_port: u16) -> Vec<String> {
    let Some(release) = routed_release(state, app) else { return Vec::new() };
    let port = if router_port == 80 { String::new() } else { format!(":{router_port}") };
    let mut urls = Vec::new();
    if release.run.port.is_some() {
        let hosts = std::iter::once(app_host(app, domain)).chain(release.run.domains.iter().cloned());
        urls.extend(hosts.map(|host| format!("http://{host}{port}/")));
    }
    if let Some(publish) = release.run.publish {
        urls.push(format!("http://{}:{publish}/", app_host(app, domain)));
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{App, RunSpec};

    fn release(app: &str, number: u64, deploy: DeployState, run: RunSpec) -> Release {
        Release {
            secrets: Default::default(),
            app: app.into(),
            number,
            digest: format!("sha256:{}", "a".repeat(64)),
            repository: format!("r/{app}"),
            git_sha: String::new(),
            build_id: format!("b-{number}"),
            node_id: "n1".into(),
            created_at_ms: 0,
            rollback_of: None,
            deploy,
            deploy_error: None,
            run,
            bytes_pushed: 0,
            timings: Default::default(),
            config: Default::default(),
            replicas: None,
            change: None,
            collected: false,
        }
    }

    fn state(apps: &[(&str, u64, Vec<Release>)]) -> State {
        let mut s = State::default();
        for (name, current, releases) in apps {
            s.apps.insert(
                name.to_string(),
                App {
                    secrets: Default::default(),
                    name: name.to_string(),
                    repo: String::new(),
                    branch: "main".into(),
                    created_at_ms: 0,
                    current_release: *current,
                    config: Default::default(),
                    replicas: None,
                    webhook_generation: 0,
                },
            );
            s.releases.insert(name.to_string(), releases.clone());
        }
        s
    }

    fn web(port: u16, domains: &[&str]) -> RunSpec {
        RunSpec {
            replicas: 1,
            port: Some(port),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn routes_follow_the_current_release_and_a_first_deploy() {
        let s = state(&[
            // Release 2 adds a name but is not live yet: release 1's routes stay.
            (
                "shop",
                1,
                vec![
                    release("shop", 1, DeployState::Deployed, web(8080, &[])),
                    release("shop", 2, DeployState::Pending, web(8080, &["shop.example.com"])),
                ],
            ),
            ("blog", 0, vec![release("blog", 1, DeployState::Pending, web(3000, &["blog.example.com"]))]),
            ("worker", 1, vec![release("worker", 1, DeployState::Deployed, RunSpec::default())]),
            ("new", 0, vec![]),
        ]);
        let routes = routes(&s, "slipway", "localhost");
        assert_eq!(
            routes,
            vec![
                Route {
                    app: "blog".into(),
                    hosts: vec!["blog.localhost".into(), "blog.example.com".into()],
                    upstream: "tasks.slipway_blog".into(),
                    port: 3000,
                },
                Route {
                    app: "shop".into(),
                    hosts: vec!["shop.localhost".into()],
                    upstream: "tasks.slipway_shop".into(),
                    port: 8080,
                },
            ]
        );
    }

    #[test]
    fn a_host_name_is_served_by_one_app_the_routers_own_names_first() {
        let s = state(&[
            ("a", 1, vec![release("a", 1, DeployState::Deployed, web(80, &["b.localhost", "x.example"]))]),
            ("b", 1, vec![release("b", 1, DeployState::Deployed, web(80, &["x.example"]))]),
        ]);
        let hosts: Vec<Vec<String>> = routes(&s, "st", "localhost").into_iter().map(|r| r.hosts).collect();
        assert_eq!(hosts, [vec!["a.localhost", "x.example"], vec!["b.localhost"]]);
    }

    #[test]
    fn urls_name_every_router_host_and_the_published_port() {
        let run = RunSpec { publish: Some(5432), ..web(8080, &["shop.example.com"]) };
        let s = state(&[("shop", 1, vec![release("shop", 1, DeployState::Deployed, run)])]);
        assert_eq!(
            app_urls(&s, "shop", "localhost", 8080),
            ["http://shop.localhost:8080/", "http://shop.example.com:8080/", "http://shop.localhost:5432/"]
        );
        assert_eq!(app_urls(&s, "shop", "apps.example.org", 80)[0], "http://shop.apps.example.org/");
        assert!(app_urls(&s, "nope", "localhost", 80).is_empty());
    }
}
