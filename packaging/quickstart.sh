#!/usr/bin/env bash
# packaging/quickstart.sh — slipway on this one machine, deploying the example app.
#
# Usage: packaging/quickstart.sh [up]   start everything and deploy examples/hello
#        packaging/quickstart.sh down   stop what `up` started
#        packaging/quickstart.sh status
#
# `up` (idempotent; run it again to redeploy):
#   1. installs what is missing (git, curl, busybox-static, Debian's docker-registry),
#      makes sure a Docker engine answers and is a Swarm manager (`docker swarm init`
#      if it is not one), and builds the local base image slipway/busybox:latest;
#   2. builds slipway (cargo build);
#   3. starts, in the background, one scheduler with its embedded raft store (sled),
#      which makes the cluster CA on its first start; the internal registry on
#      127.0.0.1:$SLIPWAY_REGISTRY_PORT (default 5000) with token auth, the scheduler
#      its token server (builds push with a grant for their app only, services pull
#      with a pull-only one); and one agent. Their state, logs and pid files live
#      under .slipway/;
#   4. gives the operator a certificate from the cluster CA (.slipway/admin/) and
#      writes .slipway/config.toml naming it, so `slipway` works from the repo root;
#      the agent joins with the cluster's agent token (every gRPC connection is
#      mutual TLS);
#   5. commits examples/hello into a git repo under .slipway/ and deploys it, printing
#      the URL where it answers: http://hello.localhost:$SLIPWAY_ROUTER_PORT/ (8080),
#      through the router (Caddy, the service slipway_router, its image
#      slipway.invalid/router:latest built from Debian's caddy).
#
# The router publishes its port in host mode (the routing mesh needs IPVS, which some
# kernels lack); the scheduler config under .slipway/ says so and real fleets switch
# it to ingress.
set -euo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SLIPWAY_ROOT"

STATE="$SLIPWAY_ROOT/.slipway"
REGISTRY_PORT="${SLIPWAY_REGISTRY_PORT:-5000}"
GRPC_ADDR="127.0.0.1:${SLIPWAY_GRPC_PORT:-7400}"
HTTP_ADDR="127.0.0.1:${SLIPWAY_HTTP_PORT:-7401}"
ROUTER_PORT="${SLIPWAY_ROUTER_PORT:-8080}"
STACK=slipway
APP=hello
BIN="$SLIPWAY_ROOT/target/debug"

write_configs() {
    mkdir -p "$STATE/scheduler" "$STATE/agent" "$STATE/builds" "$STATE/logs"
    cat >"$STATE/scheduler.toml" <<EOF
# Written by packaging/quickstart.sh: a single-member scheduler on loopback.
node_id = 1
listen = "$GRPC_ADDR"
http_listen = "$HTTP_ADDR"
data_dir = "$STATE/scheduler"

[registry]
addr = "127.0.0.1:$REGISTRY_PORT"

[deploy]
stack = "$STACK"
# host: ports are published on the node that runs the task. Use "ingress" on real
# fleets (the routing mesh needs IPVS in the kernel).
publish_mode = "host"

[router]
# Every app answers at http://<app>.localhost:$ROUTER_PORT/ (*.localhost is this host).
domain = "localhost"
http_port = $ROUTER_PORT
image = "slipway.invalid/router:latest"

[agents]
report_interval_secs = 2
down_after_secs = 10

[placement]
# The quick start runs on whatever disk this is; 512 MiB free is enough for the example.
min_free_bytes = 536870912
EOF
    cat >"$STATE/agent.toml" <<EOF
# Written by packaging/quickstart.sh: one agent building on this machine's disk.
schedulers = ["$GRPC_ADDR"]
name = "$(hostname)"
state_dir = "$STATE/agent"
build_root = "$STATE/builds"
build_slots = 2
EOF
}

# The operator's certificate (made once, offline, from the CA in the scheduler's data
# dir) and the CLI config naming it.
write_cli_config() {
    [[ -f "$STATE/admin/cert.pem" ]] ||
        "$BIN/slipway-scheduler" --config "$STATE/scheduler.toml" admin-cert "$(id -un)" --out "$STATE/admin" >/dev/null
    cat >"$STATE/config.toml" <<EOF
# slipway CLI config, written by packaging/quickstart.sh.
schedulers = ["$GRPC_ADDR"]

# The operator certificate (\`slipway cluster admin-cert NAME\` issues more).
[tls]
ca = "admin/ca.pem"
cert = "admin/cert.pem"
key = "admin/key.pem"
EOF
}

wait_ready() {
    local i
    for i in $(seq 1 150); do
        curl -fsS "http://$HTTP_ADDR/readyz" >/dev/null 2>&1 && return 0
        running "$STATE/scheduler.pid" || break
        sleep 0.2
    done
    error "the scheduler did not become ready; its log says:"
    tail -n 30 "$STATE/logs/scheduler.log" >&2 || true
    return 1
}

