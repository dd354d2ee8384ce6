#!/usr/bin/env bash
# packaging/test.sh — slipway's whole check, exactly what CI runs (.ci/run calls it).
#
# Usage: packaging/test.sh [ARGS FOR cargo test...]
#   e.g. packaging/test.sh -p slipway-tests --test t00_fixtures
#
# From a fresh clone on Debian 12 (as root, or with sudo):
#   1. installs what the tests need, only what is missing: git, curl, busybox-static,
#      docker-registry and caddy (their packaged services are not started), chromium
#      (the fleet page's tests), a C toolchain and pkg-config if absent;
#   2. makes sure cargo (with fmt and clippy) is there, a Docker engine answers and is
#      an active Swarm manager, and the images slipway/busybox:latest (base) and
#      slipway.invalid/router:latest (Caddy, the stacks' router) exist;
#   3. cargo fmt --check, cargo clippy -D warnings, cargo test (all tiers; Docker
#      tests fail instead of skipping when SLIPWAY_REQUIRE_DOCKER=1, as in CI).
# Prints each step's time, and a summary at the end, also on failure.
#
# Environment: SLIPWAY_TEST_TIMEOUT (seconds for the cargo test step, default 4200);
#              SLIPWAY_TEST_SETUP_ONLY=1 stops after the set-up (steps 1-2).
set -euo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SLIPWAY_ROOT"

STEP_NAMES=()
STEP_TIMES=()
STARTED=$SECONDS
CURRENT_STEP=''

summary() {
    local rc=$? i
    {
        echo
        echo "---- packaging/test.sh: time per step ----"
        for i in "${!STEP_NAMES[@]}"; do
            printf '  %-28s %5ss\n' "${STEP_NAMES[$i]}" "${STEP_TIMES[$i]}"
        done
        printf '  %-28s %5ss\n' total "$((SECONDS - STARTED))"
    } >&2
    if [[ $rc -ne 0 ]]; then
        error "packaging/test.sh FAILED (exit $rc) in step: ${CURRENT_STEP:-set-up}"
    else
        info "packaging/test.sh: all steps passed"
    fi
}
trap summary EXIT

# step NAME COMMAND...: runs COMMAND, timing it; a failure stops the script (set -e).
step() {
    local name="$1" start=$SECONDS rc=0
    shift
    CURRENT_STEP="$name"
    info "[$name] $*"
    "$@" || rc=$?
    STEP_NAMES+=("$name")
    STEP_TIMES+=("$((SECONDS - start))")
    if [[ $rc -ne 0 ]]; then
        error "[$name] failed (exit $rc): $*"
        return "$rc"
    fi
    info "[$name] done in $((SECONDS - start)) s"
    CURRENT_STEP=''
}

install_test_deps() {
    local pkgs=(busybox-static curl chromium)
    have git || pkgs+=(git)
    have cc || pkgs+=(build-essential)
    have pkg-config || pkgs+=(pkg-config)
    # (Explicit returns: `step` runs this with set -e suspended.)
    apt_install "${pkgs[@]}" || return 1
    # The tests run their own registries and routers; the packages' services must not
    # grab :5000 and :80.
    apt_install_nostart docker-registry caddy || return 1
}

show_versions() {
    cargo --version && rustc --version &&
        docker version --format 'docker engine {{.Server.Version}} (API {{.Server.APIVersion}}), client {{.Client.Version}}' &&
        git --version &&
        docker-registry --version &&
        echo "caddy $(caddy version)"
}

# The tests under a time limit; --foreground only on a terminal (so Ctrl-C reaches
# cargo), otherwise timeout may kill the whole process group, test binaries included.
# With cargo-nextest (every machine of this project's kind has it) the test binaries
# run in parallel, several tests at once (.config/nextest.toml: they mostly wait on
# Docker), then the doc tests; without it, `cargo test` runs one binary after another.
cargo_test() {
    local fg=()
    [[ -t 0 ]] && fg=(--foreground)
    local limit=(timeout "${fg[@]}" --kill-after=30 "${SLIPWAY_TEST_TIMEOUT:-4200}")
    if cargo nextest --version >/dev/null 2>&1; then
        "${limit[@]}" cargo nextest run --workspace --no-fail-fast "$@" &&
            "${limit[@]}" cargo test --workspace --doc
    else
        warn "cargo-nextest is not installed: running the test binaries one after another (slower)"
        "${limit[@]}" cargo test --workspace --no-fail-fast "$@"
    fi
}

step "install test dependencies" install_test_deps
step "rust toolchain" ensure_rust fmt clippy
step "docker engine" ensure_docker
step "swarm" ensure_swarm
step "versions" show_versions
step "base image" "$SLIPWAY_ROOT/packaging/base-image.sh"
step "router image" "$SLIPWAY_ROOT/packaging/router-image.sh"
if [[ -n "${SLIPWAY_TEST_SETUP_ONLY:-}" ]]; then
    info "SLIPWAY_TEST_SETUP_ONLY is set: the machine is ready; not running fmt, clippy, tests"
    exit 0
fi
step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo test" cargo_test "$@"
