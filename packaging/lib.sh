# shellcheck shell=bash
# packaging/lib.sh — shell helpers shared by slipway's packaging and dev scripts.
#
# Source it, do not run it:
#
#     . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Every helper returns non-zero on failure after printing WHAT failed and HOW to
# fix it, so callers running under `set -e` stop with a useful message and callers
# that are not can test the status. Nothing here changes shell options of the
# caller. Sourcing twice is harmless.
#
# Helpers:
#   info/warn/error MSG...     coloured (only on a tty) messages on stderr
#   die MSG...                 error + exit 1
#   have CMD                   is CMD on PATH?
#   need_root_or_sudo          sets $SUDO to "" (root) or "sudo"; fails otherwise
#   apt_install PKG...         installs the missing Debian packages (apt-get update once)
#   apt_install_nostart PKG... same, but keeps packaged daemons from starting (policy-rc.d)
#   ensure_docker              a Docker engine answers `docker info` (installs/starts one)
#   ensure_swarm               this engine is an active Swarm manager
#   ensure_rust                cargo (and rustfmt/clippy when asked) are present
#   running PIDFILE            is the process in PIDFILE alive?
#   start_bg NAME PIDFILE LOG CMD...  starts CMD in the background unless running
#   stop_pid NAME PIDFILE      TERM, then KILL after 10 s
#   example_repo DIR APP       examples/APP as a git repo at DIR; prints its file:// URL

if [[ -n "${SLIPWAY_LIB_SH_LOADED:-}" ]]; then
    return 0
fi
SLIPWAY_LIB_SH_LOADED=1

# Colours only when stderr is a terminal and NO_COLOR is not set.
if [[ -t 2 && -z "${NO_COLOR:-}" ]]; then
    _C_RED=$'\033[31m' _C_YEL=$'\033[33m' _C_BLU=$'\033[34m' _C_BOLD=$'\033[1m' _C_OFF=$'\033[0m'
else
    _C_RED='' _C_YEL='' _C_BLU='' _C_BOLD='' _C_OFF=''
fi

info() { printf '%s==>%s %s\n' "$_C_BLU$_C_BOLD" "$_C_OFF" "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$_C_YEL$_C_BOLD" "$_C_OFF" "$*" >&2; }
error() { printf '%serror:%s %s\n' "$_C_RED$_C_BOLD" "$_C_OFF" "$*" >&2; }
die() {
    error "$@"
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# The repository root (the parent of packaging/), whichever directory we run from.
SLIPWAY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SLIPWAY_ROOT

# need_root_or_sudo: sets SUDO to the prefix that runs a command as root.
need_root_or_sudo() {
    if [[ "$(id -u)" -eq 0 ]]; then
        SUDO=''
    elif have sudo && sudo -n true 2>/dev/null; then
        SUDO='sudo'
    elif have sudo && [[ -t 0 ]]; then
        SUDO='sudo' # will prompt for a password
    else
        error "this step needs root: run it as root, or install sudo and allow this user to use it"
        return 1
    fi
    export SUDO
}

_SLIPWAY_APT_UPDATED=''

# pkg_installed PKG: is the Debian package installed (not just known)?
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if ! have apt-get; then
        error "missing packages: ${missing[*]} (and no apt-get here: install them with this system's package manager)"
        return 1
    fi
    need_root_or_sudo || return 1
    if [[ -z "$_SLIPWAY_APT_UPDATED" ]]; then
        info "apt-get update"
        if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; then
            error "apt-get update failed: check the network and /etc/apt/sources.list*, then rerun"
            return 1
        fi
        _SLIPWAY_APT_UPDATED=1
    fi
    info "installing ${missing[*]}"
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null; then
        error "apt-get install ${missing[*]} failed: run it by hand to see why (apt-get install ${missing[*]})"
        return 1
    fi
}

# apt_install_nostart PKG...: like apt_install, but a package's init script or unit is
# not started by the install (Debian's policy-rc.d convention). Used for
# docker-registry, whose packaged service would otherwise grab port 5000.
apt_install_nostart() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    need_root_or_sudo || return 1
    local policy=/usr/sbin/policy-rc.d ours='' rc=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\n# slipway: temporary, keeps daemons from starting on install\nexit 101\n' |
            $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy" && ours=1
    fi
    apt_install "${missing[@]}" || rc=$?
    if [[ -n "$ours" ]]; then
        $SUDO rm -f "$policy"
    fi
    return "$rc"
}

# ensure_docker: `docker info` works. If not, installs docker.io when missing and
# starts dockerd in the background (log: /var/log/dockerd-slipway.log), waiting up to 60 s.
ensure_docker() {
    if have docker && docker info >/dev/null 2>&1; then
        return 0
    fi
    if ! have docker || ! have dockerd; then
        apt_install docker.io || return 1
    fi
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    need_root_or_sudo || return 1
    local log=/var/log/dockerd-slipway.log
    if pgrep -x dockerd >/dev/null 2>&1; then
        info "dockerd is running but not answering yet; waiting"
    else
        info "starting dockerd in the background (log: $log)"
        # setsid: the daemon must outlive this script and its process group.
        $SUDO sh -c "setsid dockerd >>'$log' 2>&1 </dev/null &"
    fi
    local i
    for ((i = 0; i < 60; i++)); do
        if docker info >/dev/null 2>&1; then
            info "dockerd is up"
            return 0
        fi
        sleep 1
    done
    error "the Docker engine did not answer within 60 s. Last lines of $log:"
    $SUDO tail -n 20 "$log" >&2 2>/dev/null || true
    error "fix: look at $log; if this user is not root, add it to the docker group (usermod -aG docker \$USER) and log in again"
    return 1
}

