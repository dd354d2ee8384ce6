//! Caddy: the router's configuration, as the JSON Caddy's admin API loads whole (pure).
//!
//! Caddy swaps a loaded config gracefully: listeners are kept and requests in flight
//! finish on the old config, so a route change drops nothing. Two configs exist:
//!
//! - [`start_config`], the file the router starts with (a Swarm config object): the admin
//!   API on a UNIX socket in the volume `<stack>_router_admin`, and a listener that
//!   answers 503 until the routes are loaded. The node's agent loads them
//!   (`agent/src/router.rs`), again after each restart of the router.
//! - [`render`], the routes: one route per app matching its host names, proxying to
//!   the app's tasks found by DNS (`tasks.<stack>_<app>`, refreshed every second), with
//!   retries: a task that stops during a rollout refuses the connection, and the request
//!   goes to another task instead of failing. Unknown host names get a 404 naming the
//!   host. The reserved host [`ROUTER_STATUS_HOST`] answers the config's version, which
//!   the agent reads back (`GET /id/slipway_routes` on the admin socket) to tell
//!   whether its router still serves it.

use serde_json::{json, Value};
use slipway_proto::router::{ADMIN_ORIGIN, ADMIN_SOCKET, VERSION_ID};
use slipway_proto::validate::ROUTER_STATUS_HOST;

use super::routes::Route;

/// Where the admin socket lives in the router's container (the admin volume's mount).
pub const ADMIN_DIR: &str = "/run/slipway-router";
/// The port the router listens on in its container.
pub const CONTAINER_PORT: u16 = 80;
/// Version the start config answers: no routes loaded yet.
pub const START_VERSION: &str = "none";

// The proxy's settings, measured against start-first rollouts under a steady load
// (0 failed requests in 5 rollouts of ~6,000 requests each; see the README):
/// How long a request may keep trying tasks (a rollout's stopped task, a task not yet
/// listening) before the router answers 502.
const TRY_DURATION: &str = "5s";
/// Pause between two tries.
const TRY_INTERVAL: &str = "250ms";
/// How often the tasks' DNS name is looked up again: under the 2 s Swarm waits between
/// taking an old task out of DNS and stopping it (the module's default is a minute).
const UPSTREAM_REFRESH: &str = "1s";
/// How long one connection attempt to a task may take: a task whose address just went
/// away makes a dial hang until this passes (Caddy's default is 3 s).
const DIAL_TIMEOUT: &str = "1s";
/// A task that failed a request is left alone for this long.
const FAIL_DURATION: &str = "2s";

/// A router config and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Names this config: a digest of its routes.
    pub version: String,
    /// The whole Caddy config.
    pub json: Vec<u8>,
}

fn admin() -> Value {
    json!({
        "listen": format!("unix/{ADMIN_DIR}/{ADMIN_SOCKET}"),
        "origins": [ADMIN_ORIGIN],
        // The agent reloads after a restart; nothing to resume from.
        "config": { "persist": false },
    })
}

fn text(status: u16, body: &str) -> Value {
    json!({
        "handler": "static_response",
        "status_code": status,
        "headers": { "Content-Type": ["text/plain; charset=utf-8"] },
        "body": body,
    })
}

fn version_route(version: &str) -> Value {
    let mut handler = text(200, &format!("{version}\n"));
    handler["@id"] = json!(VERSION_ID);
    json!({ "match": [{ "host": [ROUTER_STATUS_HOST] }], "handle": [handler], "terminal": true })
}

fn config(routes: Vec<Value>) -> Value {
    json!({
        "admin": admin(),
        "logging": { "logs": { "default": { "level": "WARN" } } },
        "apps": { "http": { "servers": { "slipway": {
            "listen": [format!(":{CONTAINER_PORT}")],
            "automatic_https": { "disable": true },
            "routes": routes,
        }}}},
    })
}

/// The config the router starts with: the admin socket, the version route answering
/// [`START_VERSION`], and 503 for everything else until the routes are loaded.
pub fn start_config() -> Vec<u8> {
    let routes = vec![
        version_route(START_VERSION),
        json!({ "handle": [text(503, "slipway router: no routes loaded yet\n")] }),
    ];
    serde_json::to_vec_pretty(&config(routes)).expect("a JSON value serializes")
}

fn proxy(route: &Route) -> Value {
    json!({
        "match": [{ "host": route.hosts }],
        "handle": [{
            "handler": "reverse_proxy",
            "dynamic_upstreams": {
                "source": "a",
                "name": route.upstream,
                "port": route.port.to_string(),
                "refresh": UPSTREAM_REFRESH,
            },
            "load_balancing": {
                "selection_policy": { "policy": "round_robin" },
                "try_duration": TRY_DURATION,
                "try_interval": TRY_INTERVAL,
            },
            // Per task: the tasks are separate upstreams (found by DNS), so one failing
            // task is skipped, never the app.
            "health_checks": { "passive": { "fail_duration": FAIL_DURATION, "max_fails": 1 } },
            "transport": { "protocol": "http", "dial_timeout": DIAL_TIMEOUT },
        }],
        "terminal": true,
    })
}

/// The router config serving `routes`. Deterministic: the same routes give the same
/// bytes and version on every member.
pub fn render(routes: &[Route]) -> Rendered {
    let proxies: Vec<Value> = routes.iter().map(proxy).collect();
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &serde_json::to_vec(&proxies).expect("a JSON value serializes"),
    );
    let version: String = digest.as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut all = vec![version_route(&version)];
    all.extend(proxies);
    all.push(json!({ "handle": [text(404, "slipway router: no app is served at {http.request.host}\n")] }));
    Rendered { version, json: serde_json::to_vec_pretty(&config(all)).expect("a JSON value serializes") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(app: &str, hosts: &[&str]) -> Route {
        Route {
            app: app.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            upstream: format!("tasks.s_{app}"),
            port: 8080,
        }
    }

    #[test]
    fn the_version_names_the_routes_and_is_served_at_the_reserved_host() {
        let a = render(&[route("shop", &["shop.localhost"])]);
        assert_eq!(a, render(&[route("shop", &["shop.localhost"])]), "deterministic");
        let b = render(&[route("shop", &["shop.localhost", "shop.example.com"])]);
        assert_ne!(a.version, b.version);
        let config: Value = serde_json::from_slice(&b.json).unwrap();
        let routes = &config["apps"]["http"]["servers"]["slipway"]["routes"];
        assert_eq!(routes[0]["match"][0]["host"][0], ROUTER_STATUS_HOST);
        assert_eq!(routes[0]["handle"][0]["@id"], VERSION_ID);
        assert_eq!(routes[0]["handle"][0]["body"], format!("{}\n", b.version));
        assert_eq!(routes[1]["match"][0]["host"], json!(["shop.localhost", "shop.example.com"]));
        let upstreams = &routes[1]["handle"][0]["dynamic_upstreams"];
        assert_eq!(
            (upstreams["name"].as_str(), upstreams["port"].as_str()),
            (Some("tasks.s_shop"), Some("8080"))
        );
        assert_eq!(routes[2]["handle"][0]["status_code"], 404);
        assert_eq!(config["admin"]["listen"], "unix//run/slipway-router/admin.sock");
    }

    #[test]
    fn the_start_config_answers_503_until_routes_are_loaded() {
        let config: Value = serde_json::from_slice(&start_config()).unwrap();
        let routes = &config["apps"]["http"]["servers"]["slipway"]["routes"];
        assert_eq!(routes[0]["handle"][0]["body"], "none\n");
        assert_eq!(routes[1]["handle"][0]["status_code"], 503);
    }
}
