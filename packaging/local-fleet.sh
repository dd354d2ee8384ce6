#!/usr/bin/env bash
# packaging/local-fleet.sh — a fleet on this one machine: N Docker engines, each a
# dockerd in its own network namespace, joined into one Swarm; a registry all of them
# reach; one slipway scheduler and one agent per engine. The same fleet the tier-30
# tests start (tests/src/fleet.rs), for trying by hand. Needs root.
#
# Usage: packaging/local-fleet.sh up [N]        start N engines (default 3), the
#                                               registry, the scheduler and N agents
#        packaging/local-fleet.sh kill-agent N  kill -9 agent N
#        packaging/local-fleet.sh start-agent N start agent N again
#        packaging/local-fleet.sh status        processes, Swarm nodes, `slipway nodes`
#        packaging/local-fleet.sh down          stop and remove everything (also after
#                                               a partial `up`)
#
# Layout (lab index K = $SLIPWAY_FLEET_LAB, default 251: tests take 1 to 250):
#   bridge slwbrK, host address 10.231.K.1 — the registry listens there, on
#     $SLIPWAY_FLEET_REGISTRY_PORT (default 5002), with token auth: the scheduler's
#     HTTP side (also there) is its token server
#   engine n: network namespace slwK-n, address 10.231.K.(10+n), host name node-n;
#     everything under .slipway/fleet/<n>/: docker.sock (docker -H unix://… reaches
#     it from the host), daemon.json, data/, exec/, pid, log; its agent's
#     agent.toml, agent/ (state), builds/ (build_root), agent.pid, agent.log
#   engine 1 is the Swarm manager; the others join as workers
#   the scheduler on 127.0.0.1:$SLIPWAY_FLEET_GRPC_PORT (default 7420; HTTP — the
#     fleet page, /metrics, registry tokens — on the next port of 10.231.K.1); agent
#     n's /metrics on 127.0.0.1, that port + 10 + n. It deploys through engine 1's
#     socket; the router (Caddy, on every engine) publishes port 8080 in host mode:
#     an app answers on every engine's address with Host: <app>.localhost,
#     e.g. curl -H 'Host: hello.localhost' http://10.231.K.12:8080/
#   .slipway/config.toml points the slipway CLI at it
#
# Engines run with --bridge=none --iptables=false --ip-masq=false; services live on
# Swarm overlay networks, and the lab's subnet is an insecure registry for every
# engine. Each engine starts with slipway/busybox:latest loaded from the host engine
# (nothing can be pulled from the internet here).
set -euo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SLIPWAY_ROOT"

STATE="$SLIPWAY_ROOT/.slipway/fleet"
K="${SLIPWAY_FLEET_LAB:-251}"
REGISTRY_PORT="${SLIPWAY_FLEET_REGISTRY_PORT:-5002}"
GRPC_PORT="${SLIPWAY_FLEET_GRPC_PORT:-7420}"
GRPC_ADDR="127.0.0.1:$GRPC_PORT"
HOST_IP="10.231.$K.1"
# On the bridge: the engines ask the scheduler's HTTP side for registry tokens.
HTTP_ADDR="$HOST_IP:$((GRPC_PORT + 1))"
STACK=slipway-fleet
APP=hello
BIN="$SLIPWAY_ROOT/target/debug"
BRIDGE="slwbr$K"
SUBNET="10.231.$K.0/24"
REGISTRY_ADDR="$HOST_IP:$REGISTRY_PORT"
CLI_CONFIG="$SLIPWAY_ROOT/.slipway/config.toml"
CLI_CONFIG_HEADER="# slipway CLI config, written by packaging/local-fleet.sh."

node_ip() { echo "10.231.$K.$((10 + $1))"; }
netns() { echo "slw$K-$1"; }
sock() { echo "$STATE/$1/docker.sock"; }
dk() {
    local n="$1"
    shift
    docker -H "unix://$(sock "$n")" "$@"
}

# The engine count `up` chose, remembered for the other commands.
size() {
    [[ -f "$STATE/size" ]] || die "no local fleet here: run \`$0 up\` first"
    cat "$STATE/size"
}

check_engine() {
    local n="$1" total
    total="$(size)"
    [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= total)) || die "no engine $n: this fleet has engines 1 to $total"
}

# --- the network lab: a bridge, one namespace per engine ---------------------

# delete_forward_rule -i|-o: deletes one of the lab's host FORWARD rules; fails when none is left.
delete_forward_rule() {
    iptables -w -D FORWARD "$1" "$BRIDGE" -m comment --comment "slipway-netlab-$K" -j ACCEPT 2>/dev/null
}

