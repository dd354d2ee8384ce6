#!/usr/bin/env bash
# packaging/local-cluster.sh — a replicated slipway on this machine: N schedulers on
# loopback forming one raft cluster, one agent on the local engine, a registry taking
# tokens from the cluster through `slipway-scheduler realm-proxy` (any live member).
#
# Usage: packaging/local-cluster.sh up [N]    start N schedulers (default 3), the agent
#                                             and the registry; register the example app
#        packaging/local-cluster.sh kill N    kill -9 scheduler N
#        packaging/local-cluster.sh start N   start scheduler N again (from its data dir)
#        packaging/local-cluster.sh status    processes, then `slipway cluster status`
#        packaging/local-cluster.sh down      stop everything (state stays, see below)
#
# Scheduler n listens on 127.0.0.1:(7410+2(n-1)) for gRPC and the next port for HTTP
# (/healthz, /readyz, /metrics). Its config, raft data dir, log and pid file are under
# .slipway/cluster/<n>/. The founding members are listed in every member's config
# ([cluster] members), so they form the cluster on first start with no further step.
# `up` writes .slipway/config.toml listing every member: `slipway` finds the leader.
# The registry's token realm is the realm proxy on 127.0.0.1:(BASE-1), which forwards
# to the first member that answers, so pushes and pulls go on while any member is down.
# Delete .slipway/cluster for a fresh cluster.
#
# Environment: SLIPWAY_CLUSTER_REGISTRY_PORT (default 5001), SLIPWAY_CLUSTER_BASE_PORT
# (default 7410).
set -euo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SLIPWAY_ROOT"

STATE="$SLIPWAY_ROOT/.slipway/cluster"
REGISTRY_PORT="${SLIPWAY_CLUSTER_REGISTRY_PORT:-5001}"
BASE_PORT="${SLIPWAY_CLUSTER_BASE_PORT:-7410}"
STACK=slipway-cluster
APP=hello
BIN="$SLIPWAY_ROOT/target/debug"

grpc_addr() { echo "127.0.0.1:$((BASE_PORT + 2 * ($1 - 1)))"; }
http_addr() { echo "127.0.0.1:$((BASE_PORT + 2 * ($1 - 1) + 1))"; }
REALM_ADDR="127.0.0.1:$((BASE_PORT - 1))"

# The member count `up` chose, remembered for kill/start/status/down.
members() {
    [[ -f "$STATE/size" ]] || die "no local cluster here: run \`$0 up\` first"
    cat "$STATE/size"
}

check_member() {
    local n="$1" size
    size="$(members)"
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= size)) ||
        die "no scheduler $n: this cluster has schedulers 1 to $size"
}

write_configs() {
    local size="$1" n list="" addrs=""
    for n in $(seq 1 "$size"); do
        list+="${list:+, }{ id = $n, addr = \"$(grpc_addr "$n")\" }"
        addrs+="${addrs:+, }\"$(grpc_addr "$n")\""
    done
    for n in $(seq 1 "$size"); do
        mkdir -p "$STATE/$n/data"
        cat >"$STATE/$n/scheduler.toml" <<EOF
# Written by packaging/local-cluster.sh: member $n of a $size-member cluster on loopback.
node_id = $n
listen = "$(grpc_addr "$n")"
http_listen = "$(http_addr "$n")"
data_dir = "$STATE/$n/data"

[cluster]
# Every founding member lists the same members; they form the cluster on first start.
members = [$list]

[raft]
# The defaults, spelled out: a new leader accepts writes about 1.5 s after the old
# one dies (see the README's failover walk-through).
heartbeat_ms = 100
election_timeout_min_ms = 400
election_timeout_max_ms = 800

[registry]
addr = "127.0.0.1:$REGISTRY_PORT"

[deploy]
stack = "$STACK"
publish_mode = "host"

[router]
# The example answers at http://hello.localhost:8080/.
domain = "localhost"
http_port = 8080

[agents]
report_interval_secs = 2
down_after_secs = 10

[placement]
min_free_bytes = 536870912

[tls]
# The founding members share one CA, made by \`slipway-scheduler init-ca\`.
ca_dir = "$STATE/ca"
EOF
    done
    mkdir -p "$STATE/agent" "$STATE/builds"
    cat >"$STATE/agent.toml" <<EOF
# Written by packaging/local-cluster.sh: one agent; it follows whichever member leads.
schedulers = [$addrs]
name = "$(hostname)"
state_dir = "$STATE/agent"
build_root = "$STATE/builds"
build_slots = 2
EOF
    [[ -f "$STATE/admin/cert.pem" ]] ||
        "$BIN/slipway-scheduler" --config "$STATE/1/scheduler.toml" admin-cert "$(id -un)" --out "$STATE/admin" >/dev/null
    mkdir -p "$SLIPWAY_ROOT/.slipway"
    cat >"$SLIPWAY_ROOT/.slipway/config.toml" <<EOF
# slipway CLI config, written by packaging/local-cluster.sh: any member will do.
schedulers = [$addrs]

[tls]
ca = "cluster/admin/ca.pem"
cert = "cluster/admin/cert.pem"
key = "cluster/admin/key.pem"
EOF
}

start_member() {
    local n="$1"
    start_bg "scheduler $n" "$STATE/$n/pid" "$STATE/$n/log" \
        "$BIN/slipway-scheduler" --config "$STATE/$n/scheduler.toml"
}