# ensure_swarm: the local engine is an active Swarm manager. Initialises a single-node
# swarm advertised on 127.0.0.1, or on the default route's address if Docker refuses that.
# Safe to run concurrently (flock on /tmp/slipway-swarm.lock).
ensure_swarm() {
    local state
    state="$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || true)"
    [[ "$state" == active ]] && return 0
    (
        if have flock; then
            flock -w 60 9 || warn "could not lock /tmp/slipway-swarm.lock within 60 s; going on"
        fi
        state="$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || true)"
        [[ "$state" == active ]] && exit 0
        if [[ "$state" == pending || "$state" == error ]]; then
            error "this engine's swarm state is '$state'. Fix: 'docker swarm leave --force', then rerun"
            exit 1
        fi
        info "initialising a single-node swarm (advertise address 127.0.0.1)"
        local out
        if out="$(docker swarm init --advertise-addr 127.0.0.1 2>&1)"; then
            exit 0
        fi
        warn "docker swarm init --advertise-addr 127.0.0.1 failed: $out"
        local dev addr
        dev="$(ip route show default 2>/dev/null | awk '/^default/ { for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')"
        addr="$(ip -4 -o addr show dev "${dev:-none}" 2>/dev/null | awk '{ sub(/\/.*/, "", $4); print $4; exit }')"
        if [[ -z "$addr" ]]; then
            error "swarm init failed and no default-route address to retry with. Fix: docker swarm init --advertise-addr <this host's IP>"
            exit 1
        fi
        info "retrying: docker swarm init --advertise-addr $addr (interface $dev)"
        if ! out="$(docker swarm init --advertise-addr "$addr" 2>&1)"; then
            error "docker swarm init --advertise-addr $addr failed: $out"
            error "fix: docker swarm init --advertise-addr <this host's IP> (or 'docker swarm leave --force' first)"
            exit 1
        fi
    ) 9>>/tmp/slipway-swarm.lock || return 1
    info "swarm: $(docker info --format '{{.Swarm.LocalNodeState}} (node {{.Swarm.NodeID}}, address {{.Swarm.NodeAddr}})' 2>/dev/null)"
}

# ensure_rust [COMPONENT...]: cargo is on PATH (also looks in ~/.cargo/bin), and each
# named cargo subcommand (fmt, clippy) works.
ensure_rust() {
    if ! have cargo && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
        export PATH
    fi
    if ! have cargo; then
        error "cargo not found. Fix: install Rust with rustup:"
        error "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy"
        error "  then: . \"\$HOME/.cargo/env\" (or open a new shell) and rerun"
        return 1
    fi
    local sub
    for sub in "$@"; do
        if ! cargo "$sub" --version >/dev/null 2>&1; then
            error "'cargo $sub' is not installed. Fix: rustup component add $( [[ $sub == fmt ]] && echo rustfmt || echo "$sub")"
            return 1
        fi
    done
}

# running PIDFILE: is the process in PIDFILE alive?
running() {
    [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# start_bg NAME PIDFILE LOG COMMAND...: starts COMMAND in the background unless running.
start_bg() {
    local name="$1" pidfile="$2" log="$3"
    shift 3
    if running "$pidfile"; then
        info "$name already running (pid $(cat "$pidfile"))"
        return 0
    fi
    info "starting $name (log: ${log#"$SLIPWAY_ROOT"/})"
    nohup "$@" >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

# stop_pid NAME PIDFILE: stops the process (TERM, then KILL after 10 s); removes PIDFILE.
stop_pid() {
    local name="$1" pidfile="$2" i
    if running "$pidfile"; then
        info "stopping $name"
        kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
        for i in $(seq 1 50); do
            running "$pidfile" || break
            sleep 0.2
        done
        running "$pidfile" && kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

# example_repo DIR APP: examples/APP committed into a git repository at DIR (each call
# commits what changed), for the agent to clone; prints its file:// URL.
example_repo() {
    local repo="$1" app="$2"
    mkdir -p "$repo"
    # Mirror examples/APP, keeping the repo's history: each call commits what changed.
    (cd "$SLIPWAY_ROOT/examples/$app" && tar -cf - .) | (cd "$repo" && tar -xf -)
    if [[ ! -d "$repo/.git" ]]; then
        git -C "$repo" init -q -b main
        git -C "$repo" config user.name "slipway example"
        git -C "$repo" config user.email "example@slipway.invalid"
    fi
    git -C "$repo" add -A
    git -C "$repo" diff --cached --quiet || git -C "$repo" commit -q -m "example app from examples/$app"
    echo "file://$repo"
}