make_lab() {
    local total="$1" n ns
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        info "bridge $BRIDGE with $HOST_IP/24"
        ip link add "$BRIDGE" type bridge
        ip addr add "$HOST_IP/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
        # Docker's FORWARD policy is DROP, and bridged frames traverse FORWARD when
        # br_netfilter is loaded: let the lab's traffic through.
        iptables -w -I FORWARD 1 -i "$BRIDGE" -m comment --comment "slipway-netlab-$K" -j ACCEPT
        iptables -w -I FORWARD 1 -o "$BRIDGE" -m comment --comment "slipway-netlab-$K" -j ACCEPT
    fi
    for n in $(seq 1 "$total"); do
        ns="$(netns "$n")"
        [[ -e "/var/run/netns/$ns" ]] && continue
        ip netns add "$ns"
        ip link add "slwv$K-$n" type veth peer name "slwp$K-$n"
        ip link set "slwv$K-$n" master "$BRIDGE" up
        ip link set "slwp$K-$n" netns "$ns"
        ip -n "$ns" link set "slwp$K-$n" name eth0
        ip -n "$ns" addr add "$(node_ip "$n")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" route add default via "$HOST_IP"
    done
}

remove_lab() {
    local ns n
    for ns in $(ip netns list 2>/dev/null | awk -v p="slw$K-" 'index($1, p) == 1 { print $1 }'); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    for n in $(ip -o link show 2>/dev/null | awk -F': ' -v p="slwv$K-" 'index($2, p) == 1 { sub(/@.*/, "", $2); print $2 }'); do
        ip link del "$n" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    while delete_forward_rule -i; do :; done
    while delete_forward_rule -o; do :; done
}

# --- the registry, on the bridge address ---------------------------------------

