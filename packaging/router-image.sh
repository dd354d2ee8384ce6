#!/usr/bin/env bash
# packaging/router-image.sh — builds the local router image slipway.invalid/router:latest.
#
# Why that name: Swarm tries to pull a task's image every time it starts one, and falls
# back to the local image when the pull fails. A name under the reserved `.invalid`
# domain makes that pull fail at once, on every node, instead of asking Docker Hub for
# `slipway/router` (which anyone could publish). Run this script on every node that runs
# the router, or push the image to your registry and set `[router] image` to it.
#
# Usage: packaging/router-image.sh [--force]
#   --force (or SLIPWAY_REBUILD_ROUTER=1) rebuilds even if an up-to-date image exists.
#
# Each stack's `<stack>_router` service (global, HTTP port published in host mode)
# runs Caddy from this image. No image can be pulled on slipway's dev and CI
# machines, so it is built FROM the base image slipway/busybox:latest
# (packaging/base-image.sh; busybox stays in, for `docker exec` debugging) plus
# Debian's caddy package:
#   /usr/bin/caddy and the shared libraries `ldd` names (Debian's build is dynamic:
#   libc, libzstd and the loader), /etc/nsswitch.conf (hosts: files dns),
#   /run/slipway-router (the admin socket's directory, where the stack's
#   `<stack>_router_admin` volume is mounted), and a default start config
#   /etc/slipway-router/start.json (admin on unix//run/slipway-router/admin.sock,
#   a catch-all 404 on :80) that CMD runs; slipway mounts its own start config as a
#   Swarm config and names it in the service's command.
#
# Labels: org.slipway.caddy-version (e.g. 2.6.2) and org.slipway.caddy-package
# (the Debian version, e.g. 2.6.2-5). Idempotent: a no-op when the image exists with
# the installed package's version; safe to run concurrently (flock on
# /tmp/slipway-router-image.lock).
set -euo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE="${SLIPWAY_ROUTER_IMAGE:-slipway.invalid/router:latest}"
BASE="${SLIPWAY_BASE_IMAGE:-slipway/busybox:latest}"
LOCK=/tmp/slipway-router-image.lock

force="${SLIPWAY_REBUILD_ROUTER:-}"
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    -h | --help)
        sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (usage: $0 [--force])" ;;
esac

if ! have docker; then
    die "docker CLI not found. Fix: apt-get install docker.io (or source packaging/lib.sh and run ensure_docker)"
fi
if ! docker info >/dev/null 2>&1; then
    die "the Docker engine does not answer ('docker info' fails). Fix: start dockerd (source packaging/lib.sh; ensure_docker)"
fi

# The Debian version of the installed caddy package, or nothing.
package_version() { dpkg-query -W -f='${Version}' caddy 2>/dev/null || true; }

# Is there an image built from caddy package version $1?
image_current() {
    local label
    label="$(docker image inspect --format '{{ index .Config.Labels "org.slipway.caddy-package" }}' "$IMAGE" 2>/dev/null)" ||
        return 1
    [[ -n "$1" && "$label" == "$1" ]]
}

# Fast path without the lock (caddy already installed and the image built from it).
if [[ -z "$force" ]] && image_current "$(package_version)"; then
    info "$IMAGE already exists (caddy $(package_version))"
    exit 0
fi

exec 9>>"$LOCK"
if have flock; then
    flock -w 300 9 || die "another router-image build holds $LOCK for more than 300 s. Fix: look for a stuck router-image.sh (fuser $LOCK)"
fi

# The package's systemd units must not start a Caddy on this machine's :80.
apt_install_nostart caddy
CADDY=/usr/bin/caddy
[[ -x "$CADDY" ]] || die "$CADDY missing after installing caddy. Fix: apt-get install --reinstall caddy"
package="$(package_version)"
if [[ -z "$force" ]] && image_current "$package"; then
    info "$IMAGE already exists (caddy $package, built by a concurrent run)"
    exit 0
fi
version="$("$CADDY" version | awk 'NR == 1 { sub(/^v/, "", $1); print $1 }')"
[[ -n "$version" ]] || die "'$CADDY version' printed nothing. Fix: apt-get install --reinstall caddy"

"$SLIPWAY_ROOT/packaging/base-image.sh"

started=$SECONDS
context="$(mktemp -d /tmp/slipway-router-context.XXXXXX)"
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/bin" "$rootfs/etc/slipway-router" "$rootfs/run/slipway-router"
install -m 0755 "$CADDY" "$rootfs/usr/bin/caddy"

# Debian builds caddy with cgo: copy every library ldd resolves, and the loader, at
# the path the binary names (cp -L: the file a symlink points to, under the link's
# name, which is the name the loader looks for).
if ldd "$CADDY" >/dev/null 2>&1; then
    libs="$(ldd "$CADDY" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')"
    [[ -n "$libs" ]] || die "ldd $CADDY names no library files. Fix: look at 'ldd $CADDY'"
    while read -r lib; do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done <<<"$libs"
    libs_note="$(wc -l <<<"$libs") shared libraries"
else
    libs_note="static"
fi
# Go's resolver reads nsswitch.conf; without it glibc's defaults could differ from Go's.
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
cat >"$rootfs/etc/slipway-router/start.json" <<'EOF'
{
  "admin": {"listen": "unix//run/slipway-router/admin.sock"},
  "apps": {"http": {"servers": {"slipway": {
    "listen": [":80"],
    "automatic_https": {"disable": true},
    "routes": [{"handle": [{"handler": "static_response", "status_code": 404, "body": "slipway router: no app on this host name\n"}]}]
  }}}}
}
EOF

cat >"$context/Dockerfile" <<EOF
FROM $BASE
COPY rootfs/ /
ENV XDG_CONFIG_HOME=/root/.config XDG_DATA_HOME=/root/.local/share
EXPOSE 80
LABEL org.slipway.router=caddy org.slipway.caddy-version=$version org.slipway.caddy-package=$package
CMD ["caddy", "run", "--config", "/etc/slipway-router/start.json"]
EOF

info "building $IMAGE (caddy $version, Debian $package, $libs_note) FROM $BASE"
if ! out="$(docker build --quiet --tag "$IMAGE" "$context" 2>&1)"; then
    die "docker build of $IMAGE failed: $out"
fi
# The binary must start in the image (a missing library shows here, not in a deploy).
if ! out="$(docker run --rm "$IMAGE" caddy version 2>&1)"; then
    die "caddy does not run in $IMAGE: $out. Fix: compare 'ldd $CADDY' with the image's /lib*"
fi
image_current "$package" || die "docker build reported success but $IMAGE has no caddy-package label $package"
info "built $IMAGE (caddy $out) in $((SECONDS - started)) s"
