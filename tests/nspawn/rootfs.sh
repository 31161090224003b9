#!/bin/sh
# Print the path of a cached Debian root file system for the systemd integration test,
# building it with debootstrap the first time (about 2.5 minutes). The cache is keyed by
# the suite, the mirror and the package list, so a changed list builds a new one.
# Usage: rootfs.sh [CACHE_DIR]   (default /var/cache/dicom-forwarder-tests)
set -eu
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,procps,iproute2,ca-certificates,python3,python3-venv,make,less
CACHE=${1:-/var/cache/dicom-forwarder-tests}
MIRROR=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
KEY=$(printf '%s %s %s' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)
ROOT="$CACHE/rootfs-$SUITE-$KEY"
if [ ! -x "$ROOT/usr/lib/systemd/systemd" ]; then
    mkdir -p "$CACHE"
    TMP=$(mktemp -d "$CACHE/.build.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$TMP/root" "$MIRROR" \
        > "$TMP/debootstrap.log" 2>&1 || { tail -n 30 "$TMP/debootstrap.log" >&2; exit 1; }
    rm -rf "$TMP/root/var/cache/apt/archives/"*.deb
    # rename is atomic: a concurrent or interrupted build never leaves a half cache behind
    mv "$TMP/root" "$ROOT" 2>/dev/null || [ -x "$ROOT/usr/lib/systemd/systemd" ]
fi
echo "$ROOT"