# Token auth, the scheduler its token server: started after the scheduler, which
# writes its token signer's root (the rootcertbundle) into its data dir at start.
start_registry() {
    local dir="$STATE/registry" bin i
    mkdir -p "$dir/data"
    bin="$(command -v docker-registry || echo /usr/bin/docker-registry)"
    cat >"$dir/config.yml" <<EOF
# Written by packaging/local-fleet.sh: the fleet's registry, on the lab's bridge.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
auth:
  token:
    realm: http://$HTTP_ADDR/v2/token
    service: slipway-registry
    issuer: slipway
    rootcertbundle: $STATE/scheduler/data/pki/registry-signer.pem
EOF
    start_bg registry "$dir/pid" "$dir/log" "$bin" serve "$dir/config.yml"
    for i in $(seq 1 150); do
        # 401 naming the realm: it runs and wants tokens.
        [[ "$(curl -sS -m 2 -o /dev/null -w '%{http_code}' "http://$REGISTRY_ADDR/v2/" 2>/dev/null)" == 401 ]] && return 0
        running "$dir/pid" || break
        sleep 0.2
    done
    error "the registry does not answer http://$REGISTRY_ADDR/v2/; its log says:"
    tail -n 20 "$dir/log" >&2 || true
    return 1
}

# --- engines ----------------------------------------------------------------

write_daemon_json() {
    local n="$1" dir="$STATE/$1" driver="$2"
    cat >"$dir/daemon.json" <<EOF
{
  "data-root": "$dir/data",
  "exec-root": "$dir/exec",
  "pidfile": "$dir/exec/dockerd.pid",
  "hosts": ["unix://$dir/docker.sock"],
  "storage-driver": "$driver",
  "bridge": "none",
  "iptables": false,
  "ip-masq": false,
  "insecure-registries": ["$SUBNET", "http://$REGISTRY_ADDR"],
  "containerd-namespace": "slw$K-$n",
  "cgroup-parent": "/slipway-fleet-$K-$n",
  "exec-opts": ["native.cgroupdriver=cgroupfs"],
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "2" }
}
EOF
}

start_engine() {
    local n="$1" dir="$STATE/$1"
    mkdir -p "$dir/data" "$dir/exec"
    # A fresh dockerd must not find the pid of a dead containerd and wait for it.
    running "$dir/pid" || rm -f "$dir/exec/containerd/containerd.pid" "$dir/docker.sock"
    # Its own UTS namespace, so the Swarm nodes are node-1, node-2, …
    start_bg "engine $n" "$dir/pid" "$dir/log" \
        nsenter --net="/var/run/netns/$(netns "$n")" -- unshare --uts -- \
        sh -c 'hostname "$0" && exec dockerd --config-file "$1"' "node-$n" "$dir/daemon.json"
}

wait_engine() {
    local n="$1" i
    for i in $(seq 1 300); do
        dk "$n" version >/dev/null 2>&1 && return 0
        running "$STATE/$n/pid" || break
        sleep 0.2
    done
    error "engine $n does not answer on $(sock "$n"); its log says:"
    tail -n 20 "$STATE/$n/log" >&2 || true
    return 1
}

swarm_state() { dk "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || true; }

form_swarm() {
    local total="$1" n token
    if [[ "$(swarm_state 1)" != active ]]; then
        info "engine 1: docker swarm init (manager, $(node_ip 1))"
        dk 1 swarm init --advertise-addr "$(node_ip 1)" --dispatcher-heartbeat 1s >/dev/null
    fi
    token="$(dk 1 swarm join-token -q worker)"
    for n in $(seq 2 "$total"); do
        if [[ "$(swarm_state "$n")" != active ]]; then
            info "engine $n: docker swarm join (worker, $(node_ip "$n"))"
            dk "$n" swarm join --advertise-addr "$(node_ip "$n")" --token "$token" "$(node_ip 1):2377" >/dev/null
        fi
    done
    local i ready
    for i in $(seq 1 150); do
        ready="$(dk 1 node ls --format '{{.Status}}' 2>/dev/null | grep -c '^Ready$' || true)"
        ((ready == total)) && return 0
        sleep 0.2
    done
    error "the Swarm shows $ready Ready nodes, not $total:"
    dk 1 node ls >&2 || true
    return 1
}

# Every engine gets the base image and the router's image from the host engine.
load_base_image() {
    local total="$1" n image tar
    for image in slipway/busybox:latest slipway.invalid/router:latest; do
        tar="$STATE/image.tar"
        for n in $(seq 1 "$total"); do
            dk "$n" image inspect "$image" >/dev/null 2>&1 && continue
            [[ -f "$tar" ]] || docker save -o "$tar" "$image"
            info "engine $n: loading $image"
            dk "$n" load -q -i "$tar" >/dev/null
        done
        rm -f "$tar"
    done
}

# Kills what is left of the engines: processes in their cgroups, processes naming
# the fleet's directory, and unmounts everything under it; removes the cgroups.
scrub_engines() {
    local cg pids
    pids="$( (for cg in /sys/fs/cgroup/*/slipway-fleet-"$K"-* /sys/fs/cgroup/slipway-fleet-"$K"-*; do
        [[ -d "$cg" ]] && find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
        grep -lsF "$STATE/" /proc/[0-9]*/cmdline 2>/dev/null | awk -F/ '{ print $3 }') | sort -u | grep -vx "$$" || true)"
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.5
    fi
    local i
    for i in 1 2 3; do
        awk -v d="$STATE/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null || true
        done
    done
    for cg in /sys/fs/cgroup/*/slipway-fleet-"$K"-* /sys/fs/cgroup/slipway-fleet-"$K"-*; do
        [[ -d "$cg" ]] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    return 0
}

# --- slipway ------------------------------------------------------------------

write_configs() {
    local total="$1" n
    mkdir -p "$STATE/scheduler/data"
    cat >"$STATE/scheduler/scheduler.toml" <<EOF
# Written by packaging/local-fleet.sh: one scheduler on the host, deploying through
# engine 1 (the Swarm manager).
node_id = 1
listen = "$GRPC_ADDR"
http_listen = "$HTTP_ADDR"
data_dir = "$STATE/scheduler/data"

[registry]
addr = "$REGISTRY_ADDR"

[deploy]
stack = "$STACK"
docker_socket = "$(sock 1)"
# The kernel here has no IPVS for the routing mesh: ports publish on each node.
publish_mode = "host"

[router]
# Every engine's router answers for every app: http://<engine address>:8080/ with
# Host: <app>.localhost (curl -H 'Host: hello.localhost' http://10.231.K.12:8080/).
domain = "localhost"
http_port = 8080

[agents]
report_interval_secs = 2
down_after_secs = 10

[placement]
min_free_bytes = 536870912
EOF
    for n in $(seq 1 "$total"); do
        mkdir -p "$STATE/$n/agent" "$STATE/$n/builds"
        cat >"$STATE/$n/agent.toml" <<EOF
# Written by packaging/local-fleet.sh: the agent of engine $n, in the host's network
# namespace, building with engine $n through its socket.
schedulers = ["$GRPC_ADDR"]
name = "node-$n"
state_dir = "$STATE/$n/agent"
build_root = "$STATE/$n/builds"
docker_socket = "$(sock "$n")"
build_slots = 2
metrics_listen = "127.0.0.1:$((GRPC_PORT + 10 + n))"
EOF
    done
}

# The operator's certificate (made once, offline, from the CA in the scheduler's data
# dir once it has started) and the CLI config naming it.
write_cli_config() {
    [[ -f "$STATE/admin/cert.pem" ]] ||
        "$BIN/slipway-scheduler" --config "$STATE/scheduler/scheduler.toml" admin-cert "$(id -un)" \
            --out "$STATE/admin" >/dev/null
    cat >"$CLI_CONFIG" <<EOF
$CLI_CONFIG_HEADER
schedulers = ["$GRPC_ADDR"]

[tls]
ca = "fleet/admin/ca.pem"
cert = "fleet/admin/cert.pem"
key = "fleet/admin/key.pem"
EOF
}

start_scheduler() {
    start_bg scheduler "$STATE/scheduler/pid" "$STATE/scheduler/log" \
        "$BIN/slipway-scheduler" --config "$STATE/scheduler/scheduler.toml"
    local i
    for i in $(seq 1 150); do
        curl -fsS "http://$HTTP_ADDR/readyz" >/dev/null 2>&1 && return 0
        running "$STATE/scheduler/pid" || break
        sleep 0.2
    done
    error "the scheduler did not become ready; its log says:"
    tail -n 30 "$STATE/scheduler/log" >&2 || true
    return 1
}

# start_agent N: the agent joins with the cluster's agent token (in its environment,
# not on its command line) the first time; later its certificate is in its state dir.
start_agent() {
    local n="$1"
    SLIPWAY_JOIN_TOKEN="$("$BIN/slipway" cluster token agent)"
    export SLIPWAY_JOIN_TOKEN
    start_bg "agent $n" "$STATE/$n/agent.pid" "$STATE/$n/agent.log" \
        "$BIN/slipway-agent" --config "$STATE/$n/agent.toml"
    unset SLIPWAY_JOIN_TOKEN
}

wait_agents() {
    local total="$1" i ready=0
    for i in $(seq 1 100); do
        ready="$("$BIN/slipway" nodes --json 2>/dev/null | grep -c '"status": "ready"' || true)"
        ((ready >= total)) && return 0
        sleep 0.3
    done
    error "$ready of $total agents report to the scheduler; the agents' logs say:"
    tail -n 5 "$STATE"/*/agent.log >&2 || true
    return 1
}