# wait_leader SECONDS: until some member says it leads.
wait_leader() {
    local i
    for i in $(seq 1 $(($1 * 5))); do
        "$BIN/slipway" cluster status --json 2>/dev/null | grep -q '"leader_id": [1-9]' && return 0
        sleep 0.2
    done
    error "no leader elected in $1 s; the members' logs say:"
    tail -n 5 "$STATE"/*/log >&2 || true
    return 1
}

up() {
    local size="${1:-3}" n
    [[ "$size" =~ ^[0-9]+$ ]] && ((size >= 1 && size <= 9)) || die "up N: N must be 1 to 9, not '$size'"
    if [[ -f "$STATE/size" && "$(cat "$STATE/size")" != "$size" ]]; then
        die "a $(cat "$STATE/size")-member cluster already lives in .slipway/cluster: \`$0 down\` and delete that directory first"
    fi
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
    info "building slipway (cargo build)"
    cargo build -q -p slipway-scheduler -p slipway-agent -p slipway-cli --bins

    mkdir -p "$STATE"
    echo "$size" >"$STATE/size"
    [[ -f "$STATE/ca/ca.pem" ]] || "$BIN/slipway-scheduler" init-ca "$STATE/ca" >/dev/null
    write_configs "$size"
    local http_addrs=()
    for n in $(seq 1 "$size"); do http_addrs+=("$(http_addr "$n")"); done
    start_bg "realm proxy" "$STATE/realm-proxy.pid" "$STATE/realm-proxy.log" \
        "$BIN/slipway-scheduler" realm-proxy --listen "$REALM_ADDR" "${http_addrs[@]}"
    # The registry trusts the token signer every member derives from the shared CA.
    "$BIN/slipway-scheduler" --config "$STATE/1/scheduler.toml" registry-bundle \
        --out "$STATE/registry-signer.pem" >/dev/null
    "$SLIPWAY_ROOT/packaging/registry.sh" start "$STATE/registry" "$REGISTRY_PORT" \
        "http://$REALM_ADDR/v2/token" "$STATE/registry-signer.pem"
    for n in $(seq 1 "$size"); do start_member "$n"; done
    wait_leader 30
    # The agent joins with the token once (in its environment, not on its command line).
    SLIPWAY_JOIN_TOKEN="$("$BIN/slipway" cluster token agent)"
    export SLIPWAY_JOIN_TOKEN
    start_bg agent "$STATE/agent/pid" "$STATE/agent/log" "$BIN/slipway-agent" --config "$STATE/agent.toml"
    unset SLIPWAY_JOIN_TOKEN

    local repo
    repo="$(example_repo "$STATE/example-repo" "$APP")"
    "$BIN/slipway" apps show "$APP" >/dev/null 2>&1 || "$BIN/slipway" apps create "$APP" --repo "$repo" --branch main
    echo
    "$BIN/slipway" cluster status
    echo
    cat <<EOF
$size schedulers are up (gRPC on $(grpc_addr 1) … $(grpc_addr "$size")), one agent, a registry on
127.0.0.1:$REGISTRY_PORT. .slipway/config.toml lists every member, so from the repo root:

    $BIN/slipway deploy $APP              # build and deploy the example (answers on :8080)
    $BIN/slipway cluster status           # who leads, each member's term and log
    $0 kill N       # kill -9 member N (try the leader)
    $0 start N      # bring it back; it catches up from the leader
    $0 down

EOF
}

kill_member() {
    local n="$1" pidfile="$STATE/$1/pid"
    check_member "$n"
    if running "$pidfile"; then
        kill -KILL "$(cat "$pidfile")"
        rm -f "$pidfile"
        info "scheduler $n killed (kill -9)"
    else
        warn "scheduler $n is not running"
    fi
}

status() {
    local size n
    size="$(members)"
    for n in $(seq 1 "$size"); do
        if running "$STATE/$n/pid"; then
            echo "scheduler $n: running (pid $(cat "$STATE/$n/pid")), $(grpc_addr "$n")"
        else
            echo "scheduler $n: stopped"
        fi
    done
    if running "$STATE/agent/pid"; then echo "agent: running (pid $(cat "$STATE/agent/pid"))"; else echo "agent: stopped"; fi
    if running "$STATE/realm-proxy.pid"; then echo "realm proxy: running at $REALM_ADDR"; else echo "realm proxy: stopped"; fi
    echo
    "$BIN/slipway" cluster status || true
}

down() {
    local size n
    size="$(members)"
    stop_pid agent "$STATE/agent/pid"
    for n in $(seq 1 "$size"); do stop_pid "scheduler $n" "$STATE/$n/pid"; done
    if have docker && docker info >/dev/null 2>&1; then
        local ids
        ids="$(docker service ls -q --filter "label=com.docker.stack.namespace=$STACK" 2>/dev/null || true)"
        if [[ -n "$ids" ]]; then
            info "removing the services of stack $STACK"
            # shellcheck disable=SC2086
            docker service rm $ids >/dev/null
        fi
        docker network rm "${STACK}_default" >/dev/null 2>&1 || true
    fi
    if [[ -d "$STATE/registry" ]]; then
        "$SLIPWAY_ROOT/packaging/registry.sh" stop "$STATE/registry" "$REGISTRY_PORT" || true
    fi
    stop_pid "realm proxy" "$STATE/realm-proxy.pid"
    info "stopped; state stays in .slipway/cluster (delete it for a fresh cluster)"
}

case "${1:-}" in
up) up "${2:-3}" ;;
kill)
    [[ $# -eq 2 ]] || die "usage: $0 kill N"
    kill_member "$2"
    ;;
start)
    [[ $# -eq 2 ]] || die "usage: $0 start N"
    check_member "$2"
    start_member "$2"
    ;;
status) status ;;
down) down ;;
*)
    echo "usage: $0 up [N] | kill N | start N | status | down" >&2
    exit 2
    ;;
esac
