#!/usr/bin/env bash
# Print (last line of stdout) a Python 3.11 base image the engine has, making one if needed:
#   1. python:3.11-slim when the engine has it or can pull it;
#   2. otherwise edgefed/base:bookworm, built once from Debian by debootstrap (minbase + python3,
#      python3-venv, python3-pip, ca-certificates) from the mirror apt's sources name, and
#      imported with `docker import`. Needs root and debootstrap; takes about a minute.
# Progress goes to stderr. EDGEFED_BASE_MIRROR overrides the mirror.
set -euo pipefail

upstream=python:3.11-slim
local_tag=${EDGEFED_BASE_TAG:-edgefed/base:bookworm}
suite=bookworm

have() { docker image inspect "$1" >/dev/null 2>&1; }
say() { echo "base-image: $*" >&2; }

# The first Debian mirror URI apt's sources give for the suite (deb822 .sources or one-line .list).
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v suite="$suite" '
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            /^$/ { if (ok && uri) { print uri; exit } ok = 0; uri = "" }
            END { if (ok && uri) print uri }' "$f"
    done
    { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
        awk -v suite="$suite" '$1 == "deb" { for (i = 2; i < NF; i++) if ($(i+1) == suite) { print $i; break } }'
}

if have "$upstream"; then echo "$upstream"; exit 0; fi
if timeout 120 docker pull -q "$upstream" >/dev/null 2>&1; then echo "$upstream"; exit 0; fi
say "cannot pull $upstream (no registry reachable)"
if have "$local_tag"; then echo "$local_tag"; exit 0; fi

mirror=${EDGEFED_BASE_MIRROR:-$(apt_mirror | grep -v -- -security | head -n 1 || true)}
[ -n "$mirror" ] || { say "no Debian mirror for $suite in apt's sources"; exit 1; }
command -v debootstrap >/dev/null || { say "debootstrap is not installed"; exit 1; }
rootfs=$(mktemp -d /tmp/edgefed-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
say "debootstrap $suite from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$suite" "$rootfs" "$mirror" >&2
# What a slim image leaves out: package caches, lists, documentation.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" -c . | docker import \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$local_tag" >&2
say "imported $local_tag"
echo "$local_tag"