# --- commands -------------------------------------------------------------------

up() {
    local total="${1:-3}" n started=$SECONDS
    [[ "$total" =~ ^[0-9]+$ ]] && ((total >= 1 && total <= 9)) || die "up N: N must be 1 to 9, not '$total'"
    [[ "$(id -u)" -eq 0 ]] || die "a local fleet needs root (network namespaces, a bridge, iptables): run it as root"
    if [[ -f "$STATE/size" && "$(cat "$STATE/size")" != "$total" ]]; then
        die "a $(cat "$STATE/size")-engine fleet is up in .slipway/fleet: \`$0 down\` first"
    fi
    info "installing what is missing"
    local pkgs=(busybox-static curl iproute2 iptables)
    have git || pkgs+=(git)
    have cc || pkgs+=(build-essential)
    apt_install "${pkgs[@]}"
    apt_install_nostart docker-registry
    ensure_rust
    ensure_docker
    "$SLIPWAY_ROOT/packaging/base-image.sh"
    "$SLIPWAY_ROOT/packaging/router-image.sh"
    info "building slipway (cargo build)"
    cargo build -q -p slipway-scheduler -p slipway-agent -p slipway-cli --bins

    mkdir -p "$STATE"
    echo "$total" >"$STATE/size"
    local driver
    driver="${SLIPWAY_FLEET_STORAGE_DRIVER:-$(docker info --format '{{.Driver}}' 2>/dev/null || echo vfs)}"
    make_lab "$total"
    for n in $(seq 1 "$total"); do
        mkdir -p "$STATE/$n"
        write_daemon_json "$n" "$driver"
        start_engine "$n"
    done
    for n in $(seq 1 "$total"); do wait_engine "$n"; done
    load_base_image "$total"
    form_swarm "$total"

    write_configs "$total"
    start_scheduler
    start_registry
    write_cli_config
    for n in $(seq 1 "$total"); do start_agent "$n"; done
    wait_agents "$total"
    local repo
    repo="$(example_repo "$STATE/example-repo" "$APP")"
    "$BIN/slipway" apps show "$APP" >/dev/null 2>&1 || "$BIN/slipway" apps create "$APP" --repo "$repo" --branch main

    echo
    dk 1 node ls
    echo
    "$BIN/slipway" nodes
    echo
    cat <<EOF
A $total-engine fleet is up ($((SECONDS - started)) s):
  engines     $(for n in $(seq 1 "$total"); do printf 'node-%s %s  ' "$n" "$(node_ip "$n")"; done)
              sockets .slipway/fleet/<N>/docker.sock (storage driver $driver); engine 1 manages the Swarm
  registry    $REGISTRY_ADDR
  scheduler   $GRPC_ADDR (HTTP $HTTP_ADDR), deploying through engine 1
  agents      node-1 … node-$total, one per engine, in the host's network namespace;
              agent N serves /metrics on 127.0.0.1:$((GRPC_PORT + 10))+N
  fleet page  http://$HTTP_ADDR/ (any user; password: the token in $STATE/scheduler/data/http-token)
.slipway/config.toml points the CLI at the scheduler. From the repo root:

    $BIN/slipway deploy $APP        # built by some agent; answers on :8080 of the engine running it
    docker -H unix://$(sock 1) service ps ${STACK}_$APP     # which engine that is
    $BIN/slipway nodes
    docker -H unix://$(sock 2) ps
    $0 kill-agent 2                     # the scheduler marks node-2 down after 10 s
    $0 start-agent 2
    $0 down

EOF
}

