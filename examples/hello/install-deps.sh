#!/bin/sh
# Stand-in for a package manager, using only busybox: "installs" each dependency
# listed in $1 (lines "name version size-in-KiB") into $2/<name>-<version>/, with
# deterministic content of the given size and a checksum, and pauses a little per
# package as if it were downloaded. Slow-ish on purpose: the layer cache and the
# registry cache must make a code-only rebuild skip this step.
set -eu
deps_file="$1"
target="$2"
mkdir -p "$target"
: >"$target/LOCK"
grep -v '^[[:space:]]*#' "$deps_file" | while read -r name version kib; do
    [ -n "$name" ] || continue
    dir="$target/$name-$version"
    mkdir -p "$dir"
    echo "installing $name $version ($kib KiB)"
    yes "$name@$version" | head -c "$((kib * 1024))" >"$dir/lib.js"
    sleep 0.4
    sum="$(sha256sum "$dir/lib.js" | cut -d' ' -f1)"
    echo "$name $version sha256:$sum" >>"$target/LOCK"
done
echo "installed $(grep -c . "$target/LOCK") packages into $target"
