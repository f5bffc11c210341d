#!/bin/sh
# Build ovs-service's Debian package from this tree, in a scratch copy so
# that the tree stays clean, and copy the .deb to OUTDIR (default: dist).
#
#   packaging/build-deb.sh [OUTDIR]
#
# Needs the Build-Depends of packaging/debian/control and dpkg-dev;
# dpkg-buildpackage checks them first. Does not need root.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$top/dist"}
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/ovs-service-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# The tree as it is (uncommitted changes included), without caches,
# build output or VCS data.
mkdir "$work/src"
tar -C "$top" -cf - \
    --exclude=./.git --exclude=./.cache --exclude=./dist --exclude=./build \
    --exclude=./bench/out --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache \
    . | tar -xf - -C "$work/src"
rm -rf "$work/src/debian"
cp -a "$top/packaging/debian" "$work/src/debian"

(cd "$work/src" && dpkg-buildpackage -us -uc -b)

for deb in "$work"/*.deb; do
    cp "$deb" "$out/"
    echo "$out/$(basename "$deb")"
done
