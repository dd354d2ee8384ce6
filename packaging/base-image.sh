#!/usr/bin/env bash
# packaging/base-image.sh — builds the local base image slipway/busybox:latest if absent.
#
# Usage: packaging/base-image.sh [--force]
#   --force (or SLIPWAY_REBUILD_BASE=1) rebuilds even if the image exists.
#
# No image can be pulled from a public registry on slipway's dev and CI machines, so
# the example apps and the tests build FROM this image, made from Debian's
# busybox-static: one static binary, no libc needed, so the rootfs is just
#   /bin/busybox + a symlink per applet, /etc/passwd and /etc/group (root, nobody),
#   /tmp (1777), /www, /root,
# imported with `docker import` (CMD ["sh"], PATH set).
#
# The example app (examples/hello) needs the `httpd` applet (it serves the app, CGI
# included) and `wget` (its healthcheck); Debian 12's busybox-static 1.35 has both,
# and this script checks they are there before importing.
#
# Idempotent (a no-op when the image exists) and safe to run concurrently: the
# check-and-build runs under flock on /tmp/slipway-base-image.lock.
set -euo pipefail

# shellcheck source=packaging/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGE="${SLIPWAY_BASE_IMAGE:-slipway/busybox:latest}"
LOCK=/tmp/slipway-base-image.lock
REQUIRED_APPLETS=(sh httpd wget)

force="${SLIPWAY_REBUILD_BASE:-}"
case "${1:-}" in
    --force) force=1 ;;
    "") ;;
    -h | --help)
        sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (usage: $0 [--force])" ;;
esac

image_exists() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

if ! have docker; then
    die "docker CLI not found. Fix: apt-get install docker.io (or source packaging/lib.sh and run ensure_docker)"
fi
if ! docker info >/dev/null 2>&1; then
    die "the Docker engine does not answer ('docker info' fails). Fix: start dockerd (source packaging/lib.sh; ensure_docker)"
fi

# Fast path without the lock.
if [[ -z "$force" ]] && image_exists; then
    info "$IMAGE already exists"
    exit 0
fi

exec 9>>"$LOCK"
if have flock; then
    flock -w 300 9 || die "another base-image build holds $LOCK for more than 300 s. Fix: look for a stuck base-image.sh (fuser $LOCK)"
fi
if [[ -z "$force" ]] && image_exists; then
    info "$IMAGE already exists (built by a concurrent run)"
    exit 0
fi

# Debian's busybox-static is statically linked; the `busybox` package is not (it
# would need libc in the image), so insist on the static one.
apt_install busybox-static
BUSYBOX="$(dpkg-query -L busybox-static 2>/dev/null | awk '/\/bin\/busybox$/ && !found { print; found = 1 }' || true)"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
[[ -x "$BUSYBOX" ]] || die "$BUSYBOX missing after installing busybox-static. Fix: apt-get install --reinstall busybox-static"
if have file && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
    die "$BUSYBOX is not statically linked. Fix: apt-get install busybox-static (replaces the dynamic busybox)"
fi

applets="$("$BUSYBOX" --list)"
for applet in "${REQUIRED_APPLETS[@]}"; do
    grep -qx "$applet" <<<"$applets" ||
        die "$BUSYBOX has no '$applet' applet (examples/hello needs sh, httpd, wget). Fix: install Debian 12's busybox-static"
done

started=$SECONDS
rootfs="$(mktemp -d /tmp/slipway-busybox-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

mkdir -p "$rootfs"/{bin,etc,root,www,proc,sys,dev}
install -m 0755 "$BUSYBOX" "$rootfs/bin/busybox"
while read -r applet; do
    [[ -n "$applet" && "$applet" != busybox ]] || continue
    ln -s busybox "$rootfs/bin/$applet"
done <<<"$applets"
mkdir "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
EOF

# (No `| head`: with pipefail, busybox's SIGPIPE would fail the script.)
banner="$("$BUSYBOX" 2>&1 || true)"
version="$(awk 'NR == 1 { print $2 }' <<<"$banner")"
info "importing $IMAGE (busybox $version, $(wc -l <<<"$applets") applets)"
tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . |
    docker import \
        --change 'CMD ["sh"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL org.slipway.base=busybox-static org.slipway.busybox-version=$version" \
        --message "slipway base image: Debian busybox-static $version" \
        - "$IMAGE" >/dev/null

image_exists || die "docker import reported success but $IMAGE is not there"
info "built $IMAGE in $((SECONDS - started)) s"
