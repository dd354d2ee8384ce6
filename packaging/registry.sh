#!/usr/bin/env bash
# packaging/registry.sh — a local Docker registry for development and tests.
#
# Usage: packaging/registry.sh start DIR PORT [REALM BUNDLE_PEM]
#        packaging/registry.sh stop|status DIR PORT
#
# Runs Debian's `docker-registry` (Distribution 2.8) as a plain background process,
# not through its packaged systemd/init service, listening on 127.0.0.1:PORT (Docker
# treats 127.0.0.0/8 registries as insecure, so plain http works). With REALM and
# BUNDLE_PEM it takes tokens from slipway (`auth: token`): REALM is a scheduler's
# http://HOST:PORT/v2/token, BUNDLE_PEM the cluster's registry token signer (a
# scheduler's <data_dir>/pki/registry-signer.pem, or `slipway-scheduler --config …
# registry-bundle --out FILE`), which signs the certificates that sign the tokens. Not
# the cluster CA's ca.pem: that signs every agent's and operator's certificate too.
# Without them it takes anyone (for clusters running with tls.insecure only).
#
#   DIR/config.yml     written on every start
#   DIR/data/          blob and manifest storage (deletes enabled, for slipway gc)
#   DIR/registry.pid   pid of the running registry
#   DIR/registry.log   its log (level warn; the per-request access log is off unless
#                      SLIPWAY_REGISTRY_ACCESSLOG=1)
#
# start is idempotent: if the registry in DIR is already running and answering with
# the same configuration, it says so and exits 0 (with another, it is restarted).
# start waits until http://127.0.0.1:PORT/v2/ answers (30 s,
# SLIPWAY_REGISTRY_WAIT to change) and otherwise fails showing the log's tail.
# status exits 0 when running and answering, 3 when stopped, 1 when running but
# not answering. The package is installed with apt if missing.
set -euo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    echo "usage: $0 start DIR PORT [REALM BUNDLE_PEM] | stop DIR PORT | status DIR PORT" >&2
    exit 2
}

[[ $# -eq 3 || ($# -eq 5 && "$1" == start) ]] || usage
cmd="$1" port="$3" realm="${4:-}" bundle_pem="${5:-}"
if [[ -n "$realm" ]]; then
    [[ "$realm" =~ ^https?://[^/]+/v2/token$ ]] || die "REALM must be http://HOST:PORT/v2/token (a scheduler's HTTP side), not '$realm'"
    [[ -s "$bundle_pem" ]] || die "BUNDLE_PEM '$bundle_pem' is missing or empty. Fix: start the scheduler first (it writes <data_dir>/pki/registry-signer.pem), or run 'slipway-scheduler --config FILE registry-bundle --out $bundle_pem'"
    if have openssl && ! openssl x509 -noout -subject -in "$bundle_pem" 2>/dev/null | grep -q "slipway registry token signer"; then
        warn "BUNDLE_PEM '$bundle_pem' is not a slipway token signer (the cluster CA?): the registry takes tokens from any key certified by it. Use a scheduler's <data_dir>/pki/registry-signer.pem"
    fi
    bundle_pem="$(cd "$(dirname "$bundle_pem")" && pwd)/$(basename "$bundle_pem")"
fi
[[ "$port" =~ ^[0-9]+$ && "$port" -ge 1 && "$port" -le 65535 ]] || die "PORT must be a number 1-65535, not '$port'"
mkdir -p "$2"
dir="$(cd "$2" && pwd)"
pidfile="$dir/registry.pid"
logfile="$dir/registry.log"
config="$dir/config.yml"
url="http://127.0.0.1:$port/v2/"
wait_secs="${SLIPWAY_REGISTRY_WAIT:-30}"

# The pid from DIR/registry.pid if that process is alive and is a registry.
running_pid() {
    local pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q registry "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

# /v2/ answers 200, or 401 naming the token realm when it runs with token auth.
answers() {
    local code
    code="$(curl -sS -m 2 -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true)"
    [[ "$code" == 200 || "$code" == 401 ]]
}


log_tail() {
    if [[ -s "$logfile" ]]; then
        error "last lines of $logfile:"
        tail -n 20 "$logfile" >&2
    fi
}

find_binary() {
    if have docker-registry; then
        command -v docker-registry
    elif [[ -x /usr/bin/docker-registry ]]; then
        echo /usr/bin/docker-registry
    else
        return 1
    fi
}

# The configuration for this start, on stdout.
render_config() {
    local accesslog_disabled=true
    [[ "${SLIPWAY_REGISTRY_ACCESSLOG:-}" == 1 ]] && accesslog_disabled=false
    cat <<EOF
# Written by slipway's packaging/registry.sh; rewritten on every start.
version: 0.1
log:
  level: warn
  accesslog:
    disabled: $accesslog_disabled
  fields:
    service: slipway-registry
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  # No storage.cache: an in-memory blob descriptor cache would answer for blobs
  # garbage-collect swept (slipway gc), and pushes would skip uploading them.
http:
  addr: 127.0.0.1:$port
EOF
    if [[ -n "$realm" ]]; then
        # The bundle's digest makes a new bundle at the same path a changed config (restart).
        cat <<EOF
# rootcertbundle sha256: $(sha256sum "$bundle_pem" | cut -d' ' -f1)
auth:
  token:
    realm: $realm
    service: slipway-registry
    issuer: slipway
    rootcertbundle: $bundle_pem
EOF
    fi
}

start() {
    local pid bin
    if running_pid >/dev/null && [[ "$(render_config)" != "$(cat "$config" 2>/dev/null)" ]]; then
        info "the registry's configuration changed; restarting it"
        stop
    fi
    if pid="$(running_pid)"; then
        if answers; then
            info "registry already running (pid $pid) at 127.0.0.1:$port, data in $dir/data"
            return 0
        fi
        # Maybe it is still starting (a concurrent start): wait for it below.
        info "registry (pid $pid) is running but not answering yet; waiting"
    else
        if ! bin="$(find_binary)"; then
            apt_install_nostart docker-registry ||
                die "cannot install docker-registry. Fix: apt-get install docker-registry"
            bin="$(find_binary)" || die "docker-registry not found after installing it. Fix: apt-get install --reinstall docker-registry"
        fi
        if answers; then
            die "something else already answers at $url. Fix: pick another PORT, or stop that registry"
        fi
        mkdir -p "$dir/data"
        render_config >"$config"
        # setsid + nohup: the registry outlives this script and its terminal.
        setsid nohup "$bin" serve "$config" >>"$logfile" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$pidfile"
    fi
    local deadline=$((SECONDS + wait_secs))
    while ((SECONDS < deadline)); do
        if answers; then
            info "registry running (pid $pid) at 127.0.0.1:$port, data in $dir/data"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            error "the registry exited during start (pid $pid)."
            log_tail
            rm -f "$pidfile"
            error "fix: read the log above (port $port taken? 'ss -ltnp | grep :$port'), then rerun"
            exit 1
        fi
        sleep 0.2
    done
    error "the registry (pid $pid) did not answer $url within $wait_secs s."
    log_tail
    error "fix: read the log above; stop it with: $0 stop $dir $port"
    exit 1
}

stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        rm -f "$pidfile"
        info "registry in $dir is not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "registry (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    info "registry (pid $pid) stopped"
}

status() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "stopped (no live registry for $pidfile)"
        exit 3
    fi
    if answers; then
        echo "running (pid $pid) at 127.0.0.1:$port, data in $dir/data"
        exit 0
    fi
    echo "running (pid $pid) but $url does not answer (see $logfile)"
    exit 1
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