wait_node() {
    local i
    for i in $(seq 1 100); do
        "$BIN/slipway" nodes --json 2>/dev/null | grep -q '"status": "ready"' && return 0
        running "$STATE/agent.pid" || break
        sleep 0.3
    done
    error "the agent did not report to the scheduler; its log says:"
    tail -n 30 "$STATE/logs/agent.log" >&2 || true
    return 1
}

up() {
    info "installing what is missing"
    local pkgs=(busybox-static curl)
    have git || pkgs+=(git)
    have cc || pkgs+=(build-essential)
    apt_install "${pkgs[@]}"
    apt_install_nostart docker-registry
    ensure_rust
    ensure_docker
    ensure_swarm
    "$SLIPWAY_ROOT/packaging/base-image.sh"
    "$SLIPWAY_ROOT/packaging/router-image.sh"

    info "building slipway (cargo build; the first build takes a few minutes)"
    cargo build -q -p slipway-scheduler -p slipway-agent -p slipway-cli --bins

    write_configs
    start_bg scheduler "$STATE/scheduler.pid" "$STATE/logs/scheduler.log" \
        "$BIN/slipway-scheduler" --config "$STATE/scheduler.toml"
    wait_ready
    # The registry trusts tokens from the scheduler's token signer only (written into
    # its data dir at start), not its CA.
    "$SLIPWAY_ROOT/packaging/registry.sh" start "$STATE/registry" "$REGISTRY_PORT" \
        "http://$HTTP_ADDR/v2/token" "$STATE/scheduler/pki/registry-signer.pem"
    write_cli_config
    # The agent joins with the token once (in its environment, not on its command
    # line); its certificate then lives in its state dir.
    SLIPWAY_JOIN_TOKEN="$("$BIN/slipway" cluster token agent)"
    export SLIPWAY_JOIN_TOKEN
    start_bg agent "$STATE/agent.pid" "$STATE/logs/agent.log" \
        "$BIN/slipway-agent" --config "$STATE/agent.toml"
    unset SLIPWAY_JOIN_TOKEN
    wait_node

    local repo
    repo="$(example_repo "$STATE/example-repo" "$APP")"
    if ! "$BIN/slipway" apps show "$APP" >/dev/null 2>&1; then
        "$BIN/slipway" apps create "$APP" --repo "$repo" --branch main
    fi
    info "deploying $APP"
    "$BIN/slipway" deploy "$APP"

    # curl (like browsers) takes every *.localhost name for this host.
    local url i
    url="http://$APP.localhost:$ROUTER_PORT/"
    for i in $(seq 1 60); do
        curl -fsS "$url" >/dev/null 2>&1 && break
        sleep 0.5
    done
    curl -fsS "$url" >/dev/null || die "$APP is deployed but $url does not answer; see \`docker service ps ${STACK}_$APP ${STACK}_router\`"
    echo
    info "$APP answers at $url"
    curl -fsS "$url" | sed 's/^/    /' | head -n 8
    echo
    cat <<EOF
Try:
    $BIN/slipway releases $APP
    $BIN/slipway apps show $APP
    $BIN/slipway nodes
    $BIN/slipway builds
    docker stack services $STACK
The fleet page: http://$HTTP_ADDR/ (any user name; the password is the token in
$STATE/scheduler/http-token; \`curl -H "Authorization: Bearer \$(cat …)" http://$HTTP_ADDR/metrics\`).
Stop everything with: ./packaging/quickstart.sh down
EOF
}

down() {
    stop_pid agent "$STATE/agent.pid"
    stop_pid scheduler "$STATE/scheduler.pid"
    if have docker && docker info >/dev/null 2>&1; then
        local ids
        ids="$(docker service ls -q --filter "label=com.docker.stack.namespace=$STACK" 2>/dev/null || true)"
        if [[ -n "$ids" ]]; then
            info "removing the services of stack $STACK"
            # shellcheck disable=SC2086
            docker service rm $ids >/dev/null
        fi
        docker network rm "${STACK}_default" >/dev/null 2>&1 || true
        ids="$(docker config ls -q --filter "label=com.docker.stack.namespace=$STACK" 2>/dev/null || true)"
        # shellcheck disable=SC2086
        [[ -z "$ids" ]] || docker config rm $ids >/dev/null 2>&1 || true
    fi
    if [[ -d "$STATE/registry" ]]; then
        "$SLIPWAY_ROOT/packaging/registry.sh" stop "$STATE/registry" "$REGISTRY_PORT" || true
    fi
    info "stopped; state stays in .slipway/ (delete it for a clean start)"
}

status() {
    local name
    for name in scheduler agent; do
        if running "$STATE/$name.pid"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
    done
    "$SLIPWAY_ROOT/packaging/registry.sh" status "$STATE/registry" "$REGISTRY_PORT" && echo "registry: running" || echo "registry: stopped"
}

case "${1:-up}" in
up) up ;;
down) down ;;
status) status ;;
*)
    echo "usage: $0 [up|down|status]" >&2
    exit 2
    ;;
esac