kill_agent() {
    local n="$1" pidfile="$STATE/$1/agent.pid"
    check_engine "$n"
    if running "$pidfile"; then
        kill -KILL "$(cat "$pidfile")"
        rm -f "$pidfile"
        info "agent $n killed (kill -9)"
    else
        warn "agent $n is not running"
    fi
}

status() {
    local total n
    total="$(size)"
    for n in $(seq 1 "$total"); do
        local engine=stopped agent=stopped
        running "$STATE/$n/pid" && engine="running (pid $(cat "$STATE/$n/pid")), swarm $(swarm_state "$n")"
        running "$STATE/$n/agent.pid" && agent="running (pid $(cat "$STATE/$n/agent.pid"))"
        echo "engine $n ($(node_ip "$n")): $engine; agent: $agent"
    done
    if running "$STATE/registry/pid"; then echo "registry: running at $REGISTRY_ADDR"; else echo "registry: stopped"; fi
    if running "$STATE/scheduler/pid"; then echo "scheduler: running at $GRPC_ADDR"; else echo "scheduler: stopped"; fi
    echo
    dk 1 node ls 2>/dev/null || true
    echo
    "$BIN/slipway" nodes 2>/dev/null || true
}

down() {
    local n
    [[ "$(id -u)" -eq 0 ]] || die "run it as root"
    # Each step in parallel over the engines: every stop may take seconds.
    for n in "$STATE"/[0-9]*; do
        [[ -d "$n" ]] && stop_pid "agent ${n##*/}" "$n/agent.pid" &
    done
    stop_pid scheduler "$STATE/scheduler/pid" &
    wait
    for n in "$STATE"/[0-9]*; do
        [[ -S "$n/docker.sock" ]] && timeout 20 docker -H "unix://$n/docker.sock" swarm leave --force >/dev/null 2>&1 &
    done
    wait
    for n in "$STATE"/[0-9]*; do
        [[ -d "$n" ]] && stop_pid "engine ${n##*/}" "$n/pid" &
    done
    stop_pid registry "$STATE/registry/pid" &
    wait
    scrub_engines
    remove_lab
    if awk -v d="$STATE/" 'index($5, d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        error "mounts remain under $STATE; not deleting it:"
        awk -v d="$STATE/" 'index($5, d) == 1 { print "    " $5 }' /proc/self/mountinfo >&2
        return 1
    fi
    rm -rf "$STATE"
    if [[ -f "$CLI_CONFIG" ]] && head -n 1 "$CLI_CONFIG" | grep -qxF "$CLI_CONFIG_HEADER"; then
        rm -f "$CLI_CONFIG"
    fi
    info "the local fleet is gone (engines, namespaces, bridge, registry, scheduler, agents, .slipway/fleet)"
}

case "${1:-}" in
up) up "${2:-3}" ;;
kill-agent)
    [[ $# -eq 2 ]] || die "usage: $0 kill-agent N"
    kill_agent "$2"
    ;;
start-agent)
    [[ $# -eq 2 ]] || die "usage: $0 start-agent N"
    check_engine "$2"
    start_agent "$2"
    ;;
status) status ;;
down) down ;;
*)
    echo "usage: $0 up [N] | kill-agent N | start-agent N | status | down" >&2
    exit 2
    ;;
esac
